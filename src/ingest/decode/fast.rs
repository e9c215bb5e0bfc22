//! The fast reader: one pass over a message in any member order.
//!
//! A message is read member by member: each key with one vector scan for its closing
//! quote and dispatched on through [`Fields::role`] (one table lookup by length and
//! one compare), each string value with one vector scan, each number with a word-wise
//! digit scan, and a flat object value (the usual `complexData`) by
//! [`flat::object_len`], which checks its grammar 64 bytes at a time. Whitespace is
//! taken wherever JSON allows it (`", "` and `": "` as Python and many SDKs write
//! them, pretty-printed messages), unknown members are validated and skipped wherever
//! they are, and nested values are walked.
//!
//! It only ever *accepts*: anything unusual (an escape, a control character, an
//! exponent, a very long number, nesting deeper than [`MAX_DEPTH`], a missing,
//! repeated or ill-typed field, any syntax error) gives `None`, and the scalar decoder
//! then decides and explains. So the two agree by construction on every rejection,
//! and the tests check that they agree on every acceptance. Nothing is allocated.

use std::borrow::Cow;

use super::{Event, Fields, Role, TimeFormat, Values, digits, epoch_ms, string_stop_words};
use crate::event::MinuteCache;

/// Deeper nesting than this goes to the scalar decoder (which allows up to 128).
const MAX_DEPTH: usize = 64;

/// The fast reader and what it keeps between messages.
pub struct Reader {
    /// The CPU has AVX2, PCLMULQDQ, BMI1 and BMI2 (asked once, not per message).
    simd: bool,
    /// The minute of the last RFC 3339 time read.
    minutes: MinuteCache,
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            simd: simd_available(),
            minutes: MinuteCache::default(),
        }
    }
}

/// Whether this CPU has the instructions the vector scans are compiled for: AVX2,
/// PCLMULQDQ, BMI1 and BMI2.
pub(crate) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Reader {
    /// The event in `b`, if the fast reader takes it; `None` means "ask the scalar
    /// decoder" (which may well accept it).
    #[inline]
    /// A multi-metric event's values go to `values`.
    pub fn event<'a>(
        &mut self,
        b: &'a [u8],
        fields: &Fields,
        values: &mut Values,
    ) -> Option<Event<'a>> {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: the CPU has the features (`simd`).
            return unsafe { read_avx2(b, fields, &mut self.minutes, values) };
        }
        read::<Words>(b, fields, &mut self.minutes, values)
    }

    /// [`Self::event`] without the vector scans (as on a CPU without AVX2).
    #[cfg(test)]
    pub fn event_without_simd<'a>(
        &mut self,
        b: &'a [u8],
        fields: &Fields,
        values: &mut Values,
    ) -> Option<Event<'a>> {
        read::<Words>(b, fields, &mut self.minutes, values)
    }
}

/// The scans the reader is built from, with or without vector instructions.
trait Scan {
    /// [`super::string_stop`].
    fn stop(b: &[u8], i: usize) -> Option<(usize, bool)>;
    /// [`flat::object_len`] of the object at `b[0]`, where available.
    fn flat(b: &[u8]) -> Option<usize>;
    /// [`skip_nested`] with these scans, out of line (it recurses).
    fn nested(b: &[u8], p: usize, depth: usize) -> Option<usize>;
}

/// Word-wise scans only.
struct Words;

impl Scan for Words {
    #[inline(always)]
    fn stop(b: &[u8], i: usize) -> Option<(usize, bool)> {
        string_stop_words(b, i)
    }
    #[inline(always)]
    fn flat(_: &[u8]) -> Option<usize> {
        None
    }
    #[inline(never)]
    fn nested(b: &[u8], p: usize, depth: usize) -> Option<usize> {
        skip_nested::<Words>(b, p, depth)
    }
}

/// AVX2 scans. Its functions are only called from [`read_avx2`] (through code inlined
/// into it) or from [`skip_nested`] under it, on a CPU with the features.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Scan for Avx2 {
    #[inline(always)]
    fn stop(b: &[u8], i: usize) -> Option<(usize, bool)> {
        // SAFETY: only used on a CPU with AVX2 (see the type's docs), where it is
        // inlined into code that has the feature.
        unsafe { super::string_stop_inline(b, i) }
    }
    #[inline(always)]
    fn flat(b: &[u8]) -> Option<usize> {
        // SAFETY: only used on a CPU with the features (see the type's docs); `b[0]`
        // is a `{` outside any string (every caller reads a value there).
        unsafe { super::flat::object_len(b) }
    }
    #[inline(always)]
    fn nested(b: &[u8], p: usize, depth: usize) -> Option<usize> {
        // SAFETY: only used on a CPU with the features (see the type's docs).
        unsafe { skip_nested_avx2(b, p, depth) }
    }
}

