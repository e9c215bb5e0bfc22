//! The live board: what a running pipeline shows of itself (counts, open windows,
//! devices, retained closed windows and alerts, sink counters, its phase), below every
//! component that writes or reads it. The runtime, the sinks and the sources write it;
//! the query side (`sql`) reads it. It imports none of them.
//!
//! ```text
//!  partition actor ──every snapshot_interval──▶ ArcSwap<PartitionSnapshot>  (one per partition)
//!  retention sink ──closed windows, alerts─────▶ Mutex<Retained>           (not the hot path)
//!  queries ── load() / lock-and-clone Arcs ────▶ RecordBatches for DataFusion
//! ```
//!
//! A partition builds its snapshot (open windows, devices, counts) on its own thread
//! and swaps it in with one atomic pointer store; readers take the current `Arc`.
//! Neither side waits for the other, and each query sees one consistent snapshot
//! per partition.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use arrow_array::builder::{
    Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use crossbeam_channel::{Sender, TrySendError};
use hdrhistogram::Histogram;
use parking_lot::{Mutex, RwLock};

use crate::event::{Alert, AlertState, col, parse_rfc3339_ms, window_schema};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// `devices`: one row per device.
pub fn devices_schema() -> SchemaRef {
    static S: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("deviceId", DataType::Utf8, false),
            Field::new("partition", DataType::UInt64, false),
            Field::new("lastSeen", ts_type(), false),
            Field::new("lastType", DataType::Utf8, false),
            Field::new("lastValue", DataType::Float64, false),
            Field::new("events", DataType::UInt64, false),
            Field::new("duplicates", DataType::UInt64, false),
            Field::new("sequenceHighWater", DataType::UInt64, true),
            Field::new("gaps", DataType::UInt64, false),
            Field::new("skewed", DataType::UInt64, false),
            Field::new("watermark", ts_type(), true),
        ]))
    })
    .clone()
}

/// `alerts`: one row per alert state change.
pub fn alerts_schema() -> SchemaRef {
    static S: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("rule", DataType::Utf8, false),
            Field::new("deviceId", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("window", DataType::Utf8, false),
            Field::new("windowStart", ts_type(), false),
            Field::new("windowEnd", ts_type(), false),
            Field::new("value", DataType::Float64, false),
            Field::new("state", DataType::Utf8, false),
        ]))
    })
    .clone()
}

/// `stats`: one row per partition.
pub fn stats_schema() -> SchemaRef {
    static S: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let u = |n: &str| Field::new(n, DataType::UInt64, false);
        Arc::new(Schema::new(vec![
            u("partition"),
            u("received"),
            u("aggregated"),
            u("duplicate"),
            u("filtered"),
            u("late"),
            u("deadLettered"),
            u("skewed"),
            u("windows"),
            u("alerts"),
            u("openAlerts"),
            u("gaps"),
            u("splitDevices"),
            u("devices"),
            u("openWindows"),
            Field::new("watermark", ts_type(), true),
            Field::new("maxEventTime", ts_type(), true),
            Field::new("watermarkLagMs", DataType::Int64, true),
            Field::new("publishedAt", ts_type(), false),
        ]))
    })
    .clone()
}

/// The accounting: every input event ends in exactly one of aggregated, duplicate,
/// filtered, late or dead_lettered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub aggregated: u64,
    pub duplicate: u64,
    pub filtered: u64,
    pub late: u64,
    /// Invalid input (parse or schema) and events rejected for clock skew; late events
    /// are counted in `late`.
    pub dead_lettered: u64,
    /// Of `dead_lettered`: events more than `max_clock_skew` ahead of their
    /// partition's clock.
    pub skewed: u64,
    /// Sequence numbers skipped and never seen.
    pub gaps: u64,
    /// Closed window rows emitted.
    pub windows: u64,
    /// Alert state changes emitted.
    pub alerts: u64,
    /// Alerts raised and not cleared.
    pub open_alerts: u64,
    /// Devices whose events this partition saw after another partition of this
    /// instance had (input not partitioned by device: their windows are split).
    pub split_devices: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.received += o.received;
        self.aggregated += o.aggregated;
        self.duplicate += o.duplicate;
        self.filtered += o.filtered;
        self.late += o.late;
        self.dead_lettered += o.dead_lettered;
        self.skewed += o.skewed;
        self.gaps += o.gaps;
        self.windows += o.windows;
        self.alerts += o.alerts;
        self.open_alerts += o.open_alerts;
        self.split_devices += o.split_devices;
    }

    /// Whether the outcomes add up to what was received.
    pub fn balanced(&self) -> bool {
        self.received
            == self.aggregated + self.duplicate + self.filtered + self.late + self.dead_lettered
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "received={} aggregated={} duplicate={} filtered={} late={} dead_lettered={} gaps={} windows={} alerts={}",
            self.received,
            self.aggregated,
            self.duplicate,
            self.filtered,
            self.late,
            self.dead_lettered,
            self.gaps,
            self.windows,
            self.alerts
        )
    }
}

