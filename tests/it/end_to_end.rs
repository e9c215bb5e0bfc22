//! End to end: simulator output → eventide → windows, alerts and dead letters,
//! checked against the independent reference model in `common`.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use common::*;
use eventide::config::Config;
use eventide::pipeline::{self, Status};
use eventide_simulator::SimConfig;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_eventide");

fn config_text(dir: &Path, source: &str, partitions: usize, extra_pipeline: &str) -> String {
    format!(
        r#"
[source]
{source}

[pipeline]
partitions = {partitions}
max_out_of_order = "5s"
allowed_lateness = "2s"
dedupe = "both"
{extra_pipeline}

{rules}
[[sinks]]
kind = "jsonl"
path = "{out}"
streams = ["windows", "alerts"]

[dead_letter]
kind = "jsonl"
path = "{dead}"
"#,
        out = dir.join("out.jsonl").display(),
        dead = dir.join("dead.jsonl").display(),
        rules = WINDOWS_AND_RULE,
    )
}

/// Writes `input` into `dir`; returns its path and the `[source]` lines that read it.
fn file_source(dir: &Path, input: &[u8]) -> (std::path::PathBuf, String) {
    let path = dir.join("events.ndjson");
    std::fs::write(&path, input).unwrap();
    let source = format!("kind = \"file\"\npath = \"{}\"", path.display());
    (path, source)
}

fn model(partitions: usize) -> Model {
    Model {
        partitions,
        ooo: 5_000,
        lateness: 2_000,
        windows: vec![
            WindowSpec {
                name: "tumbling_1m".into(),
                size: 60_000,
                slide: 60_000,
            },
            WindowSpec {
                name: "sliding_5m".into(),
                size: 300_000,
                slide: 60_000,
            },
        ],
        rules: vec![RuleSpec {
            name: "co2_high".into(),
            window: "sliding_5m".into(),
            kind: "CO2".into(),
            above: 1000.0,
            below: 950.0,
            limits: None,
        }],
        types: None,
        absences: Vec::new(),
        expects: Vec::new(),
        per_device: true,
    }
}

/// Messy input: duplicates, malformed lines, batches, and disorder beyond the
/// out-of-order bound (so some events are late). ~33 minutes of event time.
fn messy_input(events: u64, seed: u64) -> Vec<u8> {
    generate(
        SimConfig {
            devices: 300,
            seed,
            interval_ms: 30_000,
            duplicate_fraction: 0.02,
            malformed_fraction: 0.01,
            batch_fraction: 0.1,
            batch_size: 8,
            // Beyond the 5-minute sliding window for some: late for every window.
            max_disorder_ms: 400_000,
            hot_devices: 15,
            complex_fields: 4,
            ..SimConfig::default()
        },
        events,
    )
}

#[test]
fn simulated_input_matches_the_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    let input = messy_input(30_000, 7);
    let (path, source) = file_source(dir.path(), &input);
    let cfg = Config::parse(&config_text(dir.path(), &source, 3, "")).unwrap();
    let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();

    let exp = model(3).expect(&input);
    let messy = (exp.late, exp.duplicate, exp.parse, exp.schema);
    assert!(
        exp.late > 100 && exp.duplicate > 100 && exp.parse > 10 && exp.schema > 10,
        "the input is messy enough: {messy:?}"
    );
    assert!(
        exp.alerts.values().any(|a| a.0 == "cleared"),
        "hysteresis is exercised"
    );
    let c = report.counts;
    assert!(report.completed);
    assert_eq!(c.received, 30_000);
    assert_accounting(&report, &exp, "simulated input");

    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_windows(&out, &exp.windows);
    assert_alerts(&out, &exp.alerts);
    assert_eq!(c.windows as usize, exp.windows.len());

    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    let by = |r: &str| dead.iter().filter(|d| d["reason"] == r).count() as u64;
    assert_eq!(
        (by("parse"), by("schema"), by("late")),
        (exp.parse, exp.schema, exp.late)
    );
    let lines: Vec<&str> = std::str::from_utf8(&input).unwrap().lines().collect();
    for d in &dead {
        let source = d["source"].as_str().unwrap();
        let (file, line) = source.rsplit_once(':').unwrap();
        assert_eq!(file, path.display().to_string());
        let line: usize = line.parse().unwrap();
        let payload = d["payload"].as_str().unwrap();
        assert!(
            lines[line - 1].contains(payload),
            "payload is the raw message or event at {source}"
        );
        assert!(!d["error"].as_str().unwrap().is_empty());
        assert!(eventide::event::parse_rfc3339_ms(d["receivedAt"].as_str().unwrap()).is_some());
    }
}

