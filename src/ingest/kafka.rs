//! The `kafka` source: a consumer-group member that asks the runtime for one partition
//! actor per assigned Kafka partition, each reading its own partition queue.
//!
//! ```text
//!  main thread: consumer.poll ── rebalance callbacks ── commits safe offsets
//!      │ on assign: split_partition_queue(topic, p) → Host::start(slot, KafkaFeed)
//!      ▼
//!  actor thread per (topic, partition): KafkaFeed::next (queue.poll → Block)
//!      │ every commit_interval: a Checkpoint behind its outputs
//!      ▼
//!  sink thread: writes, flushes, then hands the checkpoint back as durable
//! ```
//!
//! Each partition is read from its own queue by its own thread, so a slow partition
//! does not stall the others. Events of one device must be in one Kafka partition
//! (key = deviceId, as the simulator produces them): a partition's actor owns the
//! windows of its devices.
//!
//! **Offsets.** Auto-commit is off. A checkpoint's offset is the smallest offset of
//! any event still held in an open window (or the next offset to read when none is),
//! and it is committed only after every output produced before it has been written
//! and flushed by every sink. Its commit metadata carries what a replay from there
//! cannot rebuild: the partition's highest event time (so windows closed before are
//! not produced again, and the watermark continues exactly where it was), the
//! position read up to (events before it that fall only into closed windows are
//! re-deliveries, counted as duplicates), and the raised alerts (so a raised alert
//! is not raised twice). See [`Metadata`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::checkpoint_log::CheckpointLog;
use super::feed::{Actor, Feed, Held, Host, Next, Resume};
use super::{BLOCK_SIZE, Block, Item, split_message};
use crate::config::source::Kafka as KafkaConfig;
use crate::kafka::cached_high_watermark;
use crate::output::Checkpoint;

/// Longest time a request to the brokers may take at start-up or at a rebalance.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Commit metadata beyond this many bytes risks the broker's limit
/// (`offset.metadata.max.bytes`, 4096 by default).
const MAX_METADATA: usize = 4000;
/// Messages read into one block at most.
const MAX_BLOCK_MESSAGES: usize = 4096;
/// How long after an actor starts messages may still come as strays, and how long a
/// gap in its offsets waits for them (see [`await_strays`]).
const STRAYS_SPAN: Duration = Duration::from_secs(5);
const STRAYS_WAIT: Duration = Duration::from_millis(300);

/// A Kafka source failure.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("source.topics: topic {0:?} does not exist on the brokers")]
    NoTopic(String),
    #[error("kafka: the sinks have stopped")]
    SinksGone,
    #[error("kafka: {0}")]
    Actor(String),
    /// The brokers could not be reached, with what librdkafka reported meanwhile
    /// (a TLS handshake or SASL login that failed says so here).
    #[error("kafka: cannot reach the brokers ({0}): {1}")]
    Unreachable(rdkafka::error::KafkaError, String),
}

/// The probe's context: keeps the last error librdkafka reports (TLS, SASL, transport),
/// which a failed request only summarises as a timeout.
#[derive(Default)]
struct Probe {
    last_error: Mutex<Option<String>>,
}

impl ClientContext for Probe {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka: client error.");
        // "All brokers are down" follows the error that brought them down: keep that.
        let all_down =
            error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
        let mut last = self.last_error.lock();
        if !all_down || last.is_none() {
            *last = Some(reason.to_string());
        }
    }
}

impl ConsumerContext for Probe {}

/// A probe request's error, with the client error behind it if there was one (the
/// client's errors are delivered by polling it).
fn explain(probe: &BaseConsumer<Probe>, e: rdkafka::error::KafkaError) -> KafkaSourceError {
    let _ = probe.poll(Duration::from_millis(200));
    match probe.context().last_error.lock().take() {
        Some(reason) => KafkaSourceError::Unreachable(e, reason),
        None => KafkaSourceError::Client(e),
    }
}

/// What a checkpoint's commit metadata records (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Highest event time seen (`i64::MIN`: none yet).
    pub max_ts: i64,
    /// The next offset the partition would have read.
    pub position: i64,
    /// Keys of the alerts raised ([`crate::rules::raised_key`]).
    pub raised: Vec<u64>,
    /// Device watermarks the replay cannot rebuild ([`Resume::clocks`]).
    pub clocks: Vec<(u64, i64)>,
    /// Whether `raised` or `clocks` had to be cut short to fit.
    pub truncated: bool,
    /// [`Resume::watch_from`]: written after the other fields when set.
    pub watch_from: i64,
}

impl Metadata {
    const TAG: &'static str = "eventide2";
    /// Before device watermarks were recorded: read, never written.
    const TAG_1: &'static str = "eventide1";