/// Counts a partition publishes after each block, for status lines and metrics.
#[derive(Debug, Default)]
pub struct PartitionStats {
    pub received: AtomicU64,
    pub aggregated: AtomicU64,
    pub duplicate: AtomicU64,
    pub filtered: AtomicU64,
    pub late: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub windows: AtomicU64,
    pub alerts: AtomicU64,
    pub gaps: AtomicU64,
    pub watermark: AtomicI64,
}

impl PartitionStats {
    pub fn load(&self) -> Counts {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            received: l(&self.received),
            aggregated: l(&self.aggregated),
            duplicate: l(&self.duplicate),
            filtered: l(&self.filtered),
            late: l(&self.late),
            dead_lettered: l(&self.dead_lettered),
            gaps: l(&self.gaps),
            windows: l(&self.windows),
            alerts: l(&self.alerts),
            open_alerts: 0,
            split_devices: 0,
            skewed: 0,
        }
    }
}

/// Every partition actor's published counts, for the status line. Actors of a Kafka
/// source come and go with rebalances; their entries stay, so totals cover the run.
#[derive(Debug, Default)]
pub struct StatsRegistry(parking_lot::Mutex<Vec<Arc<PartitionStats>>>);

impl StatsRegistry {
    pub fn add(&self, s: Arc<PartitionStats>) {
        self.0.lock().push(s);
    }
    /// Summed counts, and the lowest watermark of the actors that have one.
    pub fn totals(&self) -> (Counts, i64) {
        let mut c = Counts::default();
        let mut wm = i64::MAX;
        for s in self.0.lock().iter() {
            c.add(&s.load());
            let w = s.watermark.load(Ordering::Relaxed);
            if w > i64::MIN {
                wm = wm.min(w);
            }
        }
        (c, wm)
    }
}

impl PartitionStats {
    /// Publishes a partition's counts and watermark.
    pub fn store(&self, c: &Counts, wm: i64) {
        let s = |a: &std::sync::atomic::AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        s(&self.received, c.received);
        s(&self.aggregated, c.aggregated);
        s(&self.duplicate, c.duplicate);
        s(&self.filtered, c.filtered);
        s(&self.late, c.late);
        s(&self.dead_lettered, c.dead_lettered);
        s(&self.windows, c.windows);
        s(&self.alerts, c.alerts);
        s(&self.gaps, c.gaps);
        self.watermark.store(wm, Ordering::Relaxed);
    }
}

/// What one partition publishes.
#[derive(Debug, Clone)]
pub struct PartitionSnapshot {
    pub partition: usize,
    pub counts: Counts,
    /// `i64::MIN` before the first event.
    pub watermark: i64,
    pub max_event_time: i64,
    /// Open windows with their partial aggregates, in [`window_schema`].
    pub live: RecordBatch,
    /// In [`devices_schema`].
    pub devices: RecordBatch,
    /// Event arrival → window close, µs, since the start.
    pub latency: Histogram<u64>,
    /// Wall clock, epoch ms.
    pub published_ms: i64,
}

