//! Decoding: JSON bytes → [`Event`], borrowing from the input.
//!
//! Two entry points. [`device_key`] is the router's cheap look at a message: it walks
//! the top-level object only as far as the device id and skips other values
//! structurally. [`Decoder::decode`] is the partition actor's full parse: it reads the
//! members that fill an event's roles (named by [`Fields`], `[source.fields]`) straight
//! into an [`Event`] and validates everything else (`complexData`, unknown keys) as
//! JSON without building it. Its fast reader (`fast`) takes a message in one pass
//! whatever its member order and whitespace; anything it leaves goes to the scalar
//! parser ([`decode_scalar_with`]), which also words every error. Nothing is allocated
//! unless a string contains escapes.
//!
//! Classification: input that is not valid JSON is [`DecodeError::Parse`], even when
//! a field error comes first; valid JSON that is not a valid event is
//! [`DecodeError::Schema`].

use std::borrow::Cow;
use std::sync::Arc;

use crate::event::parse_rfc3339_ms;

pub use fields::{Fields, MAX_VALUES, Role, TimeFormat, epoch_ms};

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
    /// Empty when the input has no event id ([`Fields::event_id`] is `None`).
    pub event_id: Cow<'a, str>,
    pub device_id: Cow<'a, str>,
    /// 0 when the input has no sequence numbers.
    pub seq: u64,
    /// Empty when each value member is its own series ([`Fields::multi`]).
    pub kind: Cow<'a, str>,
    /// The value (unused when [`Fields::multi`]).
    pub value: f64,
    /// Event time in epoch milliseconds.
    pub ts: i64,
    /// When [`Fields::multi`]: bit `i` is set when value member `i` is present; its
    /// value is in slot `i` of the values the decoder was given (kept apart so that an
    /// event stays small: events are moved on the hot path). 0 otherwise.
    pub present: u16,
}

/// The values of a multi-metric event, by value member (see [`Event::present`]).
pub type Values = [f64; MAX_VALUES];

/// Nesting deeper than this is rejected (as serde_json does), so a hostile message
/// cannot exhaust the stack.
const MAX_DEPTH: usize = 128;

