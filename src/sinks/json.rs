//! Window records as JSON, written straight from the Arrow columns.

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt64Type};

use crate::event::{col, push_rfc3339_ms};
use crate::ingest::decode::string_stop;

/// Appends row `row` of a closed-window batch as the contract's window record:
/// `id`, `window`, `deviceId`, `type`, `windowStart`, `windowEnd`, `count`, `sum`,
/// `avg`, `min`, `max`. The id is `{window}|{deviceId}|{type}|{windowStart}`.
pub fn window_record(batch: &RecordBatch, row: usize, out: &mut Vec<u8>) {
    let text = |c: usize| batch.column(c).as_string::<i32>().value(row);
    let ts = |c: usize| {
        batch
            .column(c)
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
    };
    let f = |c: usize| batch.column(c).as_primitive::<Float64Type>().value(row);
    let (window, device, kind) = (text(col::WINDOW), text(col::DEVICE_ID), text(col::TYPE));
    let (start, end) = (ts(col::WINDOW_START), ts(col::WINDOW_END));

    out.extend_from_slice(b"{\"id\":\"");
    escape_into(window, out);
    out.push(b'|');
    escape_into(device, out);
    out.push(b'|');
    escape_into(kind, out);
    out.push(b'|');
    let start_at = out.len();
    push_rfc3339_ms(out, start);
    let start_text = start_at..out.len();
    out.extend_from_slice(b"\",\"window\":\"");
    escape_into(window, out);
    out.extend_from_slice(b"\",\"deviceId\":\"");
    escape_into(device, out);
    out.extend_from_slice(b"\",\"type\":\"");
    escape_into(kind, out);
    out.extend_from_slice(b"\",\"windowStart\":\"");
    out.extend_from_within(start_text);
    out.extend_from_slice(b"\",\"windowEnd\":\"");
    push_rfc3339_ms(out, end);
    out.extend_from_slice(b"\",\"count\":");
    let count = batch
        .column(col::COUNT)
        .as_primitive::<UInt64Type>()
        .value(row);
    out.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    for (name, c) in [
        ("sum", col::SUM),
        ("avg", col::AVG),
        ("min", col::MIN),
        ("max", col::MAX),
    ] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        number_into(f(c), out);
    }
    out.push(b'}');
}

/// A JSON number; non-finite values (a sum that overflowed) become `null`.
pub fn number_into(v: f64, out: &mut Vec<u8>) {
    if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `s` as the inside of a JSON string. Runs with nothing to escape (usually
/// all of it) are found eight bytes at a time and copied whole.
pub fn escape_into(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some((i, _)) = string_stop(b, from) {
        out.extend_from_slice(&b[from..i]);
        let esc: &[u8] = match b[i] {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 15) as usize]);
                from = i + 1;
                continue;
            }
        };
        out.extend_from_slice(esc);
        from = i + 1;
    }
    out.extend_from_slice(&b[from..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_through_a_json_parser() {
        let every_byte: String = (0u8..0x80).map(char::from).collect();
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "\u{1}ctl",
            "ünï",
            "a longer plain name, past eight bytes",
            "\"\\\n\r\t\u{0}\u{1f}",
            "ends in a quote after eight bytes\"",
            "mixed: é \" ✓ \\ \u{7f} \u{1b}[0m",
            "",
            &every_byte,
        ] {
            let mut out = b"\"".to_vec();
            escape_into(s, &mut out);
            out.push(b'"');
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }

    /// Numbers are written as serde_json writes them (the other sinks' serializer):
    /// sums, averages and the values around them, random bit patterns, and the edges.
    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        let mut rng = eventide_simulator::Rng::new(11);
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            0.1,
            1e15,
            1e16,
            1e21,
            1e22,
            1.5e-7,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
        ];
        for _ in 0..50_000 {
            values.push(f64::from_bits(rng.next_u64()));
            let readings = (rng.below(50) + 1) as f64;
            values.push((rng.below(1_000_000) as f64 / 100.0) * readings / 7.0);
        }
        for v in values {
            let mut out = Vec::new();
            number_into(v, &mut out);
            let expected = if v.is_finite() {
                serde_json::to_string(&v).unwrap()
            } else {
                "null".to_owned()
            };
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{v:e}");
        }
    }
}
