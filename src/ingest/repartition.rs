//! `[source] partitioning = "any"`: the first stage of a Kafka source whose messages
//! are not partitioned by device (gateway batches mixing devices, unkeyed messages).
//! It de-batches every input message and writes each event, keyed by its deviceId,
//! to the repartition topic; the second stage is the usual Kafka source reading that
//! topic, whose partition actors then own every event of their devices.
//!
//! ```text
//!  input topics ─(group {group_id})─▶ repartition thread: split, decode, key by deviceId
//!                                        │ partition = ingest::partition_of(deviceId, n)
//!                                        ▼
//!  repartition topic ─(group {group_id}-by-device)─▶ ingest::kafka (partition actors)
//! ```
//!
//! **Nothing is lost.** An input message's offset is committed only once every event
//! taken from it is delivered to the repartition topic (librdkafka's idempotent
//! producer), or dead-lettered and written by the sinks: invalid events are
//! dead-lettered here, with the input's `topic/partition/offset` as `source`; an
//! event the producer gives up on is dead-lettered with reason `sink`. After a crash
//! the events of messages read but not committed are forwarded again; the second
//! stage's dedupe removes them, so the results are those of one clean run.
//!
//! Each input message in flight holds a slot: a counter of its events not yet
//! delivered, which the delivery callback decrements (no lock per event). A
//! partition's committable offset follows its oldest message still in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::decode::{DecodeError, Decoder, Fields, MAX_VALUES};
use super::kafka::KafkaSourceError;
use super::{Item, partition_of, split_message};
use crate::config::source::Kafka as KafkaConfig;
use crate::event::{DeadLetter, Reason, now_ms, rfc3339_ms};
use crate::kafka::cached_high_watermark;
use crate::live::KafkaStats;
use crate::output::Output;

/// Longest time a request to the brokers may take at start-up or at a rebalance.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Input messages in flight at most (each holds a slot until its offset is passed).
const SLOTS: usize = 1 << 16;
/// Longest a partition with nothing fetched (and not known to be caught up) holds
/// back the others (see [`next_message`]).
const MAX_WAIT: Duration = Duration::from_millis(500);
/// How long the sinks may take to confirm the dead letters before a commit.
const SINK_WAIT: Duration = Duration::from_secs(120);

/// Everything the first stage needs.
pub struct Stage {
    /// The user's source: its topics, group and client settings.
    pub source: KafkaConfig,
    pub fields: Arc<Fields>,
    pub stop: Arc<AtomicBool>,
    /// To the sinks, for dead letters (and the acknowledgement that they are written).
    pub out: Sender<Output>,
    pub stats: Arc<KafkaStats>,
    /// stop_at_end: set once every input partition is forwarded to its end and
    /// committed (by this instance or another member).
    pub done: Arc<AtomicBool>,
    /// The repartition topic's partition count ([`ensure_topic`]).
    pub partitions: usize,
}

/// Creates the repartition topic if missing (as many partitions as the input topics
/// together); returns its partition count.
pub fn ensure_topic(source: &KafkaConfig) -> Result<usize, KafkaSourceError> {
    let client = crate::kafka::client_config(&source.brokers, Some(&source.kafka_properties()));
    let probe: BaseConsumer = client.create()?;
    let mut inputs = 0;
    for t in &source.topics {
        let md = probe.fetch_metadata(Some(t), REQUEST_TIMEOUT)?;
        match md.topics().iter().find(|mt| mt.name() == t) {
            Some(mt) if mt.error().is_none() && !mt.partitions().is_empty() => {
                inputs += mt.partitions().len();
            }
            _ => return Err(KafkaSourceError::NoTopic(t.clone())),
        }
    }
    let topic = source.repartition_topic();
    let n = super::checkpoint_log::create_topic(
        &client,
        &topic,
        inputs as i32,
        false,
        "repartition",
        REQUEST_TIMEOUT,
    )?;
    tracing::info!(
        topic,
        partitions = n,
        "Kafka: events are re-keyed by device through the repartition topic."
    );
    Ok(n)
}

/// The second stage's source: the repartition topic, read by group
/// `{group_id}-by-device`, with the user's client settings.
pub fn second_stage(source: &KafkaConfig) -> KafkaConfig {
    let mut s = source.clone();
    s.topics = vec![source.repartition_topic()];
    s.group_id = Some(format!("{}-by-device", source.group_id()));
    s.partitioning = None;
    s.repartition_topic = None;
    s
}

