//! SQL, HTTP and PostgreSQL endpoints, against the real `eventide` binary, a real
//! HTTP exchange over TCP, the real `psql` client (installed from Debian when
//! missing) and tokio-postgres for the extended protocol.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{WINDOWS_AND_RULE, generate, read_jsonl};
use eventide_simulator::SimConfig;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_eventide");

/// An HTTP/1.1 exchange: (status, content-type, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    if header("transfer-encoding").eq_ignore_ascii_case("chunked") {
        body = dechunk(&body);
    }
    (status, header("content-type"), body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + n]);
        b = &b[line_end + 2 + n + 2..];
    }
}

fn sql(port: u16, query: &str) -> Vec<Value> {
    let (status, kind, body) = http(port, "POST", "/sql", &[], query.as_bytes());
    assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
    assert!(kind.starts_with("application/json"), "{kind}");
    serde_json::from_slice::<Vec<Value>>(&body).unwrap()
}

/// `psql`, installing Debian's postgresql-client first when it is missing.
fn psql() -> &'static str {
    common::debian_tool("psql", "postgresql-client")
}

/// Runs `psql` with the commands in order, in one session: (success, stdout, stderr).
fn run_psql(port: u16, env: &[(&str, &str)], commands: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(psql());
    c.args([
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "eventide",
        "-d",
        "eventide",
    ]);
    c.args(["-A", "-F", "|", "-P", "footer=off"]);
    for cmd in commands {
        c.args(["-c", cmd]);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.env_remove("PGPASSWORD");
    if let Some((_, v)) = env.iter().find(|(k, _)| *k == "PGPASSWORD") {
        c.env("PGPASSWORD", v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Running {
    child: Child,
    http: u16,
    pg: u16,
}

impl Running {
    fn start(dir: &Path, config: &str) -> Running {
        let http = common::free_port();
        let pg = common::free_port();
        let path = dir.join("eventide.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(["--postgres", &format!("127.0.0.1:{pg}")])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let r = Running { child, http, pg };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(Instant::now() < deadline, "the HTTP server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn wait_finished(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, _, body) = http(self.http, "GET", "/readyz", &[], b"");
            let v: Value = serde_json::from_slice(&body).unwrap();
            if v["source"] == "finished" {
                return;
            }
            assert!(Instant::now() < deadline, "the input did not finish: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> i32 {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn file_config(dir: &Path, server_extra: &str) -> String {
    format!(
        r#"
[source]
kind = "file"
path = "{input}"

[pipeline]
partitions = 3
{WINDOWS_AND_RULE}
[[sinks]]
kind = "jsonl"
path = "{out}"
streams = ["windows", "alerts"]

[dead_letter]
path = "{dead}"

[server]
keep_serving = true
{server_extra}
"#,
        input = dir.join("in.ndjson").display(),
        out = dir.join("out.jsonl").display(),
        dead = dir.join("dead.jsonl").display(),
    )
}

fn sim_input(dir: &Path, events: u64) {
    let input = generate(
        SimConfig {
            devices: 120,
            seed: 11,
            interval_ms: 5_000,
            duplicate_fraction: 0.02,
            malformed_fraction: 0.01,
            batch_fraction: 0.1,
            batch_size: 6,
            max_disorder_ms: 3_000,
            hot_devices: 10,
            complex_fields: 3,
            ..SimConfig::default()
        },
        events,
    );
    std::fs::write(dir.join("in.ndjson"), input).unwrap();
}

fn key(v: &Value) -> String {
    format!(
        "{}|{}|{}|{}",
        v["window"].as_str().unwrap(),
        v["deviceId"].as_str().unwrap(),
        v["type"].as_str().unwrap(),
        v["windowStart"].as_str().unwrap()
    )
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A `stats` row's outcomes add up to what it received.
fn assert_stats_row_adds_up(s: &Value) {
    let outcomes: f64 = [
        "aggregated",
        "duplicate",
        "filtered",
        "late",
        "deadLettered",
    ]
    .iter()
    .map(|k| num(&s[*k]))
    .sum();
    assert_eq!(num(&s["received"]), outcomes, "{s}");
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Parses Prometheus text: `name{labels}` → value. Panics on a malformed line.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
            .unwrap_or(name);
        assert!(typed.contains(base), "no # TYPE before {line:?}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                assert!(
                    !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                    "{line:?}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), v);
    }
    out
}

const GRAFANA_QUERIES: [&str; 2] = [
    r#"SELECT
        CASE WHEN
              quote_ident(table_schema) IN (
              SELECT
                CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
              FROM
                generate_series(
                  array_lower(string_to_array(current_setting('search_path'),','),1),
                  array_upper(string_to_array(current_setting('search_path'),','),1)
                ) as i,
                string_to_array(current_setting('search_path'),',') s
              )
          THEN quote_ident(table_name)
          ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
        END AS "table"
        FROM information_schema.tables
        WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog')
        ORDER BY 1"#,
    r#"SELECT quote_ident(column_name) AS "column", data_type AS "type"
        FROM information_schema.columns
        WHERE
          CASE WHEN array_length(parse_ident('public.windows'),1) = 2
            THEN quote_ident(table_schema) = (parse_ident('public.windows'))[1]
              AND quote_ident(table_name) = (parse_ident('public.windows'))[2]
            ELSE quote_ident(table_name) = 'public.windows'
          END"#,
];

#[test]
fn after_a_finite_input_sql_matches_the_sinks_over_http_and_psql() {
    let dir = tempfile::tempdir().unwrap();
    sim_input(dir.path(), 30_000);
    let r = Running::start(dir.path(), &file_config(dir.path(), ""));
    r.wait_finished();

    // windows == the JSONL sink's window records, field by field.
    let records = read_jsonl(&dir.path().join("out.jsonl"));
    let jsonl_windows: HashMap<String, &Value> = records
        .iter()
        .filter(|v| v.get("count").is_some())
        .map(|v| (key(v), v))
        .collect();
    let jsonl_alerts: Vec<&Value> = records.iter().filter(|v| v.get("rule").is_some()).collect();
    assert!(jsonl_windows.len() > 1000, "{}", jsonl_windows.len());
    assert!(!jsonl_alerts.is_empty());
    let rows = sql(r.http, "SELECT * FROM windows");
    assert_eq!(rows.len(), jsonl_windows.len());
    for row in &rows {
        let w = jsonl_windows
            .get(&key(row))
            .unwrap_or_else(|| panic!("not in the sink: {row}"));
        assert_eq!(row["windowEnd"], w["windowEnd"]);
        assert_eq!(row["count"], w["count"], "{row}");
        for f in ["sum", "avg", "min", "max"] {
            assert!(close(num(&row[f]), num(&w[f])), "{f}: {row} vs {w}");
        }
    }
    // alerts == the sink's alert records.
    let alert_rows = sql(r.http, "SELECT * FROM alerts ORDER BY id");
    assert_eq!(alert_rows.len(), jsonl_alerts.len());
    let by_id: HashMap<&str, &&Value> = jsonl_alerts
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a))
        .collect();
    for a in &alert_rows {
        let j = by_id[a["id"].as_str().unwrap()];
        for f in [
            "rule",
            "deviceId",
            "type",
            "window",
            "windowStart",
            "windowEnd",
            "state",
        ] {
            assert_eq!(a[f], j[f], "{f}");
        }
        assert!(close(num(&a["value"]), num(&j["value"])));
    }
    // Nothing is open after the end of input; the accounting adds up per partition.
    assert_eq!(
        sql(r.http, "SELECT count(*) AS n FROM live_windows")[0]["n"],
        0
    );
    let stats = sql(r.http, "SELECT * FROM stats ORDER BY partition");
    assert_eq!(stats.len(), 3);
    let mut received = 0.0;
    for s in &stats {
        assert_stats_row_adds_up(s);
        received += num(&s["received"]);
    }
    assert_eq!(received, 30_000.0);
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    let dead_lettered: f64 = stats
        .iter()
        .map(|s| num(&s["deadLettered"]) + num(&s["late"]))
        .sum();
    assert_eq!(dead.len() as f64, dead_lettered);
    // devices: one row per valid device, sequence high-water marks from the input.
    let devices = sql(
        r.http,
        "SELECT deviceId, events, duplicates, sequenceHighWater, lastSeen FROM devices ORDER BY deviceId",
    );
    assert_eq!(devices.len(), 120);
    let dup_total: f64 = devices.iter().map(|d| num(&d["duplicates"])).sum();
    let stats_dups: f64 = stats.iter().map(|s| num(&s["duplicate"])).sum();
    assert_eq!(dup_total, stats_dups);
    assert!(
        devices
            .iter()
            .all(|d| num(&d["events"]) > 0.0 && d["lastSeen"].is_string())
    );

    // Content types: CSV and an Arrow IPC stream carry the same rows.
    let (status, kind, csv) = http(
        r.http,
        "POST",
        "/sql",
        &[("Accept", "text/csv")],
        b"SELECT * FROM windows",
    );
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/csv"), "{kind}");
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("window,deviceId,type,windowStart,windowEnd,count,sum,avg,min,max\n"));
    assert_eq!(csv.lines().count(), rows.len() + 1);
    let (status, kind, ipc) = http(
        r.http,
        "POST",
        "/sql",
        &[("Accept", "application/vnd.apache.arrow.stream")],
        b"SELECT window, count FROM windows",
    );
    assert_eq!(status, 200);
    assert_eq!(kind, "application/vnd.apache.arrow.stream");
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, rows.len());

    // A bad query is a 400 with DataFusion's message; the server goes on.
    let (status, _, body) = http(r.http, "POST", "/sql", &[], b"SELECT nope FROM windows");
    assert_eq!(status, 400);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
    for bad in [
        "CREATE TABLE t AS SELECT 1",
        "DROP TABLE windows",
        "COPY (SELECT 1) TO '/tmp/eventide-should-not-exist.csv'",
        "",
    ] {
        let (status, _, body) = http(r.http, "POST", "/sql", &[], bad.as_bytes());
        assert_eq!(status, 400, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    assert!(!Path::new("/tmp/eventide-should-not-exist.csv").exists());
    assert_eq!(sql(r.http, "SELECT 1 AS one")[0]["one"], 1);

    // /metrics: valid Prometheus text whose counters equal the accounting.
    let (status, kind, body) = http(r.http, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain"), "{kind}");
    let m = parse_prometheus(&String::from_utf8(body).unwrap());
    assert_eq!(m["eventide_events_received_total"], 30_000.0);
    let outcomes: f64 = [
        "aggregated",
        "duplicate",
        "filtered",
        "late",
        "dead_lettered",
    ]
    .iter()
    .map(|o| m[&format!("eventide_events_total{{outcome=\"{o}\"}}")])
    .sum();
    assert_eq!(outcomes, 30_000.0);
    assert_eq!(
        m["eventide_events_total{outcome=\"duplicate\"}"],
        stats_dups
    );
    assert_eq!(m["eventide_windows_closed_total"], rows.len() as f64);
    assert_eq!(m["eventide_alerts_total"], alert_rows.len() as f64);
    assert_eq!(
        m["eventide_sink_records_total{stream=\"windows\"}"],
        rows.len() as f64
    );
    assert_eq!(
        m["eventide_sink_records_total{stream=\"dead_letter\"}"],
        dead.len() as f64
    );
    assert!(m["eventide_window_close_latency_seconds_count"] > 0.0);
    assert_eq!(
        m["eventide_window_close_latency_seconds_bucket{le=\"+Inf\"}"],
        m["eventide_window_close_latency_seconds_count"]
    );
    assert!(m.contains_key("eventide_watermark_lag_seconds{partition=\"2\"}"));
    // Probes; /ingest without an http source is unavailable.
    assert_eq!(http(r.http, "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(http(r.http, "GET", "/readyz", &[], b"").0, 200);
    assert_eq!(http(r.http, "POST", "/ingest", &[], b"{}").0, 503);

    // psql: \d lists the tables, each table answers, a bad query leaves the session
    // usable, and a prepared statement runs.
    let (ok, out, err) = run_psql(r.pg, &[], &["\\d"]);
    assert!(ok, "{err}");
    for t in ["alerts", "devices", "live_windows", "stats", "windows"] {
        assert!(out.contains(&format!("public|{t}|table")), "{t} in {out}");
    }
    let (ok, out, err) = run_psql(r.pg, &[], &["\\d windows"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("deviceId") && out.contains("windowStart"),
        "{out}"
    );
    for t in ["alerts", "devices", "live_windows", "stats", "windows"] {
        let (ok, out, err) = run_psql(r.pg, &[], &[&format!("SELECT count(*) AS n FROM {t}")]);
        assert!(ok, "{t}: {err}");
        let n: usize = out.lines().nth(1).unwrap().trim().parse().unwrap();
        let expected = match t {
            "windows" => rows.len(),
            "alerts" => alert_rows.len(),
            "devices" => 120,
            "stats" => 3,
            _ => 0,
        };
        assert_eq!(n, expected, "{t}");
    }
    let (ok, out, err) = run_psql(
        r.pg,
        &[],
        &[
            "SELECT nope FROM windows",
            "PREPARE big(BIGINT) AS SELECT count(*) AS n FROM windows WHERE count > $1",
            "EXECUTE big(0)",
            "SELECT 'still here' AS session",
        ],
    );
    assert!(!ok || err.contains("ERROR"), "the bad query fails");
    assert!(err.contains("nope"), "{err}");
    assert!(out.contains(&format!("n\n{}", rows.len())), "{out}");
    assert!(out.contains("session\nstill here"), "{out}");

    // The extended protocol with parameters (what drivers such as Grafana's use).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=eventide dbname=eventide", r.pg),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let stmt = client
            .prepare("SELECT window, count(*) AS n FROM windows WHERE window = $1 GROUP BY window")
            .await
            .unwrap();
        let got = client.query(&stmt, &[&"tumbling_1m"]).await.unwrap();
        let tumbling = rows.iter().filter(|r| r["window"] == "tumbling_1m").count() as i64;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].get::<_, String>(0), "tumbling_1m");
        assert_eq!(got[0].get::<_, i64>(1), tumbling);
        assert!(client.query("SELECT nope", &[]).await.is_err());
        // What Grafana's PostgreSQL data source asks to list tables and columns.
        for q in GRAFANA_QUERIES {
            let msgs = client
                .simple_query(q)
                .await
                .unwrap_or_else(|e| panic!("{q}: {e:?}"));
            let rows: Vec<_> = msgs
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some(r.get(0).unwrap_or("").to_string())
                    }
                    _ => None,
                })
                .collect();
            assert!(
                rows.iter()
                    .any(|r| r.ends_with("windows") || r == "deviceId"),
                "{q}: {rows:?}"
            );
        }
        let again = client.query(&stmt, &[&"sliding_5m"]).await.unwrap();
        assert_eq!(again.len(), 1, "the session is still usable");
    });

    assert_eq!(r.stop(), 0);
}

#[test]
fn http_ingest_feeds_live_windows_and_dead_letters_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[source]
kind = "http"

[pipeline]
partitions = 2

[[windows]]
name = "hourly"
kind = "tumbling"
size = "1h"

[dead_letter]
path = "{dead}"

[server]
token = "s3cret"
password = "pw"
"#,
        dead = dir.path().join("dead.jsonl").display()
    );
    let r = Running::start(dir.path(), &config);
    let auth = [("Authorization", "Bearer s3cret")];
    let event = |i: u32, device: &str, value: f64| {
        format!(
            r#"{{"eventId":"e{i}","deviceId":"{device}","deviceSequenceNumber":{i},"type":"CO2","value":{value},"createdAt":"2026-03-01T10:00:{:02}.000Z","complexData":{{"a":1}}}}"#,
            i % 60
        )
    };
    // The token is required everywhere but the probes.
    assert_eq!(
        http(
            r.http,
            "POST",
            "/ingest",
            &[],
            event(0, "d1", 1.0).as_bytes()
        )
        .0,
        401
    );
    assert_eq!(
        http(
            r.http,
            "POST",
            "/sql",
            &[("Authorization", "Bearer wrong")],
            b"SELECT 1"
        )
        .0,
        401
    );
    assert_eq!(http(r.http, "GET", "/healthz", &[], b"").0, 200);
    // One event, a batch, NDJSON with a malformed line, a pretty-printed event.
    let single = event(1, "d1", 10.0);
    let batch = format!("[{},{}]", event(2, "d1", 20.0), event(3, "d2", 30.0));
    let ndjson = format!(
        "{}\n{{\"eventId\": broken\n{}\n",
        event(4, "d2", 40.0),
        event(5, "d3", 50.0)
    );
    let pretty = serde_json::to_string_pretty(
        &serde_json::from_str::<Value>(&event(6, "d3", 60.0)).unwrap(),
    )
    .unwrap();
    for body in [&single, &batch, &ndjson, &pretty] {
        let (status, _, resp) = http(r.http, "POST", "/ingest", &auth, body.as_bytes());
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&resp));
    }
    assert_eq!(http(r.http, "POST", "/ingest", &auth, b"  \n").0, 400);

    // The events show up in live_windows (the hourly window stays open).
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let (status, _, body) = http(
            r.http,
            "POST",
            "/sql",
            &auth,
            b"SELECT deviceId, count, sum FROM live_windows ORDER BY deviceId",
        );
        assert_eq!(status, 200);
        let rows: Vec<Value> = serde_json::from_slice(&body).unwrap();
        let total: u64 = rows.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        if total == 6 {
            break rows;
        }
        assert!(Instant::now() < deadline, "live_windows: {rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let sums: Vec<(String, f64)> = rows
        .iter()
        .map(|r| (r["deviceId"].as_str().unwrap().to_string(), num(&r["sum"])))
        .collect();
    assert_eq!(
        sums,
        vec![
            ("d1".into(), 30.0),
            ("d2".into(), 70.0),
            ("d3".into(), 110.0)
        ]
    );
    // The malformed line went to the dead-letter sink with its reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = read_jsonl(&dir.path().join("dead.jsonl"));
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "parse");
    assert!(dead[0]["payload"].as_str().unwrap().contains("broken"));
    assert!(dead[0]["source"].as_str().unwrap().starts_with("http"));
    // stats adds up.
    let (_, _, body) = http(
        r.http,
        "POST",
        "/sql",
        &auth,
        b"SELECT sum(received) AS r, sum(aggregated) AS a, sum(deadLettered) AS d FROM stats",
    );
    let s: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s[0]["r"].as_u64(), s[0]["a"].as_u64(), s[0]["d"].as_u64()),
        (Some(7), Some(6), Some(1))
    );

    // PostgreSQL with a password: the right one works, a wrong one is refused.
    let (ok, out, err) = run_psql(
        r.pg,
        &[("PGPASSWORD", "pw")],
        &["SELECT count(*) AS n FROM devices"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("n\n3"), "{out}");
    let (ok, _, err) = run_psql(r.pg, &[("PGPASSWORD", "nope")], &["SELECT 1"]);
    assert!(
        !ok && err
            .to_lowercase()
            .contains("password authentication failed"),
        "{err}"
    );

    assert_eq!(r.stop(), 0);
}

