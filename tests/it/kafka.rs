//! Kafka: consumer groups, rebalances, crashes and broker errors, against librdkafka's
//! mock cluster (a Kafka-protocol broker in this test process, on a loopback port)
//! and the real `eventide` binary as a separate process.
//!
//! The reference for every test is the same events read from a file: a Kafka run must
//! produce exactly the same windows and alerts (after upserts by id: every copy of a
//! record must be identical, since a replay re-writes records).

use crate::common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use eventide_simulator::SimConfig;
use eventide_simulator::kafka::{KafkaKeys, KafkaOut};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_eventide");

/// These tests start several processes each and rely on wall-clock pauses (a member
/// joining mid-stream): run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const TOPIC: &str = "telemetry";

fn sim(seed: u64) -> SimConfig {
    SimConfig {
        devices: 200,
        seed,
        interval_ms: 5_000,
        duplicate_fraction: 0.01,
        malformed_fraction: 0.005,
        batch_fraction: 0.1,
        batch_size: 5,
        max_disorder_ms: 2_000,
        hot_devices: 12,
        complex_fields: 3,
        ..SimConfig::default()
    }
}

/// The pipeline part of every config: generous out-of-order bound (no event is late,
/// however partitions interleave) and no idle advance (a paused producer must not
/// close windows early).
const PIPELINE: &str = r#"
[pipeline]
partitions = 2
max_out_of_order = "30s"
idle_timeout = "1h"
dedupe = "both"
"#;

fn write_config(dir: &Path, name: &str, source: &str, sinks: &str) -> PathBuf {
    write_config_with(dir, name, source, sinks, "")
}

/// [`write_config`] with `pipeline` added to `[pipeline]`.
fn write_config_with(dir: &Path, name: &str, source: &str, sinks: &str, pipeline: &str) -> PathBuf {
    let mut base = PIPELINE.to_owned();
    if pipeline.contains("max_out_of_order") {
        base = base.replace("max_out_of_order = \"30s\"\n", "");
    }
    let text = format!(
        "[source]\n{source}\n{base}{pipeline}\n{}\n{sinks}\n",
        common::WINDOWS_AND_RULE
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn jsonl_sinks(dir: &Path, name: &str) -> String {
    format!(
        "[[sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n\n[dead_letter]\nkind = \"jsonl\"\npath = \"{}\"\n",
        dir.join(format!("{name}.out.jsonl")).display(),
        dir.join(format!("{name}.dead.jsonl")).display()
    )
}

fn kafka_source(brokers: &str, group: &str, stop_at_end: bool) -> String {
    format!(
        r#"kind = "kafka"
brokers = "{brokers}"
topics = ["{TOPIC}"]
group_id = "{group}"
stop_at_end = {stop_at_end}
commit_interval = "200ms"
properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500", "topic.metadata.refresh.interval.ms" = "1000" }}"#
    )
}

fn spawn(config: &Path) -> Child {
    spawn_logging_to(config, Stdio::piped())
}

fn spawn_logging_to(config: &Path, stderr: impl Into<Stdio>) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("EVENTIDE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting eventide")
}

fn finish(child: Child, what: &str) -> Output {
    // A run that hangs (a broker that never rebalances, say) fails with its log
    // instead of holding the whole suite.
    let pid = child.id().to_string();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = finished.recv_timeout(RUN_LIMIT).is_err();
        if timed_out {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        timed_out
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !watchdog.join().unwrap(),
        "{what} did not finish within {RUN_LIMIT:?}:\n{stderr}"
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("(adds up)"),
        "{what}: accounting:\n{stderr}"
    );
    out
}

/// The longest a run to the end of its input may take here.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs eventide to completion (a finite source).
fn run(config: &Path, what: &str) -> String {
    let out = finish(spawn(config), what);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits (up to 30 s) until the member logging to `log` says the group gave its
/// partition actors partitions (with `partitioning = "any"`: the second stage's).
fn wait_for_partitions(log: &Path, member: &str) {
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read().contains("partitions assigned; starting their actors") {
        assert!(
            Instant::now() < deadline,
            "{member} got no partitions:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Records of a JSONL output; a last line cut short by `kill -9` is skipped.
fn records(path: &Path) -> Vec<Value> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = line.unwrap();
        if let Ok(v) = serde_json::from_slice::<Value>(&line) {
            out.push(v);
        }
    }
    out
}

/// Upserts by id. Every copy of a record must be identical: a replay re-writes the
/// same record, never a different one.
fn upsert(records: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    upsert_checked(records, |a, b| a == b)
}

/// [`upsert`] where copies may differ in the rounding of sums and averages (see
/// [`assert_same_but_rounding`]).
fn upsert_but_rounding(records: impl IntoIterator<Item = Value>) -> BTreeMap<String, Value> {
    upsert_checked(records, same_but_rounding)
}

fn upsert_checked(
    records: impl IntoIterator<Item = Value>,
    same: impl Fn(&Value, &Value) -> bool,
) -> BTreeMap<String, Value> {
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for r in records {
        let id = r["id"].as_str().expect("records have ids").to_owned();
        if let Some(prev) = by_id.get(&id) {
            assert!(
                same(prev, &r),
                "two different records with id {id}: {prev} and {r}"
            );
        }
        by_id.insert(id, r);
    }
    by_id
}

/// Records by id equal, with a readable account of the difference.
fn assert_same(got: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) {
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<&String> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    let differ: Vec<(&Value, &Value)> = expected
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (g, v)))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{} records, expected {}; missing {missing:?}; extra {extra:?}; differ (got, expected) {differ:?}",
        got.len(),
        expected.len()
    );
}

/// [`assert_same`], but sums and averages may differ in their last bits: a device's
/// events spread over input partitions reach it in an order of their own, and
/// floating-point addition depends on the order.
fn assert_same_but_rounding(got: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) {
    // Where they differ only in rounding, the expected record stands for the one got.
    let got: BTreeMap<String, Value> = got
        .iter()
        .map(|(k, g)| match expected.get(k) {
            Some(e) if same_but_rounding(g, e) => (k.clone(), e.clone()),
            _ => (k.clone(), g.clone()),
        })
        .collect();
    assert_same(&got, expected);
}

/// Two records equal but for the last bits of `sum`, `avg` and `value`.
fn same_but_rounding(a: &Value, b: &Value) -> bool {
    let close = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a == b,
    };
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    a.len() == b.len()
        && a.iter().all(|(f, v)| {
            b.get(f).is_some_and(|w| {
                if ["sum", "avg", "value"].contains(&f.as_str()) {
                    close(v, w)
                } else {
                    v == w
                }
            })
        })
}

/// The windows and alerts a file run of `input` writes (the reference), and its
/// dead letters.
fn reference(dir: &Path, input: &[u8]) -> (BTreeMap<String, Value>, Vec<Value>) {
    reference_with(dir, input, "")
}