/// A JSON syntax error at a byte offset.
struct Syntax(usize, &'static str);

impl Syntax {
    fn into_error(self, b: &[u8]) -> DecodeError {
        let at = self.0.min(b.len());
        if at >= b.len() {
            DecodeError::Parse(format!(
                "EOF while parsing: {} at column {}",
                self.1,
                at + 1
            ))
        } else {
            DecodeError::Parse(format!("{} at column {}", self.1, at + 1))
        }
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// Bytes that end the fast scan of a string: `"`, `\\` and control characters.
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

#[inline]
fn word(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// Index of the first non-digit at or after `i`, eight bytes at a time.
#[inline]
fn digits(b: &[u8], mut i: usize) -> usize {
    while i + 8 <= b.len() {
        // A byte is a digit iff (byte ^ '0') < 10. Adding 0x76 sets the high bit of
        // every byte ≥ 10; carries only run upward, past the first flagged byte, so the
        // lowest flag is exact.
        let t = word(b, i) ^ (ONES * b'0' as u64);
        let flags = (t.wrapping_add(ONES * 0x76) | t) & HIGH;
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len() - i)
}

/// Index of the first `"`, `\\` or control character at or after `i`, if any, and
/// whether a non-ASCII byte came before it.
#[inline]
pub(crate) fn string_stop(b: &[u8], i: usize) -> Option<(usize, bool)> {
    #[cfg(target_arch = "x86_64")]
    if b.len() >= i + 32 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (asked just now; the answer is cached).
        return unsafe { string_stop_avx2(b, i) };
    }
    string_stop_words(b, i)
}

/// [`string_stop`] 32 bytes at a time, then word by word (so also for fewer than 32
/// bytes, which [`string_stop`] scans word by word without calling it).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn string_stop_avx2(b: &[u8], i: usize) -> Option<(usize, bool)> {
    // SAFETY: this function's callers' CPU has AVX2.
    unsafe { string_stop_inline(b, i) }
}

/// [`string_stop_avx2`]'s body, for callers that have AVX2 themselves to inline it (a
/// function with the feature is not inlined into one without). The last bytes, fewer
/// than 32, are read in the 32 that end the message, so no loop runs byte by byte.
///
/// # Safety
/// The CPU must have AVX2; inlined only where it is enabled.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn string_stop_inline(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    use std::arch::x86_64::*;
    // The stop and non-ASCII bitmaps of 32 bytes. A macro, not a closure: a closure
    // does not take its function's target features, so the intrinsics in it would be
    // calls (each passing its vectors through memory) instead of one instruction each.
    macro_rules! scan {
        ($chunk:expr) => {{
            let chunk: &[u8; 32] = $chunk;
            // SAFETY: `chunk` holds 32 bytes; an unaligned load (and the caller's CPU
            // has AVX2).
            unsafe {
                let v = _mm256_loadu_si256(chunk.as_ptr().cast());
                let quote = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8));
                let backslash = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8));
                let control = _mm256_cmpeq_epi8(_mm256_min_epu8(v, _mm256_set1_epi8(0x1f)), v);
                let stop = _mm256_movemask_epi8(_mm256_or_si256(
                    _mm256_or_si256(quote, backslash),
                    control,
                ));
                // Bit 7 of each byte: the non-ASCII ones.
                (stop as u32, _mm256_movemask_epi8(v) as u32)
            }
        }};
    }
    let mut high = 0u32;
    while let Some(chunk) = b.get(i..).and_then(|rest| rest.first_chunk::<32>()) {
        let (stop, non_ascii) = scan!(chunk);
        if stop != 0 {
            let n = stop.trailing_zeros();
            let before = non_ascii & ((1u32 << n) - 1);
            return Some((i + n as usize, (high | before) != 0));
        }
        high |= non_ascii;
        i += 32;
    }
    if i >= b.len() {
        return None;
    }
    if let Some(last) = b.last_chunk::<32>() {
        // The 32 bytes that end `b`, of which those from `i` on are new.
        let skip = i - (b.len() - 32);
        let (stop, non_ascii) = scan!(last);
        let (stop, non_ascii) = (stop >> skip, non_ascii >> skip);
        if stop == 0 {
            return None;
        }
        let n = stop.trailing_zeros();
        let before = non_ascii & ((1u32 << n) - 1);
        return Some((i + n as usize, (high | before) != 0));
    }
    let (stop, non_ascii) = string_stop_words(b, i)?;
    Some((stop, non_ascii || high != 0))
}

/// [`string_stop`] word by word.
#[inline]
fn string_stop_words(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut high = 0u64;
    while i + 8 <= b.len() {
        let x = word(b, i);
        // Zero-byte tests (exact for the lowest flagged byte, as borrows run upward).
        let zero = |v: u64| v.wrapping_sub(ONES) & !v;
        let flags = (zero(x ^ (ONES * b'"' as u64))
            | zero(x ^ (ONES * b'\\' as u64))
            | (x.wrapping_sub(ONES * 0x20) & !x))
            & HIGH;
        if flags != 0 {
            let n = flags.trailing_zeros() / 8;
            let before = if n == 0 {
                0
            } else {
                x & (u64::MAX >> (64 - 8 * n))
            };
            return Some((i + n as usize, (high | before) & HIGH != 0));
        }
        high |= x;
        i += 8;
    }
    let n = b[i..].iter().position(|&c| STRING_STOP[c as usize])?;
    let tail_high = b[i..i + n].iter().any(|&c| c >= 0x80);
    Some((i + n, high & HIGH != 0 || tail_high))
}

/// A known field's value while scanning.
enum Found<'a> {
    Text(Cow<'a, str>),
    Int(u64),
    Num(f64),
    /// A `null` value member of a list (absent).
    Null,
    /// An epoch time read from a number, in ms.
    Time(i64),
}