/// Delivery reports: each record's opaque is its input message's slot.
struct Deliveries {
    pending: Box<[AtomicU32]>,
    /// Records the producer gave up on (rare; the callback runs on the stage's thread
    /// inside `poll`, so the mutex is never contended).
    failed: Mutex<Vec<DeadLetter>>,
    delivered: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => self.failed.lock().push(DeadLetter {
                reason: Reason::Sink,
                error: format!("repartition topic {}: {e}", m.topic()),
                payload: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                source: format!("kafka:{}", m.topic()),
                received_at: rfc3339_ms(now_ms()),
            }),
        }
        self.pending[slot].fetch_sub(1, Ordering::Release);
    }
}

type Tp = (Arc<str>, i32);

/// The input messages in flight, per partition, oldest first: (offset, slot).
#[derive(Default)]
struct Tracker {
    flight: HashMap<Tp, VecDeque<(i64, u32)>>,
    free: Vec<u32>,
    /// Per partition: the offset to commit next (past every message done), and the
    /// last one committed.
    done: HashMap<Tp, i64>,
    committed: HashMap<Tp, i64>,
}

impl Tracker {
    /// Moves each partition's committable offset past the messages whose events are
    /// all delivered; frees their slots.
    fn advance(&mut self, pending: &[AtomicU32]) {
        for (tp, q) in &mut self.flight {
            while let Some(&(offset, slot)) = q.front() {
                if pending[slot as usize].load(Ordering::Acquire) != 0 {
                    break;
                }
                q.pop_front();
                self.free.push(slot);
                self.done.insert(tp.clone(), offset + 1);
            }
        }
    }

    /// The offsets to commit (of `only` these partitions, when given).
    fn to_commit(&self, only: Option<&[Tp]>) -> Vec<(Tp, i64)> {
        self.done
            .iter()
            .filter(|(tp, o)| {
                only.is_none_or(|only| only.contains(tp)) && self.committed.get(*tp) != Some(o)
            })
            .map(|(tp, &o)| (tp.clone(), o))
            .collect()
    }

    /// Forgets partitions revoked from this member (their slots stay taken until their
    /// deliveries are reported, then are freed by [`Self::reclaim`]).
    fn forget(&mut self, parts: &[Tp]) -> Vec<u32> {
        let mut slots = Vec::new();
        for tp in parts {
            if let Some(q) = self.flight.remove(tp) {
                slots.extend(q.into_iter().map(|(_, s)| s));
            }
            self.done.remove(tp);
            self.committed.remove(tp);
        }
        slots
    }
}

/// The consumer's context: on a revocation, what was delivered is committed first,
/// so that the next owner forwards as little again as it can.
struct Ctx {
    shared: Arc<Shared>,
}

struct Shared {
    tracker: Mutex<Tracker>,
    producer: OnceLock<Weak<BaseProducer<Deliveries>>>,
    out: Sender<Output>,
    /// Dead letters sent to the sinks since the last commit.
    dead_sent: AtomicBool,
    /// Slots of revoked partitions, freed once their deliveries are reported.
    orphans: Mutex<Vec<u32>>,
    joined: AtomicBool,
    stats: Arc<KafkaStats>,
    /// The assigned input partitions (changed by the rebalance callbacks, which run
    /// on the stage's thread inside `consumer.poll`).
    parts: Mutex<HashMap<Tp, Part>>,
    /// Set once the consumer exists: the assign callback splits off queues.
    consumer: OnceLock<Weak<BaseConsumer<Ctx>>>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts: Vec<Tp> = tpl
                .elements()
                .iter()
                .map(|e| (Arc::from(e.topic()), e.partition()))
                .collect();
            tracing::info!(partitions = ?parts, "Kafka repartition: input partitions revoked; committing what was delivered.");
            if let Some(p) = self.shared.producer.get().and_then(Weak::upgrade) {
                let _ = p.flush(REQUEST_TIMEOUT);
                let _ = self.shared.send_dead(&p, Vec::new());
                self.shared.tracker.lock().advance(&p.context().pending);
            }
            self.shared.commit(consumer, Some(&parts), CommitMode::Sync);
            let slots = self.shared.tracker.lock().forget(&parts);
            self.shared.orphans.lock().extend(slots);
            let mut owned = self.shared.parts.lock();
            for tp in &parts {
                owned.remove(tp);
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            // Recorded only once the broker has taken them: a failed commit is made
            // again at the next interval.
            Ok(()) => {
                let mut t = self.shared.tracker.lock();
                for e in offsets.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        t.committed.insert((Arc::from(e.topic()), e.partition()), o);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Kafka repartition: offset commit failed; it is made again at the next interval.")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.joined.store(true, Ordering::Relaxed);
            tracing::info!(
                partitions = tpl.count(),
                "Kafka repartition: input partitions assigned."
            );
            let Some(consumer) = self.shared.consumer.get().and_then(Weak::upgrade) else {
                return;
            };
            let mut parts = self.shared.parts.lock();
            for e in tpl.elements() {
                let tp: Tp = (Arc::from(e.topic()), e.partition());
                if parts.contains_key(&tp) {
                    continue;
                }
                match consumer.split_partition_queue(e.topic(), e.partition()) {
                    Some(queue) => {
                        parts.insert(
                            tp,
                            Part {
                                queue,
                                strays: VecDeque::new(),
                                head: None,
                                position: None,
                                waiting: None,
                            },
                        );
                    }
                    None => tracing::error!(
                        topic = e.topic(),
                        partition = e.partition(),
                        "Kafka repartition: cannot read the partition on its own queue."
                    ),
                }
            }
        }
    }
}

