use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::config::{Dur, WindowConfig, WindowKind};

fn win(name: &str, size_ms: u64, slide_ms: Option<u64>) -> WindowConfig {
    WindowConfig {
        name: name.into(),
        kind: if slide_ms.is_some() {
            WindowKind::Sliding
        } else {
            WindowKind::Tumbling
        },
        size: Dur(std::time::Duration::from_millis(size_ms)),
        slide: slide_ms.map(|s| Dur(std::time::Duration::from_millis(s))),
    }
}

type Key = (u16, u32, i64); // window, series, start
type Agg = (u64, i64, i64, i64); // count, sum, min, max (integer values: exact sums)

fn naive(defs: &[WindowConfig], events: &[(u32, i64, i64)]) -> BTreeMap<Key, Agg> {
    let mut m = BTreeMap::new();
    for (w, d) in defs.iter().enumerate() {
        let size = d.size.ms();
        let slide = d.slide().ms();
        for &(series, t, v) in events {
            let mut s = align_down(t, slide);
            while s > t - size {
                let e = m
                    .entry((w as u16, series, s))
                    .or_insert((0, 0, i64::MAX, i64::MIN));
                e.0 += 1;
                e.1 += v;
                e.2 = e.2.min(v);
                e.3 = e.3.max(v);
                s -= slide;
            }
        }
    }
    m
}

/// Feeds events in arrival order with watermark = max t - ooo, closing as it goes.
fn stream(
    defs: &[WindowConfig],
    arrivals: &[(u32, i64, i64)],
    ooo: i64,
    lateness: i64,
) -> (BTreeMap<Key, Agg>, usize) {
    let mut e = WindowEngine::new(defs, lateness);
    let mut out = WindowOutput::default();
    let mut hist = Histogram::new(3).unwrap();
    let mut wm = i64::MIN;
    let mut late = 0;
    for &(series, t, v) in arrivals {
        wm = wm.max(t - ooo);
        if e.due(wm) {
            e.close(wm, 16, 0, &mut out, &mut hist);
        }
        if !e.update(series, t, v as f64, 0, i64::MAX) {
            late += 1;
        }
    }
    e.close(END_OF_TIME, 16, 0, &mut out, &mut hist);
    assert_eq!(e.open_panes(), 0, "every pane is recycled at the end");
    let mut m = BTreeMap::new();
    for i in 0..out.len() {
        let key = (out.window[i], out.series[i], out.start[i]);
        let size = defs[out.window[i] as usize].size.ms();
        assert_eq!(out.end[i], out.start[i] + size);
        let prev = m.insert(
            key,
            (
                out.count[i],
                out.sum[i] as i64,
                out.min[i] as i64,
                out.max[i] as i64,
            ),
        );
        assert!(prev.is_none(), "window {key:?} emitted twice");
    }
    (m, late)
}

#[test]
fn tumbling_windows_are_epoch_aligned() {
    let defs = [win("t", 60_000, None)];
    let events = [(1, -1, 4), (0, 59_999, 1), (0, 60_000, 2), (0, 119_999, 3)];
    let (got, late) = stream(&defs, &events, 0, 0);
    assert_eq!(late, 0);
    assert_eq!(got, naive(&defs, &events));
    assert!(
        got.contains_key(&(0, 1, -60_000)),
        "negative times align down"
    );
}

#[test]
fn late_events_are_rejected_only_when_every_window_is_closed() {
    let defs = [win("t", 1000, None), win("s", 5000, Some(1000))];
    let mut e = WindowEngine::new(&defs, 0);
    let mut out = WindowOutput::default();
    let mut hist = Histogram::new(3).unwrap();
    assert!(e.update(0, 500, 1.0, 0, i64::MAX));
    e.close(2500, 1, 0, &mut out, &mut hist);
    // [0,1000) tumbling closed; sliding windows containing 500 end at 1000..5000.
    assert_eq!(
        out.len(),
        3,
        "tumbling [0,1s), sliding [-4s,1s) and [-3s,2s)"
    );
    assert!(
        e.update(0, 600, 1.0, 0, i64::MAX),
        "still open in the sliding windows"
    );
    e.close(10_000, 1, 0, &mut out, &mut hist);
    assert!(!e.update(0, 700, 1.0, 0, i64::MAX), "late for everything");
}

#[test]
fn allowed_lateness_keeps_windows_open_longer() {
    let defs = [win("t", 1000, None)];
    let mut e = WindowEngine::new(&defs, 2000);
    let mut out = WindowOutput::default();
    let mut hist = Histogram::new(3).unwrap();
    e.update(0, 10, 1.0, 0, i64::MAX);
    e.close(2999, 1, 0, &mut out, &mut hist);
    assert!(out.is_empty());
    assert!(!e.due(2999));
    assert!(e.update(0, 20, 1.0, 0, i64::MAX));
    assert!(e.due(3000));
    e.close(3000, 1, 0, &mut out, &mut hist);
    assert_eq!(out.count, vec![2]);
}

#[test]
fn a_pane_shared_by_two_definitions_is_updated_once() {
    let defs = [win("t", 60_000, None), win("s", 300_000, Some(60_000))];
    let e = WindowEngine::new(&defs, 0);
    assert_eq!(e.stores.len(), 1);
    let defs = [win("t", 60_000, None), win("s", 300_000, Some(120_000))];
    assert_eq!(
        WindowEngine::new(&defs, 0).stores.len(),
        1,
        "gcd(300s,120s)=60s"
    );
    let defs = [win("t", 7_000, None), win("s", 300_000, Some(120_000))];
    assert_eq!(WindowEngine::new(&defs, 0).stores.len(), 2);
}

