//! The `eventide` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eventide::config::{Config, ConfigError, DeadLetterConfig, SourceConfig};
use eventide::pipeline::{self, Report, Status};
use eventide::sql::{Hub, Server};

/// Windowed complex-event processing for IoT telemetry.
#[derive(Parser, Debug)]
#[command(name = "eventide", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the pipeline; without --config, runs the embedded demo.
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve HTTP (SQL, metrics, ingest) on this address, or "off"; overrides
        /// `[server] http` and turns the server on.
        #[arg(long)]
        http: Option<String>,
        /// Serve the PostgreSQL protocol on this address, or "off"; overrides
        /// `[server] postgres` and turns the server on.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Validates a configuration file; exits non-zero naming the offending key.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EVENTIDE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs piped to a file or collector stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({:?} source, {} windows, {} rules, {} sinks)",
                    file.display(),
                    c.source.kind(),
                    c.windows.len(),
                    c.rules.len(),
                    c.sinks.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&file, &e),
        },
        Command::Run {
            config,
            http,
            postgres,
        } => {
            let (mut cfg, demo) = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => (c, false),
                    Err(e) => return config_error(path, &e),
                },
                None => (demo_config(), true),
            };
            if http.is_some() || postgres.is_some() {
                let server = cfg.server.get_or_insert_with(Default::default);
                if http.is_some() {
                    server.http = http;
                }
                if postgres.is_some() {
                    server.postgres = postgres;
                }
                let name = config.as_deref().unwrap_or(std::path::Path::new("(demo)"));
                if let Err(e) = cfg.validate() {
                    return config_error(name, &e);
                }
            }
            if let Err(e) = cfg.resolve_secrets() {
                let name = config.as_deref().unwrap_or(std::path::Path::new("(demo)"));
                return config_error(name, &e);
            }
            match run(cfg, demo) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("eventide: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn config_error(path: &std::path::Path, e: &ConfigError) -> ExitCode {
    eprintln!("eventide: invalid config {}: {e}", path.display());
    ExitCode::from(2)
}

fn demo_config() -> Config {
    let mut cfg =
        Config::parse(eventide::DEMO_CONFIG).expect("the embedded demo config is valid (tested)");
    cfg.dead_letter =
        DeadLetterConfig::file(std::env::temp_dir().join("eventide-demo-dead-letter.jsonl"));
    cfg
}

fn run(cfg: Config, demo: bool) -> anyhow::Result<()> {
    let hub = cfg.server.as_ref().map(|s| {
        Arc::new(Hub::new(
            cfg.pipeline.partitions(),
            s.retention().0,
            s.snapshot_interval().0,
        ))
    });
    let server = match (&cfg.server, &hub) {
        (Some(s), Some(h)) => Some(Server::start(s, h.clone(), demo)?),
        _ => None,
    };
    if let Some(s) = &server {
        if let Some(a) = s.http {
            eprintln!(
                "eventide: HTTP on http://{a} (POST /sql, GET /metrics, /healthz, /readyz, POST /ingest)"
            );
            if demo {
                eprintln!(
                    "  try: curl --data 'SELECT \"deviceId\", avg FROM live_windows WHERE type = '\''CO2'\'' ORDER BY avg DESC LIMIT 5' http://{a}/sql"
                );
            }
        }
        if let Some(a) = s.postgres {
            eprintln!("eventide: PostgreSQL protocol on {a}");
            if demo {
                eprintln!(
                    "  try: psql -h {} -p {} -c 'SELECT * FROM stats'",
                    a.ip(),
                    a.port()
                );
            }
        }
    }
    let keep_serving = cfg
        .server
        .as_ref()
        .is_some_and(|s| s.keep_serving.unwrap_or(false));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("eventide: second interrupt, exiting without flushing");
                std::process::exit(130);
            }
            eprintln!("eventide: stopping (flushing closed windows; Ctrl-C again to abort)");
        })
        .context("installing the signal handler")?;
    }
    let status = if demo {
        eprintln!(
            "eventide demo: {} simulated devices, event clock 10x wall clock; windows tumbling 1m and sliding 5m/1m; \
             rule co2_high: avg CO2 over 5m > 1000 (clears < 950). Dead letters: {}. Ctrl-C to stop.",
            match &cfg.source {
                SourceConfig::Simulator(s) => s.devices.unwrap_or(0),
                _ => 0,
            },
            cfg.dead_letter.describe()
        );
        Status::Terminal(Duration::from_secs(2))
    } else {
        Status::Log(Duration::from_secs(10))
    };
    let report = pipeline::run_with(&cfg, stop.clone(), status, hub)?;
    print_report(&report);
    if keep_serving && server.is_some() && report.completed {
        eprintln!("eventide: input complete; still serving queries (Ctrl-C to stop)");
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(server);
    anyhow::ensure!(
        report.counts.balanced(),
        "accounting does not add up: {}",
        report.counts
    );
    Ok(())
}

fn print_report(r: &Report) {
    let c = &r.counts;
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "eventide: {} in {:.2}s: {} events ({:.0} events/s) from {} devices",
        if r.completed {
            "input complete"
        } else {
            "interrupted"
        },
        secs,
        c.received,
        c.received as f64 / secs,
        r.devices
    );
    eprintln!(
        "  aggregated {} + duplicate {} + filtered {} + late {} + dead-lettered {} = {} ({})",
        c.aggregated,
        c.duplicate,
        c.filtered,
        c.late,
        c.dead_lettered,
        c.aggregated + c.duplicate + c.filtered + c.late + c.dead_lettered,
        if c.balanced() {
            "adds up"
        } else {
            "DOES NOT ADD UP"
        }
    );
    eprintln!(
        "  windows {} alerts {} (open {}) sequence gaps {}",
        c.windows, c.alerts, c.open_alerts, c.gaps
    );
    if c.split_devices > 0 {
        eprintln!(
            "  WARNING: {} devices arrived on more than one partition: their windows are split and wrong (partition the input by device, or set source.partitioning = \"any\")",
            c.split_devices
        );
    }
    let quantiles = |what: &str, h: &hdrhistogram::Histogram<u64>| {
        if !h.is_empty() {
            let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
            eprintln!(
                "  {what}: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
                q(0.5),
                q(0.99),
                q(0.999)
            );
        }
    };
    quantiles("arrival -> window close latency", &r.latency);
    quantiles("closing event -> alert out", &r.emit.alerts);
}