impl<'a> Scanner<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), Syntax> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Syntax(self.i, what))
        }
    }

    /// A string starting at the current `"`: borrowed unless it has escapes.
    #[inline]
    fn string(&mut self) -> Result<Cow<'a, str>, Syntax> {
        let start = self.i + 1;
        // One pass for the closing quote, an escape or a control character.
        let Some((k, non_ascii)) = string_stop(self.b, start) else {
            return Err(Syntax(self.b.len(), "unterminated string"));
        };
        match self.b[k] {
            b'"' => {
                if non_ascii && std::str::from_utf8(&self.b[start..k]).is_err() {
                    return Err(Syntax(start, "invalid UTF-8 in string"));
                }
                self.i = k + 1;
                Ok(Cow::Borrowed(self.text(start, k)))
            }
            b'\\' => self.unescape(start), // cold: decode into an owned buffer
            _ => Err(Syntax(k, "control character in string")),
        }
    }

    /// `b[from..to]` as text, for a range already checked: the inside of a string
    /// (checked by `string`: ASCII, or validated when a byte ≥ 0x80 was seen) or a
    /// number (ASCII by its grammar).
    #[inline]
    fn text(&self, from: usize, to: usize) -> &'a str {
        let bytes = &self.b[from..to];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: every caller passes a range that `string` or `number` has checked to
        // be UTF-8 (see above); re-validating only costs time on the hot path.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    #[cold]
    fn unescape(&mut self, start: usize) -> Result<Cow<'a, str>, Syntax> {
        let b = self.b;
        let mut out = String::new();
        let mut i = start;
        loop {
            let Some(&c) = b.get(i) else {
                return Err(Syntax(i, "unterminated string"));
            };
            match c {
                b'"' => {
                    self.i = i + 1;
                    return Ok(Cow::Owned(out));
                }
                b'\\' => {
                    let e = *b.get(i + 1).ok_or(Syntax(i + 1, "unterminated string"))?;
                    i += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = hex4(b, i)?;
                            i += 4;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                                    return Err(Syntax(i, "lone leading surrogate in hex escape"));
                                }
                                let lo = hex4(b, i + 2)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(Syntax(
                                        i + 2,
                                        "invalid low surrogate in hex escape",
                                    ));
                                }
                                i += 6;
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(Syntax(i - 4, "lone trailing surrogate in hex escape"));
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(cp)
                                    .ok_or(Syntax(i, "invalid unicode code point"))?,
                            );
                        }
                        _ => return Err(Syntax(i - 1, "invalid escape")),
                    }
                }
                c if c < 0x20 => return Err(Syntax(i, "control character in string")),
                _ => {
                    // Copy a run of plain bytes (valid UTF-8: checked up front).
                    let end = i + memchr::memchr2(b'"', b'\\', &b[i..]).unwrap_or(b.len() - i);
                    let run = &b[i..end];
                    if let Some(p) = run.iter().position(|&c| c < 0x20) {
                        return Err(Syntax(i + p, "control character in string"));
                    }
                    out.push_str(std::str::from_utf8(run).map_err(|_| Syntax(i, "invalid UTF-8"))?);
                    i = end;
                }
            }
        }
    }

    /// The end of the number starting here, and whether it is an integer.
    #[inline]
    fn number(&mut self) -> Result<(usize, bool), Syntax> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(b, i + 1),
            _ => return Err(Syntax(i, "invalid number")),
        }
        let int_digits = i - start;
        let mut int = true;
        if b.get(i) == Some(&b'.') {
            int = false;
            let d = i + 1;
            i = digits(b, d);
            if i == d {
                return Err(Syntax(i, "invalid number"));
            }
        }
        let exp = matches!(b.get(i), Some(b'e' | b'E'));
        if exp {
            int = false;
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let d = i;
            i = digits(b, d);
            if i == d {
                return Err(Syntax(i, "invalid number"));
            }
        }
        // Only an exponent or a very long integer part can overflow an f64; JSON
        // readers reject those, so this does too (rare: checked only then).
        if (exp || int_digits > 308)
            && !std::str::from_utf8(&b[start..i])
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        {
            return Err(Syntax(start, "number out of range"));
        }
        self.i = i;
        Ok((start, int))
    }

    #[inline]
    fn literal(&mut self, word: &'static [u8]) -> Result<(), Syntax> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Syntax(self.i, "expected value"))
        }
    }

    /// Validates and skips one value.
    fn skip_value(&mut self, depth: usize) -> Result<(), Syntax> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(Syntax(self.i, "recursion limit exceeded"));
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(Syntax(self.i, "key must be a string"));
                    }
                    self.string()?;
                    self.ws();
                    self.expect(b':', "expected `:`")?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Syntax(self.i, "expected `,` or `}`")),
                    }
                }
            }
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(Syntax(self.i, "recursion limit exceeded"));
                }
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Syntax(self.i, "expected `,` or `]`")),
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(drop),
            _ => Err(Syntax(self.i, "expected value")),
        }
    }

    /// The JSON type name of the value starting here (for schema errors).
    fn type_name(&self) -> &'static str {
        match self.peek() {
            Some(b'"') => "a string",
            Some(b'{') => "an object",
            Some(b'[') => "an array",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            _ => "a number",
        }
    }
}

