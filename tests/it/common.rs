//! Test helpers: generating input, reading outputs, and an independent reference model.
//!
//! The reference recomputes what eventide must output from the raw lines with none of
//! its machinery: `serde_json::Value`s, unbounded sets for dedupe, and a direct
//! "is this window already closed?" test per window instead of panes.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use eventide_simulator::{Generator, SimConfig, time};
use serde_json::Value;

/// The windows and rule every end-to-end config uses (as `config/file.toml`).
pub const WINDOWS_AND_RULE: &str = r#"
[[windows]]
name = "tumbling_1m"
kind = "tumbling"
size = "1m"

[[windows]]
name = "sliding_5m"
kind = "sliding"
size = "5m"
slide = "1m"

[[rules]]
name = "co2_high"
window = "sliding_5m"
filter = "type = 'CO2'"
when = "avg > 1000"
clear = "avg < 950"
"#;

pub fn generate(cfg: SimConfig, events: u64) -> Vec<u8> {
    let mut g = Generator::new(cfg);
    let mut out = Vec::new();
    while g.stats().events < events {
        g.next_message(&mut out, events - g.stats().events);
    }
    out
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad output line {l:?}: {e}")))
        .collect()
}

#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub name: String,
    pub size: i64,
    pub slide: i64,
}

#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub name: String,
    pub window: String,
    pub kind: String,
    pub above: f64,
    pub below: f64,
    /// Per-device limits from a reference table (`when = "avg > limits.x"`, `clear =
    /// "avg < limits.x * 0.95"`): they replace `above`/`below`; a device not listed
    /// has no alerts.
    pub limits: Option<BTreeMap<String, f64>>,
}

/// What eventide is configured to do, for the reference.
#[derive(Debug, Clone)]
pub struct Model {
    pub partitions: usize,
    pub ooo: i64,
    pub lateness: i64,
    pub windows: Vec<WindowSpec>,
    pub rules: Vec<RuleSpec>,
    pub types: Option<Vec<String>>,
    /// Absence rules: (name, the type the filter pins or none, after ms).
    pub absences: Vec<(String, Option<String>, i64)>,
    /// Absence rules with `expect`: (its index in `absences`, the devices the table
    /// lists). Each partition watches the listed devices that hash to it from its
    /// watermark at its first event (not a duplicate, of a kept type): one unseen
    /// when its watermark is `after` past that raises, and clears when it reports.
    pub expects: Vec<(usize, Vec<String>)>,
    /// Each device keeps its own watermark (`pipeline.event_time = "device"`, the
    /// default); else one per partition.
    pub per_device: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// The expected results.
#[derive(Debug, Default)]
pub struct Expected {
    pub received: u64,
    pub aggregated: u64,
    pub duplicate: u64,
    pub filtered: u64,
    pub late: u64,
    pub parse: u64,
    pub schema: u64,
    pub gaps: u64,
    /// id → aggregates
    pub windows: BTreeMap<String, Agg>,
    /// id → (state, value)
    pub alerts: BTreeMap<String, (String, f64)>,
}

fn align_down(t: i64, w: i64) -> i64 {
    t - t.rem_euclid(w)
}

fn valid_event(v: &Value) -> Option<(String, String, u64, String, f64, i64)> {
    let o = v.as_object()?;
    let s = |k: &str| o.get(k)?.as_str().map(str::to_owned);
    let id = s("eventId").filter(|x| !x.is_empty())?;
    let dev = s("deviceId").filter(|x| !x.is_empty())?;
    let seq = o.get("deviceSequenceNumber")?.as_u64()?;
    let kind = s("type")?;
    let value = o.get("value")?.as_f64()?;
    let ts = time::parse_rfc3339_ms(&s("createdAt")?)?;
    match o.get("complexData") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        _ => return None,
    }
    Some((id, dev, seq, kind, value, ts))
}