    pub fn encode(&self) -> String {
        let mut s = format!("{};{};{};", Self::TAG, self.max_ts, self.position);
        let room = MAX_METADATA.saturating_sub(s.len() + 3) / 12;
        for k in self.raised.iter().take(room) {
            s.push_str(&format!("{:012x}", k & 0xffff_ffff_ffff));
        }
        s.push(';');
        // Room for the flag and `watch_from` after them.
        let room_clocks = MAX_METADATA.saturating_sub(s.len() + 2 + 21) / 28;
        for (k, wm) in self.clocks.iter().take(room_clocks) {
            s.push_str(&format!("{:012x}{:016x}", k & 0xffff_ffff_ffff, *wm as u64));
        }
        let truncated =
            self.truncated || self.raised.len() > room || self.clocks.len() > room_clocks;
        s.push(';');
        s.push(if truncated { 't' } else { 'c' });
        if self.watch_from != i64::MIN {
            s.push_str(&format!(";{}", self.watch_from));
        }
        s
    }

    /// `None` for metadata eventide did not write (another tool's commit).
    pub fn decode(s: &str) -> Option<Metadata> {
        let mut parts = s.split(';');
        let version = parts.next()?;
        if version != Self::TAG && version != Self::TAG_1 {
            return None;
        }
        let max_ts = parts.next()?.parse().ok()?;
        let position = parts.next()?.parse().ok()?;
        let keys = parts.next()?;
        let clocks_text = if version == Self::TAG {
            parts.next()?
        } else {
            ""
        };
        if clocks_text.len() % 28 != 0 || !clocks_text.is_ascii() {
            return None;
        }
        let clocks = (0..clocks_text.len() / 28)
            .map(|i| {
                let e = &clocks_text[i * 28..i * 28 + 28];
                let key = u64::from_str_radix(&e[..12], 16).ok()?;
                let wm = u64::from_str_radix(&e[12..], 16).ok()? as i64;
                Some((key, wm))
            })
            .collect::<Option<Vec<(u64, i64)>>>()?;
        let truncated = match parts.next()? {
            "t" => true,
            "c" => false,
            _ => return None,
        };
        let watch_from = match parts.next() {
            None => i64::MIN,
            Some(w) => w.parse().ok()?,
        };
        if keys.len() % 12 != 0 || !keys.is_ascii() {
            return None;
        }
        let raised = (0..keys.len() / 12)
            .map(|i| u64::from_str_radix(&keys[i * 12..i * 12 + 12], 16).ok())
            .collect::<Option<Vec<u64>>>()?;
        Some(Metadata {
            max_ts,
            position,
            raised,
            clocks,
            truncated,
            watch_from,
        })
    }
}

/// Everything a run of the kafka source needs.
pub struct KafkaRun {
    pub source: KafkaConfig,
    /// Set to shut down.
    pub stop: Arc<AtomicBool>,
    /// Checkpoints the sink thread has made durable.
    pub durable: Receiver<Checkpoint>,
    /// Starts and stops the partition actors.
    pub host: Arc<dyn Host>,
    /// Where the lag is published.
    pub stats: Arc<crate::live::KafkaStats>,
    /// Reading a repartition topic ([`super::repartition`]): with `stop_at_end`, the
    /// end is the topic's end once this is set (the first stage has forwarded the
    /// whole input), not its end at the start.
    pub first_stage_done: Option<Arc<AtomicBool>>,
}

type TopicPartition = (Arc<str>, i32);

/// The partitions a rebalance names.
fn partitions_of(tpl: &rdkafka::TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

/// An assigned partition: its actor, and where messages fetched for it before its
/// queue was split off go.
struct Assigned {
    generation: u64,
    strays: Sender<OwnedMessage>,
    actor: Actor,
}

#[derive(Default)]
struct State {
    actors: HashMap<TopicPartition, Assigned>,
    generation: u64,
    /// Latest durable checkpoint per partition, not yet committed.
    pending: HashMap<TopicPartition, Checkpoint>,
    /// Partitions this instance has consumed to their end (stop_at_end).
    finished: HashSet<TopicPartition>,
    /// Whether the group has handed this member an assignment yet (possibly an
    /// empty one). Until then it cannot tell what other members did: stop_at_end
    /// reads no committed offset before it.
    joined: bool,
    /// A fatal error seen in a callback, reported by the main loop.
    failed: Option<String>,
}

struct Shared {
    run: KafkaRun,
    /// Hub slot of each partition (its index in the sorted partition list).
    slots: HashMap<TopicPartition, usize>,
    /// stop_at_end: each partition's end offset when the run started (or, after a
    /// first stage, when it finished).
    ends: Arc<OnceLock<HashMap<TopicPartition, i64>>>,
    state: Mutex<State>,
    /// `source.checkpoint_topic`: checkpoints as records there, not commit metadata.
    log: Option<Arc<CheckpointLog>>,
    /// Set once the consumer exists: callbacks need an `Arc` to split queues.
    consumer: OnceLock<Weak<BaseConsumer<Ctx>>>,
    finished_tx: Sender<TopicPartition>,
    finished_rx: Receiver<TopicPartition>,
}

struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl);
            tracing::info!(partitions = ?parts, "Kafka: partitions revoked; stopping their actors and committing.");
            self.0.stop_actors(&parts);
            self.0.commit(consumer, Some(&parts), CommitMode::Sync);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions_of(tpl);
                tracing::info!(partitions = ?parts, "Kafka: partitions assigned; starting their actors.");
                self.0.state.lock().joined = true;
                let Some(consumer) = self.0.consumer.get().and_then(Weak::upgrade) else {
                    return;
                };
                for tp in parts {
                    self.0.start_actor(&consumer, tp);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::error!(error = %e, "Kafka: rebalance failed.");
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            tracing::warn!(error = %e, partitions = offsets.count(), "Kafka: offset commit failed; the next commit carries the same or later offsets.");
        }
    }
}

