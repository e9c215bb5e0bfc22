//! End-to-end throughput harness: N simulated events (~820 bytes, 2,000 devices) from a
//! file through the whole pipeline as `config/file.toml` sets it up (tumbling 1m +
//! sliding 5m/1m + one moving-average rule, 2 partitions, JSONL sinks), reporting events/s, CPU-seconds per million
//! events, arrival → window-close latency percentiles and peak RSS.
//!
//! The same events are run in each member layout the simulator writes (`sas`, the
//! streaming-at-scale samples' order; `compact`; `pretty`, Python's spacing;
//! `shuffled`, a random order per event), each in a process of its own (so that each
//! peak RSS is its own), and a table compares them.
//!
//! `cargo bench --bench throughput`  (EVENTIDE_BENCH_EVENTS=N to change N, default 1M;
//! EVENTIDE_BENCH_PARTITIONS to change the partition count, default 2;
//! EVENTIDE_BENCH_LAYOUT=sas|compact|pretty|shuffled to run one layout only;
//! EVENTIDE_BENCH_INPUT=FILE to keep the input: FILE with one layout, FILE-LAYOUT for each;
//! EVENTIDE_BENCH_EVENT_TIME=device|partition for `pipeline.event_time`, default device;
//! EVENTIDE_BENCH_ABSENCE=1 adds an absence rule, `after = "45s"`;
//! EVENTIDE_BENCH_REFERENCE=1 gives co2_high per-device limits from a reference table
//! listing every device)

use std::path::Path;
use std::process::Command;

use eventide::config::{Config, ReferenceConfig};

mod common;

use common::{env_u64, machine, peak_rss_kib};

const LAYOUTS: [&str; 4] = ["sas", "compact", "pretty", "shuffled"];

fn main() {
    if std::env::var_os("EVENTIDE_BENCH_LAYOUT").is_none() {
        return every_layout();
    }
    let input = common::input(1_000_000);
    let partitions = env_u64("EVENTIDE_BENCH_PARTITIONS", 2);
    let bytes = std::fs::metadata(&input.path).expect("input").len();
    run(
        input.events,
        partitions,
        input.dir.path(),
        &input.path,
        bytes,
    );
}