fn hex4(b: &[u8], i: usize) -> Result<u32, Syntax> {
    let h = b
        .get(i..i + 4)
        .ok_or(Syntax(b.len(), "unterminated hex escape"))?;
    let mut v = 0;
    for &c in h {
        v = v * 16
            + (c as char)
                .to_digit(16)
                .ok_or(Syntax(i, "invalid hex escape"))?;
    }
    Ok(v)
}

/// Decodes events, keeping scratch space between calls: the fast reader (`fast`) for
/// what it takes, the scalar decoder ([`decode_scalar_with`]) for the rest and for
/// every error.
pub struct Decoder {
    fields: Arc<Fields>,
    fast: fast::Reader,
    /// The values of the last event [`Decoder::decode`] read.
    values: Values,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Arc::new(Fields::default()))
    }
}

impl Decoder {
    /// A decoder for events whose members are named by `fields`.
    pub fn new(fields: Arc<Fields>) -> Self {
        Decoder {
            fields,
            fast: fast::Reader::default(),
            values: [0.0; MAX_VALUES],
        }
    }

    /// The member names this decoder reads.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// Parses and validates one event (its values, for a multi-metric event, in
    /// [`Decoder::values`]).
    #[inline]
    pub fn decode<'a>(&mut self, b: &'a [u8]) -> Result<Event<'a>, DecodeError> {
        match self.fast.event(b, &self.fields, &mut self.values) {
            Some(e) => Ok(e),
            None => decode_scalar_into(b, &self.fields, &mut self.values),
        }
    }

    /// Parses and validates one event, with a multi-metric event's values in `values`.
    #[inline]
    pub fn decode_into<'a>(
        &mut self,
        b: &'a [u8],
        values: &mut Values,
    ) -> Result<Event<'a>, DecodeError> {
        match self.fast.event(b, &self.fields, values) {
            Some(e) => Ok(e),
            None => decode_scalar_into(b, &self.fields, values),
        }
    }

    /// The values of the last event [`Decoder::decode`] read.
    pub fn values(&self) -> &Values {
        &self.values
    }
}

/// The contract's member names, shared (see [`Fields::default`]).
pub fn contract_fields() -> &'static Fields {
    static CONTRACT: std::sync::LazyLock<Fields> = std::sync::LazyLock::new(Fields::default);
    &CONTRACT
}

/// Parses and validates one event with the contract's member names (with fresh
/// scratch space: hot loops keep a [`Decoder`]).
pub fn decode(b: &[u8]) -> Result<Event<'_>, DecodeError> {
    match fast::Reader::default().event(b, contract_fields(), &mut [0.0; MAX_VALUES]) {
        Some(e) => Ok(e),
        None => decode_scalar(b),
    }
}

/// [`decode_scalar_with`] the contract's member names.
pub fn decode_scalar(b: &[u8]) -> Result<Event<'_>, DecodeError> {
    decode_scalar_with(b, contract_fields())
}

/// Slots of the members found, by role: the four texts, the time, then the values.
const SLOT_EVENT_ID: usize = 0;
const SLOT_DEVICE_ID: usize = 1;
const SLOT_SEQUENCE: usize = 2;
const SLOT_TYPE: usize = 3;
const SLOT_TIME: usize = 4;
const SLOT_VALUES: usize = 5;
const SLOTS: usize = SLOT_VALUES + MAX_VALUES;

