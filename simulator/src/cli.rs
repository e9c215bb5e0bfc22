//! The `eventide-simulator` command line: writes seeded IoT telemetry as NDJSON to
//! stdout, a file, or a Kafka topic. In the library so that tests run it in-process.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::{Generator, IdStyle, Layout, SimConfig, time};
use clap::Parser;

/// Generates streaming-at-scale style telemetry (NDJSON, one message per line).
#[derive(Parser, Debug)]
#[command(name = "eventide-simulator", version)]
struct Args {
    /// Number of devices.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Events per second (wall clock); 0 writes as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Stop after this many events (default: 100000 unless --duration is given).
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this much wall-clock time, e.g. "30s".
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Fraction of messages that re-send a recent event.
    #[arg(long, default_value_t = 0.001)]
    duplicates: f64,
    /// Largest lag of createdAt behind its nominal time, e.g. "2s".
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    max_disorder: Duration,
    /// Fraction of messages that are malformed.
    #[arg(long, default_value_t = 0.0)]
    malformed: f64,
    /// Fraction of messages that are JSON arrays of events.
    #[arg(long, default_value_t = 0.0)]
    batch_fraction: f64,
    /// Events per batch.
    #[arg(long, default_value_t = 10)]
    batch_size: u32,
    /// Fields in complexData.
    #[arg(long, default_value_t = 23)]
    complex_fields: u32,
    /// Devices whose CO2 swings around --threshold.
    #[arg(long, default_value_t = 10)]
    hot_devices: u32,
    /// CO2 threshold the hot devices cross.
    #[arg(long, default_value_t = 1000.0)]
    threshold: f64,
    /// Each device reports about once per this event-time interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Event time of the first event: RFC 3339, or "now".
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    start: String,
    /// Member layout: sas (the streaming-at-scale samples' order), compact (eventId,
    /// deviceId, deviceSequenceNumber, type, value, createdAt, complexData), pretty
    /// (the samples' order with ", " and ": " separators) or shuffled (a random order
    /// per event). The events are the same in every layout.
    #[arg(long, default_value = "sas")]
    layout: Layout,
    /// Device ids: sas (contoso://device-id-42) or plain (contoso-device-id-000042).
    #[arg(long, default_value = "sas")]
    id_style: IdStyle,
    /// Seed: the same seed and options give the same output.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write here instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Produce to Kafka (bootstrap servers, host:port[,…]) instead of writing NDJSON;
    /// messages are keyed by deviceId.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// How Kafka messages are keyed: device (by deviceId, batches split per device),
    /// first (whole batches keyed by their first device, as gateways send) or none
    /// (no key).
    #[arg(long, default_value = "device")]
    kafka_keys: crate::kafka::KafkaKeys,
    /// The topic to produce to (with --kafka-brokers).
    #[arg(long, default_value = "telemetry")]
    topic: String,
    /// Extra librdkafka producer property, NAME=VALUE (repeatable).
    #[arg(long = "kafka-property", value_parser = property)]
    kafka_properties: Vec<(String, String)>,
    /// Kafka security protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, value_parser = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])]
    security_protocol: Option<String>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (default PLAIN).
    #[arg(long, value_parser = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])]
    sasl_mechanism: Option<String>,
    /// SASL user name (`$ConnectionString` for Event Hubs).
    #[arg(long)]
    sasl_username: Option<String>,
    /// The environment variable holding the SASL password (never given on the
    /// command line, where other users could read it).
    #[arg(long)]
    sasl_password_env: Option<String>,
    /// CA certificates (PEM file or directory) to verify the brokers with.
    #[arg(long)]
    ssl_ca_location: Option<PathBuf>,
}

impl Args {
    /// The producer properties of the security flags, then `--kafka-property`s.
    fn kafka_properties(&self) -> io::Result<Vec<(String, String)>> {
        let mut p = Vec::new();
        if let Some(v) = &self.security_protocol {
            p.push(("security.protocol".to_string(), v.clone()));
            if v.starts_with("sasl_") {
                let m = self
                    .sasl_mechanism
                    .clone()
                    .unwrap_or_else(|| "PLAIN".into());
                p.push(("sasl.mechanism".to_string(), m));
            }
        }
        if let Some(v) = &self.sasl_username {
            p.push(("sasl.username".to_string(), v.clone()));
        }
        if let Some(var) = &self.sasl_password_env {
            let v = std::env::var(var).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("--sasl-password-env: the environment variable {var} is not set"),
                )
            })?;
            p.push(("sasl.password".to_string(), v));
        }
        if let Some(v) = &self.ssl_ca_location {
            p.push(("ssl.ca.location".to_string(), v.display().to_string()));
        }
        p.extend(self.kafka_properties.iter().cloned());
        Ok(p)
    }
}