impl Shared {
    fn start_actor(&self, consumer: &Arc<BaseConsumer<Ctx>>, tp: TopicPartition) {
        let mut st = self.state.lock();
        if st.actors.contains_key(&tp) {
            return;
        }
        let Some(queue) = consumer.split_partition_queue(&tp.0, tp.1) else {
            st.failed = Some(format!(
                "cannot read partition {}/{} on its own queue",
                tp.0, tp.1
            ));
            return;
        };
        st.generation += 1;
        let generation = st.generation;
        st.pending.remove(&tp);
        let slot = self.slots.get(&tp).copied().unwrap_or(0);
        let (strays_tx, strays_rx) = crossbeam_channel::unbounded();
        let feed = KafkaFeed {
            origin: Arc::from(format!("{}/{}", tp.0, tp.1)),
            log: self.log.clone(),
            queue,
            consumer: consumer.clone(),
            tp: tp.clone(),
            generation,
            strays: strays_rx,
            end: self.ends.get().and_then(|e| e.get(&tp).copied()),
            ends: self.ends.clone(),
            end_checked: false,
            position: None,
            done: false,
            commit_interval: self.run.source.commit_interval(),
            epoch: self.run.host.epoch(),
            finished: self.finished_tx.clone(),
            next_offset: None,
            started: Instant::now(),
        };
        let actor = self
            .run
            .host
            .start(slot, format!("kafka-{}-{}", tp.0, tp.1), Box::new(feed));
        st.actors.insert(
            tp,
            Assigned {
                generation,
                strays: strays_tx,
                actor,
            },
        );
    }

    /// Stops the actors of `parts`: each flushes what has closed and waits until its
    /// last checkpoint is durable.
    fn stop_actors(&self, parts: &[TopicPartition]) {
        let actors: Vec<(TopicPartition, Assigned)> = {
            let mut st = self.state.lock();
            parts
                .iter()
                .filter_map(|tp| st.actors.remove(tp).map(|a| (tp.clone(), a)))
                .collect()
        };
        for (_, a) in &actors {
            a.actor.signal();
        }
        let mut stopped = Vec::with_capacity(actors.len());
        for (tp, a) in actors {
            stopped.push((tp.clone(), a.generation));
            if !self.run.host.stop(a.actor) {
                self.state.lock().failed = Some(format!("the actor of {}/{} panicked", tp.0, tp.1));
            }
        }
        // Their final checkpoints are durable now: take them in.
        self.take_durable(&stopped);
    }

    /// Moves durable checkpoints into `pending`, keeping those of current actors
    /// (and of `also`, actors just stopped).
    fn take_durable(&self, also: &[(TopicPartition, u64)]) {
        let mut st = self.state.lock();
        while let Ok(c) = self.run.durable.try_recv() {
            let tp: TopicPartition = (c.topic.clone(), c.partition);
            let current = st.actors.get(&tp).map(|a| a.generation) == Some(c.generation)
                || also.iter().any(|(t, g)| *t == tp && *g == c.generation);
            if current {
                st.pending.insert(tp, c);
            }
        }
    }

    /// Commits pending checkpoints (of `only` these partitions, when given).
    fn commit(
        &self,
        consumer: &BaseConsumer<Ctx>,
        only: Option<&[TopicPartition]>,
        mode: CommitMode,
    ) {
        self.take_durable(&[]);
        let batch: Vec<Checkpoint> = {
            let mut st = self.state.lock();
            let keys: Vec<TopicPartition> = st
                .pending
                .keys()
                .filter(|k| only.is_none_or(|o| o.contains(k)))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| st.pending.remove(k)).collect()
        };
        if batch.is_empty() {
            return;
        }
        if let Some(log) = &self.log
            && let Err(e) = log.write(&batch)
        {
            tracing::warn!(error = %e, "Kafka: checkpoint records not written; offsets are not committed, and are retried with the next checkpoint.");
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(batch.len());
        for c in &batch {
            let mut e = tpl.add_partition(&c.topic, c.partition);
            if e.set_offset(Offset::Offset(c.offset)).is_ok() {
                e.set_metadata(c.metadata.as_str());
            }
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => tracing::debug!(partitions = batch.len(), "Kafka: offsets committed."),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka: offset commit failed; it is retried with the next checkpoint.")
            }
        }
    }
}