/// One event a third of the way in from a device whose clock says 2031: with the
/// clock-skew guard (the default) it is dead-lettered with reason `skew` and every other
/// output is the model's for the input without it; without the guard (a skew limit of
/// years) it drags its own device's watermark five years ahead, and with one watermark
/// per partition its partition's: thousands of other devices' events are late.
#[test]
fn one_device_with_a_wrong_clock_costs_no_other_device_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let clean = messy_input(30_000, 7);
    let lines: Vec<&str> = std::str::from_utf8(&clean).unwrap().lines().collect();
    let third = lines.len() / 3;
    let device = lines[third..]
        .iter()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["deviceId"].as_str().map(str::to_owned))
        })
        .unwrap();
    let future = format!(
        r#"{{"eventId":"wrong-clock","deviceId":"{device}","deviceSequenceNumber":999999,"type":"CO2","value":5000,"createdAt":"2031-06-01T00:00:00.000Z"}}"#
    );
    let mut input = lines[..third].join("\n");
    input.push('\n');
    input.push_str(&future);
    input.push('\n');
    input.push_str(&lines[third..].join("\n"));
    input.push('\n');
    let exp = model(2).expect(&clean);

    let (_, source) = file_source(dir.path(), input.as_bytes());
    let cfg = Config::parse(&config_text(dir.path(), &source, 2, "")).unwrap();
    let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
    let c = report.counts;
    assert!(c.balanced(), "{c}");
    assert_eq!(c.received, exp.received + 1);
    assert_eq!(
        (c.aggregated, c.duplicate, c.late, c.dead_lettered, c.skewed),
        (
            exp.aggregated,
            exp.duplicate,
            exp.late,
            exp.parse + exp.schema + 1,
            1
        )
    );
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_windows(&out, &exp.windows);
    assert_alerts(&out, &exp.alerts);
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    let skew: Vec<&Value> = dead.iter().filter(|d| d["reason"] == "skew").collect();
    assert_eq!(skew.len(), 1);
    assert_eq!(skew[0]["payload"], future.as_str());
    assert_eq!(
        skew[0]["source"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap(),
        (third + 1).to_string()
    );

    // Without the guard, per device: only that device's later events are late.
    let device_events = lines[third..]
        .iter()
        .filter(|l| l.contains(&format!("\"{device}\"")))
        .count() as u64;
    let (_dir, report) = run_file(input.as_bytes(), 2, "max_clock_skew = \"100000d\"");
    assert!(
        report.counts.late <= exp.late + device_events,
        "{}",
        report.counts
    );

    // Without the guard, per partition: the partition's watermark jumps to 2031.
    let (_dir, report) = run_file(
        input.as_bytes(),
        2,
        "max_clock_skew = \"100000d\"\nevent_time = \"partition\"",
    );
    assert!(
        report.counts.late > exp.late + 3_000,
        "without the guard other devices' events are late: {}",
        report.counts
    );
}

/// Runs `input` from a file with `extra` in `[pipeline]`; returns the directory of its
/// outputs (`out.jsonl`, `dead.jsonl`) and the report.
fn run_file(input: &[u8], partitions: usize, extra: &str) -> (tempfile::TempDir, pipeline::Report) {
    let dir = tempfile::tempdir().unwrap();
    let (_, source) = file_source(dir.path(), input);
    let cfg = Config::parse(&config_text(dir.path(), &source, partitions, extra)).unwrap();
    let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
    (dir, report)
}

/// Runs `input` from a file with `extra` in `[pipeline]`; checks the counts, windows,
/// alerts and late dead letters against `m`, and returns the expectation.
fn run_against(input: &[u8], partitions: usize, extra: &str, m: &Model, what: &str) -> Expected {
    let (dir, report) = run_file(input, partitions, extra);
    let exp = m.expect(input);
    assert!(report.completed, "{what}");
    assert_accounting(&report, &exp, what);
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_windows(&out, &exp.windows);
    assert_alerts(&out, &exp.alerts);
    assert_eq!(report.counts.windows as usize, exp.windows.len(), "{what}");
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    let late = dead.iter().filter(|d| d["reason"] == "late").count() as u64;
    assert_eq!(late, exp.late, "{what}");
    exp
}

#[test]
fn partition_event_time_keeps_one_watermark_per_partition() {
    let input = messy_input(30_000, 7);
    let mut m = model(3);
    m.per_device = false;
    let exp = run_against(
        &input,
        3,
        "event_time = \"partition\"",
        &m,
        "partition mode",
    );
    // The same input per device: events late only for their own device.
    let per_device = model(3).expect(&input);
    assert!(
        exp.late > per_device.late,
        "{} vs {}",
        exp.late,
        per_device.late
    );
}

/// Clean simulated input (nothing late under either clock), as lines with their
/// device and event time.
fn clean_lines(seed: u64) -> Vec<(String, String, i64)> {
    let input = generate(
        SimConfig {
            devices: 60,
            seed,
            interval_ms: 15_000,
            max_disorder_ms: 3_000,
            duplicate_fraction: 0.02,
            hot_devices: 6,
            ..SimConfig::default()
        },
        9_000,
    );
    std::str::from_utf8(&input)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let ts = eventide::event::parse_rfc3339_ms(v["createdAt"].as_str().unwrap()).unwrap();
            (l.to_owned(), v["deviceId"].as_str().unwrap().to_owned(), ts)
        })
        .collect()
}