/// [`skip_nested`] with the vector scans inlined: a function of its own with the
/// features, since the scans inline only into code that has them.
///
/// # Safety
/// The CPU must have AVX2, PCLMULQDQ, BMI1 and BMI2.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
unsafe fn skip_nested_avx2(b: &[u8], p: usize, depth: usize) -> Option<usize> {
    skip_nested::<Avx2>(b, p, depth)
}

/// [`read`] with the vector scans inlined.
///
/// # Safety
/// The CPU must have AVX2, PCLMULQDQ, BMI1 and BMI2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
unsafe fn read_avx2<'a>(
    b: &'a [u8],
    f: &Fields,
    minutes: &mut MinuteCache,
    values: &mut Values,
) -> Option<Event<'a>> {
    read::<Avx2>(b, f, minutes, values)
}

#[inline(always)]
fn at(b: &[u8], p: usize) -> u8 {
    b.get(p).copied().unwrap_or(0)
}

#[inline(always)]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first non-whitespace byte at or after `p`.
#[inline(always)]
fn ws(b: &[u8], mut p: usize) -> usize {
    while is_ws(at(b, p)) {
        p += 1;
    }
    p
}

/// The string whose first byte is at `p` (just after its opening quote), if it has no
/// escapes or control characters and is valid UTF-8, and where after its closing quote.
#[inline(always)]
fn string<S: Scan>(b: &[u8], p: usize) -> Option<(&str, usize)> {
    let (e, non_ascii) = S::stop(b, p)?;
    if b[e] != b'"' {
        return None;
    }
    let s = if non_ascii {
        std::str::from_utf8(&b[p..e]).ok()?
    } else {
        // SAFETY: ASCII bytes only.
        unsafe { std::str::from_utf8_unchecked(&b[p..e]) }
    };
    Some((s, e + 1))
}

/// The end of the number at `p` if it is `-?(0|[1-9][0-9]*)(\.[0-9]+)?` within the
/// limits ([`MAX_INT_DIGITS`], [`MAX_NUMBER_LEN`]).
#[inline(always)]
fn number_end(b: &[u8], p: usize) -> Option<usize> {
    let d = if b.get(p) == Some(&b'-') { p + 1 } else { p };
    let i = digits(b, d);
    let int_len = i - d;
    if int_len == 0 || int_len > MAX_INT_DIGITS || (b[d] == b'0' && int_len > 1) {
        return None;
    }
    if b.get(i) != Some(&b'.') {
        return Some(i);
    }
    let e = digits(b, i + 1);
    (e > i + 1 && e - d <= MAX_NUMBER_LEN).then_some(e)
}

/// Where after `word` if `b` holds it at `p`.
#[inline(always)]
fn literal(b: &[u8], p: usize, word: &[u8]) -> Option<usize> {
    (b.get(p..p + word.len())? == word).then_some(p + word.len())
}

/// Skips the value at `p` (a member's value: depth 1): the position after it.
#[inline(always)]
fn skip<S: Scan>(b: &[u8], p: usize) -> Option<usize> {
    match at(b, p) {
        b'"' => Some(string::<S>(b, p + 1)?.1),
        b'-' | b'0'..=b'9' => number_end(b, p),
        b't' => literal(b, p, b"true"),
        b'f' => literal(b, p, b"false"),
        b'n' => literal(b, p, b"null"),
        b'{' => match S::flat(&b[p..]) {
            Some(len) => Some(p + len),
            None => S::nested(b, p, 1),
        },
        b'[' => S::nested(b, p, 1),
        _ => None,
    }
}