fn slot(role: Role) -> Option<usize> {
    Some(match role {
        Role::EventId => SLOT_EVENT_ID,
        Role::DeviceId => SLOT_DEVICE_ID,
        Role::Sequence => SLOT_SEQUENCE,
        Role::Type => SLOT_TYPE,
        Role::Time => SLOT_TIME,
        Role::Value(i) => SLOT_VALUES + i as usize,
        Role::ComplexData | Role::Other => return None,
    })
}

/// [`decode_scalar_into`], the values of a multi-metric event dropped.
pub fn decode_scalar_with<'a>(b: &'a [u8], fields: &Fields) -> Result<Event<'a>, DecodeError> {
    decode_scalar_into(b, fields, &mut [0.0; MAX_VALUES])
}

/// Parses and validates one event, one byte (or eight) at a time: the reference the
/// fast reader is tested against, and the path that explains every error. A
/// multi-metric event's values go to `values`.
pub fn decode_scalar_into<'a>(
    b: &'a [u8],
    fields: &Fields,
    values: &mut Values,
) -> Result<Event<'a>, DecodeError> {
    let mut s = Scanner { b, i: 0 };
    let mut schema: Option<String> = None;
    let mut found: [Option<Found<'_>>; SLOTS] = std::array::from_fn(|_| None);
    scan(&mut s, fields, &mut found, &mut schema).map_err(|e| e.into_error(b))?;
    if let Some(e) = schema {
        return Err(DecodeError::Schema(e));
    }
    let missing =
        |role: Role| DecodeError::Schema(format!("missing field `{}`", fields.name(role)));
    let mut take = |i: usize| found[i].take();
    let text = |f: Option<Found<'a>>, role: Role| match f {
        Some(Found::Text(t)) => Ok(t),
        _ => Err(missing(role)),
    };
    let event_id = match fields.event_id {
        Some(_) => {
            let id = text(take(SLOT_EVENT_ID), Role::EventId)?;
            if id.is_empty() {
                return Err(DecodeError::Schema(format!(
                    "{} is empty",
                    fields.name(Role::EventId)
                )));
            }
            id
        }
        None => Cow::Borrowed(""),
    };
    let device_id = text(take(SLOT_DEVICE_ID), Role::DeviceId)?;
    if device_id.is_empty() {
        return Err(DecodeError::Schema(format!(
            "{} is empty",
            fields.device_id
        )));
    }
    let seq = match (&fields.sequence, take(SLOT_SEQUENCE)) {
        (None, _) => 0,
        (Some(_), Some(Found::Int(n))) => n,
        (Some(_), _) => return Err(missing(Role::Sequence)),
    };
    let kind = match fields.kind {
        Some(_) => text(take(SLOT_TYPE), Role::Type)?,
        None => Cow::Borrowed(""),
    };
    let (mut value, mut present) = (0.0, 0u16);
    if fields.multi() {
        for (i, v) in values.iter_mut().enumerate().take(fields.values.len()) {
            if let Some(Found::Num(x)) = take(SLOT_VALUES + i) {
                *v = x;
                present |= 1 << i;
            }
        }
        if present == 0 {
            let names: Vec<&str> = fields.values.iter().map(|v| &**v).collect();
            return Err(DecodeError::Schema(format!(
                "none of the value members is present: {}",
                names.join(", ")
            )));
        }
    } else {
        value = match take(SLOT_VALUES) {
            Some(Found::Num(v)) => v,
            _ => return Err(missing(Role::Value(0))),
        };
    }
    let time = take(SLOT_TIME);
    let ts = match (fields.time_format, time) {
        (_, None | Some(Found::Null)) => return Err(missing(Role::Time)),
        (_, Some(Found::Time(ms))) => ms,
        (TimeFormat::Rfc3339, Some(Found::Text(t))) => parse_rfc3339_ms(&t).ok_or_else(|| {
            DecodeError::Schema(format!(
                "{} is not an RFC 3339 timestamp: {t:?}",
                fields.time
            ))
        })?,
        (format, Some(Found::Text(t))) => {
            epoch_ms(&t, format).ok_or_else(|| bad_epoch(fields, &t))?
        }
        (_, Some(Found::Int(_) | Found::Num(_))) => unreachable!("times are read as Time"),
    };
    Ok(Event {
        event_id,
        device_id,
        seq,
        kind,
        value,
        ts,
        present,
    })
}

