//! The Cosmos DB sink against a Cosmos NoSQL API server on loopback
//! (`@vercel/cosmosdb-server` from npm, installed once into target/tools, with the
//! fixes the Rust SDK needs; see tests/cosmos/server.js) and the real `eventide`
//! binary. Every run writes to a fault-injecting proxy in front of the server.
//!
//! The reference is the same run's JSONL sink: the Cosmos containers must hold
//! exactly its window and alert records, and one device document per device whose
//! state follows from the input and those records.

use crate::common;
#[path = "../cosmos/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{WINDOWS_AND_RULE, generate, read_jsonl};
use eventide_simulator::SimConfig;
use harness::{Cosmos, KEY};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_eventide");

/// Simulated events whose devices are named as devices in the field are: the
/// streaming-at-scale ids (`contoso://device-id-7`), and ids holding `\`, `?`, `#`,
/// `%`, spaces, non-ASCII letters, or too long for a Cosmos id once escaped. Lines that
/// are not JSON stay as they are.
fn input(devices: u32, events: u64, seed: u64) -> Vec<u8> {
    let plain = simulated(devices, events, seed);
    let rename = |d: &str| -> String {
        let n: u32 = d.rsplit('-').next().unwrap().parse().unwrap();
        match n % 6 {
            0 | 1 => d.to_string(),
            2 => format!(r"contoso:\\gateway\device {n}"),
            3 => format!("device?id={n}#main"),
            4 => format!("salle à manger ✓ 100% n°{n}"),
            _ => format!("{}/{n}", "très-long-nom/".repeat(20)),
        }
    };
    let mut out = Vec::new();
    for line in std::str::from_utf8(&plain).unwrap().lines() {
        let mut v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
                continue;
            }
        };
        let mut one = |e: &mut Value| {
            if let Some(Value::String(d)) = e.get_mut("deviceId")
                && d.starts_with("contoso://device-id-")
            {
                *d = rename(d);
            }
        };
        match &mut v {
            Value::Array(batch) => batch.iter_mut().for_each(&mut one),
            e => one(e),
        }
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The document id Cosmos DB takes for a record or device id (`/`, `\`, `?`, `#` and
/// `%` as `%XX`; cut to 255 bytes with `~` and a hash of the whole id when longer),
/// as the README documents it.
fn doc_id(raw: &str) -> String {
    let mut id = String::new();
    for c in raw.chars() {
        match c {
            '/' | '\\' | '?' | '#' | '%' => id.push_str(&format!("%{:02X}", c as u32)),
            c => id.push(c),
        }
    }
    if id.len() > 255 {
        let hash = format!("~{:016x}", xxhash_rust::xxh3::xxh3_64(raw.as_bytes()));
        let mut cut = 255 - hash.len();
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        id.truncate(cut);
        id.push_str(&hash);
    }
    id
}

fn simulated(devices: u32, events: u64, seed: u64) -> Vec<u8> {
    generate(
        SimConfig {
            devices,
            seed,
            interval_ms: 10_000,
            duplicate_fraction: 0.02,
            malformed_fraction: 0.01,
            batch_fraction: 0.1,
            batch_size: 5,
            max_disorder_ms: 3_000,
            hot_devices: devices / 10,
            complex_fields: 2,
            ..SimConfig::default()
        },
        events,
    )
}

/// A fresh server, a directory holding `events` as `events.ndjson`, and a config
/// (see [`config`]) writing to database `database` through the proxy.
fn setup(
    events: &[u8],
    database: &str,
    cosmos_extra: &str,
) -> (Cosmos, tempfile::TempDir, PathBuf) {
    let cosmos = Cosmos::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.ndjson"), events).unwrap();
    let cfg = config(dir.path(), &cosmos.endpoint(), database, cosmos_extra);
    (cosmos, dir, cfg)
}

/// A config reading `events.ndjson` in `dir`, writing JSONL and Cosmos.
fn config(dir: &Path, endpoint: &str, database: &str, cosmos_extra: &str) -> PathBuf {
    let text = format!(
        r#"
[source]
kind = "file"
path = "{input}"

[pipeline]
partitions = 2
max_out_of_order = "5s"
allowed_lateness = "0s"
dedupe = "both"

{rules}
[[sinks]]
kind = "jsonl"
path = "{out}"
streams = ["windows", "alerts"]

[[sinks]]
kind = "cosmos"
endpoint = "{endpoint}"
key_env = "TEST_COSMOS_KEY"
database = "{database}"
streams = ["windows", "alerts", "devices"]
create_if_missing = true
max_concurrency = 16
{cosmos_extra}

[dead_letter]
kind = "jsonl"
path = "{dead}"
"#,
        input = dir.join("events.ndjson").display(),
        out = dir.join("out.jsonl").display(),
        dead = dir.join("dead.jsonl").display(),
        rules = WINDOWS_AND_RULE,
    );
    let path = dir.join("eventide.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs eventide to the end; returns its stderr (the run must succeed and its
/// accounting add up).
fn run(config: &Path) -> String {
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("TEST_COSMOS_KEY", KEY)
        .env("EVENTIDE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "eventide failed:\n{stderr}");
    assert!(stderr.contains("(adds up)"), "accounting:\n{stderr}");
    assert!(!stderr.contains(KEY), "the key must never be logged");
    stderr
}

/// The JSONL sink's records of one kind, by id.
fn jsonl_records(dir: &Path, alerts: bool) -> BTreeMap<String, Value> {
    read_jsonl(&dir.join("out.jsonl"))
        .into_iter()
        .filter(|r| r.get("rule").is_some() == alerts)
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r))
        .collect()
}

/// The JSONL sink's records as the Cosmos documents that hold them: by document id,
/// whose `id` member it is; every other member as written.
fn as_documents(records: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    records
        .into_iter()
        .map(|(raw, mut r)| {
            let id = doc_id(&raw);
            r["id"] = Value::from(id.clone());
            (id, r)
        })
        .collect()
}

/// What each device's document must hold, from the input and the JSONL records.
fn expected_devices(input: &[u8], dir: &Path) -> BTreeMap<String, Value> {
    // Latest reading: the valid event with the greatest (createdAt, sequence).
    let mut latest: BTreeMap<String, (i64, u64, Value)> = BTreeMap::new();
    let mut consider = |e: &Value| {
        let (Some(d), Some(seq), Some(kind), Some(value), Some(at)) = (
            e["deviceId"].as_str(),
            e["deviceSequenceNumber"].as_u64(),
            e["type"].as_str(),
            e["value"].as_f64(),
            e["createdAt"].as_str(),
        ) else {
            return;
        };
        if e["eventId"].as_str().is_none() {
            return;
        }
        let Some(ts) = eventide_simulator::time::parse_rfc3339_ms(at) else {
            return;
        };
        let reading = json!({
            "type": kind,
            "value": value,
            "createdAt": eventide_simulator::time::rfc3339_ms(ts),
            "deviceSequenceNumber": seq,
        });
        let slot = latest
            .entry(d.to_owned())
            .or_insert((i64::MIN, 0, Value::Null));
        if (ts, seq) >= (slot.0, slot.1) {
            *slot = (ts, seq, reading);
        }
    };
    for line in input.split(|&b| b == b'\n') {
        match serde_json::from_slice::<Value>(line) {
            Ok(Value::Array(events)) => events.iter().for_each(&mut consider),
            Ok(e) => consider(&e),
            Err(_) => {}
        }
    }
    let mut docs: BTreeMap<String, Value> = latest
        .into_iter()
        .map(|(d, (_, _, reading))| {
            let doc = json!({
                "id": doc_id(&d),
                "deviceId": d,
                "lastSeen": reading["createdAt"],
                "latest": reading,
                "windows": {},
                "openAlerts": [],
                "lastAlerts": [],
            });
            (d, doc)
        })
        .collect();
    // Latest window per device, window and type.
    for w in jsonl_records(dir, false).into_values() {
        let doc = docs.get_mut(w["deviceId"].as_str().unwrap()).unwrap();
        let slot = &mut doc["windows"][w["window"].as_str().unwrap()][w["type"].as_str().unwrap()];
        if slot.is_null() || slot["windowEnd"].as_str() < w["windowEnd"].as_str() {
            let mut agg = w.clone();
            let o = agg.as_object_mut().unwrap();
            for k in ["id", "window", "deviceId", "type"] {
                o.remove(k);
            }
            *slot = agg;
        }
    }
    // Latest alert per device, rule and type; open when raised.
    let mut last: BTreeMap<(String, String, String), Value> = BTreeMap::new();
    for a in jsonl_records(dir, true).into_values() {
        let key = (
            a["deviceId"].as_str().unwrap().to_owned(),
            a["rule"].as_str().unwrap().to_owned(),
            a["type"].as_str().unwrap().to_owned(),
        );
        let slot = last.entry(key).or_insert(Value::Null);
        if slot.is_null() || slot["windowEnd"].as_str() < a["windowEnd"].as_str() {
            *slot = a;
        }
    }
    for ((device, _, _), a) in last {
        let doc = docs.get_mut(&device).unwrap();
        if a["state"] == "raised" {
            doc["openAlerts"].as_array_mut().unwrap().push(a.clone());
        }
        doc["lastAlerts"].as_array_mut().unwrap().push(a);
    }
    // By document id, as the container holds them.
    docs.into_iter().map(|(d, doc)| (doc_id(&d), doc)).collect()
}

/// Numbers as f64 and objects as sorted maps, so documents compare by value.
fn normal(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normal(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(normal).collect()),
        v => v.clone(),
    }
}

fn assert_same(what: &str, got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) {
    let (g, w): (BTreeSet<_>, BTreeSet<_>) = (got.keys().collect(), want.keys().collect());
    let missing: Vec<_> = w.difference(&g).take(5).collect();
    let extra: Vec<_> = g.difference(&w).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} documents, {} expected; missing e.g. {missing:?}, unexpected e.g. {extra:?}",
        got.len(),
        want.len()
    );
    for (id, w) in want {
        assert_eq!(normal(&got[id]), normal(w), "{what}: document {id}");
    }
}