/// Skips the object or array at `p`, nested `depth` deep, member by member. Inlined
/// into [`Scan::nested`], through which it recurses.
#[inline(always)]
fn skip_nested<S: Scan>(b: &[u8], p: usize, depth: usize) -> Option<usize> {
    if depth >= MAX_DEPTH {
        return None;
    }
    let object = at(b, p) == b'{';
    let close = if object { b'}' } else { b']' };
    let mut q = ws(b, p + 1);
    if at(b, q) == close {
        return Some(q + 1);
    }
    loop {
        if object {
            if at(b, q) != b'"' {
                return None;
            }
            q = ws(b, string::<S>(b, q + 1)?.1);
            if at(b, q) != b':' {
                return None;
            }
            q = ws(b, q + 1);
        }
        // (Not a closure: a closure does not take the target features of the function
        // this is inlined into.)
        let end = match at(b, q) {
            b'{' | b'[' => S::nested(b, q, depth + 1),
            b'"' => Some(string::<S>(b, q + 1)?.1),
            b'-' | b'0'..=b'9' => number_end(b, q),
            b't' => literal(b, q, b"true"),
            b'f' => literal(b, q, b"false"),
            b'n' => literal(b, q, b"null"),
            _ => None,
        };
        q = ws(b, end?);
        match at(b, q) {
            b',' => q = ws(b, q + 1),
            c if c == close => return Some(q + 1),
            _ => return None,
        }
    }
}

/// The time member's value at `p`: its event time and where after it.
#[inline(always)]
fn time<S: Scan>(
    b: &[u8],
    p: usize,
    format: TimeFormat,
    minutes: &mut MinuteCache,
) -> Option<(i64, usize)> {
    if at(b, p) == b'"' {
        let (s, e) = string::<S>(b, p + 1)?;
        let ms = match format {
            TimeFormat::Rfc3339 => minutes.parse(s)?,
            _ => epoch_ms(s, format)?,
        };
        return Some((ms, e));
    }
    if format == TimeFormat::Rfc3339 {
        return None;
    }
    let e = number_end(b, p)?;
    // SAFETY: a number's bytes are ASCII.
    let text = unsafe { std::str::from_utf8_unchecked(&b[p..e]) };
    Some((epoch_ms(text, format)?, e))
}

/// A string field's value at `p` into `slot`: `None` unless it is a string not seen
/// before. Where after it.
#[inline(always)]
fn text<'a, S: Scan>(b: &'a [u8], p: usize, slot: &mut Option<&'a str>) -> Option<usize> {
    if slot.is_some() || at(b, p) != b'"' {
        return None;
    }
    let (s, e) = string::<S>(b, p + 1)?;
    *slot = Some(s);
    Some(e)
}

/// The whole message as an event, if the fast reader takes it (see the module docs).
#[inline(always)]
fn read<'a, S: Scan>(
    b: &'a [u8],
    f: &Fields,
    minutes: &mut MinuteCache,
    values: &mut Values,
) -> Option<Event<'a>> {
    let mut p = ws(b, 0);
    if at(b, p) != b'{' {
        return None;
    }
    p = ws(b, p + 1);
    let (mut event_id, mut device_id, mut kind) = (None, None, None);
    let (mut seq, mut value, mut ts) = (None, None, None);
    // Value members seen (null ones too), and those with a number.
    let (mut seen, mut present) = (0u32, 0u16);
    let mut complex = false;
    loop {
        if at(b, p) != b'"' {
            return None; // also `{}`: the scalar decoder says what is missing
        }
        let (key, e) = string::<S>(b, p + 1)?;
        p = e;
        if at(b, p) != b':' {
            p = ws(b, p);
            if at(b, p) != b':' {
                return None;
            }
        }
        p += 1;
        if is_ws(at(b, p)) {
            p = ws(b, p);
        }
        p = match f.role(key.as_bytes()) {
            Role::EventId => text::<S>(b, p, &mut event_id)?,
            Role::DeviceId => text::<S>(b, p, &mut device_id)?,
            Role::Type => text::<S>(b, p, &mut kind)?,
            Role::Time => {
                if ts.is_some() {
                    return None;
                }
                let (ms, e) = time::<S>(b, p, f.time_format, minutes)?;
                ts = Some(ms);
                e
            }
            Role::Sequence => {
                let e = digits(b, p);
                // An integer without a leading zero, small enough for a u64 (longer
                // ones, and `1.0`, `1e3`, go the scalar way).
                if seq.is_some() || e == p || e - p > 19 || (b[p] == b'0' && e - p > 1) {
                    return None;
                }
                if matches!(at(b, e), b'.' | b'e' | b'E') {
                    return None;
                }
                seq = Some(
                    b[p..e]
                        .iter()
                        .fold(0u64, |n, &d| n * 10 + (d - b'0') as u64),
                );
                e
            }
            Role::Value(i) => {
                let bit = 1u32 << i;
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                if at(b, p) == b'n' && f.multi() {
                    literal(b, p, b"null")?
                } else {
                    let e = number_end(b, p)?;
                    let v = number_value(&b[p..e])?;
                    if f.multi() {
                        values[i as usize] = v;
                        present |= 1 << i;
                    } else {
                        value = Some(v);
                    }
                    e
                }
            }
            Role::ComplexData => {
                if complex || !matches!(at(b, p), b'{' | b'n') {
                    return None;
                }
                complex = true;
                skip::<S>(b, p)?
            }
            Role::Other => skip::<S>(b, p)?,
        };
        if !matches!(at(b, p), b',' | b'}') {
            p = ws(b, p);
        }
        match at(b, p) {
            b',' => {
                p += 1;
                if at(b, p) != b'"' {
                    p = ws(b, p);
                }
            }
            b'}' => break,
            _ => return None,
        }
    }
    if ws(b, p + 1) != b.len() {
        return None;
    }
    let device_id = device_id?;
    if device_id.is_empty() {
        return None;
    }
    let event_id = match f.event_id {
        Some(_) => event_id.filter(|id: &&str| !id.is_empty())?,
        None => "",
    };
    let seq = match f.sequence {
        Some(_) => seq?,
        None => 0,
    };
    let kind = match f.kind {
        Some(_) => kind?,
        None => "",
    };
    let value = if f.multi() {
        if present == 0 {
            return None;
        }
        0.0
    } else {
        value?
    };
    Some(Event {
        event_id: Cow::Borrowed(event_id),
        device_id: Cow::Borrowed(device_id),
        seq,
        kind: Cow::Borrowed(kind),
        value,
        ts: ts?,
        present,
    })
}

