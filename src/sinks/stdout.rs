//! The `pretty` stdout format: one line per alert and a summary line per closed
//! window set, for a person watching a terminal (the embedded demo uses it).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType};

use super::Output;
use crate::event::{AlertState, col, rfc3339_ms};

/// Per type within one (window, end): rows, sum of averages, and the top average.
#[derive(Default)]
struct TypeSummary {
    rows: u64,
    sum_avg: f64,
    top: f64,
    top_device: String,
}

pub struct PrettySink {
    windows: bool,
    alerts: bool,
    /// (windowEnd, window) → type → summary, printed once no partition has added to it
    /// for [`SETTLE`] (partitions close the same window moments apart).
    pending: BTreeMap<(i64, String), (Instant, BTreeMap<String, TypeSummary>)>,
}

const SETTLE: Duration = Duration::from_millis(500);

impl PrettySink {
    pub fn new(windows: bool, alerts: bool) -> Self {
        PrettySink {
            windows,
            alerts,
            pending: BTreeMap::new(),
        }
    }

    pub fn write(&mut self, out: &Output) -> io::Result<()> {
        if let (true, Some(b)) = (self.windows, &out.windows) {
            let text = |c: usize| b.column(c).as_string::<i32>();
            let (window, device, kind) = (text(col::WINDOW), text(col::DEVICE_ID), text(col::TYPE));
            let end = b
                .column(col::WINDOW_END)
                .as_primitive::<TimestampMillisecondType>();
            let avg = b.column(col::AVG).as_primitive::<Float64Type>();
            for r in 0..b.num_rows() {
                let entry = self
                    .pending
                    .entry((end.value(r), window.value(r).to_owned()))
                    .or_insert_with(|| (Instant::now(), BTreeMap::new()));
                entry.0 = Instant::now();
                let s = entry.1.entry(kind.value(r).to_owned()).or_default();
                s.rows += 1;
                s.sum_avg += avg.value(r);
                if s.rows == 1 || avg.value(r) > s.top {
                    s.top = avg.value(r);
                    s.top_device = device.value(r).to_owned();
                }
            }
        }
        if self.alerts && !out.alerts.is_empty() {
            let mut w = io::stdout().lock();
            for a in &out.alerts {
                let state = match a.state {
                    AlertState::Raised => "RAISED ",
                    AlertState::Cleared => "cleared",
                };
                writeln!(
                    w,
                    "ALERT {state} {rule:<12} {dev}  {kind} {value:>9.2}  {window} [{start} .. {end})",
                    rule = a.rule,
                    dev = a.device_id,
                    kind = a.kind,
                    value = a.value,
                    window = a.window,
                    start = &a.window_start[11..19],
                    end = &a.window_end[11..19],
                )?;
            }
        }
        Ok(())
    }

    /// Prints the summaries that have settled; `all` prints every one (shutdown).
    pub fn flush(&mut self, all: bool) -> io::Result<()> {
        let mut w = io::stdout().lock();
        let settled: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, (at, _))| all || at.elapsed() >= SETTLE)
            .map(|(k, _)| k.clone())
            .collect();
        for key in settled {
            let (end, window) = key.clone();
            let (_, types) = self.pending.remove(&key).expect("listed above");
            let mut line = format!("windows {window:<12} closed at {}", &rfc3339_ms(end)[..19]);
            for (kind, s) in types {
                line.push_str(&format!(
                    " | {kind}: {} series, mean avg {:.1}, top {:.1} ({})",
                    s.rows,
                    s.sum_avg / s.rows as f64,
                    s.top,
                    s.top_device
                ));
            }
            writeln!(w, "{line}")?;
        }
        w.flush()
    }
}
