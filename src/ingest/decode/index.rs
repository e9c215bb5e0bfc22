//! The fast path of [`decode`](super::decode): the usual layout read straight through
//! ([`usual`]), else a structural index and a walk over it.
//!
//! Stage 1 (simdjson's idea, AVX2, 64 bytes per round) classifies every byte of a
//! block at once into three bitmaps: quotes, *token* bytes (outside strings and not
//! `{}[]:,"` or a space: the bytes of numbers and literals) and digits. Stage 2 walks
//! the message with them: a string ends at the next quote bit, a number is its runs of
//! digit bits (before and after a dot), a literal is its run of token bits. No
//! byte-at-a-time loops, so the ~20 members of a typical `complexData` cost a few bit
//! operations each.
//!
//! Stage 1 runs just ahead of the walk, a block at a time as the walk reaches it. A
//! flat object member (the usual `complexData`, most of the message) is checked by
//! [`flat::object_len`], which classifies its bytes itself; stage 1 then resumes after
//! it, so those bytes are classified once, not twice.
//!
//! The fast path only ever *accepts*: anything unusual (escapes, control characters,
//! tabs, exponents, nesting deeper than [`MAX_DEPTH`], a missing or ill-typed field,
//! any syntax error) makes it return `None`, and the scalar decoder then decides and
//! explains. So the two agree by construction on every rejection, and the tests check
//! that they agree on every acceptance.

use std::borrow::Cow;

use super::{Event, FIELDS};
use crate::event::{MinuteCache, parse_rfc3339_ms};

/// Deeper nesting than this goes to the scalar decoder (which allows up to 128).
const MAX_DEPTH: usize = 64;

/// Reusable bitmaps: per 64-byte block, `[token, quote, digit]`, plus one zero block.
pub struct Index {
    masks: Vec<u64>,
    /// The CPU has AVX2, PCLMULQDQ, BMI1 and BMI2 (asked once, not per message).
    simd: bool,
    /// The minute of the last `createdAt` the usual layout's reader read.
    minutes: MinuteCache,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            masks: Vec::new(),
            simd: simd_available(),
            minutes: MinuteCache::default(),
        }
    }
}