/// The error for an epoch time that does not read.
#[cold]
fn bad_epoch(fields: &Fields, text: &str) -> DecodeError {
    let unit = match fields.time_format {
        TimeFormat::EpochS => "seconds",
        _ => "milliseconds",
    };
    DecodeError::Schema(format!(
        "{} is not a time in {unit} since the epoch (years 0000-9999): {text:?}",
        fields.time
    ))
}

/// Scans the whole message. Field errors are noted in `schema` and scanning goes on,
/// so that a syntax error later still makes the message a parse error.
fn scan<'a>(
    s: &mut Scanner<'a>,
    fields: &Fields,
    found: &mut [Option<Found<'a>>; SLOTS],
    schema: &mut Option<String>,
) -> Result<(), Syntax> {
    s.ws();
    if s.peek() != Some(b'{') {
        let what = s.type_name();
        s.skip_value(0)?;
        s.ws();
        if s.i < s.b.len() {
            return Err(Syntax(s.i, "trailing characters"));
        }
        *schema = Some(format!("invalid type: {what}, expected an event object"));
        return Ok(());
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            if s.peek() != Some(b'"') {
                return Err(Syntax(s.i, "key must be a string"));
            }
            let key = s.string()?;
            s.ws();
            s.expect(b':', "expected `:`")?;
            s.ws();
            let role = fields.role(key.as_bytes());
            match slot(role) {
                Some(f) => {
                    let v = field_value(s, fields, role, schema)?;
                    if found[f].is_some() && schema.is_none() {
                        *schema = Some(format!("duplicate field `{}`", fields.name(role)));
                    }
                    if v.is_some() {
                        found[f] = v;
                    }
                }
                None => {
                    if role == Role::ComplexData
                        && !matches!(s.peek(), Some(b'{' | b'n'))
                        && schema.is_none()
                    {
                        *schema = Some(format!(
                            "invalid type: {}, complexData must be an object",
                            s.type_name()
                        ));
                    }
                    s.skip_value(1)?;
                }
            }
            s.ws();
            match s.peek() {
                Some(b',') => s.i += 1,
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return Err(Syntax(s.i, "expected `,` or `}`")),
            }
        }
    }
    s.ws();
    if s.i < s.b.len() {
        return Err(Syntax(s.i, "trailing characters"));
    }
    Ok(())
}

/// Reads the value of the member with `role`; a value of the wrong type is noted and
/// skipped.
#[inline]
fn field_value<'a>(
    s: &mut Scanner<'a>,
    fields: &Fields,
    role: Role,
    schema: &mut Option<String>,
) -> Result<Option<Found<'a>>, Syntax> {
    let mut wrong = |s: &mut Scanner<'a>, expected: &str| -> Result<Option<Found<'a>>, Syntax> {
        if schema.is_none() {
            *schema = Some(format!(
                "invalid type: {}, expected {expected} for `{}`",
                s.type_name(),
                fields.name(role)
            ));
        }
        s.skip_value(1)?;
        Ok(None)
    };
    match role {
        // A non-negative integer that fits in u64.
        Role::Sequence => {
            if !matches!(s.peek(), Some(b'-' | b'0'..=b'9')) {
                return wrong(s, "an unsigned integer");
            }
            let (start, int) = s.number()?;
            let text = s.text(start, s.i);
            match text.parse::<u64>() {
                Ok(n) if int => Ok(Some(Found::Int(n))),
                _ => {
                    if schema.is_none() {
                        *schema = Some(format!(
                            "invalid value: {text}, expected an unsigned integer for `{}`",
                            fields.name(role)
                        ));
                    }
                    Ok(None)
                }
            }
        }
        // Any finite JSON number; in a list of value members, null stands for absent.
        Role::Value(_) => {
            if fields.multi() && s.peek() == Some(b'n') {
                s.literal(b"null")?;
                return Ok(Some(Found::Null));
            }
            if !matches!(s.peek(), Some(b'-' | b'0'..=b'9')) {
                return wrong(s, "a number");
            }
            let (start, _) = s.number()?;
            let text = s.text(start, s.i);
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Some(Found::Num(v))),
                _ => Err(Syntax(start, "number out of range")),
            }
        }
        // An epoch time may be a number.
        Role::Time
            if fields.time_format != TimeFormat::Rfc3339
                && matches!(s.peek(), Some(b'-' | b'0'..=b'9')) =>
        {
            let (start, _) = s.number()?;
            let text = s.text(start, s.i);
            match epoch_ms(text, fields.time_format) {
                Some(ms) => Ok(Some(Found::Time(ms))),
                None => {
                    if schema.is_none() {
                        *schema = Some(bad_epoch(fields, text).to_string());
                    }
                    Ok(None)
                }
            }
        }
        _ => {
            if s.peek() != Some(b'"') {
                let expected = match role {
                    Role::Time if fields.time_format != TimeFormat::Rfc3339 => {
                        "a number or a string"
                    }
                    _ => "a string",
                };
                return wrong(s, expected);
            }
            Ok(Some(Found::Text(s.string()?)))
        }
    }
}
/// The top-level string member `name` (the device id's, [`Fields::device_id`]) of a
/// JSON object, found without parsing the rest. `None` if the message is not an object
/// or has no such string; the actor's full parse then says why. (The router keeps a
/// [`DeviceKey`], which does the same without building its searcher each time.)
pub fn device_key<'a>(b: &'a [u8], name: &str) -> Option<Cow<'a, str>> {
    DeviceKey::new(name).find(b)
}

