//! Wiring: source → router → partition actors → sink thread.
//!
//! ```text
//!  source thread            partition threads (one each)         sink thread
//!  read + route ──bounded──▶ decode/dedupe/window/rules ──bounded──▶ jsonl/stdout
//!                                                                   dead-letter
//! ```
//! Every queue is bounded, so a slow sink slows the partitions and then the source.
//! Partitions are OS threads (CPU-bound work; no async runtime on the hot path).

pub mod partition;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use hdrhistogram::Histogram;

use crate::config::{Config, DedupeMode, RuleConfig, SourceKind, WindowConfig};
use crate::ingest::decode::Fields;
use crate::ingest::file::{ReadError, read_lines};
use crate::ingest::simulator::SimulatorSource;
use crate::ingest::{Msg, Router};
use crate::sinks::{self, DeadLetterSink, Sink, SinkError, SinkReport};
use crate::sql::state::{Hub, IngestBody, Phase};
use crate::windows::END_OF_TIME;
pub use partition::EmitLatency;
use partition::{Partition, PartitionReport};

/// What the partitions need from the config, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ooo_ms: i64,
    pub lateness_ms: i64,
    pub idle_timeout_ms: i64,
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
        }
    }
}

/// The accounting: every input event ends in exactly one of aggregated, duplicate,
/// filtered, late or dead_lettered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub aggregated: u64,
    pub duplicate: u64,
    pub filtered: u64,
    pub late: u64,
    /// Invalid input (parse or schema); late events are counted in `late`.
    pub dead_lettered: u64,
    /// Sequence numbers skipped and never seen.
    pub gaps: u64,
    /// Closed window rows emitted.
    pub windows: u64,
    /// Alert state changes emitted.
    pub alerts: u64,
    /// Alerts raised and not cleared.
    pub open_alerts: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.aggregated += o.aggregated;
        self.duplicate += o.duplicate;
        self.filtered += o.filtered;
        self.late += o.late;
        self.dead_lettered += o.dead_lettered;
        self.gaps += o.gaps;
        self.windows += o.windows;
        self.alerts += o.alerts;
        self.open_alerts += o.open_alerts;
    }

    /// Whether the outcomes add up to what was received.
    pub fn balanced(&self) -> bool {
        self.received
            == self.aggregated + self.duplicate + self.filtered + self.late + self.dead_lettered
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "received={} aggregated={} duplicate={} filtered={} late={} dead_lettered={} gaps={} windows={} alerts={}",
            self.received,
            self.aggregated,
            self.duplicate,
            self.filtered,
            self.late,
            self.dead_lettered,
            self.gaps,
            self.windows,
            self.alerts
        )
    }
}

/// Counts a partition publishes after each block, for status lines and metrics.
#[derive(Debug, Default)]
pub struct PartitionStats {
    pub received: AtomicU64,
    pub aggregated: AtomicU64,
    pub duplicate: AtomicU64,
    pub filtered: AtomicU64,
    pub late: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub windows: AtomicU64,
    pub alerts: AtomicU64,
    pub gaps: AtomicU64,
    pub watermark: AtomicI64,
}

impl PartitionStats {
    pub fn load(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            received: l(&self.received),
            aggregated: l(&self.aggregated),
            duplicate: l(&self.duplicate),
            filtered: l(&self.filtered),
            late: l(&self.late),
            dead_lettered: l(&self.dead_lettered),
            gaps: l(&self.gaps),
            windows: l(&self.windows),
            alerts: l(&self.alerts),
            open_alerts: 0,
        }
    }
}

/// Every partition actor's published counts, for the status line. Actors of a Kafka
/// source come and go with rebalances; their entries stay, so totals cover the run.
#[derive(Debug, Default)]
pub struct StatsRegistry(parking_lot::Mutex<Vec<Arc<PartitionStats>>>);

