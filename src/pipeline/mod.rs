//! Wiring: source → partition actors ([`runtime`]) → sink thread.
//!
//! ```text
//!  source                        partition actors (one thread each)       sink thread
//!  file/stdin/simulator/http:
//!    read + route ──bounded──▶ Routed feed ┐
//!  kafka: a partition queue ─▶ Kafka feed  ┴▶ decode/dedupe/window/rules ──bounded──▶ sinks
//! ```
//! Every queue is bounded, so a slow sink slows the partitions and then the source.
//! Partitions are OS threads (CPU-bound work; no async runtime on the hot path).

pub mod partition;
pub mod runtime;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use hdrhistogram::Histogram;

use crate::config::{Config, DedupeMode, RuleConfig, SourceConfig, SourceKind, WindowConfig};
use crate::ingest::decode::Fields;
use crate::ingest::feed::Host;
use crate::ingest::file::read_lines;
use crate::ingest::simulator::SimulatorSource;
use crate::ingest::{ReadError, Router};
pub use crate::live::Counts;
use crate::live::{Hub, KafkaStats, Phase, StatsRegistry};
use crate::sinks::{self, DeadLetterSink, Sink, SinkError, SinkReport};
use crate::windows::END_OF_TIME;
pub use partition::{EmitLatency, Memory, device_key};
use runtime::Runtime;

/// What the partitions need from the config, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ooo_ms: i64,
    pub lateness_ms: i64,
    pub idle_timeout_ms: i64,
    pub max_clock_skew_ms: i64,
    /// Each device keeps its own watermark (`pipeline.event_time = "device"`).
    pub per_device: bool,
    /// The source is live (kafka, http, simulator): event times near the wall clock
    /// are never skewed, whatever the partition's clock says.
    pub live: bool,
    pub dedupe: DedupeMode,
    pub dedupe_horizon_ms: i64,
    pub types: Option<Vec<Box<str>>>,
    pub windows: Vec<WindowConfig>,
    pub rules: Vec<RuleConfig>,
    /// A sink takes the `devices` stream: partitions send each changed device's
    /// latest reading with their outputs.
    pub device_updates: bool,
    /// Which input member fills each role.
    pub fields: Arc<Fields>,
    /// `[[reference]]` tables (loaded by [`run_with`]; empty from [`Self::from_config`]).
    pub references: Arc<crate::reference::ReferenceSet>,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        let p = &c.pipeline;
        let ooo_ms = p.max_out_of_order().ms();
        let lateness_ms = p.allowed_lateness().ms();
        let largest = c.windows.iter().map(|w| w.size.ms()).max().unwrap_or(0);
        let fields = c.source.fields();
        Settings {
            ooo_ms,
            lateness_ms,
            idle_timeout_ms: p.idle_timeout().ms(),
            max_clock_skew_ms: p.max_clock_skew().ms(),
            per_device: p.event_time.unwrap_or_default() == crate::config::EventTime::Device,
            live: !matches!(
                c.source.kind(),
                crate::config::SourceKind::File | crate::config::SourceKind::Stdin
            ),
            dedupe: p.dedupe(&fields),
            dedupe_horizon_ms: p
                .dedupe_horizon
                .map_or(ooo_ms + lateness_ms + largest, |d| d.ms()),
            types: p
                .types
                .as_ref()
                .map(|t| t.iter().map(|s| s.as_str().into()).collect()),
            windows: c.windows.clone(),
            rules: c.rules.clone(),
            device_updates: c
                .sinks
                .iter()
                .any(|s| s.streams().contains(&crate::config::Stream::Devices)),
            fields: Arc::new(fields),
            references: Arc::default(),
        }
    }
}