fn run(n: u64, partitions: u64, dir: &Path, input: &Path, bytes: u64) {
    // The example config (tumbling 1m + sliding 5m/1m + co2_high), pointed at the input.
    let mut cfg = common::example_config(input, dir);
    cfg.pipeline.partitions = Some(partitions as usize);
    if let Ok(mode) = std::env::var("EVENTIDE_BENCH_DEDUPE") {
        cfg.pipeline.dedupe = common::pipeline_keys(
            &format!("dedupe = \"{mode}\""),
            "EVENTIDE_BENCH_DEDUPE: event_id, device_sequence, both or none",
        )
        .dedupe;
    }
    if let Ok(mode) = std::env::var("EVENTIDE_BENCH_EVENT_TIME") {
        cfg.pipeline.event_time = common::pipeline_keys(
            &format!("event_time = \"{mode}\""),
            "EVENTIDE_BENCH_EVENT_TIME: device or partition",
        )
        .event_time;
    }
    if std::env::var_os("EVENTIDE_BENCH_ABSENCE").is_some() {
        // One absence rule beside the threshold rule.
        let absence = Config::parse("[source]\nkind = \"stdin\"\n[[windows]]\nname = \"w\"\nkind = \"tumbling\"\nsize = \"1m\"\n[[rules]]\nname = \"silent\"\nkind = \"absence\"\nafter = \"45s\"")
            .expect("an absence rule");
        cfg.rules.extend(absence.rules);
    }
    if std::env::var_os("EVENTIDE_BENCH_REFERENCE").is_some() {
        // A reference table listing every device, read by co2_high's conditions.
        let path = dir.join("limits.csv");
        let mut csv = String::from("deviceId,co2_max\n");
        for d in 0..common::DEVICES {
            csv.push_str(&format!("contoso://device-id-{d},{}\n", 900 + d % 200));
        }
        std::fs::write(&path, csv).expect("write the reference table");
        cfg.reference.push(ReferenceConfig {
            name: "limits".into(),
            path,
            reload: None,
        });
        for r in cfg.rules.iter_mut().filter(|r| r.name == "co2_high") {
            r.when = "avg > limits.co2_max".into();
            r.clear = Some("avg < limits.co2_max * 0.95".into());
        }
    }

    let (report, wall, cpu) = common::run_to_end(&cfg);
    assert_eq!(
        report.counts.received, n,
        "EVENTIDE_BENCH_INPUT holds a different number of events"
    );

    // Before the page-cache check below, whose mapping of the whole input would count.
    let peak_rss = peak_rss_kib();
    let q = |p: f64| report.latency.value_at_quantile(p) as f64 / 1000.0;
    println!("eventide throughput harness");
    println!("  machine:      {}", machine());
    println!(
        "  input:        {n} events, {:.0} bytes/event, {} devices, {} partitions",
        bytes as f64 / n as f64,
        report.devices,
        partitions
    );
    if let Some(share) = common::huge_folio_share(input) {
        println!(
            "  page cache:   {:.0} % of the input in 2 MiB folios",
            share * 100.0
        );
    }
    println!(
        "  dedupe:       {:?}",
        cfg.pipeline.dedupe(&cfg.source.fields())
    );
    println!(
        "  event time:   {:?}",
        cfg.pipeline.event_time.unwrap_or_default()
    );
    println!(
        "  rules:        {}",
        cfg.rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  outcome:      {}", report.counts);
    println!(
        "  throughput:   {:.0} events/s ({:.1} MB/s), wall {wall:.2} s",
        n as f64 / wall,
        bytes as f64 / wall / 1e6
    );
    println!(
        "  cpu:          {:.3} CPU-s per million events ({cpu:.2} CPU-s total)",
        cpu / (n as f64 / 1e6)
    );
    println!(
        "  latency:      arrival -> window close p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        q(0.5),
        q(0.99),
        q(0.999)
    );
    println!("  peak RSS:     {:.0} MiB", peak_rss as f64 / 1024.0);
    // For the table of `every_layout`.
    println!(
        "result {} {:.0} {:.3} {:.0}",
        std::env::var("EVENTIDE_BENCH_LAYOUT").unwrap_or_default(),
        n as f64 / wall,
        cpu / (n as f64 / 1e6),
        peak_rss as f64 / 1024.0
    );
}

/// Runs each layout in a child process of this harness and prints their table.
fn every_layout() {
    let input = std::env::var("EVENTIDE_BENCH_INPUT").ok();
    let mut rows: Vec<(String, f64, f64, f64)> = Vec::new();
    for layout in LAYOUTS {
        let mut child = Command::new(std::env::current_exe().expect("this harness"));
        child
            .args(std::env::args().skip(1))
            .env("EVENTIDE_BENCH_LAYOUT", layout);
        if let Some(base) = &input {
            child.env("EVENTIDE_BENCH_INPUT", format!("{base}-{layout}"));
        }
        let out = child.output().expect("run a layout");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "layout {layout} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!(
            "{}",
            text.lines()
                .filter(|l| !l.starts_with("result "))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        let row = text
            .lines()
            .find_map(|l| l.strip_prefix("result "))
            .expect("a result line");
        let f: Vec<&str> = row.split(' ').collect();
        let num = |i: usize| f[i].parse::<f64>().expect("a number");
        rows.push((f[0].to_string(), num(1), num(2), num(3)));
    }
    let fastest = rows.iter().map(|r| r.1).fold(0.0, f64::max);
    println!("\nlayouts ({}):", machine());
    println!(
        "  {:<9} {:>12} {:>10} {:>9} {:>11}",
        "layout", "events/s", "CPU-s/M", "peak RSS", "vs fastest"
    );
    for (layout, eps, cpu, rss) in &rows {
        println!(
            "  {layout:<9} {eps:>12.0} {cpu:>10.3} {:>5.0} MiB {:>10.1} %",
            rss,
            (eps / fastest - 1.0) * 100.0
        );
    }
}
