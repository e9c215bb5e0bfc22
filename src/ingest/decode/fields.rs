//! Which input member fills each role of an event (`[source.fields]`), and how its
//! time reads.
//!
//! Both readers find a member's role by its key with one table lookup by key length
//! and one compare, whatever the member order: the scalar one through
//! [`Fields::role`], the fast one through [`Fields::slot_at`], which gives the role's
//! [`Role::slot`] and compares four masked words (no branch on the key's length).

/// Most value members one event may carry (`value = ["temperature", …]`).
pub const MAX_VALUES: usize = 16;

/// How the time member reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// An RFC 3339 string (`2026-01-01T00:00:00.123Z`).
    #[default]
    Rfc3339,
    /// Milliseconds since the Unix epoch: a number or a numeric string.
    EpochMs,
    /// Seconds since the Unix epoch: a number or a numeric string (fractions keep
    /// their milliseconds).
    EpochS,
}

/// What a member of an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    EventId,
    DeviceId,
    Sequence,
    Type,
    Time,
    /// The `i`-th value member.
    Value(u8),
    /// `complexData`: carried, checked to be an object or null, not aggregated.
    ComplexData,
    /// Anything else: validated and skipped.
    Other,
}

impl Role {
    /// Where the fast reader keeps a member of this role ([`Fields::slot`]): one slot
    /// per role, then one per value member, then one shared by all other members.
    pub const fn slot(self) -> usize {
        match self {
            Role::EventId => 0,
            Role::DeviceId => 1,
            Role::Sequence => 2,
            Role::Type => 3,
            Role::Time => 4,
            Role::ComplexData => 5,
            Role::Value(i) => 6 + i as usize,
            Role::Other => SLOTS - 1,
        }
    }
}

/// How many slots [`Role::slot`] numbers.
pub const SLOTS: usize = 7 + MAX_VALUES;

/// The member names of an event's roles. `Default` is the contract's names.
#[derive(Debug, Clone)]
pub struct Fields {
    /// `None`: the input has no event id (dedupe by sequence only).
    pub event_id: Option<Box<str>>,
    pub device_id: Box<str>,
    /// `None`: the input has no sequence numbers (no sequence dedupe or gaps).
    pub sequence: Option<Box<str>>,
    /// `None`: each value member is its own series, typed by its name.
    pub kind: Option<Box<str>>,
    pub time: Box<str>,
    pub time_format: TimeFormat,
    /// One member (with `kind`), or the members of a multi-metric payload.
    pub values: Vec<Box<str>>,
    /// Every named member and its role, chained by key length (see [`Fields::role`]).
    keys: Vec<(Box<[u8]>, Role)>,
    /// By key length (longer keys share the last entry): the first of `keys` with it.
    by_len: [u8; LENGTHS],
    /// The next entry of `keys` with the same length bucket.
    next: Vec<u8>,
    /// The [`Role::slot`] of each entry of `keys`.
    slots: Vec<u8>,
    /// Each entry of `keys` of at most [`WIDE`] bytes as four words, zero-padded, and
    /// the masks of its bytes: [`Fields::slot_at`] compares a key with them without a
    /// branch on its length (which a member order that changes from one event to the
    /// next would mispredict).
    wide: Vec<([u64; 4], [u64; 4])>,
}

/// Keys up to this long are compared as four masked words.
const WIDE: usize = 32;

const LENGTHS: usize = 64;
const NONE: u8 = u8::MAX;

impl Default for Fields {
    fn default() -> Self {
        Fields::new(
            Some("eventId"),
            "deviceId",
            Some("deviceSequenceNumber"),
            Some("type"),
            &["value"],
            "createdAt",
            TimeFormat::Rfc3339,
        )
        .expect("the contract's names are valid")
    }
}

