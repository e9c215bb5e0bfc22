//! Seeded IoT telemetry generator in the streaming-at-scale event shape.
//!
//! ```text
//! {"eventId":"…","complexData":{"moreData0":57.89,…},"value":1043.27,
//!  "deviceId":"contoso://device-id-42","deviceSequenceNumber":17,"type":"CO2",
//!  "createdAt":"2026-01-01T00:00:07.123Z"}
//! ```
//!
//! By default events are written as the streaming-at-scale samples document them
//! ([`Layout::Sas`]: that member order, their deviceIds); [`Layout`] and [`IdStyle`]
//! choose others. The same seed gives the same events in every layout: only the bytes
//! around them differ.
//!
//! A [`Generator`] writes NDJSON messages into a caller's buffer: a message is one
//! event, a JSON array of events (a batch), an exact re-send of a recent event (a
//! duplicate) or a malformed line. The same [`SimConfig`] always yields the same bytes.
//!
//! Event time: the k-th new event has the nominal time `start + k * interval / devices`
//! (every device reports about once per `interval`), then `createdAt` is moved back by a
//! random amount up to `max_disorder`, so arrival order differs from event-time order by
//! at most that bound. Hot devices carry CO2 readings that swing around `threshold`
//! (a slow sine wave), so moving-average alerts raise and clear.

pub mod cli;
pub mod kafka;
pub mod time;

/// What to generate. Defaults follow the streaming-at-scale generator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of distinct devices.
    pub devices: u32,
    /// Seed of the pseudo-random stream: same seed, same output.
    pub seed: u64,
    /// Nominal event time of the first event, in ms since the Unix epoch.
    pub start_ms: i64,
    /// Each device reports about once per this many event-time milliseconds.
    pub interval_ms: u64,
    /// Fraction of messages that re-send a recent event unchanged.
    pub duplicate_fraction: f64,
    /// Largest amount an event's `createdAt` lags its nominal time.
    pub max_disorder_ms: u64,
    /// Fraction of messages that are malformed (bad JSON or a bad field).
    pub malformed_fraction: f64,
    /// Fraction of messages that are a JSON array of events.
    pub batch_fraction: f64,
    /// Events in one batch.
    pub batch_size: u32,
    /// Fields in `complexData` (the streaming-at-scale events carry 23).
    pub complex_fields: u32,
    /// Devices whose CO2 swings around the threshold.
    pub hot_devices: u32,
    /// The CO2 threshold the hot devices cross.
    pub threshold: f64,
    /// How each event's members are laid out.
    pub layout: Layout,
    /// How device ids look.
    pub id_style: IdStyle,
}

/// How an event's members are laid out (the events are the same in every layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The streaming-at-scale samples' member order (`eventId`, `complexData`,
    /// `value`, `deviceId`, `deviceSequenceNumber`, `type`, `createdAt`), compact.
    #[default]
    Sas,
    /// `eventId`, `deviceId`, `deviceSequenceNumber`, `type`, `value`, `createdAt`,
    /// `complexData`, compact.
    Compact,
    /// The samples' member order with `", "` and `": "` separators, as Python's
    /// `json.dumps` writes them (one event per line).
    Pretty,
    /// A random member order per event, compact.
    Shuffled,
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "sas" => Layout::Sas,
            "compact" => Layout::Compact,
            "pretty" => Layout::Pretty,
            "shuffled" => Layout::Shuffled,
            _ => {
                return Err(format!(
                    "expected sas, compact, pretty or shuffled, got {s:?}"
                ));
            }
        })
    }
}

/// How device ids look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdStyle {
    /// `contoso://device-id-42`, as the streaming-at-scale samples name devices.
    #[default]
    Sas,
    /// `contoso-device-id-000042`.
    Plain,
}

impl std::str::FromStr for IdStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "sas" => IdStyle::Sas,
            "plain" => IdStyle::Plain,
            _ => return Err(format!("expected sas or plain, got {s:?}")),
        })
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 1000,
            seed: 42,
            start_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            interval_ms: 1000,
            duplicate_fraction: 0.001,
            max_disorder_ms: 2000,
            malformed_fraction: 0.0,
            batch_fraction: 0.0,
            batch_size: 10,
            complex_fields: 23,
            hot_devices: 10,
            threshold: 1000.0,
            layout: Layout::default(),
            id_style: IdStyle::default(),
        }
    }
}