/// [`reference`] with `pipeline` added to `[pipeline]`.
fn reference_with(
    dir: &Path,
    input: &[u8],
    pipeline: &str,
) -> (BTreeMap<String, Value>, Vec<Value>) {
    let path = dir.join("reference.ndjson");
    std::fs::write(&path, input).unwrap();
    let source = format!("kind = \"file\"\npath = \"{}\"", path.display());
    let cfg = write_config_with(
        dir,
        "reference",
        &source,
        &jsonl_sinks(dir, "reference"),
        pipeline,
    );
    run(&cfg, "the file run");
    let out = records(&dir.join("reference.out.jsonl"));
    let n = out.len();
    let by_id = upsert(out);
    assert_eq!(by_id.len(), n, "a file run writes each record once");
    (by_id, records(&dir.join("reference.dead.jsonl")))
}

fn generate(cfg: SimConfig, events: u64) -> Vec<u8> {
    common::generate(cfg, events)
}

/// Produces `input` (NDJSON lines) to the topic, keyed by device, pausing to keep
/// about `rate` events/s when given.
fn produce(brokers: &str, input: &[u8], rate: Option<f64>) {
    produce_with(brokers, &[], input, rate)
}

fn produce_with(brokers: &str, props: &[(String, String)], input: &[u8], rate: Option<f64>) {
    produce_keyed(brokers, props, input, rate, KafkaKeys::Device)
}

/// [`produce_with`], keying messages as `keys` says.
fn produce_keyed(
    brokers: &str,
    props: &[(String, String)],
    input: &[u8],
    rate: Option<f64>,
    keys: KafkaKeys,
) {
    let mut out = KafkaOut::new(brokers, TOPIC, props)
        .and_then(|o| o.with_keys(keys))
        .unwrap();
    let started = Instant::now();
    for (i, line) in input
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        out.send_line(line).unwrap();
    }
    let (delivered, failed, err) = out.finish();
    assert_eq!(failed, 0, "produce failed: {err:?}");
    assert!(delivered > 0);
}

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

fn mock(partitions: i32) -> Mock {
    let m = MockCluster::new(3).unwrap();
    m.create_topic(TOPIC, partitions, 1).unwrap();
    m
}

/// A Kafka-protocol broker the tests run against.
trait Broker {
    fn brokers(&self) -> String;
    fn create_topic(&self, name: &str, partitions: i32);
    /// What producers of the input need on this broker.
    fn producer_properties(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl Broker for Mock {
    fn brokers(&self) -> String {
        self.bootstrap_servers()
    }
    fn create_topic(&self, name: &str, partitions: i32) {
        MockCluster::create_topic(self, name, partitions, 1).unwrap();
    }
}

/// A tansu broker process (in-memory storage) on a free loopback port; killed when
/// dropped. tansu drops offset-commit metadata, so eventide runs against it keep
/// their checkpoints in a topic.
struct Tansu {
    child: Child,
    addr: String,
}

impl Tansu {
    fn start() -> Tansu {
        let bin = tansu_bin();
        let port = common::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tansu { child, addr }
    }
}

impl Broker for Tansu {
    fn brokers(&self) -> String {
        self.addr.clone()
    }
    /// tansu 0.6 answers a fetch from an offset inside a record batch with the
    /// batches after it, skipping the rest of that batch: a consumer that resumes
    /// mid-batch (any group member after a rebalance or crash) loses records. One
    /// record per batch avoids it.
    fn producer_properties(&self) -> Vec<(String, String)> {
        vec![("batch.num.messages".into(), "1".into())]
    }
    fn create_topic(&self, name: &str, partitions: i32) {
        let ok = Command::new(tansu_bin())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.addr))
            .args(["--partitions", &partitions.to_string(), name])
            .status()
            .expect("running tansu topic create")
            .success();
        assert!(ok, "tansu topic create {name}");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tansu binary, installed once into `target/tools` (`cargo install`, with the
/// in-memory and SQLite storage features; the build takes 15-25 minutes on 2 cores)
/// and reused.
fn tansu_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("tools")
            .join("tansu-0.6.0-libsql");
        let bin = root.join("bin").join("tansu");
        if !bin.exists() {
            eprintln!("installing tansu into {} (once)", root.display());
            let build = root.join("build");
            let ok = Command::new(env!("CARGO"))
                .args(["install", "tansu", "--version", "0.6.0", "--locked"])
                .args(["--features", "dynostore,libsql", "--root"])
                .arg(&root)
                .env("CARGO_TARGET_DIR", &build)
                .status()
                .expect("running cargo install tansu")
                .success();
            assert!(ok, "cargo install tansu failed");
            let _ = std::fs::remove_dir_all(&build);
        }
        bin
    })
    .clone()
}

/// Dead letters by payload, for comparing runs whose `source` fields differ.
fn dead_payloads(dead: &[Value]) -> BTreeMap<String, (String, usize)> {
    let mut m: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for d in dead {
        let e = m
            .entry(d["payload"].as_str().unwrap().to_owned())
            .or_insert((d["reason"].as_str().unwrap().to_owned(), 0));
        e.1 += 1;
    }
    m
}

#[test]
fn a_consumer_group_over_four_partitions_gives_the_file_results() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let input = generate(sim(11), 30_000);
    let (expected, expected_dead) = reference(dir, &input);
    assert!(
        expected.keys().any(|k| k.starts_with("co2_high|")),
        "the input raises alerts"
    );

    let cluster = mock(4);
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, &input, None);
    let cfg = write_config(
        dir,
        "kafka",
        &kafka_source(&brokers, "g1", true),
        &jsonl_sinks(dir, "kafka"),
    );
    let log = run(&cfg, "the kafka run");
    assert!(
        log.contains("input complete"),
        "stop_at_end ends the run:\n{log}"
    );

    let out = records(&dir.join("kafka.out.jsonl"));
    assert_eq!(out.len(), expected.len(), "each record once");
    let got = upsert(out);
    assert_eq!(got, expected);
    let dead = records(&dir.join("kafka.dead.jsonl"));
    assert_eq!(dead_payloads(&dead), dead_payloads(&expected_dead));
    for d in &dead {
        let source = d["source"].as_str().unwrap();
        assert!(
            source.starts_with("telemetry/"),
            "topic/partition/offset: {source}"
        );
        assert_eq!(source.split('/').count(), 3, "{source}");
    }

    // The group's offsets are committed at the end: a second run reads nothing.
    let again = write_config(
        dir,
        "again",
        &kafka_source(&brokers, "g1", true),
        &jsonl_sinks(dir, "again"),
    );
    run(&again, "the second run");
    assert!(records(&dir.join("again.out.jsonl")).is_empty());
}

/// Two members share the group while events stream in; one leaves, the other is
/// killed (-9) mid-stream; a third run resumes from the committed checkpoints and
/// reads to the end. Together they wrote exactly the file run's records.
#[test]
fn rebalances_and_a_crash_lose_nothing_and_duplicate_nothing() {
    let _serial = serial();
    rebalances_and_a_crash(&mock(4), "", "");
}

/// The same with one watermark per partition (`pipeline.event_time = "partition"`).
#[test]
fn rebalances_and_a_crash_with_partition_event_time() {
    let _serial = serial();
    rebalances_and_a_crash(&mock(4), "", "event_time = \"partition\"\n");
}

