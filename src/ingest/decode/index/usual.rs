//! The layout devices send, read straight through, before any structural index.
//!
//! Nearly every message is `{"eventId":"…","deviceId":"…","deviceSequenceNumber":N,
//! "type":"…","value":N,"createdAt":"…","complexData":{…}}` with no spaces: the fields
//! in this order, plain strings, a flat `complexData`. Such a message is read key by
//! key with compares of known length, each string with one vector scan for its closing
//! quote and each number with a word-wise digit scan, and `complexData` by
//! [`flat::object_len`]. Stage 1 then never runs: it would classify every byte of the
//! fields only for the walk to find a few quotes and digits among them.
//!
//! Like the rest of the fast path this only accepts: any other order, a space, an
//! escape, a control character, an exponent, a missing or extra member, a nested
//! `complexData` gives `None`, and the walk (or the scalar decoder) decides.

use std::borrow::Cow;

use super::super::{Event, digits, string_stop_avx2};
use super::{MAX_INT_DIGITS, MAX_NUMBER_LEN, exactly as key, flat, number_value};
use crate::event::MinuteCache;

/// The event in `b` if it is in the usual layout (see the module docs). `createdAt` is
/// read through `minutes`.
///
/// # Safety
/// The CPU must have AVX2, PCLMULQDQ, BMI1 and BMI2.
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
pub unsafe fn event<'a>(b: &'a [u8], minutes: &mut MinuteCache) -> Option<Event<'a>> {
    // SAFETY (each `text`): this function's caller's CPU has AVX2.
    let (event_id, p) = unsafe { text(b, key(b, 0, b"{\"eventId\":\"")?) }?;
    let (device_id, p) = unsafe { text(b, key(b, p, b",\"deviceId\":\"")?) }?;
    let p = key(b, p, b",\"deviceSequenceNumber\":")?;
    let e = digits(b, p);
    // An integer without a leading zero, small enough for a u64 (as the walk takes it).
    if e == p || e - p > 19 || (b[p] == b'0' && e - p > 1) {
        return None;
    }
    let seq = b[p..e]
        .iter()
        .fold(0u64, |n, &d| n * 10 + (d - b'0') as u64);
    let (kind, p) = unsafe { text(b, key(b, e, b",\"type\":\"")?) }?;
    let p = key(b, p, b",\"value\":")?;
    let e = number_end(b, p)?;
    let value = number_value(&b[p..e])?;
    let (created_at, p) = unsafe { text(b, key(b, e, b",\"createdAt\":\"")?) }?;
    let p = key(b, p, b",\"complexData\":")?;
    let e = match b.get(p) {
        // SAFETY: the caller's CPU has the features; `b[p]` is a `{` outside any
        // string (it follows a key and its colon).
        Some(b'{') => p + unsafe { flat::object_len(&b[p..]) }?,
        _ => key(b, p, b"null")?,
    };
    if e + 1 != b.len() || b[e] != b'}' || event_id.is_empty() || device_id.is_empty() {
        return None;
    }
    Some(Event {
        event_id: Cow::Borrowed(event_id),
        device_id: Cow::Borrowed(device_id),
        seq,
        kind: Cow::Borrowed(kind),
        value,
        ts: minutes.parse(created_at)?,
    })
}

/// The string whose first byte is at `p` (just after its opening quote), if it has no
/// escapes or control characters and is valid UTF-8, and where after its closing quote.
///
/// # Safety
/// The CPU must have AVX2. (Inlined into [`event`], which has the feature, so that the
/// vector scan is inlined too.)
#[inline(always)]
unsafe fn text(b: &[u8], p: usize) -> Option<(&str, usize)> {
    // SAFETY: the caller's CPU has AVX2. (It scans word by word what is left under
    // 32 bytes.)
    let (e, non_ascii) = unsafe { string_stop_avx2(b, p) }?;
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
/// walk's limits ([`MAX_INT_DIGITS`], [`MAX_NUMBER_LEN`]).
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
