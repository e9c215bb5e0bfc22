//! A partition: every piece of state for its devices, as a state machine with no
//! thread of its own. The runtime's actor loop (`super::runtime`) drives it.
//!
//! In: blocks of events, idle ticks and the end of input, each with the time it is
//! (the clock is passed in, so that tests can drive it).
//! Out: [`Output`]s for the sinks (closed windows as a `RecordBatch`, alerts, dead
//! letters, device updates), at most one per block or watermark advance, never per
//! event; snapshots for the live board when asked.
//!
//! Per event: decode → type filter → dedupe → watermark → (close due windows) →
//! pane update. No locks, no logging, no metrics calls, and no allocation except
//! for a device, type or series seen for the first time, or a rejected event's
//! dead-letter record. Counts are kept in locals; the runtime publishes them per block.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, Float64Array, RecordBatch, TimestampMillisecondArray, UInt64Array};
use hashbrown::HashMap;
use hdrhistogram::Histogram;

use super::Settings;
use crate::dedupe::{EventIdSet, PreHashedMap, SeqCheck, SeqTracker, id_hash};
use crate::event::{DeadLetter, DeviceUpdate, Reason, now_ms, rfc3339_ms, window_schema};
use crate::hint::{prefetch, prefetch_line};
use crate::ingest::decode::{DecodeError, Decoder, Event, MAX_VALUES, Values};
use crate::ingest::feed::Held;
use crate::ingest::{Block, Item};
use crate::live::{Counts, PartitionSnapshot, devices_schema};
use crate::output::Output;
use crate::rules::{RuleEngine, SeriesNames};
use crate::windows::{END_OF_TIME, WindowDef, WindowEngine, WindowOutput};

/// Types whose series a device keeps at hand (see [`DeviceState::series`]).
const TYPES_AT_HAND: usize = 4;

/// What the `devices` table shows of one device (updated per accepted event: a few
/// stores into a dense vector, no allocation), and its series of the first few types.
/// One cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct DeviceState {
    /// Latest `createdAt` seen; `i64::MIN` before the first accepted event.
    last_ts: i64,
    last_value: f64,
    last_seq: u64,
    events: u64,
    duplicates: u64,
    /// Series of the latest reading (gives its type).
    last_series: u32,
    /// Listed in `Partition::changed` (its latest reading is not sent yet).
    changed: bool,
    /// The device's series of type number t < [`TYPES_AT_HAND`] (`u32::MAX` until
    /// its first reading): found without a lookup in the series map.
    series: [u32; TYPES_AT_HAND],
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState {
            last_ts: i64::MIN,
            last_value: 0.0,
            last_series: u32::MAX,
            last_seq: 0,
            events: 0,
            duplicates: 0,
            changed: false,
            series: [u32::MAX; TYPES_AT_HAND],
        }
    }
}

impl DeviceState {
    /// The device's series of type number `t`, if it is at hand (see `series`).
    #[inline]
    fn series_at_hand(&self, t: u32) -> Option<u32> {
        self.series
            .get(t as usize)
            .copied()
            .filter(|&s| s != u32::MAX)
    }
}

/// A device's own event time (`pipeline.event_time = "device"`). Half a cache line,
/// beside (not in) [`DeviceState`]: partition mode keeps none.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct DeviceClock {
    /// The device's watermark: its newest event time − `max_out_of_order`, or later
    /// while it is idle; `i64::MIN` before its first event.
    wm: i64,
    /// The next close point (see [`WindowEngine::close_grid`]) past the windows closed
    /// so far; `i64::MIN` before the first close.
    due: i64,
    /// Its newest series; the others follow through `Partition::series_next`.
    first_series: u32,
    /// The activity period it was last seen in, or [`IDLE`].
    stamp: u32,
    /// It holds data in a window that has not closed.
    open: bool,
}

impl Default for DeviceClock {
    fn default() -> Self {
        DeviceClock {
            wm: i64::MIN,
            due: i64::MIN,
            first_series: NO_SERIES,
            stamp: IDLE,
            open: false,
        }
    }
}

/// A device's key in checkpoints: 48 bits of a hash of its id (independent of the
/// dense numbering, which a restart does not reproduce).
pub fn device_key(device: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(device.as_bytes()) >> 16
}

/// Closed-window rows per step of [`Partition::finish`].
const FINISH_ROWS: usize = 16_384;

/// No series: the end of a device's list of series.
const NO_SERIES: u32 = u32::MAX;
/// [`DeviceClock::stamp`] of a device whose watermark follows the wall clock.
const IDLE: u32 = u32::MAX;

/// Dense numbers for devices, types and (device, type) series.
///
/// Device names are kept once, end to end in one string (a fleet has millions: a
/// boxed name per device, twice over, took five times the bytes of the names), and
/// found through a table of device numbers hashed by name.
#[derive(Default)]
pub struct Interner {
    /// Every device name, end to end; device d's ends at `device_ends[d]`.
    device_text: String,
    device_ends: Vec<usize>,
    devices: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    types: HashMap<Box<str>, u32>,
    type_names: Vec<Box<str>>,
    /// Series of the types a device does not keep at hand (see
    /// [`DeviceState::series`]); the others are found there.
    series: PreHashedMap<u64, u32>,
    /// Per series: (device, type).
    series_keys: Vec<(u32, u32)>,
}

impl Interner {
    #[inline]
    pub fn intern_device(&mut self, name: &str) -> u32 {
        let hash = std::hash::BuildHasher::hash_one(&self.hasher, name);
        let (text, ends) = (&self.device_text, &self.device_ends);
        let name_of = |d: u32| {
            let d = d as usize;
            &text[if d == 0 { 0 } else { ends[d - 1] }..ends[d]]
        };
        if let Some(&d) = self.devices.find(hash, |&d| name_of(d) == name) {
            return d;
        }
        let d = self.device_ends.len() as u32;
        let hasher = &self.hasher;
        self.devices.insert_unique(hash, d, |&d| {
            std::hash::BuildHasher::hash_one(hasher, name_of(d))
        });
        self.device_text.push_str(name);
        self.device_ends.push(self.device_text.len());
        d
    }

    #[inline]
    pub fn intern_type(&mut self, kind: &str) -> u32 {
        match self.types.get(kind) {
            Some(&t) => t,
            None => {
                let t = self.type_names.len() as u32;
                self.types.insert(kind.into(), t);
                self.type_names.push(kind.into());
                t
            }
        }
    }

    /// A new series of `device` and type number `t` (from [`Self::intern_type`]),
    /// for a type the device keeps at hand: found there from now on.
    #[inline]
    pub fn new_series(&mut self, device: u32, t: u32) -> u32 {
        let s = self.series_keys.len() as u32;
        self.series_keys.push((device, t));
        s
    }

    /// The series of `device` and type number `t`, for a type the device does not
    /// keep at hand.
    #[inline]
    pub fn intern_series(&mut self, device: u32, t: u32) -> u32 {
        let key = (device as u64) << 32 | t as u64;
        let next = self.series_keys.len() as u32;
        let s = *self.series.entry(key).or_insert(next);
        if s == next {
            self.series_keys.push((device, t));
        }
        s
    }

    pub fn series_count(&self) -> usize {
        self.series_keys.len()
    }

    /// Bytes held: the names, the tables that find them, and the series tables.
    pub fn heap_bytes(&self) -> usize {
        let types: usize = self.type_names.iter().map(|n| n.len() + 32).sum();
        self.device_text.capacity()
            + self.device_ends.capacity() * std::mem::size_of::<usize>()
            + self.devices.capacity() * (std::mem::size_of::<u32>() + 1)
            + 2 * types
            + self.series.capacity() * (std::mem::size_of::<(u64, u32)>() + 1)
            + self.series_keys.capacity() * 8
    }

    pub fn device_count(&self) -> usize {
        self.device_ends.len()
    }

    /// The device of a series.
    pub fn series_device(&self, series: u32) -> u32 {
        self.series_keys[series as usize].0
    }

    pub fn device_name(&self, device: u32) -> &str {
        let d = device as usize;
        let from = if d == 0 { 0 } else { self.device_ends[d - 1] };
        &self.device_text[from..self.device_ends[d]]
    }
}

impl SeriesNames for Interner {
    fn device(&self, series: u32) -> &str {
        self.device_name(self.series_keys[series as usize].0)
    }
    fn kind(&self, series: u32) -> &str {
        &self.type_names[self.series_keys[series as usize].1 as usize]
    }
}

/// Where a partition's bytes go (from the capacities of its tables), for the
/// benchmarks' bytes-per-device figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Device, type and series names and numbers.
    pub names: usize,
    /// Per-device state: latest reading, counters and the device's clock.
    pub devices: usize,
    /// Sequence high-water marks and bitmaps.
    pub sequences: usize,
    /// Event ids remembered for dedupe.
    pub event_ids: usize,
    /// Window panes and per-series window scratch.
    pub windows: usize,
}

impl Memory {
    pub fn total(&self) -> usize {
        self.names + self.devices + self.sequences + self.event_ids + self.windows
    }

    pub fn add(&mut self, o: &Memory) {
        self.names += o.names;
        self.devices += o.devices;
        self.sequences += o.sequences;
        self.event_ids += o.event_ids;
        self.windows += o.windows;
    }
}

/// What a partition reports when it stops.
#[derive(Debug)]
pub struct PartitionReport {
    pub partition: usize,
    pub counts: Counts,
    /// Event arrival → window close, µs.
    pub latency: Histogram<u64>,
    /// Entry of the event that closed them (its Kafka timestamp, or when its block
    /// was read) → windows / alerts handed to the sinks, µs.
    pub emit: EmitLatency,
    pub devices: usize,
    /// Its state's bytes at their largest: when the input ended (before the last
    /// windows closed), or now if it did not end.
    pub memory: Memory,
}

/// How long after the event that closed them windows and alerts leave the actor:
/// from the event's entry into the system (its Kafka timestamp, else when its block
/// was read) to the hand-over to the sinks, µs. Closes caused by end of input or by
/// an idle partition's clock are not counted.
#[derive(Debug, Clone)]
pub struct EmitLatency {
    pub windows: Histogram<u64>,
    pub alerts: Histogram<u64>,
}