/// The same with checkpoints kept in a topic (`source.checkpoint_topic`), as on
/// brokers that drop commit metadata.
#[test]
fn rebalances_and_a_crash_with_checkpoints_in_a_topic() {
    let _serial = serial();
    let cluster = mock(4);
    // The mock cluster cannot create topics on request: eventide would.
    Broker::create_topic(&cluster, CHECKPOINTS, 1);
    rebalances_and_a_crash(
        &cluster,
        &format!("checkpoint_topic = \"{CHECKPOINTS}\""),
        "",
    );
}

/// The same against a tansu broker process.
#[test]
fn rebalances_and_a_crash_on_tansu() {
    let _serial = serial();
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 4);
    rebalances_and_a_crash(&tansu, &format!("checkpoint_topic = \"{CHECKPOINTS}\""), "");
}

/// Two instances forward a device's events, from different input partitions, each at
/// its own pace: the repartition topic holds them in an order that lags by as much as
/// the instances' progress differs. Produced at 8,000 events/s, event time here runs
/// 200 times faster than the clock, so a tenth of a second between the two is 20 s of
/// event time: the bound on disorder covers it.
const REPARTITION_PIPELINE: &str = "max_out_of_order = \"10m\"\n";

/// Gateway batches keyed by their first device, read with `partitioning = "any"`
/// through the same crash and rebalances: both stages share the group's work, and the
/// kill -9 of both at once loses nothing (the input's offsets pass only events
/// delivered to the repartition topic; those forwarded twice are duplicates).
#[test]
fn rebalances_and_a_crash_with_repartitioning() {
    let _serial = serial();
    let cluster = mock(4);
    Broker::create_topic(&cluster, "g2-by-device", 4);
    rebalances_and_a_crash_keyed(
        &cluster,
        "partitioning = \"any\"",
        REPARTITION_PIPELINE,
        KafkaKeys::First,
    );
}

/// The same on tansu, with unkeyed messages (round robin), the repartition topic
/// created by eventide, and one record per batch for every producer (see [`Tansu`]).
#[test]
fn rebalances_and_a_crash_with_repartitioning_on_tansu() {
    let _serial = serial();
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, 4);
    rebalances_and_a_crash_keyed(
        &tansu,
        &format!("checkpoint_topic = \"{CHECKPOINTS}\"\npartitioning = \"any\""),
        REPARTITION_PIPELINE,
        KafkaKeys::None,
    );
}

const CHECKPOINTS: &str = "eventide-checkpoints";

/// Absence alerts through a kill -9: devices that fall silent (some for good, some
/// for a while) raise and clear exactly as in a clean run over the same topic
/// (absence is measured on each Kafka partition's clock, so the reference is a Kafka
/// run, not the file run).
#[test]
fn absence_alerts_survive_a_crash() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let raw = generate(
        SimConfig {
            batch_fraction: 0.0,
            ..sim(14)
        },
        40_000,
    );
    // Devices 0-9 stop after 3 minutes; 10-19 pause from 3 to 5 minutes.
    let text = std::str::from_utf8(&raw).unwrap();
    let t0 = 1_767_225_600_000i64;
    let mut input = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let n: Option<u32> = v["deviceId"]
            .as_str()
            .and_then(|d| d.rsplit('-').next())
            .and_then(|n| n.parse().ok());
        let t = v["createdAt"]
            .as_str()
            .and_then(eventide::event::parse_rfc3339_ms)
            .unwrap_or(0);
        let silent = match n {
            Some(n) if n < 10 => t > t0 + 180_000,
            Some(n) if n < 20 => t > t0 + 180_000 && t < t0 + 300_000,
            _ => false,
        };
        if !silent {
            input.extend_from_slice(line.as_bytes());
            input.push(b'\n');
        }
    }
    let absence = "\n[[rules]]\nname = \"silent\"\nkind = \"absence\"\nafter = \"40s\"\n";
    let with_absence = |name: &str, source: &str| {
        let path = write_config(dir, name, source, &jsonl_sinks(dir, name));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replacen("[[sinks]]", &format!("{absence}\n[[sinks]]"), 1),
        )
        .unwrap();
        path
    };

    let cluster = mock(4);
    let brokers = cluster.bootstrap_servers();
    let producer = {
        let (brokers, input) = (brokers.clone(), input.clone());
        std::thread::spawn(move || produce(&brokers, &input, Some(5_000.0)))
    };
    let a_log_path = dir.join("a.log");
    let a = spawn_logging_to(
        &with_absence("a", &kafka_source(&brokers, "crash", false)),
        std::fs::File::create(&a_log_path).unwrap(),
    );
    wait_for_partitions(&a_log_path, "a");
    // Mid-input: checkpoints committed, the producer still going.
    std::thread::sleep(Duration::from_millis(2_500));
    signal(&a, "-KILL");
    let _ = a.wait_with_output();
    producer.join().unwrap();
    std::thread::sleep(Duration::from_secs(8)); // the crashed member's session ends
    let c_log = run(
        &with_absence("c", &kafka_source(&brokers, "crash", true)),
        "the resuming run",
    );
    assert!(c_log.contains("resuming from a checkpoint"), "{c_log}");
    run(
        &with_absence("clean", &kafka_source(&brokers, "clean", true)),
        "the clean run",
    );

    let clean = upsert(records(&dir.join("clean.out.jsonl")));
    let silent = |m: &BTreeMap<String, Value>, state: &str| {
        m.iter()
            .filter(|(id, r)| id.starts_with("silent|") && r["state"] == state)
            .count()
    };
    assert!(
        silent(&clean, "raised") >= 20,
        "{}",
        silent(&clean, "raised")
    );
    assert!(
        silent(&clean, "cleared") >= 10,
        "{}",
        silent(&clean, "cleared")
    );
    let crashed = upsert(
        ["a", "c"]
            .iter()
            .flat_map(|n| records(&dir.join(format!("{n}.out.jsonl")))),
    );
    assert_same(&crashed, &clean);
}

/// Two members share the group, one leaves, the other is killed, a third resumes:
/// the results are the file run's. `pipeline` is added to `[pipeline]`.
fn rebalances_and_a_crash(broker: &dyn Broker, source_extra: &str, pipeline: &str) {
    rebalances_and_a_crash_keyed(broker, source_extra, pipeline, KafkaKeys::Device)
}