/// A run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Read(ReadError),
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("a pipeline thread panicked: {0}")]
    Panicked(&'static str),
    #[error("{0}")]
    Reference(String),
    #[error(transparent)]
    Kafka(#[from] crate::ingest::kafka::KafkaSourceError),
}

/// How a run ended and what it did.
#[derive(Debug)]
pub struct Report {
    pub counts: Counts,
    pub per_partition: Vec<Counts>,
    /// Event arrival → window close, µs.
    pub latency: Histogram<u64>,
    /// Entry of the event that closed them → windows / alerts handed to the sinks.
    pub emit: EmitLatency,
    pub elapsed: Duration,
    /// Whether the source reached its end (false: interrupted).
    pub completed: bool,
    pub sinks: SinkReport,
    pub devices: usize,
    /// Where the partitions' bytes went, at their largest (see [`Memory`]).
    pub memory: Memory,
}

/// Periodic status while running.
#[derive(Debug, Clone, Copy)]
pub enum Status {
    /// Nothing.
    Off,
    /// A line on stderr every interval (the demo).
    Terminal(Duration),
    /// A tracing `info` event every interval.
    Log(Duration),
}

/// Runs the pipeline described by `cfg` until its source ends or `stop` is set.
pub fn run(cfg: &Config, stop: Arc<AtomicBool>, status: Status) -> Result<Report, PipelineError> {
    run_with(cfg, stop, status, None)
}

/// [`run`], publishing live state to `hub` for the query side (and, for an `http`
/// source, taking events from it).
pub fn run_with(
    cfg: &Config,
    stop: Arc<AtomicBool>,
    status: Status,
    hub: Option<Arc<Hub>>,
) -> Result<Report, PipelineError> {
    let mut settings = Settings::from_config(cfg);
    let references = crate::reference::ReferenceSet::load(
        cfg.reference
            .iter()
            .map(|r| (r.name.as_str(), r.path.as_path(), r.reload().0)),
    )
    .map_err(|(i, e)| PipelineError::Reference(format!("reference[{i}].path: {e}")))?;
    settings.references = Arc::new(references);
    let settings = Arc::new(settings);
    if let Some(h) = &hub {
        h.set_references(settings.references.clone());
    }
    let reloader_stop = Arc::new(AtomicBool::new(false));
    let reloader = settings.references.spawn_reloader(reloader_stop.clone());
    let mut sinks = cfg
        .sinks
        .iter()
        .map(Sink::build)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(h) = &hub {
        // Closed windows and alerts kept for queries: one more sink.
        sinks.push(Sink::Retain(h.clone()));
    }
    let dead = DeadLetterSink::build(&cfg.dead_letter)?;
    let epoch = Instant::now();

    let (out_tx, out_rx) = bounded(64);
    let sink_hub = hub.clone();
    let kafka = cfg.source.kind() == SourceKind::Kafka;
    let (durable_tx, durable_rx) = crossbeam_channel::unbounded();
    let durable_tx = kafka.then_some(durable_tx);
    let sink_thread = thread::Builder::new()
        .name("sinks".into())
        .spawn(move || sinks::run(out_rx, sinks, dead, sink_hub, durable_tx))
        .expect("spawning a thread");

    let registry = Arc::new(StatsRegistry::default());
    // Dropped when the run is done: the status thread ends at once.
    let (done, done_rx) = bounded::<()>(0);
    let status_thread = spawn_status(status, registry.clone(), done_rx, epoch);
    let runtime = Arc::new(Runtime::new(
        settings.clone(),
        epoch,
        out_tx,
        hub.clone(),
        registry,
    ));
    tracing::info!(source = ?cfg.source.kind(), "Pipeline started.");

    // Counts of the events a Kafka repartition stage dead-lettered.
    let mut first_stage = Counts::default();
    let lines = |l| run_routed(cfg, l, &settings, &runtime, stop.clone(), hub.as_ref());
    let source_result = match &cfg.source {
        SourceConfig::Kafka(source) => {
            if let Some(h) = &hub {
                h.set_phase(Phase::Running);
                h.source_connected.store(true, Ordering::Relaxed);
            }
            let stats = hub
                .as_ref()
                .map_or_else(|| Arc::new(KafkaStats::new()), |h| h.kafka.clone());
            run_kafka(
                source,
                &settings,
                &runtime,
                stop.clone(),
                durable_rx,
                stats.clone(),
            )
            .inspect(|_| {
                // The first stage's dead letters, in the accounting.
                let dead = stats.dead_lettered.load(Ordering::Relaxed);
                first_stage.received = dead;
                first_stage.dead_lettered = dead;
            })
        }
        SourceConfig::File(f) => lines(Lines::File(&f.path))?,
        SourceConfig::Stdin(_) => lines(Lines::Stdin)?,
        SourceConfig::Simulator(s) => lines(Lines::Simulator(s))?,
        SourceConfig::Http(_) => {
            let hub = hub
                .as_ref()
                .expect("validated: an http source comes with a server");
            // Bodies are taken from the moment the server reports ready.
            lines(Lines::Http(crate::ingest::http::open(hub)))?
        }
    };
    runtime.close();
    let reports = runtime.take_reports();
    if let Some(h) = &hub {
        h.source_connected.store(false, Ordering::Relaxed);
    }
    let completed = matches!(source_result, Ok(true));

    let sink_report = sink_thread
        .join()
        .map_err(|_| PipelineError::Panicked("sinks"))?;
    if let Some(h) = &hub {
        h.set_phase(match (&sink_report, &source_result) {
            (Ok(_), Ok(true)) => Phase::Finished,
            (Ok(_), Ok(false)) => Phase::Stopping,
            _ => Phase::Failed,
        });
    }
    reloader_stop.store(true, Ordering::Relaxed);
    if let Some(t) = reloader {
        t.thread().unpark();
        let _ = t.join();
    }
    let sink_report = sink_report?;
    drop(done);
    if let Some(t) = status_thread {
        let _ = t.join();
    }
    source_result?;

    let mut counts = first_stage;
    let mut latency = Histogram::new(3).expect("valid");
    let mut emit = EmitLatency::default();
    let mut devices = 0;
    let mut memory = Memory::default();
    for r in &reports {
        memory.add(&r.memory);
        counts.add(&r.counts);
        let _ = latency.add(&r.latency);
        emit.add(&r.emit);
        devices += r.devices;
    }
    let report = Report {
        counts,
        per_partition: reports.iter().map(|r| r.counts).collect(),
        latency,
        emit,
        elapsed: epoch.elapsed(),
        completed,
        sinks: sink_report,
        devices,
        memory,
    };
    tracing::info!(counts = %report.counts, completed, "Pipeline stopped.");
    if !report.counts.balanced() {
        // A broken internal invariant: say so loudly, the run's numbers are wrong.
        tracing::error!(counts = %report.counts, "Accounting does not add up.");
    }
    Ok(report)
}

/// The Kafka source: one stage, or with `partitioning = "any"`, the repartition
/// stage on a thread of its own, feeding the second through the repartition topic.
fn run_kafka(
    source: &crate::config::source::Kafka,
    settings: &Settings,
    runtime: &Arc<Runtime>,
    stop: Arc<AtomicBool>,
    durable: crossbeam_channel::Receiver<crate::output::Checkpoint>,
    stats: Arc<KafkaStats>,
) -> Result<bool, PipelineError> {
    use crate::config::source::Partitioning;
    use crate::ingest::{kafka, repartition};
    let host: Arc<dyn Host> = runtime.clone();
    if source.partitioning() == Partitioning::ByDevice {
        return Ok(kafka::run(kafka::KafkaRun {
            source: source.clone(),
            stop,
            durable,
            host,
            stats,
            first_stage_done: None,
        })?);
    }
    // The second stage reads the topic: it exists before either starts.
    let partitions = repartition::ensure_topic(source)?;
    let done = Arc::new(AtomicBool::new(false));
    let first_stop = Arc::new(AtomicBool::new(false));
    let stage = repartition::Stage {
        source: source.clone(),
        fields: settings.fields.clone(),
        stop: first_stop.clone(),
        out: runtime
            .sender()
            .expect("the runtime is open while the source runs"),
        stats: stats.clone(),
        done: done.clone(),
        partitions,
    };
    let first = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("repartition".into())
            .spawn(move || {
                let r = repartition::run(stage);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed); // the second stage stops too
                }
                r
            })
            .expect("spawning a thread")
    };
    let second = kafka::run(kafka::KafkaRun {
        source: repartition::second_stage(source),
        stop,
        durable,
        host,
        stats,
        first_stage_done: Some(done),
    });
    // The first stage stops after the second, so that what it forwarded last stays in
    // the repartition topic for the next run.
    first_stop.store(true, Ordering::Relaxed);
    let first = first
        .join()
        .map_err(|_| PipelineError::Panicked("repartition"))?;
    let read_to_end = second?;
    first?;
    Ok(read_to_end)
}