/// One Kafka partition's feed: reads its queue (and strays from the main queue),
/// knows its position, and makes checkpoints of it.
struct KafkaFeed {
    origin: Arc<str>,
    log: Option<Arc<CheckpointLog>>,
    queue: PartitionQueue<Ctx>,
    consumer: Arc<BaseConsumer<Ctx>>,
    tp: TopicPartition,
    generation: u64,
    strays: Receiver<OwnedMessage>,
    /// stop_at_end: the partition's end offset, once known (from `ends`).
    end: Option<i64>,
    ends: Arc<OnceLock<HashMap<TopicPartition, i64>>>,
    /// Whether `end` was compared with the fetch high watermark yet.
    end_checked: bool,
    /// The next offset to read, once known (resumed from, or read up to).
    position: Option<i64>,
    /// stop_at_end: the end is reached.
    done: bool,
    commit_interval: Duration,
    epoch: Instant,
    finished: Sender<TopicPartition>,
    /// The offset the next message should have (messages are handed on in offset
    /// order; see [`Self::read_block`]), once known.
    next_offset: Option<i64>,
    /// When the actor started: strays come only in its first moments.
    started: Instant,
}

impl Feed for KafkaFeed {
    fn resume(&mut self) -> Option<Resume> {
        let resume = self.resume_from_checkpoint();
        self.next_offset = self.position.or_else(|| {
            // Nothing committed: consumption starts at the beginning of the log.
            self.consumer
                .fetch_watermarks(&self.tp.0, self.tp.1, REQUEST_TIMEOUT)
                .ok()
                .map(|(low, _)| low)
        });
        if let (Some(e), None) = (self.end, self.position) {
            // Nothing committed: consumption starts at the beginning of the log.
            if let Ok((low, _)) =
                self.consumer
                    .fetch_watermarks(&self.tp.0, self.tp.1, REQUEST_TIMEOUT)
                && low >= e
            {
                tracing::info!(
                    low,
                    end = e,
                    "Kafka: the partition holds nothing before its end; finished."
                );
                self.position = Some(low);
            }
        }
        resume
    }

    fn next(&mut self, wait: Duration) -> Next {
        if self.done {
            std::thread::sleep(wait);
            return Next::Idle;
        }
        if self.at_end() {
            // Resumed at (or read up to) the end.
            self.done = true;
            return Next::End;
        }
        match self.read_block(wait) {
            Some((block, items)) => {
                self.position = block.offsets.last().map(|o| o + 1).or(self.position);
                Next::Block(Arc::new(block), items)
            }
            None => Next::Idle,
        }
    }

    fn checkpoint_interval(&self) -> Option<Duration> {
        Some(self.commit_interval)
    }

    fn checkpoint(&mut self, held: Held) -> Option<Checkpoint> {
        let position = self.position?;
        let metadata = Metadata {
            max_ts: held.max_ts,
            position,
            raised: held.raised,
            clocks: held.clocks,
            truncated: false,
            watch_from: held.watch_from,
        };
        let text = metadata.encode();
        if text.ends_with('t') {
            tracing::warn!(
                raised = metadata.raised.len(),
                device_clocks = metadata.clocks.len(),
                "Kafka: too many raised alerts or quiet devices' watermarks to checkpoint them all."
            );
        }
        Some(Checkpoint {
            topic: self.tp.0.clone(),
            partition: self.tp.1,
            generation: self.generation,
            offset: held.min_position.min(position),
            metadata: text,
        })
    }

    fn ended(&mut self) {
        // Its checkpoint is on its way: the main loop may count the partition done.
        let _ = self.finished.send(self.tp.clone());
    }
}

impl KafkaFeed {
    /// stop_at_end: whether the position is the end it had at the start.
    fn at_end(&mut self) -> bool {
        if self.end.is_none() {
            self.end = self.ends.get().and_then(|e| e.get(&self.tp).copied());
        }
        let (Some(e), Some(p)) = (self.end, self.position) else {
            return false;
        };
        p >= e && self.end_confirmed(p)
    }

