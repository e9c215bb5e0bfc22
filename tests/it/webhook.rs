//! The `webhook` sink against a real HTTP server on loopback (axum, in the test
//! process) that records what it receives and can fail requests on purpose.
//!
//! The reference is the same run's JSONL sink: the server must receive exactly its
//! alerts (each at least once, by its `Idempotency-Key`; no other), each device's in
//! order; an endpoint that stays down gets every alert dead-lettered with reason `sink`,
//! without holding the run for every alert's retries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use eventide_simulator::SimConfig;
use serde_json::Value;

use crate::common::{WINDOWS_AND_RULE, free_port, generate, read_jsonl};

const BIN: &str = env!("CARGO_BIN_EXE_eventide");

/// What the server received: (Idempotency-Key, Content-Type, body) per request, in
/// the order requests arrived.
type Received = Arc<Mutex<Vec<(String, String, Value)>>>;

/// How the server misbehaves.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Requests answered 500 before any other answer.
    fail_first: usize,
    /// Every n-th request (n > 0) is answered after `slow`, past the client's timeout.
    slow_every: usize,
    slow: Duration,
}

/// A server on a free loopback port, until the returned runtime is dropped.
fn server(faults: Faults) -> (tokio::runtime::Runtime, SocketAddr, Received) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let received: Received = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let state = (received.clone(), count);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (received, count) = state.clone();
            async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= faults.fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let header = |h: &str| {
                    headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let body: Value = serde_json::from_slice(&body).expect("a JSON body");
                received.lock().unwrap().push((
                    header("idempotency-key"),
                    header("content-type"),
                    body,
                ));
                if faults.slow_every > 0 && n % faults.slow_every == 0 {
                    tokio::time::sleep(faults.slow).await;
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rt, addr, received)
}

/// Events whose CO2 crosses the rule's threshold on several devices.
fn input(dir: &Path) -> std::path::PathBuf {
    let events = generate(
        SimConfig {
            devices: 40,
            seed: 17,
            interval_ms: 10_000,
            duplicate_fraction: 0.02,
            malformed_fraction: 0.01,
            batch_fraction: 0.1,
            batch_size: 5,
            max_disorder_ms: 2_000,
            hot_devices: 10,
            complex_fields: 2,
            ..SimConfig::default()
        },
        40_000,
    );
    let path = dir.join("events.ndjson");
    std::fs::write(&path, events).unwrap();
    path
}

/// Runs eventide over the input with a JSONL sink of alerts and the webhook sink
/// `webhook` (its TOML keys); returns the JSONL alerts and the dead letters.
fn run(dir: &Path, name: &str, webhook: &str) -> (Vec<Value>, Vec<Value>) {
    let input = input(dir);
    let alerts = dir.join(format!("{name}.alerts.jsonl"));
    let dead = dir.join(format!("{name}.dead.jsonl"));
    let config = format!(
        r#"[source]
kind = "file"
path = "{}"

[pipeline]
partitions = 2
max_out_of_order = "5s"
dedupe = "both"
{WINDOWS_AND_RULE}
[[sinks]]
kind = "jsonl"
path = "{}"
streams = ["alerts"]

[[sinks]]
kind = "webhook"
{webhook}

[dead_letter]
kind = "jsonl"
path = "{}"
"#,
        input.display(),
        alerts.display(),
        dead.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {stderr}");
    assert!(stderr.contains("(adds up)"), "{name}: {stderr}");
    let alerts = read_jsonl(&alerts);
    assert!(alerts.len() >= 10, "{name}: the input raises alerts");
    (alerts, read_jsonl(&dead))
}

/// Each alert id and its record, and each device's alert ids in order.
fn by_id_and_device(alerts: &[Value]) -> (BTreeMap<String, Value>, BTreeMap<String, Vec<String>>) {
    let mut ids = BTreeMap::new();
    let mut devices: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in alerts {
        let id = a["id"].as_str().unwrap().to_owned();
        let device = a["deviceId"].as_str().unwrap().to_owned();
        let known = devices.entry(device).or_default();
        if known.last() != Some(&id) {
            known.push(id.clone());
        }
        ids.insert(id, a.clone());
    }
    (ids, devices)
}

#[test]
fn a_webhook_receives_exactly_the_alerts_in_order_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let (_rt, addr, received) = server(Faults::default());
    let (alerts, dead) = run(
        dir.path(),
        "json",
        &format!("url = \"http://{addr}/hook\"\nheaders = {{ Authorization = \"Bearer t0ken\" }}"),
    );
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), alerts.len(), "one request per alert");
    for (key, content_type, body) in &got {
        assert_eq!(content_type, "application/json");
        assert_eq!(
            key,
            body["id"].as_str().unwrap(),
            "Idempotency-Key is the alert id"
        );
    }
    let bodies: Vec<Value> = got.iter().map(|(_, _, b)| b.clone()).collect();
    assert_eq!(by_id_and_device(&bodies), by_id_and_device(&alerts));
    assert!(
        dead.iter().all(|d| d["reason"] != "sink"),
        "nothing dead-lettered"
    );
}

