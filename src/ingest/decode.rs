//! Decoding: JSON bytes → [`Event`], borrowing from the input.
//!
//! Two entry points. [`device_key`] is the router's cheap look at a message: it walks
//! the top-level object only as far as `deviceId` and skips other values without
//! building anything. [`decode`] is the partition actor's full parse and validation.
//! Neither allocates unless a string contains escapes.

use std::borrow::Cow;

use sonic_rs::error::Category;

use crate::event::{RawEvent, parse_rfc3339_ms};

/// Why a message or event is not a valid event. Plain enum: this is the hot path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not valid JSON.
    #[error("{0}")]
    Parse(String),
    /// Valid JSON but not a valid event.
    #[error("{0}")]
    Schema(String),
}

/// A valid event.
#[derive(Debug)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub device_id: Cow<'a, str>,
    pub seq: u64,
    pub kind: Cow<'a, str>,
    pub value: f64,
    /// `createdAt` in epoch milliseconds.
    pub ts: i64,
}

/// Parses and validates one event.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let raw: RawEvent = sonic_rs::from_slice(bytes).map_err(|e| match e.classify() {
        Category::TypeUnmatched | Category::NotFound => DecodeError::Schema(e.to_string()),
        _ => DecodeError::Parse(e.to_string()),
    })?;
    let ts = parse_rfc3339_ms(&raw.created_at).ok_or_else(|| {
        DecodeError::Schema(format!(
            "createdAt is not an RFC 3339 timestamp: {:?}",
            raw.created_at
        ))
    })?;
    if raw.device_id.is_empty() {
        return Err(DecodeError::Schema("deviceId is empty".into()));
    }
    if raw.event_id.is_empty() {
        return Err(DecodeError::Schema("eventId is empty".into()));
    }
    Ok(Event {
        event_id: raw.event_id,
        device_id: raw.device_id,
        seq: raw.seq,
        kind: raw.kind,
        value: raw.value,
        ts,
    })
}

/// The top-level `deviceId` string of a JSON object, found without parsing the rest.
/// `None` if the message is not an object or has no string `deviceId`; the actor's
/// full parse then says why.
pub fn device_key(b: &[u8]) -> Option<Cow<'_, str>> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key = &b[i + 1..key_end];
        i = skip_ws(b, key_end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        if key == b"deviceId" {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let end = string_end(b, i)?;
            let raw = &b[i + 1..end];
            return if raw.contains(&b'\\') {
                serde_json::from_slice::<String>(&b[i..=end])
                    .ok()
                    .map(Cow::Owned)
            } else {
                std::str::from_utf8(raw).ok().map(Cow::Borrowed)
            };
        }
        i = skip_value(b, i)?;
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index of the closing quote of the string that opens at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', &b[j..])?;
        if b[k] == b'"' {
            return Some(k);
        }
        j = k + 2;
        if j > b.len() {
            return None;
        }
    }
}

/// Index just past the JSON value that starts at `i` (structure only, not validated).
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|e| e + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => j = string_end(b, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: &str = r#"{"eventId":"e1","deviceId":"dev-1","deviceSequenceNumber":3,"type":"CO2","value":1001.5,"createdAt":"2026-01-01T00:00:01.250Z","complexData":{"a":[1,{"deviceId":"no"}]}}"#;

    #[test]
    fn a_valid_event_decodes_without_copying() {
        let e = decode(EV.as_bytes()).unwrap();
        assert_eq!(
            (&*e.event_id, &*e.device_id, e.seq, &*e.kind, e.value),
            ("e1", "dev-1", 3, "CO2", 1001.5)
        );
        assert!(matches!(e.device_id, Cow::Borrowed(_)));
        assert_eq!(e.ts, parse_rfc3339_ms("2026-01-01T00:00:01.250Z").unwrap());
    }

    #[test]
    fn errors_are_classified_as_parse_or_schema() {
        let schema = |s: &str| matches!(decode(s.as_bytes()), Err(DecodeError::Schema(_)));
        let parse = |s: &str| matches!(decode(s.as_bytes()), Err(DecodeError::Parse(_)));
        assert!(parse(&EV[..40]));
        assert!(parse("not json"));
        assert!(schema(&EV.replace("\"deviceId\"", "\"deviceID\"")));
        assert!(schema(&EV.replace("1001.5", "\"high\"")));
        assert!(schema(&EV.replace(":3,", ":-3,")));
        assert!(schema(&EV.replace("2026-01-01T00:00:01.250Z", "yesterday")));
        assert!(schema(&EV.replace(r#"{"a":[1,{"deviceId":"no"}]}"#, "[1]")));
        assert!(schema("[1,2]"));
        assert!(schema("42"));
        assert!(
            parse(&EV.replace(r#"[1,{"deviceId":"no"}]"#, "[1,tru]")),
            "complexData is validated"
        );
        assert!(
            decode(
                EV.replace(r#"{"a":[1,{"deviceId":"no"}]}"#, "null")
                    .as_bytes()
            )
            .is_ok()
        );
        assert!(schema(&EV.replace("\"dev-1\"", "\"\"")));
    }

    #[test]
    fn the_router_finds_the_top_level_device_id_only() {
        assert_eq!(device_key(EV.as_bytes()).as_deref(), Some("dev-1"));
        let nested_first =
            r#"{"complexData":{"deviceId":"inner","x":"a\"}"},"deviceId" : "outer"}"#;
        assert_eq!(
            device_key(nested_first.as_bytes()).as_deref(),
            Some("outer")
        );
        assert_eq!(
            device_key(br#"{"deviceId":"a\u0062c"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(device_key(br#"{"deviceId":7}"#), None);
        assert_eq!(device_key(br#"{"x":1}"#), None);
        assert_eq!(device_key(b"[1]"), None);
        assert_eq!(device_key(br#"{"x":"unterminated"#), None);
    }
}
