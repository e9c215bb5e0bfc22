//! SQL under load: the throughput harness's replay (config/file.toml, 2 partitions)
//! with and without the query server while a client sends a query over HTTP every
//! 10 ms, then query latency over the final state (≥ 100k retained windows).
//!
//! `cargo bench --bench sql_load`  (EVENTIDE_BENCH_EVENTS=N, default 1,200,000;
//! EVENTIDE_BENCH_INPUT=path to keep and reuse the generated input;
//! EVENTIDE_BENCH_RUNS=R runs per mode, best taken, default 3)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventide::config::ServerConfig;
use eventide::pipeline::{self, Status};
use eventide::sql::{Hub, Server};
use hdrhistogram::Histogram;

const QUERIES: [&str; 4] = [
    // "top 10 CO2 averages in the open windows"
    "SELECT deviceId, window, avg FROM live_windows WHERE type = 'CO2' ORDER BY avg DESC LIMIT 10",
    // "which devices are above threshold right now"
    "SELECT DISTINCT deviceId FROM live_windows WHERE window = 'sliding_5m' AND type = 'CO2' AND avg > 1000",
    // over the retained closed windows
    "SELECT type, count(*) AS n, avg(avg) AS mean, max(max) AS peak FROM windows GROUP BY type",
    "SELECT sum(received) AS r, sum(aggregated) AS a FROM stats",
];

mod common;

use common::{env_u64, machine};

fn main() {
    let common::Input {
        quick,
        events: n,
        path: input,
        dir,
    } = common::input(1_200_000);
    let runs = if quick {
        1
    } else {
        env_u64("EVENTIDE_BENCH_RUNS", 3)
    };

    let cfg = common::example_config(&input, dir.path());
    let server_cfg = ServerConfig {
        http: Some("127.0.0.1:0".into()),
        postgres: Some("off".into()),
        ..ServerConfig::default()
    };

    println!("eventide SQL load bench");
    println!("  machine:   {}", machine());
    let mut best_plain: f64 = 0.0;
    let mut best_served: f64 = 0.0;
    let mut during = Histogram::<u64>::new(3).expect("valid");
    let mut last_hub = None;
    let mut queries_sent = 0;
    for _ in 0..runs {
        // Without the server.
        let started = Instant::now();
        let report = pipeline::run(&cfg, Arc::new(AtomicBool::new(false)), Status::Off)
            .expect("pipeline run");
        assert_eq!(
            report.counts.received, n,
            "EVENTIDE_BENCH_INPUT holds a different number of events"
        );
        best_plain = best_plain.max(n as f64 / started.elapsed().as_secs_f64());

        // With the server, and a query every 10 ms.
        let hub = Arc::new(Hub::new(
            cfg.pipeline.partitions(),
            server_cfg.retention().0,
            server_cfg.snapshot_interval().0,
        ));
        let server = Server::start(&server_cfg, hub.clone(), false).expect("server");
        let port = server.http.expect("http").port();
        let done = Arc::new(AtomicBool::new(false));
        let client = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut h = Histogram::<u64>::new(3).expect("valid");
                let mut i = 0;
                while !done.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    query(port, QUERIES[i % QUERIES.len()]);
                    let _ = h.record(t.elapsed().as_micros() as u64);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
                }
                h
            })
        };
        let started = Instant::now();
        let report = pipeline::run_with(
            &cfg,
            Arc::new(AtomicBool::new(false)),
            Status::Off,
            Some(hub.clone()),
        )
        .expect("pipeline run");
        let secs = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        let h = client.join().expect("client");
        queries_sent += h.len();
        let _ = during.add(&h);
        assert!(report.counts.balanced());
        best_served = best_served.max(n as f64 / secs);
        last_hub = Some((hub, server));
    }
    let loss = (1.0 - best_served / best_plain) * 100.0;
    println!("  input:     {n} events, {runs} run(s) per mode, best run");
    println!("  ingest:    {best_plain:.0} events/s without the server");
    println!(
        "             {best_served:.0} events/s with the server and a query every 10 ms ({loss:.1} % drop)"
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "  queries during ingestion: {queries_sent}, latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(&during, 0.5),
        ms(&during, 0.99),
        during.max() as f64 / 1000.0
    );

    // Query latency over the final state.
    let (hub, server) = last_hub.expect("at least one run");
    let port = server.http.expect("http").port();
    let retained: usize = hub.closed_windows().iter().map(|b| b.num_rows()).sum();
    println!("  final state: {retained} retained closed windows");
    for q in [
        "SELECT deviceId, window, avg FROM windows WHERE type = 'CO2' ORDER BY avg DESC LIMIT 10",
        QUERIES[2],
        "SELECT deviceId, count(*) AS n FROM windows GROUP BY deviceId ORDER BY n DESC LIMIT 5",
    ] {
        let mut h = Histogram::<u64>::new(3).expect("valid");
        let reps = if quick { 5 } else { 200 };
        for _ in 0..reps {
            let t = Instant::now();
            query(port, q);
            let _ = h.record(t.elapsed().as_micros() as u64);
        }
        println!(
            "    p50 {:>6.1} ms  p99 {:>6.1} ms  {q}",
            ms(&h, 0.5),
            ms(&h, 0.99)
        );
    }
    drop(server);
}

/// POST /sql; panics unless 200.
fn query(port: u16, sql: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST /sql HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )
    .expect("send");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{sql}: {}",
        String::from_utf8_lossy(&resp)
    );
}