fn joined(lines: impl IntoIterator<Item = String>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A device whose clock runs ten minutes behind everyone's: per device, every one of
/// its events is aggregated in the windows its own timestamps name; per partition,
/// they are all late.
#[test]
fn a_device_clock_ten_minutes_behind_loses_nothing() {
    let lines = clean_lines(11);
    let slow = lines[0].1.clone();
    let behind = |l: &(String, String, i64)| {
        if l.1 != slow {
            return l.0.clone();
        }
        let mut v: Value = serde_json::from_str(&l.0).unwrap();
        v["createdAt"] = Value::from(eventide::event::rfc3339_ms(l.2 - 600_000));
        v.to_string()
    };
    let input = joined(lines.iter().map(behind));
    let slow_events = lines.iter().filter(|l| l.1 == slow).count() as u64;
    let exp = run_against(&input, 2, "", &model(2), "a slow clock, per device");
    assert_eq!(exp.late, 0);
    let slow_windows = exp
        .windows
        .keys()
        .filter(|k| k.contains(&format!("|{slow}|")))
        .count();
    assert!(slow_windows > 10, "{slow_windows}");

    let mut m = model(2);
    m.per_device = false;
    let exp = run_against(
        &input,
        2,
        "event_time = \"partition\"",
        &m,
        "a slow clock, per partition",
    );
    assert!(
        exp.late >= slow_events * 9 / 10,
        "{} of {slow_events}",
        exp.late
    );
}

/// A device offline for 30 minutes sends its backlog, in order, once the others are
/// current: per device it is aggregated in full, its alerts in its own time.
#[test]
fn an_offline_backlog_is_aggregated_in_full() {
    let lines = clean_lines(12);
    let t0 = lines.iter().map(|l| l.2).min().unwrap();
    // It comes back when the others are at 30 minutes.
    let back_at = t0 + 30 * 60_000;
    let (offline, rest): (Vec<_>, Vec<_>) = lines
        .iter()
        .partition(|l| l.1 == lines[3].1 && l.2 <= back_at);
    let back = rest.iter().position(|l| l.2 > back_at).unwrap();
    let mut input: Vec<String> = rest[..back].iter().map(|l| l.0.clone()).collect();
    input.extend(offline.iter().map(|l| l.0.clone()));
    input.extend(rest[back..].iter().map(|l| l.0.clone()));
    assert!(offline.len() > 50, "{}", offline.len());
    let input = joined(input);
    let exp = run_against(&input, 2, "", &model(2), "a backlog, per device");
    assert_eq!(exp.late, 0);
    // One watermark per partition: the backlog is late.
    let mut m = model(2);
    m.per_device = false;
    let exp = run_against(
        &input,
        2,
        "event_time = \"partition\"",
        &m,
        "a backlog, per partition",
    );
    assert!(
        exp.late as usize > offline.len() / 2,
        "{} of {}",
        exp.late,
        offline.len()
    );
}

#[test]
fn results_do_not_depend_on_the_number_of_partitions_when_nothing_is_late() {
    let input = generate(
        SimConfig {
            devices: 100,
            interval_ms: 20_000,
            max_disorder_ms: 4_000,
            duplicate_fraction: 0.05,
            complex_fields: 2,
            ..SimConfig::default()
        },
        8_000,
    );
    let mut outputs = Vec::new();
    for partitions in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let (_, source) = file_source(dir.path(), &input);
        let cfg = Config::parse(&config_text(dir.path(), &source, partitions, "")).unwrap();
        let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
        assert_eq!(report.counts.late, 0);
        let exp = model(partitions).expect(&input);
        let out = read_jsonl(&dir.path().join("out.jsonl"));
        assert_windows(&out, &exp.windows);
        outputs.push(exp.windows);
    }
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn the_type_filter_counts_filtered_events() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(
        SimConfig {
            devices: 50,
            complex_fields: 1,
            ..SimConfig::default()
        },
        3_000,
    );
    let (_, source) = file_source(dir.path(), &input);
    let cfg = Config::parse(&config_text(dir.path(), &source, 2, "types = [\"TEMP\"]")).unwrap();
    let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
    let mut m = model(2);
    m.types = Some(vec!["TEMP".into()]);
    let exp = m.expect(&input);
    assert!(exp.filtered > 1000);
    assert_eq!(report.counts.filtered, exp.filtered);
    assert!(report.counts.balanced());
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert!(out.iter().all(|r| r["type"] == "TEMP"));
    assert_windows(&out, &exp.windows);
}

#[test]
fn a_late_event_goes_to_dead_letter_with_reason_late() {
    let dir = tempfile::tempdir().unwrap();
    let ev = |id: &str, t: &str| {
        format!(
            r#"{{"eventId":"{id}","deviceId":"d1","deviceSequenceNumber":{},"type":"CO2","value":1.0,"createdAt":"{t}"}}"#,
            id.len()
        )
    };
    let input = [
        ev("a", "2026-01-01T00:00:10Z"),
        ev("bb", "2026-01-01T00:10:00Z"),
        ev("ccc", "2026-01-01T00:00:20Z"),
    ]
    .join("\n");
    let (path, source) = file_source(dir.path(), input.as_bytes());
    let cfg = Config::parse(&config_text(dir.path(), &source, 1, "")).unwrap();
    let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
    assert_eq!((report.counts.aggregated, report.counts.late), (2, 1));
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "late");
    assert_eq!(dead[0]["payload"], ev("ccc", "2026-01-01T00:00:20Z"));
    assert_eq!(dead[0]["source"], format!("{}:3", path.display()));
}

