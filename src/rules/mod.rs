//! Stage 3: threshold rules with hysteresis over closed windows.
//!
//! In: closed-window rows, in window order per definition ([`WindowOutput`]).
//! Out: [`Alert`]s: `raised` when a series' window first satisfies `when`, `cleared`
//! when a later window satisfies `clear` (default: `when` no longer holds). Between the
//! two nothing is emitted, so a device that stays above the threshold raises once.
//! Owner: one [`RuleEngine`] per partition actor; state is a bit per (rule, series).
//!
//! A moving-average rule is a rule on a sliding window's `avg`.
//!
//! Absence rules (`kind = "absence"`) raise when a series (a device, per type unless
//! the filter pins one) has sent nothing for `after` of the partition's event time,
//! and clear when it reports again. Per event they cost a store of the series'
//! last-seen time; a heap holds at most one deadline per (rule, series), checked
//! lazily when it comes due (the series may have reported since), so firing never
//! scans every series. The alert's times come from event time only (last seen,
//! last seen + `after`, the time it reported again), so a replay writes the same
//! alerts.
//!
//! An absence rule with `expect = "table"` also watches the devices a reference table
//! lists that never report: each is owned by one partition (the caller says which),
//! which raises it once its watermark is `after` past the time it started watching
//! ([`RuleEngine::watch_from`], kept in checkpoints), and clears it when the device
//! first reports. These are kept sorted by `after`, so firing them is a cursor.

pub mod expr;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::config::{After, RuleConfig, RuleKind};
use crate::event::{Alert, AlertState, rfc3339_ms};
use crate::reference::Table;
use crate::windows::{WindowDef, WindowOutput};
use expr::{Agg, Expr, Key, Row};

/// Why a rule could not be built.
#[derive(Debug, thiserror::Error)]
#[error("rule {rule:?}: {message}")]
pub struct RuleError {
    pub rule: String,
    pub message: String,
}

struct Rule {
    name: Arc<str>,
    window: u16,
    filter: Option<Expr>,
    when: Expr,
    clear: Expr,
    when_agg: Agg,
    clear_agg: Agg,
    /// Per series: whether an alert is open.
    raised: Vec<bool>,
    /// `when` or `clear` reads reference columns.
    uses_references: bool,
}

/// An absence rule.
struct Absence {
    name: Arc<str>,
    filter: Option<Expr>,
    /// A fixed `after`, ms (0 when a reference column gives it).
    after_ms: i64,
    /// `after = "table.column"`: seconds per device, and per series the value looked
    /// up (ms; 0: not yet, -1: the table has none, the rule does not apply), as of
    /// the tables' `cache_generation`.
    column: Option<(String, String)>,
    after_cache: Vec<i64>,
    cache_generation: u64,
    /// Per series: [`APPLIES`], [`RAISED`], [`QUEUED`], [`DECIDED`] bits.
    state: Vec<u8>,
    /// `expect = "table"`: the listed devices not seen yet.
    expect: Option<Expected>,
}

/// The devices an absence rule's `expect` table lists that this partition owns and
/// has not seen (see the module docs).
struct Expected {
    table: String,
    /// The tables' generation `pending` was built from (`u64::MAX`: not yet).
    generation: u64,
    /// Sorted by `after`: their deadlines (`watch_from + after`) are in order.
    pending: Vec<Pending>,
    /// `pending[..cursor]` have come due.
    cursor: usize,
    /// Each device's entries in `pending`.
    by_device: hashbrown::HashMap<Box<str>, Vec<u32>>,
    /// Hashes ([`seen_hash`]) of the devices, and of the (device, type)s, the rule has
    /// seen: a reload does not list them again.
    seen: hashbrown::HashSet<u64>,
}

struct Pending {
    device: Box<str>,
    /// The table's type ("": any type the rule's filter takes).
    kind: Box<str>,
    after: i64,
    raised: bool,
    seen: bool,
}