    /// Whether `position`, at or past the end offset listed at start, is the end.
    /// Some brokers list it short (tansu 0.6 answers ListOffsets with the last
    /// batch's base offset + 1), so the first time, the end is compared with the high
    /// watermark of the fetch responses (waiting for one) and moved there if that is
    /// further.
    fn end_confirmed(&mut self, position: i64) -> bool {
        if self.end_checked {
            return true;
        }
        match cached_high_watermark(&self.consumer, &self.tp.0, self.tp.1) {
            None => false, // no fetch response yet
            Some(high) if high > position => {
                tracing::info!(
                    listed = self.end,
                    high,
                    "Kafka: the partition's end was listed short; reading to the fetch high watermark."
                );
                self.end = Some(high);
                self.end_checked = true;
                false
            }
            Some(_) => {
                self.end_checked = true;
                true
            }
        }
    }

    /// The committed offset and its metadata, if any.
    fn committed(&self) -> Option<(i64, String)> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.tp.0, self.tp.1);
        let committed = match self.consumer.committed_offsets(tpl, REQUEST_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka: cannot read the committed offset; librdkafka starts from its own.");
                return None;
            }
        };
        let elem = committed.find_partition(&self.tp.0, self.tp.1)?;
        match elem.offset() {
            Offset::Offset(o) => Some((o, elem.metadata().to_owned())),
            _ => None,
        }
    }

    /// The checkpoint to resume from: the latest record in the checkpoint topic when
    /// one is configured (it is never behind the committed offset; it is ahead only
    /// if a run stopped between writing it and committing), else the committed
    /// offset and its metadata.
    fn checkpoint_to_resume(&self) -> Option<(i64, String)> {
        let committed = self.committed();
        let Some(log) = &self.log else {
            if committed.is_some() {
                tracing::debug!("Kafka: checkpoint from the committed offset's metadata.");
            }
            return committed;
        };
        match log.read(&self.tp.0, self.tp.1, REQUEST_TIMEOUT) {
            Ok(Some((offset, metadata)))
                if committed.as_ref().is_none_or(|(c, _)| offset >= *c) =>
            {
                if committed.as_ref().map(|c| c.0) != Some(offset)
                    && let Err(e) = self.consumer.seek(
                        &self.tp.0,
                        self.tp.1,
                        Offset::Offset(offset),
                        REQUEST_TIMEOUT,
                    )
                {
                    tracing::warn!(error = %e, offset, "Kafka: cannot move to the checkpoint's offset; resuming from the committed one.");
                    return committed;
                }
                tracing::info!(offset, "Kafka: checkpoint read from the checkpoint topic.");
                Some((offset, metadata))
            }
            Ok(_) => committed,
            Err(e) => {
                tracing::warn!(error = %e, "Kafka: cannot read the checkpoint topic; resuming from the committed offset.");
                committed
            }
        }
    }

    /// The checkpoint to resume from, if there is one; its offset becomes the position.
    fn resume_from_checkpoint(&mut self) -> Option<Resume> {
        let (offset, metadata) = self.checkpoint_to_resume()?;
        self.position = Some(offset);
        match Metadata::decode(&metadata) {
            Some(m) => {
                if m.truncated {
                    tracing::warn!(
                        "Kafka: the checkpoint held only part of the raised alerts; some may be raised again."
                    );
                }
                tracing::info!(
                    offset,
                    position = m.position,
                    max_event_time = m.max_ts,
                    raised = m.raised.len(),
                    device_clocks = m.clocks.len(),
                    "Kafka: resuming from a checkpoint."
                );
                Some(Resume {
                    max_ts: m.max_ts,
                    position: m.position,
                    raised: m.raised,
                    clocks: m.clocks,
                    watch_from: m.watch_from,
                })
            }
            None if offset > 0 => {
                // Committed by another tool, or by a broker that drops commit metadata.
                tracing::warn!(
                    offset,
                    "Kafka: resuming from a committed offset without eventide's checkpoint metadata: windows open at that offset may be written again with only the events from there on."
                );
                None
            }
            None => None,
        }
    }

    /// Waits up to `wait` for a message, then takes what else is ready (up to a
    /// block's worth) into one block.
    fn read_block(&mut self, wait: Duration) -> Option<(Block, Vec<Item>)> {
        let mut b = BlockBuilder::default();
        while let Ok(m) = self.strays.try_recv() {
            self.next_offset = Some(m.offset() + 1);
            b.add(&m);
        }
        let mut wait = wait;
        while b.offsets.len() < MAX_BLOCK_MESSAGES && b.data.len() < BLOCK_SIZE {
            match self.queue.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    if self.next_offset.is_some_and(|next| m.offset() > next)
                        && self.started.elapsed() < STRAYS_SPAN
                    {
                        await_strays(&self.strays, &mut self.next_offset, &mut b, m.offset());
                    }
                    self.next_offset = Some(m.offset() + 1);
                    b.add(&m);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka: error reading the partition; librdkafka retries.");
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if b.offsets.is_empty() {
            return None;
        }
        let mut block = Block::new(
            b.data,
            self.origin.clone(),
            self.epoch.elapsed().as_nanos() as u64,
        );
        block.offsets = b.offsets;
        block.timestamps = b.stamps;
        Some((block, b.items))
    }
}

