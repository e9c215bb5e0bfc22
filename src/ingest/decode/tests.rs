use proptest::prelude::*;
use serde_json::Value;

use super::*;

const EV: &str = r#"{"eventId":"e1","deviceId":"dev-1","deviceSequenceNumber":3,"type":"CO2","value":1001.5,"createdAt":"2026-01-01T00:00:01.250Z","complexData":{"a":[1,{"deviceId":"no"}],"b":-0.5e-3,"c":true,"d":null}}"#;

fn schema(s: &str) -> bool {
    matches!(decode(s.as_bytes()), Err(DecodeError::Schema(_)))
}
fn parse(s: &str) -> bool {
    matches!(decode(s.as_bytes()), Err(DecodeError::Parse(_)))
}

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
fn escapes_and_unicode_decode() {
    let escaped = EV.replace("\"dev-1\"", r#""d\"ev\\1\u00e9\ud83d\ude00\n""#);
    let e = decode(escaped.as_bytes()).unwrap();
    assert_eq!(&*e.device_id, "d\"ev\\1é😀\n");
    let accented = EV.replace("dev-1", "dév-1");
    let e = decode(accented.as_bytes()).unwrap();
    assert_eq!(&*e.device_id, "dév-1");
    let spaced = " {\n \"eventId\" : \"e1\" , \"deviceId\":\"d\",\"deviceSequenceNumber\":0,\"type\":\"t\",\"value\":-0,\"createdAt\":\"2026-01-01T00:00:00Z\" } \r\n";
    assert_eq!(decode(spaced.as_bytes()).unwrap().value, 0.0);
}

#[test]
fn errors_are_classified_as_parse_or_schema() {
    assert!(parse(&EV[..40]));
    assert!(parse("not json"));
    assert!(parse(&format!("{EV} x")));
    assert!(parse(&EV.replace("1001.5", "01")));
    assert!(parse(&EV.replace("1001.5", "1.")));
    assert!(parse(&EV.replace("1001.5", "1e999")));
    assert!(
        parse(&EV.replace("true", "tru")),
        "complexData is validated"
    );
    assert!(
        parse(&EV.replace("\"e1\"", "\"e\u{1}1\"")),
        "control character"
    );
    assert!(parse(&EV.replace("\"e1\"", r#""e\x1""#)), "bad escape");
    assert!(
        parse(&EV.replace("\"e1\"", r#""\ud800""#)),
        "lone surrogate"
    );
    assert!(parse(&format!("{}{}", "[".repeat(200), "]".repeat(200))));
    assert!(decode(b"{\"eventId\":\"\xff\"}").is_err_and(|e| matches!(e, DecodeError::Parse(_))));
    // Valid JSON, not an event.
    assert!(schema(&EV.replace("\"deviceId\"", "\"deviceID\"")));
    assert!(schema(&EV.replace("1001.5", "\"high\"")));
    assert!(schema(&EV.replace(":3,", ":-3,")));
    assert!(schema(&EV.replace(":3,", ":3.5,")));
    assert!(schema(&EV.replace(":3,", ":18446744073709551616,")));
    assert!(schema(&EV.replace("2026-01-01T00:00:01.250Z", "yesterday")));
    assert!(schema(&EV.replace(
        r#"{"a":[1,{"deviceId":"no"}],"b":-0.5e-3,"c":true,"d":null}"#,
        "[1]"
    )));
    assert!(
        schema(&EV.replace("\"type\":\"CO2\"", "\"type\":\"CO2\",\"type\":\"X\"")),
        "duplicate field"
    );
    assert!(schema("[1,2]"));
    assert!(schema("42"));
    assert!(schema(&EV.replace("\"dev-1\"", "\"\"")));
    // A field error followed by broken JSON is a parse error.
    assert!(parse(&EV.replace("1001.5", "\"high\"")[..60]));
    assert!(
        decode(
            EV.replace(
                r#"{"a":[1,{"deviceId":"no"}],"b":-0.5e-3,"c":true,"d":null}"#,
                "null"
            )
            .as_bytes()
        )
        .is_ok()
    );
}

#[test]
fn the_router_finds_the_top_level_device_id_only() {
    assert_eq!(device_key(EV.as_bytes()).as_deref(), Some("dev-1"));
    let nested_first = r#"{"complexData":{"deviceId":"inner","x":"a\"}"},"deviceId" : "outer"}"#;
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
    assert_eq!(device_key(br#"{"x":"esc\"#), None);
}

/// What serde_json says about a message: not JSON, JSON but not an event, or an event.
fn reference(bytes: &[u8]) -> Result<(String, String, u64, String, f64, i64), &'static str> {
    let v: Value = serde_json::from_slice(bytes).map_err(|_| "parse")?;
    let o = v.as_object().ok_or("schema")?;
    let s = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or("schema")
    };
    let id = s("eventId")?;
    let dev = s("deviceId")?;
    let seq = o
        .get("deviceSequenceNumber")
        .and_then(Value::as_u64)
        .ok_or("schema")?;
    let kind = s("type")?;
    let value = o.get("value").and_then(Value::as_f64).ok_or("schema")?;
    let ts = parse_rfc3339_ms(&s("createdAt")?).ok_or("schema")?;
    if id.is_empty()
        || dev.is_empty()
        || !matches!(
            o.get("complexData"),
            None | Some(Value::Null | Value::Object(_))
        )
    {
        return Err("schema");
    }
    // serde_json keeps the last of duplicate keys; an event must not have them.
    let text = std::str::from_utf8(bytes).unwrap();
    for f in FIELDS {
        if text.matches(&format!("\"{f}\"")).count() > 1 {
            return Err("dup");
        }
    }
    Ok((id, dev, seq, kind, value, ts))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Any single-byte edit of a valid event is judged as serde_json judges it.
    #[test]
    fn decode_agrees_with_serde_json_on_edited_events(pos in 0usize..220, op in 0u8..3, byte in prop::sample::select(b"{}[]\",:0123456789.eE+-tfnul\\ aZ\x01\xc3".to_vec())) {
        // No field names inside complexData, so that the reference's duplicate check holds.
        let ev = EV.replace(r#"{"deviceId":"no"}"#, r#"{"k":"no"}"#);
        let mut b = ev.as_bytes().to_vec();
        let pos = pos % b.len();
        match op {
            0 => { b.remove(pos); }
            1 => b.insert(pos, byte),
            _ => b[pos] = byte,
        }
        let ours = decode(&b);
        match reference(&b) {
            Ok((id, dev, seq, kind, value, ts)) => {
                let e = ours.unwrap_or_else(|e| panic!("{e} for {}", String::from_utf8_lossy(&b)));
                prop_assert_eq!((&*e.event_id, &*e.device_id, e.seq, &*e.kind, e.value, e.ts), (&*id, &*dev, seq, &*kind, value, ts));
            }
            Err("parse") => prop_assert!(matches!(ours, Err(DecodeError::Parse(_))), "{:?} for {}", ours, String::from_utf8_lossy(&b)),
            Err(_) => prop_assert!(matches!(ours, Err(DecodeError::Schema(_))), "{:?} for {}", ours, String::from_utf8_lossy(&b)),
        }
    }
}
