//! The contract between a source and the runtime.
//!
//! A source produces blocks for partitions and nothing else: for each partition it
//! owns it hands the runtime a [`Feed`] (next block / idle / end / stop, where to
//! resume from, the position a checkpoint records), and it asks the runtime, its
//! [`Host`], to start or stop that partition. The runtime (`pipeline`) owns every
//! partition actor and runs the one actor loop over any feed.
//!
//! ```text
//!  source ──Host::start(slot, feed)──▶ runtime: one thread per partition
//!                                        loop { feed.next() → Partition → sinks }
//!  source ──Host::stop(actor)────────▶ the actor hands on what has closed, ends
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Block, Item};
use crate::output::Checkpoint;

/// What a feed yields to its partition's actor.
#[derive(Debug)]
pub enum Next {
    /// A block and the items in it that belong to this partition.
    Block(Arc<Block>, Vec<Item>),
    /// Nothing arrived within the wait.
    Idle,
    /// A finite input has ended for this partition: every window closes. The actor
    /// then goes on asking; the feed answers `Idle` until it answers `Stop`.
    End,
    /// Stop reading: the input is gone or the partition was taken away. What has
    /// closed is handed on; open windows stay open (a replay rebuilds them).
    Stop,
}

/// What a partition resumes from: the state a checkpoint recorded that a replay
/// from its position cannot rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Highest event time seen (`i64::MIN`: none yet).
    pub max_ts: i64,
    /// The next position the partition would have read; events read again from
    /// before it that fall only into closed windows are re-deliveries.
    pub position: i64,
    /// Keys of the alerts raised ([`crate::rules::raised_key`]).
    pub raised: Vec<u64>,
    /// Device watermarks the replay cannot rebuild: ([`crate::pipeline::device_key`],
    /// watermark) of each device whose watermark followed the wall clock while it was
    /// quiet.
    pub clocks: Vec<(u64, i64)>,
    /// [`crate::rules::RuleEngine::watch_from`] (`i64::MIN`: not yet).
    pub watch_from: i64,
}

/// What a partition holds that a checkpoint must record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The smallest source position still held by an open window (`i64::MAX`: none).
    pub min_position: i64,
    /// Highest event time seen.
    pub max_ts: i64,
    /// Keys of the raised alerts.
    pub raised: Vec<u64>,
    /// See [`Resume::clocks`].
    pub clocks: Vec<(u64, i64)>,
    /// See [`Resume::watch_from`].
    pub watch_from: i64,
}

/// One partition's input, read by its actor's thread.
pub trait Feed: Send {
    /// Waits up to `wait` for the next block.
    fn next(&mut self, wait: Duration) -> Next;

    /// Where to resume from; asked once, before the first [`Feed::next`].
    fn resume(&mut self) -> Option<Resume> {
        None
    }

    /// How often the position read so far is checkpointed; `None`: the source has no
    /// positions to commit.
    fn checkpoint_interval(&self) -> Option<Duration> {
        None
    }

    /// A checkpoint of the position read so far, given what the partition holds;
    /// `None` when nothing was read.
    fn checkpoint(&mut self, _held: Held) -> Option<Checkpoint> {
        None
    }

    /// Told once after [`Next::End`], when every window has closed and the
    /// checkpoint of the end has been handed on.
    fn ended(&mut self) {}
}

/// A running partition actor, as its source holds it.
#[derive(Debug)]
pub struct Actor {
    pub slot: usize,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Actor {
    pub fn new(slot: usize, stop: Arc<AtomicBool>, handle: JoinHandle<()>) -> Self {
        Actor { slot, stop, handle }
    }

    /// Asks the actor to stop (it finishes its current block first).
    pub fn signal(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the actor has ended by itself (its sinks are gone, or it panicked).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the actor to end. `false` if it panicked.
    pub fn join(self) -> bool {
        self.handle.join().is_ok()
    }
}

/// The runtime as sources see it.
pub trait Host: Send + Sync {
    /// When the run started: blocks' arrival times ([`Block::arrived_ns`]) count from it.
    fn epoch(&self) -> Instant;
    /// The source has learned how many partitions it can own: slots `0..n`.
    fn partitions(&self, n: usize);
    /// Starts the actor of `slot`, reading `feed`, on a thread named `name`.
    fn start(&self, slot: usize, name: String, feed: Box<dyn Feed>) -> Actor;
    /// Stops an actor (see [`Next::Stop`]) and waits for it; its slot on the live board
    /// is emptied (the partition is no longer this instance's). `false` if it panicked.
    fn stop(&self, actor: Actor) -> bool;
}