/// The router's look at a message: where its device id is, whatever the layout.
///
/// Three ways, cheapest first: the compact layout's prefix (`{"eventId":"…",
/// "deviceId":"`); else the first `"deviceId"` anywhere (one vector search), taken if
/// it is a key at the top level, which one pass over the bytes before it or after it
/// says, whichever are fewer (quotes and brackets counted 64 bytes at a time; from the
/// end, this holds for valid JSON, and the partition's decode refuses the rest
/// wherever it is routed); else member by member.
pub struct DeviceKey {
    name: Box<str>,
    /// Finds `"name"`.
    quoted: memchr::memmem::Finder<'static>,
}

impl DeviceKey {
    pub fn new(name: &str) -> Self {
        DeviceKey {
            name: name.into(),
            quoted: memchr::memmem::Finder::new(format!("\"{name}\"").as_bytes()).into_owned(),
        }
    }

    /// See [`device_key`].
    #[inline]
    pub fn find<'a>(&self, b: &'a [u8]) -> Option<Cow<'a, str>> {
        if &*self.name == "deviceId"
            && let Some(d) = usual_device_key(b)
        {
            return Some(Cow::Borrowed(d));
        }
        #[cfg(target_arch = "x86_64")]
        if fast::simd_available()
            && let Some(k) = self.quoted.find(b)
            // (Not escaped: a quote after a backslash may be inside a string.)
            && k > 0
            && b[k - 1] != b'\\'
            // Counted from the nearer end: the device id often comes after a large
            // `complexData` (the streaming-at-scale order).
            // SAFETY: the CPU has the features; `k` is within `b`.
            && unsafe {
                if k <= b.len() / 2 {
                    flat::at_top_level(b, k)
                } else {
                    flat::at_top_level_from_end(b, k)
                }
            }
        {
            // A key if a colon follows; the value must be a string.
            let mut i = skip_ws(b, k + self.quoted.needle().len());
            if b.get(i) == Some(&b':') {
                i = skip_ws(b, i + 1);
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                return Scanner { b, i }.string().ok();
            }
        }
        any_device_key(b, self.name.as_bytes())
    }
}

/// [`device_key`] for any layout: member by member.
fn any_device_key<'a>(b: &'a [u8], name: &[u8]) -> Option<Cow<'a, str>> {
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
        if key == name {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let mut s = Scanner { b, i };
            return s.string().ok();
        }
        i = skip_structure(b, i)?;
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// The device id of a message in the layout devices send, `{"eventId":"…","deviceId":"…"`
/// with no space and plain strings (no escapes or control characters): two word-wise
/// scans. `None` for any other layout; [`device_key`] then reads it the general way,
/// which gives the same answer wherever both apply.
#[inline]
fn usual_device_key(b: &[u8]) -> Option<&str> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (asked just now; the answer is cached).
        return unsafe { usual_device_key_avx2(b) };
    }
    usual_device_key_with(b, string_stop)
}

