//! Kafka → pipeline throughput: N simulated events (~820 bytes, 2,000 devices) produced
//! to a 16-partition topic on librdkafka's mock cluster (a Kafka-protocol broker on a
//! loopback port, running in this process), then consumed by the `kafka` source with
//! `stop_at_end` through the whole pipeline (`config/file.toml`'s windows and rule,
//! JSONL sinks). Reports events/s, CPU-seconds per million events (this process: the
//! pipeline *and* the broker serving it), arrival → window-close latency and peak RSS.
//!
//! Then latency: events produced at a fixed rate (default 10,000/s, then 100,000/s)
//! while the pipeline consumes them, and the time from the Kafka timestamp of the
//! event that closed a window to the window and its alerts leaving the actor for the
//! sinks (p50/p99). The producer runs in this process too, on the same 2 cores.
//!
//! `cargo bench --bench kafka`  (EVENTIDE_BENCH_EVENTS=N, default 80000: librdkafka's
//! mock cluster keeps 5 MB per partition; EVENTIDE_BENCH_KAFKA_PARTITIONS=P, default 16; EVENTIDE_BENCH_LATENCY_RATES=a,b
//! events/s, default 10000,100000; EVENTIDE_BENCH_LATENCY_SECS=S, default 30)

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventide::config::{Config, DeadLetterConfig, SinkConfig};
use eventide::live::Hub;
use eventide::pipeline::{self, Status};
use eventide_simulator::kafka::{KafkaKeys, KafkaOut};
use eventide_simulator::{Generator, SimConfig};
use hdrhistogram::Histogram;
use rdkafka::mocking::MockCluster;

mod common;

use common::{cpu_seconds, env_u64, machine, peak_rss_kib};

fn main() {
    if std::env::var_os("EVENTIDE_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("EVENTIDE_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    // The mock cluster keeps at most 5 MB per partition (older messages are
    // deleted), so the input must fit: 16 partitions x 5 MB hold ~95,000 events.
    let input = common::input(80_000);
    let partitions = env_u64("EVENTIDE_BENCH_KAFKA_PARTITIONS", 16) as i32;
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster
        .create_topic("telemetry", partitions, 1)
        .expect("topic");
    let brokers = cluster.bootstrap_servers();

    let produce_started = Instant::now();
    let mut out = KafkaOut::new(&brokers, "telemetry", &[]).expect("producer");
    let file =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&input.path).unwrap());
    for line in file.split(b'\n') {
        let line = line.unwrap();
        if !line.is_empty() {
            out.send_line(&line).expect("produce");
        }
    }
    let (delivered, failed, _) = out.finish();
    assert_eq!(failed, 0);
    let produce_secs = produce_started.elapsed().as_secs_f64();

    let mut cfg = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/file.toml"
    )))
    .expect("example config");
    let kafka = Config::parse(&format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"telemetry\"]\ngroup_id = \"bench\"\nstop_at_end = true\n[[windows]]\nname = \"w\"\nkind = \"tumbling\"\nsize = \"1m\""
    ))
    .expect("kafka source");
    cfg.source = kafka.source;
    if let SinkConfig::Jsonl(j) = &mut cfg.sinks[0] {
        j.path = input.dir.path().join("out.jsonl");
    }
    cfg.dead_letter = DeadLetterConfig::file(input.dir.path().join("dead.jsonl"));

    let (report, joined, wall, cpu) = run_kafka(cfg, partitions as usize);
    let wall = wall + joined;
    assert!(
        report.completed && report.counts.balanced(),
        "{}",
        report.counts
    );
    assert_eq!(report.counts.received, input.events);

    let n = input.events as f64;
    let q = |p: f64| report.latency.value_at_quantile(p) as f64 / 1000.0;
    println!("eventide kafka harness");
    println!("  machine:      {}", machine());
    println!(
        "  input:        {} events in {delivered} messages, {partitions} partitions, {} devices (produced in {produce_secs:.1} s)",
        input.events, report.devices
    );
    println!("  outcome:      {}", report.counts);
    println!(
        "  throughput:   {:.0} events/s from the assignment on ({:.2} s; joining the group took {joined:.2} s before)",
        n / (wall - joined),
        wall - joined
    );
    println!(
        "  cpu:          {:.3} CPU-s per million events, pipeline + in-process broker",
        cpu / (n / 1e6)
    );
    println!(
        "  latency:      arrival -> window close p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        q(0.5),
        q(0.99),
        q(0.999)
    );
    println!(
        "  peak RSS:     {:.0} MiB (includes the broker's copy of the topic)",
        peak_rss_kib() as f64 / 1024.0
    );

    stages(input.quick);
    latency(input.quick, partitions);
}