#[test]
fn cloudevents_survive_server_errors_and_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults {
        fail_first: 5,
        slow_every: 7,
        slow: Duration::from_millis(900),
    };
    let (_rt, addr, received) = server(faults);
    let (alerts, dead) = run(
        dir.path(),
        "cloudevents",
        &format!(
            "url = \"http://{addr}/hook\"\nformat = \"cloudevents\"\ntimeout = \"300ms\"\nmax_retries = 8"
        ),
    );
    let got = received.lock().unwrap().clone();
    assert!(
        got.len() > alerts.len(),
        "timed-out requests were sent again ({} requests, {} alerts)",
        got.len(),
        alerts.len()
    );
    // Timed-out requests were received and then sent again: repeats carry the same key.
    let mut events: BTreeMap<String, Value> = BTreeMap::new();
    let mut order: Vec<Value> = Vec::new();
    for (key, content_type, e) in got {
        assert_eq!(content_type, "application/cloudevents+json; charset=utf-8");
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"].as_str().unwrap(), key);
        assert_eq!(e["subject"], e["data"]["deviceId"]);
        assert_eq!(
            e["source"],
            format!("eventide/rules/{}", e["data"]["rule"].as_str().unwrap())
        );
        let state = e["data"]["state"].as_str().unwrap();
        assert_eq!(e["type"], format!("com.eventide.alert.{state}"));
        assert_eq!(e["time"], e["data"]["windowEnd"]);
        if events.insert(key, e["data"].clone()).is_none() {
            order.push(e["data"].clone());
        }
    }
    assert_eq!(by_id_and_device(&order), by_id_and_device(&alerts));
    assert!(
        dead.iter().all(|d| d["reason"] != "sink"),
        "nothing dead-lettered"
    );
}

#[test]
fn an_endpoint_that_stays_down_gets_every_alert_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = free_port();
    let (alerts, dead) = run(
        dir.path(),
        "down",
        &format!("url = \"http://127.0.0.1:{port}/hook\"\nmax_retries = 1\ntimeout = \"1s\""),
    );
    let sink: Vec<&Value> = dead.iter().filter(|d| d["reason"] == "sink").collect();
    assert_eq!(sink.len(), alerts.len(), "every alert dead-lettered");
    let payloads: Vec<Value> = sink
        .iter()
        .map(|d| serde_json::from_str(d["payload"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(by_id_and_device(&payloads).0, by_id_and_device(&alerts).0);
    // The first alerts use their retries; once one is given up on, the endpoint counts
    // as down and the others are tried once each (the run is not held for every
    // alert's whole retry budget).
    let (mut retried, mut once) = (0, 0);
    for d in sink {
        assert_eq!(d["source"], format!("webhook:http://127.0.0.1:{port}/hook"));
        let error = d["error"].as_str().unwrap();
        if error.contains("after 2 attempts") {
            retried += 1;
        } else {
            assert!(
                error.contains("after 1 attempt; the endpoint was down"),
                "{d}"
            );
            once += 1;
        }
    }
    assert!(
        retried >= 1 && once >= 1,
        "{retried} retried, {once} tried once"
    );
}
