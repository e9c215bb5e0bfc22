//! The vocabulary between the runtime and the sinks: what a partition hands on
//! ([`Output`]) and a source position that becomes safe to commit ([`Checkpoint`]).

use std::sync::Arc;

use arrow_array::RecordBatch;

use crate::event::{Alert, DeadLetter, DeviceUpdate};

/// What a partition actor hands to the sinks after a block or a watermark advance.
#[derive(Debug, Default)]
pub struct Output {
    pub windows: Option<RecordBatch>,
    pub alerts: Vec<Alert>,
    pub dead: Vec<DeadLetter>,
    /// Latest readings of the devices that changed (only when a sink takes the
    /// `devices` stream).
    pub devices: Vec<DeviceUpdate>,
    /// A source position that becomes safe to commit once everything before it (and
    /// this output's records) is written by every sink.
    pub checkpoint: Option<Checkpoint>,
    /// Answered once this output and everything before it are written (flushed).
    pub ack: Option<crossbeam_channel::Sender<()>>,
}

/// A Kafka partition's safe position: `offset` is where a replay must start so that
/// every window still open is rebuilt; `metadata` carries what the replay cannot
/// rebuild (see [`crate::ingest::kafka`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Which assignment of the partition produced it (a later one supersedes it).
    pub generation: u64,
    pub offset: i64,
    pub metadata: String,
}