impl StatsRegistry {
    pub fn add(&self, s: Arc<PartitionStats>) {
        self.0.lock().push(s);
    }
    /// Summed counts, and the lowest watermark of the actors that have one.
    pub fn totals(&self) -> (Counts, i64) {
        let mut c = Counts::default();
        let mut wm = i64::MAX;
        for s in self.0.lock().iter() {
            c.add(&s.load());
            let w = s.watermark.load(Ordering::Relaxed);
            if w > i64::MIN {
                wm = wm.min(w);
            }
        }
        (c, wm)
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
    let settings = Arc::new(Settings::from_config(cfg));
    let sinks = cfg
        .sinks
        .iter()
        .map(Sink::build)
        .collect::<Result<Vec<_>, _>>()?;
    let dead = DeadLetterSink::build(&cfg.dead_letter)?;
    let epoch = Instant::now();

    let (out_tx, out_rx) = bounded(64);
    let sink_hub = hub.clone();
    let kafka = cfg.source.kind == SourceKind::Kafka;
    let (durable_tx, durable_rx) = crossbeam_channel::unbounded();
    let durable_tx = kafka.then_some(durable_tx);
    let sink_thread = thread::Builder::new()
        .name("sinks".into())
        .spawn(move || sinks::run(out_rx, sinks, dead, sink_hub, durable_tx))
        .expect("spawning a thread");

    let registry = Arc::new(StatsRegistry::default());
    let done = Arc::new(AtomicBool::new(false));
    let status_thread = spawn_status(status, registry.clone(), done.clone(), epoch);
    tracing::info!(source = ?cfg.source.kind, "Pipeline started.");

    let (source_result, reports) = if kafka {
        if let Some(h) = &hub {
            h.set_phase(Phase::Running);
            h.source_connected.store(true, Ordering::Relaxed);
        }
        let (result, reports) = crate::ingest::kafka::run(crate::ingest::kafka::KafkaRun {
            source: cfg.source.clone(),
            settings: settings.clone(),
            stop: stop.clone(),
            out_tx,
            durable: durable_rx,
            stats: registry.clone(),
            hub: hub.clone(),
            epoch,
        });
        (result.map_err(PipelineError::from), reports)
    } else {
        run_routed(cfg, &settings, stop, out_tx, &registry, hub.as_ref(), epoch)?
    };
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
    let sink_report = sink_report?;
    done.store(true, Ordering::Relaxed);
    if let Some(t) = status_thread {
        let _ = t.join();
    }
    source_result?;

    let mut counts = Counts::default();
    let mut latency = Histogram::new(3).expect("valid");
    let mut emit = EmitLatency::default();
    let mut devices = 0;
    for r in &reports {
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
    };
    tracing::info!(counts = %report.counts, completed, "Pipeline stopped.");
    if !report.counts.balanced() {
        // A broken internal invariant: say so loudly, the run's numbers are wrong.
        tracing::error!(counts = %report.counts, "Accounting does not add up.");
    }
    Ok(report)
}

/// Line-oriented sources (file, stdin, simulator, http): one router thread splits
/// input into events and routes them by device to `pipeline.partitions` actors.
fn run_routed(
    cfg: &Config,
    settings: &Arc<Settings>,
    stop: Arc<AtomicBool>,
    out_tx: crossbeam_channel::Sender<sinks::Output>,
    registry: &StatsRegistry,
    hub: Option<&Arc<Hub>>,
    epoch: Instant,
) -> Result<(Result<bool, PipelineError>, Vec<PartitionReport>), PipelineError> {
    let n = cfg.pipeline.partitions();
    let mut senders = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    for id in 0..n {
        let (tx, rx) = bounded::<Msg>(crate::ingest::QUEUE_BLOCKS);
        senders.push(tx);
        let stats = Arc::new(PartitionStats::default());
        registry.add(stats.clone());
        let p = Partition::new(
            id,
            settings.clone(),
            stats,
            epoch,
            out_tx.clone(),
            hub.cloned(),
        );
        let span = tracing::info_span!("partition", partition = id);
        workers.push(
            thread::Builder::new()
                .name(format!("partition-{id}"))
                .spawn(move || span.in_scope(|| p.run(rx)))
                .expect("spawning a thread"),
        );
    }
    drop(out_tx);
    let mut router =
        Router::new(senders, epoch, stop).with_device_field(&settings.fields.device_id);
    // An http source takes bodies from the moment the server reports ready.
    let http_rx = (cfg.source.kind == SourceKind::Http).then(|| {
        let (tx, rx) = bounded::<IngestBody>(HTTP_QUEUE);
        if let Some(h) = hub {
            h.set_ingest(Some(tx));
        }
        rx
    });
    if let Some(h) = hub {
        h.set_phase(Phase::Running);
        h.source_connected.store(true, Ordering::Relaxed);
    }
    let source_result = match cfg.source.kind {
        SourceKind::File => {
            let path = cfg
                .source
                .path
                .as_deref()
                .expect("validated: file sources have a path");
            match std::fs::File::open(path) {
                Ok(f) => read_lines(f, Arc::from(path.display().to_string()), &mut router)
                    .map_err(PipelineError::Read),
                Err(source) => Err(PipelineError::Open {
                    path: path.display().to_string(),
                    source,
                }),
            }
        }
        SourceKind::Stdin => read_lines(io::stdin().lock(), Arc::from("stdin"), &mut router)
            .map_err(PipelineError::Read),
        SourceKind::Simulator => {
            let sim = SimulatorSource::from_config(&cfg.source);
            sim.run(&mut router)
                .map_err(|e| PipelineError::Read(e.into()))
        }
        SourceKind::Http => {
            let hub = hub.expect("validated: an http source comes with a server");
            let rx = http_rx.expect("made above for http sources");
            Ok(http_source(hub, rx, &mut router))
        }
        SourceKind::Kafka => unreachable!("kafka sources run in ingest::kafka"),
    };
    if matches!(source_result, Ok(true)) {
        router.finish();
    } else {
        drop(router); // interrupted or failed: partitions flush what has closed
    }
    let mut reports = Vec::with_capacity(n);
    for w in workers {
        reports.push(w.join().map_err(|_| PipelineError::Panicked("partition"))?);
    }
    Ok((source_result, reports))
}

/// The `http` source: bodies that `POST /ingest` queued, until `stop`. Never ends by
/// itself (an HTTP stream has no end), so it always reports an interrupted run.
fn http_source(
    hub: &Hub,
    rx: crossbeam_channel::Receiver<IngestBody>,
    router: &mut Router,
) -> bool {
    let origin: Arc<str> = Arc::from("http");
    while !router.stopping() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(body) => {
                if router.route(body.data, &origin).is_err() {
                    break;
                }
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        }
    }
    hub.set_ingest(None);
    // Bodies accepted (202) before the stop are still routed: nothing acknowledged is lost.
    while let Ok(body) = rx.try_recv() {
        if router.route(body.data, &origin).is_err() {
            break;
        }
    }
    false
}

/// Bodies `POST /ingest` may queue before it answers 429.
pub const HTTP_QUEUE: usize = 64;

fn spawn_status(
    status: Status,
    stats: Arc<StatsRegistry>,
    done: Arc<AtomicBool>,
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
            while !done.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
                if Instant::now() < next {
                    continue;
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