impl Shared {
    /// Sends `dead` and the events the producer gave up on to the sinks (before the
    /// offsets of their messages are committed). `false` if the sinks are gone.
    fn send_dead(&self, producer: &BaseProducer<Deliveries>, mut dead: Vec<DeadLetter>) -> bool {
        let failed = std::mem::take(&mut *producer.context().failed.lock());
        if !failed.is_empty() {
            tracing::warn!(
                events = failed.len(),
                "Kafka repartition: the producer gave up on events; they are dead-lettered."
            );
            self.stats
                .dead_lettered
                .fetch_add(failed.len() as u64, Ordering::Relaxed);
            dead.extend(failed);
        }
        if dead.is_empty() {
            return true;
        }
        self.dead_sent.store(true, Ordering::Relaxed);
        self.out
            .send(Output {
                dead,
                ..Output::default()
            })
            .is_ok()
    }

    /// Commits the offsets past every message done (of `only` these partitions).
    /// Dead letters sent since the last commit are first confirmed written.
    fn commit(&self, consumer: &BaseConsumer<Ctx>, only: Option<&[Tp]>, mode: CommitMode) {
        if self.dead_sent.swap(false, Ordering::Relaxed) {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let sent = self
                .out
                .send(Output {
                    ack: Some(tx),
                    ..Output::default()
                })
                .is_ok();
            if !sent || rx.recv_timeout(SINK_WAIT).is_err() {
                tracing::warn!(
                    "Kafka repartition: the sinks did not confirm the dead letters; offsets are not committed."
                );
                self.dead_sent.store(true, Ordering::Relaxed);
                return;
            }
        }
        let batch = self.tracker.lock().to_commit(only);
        if batch.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::with_capacity(batch.len());
        for (tp, o) in &batch {
            let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*o));
        }
        // An asynchronous commit is recorded by the commit callback once the broker
        // has taken it; a synchronous one, now.
        match consumer.commit(&tpl, mode) {
            Ok(()) if matches!(mode, CommitMode::Sync) => {
                let mut t = self.tracker.lock();
                for (tp, o) in batch {
                    t.committed.insert(tp, o);
                }
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Kafka repartition: offset commit failed; it is made again at the next interval.")
            }
        }
    }
}