/// [`rebalances_and_a_crash`], with the input's messages keyed as `keys` says.
fn rebalances_and_a_crash_keyed(
    broker: &dyn Broker,
    source_extra: &str,
    pipeline: &str,
    keys: KafkaKeys,
) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let input = generate(sim(12), 60_000);
    let (expected, expected_dead) = reference_with(dir, &input, pipeline);

    let brokers = broker.brokers();
    let producer = {
        let brokers = brokers.clone();
        let input = input.clone();
        let props = broker.producer_properties();
        std::thread::spawn(move || produce_keyed(&brokers, &props, &input, Some(8_000.0), keys))
    };
    // The first stage of `partitioning = "any"` produces with the source's
    // properties: what this broker's producers need.
    let kafka_source = |brokers: &str, group: &str, stop_at_end: bool| {
        let mut s = kafka_source(brokers, group, stop_at_end);
        if source_extra.contains("partitioning") {
            for (k, v) in broker.producer_properties() {
                s = s.replacen(" }", &format!(", \"{k}\" = \"{v}\" }}"), 1);
            }
        }
        s
    };
    let a_cfg = write_config_with(
        dir,
        "a",
        &format!("{}\n{source_extra}", kafka_source(&brokers, "g2", false)),
        &jsonl_sinks(dir, "a"),
        pipeline,
    );
    let b_cfg = write_config_with(
        dir,
        "b",
        &format!("{}\n{source_extra}", kafka_source(&brokers, "g2", false)),
        &jsonl_sinks(dir, "b"),
        pipeline,
    );
    // The members' logs go to files, to see when the group has given them partitions.
    let a_log_path = dir.join("a.log");
    let a = spawn_logging_to(&a_cfg, std::fs::File::create(&a_log_path).unwrap());
    wait_for_partitions(&a_log_path, "a");
    std::thread::sleep(Duration::from_secs(1));
    let b_log_path = dir.join("b.log");
    let mut b = spawn_logging_to(&b_cfg, std::fs::File::create(&b_log_path).unwrap());
    let b_log = || std::fs::read_to_string(&b_log_path).unwrap_or_default();
    wait_for_partitions(&b_log_path, "b");
    std::thread::sleep(Duration::from_secs(2));
    signal(&b, "-TERM"); // leaves the group: its partitions go back to a
    assert!(b.wait().unwrap().success(), "member b:\n{}", b_log());
    assert!(b_log().contains("(adds up)"), "member b:\n{}", b_log());
    std::thread::sleep(Duration::from_secs(1));
    signal(&a, "-KILL"); // a crash: no flush, no commit
    let _ = a.wait_with_output();
    producer.join().unwrap();
    // The broker drops the crashed member when its session (6 s) expires. A member
    // that joins before then may be handed no partitions, and tansu did not always
    // rebalance when the session expired later: the resuming run would then wait for
    // ever (seen once under load). So it joins once the crashed member is gone.
    std::thread::sleep(Duration::from_secs(8));

    let c_cfg = write_config_with(
        dir,
        "c",
        &format!("{}\n{source_extra}", kafka_source(&brokers, "g2", true)),
        &jsonl_sinks(dir, "c"),
        pipeline,
    );
    let c_log = run(&c_cfg, "the resuming run");
    assert!(
        c_log.contains("resuming from a checkpoint"),
        "c resumed:\n{c_log}"
    );
    if source_extra.contains("checkpoint_topic") {
        assert!(
            c_log.contains("checkpoint read from the checkpoint topic"),
            "c read its checkpoints from the topic:\n{c_log}"
        );
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let (_, written) = c
            .fetch_watermarks(CHECKPOINTS, 0, Duration::from_secs(10))
            .unwrap();
        assert!(written > 0, "checkpoints were written to the topic");
    }

    let all: Vec<Value> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| records(&dir.join(format!("{n}.out.jsonl"))))
        .collect();
    // Input keyed any way reaches a device's actor in an order of its own, which a
    // replay need not repeat: rewritten windows may differ in their sums' last bits.
    let got = if keys == KafkaKeys::Device {
        upsert(all)
    } else {
        upsert_but_rounding(all)
    };
    if keys == KafkaKeys::Device {
        assert_same(&got, &expected);
    } else {
        assert_same_but_rounding(&got, &expected);
    }
    // Dead letters are at-least-once: every one is there.
    let dead: Vec<Value> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| records(&dir.join(format!("{n}.dead.jsonl"))))
        .collect();
    let got_dead = dead_payloads(&dead);
    for (payload, (reason, _)) in dead_payloads(&expected_dead) {
        assert_eq!(
            got_dead.get(&payload).map(|d| d.0.as_str()),
            Some(reason.as_str()),
            "{payload}"
        );
    }
}

/// Reads every record of `topic` from the beginning: up to the end offsets the
/// broker lists, then on until nothing more comes for a second (tansu lists ends
/// short, see `ingest::kafka`).
fn consume_all(brokers: &str, topic: &str) -> Vec<Value> {
    read_topic(brokers, topic)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// [`consume_all`], with each record's partition.
fn read_topic(brokers: &str, topic: &str) -> Vec<(i32, Value)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "reader")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut total = 0;
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        total += c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap()
            .1;
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Instant::now();
    while Instant::now() < deadline
        && ((out.len() as i64) < total || last.elapsed() < Duration::from_secs(1))
    {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let v = serde_json::from_slice(m.payload().unwrap()).unwrap();
            out.push((m.partition(), v));
            last = Instant::now();
        }
    }
    out
}

/// Fetch, commit and produce requests fail for a while: retriable errors, which
/// librdkafka retries, and a permanent per-message error (message too large), which
/// fails deliveries that the Kafka sink sends again. The windows and alerts written
/// to Kafka topics are the file run's.
#[test]
fn broker_errors_are_retried_and_kafka_sinks_deliver_everything() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let input = generate(sim(13), 20_000);
    let (expected, _) = reference(dir, &input);

    let cluster = mock(4);
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, &input, None);
    use RDKafkaRespErr::*;
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ]
        .repeat(4),
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        ]
        .repeat(3),
    );
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ]
        .repeat(3),
    );
    let sinks = format!(
        "[[sinks]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\nwindows_topic = \"out-windows\"\nalerts_topic = \"out-alerts\"\n\n[dead_letter]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"out-dead\"\n"
    );
    cluster.create_topic("out-windows", 3, 1).unwrap();
    cluster.create_topic("out-alerts", 1, 1).unwrap();
    cluster.create_topic("out-dead", 1, 1).unwrap();
    let cfg = write_config(dir, "k", &kafka_source(&brokers, "g3", true), &sinks);
    run(&cfg, "the run with broker errors");

    let mut written = consume_all(&brokers, "out-windows");
    written.extend(consume_all(&brokers, "out-alerts"));
    let got = upsert(written);
    assert_same(&got, &expected);
    assert!(
        !consume_all(&brokers, "out-dead").is_empty(),
        "malformed input is dead-lettered to Kafka"
    );
}

/// Runs the simulator's command line (in-process: the binary is this function) with
/// `args` twice: to the topic on `brokers`, and to a file, whose path it returns.
fn simulate(args: &[&str], brokers: &str, dir: &Path) -> PathBuf {
    let to_kafka = args
        .iter()
        .copied()
        .chain(["--kafka-brokers", brokers, "--topic", TOPIC]);
    assert_eq!(
        eventide_simulator::cli::main(to_kafka),
        std::process::ExitCode::SUCCESS
    );
    let file = dir.join("sim.ndjson");
    let to_file = args
        .iter()
        .copied()
        .chain(["--output", file.to_str().unwrap()]);
    assert_eq!(
        eventide_simulator::cli::main(to_file),
        std::process::ExitCode::SUCCESS
    );
    file
}

/// The simulator's command line produces to Kafka keyed by device (run in-process:
/// the binary is this function); eventide reads it all.
#[test]
fn the_simulator_command_produces_to_kafka() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let cluster = mock(3);
    let brokers = cluster.bootstrap_servers();
    let args = [
        "eventide-simulator",
        "--devices",
        "50",
        "--count",
        "5000",
        "--seed",
        "5",
        "--batch-fraction",
        "0.2",
    ];
    let file = simulate(&args, &brokers, dir);
    let (expected, _) = reference(dir, &std::fs::read(&file).unwrap());
    assert!(!expected.is_empty());
    let cfg = write_config(
        dir,
        "s",
        &kafka_source(&brokers, "g4", true),
        &jsonl_sinks(dir, "s"),
    );
    let log = run(&cfg, "the kafka run");
    assert!(log.contains(" 5000 events"), "{log}");
    assert!(
        !log.contains("more than one partition"),
        "keyed by device, no device is split:\n{log}"
    );
    assert_eq!(upsert(records(&dir.join("s.out.jsonl"))), expected);
}

