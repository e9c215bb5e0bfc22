//! The built-in `simulator` source: the generator from `simulator/`, in process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventide_simulator::{Generator, SimConfig};

use super::{BLOCK_SIZE, Disconnected, Router};
use crate::config::source::Simulator as SimulatorConfig;
use crate::event::now_ms;

/// What the simulator source generates and how fast.
#[derive(Debug, Clone)]
pub struct SimulatorSource {
    pub sim: SimConfig,
    /// Events per second; `None` is as fast as possible.
    pub rate: Option<f64>,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

impl SimulatorSource {
    pub fn from_config(c: &SimulatorConfig) -> Self {
        let d = SimConfig::default();
        let start_ms = match c.start.as_deref() {
            None | Some("now") => now_ms(),
            Some(s) => eventide_simulator::time::parse_rfc3339_ms(s).unwrap_or_else(now_ms),
        };
        SimulatorSource {
            sim: SimConfig {
                devices: c.devices.unwrap_or(d.devices),
                seed: c.seed.unwrap_or(d.seed),
                start_ms,
                interval_ms: c.interval.map_or(d.interval_ms, |i| i.ms().max(1) as u64),
                duplicate_fraction: c.duplicates.unwrap_or(d.duplicate_fraction),
                max_disorder_ms: c.max_disorder.map_or(d.max_disorder_ms, |x| x.ms() as u64),
                malformed_fraction: c.malformed.unwrap_or(d.malformed_fraction),
                batch_fraction: c.batch_fraction.unwrap_or(d.batch_fraction),
                batch_size: c.batch_size.unwrap_or(d.batch_size).max(1),
                complex_fields: c.complex_fields.unwrap_or(d.complex_fields),
                hot_devices: c.hot_devices.unwrap_or(d.hot_devices),
                threshold: c.threshold.unwrap_or(d.threshold),
                ..d
            },
            rate: c.rate.filter(|r| *r > 0.0),
            count: c.count,
            duration: c.duration.map(|d| d.0),
        }
    }

    /// Whether the run ends by itself.
    pub fn is_finite(&self) -> bool {
        self.count.is_some() || self.duration.is_some()
    }

    /// Generates until the count or duration is reached, or a shutdown is requested.
    /// Returns whether it ran to its end.
    pub fn run(&self, router: &mut Router) -> Result<bool, Disconnected> {
        let origin: Arc<str> = Arc::from("simulator");
        let mut g = Generator::new(self.sim.clone());
        let started = Instant::now();
        let limit = self.count.unwrap_or(u64::MAX);
        // Paced runs flush often so that events arrive smoothly.
        let flush_every = Duration::from_millis(if self.rate.is_some() { 20 } else { 1000 });
        let mut buf = Vec::with_capacity(BLOCK_SIZE + 64 * 1024);
        let mut last_flush = Instant::now();
        loop {
            let written = g.stats().events;
            let done = written >= limit || self.duration.is_some_and(|d| started.elapsed() >= d);
            if done || router.stopping() {
                if !buf.is_empty() {
                    router.route(std::mem::take(&mut buf), &origin)?;
                }
                return Ok(done);
            }
            if let Some(rate) = self.rate {
                let due = Duration::from_secs_f64(written as f64 / rate);
                let elapsed = started.elapsed();
                if due > elapsed {
                    if !buf.is_empty() {
                        router.route(std::mem::take(&mut buf), &origin)?;
                        last_flush = Instant::now();
                    }
                    std::thread::sleep((due - elapsed).min(Duration::from_millis(20)));
                    continue;
                }
            }
            g.next_message(&mut buf, limit - written);
            if buf.len() >= BLOCK_SIZE || last_flush.elapsed() >= flush_every {
                router.route(
                    std::mem::replace(&mut buf, Vec::with_capacity(BLOCK_SIZE + 64 * 1024)),
                    &origin,
                )?;
                last_flush = Instant::now();
            }
        }
    }
}