/// Runs the first stage until `stop` is set or, with `stop_at_end`, until every
/// input partition is forwarded to the end it had at the start. Returns whether the
/// input was read to its end.
pub fn run(stage: Stage) -> Result<bool, KafkaSourceError> {
    let source = &stage.source;
    let partitions = stage.partitions;
    let topic = source.repartition_topic();
    stage.stats.repartitioning.store(true, Ordering::Relaxed);

    let consumer_config = super::kafka::consumer_config(source);
    // stop_at_end: each input partition's end now.
    let ends: Option<HashMap<Tp, i64>> = if source.stop_at_end.unwrap_or(false) {
        let probe: BaseConsumer = consumer_config.create()?;
        let mut ends = HashMap::new();
        for t in &source.topics {
            let md = probe.fetch_metadata(Some(t), REQUEST_TIMEOUT)?;
            let Some(mt) = md.topics().iter().find(|mt| mt.name() == t) else {
                return Err(KafkaSourceError::NoTopic(t.clone()));
            };
            for p in mt.partitions() {
                let (_, high) = probe.fetch_watermarks(t, p.id(), REQUEST_TIMEOUT)?;
                ends.insert((Arc::from(t.as_str()), p.id()), high);
            }
        }
        Some(ends)
    } else {
        None
    };

    // The user's client properties apply to this producer too (librdkafka ignores
    // the consumer-only ones, with a warning).
    let producer_config =
        crate::kafka::producer_config(&source.brokers, Some(&source.kafka_properties()));
    let producer: Arc<BaseProducer<Deliveries>> =
        Arc::new(producer_config.create_with_context(Deliveries {
            pending: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            failed: Mutex::new(Vec::new()),
            delivered: AtomicU64::new(0),
        })?);
    let shared = Arc::new(Shared {
        tracker: Mutex::new(Tracker {
            free: (0..SLOTS as u32).rev().collect(),
            ..Tracker::default()
        }),
        producer: OnceLock::new(),
        out: stage.out.clone(),
        dead_sent: AtomicBool::new(false),
        orphans: Mutex::new(Vec::new()),
        joined: AtomicBool::new(false),
        stats: stage.stats.clone(),
        parts: Mutex::new(HashMap::new()),
        consumer: OnceLock::new(),
    });
    let _ = shared.producer.set(Arc::downgrade(&producer));
    let consumer: Arc<BaseConsumer<Ctx>> = Arc::new(consumer_config.create_with_context(Ctx {
        shared: shared.clone(),
    })?);
    let _ = shared.consumer.set(Arc::downgrade(&consumer));
    let names: Vec<&str> = source.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;

    let mut forward = Forward {
        decoder: Decoder::new(stage.fields.clone()),
        values: [0.0; MAX_VALUES],
        items: Vec::new(),
        dead: Vec::new(),
        topic,
        partitions,
        stats: stage.stats.clone(),
    };
    let interval = source.commit_interval();
    let mut next_commit = Instant::now() + interval;
    let mut next_end_check = Instant::now();
    let result = loop {
        if stage.stop.load(Ordering::Relaxed) {
            break Ok(false);
        }
        // Forward while messages come, up to a tenth of a second, then do the rest.
        let until = Instant::now() + interval.min(Duration::from_millis(100));
        // Nothing to forward last time: wait on the consumer a moment (serving the
        // group's callbacks), not in a busy loop.
        let mut wait = Duration::ZERO;
        while Instant::now() < until {
            // Messages fetched before their partition got its own queue: all of them
            // before that queue is read (they come first).
            while let Some(r) = consumer.poll(std::mem::take(&mut wait)) {
                let Ok(m) = r else { continue };
                let tp: Tp = (Arc::from(m.topic()), m.partition());
                match shared.parts.lock().get_mut(&tp) {
                    Some(p) => p.strays.push_back(m.detach()),
                    None => {
                        tracing::warn!(topic = %tp.0, partition = tp.1, "Kafka repartition: a message for a partition not assigned; read again by its owner.")
                    }
                }
            }
            let Some(m) = next_message(&shared, &consumer) else {
                producer.poll(Duration::ZERO);
                wait = Duration::from_millis(2);
                continue;
            };
            let slot = loop {
                if let Some(s) = shared.tracker.lock().free.pop() {
                    break s;
                }
                // Every slot in flight: wait for deliveries.
                producer.poll(Duration::from_millis(50));
                shared.tracker.lock().advance(&producer.context().pending);
            };
            let tp: Tp = (Arc::from(m.topic()), m.partition());
            let pending = &producer.context().pending[slot as usize];
            // Held at one until every event is queued.
            pending.store(1, Ordering::Relaxed);
            forward.message(&m, &producer, slot);
            pending.fetch_sub(1, Ordering::Release);
            // In offset order, so that the committed offset never passes a message in
            // flight (strays come first, see above).
            let mut t = shared.tracker.lock();
            let q = t.flight.entry(tp).or_default();
            let at = q.partition_point(|&(o, _)| o < m.offset());
            q.insert(at, (m.offset(), slot));
        }
        producer.poll(Duration::ZERO);
        if !shared.send_dead(&producer, std::mem::take(&mut forward.dead)) {
            break Err(KafkaSourceError::SinksGone);
        }
        {
            let mut t = shared.tracker.lock();
            t.advance(&producer.context().pending);
            let mut orphans = shared.orphans.lock();
            let pending = &producer.context().pending;
            orphans.retain(|&s| {
                let busy = pending[s as usize].load(Ordering::Acquire) != 0;
                if !busy {
                    t.free.push(s);
                }
                busy
            });
        }
        if Instant::now() >= next_commit {
            shared.commit(&consumer, None, CommitMode::Async);
            next_commit = Instant::now() + interval;
            let lag: i64 = shared
                .parts
                .lock()
                .iter()
                .filter_map(|(tp, p)| {
                    let high = cached_high_watermark(&consumer, &tp.0, tp.1)?;
                    Some((high - p.position?).max(0))
                })
                .sum();
            stage.stats.lag_input.store(lag, Ordering::Relaxed);
        }
        if let Some(ends) = &ends
            && Instant::now() >= next_end_check
        {
            next_end_check = Instant::now() + Duration::from_millis(50);
            if forwarded_to_end(&shared, &consumer, &producer, ends) {
                tracing::info!("Kafka repartition: every input partition is forwarded to its end.");
                stage.done.store(true, Ordering::Release);
                break Ok(true);
            }
        }
    };
    // Deliver what is queued, commit, leave the group.
    if producer.flush(REQUEST_TIMEOUT).is_err() {
        tracing::warn!(
            "Kafka repartition: events still undelivered at shutdown; their messages are not committed and are forwarded again."
        );
    }
    let _ = shared.send_dead(&producer, std::mem::take(&mut forward.dead));
    shared.tracker.lock().advance(&producer.context().pending);
    shared.commit(&consumer, None, CommitMode::Sync);
    shared.parts.lock().clear();
    consumer.unsubscribe();
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    tracing::info!(
        received = n(&stage.stats.received),
        forwarded = n(&stage.stats.forwarded),
        dead_lettered = n(&stage.stats.dead_lettered),
        delivered = n(&producer.context().delivered),
        "Kafka repartition: stopped."
    );
    result
}