/// Each device's partitions in the topic: every message read back, its events (an
/// object or a batch of them) attributed to their deviceId.
fn partitions_by_device(brokers: &str) -> BTreeMap<String, std::collections::BTreeSet<i32>> {
    let mut by_device: BTreeMap<String, std::collections::BTreeSet<i32>> = BTreeMap::new();
    for (partition, message) in read_topic(brokers, TOPIC) {
        let events = match message {
            Value::Array(events) => events,
            event => vec![event],
        };
        for e in events {
            let device = e["deviceId"].as_str().unwrap().to_owned();
            by_device.entry(device).or_default().insert(partition);
        }
    }
    by_device
}

/// Input not partitioned by device (gateway batches keyed by their first device, and
/// unkeyed messages) is detected, not aggregated silently: every device that is in more
/// than one partition of the topic is warned about once and counted.
#[test]
fn devices_split_across_partitions_are_counted_and_warned_about() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for keys in ["first", "none"] {
        let cluster = mock(4);
        let brokers = cluster.bootstrap_servers();
        let args = [
            "eventide-simulator",
            "--devices",
            "60",
            "--count",
            "3000",
            "--seed",
            "9",
            "--malformed",
            "0",
            "--batch-fraction",
            "0.5",
            "--batch-size",
            "6",
            "--kafka-keys",
            keys,
        ];
        simulate(&args, &brokers, dir);
        let split = partitions_by_device(&brokers)
            .values()
            .filter(|p| p.len() > 1)
            .count();
        assert!(split > 0, "--kafka-keys {keys} splits devices");
        let cfg = write_config(
            dir,
            keys,
            &kafka_source(&brokers, &format!("split-{keys}"), true),
            &jsonl_sinks(dir, keys),
        );
        let log = run(&cfg, "the kafka run");
        assert_eq!(
            log.matches("events arrive on more than one partition")
                .count(),
            split,
            "--kafka-keys {keys}: one warning per split device:\n{log}"
        );
        assert!(
            log.contains(&format!(
                "WARNING: {split} devices arrived on more than one partition"
            )),
            "--kafka-keys {keys}: the report counts them:\n{log}"
        );
    }
}

/// Gateway batches keyed by their first device, and unkeyed messages, read with
/// `partitioning = "any"`: the first stage de-batches them and re-keys every event by
/// device through the repartition topic; the results are exactly the file run's
/// windows, alerts and dead letters (invalid events dead-lettered by the first stage,
/// with the input's topic/partition/offset). The repartition topic holds each device
/// in one partition, and no device is split.
#[test]
fn input_partitioned_any_way_is_re_keyed_by_device() {
    let _serial = serial();
    for keys in ["first", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let cluster = mock(4);
        let brokers = cluster.bootstrap_servers();
        let group = format!("any-{keys}");
        let repartition = format!("{group}-by-device");
        // The mock cluster cannot create topics on request: eventide would.
        Broker::create_topic(&cluster, &repartition, 4);
        let args = [
            "eventide-simulator",
            "--devices",
            "150",
            "--count",
            "20000",
            "--seed",
            "23",
            "--malformed",
            "0.01",
            "--batch-fraction",
            "0.5",
            "--batch-size",
            "6",
            "--kafka-keys",
            keys,
        ];
        let file = simulate(&args, &brokers, dir);
        let (expected, expected_dead) = reference(dir, &std::fs::read(&file).unwrap());
        assert!(!expected_dead.is_empty(), "the input holds invalid events");
        let cfg = write_config(
            dir,
            keys,
            &format!(
                "{}\npartitioning = \"any\"",
                kafka_source(&brokers, &group, true)
            ),
            &jsonl_sinks(dir, keys),
        );
        let log = run(&cfg, "the kafka run");
        assert!(
            !log.contains("more than one partition"),
            "--kafka-keys {keys}: re-keyed, no device is split:\n{log}"
        );
        let out = records(&dir.join(format!("{keys}.out.jsonl")));
        assert_eq!(
            out.len(),
            expected.len(),
            "--kafka-keys {keys}: each record once:\n{log}"
        );
        assert_same_but_rounding(&upsert_but_rounding(out), &expected);
        let dead = records(&dir.join(format!("{keys}.dead.jsonl")));
        assert_eq!(dead_payloads(&dead), dead_payloads(&expected_dead));
        for d in dead.iter().filter(|d| d["reason"] != "late") {
            let source = d["source"].as_str().unwrap();
            assert!(
                source.starts_with(&format!("{TOPIC}/")) && source.split('/').count() == 3,
                "dead-lettered at the first stage, from the input: {source}"
            );
        }
        let mut by_device: BTreeMap<String, std::collections::BTreeSet<i32>> = BTreeMap::new();
        for (p, e) in read_topic(&brokers, &repartition) {
            let device = e["deviceId"].as_str().unwrap().to_owned();
            assert_eq!(
                p as usize,
                eventide::ingest::partition_of(&device, 4),
                "{device}"
            );
            by_device.entry(device).or_default().insert(p);
        }
        assert_eq!(by_device.len(), 150);
    }
}

