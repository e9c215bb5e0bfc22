//! The runtime: owns every partition actor and runs the one actor loop, whatever the
//! source. Sources hand it a [`Feed`] per partition through the [`Host`] contract.
//!
//! ```text
//!  actor thread (one per partition):
//!    feed.next(tick) ─Block─▶ Partition::on_block ─┐
//!                    ─Idle──▶ Partition::on_idle  ─┼─▶ outputs ──bounded──▶ sink thread
//!                    ─End───▶ Partition::finish   ─┘   checkpoint (every interval)
//!                    ─Stop──▶ hand on what has closed, last checkpoint, report
//!    after each step: counts to the status registry, a snapshot to the live board
//!    (every snapshot_interval)
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::Settings;
use super::partition::{Partition, PartitionReport};
use crate::ingest::feed::{Actor, Feed, Host, Next};
use crate::live::{Hub, PartitionStats, StatsRegistry};
use crate::output::Output;

/// Longest an actor waits for a block before it ticks (idle clock, checkpoints,
/// snapshots, a stop request). A quarter of `pipeline.idle_timeout`, within these.
const TICK_MIN: Duration = Duration::from_millis(10);
const TICK_MAX: Duration = Duration::from_millis(100);
/// How long a stopping actor waits for the sinks to confirm its last checkpoint.
const LAST_CHECKPOINT_WAIT: Duration = Duration::from_secs(120);

/// Which partition of this instance first saw each device (by a 64-bit hash of its
/// id), to notice input that is not partitioned by device: a device whose events
/// arrive on two partitions has its windows split between two actors, each with part
/// of its events. Asked once per block that brings new devices, never per event.
#[derive(Default)]
struct DeviceOwners(Mutex<HashMap<u64, Owner>>);

struct Owner {
    slot: usize,
    /// Reported as split already (each device is counted and logged once).
    split: bool,
}

impl DeviceOwners {
    /// Records the new devices of the partition in `slot`; counts and logs those
    /// another partition saw first.
    fn check(&self, slot: usize, p: &mut Partition) {
        let mut split = Vec::new();
        {
            let mut owners = self.0.lock();
            p.take_new_devices(|device| {
                let key = xxhash_rust::xxh3::xxh3_64(device.as_bytes());
                let owner = owners.entry(key).or_insert(Owner { slot, split: false });
                if owner.slot == slot || owner.split {
                    return false;
                }
                owner.split = true;
                split.push((device.to_owned(), owner.slot));
                true
            });
        }
        for (device, first) in split {
            tracing::warn!(
                device,
                first_partition = first,
                partition = slot,
                "A device's events arrive on more than one partition: each partition keeps part of its windows, which are then wrong. Partition the input by device (Kafka: key every message by its deviceId, one device per message; or set source.partitioning = \"any\" to have eventide re-key it)."
            );
        }
    }
}

/// Starts and stops partition actors; gathers their reports.
pub struct Runtime {
    settings: Arc<Settings>,
    epoch: Instant,
    /// To the sink thread; dropped by [`Runtime::close`], so that the sink thread
    /// ends once the last actor has.
    out: Mutex<Option<Sender<Output>>>,
    hub: Option<Arc<Hub>>,
    registry: Arc<StatsRegistry>,
    reports: Arc<Mutex<Vec<PartitionReport>>>,
    owners: Arc<DeviceOwners>,
    /// How many partitions the source said it has (see [`Host::partitions`]).
    slots: std::sync::atomic::AtomicUsize,
}