/// [`Expected::seen`]'s hash of a device (`kind` ""), or of a (device, type).
fn seen_hash(device: &str, kind: &str) -> u64 {
    raised_key("", device, kind)
}

impl Expected {
    /// Lists again what the table lists (after a reload): entries raised and still
    /// unseen stay raised; a device the table no longer lists is no longer watched.
    fn rebuild(
        &mut self,
        tables: &[Arc<Table>],
        generation: u64,
        column: Option<&(String, String)>,
        after_ms: i64,
        owns: &dyn Fn(&str) -> bool,
    ) -> u64 {
        let raised: hashbrown::HashSet<(Box<str>, Box<str>)> = self
            .pending
            .drain(..)
            .filter(|p| p.raised && !p.seen)
            .map(|p| (p.device, p.kind))
            .collect();
        let mut dropped = raised.len() as u64;
        self.generation = generation;
        self.cursor = 0;
        self.by_device.clear();
        let Some(t) = tables.iter().find(|t| *t.name == *self.table) else {
            return dropped;
        };
        let after_col = column.and_then(|(table, c)| {
            let at = tables.iter().find(|t| *t.name == **table)?;
            Some((at, c))
        });
        for (device, kind, _) in t.iter() {
            if self.seen.contains(&seen_hash(device, kind)) || !owns(device) {
                continue;
            }
            let after = match (column, after_col) {
                (None, _) => after_ms,
                (Some(_), Some((at, c))) => match at.value(device, kind, c) {
                    Some(v) if v > 0.0 => ((v * 1000.0) as i64).max(1),
                    _ => continue,
                },
                (Some(_), None) => continue,
            };
            let was = !raised.is_empty() && raised.contains(&(Box::from(device), Box::from(kind)));
            dropped -= was as u64;
            self.pending.push(Pending {
                device: device.into(),
                kind: kind.into(),
                after,
                raised: was,
                seen: false,
            });
        }
        self.pending.sort_by_key(|p| p.after);
        for (i, p) in self.pending.iter().enumerate() {
            self.by_device
                .entry(p.device.clone())
                .or_default()
                .push(i as u32);
        }
        dropped
    }
}

/// The rule's filter takes the series (valid once [`DECIDED`]).
const APPLIES: u8 = 1;
/// An absence alert of the series is open.
const RAISED: u8 = 2;
/// The series has a deadline in the heap.
const QUEUED: u8 = 4;
/// The filter was evaluated for the series.
const DECIDED: u8 = 8;
/// A checkpoint's raised keys were looked up for the series.
const RESTORE_CHECKED: u8 = 16;

impl Absence {
    /// How long `series` may stay silent, ms: the fixed `after`, or its device's
    /// column value (looked up once per series and table generation); `None` where
    /// the table does not list the device (the rule does not apply to it).
    #[inline]
    fn after(
        &mut self,
        series: u32,
        names: &impl SeriesNames,
        tables: &[Arc<Table>],
        generation: u64,
    ) -> Option<i64> {
        let Some((table, column)) = &self.column else {
            return Some(self.after_ms);
        };
        if self.cache_generation != generation {
            self.after_cache.fill(0);
            self.cache_generation = generation;
        }
        let s = series as usize;
        if self.after_cache.len() <= s {
            self.after_cache.resize(s + 1, 0);
        }
        if self.after_cache[s] == 0 {
            let secs = tables
                .iter()
                .find(|t| *t.name == **table)
                .and_then(|t| t.value(names.device(series), names.kind(series), column));
            self.after_cache[s] = match secs {
                Some(v) if v > 0.0 => ((v * 1000.0) as i64).max(1),
                _ => -1,
            };
        }
        (self.after_cache[s] > 0).then_some(self.after_cache[s])
    }
}

/// The keys an absence rule's filter reads: a series, no aggregates.
struct SeriesRow<'a> {
    device: &'a str,
    kind: &'a str,
    rule: &'a str,
}