/// `/metrics` of a running instance with `partitioning = "any"` shows both stages:
/// the lag of the input and of the repartition topic (down to 0 once all is read),
/// and the first stage's events forwarded and dead-lettered, which with the second
/// stage's outcomes add up to every event produced.
#[test]
fn both_stages_are_visible_in_metrics() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let cluster = mock(4);
    let brokers = cluster.bootstrap_servers();
    Broker::create_topic(&cluster, "live-by-device", 4);
    let input = generate(sim(31), 12_000);
    // The model's accounting of the input (the windows are not asked for).
    let expected = common::Model {
        partitions: 4,
        ooo: 30_000,
        lateness: 0,
        windows: Vec::new(),
        rules: Vec::new(),
        types: None,
        absences: Vec::new(),
        expects: Vec::new(),
        per_device: true,
    }
    .expect(&input);
    produce_keyed(&brokers, &[], &input, None, KafkaKeys::None);
    let port = common::free_port();
    let cfg = write_config(
        dir,
        "live",
        &format!(
            "{}\npartitioning = \"any\"",
            kafka_source(&brokers, "live", false)
        ),
        &format!(
            "{}\n[server]\nhttp = \"127.0.0.1:{port}\"\npostgres = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n",
            jsonl_sinks(dir, "live")
        ),
    );
    let mut child = spawn_logging_to(&cfg, std::fs::File::create(dir.join("live.log")).unwrap());
    let value = |body: &str, name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let done = loop {
        if Instant::now() > deadline {
            break false;
        }
        if let Some(body) = common::http_get(port, "/metrics", "t0ken") {
            let settled = value(&body, "eventide_events_received_total")
                == Some(expected.received as f64)
                && value(&body, "eventide_kafka_lag_messages{stage=\"input\"}") == Some(0.0)
                && value(&body, "eventide_kafka_lag_messages{stage=\"repartition\"}") == Some(0.0);
            last = body;
            if settled {
                break true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("live.log")).unwrap_or_default();
    assert!(done, "metrics never settled:\n{last}\n{log}");
    let dead = value(
        &last,
        "eventide_repartition_events_total{outcome=\"dead_lettered\"}",
    );
    let forwarded = value(
        &last,
        "eventide_repartition_events_total{outcome=\"forwarded\"}",
    );
    assert_eq!(
        dead,
        Some((expected.parse + expected.schema) as f64),
        "{last}"
    );
    assert_eq!(
        forwarded,
        Some((expected.received - expected.parse - expected.schema) as f64),
        "{last}"
    );
    assert_eq!(
        value(&last, "eventide_events_total{outcome=\"dead_lettered\"}"),
        dead,
        "the first stage's dead letters are the run's: {last}"
    );
}

/// End to end through a separate broker process: the simulator's command produces to
/// tansu, eventide (checkpoints in a topic it creates) reads it to the end and writes
/// windows and alerts to tansu topics, which hold exactly the file run's records. A
/// second run of the group resumes from the checkpoints and reads nothing.
#[test]
fn simulator_to_tansu_to_eventide_to_tansu() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let tansu = Tansu::start();
    let brokers = tansu.brokers();
    tansu.create_topic(TOPIC, 4);
    tansu.create_topic("out-windows", 2);
    tansu.create_topic("out-alerts", 1);
    let args = [
        "eventide-simulator",
        "--devices",
        "100",
        "--count",
        "20000",
        "--seed",
        "9",
        "--interval",
        "5s",
        "--hot-devices",
        "10",
        "--malformed",
        "0.005",
        "--batch-fraction",
        "0.1",
    ];
    let file = simulate(&args, &brokers, dir);
    let (expected, expected_dead) = reference(dir, &std::fs::read(&file).unwrap());
    assert!(
        expected.keys().any(|k| k.starts_with("co2_high|")),
        "the input raises alerts"
    );

    let source = format!(
        "{}\ncheckpoint_topic = \"{CHECKPOINTS}\"",
        kafka_source(&brokers, "e2e", true)
    );
    let sinks = |name: &str| {
        format!(
            "[[sinks]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\nwindows_topic = \"out-windows\"\nalerts_topic = \"out-alerts\"\n\n[dead_letter]\nkind = \"jsonl\"\npath = \"{}\"\n",
            dir.join(format!("{name}.dead.jsonl")).display()
        )
    };
    let log = run(
        &write_config(dir, "t", &source, &sinks("t")),
        "the run on tansu",
    );
    assert!(log.contains(" 20000 events"), "{log}");
    let mut written = consume_all(&brokers, "out-windows");
    written.extend(consume_all(&brokers, "out-alerts"));
    assert_eq!(written.len(), expected.len(), "each record once");
    assert_same(&upsert(written), &expected);
    assert_eq!(
        dead_payloads(&records(&dir.join("t.dead.jsonl"))),
        dead_payloads(&expected_dead)
    );

    let log = run(
        &write_config(dir, "again", &source, &sinks("again")),
        "the second run on tansu",
    );
    assert!(
        log.contains("checkpoint read from the checkpoint topic"),
        "{log}"
    );
    assert!(log.contains(" 0 events"), "{log}");
}