/// Messages before `offset` fetched before a partition's queue was split off come
/// through the main queue (as `strays`, a moment later): waits for them, so that a
/// device's events are handed on in offset order. Offsets may also skip (compaction,
/// transaction markers): the wait is bounded.
fn await_strays(
    strays: &Receiver<OwnedMessage>,
    next_offset: &mut Option<i64>,
    b: &mut BlockBuilder,
    offset: i64,
) {
    let deadline = Instant::now() + STRAYS_WAIT;
    while let Ok(m) = strays.recv_deadline(deadline) {
        *next_offset = Some(m.offset() + 1);
        b.add(&m);
        if m.offset() + 1 >= offset {
            return;
        }
    }
}

/// Messages gathered into one block: their payloads one after another, and per
/// message its offset and timestamp.
#[derive(Default)]
struct BlockBuilder {
    data: Vec<u8>,
    offsets: Vec<i64>,
    stamps: Vec<i64>,
    items: Vec<Item>,
}

impl BlockBuilder {
    /// Adds a message from the partition queue or a stray one from the main queue.
    fn add(&mut self, m: &impl Message) {
        let start = self.data.len();
        self.data.extend_from_slice(m.payload().unwrap_or_default());
        let msg = self.offsets.len() as u32;
        self.offsets.push(m.offset());
        self.stamps.push(m.timestamp().to_millis().unwrap_or(0));
        split_message(&self.data, start, self.data.len(), msg, &mut self.items);
    }
}

/// The consumer configuration: eventide's settings, then the user's properties.
pub(crate) fn consumer_config(s: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &s.brokers)
        .set("group.id", s.group_id())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in s.kafka_properties() {
        c.set(k, v);
    }
    c
}