/// Starts `eventide run` on `config` (written into `dir`), stdout discarded.
fn spawn(config: &str, dir: &Path, stdin: Stdio) -> std::process::Child {
    let cfg_path = dir.join("eventide.toml");
    std::fs::write(&cfg_path, config).unwrap();
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `eventide run` to the end, feeding it `stdin`; returns its exit code and stderr.
fn run_binary(config: &str, dir: &Path, stdin: Option<&[u8]>) -> (i32, String) {
    let mut child = spawn(
        config,
        dir,
        if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        },
    );
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_reads_stdin_and_reports_balanced_accounting() {
    let dir = tempfile::tempdir().unwrap();
    let input = messy_input(5_000, 3);
    let (code, stderr) = run_binary(
        &config_text(dir.path(), "kind = \"stdin\"", 2, ""),
        dir.path(),
        Some(&input),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("input complete") && stderr.contains("(adds up)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("received") || stderr.contains("5000 events"),
        "{stderr}"
    );
    let exp = model(2).expect(&input);
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_windows(&out, &exp.windows);
    assert_alerts(&out, &exp.alerts);
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    assert!(
        dead.iter()
            .all(|d| d["source"].as_str().unwrap().starts_with("stdin:"))
    );
    assert_eq!(dead.len() as u64, exp.parse + exp.schema + exp.late);
}

#[test]
fn a_missing_input_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_binary(
        &config_text(
            dir.path(),
            "kind = \"file\"\npath = \"/no/such/file.ndjson\"",
            1,
            "",
        ),
        dir.path(),
        None,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("/no/such/file.ndjson"), "{stderr}");
}

#[test]
fn an_interrupted_run_flushes_what_has_closed() {
    for signal in ["-INT", "-TERM"] {
        interrupted_run_flushes_what_has_closed(signal);
    }
}

fn interrupted_run_flushes_what_has_closed(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    // 4 event-seconds per wall second: 1-second windows close continuously.
    let source = "kind = \"simulator\"\ndevices = 50\nrate = 2000.0\ninterval = \"100ms\"\nstart = \"2026-01-01T00:00:00Z\"\nmax_disorder = \"200ms\"";
    let config =
        config_text(dir.path(), source, 2, "").replace("size = \"1m\"\n", "size = \"1s\"\n");
    let child = spawn(&config, dir.path(), Stdio::null());
    std::thread::sleep(Duration::from_millis(3000));
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("interrupted") && stderr.contains("(adds up)"),
        "{stderr}"
    );
    let windows = read_jsonl(&dir.path().join("out.jsonl")); // every line parses
    let tumbling = windows
        .iter()
        .filter(|w| w["window"] == "tumbling_1m")
        .count();
    assert!(
        tumbling > 50,
        "{signal}: closed windows were written before exit: {tumbling}"
    );
}

#[test]
fn the_embedded_demo_shows_windows_and_a_raised_alert_within_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let child = Command::new(BIN)
        .args([
            "run",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--postgres",
            "off",
        ])
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(9));
    // The demo serves SQL over its live windows.
    let live = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let q = "SELECT count(*) AS n FROM live_windows";
        write!(
            s,
            "POST /sql HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{q}",
            q.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let n: u64 = live
        .split("\"n\":")
        .nth(1)
        .and_then(|r| r.split('}').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{live}"));
    assert!(n > 100, "open windows in the demo: {n}");
    std::thread::sleep(Duration::from_secs(1));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("windows tumbling_1m") && stdout.contains("windows sliding_5m"),
        "{stdout}"
    );
    assert!(stdout.contains("ALERT RAISED"), "{stdout}");
    assert!(
        stderr.contains("status:") && stderr.contains("(adds up)"),
        "{stderr}"
    );
    assert!(
        dir.path().join("eventide-demo-dead-letter.jsonl").exists(),
        "dead letters go to the temp dir"
    );
}

#[test]
fn an_idle_partition_closes_its_windows_by_processing_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(
        dir.path(),
        "kind = \"stdin\"",
        1,
        "idle_timeout = \"200ms\"",
    )
    .replace("size = \"1m\"\n", "size = \"1s\"\n");
    let mut child = spawn(&config, dir.path(), Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"eventId":"a","deviceId":"quiet","deviceSequenceNumber":1,"type":"CO2","value":5,"createdAt":"2026-01-01T00:00:00.100Z"}}"#).unwrap();
    stdin.flush().unwrap();
    // No more input: the watermark (00:00:00.100 - 5s) must follow the wall clock until
    // the 1-second window closes (end + 2s lateness + 5s out-of-order ≈ 8s).
    let started = Instant::now();
    let mut found: Vec<Value> = Vec::new();
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        found = read_jsonl(&dir.path().join("out.jsonl"));
        if !found.is_empty() {
            break;
        }
    }
    assert_eq!(
        found.len(),
        1,
        "the window closed while the input was still open"
    );
    assert_eq!(
        found[0]["id"],
        "tumbling_1m|quiet|CO2|2026-01-01T00:00:00.000Z"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "not before the watermark could pass it"
    );
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let all = read_jsonl(&dir.path().join("out.jsonl"));
    assert_eq!(
        all.iter().filter(|w| w["window"] == "sliding_5m").count(),
        5,
        "the rest closed at end of input"
    );
}

#[test]
fn a_failing_sink_stops_the_run_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(
        SimConfig {
            devices: 50,
            complex_fields: 2,
            ..SimConfig::default()
        },
        20_000,
    );
    let (_, source) = file_source(dir.path(), &input);
    // /dev/full accepts the open and fails every write (ENOSPC).
    let config = config_text(dir.path(), &source, 2, "").replace(
        &dir.path().join("out.jsonl").display().to_string(),
        "/dev/full",
    );
    let (code, stderr) = run_binary(&config, dir.path(), None);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("write failed"), "{stderr}");
}