impl Model {
    pub fn expect(&self, input: &[u8]) -> Expected {
        let mut e = Expected::default();
        let mut wm: Vec<i64> = vec![i64::MIN; self.partitions];
        let mut max_ts: Vec<i64> = vec![i64::MIN; self.partitions];
        let mut device_wm: HashMap<String, i64> = HashMap::new();
        // Absence rules: per (device, type) its partition and latest time; raised.
        let mut last_seen: BTreeMap<(String, String), (usize, i64)> = BTreeMap::new();
        let mut absent: HashSet<(usize, String, String)> = HashSet::new();
        let mut watch_from: Vec<i64> = vec![i64::MIN; self.partitions];
        let mut unseen: Vec<BTreeSet<String>> = self
            .expects
            .iter()
            .map(|(_, list)| list.iter().cloned().collect())
            .collect();
        let mut ids: HashSet<String> = HashSet::new();
        let mut seqs: HashSet<(String, u64)> = HashSet::new();
        let mut seq_seen: HashMap<String, (u64, BTreeMap<u64, ()>)> = HashMap::new();
        // (window idx, device, type, start) → agg
        let mut wins: BTreeMap<(usize, String, String, i64), Agg> = BTreeMap::new();
        let text = std::str::from_utf8(input).unwrap();
        let mut events: Vec<Value> = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Err(_) => {
                    e.received += 1;
                    e.parse += 1;
                }
                Ok(Value::Array(items)) => events.extend(items),
                Ok(v) => events.push(v),
            }
        }
        for v in events {
            e.received += 1;
            let Some((id, dev, seq, kind, value, ts)) = valid_event(&v) else {
                e.schema += 1;
                continue;
            };
            let p = eventide::ingest::partition_of(&dev, self.partitions);
            if ts > max_ts[p] {
                max_ts[p] = ts;
                wm[p] = wm[p].max(ts - self.ooo);
            }
            if self.types.as_ref().is_some_and(|t| !t.contains(&kind)) {
                e.filtered += 1;
                continue;
            }
            // The watermark this event is judged by: its device's (moved by it, before
            // dedupe, as the partition's is) or its partition's.
            let wm_now = if self.per_device {
                let w = device_wm.entry(dev.clone()).or_insert(i64::MIN);
                *w = (*w).max(ts - self.ooo);
                *w
            } else {
                wm[p]
            };
            let dup_id = !ids.insert(id);
            if dup_id || !seqs.insert((dev.clone(), seq)) {
                e.duplicate += 1;
                continue;
            }
            if !self.absences.is_empty() && watch_from[p] == i64::MIN {
                watch_from[p] = wm[p];
            }
            for (x, (r, _)) in self.expects.iter().enumerate() {
                let (name, pinned, after) = &self.absences[*r];
                if pinned.as_ref().is_some_and(|t| *t != kind) || !unseen[x].remove(&dev) {
                    continue;
                }
                let from = watch_from[p];
                if wm[p] >= from + after {
                    let id = format!("{name}|{dev}|{}", time::rfc3339_ms(from + after));
                    e.alerts
                        .insert(id, ("raised".into(), *after as f64 / 1000.0));
                    let end = ts.max(from);
                    let id = format!("{name}|{dev}|{}", time::rfc3339_ms(end));
                    e.alerts
                        .insert(id, ("cleared".into(), (end - from) as f64 / 1000.0));
                }
            }
            for (r, (name, pinned, after)) in self.absences.iter().enumerate() {
                if pinned.as_ref().is_some_and(|t| *t != kind) {
                    continue;
                }
                let key = (dev.clone(), kind.clone());
                let Some(&(_, last)) = last_seen.get(&key) else {
                    continue;
                };
                let flag = (r, dev.clone(), kind.clone());
                if !absent.contains(&flag) && wm[p] >= last + after {
                    let id = format!("{name}|{dev}|{}", time::rfc3339_ms(last + after));
                    e.alerts
                        .insert(id, ("raised".into(), *after as f64 / 1000.0));
                    absent.insert(flag.clone());
                }
                if absent.remove(&flag) {
                    let end = ts.max(last);
                    let id = format!("{name}|{dev}|{}", time::rfc3339_ms(end));
                    e.alerts
                        .insert(id, ("cleared".into(), (end - last) as f64 / 1000.0));
                }
            }
            let seen = last_seen
                .entry((dev.clone(), kind.clone()))
                .or_insert((p, ts));
            seen.1 = seen.1.max(ts);
            let st = seq_seen
                .entry(dev.clone())
                .or_insert((seq, BTreeMap::new()));
            st.1.insert(seq, ());
            let mut any = false;
            for (w, spec) in self.windows.iter().enumerate() {
                let mut s = align_down(ts, spec.slide);
                while s > ts - spec.size {
                    if s + spec.size + self.lateness > wm_now {
                        any = true;
                        let a = wins
                            .entry((w, dev.clone(), kind.clone(), s))
                            .or_insert(Agg {
                                count: 0,
                                sum: 0.0,
                                min: f64::INFINITY,
                                max: f64::NEG_INFINITY,
                            });
                        a.count += 1;
                        a.sum += value;
                        a.min = a.min.min(value);
                        a.max = a.max.max(value);
                    }
                    s -= spec.slide;
                }
            }
            if any { e.aggregated += 1 } else { e.late += 1 }
        }
        // Series silent at the end: raised if their partition's watermark passed the
        // deadline.
        for (r, (name, pinned, after)) in self.absences.iter().enumerate() {
            for ((dev, kind), &(p, last)) in &last_seen {
                if pinned.as_ref().is_some_and(|t| t != kind)
                    || absent.contains(&(r, dev.clone(), kind.clone()))
                {
                    continue;
                }
                if wm[p] >= last + after {
                    let id = format!("{name}|{dev}|{}", time::rfc3339_ms(last + after));
                    e.alerts
                        .insert(id, ("raised".into(), *after as f64 / 1000.0));
                }
            }
        }
        // Listed devices never seen: raised if their partition's watermark passed
        // the deadline.
        for (x, (r, _)) in self.expects.iter().enumerate() {
            let (name, _, after) = &self.absences[*r];
            for dev in &unseen[x] {
                let p = eventide::ingest::partition_of(dev, self.partitions);
                let from = watch_from[p];
                if from != i64::MIN && wm[p] >= from + after {
                    let id = format!("{name}|{dev}|{}", time::rfc3339_ms(from + after));
                    e.alerts
                        .insert(id, ("raised".into(), *after as f64 / 1000.0));
                }
            }
        }
        for (first, seen) in seq_seen.values() {
            let max = *seen.keys().next_back().unwrap();
            if max > *first {
                let present = seen.range(first + 1..max).count() as u64;
                e.gaps += (max - first - 1) - present;
            }
        }
        for ((w, dev, kind, start), a) in &wins {
            let name = &self.windows[*w].name;
            e.windows.insert(
                format!("{name}|{dev}|{kind}|{}", time::rfc3339_ms(*start)),
                *a,
            );
        }
        for r in &self.rules {
            let w = self
                .windows
                .iter()
                .position(|x| x.name == r.window)
                .unwrap();
            let size = self.windows[w].size;
            let mut raised: HashSet<(String, String)> = HashSet::new();
            for ((wi, dev, kind, start), a) in &wins {
                if *wi != w || *kind != r.kind {
                    continue;
                }
                let avg = a.sum / a.count as f64;
                let key = (dev.clone(), kind.clone());
                let id = format!("{}|{dev}|{}", r.name, time::rfc3339_ms(start + size));
                let (above, below) = match &r.limits {
                    None => (r.above, r.below),
                    Some(limits) => match limits.get(dev) {
                        Some(&l) => (l, l * 0.95),
                        None => continue,
                    },
                };
                if !raised.contains(&key) && avg > above {
                    raised.insert(key);
                    e.alerts.insert(id, ("raised".into(), avg));
                } else if raised.contains(&key) && avg < below {
                    raised.remove(&key);
                    e.alerts.insert(id, ("cleared".into(), avg));
                }
            }
        }
        e
    }
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Asserts that window records equal the expected aggregates, each present once.
pub fn assert_windows(records: &[Value], expected: &BTreeMap<String, Agg>) {
    let mut got: BTreeMap<String, &Value> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.get("windowStart").is_some() && r.get("state").is_none())
    {
        let id = r["id"].as_str().unwrap().to_owned();
        assert!(
            got.insert(id.clone(), r).is_none(),
            "window {id} written twice"
        );
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?} (of {} expected, {} got)",
        expected.len(),
        got.len()
    );
    for (id, a) in expected {
        let r = got[id];
        assert_eq!(r["count"].as_u64().unwrap(), a.count, "{id} count");
        assert!(
            close(r["sum"].as_f64().unwrap(), a.sum),
            "{id} sum {} vs {}",
            r["sum"],
            a.sum
        );
        assert!(
            close(r["avg"].as_f64().unwrap(), a.sum / a.count as f64),
            "{id} avg"
        );
        assert_eq!(r["min"].as_f64().unwrap(), a.min, "{id} min");
        assert_eq!(r["max"].as_f64().unwrap(), a.max, "{id} max");
        let parts: Vec<&str> = id.split('|').collect();
        assert_eq!(r["window"], parts[0]);
        assert_eq!(r["deviceId"], parts[1]);
        assert_eq!(r["type"], parts[2]);
        assert_eq!(r["windowStart"], parts[3]);
        let start = time::parse_rfc3339_ms(parts[3]).unwrap();
        let end = time::parse_rfc3339_ms(r["windowEnd"].as_str().unwrap()).unwrap();
        assert!(end > start && r["windowEnd"].as_str().unwrap().ends_with('Z'));
    }
}

