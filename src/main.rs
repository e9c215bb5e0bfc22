//! The `eventide` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use eventide::config::{Config, ConfigError};
use eventide::pipeline::{self, Report, Status};

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
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({:?} source, {} windows, {} rules, {} sinks)",
                    file.display(),
                    c.source.kind,
                    c.windows.len(),
                    c.rules.len(),
                    c.sinks.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&file, &e),
        },
        Command::Run { config } => {
            let (cfg, demo) = match &config {
                Some(path) => match Config::load(path) {
                    Ok(c) => (c, false),
                    Err(e) => return config_error(path, &e),
                },
                None => (demo_config(), true),
            };
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
    cfg.dead_letter.path = Some(std::env::temp_dir().join("eventide-demo-dead-letter.jsonl"));
    cfg
}

fn run(cfg: Config, demo: bool) -> anyhow::Result<()> {
    if cfg.server.http.is_some() || cfg.server.postgres.is_some() {
        tracing::warn!(
            "[server] is accepted but SQL/HTTP endpoints are not part of this build yet."
        );
    }
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
            cfg.source.devices.unwrap_or(0),
            cfg.dead_letter.path().display()
        );
        Status::Terminal(Duration::from_secs(2))
    } else {
        Status::Log(Duration::from_secs(10))
    };
    let report = pipeline::run(&cfg, stop, status)?;
    print_report(&report);
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
    if !r.latency.is_empty() {
        let q = |p: f64| r.latency.value_at_quantile(p) as f64 / 1000.0;
        eprintln!(
            "  arrival -> window close latency: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
            q(0.5),
            q(0.99),
            q(0.999)
        );
    }
}
