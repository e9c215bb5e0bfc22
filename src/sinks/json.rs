//! Window records as JSON, written straight from the Arrow columns.

use std::ops::Range;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt64Type};
use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};

use crate::event::{col, rfc3339_ms_bytes};
use crate::ingest::decode::string_stop;

/// The rows of a closed-window batch as the contract's window records: `id`,
/// `window`, `deviceId`, `type`, `windowStart`, `windowEnd`, `count`, `sum`, `avg`,
/// `min`, `max`. The id is `{window}|{deviceId}|{type}|{windowStart}`.
///
/// The columns are looked up once per batch; each text is escaped once per record
/// (the id repeats it), and a time is formatted once for the records that share it
/// (windows that close together start and end together).
pub struct WindowRecords<'a> {
    window: &'a StringArray,
    device: &'a StringArray,
    kind: &'a StringArray,
    start: &'a TimestampMillisecondArray,
    end: &'a TimestampMillisecondArray,
    count: &'a UInt64Array,
    numbers: [(&'static str, &'a Float64Array); 4],
    /// The last window start and end written, as text.
    times: [Option<(i64, [u8; 24])>; 2],
}

impl<'a> WindowRecords<'a> {
    pub fn new(batch: &'a RecordBatch) -> Self {
        let text = |c: usize| batch.column(c).as_string::<i32>();
        let ts = |c: usize| batch.column(c).as_primitive::<TimestampMillisecondType>();
        let f = |c: usize| batch.column(c).as_primitive::<Float64Type>();
        WindowRecords {
            window: text(col::WINDOW),
            device: text(col::DEVICE_ID),
            kind: text(col::TYPE),
            start: ts(col::WINDOW_START),
            end: ts(col::WINDOW_END),
            count: batch.column(col::COUNT).as_primitive::<UInt64Type>(),
            numbers: [
                ("sum", f(col::SUM)),
                ("avg", f(col::AVG)),
                ("min", f(col::MIN)),
                ("max", f(col::MAX)),
            ],
            times: [None, None],
        }
    }

    /// Appends row `row`'s record.
    pub fn write(&mut self, row: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":\"");
        let window = escaped(self.window.value(row), out);
        out.push(b'|');
        let device = escaped(self.device.value(row), out);
        out.push(b'|');
        let kind = escaped(self.kind.value(row), out);
        out.push(b'|');
        let start = self.time(0, self.start.value(row));
        out.extend_from_slice(&start);
        out.extend_from_slice(b"\",\"window\":\"");
        out.extend_from_within(window);
        out.extend_from_slice(b"\",\"deviceId\":\"");
        out.extend_from_within(device);
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_within(kind);
        out.extend_from_slice(b"\",\"windowStart\":\"");
        out.extend_from_slice(&start);
        out.extend_from_slice(b"\",\"windowEnd\":\"");
        out.extend_from_slice(&self.time(1, self.end.value(row)));
        out.extend_from_slice(b"\",\"count\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.count.value(row)).as_bytes());
        for (name, column) in self.numbers {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            number_into(column.value(row), out);
        }
        out.push(b'}');
    }

    /// `ms` as text, in cache `k` (0: starts, 1: ends).
    fn time(&mut self, k: usize, ms: i64) -> [u8; 24] {
        match self.times[k] {
            Some((cached, text)) if cached == ms => text,
            _ => {
                let text = rfc3339_ms_bytes(ms);
                self.times[k] = Some((ms, text));
                text
            }
        }
    }
}

/// Appends `s` escaped (see [`escape_into`]); where in `out` it went.
fn escaped(s: &str, out: &mut Vec<u8>) -> Range<usize> {
    let at = out.len();
    escape_into(s, out);
    at..out.len()
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
    use std::sync::Arc;

    use super::*;

    /// Each record holds its own row's fields, whichever rows share a start, an end or
    /// a text, and texts that need escaping are escaped in the id and the fields.
    #[test]
    fn window_records_hold_their_rows() {
        type Row = (
            &'static str,
            &'static str,
            &'static str,
            i64,
            i64,
            u64,
            [f64; 4],
        );
        let rows: [Row; 4] = [
            ("w", "dev-1", "CO2", 0, 60_000, 2, [3.0, 1.5, 1.0, 2.0]),
            ("w", "dev-\"2\"", "CO2", 0, 60_000, 1, [0.1, 0.1, 0.1, 0.1]),
            (
                "w",
                "dev-1",
                "TEMP",
                60_000,
                120_000,
                3,
                [-1e300, -3e299, -1e300, 0.0],
            ),
            (
                "sliding",
                "dev-1",
                "TEMP",
                0,
                120_000,
                1,
                [f64::INFINITY; 4],
            ),
        ];
        let text = |f: fn(&Row) -> &'static str| {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as arrow_array::ArrayRef
        };
        let ts = |f: fn(&Row) -> i64| {
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(f))
                    .with_timezone("UTC"),
            ) as arrow_array::ArrayRef
        };
        let number = |i: usize| {
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.6[i])))
                as arrow_array::ArrayRef
        };
        let batch = RecordBatch::try_new(
            crate::event::window_schema(),
            vec![
                text(|r| r.0),
                text(|r| r.1),
                text(|r| r.2),
                ts(|r| r.3),
                ts(|r| r.4),
                Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.5))),
                number(0),
                number(1),
                number(2),
                number(3),
            ],
        )
        .unwrap();
        let mut records = WindowRecords::new(&batch);
        for (row, r) in rows.iter().enumerate() {
            let mut out = Vec::new();
            records.write(row, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let start = crate::event::rfc3339_ms(r.3);
            let end = crate::event::rfc3339_ms(r.4);
            let n = |x: f64| {
                if x.is_finite() {
                    serde_json::json!(x)
                } else {
                    serde_json::Value::Null
                }
            };
            let expected = serde_json::json!({
                "id": format!("{}|{}|{}|{start}", r.0, r.1, r.2),
                "window": r.0, "deviceId": r.1, "type": r.2,
                "windowStart": start, "windowEnd": end, "count": r.5,
                "sum": n(r.6[0]), "avg": n(r.6[1]), "min": n(r.6[2]), "max": n(r.6[3]),
            });
            assert_eq!(v, expected, "row {row}");
        }
    }

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