/// Checks every container against the JSONL output and the input.
fn assert_matches_reference(cosmos: &Cosmos, db: &str, dir: &Path, input: &[u8]) {
    let windows = jsonl_records(dir, false);
    let alerts = jsonl_records(dir, true);
    assert!(
        windows.len() > 100,
        "a test needs windows: {}",
        windows.len()
    );
    assert!(!alerts.is_empty(), "a test needs alerts");
    // Device ids with every character Cosmos refuses in an id, and too long ones.
    for c in ['/', '\\', '?', '#', '%', ' ', 'à'] {
        assert!(
            windows
                .values()
                .any(|w| w["deviceId"].as_str().unwrap().contains(c)),
            "a test needs device ids with {c:?}"
        );
    }
    assert!(
        windows.keys().any(|id| doc_id(id).contains('~')),
        "a test needs long ids"
    );
    let stored = [
        ("windows", cosmos.documents(db, "windows")),
        ("alerts", cosmos.documents(db, "alerts")),
        ("devices", cosmos.documents(db, "devices")),
    ];
    for (what, docs) in &stored {
        for (id, doc) in docs {
            assert!(
                id.len() <= 255 && !id.contains(['/', '\\', '?', '#']),
                "{what}: {id}"
            );
            // The id reads back as the record's own id (or device id), unless it was cut.
            if !id.contains('~') {
                let raw = eventide::sinks::cosmos::doc::raw_id(id).unwrap();
                let own = match *what {
                    "devices" => doc["deviceId"].as_str().unwrap().to_owned(),
                    _ => format!(
                        "{}|{}|",
                        doc.get("rule")
                            .or(doc.get("window"))
                            .unwrap()
                            .as_str()
                            .unwrap(),
                        doc["deviceId"].as_str().unwrap()
                    ),
                };
                assert!(raw.starts_with(&own), "{what}: {id} reads back as {raw}");
            }
        }
    }
    let [(_, got_windows), (_, got_alerts), (_, got_devices)] = stored;
    assert_same("windows", &got_windows, &as_documents(windows));
    assert_same("alerts", &got_alerts, &as_documents(alerts));
    assert_same("devices", &got_devices, &expected_devices(input, dir));
}