impl Fields {
    /// Checks and indexes a mapping. The error says which role is wrong (the config
    /// names the key).
    pub fn new(
        event_id: Option<&str>,
        device_id: &str,
        sequence: Option<&str>,
        kind: Option<&str>,
        values: &[&str],
        time: &str,
        time_format: TimeFormat,
    ) -> Result<Fields, (&'static str, String)> {
        if device_id.is_empty() {
            return Err(("device_id", "every event needs a device id".into()));
        }
        if time.is_empty() {
            return Err(("time", "every event needs an event time".into()));
        }
        if values.is_empty() || values.iter().any(|v| v.is_empty()) {
            return Err(("value", "name at least one value member".into()));
        }
        if values.len() > MAX_VALUES {
            return Err((
                "value",
                format!("at most {MAX_VALUES} value members, got {}", values.len()),
            ));
        }
        if kind.is_some() && values.len() > 1 {
            return Err((
                "type",
                "must be \"\" when value lists several members (each is its own type)".into(),
            ));
        }
        let mut keys: Vec<(Box<[u8]>, Role)> = Vec::new();
        let mut add = |name: &str, role: Role, key: &'static str| {
            if name == "complexData" {
                return Err((key, "\"complexData\" is carried, not read".to_string()));
            }
            if keys.iter().any(|(k, _)| **k == *name.as_bytes()) {
                return Err((key, format!("member {name:?} is named for two roles")));
            }
            keys.push((name.as_bytes().into(), role));
            Ok(())
        };
        if let Some(n) = event_id {
            add(n, Role::EventId, "event_id")?;
        }
        add(device_id, Role::DeviceId, "device_id")?;
        if let Some(n) = sequence {
            add(n, Role::Sequence, "sequence")?;
        }
        if let Some(n) = kind {
            add(n, Role::Type, "type")?;
        }
        add(time, Role::Time, "time")?;
        for (i, v) in values.iter().enumerate() {
            add(v, Role::Value(i as u8), "value")?;
        }
        keys.push((b"complexData".as_slice().into(), Role::ComplexData));
        let mut by_len = [NONE; LENGTHS];
        let mut next = vec![NONE; keys.len()];
        for (i, (k, _)) in keys.iter().enumerate().rev() {
            let l = k.len().min(LENGTHS - 1);
            next[i] = by_len[l];
            by_len[l] = i as u8;
        }
        let wide = keys
            .iter()
            .map(|(k, _)| {
                let (mut words, mut masks) = ([0u64; 4], [0u64; 4]);
                for (i, &c) in k.iter().take(WIDE).enumerate() {
                    words[i / 8] |= (c as u64) << (8 * (i % 8));
                    masks[i / 8] |= 0xff << (8 * (i % 8));
                }
                (words, masks)
            })
            .collect();
        Ok(Fields {
            event_id: event_id.map(Into::into),
            device_id: device_id.into(),
            sequence: sequence.map(Into::into),
            kind: kind.map(Into::into),
            time: time.into(),
            time_format,
            values: values.iter().map(|&v| v.into()).collect(),
            slots: keys.iter().map(|(_, r)| r.slot() as u8).collect(),
            keys,
            by_len,
            next,
            wide,
        })
    }

    /// The role of the member named `key` (its raw bytes, without escapes).
    #[inline(always)]
    pub fn role(&self, key: &[u8]) -> Role {
        self.entry(key).map_or(Role::Other, |i| self.keys[i].1)
    }

    /// [`Role::slot`] of [`Fields::role`], read from a table (no branch on the role).
    #[inline(always)]
    pub fn slot(&self, key: &[u8]) -> usize {
        self.entry(key)
            .map_or(SLOTS - 1, |i| self.slots[i] as usize)
    }

    /// The entry of `keys` named `key`.
    #[inline(always)]
    fn entry(&self, key: &[u8]) -> Option<usize> {
        let mut i = self.by_len[key.len().min(LENGTHS - 1)];
        while i != NONE {
            if same(&self.keys[i as usize].0, key) {
                return Some(i as usize);
            }
            i = self.next[i as usize];
        }
        None
    }

    /// [`Fields::slot`] of the key `b[at..at + len]` (raw bytes, without escapes): a
    /// key of up to 32 bytes, with 32 bytes of `b` from `at`, is read as four words and
    /// compared with a name's masked words.
    #[inline(always)]
    pub fn slot_at(&self, b: &[u8], at: usize, len: usize) -> usize {
        let Some(w) = b.get(at..at + WIDE).filter(|_| len <= WIDE) else {
            return self.slot(&b[at..at + len]);
        };
        let x: [u64; 4] = std::array::from_fn(|i| {
            u64::from_le_bytes(w[8 * i..8 * i + 8].try_into().expect("8 bytes"))
        });
        let mut i = self.by_len[len];
        while i != NONE {
            let (k, m) = &self.wide[i as usize];
            let diff = ((x[0] ^ k[0]) & m[0])
                | ((x[1] ^ k[1]) & m[1])
                | ((x[2] ^ k[2]) & m[2])
                | ((x[3] ^ k[3]) & m[3]);
            if diff == 0 {
                return self.slots[i as usize] as usize;
            }
            i = self.next[i as usize];
        }
        SLOTS - 1
    }

    /// Whether each value member is its own series (no type member).
    pub fn multi(&self) -> bool {
        self.kind.is_none()
    }

    /// The member name of `role` (for error messages).
    pub fn name(&self, role: Role) -> &str {
        match role {
            Role::EventId => self.event_id.as_deref().unwrap_or(""),
            Role::DeviceId => &self.device_id,
            Role::Sequence => self.sequence.as_deref().unwrap_or(""),
            Role::Type => self.kind.as_deref().unwrap_or(""),
            Role::Time => &self.time,
            Role::Value(i) => &self.values[i as usize],
            Role::ComplexData => "complexData",
            Role::Other => "",
        }
    }

    /// Whether the contract's names and RFC 3339 time are used (what the router's
    /// shortcut for the usual layout assumes).
    pub fn is_default(&self) -> bool {
        self.event_id.as_deref() == Some("eventId")
            && &*self.device_id == "deviceId"
            && self.sequence.as_deref() == Some("deviceSequenceNumber")
            && self.kind.as_deref() == Some("type")
            && &*self.time == "createdAt"
            && self.values.len() == 1
            && &*self.values[0] == "value"
            && self.time_format == TimeFormat::Rfc3339
    }
}

