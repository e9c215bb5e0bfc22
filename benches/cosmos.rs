//! The Cosmos sink against the local Cosmos NoSQL API server (`@vercel/cosmosdb-server`,
//! started by the tests' harness on loopback, faults off):
//!
//! 1. upserts/s and write latency (p50/p99/p99.9) of window records through
//!    [`CosmosSink`] at several `max_concurrency` settings;
//! 2. the whole pipeline from a file with the cosmos sink on: device documents only
//!    (coalesced per flush interval), then windows + alerts + devices.
//!
//! `cargo bench --bench cosmos`
//! (EVENTIDE_BENCH_COSMOS_WRITES per concurrency, default 20000;
//!  EVENTIDE_BENCH_COSMOS_CONCURRENCY, default "1,8,32,64";
//!  EVENTIDE_BENCH_EVENTS for the pipeline runs, default 200000, a quarter of it
//!  for the all-streams run).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array,
};
use eventide::config::{Config, DeadLetterConfig};
use eventide::event::window_schema;
use eventide::sinks::Output;
use eventide::sinks::cosmos::{CosmosSettings, CosmosSink};

mod common;
#[path = "../tests/cosmos/harness.rs"]
mod harness;

use common::{env_u64, machine, peak_rss_kib};
use harness::{Cosmos, KEY};

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let server = Cosmos::start();
    println!("eventide Cosmos sink benchmark");
    println!("  machine:      {}", machine());
    println!(
        "  server:       @vercel/cosmosdb-server 1.0.1 (Node), loopback, HTTP/1.1, keep-alive"
    );

    let writes = if quick {
        2_000
    } else {
        env_u64("EVENTIDE_BENCH_COSMOS_WRITES", 20_000)
    };
    let levels =
        std::env::var("EVENTIDE_BENCH_COSMOS_CONCURRENCY").unwrap_or_else(|_| "1,8,32,64".into());
    for c in levels
        .split(',')
        .map(|c| c.trim().parse::<usize>().expect("a concurrency"))
    {
        upserts(&server, c, writes as usize);
    }

    let input = common::input(200_000);
    pipeline_run(&server, &input.path, input.events, "devices", &["devices"]);
    let quarter = input.dir.path().join("quarter.ndjson");
    common::generate(&quarter, input.events / 4);
    pipeline_run(
        &server,
        &quarter,
        input.events / 4,
        "all",
        &["windows", "alerts", "devices"],
    );
    println!("  peak RSS:     {:.0} MiB", peak_rss_kib() as f64 / 1024.0);
}

fn settings(server: &Cosmos, database: &str, concurrency: usize) -> CosmosSettings {
    CosmosSettings {
        endpoint: server.endpoint(),
        key: KEY.into(),
        database: database.into(),
        devices: None,
        windows: Some("windows".into()),
        alerts: None,
        create_if_missing: true,
        max_concurrency: concurrency,
        max_retries: 5,
        flush_interval: Duration::from_secs(1),
    }
}

/// `n` window records (over 2,000 devices) through the sink at `concurrency`.
fn upserts(server: &Cosmos, concurrency: usize, n: usize) {
    let mut sink = CosmosSink::connect(settings(
        server,
        &format!("upserts{concurrency}"),
        concurrency,
    ))
    .expect("cosmos sink");
    let batches: Vec<RecordBatch> = (0..n)
        .step_by(1000)
        .map(|from| windows(from, (n - from).min(1000)))
        .collect();
    let started = Instant::now();
    for b in batches {
        sink.write(&Output {
            windows: Some(b),
            ..Output::default()
        })
        .expect("write");
    }
    sink.flush(true, true).expect("flush");
    let wall = started.elapsed().as_secs_f64();
    let s = sink.stats();
    let mut failed = Vec::new();
    sink.take_failed(&mut failed);
    assert!(failed.is_empty(), "writes failed: {:?}", failed.first());
    assert_eq!(s.writes, n as u64);
    let q = |p: f64| s.latency.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "  upserts:      concurrency {concurrency:>3}: {:>6.0} upserts/s, latency p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms ({n} window records, {:.0} RU)",
        n as f64 / wall,
        q(0.5),
        q(0.99),
        q(0.999),
        s.request_charge
    );
}

/// Window rows `from..from+n`, one window per row, over 2,000 devices.
fn windows(from: usize, n: usize) -> RecordBatch {
    let rows = from..from + n;
    let device: StringArray = rows
        .clone()
        .map(|i| Some(format!("device-{:06}", i % 2000)))
        .collect();
    let start: Vec<i64> = rows
        .clone()
        .map(|i| 1_767_225_600_000 + (i / 2000) as i64 * 60_000)
        .collect();
    let end: Vec<i64> = start.iter().map(|s| s + 60_000).collect();
    let f = |v: f64| Arc::new(Float64Array::from(vec![v; n])) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["tumbling_1m"; n])),
        Arc::new(device),
        Arc::new(StringArray::from(vec!["CO2"; n])),
        Arc::new(TimestampMillisecondArray::from(start).with_timezone("UTC")),
        Arc::new(TimestampMillisecondArray::from(end).with_timezone("UTC")),
        Arc::new(UInt64Array::from(vec![6u64; n])),
        f(4800.0),
        f(800.0),
        f(700.0),
        f(900.0),
    ];
    RecordBatch::try_new(window_schema(), columns).expect("window schema")
}

/// The pipeline as `config/file.toml` sets it up (tumbling 1m + sliding 5m/1m +
/// co2_high, 2 partitions) from `input`, with only a cosmos sink taking `streams`.
fn pipeline_run(server: &Cosmos, input: &Path, n: u64, database: &str, streams: &[&str]) {
    let dir = input.parent().expect("the input is in a directory");
    let mut cfg = common::example_config(input, dir);
    cfg.dead_letter = DeadLetterConfig::file(input.with_extension("dead.jsonl"));
    let streams: Vec<String> = streams.iter().map(|s| format!("{s:?}")).collect();
    // The sink as its own config section (parsed, so it is validated like any other).
    let sink = format!(
        "[source]\nkind = \"stdin\"\n[[windows]]\nname = \"w\"\nkind = \"tumbling\"\nsize = \"1m\"\n\
         [[sinks]]\nkind = \"cosmos\"\nendpoint = \"{}\"\nkey = \"{KEY}\"\ndatabase = \"{database}\"\n\
         streams = [{}]\ncreate_if_missing = true\n",
        server.endpoint(),
        streams.join(", "),
    );
    cfg.sinks = Config::parse(&sink).expect("cosmos sink config").sinks;
    let (report, wall, cpu) = common::run_to_end(&cfg);
    assert_eq!(
        report.sinks.dead_letters,
        report.counts.dead_lettered + report.counts.late,
        "no sink dead letters"
    );
    let devices = server.documents(database, "devices").len();
    assert_eq!(devices, report.devices, "one document per device");
    println!(
        "  pipeline:     streams [{}]: {n} events, {} devices, {} windows, {} alerts: {:.0} events/s, wall {wall:.2} s, {:.2} CPU-s per million events (eventide only)",
        streams.join(", "),
        report.devices,
        report.counts.windows,
        report.counts.alerts,
        n as f64 / wall,
        cpu / (n as f64 / 1e6),
    );
}