impl Runtime {
    pub fn new(
        settings: Arc<Settings>,
        epoch: Instant,
        out: Sender<Output>,
        hub: Option<Arc<Hub>>,
        registry: Arc<StatsRegistry>,
    ) -> Self {
        Runtime {
            settings,
            epoch,
            out: Mutex::new(Some(out)),
            hub,
            registry,
            reports: Arc::default(),
            owners: Arc::default(),
            slots: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    /// To the sink thread, for outputs that come from no partition (the repartition
    /// stage's dead letters); `None` once closed.
    pub fn sender(&self) -> Option<Sender<Output>> {
        self.out.lock().clone()
    }

    /// No actor starts after this; the sinks end when the running ones have.
    pub fn close(&self) {
        self.out.lock().take();
    }

    /// The reports of every actor that has ended.
    pub fn take_reports(&self) -> Vec<PartitionReport> {
        let mut r = std::mem::take(&mut *self.reports.lock());
        r.sort_by_key(|r| r.partition);
        r
    }
}

impl Host for Runtime {
    fn epoch(&self) -> Instant {
        self.epoch
    }

    fn partitions(&self, n: usize) {
        self.slots.store(n, Ordering::Relaxed);
        if let Some(h) = &self.hub {
            h.ensure_partitions(n);
        }
    }

    fn start(&self, slot: usize, name: String, feed: Box<dyn Feed>) -> Actor {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(PartitionStats::default());
        self.registry.add(stats.clone());
        let out = self
            .out
            .lock()
            .clone()
            .expect("actors start before the runtime closes");
        let hub = self.hub.clone();
        if let Some(h) = &hub {
            h.partitions_assigned.fetch_add(1, Ordering::Relaxed);
        }
        let mut p = Partition::new(slot, self.settings.clone(), self.epoch);
        p.set_slots(self.slots.load(Ordering::Relaxed));
        let actor = ActorLoop {
            p,
            feed,
            stats,
            out,
            hub,
            stop: stop.clone(),
            slot,
            owners: self.owners.clone(),
            next_snapshot: Instant::now(),
            scratch: Vec::new(),
            gone: false,
        };
        let idle = Duration::from_millis(self.settings.idle_timeout_ms.max(1) as u64);
        let tick = (idle / 4).clamp(TICK_MIN, TICK_MAX);
        let reports = self.reports.clone();
        let span = tracing::info_span!("partition", partition = slot, name = %name);
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || {
                span.in_scope(|| {
                    let hub = actor.hub.clone();
                    let report = actor.run(tick);
                    reports.lock().push(report);
                    if let Some(h) = hub {
                        h.partitions_assigned.fetch_sub(1, Ordering::Relaxed);
                    }
                })
            })
            .expect("spawning a thread");
        Actor::new(slot, stop, handle)
    }

    fn stop(&self, actor: Actor) -> bool {
        let slot = actor.slot;
        actor.signal();
        let ok = actor.join();
        if let Some(h) = &self.hub {
            h.retire(slot);
        }
        ok
    }
}

/// One partition actor: its partition, its feed and where their results go.
struct ActorLoop {
    p: Partition,
    feed: Box<dyn Feed>,
    stats: Arc<PartitionStats>,
    out: Sender<Output>,
    hub: Option<Arc<Hub>>,
    stop: Arc<AtomicBool>,
    slot: usize,
    owners: Arc<DeviceOwners>,
    next_snapshot: Instant,
    /// Outputs on their way from the partition to the sinks (kept for its capacity).
    scratch: Vec<Output>,
    /// The sink thread has stopped (it failed): stop too, so that the source stops and
    /// the run reports the sink's error instead of computing results nobody stores.
    gone: bool,
}

impl ActorLoop {
    fn run(mut self, tick: Duration) -> PartitionReport {
        if let Some(r) = self.feed.resume() {
            self.p
                .resume(r.max_ts, r.position, r.raised, r.clocks, r.watch_from);
        }
        let every = self.feed.checkpoint_interval();
        let mut next_checkpoint = Instant::now() + every.unwrap_or_default();
        // Blocks read since the last checkpoint.
        let mut dirty = false;
        let mut ended = false;
        while !self.stop.load(Ordering::Relaxed) && !self.gone {
            match self.feed.next(tick) {
                Next::Block(block, items) => {
                    self.p.on_block(&block, &items, Instant::now());
                    if self.p.has_new_devices() {
                        self.owners.check(self.slot, &mut self.p);
                    }
                    dirty = true;
                }
                Next::Idle if !ended => self.p.on_idle(Instant::now()),
                Next::Idle => {}
                Next::End if !ended => {
                    ended = true;
                    while !self.p.finish(Instant::now()) {
                        self.send_outputs();
                    }
                    self.checkpoint(None);
                    self.feed.ended();
                    dirty = false;
                }
                Next::End => {}
                Next::Stop => break,
            }
            self.send_outputs();
            self.publish(false);
            if let Some(every) = every
                && dirty
                && Instant::now() >= next_checkpoint
            {
                self.checkpoint(None);
                next_checkpoint = Instant::now() + every;
                dirty = false;
            }
        }
        // Stopping: hand on what has closed and, for a source with positions, wait
        // until the last checkpoint is durable, so that it can be committed now.
        self.p.stop();
        self.send_outputs();
        self.publish(true);
        if every.is_some() {
            let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
            if self.checkpoint(Some(ack_tx)) && ack_rx.recv_timeout(LAST_CHECKPOINT_WAIT).is_err() {
                tracing::warn!(
                    "The sinks did not confirm the last checkpoint; it is not committed."
                );
            }
        }
        self.p.report()
    }

    fn send(&mut self, out: Output) -> bool {
        if !self.gone && self.out.send(out).is_err() {
            self.gone = true;
        }
        !self.gone
    }

    fn send_outputs(&mut self) {
        let mut outs = std::mem::take(&mut self.scratch);
        self.p.take_outputs(&mut outs);
        for out in outs.drain(..) {
            self.send(out);
        }
        self.scratch = outs;
    }

    /// Hands the feed's checkpoint of what has been read to the sinks, behind every
    /// output before it; `ack` is answered once the sinks have written all of them
    /// (with or without a checkpoint). Whether something was sent.
    fn checkpoint(&mut self, ack: Option<Sender<()>>) -> bool {
        self.send_outputs();
        let checkpoint = self.feed.checkpoint(self.p.held());
        if checkpoint.is_none() && ack.is_none() {
            return false;
        }
        self.send(Output {
            checkpoint,
            ack,
            ..Output::default()
        })
    }

    /// Counts for the status line after every step; a snapshot for queries every
    /// `snapshot_interval` (or now, with `force`).
    fn publish(&mut self, force: bool) {
        self.stats.store(&self.p.counts(), self.p.watermark());
        let Some(hub) = self.hub.clone() else {
            return;
        };
        if !force && Instant::now() < self.next_snapshot {
            return;
        }
        let started = Instant::now();
        hub.publish(self.p.snapshot());
        // A large state takes long to snapshot: publish less often then, so that
        // snapshots never take more than about a tenth of the partition's time.
        let took = started.elapsed();
        self.next_snapshot = Instant::now() + hub.snapshot_interval.max(took * 9);
    }
}