/// A certificate authority and a server certificate for 127.0.0.1, made by the
/// `openssl` command in `dir`; and another CA that signed nothing here.
struct Certs {
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let openssl = common::debian_tool("openssl", "openssl");
    let sh = |args: &[&str]| {
        let out = Command::new(openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (key, pem, cn) in [
        ("ca.key", "ca.pem", "eventide test CA"),
        ("other.key", "other.pem", "another CA"),
    ] {
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }
    sh(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Certs {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// tansu requiring SASL (`--authentication`), behind a TLS-terminating proxy (socat,
/// from Debian) on another loopback port, which tansu advertises as its address: every
/// client speaks TLS. (tansu 0.6 takes --cert and --key but does not use them, hence
/// the proxy.) tansu with authentication on serves SCRAM-SHA-256 and SCRAM-SHA-512
/// only (not PLAIN), and takes no request before a login, so its topics and users are
/// made first by a broker without authentication over the same SQLite file.
struct SecureTansu {
    tansu: Child,
    proxy: Child,
    /// The TLS address.
    addr: String,
}

impl SecureTansu {
    fn start(
        dir: &Path,
        certs: &Certs,
        topics: &[(&str, i32)],
        user: &str,
        password: &str,
    ) -> SecureTansu {
        let socat = common::debian_tool("socat", "socat");
        let (plain, tls) = (common::free_port(), common::free_port());
        let broker = |advertised: u16, auth: bool| {
            let mut c = Command::new(tansu_bin());
            c.current_dir(dir)
                .args([
                    "broker",
                    "--listener-url",
                    &format!("tcp://127.0.0.1:{plain}"),
                ])
                .args([
                    "--advertised-listener-url",
                    &format!("tcp://127.0.0.1:{advertised}"),
                ])
                .args(["--storage-engine", "sqlite://tansu.db"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if auth {
                c.arg("--authentication");
            }
            let child = c.spawn().expect("starting tansu");
            wait_for_port(plain);
            child
        };
        let mut setup = broker(plain, false);
        let tansu = |args: &[&str]| {
            let ok = Command::new(tansu_bin())
                .args(args)
                .args(["--broker", &format!("tcp://127.0.0.1:{plain}")])
                .status()
                .unwrap()
                .success();
            assert!(ok, "tansu {args:?}");
        };
        for (t, p) in topics {
            tansu(&["topic", "create", t, "--partitions", &p.to_string()]);
        }
        for m in ["scram256", "scram512"] {
            tansu(&["user", "create", user, password, "--mechanism", m]);
        }
        let _ = setup.kill();
        let _ = setup.wait();
        let tansu = broker(tls, true);
        let proxy = Command::new(socat)
            .arg(format!(
                "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                certs.cert.display(),
                certs.key.display()
            ))
            .arg(format!("TCP:127.0.0.1:{plain}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting socat");
        wait_for_port(tls);
        SecureTansu {
            tansu,
            proxy,
            addr: format!("127.0.0.1:{tls}"),
        }
    }

    /// Client properties for TLS (verified with `ca`) and a SASL login.
    fn client(&self, ca: &Path, mechanism: &str, user: &str, password: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.addr)
            .set("security.protocol", "sasl_ssl")
            .set("ssl.ca.location", ca.display().to_string())
            .set("sasl.mechanism", mechanism)
            .set("sasl.username", user)
            .set("sasl.password", password);
        c
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for SecureTansu {
    fn drop(&mut self) {
        for c in [&mut self.proxy, &mut self.tansu] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every record of `topic`, read over TLS with a SCRAM login.
fn consume_all_secure(broker: &SecureTansu, ca: &Path, topic: &str) -> Vec<Value> {
    consume_all_with(
        broker.client(ca, "SCRAM-SHA-256", "alice", "s3cret pass"),
        topic,
    )
}

/// Every record of `topic`, read by a client with `config`.
fn consume_all_with(mut config: ClientConfig, topic: &str) -> Vec<Value> {
    let c: BaseConsumer = config.set("group.id", "reader").create().unwrap();
    let parts = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap()
        .topics()[0]
        .partitions()
        .len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(serde_json::from_slice(m.payload().unwrap()).unwrap());
            last = Instant::now();
        }
    }
    out
}

/// Kafka over TLS with SASL, as Event Hubs and Confluent Cloud require: the
/// simulator's producer, eventide's source and Kafka dead-letter sink (SCRAM-SHA-256)
/// and Kafka sink (SCRAM-SHA-512), all through a TLS proxy whose certificate a CA
/// made by the test signed, against a tansu that requires SASL. The records written
/// are the file run's. A client that trusts another CA, and one with a wrong SCRAM
/// password, stop with a clear error and a non-zero exit, having committed nothing.
/// (PLAIN, Event Hubs' mechanism, is in `sasl_plain_as_event_hubs_asks`: tansu does
/// not serve it with authentication on, and librdkafka's mock cluster speaks no SASL.)
#[test]
fn tls_and_sasl_for_every_kafka_client() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let certs = make_certs(dir);
    let topics = [
        (TOPIC, 2),
        ("out-windows", 2),
        ("out-alerts", 1),
        ("out-dead", 1),
        (CHECKPOINTS, 1),
    ];
    let broker = SecureTansu::start(dir, &certs, &topics, "alice", "s3cret pass");
    // SAFETY: the Kafka tests run one at a time (`serial`), and nothing else here
    // reads the environment meanwhile.
    unsafe { std::env::set_var("EVENTIDE_TEST_SCRAM_PASSWORD", "s3cret pass") };

    let ca = certs.ca.display().to_string();
    let args = [
        "eventide-simulator",
        "--devices",
        "60",
        "--count",
        "6000",
        "--seed",
        "4",
        "--interval",
        "5s",
        "--malformed",
        "0.01",
        "--security-protocol",
        "sasl_ssl",
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--sasl-username",
        "alice",
        "--sasl-password-env",
        "EVENTIDE_TEST_SCRAM_PASSWORD",
        "--ssl-ca-location",
        &ca,
        // tansu skips the rest of a batch when a fetch starts inside it (see `Tansu`).
        "--kafka-property",
        "batch.num.messages=1",
    ];
    let file = simulate(&args, &broker.addr, dir);
    let (expected, expected_dead) = reference(dir, &std::fs::read(&file).unwrap());

    let login = |mechanism: &str, password: &str| {
        format!(
            "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"{mechanism}\"\nsasl_username = \"alice\"\n{password}\nssl_ca_location = \"{ca}\"\n"
        )
    };
    let env_password = "sasl_password_env = \"EVENTIDE_TEST_SCRAM_PASSWORD\"";
    let source = |group: &str, login: &str| {
        format!(
            "{}\ncheckpoint_topic = \"{CHECKPOINTS}\"\n{login}",
            kafka_source(&broker.addr, group, true)
        )
    };
    let sinks = format!(
        "[[sinks]]\nkind = \"kafka\"\nbrokers = \"{b}\"\nwindows_topic = \"out-windows\"\nalerts_topic = \"out-alerts\"\n{sink_login}\n[dead_letter]\nkind = \"kafka\"\nbrokers = \"{b}\"\ntopic = \"out-dead\"\n{dead_login}",
        b = broker.addr,
        sink_login = login("SCRAM-SHA-512", env_password),
        dead_login = login("SCRAM-SHA-256", env_password),
    );
    let cfg = write_config(
        dir,
        "secure",
        &source("secure", &login("SCRAM-SHA-256", env_password)),
        &sinks,
    );
    let log = run(&cfg, "the run over TLS and SASL");
    assert!(log.contains(" 6000 events"), "{log}");
    assert!(!log.contains("s3cret"), "the password is never logged");
    let mut written = consume_all_secure(&broker, &certs.ca, "out-windows");
    written.extend(consume_all_secure(&broker, &certs.ca, "out-alerts"));
    assert_eq!(written.len(), expected.len(), "each record once");
    assert_same(&upsert(written), &expected);
    let dead = consume_all_secure(&broker, &certs.ca, "out-dead");
    assert_eq!(dead_payloads(&dead), dead_payloads(&expected_dead));

    // Trusting another CA, and a wrong password: clear errors, nothing committed.
    let other_ca = certs.other_ca.display().to_string();
    for (name, login, error) in [
        (
            "wrong-ca",
            login("SCRAM-SHA-256", env_password).replace(&ca, &other_ca),
            "certificate verify failed",
        ),
        (
            "wrong-password",
            login("SCRAM-SHA-256", "sasl_password = \"not the password\""),
            "SASL authentication error",
        ),
    ] {
        let cfg = write_config(dir, name, &source(name, &login), &jsonl_sinks(dir, name));
        let out = spawn(&cfg).wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("cannot reach the brokers") && stderr.contains(error),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains("not the password"),
            "{name}: the password is never logged"
        );
        let c: BaseConsumer = broker
            .client(&certs.ca, "SCRAM-SHA-256", "alice", "s3cret pass")
            .set("group.id", name)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(TOPIC, 0);
        tpl.add_partition(TOPIC, 1);
        let committed = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        assert!(
            committed
                .elements()
                .iter()
                .all(|e| e.offset() == Offset::Invalid),
            "{name}: nothing committed: {committed:?}"
        );
    }
}

/// The server side of SASL PLAIN for one user, in front of a broker that has no
/// authentication: it answers a connection's SaslHandshake and SaslAuthenticate
/// requests itself (checking the user name and password), passes its ApiVersions
/// requests on, and once the login succeeds pipes the connection to the broker.
/// (Neither tansu, which serves only SCRAM with authentication on, nor librdkafka's
/// mock cluster, which has no SASL, speaks PLAIN.) Listens on a loopback port.
struct PlainGate {
    port: u16,
}

impl PlainGate {
    fn start(upstream: u16, user: &'static str, password: &'static str) -> PlainGate {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = Self::serve(client, upstream, user, password);
                });
            }
        });
        PlainGate { port }
    }

    fn serve(
        mut client: std::net::TcpStream,
        upstream: u16,
        user: &str,
        password: &str,
    ) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let mut broker = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
        let frame = |s: &mut std::net::TcpStream| -> std::io::Result<Vec<u8>> {
            let mut size = [0; 4];
            s.read_exact(&mut size)?;
            let mut f = vec![0; i32::from_be_bytes(size) as usize];
            s.read_exact(&mut f)?;
            Ok(f)
        };
        let send = |s: &mut std::net::TcpStream, body: &[u8]| {
            let mut out = (body.len() as i32).to_be_bytes().to_vec();
            out.extend_from_slice(body);
            s.write_all(&out)
        };
        loop {
            let req = frame(&mut client)?;
            let api = i16::from_be_bytes([req[0], req[1]]);
            let version = i16::from_be_bytes([req[2], req[3]]);
            let corr = &req[4..8];
            // The body starts after the client id (and the tag buffer of flexible
            // request headers: SaslAuthenticate v2).
            let id_len = i16::from_be_bytes([req[8], req[9]]).max(0) as usize;
            let flexible = api == 36 && version >= 2;
            let body = &req[10 + id_len + flexible as usize..];
            match api {
                17 => {
                    // SaslHandshake: PLAIN only.
                    let mut r = corr.to_vec();
                    r.extend_from_slice(&0i16.to_be_bytes());
                    r.extend_from_slice(&1i32.to_be_bytes());
                    r.extend_from_slice(&5i16.to_be_bytes());
                    r.extend_from_slice(b"PLAIN");
                    send(&mut client, &r)?;
                }
                36 => {
                    // SaslAuthenticate: `authzid NUL user NUL password`.
                    let token = if flexible {
                        let n = body[0] as usize - 1; // (a one-byte varint here)
                        &body[1..1 + n]
                    } else {
                        let n = i32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                        &body[4..4 + n]
                    };
                    let parts: Vec<&[u8]> = token.split(|&b| b == 0).collect();
                    let ok = parts.len() == 3
                        && parts[1] == user.as_bytes()
                        && parts[2] == password.as_bytes();
                    let (code, message) = if ok {
                        (0i16, None)
                    } else {
                        (58i16, Some("invalid user name or password"))
                    };
                    let mut r = corr.to_vec();
                    if flexible {
                        r.push(0);
                    }
                    r.extend_from_slice(&code.to_be_bytes());
                    match (message, flexible) {
                        (None, false) => r.extend_from_slice(&(-1i16).to_be_bytes()),
                        (None, true) => r.push(0),
                        (Some(m), false) => {
                            r.extend_from_slice(&(m.len() as i16).to_be_bytes());
                            r.extend_from_slice(m.as_bytes());
                        }
                        (Some(m), true) => {
                            r.push(m.len() as u8 + 1);
                            r.extend_from_slice(m.as_bytes());
                        }
                    }
                    if flexible {
                        r.push(1); // empty auth bytes
                    } else {
                        r.extend_from_slice(&0i32.to_be_bytes());
                    }
                    if version >= 1 {
                        r.extend_from_slice(&0i64.to_be_bytes());
                    }
                    if flexible {
                        r.push(0);
                    }
                    send(&mut client, &r)?;
                    if !ok {
                        return Ok(());
                    }
                    // Logged in: from here on the broker answers everything.
                    let (mut c2, mut b2) = (client.try_clone()?, broker.try_clone()?);
                    std::thread::spawn(move || std::io::copy(&mut b2, &mut c2));
                    std::io::copy(&mut client, &mut broker)?;
                    return Ok(());
                }
                _ => {
                    // ApiVersions and anything else before the login: the broker's.
                    send(&mut broker, &req)?;
                    let answer = frame(&mut broker)?;
                    send(&mut client, &answer)?;
                }
            }
        }
    }
}

/// SASL PLAIN over TLS, as Azure Event Hubs asks for (`$ConnectionString` as the user
/// name, the connection string as the password): the simulator produces, eventide
/// consumes and writes its Kafka sink, through a TLS proxy and a PLAIN gate in front
/// of tansu; the records are the file run's. A wrong password stops the run with a
/// clear error and a non-zero exit, nothing committed.
#[test]
fn sasl_plain_as_event_hubs_asks() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let certs = make_certs(dir);
    let socat = common::debian_tool("socat", "socat");
    let (plain, tls) = (common::free_port(), common::free_port());
    let connection =
        "Endpoint=sb://test.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=k3y=";
    let gate = PlainGate::start(plain, "$ConnectionString", connection);
    let mut tansu = Command::new(tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{plain}"),
        ])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{tls}"),
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tansu");
    wait_for_port(plain);
    for (t, p) in [
        (TOPIC, 2),
        ("out-windows", 1),
        ("out-alerts", 1),
        (CHECKPOINTS, 1),
    ] {
        let ok = Command::new(tansu_bin())
            .args(["topic", "create", t, "--partitions", &p.to_string()])
            .args(["--broker", &format!("tcp://127.0.0.1:{plain}")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tansu topic create {t}");
    }
    let mut proxy = Command::new(socat)
        .arg(format!(
            "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
            certs.cert.display(),
            certs.key.display()
        ))
        .arg(format!("TCP:127.0.0.1:{}", gate.port))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting socat");
    wait_for_port(tls);
    let brokers = format!("127.0.0.1:{tls}");
    // SAFETY: the Kafka tests run one at a time (`serial`), and nothing else here
    // reads the environment meanwhile.
    unsafe { std::env::set_var("EVENTIDE_TEST_EH_CONNECTION", connection) };
    let ca = certs.ca.display().to_string();
    let args = [
        "eventide-simulator",
        "--devices",
        "40",
        "--count",
        "3000",
        "--seed",
        "8",
        "--interval",
        "5s",
        "--security-protocol",
        "sasl_ssl",
        "--sasl-mechanism",
        "PLAIN",
        "--sasl-username",
        "$ConnectionString",
        "--sasl-password-env",
        "EVENTIDE_TEST_EH_CONNECTION",
        "--ssl-ca-location",
        &ca,
        "--kafka-property",
        "batch.num.messages=1",
    ];
    let file = simulate(&args, &brokers, dir);
    let (expected, _) = reference(dir, &std::fs::read(&file).unwrap());
    let login = |password: &str| {
        format!(
            "security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nsasl_username = \"$ConnectionString\"\n{password}\nssl_ca_location = \"{ca}\"\n"
        )
    };
    let good = login("sasl_password_env = \"EVENTIDE_TEST_EH_CONNECTION\"");
    let source = |group: &str, login: &str| {
        format!(
            "{}\ncheckpoint_topic = \"{CHECKPOINTS}\"\n{login}",
            kafka_source(&brokers, group, true)
        )
    };
    let sinks = format!(
        "[[sinks]]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\nwindows_topic = \"out-windows\"\nalerts_topic = \"out-alerts\"\n{good}\n[dead_letter]\nkind = \"jsonl\"\npath = \"{}\"\n",
        dir.join("plain.dead.jsonl").display()
    );
    let log = run(
        &write_config(dir, "plain", &source("plain", &good), &sinks),
        "the run with PLAIN",
    );
    assert!(log.contains(" 3000 events"), "{log}");
    assert!(
        !log.contains("k3y="),
        "the connection string is never logged"
    );

    let bad = login("sasl_password = \"Endpoint=sb://x/;SharedAccessKey=wrong\"");
    let cfg = write_config(dir, "bad", &source("bad", &bad), &jsonl_sinks(dir, "bad"));
    let out = spawn(&cfg).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot reach the brokers")
            && stderr.contains("invalid user name or password"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("SharedAccessKey=wrong"),
        "the password is never logged"
    );

    let reader = || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &brokers)
            .set("security.protocol", "sasl_ssl")
            .set("ssl.ca.location", &ca)
            .set("sasl.mechanism", "PLAIN")
            .set("sasl.username", "$ConnectionString")
            .set("sasl.password", connection);
        c
    };
    let mut written = consume_all_with(reader(), "out-windows");
    written.extend(consume_all_with(reader(), "out-alerts"));
    assert_eq!(written.len(), expected.len(), "each record once");
    assert_same(&upsert(written), &expected);
    for c in [&mut proxy, &mut tansu] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
