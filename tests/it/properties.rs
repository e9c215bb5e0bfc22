//! Property: for random events delivered in any order within `max_out_of_order`, with
//! duplicates and batches, the pipeline's windows equal a naive recomputation over the
//! unique events, whatever the number of partitions.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use common::*;
use eventide::config::Config;
use eventide::pipeline::{self, Status};
use eventide_simulator::time::rfc3339_ms;
use proptest::prelude::*;

const BASE: i64 = 1_767_225_600_000;

#[derive(Debug, Clone)]
struct Ev {
    device: u8,
    /// Type number: more types than a device keeps at hand, some devices see them all.
    kind: u8,
    t: i64,
    value: i32,
    delay: i64,
}

fn line(i: usize, e: &Ev) -> String {
    format!(
        r#"{{"eventId":"e{i}","deviceId":"dev-{}","deviceSequenceNumber":{i},"type":"{}","value":{},"createdAt":"{}","complexData":{{"k":[{i}]}}}}"#,
        e.device,
        kind_name(e.kind),
        e.value,
        rfc3339_ms(BASE + e.t)
    )
}

fn kind_name(kind: u8) -> &'static str {
    ["CO2", "TEMP", "HUM", "NO2", "PM25", "VOC", "O3"][kind as usize]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn pipeline_windows_equal_naive_recomputation(
        events in prop::collection::vec((0u8..8, prop_oneof![3 => 0u8..2, 1 => 0u8..7], 0i64..600_000, -1000i32..3000, 0i64..5_000).prop_map(|(device, kind, t, value, delay)| Ev { device, kind, t, value, delay }), 1..400),
        dup_every in 2usize..9,
        batch_every in 3usize..11,
        partitions in 1usize..5,
        size_s in 1i64..6,
        slide_s in 1i64..4,
    ) {
        let size = size_s * 20_000;
        let slide = (slide_s * 10_000).min(size);
        // Arrival order: event time plus a delay below the 5s out-of-order bound.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by_key(|&i| (events[i].t + events[i].delay, i));
        // Some runs of 3 consecutive events travel as one batch (a JSON array), and some
        // events are re-delivered right after the original: order stays within the bound.
        let mut lines: Vec<String> = Vec::new();
        let mut n = 0;
        while n < order.len() {
            let take = if n % batch_every == 0 { 3.min(order.len() - n) } else { 1 };
            let group: Vec<String> = order[n..n + take].iter().map(|&i| line(i, &events[i])).collect();
            lines.push(if take > 1 { format!("[{}]", group.join(",")) } else { group[0].clone() });
            if n % dup_every == 0 {
                // The last event of the group: re-delivered right after its original.
                // (Re-sending an earlier one would follow later events of the batch,
                // which may be minutes ahead: a re-delivery that far behind is late.)
                lines.push(group[take - 1].clone());
            }
            n += take;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ndjson");
        std::fs::write(&path, lines.join("\n")).unwrap();
        let toml = format!(
            "[source]\nkind = \"file\"\npath = \"{}\"\n[pipeline]\npartitions = {partitions}\nmax_out_of_order = \"5s\"\n\
             [[windows]]\nname = \"t\"\nkind = \"tumbling\"\nsize = \"{size}ms\"\n\
             [[windows]]\nname = \"s\"\nkind = \"sliding\"\nsize = \"{size}ms\"\nslide = \"{slide}ms\"\n\
             [[sinks]]\nkind = \"jsonl\"\npath = \"{}\"\n[dead_letter]\npath = \"{}\"\n",
            path.display(), dir.path().join("out.jsonl").display(), dir.path().join("dead.jsonl").display()
        );
        let cfg = Config::parse(&toml).unwrap();
        let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off).unwrap();
        prop_assert!(report.counts.balanced());
        prop_assert_eq!(report.counts.late, 0);
        prop_assert_eq!(report.counts.aggregated, events.len() as u64);

        // Naive: every unique event into every window that contains it.
        let mut naive: BTreeMap<String, Agg> = BTreeMap::new();
        for e in &events {
            for (name, sz, sl) in [("t", size, size), ("s", size, slide)] {
                let mut s = e.t - e.t.rem_euclid(sl);
                while s > e.t - sz {
                    let id = format!("{name}|dev-{}|{}|{}", e.device, kind_name(e.kind), rfc3339_ms(BASE + s));
                    let a = naive.entry(id).or_insert(Agg { count: 0, sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY });
                    a.count += 1;
                    a.sum += e.value as f64;
                    a.min = a.min.min(e.value as f64);
                    a.max = a.max.max(e.value as f64);
                    s -= sl;
                }
            }
        }
        assert_windows(&read_jsonl(&dir.path().join("out.jsonl")), &naive);
    }
}