/// The longest integer part a number may have on the fast path, and the longest
/// number after any minus (longer ones go the scalar way).
const MAX_INT_DIGITS: usize = 60;
const MAX_NUMBER_LEN: usize = 62;

/// Powers of ten a double holds exactly.
const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The value of a number [`number_end`] accepted (`-?digits(.digits)?`). When its
/// digits, read as an integer, stay below 2^53 (up to 15 digits always: the usual
/// reading) it is `digits / 10^fraction` in doubles: both exact, so one correctly
/// rounded division gives the correctly rounded value, the one `str::parse` gives
/// (Clinger's fast path). Longer numbers go to `str::parse`.
#[inline]
fn number_value(text: &[u8]) -> Option<f64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.len() <= 16 {
        let mut mantissa = 0u64;
        let mut fraction = 0;
        for (i, &d) in digits.iter().enumerate() {
            if d == b'.' {
                fraction = digits.len() - i - 1;
            } else {
                mantissa = mantissa * 10 + (d - b'0') as u64;
            }
        }
        // 16 bytes hold at most 16 digits (< 2^54); keep to 2^53, exact in a double.
        if mantissa < 1 << 53 {
            let v = mantissa as f64 / EXACT_POW10[fraction];
            return Some(if negative { -v } else { v });
        }
    }
    // SAFETY: a number's bytes are ASCII.
    unsafe { std::str::from_utf8_unchecked(text) }.parse().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::number_value;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// Bit for bit what `str::parse` says, on both sides of the fast path's limits.
        #[test]
        fn number_values_are_those_str_parse_gives(
            negative: bool,
            int in "(0|[1-9][0-9]{0,17})",
            frac in proptest::option::of("[0-9]{1,17}"),
        ) {
            let text = format!(
                "{}{int}{}",
                if negative { "-" } else { "" },
                frac.map(|f| format!(".{f}")).unwrap_or_default()
            );
            let want: f64 = text.parse().unwrap();
            let got = number_value(text.as_bytes()).unwrap();
            prop_assert_eq!(got.to_bits(), want.to_bits(), "{}", text);
        }
    }

    #[test]
    fn number_values_at_the_edges() {
        for text in [
            "0",
            "-0",
            "0.0",
            "9007199254740991",
            "9007199254740992",
            "0.1",
            "22.2",
            "999999999999999.9",
            "1234567.890123456",
            "0.0000000000000001",
            "-73.0000000000001",
        ] {
            let want: f64 = text.parse().unwrap();
            assert_eq!(
                number_value(text.as_bytes()).unwrap().to_bits(),
                want.to_bits(),
                "{text}"
            );
        }
    }
}