/// Runs the source until `stop` is set or, with `stop_at_end`, until every partition is
/// consumed to its end. Returns whether the input was read to its end.
pub fn run(run: KafkaRun) -> Result<bool, KafkaSourceError> {
    let (finished_tx, finished_rx) = crossbeam_channel::unbounded();
    let topics: Vec<String> = run.source.topics.clone();
    let config = consumer_config(&run.source);
    let stop_at_end = run.source.stop_at_end.unwrap_or(false);

    // Partitions and (for stop_at_end) their end offsets, from a plain client.
    let probe: BaseConsumer<Probe> = config.create_with_context(Probe::default())?;
    let mut all: Vec<TopicPartition> = Vec::new();
    for t in &topics {
        let md = match probe.fetch_metadata(Some(t), REQUEST_TIMEOUT) {
            Ok(m) => m,
            Err(e) => return Err(explain(&probe, e)),
        };
        match md.topics().iter().find(|mt| mt.name() == t) {
            Some(mt) if mt.error().is_none() && !mt.partitions().is_empty() => {
                let topic: Arc<str> = Arc::from(t.as_str());
                all.extend(mt.partitions().iter().map(|p| (topic.clone(), p.id())));
            }
            _ => return Err(KafkaSourceError::NoTopic(t.clone())),
        }
    }
    all.sort();
    let ends = Arc::new(OnceLock::new());
    if stop_at_end && run.first_stage_done.is_none() {
        let _ = ends.set(end_offsets(&probe, &all)?);
    }
    drop(probe);
    let log = match &run.source.checkpoint_topic {
        None => None,
        Some(topic) => match CheckpointLog::open(
            &run.source.brokers,
            Some(&run.source.kafka_properties()),
            topic,
            run.source.group_id(),
            REQUEST_TIMEOUT,
        ) {
            Ok(log) => Some(Arc::new(log)),
            Err(e) => return Err(e.into()),
        },
    };
    run.host.partitions(all.len());

    let shared = Arc::new(Shared {
        slots: all
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, tp)| (tp, i))
            .collect(),
        ends,
        run,
        log,
        state: Mutex::new(State::default()),
        consumer: OnceLock::new(),
        finished_tx,
        finished_rx,
    });
    let consumer: Arc<BaseConsumer<Ctx>> = match config.create_with_context(Ctx(shared.clone())) {
        Ok(c) => Arc::new(c),
        Err(e) => return Err(e.into()),
    };
    let _ = shared.consumer.set(Arc::downgrade(&consumer));
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;

    let interval = shared.run.source.commit_interval();
    let mut next_commit = Instant::now() + interval;
    let mut next_end_check = Instant::now();
    let mut next_lag = Instant::now();
    let result = loop {
        if shared.run.stop.load(Ordering::Relaxed) {
            break Ok(false);
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            match m {
                Ok(m) => {
                    // Fetched before its partition got its own queue: hand it over.
                    let tp: TopicPartition = (Arc::from(m.topic()), m.partition());
                    let st = shared.state.lock();
                    match st.actors.get(&tp) {
                        Some(a) => {
                            let _ = a.strays.send(m.detach());
                        }
                        None => {
                            tracing::warn!(topic = %tp.0, partition = tp.1, offset = m.offset(), "Kafka: a message for a partition without an actor; it is read again after the next assignment.")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Kafka: consumer error; librdkafka retries."),
            }
        }
        if let Some(e) = shared.state.lock().failed.take() {
            break Err(KafkaSourceError::Actor(e));
        }
        if shared
            .state
            .lock()
            .actors
            .values()
            .any(|a| a.actor.is_finished())
        {
            // An actor stops by itself only when the sinks have gone.
            break Err(KafkaSourceError::SinksGone);
        }
        if Instant::now() >= next_commit {
            shared.commit(&consumer, None, CommitMode::Async);
            next_commit = Instant::now() + interval;
        }
        if stop_at_end
            && shared.ends.get().is_none()
            && shared
                .run
                .first_stage_done
                .as_ref()
                .is_some_and(|d| d.load(Ordering::Acquire))
        {
            // The first stage has forwarded the whole input: read to the end now.
            let _ = shared.ends.set(end_offsets(&*consumer, &all)?);
        }
        if Instant::now() >= next_lag {
            next_lag = Instant::now() + interval;
            publish_lag(&shared, &consumer);
        }
        if let Some(ends) = shared.ends.get() {
            while let Ok(tp) = shared.finished_rx.try_recv() {
                shared.state.lock().finished.insert(tp);
            }
            if Instant::now() >= next_end_check {
                next_end_check = Instant::now() + Duration::from_millis(250);
                if all_consumed(&shared, &consumer, ends) {
                    break Ok(true);
                }
            }
        }
    };
    // Stop every actor (each hands on what has closed), commit, leave the group.
    let parts: Vec<TopicPartition> = shared.state.lock().actors.keys().cloned().collect();
    shared.stop_actors(&parts);
    shared.commit(&consumer, None, CommitMode::Sync);
    consumer.unsubscribe();
    result
}

/// Each partition's end offset now.
fn end_offsets<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    all: &[TopicPartition],
) -> Result<HashMap<TopicPartition, i64>, KafkaSourceError> {
    let mut ends = HashMap::new();
    for tp in all {
        match client.fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT) {
            Ok((_, high)) => {
                ends.insert(tp.clone(), high);
            }
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(
        partitions = ends.len(),
        messages = ends.values().sum::<i64>(),
        "Kafka: reading every partition up to its current end."
    );
    Ok(ends)
}

/// Publishes the messages behind the ends of the partitions this member owns.
fn publish_lag(shared: &Shared, consumer: &BaseConsumer<Ctx>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    let lag: i64 = positions
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(pos) => cached_high_watermark(consumer, e.topic(), e.partition())
                .map(|high| (high - pos).max(0)),
            _ => cached_high_watermark(consumer, e.topic(), e.partition()),
        })
        .sum();
    let stats = &shared.run.stats;
    if shared.run.first_stage_done.is_some() {
        stats.lag_repartition.store(lag, Ordering::Relaxed);
    } else {
        stats.lag_input.store(lag, Ordering::Relaxed);
    }
}