#[test]
fn each_dedupe_mode_rejects_what_it_names() {
    let ev = |id: &str, seq: u64| {
        format!(
            r#"{{"eventId":"{id}","deviceId":"d1","deviceSequenceNumber":{seq},"type":"CO2","value":1.0,"createdAt":"2026-01-01T00:00:01Z"}}"#
        )
    };
    // a: original; a again: same id; b: new id, same sequence number; c: new both (gap of 1).
    let input = [ev("a", 1), ev("a", 1), ev("b", 1), ev("c", 3)].join("\n");
    for (mode, aggregated, duplicate) in [
        ("event_id", 3, 1),
        ("device_sequence", 2, 2),
        ("both", 2, 2),
        ("none", 4, 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_, source) = file_source(dir.path(), input.as_bytes());
        let text = config_text(dir.path(), &source, 1, "")
            .replace("dedupe = \"both\"", &format!("dedupe = \"{mode}\""));
        let report = pipeline::run(
            &Config::parse(&text).unwrap(),
            Arc::new(AtomicBool::new(false)),
            Status::Off,
        )
        .unwrap();
        assert_eq!(
            (report.counts.aggregated, report.counts.duplicate),
            (aggregated, duplicate),
            "{mode}"
        );
        assert_eq!(report.counts.gaps, 1, "{mode}: sequence 2 never came");
    }
}

#[test]
fn an_oversized_message_is_dead_lettered_and_the_rest_processed() {
    let dir = tempfile::tempdir().unwrap();
    let ev = |id: &str| {
        format!(
            r#"{{"eventId":"{id}","deviceId":"d1","deviceSequenceNumber":{},"type":"CO2","value":1.0,"createdAt":"2026-01-01T00:00:01Z"}}"#,
            id.len()
        )
    };
    let huge = format!(
        r#"{{"eventId":"x","blob":"{}"}}"#,
        "a".repeat(eventide::ingest::MAX_MESSAGE + (3 << 20))
    );
    let input = [ev("a"), huge, ev("bb")].join("\n");
    let (_, source) = file_source(dir.path(), input.as_bytes());
    let report = pipeline::run(
        &Config::parse(&config_text(dir.path(), &source, 2, "")).unwrap(),
        Arc::new(AtomicBool::new(false)),
        Status::Off,
    )
    .unwrap();
    assert_eq!(
        (
            report.counts.received,
            report.counts.aggregated,
            report.counts.dead_lettered
        ),
        (3, 2, 1)
    );
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "parse");
    assert!(dead[0]["error"].as_str().unwrap().contains("exceeds"));
    assert!(
        dead[0]["payload"].as_str().unwrap().len() <= 1024,
        "only the beginning is kept"
    );
    assert!(dead[0]["source"].as_str().unwrap().ends_with(":2"));
}

/// The run's accounting is the model's: every count, and the sequence gaps.
fn assert_accounting(report: &pipeline::Report, exp: &Expected, what: &str) {
    let c = report.counts;
    assert!(c.balanced(), "{what}: {c}");
    assert_eq!(
        (
            c.received,
            c.aggregated,
            c.duplicate,
            c.filtered,
            c.late,
            c.dead_lettered
        ),
        (
            exp.received,
            exp.aggregated,
            exp.duplicate,
            exp.filtered,
            exp.late,
            exp.parse + exp.schema
        ),
        "{what}"
    );
    assert_eq!(c.gaps, exp.gaps, "{what}: sequence gaps");
}

/// Runs `input` (in `dir`) with `[source]` extra lines `fields`, and checks every
/// output against the reference model's reading of `model_input` (the same events,
/// perhaps under other member names).
fn matches_the_model(input: &[u8], model_input: &[u8], fields: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (_, source) = file_source(dir.path(), input);
    let source = format!("{source}\n{fields}");
    let cfg = Config::parse(&config_text(dir.path(), &source, 2, ""))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
    let exp = model(2).expect(model_input);
    assert!(exp.aggregated > 1000 && exp.schema > 10, "{what}: {exp:?}");
    assert_accounting(&report, &exp, what);
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_windows(&out, &exp.windows);
    assert_alerts(&out, &exp.alerts);
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    let by = |r: &str| dead.iter().filter(|d| d["reason"] == r).count() as u64;
    assert_eq!(
        (by("parse"), by("schema"), by("late")),
        (exp.parse, exp.schema, exp.late),
        "{what}"
    );
}

fn messy_input_in(layout: eventide_simulator::Layout, events: u64, seed: u64) -> Vec<u8> {
    generate(
        SimConfig {
            devices: 300,
            seed,
            interval_ms: 30_000,
            duplicate_fraction: 0.02,
            malformed_fraction: 0.01,
            batch_fraction: 0.1,
            batch_size: 8,
            max_disorder_ms: 400_000,
            hot_devices: 15,
            complex_fields: 23,
            layout,
            ..SimConfig::default()
        },
        events,
    )
}

/// The streaming-at-scale layout, the compact one, Python's spacing and a random
/// member order per event: each gives the reference model's windows, alerts and
/// accounting.
#[test]
fn every_layout_matches_the_reference_model() {
    use eventide_simulator::Layout;
    for layout in [
        Layout::Sas,
        Layout::Compact,
        Layout::Pretty,
        Layout::Shuffled,
    ] {
        let input = messy_input_in(layout, 12_000, 21);
        matches_the_model(&input, &input, "", &format!("{layout:?}"));
    }
}

