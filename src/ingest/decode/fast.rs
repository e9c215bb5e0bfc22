//! The fast reader: one pass over a message in any member order.
//!
//! A message is read member by member, every member through the same steps whatever
//! its role (see [`read`]): the 64 bytes from its key as bitmaps ([`Block`]), which
//! give where the key and a string, number or literal value end; the key's slot from
//! a table ([`Fields::slot_at`]: one lookup by length and one masked compare of four
//! words); the value's place kept in that slot. A flat object value (the usual
//! `complexData`) is checked by [`flat::object_len`], 64 bytes at a time. The slots
//! are read afterwards, role by role, always in the same order. So the branches are
//! as predictable when the member order changes from one event to the next as when it
//! is fixed: dispatching on each key instead cost a fifth of the throughput on such
//! input (a mispredicted branch or two per member). Whitespace is
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

use super::fields::SLOTS;
use super::{Event, Fields, Role, TimeFormat, Values, digits, epoch_ms, string_stop_words};
use crate::event::MinuteCache;

/// Deeper nesting than this goes to the scalar decoder (which allows up to 128).
const MAX_DEPTH: usize = 64;

/// The slot of members with no role.
const OTHER: usize = Role::Other.slot();

/// Bitmaps of 64 bytes (bit `i` for byte `i`).
#[derive(Clone, Copy, Default)]
struct Block {
    /// What ends the fast scan of a string: `"`, `\\` and control characters.
    string: u64,
    /// What ends a number or literal: `,`, `}`, whitespace and control characters.
    stop: u64,
    /// Non-ASCII bytes.
    high: u64,
}

impl Block {
    /// [`Scan::block`] one byte at a time.
    fn of_bytes(w: &[u8; 64]) -> Block {
        let mut k = Block::default();
        for (i, &c) in w.iter().enumerate() {
            let bit = 1u64 << i;
            k.string |= bit * (c == b'"' || c == b'\\' || c < 0x20) as u64;
            k.stop |= bit * (c <= b' ' || c == b',' || c == b'}') as u64;
            k.high |= bit * (c >= 0x80) as u64;
        }
        k
    }
}

/// The bits from `i` on (`i` < 64).
#[inline(always)]
fn from(i: usize) -> u64 {
    !0u64 << i
}

/// The bits below `i` (`i` ≤ 64).
#[inline(always)]
fn below(i: usize) -> u64 {
    if i >= 64 { !0 } else { (1u64 << i) - 1 }
}

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
    /// The bitmaps of 64 bytes.
    fn block(w: &[u8; 64]) -> Block;
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
    fn block(w: &[u8; 64]) -> Block {
        Block::of_bytes(w)
    }
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
    fn block(w: &[u8; 64]) -> Block {
        use std::arch::x86_64::*;
        // A macro, not a closure: a closure does not take its function's target
        // features (see `string_stop_inline`).
        macro_rules! half {
            ($at:expr) => {{
                // SAFETY: 32 bytes at `$at` are in `w`; an unaligned load (and the
                // caller's CPU has AVX2, see the type's docs).
                unsafe {
                    let v = _mm256_loadu_si256(w[$at..$at + 32].as_ptr().cast());
                    let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
                    let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
                    let comma = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b',' as i8));
                    let brace = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'}' as i8));
                    let control = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v);
                    let blank = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x20)), v);
                    (
                        _mm256_movemask_epi8(_mm256_or_si256(
                            quote,
                            _mm256_or_si256(backslash, control),
                        )) as u32 as u64,
                        _mm256_movemask_epi8(_mm256_or_si256(blank, _mm256_or_si256(comma, brace)))
                            as u32 as u64,
                        _mm256_movemask_epi8(v) as u32 as u64,
                    )
                }
            }};
        }
        let (q0, s0, h0) = half!(0);
        let (q1, s1, h1) = half!(32);
        Block {
            string: q0 | q1 << 32,
            stop: s0 | s1 << 32,
            high: h0 | h1 << 32,
        }
    }
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

