//! Checkpoints kept as records in a topic (`source.checkpoint_topic`), for brokers
//! that accept offset-commit metadata but do not return it (tansu 0.6, for one).
//!
//! One record per checkpoint: key `{group}/{topic}/{partition}`, value
//! `{offset};{metadata}` where `metadata` is the [`super::kafka::Metadata`] encoding
//! that commit metadata would carry. The records are written (and their delivery
//! awaited) before the offsets are committed, so a record is never behind its
//! commit; the latest record of a partition is its checkpoint. The topic is created
//! compacted with one partition when missing; a broker that does not compact only
//! grows it, and reading a checkpoint looks back from the end in chunks, so the
//! cost of a resume does not grow with the topic's age.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::kafka::{KafkaWriter, cached_high_watermark, producer_config};
use crate::output::Checkpoint;

/// Records read back per step when looking for a partition's latest checkpoint.
const CHUNK: i64 = 10_000;
/// Attempts to deliver a batch of checkpoint records.
const MAX_RETRIES: u32 = 5;

/// Where checkpoints are written and read back.
pub struct CheckpointLog {
    topic: String,
    group: String,
    client: ClientConfig,
    /// Written from the thread that commits; read from actor threads.
    writer: Mutex<KafkaWriter>,
}

impl CheckpointLog {
    /// Connects, creating the topic (compacted, one partition) if it is missing.
    pub fn open(
        brokers: &str,
        properties: Option<&BTreeMap<String, String>>,
        topic: &str,
        group: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let client = crate::kafka::client_config(brokers, properties);
        ensure_topic(&client, topic, timeout)?;
        let writer = KafkaWriter::new(
            &producer_config(brokers, properties)
                .set("acks", "all")
                .clone(),
            MAX_RETRIES,
        )?;
        Ok(CheckpointLog {
            topic: topic.to_owned(),
            group: group.to_owned(),
            client,
            writer: Mutex::new(writer),
        })
    }

    fn key(&self, topic: &str, partition: i32) -> String {
        format!("{}/{topic}/{partition}", self.group)
    }

    /// Writes the checkpoints and waits until the broker has them all. Returns an
    /// error (and the offsets must not be committed) if any is not delivered.
    pub fn write(&self, batch: &[Checkpoint]) -> Result<(), String> {
        let mut writer = self.writer.lock();
        for c in batch {
            let key = self.key(&c.topic, c.partition);
            let value = format!("{};{}", c.offset, c.metadata);
            writer.send(&self.topic, Some(key.as_bytes()), value.as_bytes(), 0);
        }
        writer.flush();
        let mut failed = Vec::new();
        writer.take_failed(&mut failed);
        match failed.first() {
            None => Ok(()),
            Some(d) => Err(format!(
                "{} checkpoint records not written: {}",
                failed.len(),
                d.error
            )),
        }
    }

    /// The latest checkpoint of `topic`/`partition`: its offset and metadata.
    pub fn read(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<Option<(i64, String)>, KafkaError> {
        let key = self.key(topic, partition);
        let consumer: BaseConsumer = self
            .client
            .clone()
            // assign() needs a group id; this client never joins or commits.
            .set("group.id", format!("{}.checkpoint-reader", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let md = consumer.fetch_metadata(Some(&self.topic), timeout)?;
        let parts = md
            .topics()
            .first()
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        let mut best: Option<(i64, String)> = None;
        for p in 0..parts {
            let (low, high) = consumer.fetch_watermarks(&self.topic, p, timeout)?;
            let mut end = high;
            let mut tail = true;
            while end > low {
                let start = (end - CHUNK).max(low);
                let found = self.latest_in(&consumer, p, start, end, tail, &key, timeout)?;
                tail = false;
                if let Some(found) = found {
                    // Keys land in one partition; within it, the last record wins.
                    best = Some(found);
                    break;
                }
                end = start;
            }
            if best.is_some() {
                break;
            }
        }
        Ok(best)
    }

    /// The last record with `key` among offsets `start..end` of partition `p`; for
    /// the `tail` chunk, up to the end of the partition: `end` as listed, or the
    /// high watermark of the fetch responses if that is further (some brokers list
    /// ends short, see [`super::kafka`]).
    #[allow(clippy::too_many_arguments)]
    fn latest_in(
        &self,
        consumer: &BaseConsumer,
        p: i32,
        start: i64,
        mut end: i64,
        tail: bool,
        key: &str,
        timeout: Duration,
    ) -> Result<Option<(i64, String)>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, p, Offset::Offset(start))?;
        consumer.assign(&tpl)?;
        let deadline = Instant::now() + timeout;
        let mut found = None;
        let mut next = start;
        let mut fetched = !tail;
        while next < end || !fetched {
            if tail && let Some(high) = cached_high_watermark(consumer, &self.topic, p) {
                end = end.max(high);
                fetched = true;
            }
            if Instant::now() >= deadline {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(e)) => return Err(e),
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    if (tail || m.offset() < end)
                        && m.key() == Some(key.as_bytes())
                        && let Some(v) = m.payload().and_then(|v| std::str::from_utf8(v).ok())
                        && let Some((offset, metadata)) = v.split_once(';')
                        && let Ok(offset) = offset.parse()
                    {
                        found = Some((offset, metadata.to_owned()));
                    }
                }
            }
        }
        Ok(found)
    }
}

/// Creates `topic` (compacted, one partition) unless it exists.
fn ensure_topic(client: &ClientConfig, topic: &str, timeout: Duration) -> Result<(), KafkaError> {
    create_topic(client, topic, 1, true, "checkpoint", timeout).map(|_| ())
}

/// Creates `topic` with `partitions` (compacted or not) unless it exists; `what` it
/// is for, for the log. Returns its partition count.
pub(crate) fn create_topic(
    client: &ClientConfig,
    topic: &str,
    partitions: i32,
    compact: bool,
    what: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    let probe: BaseConsumer = client.create()?;
    let count = |probe: &BaseConsumer| -> Result<usize, KafkaError> {
        let md = probe.fetch_metadata(Some(topic), timeout)?;
        Ok(md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    };
    let n = count(&probe)?;
    if n > 0 {
        return Ok(n);
    }
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    if compact {
        new = new.set("cleanup.policy", "compact");
    }
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = futures::executor::block_on(admin.create_topics([&new], &opts))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "Kafka: created the {what} topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = t, error = %code, "Kafka: cannot create the {what} topic.")
                });
            }
        }
    }
    // The metadata may lag the creation for a moment.
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(&probe)?;
        if n > 0 || Instant::now() >= deadline {
            return Ok(n.max(partitions as usize));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