/// Renames each event's members as a mapped producer would send them: `id`,
/// `device`, `seq`, the value under its type's name (a multi-metric payload), `ts` in
/// epoch milliseconds. Lines that are not JSON, and members that do not read, are
/// left as they are (so they are refused for the same reason).
fn mapped(input: &[u8]) -> Vec<u8> {
    fn event(v: Value) -> Value {
        let Value::Object(o) = v else { return v };
        let kind = o.get("type").and_then(Value::as_str).map(str::to_owned);
        let mut out = serde_json::Map::new();
        for (k, v) in o {
            let k = match k.as_str() {
                "eventId" => "id".to_string(),
                "deviceId" => "device".to_string(),
                "deviceSequenceNumber" => "seq".to_string(),
                "type" if kind.as_deref().is_some_and(|k| k == "CO2" || k == "TEMP") => continue,
                "value" => match &kind {
                    Some(t) if t == "CO2" || t == "TEMP" => t.clone(),
                    _ => "value".to_string(),
                },
                "createdAt" => {
                    let ms = v.as_str().and_then(eventide::event::parse_rfc3339_ms);
                    out.insert("ts".into(), ms.map_or(v, Value::from));
                    continue;
                }
                _ => k,
            };
            out.insert(k, v);
        }
        Value::Object(out)
    }
    let mut out = Vec::new();
    for line in std::str::from_utf8(input).unwrap().lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Array(batch)) => {
                let batch: Vec<Value> = batch.into_iter().map(event).collect();
                out.extend_from_slice(serde_json::to_string(&batch).unwrap().as_bytes());
            }
            Ok(v) => out.extend_from_slice(serde_json::to_string(&event(v)).unwrap().as_bytes()),
            Err(_) => out.extend_from_slice(line.as_bytes()),
        }
        out.push(b'\n');
    }
    out
}