impl Row for SeriesRow<'_> {
    fn agg(&self, _: Agg) -> f64 {
        f64::NAN // validated: an absence filter tests no aggregate
    }
    fn key(&self, key: Key) -> &str {
        match key {
            Key::Type => self.kind,
            Key::DeviceId => self.device,
            Key::Window => self.rule,
        }
    }
}

/// Resolves a row's series to its device and type names.
pub trait SeriesNames {
    fn device(&self, series: u32) -> &str;
    fn kind(&self, series: u32) -> &str;
}

/// All rules of one partition.
pub struct RuleEngine {
    rules: Vec<Rule>,
    absences: Vec<Absence>,
    /// Per series: the latest event time seen (`i64::MIN`: none), for absence rules.
    last_seen: Vec<i64>,
    /// Absence deadlines: (last seen + after, rule, series), soonest first.
    deadlines: BinaryHeap<Reverse<(i64, u32, u32)>>,
    /// Alerts currently raised.
    pub open: u64,
    /// Raised (rule, series) keys restored from a checkpoint, applied when the
    /// series is first evaluated (see [`raised_key`]).
    restored: hashbrown::HashSet<u64>,
    /// The watermark when absence rules started watching the devices `expect`
    /// tables list (`i64::MIN`: no event yet); kept in checkpoints, so that a replay
    /// raises them at the same time.
    pub watch_from: i64,
    /// Whether this partition watches a device an `expect` table lists (`None`: all).
    owns: Option<Owns>,
}

/// Whether a partition watches a device an `expect` table lists.
pub type Owns = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A 48-bit key of a raised alert's (rule, device, type), for checkpoints: compact
/// enough that hundreds fit in a Kafka commit's metadata, and independent of the
/// dense numbering, which a restart does not reproduce.
pub fn raised_key(rule: &str, device: &str, kind: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [rule, device, kind] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.digest() >> 16
}

struct WindowRow<'a> {
    out: &'a WindowOutput,
    i: usize,
    device: &'a str,
    kind: &'a str,
    window: &'a str,
    tables: &'a [Arc<Table>],
    /// The device's row in the table last read: (table index, row), so that the
    /// conditions' columns cost one lookup per window.
    looked_up: std::cell::Cell<Option<LookedUp<'a>>>,
}

/// A device's row in a reference table: (the table's index, the row if it has one).
type LookedUp<'a> = (usize, Option<&'a [f64]>);

impl<'a> Row for WindowRow<'a> {
    fn agg(&self, agg: Agg) -> f64 {
        let (o, i) = (self.out, self.i);
        match agg {
            Agg::Count => o.count[i] as f64,
            Agg::Sum => o.sum[i],
            Agg::Avg => o.sum[i] / o.count[i] as f64,
            Agg::Min => o.min[i],
            Agg::Max => o.max[i],
        }
    }
    fn key(&self, key: Key) -> &str {
        match key {
            Key::Type => self.kind,
            Key::DeviceId => self.device,
            Key::Window => self.window,
        }
    }
    fn reference(&self, table: &str, column: &str) -> Option<f64> {
        let i = self.tables.iter().position(|t| *t.name == *table)?;
        let t: &'a Table = &self.tables[i];
        let row = match self.looked_up.get() {
            Some((at, row)) if at == i => row,
            _ => {
                let row = t.row(self.device, self.kind);
                self.looked_up.set(Some((i, row)));
                row
            }
        }?;
        let c = t.columns.iter().position(|x| **x == *column)?;
        Some(row[c]).filter(|v| !v.is_nan())
    }
}