/// The event types the generator emits.
pub const TYPES: [&str; 2] = ["CO2", "TEMP"];

/// How many recent events a duplicate may copy.
const RECENT: usize = 64;
/// Period of a hot device's CO2 swing, in event-time ms (10 minutes).
const HOT_PERIOD_MS: f64 = 600_000.0;

/// Counts of what a generator has written so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    /// Messages (lines) written.
    pub messages: u64,
    /// Events written, counting each batch element, duplicate and malformed event.
    pub events: u64,
    /// Of `events`: distinct, well-formed events.
    pub unique: u64,
    /// Of `events`: exact re-sends.
    pub duplicates: u64,
    /// Of `events`: malformed ones.
    pub malformed: u64,
}

/// A deterministic telemetry stream. See the crate docs.
pub struct Generator {
    cfg: SimConfig,
    rng: Rng,
    /// Next sequence number per device.
    seq: Vec<u64>,
    /// Per-device baseline in 0..1 (picks where in its range a device reads).
    base: Vec<f64>,
    /// Per-device phase of the hot CO2 swing.
    phase: Vec<f64>,
    /// Every `hot_stride`-th device is hot (0: none).
    hot_stride: u32,
    /// Index of the next new event (drives the nominal clock).
    next: u64,
    /// Ring of recent well-formed events, for duplicates.
    recent: Vec<Vec<u8>>,
    recent_pos: usize,
    stats: SimStats,
    scratch: Vec<u8>,
    /// Member values of the event being written, and where each ends in it.
    members: Vec<u8>,
    /// Draws the shuffled layout's member orders (apart from `rng`, so that the events
    /// are the same in every layout).
    order_rng: Rng,
}

impl Generator {
    pub fn new(cfg: SimConfig) -> Self {
        let devices = cfg.devices.max(1);
        let mut rng = Rng::new(cfg.seed);
        let base = (0..devices).map(|_| rng.unit()).collect();
        let phase = (0..devices)
            .map(|_| rng.unit() * std::f64::consts::TAU)
            .collect();
        let hot_stride = match cfg.hot_devices.min(devices) {
            0 => 0,
            hot => devices / hot,
        };
        Generator {
            seq: vec![0; devices as usize],
            base,
            phase,
            hot_stride,
            rng,
            next: 0,
            recent: Vec::with_capacity(RECENT),
            recent_pos: 0,
            stats: SimStats::default(),
            scratch: Vec::with_capacity(1024),
            members: Vec::with_capacity(1024),
            order_rng: Rng::new(cfg.seed ^ 0x005E_ED0F_0DE5),
            cfg: SimConfig { devices, ..cfg },
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Nominal event time of the next new event.
    pub fn clock_ms(&self) -> i64 {
        self.cfg.start_ms
            + (self.next as u128 * self.cfg.interval_ms as u128 / self.cfg.devices as u128) as i64
    }

    /// The name of device `d` (in this generator's id style).
    pub fn device_name(&self, d: u32) -> String {
        let mut v = Vec::new();
        push_device(&mut v, self.cfg.id_style, d);
        String::from_utf8(v).expect("ASCII")
    }

    /// Whether device `d` is one of the hot devices.
    pub fn is_hot(&self, d: u32) -> bool {
        self.hot_stride != 0
            && d.is_multiple_of(self.hot_stride)
            && d / self.hot_stride < self.cfg.hot_devices
    }

    /// The next `n` messages of one event each, without their newlines (for tests
    /// and benches that decode events one by one).
    pub fn single_events(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                let mut v = Vec::new();
                self.next_message(&mut v, 1);
                v.pop();
                v
            })
            .collect()
    }