/// Whether `a` and `b` hold the same bytes, with a few word compares for the short keys
/// of event members (no call to `memcmp`).
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |x: &[u8], i: usize| u64::from_le_bytes(x[i..i + 8].try_into().expect("8 bytes"));
    let w4 = |x: &[u8], i: usize| u32::from_le_bytes(x[i..i + 4].try_into().expect("4 bytes"));
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        17..=32 => {
            w8(a, 0) == w8(b, 0)
                && w8(a, 8) == w8(b, 8)
                && w8(a, n - 16) == w8(b, n - 16)
                && w8(a, n - 8) == w8(b, n - 8)
        }
        _ => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8) && a[8..n - 8] == b[8..n - 8],
    }
}

/// Event time in ms from an epoch number's text (`-?digits(.digits)?(e…)?`, or the
/// same inside a string): `None` if it is not a finite number of the format's unit in
/// the years 0000–9999. Fractions of a millisecond are dropped (rounded down), as
/// RFC 3339 times are read.
pub fn epoch_ms(text: &str, format: TimeFormat) -> Option<i64> {
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    let t = text.trim_ascii();
    let unit = match format {
        TimeFormat::EpochMs => 1,
        TimeFormat::EpochS => 1000,
        TimeFormat::Rfc3339 => return None,
    };
    // Integers (the usual case) exactly; anything else through f64.
    let ms = if !t.is_empty()
        && t.len() <= 18
        && t.bytes()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == b'-' && t.len() > 1))
    {
        t.parse::<i64>().ok()?.checked_mul(unit)?
    } else {
        if !t
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            return None; // not "inf", "NaN", " 1" …
        }
        let v = t.parse::<f64>().ok()? * unit as f64;
        if !v.is_finite() || v.abs() > 1e16 {
            return None;
        }
        v.floor() as i64
    };
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_found_by_name_whatever_the_length() {
        let f = Fields::default();
        for (k, r) in [
            ("eventId", Role::EventId),
            ("deviceId", Role::DeviceId),
            ("deviceSequenceNumber", Role::Sequence),
            ("type", Role::Type),
            ("createdAt", Role::Time),
            ("value", Role::Value(0)),
            ("complexData", Role::ComplexData),
            ("deviceID", Role::Other),
            ("valuе", Role::Other),
            ("", Role::Other),
        ] {
            assert_eq!(f.role(k.as_bytes()), r, "{k}");
        }
        let long = "x".repeat(70);
        let long2 = format!("{}y", "x".repeat(69));
        let f = Fields::new(
            None,
            "id",
            None,
            None,
            &["temperature", "humidity", &long, "abcde"],
            "ts",
            TimeFormat::EpochMs,
        )
        .unwrap();
        assert_eq!(f.role(long.as_bytes()), Role::Value(2));
        assert_eq!(f.role(long2.as_bytes()), Role::Other);
        assert_eq!(f.role(b"humidity"), Role::Value(1));
        assert_eq!(f.role(b"abcde"), Role::Value(3));
        assert_eq!(f.role(b"value"), Role::Other);
        assert_eq!(f.role(b"eventId"), Role::Other);
        assert!(f.multi() && !f.is_default() && Fields::default().is_default());
    }

    #[test]
    fn word_compares_agree_with_slice_compares() {
        let mut rng = eventide_simulator::Rng::new(3);
        for _ in 0..50_000 {
            let n = rng.below(40) as usize;
            let a: Vec<u8> = (0..n).map(|_| b"ab"[rng.below(2) as usize]).collect();
            let mut b = a.clone();
            if n > 0 && rng.chance(0.5) {
                b[rng.below(n as u64) as usize] ^= 3;
            }
            if rng.chance(0.1) {
                b.push(b'a');
            }
            assert_eq!(same(&a, &b), a == b, "{a:?} {b:?}");
        }
    }

    #[test]
    fn bad_mappings_name_the_role() {
        let e = |r: Result<Fields, (&'static str, String)>| r.unwrap_err().0;
        let t = TimeFormat::Rfc3339;
        assert_eq!(
            e(Fields::new(None, "", None, None, &["v"], "t", t)),
            "device_id"
        );
        assert_eq!(e(Fields::new(None, "d", None, None, &["v"], "", t)), "time");
        assert_eq!(e(Fields::new(None, "d", None, None, &[], "t", t)), "value");
        assert_eq!(
            e(Fields::new(None, "d", None, Some("k"), &["a", "b"], "t", t)),
            "type"
        );
        assert_eq!(
            e(Fields::new(Some("d"), "d", None, None, &["v"], "t", t)),
            "device_id"
        );
        assert_eq!(
            e(Fields::new(None, "d", None, None, &["v", "v"], "t", t)),
            "value"
        );
        assert_eq!(
            e(Fields::new(None, "d", None, None, &["complexData"], "t", t)),
            "value"
        );
        let many: Vec<String> = (0..17).map(|i| format!("m{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            e(Fields::new(None, "d", None, None, &many, "t", t)),
            "value"
        );
    }

    #[test]
    fn epoch_times_read_in_their_unit() {
        use TimeFormat::*;
        assert_eq!(epoch_ms("1767225600123", EpochMs), Some(1_767_225_600_123));
        assert_eq!(epoch_ms("1767225600", EpochS), Some(1_767_225_600_000));
        assert_eq!(epoch_ms("1767225600.1239", EpochS), Some(1_767_225_600_123));
        assert_eq!(
            epoch_ms("1767225600123.9", EpochMs),
            Some(1_767_225_600_123)
        );
        assert_eq!(epoch_ms("-1", EpochMs), Some(-1));
        assert_eq!(epoch_ms("-0.5", EpochS), Some(-500));
        assert_eq!(epoch_ms("1.7672256e9", EpochS), Some(1_767_225_600_000));
        for bad in [
            "",
            "-",
            "x",
            "1e400",
            "NaN",
            "inf",
            "99999999999999999",
            "1 2",
        ] {
            assert_eq!(epoch_ms(bad, EpochS), None, "{bad}");
        }
        assert_eq!(epoch_ms("1767225600", Rfc3339), None);
    }
}