/// Other member names, epoch-millisecond times and a multi-metric payload
/// (`value = ["CO2", "TEMP"]`, no type member) give the reference model's results for
/// the same events under the contract's names.
#[test]
fn a_mapped_schema_matches_the_reference_model() {
    let input = messy_input_in(eventide_simulator::Layout::Sas, 12_000, 22);
    let renamed = mapped(&input);
    assert!(
        std::str::from_utf8(&renamed)
            .unwrap()
            .contains(r#""device":"contoso://device-id-"#)
    );
    let fields = r#"
[source.fields]
event_id = "id"
device_id = "device"
sequence = "seq"
type = ""
value = ["CO2", "TEMP"]
time = "ts"
time_format = "epoch_ms"
"#;
    matches_the_model(&renamed, &input, fields, "mapped");
}

/// Runs the usual config (2 partitions) over `input` in `dir`, with `rules` (TOML,
/// e.g. `[[rules]]` and `[[reference]]` tables) added.
fn run_with_rules(dir: &Path, input: &[u8], rules: &str) -> pipeline::Report {
    let (_, source) = file_source(dir, input);
    let text =
        config_text(dir, &source, 2, "").replacen("[[sinks]]", &format!("{rules}\n[[sinks]]"), 1);
    let cfg = Config::parse(&text).unwrap();
    pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap()
}

/// Devices that stop at known times raise one absence alert each at their deadline
/// and clear when they report again; one that stays silent to the end is raised if
/// its partition's clock passed its deadline; a short silence raises nothing. Per
/// type (no filter) and per device (the filter pins a type), against the model.
#[test]
fn silent_devices_raise_absence_alerts_as_the_model_does() {
    let lines = clean_lines(13);
    let t0 = lines.iter().map(|l| l.2).min().unwrap();
    let min = |m: i64| t0 + m * 60_000;
    let (gone, paused, brief) = (lines[0].1.clone(), lines[1].1.clone(), lines[2].1.clone());
    let input = joined(
        lines
            .iter()
            .filter(|l| {
                let t = l.2;
                !(l.1 == gone && t > min(5)
                    || l.1 == paused && t > min(8) && t < min(12)
                    || l.1 == brief && t > min(3) && t < min(3) + 40_000)
            })
            .map(|l| l.0.clone()),
    );
    let rules = "\n[[rules]]\nname = \"silent\"\nkind = \"absence\"\nafter = \"2m\"\n\n[[rules]]\nname = \"co2_silent\"\nkind = \"absence\"\nfilter = \"type = 'CO2'\"\nafter = \"90s\"\n";
    let dir = tempfile::tempdir().unwrap();
    let report = run_with_rules(dir.path(), &input, rules);
    let mut m = model(2);
    m.absences = vec![
        ("silent".into(), None, 120_000),
        ("co2_silent".into(), Some("CO2".into()), 90_000),
    ];
    let exp = m.expect(&input);
    assert_accounting(&report, &exp, "absence rules");
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_alerts(&out, &exp.alerts);
    let absence = |who: &str, state: &str| {
        exp.alerts
            .iter()
            .filter(|(id, a)| {
                id.starts_with("silent|") && id.contains(&format!("|{who}|")) && a.0 == state
            })
            .count()
    };
    // The device gone after 5 minutes: raised per type, never cleared.
    assert!(absence(&gone, "raised") >= 1 && absence(&gone, "cleared") == 0);
    // Paused for 4 minutes: raised and cleared.
    assert!(absence(&paused, "raised") >= 1 && absence(&paused, "cleared") >= 1);
    // 40 s of silence is not 2 minutes: the brief device's alerts (a type it happens
    // not to send for 2 minutes) are those of the input without its pause.
    let unpaused = joined(
        lines
            .iter()
            .filter(|l| {
                !(l.1 == gone && l.2 > min(5) || l.1 == paused && l.2 > min(8) && l.2 < min(12))
            })
            .map(|l| l.0.clone()),
    );
    let of_brief = |alerts: &std::collections::BTreeMap<String, (String, f64)>| -> Vec<String> {
        alerts
            .keys()
            .filter(|id| id.contains(&format!("|{brief}|")))
            .cloned()
            .collect()
    };
    assert_eq!(of_brief(&exp.alerts), of_brief(&m.expect(&unpaused).alerts));
    let open = report
        .per_partition
        .iter()
        .map(|c| c.open_alerts)
        .sum::<u64>();
    assert!(open >= 1, "the gone device's alerts stay open");
}

/// Devices a reference table lists must report (`expect = "fleet"`): each listed
/// device never seen raises once, `after` past when its partition started watching
/// (ids with `/ \\ ? #` and non-ASCII included); one that first reports late raises
/// and clears; listed devices that report in time raise nothing beyond the usual
/// absence alerts. Against the model, per type and with a filter pinning one.
#[test]
fn devices_a_reference_table_lists_must_report() {
    let lines = clean_lines(17);
    let t0 = lines.iter().map(|l| l.2).min().unwrap();
    let mut devices: Vec<String> = lines.iter().map(|l| l.1.clone()).collect();
    devices.sort();
    devices.dedup();
    let late = devices[3].clone();
    // The late device's first report is 6 minutes in.
    let input = joined(
        lines
            .iter()
            .filter(|l| !(l.1 == late && l.2 < t0 + 6 * 60_000))
            .map(|l| l.0.clone()),
    );
    let ghosts = [
        "contoso://device-id-9001",
        "ghost/with\\slash?and#hash",
        "capteur-été-n°7",
        "ghost-4",
        "ghost-5",
        "ghost-6",
    ];
    // Listed: the ghosts, the late device and every third reporting device.
    let mut listed: Vec<String> = ghosts.iter().map(|g| g.to_string()).collect();
    listed.push(late.clone());
    listed.extend(devices.iter().step_by(3).cloned());
    listed.sort();
    listed.dedup();
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("fleet.ndjson");
    let rows: Vec<String> = listed
        .iter()
        .map(|d| serde_json::json!({"deviceId": d, "site": 1}).to_string())
        .collect();
    std::fs::write(&table, rows.join("\n")).unwrap();
    let rules = format!(
        "\n[[rules]]\nname = \"roll_call\"\nkind = \"absence\"\nafter = \"2m\"\nexpect = \"fleet\"\n\n[[rules]]\nname = \"co2_roll_call\"\nkind = \"absence\"\nfilter = \"type = 'CO2'\"\nafter = \"3m\"\nexpect = \"fleet\"\n\n[[reference]]\nname = \"fleet\"\npath = \"{}\"\n",
        table.display()
    );
    let report = run_with_rules(dir.path(), &input, &rules);
    let mut m = model(2);
    m.absences = vec![
        ("roll_call".into(), None, 120_000),
        ("co2_roll_call".into(), Some("CO2".into()), 180_000),
    ];
    m.expects = vec![(0, listed.clone()), (1, listed.clone())];
    let exp = m.expect(&input);
    assert_accounting(&report, &exp, "expected devices");
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_alerts(&out, &exp.alerts);
    let of = |rule: &str, who: &str, state: &str| {
        exp.alerts
            .iter()
            .filter(|(id, a)| id.starts_with(&format!("{rule}|{who}|")) && a.0 == state)
            .count()
    };
    for g in ghosts {
        assert_eq!(of("roll_call", g, "raised"), 1, "{g} raised once");
        assert_eq!(of("co2_roll_call", g, "raised"), 1, "{g}: per filter too");
        assert_eq!(of("roll_call", g, "cleared"), 0);
    }
    assert_eq!(
        (
            of("roll_call", &late, "raised"),
            of("roll_call", &late, "cleared")
        ),
        (1, 1),
        "the late device raises and clears"
    );
    // The ghosts' alerts as written: type from the table (none), window empty.
    let ghost = out
        .iter()
        .find(|r| r["rule"] == "roll_call" && r["deviceId"] == ghosts[1])
        .unwrap();
    assert_eq!(
        (ghost["type"].as_str(), ghost["window"].as_str()),
        (Some(""), Some(""))
    );
    assert_eq!(ghost["value"], 120.0);
}

/// Per-device thresholds from a reference table: each listed device is judged by its
/// own limit, an unlisted one raises nothing; a limit column used in arithmetic
/// (`clear = "avg < limits.co2_max * 0.95"`). Against the model.
#[test]
fn per_device_thresholds_from_a_csv_give_the_models_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let input = messy_input(30_000, 21);
    let mut devices: Vec<String> = std::str::from_utf8(&input)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["deviceId"].as_str().map(str::to_owned))
        .collect();
    devices.sort();
    devices.dedup();
    // Two of every three devices listed, with limits of 800, 1000 or 1200.
    let mut limits = std::collections::BTreeMap::new();
    let mut csv = String::from("deviceId,co2_max,note\n");
    for (i, d) in devices.iter().enumerate().filter(|(i, _)| i % 3 != 2) {
        let l = [800.0, 1000.0, 1200.0][i % 3 * 2 % 3];
        limits.insert(d.clone(), l);
        csv.push_str(&format!("\"{d}\",{l},{}\n", i));
    }
    let table = dir.path().join("limits.csv");
    std::fs::write(&table, csv).unwrap();
    let (_, source) = file_source(dir.path(), &input);
    let text = config_text(dir.path(), &source, 2, "")
        .replace("when = \"avg > 1000\"", "when = \"avg > limits.co2_max\"")
        .replace(
            "clear = \"avg < 950\"",
            "clear = \"avg < limits.co2_max * 0.95\"",
        )
        + &format!(
            "\n[[reference]]\nname = \"limits\"\npath = \"{}\"\n",
            table.display()
        );
    let cfg = Config::parse(&text).unwrap();
    let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
    let mut m = model(2);
    m.rules[0].limits = Some(limits.clone());
    let exp = m.expect(&input);
    assert_accounting(&report, &exp, "per-device limits");
    let out = read_jsonl(&dir.path().join("out.jsonl"));
    assert_alerts(&out, &exp.alerts);
    let by = |l: f64| {
        exp.alerts
            .keys()
            .filter(|id| limits.get(id.split('|').nth(1).unwrap()) == Some(&l))
            .count()
    };
    assert!(
        by(800.0) > by(1200.0),
        "lower limits raise more: {} vs {}",
        by(800.0),
        by(1200.0)
    );
    assert!(
        exp.alerts
            .keys()
            .all(|id| limits.contains_key(id.split('|').nth(1).unwrap())),
        "an unlisted device raises nothing"
    );
    assert!(!exp.alerts.is_empty());
}

