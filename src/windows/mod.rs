//! Stage 2: window assignment, panes, aggregates and closing.
//!
//! In: accepted events as (series, event time, value), and watermark advances.
//! Out: closed windows as columnar rows ([`WindowOutput`]), in window order.
//! Owner: one [`WindowEngine`] per partition actor; nothing here is shared.
//!
//! ```text
//!  event ─▶ pane of width p = gcd(size, slide), start = t - t.rem_euclid(p)
//!            │  count/sum/min/max columns, one row per series in the pane
//!  watermark ─▶ window [s, s+size) closes when watermark ≥ s + size + lateness:
//!            │  its panes are merged per series → one output row per series
//!            ▼
//!  panes no unclosed window needs are recycled (no allocation in steady state)
//! ```
//!
//! Windows are aligned to the epoch: tumbling starts are multiples of `size`, sliding
//! starts multiples of `slide`. Windows whose panes have the same width share one pane
//! store, so tumbling 1m + sliding 5m/1m update a single pane per event. An event
//! costs O(1) whatever the size/slide ratio; a closing window costs O(rows in its panes).
//!
//! Lateness is decided per window definition: an event is late for a definition when
//! the last window that contains it has already closed. An event late for every
//! definition is late; otherwise it is aggregated into the windows still open.

use std::collections::VecDeque;
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::config::{WindowConfig, WindowKind};
use crate::dedupe::PreHashedMap;

/// Watermark value that closes every window (end of a finite input).
pub const END_OF_TIME: i64 = i64::MAX / 4;
const NONE: u32 = u32::MAX;