/// The whole message as an event, if the fast reader takes it (see the module docs).
///
/// Every member goes through the same steps, whatever its role: the 64 bytes from its
/// key are read as bitmaps ([`Block`]); the key ends at the first quote, the value at
/// its closing quote (a string) or at the first `,`, `}` or whitespace (a number or
/// literal), both read off the bitmaps and chosen without a branch; the key's slot
/// ([`Fields::slot`]) is looked up in a table and the value's place kept there. Only
/// objects and arrays (`complexData`), and values longer than the window, take a
/// branch of their own. The values are read afterwards, role by role, in one order:
/// so a member order that changes from one event to the next leaves the branches as
/// predictable as a fixed one.
#[inline(always)]
fn read<'a, S: Scan>(
    b: &'a [u8],
    f: &Fields,
    minutes: &mut MinuteCache,
    values: &mut Values,
) -> Option<Event<'a>> {
    let n = b.len();
    if n > u32::MAX as usize {
        return None;
    }
    let mut p = ws(b, 0);
    if at(b, p) != b'{' {
        return None;
    }
    p = ws(b, p + 1);
    // Where each slot's value is (from its first byte to the byte after it).
    let mut slots = [(0u32, 0u32); SLOTS];
    // Slots filled, and filled twice.
    let (mut seen, mut twice) = (0u32, 0u32);
    // An escape or control character in a key or string, and non-ASCII bytes.
    let (mut bad, mut high) = (false, 0u64);
    loop {
        if at(b, p) != b'"' {
            return None; // also `{}`: the scalar decoder says what is missing
        }
        // The bitmaps are read from the 64 bytes from `p`, or from the last 64 near the
        // end of `b`, shifted down to `p` (chosen without a branch: which members end
        // a message changes with the member order); bytes past the end stop strings
        // and numbers.
        let k = match b.get(n.wrapping_sub(64)..) {
            Some(_) => {
                let from_b = std::hint::select_unpredictable(p + 64 <= n, p, n - 64);
                let shift = p - from_b;
                let k = S::block(b[from_b..from_b + 64].try_into().expect("64 bytes"));
                let past_end = !(!0u64 >> shift);
                Block {
                    string: k.string >> shift | past_end,
                    stop: k.stop >> shift | past_end,
                    high: k.high >> shift,
                }
            }
            // A message of fewer than 64 bytes: from a copy, with zeros after it (a
            // zero is a control character: no string, number or literal runs past
            // the end).
            None => {
                let mut short = [0u8; 128];
                short[..n].copy_from_slice(b);
                S::block(short[p..p + 64].try_into().expect("64 bytes"))
            }
        };
        let close = (k.string & from(1)).trailing_zeros() as usize;
        let (key_end, slot) = if close < 64 {
            bad |= at(b, p + close) != b'"';
            high |= k.high & below(close);
            (p + close, f.slot_at(b, p + 1, close - 1))
        } else {
            let e = string::<S>(b, p + 1)?.1 - 1;
            (e, f.slot(&b[p + 1..e]))
        };
        let mut v = key_end + 1;
        if at(b, v) != b':' {
            v = ws(b, v);
            if at(b, v) != b':' {
                return None;
            }
        }
        v += 1;
        if is_ws(at(b, v)) {
            v = ws(b, v);
        }
        let first = at(b, v);
        let end = if matches!(first, b'{' | b'[') {
            skip::<S>(b, v)?
        } else {
            // A string or a number or literal, as far as the window shows it.
            let r = v - p;
            let (close, stop) = if r < 63 {
                (
                    (k.string & from(r + 1)).trailing_zeros() as usize,
                    (k.stop & from(r)).trailing_zeros() as usize,
                )
            } else {
                (64, 64)
            };
            let string = first == b'"';
            // (`&`, not `&&`: no branch.)
            bad |= string & (close < 64) & (at(b, p + close) != b'"');
            high |= k.high & from(r.min(62) + 1) & below(close) & (string as u64).wrapping_neg();
            let e = std::hint::select_unpredictable(string, close + 1, stop);
            if e < 64 + string as usize {
                p + e
            } else {
                // Longer than the window (`skip` checks a string itself).
                skip::<S>(b, v)?
            }
        };
        if slot == OTHER && !matches!(first, b'"' | b'{' | b'[') && skip::<S>(b, v)? != end {
            return None; // not a number or literal
        }
        let bit = 1u32 << slot;
        twice |= seen & bit;
        seen |= bit;
        slots[slot] = (v as u32, end as u32);
        p = end;
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
    if ws(b, p + 1) != n || bad || twice & !(1 << OTHER) != 0 {
        return None;
    }
    if high != 0 && std::str::from_utf8(b).is_err() {
        return None;
    }
    // The values, role by role.
    let found = Slots {
        b,
        slots: &slots,
        seen,
    };
    let device_id = found
        .text(Role::DeviceId.slot())
        .filter(|d| !d.is_empty())?;
    let event_id = match f.event_id {
        Some(_) => found
            .text(Role::EventId.slot())
            .filter(|id| !id.is_empty())?,
        None => "",
    };
    let kind = match f.kind {
        Some(_) => found.text(Role::Type.slot())?,
        None => "",
    };
    let seq = match f.sequence {
        Some(_) => {
            // An integer without a leading zero, small enough for a u64 (longer ones,
            // and `1.0`, `1e3`, go the scalar way).
            let (v, e) = found.value(Role::Sequence.slot())?;
            if digits(b, v) != e || e == v || e - v > 19 || (b[v] == b'0' && e - v > 1) {
                return None;
            }
            b[v..e]
                .iter()
                .fold(0u64, |n, &d| n * 10 + (d - b'0') as u64)
        }
        None => 0,
    };
    let ts = {
        let (v, e) = found.value(Role::Time.slot())?;
        if b[v] == b'"' {
            let s = found.text(Role::Time.slot())?;
            match f.time_format {
                TimeFormat::Rfc3339 => minutes.parse(s)?,
                format => epoch_ms(s, format)?,
            }
        } else {
            if f.time_format == TimeFormat::Rfc3339 || number_end(b, v)? != e {
                return None;
            }
            // SAFETY: a number's bytes are ASCII.
            epoch_ms(
                unsafe { std::str::from_utf8_unchecked(&b[v..e]) },
                f.time_format,
            )?
        }
    };
    let mut present = 0u16;
    let value = if f.multi() {
        for i in 0..f.values.len() {
            let slot = Role::Value(i as u8).slot();
            let Some((v, e)) = found.value(slot) else {
                continue;
            };
            if &b[v..e] != b"null" {
                values[i] = found.number(slot)?;
                present |= 1 << i;
            }
        }
        if present == 0 {
            return None;
        }
        0.0
    } else {
        found.number(Role::Value(0).slot())?
    };
    if let Some((v, e)) = found.value(Role::ComplexData.slot())
        && b[v] != b'{'
        && &b[v..e] != b"null"
    {
        return None;
    }
    Some(Event {
        event_id: Cow::Borrowed(event_id),
        device_id: Cow::Borrowed(device_id),
        seq,
        kind: Cow::Borrowed(kind),
        value,
        ts,
        present,
    })
}