/// A reference file rewritten during a stdin run: rules use the new limits from then
/// on, no window, dedupe or alert state is lost (the windows are those of one
/// uninterrupted run), and a rewrite that does not read keeps the table in use.
#[test]
fn a_reference_file_rewritten_mid_run_changes_rules_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let input = messy_input(20_000, 23);
    let lines: Vec<&str> = std::str::from_utf8(&input).unwrap().lines().collect();
    let half = lines.len() / 2;
    let table = dir.path().join("limits.ndjson");
    // At first no device's limit can be reached.
    let write_limits = |limit: f64| {
        let mut text = String::new();
        for d in 0..300 {
            text.push_str(&format!(
                "{{\"deviceId\":\"contoso://device-id-{d}\",\"co2_max\":{limit}}}\n"
            ));
        }
        std::fs::write(&table, text).unwrap();
    };
    write_limits(1e12);
    let text = config_text(dir.path(), "kind = \"stdin\"", 2, "")
        .replace("when = \"avg > 1000\"", "when = \"avg > limits.co2_max\"")
        .replace(
            "clear = \"avg < 950\"",
            "clear = \"avg < limits.co2_max * 0.95\"",
        )
        + &format!(
            "\n[[reference]]\nname = \"limits\"\npath = \"{}\"\nreload = \"50ms\"\n",
            table.display()
        );
    let config = dir.path().join("eventide.toml");
    std::fs::write(&config, text).unwrap();
    let log_path = dir.path().join("eventide.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("EVENTIDE_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let wait_for = |what: &str, times: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while log().matches(what).count() < times {
            assert!(Instant::now() < deadline, "no {what:?} in:\n{}", log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    for l in &lines[..half] {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    // A rewrite that does not read: the table in use stays.
    std::fs::write(&table, "{\"deviceId\": 5}\n").unwrap();
    wait_for("does not read", 1);
    // Every device's limit is now 0: its next CO2 window raises.
    std::thread::sleep(Duration::from_millis(20));
    write_limits(0.0);
    wait_for("Reference table reloaded", 1);
    for l in &lines[half..] {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", log());

    let out = read_jsonl(&dir.path().join("out.jsonl"));
    // The windows of one uninterrupted run.
    let exp = model(2).expect(&input);
    assert_windows(&out, &exp.windows);
    // Alerts only under the new limits, each CO2 series raised once (limit 0 never
    // clears): the rule's state carried over the reload.
    let alerts: Vec<&Value> = out.iter().filter(|r| r.get("state").is_some()).collect();
    assert!(alerts.len() > 50, "{}", alerts.len());
    assert!(
        alerts
            .iter()
            .all(|a| a["state"] == "raised" && a["type"] == "CO2")
    );
    let mut series: Vec<&str> = alerts
        .iter()
        .map(|a| a["deviceId"].as_str().unwrap())
        .collect();
    let n = series.len();
    series.sort();
    series.dedup();
    assert_eq!(series.len(), n, "one raise per device");
    // Each device raised at its first CO2 window closing after the reload: the first
    // whose close point (end + 2 s lateness) its watermark had not passed when the
    // first half was in (its newest event time there - 5 s).
    let mut first_half_wm: std::collections::HashMap<String, i64> = Default::default();
    for l in &lines[..half] {
        let events = match serde_json::from_str::<Value>(l) {
            Ok(Value::Array(a)) => a,
            Ok(v) => vec![v],
            Err(_) => continue,
        };
        for v in events {
            if let (Some(d), Some(t)) = (v["deviceId"].as_str(), v["createdAt"].as_str())
                && let Some(t) = eventide::event::parse_rfc3339_ms(t)
            {
                let w = first_half_wm.entry(d.to_owned()).or_insert(i64::MIN);
                *w = (*w).max(t - 5_000);
            }
        }
    }
    let mut checked = 0;
    for a in &alerts {
        let d = a["deviceId"].as_str().unwrap();
        let Some(&wm) = first_half_wm.get(d) else {
            continue;
        };
        let first_after = exp
            .windows
            .keys()
            .filter_map(|id| {
                let p: Vec<&str> = id.split('|').collect();
                (p[0] == "sliding_5m" && p[1] == d && p[2] == "CO2")
                    .then(|| eventide::event::parse_rfc3339_ms(p[3]).unwrap() + 300_000)
            })
            .filter(|end| end + 2_000 > wm)
            .min()
            .unwrap();
        let end = eventide::event::parse_rfc3339_ms(a["windowEnd"].as_str().unwrap()).unwrap();
        assert_eq!(end, first_after, "{d}");
        checked += 1;
    }
    assert!(checked > 50, "{checked}");
}