#[test]
fn while_running_live_counts_only_grow_and_limits_stop_runaway_queries() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[source]
kind = "simulator"
devices = 40
rate = 4000.0
interval = "1s"
seed = 5
start = "2026-02-01T00:00:00Z"

[pipeline]
partitions = 2
{WINDOWS_AND_RULE}
[dead_letter]
path = "{dead}"

[server]
query_timeout = "300ms"
max_rows = 50
snapshot_interval = "50ms"
"#,
        dead = dir.path().join("dead.jsonl").display()
    );
    let r = Running::start(dir.path(), &config);
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut grew = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let rows = sql(
            r.http,
            "SELECT window, deviceId, type, windowStart, count FROM live_windows WHERE deviceId = 'contoso://device-id-1'",
        );
        for row in rows {
            let k = key(&row);
            let c = row["count"].as_u64().unwrap();
            if let Some(&before) = last.get(&k) {
                assert!(c >= before, "{k}: {before} -> {c}");
                grew += (c > before) as u32;
            }
            last.insert(k, c);
        }
        for s in sql(r.http, "SELECT * FROM stats") {
            assert_stats_row_adds_up(&s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(grew > 5, "live counts grew {grew} times");

    // A runaway query is cancelled at the timeout, a huge result refused; ingestion
    // goes on meanwhile.
    let before: f64 = sql(r.http, "SELECT sum(received) AS r FROM stats")[0]["r"]
        .as_f64()
        .unwrap();
    let (status, _, body) = http(
        r.http,
        "POST",
        "/sql",
        &[],
        b"SELECT count(*) FROM generate_series(1, 2000000000) a",
    );
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = http(
        r.http,
        "POST",
        "/sql",
        &[],
        b"SELECT * FROM generate_series(1, 1000)",
    );
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("max_rows"));
    std::thread::sleep(Duration::from_millis(300));
    let after: f64 = sql(r.http, "SELECT sum(received) AS r FROM stats")[0]["r"]
        .as_f64()
        .unwrap();
    assert!(after > before, "ingestion continued: {before} -> {after}");
    let (ok, _, err) = run_psql(r.pg, &[], &["SELECT * FROM generate_series(1, 1000)"]);
    assert!(!ok && err.contains("max_rows"), "{err}");

    assert_eq!(r.stop(), 0);
}