fn sink_dead_letters(dir: &Path) -> Vec<Value> {
    read_jsonl(&dir.join("dead.jsonl"))
        .into_iter()
        .filter(|d| d["reason"] == "sink")
        .collect()
}

#[test]
fn windows_alerts_and_device_documents_match_the_jsonl_sink_and_a_replay_changes_nothing() {
    let events = input(150, 15_000, 7);
    let (cosmos, dir, cfg) = setup(&events, "telemetry", "");

    let first = run(&cfg);
    assert_matches_reference(&cosmos, "telemetry", dir.path(), &events);
    assert!(sink_dead_letters(dir.path()).is_empty());
    assert!(first.contains("Cosmos sink: done."), "{first}");
    let stored = (
        cosmos.documents("telemetry", "windows"),
        cosmos.documents("telemetry", "alerts"),
        cosmos.documents("telemetry", "devices"),
    );

    // The same input again (as after a crash before any checkpoint): the same
    // documents, none twice, and device writes skipped as already stored.
    let second = run(&cfg);
    assert_matches_reference(&cosmos, "telemetry", dir.path(), &events);
    let again = (
        cosmos.documents("telemetry", "windows"),
        cosmos.documents("telemetry", "alerts"),
        cosmos.documents("telemetry", "devices"),
    );
    assert_eq!(stored, again);
    let unchanged = second
        .lines()
        .find(|l| l.contains("Cosmos sink: done."))
        .and_then(|l| l.split("unchanged=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no unchanged count in:\n{second}"));
    assert!(
        unchanged >= stored.2.len() as u64,
        "device documents rewritten on replay: {unchanged} skipped of {}\n{second}",
        stored.2.len()
    );
}