    /// Appends one message (a line ending in `\n`) holding at most `max_events`
    /// events, and returns how many events it holds.
    pub fn next_message(&mut self, out: &mut Vec<u8>, max_events: u64) -> u64 {
        let max_events = max_events.max(1);
        let written = if self.cfg.batch_size > 1
            && max_events > 1
            && self.rng.chance(self.cfg.batch_fraction)
        {
            let n = (self.cfg.batch_size as u64).min(max_events);
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                self.one(out, true);
            }
            out.push(b']');
            n
        } else {
            self.one(out, false);
            1
        };
        out.push(b'\n');
        self.stats.messages += 1;
        self.stats.events += written;
        written
    }

    /// Writes one event: new, duplicate or malformed.
    fn one(&mut self, out: &mut Vec<u8>, in_batch: bool) {
        if !self.recent.is_empty() && self.rng.chance(self.cfg.duplicate_fraction) {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            out.extend_from_slice(&self.recent[i]);
            self.stats.duplicates += 1;
            return;
        }
        if self.rng.chance(self.cfg.malformed_fraction) {
            self.malformed(out, in_batch);
            self.stats.malformed += 1;
            return;
        }
        self.scratch.clear();
        let mut ev = std::mem::take(&mut self.scratch);
        self.event(&mut ev, self.cfg.layout);
        out.extend_from_slice(&ev);
        if self.recent.len() < RECENT {
            self.recent.push(ev.clone());
        } else {
            self.recent[self.recent_pos].clear();
            self.recent[self.recent_pos].extend_from_slice(&ev);
            self.recent_pos = (self.recent_pos + 1) % RECENT;
        }
        self.scratch = ev;
        self.stats.unique += 1;
    }

    /// Writes a new well-formed event in `layout` and advances the clock.
    fn event(&mut self, out: &mut Vec<u8>, layout: Layout) {
        let nominal = self.clock_ms();
        self.next += 1;
        let d = self.rng.below(self.cfg.devices as u64) as u32;
        let seq = self.seq[d as usize];
        self.seq[d as usize] += 1;
        let disorder = if self.cfg.max_disorder_ms > 0 {
            self.rng.below(self.cfg.max_disorder_ms + 1) as i64
        } else {
            0
        };
        let created = nominal - disorder;
        let kind = TYPES[self.rng.below(TYPES.len() as u64) as usize];
        let value = self.reading(d, kind, created);

        // Each member's value, in the compact order, then laid out.
        let spaced = layout == Layout::Pretty;
        let (colon, comma): (&[u8], &[u8]) = if spaced { (b": ", b", ") } else { (b":", b",") };
        let mut m = std::mem::take(&mut self.members);
        m.clear();
        let mut ends = [0usize; MEMBERS.len()];
        m.push(b'"');
        self.uuid(&mut m);
        m.push(b'"');
        ends[0] = m.len();
        m.push(b'"');
        push_device(&mut m, self.cfg.id_style, d);
        m.push(b'"');
        ends[1] = m.len();
        m.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        ends[2] = m.len();
        m.push(b'"');
        m.extend_from_slice(kind.as_bytes());
        m.push(b'"');
        ends[3] = m.len();
        m.extend_from_slice(ryu::Buffer::new().format(value).as_bytes());
        ends[4] = m.len();
        m.push(b'"');
        time::push_rfc3339_ms(&mut m, created);
        m.push(b'"');
        ends[5] = m.len();
        m.push(b'{');
        for i in 0..self.cfg.complex_fields {
            if i > 0 {
                m.extend_from_slice(comma);
            }
            m.extend_from_slice(b"\"moreData");
            m.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            m.push(b'"');
            m.extend_from_slice(colon);
            let v = self.rng.unit() * 100.0;
            m.extend_from_slice(ryu::Buffer::new().format(v).as_bytes());
        }
        m.push(b'}');
        ends[6] = m.len();
        let mut order = match layout {
            Layout::Compact => [0, 1, 2, 3, 4, 5, 6],
            Layout::Sas | Layout::Pretty => SAS_ORDER,
            Layout::Shuffled => [0, 1, 2, 3, 4, 5, 6],
        };
        if layout == Layout::Shuffled {
            for i in (1..order.len()).rev() {
                order.swap(i, self.order_rng.below(i as u64 + 1) as usize);
            }
        }
        out.push(b'{');
        for (k, &f) in order.iter().enumerate() {
            if k > 0 {
                out.extend_from_slice(comma);
            }
            out.push(b'"');
            out.extend_from_slice(MEMBERS[f].as_bytes());
            out.push(b'"');
            out.extend_from_slice(colon);
            let start = if f == 0 { 0 } else { ends[f - 1] };
            out.extend_from_slice(&m[start..ends[f]]);
        }
        out.push(b'}');
        self.members = m;
    }

    /// A plausible reading, rounded to 2 decimals.
    fn reading(&mut self, d: u32, kind: &str, t: i64) -> f64 {
        let noise = self.rng.unit() - 0.5;
        let base = self.base[d as usize];
        let v = match kind {
            "CO2" if self.is_hot(d) => {
                let x = (t - self.cfg.start_ms) as f64 / HOT_PERIOD_MS * std::f64::consts::TAU;
                self.cfg.threshold - 20.0
                    + 150.0 * (x + self.phase[d as usize]).sin()
                    + 40.0 * noise
            }
            "CO2" => 400.0 + 300.0 * base + 60.0 * noise,
            _ => 18.0 + 8.0 * base + 1.0 * noise,
        };
        (v * 100.0).round() / 100.0
    }

    /// Writes a malformed event: bad JSON (not inside a batch, where it would spoil
    /// the whole array) or JSON with a missing or mistyped field.
    fn malformed(&mut self, out: &mut Vec<u8>, in_batch: bool) {
        let kinds = if in_batch { 3 } else { 5 };
        self.scratch.clear();
        let mut ev = std::mem::take(&mut self.scratch);
        // (In the compact layout, whose members the edits below find.)
        self.event(&mut ev, Layout::Compact);
        let text = std::str::from_utf8(&ev).expect("generator writes UTF-8");
        match self.rng.below(kinds) {
            0 => out.extend_from_slice(text.replacen("\"deviceId\"", "\"deviceID\"", 1).as_bytes()),
            1 => {
                let at = text.find("\"value\":").expect("event has a value") + 8;
                let end = at + text[at..].find(',').expect("value is followed by a field");
                out.extend_from_slice(&text.as_bytes()[..at]);
                out.extend_from_slice(b"\"n/a\"");
                out.extend_from_slice(&text.as_bytes()[end..]);
            }
            2 => {
                let at = text.find("\"createdAt\":\"").expect("event has createdAt") + 13;
                out.extend_from_slice(&text.as_bytes()[..at]);
                out.extend_from_slice(b"yesterday");
                out.extend_from_slice(&text.as_bytes()[at + 24..]);
            }
            3 => out.extend_from_slice(&ev[..ev.len() / 2]),
            _ => out.extend_from_slice(b"#garbage from a flaky gateway"),
        }
        self.scratch = ev;
    }

    fn uuid(&mut self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        for (i, nibble) in (0..32).map(|i| {
            let word = if i < 16 { a } else { b };
            (i, ((word >> ((i % 16) * 4)) & 0xf) as usize)
        }) {
            if matches!(i, 8 | 12 | 16 | 20) {
                out.push(b'-');
            }
            out.push(HEX[nibble]);
        }
    }
}