/// A line-oriented source.
enum Lines<'a> {
    File(&'a std::path::Path),
    Stdin,
    Simulator(&'a crate::config::source::Simulator),
    Http(crossbeam_channel::Receiver<crate::live::IngestBody>),
}

/// Line-oriented sources (file, stdin, simulator, http): one router thread splits
/// input into events and routes them by device to `pipeline.partitions` actors.
fn run_routed(
    cfg: &Config,
    lines: Lines<'_>,
    settings: &Settings,
    runtime: &Runtime,
    stop: Arc<AtomicBool>,
    hub: Option<&Arc<Hub>>,
) -> Result<Result<bool, PipelineError>, PipelineError> {
    let n = cfg.pipeline.partitions();
    let (senders, feeds) = crate::ingest::routes(n);
    runtime.partitions(n);
    let actors: Vec<_> = feeds
        .into_iter()
        .enumerate()
        .map(|(id, feed)| runtime.start(id, format!("partition-{id}"), Box::new(feed)))
        .collect();
    let mut router =
        Router::new(senders, runtime.epoch(), stop).with_device_field(&settings.fields.device_id);
    if let Some(h) = hub {
        h.set_phase(Phase::Running);
        h.source_connected.store(true, Ordering::Relaxed);
    }
    let source_result = match lines {
        Lines::File(path) => match std::fs::File::open(path) {
            Ok(f) => read_lines(f, Arc::from(path.display().to_string()), &mut router)
                .map_err(PipelineError::Read),
            Err(source) => Err(PipelineError::Open {
                path: path.display().to_string(),
                source,
            }),
        },
        Lines::Stdin => read_lines(io::stdin().lock(), Arc::from("stdin"), &mut router)
            .map_err(PipelineError::Read),
        Lines::Simulator(s) => SimulatorSource::from_config(s)
            .run(&mut router)
            .map_err(|e| PipelineError::Read(e.into())),
        Lines::Http(rx) => Ok(crate::ingest::http::run(
            hub.expect("an http source comes with a server"),
            rx,
            &mut router,
        )),
    };
    if matches!(source_result, Ok(true)) {
        router.finish();
    } else {
        drop(router); // interrupted or failed: partitions flush what has closed
    }
    for a in actors {
        if !a.join() {
            return Err(PipelineError::Panicked("partition"));
        }
    }
    Ok(source_result)
}

fn spawn_status(
    status: Status,
    stats: Arc<StatsRegistry>,
    done: crossbeam_channel::Receiver<()>,
    epoch: Instant,
) -> Option<thread::JoinHandle<()>> {
    let every = match status {
        Status::Off => return None,
        Status::Terminal(d) | Status::Log(d) => d,
    };
    let handle = thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            let mut last = Counts::default();
            let mut last_at = epoch;
            let mut next = Instant::now() + every;
            loop {
                let wait = next.saturating_duration_since(Instant::now());
                if done.recv_timeout(wait) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                    break; // the run is done
                }
                next += every;
                let (c, wm) = stats.totals();
                let secs = last_at.elapsed().as_secs_f64().max(1e-9);
                let rate = (c.received - last.received) as f64 / secs;
                let wm_text = if wm > i64::MIN / 2 && wm < END_OF_TIME { crate::event::rfc3339_ms(wm) } else { "-".into() };
                last = c;
                last_at = Instant::now();
                match status {
                    Status::Terminal(_) => eprintln!(
                        "status: {rate:.0} events/s | received {} aggregated {} duplicate {} filtered {} late {} dead-lettered {} | windows {} alerts {} | gaps {} | watermark {wm_text}",
                        c.received, c.aggregated, c.duplicate, c.filtered, c.late, c.dead_lettered, c.windows, c.alerts, c.gaps
                    ),
                    _ => tracing::info!(rate = rate as u64, counts = %c, watermark = %wm_text, "Status."),
                }
            }
        })
        .expect("spawning a thread");
    Some(handle)
}