#[inline]
pub fn align_down(t: i64, width: i64) -> i64 {
    t - t.rem_euclid(width)
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One `[[windows]]` definition, in milliseconds.
#[derive(Debug, Clone)]
pub struct WindowDef {
    pub name: Arc<str>,
    pub size: i64,
    pub slide: i64,
    /// Index of the pane store it reads.
    store: usize,
}

/// Aggregates of one series in one pane: half a cache line, so an update touches one.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Agg {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// Aggregates of every series that had events in one pane `[start, start + width)`.
#[derive(Debug, Default)]
struct Pane {
    start: i64,
    rows: PreHashedMap<u32, u32>,
    /// Per row: its series, and its aggregates.
    series: Vec<u32>,
    aggs: Vec<Agg>,
    /// (block arrival ns, events): when this pane's events arrived, per block.
    arrivals: Vec<(u64, u32)>,
    /// Smallest source offset (Kafka) of the events in this pane; `i64::MAX` if none.
    min_offset: i64,
    /// Per-device event time: rows whose device may still close a window over this
    /// pane (the pane is recycled when none is left).
    live: u32,
    /// Per-device event time: per row, the series' next row in the chain of its rows
    /// (see [`PaneStore::heads`]): that row's pane start ([`NO_PANE`] at the end) and
    /// row. The row map is not kept then.
    prev_start: Vec<i64>,
    prev_row: Vec<u32>,
}

/// The end of a series' chain of rows.
const NO_PANE: i64 = i64::MIN;

impl Pane {
    fn reset(&mut self, start: i64) {
        self.start = start;
        self.rows.clear();
        self.series.clear();
        self.aggs.clear();
        self.arrivals.clear();
        self.min_offset = i64::MAX;
        self.live = 0;
        self.prev_start.clear();
        self.prev_row.clear();
    }

    /// Adds `v` to row `row`'s aggregates.
    #[inline]
    fn add_at(&mut self, row: usize, v: f64, arrived_ns: u64, offset: i64) {
        if offset < self.min_offset {
            self.min_offset = offset;
        }
        let a = &mut self.aggs[row];
        a.count += 1;
        a.sum += v;
        if v < a.min {
            a.min = v;
        }
        if v > a.max {
            a.max = v;
        }
        match self.arrivals.last_mut() {
            Some((at, n)) if *at == arrived_ns => *n += 1,
            _ => self.arrivals.push((arrived_ns, 1)),
        }
    }

    /// A new row of `series`, empty (its first value `v` is counted by
    /// [`Self::add_at`]).
    fn new_row(&mut self, series: u32, v: f64) -> usize {
        self.live += 1;
        self.series.push(series);
        // -0.0 is the sum's identity (-0.0 + -0.0 stays -0.0).
        self.aggs.push(Agg {
            count: 0,
            sum: -0.0,
            min: v,
            max: v,
        });
        self.series.len() - 1
    }

    /// A new row of `series` whose chain goes on at `prev` (per-device event time).
    fn push_row(&mut self, series: u32, v: f64, prev: (i64, u32)) -> usize {
        self.prev_start.push(prev.0);
        self.prev_row.push(prev.1);
        self.new_row(series, v)
    }

    /// Adds a reading of `series`; `hint` is the row where the series was last added
    /// in this pane store (any pane): when it is this pane's row of the series, the
    /// row map is not consulted (it costs two cache misses per event).
    #[inline]
    fn add(&mut self, series: u32, hint: &mut u32, v: f64, arrived_ns: u64, offset: i64) {
        let h = *hint as usize;
        let row = if h < self.series.len() && self.series[h] == series {
            h
        } else {
            let next = self.series.len() as u32;
            let row = *self.rows.entry(series).or_insert(next);
            *hint = row;
            if row == next {
                self.new_row(series, v);
            }
            row as usize
        };
        self.add_at(row, v, arrived_ns, offset);
    }
}

/// Panes of one width, ordered by start, with a pool of recycled panes.
#[derive(Debug)]
struct PaneStore {
    width: i64,
    panes: VecDeque<Pane>,
    pool: Vec<Pane>,
    /// Windows that read this store.
    windows: Vec<usize>,
    /// Per series: the row it was last added at, in whichever pane (see [`Pane::add`]).
    hints: Vec<u32>,
    /// Per-device event time: per series, its newest row's pane start and row, the
    /// head of the chain through every row it holds (`Pane::prev_*`). A series' rows
    /// are found by following it instead of a row map per pane (a cache miss or two
    /// per pane, for every pane, at every close); a close relinks what it keeps, in
    /// order of start, so the chain holds live rows only.
    heads: Vec<(i64, u32)>,
    chained: bool,
}

impl PaneStore {
    #[inline]
    fn pane_mut(&mut self, start: i64) -> &mut Pane {
        // Most events land in the newest pane.
        let len = self.panes.len();
        if len > 0 && self.panes[len - 1].start == start {
            return &mut self.panes[len - 1];
        }
        let idx = self.panes.partition_point(|p| p.start < start);
        if idx == len || self.panes[idx].start != start {
            let mut p = self.pool.pop().unwrap_or_default();
            p.reset(start);
            self.panes.insert(idx, p);
        }
        &mut self.panes[idx]
    }

    /// Adds a reading of `series` at `t` to its pane.
    #[inline]
    fn add(&mut self, series: u32, t: i64, v: f64, arrived_ns: u64, offset: i64) {
        let s = series as usize;
        if s >= self.hints.len() {
            self.hints.resize(s + 1, NONE);
        }
        if self.chained {
            return self.add_chained(series, t, v, arrived_ns, offset);
        }
        let mut hint = self.hints[s];
        let width = self.width;
        self.pane_mut(align_down(t, width))
            .add(series, &mut hint, v, arrived_ns, offset);
        self.hints[s] = hint;
    }

    /// The index of the pane starting at `start`, if there is one.
    #[inline]
    fn index_of(&self, start: i64) -> Option<usize> {
        let len = self.panes.len();
        if len > 0 && self.panes[len - 1].start == start {
            return Some(len - 1);
        }
        let i = self.panes.partition_point(|p| p.start < start);
        (i < len && self.panes[i].start == start).then_some(i)
    }

    /// [`Self::add`] with chained rows (per-device event time): the series' row in
    /// the pane is the hinted one, or found along its chain, or a new one at its head.
    #[inline]
    fn add_chained(&mut self, series: u32, t: i64, v: f64, arrived_ns: u64, offset: i64) {
        let s = series as usize;
        if s >= self.heads.len() {
            self.heads.resize(s + 1, (NO_PANE, 0));
        }
        let start = align_down(t, self.width);
        let head = self.heads[s];
        let mut found = None;
        let (mut at, mut row) = head;
        while at != NO_PANE {
            // A chain holds live rows only (see `close_series`).
            let Some(i) = self.index_of(at) else { break };
            if at == start {
                found = Some(row as usize);
                break;
            }
            let p = &self.panes[i];
            (at, row) = (p.prev_start[row as usize], p.prev_row[row as usize]);
        }
        let pane = self.pane_mut(start);
        let row = match found {
            Some(row) => row,
            None => pane.push_row(series, v, head),
        };
        pane.add_at(row, v, arrived_ns, offset);
        if found.is_none() {
            self.heads[s] = (start, row as u32);
        }
        self.hints[s] = row as u32;
    }

    /// Index range of the panes with start in `[from, to)`.
    fn range(&self, from: i64, to: i64) -> std::ops::Range<usize> {
        self.panes.partition_point(|p| p.start < from)..self.panes.partition_point(|p| p.start < to)
    }

    fn first_at_or_after(&self, t: i64) -> Option<i64> {
        let i = self.panes.partition_point(|p| p.start < t);
        self.panes.get(i).map(|p| p.start)
    }

    /// The earliest window (of `size`, starting on a multiple of `slide`) at or after
    /// `next` that holds data: its start and the range of its panes.
    fn next_with_data(
        &self,
        next: i64,
        size: i64,
        slide: i64,
    ) -> Option<(i64, std::ops::Range<usize>)> {
        let ps = self.first_at_or_after(next)?;
        let s = next.max(align_down(ps - size, slide) + slide);
        Some((s, self.range(s, s + size)))
    }

    fn drop_before(&mut self, t: i64) {
        while self.panes.front().is_some_and(|p| p.start < t) {
            let p = self.panes.pop_front().expect("checked");
            self.pool.push(p);
        }
    }
}

/// Closed windows, one row per (window, series), as columns.
#[derive(Debug, Default)]
pub struct WindowOutput {
    /// Index of the window definition.
    pub window: Vec<u16>,
    pub series: Vec<u32>,
    pub start: Vec<i64>,
    pub end: Vec<i64>,
    pub count: Vec<u64>,
    pub sum: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
}

impl WindowOutput {
    pub fn len(&self) -> usize {
        self.series.len()
    }
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
    pub fn clear(&mut self) {
        self.window.clear();
        self.series.clear();
        self.start.clear();
        self.end.clear();
        self.count.clear();
        self.sum.clear();
        self.min.clear();
        self.max.clear();
    }
    /// Keeps the rows `keep` says yes to (by row number), in order.
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut kept = 0;
        for i in 0..self.len() {
            if keep(i) {
                self.window[kept] = self.window[i];
                self.series[kept] = self.series[i];
                self.start[kept] = self.start[i];
                self.end[kept] = self.end[i];
                self.count[kept] = self.count[i];
                self.sum[kept] = self.sum[i];
                self.min[kept] = self.min[i];
                self.max[kept] = self.max[i];
                kept += 1;
            }
        }
        self.window.truncate(kept);
        self.series.truncate(kept);
        self.start.truncate(kept);
        self.end.truncate(kept);
        self.count.truncate(kept);
        self.sum.truncate(kept);
        self.min.truncate(kept);
        self.max.truncate(kept);
    }

    /// Drops the rows from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.retain(|i| i < len);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        w: u16,
        series: u32,
        start: i64,
        end: i64,
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
    ) {
        self.window.push(w);
        self.series.push(series);
        self.start.push(start);
        self.end.push(end);
        self.count.push(count);
        self.sum.push(sum);
        self.min.push(min);
        self.max.push(max);
    }
}