impl RuleEngine {
    pub fn new(rules: &[RuleConfig], windows: &[WindowDef]) -> Result<Self, RuleError> {
        let mut out = Vec::new();
        let mut absences = Vec::new();
        for r in rules {
            let err = |message: String| RuleError {
                rule: r.name.clone(),
                message,
            };
            if r.kind == RuleKind::Absence {
                absences.push(Absence {
                    name: Arc::from(r.name.as_str()),
                    filter: r
                        .filter
                        .as_deref()
                        .map(expr::parse)
                        .transpose()
                        .map_err(|e| err(format!("filter: {e}")))?,
                    after_ms: match &r.after {
                        Some(After::Fixed(d)) => d.ms().max(1),
                        Some(After::Column { .. }) => 0,
                        None => return Err(err("an absence rule needs after".into())),
                    },
                    column: match &r.after {
                        Some(After::Column { table, column }) => {
                            Some((table.clone(), column.clone()))
                        }
                        _ => None,
                    },
                    after_cache: Vec::new(),
                    cache_generation: 0,
                    state: Vec::new(),
                    expect: r.expect.as_ref().map(|table| Expected {
                        table: table.clone(),
                        generation: u64::MAX,
                        pending: Vec::new(),
                        cursor: 0,
                        by_device: hashbrown::HashMap::new(),
                        seen: hashbrown::HashSet::new(),
                    }),
                });
                continue;
            }
            let window = windows
                .iter()
                .position(|w| *w.name == *r.window)
                .ok_or_else(|| err(format!("no window named {:?}", r.window)))?;
            let filter = r
                .filter
                .as_deref()
                .map(expr::parse)
                .transpose()
                .map_err(|e| err(format!("filter: {e}")))?;
            let when = expr::parse(&r.when).map_err(|e| err(format!("when: {e}")))?;
            let clear = match &r.clear {
                Some(c) => expr::parse(c).map_err(|e| err(format!("clear: {e}")))?,
                None => Expr::Not(Box::new(when.clone())),
            };
            let when_agg = when
                .first_aggregate()
                .ok_or_else(|| err("when tests no aggregate".into()))?;
            let clear_agg = clear
                .first_aggregate()
                .ok_or_else(|| err("clear tests no aggregate".into()))?;
            let uses_references = !when.references().is_empty() || !clear.references().is_empty();
            out.push(Rule {
                uses_references,
                name: Arc::from(r.name.as_str()),
                window: window as u16,
                filter,
                when,
                clear,
                when_agg,
                clear_agg,
                raised: Vec::new(),
            });
        }
        Ok(RuleEngine {
            rules: out,
            absences,
            last_seen: Vec::new(),
            deadlines: BinaryHeap::new(),
            open: 0,
            restored: hashbrown::HashSet::new(),
            watch_from: i64::MIN,
            owns: None,
        })
    }

