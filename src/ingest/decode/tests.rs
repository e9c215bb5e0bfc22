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
    assert_eq!(
        device_key(EV.as_bytes(), "deviceId").as_deref(),
        Some("dev-1")
    );
    let nested_first = r#"{"complexData":{"deviceId":"inner","x":"a\"}"},"deviceId" : "outer"}"#;
    assert_eq!(
        device_key(nested_first.as_bytes(), "deviceId").as_deref(),
        Some("outer")
    );
    assert_eq!(
        device_key(br#"{"deviceId":"a\u0062c"}"#, "deviceId").as_deref(),
        Some("abc")
    );
    assert_eq!(device_key(br#"{"deviceId":7}"#, "deviceId"), None);
    assert_eq!(device_key(br#"{"x":1}"#, "deviceId"), None);
    assert_eq!(device_key(b"[1]", "deviceId"), None);
    assert_eq!(device_key(br#"{"x":"unterminated"#, "deviceId"), None);
    assert_eq!(device_key(br#"{"x":"esc\"#, "deviceId"), None);
    // The shortcut for the usual layout, and what it leaves to the general reader.
    let usual = r#"{"eventId":"e1","deviceId":"dév-1","type":"x"}"#;
    assert_eq!(usual_device_key(usual.as_bytes()), Some("dév-1"));
    for other in [
        &br#"{"eventId":"e\"1","deviceId":"d"}"#[..],
        br#"{"eventId":"e1","deviceId":"d\u0031"}"#,
        br#"{"eventId":"e1", "deviceId":"d"}"#,
        br#"{"eventId":7,"deviceId":"d"}"#,
        b"{\"eventId\":\"e1\",\"deviceId\":\"d\xff\"}",
        b"{\"eventId\":\"e\x011\",\"deviceId\":\"d\"}",
    ] {
        assert_eq!(
            usual_device_key(other),
            None,
            "{}",
            String::from_utf8_lossy(other)
        );
    }
    assert_eq!(
        device_key(br#"{"eventId":"e1","deviceId":"d\u0031"}"#, "deviceId").as_deref(),
        Some("d1")
    );
    assert_eq!(
        device_key(br#"{"eventId":"e\"1","deviceId":"d"}"#, "deviceId").as_deref(),
        Some("d")
    );
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
    for f in [
        "eventId",
        "deviceId",
        "deviceSequenceNumber",
        "type",
        "value",
        "createdAt",
    ] {
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
        if let Some(d) = usual_device_key(&b) {
            let general = any_device_key(&b, b"deviceId");
            prop_assert_eq!(Some(d), general.as_deref(), "router shortcut");
        }
        match reference(&b) {
            Ok((id, dev, seq, kind, value, ts)) => {
                let key = device_key(&b, "deviceId");
                prop_assert_eq!(key.as_deref(), Some(&*dev));
                let e = ours.unwrap_or_else(|e| panic!("{e} for {}", String::from_utf8_lossy(&b)));
                prop_assert_eq!((&*e.event_id, &*e.device_id, e.seq, &*e.kind, e.value, e.ts), (&*id, &*dev, seq, &*kind, value, ts));
            }
            Err("parse") => prop_assert!(matches!(ours, Err(DecodeError::Parse(_))), "{:?} for {}", ours, String::from_utf8_lossy(&b)),
            Err(_) => prop_assert!(matches!(ours, Err(DecodeError::Schema(_))), "{:?} for {}", ours, String::from_utf8_lossy(&b)),
        }
    }
}

/// The fast reader's answer for `b`, checked against the scalar decoder: whatever it
/// accepts, the scalar decoder accepts with the same fields. Returns whether it took `b`.
/// The reader is checked with and without its vector scans, which must agree.
fn fast_agrees(b: &[u8]) -> bool {
    fast_agrees_with(b, contract_fields())
}

fn fast_agrees_with(b: &[u8], fields: &Fields) -> bool {
    let (mut v1, mut v2) = ([f64::NAN; MAX_VALUES], [f64::NAN; MAX_VALUES]);
    let with = fast::Reader::default().event(b, fields, &mut v1);
    let without = fast::Reader::default().event_without_simd(b, fields, &mut v2);
    let taken = with.is_some();
    if fast::simd_available() {
        // Without the flat check objects are walked member by member: the same
        // messages are taken either way.
        assert_eq!(taken, without.is_some(), "{}", String::from_utf8_lossy(b));
    }
    for (fast, values) in [(with, &v1), (without, &v2)] {
        if let Some(fast) = fast {
            agrees_with_scalar_with(b, fast, values, fields);
        }
    }
    taken
}

/// `fast`, a fast path's event from `b`, is the scalar decoder's.
fn agrees_with_scalar(b: &[u8], fast: Event<'_>) {
    agrees_with_scalar_with(b, fast, &[0.0; MAX_VALUES], contract_fields())
}

/// The values of the members an event has, by member (as bits).
fn present_values(present: u16, values: &Values) -> Vec<(usize, u64)> {
    (0..MAX_VALUES)
        .filter(|i| present >> i & 1 != 0)
        .map(|i| (i, values[i].to_bits()))
        .collect()
}

fn agrees_with_scalar_with(b: &[u8], fast: Event<'_>, fast_values: &Values, fields: &Fields) {
    let mut slow_values = [f64::NAN; MAX_VALUES];
    let slow = decode_scalar_into(b, fields, &mut slow_values).unwrap_or_else(|e| {
        panic!(
            "fast path accepted what the scalar decoder rejects ({e}): {}",
            String::from_utf8_lossy(b)
        )
    });
    let fields = |e: &Event<'_>| {
        (
            e.event_id.to_string(),
            e.device_id.to_string(),
            e.seq,
            e.kind.to_string(),
            e.value.to_bits(),
            e.ts,
            e.present,
        )
    };
    assert_eq!(
        fields(&fast),
        fields(&slow),
        "{}",
        String::from_utf8_lossy(b)
    );
    assert_eq!(
        present_values(fast.present, fast_values),
        present_values(slow.present, &slow_values),
        "{}",
        String::from_utf8_lossy(b)
    );
    assert!(matches!(fast.device_id, Cow::Borrowed(_)));
}

fn simulated(n: usize, seed: u64) -> Vec<Vec<u8>> {
    eventide_simulator::Generator::new(eventide_simulator::SimConfig {
        devices: 50,
        seed,
        complex_fields: 20,
        layout: eventide_simulator::Layout::Compact,
        ..eventide_simulator::SimConfig::default()
    })
    .single_events(n)
}

#[test]
fn the_fast_path_takes_ordinary_events() {
    // The reader takes them all, one after another (its minute cache carried from
    // each to the next), as the scalar decoder reads them.
    let mut reader = fast::Reader::default();
    for ev in simulated(2_000, 5) {
        assert!(fast_agrees(&ev), "{}", String::from_utf8_lossy(&ev));
        let taken = reader.event(&ev, contract_fields(), &mut [0.0; MAX_VALUES]);
        assert!(taken.is_some(), "{}", String::from_utf8_lossy(&ev));
        agrees_with_scalar(&ev, taken.unwrap());
    }
    // Shapes the fast path takes besides the simulator's: spaces, any key order,
    // unknown keys, nested values, integers, negative numbers, non-ASCII, long strings
    // and messages whose strings and numbers cross 64-byte blocks.
    let long = "x".repeat(150);
    let cases = [
        EV.replace(r#""b":-0.5e-3,"#, ""),
        r#" { "createdAt" : "2026-01-01T00:00:00Z" , "value" : -12 , "type":"t", "deviceSequenceNumber" : 0, "deviceId":"d","eventId":"e", "x": [ ] , "y" : { } , "z" : [ 1 , [ 2 , { "a" : null } ] , "s" , false ] } "#.to_string(),
        EV.replace("dev-1", "dév-1 ✓").replace(r#""b":-0.5e-3,"#, ""),
        EV.replace("dev-1", &long).replace(r#""b":-0.5e-3,"#, r#""b":0.000001,"#),
        r#"{"eventId":"e","deviceId":"d","deviceSequenceNumber":18446744073709551,"type":"t","value":0.0,"createdAt":"2026-01-01T00:00:00.001Z","complexData":null}"#.to_string(),
    ];
    // A flat complexData before the other fields, with quotes (and braces, colons,
    // commas in strings) on both sides, and literals.
    let flat = r#"{"k":"a:b,c","n":-1.25,"s":"}{","t":"é✓","z":0}"#;
    let mut cases = cases.to_vec();
    for (i, ev) in simulated(8, 11).iter().enumerate() {
        let ev = std::str::from_utf8(ev).unwrap();
        let at = ev.find(r#","complexData":"#).unwrap();
        let (fields, complex) = (&ev[1..at], &ev[at + 1..ev.len() - 1]);
        let complex = if i % 2 == 0 {
            complex.to_string()
        } else {
            format!(r#""complexData":{flat}"#)
        };
        cases.push(format!(
            r#"{{{complex},"on":true,"off":null,{fields},"after":"x}}:,y"}}"#
        ));
    }
    for c in &cases {
        assert!(fast_agrees(c.as_bytes()), "{c}");
        // Shifted by 1..64 leading spaces, every token meets every block boundary.
        for pad in 1..64 {
            let shifted = format!("{}{c}", " ".repeat(pad));
            assert!(fast_agrees(shifted.as_bytes()), "{shifted}");
        }
    }
}

fn takes_bytes(b: &[u8]) -> bool {
    fast::Reader::default()
        .event(b, contract_fields(), &mut [0.0; MAX_VALUES])
        .is_some()
}

#[test]
fn the_fast_path_leaves_the_unusual_to_the_scalar_decoder() {
    let takes = |s: &str| fast_agrees(s.as_bytes());
    let base = EV.replace(r#""b":-0.5e-3,"#, "");
    assert!(!takes(&base.replace("dev-1", r#"dev\"1"#)), "escape");
    assert!(
        !takes(&base.replace("dev-1", "dev\t1")),
        "control character"
    );
    assert!(takes(&base.replace(":3,", ":\t3,")), "tab as whitespace");
    assert!(!takes(&base.replace("1001.5", "1e3")), "exponent");
    assert!(
        !takes(&base.replace(":3,", ":3.0,")),
        "non-integer sequence"
    );
    assert!(!takes(&base.replace(":3,", ":-3,")), "negative sequence");
    assert!(
        !takes(&base.replace(":3,", ":99999999999999999999,")),
        "20 digits"
    );
    assert!(!takes(&base.replace("1001.5", "01")), "leading zero");
    assert!(!takes(&base.replace("1001.5", "1.")), "no fraction digits");
    assert!(!takes(&base.replace("true", "tru")), "bad literal");
    assert!(!takes(&base.replace("\"e1\"", "\"\"")), "empty eventId");
    assert!(!takes(&format!("{base}x")), "trailing characters");
    assert!(
        !takes(&base.replace("\"type\":\"CO2\",", "")),
        "missing field"
    );
    assert!(
        !takes(&base.replace(r#""type":"CO2""#, r#""type":"CO2","type":"x""#)),
        "duplicate"
    );
    assert!(
        !takes(
            &base
                .replace("{\"a\"", "[{\"a\"")
                .replace("null}}", "null}]}")
        ),
        "complexData array"
    );
    // Grammar the structural walk must refuse (the scalar decoder says why).
    for (bad, what) in [
        (r#""c":true,"#, r#""c"x:true,"#),
        (r#""c":true,"#, r#""c" "x":true,"#),
        (r#""c":true,"#, r#""c"true,"#),
        (r#""c":true,"#, r#""c"::true,"#),
        (r#""c":true,"#, r#""c":true,,"#),
        (r#""c":true,"#, r#""c":true 1,"#),
        (r#""c":true,"#, r#""c":"x" "y","#),
        (r#""c":true,"#, r#""c":"x"1,"#),
        (r#""c":true,"#, r#""c":,"#),
        (r#""c":true,"#, r#"1:true,"#),
        (r#""c":true,"#, r#""c":[1 2],"#),
        (r#""c":true,"#, r#""c":[1,],"#),
        (r#""c":true,"#, r#""c":[,1],"#),
        (r#""c":true,"#, r#""c":{,},"#),
        (r#""c":true,"#, r#""c":{"x"},"#),
        (r#""c":true,"#, r#""c":{"x":1,},"#),
        (r#""c":true,"#, r#""c":[1},"#),
        (r#""c":true,"#, r#""c":{"x":1],"#),
        (r#""c":true,"#, r#""c":truex,"#),
        (r#""c":true,"#, r#""c":@,"#),
        (r#""type":"CO2","#, r#""type":"CO2"x,"#),
        (r#""type":"CO2","#, r#""type" "CO2","#),
        (r#""value":1001.5,"#, r#""value":1001.5 2,"#),
        (r#""value":1001.5,"#, r#""value":"1001.5","#),
    ] {
        let edited = base.replace(bad, what);
        assert_ne!(edited, base, "{what}");
        assert!(!takes(&edited), "{what}");
        assert!(decode(edited.as_bytes()).is_err(), "{what}");
    }
    assert!(!takes(&format!("{base}}}")), "a second closing brace");
    assert!(!takes(&format!("{base} 1")), "a token after the object");
    assert!(!takes(&format!("{base}\"\"")), "a string after the object");
    assert!(!takes(&base[..base.len() - 1]), "unclosed object");
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    assert!(!takes(&base.replace("true", &deep)), "deep nesting");
    let mut invalid = base.clone().into_bytes();
    let at = invalid.iter().position(|&c| c == b'v').unwrap();
    invalid[at] = 0xff;
    assert!(!takes_bytes(&invalid), "invalid UTF-8");
    // The same inside a flat complexData, which stage 1 leaves to the flat check.
    let flat = EV.replace(
        r#"{"a":[1,{"deviceId":"no"}],"b":-0.5e-3,"c":true,"d":null}"#,
        r#"{"a":1,"b":"xyz","c":2}"#,
    );
    assert!(takes(&flat));
    assert!(
        !takes(&flat.replace("xyz", r#"x\"z"#)),
        "escape in complexData"
    );
    assert!(
        !takes(&flat.replace("xyz", r#"x\\z"#)),
        "escape in complexData"
    );
    assert!(
        !takes(&flat.replace("xyz", r#"x\u0041z"#)),
        "escape in complexData"
    );
    let control = flat.replace("xyz", "x\u{1}z");
    assert!(!takes(&control), "control character in complexData");
    assert!(parse(&control));
    let mut invalid = flat.clone().into_bytes();
    let at = invalid.windows(3).position(|w| w == b"xyz").unwrap();
    invalid[at + 1] = 0xc3;
    assert!(!takes_bytes(&invalid), "invalid UTF-8 in complexData");
    invalid[at + 2] = 0xa9;
    assert!(fast_agrees(&invalid), "valid UTF-8 in complexData");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Up to four byte edits of a simulated event: whatever the fast path accepts, the
    /// scalar decoder accepts with the same fields.
    #[test]
    fn the_fast_path_agrees_with_the_scalar_decoder_on_edited_events(
        seed in 0u64..1000,
        edits in prop::collection::vec((0usize..1000, 0u8..3, prop::sample::select(b"{}[]\",:0123456789.eE+- tfnul\\aZ\x01\xc3\xa9".to_vec())), 1..5),
    ) {
        let mut b = simulated(1, seed).pop().unwrap();
        for (pos, op, byte) in edits {
            let pos = pos % b.len();
            match op {
                0 => { b.remove(pos); }
                1 => b.insert(pos, byte),
                _ => b[pos] = byte,
            }
        }
        fast_agrees(&b);
    }
}

#[test]
fn field_names_inside_complex_data_are_not_the_events_fields() {
    let inner = r#"{"eventId":"in","deviceId":"in","deviceSequenceNumber":9,"type":"in","value":9.5,"createdAt":"2026-01-01T00:00:09Z"}"#;
    let with_inner = EV.replace(
        r#"{"a":[1,{"deviceId":"no"}],"b":-0.5e-3,"c":true,"d":null}"#,
        inner,
    );
    assert_ne!(with_inner, EV);
    let e = decode(with_inner.as_bytes()).unwrap();
    assert_eq!(
        (&*e.event_id, &*e.device_id, e.seq, &*e.kind, e.value),
        ("e1", "dev-1", 3, "CO2", 1001.5)
    );
    for field in [
        r#""value":1001.5,"#,
        r#""deviceId":"dev-1","#,
        r#""deviceSequenceNumber":3,"#,
    ] {
        let missing = with_inner.replace(field, "");
        assert_ne!(missing, with_inner);
        assert!(schema(&missing), "{missing}");
    }
    // Only the inner object has it.
    let value_inside = EV.replace(r#""value":1001.5,"#, "").replace(
        r#"{"a":[1,{"deviceId":"no"}],"b":-0.5e-3,"c":true,"d":null}"#,
        r#"{"x":1,"value":9.5}"#,
    );
    assert!(schema(&value_inside), "{value_inside}");
}

/// The member names of the property tests below: the contract's, a multi-metric
/// payload with epoch-ms time and no event id, and single values with epoch seconds
/// and no sequence numbers.
fn mappings() -> [Fields; 3] {
    [
        Fields::default(),
        Fields::new(
            None,
            "device_id",
            Some("seq"),
            None,
            &["temperature", "humidity"],
            "ts",
            TimeFormat::EpochMs,
        )
        .unwrap(),
        Fields::new(
            Some("id"),
            "dev",
            None,
            Some("kind"),
            &["reading"],
            "time",
            TimeFormat::EpochS,
        )
        .unwrap(),
    ]
}

/// The top-level keys of a JSON object, in order, repeats included (serde_json's
/// `Value` keeps only the last of repeated keys).
struct Keys(Vec<String>);

impl<'de> serde::Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// What an event reads as, field by field (values as bits, so that -0 and 0 differ).
type Read = (String, String, u64, String, u64, i64, Vec<(usize, u64)>);

fn read_of(e: &Event<'_>, values: &Values) -> Read {
    (
        e.event_id.to_string(),
        e.device_id.to_string(),
        e.seq,
        e.kind.to_string(),
        e.value.to_bits(),
        e.ts,
        present_values(e.present, values),
    )
}

/// What serde_json says about a message under `f`: "parse", "schema", or the event.
fn reference_with(bytes: &[u8], f: &Fields) -> Result<Read, &'static str> {
    let v: Value = serde_json::from_slice(bytes).map_err(|_| "parse")?;
    let o = v.as_object().ok_or("schema")?;
    let keys = serde_json::from_slice::<Keys>(bytes)
        .map_err(|_| "schema")?
        .0;
    let named: Vec<&str> = [
        f.event_id.as_deref(),
        Some(&*f.device_id),
        f.sequence.as_deref(),
        f.kind.as_deref(),
        Some(&*f.time),
    ]
    .into_iter()
    .flatten()
    .chain(f.values.iter().map(|v| &**v))
    .collect();
    for n in &named {
        if keys.iter().filter(|k| k == n).count() > 1 {
            return Err("schema");
        }
    }
    let text = |k: &str| o.get(k).and_then(Value::as_str).ok_or("schema");
    let event_id = match &f.event_id {
        Some(k) => text(k).and_then(|s| if s.is_empty() { Err("schema") } else { Ok(s) })?,
        None => "",
    };
    let device = text(&f.device_id)?;
    if device.is_empty() {
        return Err("schema");
    }
    let seq = match &f.sequence {
        Some(k) => o.get(&**k).and_then(Value::as_u64).ok_or("schema")?,
        None => 0,
    };
    let kind = match &f.kind {
        Some(k) => text(k)?,
        None => "",
    };
    let (mut value, mut present, mut values) = (0.0f64, 0u16, [0.0f64; MAX_VALUES]);
    if f.multi() {
        for (i, k) in f.values.iter().enumerate() {
            match o.get(&**k) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => {
                    values[i] = n.as_f64().unwrap();
                    present |= 1 << i;
                }
                Some(_) => return Err("schema"),
            }
        }
        if present == 0 {
            return Err("schema");
        }
    } else {
        value = o
            .get(&*f.values[0])
            .and_then(Value::as_f64)
            .ok_or("schema")?;
    }
    let ts = match (f.time_format, o.get(&*f.time)) {
        (TimeFormat::Rfc3339, Some(Value::String(s))) => parse_rfc3339_ms(s),
        (TimeFormat::Rfc3339, _) | (_, None) => None,
        (format, Some(Value::String(s))) => epoch_ms(s, format),
        (format, Some(Value::Number(n))) => epoch_ms(&n.to_string(), format),
        _ => None,
    }
    .ok_or("schema")?;
    if !matches!(
        o.get("complexData"),
        None | Some(Value::Null | Value::Object(_))
    ) {
        return Err("schema");
    }
    Ok((
        event_id.into(),
        device.into(),
        seq,
        kind.into(),
        value.to_bits(),
        ts,
        present_values(present, &values),
    ))
}

/// Whitespace between tokens: mostly none or one space, sometimes more, newlines, tabs.
fn gap() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "", "", "", " ", " ", "  ", "\n", "\n    ", "\t", "\r\n",
    ])
}

/// Any JSON value (some invalid: a leading zero, a lone minus), nested a few deep.
fn any_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => "-?(0|[1-9][0-9]{0,17})(\\.[0-9]{1,17})?",
        1 => "-?[0-9]{1,3}(\\.[0-9]{1,3})?[eE][+-]?[0-9]{1,2}",
        3 => "\"[a-zA-Z0-9 :,{}\\[\\]/?#é✓-]{0,12}\"",
        1 => Just(r#""a\"b\\c\u00e9\n""#.to_string()),
        1 => prop::sample::select(vec!["true", "false", "null"]).prop_map(String::from),
        1 => prop::sample::select(vec!["01", "-", "1.", "tru", "\"\u{1}\""]).prop_map(String::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec((inner.clone(), gap(), gap()), 0..6).prop_map(|v| {
                let items: Vec<String> = v
                    .into_iter()
                    .map(|(x, a, b)| format!("{a}{x}{b}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec(("[a-zA-Z0-9 ]{0,8}", inner, gap(), gap()), 0..6).prop_map(|v| {
                let items: Vec<String> = v
                    .into_iter()
                    .map(|(k, x, a, b)| format!("\"{k}\"{a}:{b}{x}"))
                    .collect();
                format!("{{{}}}", items.join(","))
            }),
        ]
    })
}

/// A `complexData`: usually flat numbers (compact or spaced), sometimes nested or null,
/// rarely not an object.
fn complex_data() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (prop::collection::vec("-?[0-9]{1,2}\\.[0-9]{1,15}", 0..25), prop::sample::select(vec![(",", ":"), (", ", ": ")]))
            .prop_map(|(vs, (comma, colon))| {
                let m: Vec<String> = vs.iter().enumerate().map(|(i, v)| format!("\"moreData{i}\"{colon}{v}")).collect();
                format!("{{{}}}", m.join(comma))
            }),
        2 => any_value().prop_filter("an object", |v| v.starts_with('{')),
        1 => Just("null".to_string()),
        1 => any_value(),
    ]
}

/// A role's value: usually valid, sometimes of another type or out of range.
fn role_value(role: Role, fields: &Fields, i: u64) -> String {
    let good = match role {
        Role::EventId => format!("\"e-{i}\""),
        Role::DeviceId => {
            ["\"contoso://device-id-7\"", "\"dev/é #?\\\\x\"", "\"d\""][i as usize % 3].into()
        }
        Role::Sequence => (i * 7919 % 100_000).to_string(),
        Role::Type => ["\"CO2\"", "\"TEMP\""][i as usize % 2].into(),
        Role::Value(_) => {
            ["1001.5", "-0.25", "42", "57.739726013343247", "null"][i as usize % 5].into()
        }
        Role::Time => match fields.time_format {
            TimeFormat::Rfc3339 => [
                "\"2026-01-01T00:00:01.250Z\"",
                "\"2019-05-16T17:16:40.000003Z\"",
                "\"2026-01-01T01:00:00+01:00\"",
            ][i as usize % 3]
                .into(),
            TimeFormat::EpochMs => {
                ["1767225600123", "\"1767225600123\"", "1767225600123.7"][i as usize % 3].into()
            }
            TimeFormat::EpochS => {
                ["1767225600", "\"1767225600.5\"", "1767225600.123456"][i as usize % 3].into()
            }
        },
        Role::ComplexData | Role::Other => "1".into(),
    };
    // One in eight: a value of some other type, or empty.
    match i % 8 {
        0 => ["\"\"", "true", "[1]", "{}", "-1", "1e2", "\"x\""][(i / 8) as usize % 7].into(),
        _ => good,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Events in any member order, with whitespace anywhere, extra members anywhere
    /// and complexData of any shape, under each mapping: read exactly as serde_json
    /// reads the same bytes, or refused for the same reason; and the fast reader takes
    /// every valid one without escapes, exponents or tabs in what it reads.
    #[test]
    fn any_layout_decodes_as_serde_json_reads_it(
        mapping in 0usize..3,
        picks in prop::collection::vec(0u64..1000, 8),
        drop_one in prop::option::weighted(0.1, 0usize..8),
        extras in prop::collection::vec(("[a-zA-Z]{1,10}", any_value()), 0..3),
        complex in prop::option::weighted(0.8, complex_data()),
        gaps in prop::collection::vec(gap(), 64),
        order in Just((0usize..16).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let fields = &mappings()[mapping];
        let mut members: Vec<(String, String)> = Vec::new();
        let roles: Vec<(String, Role)> = [
            fields.event_id.as_deref().map(|n| (n, Role::EventId)),
            Some((&*fields.device_id, Role::DeviceId)),
            fields.sequence.as_deref().map(|n| (n, Role::Sequence)),
            fields.kind.as_deref().map(|n| (n, Role::Type)),
            Some((&*fields.time, Role::Time)),
        ]
        .into_iter()
        .flatten()
        .chain(fields.values.iter().enumerate().map(|(i, v)| (&**v, Role::Value(i as u8))))
        .map(|(n, r)| (n.to_string(), r))
        .collect();
        for (k, (name, role)) in roles.iter().enumerate() {
            if drop_one == Some(k) {
                continue;
            }
            members.push((name.clone(), role_value(*role, fields, picks[k % picks.len()])));
        }
        members.extend(extras);
        if let Some(c) = complex {
            members.push(("complexData".into(), c));
        }
        let mut ordered: Vec<&(String, String)> = order.iter().filter_map(|&i| members.get(i)).collect();
        ordered.extend(members.iter().skip(16));
        let mut g = gaps.iter().cycle();
        let body: Vec<String> = ordered
            .iter()
            .map(|(k, v)| format!("{}\"{k}\"{}:{}{v}{}", g.next().unwrap(), g.next().unwrap(), g.next().unwrap(), g.next().unwrap()))
            .collect();
        let text = format!("{}{{{}}}{}", g.next().unwrap(), body.join(","), g.next().unwrap());
        let b = text.as_bytes();
        let mut decoder = Decoder::new(std::sync::Arc::new(fields.clone()));
        let mut values = [f64::NAN; MAX_VALUES];
        let ours = decoder.decode_into(b, &mut values);
        match reference_with(b, fields) {
            Ok(want) => {
                let e = ours.unwrap_or_else(|e| panic!("{e} for {text}"));
                prop_assert_eq!(read_of(&e, &values), want, "{}", text);
                let key = device_key(b, &fields.device_id);
                prop_assert_eq!(key.as_deref(), Some(&*e.device_id), "{}", text);
                // Escapes and exponents are the scalar decoder's; nothing else is.
                let exponent = b.windows(2).any(|w| w[0].is_ascii_digit() && matches!(w[1], b'e' | b'E'));
                if !text.contains('\\') && !exponent {
                    prop_assert!(fast_agrees_with(b, fields), "fast reader refused {}", text);
                }
            }
            Err("parse") => prop_assert!(matches!(ours, Err(DecodeError::Parse(_))), "{:?} for {}", ours, text),
            Err(_) => prop_assert!(matches!(ours, Err(DecodeError::Schema(_))), "{:?} for {}", ours, text),
        }
        // Whatever the reader takes, the scalar decoder takes with the same fields.
        fast_agrees_with(b, fields);
    }
}

/// The seeds' layout, Python's spacing, pretty-printing and a shuffled order are all
/// read by the fast reader (not handed to the scalar decoder).
#[test]
fn the_fast_reader_takes_every_common_layout() {
    use eventide_simulator::{Generator, IdStyle, Layout, SimConfig};
    if !fast::simd_available() {
        return;
    }
    for layout in [
        Layout::Sas,
        Layout::Compact,
        Layout::Pretty,
        Layout::Shuffled,
    ] {
        for id_style in [IdStyle::Sas, IdStyle::Plain] {
            let events = Generator::new(SimConfig {
                layout,
                id_style,
                ..SimConfig::default()
            })
            .single_events(300);
            for ev in &events {
                assert!(
                    fast_agrees(ev),
                    "{layout:?}: {}",
                    String::from_utf8_lossy(ev)
                );
            }
        }
    }
    // Pretty-printed over several lines (a Kafka message or an HTTP body), as
    // json.dumps(indent=2) and JSON.stringify(…, null, 2) write it.
    let pretty = "{\n  \"eventId\": \"b81d241f-5187-40b0-ab2a-940faf9757c0\",\n  \"complexData\": {\n    \"moreData0\": 57.739726013343247,\n    \"moreData1\": 52.230732688620829\n  },\n  \"value\": 49.02278128887753,\n  \"deviceId\": \"contoso://device-id-154\",\n  \"deviceSequenceNumber\": 0,\n  \"type\": \"CO2\",\n  \"createdAt\": \"2019-05-16T17:16:40.000003Z\"\n}\n";
    assert!(fast_agrees(pretty.as_bytes()), "{pretty}");
    let e = decode(pretty.as_bytes()).unwrap();
    assert_eq!(
        (&*e.device_id, e.value),
        ("contoso://device-id-154", 49.02278128887753)
    );
    assert_eq!(e.ts, parse_rfc3339_ms("2019-05-16T17:16:40.000Z").unwrap());
}

/// Mapped names, epoch times and value lists: read as the mapping says, with errors
/// that name the input's members.
#[test]
fn mapped_fields_are_read_by_their_names() {
    let [_, multi, single] = mappings();
    let mut d = Decoder::new(std::sync::Arc::new(multi));
    let b = br#"{"device_id":"boiler/7","ts":1767225600123,"seq":4,"temperature":21.5,"humidity":null,"eventId":"ignored"}"#;
    let e = d.decode(b).unwrap();
    let (device, ts, seq, present) = (e.device_id.to_string(), e.ts, e.seq, e.present);
    assert_eq!(
        (&*device, ts, seq, present, d.values()[0]),
        ("boiler/7", 1_767_225_600_123, 4, 0b01, 21.5)
    );
    assert_eq!((&*e.event_id, &*e.kind), ("", ""));
    let e = d.decode(br#"{"humidity": 40, "ts": "1767225600000", "device_id": "b", "seq": 0, "temperature": -3}"#).unwrap();
    let present = e.present;
    assert_eq!((present, d.values()[0], d.values()[1]), (0b11, -3.0, 40.0));
    let err = |d: &mut Decoder, b: &[u8]| d.decode(b).unwrap_err().to_string();
    assert_eq!(
        err(&mut d, br#"{"device_id":"b","ts":1,"seq":0}"#),
        "none of the value members is present: temperature, humidity"
    );
    assert_eq!(
        err(&mut d, br#"{"device_id":"b","ts":1,"temperature":1}"#),
        "missing field `seq`"
    );
    assert!(
        err(
            &mut d,
            br#"{"device_id":"b","ts":"soon","seq":0,"temperature":1}"#
        )
        .starts_with("ts is not a time in milliseconds")
    );
    assert_eq!(
        err(
            &mut d,
            br#"{"device_id":"b","ts":1,"seq":0,"temperature":"hot"}"#
        ),
        "invalid type: a string, expected a number for `temperature`"
    );
    let mut d = Decoder::new(std::sync::Arc::new(single));
    let e = d
        .decode(br#"{"id":"x","dev":"d","kind":"TEMP","reading":1.5,"time":1767225600.25}"#)
        .unwrap();
    assert_eq!(
        (&*e.event_id, &*e.kind, e.value, e.ts, e.present),
        ("x", "TEMP", 1.5, 1_767_225_600_250, 0)
    );
    assert_eq!(
        err(&mut d, br#"{"id":"x","dev":"d","kind":"TEMP","time":1}"#),
        "missing field `reading`"
    );
    assert_eq!(
        err(
            &mut d,
            br#"{"id":"x","dev":"d","kind":"TEMP","reading":1,"time":1,"time":2}"#
        ),
        "duplicate field `time`"
    );
}

/// The fast reader reads each member from a 64-byte window: keys, strings, numbers
/// and whitespace runs that end just inside it, at its edge or past it, members in the
/// last bytes of a message, messages shorter than a window, and mapped names of 32
/// bytes (the longest compared as words) and longer, are all read as the scalar
/// decoder reads them, and taken when they are plain.
#[test]
fn members_across_the_readers_window_are_read_alike() {
    let long_name = "n".repeat(33);
    let word_name = "w".repeat(32);
    let mapped = Fields::new(
        None,
        &word_name,
        None,
        None,
        &[&long_name, "v"],
        "t",
        TimeFormat::EpochMs,
    )
    .unwrap();
    let mut checked = 0;
    for len in (0..8).chain(26..40).chain(56..72) {
        let text = "s".repeat(len);
        let key = "k".repeat(len.max(1));
        let digits = format!("1{}", "0".repeat(len.min(58)));
        let blank = " ".repeat(len);
        for (i, message) in [
            // A long string in front, then the rest.
            format!(r#"{{"x":"{text}","deviceId":"d","eventId":"e","deviceSequenceNumber":1,"type":"T","value":2.5,"createdAt":"2026-01-01T00:00:01.250Z"}}"#),
            // An unknown key of any length, a number of any length.
            format!(r#"{{"{key}":{digits},"value":2.5,"deviceId":"d","eventId":"e","deviceSequenceNumber":1,"type":"T","createdAt":"2026-01-01T00:00:01.250Z"}}"#),
            // Whitespace before a value, and a string at the very end.
            format!(r#"{{"value":{blank}2.5,"deviceId":{blank}"d","eventId":"e","deviceSequenceNumber":1,"type":"T","createdAt":"2026-01-01T00:00:01.250Z","x":"{text}"}}"#),
            // A number last.
            format!(r#"{{"deviceId":"{text}d","eventId":"e","deviceSequenceNumber":1,"type":"T","createdAt":"2026-01-01T00:00:01.250Z","value":{digits}}}"#),
        ]
        .into_iter()
        .enumerate()
        {
            let taken = fast_agrees(message.as_bytes());
            assert!(
                taken || (i == 1 && len > 59) || !fast::simd_available(),
                "{message}"
            );
            // Cut short anywhere: refused by both (and never read past the end).
            for cut in [1, 2, 5, 30, 63, 64, 65].into_iter().filter(|&c| c < message.len()) {
                fast_agrees(&message.as_bytes()[..message.len() - cut]);
            }
            checked += 1;
        }
        // Short messages and mapped names compared as words or not.
        for message in [
            format!(r#"{{"{word_name}":"{text}d","t":1,"v":1}}"#),
            format!(r#"{{"v":1,"t":1,"{long_name}":{digits},"{word_name}":"d"}}"#),
            format!(r#"{{"{word_name}":"d","t":1,"{long_name}":null,"v":{digits}}}"#),
        ] {
            assert!(
                fast_agrees_with(message.as_bytes(), &mapped) || !fast::simd_available(),
                "{message}"
            );
            for cut in 1..message.len().min(70) {
                fast_agrees_with(&message.as_bytes()[..message.len() - cut], &mapped);
            }
        }
    }
    assert!(checked > 100);
    // A message shorter than a window, in full and cut.
    let short = r#"{"deviceId":"d","eventId":"e","deviceSequenceNumber":1,"type":"T","value":2,"createdAt":"2026-01-01T00:00:01Z"}"#;
    assert!(fast_agrees(short.as_bytes()) || !fast::simd_available());
    let tiny = Fields::new(None, "d", None, None, &["v"], "t", TimeFormat::EpochMs).unwrap();
    assert!(fast_agrees_with(br#"{"d":"x","v":1,"t":5}"#, &tiny) || !fast::simd_available());
    for cut in 1..20 {
        fast_agrees_with(&br#"{"d":"x","v":1,"t":5}"#[..21 - cut], &tiny);
    }
}