/// All windows of one partition. See the module docs.
#[derive(Debug)]
pub struct WindowEngine {
    defs: Vec<WindowDef>,
    stores: Vec<PaneStore>,
    /// Per window: the start of the earliest window not yet closed.
    next_start: Vec<i64>,
    lateness: i64,
    /// The watermark at which the next window closes.
    next_due: i64,
    /// Scratch for merging panes: output row of each series, or NONE.
    slot: Vec<u32>,
    /// Scratch for [`Self::close_series`]: (pane start, pane index, row).
    series_panes: Vec<(i64, u32, u32)>,
}

impl WindowEngine {
    pub fn new(windows: &[WindowConfig], lateness_ms: i64) -> Self {
        let mut defs = Vec::new();
        let mut stores: Vec<PaneStore> = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let size = w.size.ms();
            let slide = match w.kind {
                WindowKind::Tumbling => size,
                WindowKind::Sliding => w.slide().ms(),
            };
            let width = gcd(size, slide);
            let store = match stores.iter().position(|s| s.width == width) {
                Some(s) => s,
                None => {
                    stores.push(PaneStore {
                        width,
                        panes: VecDeque::new(),
                        pool: Vec::new(),
                        windows: Vec::new(),
                        hints: Vec::new(),
                        heads: Vec::new(),
                        chained: false,
                    });
                    stores.len() - 1
                }
            };
            stores[store].windows.push(i);
            defs.push(WindowDef {
                name: Arc::from(w.name.as_str()),
                size,
                slide,
                store,
            });
        }
        let n = defs.len();
        let mut e = WindowEngine {
            defs,
            stores,
            next_start: vec![i64::MIN / 4; n],
            lateness: lateness_ms,
            next_due: i64::MIN,
            slot: Vec::new(),
            series_panes: Vec::new(),
        };
        e.refresh_due();
        e
    }

    pub fn defs(&self) -> &[WindowDef] {
        &self.defs
    }

    /// Per-device event time: series' rows are chained through the panes for
    /// [`Self::close_series`]. Set before the first event.
    pub fn chain_series(&mut self) {
        for store in &mut self.stores {
            store.chained = true;
        }
    }

    /// `pipeline.allowed_lateness`, ms.
    pub fn lateness(&self) -> i64 {
        self.lateness
    }

    /// Whether the watermark has reached a window's close point.
    #[inline]
    pub fn due(&self, wm: i64) -> bool {
        wm >= self.next_due
    }

    /// Adds an event to every window definition still open for it.
    /// Returns false if it is late for all of them. `offset` is the event's position in
    /// its source (a Kafka offset; `i64::MAX` when there is none), see [`Self::min_offset`].
    #[inline]
    pub fn update(&mut self, series: u32, t: i64, v: f64, arrived_ns: u64, offset: i64) -> bool {
        let mut accepted = false;
        for store in &mut self.stores {
            let open = store
                .windows
                .iter()
                .any(|&w| align_down(t, self.defs[w].slide) >= self.next_start[w]);
            if open {
                store.add(series, t, v, arrived_ns, offset);
                accepted = true;
            }
        }
        accepted
    }

    /// [`Self::update`] for per-device event time: the event's device has watermark
    /// `wm`, and a window is open while `wm` has not reached its close point.
    #[inline]
    pub fn update_device(
        &mut self,
        series: u32,
        t: i64,
        v: f64,
        arrived_ns: u64,
        offset: i64,
        wm: i64,
    ) -> bool {
        let mut accepted = false;
        for store in &mut self.stores {
            let open = store.windows.iter().any(|&w| {
                let d = &self.defs[w];
                align_down(t, d.slide) + d.size + self.lateness > wm
            });
            if open {
                store.add(series, t, v, arrived_ns, offset);
                accepted = true;
            }
        }
        accepted
    }

    /// The step of the grid every close point lies on: a close point is `end +
    /// allowed_lateness` with `end` a multiple of this (plus nothing: windows are
    /// aligned to the epoch). A watermark between two grid points closes nothing
    /// more than the lower one did.
    pub fn close_grid(&self) -> i64 {
        self.defs
            .iter()
            .map(|d| gcd(d.size, d.slide))
            .reduce(gcd)
            .unwrap_or(i64::MAX / 8)
    }

    /// The first close point after watermark `wm` (see [`Self::close_grid`]).
    pub fn next_close_point(&self, wm: i64, grid: i64) -> i64 {
        let wm = wm.max(i64::MIN / 4);
        (align_down(wm - self.lateness, grid) + grid).saturating_add(self.lateness)
    }

    /// The start of definition `w`'s first window still open at watermark `wm`.
    fn first_open(&self, w: usize, wm: i64) -> i64 {
        let WindowDef { size, slide, .. } = self.defs[w];
        let wm = wm.clamp(i64::MIN / 4, END_OF_TIME);
        align_down(wm - self.lateness - size, slide) + slide
    }

    /// Per-device event time: the device of `series` has its watermark moved from
    /// `from` to `to`. Appends a row for each of the series' windows whose close point
    /// is in `(from, to]` (per definition, in window order), records their events'
    /// arrival → close latency (µs) when given `(now, histogram)`, and lets go of the
    /// series' rows in panes no open window of it covers (a pane nobody holds a row of
    /// is recycled). Whether the series still has data in an open window.
    pub fn close_series(
        &mut self,
        series: u32,
        from: i64,
        to: i64,
        out: &mut WindowOutput,
        mut latency: Option<(u64, &mut Histogram<u64>)>,
    ) -> bool {
        let mut open = false;
        let mut data = std::mem::take(&mut self.series_panes);
        for si in 0..self.stores.len() {
            let windows = &self.stores[si].windows;
            let keep_from = |wm| {
                windows
                    .iter()
                    .map(|&w| self.first_open(w, wm))
                    .min()
                    .unwrap_or(i64::MAX)
            };
            let (held_from, held_to) = (keep_from(from), keep_from(to));
            let store = &self.stores[si];
            // The series' rows in the panes it may still hold: (start, pane, row).
            data.clear();
            if store.chained {
                let (mut at, mut row) = store
                    .heads
                    .get(series as usize)
                    .copied()
                    .unwrap_or((NO_PANE, 0));
                while at != NO_PANE {
                    let Some(i) = store.index_of(at) else { break };
                    data.push((at, i as u32, row));
                    let p = &store.panes[i];
                    (at, row) = (p.prev_start[row as usize], p.prev_row[row as usize]);
                }
                data.sort_unstable_by_key(|d| d.0);
            } else {
                let first = store.panes.partition_point(|p| p.start < held_from);
                for (i, p) in store.panes.iter().enumerate().skip(first) {
                    if let Some(&row) = p.rows.get(&series) {
                        data.push((p.start, i as u32, row));
                    }
                }
            }
            if data.is_empty() {
                continue;
            }
            for &w in &store.windows {
                let WindowDef { size, slide, .. } = self.defs[w];
                let (mut s, until) = (self.first_open(w, from), self.first_open(w, to));
                let mut k = 0;
                loop {
                    while data.get(k).is_some_and(|d| d.0 < s) {
                        k += 1;
                    }
                    let Some(&(pane_start, _, _)) = data.get(k) else {
                        break;
                    };
                    // The first window from `s` on that holds this pane.
                    s = s.max(align_down(pane_start - size, slide) + slide);
                    if s >= until {
                        break;
                    }
                    let mut agg: Option<Agg> = None;
                    let mut oldest = u64::MAX;
                    for &(start, pane, row) in data[k..].iter().take_while(|d| d.0 < s + size) {
                        let p = &store.panes[pane as usize];
                        let a = p.aggs[row as usize];
                        oldest = oldest.min(p.arrivals.first().map_or(u64::MAX, |x| x.0));
                        debug_assert!(start >= s);
                        agg = Some(match agg {
                            None => a,
                            Some(m) => Agg {
                                count: m.count + a.count,
                                sum: m.sum + a.sum,
                                min: m.min.min(a.min),
                                max: m.max.max(a.max),
                            },
                        });
                    }
                    let a = agg.expect("the window holds the pane at k");
                    out.push(w as u16, series, s, s + size, a.count, a.sum, a.min, a.max);
                    if let Some((now_ns, h)) = latency.as_mut()
                        && oldest != u64::MAX
                    {
                        let us = now_ns.saturating_sub(oldest) / 1000;
                        let _ = h.record_n(us.max(1), a.count);
                    }
                    s += slide;
                }
            }
            // Rows in panes before the first still held are let go; the chain is
            // relinked through the rows kept, newest first.
            let store = &mut self.stores[si];
            if store.chained {
                let mut prev = (NO_PANE, 0);
                for &(start, pane, row) in data.iter().filter(|d| d.0 >= held_to) {
                    let p = &mut store.panes[pane as usize];
                    p.prev_start[row as usize] = prev.0;
                    p.prev_row[row as usize] = prev.1;
                    prev = (start, row);
                }
                store.heads[series as usize] = prev;
            }
            for &(start, pane, _) in data.iter().rev() {
                if start >= held_to {
                    open = true;
                    continue;
                }
                let p = &mut store.panes[pane as usize];
                p.live -= 1;
                if p.live == 0
                    && let Some(p) = store.panes.remove(pane as usize)
                {
                    store.pool.push(p);
                }
            }
        }
        self.series_panes = data;
        open
    }

    /// Asks for the cache line of `series`'s aggregates in each store's newest pane,
    /// where its next event most likely lands (a hint: nothing is checked or changed).
    #[inline]
    pub fn prefetch(&self, series: u32) {
        for store in &self.stores {
            if let (Some(pane), Some(&row)) = (store.panes.back(), store.hints.get(series as usize))
                && let Some(agg) = pane.aggs.get(row as usize)
            {
                crate::hint::prefetch_line((agg as *const Agg).cast());
            }
        }
    }

    /// Closes every window whose close point the watermark `wm` has reached, appending
    /// one row per series to `out` (per definition, in window order), and records the
    /// arrival → close latency of their events (µs) in `latency`.
    pub fn close(
        &mut self,
        wm: i64,
        series_count: usize,
        now_ns: u64,
        out: &mut WindowOutput,
        latency: &mut Histogram<u64>,
    ) {
        if self.slot.len() < series_count {
            self.slot.resize(series_count, NONE);
        }
        for w in 0..self.defs.len() {
            let next = self.emit_windows(w, wm, out, Some((now_ns, &mut *latency)));
            let WindowDef { size, slide, .. } = self.defs[w];
            let first_open =
                align_down(wm.saturating_sub(self.lateness).saturating_sub(size), slide) + slide;
            self.next_start[w] = next.max(first_open);
        }
        for store in &mut self.stores {
            let keep_from = store
                .windows
                .iter()
                .map(|&w| self.next_start[w])
                .min()
                .unwrap_or(i64::MAX);
            store.drop_before(keep_from);
        }
        self.refresh_due();
    }

    fn refresh_due(&mut self) {
        self.next_due = self
            .defs
            .iter()
            .zip(&self.next_start)
            .map(|(d, &s)| s.saturating_add(d.size).saturating_add(self.lateness))
            .min()
            .unwrap_or(i64::MAX);
    }

    /// Appends one row per series for every window not yet closed that holds data,
    /// with its aggregates so far (for queries over live windows). Changes nothing.
    pub fn open_windows(&mut self, series_count: usize, out: &mut WindowOutput) {
        if self.slot.len() < series_count {
            self.slot.resize(series_count, NONE);
        }
        for w in 0..self.defs.len() {
            self.emit_windows(w, i64::MAX, out, None);
        }
    }

    /// Appends the rows of definition `w`'s windows that hold data, from its first
    /// unclosed start up to those whose close point (end + lateness) is at most `wm`,
    /// recording their events' arrival → close latency (µs) when given `(now, histogram)`.
    /// Returns the start after the last window emitted. `slot` must cover every series.
    fn emit_windows(
        &mut self,
        w: usize,
        wm: i64,
        out: &mut WindowOutput,
        mut latency: Option<(u64, &mut Histogram<u64>)>,
    ) -> i64 {
        let WindowDef {
            size, slide, store, ..
        } = self.defs[w];
        let store_ref = &self.stores[store];
        let mut next = self.next_start[w];
        while let Some((s, panes)) = store_ref.next_with_data(next, size, slide) {
            if s.saturating_add(size).saturating_add(self.lateness) > wm {
                break;
            }
            if !panes.is_empty() {
                emit(
                    &store_ref.panes,
                    panes.clone(),
                    w as u16,
                    s,
                    s + size,
                    &mut self.slot,
                    out,
                );
                if let Some((now_ns, h)) = latency.as_mut() {
                    for p in panes {
                        for &(at, n) in &store_ref.panes[p].arrivals {
                            let us = now_ns.saturating_sub(at) / 1000;
                            let _ = h.record_n(us.max(1), n as u64);
                        }
                    }
                }
            }
            next = s + slide;
        }
        next
    }

    /// The smallest source offset of any event still held for a window that has not
    /// closed (`i64::MAX` if none): replaying from there rebuilds every open window.
    pub fn min_offset(&self) -> i64 {
        self.stores
            .iter()
            .flat_map(|s| &s.panes)
            .map(|p| p.min_offset)
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Bytes held by panes (open and recycled) and per-series scratch.
    pub fn heap_bytes(&self) -> usize {
        let pane = |p: &Pane| {
            p.rows.capacity() * (std::mem::size_of::<(u32, u32)>() + 1)
                + p.series.capacity() * 4
                + p.aggs.capacity() * std::mem::size_of::<Agg>()
                + p.arrivals.capacity() * 16
                + p.prev_start.capacity() * 8
                + p.prev_row.capacity() * 4
        };
        let stores: usize = self
            .stores
            .iter()
            .map(|s| {
                s.panes.iter().chain(&s.pool).map(pane).sum::<usize>()
                    + s.hints.capacity() * 4
                    + s.heads.capacity() * 16
            })
            .sum();
        stores + self.slot.capacity() * 4 + self.series_panes.capacity() * 16
    }

    /// Panes currently held (for memory checks and metrics).
    pub fn open_panes(&self) -> usize {
        self.stores.iter().map(|s| s.panes.len()).sum()
    }
}

/// Appends one row per series in `panes[range]`, merging across panes.
fn emit(
    panes: &VecDeque<Pane>,
    range: std::ops::Range<usize>,
    w: u16,
    start: i64,
    end: i64,
    slot: &mut [u32],
    out: &mut WindowOutput,
) {
    if range.len() == 1 {
        let p = &panes[range.start];
        for (&series, a) in p.series.iter().zip(&p.aggs) {
            out.push(w, series, start, end, a.count, a.sum, a.min, a.max);
        }
        return;
    }
    let first_row = out.len();
    for pi in range {
        let p = &panes[pi];
        for (&series, a) in p.series.iter().zip(&p.aggs) {
            let o = slot[series as usize];
            if o == NONE {
                slot[series as usize] = out.len() as u32;
                out.push(w, series, start, end, a.count, a.sum, a.min, a.max);
            } else {
                let o = o as usize;
                out.count[o] += a.count;
                out.sum[o] += a.sum;
                out.min[o] = out.min[o].min(a.min);
                out.max[o] = out.max[o].max(a.max);
            }
        }
    }
    for &s in &out.series[first_row..] {
        slot[s as usize] = NONE;
    }
}

#[cfg(test)]
mod tests;