impl Default for EmitLatency {
    fn default() -> Self {
        let h = || Histogram::new(3).expect("3 significant digits is valid");
        EmitLatency {
            windows: h(),
            alerts: h(),
        }
    }
}

impl EmitLatency {
    pub fn add(&mut self, other: &EmitLatency) {
        let _ = self.windows.add(&other.windows);
        let _ = self.alerts.add(&other.alerts);
    }
}

/// An item decoded ahead of its turn (see [`Partition::on_block`]).
enum Ahead<'a> {
    /// The event, its id's hash (0 when ids are not deduplicated) and its device's and
    /// type's numbers (`None` if its type is filtered out).
    Event(Event<'a>, u64, Option<(u32, u32)>),
    Rejected(Reason, String),
}

/// One partition's state. See the module docs.
pub struct Partition {
    id: usize,
    settings: Arc<Settings>,
    names: Interner,
    decoder: Decoder,
    event_ids: EventIdSet,
    seqs: SeqTracker,
    windows: WindowEngine,
    rules: RuleEngine,
    /// Highest event time seen.
    max_ts: i64,
    /// max_ts - max_out_of_order, or later when idle; never moves back.
    wm: i64,
    counts: Counts,
    rows: WindowOutput,
    alerts: Vec<crate::event::Alert>,
    dead: Vec<DeadLetter>,
    latency: Histogram<u64>,
    emit: EmitLatency,
    /// Closes since the last flush caused by an event: (its entry µs, windows, alerts).
    closed_by: Vec<(i64, u32, u32)>,
    epoch: Instant,
    /// The time it is, as the last call that passed the clock in said.
    now: Instant,
    /// When the last block came, and, once idle, up to when the watermark has
    /// followed the clock.
    last_event: Instant,
    idle_clock: Option<Instant>,
    /// Outputs built and not yet taken by the runtime.
    outbox: Vec<Output>,
    device_state: Vec<DeviceState>,
    /// Devices whose latest reading changed since the last output (kept only when a
    /// sink takes the `devices` stream).
    changed: Vec<u32>,
    /// Scratch for open-window snapshots.
    live_rows: WindowOutput,
    /// Offsets below this were read before the checkpoint this partition resumed from.
    replay_until: i64,
    /// For value lists (`[source.fields] value = [...]`): each value member's type
    /// number, and which members' types are kept (`pipeline.types`).
    metric_types: Vec<u32>,
    kept_metrics: u16,
    /// The values of the multi-metric events being decoded and processed.
    metric_values: [Values; 2],
    /// The input has sequence numbers (gaps are counted).
    sequenced: bool,
    /// Devices seen for the first time since the runtime last asked.
    new_devices: Vec<u32>,
    /// Of those, the ones another partition had seen first (counted by the runtime).
    split_devices: u64,
    /// The partition's event-time clock for the clock-skew guard: the median event time
    /// of the events of recent blocks (`i64::MIN` until the first block), and the
    /// latest event time accepted now (`clock + max_clock_skew`).
    clock: i64,
    skew_limit: i64,
    /// This block's event times (for the clock), and whether its devices' median
    /// event time was taken yet (see [`Self::skewed`]).
    block_times: Vec<i64>,
    block_checked: bool,
    /// Scratch values for [`Self::device_median`]'s decoding.
    probe_values: Values,
    /// Events rejected for clock skew, by device (rare: not in the device state).
    skewed_by_device: HashMap<u32, u64>,
    /// Per-device event time (empty in partition mode): each device's clock, and per
    /// series the next series of its device.
    clocks: Vec<DeviceClock>,
    series_next: Vec<u32>,
    /// [`WindowEngine::close_grid`].
    grid: i64,
    /// Idle devices: the wall clock is cut into periods of a quarter of
    /// `idle_timeout`; `stamp` is the current one's number. A device is listed in
    /// `active` once per period it sends in; a device whose last period is
    /// `idle_timeout` old with data in open windows moves to `idle`, where its
    /// watermark follows the wall clock (from `idle_pass` on) until those close.
    stamp: u32,
    active: std::collections::VecDeque<(u32, u32)>,
    idle: Vec<u32>,
    idle_pass: Instant,
    /// The next device [`Self::finish`] closes.
    finish_at: usize,
    /// [`Self::memory`] when the input ended.
    memory_at_end: Option<Memory>,
    /// Device watermarks from the checkpoint resumed from, by [`device_key`]: each
    /// applies when its device is first seen (see [`Self::held`]).
    resumed_clocks: HashMap<u64, i64>,
    /// The reference tables rules read, as of `tables_generation` of the set.
    tables: Vec<Arc<crate::reference::Table>>,
    tables_generation: u64,
}

impl Partition {
    /// A partition numbered `id`; `epoch` is when the run started (block arrival
    /// times count from it) and the clock's first reading.
    pub fn new(id: usize, settings: Arc<Settings>, epoch: Instant) -> Self {
        let tables_generation = settings.references.generation();
        let tables = settings.references.tables();
        let mut windows = WindowEngine::new(&settings.windows, settings.lateness_ms);
        if settings.per_device {
            windows.chain_series();
        }
        let grid = windows.close_grid();
        let rules = RuleEngine::new(&settings.rules, windows.defs())
            .expect("rules were validated with the config");
        let mut names = Interner::default();
        let fields = &settings.fields;
        let (mut metric_types, mut kept_metrics) = (Vec::new(), 0u16);
        if fields.multi() {
            for (i, name) in fields.values.iter().enumerate() {
                metric_types.push(names.intern_type(name));
                let kept = settings
                    .types
                    .as_ref()
                    .is_none_or(|types| types.iter().any(|t| t == name));
                if kept {
                    kept_metrics |= 1 << i;
                }
            }
        }
        Partition {
            id,
            decoder: Decoder::new(fields.clone()),
            metric_types,
            kept_metrics,
            metric_values: [[0.0; MAX_VALUES]; 2],
            sequenced: fields.sequence.is_some(),
            event_ids: EventIdSet::new(settings.dedupe_horizon_ms),
            seqs: SeqTracker::default(),
            windows,
            rules,
            names,
            max_ts: i64::MIN,
            wm: i64::MIN,
            counts: Counts::default(),
            rows: WindowOutput::default(),
            alerts: Vec::new(),
            dead: Vec::new(),
            latency: Histogram::new(3).expect("3 significant digits is valid"),
            emit: EmitLatency::default(),
            closed_by: Vec::new(),
            epoch,
            now: epoch,
            last_event: epoch,
            idle_clock: None,
            outbox: Vec::new(),
            settings,
            device_state: Vec::new(),
            changed: Vec::new(),
            live_rows: WindowOutput::default(),
            replay_until: i64::MIN,
            new_devices: Vec::new(),
            split_devices: 0,
            clock: i64::MIN,
            skew_limit: i64::MAX,
            block_times: Vec::new(),
            block_checked: false,
            probe_values: [0.0; MAX_VALUES],
            skewed_by_device: HashMap::new(),
            clocks: Vec::new(),
            series_next: Vec::new(),
            grid,
            stamp: 0,
            active: std::collections::VecDeque::new(),
            idle: Vec::new(),
            idle_pass: epoch,
            finish_at: 0,
            memory_at_end: None,
            resumed_clocks: HashMap::new(),
            tables,
            tables_generation,
        }
    }

    /// Which devices of `expect` tables this partition watches: those
    /// [`crate::ingest::partition_of`] gives it among `slots` (where the router and
    /// the repartition topic put them; a Kafka source without repartitioning takes no
    /// `expect`, see the config).
    pub fn set_slots(&mut self, slots: usize) {
        let (id, slots) = (self.id, slots.max(1));
        self.rules.set_owner(Arc::new(move |device: &str| {
            crate::ingest::partition_of(device, slots) == id
        }));
    }

    /// Absence rules: raises what came due by the watermark.
    fn fire_absences(&mut self) {
        self.rules.fire(
            self.wm,
            &self.names,
            &self.tables,
            self.tables_generation,
            &mut self.alerts,
        );
    }

    /// Length of an activity period (see [`Self::stamp`]), ms.
    fn period_ms(&self) -> u64 {
        (self.settings.idle_timeout_ms / 4).max(10) as u64
    }

    /// Per-device event time: moves devices silent for `idle_timeout` with data in
    /// open windows to the idle list, and advances the watermarks of those there by
    /// the wall time since the last call, closing what falls due. Costs nothing per
    /// event; per call, the devices whose period just ended and the idle ones.
    fn idle_devices(&mut self, now: Instant) {
        let period = self.period_ms();
        let since = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.stamp = (since / period) as u32 % IDLE;
        let idle_periods = (self.settings.idle_timeout_ms.max(1) as u64).div_ceil(period) as u32;
        while let Some(&(stamp, d)) = self.active.front() {
            if self.stamp.wrapping_sub(stamp) < idle_periods {
                break;
            }
            self.active.pop_front();
            let c = &mut self.clocks[d as usize];
            if c.stamp == stamp && c.open {
                c.stamp = IDLE;
                self.idle.push(d);
            }
        }
        let advance = now.saturating_duration_since(self.idle_pass).as_millis() as i64;
        if advance == 0 {
            return;
        }
        self.idle_pass += Duration::from_millis(advance as u64);
        let mut i = 0;
        while i < self.idle.len() {
            let d = self.idle[i];
            let c = &mut self.clocks[d as usize];
            if c.stamp != IDLE || !c.open {
                self.idle.swap_remove(i);
                continue;
            }
            c.wm = c.wm.saturating_add(advance);
            if c.wm >= c.due {
                self.close_device(d, false);
            }
            if self.clocks[d as usize].open {
                i += 1;
            } else {
                self.idle.swap_remove(i);
            }
        }
    }