/// `partitioning = "any"` against keyed input: the same events (batches of up to 6
/// mixing devices, no complexData: ~220 bytes, so that they fit the mock cluster's
/// 5 MB per partition) on 4 partitions, read once keyed by device (one stage) and once
/// as gateway batches keyed by their first device through the repartition topic (two
/// stages, both in this process with the broker). `fetch.wait.max.ms` as in the
/// latency runs: the mock broker holds an empty fetch for the whole wait, which the
/// second stage, reading what the first is writing, would otherwise measure.
fn stages(quick: bool) {
    let events = if quick {
        10_000
    } else {
        env_u64("EVENTIDE_BENCH_STAGE_EVENTS", 60_000)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events.ndjson");
    common::write_events(
        &path,
        SimConfig {
            devices: 2000,
            hot_devices: 40,
            complex_fields: 0,
            batch_fraction: 0.5,
            batch_size: 6,
            ..SimConfig::default()
        },
        events,
    );
    let text = std::fs::read(&path).expect("input");
    println!("eventide kafka stages ({events} events, 4 partitions)");
    for (label, keys, partitioning) in [
        ("one stage, keyed by device", KafkaKeys::Device, "by_device"),
        ("two stages, gateway batches", KafkaKeys::First, "any"),
    ] {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("telemetry", 4, 1).expect("topic");
        cluster
            .create_topic("stages-by-device", 4, 1)
            .expect("repartition topic");
        let brokers = cluster.bootstrap_servers();
        let mut out = KafkaOut::new(&brokers, "telemetry", &[])
            .and_then(|o| o.with_keys(keys))
            .expect("producer");
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.send_line(line).expect("produce");
        }
        let (_, failed, _) = out.finish();
        assert_eq!(failed, 0);
        let cfg = kafka_config(
            &format!(
                "topics = [\"telemetry\"]\ngroup_id = \"stages\"\nstop_at_end = true\npartitioning = \"{partitioning}\""
            ),
            &brokers,
            "30s",
            dir.path(),
            partitioning,
        );
        let (report, _, wall, cpu) = run_kafka(cfg, 4);
        assert!(
            report.completed && report.counts.balanced(),
            "{}",
            report.counts
        );
        assert_eq!(report.counts.received, events);
        println!(
            "  {label:<30} {:>9.0} events/s from the assignment on ({wall:.2} s), {:.2} CPU-s per million events (with the broker)",
            events as f64 / wall,
            cpu / (events as f64 / 1e6)
        );
    }
}

/// Runs `cfg` (a Kafka source with `stop_at_end`) to the end: the report, the
/// seconds until its `partitions` actors started (joining the group), the seconds
/// from then to the end, and this process's CPU seconds over the whole run.
fn run_kafka(cfg: Config, partitions: usize) -> (pipeline::Report, f64, f64, f64) {
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let hub = Arc::new(Hub::new(0, Duration::ZERO, Duration::from_secs(3600)));
    let run = {
        let hub = hub.clone();
        std::thread::spawn(move || {
            pipeline::run_with(
                &cfg,
                Arc::new(AtomicBool::new(false)),
                Status::Off,
                Some(hub),
            )
        })
    };
    wait_for_actors(&hub, partitions);
    let joined = started.elapsed().as_secs_f64();
    let report = run.join().expect("pipeline thread").expect("pipeline run");
    let wall = started.elapsed().as_secs_f64() - joined;
    (report, joined, wall, cpu_seconds() - cpu_before)
}

/// A Kafka source on `brokers` (`source`: its topics, group and other keys) with
/// `fetch.wait.max.ms` = 10 (see [`latency`]), `max_out_of_order`, the example's
/// windows and rule, and JSONL sinks named `name` in `dir`.
fn kafka_config(
    source: &str,
    brokers: &str,
    max_out_of_order: &str,
    dir: &Path,
    name: &str,
) -> Config {
    Config::parse(&format!(
        "[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\n{source}\nproperties = {{ \"fetch.wait.max.ms\" = \"10\" }}\n\
         [pipeline]\nmax_out_of_order = \"{max_out_of_order}\"\ndedupe = \"both\"\n\
         [[windows]]\nname = \"tumbling_1m\"\nkind = \"tumbling\"\nsize = \"1m\"\n\
         [[windows]]\nname = \"sliding_5m\"\nkind = \"sliding\"\nsize = \"5m\"\nslide = \"1m\"\n\
         [[rules]]\nname = \"co2_high\"\nwindow = \"sliding_5m\"\nfilter = \"type = 'CO2'\"\nwhen = \"avg > 1000\"\nclear = \"avg < 950\"\n\
         [[sinks]]\nkind = \"jsonl\"\npath = \"{out}\"\n\
         [dead_letter]\nkind = \"jsonl\"\npath = \"{dead}\"\n",
        out = dir.join(format!("{name}.out.jsonl")).display(),
        dead = dir.join(format!("{name}.dead.jsonl")).display(),
    ))
    .expect("kafka config")
}

