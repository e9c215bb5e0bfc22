//! Stage 4: sinks for closed windows and alerts, and the dead-letter sink.
//!
//! In: [`Output`] messages from the partition actors over one bounded channel (a slow
//! sink slows the partitions, and through them the source).
//! Out: records in the DESIGN.md contract, written by one sink thread, so sinks need
//! no locking. Writes are buffered and flushed every half second and at shutdown.
//!
//! A closed set of sinks chosen at start-up: an enum, not boxed trait objects.

pub mod dead_letter;
pub mod json;
pub mod stdout;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::{SinkConfig, SinkKind, StdoutFormat, Stream};
use crate::event::{Alert, DeadLetter};
use crate::sql::state::Hub;
pub use dead_letter::DeadLetterSink;

/// What a partition actor hands to the sinks after a block or a watermark advance.
#[derive(Debug, Default)]
pub struct Output {
    pub windows: Option<RecordBatch>,
    pub alerts: Vec<Alert>,
    pub dead: Vec<DeadLetter>,
}

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
}

impl Sink {
    pub fn build(c: &SinkConfig) -> Result<Sink, SinkError> {
        let streams = c.streams();
        let windows = streams.contains(&Stream::Windows);
        let alerts = streams.contains(&Stream::Alerts);
        let (name, w): (&'static str, Box<dyn Write + Send>) = match c.kind {
            SinkKind::Jsonl => {
                let path = c
                    .path
                    .as_deref()
                    .expect("validated: jsonl sinks have a path");
                (
                    "jsonl",
                    Box::new(open_file(path, c.append.unwrap_or(false))?),
                )
            }
            SinkKind::Stdout if c.format == Some(StdoutFormat::Pretty) => {
                return Ok(Sink::Pretty(stdout::PrettySink::new(windows, alerts)));
            }
            SinkKind::Stdout => ("stdout", Box::new(io::stdout())),
            SinkKind::Cosmos | SinkKind::Kafka => unreachable!("rejected by Config::validate"),
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
                    for row in 0..batch.num_rows() {
                        buf.clear();
                        json::window_record(batch, row, buf);
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
        }
    }

    /// Flushes buffered output; `last` at shutdown.
    pub fn flush(&mut self, last: bool) -> Result<(), SinkError> {
        let sink = self.name();
        let err = |source| SinkError::Write { sink, source };
        match self {
            Sink::Json { w, .. } => w.flush().map_err(err),
            Sink::Pretty(p) => p.flush(last).map_err(err),
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
pub fn run(
    rx: Receiver<Output>,
    sinks: Vec<Sink>,
    dead: DeadLetterSink,
    hub: Option<Arc<Hub>>,
) -> Result<SinkReport, SinkError> {
    let result = write_all(rx, sinks, dead, hub.as_deref());
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
) -> Result<SinkReport, SinkError> {
    let mut report = SinkReport::default();
    let flush_every = Duration::from_millis(500);
    let mut last_flush = Instant::now();
    loop {
        match rx.recv_timeout(flush_every) {
            Ok(out) => {
                for s in &mut sinks {
                    s.write(&out)?;
                }
                dead.write(&out.dead)?;
                let windows = out.windows.as_ref().map_or(0, |b| b.num_rows() as u64);
                report.windows += windows;
                report.alerts += out.alerts.len() as u64;
                report.dead_letters += out.dead.len() as u64;
                if let Some(h) = hub {
                    if let Some(b) = &out.windows {
                        h.retain_windows(b);
                    }
                    h.retain_alerts(&out.alerts);
                    h.sinks.windows.fetch_add(windows, Ordering::Relaxed);
                    h.sinks
                        .alerts
                        .fetch_add(out.alerts.len() as u64, Ordering::Relaxed);
                    h.sinks
                        .dead_letters
                        .fetch_add(out.dead.len() as u64, Ordering::Relaxed);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_flush.elapsed() >= flush_every {
            for s in &mut sinks {
                s.flush(false)?;
            }
            dead.flush()?;
            last_flush = Instant::now();
            if let Some(h) = hub {
                h.sinks.flushes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for s in &mut sinks {
        s.flush(true)?;
    }
    dead.flush()?;
    Ok(report)
}