    /// Per-device event time: closes the windows of `device` that its watermark has
    /// passed since its last close and runs the rules on them. While `replaying`
    /// (events read again after a restart), the windows it closes were produced
    /// before the checkpoint: they are dropped, not produced again.
    fn close_device(&mut self, device: u32, replaying: bool) {
        let c = self.clocks[device as usize];
        let from = if c.due == i64::MIN {
            i64::MIN
        } else {
            c.due - self.grid
        };
        let first_row = self.rows.len();
        let now_ns = self.now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let mut open = false;
        let mut s = c.first_series;
        while s != NO_SERIES {
            let latency = (!replaying).then_some((now_ns, &mut self.latency));
            open |= self
                .windows
                .close_series(s, from, c.wm, &mut self.rows, latency);
            s = self.series_next[s as usize];
        }
        let c = &mut self.clocks[device as usize];
        c.open = open;
        c.due = self.windows.next_close_point(c.wm, self.grid);
        if replaying {
            self.rows.truncate(first_row);
        } else if self.rows.len() > first_row {
            self.rules.evaluate(
                &self.rows,
                first_row,
                self.windows.defs(),
                &self.names,
                &self.tables,
                &mut self.alerts,
            );
        }
    }

    /// A tick with no block: once no block has come for `pipeline.idle_timeout`, event
    /// time follows the clock from there (closing windows).
    pub fn on_idle(&mut self, now: Instant) {
        self.now = now;
        self.refresh_tables();
        let idle = Duration::from_millis(self.settings.idle_timeout_ms.max(1) as u64);
        if self.wm != i64::MIN && now.saturating_duration_since(self.last_event) >= idle {
            let from = self.idle_clock.unwrap_or(self.last_event + idle);
            let advance = now.saturating_duration_since(from).as_millis() as i64;
            // Keep the sub-millisecond remainder for the next tick: the
            // watermark follows the clock without drifting.
            self.idle_clock = Some(from + Duration::from_millis(advance as u64));
            if advance > 0 {
                self.wm = self.wm.saturating_add(advance);
                if !self.settings.per_device && self.windows.due(self.wm) {
                    self.close(self.wm);
                }
                if self.rules.has_absence() {
                    self.fire_absences();
                }
                self.flush();
            }
        }
        if self.settings.per_device {
            self.idle_devices(now);
            self.flush();
        }
    }

    /// End of a finite input: closes every window and hands everything on. Per
    /// device, a step closes devices until about 16,384 rows are out, so
    /// that the sinks can take them before the next step (a million devices' last
    /// windows are not built all at once): call it until it says it is done.
    pub fn finish(&mut self, now: Instant) -> bool {
        self.now = now;
        self.refresh_tables();
        if self.memory_at_end.is_none() {
            self.memory_at_end = Some(self.memory());
        }
        let mut done = true;
        if self.settings.per_device {
            while self.finish_at < self.clocks.len() {
                let d = self.finish_at;
                self.finish_at += 1;
                if self.clocks[d].open {
                    self.clocks[d].wm = END_OF_TIME;
                    self.close_device(d as u32, false);
                }
                if self.rows.len() >= FINISH_ROWS {
                    done = self.finish_at == self.clocks.len();
                    break;
                }
            }
        } else {
            self.close(END_OF_TIME);
        }
        self.flush();
        done
    }

    /// What a checkpoint must record: the smallest source position still held by an
    /// open window, the highest event time seen, and the raised alerts.
    pub fn held(&self) -> Held {
        // Per device: the watermarks the wall clock moved past what the device's
        // events give (a replay rebuilds the others from the events).
        let ooo = self.settings.ooo_ms;
        let clocks = (0..self.clocks.len())
            .filter(|&d| {
                let last = self.device_state[d].last_ts;
                last != i64::MIN && self.clocks[d].wm > last.saturating_sub(ooo)
            })
            .map(|d| {
                (
                    device_key(self.names.device_name(d as u32)),
                    self.clocks[d].wm,
                )
            })
            .chain(self.resumed_clocks.iter().map(|(&k, &wm)| (k, wm)))
            .collect();
        Held {
            min_position: self.windows.min_offset(),
            max_ts: self.max_ts,
            raised: self.rules.raised_keys(&self.names),
            clocks,
            watch_from: self.rules.watch_from,
        }
    }

    /// Continues from a checkpoint: event time resumes at `max_ts` (windows closed
    /// before are not produced again), alerts raised stay raised, and events from
    /// offsets below `replay_until` (read before the checkpoint) that fall only into
    /// closed windows are re-deliveries, counted as duplicates and not dead-lettered.
    pub fn resume(
        &mut self,
        max_ts: i64,
        replay_until: i64,
        raised: Vec<u64>,
        clocks: Vec<(u64, i64)>,
        watch_from: i64,
    ) {
        self.resumed_clocks = clocks.into_iter().collect();
        self.rules.watch_from = watch_from;
        if max_ts > i64::MIN {
            self.max_ts = max_ts;
            self.wm = max_ts.saturating_sub(self.settings.ooo_ms);
            // Per device, the replay rebuilds each device's clock (see
            // `close_device`); per partition, its one clock is set now.
            if !self.settings.per_device {
                self.close(self.wm);
                self.rows.clear();
                self.alerts.clear();
            }
        }
        self.replay_until = replay_until;
        self.rules.restore(raised);
    }

    /// Moves the outputs built since the last call to `into`, oldest first.
    pub fn take_outputs(&mut self, into: &mut Vec<Output>) {
        into.append(&mut self.outbox);
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        let mut c = self.counts;
        c.gaps = self.seqs.gaps;
        c.open_alerts = self.rules.open;
        c.split_devices = self.split_devices;
        c
    }

    /// Whether devices were seen for the first time since [`Self::take_new_devices`].
    pub fn has_new_devices(&self) -> bool {
        !self.new_devices.is_empty()
    }

    /// Hands each device seen for the first time since the last call to `seen`, by
    /// name; `seen` says whether another partition had it first, and those are counted
    /// as split.
    pub fn take_new_devices(&mut self, mut seen: impl FnMut(&str) -> bool) {
        for d in self.new_devices.drain(..) {
            if seen(self.names.device_name(d)) {
                self.split_devices += 1;
            }
        }
    }

    /// The watermark (`i64::MIN` before the first event).
    pub fn watermark(&self) -> i64 {
        self.wm
    }

    pub fn report(&self) -> PartitionReport {
        PartitionReport {
            partition: self.id,
            counts: self.counts(),
            latency: self.latency.clone(),
            emit: self.emit.clone(),
            devices: self.names.device_count(),
            memory: self.memory_at_end.unwrap_or_else(|| self.memory()),
        }
    }

    /// Where this partition's bytes go now.
    pub fn memory(&self) -> Memory {
        Memory {
            names: self.names.heap_bytes(),
            devices: self.device_state.capacity() * std::mem::size_of::<DeviceState>()
                + self.clocks.capacity() * std::mem::size_of::<DeviceClock>()
                + self.series_next.capacity() * 4
                + self.active.capacity() * 8
                + self.idle.capacity() * 4,
            sequences: self.seqs.heap_bytes(),
            event_ids: self.event_ids.heap_bytes(),
            windows: self.windows.heap_bytes(),
        }
    }

    /// The input stops here (interrupted, or the partition is taken away): what has
    /// closed is handed on; open windows stay open.
    pub fn stop(&mut self) {
        self.flush();
    }

    /// Processes one block's events for this partition, then hands the outputs on.
    ///
    /// Each event is decoded one step ahead of its turn, so that the cache lines its
    /// id's dedupe check and its device's state need are on their way while the event
    /// before it is processed.
    pub fn on_block(&mut self, block: &Block, items: &[Item], now: Instant) {
        self.now = now;
        self.refresh_tables();
        self.last_event = now;
        self.idle_clock = None;
        self.block_times.clear();
        self.block_checked = false;
        if self.clock == i64::MIN {
            // The first block: its devices' median event time is the clock to judge
            // it by (a wrong clock among its first events must not set it).
            self.clock = self.device_median(block, items, 1).unwrap_or(i64::MIN);
            self.block_checked = true;
        }
        self.skew_limit = self.skew_limit_from(self.clock);
        if self.settings.per_device {
            self.idle_devices(now);
        }
        let mut current = items.first().map(|it| self.decode_ahead(block, it, 0));
        for (i, it) in items.iter().enumerate() {
            let Some(this) = current.take() else { break };
            self.counts.received += 1;
            current = items.get(i + 1).map(|next| {
                if let Some(after) = items.get(i + 2) {
                    prefetch(block.bytes(after));
                }
                self.decode_ahead(block, next, (i + 1) & 1)
            });
            let raw = block.bytes(it);
            match this {
                Ahead::Event(ev, _, device)
                    if ev.ts > self.skew_limit && self.skewed(ev.ts, block, items) =>
                {
                    self.counts.skewed += 1;
                    if let Some((d, _)) = device {
                        *self.skewed_by_device.entry(d).or_default() += 1;
                    }
                    let error = format!(
                        "createdAt {} is more than max_clock_skew ({}) ahead of the partition's event time {}: a device clock that is wrong; it moves no watermark",
                        rfc3339_ms(ev.ts),
                        crate::config::Dur(Duration::from_millis(
                            self.settings.max_clock_skew_ms as u64
                        )),
                        rfc3339_ms(self.clock)
                    );
                    self.reject(Reason::Skew, error, raw, block, it)
                }
                Ahead::Event(ev, id_hash, device) => {
                    self.block_times.push(ev.ts);
                    self.on_event(ev, id_hash, device, i & 1, raw, block, it)
                }
                Ahead::Rejected(reason, e) => self.reject(reason, e, raw, block, it),
            }
            // The next event's device state has arrived meanwhile: ask for the line of
            // its window aggregates, which the decoding of the one after it hides.
            if let Some(Ahead::Event(_, _, Some((device, t)))) = &current {
                self.prefetch_aggregates(*device, *t);
            }
        }
        self.event_ids.advance(self.wm);
        let replayed = items
            .last()
            .is_some_and(|it| block.offset(it) < self.replay_until);
        if self.rules.has_absence() && !replayed {
            self.fire_absences();
        }
        if !self.block_times.is_empty() {
            let mid = self.block_times.len() / 2;
            let (_, &mut median, _) = self.block_times.select_nth_unstable(mid);
            self.clock = self.clock.max(median);
        }
        self.flush();
    }