/// Where [`read`] found each slot's value.
struct Slots<'a, 's> {
    b: &'a [u8],
    slots: &'s [(u32, u32); SLOTS],
    seen: u32,
}

impl<'a> Slots<'a, '_> {
    /// Where the value of `slot` is, if the message has one.
    #[inline(always)]
    fn value(&self, slot: usize) -> Option<(usize, usize)> {
        let (v, e) = self.slots[slot];
        (self.seen & (1 << slot) != 0).then_some((v as usize, e as usize))
    }

    /// The value of `slot` if it is a string.
    #[inline(always)]
    fn text(&self, slot: usize) -> Option<&'a str> {
        let (v, e) = self.value(slot)?;
        if self.b[v] != b'"' {
            return None;
        }
        // SAFETY: UTF-8: every string is checked: in the window (no escapes or control
        // characters, and the whole message is checked when any byte is non-ASCII) or
        // by `skip`.
        Some(unsafe { std::str::from_utf8_unchecked(&self.b[v + 1..e - 1]) })
    }

    /// The value of `slot` if it is a number.
    #[inline(always)]
    fn number(&self, slot: usize) -> Option<f64> {
        let (v, e) = self.value(slot)?;
        if number_end(self.b, v)? != e {
            return None;
        }
        number_value(&self.b[v..e])
    }
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
