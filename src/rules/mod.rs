//! Stage 3: threshold rules with hysteresis over closed windows.
//!
//! In: closed-window rows, in window order per definition ([`WindowOutput`]).
//! Out: [`Alert`]s: `raised` when a series' window first satisfies `when`, `cleared`
//! when a later window satisfies `clear` (default: `when` no longer holds). Between the
//! two nothing is emitted, so a device that stays above the threshold raises once.
//! Owner: one [`RuleEngine`] per partition actor; state is a bit per (rule, series).
//!
//! A moving-average rule is a rule on a sliding window's `avg`.

pub mod expr;

use std::sync::Arc;

use crate::config::RuleConfig;
use crate::event::{Alert, AlertState, rfc3339_ms};
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
}

/// Resolves a row's series to its device and type names.
pub trait SeriesNames {
    fn device(&self, series: u32) -> &str;
    fn kind(&self, series: u32) -> &str;
}

/// All rules of one partition.
pub struct RuleEngine {
    rules: Vec<Rule>,
    /// Alerts currently raised.
    pub open: u64,
    /// Raised (rule, series) keys restored from a checkpoint, applied when the
    /// series is first evaluated (see [`raised_key`]).
    restored: hashbrown::HashSet<u64>,
}

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
}

impl Row for WindowRow<'_> {
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
}

impl RuleEngine {
    pub fn new(rules: &[RuleConfig], windows: &[WindowDef]) -> Result<Self, RuleError> {
        let mut out = Vec::new();
        for r in rules {
            let err = |message: String| RuleError {
                rule: r.name.clone(),
                message,
            };
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
            out.push(Rule {
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
            open: 0,
            restored: hashbrown::HashSet::new(),
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
    /// state changes to `alerts`.
    pub fn evaluate(
        &mut self,
        out: &WindowOutput,
        from: usize,
        windows: &[WindowDef],
        names: &impl SeriesNames,
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
                };
                if rule.filter.as_ref().is_some_and(|f| !f.eval(&row)) {
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
}