    /// The latest event time accepted with the partition's clock at `clock`: that
    /// plus `max_clock_skew`, and for a live source never less than the wall clock plus
    /// it (a live source's events are near the wall clock: after every device was
    /// quiet for hours, the first events back are not skewed, even one at a time).
    fn skew_limit_from(&self, clock: i64) -> i64 {
        if clock == i64::MIN {
            return i64::MAX;
        }
        let skew = self.settings.max_clock_skew_ms;
        let by_clock = clock.saturating_add(skew);
        if self.settings.live {
            by_clock.max(now_ms().saturating_add(skew))
        } else {
            by_clock
        }
    }

    /// Whether an event at `ts`, past `skew_limit`, is skewed. Before saying so the
    /// first time in a block, the block's devices' median event time is taken: if
    /// most devices have moved on as far (every device quiet for a while, a gap in a
    /// replayed file), the clock moves there and the event is not skewed.
    #[cold]
    fn skewed(&mut self, ts: i64, block: &Block, items: &[Item]) -> bool {
        if !self.block_checked {
            self.block_checked = true;
            if let Some(m) = self.device_median(block, items, 3)
                && m > self.skew_limit
            {
                self.clock = m;
                self.skew_limit = self.skew_limit_from(m);
            }
        }
        ts > self.skew_limit
    }

    /// The median over the block's devices of each one's latest event time, if the
    /// block has events of at least `min_devices` devices (one device alone is no
    /// evidence against its own clock). Decodes the block again: done for the first
    /// block and for blocks with an event past the skew limit only.
    fn device_median(&mut self, block: &Block, items: &[Item], min_devices: usize) -> Option<i64> {
        let mut latest: Vec<(u64, i64)> = Vec::new();
        for it in items {
            if it.flags & Item::OVERSIZE != 0 {
                continue;
            }
            if let Ok(ev) = self
                .decoder
                .decode_into(block.bytes(it), &mut self.probe_values)
            {
                latest.push((xxhash_rust::xxh3::xxh3_64(ev.device_id.as_bytes()), ev.ts));
            }
        }
        latest.sort_unstable();
        let mut per_device: Vec<i64> = Vec::new();
        for (i, &(d, ts)) in latest.iter().enumerate() {
            if latest.get(i + 1).is_none_or(|&(next, _)| next != d) {
                per_device.push(ts); // the last (latest) of its device
            }
        }
        if per_device.len() < min_devices {
            return None;
        }
        let mid = per_device.len() / 2;
        Some(*per_device.select_nth_unstable(mid).1)
    }

