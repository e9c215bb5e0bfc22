//! The Cosmos NoSQL API server for tests and benchmarks: `@vercel/cosmosdb-server`
//! from npm (installed once into target/tools) run by `server.js` with the fixes the
//! Rust SDK needs, behind a fault-injecting proxy. Shared by tests/it/cosmos.rs and
//! benches/cosmos.rs through `#[path]`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The Cosmos emulator's well-known key (the server accepts any key; the client
/// needs valid base64 to sign with).
pub const KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU9DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// node_modules holding @vercel/cosmosdb-server, installed with npm on first use.
fn modules() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("tools")
            .join("cosmosdb-server");
        let modules = root.join("node_modules");
        if !modules
            .join("@vercel/cosmosdb-server/lib/index.js")
            .exists()
        {
            eprintln!(
                "installing @vercel/cosmosdb-server into {} (once)",
                root.display()
            );
            std::fs::create_dir_all(&root).unwrap();
            let ok = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&root)
                .arg("@vercel/cosmosdb-server@1.0.1")
                .status()
                .expect("running npm (Node.js is needed for the Cosmos tests)")
                .success();
            assert!(ok, "npm install @vercel/cosmosdb-server failed");
        }
        modules
    })
    .clone()
}

/// The server and its fault proxy, stopped on drop.
pub struct Cosmos {
    child: Child,
    pub server: u16,
    pub proxy: u16,
}

impl Cosmos {
    pub fn start() -> Cosmos {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cosmos/server.js");
        let mut child = Command::new("node")
            .arg(script)
            .arg(modules())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("the Cosmos server did not start: {line:?}"))
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        Cosmos {
            child,
            server: ports[0],
            proxy: ports[1],
        }
    }

    /// The endpoint eventide writes to: the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/", self.proxy)
    }

    pub fn set_faults(&self, faults: Value) {
        let (status, _) = http(self.proxy, "POST", "/__faults", &faults.to_string());
        assert_eq!(status, 200);
    }

    pub fn injected(&self) -> Value {
        let (_, body) = http(self.proxy, "GET", "/__faults", "");
        serde_json::from_str(&body).unwrap()
    }

    /// Every document of a container, straight from the server (system properties
    /// removed), by id.
    pub fn documents(&self, db: &str, coll: &str) -> BTreeMap<String, Value> {
        let (status, body) = http(
            self.server,
            "GET",
            &format!("/dbs/{db}/colls/{coll}/docs"),
            "",
        );
        assert_eq!(status, 200, "listing {db}/{coll}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let docs = v["Documents"].as_array().unwrap();
        let mut out = BTreeMap::new();
        for d in docs {
            let mut d = d.clone();
            let o = d.as_object_mut().unwrap();
            o.retain(|k, _| !k.starts_with('_'));
            let id = o["id"].as_str().unwrap().to_owned();
            assert!(out.insert(id.clone(), d).is_none(), "{coll}: id {id} twice");
        }
        out
    }
}

impl Drop for Cosmos {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request on loopback (the answer ends when the connection closes).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}
