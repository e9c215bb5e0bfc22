//! The device state document and how updates fold into it.
//!
//! Every part of the document only moves forward: the latest reading by
//! (`createdAt`, `deviceSequenceNumber`), each window's latest aggregates by
//! `windowEnd`, each rule's latest alert state by `windowEnd`. [`DeviceDoc::merge`]
//! keeps the newer of two versions of each part, so merging is order-independent and
//! idempotent: a replay, a stale update, or a document another writer stored first
//! can never move a device's state backwards.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt64Type};
use serde::{Deserialize, Serialize};

use crate::event::{Alert, AlertState, DeviceUpdate, col, parse_rfc3339_ms, rfc3339_ms};

/// The longest document id Cosmos DB takes (bytes here, which is stricter).
pub const MAX_ID_LEN: usize = 255;

/// The document id for a record or device id: Cosmos DB refuses ids holding `/`, `\`,
/// `?` or `#`, so each of those and `%` is written as `%` and its two hex digits
/// (`contoso://device-id-154` → `contoso:%2F%2Fdevice-id-154`); every other character
/// stays. Reversed by [`raw_id`]. An id that would be longer than [`MAX_ID_LEN`] is cut
/// (at a character boundary) and ends in `~` and 16 hex digits of a hash of the whole
/// id, so that it stays unique and the same on every run (the document's own members,
/// `deviceId` and the rest, keep every value as it is).
pub fn doc_id(raw: &str) -> std::borrow::Cow<'_, str> {
    let special = |c: char| matches!(c, '/' | '\\' | '?' | '#' | '%');
    if !raw.contains(special) && raw.len() <= MAX_ID_LEN {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut id = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        if special(c) {
            id.push_str(&format!("%{:02X}", c as u32));
        } else {
            id.push(c);
        }
    }
    if id.len() > MAX_ID_LEN {
        let hash = format!("~{:016x}", xxhash_rust::xxh3::xxh3_64(raw.as_bytes()));
        let mut cut = MAX_ID_LEN - hash.len();
        while !id.is_char_boundary(cut) {
            cut -= 1;
        }
        id.truncate(cut);
        id.push_str(&hash);
    }
    std::borrow::Cow::Owned(id)
}

/// The record or device id a [`doc_id`] was made from; `None` for one that was cut
/// to fit (its document's members still hold the raw values).
pub fn raw_id(id: &str) -> Option<String> {
    let mut out = String::with_capacity(id.len());
    let mut rest = id;
    while let Some(at) = rest.find(['%', '~']) {
        out.push_str(&rest[..at]);
        if rest.as_bytes()[at] == b'~' {
            return None;
        }
        let code = u8::from_str_radix(rest.get(at + 1..at + 3)?, 16).ok()?;
        out.push(code as char);
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// One document per device in the `devices` container (id = [`doc_id`] of the
/// deviceId, partition key = the deviceId).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceDoc {
    pub id: String,
    #[serde(rename = "deviceId")]
    pub device_id: String,
    /// `createdAt` of the latest reading.
    #[serde(rename = "lastSeen", default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<Reading>,
    /// Window name → type → the latest closed window's aggregates.
    #[serde(default)]
    pub windows: BTreeMap<String, BTreeMap<String, WindowAggregates>>,
    /// The alerts currently raised (one per rule and type at most).
    #[serde(rename = "openAlerts", default)]
    pub open_alerts: Vec<Alert>,
    /// The latest alert state change per rule and type, raised or cleared.
    #[serde(rename = "lastAlerts", default)]
    pub last_alerts: Vec<Alert>,
}

/// The latest reading of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: f64,
    #[serde(rename = "createdAt")]
    pub created_at: String,
    #[serde(rename = "deviceSequenceNumber")]
    pub seq: u64,
}

/// A closed window's aggregates, as in the window record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAggregates {
    #[serde(rename = "windowStart")]
    pub window_start: String,
    #[serde(rename = "windowEnd")]
    pub window_end: String,
    pub count: u64,
    pub sum: f64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
}