    /// Decodes an item (see [`Self::on_block`]); for an event, hashes its id and
    /// prefetches where the dedupe check will look, when ids are deduplicated, and
    /// numbers its device and type (unless the type is filtered out) and prefetches the
    /// device's state. A multi-metric event's values go to `metric_values[slot]`
    /// (items alternate between the two slots: one is decoded ahead of the other).
    #[inline]
    fn decode_ahead<'b>(&mut self, block: &'b Block, it: &Item, slot: usize) -> Ahead<'b> {
        if it.flags & Item::OVERSIZE != 0 {
            let e = format!("message exceeds {} bytes", crate::ingest::MAX_MESSAGE);
            return Ahead::Rejected(Reason::Parse, e);
        }
        match self
            .decoder
            .decode_into(block.bytes(it), &mut self.metric_values[slot])
        {
            Ok(ev) => {
                let mut hash = 0;
                if self.settings.dedupe.by_event_id() {
                    hash = id_hash(&ev.event_id);
                    self.event_ids.prefetch(hash);
                }
                // A value list's event is kept if any of its members' types is.
                let metrics = ev.present & self.kept_metrics;
                let kept = match &self.settings.types {
                    _ if ev.present != 0 => metrics != 0,
                    Some(types) => types.iter().any(|t| **t == *ev.kind),
                    None => true,
                };
                let device = kept.then(|| {
                    let known = self.names.device_count();
                    let device = self.names.intern_device(&ev.device_id);
                    if device as usize == known {
                        self.new_devices.push(device);
                    }
                    if let Some(d) = self.device_state.get(device as usize) {
                        prefetch_line((d as *const DeviceState).cast());
                    }
                    if let Some(c) = self.clocks.get(device as usize) {
                        prefetch_line((c as *const DeviceClock).cast());
                    }
                    self.seqs.prefetch(device, ev.seq);
                    let t = match ev.present {
                        0 => self.names.intern_type(&ev.kind),
                        _ => self.metric_types[metrics.trailing_zeros() as usize],
                    };
                    (device, t)
                });
                Ahead::Event(ev, hash, device)
            }
            Err(DecodeError::Parse(e)) => Ahead::Rejected(Reason::Parse, e),
            Err(DecodeError::Schema(e)) => Ahead::Rejected(Reason::Schema, e),
        }
    }

    /// Asks for the line of the aggregates that an event of `device` and type `t`
    /// will update, if the series exists (in the newest pane: where most events land).
    #[inline]
    fn prefetch_aggregates(&self, device: u32, t: u32) {
        let series = self.device_state.get(device as usize);
        if let Some(series) = series.and_then(|d| d.series_at_hand(t)) {
            self.windows.prefetch(series);
        }
    }

    /// One accepted-so-far event; `id_hash` is its id's [`id_hash`] when ids are
    /// deduplicated, `device` its device's and type's numbers if its type is kept,
    /// `slot` where its values are if it is a multi-metric event.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn on_event(
        &mut self,
        ev: Event<'_>,
        id_hash: u64,
        device: Option<(u32, u32)>,
        slot: usize,
        raw: &[u8],
        block: &Block,
        it: &Item,
    ) {
        let offset = block.offset(it);
        if ev.ts > self.max_ts {
            self.max_ts = ev.ts;
            let candidate = ev.ts.saturating_sub(self.settings.ooo_ms);
            if candidate > self.wm {
                self.wm = candidate;
                if !self.settings.per_device && self.windows.due(self.wm) {
                    let (rows, alerts) = (self.rows.len(), self.alerts.len());
                    self.close(self.wm);
                    self.closed_by.push((
                        block.entered_us(it),
                        (self.rows.len() - rows) as u32,
                        (self.alerts.len() - alerts) as u32,
                    ));
                }
            }
        }
        let Some((device, t)) = device else {
            self.counts.filtered += 1;
            return;
        };
        if device as usize >= self.device_state.len() {
            self.device_state
                .resize(device as usize + 1, DeviceState::default());
            if self.settings.per_device {
                self.clocks
                    .resize(device as usize + 1, DeviceClock::default());
            }
        }
        if self.settings.per_device {
            self.device_time(device, ev.ts, offset, block.entered_us(it));
        }
        let mode = self.settings.dedupe;
        if mode.by_event_id() && self.event_ids.check_and_insert_hash(id_hash, self.wm) {
            self.counts.duplicate += 1;
            self.device_state[device as usize].duplicates += 1;
            return;
        }
        // Sequence numbers are tracked in every mode (gaps are worth knowing); they
        // reject only in the modes that dedupe by them.
        if self.sequenced
            && self.seqs.check(device, ev.seq) == SeqCheck::Duplicate
            && mode.by_sequence()
        {
            self.counts.duplicate += 1;
            self.device_state[device as usize].duplicates += 1;
            return;
        }
        let accepted = if ev.present == 0 {
            self.update_series(device, t, &ev, ev.value, block.arrived_ns, offset)
        } else {
            // A value list: each kept member is its own series; the event counts once.
            let mut accepted = false;
            let mut metrics = ev.present & self.kept_metrics;
            while metrics != 0 {
                let i = metrics.trailing_zeros() as usize;
                metrics &= metrics - 1;
                let (t, v) = (self.metric_types[i], self.metric_values[slot][i]);
                accepted |= self.update_series(device, t, &ev, v, block.arrived_ns, offset);
            }
            accepted
        };
        if accepted {
            self.counts.aggregated += 1;
        } else if offset < self.replay_until {
            // Read again after a restart, and its windows were produced before it.
            self.counts.duplicate += 1;
            self.device_state[device as usize].duplicates += 1;
        } else {
            self.counts.late += 1;
            let (whose, wm) = match self.clocks.get(device as usize) {
                Some(c) => ("its device's", c.wm),
                None => ("the partition's", self.wm),
            };
            let error = format!(
                "createdAt {} is behind {whose} watermark {}: every window it belongs to has closed",
                rfc3339_ms(ev.ts),
                rfc3339_ms(wm)
            );
            self.dead
                .push(dead_letter(Reason::Late, error, raw, block, it));
        }
    }

    /// Per-device event time: an event of `device` at `ts` (at source position
    /// `offset`, entered at `entered_us`) moves the device's watermark, closing what
    /// falls due, and marks the device active in this period.
    #[inline]
    fn device_time(&mut self, device: u32, ts: i64, offset: i64, entered_us: i64) {
        if self.clocks[device as usize].wm == i64::MIN && !self.resumed_clocks.is_empty() {
            self.resume_clock(device);
        }
        let c = &mut self.clocks[device as usize];
        if c.stamp != self.stamp {
            c.stamp = self.stamp;
            self.active.push_back((self.stamp, device));
        }
        let candidate = ts.saturating_sub(self.settings.ooo_ms);
        if candidate > c.wm {
            c.wm = candidate;
            if candidate >= c.due {
                let (rows, alerts) = (self.rows.len(), self.alerts.len());
                let replaying = offset < self.replay_until;
                self.close_device(device, replaying);
                if self.rows.len() > rows && !replaying {
                    self.closed_by.push((
                        entered_us,
                        (self.rows.len() - rows) as u32,
                        (self.alerts.len() - alerts) as u32,
                    ));
                }
            }
        }
    }

    /// The first event of `device` since a restart: its watermark from the checkpoint,
    /// if it recorded one (windows closing at or before it count as produced).
    #[cold]
    fn resume_clock(&mut self, device: u32) {
        let key = device_key(self.names.device_name(device));
        if let Some(wm) = self.resumed_clocks.remove(&key) {
            let c = &mut self.clocks[device as usize];
            c.wm = wm;
            c.due = self.windows.next_close_point(wm, self.grid);
        }
    }

    /// Updates series (`device`, `t`) with `value` of `ev`: the device's latest
    /// reading and the windows. Whether a window took it (else it is late).
    #[inline]
    fn update_series(
        &mut self,
        device: u32,
        t: u32,
        ev: &Event<'_>,
        value: f64,
        arrived_ns: u64,
        offset: i64,
    ) -> bool {
        let d = &mut self.device_state[device as usize];
        let series = match d.series_at_hand(t) {
            Some(s) => s,
            None => {
                let known = self.names.series_count();
                let s = match d.series.get_mut(t as usize) {
                    Some(at_hand) => {
                        *at_hand = self.names.new_series(device, t);
                        *at_hand
                    }
                    None => self.names.intern_series(device, t),
                };
                if let Some(c) = self.clocks.get_mut(device as usize)
                    && s as usize == known
                {
                    // A new series: first in its device's list.
                    self.series_next.push(c.first_series);
                    c.first_series = s;
                }
                s
            }
        };
        d.events += 1;
        // The latest reading: by event time, then sequence number (as the device
        // documents order them).
        if (ev.ts, ev.seq) >= (d.last_ts, d.last_seq) {
            d.last_ts = ev.ts;
            d.last_value = value;
            d.last_series = series;
            d.last_seq = ev.seq;
            if self.settings.device_updates && !d.changed {
                d.changed = true;
                self.changed.push(device);
            }
        }
        if self.rules.has_absence() {
            let replaying = offset < self.replay_until;
            self.rules.seen(
                series,
                ev.ts,
                self.wm,
                replaying,
                &self.names,
                &self.tables,
                self.tables_generation,
                &mut self.alerts,
            );
        }
        match self.clocks.get_mut(device as usize) {
            Some(c) => {
                let taken = self
                    .windows
                    .update_device(series, ev.ts, value, arrived_ns, offset, c.wm);
                c.open |= taken;
                taken
            }
            None => self
                .windows
                .update(series, ev.ts, value, arrived_ns, offset),
        }
    }

    fn reject(&mut self, reason: Reason, error: String, raw: &[u8], block: &Block, it: &Item) {
        self.counts.dead_lettered += 1;
        self.dead.push(dead_letter(reason, error, raw, block, it));
    }

    /// Closes the windows the watermark `wm` has passed and runs the rules on them.
    fn close(&mut self, wm: i64) {
        let from = self.rows.len();
        let now_ns = self.now.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.windows.close(
            wm,
            self.names.series_count(),
            now_ns,
            &mut self.rows,
            &mut self.latency,
        );
        self.rules.evaluate(
            &self.rows,
            from,
            self.windows.defs(),
            &self.names,
            &self.tables,
            &mut self.alerts,
        );
    }

    /// Takes the reference tables swapped in since the last call (an atomic load when
    /// none was): once per block, idle tick or step of the end, never per event.
    #[inline]
    fn refresh_tables(&mut self) {
        let generation = self.settings.references.generation();
        if generation != self.tables_generation {
            self.tables = self.settings.references.tables();
            self.tables_generation = generation;
        }
    }

    /// Hands closed windows, alerts and dead letters to the sinks.
    fn flush(&mut self) {
        if self.rows.is_empty()
            && self.alerts.is_empty()
            && self.dead.is_empty()
            && self.changed.is_empty()
        {
            return;
        }
        self.counts.windows += self.rows.len() as u64;
        self.counts.alerts += self.alerts.len() as u64;
        if !self.closed_by.is_empty() {
            let now = crate::event::now_us();
            for (entered, windows, alerts) in self.closed_by.drain(..) {
                let us = now.saturating_sub(entered).max(0) as u64;
                let _ = self.emit.windows.record_n(us, windows as u64);
                let _ = self.emit.alerts.record_n(us, alerts as u64);
            }
        }
        let windows = (!self.rows.is_empty()).then(|| self.record_batch());
        self.rows.clear();
        let out = Output {
            windows,
            alerts: std::mem::take(&mut self.alerts),
            dead: std::mem::take(&mut self.dead),
            devices: self.device_updates(),
            ..Output::default()
        };
        self.outbox.push(out);
    }

    /// The latest readings of the devices changed since the last output.
    fn device_updates(&mut self) -> Vec<DeviceUpdate> {
        let mut out = Vec::with_capacity(self.changed.len());
        for d in self.changed.drain(..) {
            let s = &mut self.device_state[d as usize];
            s.changed = false;
            out.push(DeviceUpdate {
                device_id: self.names.device_name(d).to_owned(),
                kind: self.names.kind(s.last_series).to_owned(),
                value: s.last_value,
                created_at: s.last_ts,
                seq: s.last_seq,
            });
        }
        out
    }

    /// The closed windows as an Arrow batch in [`window_schema`].
    fn record_batch(&self) -> RecordBatch {
        window_batch(&self.rows, self.windows.defs(), &self.names)
    }

    /// Open windows, devices and counts for queries. Built between blocks, never
    /// inside the per-event loop.
    pub fn snapshot(&mut self) -> PartitionSnapshot {
        self.live_rows.clear();
        self.windows
            .open_windows(self.names.series_count(), &mut self.live_rows);
        if !self.clocks.is_empty() {
            // Per device: a pane's rows stay while any device needs the pane; a row
            // of a window its own device has closed is not live.
            let (rows, lateness) = (&self.live_rows, self.windows.lateness());
            let names = &self.names;
            let clocks = &self.clocks;
            let keep: Vec<bool> = (0..rows.len())
                .map(|i| {
                    let device = names.series_device(rows.series[i]);
                    rows.end[i] + lateness > clocks[device as usize].wm
                })
                .collect();
            self.live_rows.retain(|i| keep[i]);
        }
        let live = window_batch(&self.live_rows, self.windows.defs(), &self.names);
        self.live_rows.clear();
        PartitionSnapshot {
            partition: self.id,
            counts: self.counts(),
            watermark: self.wm,
            max_event_time: self.max_ts,
            live,
            devices: self.devices_batch(),
            latency: self.latency.clone(),
            published_ms: now_ms(),
        }
    }

    /// The `devices` table rows of this partition.
    fn devices_batch(&self) -> RecordBatch {
        use arrow_array::builder::{Float64Builder, TimestampMillisecondBuilder, UInt64Builder};
        let seen: Vec<u32> = (0..self.device_state.len() as u32)
            .filter(|&d| self.device_state[d as usize].last_ts != i64::MIN)
            .collect();
        let n = seen.len();
        let mut id = StringBuilder::with_capacity(n, n * 24);
        let mut partition = UInt64Builder::with_capacity(n);
        let mut last_seen = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut last_type = StringBuilder::with_capacity(n, n * 4);
        let mut last_value = Float64Builder::with_capacity(n);
        let mut events = UInt64Builder::with_capacity(n);
        let mut duplicates = UInt64Builder::with_capacity(n);
        let mut hwm = UInt64Builder::with_capacity(n);
        let mut gaps = UInt64Builder::with_capacity(n);
        let mut skewed = UInt64Builder::with_capacity(n);
        let mut watermark = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        for d in seen {
            let s = &self.device_state[d as usize];
            id.append_value(self.names.device_name(d));
            partition.append_value(self.id as u64);
            last_seen.append_value(s.last_ts);
            last_type.append_value(self.names.kind(s.last_series));
            last_value.append_value(s.last_value);
            events.append_value(s.events);
            duplicates.append_value(s.duplicates);
            let seq = self.seqs.device(d);
            hwm.append_option(seq.map(|(h, _)| h));
            gaps.append_value(seq.map_or(0, |(_, g)| g));
            skewed.append_value(self.skewed_by_device.get(&d).copied().unwrap_or(0));
            let wm = self.clocks.get(d as usize).map_or(self.wm, |c| c.wm);
            watermark.append_option((wm > i64::MIN / 2 && wm < END_OF_TIME).then_some(wm));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(partition.finish()),
            Arc::new(last_seen.finish()),
            Arc::new(last_type.finish()),
            Arc::new(last_value.finish()),
            Arc::new(events.finish()),
            Arc::new(duplicates.finish()),
            Arc::new(hwm.finish()),
            Arc::new(gaps.finish()),
            Arc::new(skewed.finish()),
            Arc::new(watermark.finish()),
        ];
        RecordBatch::try_new(devices_schema(), columns).expect("columns match the devices schema")
    }
}

/// Window rows as an Arrow batch in [`window_schema`].
fn window_batch(r: &WindowOutput, defs: &[WindowDef], names: &Interner) -> RecordBatch {
    let n = r.len();
    let mut window = StringBuilder::with_capacity(n, n * 12);
    let mut device = StringBuilder::with_capacity(n, n * 24);
    let mut kind = StringBuilder::with_capacity(n, n * 4);
    for i in 0..n {
        window.append_value(&*defs[r.window[i] as usize].name);
        device.append_value(names.device(r.series[i]));
        kind.append_value(names.kind(r.series[i]));
    }
    let avg: Vec<f64> = r
        .sum
        .iter()
        .zip(&r.count)
        .map(|(s, c)| s / *c as f64)
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(window.finish()),
        Arc::new(device.finish()),
        Arc::new(kind.finish()),
        Arc::new(TimestampMillisecondArray::from(r.start.clone()).with_timezone("UTC")),
        Arc::new(TimestampMillisecondArray::from(r.end.clone()).with_timezone("UTC")),
        Arc::new(UInt64Array::from(r.count.clone())),
        Arc::new(Float64Array::from(r.sum.clone())),
        Arc::new(Float64Array::from(avg)),
        Arc::new(Float64Array::from(r.min.clone())),
        Arc::new(Float64Array::from(r.max.clone())),
    ];
    RecordBatch::try_new(window_schema(), columns).expect("columns match the window schema")
}

