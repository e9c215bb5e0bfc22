//! Kafka → pipeline throughput: N simulated events (~820 bytes, 2,000 devices) produced
//! to a 4-partition topic on librdkafka's mock cluster (a Kafka-protocol broker on a
//! loopback port, running in this process), then consumed by the `kafka` source with
//! `stop_at_end` through the whole pipeline (`config/file.toml`'s windows and rule,
//! JSONL sinks). Reports events/s, CPU-seconds per million events (this process: the
//! pipeline *and* the broker serving it), arrival → window-close latency and peak RSS.
//!
//! `cargo bench --bench kafka`  (EVENTIDE_BENCH_EVENTS=N, default 500000;
//! EVENTIDE_BENCH_KAFKA_PARTITIONS=P, default 4)

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use eventide::config::Config;
use eventide::pipeline::{self, Status};
use eventide_simulator::kafka::KafkaOut;
use rdkafka::mocking::MockCluster;

mod common;

use common::{cpu_seconds, env_u64, machine, peak_rss_kib};

fn main() {
    let input = common::input(500_000);
    let partitions = env_u64("EVENTIDE_BENCH_KAFKA_PARTITIONS", 4) as i32;
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
    cfg.sinks[0].path = Some(input.dir.path().join("out.jsonl"));
    cfg.dead_letter.path = Some(input.dir.path().join("dead.jsonl"));

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let report =
        pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).expect("pipeline run");
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
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
        "  throughput:   {:.0} events/s, wall {wall:.2} s (includes joining the group)",
        n / wall
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
}
