//! Fleet-scale harness: a million devices. The input is what
//! `eventide-simulator --devices 1000000 --count 6000000 --interval 30s
//! --complex-fields 3 --hot-devices 100` writes (each device reports every 30 s of
//! event time, so 6 M events span 3 minutes); 2 partitions, dedupe by event id,
//! tumbling 1m + sliding 5m/1m + the co2 rule of `config/file.toml`, per-device event
//! time. Reports events/s over the whole run (the last windows of every device
//! included), CPU-seconds per million events, peak RSS, and where the state's bytes
//! go, per device.
//!
//! `cargo bench --bench fleet`  (EVENTIDE_BENCH_DEVICES, default 1,000,000;
//! EVENTIDE_BENCH_EVENTS, default 6,000,000; EVENTIDE_BENCH_INPUT=FILE to keep the
//! input; EVENTIDE_BENCH_EVENT_TIME=device|partition, default device;
//! EVENTIDE_BENCH_WINDOWS=both|tumbling, default both; EVENTIDE_BENCH_OUT=FILE for
//! the window records, default a file in a temporary directory)

use std::path::{Path, PathBuf};

use eventide::config::SinkConfig;
use eventide_simulator::SimConfig;

mod common;

use common::{env_u64, machine, peak_rss_kib};

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (devices, events) = if quick {
        (20_000, 60_000)
    } else {
        (
            env_u64("EVENTIDE_BENCH_DEVICES", 1_000_000),
            env_u64("EVENTIDE_BENCH_EVENTS", 6_000_000),
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let input = std::env::var_os("EVENTIDE_BENCH_INPUT")
        .filter(|_| !quick)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("fleet.ndjson"));
    if !input.exists() {
        generate(&input, devices as u32, events);
    }
    common::warm_page_cache(&input);

    let mut cfg = common::example_config(&input, dir.path());
    let p = common::pipeline_keys(
        &format!(
            "dedupe = \"event_id\"\nevent_time = \"{}\"",
            std::env::var("EVENTIDE_BENCH_EVENT_TIME").unwrap_or_else(|_| "device".into())
        ),
        "EVENTIDE_BENCH_EVENT_TIME: device or partition",
    );
    cfg.pipeline.partitions = Some(2);
    cfg.pipeline.dedupe = p.dedupe;
    cfg.pipeline.event_time = p.event_time;
    if std::env::var("EVENTIDE_BENCH_WINDOWS").is_ok_and(|w| w == "tumbling") {
        cfg.windows.retain(|w| w.name == "tumbling_1m");
        cfg.rules.clear();
    }
    let out = std::env::var_os("EVENTIDE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("windows.jsonl"));
    if let SinkConfig::Jsonl(j) = &mut cfg.sinks[0] {
        j.path = out.clone();
    }

    let (report, wall, cpu) = common::run_to_end(&cfg);
    let peak = peak_rss_kib() as f64 * 1024.0;
    let n = report.counts.received;
    let per = |b: usize| b as f64 / report.devices.max(1) as f64;
    let m = report.memory;
    println!("eventide fleet harness");
    println!("  machine:      {}", machine());
    println!(
        "  input:        {n} events, {} devices, 2 partitions, windows: {}",
        report.devices,
        cfg.windows
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join(" + ")
    );
    println!(
        "  event time:   {:?}",
        cfg.pipeline.event_time.unwrap_or_default()
    );
    println!("  outcome:      {}", report.counts);
    println!(
        "  throughput:   {:.0} events/s, wall {wall:.2} s (window records to {})",
        n as f64 / wall,
        out.display()
    );
    println!(
        "  cpu:          {:.3} CPU-s per million events",
        cpu / (n as f64 / 1e6)
    );
    println!("  peak RSS:     {:.0} MiB", peak / 1048576.0);
    println!(
        "  state at end of input, bytes per device: {:.0} = names {:.0} + device state {:.0} + sequences {:.0} + event ids {:.0} + window panes {:.0}",
        per(m.total()),
        per(m.names),
        per(m.devices),
        per(m.sequences),
        per(m.event_ids),
        per(m.windows)
    );
    println!(
        "  peak RSS per device: {:.0} bytes",
        peak / report.devices.max(1) as f64
    );
}

/// What `eventide-simulator --devices D --count N --interval 30s --complex-fields 3
/// --hot-devices 100` writes.
fn generate(path: &Path, devices: u32, n: u64) {
    let cfg = SimConfig {
        devices,
        interval_ms: 30_000,
        complex_fields: 3,
        hot_devices: 100,
        ..SimConfig::default()
    };
    common::write_events(path, cfg, n);
}