/// Asserts that alert records equal the expected ones.
pub fn assert_alerts(records: &[Value], expected: &BTreeMap<String, (String, f64)>) {
    let got: BTreeMap<String, (String, f64)> = records
        .iter()
        .filter(|r| r.get("state").is_some())
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                (
                    r["state"].as_str().unwrap().to_owned(),
                    r["value"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        got.len(),
        records.iter().filter(|r| r.get("state").is_some()).count(),
        "an alert id repeats"
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (id, (state, value)) in expected {
        assert_eq!(&got[id].0, state, "{id}");
        assert!(close(got[id].1, *value), "{id}: {} vs {value}", got[id].1);
    }
}

/// `command`, installing Debian's `package` with apt-get first when it is missing (as
/// root, or through `sudo -n`). Panics, naming the package, if that fails.
pub fn debian_tool(command: &'static str, package: &str) -> &'static str {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let have = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return command;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let sudo = if root { vec![] } else { vec!["sudo", "-n"] };
    for args in [
        vec!["apt-get", "update", "-q"],
        vec!["apt-get", "install", "-y", "-q", package],
    ] {
        let all: Vec<&str> = sudo.iter().copied().chain(args).collect();
        let status = Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .unwrap_or_else(|e| panic!("running apt-get to install {package}: {e}"));
        assert!(status.success(), "installing {package} failed: {all:?}");
    }
    assert!(
        have(),
        "{command} is still missing after installing {package}"
    );
    command
}

/// GET `path` on loopback `port` with a bearer token: the body, if the answer is 200.
pub fn http_get(port: u16, path: &str, token: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
}