fn dead_letter(reason: Reason, error: String, raw: &[u8], block: &Block, it: &Item) -> DeadLetter {
    DeadLetter {
        reason,
        error,
        payload: String::from_utf8_lossy(raw).into_owned(),
        source: block.source_of(it),
        received_at: rfc3339_ms(now_ms()),
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, UInt64Type};

    use super::*;
    use crate::config::Config;
    use crate::event::AlertState;
    use crate::ingest::split_message;

    const CONFIG: &str = r#"
[source]
kind = "stdin"

[pipeline]
max_out_of_order = "5s"
allowed_lateness = "0s"
idle_timeout = "10s"
dedupe = "both"

[[windows]]
name = "t1m"
kind = "tumbling"
size = "1m"

[[rules]]
name = "hot"
window = "t1m"
when = "avg > 30"
clear = "avg < 20"
"#;

    fn partition(epoch: Instant) -> Partition {
        let cfg = Config::parse(CONFIG).expect("valid config");
        Partition::new(0, Arc::new(Settings::from_config(&cfg)), epoch)
    }

    /// A partition with one watermark (`pipeline.event_time = "partition"`).
    fn partition_clock(epoch: Instant) -> Partition {
        let text = CONFIG.replace("[pipeline]", "[pipeline]\nevent_time = \"partition\"");
        let cfg = Config::parse(&text).expect("valid config");
        Partition::new(0, Arc::new(Settings::from_config(&cfg)), epoch)
    }

    /// An event of device `d` at `2026-01-01T00:mm:ss`.
    fn event(id: &str, d: &str, seq: u64, mm: u32, ss: u32, value: f64) -> String {
        format!(
            r#"{{"eventId":"{id}","deviceId":"{d}","deviceSequenceNumber":{seq},"type":"temp","value":{value},"createdAt":"2026-01-01T00:{mm:02}:{ss:02}Z"}}"#
        )
    }

    fn block(lines: &[String]) -> (Block, Vec<Item>) {
        let (mut data, mut items) = (Vec::new(), Vec::new());
        for (i, l) in lines.iter().enumerate() {
            let start = data.len();
            data.extend_from_slice(l.as_bytes());
            split_message(&data, start, data.len(), i as u32, &mut items);
            data.push(b'\n');
        }
        (Block::new(data, Arc::from("test"), 0), items)
    }

    fn feed(p: &mut Partition, lines: &[String], now: Instant) -> Vec<Output> {
        let (b, items) = block(lines);
        p.on_block(&b, &items, now);
        let mut out = Vec::new();
        p.take_outputs(&mut out);
        out
    }

    /// (window start as mm, count, avg) of every closed window in `outs`.
    fn windows(outs: &[Output]) -> Vec<(i64, u64, f64)> {
        let mut rows = Vec::new();
        for b in outs.iter().filter_map(|o| o.windows.as_ref()) {
            let starts = b
                .column(crate::event::col::WINDOW_START)
                .as_primitive::<arrow_array::types::TimestampMillisecondType>();
            let counts = b
                .column(crate::event::col::COUNT)
                .as_primitive::<UInt64Type>();
            let avgs = b
                .column(crate::event::col::AVG)
                .as_primitive::<Float64Type>();
            for r in 0..b.num_rows() {
                let mm = (starts.value(r) - 1_767_225_600_000) / 60_000;
                rows.push((mm, counts.value(r), avgs.value(r)));
            }
        }
        rows
    }

    #[test]
    fn a_window_closes_when_event_time_passes_its_end_and_the_rule_fires() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        let out = feed(
            &mut p,
            &[
                event("a", "d1", 1, 0, 10, 31.0),
                event("b", "d1", 2, 0, 50, 35.0),
            ],
            t0,
        );
        assert!(windows(&out).is_empty(), "nothing has closed yet");
        // 01:04 minus 5 s out-of-order is past 01:00, the window's end.
        let out = feed(&mut p, &[event("c", "d1", 3, 1, 4, 10.0)], t0);
        assert!(windows(&out).is_empty(), "the watermark is 00:59");
        let out = feed(&mut p, &[event("d", "d1", 4, 1, 6, 10.0)], t0);
        assert_eq!(windows(&out), vec![(0, 2, 33.0)]);
        let alerts: Vec<_> = out.iter().flat_map(|o| &o.alerts).collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].state, AlertState::Raised);
        assert_eq!(p.counts().aggregated, 4);
        assert!(p.counts().balanced());
    }

    #[test]
    fn an_idle_partition_follows_the_clock_passed_in() {
        let t0 = Instant::now();
        let mut p = partition_clock(t0);
        feed(&mut p, &[event("a", "d1", 1, 0, 10, 20.0)], t0);
        let wm = p.watermark();
        // Before idle_timeout (10 s) nothing moves, however often it ticks.
        for s in 1..10 {
            p.on_idle(t0 + Duration::from_secs(s));
        }
        assert_eq!(p.watermark(), wm);
        // Past it, event time follows the clock from the moment it became idle: the
        // window (end 01:00, watermark 00:05) closes 55 s after that.
        p.on_idle(t0 + Duration::from_secs(10 + 54));
        let mut out = Vec::new();
        p.take_outputs(&mut out);
        assert!(windows(&out).is_empty());
        assert_eq!(p.watermark(), wm + 54_000);
        p.on_idle(t0 + Duration::from_secs(10 + 56));
        p.take_outputs(&mut out);
        assert_eq!(windows(&out), vec![(0, 1, 20.0)]);
        // A block resets the idle clock.
        feed(
            &mut p,
            &[event("b", "d1", 2, 1, 30, 20.0)],
            t0 + Duration::from_secs(70),
        );
        let wm = p.watermark();
        p.on_idle(t0 + Duration::from_secs(75));
        assert_eq!(p.watermark(), wm);
    }

    #[test]
    fn duplicates_late_events_and_bad_json_are_counted_and_dead_lettered() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        let out = feed(
            &mut p,
            &[
                event("a", "d1", 1, 2, 0, 1.0),
                event("a", "d1", 1, 2, 0, 1.0),
                event("b", "d1", 2, 0, 1, 1.0), // behind the watermark (01:55)
                "{not json".into(),
            ],
            t0,
        );
        let c = p.counts();
        assert_eq!(
            (
                c.received,
                c.aggregated,
                c.duplicate,
                c.late,
                c.dead_lettered
            ),
            (4, 1, 1, 1, 1)
        );
        let reasons: Vec<Reason> = out.iter().flat_map(|o| &o.dead).map(|d| d.reason).collect();
        assert_eq!(reasons, vec![Reason::Late, Reason::Parse]);
        let sources: Vec<&str> = out
            .iter()
            .flat_map(|o| &o.dead)
            .map(|d| d.source.as_str())
            .collect();
        assert_eq!(sources, vec!["test:3", "test:4"]);
    }

    /// An event at `2026-01-01T00:00:00Z` + `secs`.
    fn event_at(id: &str, d: &str, seq: u64, secs: i64, value: f64) -> String {
        format!(
            r#"{{"eventId":"{id}","deviceId":"{d}","deviceSequenceNumber":{seq},"type":"temp","value":{value},"createdAt":"{}"}}"#,
            rfc3339_ms(1_767_225_600_000 + secs * 1000)
        )
    }

    /// Ten devices reporting every 10 s from `from` for `n` rounds.
    fn fleet(from: i64, rounds: i64, seq0: u64) -> Vec<String> {
        let mut lines = Vec::new();
        for r in 0..rounds {
            for d in 0..10 {
                let seq = seq0 + r as u64;
                lines.push(event_at(
                    &format!("e{d}-{seq}"),
                    &format!("d{d}"),
                    seq,
                    from + r * 10,
                    20.0,
                ));
            }
        }
        lines
    }

    #[test]
    fn one_device_with_a_wrong_clock_moves_no_watermark_and_is_dead_lettered() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        feed(&mut p, &fleet(0, 6, 0), t0);
        let wm = p.watermark();
        // Five years ahead, then the fleet goes on.
        let future = event_at("bad", "d3", 100, 5 * 365 * 86_400, 1.0);
        let out = feed(&mut p, std::slice::from_ref(&future), t0);
        let dead: Vec<&DeadLetter> = out.iter().flat_map(|o| &o.dead).collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason, Reason::Skew);
        assert_eq!(dead[0].payload, future);
        assert_eq!(p.watermark(), wm, "the watermark did not move");
        feed(&mut p, &fleet(60, 6, 6), t0);
        let c = p.counts();
        assert_eq!(
            (c.aggregated, c.late, c.dead_lettered, c.skewed),
            (120, 0, 1, 1)
        );
        assert!(c.balanced());
        // The devices table says whose clock it was.
        let devices = p.snapshot().devices;
        let ids = devices.column(0).as_string::<i32>();
        let skewed = devices
            .column_by_name("skewed")
            .unwrap()
            .as_primitive::<UInt64Type>();
        for r in 0..devices.num_rows() {
            let expected = u64::from(ids.value(r) == "d3");
            assert_eq!(skewed.value(r), expected, "{}", ids.value(r));
        }
    }

    #[test]
    fn a_wrong_clock_among_the_first_events_does_not_set_the_clock() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        let mut first = vec![event_at("bad", "d9", 1, 5 * 365 * 86_400, 1.0)];
        first.extend(fleet(0, 3, 0));
        feed(&mut p, &first, t0);
        let c = p.counts();
        assert_eq!((c.aggregated, c.skewed, c.late), (30, 1, 0));
    }

    /// A live source: after every device was quiet for hours, the first events back
    /// come one block each, and are near the wall clock: not skewed. A wrong clock
    /// still is.
    #[test]
    fn a_live_source_takes_the_wall_clock_as_a_floor() {
        let t0 = Instant::now();
        let cfg =
            Config::parse(&CONFIG.replace("kind = \"stdin\"", "kind = \"simulator\"")).unwrap();
        let mut p = Partition::new(0, Arc::new(Settings::from_config(&cfg)), t0);
        let now = now_ms();
        let at = |id: &str, d: &str, seq: u64, ms: i64| {
            format!(
                r#"{{"eventId":"{id}","deviceId":"{d}","deviceSequenceNumber":{seq},"type":"temp","value":1,"createdAt":"{}"}}"#,
                rfc3339_ms(ms)
            )
        };
        let first: Vec<String> = (0..10)
            .map(|d| at(&format!("a{d}"), &format!("d{d}"), 1, now - 3 * 3_600_000))
            .collect();
        feed(&mut p, &first, t0);
        for d in 0..10 {
            feed(
                &mut p,
                &[at(&format!("b{d}"), &format!("d{d}"), 2, now)],
                t0,
            );
        }
        feed(
            &mut p,
            &[at("bad", "d1", 3, now + 5 * 365 * 86_400_000)],
            t0,
        );
        let c = p.counts();
        assert_eq!((c.aggregated, c.skewed), (20, 1));
    }

    #[test]
    fn the_whole_fleet_moving_on_is_not_skew() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        feed(&mut p, &fleet(0, 3, 0), t0);
        // Every device quiet for three hours, then reporting again.
        feed(&mut p, &fleet(3 * 3600, 3, 3), t0);
        let c = p.counts();
        assert_eq!((c.aggregated, c.skewed, c.dead_lettered), (60, 0, 0));
    }

    #[test]
    fn finish_closes_every_window_and_a_resumed_partition_does_not_produce_them_again() {
        let t0 = Instant::now();
        let mut p = partition_clock(t0);
        let mut out = feed(
            &mut p,
            &[
                event("a", "d1", 1, 0, 10, 40.0),
                event("b", "d2", 1, 3, 10, 5.0),
            ],
            t0,
        );
        let held = p.held();
        assert_eq!(held.max_ts, 1_767_225_600_000 + 190_000);
        // The 00:00 window closed with the block (watermark 03:05); finish closes the
        // rest.
        assert_eq!(windows(&out), vec![(0, 1, 40.0)]);
        while !p.finish(t0) {}
        out.clear();
        p.take_outputs(&mut out);
        assert_eq!(windows(&out), vec![(3, 1, 5.0)]);

        // A new partition resumed from that state: the 00:00 window closed before the
        // checkpoint, so an event of it read again is a re-delivery, not late.
        let mut q = partition_clock(t0);
        q.resume(held.max_ts, 10, held.raised, held.clocks, held.watch_from);
        let (mut b, items) = block(&[event("a", "d1", 1, 0, 10, 40.0)]);
        b.offsets = vec![5];
        q.on_block(&b, &items, t0);
        let mut out = Vec::new();
        q.take_outputs(&mut out);
        assert!(windows(&out).is_empty());
        assert_eq!(q.counts().duplicate, 1);
        assert!(out.iter().all(|o| o.dead.is_empty()));
        // Past the replayed positions the same lateness is late.
        let (mut b, items) = block(&[event("c", "d1", 2, 0, 20, 40.0)]);
        b.offsets = vec![10];
        q.on_block(&b, &items, t0);
        assert_eq!(q.counts().late, 1);
    }

    /// Every closed window in `outs` as (device, window start as mm, count, avg).
    fn device_windows(outs: &[Output]) -> Vec<(String, i64, u64, f64)> {
        let mut v = Vec::new();
        for b in outs.iter().filter_map(|o| o.windows.as_ref()) {
            let device = b.column(1).as_string::<i32>();
            let start = b
                .column(3)
                .as_primitive::<arrow_array::types::TimestampMillisecondType>();
            let count = b.column(5).as_primitive::<UInt64Type>();
            let avg = b.column(7).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                let mm = (start.value(i) - 1_767_225_600_000) / 60_000;
                v.push((device.value(i).to_owned(), mm, count.value(i), avg.value(i)));
            }
        }
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v
    }

    #[test]
    fn a_device_whose_clock_runs_behind_loses_nothing_to_the_others() {
        let t0 = Instant::now();
        // d2's clock is ten minutes behind d1's, their events interleaved.
        let mut lines = Vec::new();
        for i in 0..4u32 {
            lines.push(event(&format!("a{i}"), "d1", i as u64, 10 + i, 0, 10.0));
            lines.push(event(&format!("b{i}"), "d2", i as u64, i, 30, 20.0));
        }
        let mut p = partition(t0);
        let mut out = feed(&mut p, &lines, t0);
        let c = p.counts();
        assert_eq!((c.aggregated, c.late), (8, 0));
        // Each device's windows closed by its own clock as it went (d1's 10 and 11,
        // d2's 0, 1 and 2: d1's 13:00 is 5 s short of closing 12); finish closes
        // the rest.
        let before = device_windows(&out);
        assert_eq!(before.len(), 5, "{before:?}");
        while !p.finish(t0) {}
        p.take_outputs(&mut out);
        let all = device_windows(&out);
        let expect: Vec<(String, i64, u64, f64)> = (0..4)
            .map(|i| ("d1".to_owned(), 10 + i, 1, 10.0))
            .chain((0..4).map(|i| ("d2".to_owned(), i, 1, 20.0)))
            .collect();
        assert_eq!(all, expect);

        // One watermark per partition: every event of d2 is late.
        let mut q = partition_clock(t0);
        feed(&mut q, &lines, t0);
        let c = q.counts();
        assert_eq!((c.aggregated, c.late), (4, 4));
    }

    #[test]
    fn a_backlog_sent_after_the_others_are_current_is_aggregated_in_full() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        // d2 reports minute by minute up to 00:40; d1, offline since 00:00, then
        // sends its 30 minutes of backlog in order.
        let current: Vec<String> = (0..40)
            .map(|m| event(&format!("c{m}"), "d2", m as u64, m, 0, 1.0))
            .collect();
        let mut out = feed(&mut p, &current, t0);
        let backlog: Vec<String> = (0..30)
            .map(|m| event(&format!("k{m}"), "d1", m as u64, m, 10, 30.0))
            .collect();
        out.extend(feed(&mut p, &backlog, t0));
        let c = p.counts();
        assert_eq!((c.aggregated, c.late, c.dead_lettered), (70, 0, 0));
        while !p.finish(t0) {}
        p.take_outputs(&mut out);
        let d1: Vec<_> = device_windows(&out)
            .into_iter()
            .filter(|w| w.0 == "d1")
            .collect();
        assert_eq!(d1.len(), 30);
        assert!(d1.iter().all(|w| w.2 == 1 && w.3 == 30.0));
        // Rules ran in d1's own time: one raise (avg 30 > 30 is false: no alert).
        assert!(p.counts().balanced());
    }

    #[test]
    fn a_quiet_device_has_its_windows_closed_by_the_wall_clock() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        feed(&mut p, &[event("a", "d1", 1, 0, 10, 20.0)], t0);
        // d2 keeps the partition busy (no partition-wide idleness), d1 is silent.
        let mut out = Vec::new();
        for s in 1..=70u32 {
            let now = t0 + Duration::from_secs(s as u64);
            let e = event(&format!("b{s}"), "d2", s as u64, 0, 20 + s % 30, 1.0);
            out.extend(feed(&mut p, &[e], now));
        }
        // d1 became idle at 10 s; its watermark (00:05) then followed the clock and
        // passed 01:00 about 55 s later.
        let d1: Vec<_> = device_windows(&out)
            .into_iter()
            .filter(|w| w.0 == "d1")
            .collect();
        assert_eq!(d1, vec![("d1".to_owned(), 0, 1, 20.0)]);
        // d2's own window has not closed: its clock is still at 00:49 at most.
        assert!(device_windows(&out).iter().all(|w| w.0 == "d1"));
    }

    #[test]
    fn a_resumed_device_clock_does_not_produce_windows_closed_before_the_checkpoint() {
        let t0 = Instant::now();
        let lines = vec![
            event("a", "d1", 1, 0, 10, 40.0),
            event("b", "d1", 2, 3, 10, 5.0),
            event("c", "d2", 1, 3, 20, 7.0),
        ];
        let mut p = partition(t0);
        let mut out = feed(&mut p, &lines, t0);
        let held = p.held();
        assert_eq!(device_windows(&out), vec![("d1".to_owned(), 0, 1, 40.0)]);
        while !p.finish(t0) {}
        out.clear();
        p.take_outputs(&mut out);
        let rest = device_windows(&out);
        let cleared: Vec<String> = out
            .iter()
            .flat_map(|o| &o.alerts)
            .map(|a| a.id.clone())
            .collect();
        assert_eq!(cleared.len(), 1, "d1's 00:03 window clears the alert");

        // Replayed from position 0 with the checkpoint at 3: the 00:00 window of d1
        // closes again while replaying and is dropped; the others come out as before.
        let mut q = partition(t0);
        q.resume(held.max_ts, 3, held.raised, held.clocks, held.watch_from);
        let (mut b, items) = block(&lines);
        b.offsets = vec![0, 1, 2];
        q.on_block(&b, &items, t0);
        while !q.finish(t0) {}
        let mut again = Vec::new();
        q.take_outputs(&mut again);
        assert_eq!(device_windows(&again), rest);
        // Raised before the checkpoint, not raised again; cleared as before.
        let alerts: Vec<String> = again
            .iter()
            .flat_map(|o| &o.alerts)
            .map(|a| a.id.clone())
            .collect();
        assert_eq!(alerts, cleared);
    }

    /// A partition with an absence rule (`after` 45 s) besides the usual ones.
    fn partition_absence(epoch: Instant) -> Partition {
        let text = format!(
            "{CONFIG}\n[[rules]]\nname = \"silent\"\nkind = \"absence\"\nafter = \"45s\"\n"
        );
        let cfg = Config::parse(&text).expect("valid config");
        Partition::new(0, Arc::new(Settings::from_config(&cfg)), epoch)
    }

    fn absence_alerts(outs: &[Output]) -> Vec<(String, AlertState, f64)> {
        outs.iter()
            .flat_map(|o| &o.alerts)
            .filter(|a| &*a.rule == "silent")
            .map(|a| (a.id.clone(), a.state, a.value))
            .collect()
    }

    #[test]
    fn a_silent_device_raises_one_absence_alert_and_clears_when_it_reports() {
        let t0 = Instant::now();
        let mut p = partition_absence(t0);
        // d1 reports at 00:10, then falls silent; d2 moves the clock on.
        let mut out = feed(&mut p, &[event("a", "d1", 1, 0, 10, 1.0)], t0);
        for s in 0..6u32 {
            let e = event(&format!("b{s}"), "d2", s as u64, 0, 20 + s * 7, 1.0);
            out.extend(feed(&mut p, &[e], t0));
        }
        assert!(
            absence_alerts(&out).is_empty(),
            "the clock is at 00:55 - 5 s"
        );
        out.extend(feed(&mut p, &[event("b9", "d2", 9, 1, 1, 1.0)], t0));
        // 01:01 - 5 s = 00:56 >= 00:10 + 45 s: raised, once, at its deadline.
        let raised = absence_alerts(&out);
        assert_eq!(
            raised,
            vec![(
                "silent|d1|2026-01-01T00:00:55.000Z".to_owned(),
                AlertState::Raised,
                45.0
            )]
        );
        out.extend(feed(&mut p, &[event("b10", "d2", 10, 1, 30, 1.0)], t0));
        assert_eq!(absence_alerts(&out).len(), 1, "raised once");
        // d1 reports again at 01:40: cleared, 90 s after it was last seen.
        out.extend(feed(&mut p, &[event("a2", "d1", 2, 1, 40, 1.0)], t0));
        let all = absence_alerts(&out);
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[1],
            (
                "silent|d1|2026-01-01T00:01:40.000Z".to_owned(),
                AlertState::Cleared,
                90.0
            )
        );
        assert_eq!(p.counts().open_alerts, 0);
    }

    #[test]
    fn a_device_back_within_one_block_after_its_deadline_raises_and_clears() {
        let t0 = Instant::now();
        let mut p = partition_absence(t0);
        let out = feed(
            &mut p,
            &[
                event("a", "d1", 1, 0, 10, 1.0),
                event("b", "d2", 1, 1, 30, 1.0),
                event("c", "d1", 2, 1, 31, 1.0),
            ],
            t0,
        );
        let ids: Vec<_> = absence_alerts(&out)
            .into_iter()
            .map(|a| (a.0, a.1))
            .collect();
        assert_eq!(
            ids,
            vec![
                (
                    "silent|d1|2026-01-01T00:00:55.000Z".to_owned(),
                    AlertState::Raised
                ),
                (
                    "silent|d1|2026-01-01T00:01:31.000Z".to_owned(),
                    AlertState::Cleared
                ),
            ]
        );
        assert!(
            absence_alerts(&out).iter().all(|a| !a.0.contains("d2")),
            "d2 was seen once, 00:01:30, and the clock is at 01:26"
        );
    }

    #[test]
    fn a_quiet_partition_raises_absence_alerts_by_the_wall_clock() {
        let t0 = Instant::now();
        let mut p = partition_absence(t0);
        feed(
            &mut p,
            &[
                event("a", "d1", 1, 0, 10, 1.0),
                event("b", "d2", 1, 0, 20, 1.0),
            ],
            t0,
        );
        let mut out = Vec::new();
        // Idle after 10 s; the watermark (00:15) then follows the clock: d1's deadline
        // (00:55) is 40 s later, d2's (01:05) 50 s.
        for s in 1..=55u64 {
            p.on_idle(t0 + Duration::from_secs(s));
            p.take_outputs(&mut out);
        }
        assert_eq!(absence_alerts(&out).len(), 1, "{:?}", absence_alerts(&out));
        for s in 56..=70u64 {
            p.on_idle(t0 + Duration::from_secs(s));
            p.take_outputs(&mut out);
        }
        let ids: Vec<String> = absence_alerts(&out).into_iter().map(|a| a.0).collect();
        assert_eq!(
            ids,
            vec![
                "silent|d1|2026-01-01T00:00:55.000Z".to_owned(),
                "silent|d2|2026-01-01T00:01:05.000Z".to_owned()
            ]
        );
    }

    #[test]
    fn a_quiet_device_clock_is_checkpointed_and_resumed() {
        let t0 = Instant::now();
        let mut p = partition(t0);
        let (mut b, items) = block(&[event("a", "d1", 1, 0, 10, 20.0)]);
        b.offsets = vec![0];
        p.on_block(&b, &items, t0);
        for s in 1..=70u32 {
            let e = event(&format!("b{s}"), "d2", s as u64, 0, 20 + s % 30, 1.0);
            let (mut b, items) = block(&[e]);
            b.offsets = vec![s as i64];
            p.on_block(&b, &items, t0 + Duration::from_secs(s as u64));
        }
        // d1's watermark followed the wall clock past 01:00: its 00:00 window was
        // produced, which no replay of its one event could tell.
        let held = p.held();
        assert_eq!(held.clocks.len(), 1, "{:?}", held.clocks);
        assert_eq!(held.clocks[0].0, device_key("d1"));
        assert!(held.clocks[0].1 >= 1_767_225_600_000 + 60_000);

        let mut q = partition(t0);
        q.resume(
            held.max_ts,
            71,
            held.raised,
            held.clocks.clone(),
            held.watch_from,
        );
        // Replayed: a re-delivery, not a window opened again.
        let (mut b, items) = block(&[event("a", "d1", 1, 0, 10, 20.0)]);
        b.offsets = vec![0];
        q.on_block(&b, &items, t0);
        // New: late for the window produced before the restart.
        let (mut b, items) = block(&[event("c", "d1", 2, 0, 40, 20.0)]);
        b.offsets = vec![80];
        q.on_block(&b, &items, t0);
        while !q.finish(t0) {}
        let mut out = Vec::new();
        q.take_outputs(&mut out);
        let c = q.counts();
        assert_eq!((c.duplicate, c.late, c.aggregated), (1, 1, 0));
        assert!(device_windows(&out).is_empty());
        // Kept in the next checkpoint until the device passes it.
        assert_eq!(q.held().clocks.len(), 1);
    }

    /// The settings of config `text`, with the reference table `name` loaded from
    /// `path` (as the pipeline loads them at start).
    fn settings_with_table(text: &str, name: &str, path: &std::path::Path) -> Arc<Settings> {
        let cfg = Config::parse(text).expect("valid config");
        let mut settings = Settings::from_config(&cfg);
        settings.references = Arc::new(
            crate::reference::ReferenceSet::load([(name, path, Duration::from_secs(10))]).unwrap(),
        );
        Arc::new(settings)
    }

    #[test]
    fn an_absence_rule_reads_each_devices_silence_from_a_reference_column() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("limits.csv");
        std::fs::write(&table, "deviceId,silence_s\nd1,30\nd2,90\n").unwrap();
        let text = format!(
            "{CONFIG}\n[[rules]]\nname = \"silent\"\nkind = \"absence\"\nafter = \"limits.silence_s\"\n\n[[reference]]\nname = \"limits\"\npath = \"{}\"\n",
            table.display()
        );
        let mut p = Partition::new(0, settings_with_table(&text, "limits", &table), t0);
        let mut out = feed(
            &mut p,
            &[
                event("a", "d1", 1, 0, 10, 1.0),
                event("b", "d2", 1, 0, 10, 1.0),
                event("c", "d3", 1, 0, 10, 1.0),
            ],
            t0,
        );
        // d4 moves the clock to 01:20 - 5 s.
        for s in 0..8u32 {
            let e = event(&format!("e{s}"), "d4", s as u64, 0, 20 + s * 5, 1.0);
            out.extend(feed(&mut p, &[e], t0));
        }
        out.extend(feed(&mut p, &[event("e9", "d4", 9, 1, 20, 1.0)], t0));
        let ids: Vec<String> = absence_alerts(&out).into_iter().map(|a| a.0).collect();
        // d1 (30 s) is due at 00:40; d2 (90 s) at 01:40, not yet; d3 is not listed.
        assert_eq!(ids, vec!["silent|d1|2026-01-01T00:00:40.000Z".to_owned()]);
        assert_eq!(absence_alerts(&out)[0].2, 30.0);
    }

    #[test]
    fn a_listed_device_never_seen_raises_at_the_same_time_after_a_restart() {
        let t0 = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let table = dir.path().join("fleet.csv");
        std::fs::write(&table, "deviceId,site\nghost,1\nd1,1\n").unwrap();
        let text = format!(
            "{CONFIG}\n[[rules]]\nname = \"silent\"\nkind = \"absence\"\nafter = \"45s\"\nexpect = \"fleet\"\n\n[[reference]]\nname = \"fleet\"\npath = \"{}\"\n",
            table.display()
        );
        let settings = settings_with_table(&text, "fleet", &table);
        let mut p = Partition::new(0, settings.clone(), t0);
        // Watching starts at the first event's watermark: 00:10 - 5 s.
        feed(&mut p, &[event("a", "d1", 1, 0, 10, 1.0)], t0);
        let held = p.held();
        assert_eq!(held.watch_from, 1_767_225_605_000);
        let mut q = Partition::new(0, settings, t0);
        q.resume(held.max_ts, 0, held.raised, held.clocks, held.watch_from);
        let ghost = |p: &mut Partition| {
            let mut out = Vec::new();
            for (i, s) in [(2u64, 40u32), (3, 56)] {
                let e = event(&format!("b{i}"), "d1", i, 0, s, 1.0);
                out.extend(feed(p, &[e], t0));
            }
            absence_alerts(&out)
                .into_iter()
                .filter(|a| a.0.contains("|ghost|"))
                .collect::<Vec<_>>()
        };
        let raised = vec![(
            "silent|ghost|2026-01-01T00:00:50.000Z".to_owned(),
            AlertState::Raised,
            45.0,
        )];
        assert_eq!(ghost(&mut p), raised);
        assert_eq!(ghost(&mut q), raised, "the restart raises the same alert");
        // It reports at last: cleared.
        let out = feed(&mut p, &[event("g", "ghost", 1, 1, 0, 1.0)], t0);
        assert_eq!(
            absence_alerts(&out),
            vec![(
                "silent|ghost|2026-01-01T00:01:00.000Z".to_owned(),
                AlertState::Cleared,
                55.0
            )]
        );
        assert_eq!(p.counts().open_alerts, 0);
    }
}