    /// The keys ([`raised_key`]) of every alert currently raised.
    pub fn raised_keys(&self, names: &impl SeriesNames) -> Vec<u64> {
        let mut keys: Vec<u64> = self.restored.iter().copied().collect();
        for rule in &self.rules {
            for (s, _) in rule.raised.iter().enumerate().filter(|(_, r)| **r) {
                let s = s as u32;
                keys.push(raised_key(&rule.name, names.device(s), names.kind(s)));
            }
        }
        for a in &self.absences {
            for (s, _) in a
                .state
                .iter()
                .enumerate()
                .filter(|(_, b)| **b & RAISED != 0)
            {
                let s = s as u32;
                keys.push(raised_key(&a.name, names.device(s), names.kind(s)));
            }
            if let Some(e) = &a.expect {
                keys.extend(
                    e.pending
                        .iter()
                        .filter(|p| p.raised && !p.seen)
                        .map(|p| raised_key(&a.name, &p.device, &p.kind)),
                );
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Marks alerts as raised (from a checkpoint): when a window of one of them next
    /// closes, the rule continues from `raised` instead of raising again.
    pub fn restore(&mut self, keys: impl IntoIterator<Item = u64>) {
        self.restored.extend(keys);
        self.open = self.restored.len() as u64;
    }

    /// Evaluates every rule on the rows of `out` from `from` on, in order, appending
    /// state changes to `alerts`. `tables` are the reference tables expressions read:
    /// a rule does not apply to a device they do not list.
    pub fn evaluate(
        &mut self,
        out: &WindowOutput,
        from: usize,
        windows: &[WindowDef],
        names: &impl SeriesNames,
        tables: &[Arc<Table>],
        alerts: &mut Vec<Alert>,
    ) {
        if self.rules.is_empty() {
            return;
        }
        for i in from..out.len() {
            let w = out.window[i];
            for rule in self.rules.iter_mut().filter(|r| r.window == w) {
                let series = out.series[i];
                let row = WindowRow {
                    out,
                    i,
                    device: names.device(series),
                    kind: names.kind(series),
                    window: &windows[w as usize].name,
                    tables,
                    looked_up: std::cell::Cell::new(None),
                };
                if rule.filter.as_ref().is_some_and(|f| !f.eval(&row)) {
                    continue;
                }
                if rule.uses_references
                    && !(rule.when.references_present(&row) && rule.clear.references_present(&row))
                {
                    continue;
                }
                let s = series as usize;
                if rule.raised.len() <= s {
                    rule.raised.resize(s + 1, false);
                }
                if !self.restored.is_empty()
                    && self
                        .restored
                        .remove(&raised_key(&rule.name, row.device, row.kind))
                {
                    // Restored: already counted in `open`.
                    rule.raised[s] = true;
                }
                let (state, agg) = if !rule.raised[s] && rule.when.eval(&row) {
                    rule.raised[s] = true;
                    self.open += 1;
                    (AlertState::Raised, rule.when_agg)
                } else if rule.raised[s] && rule.clear.eval(&row) {
                    rule.raised[s] = false;
                    self.open -= 1;
                    (AlertState::Cleared, rule.clear_agg)
                } else {
                    continue;
                };
                let window_end = rfc3339_ms(out.end[i]);
                alerts.push(Alert {
                    id: format!("{}|{}|{}", rule.name, row.device, window_end),
                    rule: rule.name.clone(),
                    device_id: row.device.to_owned(),
                    kind: row.kind.to_owned(),
                    window: windows[w as usize].name.clone(),
                    window_start: rfc3339_ms(out.start[i]),
                    window_end,
                    value: row.agg(agg),
                    state,
                });
            }
        }
    }

    /// Whether any absence rule is configured (else [`Self::seen`] need not be called).
    #[inline]
    pub fn has_absence(&self) -> bool {
        !self.absences.is_empty()
    }

    /// Absence rules: an event of `series` at `ts` (not a duplicate), with the
    /// partition's watermark at `wm`. Clears an open absence alert of the series; if
    /// the watermark passed its deadline before it reported (the heap had not fired
    /// yet), raises and clears. `replaying`: read again after a restart, before the
    /// checkpoint (alerts raised at the checkpoint apply from after it).
    #[allow(clippy::too_many_arguments)]
    pub fn seen(
        &mut self,
        series: u32,
        ts: i64,
        wm: i64,
        replaying: bool,
        names: &impl SeriesNames,
        tables: &[Arc<Table>],
        generation: u64,
        alerts: &mut Vec<Alert>,
    ) {
        let s = series as usize;
        if self.last_seen.len() <= s {
            self.last_seen.resize(s + 1, i64::MIN);
            if self.watch_from == i64::MIN {
                self.watch_from = wm; // the first event: `expect` devices are watched
            }
        }
        let prev = self.last_seen[s];
        for (r, a) in self.absences.iter_mut().enumerate() {
            if a.state.len() <= s {
                a.state.resize(s + 1, 0);
            }
            let mut st = a.state[s];
            if st & DECIDED == 0 {
                let row = SeriesRow {
                    device: names.device(series),
                    kind: names.kind(series),
                    rule: &a.name,
                };
                st |= DECIDED
                    | if a.filter.as_ref().is_none_or(|f| f.eval(&row)) {
                        APPLIES
                    } else {
                        0
                    };
            }
            if st & APPLIES == 0 {
                a.state[s] = st;
                continue;
            }
            if a.state[s] & DECIDED == 0
                && let Some(e) = &mut a.expect
            {
                // The series' first event: its device is no longer unseen.
                let owns = |device: &str| self.owns.as_ref().is_none_or(|o| o(device));
                if e.generation != generation {
                    let dropped =
                        e.rebuild(tables, generation, a.column.as_ref(), a.after_ms, &owns);
                    self.open = self.open.saturating_sub(dropped);
                }
                let (device, kind) = (names.device(series), names.kind(series));
                e.seen.insert(seen_hash(device, ""));
                e.seen.insert(seen_hash(device, kind));
                let from = self.watch_from;
                for &i in e.by_device.get(device).into_iter().flatten() {
                    let p = &mut e.pending[i as usize];
                    if p.seen || !(p.kind.is_empty() || *p.kind == *kind) {
                        continue;
                    }
                    p.seen = true;
                    let mut raised = p.raised
                        || !self.restored.is_empty()
                            && self.restored.remove(&raised_key(&a.name, device, &p.kind));
                    if !raised && !replaying && wm >= from.saturating_add(p.after) {
                        // Due before it first reported, noticed only now.
                        alerts.push(absence_alert(
                            &a.name,
                            device,
                            &p.kind,
                            from,
                            p.after,
                            AlertState::Raised,
                        ));
                        self.open += 1;
                        raised = true;
                    }
                    if !raised {
                        continue;
                    }
                    self.open = self.open.saturating_sub(1);
                    if !replaying {
                        let end = ts.max(from);
                        let mut clear = absence_alert(
                            &a.name,
                            device,
                            &p.kind,
                            from,
                            p.after,
                            AlertState::Cleared,
                        );
                        clear.id = format!("{}|{device}|{}", a.name, rfc3339_ms(end));
                        clear.value = (end - from) as f64 / 1000.0;
                        clear.window_end = rfc3339_ms(end);
                        alerts.push(clear);
                    }
                }
            }
            let Some(after) = a.after(series, names, tables, generation) else {
                a.state[s] = st;
                continue; // its reference table does not list the device
            };
            if replaying {
                // Only the last-seen time is rebuilt: what was raised and cleared
                // before the checkpoint was written then (see `fire`).
            } else if st & RESTORE_CHECKED == 0 {
                st |= RESTORE_CHECKED;
                if !self.restored.is_empty()
                    && self.restored.remove(&raised_key(
                        &a.name,
                        names.device(series),
                        names.kind(series),
                    ))
                {
                    st |= RAISED; // already counted in `open`
                }
            }
            if !replaying
                && st & RAISED == 0
                && prev != i64::MIN
                && wm >= prev.saturating_add(after)
            {
                // Silent past its deadline, noticed only now that it reports.
                alerts.push(absence_alert(
                    &a.name,
                    names.device(series),
                    names.kind(series),
                    prev,
                    after,
                    AlertState::Raised,
                ));
                self.open += 1;
                st |= RAISED;
            }
            if st & RAISED != 0 {
                // Raised before a restart and not seen since: its last-seen time is
                // not known, the clear starts where it ends.
                let prev = if prev == i64::MIN { ts } else { prev };
                let mut clear = absence_alert(
                    &a.name,
                    names.device(series),
                    names.kind(series),
                    prev,
                    after,
                    AlertState::Cleared,
                );
                let end = rfc3339_ms(ts.max(prev));
                clear.id = format!("{}|{}|{end}", a.name, names.device(series));
                clear.value = (ts.max(prev) - prev) as f64 / 1000.0;
                clear.window_end = end;
                alerts.push(clear);
                self.open = self.open.saturating_sub(1);
                st &= !RAISED;
            }
            if st & QUEUED == 0 {
                st |= QUEUED;
                let deadline = ts.max(prev).saturating_add(after);
                self.deadlines.push(Reverse((deadline, r as u32, series)));
            }
            a.state[s] = st;
        }
        if ts > prev {
            self.last_seen[s] = ts;
        }
    }

    /// Absence rules: raises an alert for each series whose deadline (last seen +
    /// `after`) the partition's watermark `wm` has reached. Deadlines that moved (the
    /// series reported since) go back in the heap. Not called while replaying after a
    /// restart (the last-seen times are not all rebuilt yet); once the replay is done,
    /// a series silent at the checkpoint raises again with the same id.
    ///
    /// `expect` rules: each device their table lists that this partition watches
    /// ([`Self::set_owner`]) and has not seen raises once the watermark is `after`
    /// past [`Self::watch_from`].
    pub fn fire(
        &mut self,
        wm: i64,
        names: &impl SeriesNames,
        tables: &[Arc<Table>],
        generation: u64,
        alerts: &mut Vec<Alert>,
    ) {
        if self.watch_from != i64::MIN {
            self.fire_expected(wm, tables, generation, alerts);
        }
        while let Some(&Reverse((deadline, r, series))) = self.deadlines.peek() {
            if deadline > wm {
                break;
            }
            self.deadlines.pop();
            let a = &mut self.absences[r as usize];
            let s = series as usize;
            a.state[s] &= !QUEUED;
            if a.state[s] & RAISED != 0 {
                continue; // it is queued again when it reports
            }
            let last = self.last_seen[s];
            let Some(after) = a.after(series, names, tables, generation) else {
                continue; // its reference table no longer lists the device
            };
            let due = last.saturating_add(after);
            if due > wm {
                a.state[s] |= QUEUED;
                self.deadlines.push(Reverse((due, r, series)));
                continue;
            }
            alerts.push(absence_alert(
                &a.name,
                names.device(series),
                names.kind(series),
                last,
                after,
                AlertState::Raised,
            ));
            a.state[s] |= RAISED;
            let key = raised_key(&a.name, names.device(series), names.kind(series));
            if !self.restored.remove(&key) {
                self.open += 1;
            }
        }
    }
}

impl RuleEngine {
    /// Which devices of `expect` tables this partition watches.
    pub fn set_owner(&mut self, owns: Owns) {
        self.owns = Some(owns);
    }

    /// The `expect` rules' unseen devices that came due by `wm`.
    fn fire_expected(
        &mut self,
        wm: i64,
        tables: &[Arc<Table>],
        generation: u64,
        alerts: &mut Vec<Alert>,
    ) {
        let from = self.watch_from;
        let owns = |device: &str| self.owns.as_ref().is_none_or(|o| o(device));
        for a in &mut self.absences {
            let Some(e) = &mut a.expect else { continue };
            if e.generation != generation {
                let dropped = e.rebuild(tables, generation, a.column.as_ref(), a.after_ms, &owns);
                self.open = self.open.saturating_sub(dropped);
            }
            while let Some(p) = e.pending.get_mut(e.cursor) {
                if from.saturating_add(p.after) > wm {
                    break;
                }
                e.cursor += 1;
                if p.seen || p.raised || !owns(&p.device) {
                    continue;
                }
                p.raised = true;
                let key = raised_key(&a.name, &p.device, &p.kind);
                if !self.restored.is_empty() && self.restored.remove(&key) {
                    continue; // raised before the restart, and counted in `open`
                }
                alerts.push(absence_alert(
                    &a.name,
                    &p.device,
                    &p.kind,
                    from,
                    p.after,
                    AlertState::Raised,
                ));
                self.open += 1;
            }
        }
    }
}

/// An absence alert of `series`, last seen at `last`: raised at `last + after` (its
/// `windowEnd`, and `after` in seconds as its value); a clear's end and value are
/// set by the caller.
fn absence_alert(
    rule: &Arc<str>,
    device: &str,
    kind: &str,
    last: i64,
    after: i64,
    state: AlertState,
) -> Alert {
    let end = rfc3339_ms(last.saturating_add(after));
    Alert {
        id: format!("{rule}|{device}|{end}"),
        rule: rule.clone(),
        device_id: device.to_owned(),
        kind: kind.to_owned(),
        window: Arc::from(""),
        window_start: rfc3339_ms(last),
        window_end: end,
        value: after as f64 / 1000.0,
        state,
    }
}