/// The `reference` table shows what is loaded, and `/metrics` counts the loads.
#[test]
fn the_reference_table_shows_what_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    sim_input(dir.path(), 2_000);
    let table = dir.path().join("limits.csv");
    std::fs::write(
        &table,
        "deviceId,type,co2_max,temp_max\n\"contoso://device-id-1\",CO2,900,\n\"id, with \"\"quotes\"\"\",,1000.5,30\n",
    )
    .unwrap();
    let config = file_config(dir.path(), "")
        + &format!(
            "\n[[reference]]\nname = \"limits\"\npath = \"{}\"\n",
            table.display()
        );
    let r = Running::start(dir.path(), &config);
    r.wait_finished();
    let rows = sql(
        r.http,
        "SELECT reference, deviceId, type, \"column\", value FROM reference ORDER BY deviceId, \"column\"",
    );
    let got: Vec<(String, String, Value, String, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["reference"].as_str().unwrap().to_owned(),
                r["deviceId"].as_str().unwrap().to_owned(),
                r["type"].clone(),
                r["column"].as_str().unwrap().to_owned(),
                num(&r["value"]),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "limits".into(),
                "contoso://device-id-1".into(),
                Value::from("CO2"),
                "co2_max".into(),
                900.0
            ),
            (
                "limits".into(),
                "id, with \"quotes\"".into(),
                Value::Null,
                "co2_max".into(),
                1000.5
            ),
            (
                "limits".into(),
                "id, with \"quotes\"".into(),
                Value::Null,
                "temp_max".into(),
                30.0
            ),
        ]
    );
    let (status, _, body) = http(r.http, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let m = parse_prometheus(&String::from_utf8(body).unwrap());
    assert_eq!(m["eventide_reference_rows{reference=\"limits\"}"], 2.0);
    assert_eq!(
        m["eventide_reference_loads_total{reference=\"limits\"}"],
        1.0
    );
    assert_eq!(
        m["eventide_reference_load_errors_total{reference=\"limits\"}"],
        0.0
    );
}