/// An assigned input partition: its own queue, and the message read next.
struct Part {
    queue: PartitionQueue<Ctx>,
    /// Fetched for it before its queue was split off.
    strays: VecDeque<OwnedMessage>,
    head: Option<OwnedMessage>,
    /// The next offset to read, once known.
    position: Option<i64>,
    /// Since when it has had no message while not known to be caught up.
    waiting: Option<Instant>,
}

/// The next message to forward: of the assigned partitions' next messages, the one
/// with the oldest Kafka timestamp, so that partitions read in step (as Kafka Streams
/// picks records across a task's partitions) and a device's events, spread over
/// partitions, reach the repartition topic in about the order they were produced.
/// A partition with nothing fetched that is not known to be caught up (its position
/// below the high watermark of the last fetch, or not known) is waited for, up to
/// [`MAX_WAIT`]; one caught up is not.
fn next_message(shared: &Shared, consumer: &BaseConsumer<Ctx>) -> Option<OwnedMessage> {
    let mut parts = shared.parts.lock();
    let now = Instant::now();
    let mut blocked = false;
    let mut best: Option<(i64, &Tp)> = None;
    for (tp, p) in parts.iter_mut() {
        if p.head.is_none() {
            // A partition already waited on gets a moment for its fetch to land.
            let wait = if p.waiting.is_some() {
                Duration::from_millis(1)
            } else {
                Duration::ZERO
            };
            p.head = p.strays.pop_front().or_else(|| match p.queue.poll(wait) {
                Some(Ok(m)) => Some(m.detach()),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka repartition: error reading a partition; librdkafka retries.");
                    None
                }
                None => None,
            });
        }
        match &p.head {
            Some(m) => {
                p.waiting = None;
                let ts = m.timestamp().to_millis().unwrap_or(i64::MIN);
                if best.is_none_or(|(b, _)| ts < b) {
                    best = Some((ts, tp));
                }
            }
            None => {
                let caught_up = p.position.is_some_and(|pos| {
                    cached_high_watermark(consumer, &tp.0, tp.1).is_some_and(|high| pos >= high)
                });
                if !caught_up && now.duration_since(*p.waiting.get_or_insert(now)) < MAX_WAIT {
                    blocked = true;
                }
            }
        }
    }
    if blocked {
        return None;
    }
    let tp = best?.1.clone();
    let p = parts.get_mut(&tp)?;
    let m = p.head.take()?;
    p.position = Some(m.offset() + 1);
    Some(m)
}

