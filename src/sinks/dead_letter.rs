//! The dead-letter sink: every rejected input with its reason, so nothing is lost.

use std::io::{self, BufWriter, Write};

use super::{SinkError, open_file};
use crate::config::{DeadLetterConfig, DeadLetterKind};
use crate::event::DeadLetter;

pub struct DeadLetterSink {
    w: BufWriter<Box<dyn Write + Send>>,
}

impl DeadLetterSink {
    pub fn build(c: &DeadLetterConfig) -> Result<Self, SinkError> {
        let w: Box<dyn Write + Send> = match c.kind {
            DeadLetterKind::Jsonl => Box::new(open_file(&c.path(), c.append.unwrap_or(false))?),
            DeadLetterKind::Stdout => Box::new(io::stdout()),
            DeadLetterKind::Stderr => Box::new(io::stderr()),
        };
        Ok(DeadLetterSink {
            w: BufWriter::with_capacity(1 << 16, w),
        })
    }

    /// A sink writing into memory (tests).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Self {
        DeadLetterSink {
            w: BufWriter::new(w),
        }
    }

    pub fn write(&mut self, records: &[DeadLetter]) -> Result<(), SinkError> {
        let err = |source| SinkError::Write {
            sink: "dead_letter",
            source,
        };
        for r in records {
            serde_json::to_writer(&mut self.w, r).map_err(|e| err(e.into()))?;
            self.w.write_all(b"\n").map_err(err)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.w.flush().map_err(|source| SinkError::Write {
            sink: "dead_letter",
            source,
        })
    }
}
