//! `GET /metrics`: Prometheus text exposition (format 0.0.4), built from the same
//! partition snapshots the `stats` table reads, so the two agree.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;

use super::{Hub, QueryStats};
use crate::live::Counts;

/// Bucket bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub fn render(hub: &Hub, queries: &QueryStats) -> String {
    let snaps = hub.snapshots();
    let mut total = Counts::default();
    let mut latency = Histogram::<u64>::new(3).expect("valid");
    for s in &snaps {
        total.add(&s.counts);
        let _ = latency.add(&s.latency);
    }
    // Counters include partitions a rebalance took away (they never go down); the
    // gauges (open alerts, sequence gaps) are the partitions owned now.
    let (open_alerts, gaps) = (total.open_alerts, total.gaps);
    total.add(&hub.retired());
    // Events a Kafka repartition stage dead-lettered never reach a partition.
    let k = &hub.kafka;
    let first_dead = k.dead_lettered.load(Ordering::Relaxed);
    total.received += first_dead;
    total.dead_lettered += first_dead;
    total.open_alerts = open_alerts;
    total.gaps = gaps;
    let mut o = String::with_capacity(8192);
    let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    metric(
        "eventide_events_received_total",
        "counter",
        "Input events received (batches count each event).",
        &one(total.received),
    );
    metric(
        "eventide_events_total",
        "counter",
        "Input events by outcome; the outcomes add up to eventide_events_received_total.",
        &[
            ("aggregated", total.aggregated),
            ("duplicate", total.duplicate),
            ("filtered", total.filtered),
            ("late", total.late),
            ("dead_lettered", total.dead_lettered),
        ]
        .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v as f64)),
    );
    metric(
        "eventide_partition_events_received_total",
        "counter",
        "Input events received per partition.",
        &snaps
            .iter()
            .map(|s| {
                (
                    format!("{{partition=\"{}\"}}", s.partition),
                    s.counts.received as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "eventide_sequence_gaps",
        "gauge",
        "Device sequence numbers skipped and not seen (yet).",
        &one(total.gaps),
    );
    metric(
        "eventide_events_skewed_total",
        "counter",
        "Events more than max_clock_skew ahead of their partition's event time (dead-lettered with reason skew; also in eventide_events_total{outcome=\"dead_lettered\"}).",
        &one(total.skewed),
    );
    if let Some(set) = hub.references() {
        let stats = set.stats();
        let by = |f: &dyn Fn(&crate::reference::ReferenceStats) -> f64| {
            stats
                .iter()
                .map(|s| (format!("{{reference=\"{}\"}}", s.name), f(s)))
                .collect::<Vec<_>>()
        };
        metric(
            "eventide_reference_rows",
            "gauge",
            "Rows of each reference table in use.",
            &by(&|s| s.rows as f64),
        );
        metric(
            "eventide_reference_loads_total",
            "counter",
            "Reference files read and swapped in (the first load included).",
            &by(&|s| s.loads as f64),
        );
        metric(
            "eventide_reference_load_errors_total",
            "counter",
            "Reference files that changed and did not read (the previous table stayed).",
            &by(&|s| s.errors as f64),
        );
    }
    let lag = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed);
    let lags: Vec<(String, f64)> = [
        ("input", lag(&k.lag_input)),
        ("repartition", lag(&k.lag_repartition)),
    ]
    .into_iter()
    .filter(|(_, v)| *v >= 0)
    .map(|(stage, v)| (format!("{{stage=\"{stage}\"}}"), v as f64))
    .collect();
    if !lags.is_empty() {
        metric(
            "eventide_kafka_lag_messages",
            "gauge",
            "Kafka messages behind the end of the partitions this instance owns, per stage: input (the input topics) and repartition (partitioning = \"any\": the repartition topic).",
            &lags,
        );
    }
    if k.repartitioning.load(Ordering::Relaxed) {
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        metric(
            "eventide_repartition_events_total",
            "counter",
            "partitioning = \"any\": input events the first stage read, by outcome (forwarded to the repartition topic, or dead-lettered there).",
            &[
                ("forwarded", n(&k.forwarded)),
                ("dead_lettered", n(&k.dead_lettered)),
            ]
            .map(|(o, v)| (format!("{{outcome=\"{o}\"}}"), v)),
        );
    }
    metric(
        "eventide_devices_split_total",
        "counter",
        "Devices whose events arrived on more than one partition (input not partitioned by device: their windows are split).",
        &one(total.split_devices),
    );
    metric(
        "eventide_windows_closed_total",
        "counter",
        "Closed window rows emitted.",
        &one(total.windows),
    );
    metric(
        "eventide_alerts_total",
        "counter",
        "Alert state changes (raised and cleared).",
        &one(total.alerts),
    );
    metric(
        "eventide_alerts_open",
        "gauge",
        "Alerts raised and not cleared.",
        &one(total.open_alerts),
    );
    let now = crate::event::now_ms();
    let with_wm: Vec<_> = snaps
        .iter()
        .filter_map(|s| s.watermark().map(|w| (s, w)))
        .collect();
    metric(
        "eventide_watermark_lag_seconds",
        "gauge",
        "Wall clock minus the partition's watermark.",
        &with_wm
            .iter()
            .map(|(s, w)| {
                (
                    format!("{{partition=\"{}\"}}", s.partition),
                    (now - w) as f64 / 1000.0,
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "eventide_watermark_seconds",
        "gauge",
        "The partition's watermark, epoch seconds.",
        &with_wm
            .iter()
            .map(|(s, w)| {
                (
                    format!("{{partition=\"{}\"}}", s.partition),
                    *w as f64 / 1000.0,
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "eventide_live_windows",
        "gauge",
        "Open window rows (window, device, type) per partition.",
        &snaps
            .iter()
            .map(|s| {
                (
                    format!("{{partition=\"{}\"}}", s.partition),
                    s.live.num_rows() as f64,
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "eventide_devices",
        "gauge",
        "Devices seen.",
        &one(snaps.iter().map(|s| s.devices.num_rows() as u64).sum()),
    );
    let k = &hub.sinks;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    metric(
        "eventide_sink_records_total",
        "counter",
        "Records handed to the sinks, by stream.",
        &[
            ("windows", l(&k.windows)),
            ("alerts", l(&k.alerts)),
            ("dead_letter", l(&k.dead_letters)),
        ]
        .map(|(s, v)| (format!("{{stream=\"{s}\"}}"), v as f64)),
    );
    metric(
        "eventide_sink_flushes_total",
        "counter",
        "Sink flushes.",
        &one(l(&k.flushes)),
    );
    metric(
        "eventide_sink_retries_total",
        "counter",
        "Sink write retries.",
        &one(l(&k.retries)),
    );
    metric(
        "eventide_sink_errors_total",
        "counter",
        "Sink failures.",
        &one(l(&k.errors)),
    );
    metric(
        "eventide_ingest_requests_total",
        "counter",
        "POST /ingest requests.",
        &one(l(&hub.ingest_requests)),
    );
    metric(
        "eventide_ingest_refused_total",
        "counter",
        "POST /ingest requests refused with 429 (queue full).",
        &one(l(&hub.ingest_refused)),
    );
    metric(
        "eventide_queries_total",
        "counter",
        "SQL queries over HTTP, by result.",
        &[("ok", l(&queries.ok)), ("error", l(&queries.failed))]
            .map(|(r, v)| (format!("{{result=\"{r}\"}}"), v as f64)),
    );
    metric(
        "eventide_uptime_seconds",
        "gauge",
        "Seconds since start.",
        &[(String::new(), hub.started.elapsed().as_secs_f64())],
    );
    histogram(
        &mut o,
        "eventide_window_close_latency_seconds",
        "Event arrival to the close of a window holding it.",
        &latency,
    );
    let queries = queries.latency.lock().clone();
    histogram(
        &mut o,
        "eventide_query_latency_seconds",
        "SQL query latency over HTTP.",
        &queries,
    );
    o
}

/// A histogram of µs values as a Prometheus histogram in seconds.
fn histogram(o: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} histogram");
    let mut counts = [0u64; BUCKETS.len()];
    let mut sum_us = 0f64;
    for v in h.iter_recorded() {
        let value = h.median_equivalent(v.value_iterated_to());
        let n = v.count_at_value();
        sum_us += value as f64 * n as f64;
        for (i, le) in BUCKETS.iter().enumerate() {
            if value as f64 <= le * 1e6 {
                counts[i] += n;
            }
        }
    }
    for (le, c) in BUCKETS.iter().zip(counts) {
        let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {c}");
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(o, "{name}_sum {}", sum_us / 1e6);
    let _ = writeln!(o, "{name}_count {}", h.len());
}