#[test]
fn a_replay_of_older_input_never_moves_device_state_backwards() {
    let events = input(60, 12_000, 11);
    // The whole input, then its first third again: the second run only replays
    // events older than what the documents already hold.
    let lines: Vec<&[u8]> = events.split_inclusive(|&b| b == b'\n').collect();
    let (cosmos, dir, cfg) = setup(&events, "state", "");
    run(&cfg);
    let newest = cosmos.documents("state", "devices");

    // Now only an older part: nothing in the device documents may change.
    std::fs::write(
        dir.path().join("events.ndjson"),
        lines[..lines.len() / 3].concat(),
    )
    .unwrap();
    run(&cfg);
    assert_eq!(cosmos.documents("state", "devices"), newest);
}

#[test]
fn throttling_unavailability_and_dropped_connections_are_retried_until_everything_arrives() {
    let events = input(100, 20_000, 3);
    let (cosmos, dir, cfg) = setup(&events, "faulty", "max_retries = 10");
    // Every 4th document request fails: 429 (retry after 30 ms), 503, or the
    // connection closes without an answer, in turn.
    cosmos.set_faults(json!({"every": 4, "kinds": ["429", "503", "drop"], "retryAfterMs": 30}));
    let stderr = run(&cfg);
    let injected = cosmos.injected();
    for kind in ["429", "503", "drop"] {
        assert!(
            injected["injected"][kind].as_u64().unwrap() > 10,
            "{kind} not injected: {injected}"
        );
    }
    cosmos.set_faults(json!({}));
    assert_matches_reference(&cosmos, "faulty", dir.path(), &events);
    assert!(
        sink_dead_letters(dir.path()).is_empty(),
        "nothing is given up on within max_retries"
    );
    assert!(
        !stderr.contains("retries=0 "),
        "retries are counted:\n{stderr}"
    );
}

#[test]
fn an_outage_past_max_retries_dead_letters_every_record_with_reason_sink() {
    let events = input(30, 2_000, 5);
    let (cosmos, dir, cfg) = setup(&events, "down", "max_retries = 1");
    // Create the database and containers first (a run with the server up), so the
    // outage hits the document writes.
    std::fs::write(dir.path().join("events.ndjson"), b"").unwrap();
    run(&cfg);
    std::fs::write(dir.path().join("events.ndjson"), &events).unwrap();
    cosmos.set_faults(json!({"down": true}));
    let stderr = run(&cfg);
    assert!(cosmos.injected()["injected"]["down"].as_u64().unwrap() > 0);

    let windows = jsonl_records(dir.path(), false);
    let alerts = jsonl_records(dir.path(), true);
    let dead = sink_dead_letters(dir.path());
    let by_source = |s: &str| -> BTreeSet<String> {
        dead.iter()
            .filter(|d| d["source"] == s)
            .map(|d| {
                let v: Value = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
                assert!(d["error"].as_str().unwrap().contains("cosmos"), "{d}");
                v["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(
        by_source("cosmos:windows"),
        as_documents(windows).keys().cloned().collect()
    );
    assert_eq!(
        by_source("cosmos:alerts"),
        as_documents(alerts).keys().cloned().collect()
    );
    let devices = expected_devices(&events, dir.path());
    assert_eq!(
        by_source("cosmos:devices"),
        devices.keys().cloned().collect()
    );
    // The run's own summary counts them among its dead letters.
    assert!(stderr.contains("(adds up)"));
    cosmos.set_faults(json!({}));
    assert!(cosmos.documents("down", "windows").is_empty());
}

#[test]
fn a_missing_key_variable_is_a_clear_error_naming_key_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("events.ndjson"), b"").unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9/", "db", "");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .env_remove("TEST_COSMOS_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("key_env") && stderr.contains("TEST_COSMOS_KEY"),
        "{stderr}"
    );
}

/// The local server refuses document ids as the service does (400 for `/`, `\`, `?`,
/// `#`, or over 255 characters), so the tests above would fail if eventide wrote one.
#[test]
fn the_test_server_refuses_the_ids_the_service_refuses() {
    let (cosmos, dir, cfg) = setup(b"", "rules", "");
    std::fs::write(dir.path().join("events.ndjson"), b"").unwrap();
    run(&cfg); // creates the database and containers
    let post = |id: &str| {
        let body = json!({"id": id, "deviceId": "d"}).to_string();
        harness::http(
            cosmos.server,
            "POST",
            "/dbs/rules/colls/windows/docs",
            &body,
        )
    };
    for id in ["a/b", "a\\b", "a?b", "a#b", &"x".repeat(256)] {
        let (status, body) = post(id);
        assert_eq!(status, 400, "{id}: {body}");
        assert!(body.contains("BadRequest"), "{body}");
    }
    let (status, body) = post(&doc_id("contoso://device-id-1 #à?"));
    assert!((200..300).contains(&status), "{status}: {body}");
}
