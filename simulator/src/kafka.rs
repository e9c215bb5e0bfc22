//! `--kafka-brokers`: messages go to a Kafka topic, keyed by deviceId by default, so
//! that all events of a device land in one partition (eventide keeps a device's windows
//! in the actor of its partition). A batch holding several devices is then split into
//! one batch per device, in order; a message without a readable deviceId is sent
//! without a key. `--kafka-keys first` and `none` send what gateways and unkeyed
//! clients do instead (see [`KafkaKeys`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use serde_json::value::RawValue;

#[derive(Default)]
pub struct Counts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl ClientContext for Counts {}

impl ProducerContext for Counts {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
    }
}

/// How messages are keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KafkaKeys {
    /// By deviceId; a batch mixing devices is split per device (what eventide's
    /// `kafka` source expects).
    #[default]
    Device,
    /// Each message whole, keyed by its first event's deviceId (as IoT gateways
    /// send batches mixing devices).
    First,
    /// No key, partitions in turn (round robin, as Event Hubs clients send without
    /// a partition key).
    None,
}

pub struct KafkaOut {
    producer: ThreadedProducer<Counts>,
    topic: String,
    keys: KafkaKeys,
    /// [`KafkaKeys::None`]: the topic's partition count, and the next one's turn.
    round_robin: (i32, i32),
    /// Messages handed to the producer.
    pub sent: u64,
}

impl KafkaOut {
    pub fn new(brokers: &str, topic: &str, props: &[(String, String)]) -> Result<Self, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.kbytes", "262144");
        for (k, v) in props {
            c.set(k, v);
        }
        Ok(KafkaOut {
            producer: c.create_with_context(Counts::default())?,
            topic: topic.to_owned(),
            keys: KafkaKeys::Device,
            round_robin: (0, 0),
            sent: 0,
        })
    }

    /// Keys messages as `keys` says.
    pub fn with_keys(mut self, keys: KafkaKeys) -> Result<Self, KafkaError> {
        self.keys = keys;
        if keys == KafkaKeys::None {
            let md = self
                .producer
                .client()
                .fetch_metadata(Some(&self.topic), Duration::from_secs(30))?;
            let n = md
                .topics()
                .first()
                .map_or(0, |t| t.partitions().len() as i32);
            self.round_robin = (n.max(1), 0);
        }
        Ok(self)
    }

    /// Sends one generated line (without its newline).
    pub fn send_line(&mut self, line: &[u8]) -> Result<(), KafkaError> {
        match self.keys {
            KafkaKeys::Device => {}
            KafkaKeys::First => return self.send(device_id(line), line),
            KafkaKeys::None => return self.send(None, line),
        }
        if line.first() == Some(&b'[')
            && let Ok(elements) = serde_json::from_slice::<Vec<&RawValue>>(line)
        {
            // Group the batch by device, keeping first-appearance order.
            let mut groups: Vec<(Option<&[u8]>, Vec<&RawValue>)> = Vec::new();
            for el in elements {
                let d = device_id(el.get().as_bytes());
                match groups.iter_mut().find(|(k, _)| *k == d) {
                    Some((_, v)) => v.push(el),
                    None => groups.push((d, vec![el])),
                }
            }
            let mut buf = Vec::with_capacity(line.len());
            for (key, els) in groups {
                buf.clear();
                buf.push(b'[');
                for (i, el) in els.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(el.get().as_bytes());
                }
                buf.push(b']');
                self.send(key, &buf)?;
            }
            return Ok(());
        }
        self.send(device_id(line), line)
    }

    fn send(&mut self, key: Option<&[u8]>, payload: &[u8]) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        } else if self.keys == KafkaKeys::None {
            let (n, next) = self.round_robin;
            record = record.partition(next);
            self.round_robin.1 = (next + 1) % n;
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits for every message to be delivered; returns (delivered, failed, last error).
    pub fn finish(self) -> (u64, u64, Option<String>) {
        while self.producer.in_flight_count() > 0 {
            if self.producer.flush(Duration::from_secs(30)).is_err() {
                eprintln!(
                    "eventide-simulator: {} messages not yet delivered; waiting",
                    self.producer.in_flight_count()
                );
            }
        }
        let c = self.producer.context();
        (
            c.delivered.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.last_error.lock().ok().and_then(|e| e.clone()),
        )
    }
}

/// The value of the first `"deviceId":"…"` member, if it has no escapes.
fn device_id(msg: &[u8]) -> Option<&[u8]> {
    const NEEDLE: &[u8] = b"\"deviceId\":\"";
    let at = msg.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    let len = msg[at..].iter().position(|&c| c == b'"' || c == b'\\')?;
    (msg.get(at + len) == Some(&b'"')).then(|| &msg[at..at + len])
}

#[cfg(test)]
mod tests {
    use super::device_id;

    #[test]
    fn device_id_is_read_from_the_event() {
        assert_eq!(
            device_id(br#"{"eventId":"x","deviceId":"dev-1","value":1}"#),
            Some(&b"dev-1"[..])
        );
        assert_eq!(device_id(br#"{"deviceId":"a\"b"}"#), None);
        assert_eq!(device_id(b"garbage"), None);
    }
}
