//! Per-stage benches: decode, route scan, dedupe, window update, rule evaluation.
//! `cargo bench --bench stages`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventide::config::{Config, Dur, WindowConfig, WindowKind};
use eventide::dedupe::{EventIdSet, SeqTracker, id_hash};
use eventide::ingest::decode::{Decoder, DeviceKey, decode, decode_scalar};
use eventide::rules::{RuleEngine, SeriesNames};
use eventide::windows::{WindowEngine, WindowOutput};
use eventide_simulator::{Generator, Layout, SimConfig};

fn events(n: usize, layout: Layout) -> Vec<Vec<u8>> {
    Generator::new(SimConfig {
        devices: 2000,
        complex_fields: 20,
        duplicate_fraction: 0.0,
        layout,
        ..SimConfig::default()
    })
    .single_events(n)
}

fn windows() -> Vec<WindowConfig> {
    let d = |s| Dur(std::time::Duration::from_secs(s));
    vec![
        WindowConfig {
            name: "tumbling_1m".into(),
            kind: WindowKind::Tumbling,
            size: d(60),
            slide: None,
        },
        WindowConfig {
            name: "sliding_5m".into(),
            kind: WindowKind::Sliding,
            size: d(300),
            slide: Some(d(60)),
        },
    ]
}

fn bench(c: &mut Criterion) {
    let evs = events(10_000, Layout::Sas);
    let bytes: u64 = evs.iter().map(|e| e.len() as u64).sum();
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(evs.len() as u64));

    let mut decoder = Decoder::default();
    g.bench_function(
        format!("decode ({} B/event)", bytes / evs.len() as u64),
        |b| {
            b.iter(|| {
                for e in &evs {
                    black_box(decoder.decode(e).unwrap().value);
                }
            })
        },
    );
    // The scalar decoder alone (the fast path's fallback), to see what the index buys.
    g.bench_function("decode: scalar path only", |b| {
        b.iter(|| {
            for e in &evs {
                black_box(decode_scalar(e).unwrap().value);
            }
        })
    });
    // The same events through serde_json (borrowed fields, complexData skipped as
    // IgnoredAny): a yardstick for this machine, run after run.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Reference<'a> {
        #[serde(rename = "eventId", borrow)]
        event_id: std::borrow::Cow<'a, str>,
        #[serde(rename = "deviceId", borrow)]
        device_id: std::borrow::Cow<'a, str>,
        #[serde(rename = "deviceSequenceNumber")]
        seq: u64,
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        value: f64,
        #[serde(rename = "createdAt", borrow)]
        created_at: std::borrow::Cow<'a, str>,
        #[serde(rename = "complexData", default)]
        complex_data: Option<serde::de::IgnoredAny>,
    }
    g.bench_function("decode: serde_json reference (same events)", |b| {
        b.iter(|| {
            for e in &evs {
                black_box(serde_json::from_slice::<Reference>(e).unwrap().value);
            }
        })
    });
    let router_key = DeviceKey::new("deviceId");
    g.bench_function("route: find deviceId", |b| {
        b.iter(|| {
            for e in &evs {
                black_box(router_key.find(e).unwrap().len());
            }
        })
    });
    // The same events in each layout: the decode and the router's look, apart.
    for (name, layout) in [
        ("sas", Layout::Sas),
        ("compact", Layout::Compact),
        ("pretty", Layout::Pretty),
        ("shuffled", Layout::Shuffled),
    ] {
        let evs = events(10_000, layout);
        g.bench_function(format!("layout {name}: decode"), |b| {
            b.iter(|| {
                for e in &evs {
                    black_box(decoder.decode(e).unwrap().value);
                }
            })
        });
        g.bench_function(format!("layout {name}: route"), |b| {
            b.iter(|| {
                for e in &evs {
                    black_box(router_key.find(e).unwrap().len());
                }
            })
        });
    }

    let decoded: Vec<_> = evs.iter().map(|e| decode(e).unwrap()).collect();
    // A pool larger than the horizon: every check is a new id (insert + sweeps), as in
    // a real stream, not a hit on an id left by the previous iteration.
    let ids: Vec<String> = (0..200_000u32)
        .map(|i| format!("{i:08x}-8f0e-4c1a-9d5b-{i:012x}"))
        .collect();
    g.bench_function("dedupe: event id (new ids, 50k horizon)", |b| {
        let mut set = EventIdSet::new(50_000);
        let mut wm = 0i64;
        let mut at = 0usize;
        b.iter(|| {
            for _ in 0..10_000 {
                wm += 1;
                set.advance(wm);
                black_box(set.check_and_insert(&ids[at], wm));
                at = (at + 1) % ids.len();
            }
        })
    });
    // The table from empty to 500k ids (a 5-minute horizon at 1.7k events/s per
    // partition, as in the throughput harness): every resize on the way, each next
    // id's slot prefetched as the partition does.
    let grown: Vec<u64> = (0..500_000u32)
        .map(|i| id_hash(&format!("{i:08x}-8f0e-4c1a-9d5b-{i:012x}")))
        .collect();
    g.throughput(Throughput::Elements(grown.len() as u64));
    g.sample_size(20);
    g.bench_function("dedupe: event id, growing to 500k ids", |b| {
        b.iter(|| {
            let mut set = EventIdSet::new(i64::MAX);
            for (i, pair) in grown.windows(2).enumerate() {
                set.prefetch(pair[1]);
                black_box(set.check_and_insert_hash(pair[0], i as i64));
            }
            set.len()
        })
    });
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.sample_size(100);
    g.bench_function("dedupe: device sequence", |b| {
        let mut t = SeqTracker::default();
        let mut round = 0u64;
        b.iter(|| {
            round += 1;
            for (i, e) in decoded.iter().enumerate() {
                black_box(t.check((i % 2000) as u32, e.seq + round * 100));
            }
        })
    });

    let series: Vec<(u32, i64, f64)> = decoded
        .iter()
        .enumerate()
        .map(|(i, e)| ((i % 4000) as u32, e.ts, e.value))
        .collect();
    g.bench_function("window update: tumbling 1m + sliding 5m/1m", |b| {
        let mut w = WindowEngine::new(&windows(), 0);
        let mut shift = 0i64;
        let mut out = WindowOutput::default();
        let mut hist = hdrhistogram::Histogram::new(3).unwrap();
        b.iter(|| {
            for &(s, t, v) in &series {
                black_box(w.update(s, t + shift, v, 0, i64::MAX));
            }
            // Move on in event time, closing what passed (as the pipeline does).
            shift += 600_000;
            w.close(
                series.last().unwrap().1 + shift - 600_000,
                4000,
                0,
                &mut out,
                &mut hist,
            );
            out.clear();
        })
    });

    struct Names;
    impl SeriesNames for Names {
        fn device(&self, _: u32) -> &str {
            "contoso-device-id-000042"
        }
        fn kind(&self, s: u32) -> &str {
            if s.is_multiple_of(2) { "CO2" } else { "TEMP" }
        }
    }
    let cfg = Config::parse(concat!(
        "[source]\nkind = \"stdin\"\n[[windows]]\nname = \"sliding_5m\"\nkind = \"sliding\"\nsize = \"5m\"\nslide = \"1m\"\n",
        "[[rules]]\nname = \"co2_high\"\nwindow = \"sliding_5m\"\nfilter = \"type = 'CO2'\"\nwhen = \"avg > 1000\"\nclear = \"avg < 950\"\n"
    ))
    .unwrap();
    let engine = WindowEngine::new(&cfg.windows, 0);
    let mut rows = WindowOutput::default();
    for i in 0..10_000u32 {
        let avg = 900.0 + (i % 7) as f64 * 40.0;
        rows.push(
            0,
            i % 4000,
            0,
            300_000,
            10,
            avg * 10.0,
            avg - 5.0,
            avg + 5.0,
        );
    }
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function(
        "rule: moving average with hysteresis (per window row)",
        |b| {
            let mut rules = RuleEngine::new(&cfg.rules, engine.defs()).unwrap();
            let mut alerts = Vec::new();
            b.iter(|| {
                rules.evaluate(&rows, 0, engine.defs(), &Names, &[], &mut alerts);
                alerts.clear();
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