/// The latency runs: one per rate, each on its own topic and consumer group.
fn latency(quick: bool, partitions: i32) {
    let rates: Vec<f64> = if quick {
        vec![10_000.0]
    } else {
        std::env::var("EVENTIDE_BENCH_LATENCY_RATES")
            .unwrap_or_else(|_| "10000,100000".into())
            .split(',')
            .map(|r| {
                r.trim()
                    .parse()
                    .expect("EVENTIDE_BENCH_LATENCY_RATES: numbers")
            })
            .collect()
    };
    let secs = if quick {
        3
    } else {
        env_u64("EVENTIDE_BENCH_LATENCY_SECS", 30)
    };
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().expect("temp dir");
    println!("eventide kafka latency (Kafka timestamp of the closing event -> out to the sinks)");
    for (i, rate) in rates.into_iter().enumerate() {
        let topic = format!("live{i}");
        cluster.create_topic(&topic, partitions, 1).expect("topic");
        // fetch.wait.max.ms: the mock broker holds a fetch that found no data for the
        // whole wait, even when data arrives meanwhile (a Kafka broker answers at
        // once), so its 500 ms default would be measured as latency here.
        let cfg = kafka_config(
            &format!("topics = [\"{topic}\"]\ngroup_id = \"{topic}\""),
            &brokers,
            "5s",
            dir.path(),
            &topic,
        );
        let stop = Arc::new(AtomicBool::new(false));
        // A hub only to see when the actors have started (snapshots for queries
        // every hour, so it costs the measured run nothing).
        let hub = Arc::new(Hub::new(0, Duration::ZERO, Duration::from_secs(3600)));
        let pipeline = {
            let (stop, hub) = (stop.clone(), hub.clone());
            std::thread::spawn(move || pipeline::run_with(&cfg, stop, Status::Off, Some(hub)))
        };
        wait_for_actors(&hub, partitions as usize);
        // The actors read their committed offsets before their first poll.
        std::thread::sleep(Duration::from_millis(500));

        // 300 devices, each reporting once per event-second: at 10,000 events/s the
        // event clock runs ~33x the wall clock, so 1-minute windows close every ~2 s.
        let mut sim = Generator::new(SimConfig {
            devices: 300,
            hot_devices: 60,
            start_ms: eventide::event::now_ms(),
            ..SimConfig::default()
        });
        let mut out = KafkaOut::new(&brokers, &topic, &[]).expect("producer");
        let started = Instant::now();
        let mut buf = Vec::with_capacity(4096);
        let total = (rate * secs as f64) as u64;
        while sim.stats().events < total {
            let due = Duration::from_secs_f64(sim.stats().events as f64 / rate);
            let now = started.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
            buf.clear();
            sim.next_message(&mut buf, total - sim.stats().events);
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            out.send_line(line).expect("produce");
        }
        let achieved = total as f64 / started.elapsed().as_secs_f64();
        let (_, failed, _) = out.finish();
        assert_eq!(failed, 0);
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let report = pipeline
            .join()
            .expect("pipeline thread")
            .expect("pipeline run");
        assert!(report.counts.balanced(), "{}", report.counts);
        let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        println!(
            "  {rate:>8.0} events/s target ({achieved:.0} achieved, {secs} s, {} received): \
             alerts p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {}); \
             windows p50 {:.1} ms, p99 {:.1} ms (n = {})",
            report.counts.received,
            q(&report.emit.alerts, 0.5),
            q(&report.emit.alerts, 0.99),
            report.emit.alerts.max() as f64 / 1000.0,
            report.emit.alerts.len(),
            q(&report.emit.windows, 0.5),
            q(&report.emit.windows, 0.99),
            report.emit.windows.len(),
        );
    }
}

/// Waits until every partition is assigned and its actor started, so the measured
/// events do not wait for the consumer group to form.
fn wait_for_actors(hub: &Hub, partitions: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.partitions_assigned.load(Ordering::Relaxed) < partitions as u64 {
        assert!(
            Instant::now() < deadline,
            "the Kafka source's actors did not start within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