/// [`usual_device_key`] with its string scans inlined (32 bytes at a time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn usual_device_key_avx2(b: &[u8]) -> Option<&str> {
    usual_device_key_with(b, |b, i| string_stop_avx2(b, i))
}

/// [`usual_device_key`] with `stop` as its [`string_stop`].
#[inline(always)]
fn usual_device_key_with(
    b: &[u8],
    stop: impl Fn(&[u8], usize) -> Option<(usize, bool)>,
) -> Option<&str> {
    const HEAD: &[u8] = b"{\"eventId\":\"";
    const NEXT: &[u8] = b",\"deviceId\":\"";
    if !b.starts_with(HEAD) {
        return None;
    }
    let (e, _) = stop(b, HEAD.len())?;
    if b[e] != b'"' || !b[e + 1..].starts_with(NEXT) {
        return None;
    }
    let s = e + 1 + NEXT.len();
    let (d, non_ascii) = stop(b, s)?;
    if b[d] != b'"' {
        return None;
    }
    if non_ascii {
        return std::str::from_utf8(&b[s..d]).ok();
    }
    // SAFETY: every byte of `b[s..d]` is ASCII (`stop` saw none ≥ 0x80).
    Some(unsafe { std::str::from_utf8_unchecked(&b[s..d]) })
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
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'"' {
            return Some(k);
        }
        j = k + 2;
    }
}

/// Index just past the JSON value that starts at `i` (structure only, not validated:
/// the partition's decode validates).
pub fn skip_structure(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|e| e + 1),
        b'{' | b'[' => {
            #[cfg(target_arch = "x86_64")]
            if fast::simd_available()
                // SAFETY: the CPU has the features; `b[i]` is a bracket.
                && let Some(len) = unsafe { flat::container_end(&b[i..]) }
            {
                return Some(i + len);
            }
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

mod fast;
mod fields;
#[cfg(target_arch = "x86_64")]
mod flat;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod swar_tests {
    use super::*;

    #[test]
    fn word_scans_agree_with_byte_scans() {
        let mut rng = eventide_simulator::Rng::new(9);
        let alphabet = b"0123456789\"\\\x01\x1f aZ.e-\xc3\xa9\x7f\x80\xff/:";
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let b: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            let from = if len == 0 {
                0
            } else {
                rng.below(len as u64) as usize
            };
            let slow_digits = from
                + b[from..]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .unwrap_or(len - from);
            assert_eq!(digits(&b, from), slow_digits, "{b:?} from {from}");
            let slow_stop = b[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|n| (from + n, b[from..from + n].iter().any(|&c| c >= 0x80)));
            assert_eq!(string_stop(&b, from), slow_stop, "{b:?} from {from}");
        }
    }

    /// Long plain runs (where the 32-byte scan goes on past a chunk) ending anywhere
    /// in a chunk, with non-ASCII bytes before or after the stop: both scans find what
    /// a byte scan finds.
    #[test]
    fn string_scans_agree_with_a_byte_scan_on_long_strings() {
        let mut rng = eventide_simulator::Rng::new(10);
        let plain = b"abcXYZ019 .:,{}[]-\x7f";
        let rare = b"\"\\\x00\x01\x1f\xc3\xa9\x80\xff";
        for _ in 0..20_000 {
            let len = rng.below(130) as usize;
            let b: Vec<u8> = (0..len)
                .map(|_| match rng.below(40) {
                    0 => rare[rng.below(rare.len() as u64) as usize],
                    _ => plain[rng.below(plain.len() as u64) as usize],
                })
                .collect();
            let from = rng.below(len as u64 + 1) as usize;
            let slow = b[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .map(|n| (from + n, b[from..from + n].iter().any(|&c| c >= 0x80)));
            assert_eq!(string_stop(&b, from), slow, "{b:?} from {from}");
            assert_eq!(string_stop_words(&b, from), slow, "{b:?} from {from}");
        }
    }
}