impl PartitionSnapshot {
    pub fn empty(partition: usize) -> Self {
        PartitionSnapshot {
            partition,
            counts: Counts::default(),
            watermark: i64::MIN,
            max_event_time: i64::MIN,
            live: RecordBatch::new_empty(window_schema()),
            devices: RecordBatch::new_empty(devices_schema()),
            latency: Histogram::new(3).expect("3 significant digits is valid"),
            published_ms: crate::event::now_ms(),
        }
    }

    /// The watermark, if the partition has one.
    pub fn watermark(&self) -> Option<i64> {
        (self.watermark > i64::MIN / 2 && self.watermark < crate::windows::END_OF_TIME)
            .then_some(self.watermark)
    }
}

/// Closed windows and alerts kept for queries, for `retention` of event time behind
/// the newest window end seen.
struct Retained {
    /// (largest windowEnd in the batch, batch).
    windows: VecDeque<(i64, RecordBatch)>,
    alerts: VecDeque<(i64, RecordBatch)>,
    newest: i64,
    retention: i64,
}

impl Retained {
    fn prune(&mut self) {
        let horizon = self.newest.saturating_sub(self.retention);
        while self.windows.front().is_some_and(|(end, _)| *end < horizon) {
            self.windows.pop_front();
        }
        while self.alerts.front().is_some_and(|(end, _)| *end < horizon) {
            self.alerts.pop_front();
        }
    }
}

/// Where the pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Running = 1,
    /// The input ended and everything was written.
    Finished = 2,
    /// A sink or the source failed.
    Failed = 3,
    Stopping = 4,
}

/// Counters the sink thread keeps (per batch, never per event).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub windows: AtomicU64,
    pub alerts: AtomicU64,
    pub dead_letters: AtomicU64,
    pub flushes: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
}

/// An HTTP ingest body for the `http` source.
pub struct IngestBody {
    pub data: Vec<u8>,
    /// Request number, for dead-letter `source` (`http:N`).
    pub request: u64,
}

/// Why an ingest body was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestRefused {
    /// The pipeline's queue is full: retry later (429).
    Busy,
    /// No http source, or the pipeline is not running (503).
    Unavailable,
}

/// What the two stages publish for `/metrics`: the first stage's events, and the
/// lag (messages behind the end of the partitions this instance owns) of each.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Events the first stage read, forwarded, and dead-lettered.
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Of `dead_lettered`: parse and schema errors.
    pub parse: AtomicU64,
    pub schema: AtomicU64,
    /// Messages behind the partitions' ends: the input topics (the first stage, or the
    /// only one), and the repartition topic (`-1`: not known yet, or no such stage).
    pub lag_input: AtomicI64,
    pub lag_repartition: AtomicI64,
    /// Whether there is a first stage.
    pub repartitioning: AtomicBool,
}

impl KafkaStats {
    pub fn new() -> Self {
        KafkaStats {
            lag_input: AtomicI64::new(-1),
            lag_repartition: AtomicI64::new(-1),
            ..KafkaStats::default()
        }
    }
}

/// The state shared between the pipeline and the query side.
pub struct Hub {
    /// One slot per partition actor; grows when a source learns how many it has.
    partitions: RwLock<Vec<ArcSwap<PartitionSnapshot>>>,
    retained: Mutex<Retained>,
    /// The counts of partitions this instance no longer owns (a Kafka rebalance took
    /// them away), so that counters never go down.
    retired: Mutex<Counts>,
    pub sinks: SinkMetrics,
    phase: AtomicU8,
    pub source_connected: AtomicBool,
    /// Kafka: partitions this instance owns now (an actor runs for each).
    pub partitions_assigned: AtomicU64,
    ingest: Mutex<Option<Sender<IngestBody>>>,
    pub ingest_requests: AtomicU64,
    pub ingest_refused: AtomicU64,
    pub snapshot_interval: Duration,
    pub started: Instant,
    /// The `[[reference]]` tables of the run, for the `reference` table and metrics.
    references: Mutex<Option<Arc<crate::reference::ReferenceSet>>>,
    /// Kafka: the lag of each stage and the repartition stage's events.
    pub kafka: Arc<KafkaStats>,
}

/// `reference`: one row per (table, device, type, column) with a value.
pub fn reference_schema() -> SchemaRef {
    static S: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("reference", DataType::Utf8, false),
            Field::new("deviceId", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, true),
            Field::new("column", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
        ]))
    })
    .clone()
}

