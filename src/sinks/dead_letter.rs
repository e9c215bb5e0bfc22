//! The dead-letter sink: every rejected input with its reason, so nothing is lost.

use std::io::{self, BufWriter, Write};

use super::{SinkError, open_file};
use crate::config::DeadLetterConfig;
use crate::event::DeadLetter;
use crate::kafka::{self, KafkaWriter};

pub struct DeadLetterSink {
    w: BufWriter<Box<dyn Write + Send>>,
    /// Kafka dead letters: records go to `topic` instead of `w`.
    kafka: Option<(KafkaWriter, String)>,
}

impl DeadLetterSink {
    pub fn build(c: &DeadLetterConfig) -> Result<Self, SinkError> {
        let w: Box<dyn Write + Send> = match c {
            DeadLetterConfig::Jsonl(f) => {
                Box::new(open_file(&f.path(), f.append.unwrap_or(false))?)
            }
            DeadLetterConfig::Stdout => Box::new(io::stdout()),
            DeadLetterConfig::Stderr => Box::new(io::stderr()),
            DeadLetterConfig::Kafka(c) => {
                let config = kafka::producer_config(&c.brokers, Some(&c.kafka_properties()));
                let w = KafkaWriter::new(&config, 10).map_err(|source| SinkError::Kafka {
                    sink: "dead_letter",
                    source,
                })?;
                let topic = c.topic().to_owned();
                return Ok(DeadLetterSink {
                    w: BufWriter::new(Box::new(io::sink())),
                    kafka: Some((w, topic)),
                });
            }
        };
        Ok(DeadLetterSink {
            w: BufWriter::with_capacity(1 << 16, w),
            kafka: None,
        })
    }

    /// A sink writing into memory (tests).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Self {
        DeadLetterSink {
            w: BufWriter::new(w),
            kafka: None,
        }
    }

    pub fn write(&mut self, records: &[DeadLetter]) -> Result<(), SinkError> {
        let err = |source| SinkError::Write {
            sink: "dead_letter",
            source,
        };
        if let Some((w, topic)) = &mut self.kafka {
            let mut buf = Vec::with_capacity(1024);
            for r in records {
                buf.clear();
                serde_json::to_writer(&mut buf, r).map_err(|e| err(e.into()))?;
                w.send(topic, None, &buf, 0);
            }
            return Ok(());
        }
        for r in records {
            serde_json::to_writer(&mut self.w, r).map_err(|e| err(e.into()))?;
            self.w.write_all(b"\n").map_err(err)?;
        }
        Ok(())
    }

    /// Records sent again after a failed delivery, since the start (Kafka).
    pub fn retries(&self) -> u64 {
        self.kafka.as_ref().map_or(0, |(w, _)| w.retries())
    }

    /// Flushes; for Kafka, waits for delivery. A dead letter that cannot be delivered
    /// has nowhere else to go: that fails the run (and its offsets stay uncommitted).
    pub fn flush(&mut self) -> Result<(), SinkError> {
        if let Some((w, _)) = &mut self.kafka {
            w.flush();
            let mut failed = Vec::new();
            w.take_failed(&mut failed);
            if let Some(f) = failed.first() {
                return Err(SinkError::Write {
                    sink: "dead_letter",
                    source: io::Error::other(format!(
                        "{} dead letters could not be delivered: {}",
                        failed.len(),
                        f.error
                    )),
                });
            }
            return Ok(());
        }
        self.w.flush().map_err(|source| SinkError::Write {
            sink: "dead_letter",
            source,
        })
    }
}