fn property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// Runs the command line `args` (the first is the program name).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eventide-simulator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let start_ms = if args.start == "now" {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| invalid(e.to_string()))?
            .as_millis() as i64
    } else {
        time::parse_rfc3339_ms(&args.start)
            .ok_or_else(|| invalid(format!("--start: not RFC 3339: {}", args.start)))?
    };
    for (name, v) in [
        ("--duplicates", args.duplicates),
        ("--malformed", args.malformed),
        ("--batch-fraction", args.batch_fraction),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(invalid(format!("{name}: must be between 0 and 1, got {v}")));
        }
    }
    if args.devices == 0 {
        return Err(invalid("--devices: must be at least 1".into()));
    }
    let cfg = SimConfig {
        devices: args.devices,
        seed: args.seed,
        start_ms,
        interval_ms: args.interval.as_millis().max(1) as u64,
        duplicate_fraction: args.duplicates,
        max_disorder_ms: args.max_disorder.as_millis() as u64,
        malformed_fraction: args.malformed,
        batch_fraction: args.batch_fraction,
        batch_size: args.batch_size.max(1),
        complex_fields: args.complex_fields,
        hot_devices: args.hot_devices,
        threshold: args.threshold,
        layout: args.layout,
        id_style: args.id_style,
    };
    let count = match (args.count, args.duration) {
        (Some(c), _) => c,
        (None, Some(_)) => u64::MAX,
        (None, None) => 100_000,
    };
    let mut kafka = match &args.kafka_brokers {
        Some(brokers) => {
            if args.output.is_some() {
                return Err(invalid(
                    "--output and --kafka-brokers exclude each other".into(),
                ));
            }
            Some(
                crate::kafka::KafkaOut::new(brokers, &args.topic, &args.kafka_properties()?)
                    .and_then(|k| k.with_keys(args.kafka_keys))
                    .map_err(|e| io::Error::other(format!("kafka: {e}")))?,
            )
        }
        None => None,
    };
    let sink: Box<dyn Write> = match (&args.output, &kafka) {
        (_, Some(_)) => Box::new(io::sink()),
        (Some(p), None) => Box::new(File::create(p)?),
        (None, None) => Box::new(io::stdout().lock()),
    };
    let mut out = Pieces::new(sink);
    let progress = io::stderr().is_terminal();
    let mut generator = Generator::new(cfg);
    let started = Instant::now();
    let mut last_report = started;
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        let written = generator.stats().events;
        if written >= count || args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if args.rate > 0.0 {
            // Pace against the schedule, not the previous write, so the rate holds.
            let due = Duration::from_secs_f64(written as f64 / args.rate);
            let elapsed = started.elapsed();
            if due > elapsed {
                out.flush()?;
                std::thread::sleep((due - elapsed).min(Duration::from_millis(50)));
                continue;
            }
        }
        buf.clear();
        generator.next_message(&mut buf, count - written);
        match &mut kafka {
            Some(k) => k
                .send_line(buf.strip_suffix(b"\n").unwrap_or(&buf))
                .map_err(|e| io::Error::other(format!("kafka: {e}")))?,
            None => out.write_all(&buf)?,
        }
        if progress && last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            report(&generator, started, false);
        }
    }
    out.flush()?;
    if progress {
        report(&generator, started, true);
    }
    if let Some(k) = kafka {
        let sent = k.sent;
        let (delivered, failed, last) = k.finish();
        if progress {
            eprintln!(
                "{delivered} of {sent} Kafka messages delivered to {}",
                args.topic
            );
        }
        if failed > 0 {
            return Err(io::Error::other(format!(
                "kafka: {failed} of {sent} messages were not delivered (last error: {})",
                last.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// A buffered writer that writes whole pieces of [`Pieces::SIZE`] bytes (and the rest
/// when flushed), so that a file written from its start is written at offsets that are
/// multiples of 2 MiB. The page cache then holds it in 2 MiB folios, which a reader
/// that maps the file (eventide's file source) maps with one page-table entry each:
/// `BufWriter` writes odd sizes at odd offsets when a message does not fit, which
/// leaves the file in small folios, each 4 KiB page mapped on its own.
pub struct Pieces<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Pieces<W> {
    pub const SIZE: usize = 2 << 20;

    pub fn new(inner: W) -> Self {
        Pieces {
            inner,
            buf: Vec::with_capacity(Self::SIZE + (64 << 10)),
        }
    }
}

impl<W: Write> Write for Pieces<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= Self::SIZE {
            let whole = self.buf.len() / Self::SIZE * Self::SIZE;
            self.inner.write_all(&self.buf[..whole])?;
            self.buf.drain(..whole);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.inner.flush()
    }
}

impl<W: Write> Drop for Pieces<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn report(g: &Generator, started: Instant, done: bool) {
    let s = g.stats();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprint!(
        "\r{} events ({} duplicates, {} malformed) in {} messages, {:.0} events/s{}",
        s.events,
        s.duplicates,
        s.malformed,
        s.messages,
        s.events as f64 / secs,
        if done { "\n" } else { "   " }
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::Pieces;

    /// Records the size of each write it is given.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: Vec<usize>,
    }

    impl Write for &mut Recorder {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.bytes.extend_from_slice(data);
            self.writes.push(data.len());
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pieces_are_written_whole_and_nothing_is_lost() {
        let mut rec = Recorder::default();
        let mut want = Vec::new();
        {
            let mut w = Pieces::new(&mut rec);
            for i in 0..20_000u32 {
                let line = format!(
                    "{{\"n\":{i},\"pad\":\"{}\"}}\n",
                    "x".repeat(i as usize % 900)
                );
                w.write_all(line.as_bytes()).unwrap();
                want.extend_from_slice(line.as_bytes());
            }
        } // dropped: the rest is flushed
        assert!(rec.bytes == want, "the bytes written differ");
        let (last, whole) = rec.writes.split_last().unwrap();
        assert!(whole.len() >= 4, "{} pieces", whole.len());
        assert!(
            whole.iter().all(|&n| n > 0 && n % (2 << 20) == 0),
            "{whole:?}"
        );
        assert!(*last < 2 << 20);
    }
}