#[test]
fn a_watermark_jump_does_not_walk_empty_windows() {
    let defs = [win("s", 10_000, Some(1))];
    let mut e = WindowEngine::new(&defs, 0);
    let mut out = WindowOutput::default();
    let mut hist = Histogram::new(3).unwrap();
    e.update(0, 0, 1.0, 0, i64::MAX);
    e.update(0, 1_000_000_000_000, 1.0, 0, i64::MAX);
    let started = std::time::Instant::now();
    e.close(END_OF_TIME, 1, 0, &mut out, &mut hist);
    assert_eq!(out.len(), 20_000);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// Events (series, t, value), arrival delays, the out-of-order bound, window (size, slide)s.
type Case = (Vec<(u32, i64, i64)>, Vec<i64>, i64, Vec<(u64, Option<u64>)>);

fn arb_case() -> impl Strategy<Value = Case> {
    let defs = prop::collection::vec(
        prop_oneof![
            (1u64..20).prop_map(|s| (s * 500, None)),
            (1u64..6, 1u64..6).prop_map(|(k, slide)| (slide * 500 * k, Some(slide * 500))),
        ],
        1..4,
    );
    (
        prop::collection::vec((0u32..6, -30_000i64..120_000, -50i64..50), 1..300),
        prop::collection::vec(0i64..4_000, 300),
        0i64..4_000,
        defs,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the arrival order within the out-of-order bound, the streamed windows
    /// equal a naive recomputation, and nothing is late.
    #[test]
    fn streaming_windows_equal_naive_recomputation((events, delays, ooo, defs) in arb_case()) {
        let defs: Vec<WindowConfig> = defs
            .iter()
            .enumerate()
            .map(|(i, (size, slide))| win(&format!("w{i}"), *size, *slide))
            .collect();
        // Arrival order: by event time plus a delay of at most `ooo`.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (events[i].1 + delays[i] % (ooo + 1), i));
        let arrivals: Vec<_> = order.iter().map(|&i| events[i]).collect();
        let (got, late) = stream(&defs, &arrivals, ooo, 0);
        prop_assert_eq!(late, 0);
        prop_assert_eq!(got, naive(&defs, &events));
    }
}

/// Per-device event time: every series its own device, events in arrival order, each
/// series' watermark = its max t - ooo, closed at each grid crossing and at the end.
/// Returns the windows produced and the late events.
fn stream_per_series(
    defs: &[WindowConfig],
    arrivals: &[(u32, i64, i64)],
    ooo: i64,
    lateness: i64,
    chained: bool,
) -> (BTreeMap<Key, Agg>, usize) {
    let mut e = WindowEngine::new(defs, lateness);
    if chained {
        e.chain_series();
    }
    let grid = e.close_grid();
    let mut out = WindowOutput::default();
    let mut wm: BTreeMap<u32, (i64, i64)> = BTreeMap::new(); // series -> (wm, due)
    let mut late = 0;
    let close = |e: &mut WindowEngine, out: &mut WindowOutput, s: u32, due: i64, to: i64| {
        let from = if due == i64::MIN {
            i64::MIN
        } else {
            due - grid
        };
        e.close_series(s, from, to, out, None);
        e.next_close_point(to, grid)
    };
    for &(series, t, v) in arrivals {
        let (w, due) = wm.entry(series).or_insert((i64::MIN, i64::MIN));
        if t - ooo > *w {
            *w = t - ooo;
            if *w >= *due {
                *due = close(&mut e, &mut out, series, *due, *w);
            }
        }
        let w = wm[&series].0;
        if !e.update_device(series, t, v as f64, 0, i64::MAX, w) {
            late += 1;
        }
    }
    for (&s, &(_, due)) in &wm {
        close(&mut e, &mut out, s, due, END_OF_TIME);
    }
    assert_eq!(
        e.open_panes(),
        0,
        "every pane is recycled once every series closed"
    );
    let mut m = BTreeMap::new();
    for i in 0..out.len() {
        let key = (out.window[i], out.series[i], out.start[i]);
        let agg = (
            out.count[i],
            out.sum[i] as i64,
            out.min[i] as i64,
            out.max[i] as i64,
        );
        assert!(
            m.insert(key, agg).is_none(),
            "a window closed twice: {key:?}"
        );
    }
    (m, late)
}

proptest! {
    /// Rows found along each series' chain close the same windows as rows found through
    /// each pane's row map, with disorder across panes, lagging series and recycled
    /// panes; with nothing late, both are the naive result.
    #[test]
    fn chained_rows_close_what_the_row_maps_close(
        raw in proptest::collection::vec((0u32..5, 0i64..900, -50i64..50), 1..300),
        lag in proptest::collection::vec(0i64..400, 5),
        ooo in prop_oneof![Just(0i64), Just(20i64), Just(200i64)],
    ) {
        let defs = [win("t", 60, None), win("s", 180, Some(60)), win("u", 90, Some(30))];
        // Series s runs lag[s] behind the others: a lagging device.
        let arrivals: Vec<(u32, i64, i64)> = raw
            .iter()
            .map(|&(s, t, v)| (s, t - lag[s as usize], v))
            .collect();
        let mapped = stream_per_series(&defs, &arrivals, ooo, 0, false);
        let chained = stream_per_series(&defs, &arrivals, ooo, 0, true);
        prop_assert_eq!(&chained, &mapped);
        // No event behind its series' watermark: every window takes it.
        let mut max: BTreeMap<u32, i64> = BTreeMap::new();
        let in_time = arrivals.iter().all(|&(s, t, _)| {
            let m = max.entry(s).or_insert(t);
            *m = (*m).max(t);
            t >= *m - ooo
        });
        if in_time {
            prop_assert_eq!(chained.1, 0);
            prop_assert_eq!(chained.0, naive(&defs, &arrivals));
        }
    }
}