/// Whether this CPU has the instructions the fast path is compiled for (stage 1, the
/// flat check): AVX2, PCLMULQDQ, BMI1 and BMI2.
pub(crate) fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
        && std::arch::is_x86_feature_detected!("bmi1")
        && std::arch::is_x86_feature_detected!("bmi2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

const TOKEN: usize = 0;
const QUOTE: usize = 1;
const DIGIT: usize = 2;

impl Index {
    /// The event in `b`, if the fast path can take it; `None` means "ask the scalar
    /// decoder" (which may well accept it).
    pub fn decode<'a>(&mut self, b: &'a [u8]) -> Option<Event<'a>> {
        match self.usual(b) {
            Some(event) => Some(event),
            None => self.walked(b),
        }
    }

    /// The event in `b` if it is in the usual layout (see [`usual`]).
    #[inline]
    pub(super) fn usual<'a>(&mut self, b: &'a [u8]) -> Option<Event<'a>> {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: the CPU has the features (`simd`).
            return unsafe { usual::event(b, &mut self.minutes) };
        }
        None
    }

    /// The event in `b` as the walk over the structural index reads it.
    pub(super) fn walked<'a>(&mut self, b: &'a [u8]) -> Option<Event<'a>> {
        let mut walk = self.walk(b)?;
        let event = walk.event()?;
        (!walk.failed).then_some(event)
    }

    /// A walk over `b` (no bitmaps built yet), if this CPU has the instructions for it.
    fn walk<'a, 'm>(&'m mut self, b: &'a [u8]) -> Option<Walk<'a, 'm>> {
        if !self.simd {
            return None;
        }
        // Every word is written by stage 1 before the walk reads it (no clearing).
        let blocks = b.len().div_ceil(64);
        let words = 3 * (blocks + 1);
        if self.masks.len() < words {
            self.masks.resize(words, 0);
        }
        Some(Walk {
            b,
            m: &mut self.masks,
            blocks,
            built: 0,
            stage1: Stage1::default(),
            utf8_checked: false,
            failed: false,
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod flat;
#[cfg(target_arch = "x86_64")]
mod usual;

/// The 64 bytes of `b` from `at`, or what is left of them padded with spaces (in
/// `tail`): one round of the 64-byte classifiers.
#[inline(always)]
fn chunk64<'t>(b: &'t [u8], at: usize, tail: &'t mut [u8; 64]) -> &'t [u8] {
    if at + 64 <= b.len() {
        &b[at..at + 64]
    } else {
        tail[..b.len() - at].copy_from_slice(&b[at..]);
        &tail[..]
    }
}

/// The prefix XOR of `x`'s bits (bit i = parity of bits 0..=i): with quote bits, the
/// in-string mask.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "pclmulqdq")]
fn prefix_xor(x: u64) -> u64 {
    use std::arch::x86_64::*;
    let all = _mm_set1_epi8(-1);
    _mm_cvtsi128_si64(_mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), all, 0)) as u64
}

/// What stage 1 carries from one block to the next.
struct Stage1 {
    /// All ones when the next block starts inside a string.
    in_string: u64,
    /// Quote bits of the next block to count (all but those before a resume point).
    quotes_from: u64,
}

impl Default for Stage1 {
    fn default() -> Self {
        Stage1 {
            in_string: 0,
            quotes_from: !0,
        }
    }
}

/// What stage 1 found in the blocks it built, besides their bitmaps.
struct Found {
    /// A backslash or a control character (the scalar path's business).
    escape_or_control: bool,
    /// A byte ≥ 0x80.
    non_ascii: bool,
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Found, Stage1};

    /// Fills the bitmaps of `b`'s 64-byte blocks `from..to` (3 words each, in `masks`)
    /// and carries `state` across them.
    #[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
    pub unsafe fn build(
        b: &[u8],
        masks: &mut [u64],
        from: usize,
        to: usize,
        state: &mut Stage1,
    ) -> Found {
        let quote = _mm256_set1_epi8(b'"' as i8);
        let backslash = _mm256_set1_epi8(b'\\' as i8);
        let space = _mm256_set1_epi8(b' ' as i8);
        let ctrl_max = _mm256_set1_epi8(0x1f);
        let lower = _mm256_set1_epi8(0x20);
        let open = _mm256_set1_epi8(b'{' as i8); // '[' | 0x20
        let close = _mm256_set1_epi8(b'}' as i8); // ']' | 0x20
        let colon = _mm256_set1_epi8(b':' as i8);
        let comma = _mm256_set1_epi8(b',' as i8);
        let zero_char = _mm256_set1_epi8(b'0' as i8);
        let nine = _mm256_set1_epi8(9);

        let mut bad = _mm256_setzero_si256();
        let mut high = _mm256_setzero_si256();
        let mut tail = [b' '; 64];
        let n = b.len();
        for block in from..to {
            let at = 64 * block;
            let chunk = super::chunk64(b, at, &mut tail);
            // SAFETY: `chunk` holds 64 bytes; unaligned loads.
            let (v0, v1) = unsafe {
                (
                    _mm256_loadu_si256(chunk.as_ptr().cast()),
                    _mm256_loadu_si256(chunk.as_ptr().add(32).cast()),
                )
            };
            let mut classify = |v: __m256i| -> (u32, u32, u32) {
                let q = _mm256_cmpeq_epi8(v, quote);
                let ctrl = _mm256_cmpeq_epi8(_mm256_min_epu8(v, ctrl_max), v);
                bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpeq_epi8(v, backslash), ctrl));
                high = _mm256_or_si256(high, v);
                let l = _mm256_or_si256(v, lower);
                let structural = _mm256_or_si256(
                    _mm256_or_si256(_mm256_cmpeq_epi8(l, open), _mm256_cmpeq_epi8(l, close)),
                    _mm256_or_si256(_mm256_cmpeq_epi8(v, colon), _mm256_cmpeq_epi8(v, comma)),
                );
                let not_token =
                    _mm256_or_si256(_mm256_or_si256(q, structural), _mm256_cmpeq_epi8(v, space));
                let d = _mm256_sub_epi8(v, zero_char);
                let digit = _mm256_cmpeq_epi8(_mm256_min_epu8(d, nine), d);
                (
                    _mm256_movemask_epi8(not_token) as u32,
                    _mm256_movemask_epi8(q) as u32,
                    _mm256_movemask_epi8(digit) as u32,
                )
            };
            let (nt0, q0, d0) = classify(v0);
            let (nt1, q1, d1) = classify(v1);
            let q = (q0 as u64 | (q1 as u64) << 32) & state.quotes_from;
            state.quotes_from = !0;
            let mut not_token = nt0 as u64 | (nt1 as u64) << 32;
            if at + 64 > n {
                // The padding after the message is not part of any token.
                not_token |= !0 << (n - at);
            }
            // Inside a string: from an opening quote (included) to its closing quote
            // (excluded): the prefix XOR of the quote bits (no escapes here).
            let in_string = super::prefix_xor(q) ^ state.in_string;
            state.in_string = ((in_string as i64) >> 63) as u64;
            let m = &mut masks[3 * block..3 * block + 3];
            m[super::TOKEN] = !(not_token | in_string);
            m[super::QUOTE] = q;
            m[super::DIGIT] = d0 as u64 | (d1 as u64) << 32;
        }
        Found {
            escape_or_control: _mm256_testz_si256(bad, bad) == 0,
            non_ascii: _mm256_movemask_epi8(high) != 0,
        }
    }
}