/// An event's members, in the compact layout's order.
const MEMBERS: [&str; 7] = [
    "eventId",
    "deviceId",
    "deviceSequenceNumber",
    "type",
    "value",
    "createdAt",
    "complexData",
];

/// The streaming-at-scale samples' member order, as indexes into [`MEMBERS`].
const SAS_ORDER: [usize; 7] = [0, 6, 4, 1, 2, 3, 5];

/// Writes the id of device `d` in `style`.
fn push_device(out: &mut Vec<u8>, style: IdStyle, d: u32) {
    match style {
        IdStyle::Sas => {
            out.extend_from_slice(b"contoso://device-id-");
            out.extend_from_slice(itoa::Buffer::new().format(d).as_bytes());
        }
        IdStyle::Plain => {
            out.extend_from_slice(b"contoso-device-id-");
            push_padded(out, d as u64, 6);
        }
    }
}

fn push_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(v);
    for _ in s.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(s.as_bytes());
}

/// SplitMix64: tiny, fast and the same on every platform and version.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(cfg: SimConfig, n: u64) -> (Vec<u8>, SimStats) {
        let mut g = Generator::new(cfg);
        let mut out = Vec::new();
        while g.stats().events < n {
            g.next_message(&mut out, n - g.stats().events);
        }
        (out, g.stats())
    }

    #[test]
    fn same_seed_gives_same_bytes() {
        let a = generate(
            SimConfig {
                batch_fraction: 0.2,
                ..Default::default()
            },
            2000,
        );
        let b = generate(
            SimConfig {
                batch_fraction: 0.2,
                ..Default::default()
            },
            2000,
        );
        assert_eq!(a, b);
        let c = generate(
            SimConfig {
                seed: 7,
                batch_fraction: 0.2,
                ..Default::default()
            },
            2000,
        );
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn counts_add_up_and_stop_at_the_requested_number() {
        let cfg = SimConfig {
            duplicate_fraction: 0.05,
            malformed_fraction: 0.05,
            batch_fraction: 0.3,
            batch_size: 7,
            ..Default::default()
        };
        let (out, s) = generate(cfg, 5000);
        assert_eq!(s.events, 5000);
        assert_eq!(s.unique + s.duplicates + s.malformed, s.events);
        assert!(s.duplicates > 100 && s.malformed > 100, "{s:?}");
        assert_eq!(
            out.iter().filter(|&&b| b == b'\n').count() as u64,
            s.messages
        );
    }

    #[test]
    fn events_are_about_the_requested_size() {
        let (out, s) = generate(
            SimConfig {
                duplicate_fraction: 0.0,
                ..Default::default()
            },
            1000,
        );
        let avg = out.len() as u64 / s.events;
        assert!((800..1000).contains(&avg), "average event is {avg} bytes");
    }

    /// Every layout holds the same events (as JSON values), in its own member order
    /// and spacing; the id styles differ only in the device ids.
    #[test]
    fn layouts_hold_the_same_events() {
        let lines = |layout, id_style| {
            let (out, _) = generate(
                SimConfig {
                    layout,
                    id_style,
                    batch_fraction: 0.1,
                    duplicate_fraction: 0.05,
                    ..Default::default()
                },
                500,
            );
            String::from_utf8(out).unwrap()
        };
        let values = |text: &str| -> Vec<serde_json::Value> {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let sas = lines(Layout::Sas, IdStyle::Sas);
        let first = sas.lines().find(|l| l.starts_with('{')).unwrap();
        assert!(first.starts_with(r#"{"eventId":""#), "{first}");
        let order: Vec<usize> = [
            "\"complexData\":{",
            "\"value\":",
            "\"deviceId\":\"contoso://device-id-",
            "\"deviceSequenceNumber\":",
            "\"type\":",
            "\"createdAt\":",
        ]
        .iter()
        .map(|k| first.find(k).unwrap_or_else(|| panic!("{k} in {first}")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{first}");
        let pretty = lines(Layout::Pretty, IdStyle::Sas);
        assert!(pretty.contains(r#"{"eventId": ""#) && pretty.contains(", \"moreData1\": "));
        let shuffled = lines(Layout::Shuffled, IdStyle::Sas);
        let starts: std::collections::HashSet<&str> =
            shuffled.lines().map(|l| &l[..l.len().min(6)]).collect();
        assert!(starts.len() > 3, "shuffled orders vary: {starts:?}");
        let reference = values(&sas);
        for other in [&pretty, &shuffled, &lines(Layout::Compact, IdStyle::Sas)] {
            assert_eq!(values(other), reference);
        }
        let plain = lines(Layout::Sas, IdStyle::Plain);
        assert!(plain.contains("\"contoso-device-id-000"));
        let renamed = |v: &mut serde_json::Value| {
            if let Some(serde_json::Value::String(d)) = v.get_mut("deviceId") {
                let n: u32 = d.trim_start_matches("contoso-device-id-").parse().unwrap();
                *d = format!("contoso://device-id-{n}");
            }
        };
        let mut plain = values(&plain);
        for v in &mut plain {
            match v {
                serde_json::Value::Array(batch) => batch.iter_mut().for_each(renamed),
                v => renamed(v),
            }
        }
        assert_eq!(plain, reference);
    }

    #[test]
    fn disorder_stays_within_the_bound() {
        let cfg = SimConfig {
            max_disorder_ms: 1500,
            duplicate_fraction: 0.0,
            ..Default::default()
        };
        let mut g = Generator::new(cfg);
        let mut out = Vec::new();
        let mut max_seen = i64::MIN;
        for _ in 0..5000 {
            out.clear();
            let clock = g.clock_ms();
            g.next_message(&mut out, 1);
            let s = std::str::from_utf8(&out).unwrap();
            let at = s.find("createdAt\":\"").unwrap() + 12;
            let t = time::parse_rfc3339_ms(&s[at..at + 24]).unwrap();
            assert!(t <= clock && t >= clock - 1500);
            max_seen = max_seen.max(t);
            assert!(t >= max_seen - 1500 - 2);
        }
    }
}