impl Hub {
    /// The run's reference tables (set by the pipeline when it starts).
    pub fn set_references(&self, set: Arc<crate::reference::ReferenceSet>) {
        *self.references.lock() = Some(set);
    }

    pub fn references(&self) -> Option<Arc<crate::reference::ReferenceSet>> {
        self.references.lock().clone()
    }

    /// The `reference` table's rows: what is loaded now.
    pub fn reference_batch(&self) -> RecordBatch {
        use arrow_array::builder::{Float64Builder, StringBuilder};
        let (mut table, mut device, mut kind, mut column, mut value) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            Float64Builder::new(),
        );
        if let Some(set) = self.references() {
            for t in set.tables() {
                for (d, k, values) in t.iter() {
                    for (c, v) in t.columns.iter().zip(values) {
                        if v.is_nan() {
                            continue;
                        }
                        table.append_value(&*t.name);
                        device.append_value(d);
                        kind.append_option((!k.is_empty()).then_some(k));
                        column.append_value(c);
                        value.append_value(*v);
                    }
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(table.finish()),
            Arc::new(device.finish()),
            Arc::new(kind.finish()),
            Arc::new(column.finish()),
            Arc::new(value.finish()),
        ];
        RecordBatch::try_new(reference_schema(), columns)
            .expect("columns match the reference schema")
    }

    pub fn new(partitions: usize, retention: Duration, snapshot_interval: Duration) -> Self {
        Hub {
            partitions: RwLock::new(
                (0..partitions)
                    .map(|p| ArcSwap::from_pointee(PartitionSnapshot::empty(p)))
                    .collect(),
            ),
            retained: Mutex::new(Retained {
                windows: VecDeque::new(),
                alerts: VecDeque::new(),
                newest: i64::MIN,
                retention: retention.as_millis().min(i64::MAX as u128 / 4) as i64,
            }),
            retired: Mutex::new(Counts::default()),
            sinks: SinkMetrics::default(),
            phase: AtomicU8::new(Phase::Starting as u8),
            source_connected: AtomicBool::new(false),
            partitions_assigned: AtomicU64::new(0),
            ingest: Mutex::new(None),
            ingest_requests: AtomicU64::new(0),
            ingest_refused: AtomicU64::new(0),
            snapshot_interval,
            started: Instant::now(),
            references: Mutex::new(None),
            kafka: Arc::new(KafkaStats::new()),
        }
    }

    /// Makes room for `n` partitions (a Kafka source learns its count at start-up);
    /// slots beyond `n` are dropped.
    pub fn ensure_partitions(&self, n: usize) {
        let mut p = self.partitions.write();
        p.truncate(n);
        while p.len() < n {
            let i = p.len();
            p.push(ArcSwap::from_pointee(PartitionSnapshot::empty(i)));
        }
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.read().len()
    }

    /// Called by partition `p`'s actor: replaces its snapshot.
    pub fn publish(&self, snapshot: PartitionSnapshot) {
        let p = self.partitions.read();
        if let Some(slot) = p.get(snapshot.partition) {
            slot.store(Arc::new(snapshot));
        }
    }

    /// The partition of `slot` is no longer this instance's: its counts join the
    /// retired ones and its slot is emptied.
    pub fn retire(&self, slot: usize) {
        let p = self.partitions.read();
        if let Some(s) = p.get(slot) {
            let last = s.swap(Arc::new(PartitionSnapshot::empty(slot)));
            self.retired.lock().add(&last.counts);
        }
    }

    /// The counts of partitions retired so far (see [`Hub::retire`]).
    pub fn retired(&self) -> Counts {
        *self.retired.lock()
    }

    /// Every partition's current snapshot.
    pub fn snapshots(&self) -> Vec<Arc<PartitionSnapshot>> {
        self.partitions
            .read()
            .iter()
            .map(|s| s.load_full())
            .collect()
    }

    /// Called by the retention sink with each batch of closed windows.
    pub fn retain_windows(&self, batch: &RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let ends = batch
            .column(col::WINDOW_END)
            .as_any()
            .downcast_ref::<arrow_array::TimestampMillisecondArray>()
            .expect("window schema");
        let max = ends.values().iter().copied().max().unwrap_or(i64::MIN);
        let mut r = self.retained.lock();
        r.newest = r.newest.max(max);
        r.windows.push_back((max, batch.clone()));
        r.prune();
    }

    /// Called by the retention sink with each group of alerts.
    pub fn retain_alerts(&self, alerts: &[Alert]) {
        if alerts.is_empty() {
            return;
        }
        let batch = alerts_batch(alerts);
        let max = alerts
            .iter()
            .filter_map(|a| parse_rfc3339_ms(&a.window_end))
            .max()
            .unwrap_or(i64::MIN);
        let mut r = self.retained.lock();
        r.newest = r.newest.max(max);
        r.alerts.push_back((max, batch));
        r.prune();
    }

    /// The retained closed windows.
    pub fn closed_windows(&self) -> Vec<RecordBatch> {
        self.retained
            .lock()
            .windows
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The retained alerts.
    pub fn alerts(&self) -> Vec<RecordBatch> {
        self.retained
            .lock()
            .alerts
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Finished,
            3 => Phase::Failed,
            _ => Phase::Stopping,
        }
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Installs (or removes, with None) the queue of the `http` source.
    pub fn set_ingest(&self, tx: Option<Sender<IngestBody>>) {
        *self.ingest.lock() = tx;
    }

    /// Hands an HTTP body to the `http` source without waiting.
    pub fn ingest(&self, data: Vec<u8>) -> Result<(), IngestRefused> {
        let request = self.ingest_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = self.ingest.lock();
        let Some(tx) = guard.as_ref() else {
            return Err(IngestRefused::Unavailable);
        };
        match tx.try_send(IngestBody { data, request }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.ingest_refused.fetch_add(1, Ordering::Relaxed);
                Err(IngestRefused::Busy)
            }
            Err(TrySendError::Disconnected(_)) => Err(IngestRefused::Unavailable),
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("partitions", &self.partition_count())
            .finish_non_exhaustive()
    }
}

/// Alerts as a batch in [`alerts_schema`].
pub fn alerts_batch(alerts: &[Alert]) -> RecordBatch {
    let n = alerts.len();
    let mut id = StringBuilder::with_capacity(n, n * 48);
    let mut rule = StringBuilder::with_capacity(n, n * 12);
    let mut device = StringBuilder::with_capacity(n, n * 24);
    let mut kind = StringBuilder::with_capacity(n, n * 4);
    let mut window = StringBuilder::with_capacity(n, n * 12);
    let mut start = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut end = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut value = Float64Builder::with_capacity(n);
    let mut state = StringBuilder::with_capacity(n, n * 7);
    for a in alerts {
        id.append_value(&a.id);
        rule.append_value(&*a.rule);
        device.append_value(&a.device_id);
        kind.append_value(&a.kind);
        window.append_value(&*a.window);
        start.append_value(parse_rfc3339_ms(&a.window_start).unwrap_or(0));
        end.append_value(parse_rfc3339_ms(&a.window_end).unwrap_or(0));
        value.append_value(a.value);
        state.append_value(match a.state {
            AlertState::Raised => "raised",
            AlertState::Cleared => "cleared",
        });
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(rule.finish()),
        Arc::new(device.finish()),
        Arc::new(kind.finish()),
        Arc::new(window.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(value.finish()),
        Arc::new(state.finish()),
    ];
    RecordBatch::try_new(alerts_schema(), columns).expect("columns match the alerts schema")
}

/// The `stats` table from the partitions' snapshots.
pub fn stats_batch(snaps: &[Arc<PartitionSnapshot>]) -> RecordBatch {
    let n = snaps.len();
    let mut cols: Vec<UInt64Builder> = (0..15).map(|_| UInt64Builder::with_capacity(n)).collect();
    let mut wm = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut max_ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut lag = arrow_array::builder::Int64Builder::with_capacity(n);
    let mut published = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for s in snaps {
        let c = &s.counts;
        let values = [
            s.partition as u64,
            c.received,
            c.aggregated,
            c.duplicate,
            c.filtered,
            c.late,
            c.dead_lettered,
            c.skewed,
            c.windows,
            c.alerts,
            c.open_alerts,
            c.gaps,
            c.split_devices,
            s.devices.num_rows() as u64,
            s.live.num_rows() as u64,
        ];
        for (b, v) in cols.iter_mut().zip(values) {
            b.append_value(v);
        }
        let w = s.watermark();
        wm.append_option(w);
        max_ts.append_option((s.max_event_time > i64::MIN / 2).then_some(s.max_event_time));
        lag.append_option(w.map(|w| s.published_ms - w));
        published.append_value(s.published_ms);
    }
    let mut columns: Vec<ArrayRef> = cols
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    columns.push(Arc::new(wm.finish()));
    columns.push(Arc::new(max_ts.finish()));
    columns.push(Arc::new(lag.finish()));
    columns.push(Arc::new(published.finish()));
    RecordBatch::try_new(stats_schema(), columns).expect("columns match the stats schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_is_refused_when_the_queue_is_full_or_absent() {
        let hub = Hub::new(1, Duration::from_secs(60), Duration::from_millis(100));
        assert_eq!(hub.ingest(b"{}".to_vec()), Err(IngestRefused::Unavailable));
        let (tx, rx) = crossbeam_channel::bounded(1);
        hub.set_ingest(Some(tx));
        assert_eq!(hub.ingest(b"a".to_vec()), Ok(()));
        assert_eq!(hub.ingest(b"b".to_vec()), Err(IngestRefused::Busy));
        assert_eq!(rx.recv().unwrap().data, b"a");
        assert_eq!(hub.ingest(b"c".to_vec()), Ok(()));
        drop(rx);
        assert_eq!(hub.ingest(b"d".to_vec()), Err(IngestRefused::Unavailable));
        assert_eq!(hub.ingest_refused.load(Ordering::Relaxed), 1);
    }

    /// A partition taken away keeps its counts in the retired total: counters summed
    /// over the board never go down.
    #[test]
    fn a_retired_partition_keeps_its_counts() {
        let hub = Hub::new(2, Duration::from_secs(60), Duration::from_millis(100));
        let mut s = PartitionSnapshot::empty(1);
        s.counts.received = 7;
        s.counts.aggregated = 7;
        s.counts.open_alerts = 2;
        hub.publish(s);
        hub.retire(1);
        assert_eq!(hub.snapshots()[1].counts, Counts::default());
        let r = hub.retired();
        assert_eq!((r.received, r.aggregated), (7, 7));
        let metrics = crate::sql::metrics::render(&hub, &crate::sql::QueryStats::default());
        assert!(
            metrics.contains("eventide_events_received_total 7\n"),
            "{metrics}"
        );
        assert!(metrics.contains("eventide_alerts_open 0\n"), "{metrics}");
    }

    #[test]
    fn retained_windows_and_alerts_expire_by_event_time() {
        let hub = Hub::new(1, Duration::from_secs(60), Duration::from_millis(100));
        let batch = |end: i64| {
            use arrow_array::{Float64Array, StringArray, TimestampMillisecondArray, UInt64Array};
            let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
            let t = |v: i64| {
                Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone("UTC")) as ArrayRef
            };
            let f = || Arc::new(Float64Array::from(vec![1.0])) as ArrayRef;
            RecordBatch::try_new(
                window_schema(),
                vec![
                    s("w"),
                    s("d"),
                    s("T"),
                    t(end - 1000),
                    t(end),
                    Arc::new(UInt64Array::from(vec![1])),
                    f(),
                    f(),
                    f(),
                    f(),
                ],
            )
            .unwrap()
        };
        hub.retain_windows(&batch(10_000));
        hub.retain_windows(&batch(50_000));
        assert_eq!(hub.closed_windows().len(), 2);
        hub.retain_windows(&batch(75_000)); // 10s end is now more than 60s behind
        let ends: Vec<usize> = hub.closed_windows().iter().map(|b| b.num_rows()).collect();
        assert_eq!(ends, vec![1, 1]);
    }
}
