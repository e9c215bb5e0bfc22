//! Helpers the benchmark harnesses share: the input they generate and the machine
//! they name.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use eventide::config::{Config, DeadLetterConfig, PipelineConfig, SinkConfig, SourceConfig};
use eventide::ingest::mapped::{CHUNK, Mapping};
use eventide_simulator::cli::Pieces;
use eventide_simulator::{Generator, Layout, SimConfig};

/// Runs the pipeline of `cfg` to the end of its input; returns the report (its
/// accounting checked), wall seconds and this process's CPU seconds.
pub fn run_to_end(cfg: &eventide::config::Config) -> (eventide::pipeline::Report, f64, f64) {
    let cpu_before = cpu_seconds();
    let started = std::time::Instant::now();
    let report = eventide::pipeline::run(
        cfg,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        eventide::pipeline::Status::Off,
    )
    .expect("pipeline run");
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    assert!(report.counts.balanced(), "accounting: {}", report.counts);
    (report, wall, cpu)
}

/// Devices in the generated input (numbered from 0).
pub const DEVICES: u32 = 2000;

/// Writes `n` simulated events (~820 bytes each, 2,000 devices) to `path`, in 2 MiB
/// pieces as the simulator writes a file ([`Pieces`]): the page cache then holds it in
/// 2 MiB folios, the state the file source's own reading leaves a file in when it
/// comes from disk. (A file written in odd sizes at odd offsets is held in small
/// folios, each 4 KiB page mapped on its own: BENCHMARKS.md has figures for both.)
pub fn generate(path: &Path, n: u64) {
    let cfg = SimConfig {
        devices: DEVICES,
        complex_fields: 20,
        hot_devices: 40,
        layout: layout(),
        ..SimConfig::default()
    };
    write_events(path, cfg, n);
}

/// Writes `n` events of the simulator configured as `cfg` to `path`, in 2 MiB pieces
/// (see [`generate`]).
pub fn write_events(path: &Path, cfg: SimConfig, n: u64) {
    let mut g = Generator::new(cfg);
    let mut w = Pieces::new(std::fs::File::create(path).expect("create input"));
    let mut buf = Vec::with_capacity(1 << 16);
    while g.stats().events < n {
        buf.clear();
        g.next_message(&mut buf, n - g.stats().events);
        w.write_all(&buf).expect("write input");
    }
    w.flush().expect("flush input");
}

/// `config/file.toml` (tumbling 1m + sliding 5m/1m + co2_high) reading `input`, with
/// its JSONL sink and dead letters in `dir`.
pub fn example_config(input: &Path, dir: &Path) -> Config {
    let mut cfg = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/file.toml"
    )))
    .expect("example config");
    if let SourceConfig::File(f) = &mut cfg.source {
        f.path = input.to_owned();
    }
    if let SinkConfig::Jsonl(j) = &mut cfg.sinks[0] {
        j.path = dir.join("out.jsonl");
    }
    cfg.dead_letter = DeadLetterConfig::file(dir.join("dead.jsonl"));
    cfg
}

/// A `[pipeline]` section's keys, e.g. `dedupe = "both"`, read as the config reads
/// them (for harness options given in the environment). Panics naming `what`.
pub fn pipeline_keys(keys: &str, what: &str) -> PipelineConfig {
    Config::parse(&format!(
        "[source]\nkind = \"stdin\"\n[pipeline]\n{keys}\n[[windows]]\nname = \"w\"\nkind = \"tumbling\"\nsize = \"1m\""
    ))
    .unwrap_or_else(|e| panic!("{what}: {e}"))
    .pipeline
}

/// A harness's input: `cargo bench` passes `--bench`; anything else (e.g.
/// `cargo test --benches`) is a quick check on 20,000 events that the harness runs.
pub struct Input {
    pub quick: bool,
    pub events: u64,
    pub path: PathBuf,
    /// Holds the generated input (unless EVENTIDE_BENCH_INPUT names a file to keep).
    pub dir: tempfile::TempDir,
}

/// `EVENTIDE_BENCH_EVENTS` (default `default_events`) events, generated unless
/// `EVENTIDE_BENCH_INPUT` names an existing file, then read into the page cache.
pub fn input(default_events: u64) -> Input {
    let quick = !std::env::args().any(|a| a == "--bench");
    let events = if quick {
        20_000
    } else {
        env_u64("EVENTIDE_BENCH_EVENTS", default_events)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = std::env::var_os("EVENTIDE_BENCH_INPUT")
        .filter(|_| !quick)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("events.ndjson"));
    if !path.exists() {
        generate(&path, events);
    }
    warm_page_cache(&path);
    Input {
        quick,
        events,
        path,
        dir,
    }
}

/// The member layout of generated input: `EVENTIDE_BENCH_LAYOUT` (sas, compact,
/// pretty, shuffled; default sas, the streaming-at-scale samples' layout). The events
/// are the same in every layout.
pub fn layout() -> Layout {
    std::env::var("EVENTIDE_BENCH_LAYOUT")
        .map(|l| l.parse().expect("EVENTIDE_BENCH_LAYOUT"))
        .unwrap_or_default()
}

/// An integer from the environment, or `default`.
pub fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Brings `path` into the page cache as the file source reads a file from disk: maps
/// it in chunks as the file source does ([`Mapping`], advised `MADV_HUGEPAGE`, then
/// populated), so that what is read from disk comes into the cache in 2 MiB folios
/// (the harnesses measure the pipeline, not the disk). What the cache already holds
/// stays as it is: the throughput harness prints how much of the input is in 2 MiB
/// folios, which moves the file source's cost by a third (BENCHMARKS.md, commit
/// `69e7a51` in the changes that mattered). Dropping the file from the cache first would make the state the same
/// every time, but runs right after such a re-read were up to three times slower on
/// this VM (fresh memory).
pub fn warm_page_cache(path: &Path) {
    use std::os::fd::AsFd;
    let f = std::fs::File::open(path).expect("input");
    let len = f.metadata().expect("input").len();
    for offset in (0..len).step_by(CHUNK) {
        let n = (len - offset).min(CHUNK as u64) as usize;
        Mapping::new(f.as_fd(), offset, n).expect("map the input");
    }
}

/// How much of `path` (cached) the kernel maps with 2 MiB entries, as a fraction: the
/// page cache holds those bytes in 2 MiB folios, which the file source maps 10–20 times
/// cheaper than 4 KiB ones (BENCHMARKS.md, commit `69e7a51`). `None` where
/// /proc/self/smaps does not say.
pub fn huge_folio_share(path: &Path) -> Option<f64> {
    use std::os::fd::AsFd;
    let f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len() as usize;
    if len == 0 {
        return None;
    }
    let map = Mapping::new(f.as_fd(), 0, len).ok()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    // The mapping's entry: its header line (`start-end perms …`), then its fields.
    let header = format!("{:x}-", map.as_ptr() as usize);
    let is_header = |l: &str| {
        l.split(' ').next().is_some_and(|t| {
            t.contains('-') && t.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        })
    };
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
    lines.next()?;
    let kib = lines
        .take_while(|l| !is_header(l))
        .find_map(|l| l.strip_prefix("FilePmdMapped:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(kib * 1024.0 / len as f64)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024 / 1024)
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, {mem} GiB RAM")
}

/// User + system CPU time of this process, from /proc (Linux; clock ticks of 10 ms).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