/// stop_at_end: whether every input partition with messages is forwarded to its end
/// and committed, by this member or (after a rebalance) another.
fn forwarded_to_end(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    producer: &BaseProducer<Deliveries>,
    ends: &HashMap<Tp, i64>,
) -> bool {
    if !shared.joined.load(Ordering::Relaxed) {
        return false;
    }
    {
        let mut t = shared.tracker.lock();
        t.advance(&producer.context().pending);
        // Ours: read to the end and every message done.
        let ours_behind = shared.parts.lock().iter().any(|(tp, p)| {
            let (Some(pos), Some(&end)) = (p.position, ends.get(tp)) else {
                return false;
            };
            pos < end || t.done.get(tp).is_some_and(|&d| d < end)
        });
        if ours_behind || t.flight.values().any(|q| !q.is_empty()) {
            return false;
        }
    }
    shared.commit(consumer, None, CommitMode::Sync);
    let mut tpl = TopicPartitionList::new();
    for (tp, &end) in ends {
        if end > 0 {
            tpl.add_partition(&tp.0, tp.1);
        }
    }
    if tpl.count() == 0 {
        return true;
    }
    match consumer.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(c) => c.elements().iter().all(|e| match e.offset() {
            Offset::Offset(o) => ends
                .get(&(Arc::from(e.topic()), e.partition()))
                .is_some_and(|&end| o >= end),
            _ => false,
        }),
        Err(_) => false,
    }
}

/// De-batches, decodes and forwards one message at a time.
struct Forward {
    decoder: Decoder,
    values: super::decode::Values,
    items: Vec<Item>,
    dead: Vec<DeadLetter>,
    topic: String,
    partitions: usize,
    stats: Arc<KafkaStats>,
}

impl Forward {
    /// Queues each event of `m` for the repartition topic (counted in `slot`), and
    /// dead-letters the invalid ones.
    fn message(&mut self, m: &impl Message, producer: &BaseProducer<Deliveries>, slot: u32) {
        let data = m.payload().unwrap_or_default();
        self.items.clear();
        split_message(data, 0, data.len(), 0, &mut self.items);
        let pending = &producer.context().pending[slot as usize];
        let (mut forwarded, mut received) = (0u64, 0u64);
        for it in &self.items {
            received += 1;
            let raw = &data[it.start as usize..it.end as usize];
            let device = match self.decoder.decode_into(raw, &mut self.values) {
                Ok(ev) => ev.device_id,
                Err(e) => {
                    let (reason, counter) = match &e {
                        DecodeError::Parse(_) => (Reason::Parse, &self.stats.parse),
                        DecodeError::Schema(_) => (Reason::Schema, &self.stats.schema),
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let mut error = e.to_string();
                    if it.flags & Item::OVERSIZE != 0 {
                        error = format!("message longer than the limit: {error}");
                    }
                    self.dead.push(DeadLetter {
                        reason,
                        error,
                        payload: String::from_utf8_lossy(raw).into_owned(),
                        source: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
                        received_at: rfc3339_ms(now_ms()),
                    });
                    continue;
                }
            };
            let partition = partition_of(&device, self.partitions) as i32;
            pending.fetch_add(1, Ordering::Relaxed);
            let mut record = BaseRecord::with_opaque_to(&self.topic, slot as usize)
                .key(device.as_bytes())
                .payload(raw)
                .partition(partition);
            if let Some(ts) = m.timestamp().to_millis() {
                record = record.timestamp(ts);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        forwarded += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, r)) => {
                        // Not queued at all: no retry can help.
                        pending.fetch_sub(1, Ordering::Relaxed);
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        self.dead.push(DeadLetter {
                            reason: Reason::Sink,
                            error: format!("repartition topic {}: {e}", self.topic),
                            payload: String::from_utf8_lossy(r.payload.unwrap_or_default())
                                .into_owned(),
                            source: format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
                            received_at: rfc3339_ms(now_ms()),
                        });
                        break;
                    }
                }
            }
        }
        self.stats.received.fetch_add(received, Ordering::Relaxed);
        self.stats.forwarded.fetch_add(forwarded, Ordering::Relaxed);
    }
}