/// Whether every partition is consumed to its end: by this instance, or (after a
/// rebalance) by another member of the group, as its committed offset shows.
fn all_consumed(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    ends: &HashMap<TopicPartition, i64>,
) -> bool {
    let (finished, owned): (HashSet<TopicPartition>, HashSet<TopicPartition>) = {
        let st = shared.state.lock();
        if !st.joined {
            // Before its first assignment a member knows nothing of the group: a
            // committed offset read now is no evidence that another member has
            // consumed a partition (a tansu broker once answered as if the group had
            // consumed everything, and the run ended having read nothing).
            return false;
        }
        (st.finished.clone(), st.actors.keys().cloned().collect())
    };
    let mut others = TopicPartitionList::new();
    for (tp, &end) in ends {
        if end <= 0 || finished.contains(tp) {
            continue;
        }
        if owned.contains(tp) {
            return false; // ours and not finished
        }
        others.add_partition(&tp.0, tp.1);
    }
    if others.count() == 0 {
        return true;
    }
    match consumer.committed_offsets(others, Duration::from_secs(5)) {
        Ok(c) => {
            let done = c.elements().iter().all(|e| match e.offset() {
                Offset::Offset(o) => ends
                    .get(&(Arc::from(e.topic()), e.partition()))
                    .is_some_and(|&end| o >= end),
                _ => false,
            });
            if done {
                tracing::info!(committed = ?c, "Kafka: the partitions left were consumed by other members.");
            }
            done
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_metadata_round_trips_and_rejects_foreign_text() {
        let r = Metadata {
            max_ts: 1_767_225_600_000,
            position: 42,
            raised: vec![0xabc, 0xffff_ffff_ffff],
            clocks: vec![(0x1234, 1_767_225_660_000), (0xffff_ffff_ffff, -5)],
            truncated: false,
            watch_from: 1_767_225_000_000,
        };
        assert_eq!(Metadata::decode(&r.encode()), Some(r));
        let none = Metadata {
            max_ts: i64::MIN,
            position: 0,
            raised: vec![],
            clocks: vec![],
            truncated: false,
            watch_from: i64::MIN,
        };
        assert_eq!(Metadata::decode(&none.encode()), Some(none));
        assert_eq!(Metadata::decode(""), None);
        assert_eq!(Metadata::decode("some other tool"), None);
        assert_eq!(Metadata::decode("eventide1;1;2;abc;c"), None);
        assert_eq!(Metadata::decode("eventide2;1;2;;abc;c"), None);
        // A checkpoint written before device watermarks were recorded.
        let old = Metadata::decode("eventide1;7;9;000000000abc;c").unwrap();
        assert_eq!(
            (old.max_ts, old.position, old.raised, old.clocks),
            (7, 9, vec![0xabc], vec![])
        );
    }

    #[test]
    fn too_many_raised_alerts_are_cut_to_fit_and_flagged() {
        let r = Metadata {
            max_ts: 1,
            position: 2,
            raised: (0..1000).collect(),
            clocks: vec![],
            truncated: false,
            watch_from: i64::MIN,
        };
        let m = r.encode();
        assert!(m.len() <= MAX_METADATA, "{}", m.len());
        let back = Metadata::decode(&m).unwrap();
        assert!(back.truncated);
        assert!(back.raised.len() > 300 && back.raised.len() < 1000);
        assert_eq!(back.raised[..10], r.raised[..10]);
    }

    /// A host for tests that start no actor.
    struct NoActors;

    impl Host for NoActors {
        fn epoch(&self) -> Instant {
            Instant::now()
        }
        fn partitions(&self, _n: usize) {}
        fn start(&self, _slot: usize, _name: String, _feed: Box<dyn Feed>) -> Actor {
            unreachable!("this test assigns no partition")
        }
        fn stop(&self, _actor: Actor) -> bool {
            true
        }
    }

    /// stop_at_end ends on other members' committed offsets only once the group has
    /// assigned this member something: before that, committed offsets at every end
    /// are no reason to stop (a run on tansu once ended there, having read nothing).
    #[test]
    fn other_members_commits_count_only_after_the_first_assignment() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 2, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        for p in 0..2 {
            for _ in 0..3 {
                producer
                    .send(BaseRecord::<(), _>::to("t").partition(p).payload("{}"))
                    .unwrap();
            }
        }
        producer.flush(Duration::from_secs(10)).unwrap();

        let cfg = crate::config::Config::parse(&format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopics = [\"t\"]\ngroup_id = \"g\"\nstop_at_end = true\n\n[[windows]]\nname = \"w\"\nkind = \"tumbling\"\nsize = \"1m\"\n"
        ))
        .unwrap();
        // Another member consumed both partitions to their ends and committed.
        let crate::config::SourceConfig::Kafka(source) = &cfg.source else {
            unreachable!("a kafka config")
        };
        let other: BaseConsumer = consumer_config(source).create().unwrap();
        let mut done = TopicPartitionList::new();
        for p in 0..2 {
            done.add_partition_offset("t", p, Offset::Offset(3))
                .unwrap();
        }
        other.commit(&done, CommitMode::Sync).unwrap();

        let (_durable_tx, durable) = crossbeam_channel::unbounded();
        let (finished_tx, finished_rx) = crossbeam_channel::unbounded();
        let ends: HashMap<TopicPartition, i64> = (0..2).map(|p| ((Arc::from("t"), p), 3)).collect();
        let shared = Arc::new(Shared {
            run: KafkaRun {
                source: source.clone(),
                stop: Arc::default(),
                durable,
                host: Arc::new(NoActors),
                stats: Arc::default(),
                first_stage_done: None,
            },
            slots: HashMap::new(),
            ends: Arc::new(OnceLock::from(ends.clone())),
            state: Mutex::new(State::default()),
            log: None,
            consumer: OnceLock::new(),
            finished_tx,
            finished_rx,
        });
        let consumer: BaseConsumer<Ctx> = consumer_config(source)
            .create_with_context(Ctx(shared.clone()))
            .unwrap();
        assert!(!all_consumed(&shared, &consumer, &ends), "before joining");
        shared.state.lock().joined = true;
        assert!(all_consumed(&shared, &consumer, &ends), "after joining");
    }
}
