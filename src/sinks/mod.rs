//! Stage 4: sinks for closed windows and alerts, and the dead-letter sink.
//!
//! In: [`Output`] messages from the partition actors over one bounded channel (a slow
//! sink slows the partitions, and through them the source).
//! Out: records in the DESIGN.md contract, written by one sink thread, so sinks need
//! no locking. Writes are buffered and flushed every half second and at shutdown.
//!
//! A closed set of sinks chosen at start-up: an enum, not boxed trait objects.

pub mod cosmos;
pub mod dead_letter;
pub mod json;
pub mod stdout;
pub mod webhook;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::{SinkConfig, StdoutFormat, Stream};
use crate::event::DeadLetter;
use crate::kafka;
use crate::live::Hub;
pub use crate::output::{Checkpoint, Output};
pub use dead_letter::DeadLetterSink;

/// A sink failure. Local files and pipes do not recover by retrying, so any
/// failure stops the run (it exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{sink}: write failed: {source}")]
    Write {
        sink: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cosmos: {0}")]
    Cosmos(String),
    #[error("webhook: {0}")]
    Webhook(String),
    #[error("{sink}: cannot create the Kafka producer: {source}")]
    Kafka {
        sink: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Opens a file for a sink, creating its directory.
pub fn open_file(path: &Path, append: bool) -> Result<File, SinkError> {
    let err = |source| SinkError::Open {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut o = OpenOptions::new();
    o.create(true);
    if append {
        o.append(true)
    } else {
        o.write(true).truncate(true)
    };
    o.open(path).map_err(err)
}

/// A configured output sink.
pub enum Sink {
    /// JSON lines to a file or stdout.
    Json {
        name: &'static str,
        w: BufWriter<Box<dyn Write + Send>>,
        windows: bool,
        alerts: bool,
        buf: Vec<u8>,
    },
    /// Readable lines for a terminal.
    Pretty(stdout::PrettySink),
    /// JSON records to Kafka topics, keyed by deviceId.
    Kafka {
        w: kafka::KafkaWriter,
        windows_topic: Option<String>,
        alerts_topic: Option<String>,
        buf: Vec<u8>,
    },
    /// Windows, alerts and device documents to Azure Cosmos DB.
    Cosmos(Box<cosmos::CosmosSink>),
    /// Closed windows and alerts kept on the live board for queries (`server.retention`).
    Retain(Arc<Hub>),
    /// Alerts POSTed to an HTTP endpoint.
    Webhook(Box<webhook::WebhookSink>),
}

impl Sink {
    pub fn build(c: &SinkConfig) -> Result<Sink, SinkError> {
        let streams = c.streams();
        let windows = streams.contains(&Stream::Windows);
        let alerts = streams.contains(&Stream::Alerts);
        let (name, w): (&'static str, Box<dyn Write + Send>) = match c {
            SinkConfig::Jsonl(c) => (
                "jsonl",
                Box::new(open_file(&c.path, c.append.unwrap_or(false))?),
            ),
            SinkConfig::Stdout(c) if c.format == Some(StdoutFormat::Pretty) => {
                return Ok(Sink::Pretty(stdout::PrettySink::new(windows, alerts)));
            }
            SinkConfig::Stdout(_) => ("stdout", Box::new(io::stdout())),
            SinkConfig::Kafka(c) => {
                let config = kafka::producer_config(&c.brokers, Some(&c.kafka_properties()));
                let w = kafka::KafkaWriter::new(&config, c.max_retries.unwrap_or(5)).map_err(
                    |source| SinkError::Kafka {
                        sink: "kafka",
                        source,
                    },
                )?;
                return Ok(Sink::Kafka {
                    w,
                    windows_topic: windows.then(|| {
                        c.windows_topic
                            .clone()
                            .unwrap_or_else(|| "eventide-windows".into())
                    }),
                    alerts_topic: alerts.then(|| {
                        c.alerts_topic
                            .clone()
                            .unwrap_or_else(|| "eventide-alerts".into())
                    }),
                    buf: Vec::with_capacity(1024),
                });
            }
            SinkConfig::Webhook(c) => {
                return Ok(Sink::Webhook(Box::new(webhook::WebhookSink::new(c)?)));
            }
            SinkConfig::Cosmos(c) => {
                let settings = cosmos::CosmosSettings::from_config(c)?;
                return Ok(Sink::Cosmos(Box::new(cosmos::CosmosSink::connect(
                    settings,
                )?)));
            }
        };
        Ok(Sink::Json {
            name,
            w: BufWriter::with_capacity(1 << 20, w),
            windows,
            alerts,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Sink::Json { name, .. } => name,
            Sink::Pretty(_) => "stdout",
            Sink::Kafka { .. } => "kafka",
            Sink::Cosmos(_) => "cosmos",
            Sink::Retain(_) => "retention",
            Sink::Webhook(_) => "webhook",
        }
    }

    pub fn write(&mut self, out: &Output) -> Result<(), SinkError> {
        let sink = self.name();
        let err = |source| SinkError::Write { sink, source };
        match self {
            Sink::Json {
                w,
                windows,
                alerts,
                buf,
                ..
            } => {
                if let (true, Some(batch)) = (*windows, &out.windows) {
                    let mut records = json::WindowRecords::new(batch);
                    for row in 0..batch.num_rows() {
                        buf.clear();
                        records.write(row, buf);
                        buf.push(b'\n');
                        w.write_all(buf).map_err(err)?;
                    }
                }
                if *alerts {
                    for a in &out.alerts {
                        serde_json::to_writer(&mut *w, a).map_err(|e| err(e.into()))?;
                        w.write_all(b"\n").map_err(err)?;
                    }
                }
                Ok(())
            }
            Sink::Pretty(p) => p.write(out).map_err(err),
            Sink::Kafka {
                w,
                windows_topic,
                alerts_topic,
                buf,
            } => {
                if let (Some(topic), Some(batch)) = (windows_topic.as_deref(), &out.windows) {
                    use arrow_array::cast::AsArray;
                    let devices = batch
                        .column(crate::event::col::DEVICE_ID)
                        .as_string::<i32>();
                    let mut records = json::WindowRecords::new(batch);
                    for row in 0..batch.num_rows() {
                        buf.clear();
                        records.write(row, buf);
                        w.send(topic, Some(devices.value(row).as_bytes()), buf, 0);
                    }
                }
                if let Some(topic) = alerts_topic.as_deref() {
                    for a in &out.alerts {
                        buf.clear();
                        serde_json::to_writer(&mut *buf, a).map_err(|e| err(e.into()))?;
                        w.send(topic, Some(a.device_id.as_bytes()), buf, 0);
                    }
                }
                Ok(())
            }
            Sink::Cosmos(c) => c.write(out),
            Sink::Webhook(w) => {
                w.write(&out.alerts);
                Ok(())
            }
            Sink::Retain(hub) => {
                if let Some(b) = &out.windows {
                    hub.retain_windows(b);
                }
                hub.retain_alerts(&out.alerts);
                Ok(())
            }
        }
    }

    /// Writes this sink has retried since the start.
    pub fn retries(&self) -> u64 {
        match self {
            Sink::Kafka { w, .. } => w.retries(),
            Sink::Cosmos(c) => c.stats().retries,
            Sink::Webhook(w) => w.retries(),
            Sink::Json { .. } | Sink::Pretty(_) | Sink::Retain(_) => 0,
        }
    }

    /// Records this sink gave up delivering (after its retries), as dead letters
    /// with reason `sink`.
    pub fn take_failed(&mut self, into: &mut Vec<DeadLetter>) {
        match self {
            Sink::Kafka { w, .. } => w.take_failed(into),
            Sink::Cosmos(c) => c.take_failed(into),
            Sink::Webhook(w) => w.take_failed(into),
            Sink::Json { .. } | Sink::Pretty(_) | Sink::Retain(_) => {}
        }
    }

    /// Flushes buffered output; `last` at shutdown; `durable` when a checkpoint or an
    /// acknowledgement waits on this flush (coalesced writes cannot wait then).
    pub fn flush(&mut self, last: bool, durable: bool) -> Result<(), SinkError> {
        let sink = self.name();
        let err = |source| SinkError::Write { sink, source };
        match self {
            Sink::Json { w, .. } => w.flush().map_err(err),
            Sink::Pretty(p) => p.flush(last).map_err(err),
            Sink::Kafka { w, .. } => {
                w.flush();
                Ok(())
            }
            Sink::Cosmos(c) => c.flush(last, durable),
            Sink::Retain(_) => Ok(()),
            Sink::Webhook(w) => {
                w.flush();
                Ok(())
            }
        }
    }
}

/// Counts from the sink thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkReport {
    pub windows: u64,
    pub alerts: u64,
    pub dead_letters: u64,
}

/// The sink thread: writes everything it receives until every partition is gone.
/// Checkpoints go to `durable` once every output before them is written and flushed.
pub fn run(
    rx: Receiver<Output>,
    sinks: Vec<Sink>,
    dead: DeadLetterSink,
    hub: Option<Arc<Hub>>,
    durable: Option<crossbeam_channel::Sender<Checkpoint>>,
) -> Result<SinkReport, SinkError> {
    let result = write_all(rx, sinks, dead, hub.as_deref(), durable);
    if let (Some(h), Err(e)) = (&hub, &result) {
        h.sinks.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, "Sink failed.");
    }
    result
}

fn write_all(
    rx: Receiver<Output>,
    mut sinks: Vec<Sink>,
    mut dead: DeadLetterSink,
    hub: Option<&Hub>,
    durable: Option<crossbeam_channel::Sender<Checkpoint>>,
) -> Result<SinkReport, SinkError> {
    let mut report = SinkReport::default();
    let flush_every = Duration::from_millis(500);
    let mut last_flush = Instant::now();
    // Checkpoints written but not yet flushed, and who waits for the flush.
    let mut pending: Vec<Checkpoint> = Vec::new();
    let mut waiting: Vec<crossbeam_channel::Sender<()>> = Vec::new();
    loop {
        let mut flush_now = false;
        match rx.recv_timeout(flush_every) {
            Ok(mut out) => {
                for r in &mut sinks {
                    // Records a sink could not deliver after its retries: dead letters.
                    r.take_failed(&mut out.dead);
                }
                for s in &mut sinks {
                    s.write(&out)?;
                }
                dead.write(&out.dead)?;
                let windows = out.windows.as_ref().map_or(0, |b| b.num_rows() as u64);
                report.windows += windows;
                report.alerts += out.alerts.len() as u64;
                report.dead_letters += out.dead.len() as u64;
                if let Some(h) = hub {
                    h.sinks.windows.fetch_add(windows, Ordering::Relaxed);
                    h.sinks
                        .alerts
                        .fetch_add(out.alerts.len() as u64, Ordering::Relaxed);
                    h.sinks
                        .dead_letters
                        .fetch_add(out.dead.len() as u64, Ordering::Relaxed);
                }
                pending.extend(out.checkpoint.take());
                if let Some(ack) = out.ack.take() {
                    waiting.push(ack);
                    flush_now = true;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if flush_now || last_flush.elapsed() >= flush_every {
            let awaited = !pending.is_empty() || !waiting.is_empty();
            flush_all(&mut sinks, &mut dead, false, awaited, &mut report, hub)?;
            last_flush = Instant::now();
            release(&mut pending, &mut waiting, &durable);
        }
    }
    flush_all(&mut sinks, &mut dead, true, true, &mut report, hub)?;
    release(&mut pending, &mut waiting, &durable);
    Ok(report)
}

/// Flushes every sink; records a sink gave up on after flushing are dead-lettered
/// (and flushed) before this returns, so a checkpoint released after it is safe.
fn flush_all(
    sinks: &mut [Sink],
    dead: &mut DeadLetterSink,
    last: bool,
    durable: bool,
    report: &mut SinkReport,
    hub: Option<&Hub>,
) -> Result<(), SinkError> {
    let mut failed = Vec::new();
    for s in sinks.iter_mut() {
        s.flush(last, durable)?;
        s.take_failed(&mut failed);
    }
    if !failed.is_empty() {
        dead.write(&failed)?;
        report.dead_letters += failed.len() as u64;
        if let Some(h) = hub {
            h.sinks
                .dead_letters
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
        }
    }
    dead.flush()?;
    if let Some(h) = hub {
        h.sinks.flushes.fetch_add(1, Ordering::Relaxed);
        // Each sink counts its own retries from the start: the total is their sum.
        let retries = sinks.iter().map(Sink::retries).sum::<u64>() + dead.retries();
        h.sinks.retries.store(retries, Ordering::Relaxed);
    }
    Ok(())
}

fn release(
    pending: &mut Vec<Checkpoint>,
    waiting: &mut Vec<crossbeam_channel::Sender<()>>,
    durable: &Option<crossbeam_channel::Sender<Checkpoint>>,
) {
    if let Some(d) = durable {
        for c in pending.drain(..) {
            let _ = d.send(c);
        }
    } else {
        pending.clear();
    }
    for w in waiting.drain(..) {
        let _ = w.send(());
    }
}