/// Event time of an RFC 3339 field (unparseable sorts first: anything valid wins).
fn ts(s: &str) -> i64 {
    parse_rfc3339_ms(s).unwrap_or(i64::MIN)
}

impl DeviceDoc {
    pub fn new(device_id: &str) -> Self {
        DeviceDoc {
            id: doc_id(device_id).into_owned(),
            device_id: device_id.to_owned(),
            ..DeviceDoc::default()
        }
    }

    /// Takes a reading if it is newer than the one held.
    pub fn apply_reading(&mut self, r: &Reading) {
        let newer = match &self.latest {
            None => true,
            Some(old) => (ts(&r.created_at), r.seq) > (ts(&old.created_at), old.seq),
        };
        if newer {
            self.last_seen = Some(r.created_at.clone());
            self.latest = Some(r.clone());
        }
    }

    pub fn apply_update(&mut self, u: &DeviceUpdate) {
        self.apply_reading(&Reading {
            kind: u.kind.clone(),
            value: u.value,
            created_at: rfc3339_ms(u.created_at),
            seq: u.seq,
        });
    }

    /// Takes a window's aggregates if it ends later than the one held.
    pub fn apply_window(&mut self, window: &str, kind: &str, w: &WindowAggregates) {
        let slot = self
            .windows
            .entry(window.to_owned())
            .or_default()
            .entry(kind.to_owned());
        match slot {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(w.clone());
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if ts(&w.window_end) > ts(&o.get().window_end) {
                    o.insert(w.clone());
                }
            }
        }
    }

    /// Takes an alert state change if it is for a later window than the one held
    /// for its rule and type.
    pub fn apply_alert(&mut self, a: &Alert) {
        match self
            .last_alerts
            .iter_mut()
            .find(|o| o.rule == a.rule && o.kind == a.kind)
        {
            Some(o) => {
                if ts(&a.window_end) > ts(&o.window_end) {
                    *o = a.clone();
                } else {
                    return;
                }
            }
            None => {
                self.last_alerts.push(a.clone());
                self.last_alerts
                    .sort_by(|x, y| (&x.rule, &x.kind).cmp(&(&y.rule, &y.kind)));
            }
        }
        self.open_alerts = self
            .last_alerts
            .iter()
            .filter(|a| a.state == AlertState::Raised)
            .cloned()
            .collect();
    }

    /// Folds another version of this device's document in, keeping the newer of
    /// each part.
    pub fn merge(&mut self, other: &DeviceDoc) {
        if let Some(r) = &other.latest {
            self.apply_reading(r);
        }
        for (name, kinds) in &other.windows {
            for (kind, w) in kinds {
                self.apply_window(name, kind, w);
            }
        }
        for a in &other.last_alerts {
            self.apply_alert(a);
        }
    }
}

