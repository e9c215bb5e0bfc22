//! librdkafka plumbing shared by the Kafka source, its checkpoint log, the `kafka` sink
//! and the Kafka dead-letter sink: the producer that knows what it gave up on
//! ([`KafkaWriter`]), client configs, and a cached high-watermark read.
//!
//! Records are keyed by `deviceId` (so one device's records stay in order in one
//! partition) and sent through librdkafka's idempotent producer, which retries
//! transient failures itself without duplicating. A record whose delivery still
//! fails is sent again, up to `max_retries` times; then it becomes a dead letter
//! (reason `sink`, with the error). `flush` returns only when every record sent
//! before it is delivered or given up on, which is what lets the pipeline commit
//! Kafka offsets after a flush: offsets never pass records that are not delivered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::event::{DeadLetter, Reason, now_ms, rfc3339_ms};

/// A delivery that failed: what to send again.
#[derive(Debug)]
struct Failed {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    attempt: u32,
    error: String,
}

/// Delivery reports, written by librdkafka's callback (run inside `poll`/`flush` on
/// the sink thread; the mutex is never contended).
#[derive(Default)]
pub struct Deliveries {
    failed: Mutex<Vec<Failed>>,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// The attempt number of the record.
    type DeliveryOpaque = Box<u32>;

    fn delivery(&self, result: &DeliveryResult<'_>, attempt: Box<u32>) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.failed.lock().push(Failed {
                    topic: m.topic().to_owned(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    attempt: *attempt,
                    error: e.to_string(),
                });
            }
        }
    }
}

/// A plain client config (admin requests, metadata): the brokers and properties.
pub fn client_config(brokers: &str, props: Option<&BTreeMap<String, String>>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in props.into_iter().flatten() {
        c.set(k, v);
    }
    c
}

/// Builds a producer client config: the given brokers and properties, idempotence on.
pub fn producer_config(brokers: &str, props: Option<&BTreeMap<String, String>>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    for (k, v) in props.into_iter().flatten() {
        c.set(k, v);
    }
    c
}

/// A producer that knows which records it has given up on.
pub struct KafkaWriter {
    producer: BaseProducer<Deliveries>,
    max_retries: u32,
    /// Records given up on, waiting for `take_failed`.
    gave_up: Vec<DeadLetter>,
    /// How long one flush waits before it logs and waits again.
    flush_wait: Duration,
    /// Records sent again after a failed delivery, since the start.
    retries: u64,
}

impl KafkaWriter {
    pub fn new(config: &ClientConfig, max_retries: u32) -> Result<Self, KafkaError> {
        let producer: BaseProducer<Deliveries> =
            config.create_with_context(Deliveries::default())?;
        Ok(KafkaWriter {
            producer,
            max_retries,
            gave_up: Vec::new(),
            flush_wait: Duration::from_secs(10),
            retries: 0,
        })
    }

    pub fn deliveries(&self) -> &Arc<Deliveries> {
        self.producer.context()
    }

    /// Queues one record. Blocks (serving delivery reports) while librdkafka's queue
    /// is full: backpressure.
    pub fn send(&mut self, topic: &str, key: Option<&[u8]>, payload: &[u8], attempt: u32) {
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(attempt)).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, r)) => {
                    // Not queued at all (e.g. a message over the size limit): no
                    // retry can help.
                    self.give_up(topic, r.payload.unwrap_or_default(), &e.to_string());
                    break;
                }
            }
        }
        self.producer.poll(Duration::ZERO);
    }

    fn give_up(&mut self, topic: &str, payload: &[u8], error: &str) {
        tracing::warn!(
            topic,
            error,
            "Kafka: giving up on a record after its retries (a sink dead-letters it; a checkpoint is not committed)."
        );
        self.gave_up.push(DeadLetter {
            reason: Reason::Sink,
            error: format!("kafka topic {topic}: {error}"),
            payload: String::from_utf8_lossy(payload).into_owned(),
            source: format!("kafka:{topic}"),
            received_at: rfc3339_ms(now_ms()),
        });
    }

    /// Waits until every queued record is delivered or given up on, sending failed
    /// ones again (up to `max_retries` times, with a growing pause).
    pub fn flush(&mut self) {
        loop {
            let started = Instant::now();
            while self.producer.in_flight_count() > 0 {
                if let Err(e) = self.producer.flush(self.flush_wait) {
                    tracing::warn!(error = %e, in_flight = self.producer.in_flight_count(), waited = ?started.elapsed(), "Kafka sink: records not delivered yet; still waiting.");
                }
            }
            let failed = std::mem::take(&mut *self.producer.context().failed.lock());
            if failed.is_empty() {
                return;
            }
            let (retry, give_up): (Vec<Failed>, Vec<Failed>) = failed
                .into_iter()
                .partition(|f| f.attempt < self.max_retries);
            for f in give_up {
                self.give_up(&f.topic, &f.payload, &f.error);
            }
            let pause = retry
                .iter()
                .map(|f| 100u64 << f.attempt.min(6))
                .max()
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(pause));
            for f in retry {
                tracing::debug!(
                    topic = f.topic,
                    attempt = f.attempt + 1,
                    error = f.error,
                    "Kafka sink: sending a record again."
                );
                self.send(&f.topic, f.key.as_deref(), &f.payload, f.attempt + 1);
                self.retries += 1;
            }
        }
    }

    /// Records sent again after a failed delivery, since the start.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Records given up on since the last call.
    pub fn take_failed(&mut self, into: &mut Vec<DeadLetter>) {
        into.append(&mut self.gave_up);
    }
}

/// The high watermark of a partition as last seen in a fetch response (librdkafka's
/// cache; no request), if known.
pub fn cached_high_watermark<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a
    // NUL-terminated string that outlives the call; low/high are valid out-pointers.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            rdkafka::consumer::Consumer::client(consumer).native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::{KafkaWriter, producer_config};

    /// A record whose delivery fails for good (message too large) is sent again, and
    /// each resend is counted (the `eventide_sink_retries_total` metric sums these).
    #[test]
    fn failed_deliveries_are_sent_again_and_counted() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 1, 1).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 2],
        );
        let config = producer_config(&cluster.bootstrap_servers(), None);
        let mut w = KafkaWriter::new(&config, 5).unwrap();
        w.send("out", Some(b"d"), b"{}", 0);
        w.flush();
        assert_eq!(w.retries(), 2);
        let mut gave_up = Vec::new();
        w.take_failed(&mut gave_up);
        assert!(gave_up.is_empty(), "delivered on the third attempt");
    }
}