/// Stage 2: the message and its bitmaps, built by stage 1 as the walk reaches them.
struct Walk<'a, 'm> {
    b: &'a [u8],
    m: &'m mut [u64],
    /// Blocks of the message (the zero block after them is block `blocks`).
    blocks: usize,
    /// Blocks `..built` have their bitmaps (as have some before a resume point, see
    /// [`Self::resume_at`]), counting the zero block once it is written.
    built: usize,
    stage1: Stage1,
    /// The whole message was found to be valid UTF-8.
    utf8_checked: bool,
    /// Stage 1 found what only the scalar path takes: the bitmaps from there on are
    /// zero, so the walk soon stops, and its answer is not used.
    failed: bool,
}

impl<'a> Walk<'a, '_> {
    /// 64 bits of bitmap `k` from byte `s` on (`s` < the message length).
    #[inline(always)]
    fn bits(&mut self, k: usize, s: usize) -> u64 {
        let (w, o) = (s >> 6, s & 63);
        if w + 2 > self.built {
            self.build(w + 2);
        }
        // This block's words and the next one's: one bounds check.
        let m = &self.m[3 * w..3 * w + 6];
        let lo = m[k] >> o;
        if o == 0 {
            lo
        } else {
            lo | m[3 + k] << (64 - o)
        }
    }

    /// Bitmap `k` of block `w` (< the number of blocks).
    #[inline(always)]
    fn block(&mut self, k: usize, w: usize) -> u64 {
        if w + 1 > self.built {
            self.build(w + 1);
        }
        self.m[3 * w + k]
    }

    /// Stage 1 up to block `to` (at most `blocks + 1`: the zero block).
    #[inline(never)]
    fn build(&mut self, to: usize) {
        let end = to.min(self.blocks);
        if self.built < end {
            #[cfg(target_arch = "x86_64")]
            {
                // SAFETY: a walk exists only on a CPU with AVX2, PCLMULQDQ and BMI (see
                // `Index::walk`); `masks` holds 3 words per block and the zero block.
                let found =
                    unsafe { avx2::build(self.b, self.m, self.built, end, &mut self.stage1) };
                let valid = !found.escape_or_control
                    && (!found.non_ascii
                        || self.utf8_checked
                        || std::str::from_utf8(self.b).is_ok());
                if !valid {
                    self.fail(self.built);
                    return;
                }
                self.utf8_checked |= found.non_ascii;
            }
            self.built = end;
        }
        if to > self.blocks && self.built == self.blocks {
            // One zero block after the last, for reads of 64 bits that straddle it.
            self.m[3 * self.blocks..3 * self.blocks + 3].fill(0);
            self.built = self.blocks + 1;
        }
    }

    /// Stage 1 found something the fast path does not take, in block `from` or later.
    #[cold]
    fn fail(&mut self, from: usize) {
        self.m[3 * from..3 * (self.blocks + 1)].fill(0);
        self.built = self.blocks + 1;
        self.failed = true;
    }

    /// The walk goes on at `p`, outside any string, after an object [`flat::object_len`]
    /// checked: stage 1 need not classify its bytes, and resumes at `p` (the quote bits
    /// before it in its block do not count).
    #[inline]
    fn resume_at(&mut self, p: usize) {
        let w = p >> 6;
        if w > self.built {
            self.built = w;
            self.stage1 = Stage1 {
                in_string: 0,
                quotes_from: !0 << (p & 63),
            };
        }
    }

    #[inline(always)]
    fn at(&self, p: usize) -> u8 {
        self.b.get(p).copied().unwrap_or(0)
    }

    /// The first non-space at or after `p` (tabs and newlines never get here).
    #[inline(always)]
    fn ws(&self, mut p: usize) -> usize {
        while self.at(p) == b' ' {
            p += 1;
        }
        p
    }

    /// The closing quote of the string that opens at `s`.
    #[inline(always)]
    fn string_end(&mut self, s: usize) -> Option<usize> {
        // Block by block, so that stage 1 has built no block past the quote (the one
        // after a key may be a flat object's, which stage 1 need not classify).
        let p = s + 1;
        let mut w = p >> 6;
        let mut x = self.block(QUOTE, w) & (!0 << (p & 63));
        while x == 0 {
            w += 1;
            if w >= self.blocks {
                return None;
            }
            x = self.block(QUOTE, w);
        }
        Some(64 * w + x.trailing_zeros() as usize)
    }

    /// The string that opens at `s` (checked by stage 1: no escapes or control
    /// characters, valid UTF-8), and the position after it.
    #[inline(always)]
    fn string(&mut self, s: usize) -> Option<(&'a str, usize)> {
        let e = self.string_end(s)?;
        let bytes = &self.b[s + 1..e];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: stage 1 checked the whole message is UTF-8; a range between two
        // ASCII quotes of valid UTF-8 is valid UTF-8 too.
        Some((unsafe { std::str::from_utf8_unchecked(bytes) }, e + 1))
    }

    /// The token (number or literal) that starts at `s`: its end.
    #[inline(always)]
    fn token_end(&mut self, s: usize) -> Option<usize> {
        let len = (!self.bits(TOKEN, s)).trailing_zeros() as usize;
        (len > 0 && len < 64).then_some(s + len)
    }

    /// The number that starts at `s`: its end, and whether it is an integer. Only
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` of up to 62 bytes, followed by `,` `}` `]`, a space
    /// or the end; anything else (an exponent, say) goes the scalar way. The digit runs
    /// come from one read of the digit bitmap: first of the number's own block only,
    /// which decides any number that ends in it (nearly all), so that stage 1 need not
    /// build the next block (often a flat object's, which it need not classify).
    #[inline(always)]
    fn number(&mut self, s: usize) -> Option<(usize, bool)> {
        // A branch, not arithmetic: the next member's position then does not wait for
        // this byte to load (the walk is a chain of such dependencies).
        let d = if self.at(s) == b'-' {
            if s + 1 >= self.b.len() {
                return None;
            }
            s + 1
        } else {
            s
        };
        let b = self.b;
        // The length from `d` and whether it is an integer, from digit bits `x` from `d`.
        let shape = |x: u64| {
            let int_len = (!x).trailing_zeros() as usize;
            if int_len == 0 || int_len > MAX_INT_DIGITS || (b[d] == b'0' && int_len > 1) {
                return None;
            }
            if b.get(d + int_len) != Some(&b'.') {
                return Some((int_len, true));
            }
            let frac = (!(x >> (int_len + 1))).trailing_zeros() as usize;
            if frac == 0 || int_len + 1 + frac > MAX_NUMBER_LEN {
                return None;
            }
            Some((int_len + 1 + frac, false))
        };
        let (w, o) = (d >> 6, d & 63);
        let (len, int) = match shape(self.block(DIGIT, w) >> o) {
            // Decided by bits of this block (the bits past it read as non-digits).
            Some((len, int)) if len < 64 - o => (len, int),
            _ => shape(self.bits(DIGIT, d))?,
        };
        let e = d + len;
        NUMBER_END[self.at(e) as usize].then_some((e, int))
    }

    /// Skips the value at `p` (after any space): the position after it.
    fn skip(&mut self, p: usize, depth: usize) -> Option<usize> {
        match self.at(p) {
            b'"' => Some(self.string_end(p)? + 1),
            b'-' | b'0'..=b'9' => Some(self.number(p)?.0),
            b't' | b'f' | b'n' => {
                let e = self.token_end(p)?;
                matches!(&self.b[p..e], b"true" | b"false" | b"null").then_some(e)
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                // A member's object value (a `complexData`) is usually flat: checked
                // all at once. Deeper objects are walked (they are rarely flat).
                #[cfg(target_arch = "x86_64")]
                if depth == 1 {
                    // SAFETY: a walk exists only on a CPU with AVX2, PCLMULQDQ and BMI
                    // (see `Index::walk`), and `p` is a `{` outside any string.
                    if let Some(len) = unsafe { flat::object_len(&self.b[p..]) } {
                        self.resume_at(p + len);
                        return Some(p + len);
                    }
                }
                let mut p = self.ws(p + 1);
                if self.at(p) == b'}' {
                    return Some(p + 1);
                }
                loop {
                    if self.at(p) != b'"' {
                        return None;
                    }
                    p = self.string_end(p)? + 1;
                    // Spaces are rare: look for them only where the byte is not the
                    // expected one.
                    if self.at(p) != b':' {
                        p = self.ws(p);
                        if self.at(p) != b':' {
                            return None;
                        }
                    }
                    p += 1;
                    // Numbers inline: the usual member of a `complexData`.
                    p = match self.at(p) {
                        b'0'..=b'9' | b'-' => self.number(p)?.0,
                        b' ' => self.skip(self.ws(p), depth + 1)?,
                        _ => self.skip(p, depth + 1)?,
                    };
                    match self.at(p) {
                        b',' => p += 1,
                        b'}' => return Some(p + 1),
                        b' ' => {
                            p = self.ws(p);
                            match self.at(p) {
                                b',' => p += 1,
                                b'}' => return Some(p + 1),
                                _ => return None,
                            }
                        }
                        _ => return None,
                    }
                    if self.at(p) == b' ' {
                        p = self.ws(p);
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let mut p = self.ws(p + 1);
                if self.at(p) == b']' {
                    return Some(p + 1);
                }
                loop {
                    p = self.skip(p, depth + 1)?;
                    p = self.ws(p);
                    match self.at(p) {
                        b',' => p = self.ws(p + 1),
                        b']' => return Some(p + 1),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// A string field's value at `p`: `None` unless it is a string not seen before.
    #[inline(always)]
    fn text_field(&mut self, p: usize, slot: &mut Option<&'a str>) -> Option<usize> {
        if slot.is_some() || self.at(p) != b'"' {
            return None;
        }
        let (s, e) = self.string(p)?;
        *slot = Some(s);
        Some(e)
    }

    /// Whether the key of field `field` (one of [`EVENT_ID`]…[`COMPLEX_DATA`]) and
    /// its colon are at `p`, exactly (`"eventId":`): where after them. Messages from
    /// one producer have one layout, so the expected key is usually the next one, and
    /// a compare of a few bytes of known length replaces finding the key's end and
    /// matching it against every field name.
    #[inline(always)]
    fn usual_key(&self, p: usize, field: usize) -> Option<usize> {
        let b = self.b;
        match field {
            EVENT_ID => exactly(b, p, b"\"eventId\":"),
            DEVICE_ID => exactly(b, p, b"\"deviceId\":"),
            SEQUENCE => exactly(b, p, b"\"deviceSequenceNumber\":"),
            TYPE => exactly(b, p, b"\"type\":"),
            VALUE => exactly(b, p, b"\"value\":"),
            CREATED_AT => exactly(b, p, b"\"createdAt\":"),
            COMPLEX_DATA => exactly(b, p, b"\"complexData\":"),
            _ => None,
        }
    }

    /// The whole message as an event.
    fn event(&mut self) -> Option<Event<'a>> {
        let b = self.b;
        let mut p = self.ws(0);
        if self.at(p) != b'{' {
            return None;
        }
        let (mut event_id, mut device_id, mut kind, mut created_at) = (None, None, None, None);
        let (mut seq, mut value) = (None, None);
        let mut complex = false;
        // The field expected next, in the usual order (see [`Self::usual_key`]).
        let mut next = EVENT_ID;
        p = self.ws(p + 1);
        if self.at(p) != b'}' {
            loop {
                if self.at(p) != b'"' {
                    return None;
                }
                let field = match self.usual_key(p, next) {
                    Some(after) => {
                        p = after;
                        next
                    }
                    None => {
                        let (key, e) = self.string(p)?;
                        p = self.ws(e);
                        if self.at(p) != b':' {
                            return None;
                        }
                        p += 1;
                        KEYS.iter().position(|&k| k == key).unwrap_or(OTHER)
                    }
                };
                if field != OTHER {
                    next = field + 1;
                }
                p = self.ws(p);
                p = match field {
                    EVENT_ID => self.text_field(p, &mut event_id)?,
                    DEVICE_ID => self.text_field(p, &mut device_id)?,
                    TYPE => self.text_field(p, &mut kind)?,
                    CREATED_AT => self.text_field(p, &mut created_at)?,
                    SEQUENCE => {
                        if seq.is_some() || !self.at(p).is_ascii_digit() {
                            return None;
                        }
                        let (e, int) = self.number(p)?;
                        let digits = &b[p..e];
                        if !int || digits.len() > 19 {
                            return None; // not a u64, or perhaps too big: scalar
                        }
                        seq = Some(digits.iter().fold(0u64, |n, &d| n * 10 + (d - b'0') as u64));
                        e
                    }
                    VALUE => {
                        if value.is_some() {
                            return None;
                        }
                        let (e, _) = self.number(p)?;
                        value = Some(number_value(&b[p..e])?);
                        e
                    }
                    COMPLEX_DATA => {
                        if complex || !matches!(self.at(p), b'{' | b'n') {
                            return None;
                        }
                        complex = true;
                        self.skip(p, 1)?
                    }
                    _ => self.skip(p, 1)?,
                };
                p = self.ws(p);
                match self.at(p) {
                    b',' => p = self.ws(p + 1),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        if self.ws(p + 1) != b.len() {
            return None;
        }
        let (event_id, device_id) = (event_id?, device_id?);
        if event_id.is_empty() || device_id.is_empty() {
            return None;
        }
        Some(Event {
            event_id: Cow::Borrowed(event_id),
            device_id: Cow::Borrowed(device_id),
            seq: seq?,
            kind: Cow::Borrowed(kind?),
            value: value?,
            ts: parse_rfc3339_ms(created_at?)?,
        })
    }
}

/// Where after `k` if `b` holds exactly `k` at `p`: a compare of known length.
#[inline(always)]
fn exactly<const N: usize>(b: &[u8], p: usize, k: &[u8; N]) -> Option<usize> {
    (b.get(p..p + N)? == k).then_some(p + N)
}

/// The longest integer part a number may have on the fast path, and the longest
/// number after any minus (longer ones go the scalar way).
const MAX_INT_DIGITS: usize = 60;
const MAX_NUMBER_LEN: usize = 62;

/// The members the walk reads, by field number (the decoder's fields, then
/// `complexData`).
const KEYS: [&str; 7] = [
    FIELDS[0],
    FIELDS[1],
    FIELDS[2],
    FIELDS[3],
    FIELDS[4],
    FIELDS[5],
    "complexData",
];

// The fields of an event, in their usual order (see [`Walk::usual_key`]).
const EVENT_ID: usize = 0;
const DEVICE_ID: usize = 1;
const SEQUENCE: usize = 2;
const TYPE: usize = 3;
const VALUE: usize = 4;
const CREATED_AT: usize = 5;
const COMPLEX_DATA: usize = 6;
/// Any other member.
const OTHER: usize = 7;

/// Bytes that may follow a number (0 stands for the end of the message).
const NUMBER_END: [bool; 256] = {
    let mut t = [false; 256];
    t[0] = true;
    t[b',' as usize] = true;
    t[b'}' as usize] = true;
    t[b']' as usize] = true;
    t[b' ' as usize] = true;
    t
};

/// Powers of ten a double holds exactly.
const EXACT_POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The value of a number [`Walk::number`] accepted (`-?digits(.digits)?`). When its
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

    use super::{Index, KEYS, OTHER, number_value};

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
    fn each_usual_key_is_its_fields_key_and_colon() {
        for (f, name) in KEYS.iter().enumerate() {
            for (text, taken) in [
                (format!(r#"{{"{name}":1}}"#), true),
                (format!(r#"{{"{name}" :1}}"#), false),
                (format!(r#"{{"{name}x":1}}"#), false),
                (format!(r#"{{"{name}""#), false),
            ] {
                let mut index = Index::default();
                let Some(walk) = index.walk(text.as_bytes()) else {
                    return; // no AVX2 here: no walk
                };
                for g in 0..=OTHER {
                    let want = (taken && g == f).then_some(name.len() + 4);
                    assert_eq!(walk.usual_key(1, g), want, "{text} as field {g}");
                }
            }
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