/// The devices of a window batch with their rows' aggregates, for the device documents.
pub fn window_rows(
    batch: &RecordBatch,
) -> impl Iterator<Item = (&str, &str, &str, WindowAggregates)> {
    let window = batch.column(col::WINDOW).as_string::<i32>();
    let device = batch.column(col::DEVICE_ID).as_string::<i32>();
    let kind = batch.column(col::TYPE).as_string::<i32>();
    let start = batch
        .column(col::WINDOW_START)
        .as_primitive::<TimestampMillisecondType>();
    let end = batch
        .column(col::WINDOW_END)
        .as_primitive::<TimestampMillisecondType>();
    let count = batch.column(col::COUNT).as_primitive::<UInt64Type>();
    let f = |c: usize| batch.column(c).as_primitive::<Float64Type>();
    let (sum, avg, min, max) = (f(col::SUM), f(col::AVG), f(col::MIN), f(col::MAX));
    (0..batch.num_rows()).map(move |i| {
        (
            device.value(i),
            window.value(i),
            kind.value(i),
            WindowAggregates {
                window_start: rfc3339_ms(start.value(i)),
                window_end: rfc3339_ms(end.value(i)),
                count: count.value(i),
                sum: sum.value(i),
                avg: avg.value(i),
                min: min.value(i),
                max: max.value(i),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn alert(end: &str, state: AlertState) -> Alert {
        Alert {
            id: format!("r|d|{end}"),
            rule: Arc::from("r"),
            device_id: "d".into(),
            kind: "CO2".into(),
            window: Arc::from("w"),
            window_start: "2026-01-01T00:00:00.000Z".into(),
            window_end: end.into(),
            value: 1.0,
            state,
        }
    }

    fn reading(at: &str, seq: u64) -> Reading {
        Reading {
            kind: "CO2".into(),
            value: seq as f64,
            created_at: at.into(),
            seq,
        }
    }

    #[test]
    fn state_never_moves_backwards() {
        let mut newer = DeviceDoc::new("d");
        newer.apply_reading(&reading("2026-01-01T00:05:00.000Z", 9));
        newer.apply_alert(&alert("2026-01-01T00:05:00.000Z", AlertState::Cleared));
        let mut older = DeviceDoc::new("d");
        older.apply_reading(&reading("2026-01-01T00:01:00.000Z", 3));
        older.apply_alert(&alert("2026-01-01T00:01:00.000Z", AlertState::Raised));

        let mut a = newer.clone();
        a.merge(&older);
        assert_eq!(a, newer, "an older version changes nothing");
        let mut b = older.clone();
        b.merge(&newer);
        assert_eq!(b, newer, "merging is order-independent");
        assert!(b.open_alerts.is_empty());
        assert_eq!(b.last_seen.as_deref(), Some("2026-01-01T00:05:00.000Z"));
        let mut c = b.clone();
        c.merge(&b);
        assert_eq!(c, b, "merging is idempotent");
    }

    #[test]
    fn raised_alerts_are_open_until_cleared() {
        let mut d = DeviceDoc::new("d");
        d.apply_alert(&alert("2026-01-01T00:01:00.000Z", AlertState::Raised));
        assert_eq!(d.open_alerts.len(), 1);
        d.apply_alert(&alert("2026-01-01T00:02:00.000Z", AlertState::Cleared));
        assert!(d.open_alerts.is_empty());
        assert_eq!(d.last_alerts.len(), 1);
        assert_eq!(d.last_alerts[0].state, AlertState::Cleared);
    }
}

#[cfg(test)]
mod id_tests {
    use super::{MAX_ID_LEN, doc_id, raw_id};

    #[test]
    fn document_ids_hold_no_forbidden_character_and_read_back() {
        for raw in [
            "contoso://device-id-154",
            "a\\b?c#d%e",
            "100%",
            "%2F",
            "salle à manger ✓",
            "plain-id",
            "",
            "~tilde",
        ] {
            let id = doc_id(raw);
            assert!(!id.contains(['/', '\\', '?', '#']), "{raw} -> {id}");
            if !raw.contains('~') {
                assert_eq!(raw_id(&id).as_deref(), Some(raw), "{raw} -> {id}");
            }
        }
        assert_eq!(
            doc_id("contoso://device-id-154"),
            "contoso:%2F%2Fdevice-id-154"
        );
        assert_eq!(doc_id("a%b"), "a%25b");
        assert!(matches!(doc_id("plain"), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn long_ids_are_cut_with_a_hash_and_stay_distinct() {
        let a = format!(
            "tumbling_1m|{}|CO2|2026-01-01T00:00:00.000Z",
            "é/".repeat(100)
        );
        let b = a.replace("CO2", "TEMP");
        let (ia, ib) = (doc_id(&a), doc_id(&b));
        assert!(ia.len() <= MAX_ID_LEN && ib.len() <= MAX_ID_LEN);
        assert_ne!(ia, ib);
        assert_eq!(ia, doc_id(&a), "the same on every call");
        assert!(!ia.contains(['/', '\\', '?', '#']));
        assert_eq!(raw_id(&ia), None);
        let exact = "x".repeat(MAX_ID_LEN);
        assert_eq!(doc_id(&exact), exact);
    }
}
