//! A flat object checked in one pass of bitwise equations, for the walk.
//!
//! A `complexData` is usually a flat object of numbers and strings
//! (`{"moreData0":42.07,"unit":"ppm",…}`). The walk reads it member by member, and each
//! member's position waits on the one before: a chain of dependent loads, ~20 links
//! long. Here the object's bytes are classified 64 at a time and its grammar is checked
//! as equations between shifted bitmaps, which hold at every position at once, so the
//! work on a block waits on the block before only for a few carried bits:
//!
//! - outside strings there are only `:` `,` spaces and number bytes (digits, `.`, `-`);
//! - a byte is a colon, a comma or the closing brace exactly when the last byte before
//!   it that is not a space ends an *atom* (a string or a run of number bytes), and
//!   the object starts with a string. So the object is `{` atom (separator atom)* `}`
//!   with spaces anywhere between them (`{"a": 1, "b": "x"}` as Python writes it).
//!   "The last byte before that is not a space" is one addition: adding a bitmap of
//!   bytes *after* a kind to the bitmap of spaces carries each bit through the run of
//!   spaces it starts, to the first byte after them;
//! - the separators alternate `:` `,` `:` … `:`, which the running parity of their
//!   count shows (a colon makes it odd, a comma even, and it is odd at the end); an
//!   atom after `{` or `,` is a string (a key);
//! - every run of number bytes is `-?(0|[1-9][0-9]*)(\.[0-9]+)?`.
//!
//! Like the rest of the fast path it only accepts: other whitespace (tabs, newlines),
//! a space right after the opening brace, literals, exponents, nesting, escapes,
//! control characters, invalid UTF-8 or anything else give `None`, and the reader then
//! walks the object member by member.

use std::arch::x86_64::*;

/// The prefix XOR of `x`'s bits (bit i = parity of bits 0..=i): with quote bits, the
/// in-string mask.
#[inline]
#[target_feature(enable = "pclmulqdq")]
fn prefix_xor(x: u64) -> u64 {
    let all = _mm_set1_epi8(-1);
    _mm_cvtsi128_si64(_mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), all, 0)) as u64
}

/// The length of the object that opens at `b[0]` (up to and including its closing
/// brace), if it is flat, has no whitespace but spaces (and none right after the
/// brace), and its values are numbers (as above) or
/// strings without escapes or control characters; and it is valid UTF-8. `None` for
/// anything else, valid JSON or not.
///
/// The blocks overlap: bit 0 of a block is the last byte checked, the byte before its
/// first new one (the opening brace, in the first block); a last block that would run
/// past the end of `b` ends where `b` does instead, so more of its bits were checked
/// before. So a bitmap shifted one byte later is just shifted, with no bit carried from
/// the block before; only the running states (in a string, separator parity, in a
/// fraction) and whether the last byte checked is a leading zero cross blocks. No byte
/// is counted or checked twice.
///
/// # Safety
/// The CPU must have AVX2, PCLMULQDQ, BMI1 and BMI2. `b[0]` must be a `{` outside any
/// string.
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
pub unsafe fn object_len(b: &[u8]) -> Option<usize> {
    debug_assert_eq!(b.first(), Some(&b'{'));
    match b.get(1) {
        Some(b'}') => return Some(2),
        Some(b'"') => {}
        _ => return None,
    }
    let mut state = State {
        in_string: 0,
        parity: 0,
        fraction: 0,
        lead_zero: 0,
        after_quote: 0,
        after_token: 0,
        after_comma: 0,
        unusual_seen: _mm256_setzero_si256(),
    };
    let n = b.len();
    // The last byte checked: bit 0 of the next block, as the blocks overlap.
    let mut at = 0;
    while let Some(chunk) = b[at..].first_chunk() {
        if let Some(outcome) = block::<true>(&mut state, b, chunk, at, 1) {
            return outcome;
        }
        at += 63;
    }
    if at + 1 < n {
        // The last new bytes: the block that ends where `b` does (no copy), or, for an
        // object shorter than a block, a copy padded with spaces.
        let mut tail = [b' '; 64];
        let (chunk, start) = match b.last_chunk() {
            Some(chunk) => (chunk, n - 64),
            None => {
                tail[..n].copy_from_slice(b);
                (&tail, 0)
            }
        };
        if let Some(outcome) = block::<false>(&mut state, b, chunk, start, at - start + 1) {
            return outcome;
        }
    }
    None
}

/// What a block passes to the next: all ones when the last byte checked is in a string
/// (from its opening quote to before its closing one), or after an odd number of
/// separators; 1 when a fraction's digits run through it, or it is a number's leading
/// zero; 1 when it is a space in a run after a closing quote, a number's byte or a
/// comma (the addition's carry, see [`reach`]); and the unusual bytes seen.
struct State {
    in_string: u64,
    parity: u64,
    fraction: u64,
    lead_zero: u64,
    after_quote: u64,
    after_token: u64,
    after_comma: u64,
    unusual_seen: __m256i,
}

/// The bytes that are not spaces whose last byte before, spaces aside, is one of `x`:
/// the bytes right after `x`, carried through the spaces after them by one addition.
/// `from` masks the bytes of `x` that count (the last byte checked and the new ones);
/// `carry` is 1 when a run of spaces reached from the block before goes on at bit
/// `first - 1`, the last byte checked, and is set for the next block.
#[inline(always)]
fn reach(x: u64, spaces: u64, from: u64, first: usize, carry: &mut u64) -> u64 {
    let start = (x & from) << 1 | *carry << (first - 1);
    let (sum, over) = spaces.overflowing_add(start);
    *carry = over as u64;
    sum & !spaces
}

/// One block of [`object_len`]'s object `b`: the 64 bytes from `b[start]` at `chunk`,
/// of which those from bit `first` on are new (1 but in a last block read back from
/// the end of `b`; bit `first - 1` is the last byte checked, the brace in the first
/// block). The outcome, if the object ends or fails here.
///
/// `WHOLE` only makes two copies: one for the blocks read whole, one for the last, so
/// that each is inlined where it is called, with `first` known in the first.
#[inline]
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
fn block<const WHOLE: bool>(
    st: &mut State,
    b: &[u8],
    chunk: &[u8; 64],
    start: usize,
    first: usize,
) -> Option<Option<usize>> {
    let new = !0u64 << first;
    // The bytes classified, in the order of the bitmaps below (digits come last).
    let splat = [b'"', b':', b',', b'}', b'.', b'-', b'0', b' '].map(|c| _mm256_set1_epi8(c as i8));
    let nine = _mm256_set1_epi8(9);
    // Backslashes, control characters and non-ASCII bytes (the unusual: checked byte
    // by byte when there are any), gathered in a vector; the bitmap is made only for
    // the last block, where bytes after the end don't count.
    let unusual = |v: __m256i| {
        let below_space_or_high = _mm256_cmpgt_epi8(_mm256_set1_epi8(0x20), v);
        _mm256_or_si256(
            _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8)),
            below_space_or_high,
        )
    };
    // SAFETY: `chunk` holds 64 bytes; unaligned loads.
    let (v0, v1) = unsafe {
        (
            _mm256_loadu_si256(chunk.as_ptr().cast()),
            _mm256_loadu_si256(chunk.as_ptr().add(32).cast()),
        )
    };
    let bits = |v: __m256i| {
        let d = _mm256_sub_epi8(v, splat[6]);
        let digit = _mm256_cmpeq_epi8(_mm256_min_epu8(d, nine), d);
        let mask = |x: __m256i| _mm256_movemask_epi8(x) as u32 as u64;
        let mut out = [mask(digit); 9];
        for (o, x) in out.iter_mut().zip(splat) {
            *o = mask(_mm256_cmpeq_epi8(v, x));
        }
        out
    };
    let (lo, hi) = (bits(v0), bits(v1));
    let [q, colon, comma, close, dot, minus, zero, space, digit] =
        std::array::from_fn(|i| lo[i] | hi[i] << 32);
    let (u0, u1) = (unusual(v0), unusual(v1));

    // Strings: from an opening quote (included) to its closing quote (excluded).
    let s = prefix_xor(q & new) ^ st.in_string;
    st.in_string = ((s as i64) >> 63) as u64;
    let (open_quote, close_quote, outside) = (q & s, q & !s, !(s | q));

    // The positions checked: the new ones, up to the first closing brace outside
    // strings (the object's end, since nothing may nest).
    let mut w = new;
    let end = close & outside & w;
    let end = end & end.wrapping_neg();
    if end != 0 {
        w &= end | (end - 1);
    }
    let (colon, comma) = (colon & outside, comma & outside);
    let (digit, dot, minus) = (digit & outside, dot & outside, minus & outside);
    let token = digit | dot | minus;
    let separator = colon | comma;
    let spaces = space & outside;
    let mut bad = outside & !(separator | token | spaces) & !end;

    // Each bitmap shifted one byte later: bit i says what byte i - 1 is; `reach`ed:
    // what the last byte before i that is not a space is.
    let after_token = token << 1;
    let token_start = token & !after_token;
    let from = !0u64 << (first - 1);
    let past_quote = reach(close_quote, spaces, from, first, &mut st.after_quote);
    let past_token = reach(token, spaces, from, first, &mut st.after_token);
    let past_comma = reach(comma, spaces, from, first, &mut st.after_comma);
    // (That an atom follows each separator then holds too: after a separator
    // comes neither a separator nor the end, and bytes of no kind are refused.)
    bad |= (past_quote | past_token & !token) ^ (separator | end);
    // A number's byte after spaces after a number's byte: two atoms.
    bad |= past_token & token & spaces << 1;
    let odd = prefix_xor(separator & new) ^ st.parity;
    st.parity = ((odd as i64) >> 63) as u64;
    bad |= colon & !odd | comma & odd | end & !odd;
    bad |= past_comma & !open_quote;

    // Numbers: a minus only first and before a digit; a dot between digits; no
    // leading zero; at most one dot (a carry added at the start of the digits
    // after a dot stops just after them, where no second dot may be).
    let (after_minus, after_dot) = (minus << 1, dot << 1);
    bad |= minus & after_token | after_minus & !digit;
    bad |= dot & !(digit << 1) | after_dot & !digit;
    // (Whether the last byte checked starts a number looks two bytes back: it comes
    // from the block before.)
    let lead_zero = zero & (token_start | after_minus) & new | st.lead_zero << (first - 1);
    st.lead_zero = lead_zero >> 63;
    bad |= lead_zero << 1 & digit;
    let digit_new = digit & new;
    let (sum, o1) = digit_new.overflowing_add(digit_new & after_dot);
    let (sum, o2) = sum.overflowing_add(st.fraction << first);
    st.fraction = (o1 | o2) as u64;
    bad |= sum & !digit & dot;

    if bad & w != 0 {
        return Some(None);
    }
    if end != 0 {
        let len = start + end.trailing_zeros() as usize + 1;
        let u = _mm256_movemask_epi8(u0) as u32 as u64 | (_mm256_movemask_epi8(u1) as u64) << 32;
        let plain = _mm256_testz_si256(st.unusual_seen, st.unusual_seen) != 0 && u & w == 0;
        return Some((plain || plain_utf8(&b[..len])).then_some(len));
    }
    st.unusual_seen = _mm256_or_si256(st.unusual_seen, _mm256_or_si256(u0, u1));
    None
}

/// Where the object or array that opens at `b[0]` ends (just past its closing bracket),
/// found 64 bytes at a time from its quotes and brackets; structure only, nothing
/// validated (the router's look past a member to the device id; the partition's decode
/// validates). `None` if a backslash comes first (the caller then scans byte by byte)
/// or it does not end.
///
/// # Safety
/// The CPU must have AVX2, PCLMULQDQ, BMI1 and BMI2. `b[0]` must be `{` or `[`.
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
pub unsafe fn container_end(b: &[u8]) -> Option<usize> {
    let (open, close) = match b.first() {
        Some(b'{') => (b'{', b'}'),
        _ => (b'[', b']'),
    };
    let [quote, backslash, open, close] =
        [b'"', b'\\', open, close].map(|c| _mm256_set1_epi8(c as i8));
    let mut depth = 0u32;
    let mut in_string = 0u64;
    let mut tail = [b' '; 64];
    let mut at = 0;
    while at < b.len() {
        let chunk: &[u8] = match b[at..].first_chunk::<64>() {
            Some(c) => c,
            None => {
                tail[..b.len() - at].copy_from_slice(&b[at..]);
                &tail
            }
        };
        // SAFETY: `chunk` holds 64 bytes; unaligned loads.
        let (v0, v1) = unsafe {
            (
                _mm256_loadu_si256(chunk.as_ptr().cast()),
                _mm256_loadu_si256(chunk.as_ptr().add(32).cast()),
            )
        };
        let mask = |x: __m256i| {
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(v0, x)) as u32 as u64
                | (_mm256_movemask_epi8(_mm256_cmpeq_epi8(v1, x)) as u32 as u64) << 32
        };
        if mask(backslash) != 0 {
            return None;
        }
        let s = prefix_xor(mask(quote)) ^ in_string;
        in_string = ((s as i64) >> 63) as u64;
        let (opens, closes) = (mask(open) & !s, mask(close) & !s);
        let mut marks = opens | closes;
        while marks != 0 {
            let k = marks.trailing_zeros();
            if opens >> k & 1 != 0 {
                depth += 1;
            } else {
                depth -= 1;
                if depth == 0 {
                    return Some(at + k as usize + 1);
                }
            }
            marks &= marks - 1;
        }
        at += 64;
    }
    None
}

/// Whether byte `k` of the message `b` (an object) is outside every string and directly
/// inside the top-level object: the quotes and brackets before it, counted 64 bytes at
/// a time, leave it outside strings at depth 1. `false` also when a backslash comes
/// before it (the caller then reads member by member).
///
/// # Safety
/// The CPU must have AVX2, PCLMULQDQ, BMI1 and BMI2.
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
pub unsafe fn at_top_level(b: &[u8], k: usize) -> bool {
    let Some((depth, in_string)) = (unsafe { brackets(b, 0, k) }) else {
        return false;
    };
    depth == 1 && in_string == 0
}

/// [`at_top_level`] read from the other end, for a `k` nearer the end of `b`: in a
/// valid message the brackets after `k` close exactly one more than they open, with
/// `k` opening a string (the caller checks that no backslash escapes it). A message
/// that is not valid JSON may be judged wrongly; its decode refuses it anyway.
///
/// # Safety
/// The CPU must have AVX2, PCLMULQDQ, BMI1 and BMI2.
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
pub unsafe fn at_top_level_from_end(b: &[u8], k: usize) -> bool {
    let Some((depth, in_string)) = (unsafe { brackets(b, k, b.len()) }) else {
        return false;
    };
    depth == -1 && in_string == 0
}

/// Over `b[from..to]`: opening brackets minus closing ones outside strings, and all
/// ones if `to` is inside a string (quotes counted from `from`, outside any string).
/// `None` if a backslash comes in between.
#[target_feature(enable = "avx2,pclmulqdq,bmi1,bmi2")]
unsafe fn brackets(b: &[u8], from: usize, to: usize) -> Option<(i64, u64)> {
    let k = to;
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    // `[` and `]` are `{` and `}` with bit 5 clear.
    let (lower, open, close) = (
        _mm256_set1_epi8(0x20),
        _mm256_set1_epi8(b'{' as i8),
        _mm256_set1_epi8(b'}' as i8),
    );
    let mut depth = 0i64;
    let mut in_string = 0u64;
    let mut escapes = _mm256_setzero_si256();
    // One block: its quote, opening and closing bitmaps (backslashes gathered).
    let block = |chunk: &[u8; 64]| {
        // SAFETY: `chunk` holds 64 bytes; unaligned loads.
        let (v0, v1) = unsafe {
            (
                _mm256_loadu_si256(chunk.as_ptr().cast()),
                _mm256_loadu_si256(chunk.as_ptr().add(32).cast()),
            )
        };
        let bits = |m0: __m256i, m1: __m256i| {
            _mm256_movemask_epi8(m0) as u32 as u64 | (_mm256_movemask_epi8(m1) as u32 as u64) << 32
        };
        let (l0, l1) = (_mm256_or_si256(v0, lower), _mm256_or_si256(v1, lower));
        let (e0, e1) = (
            _mm256_cmpeq_epi8(v0, backslash),
            _mm256_cmpeq_epi8(v1, backslash),
        );
        (
            bits(_mm256_cmpeq_epi8(v0, quote), _mm256_cmpeq_epi8(v1, quote)),
            bits(_mm256_cmpeq_epi8(l0, open), _mm256_cmpeq_epi8(l1, open)),
            bits(_mm256_cmpeq_epi8(l0, close), _mm256_cmpeq_epi8(l1, close)),
            _mm256_or_si256(e0, e1),
        )
    };
    let mut at = from;
    while let Some(chunk) = b.get(at..k).and_then(|r| r.first_chunk::<64>()) {
        let (q, o, c, e) = block(chunk);
        escapes = _mm256_or_si256(escapes, e);
        let s = prefix_xor(q) ^ in_string;
        in_string = ((s as i64) >> 63) as u64;
        depth += (o & !s).count_ones() as i64 - (c & !s).count_ones() as i64;
        at += 64;
    }
    if _mm256_testz_si256(escapes, escapes) == 0 {
        return None;
    }
    if at < k {
        // The last bytes before `k`, from a block of `b` (or a copy padded with spaces).
        let mut tail = [b' '; 64];
        let chunk = match b[at..].first_chunk::<64>() {
            Some(c) => c,
            None => {
                tail[..b.len() - at].copy_from_slice(&b[at..]);
                &tail
            }
        };
        let valid = (1u64 << (k - at)) - 1;
        let (q, o, c, e) = block(chunk);
        let e = _mm256_movemask_epi8(e) as u32 as u64;
        // (`e` folds the two halves: bit i is byte i or byte 32 + i.)
        if e & (valid | valid >> 32) != 0 {
            return None;
        }
        let s = prefix_xor(q & valid) ^ in_string;
        in_string = ((s as i64) >> 63) as u64;
        depth += (o & !s & valid).count_ones() as i64 - (c & !s & valid).count_ones() as i64;
    }
    Some((depth, in_string))
}

/// Whether `b` is valid UTF-8 without backslashes or control characters.
#[cold]
fn plain_utf8(b: &[u8]) -> bool {
    !b.iter().any(|&c| c == b'\\' || c < 0x20) && std::str::from_utf8(b).is_ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::object_len;

    fn check(b: &[u8]) -> Option<usize> {
        if !super::super::fast::simd_available() {
            return None;
        }
        // SAFETY: the features were just checked; the inputs have no backslash or
        // control character, and start with `{`.
        unsafe { object_len(b) }
    }

    /// Where the value at 0 ends, as serde_json reads it (`None` if it is not JSON).
    fn json_end(b: &[u8]) -> Option<usize> {
        let mut values = serde_json::Deserializer::from_slice(b).into_iter::<Value>();
        values.next()?.ok()?;
        Some(values.byte_offset())
    }

    /// Whether `b` is a JSON object whose values are all numbers or strings.
    fn flat_json(b: &[u8]) -> bool {
        match serde_json::from_slice::<Value>(b) {
            Ok(Value::Object(o)) => o.values().all(|v| v.is_number() || v.is_string()),
            _ => false,
        }
    }

    fn member() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            4 => "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?",
            1 => "\"[a-z0-9 :,{}\\[\\]é✓-]{0,10}\"",
        ];
        // Spaces around the colon as writers put them: none, Python's `": "`, more.
        let colon = prop::sample::select(vec![":", ":", ": ", " : ", ":   "]);
        ("[a-zA-Z0-9 :,{}\\[\\]é.-]{0,12}", colon, value)
            .prop_map(|(k, c, v)| format!("\"{k}\"{c}{v}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        /// Valid flat objects of any length (crossing 64-byte blocks anywhere) are taken
        /// whole, with what follows them left alone.
        #[test]
        fn flat_objects_are_taken(
            pad in 0usize..64,
            sep in prop::sample::select(vec![",", ", ", " , ", ",  "]),
            members in prop::collection::vec(member(), 0..30),
            rest in prop::sample::select(vec!["", "}", ",\"x\":1}", " ", "\"}\""]),
        ) {
            let object = format!("{{{}}}", members.join(sep));
            let text = format!("{}{object}{rest}", " ".repeat(pad));
            prop_assert_eq!(check(&text.as_bytes()[pad..]), Some(object.len()), "{}", text);
        }

        /// Up to three edits of a flat object: whatever the check takes is a flat JSON
        /// object, and the walk ends it at the same place.
        #[test]
        fn what_the_check_takes_is_a_flat_object(
            members in prop::collection::vec(member(), 1..12),
            edits in prop::collection::vec((0usize..1000, 0u8..3, prop::sample::select(b"{}[]\",:0123456789.eE+- tfnul\\\t\x01\xc3\xa9\xff".to_vec())), 1..4),
        ) {
            let mut b = format!("{{{}}},\"x\":[1]}}", members.join(",")).into_bytes();
            for (pos, op, byte) in edits {
                let pos = 1 + pos % (b.len() - 1);
                match op {
                    0 => { b.remove(pos); }
                    1 => b.insert(pos, byte),
                    _ => b[pos] = byte,
                }
            }
            if let Some(len) = check(&b) {
                prop_assert!(flat_json(&b[..len]), "took {}", String::from_utf8_lossy(&b[..len]));
                prop_assert_eq!(json_end(&b[..len]), Some(len), "{}", String::from_utf8_lossy(&b));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The bracket scan ends a valid object or array (of any length, nested, with
        /// brackets and quotes inside strings) where serde_json does.
        #[test]
        fn the_bracket_scan_ends_values_where_json_does(
            pad in 0usize..64,
            parts in prop::collection::vec(prop::sample::select(vec![
                "{\"a\":", "[", "1", "\"x]}{[\"", "\"é\"", "true", "null", "{}", "[]",
            ]), 0..40),
            array in any::<bool>(),
            rest in prop::sample::select(vec!["", "}", ",\"k\":1}", "]]"]),
        ) {
            if !super::super::fast::simd_available() {
                return Ok(());
            }
            // Nest the parts: each opener is closed by the end, members joined by commas.
            let mut text = String::from(if array { "[" } else { "{\"k\":[" });
            let mut closers = vec![if array { "]" } else { "]}" }];
            let mut first = true;
            for p in parts {
                if !first && !text.ends_with(['[', ':']) {
                    text.push(',');
                }
                first = false;
                text.push_str(p);
                match p {
                    "{\"a\":" => { text.push('['); closers.push("]}"); }
                    "[" => closers.push("]"),
                    _ => {}
                }
            }
            while let Some(c) = closers.pop() {
                text.push_str(c);
            }
            let padded = format!("{}{text}{rest}", " ".repeat(pad));
            let b = &padded.as_bytes()[pad..];
            let want = json_end(&b[..text.len()]);
            prop_assert_eq!(want, Some(text.len()), "{}", text);
            // SAFETY: the features were just checked; `b[0]` is a bracket.
            prop_assert_eq!(unsafe { super::container_end(b) }, want, "{}", padded);
            // Every position's depth and string state, byte by byte, against the
            // 64-byte count (for an object: depth 1 is its top level).
            let (mut depth, mut in_string) = (0i64, false);
            for (k, &c) in b.iter().enumerate() {
                // SAFETY: as above; `k` is within `b`.
                let fast = unsafe { super::at_top_level(b, k) };
                prop_assert_eq!(fast, depth == 1 && !in_string, "at {} of {}", k, padded);
                if c == b'"' && !in_string && !array && b.len() == text.len() {
                    // A string's opening quote, in a valid object: the same from the end.
                    // SAFETY: as above.
                    let from_end = unsafe { super::at_top_level_from_end(b, k) };
                    prop_assert_eq!(from_end, depth == 1, "from the end at {} of {}", k, padded);
                }
                match c {
                    b'"' => in_string = !in_string,
                    b'{' | b'[' if !in_string => depth += 1,
                    b'}' | b']' if !in_string => depth -= 1,
                    _ => {}
                }
            }
        }
    }

    /// Pieces of objects, good and bad, for [`shuffled_pieces_are_judged_as_serde_json_does`].
    const PIECES: [&str; 16] = [
        "\"k\"", "\"\"", "\"}:,\"", "1", "-0.5", "10", "0", "1.2.3", "-", "01", ":", ",", ":", ",",
        "true", "{}",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

        /// Objects made of pieces in any order: what the check takes is a flat JSON
        /// object, and well-formed ones of its shape are taken.
        #[test]
        fn shuffled_pieces_are_judged_as_serde_json_does(
            pieces in prop::collection::vec(0..PIECES.len(), 0..14),
            pad in 0usize..64,
        ) {
            let body: String = pieces.iter().map(|&i| PIECES[i]).collect();
            let text = format!("{}{{{body}}}", " ".repeat(pad));
            let object = &text.as_bytes()[pad..];
            let valid = flat_json(object) && !body.contains("true") && !body.contains('{');
            prop_assert_eq!(check(object), valid.then_some(object.len()), "{}", text);
        }
    }

    /// Objects the check leaves to the walk, and why.
    const REFUSED: [(&str, &str); 54] = [
        (r#"{ "a":1}"#, "space after the brace"),
        (r#"{"a" 1}"#, "space for colon"),
        (r#"{"a":1 2}"#, "two numbers"),
        (r#"{"a":"x" "y"}"#, "two strings"),
        (r#"{"a":1, ,"b":2}"#, "two commas"),
        (r#"{"a":- 1}"#, "space after minus"),
        (r#"{"a":1. 5}"#, "space after dot"),
        (r#"{"a":1 .5}"#, "space before dot"),
        (r#"{"a":1 ,}"#, "trailing comma"),
        (r#"{"a":1, }"#, "trailing comma"),
        (r#"{"a":1 "b":2}"#, "no comma"),
        (r#"{"a":1,"b" }"#, "key without value"),
        (r#"{"a":true}"#, "literal"),
        (r#"{"a":null}"#, "literal"),
        (r#"{"a":1e5}"#, "exponent"),
        (r#"{"a":{}}"#, "nesting"),
        (r#"{"a":[1]}"#, "nesting"),
        (r#"{"a":01}"#, "leading zero"),
        (r#"{"a":-01}"#, "leading zero"),
        (r#"{"a":00}"#, "leading zero"),
        (r#"{"a":1.}"#, "no fraction digits"),
        (r#"{"a":.5}"#, "no integer digits"),
        (r#"{"a":-.5}"#, "no integer digits"),
        (r#"{"a":-}"#, "lone minus"),
        (r#"{"a":1-2}"#, "inner minus"),
        (r#"{"a":--1}"#, "two minus"),
        (r#"{"a":1.2.3}"#, "two dots"),
        (r#"{"a":1..2}"#, "two dots"),
        (r#"{"a":1,}"#, "trailing comma"),
        (r#"{,"a":1}"#, "leading comma"),
        (r#"{"a":1,,"b":2}"#, "double comma"),
        (r#"{"a"::1}"#, "double colon"),
        (r#"{"a":}"#, "no value"),
        (r#"{"a"}"#, "no colon"),
        (r#"{"a""b":1}"#, "two keys"),
        (r#"{"a":1"b":2}"#, "no comma"),
        (r#"{"a":"x""y"}"#, "two values"),
        (r#"{"a":"x":1}"#, "value then colon"),
        (r#"{"a":1:2}"#, "number then colon"),
        (r#"{1:2}"#, "number key"),
        (r#"{"a":1,2:3}"#, "number key"),
        (r#"{"a":"x",-1.5:"y"}"#, "number key"),
        (r#"{"a":1,"b"}"#, "key without value"),
        (r#"{"a":1:"b"}"#, "colon for comma"),
        (r#"{"a","b":1}"#, "comma for colon"),
        (r#"{"a":1"#, "unclosed"),
        (r#"{"a":"}"#, "unclosed string"),
        (r#"{"a":é}"#, "bare non-ASCII"),
        (r#"{"a":"\"}"#, "escaped quote"),
        (r#"{"a":"\\"}"#, "escaped backslash"),
        (r#"{"a\n":1}"#, "escape in a key"),
        ("{\"a\":\"\t\"}", "tab in a string"),
        ("{\"a\":\"\u{1f}\"}", "control character"),
        ("{\"a\":1,\n\"b\":2}", "newline"),
    ];

    /// Flat objects the check takes.
    const TAKEN: [&str; 9] = [
        r#"{"a":1 }"#,
        r#"{"a": 1}"#,
        r#"{"a" : 1 , "b" :"x" ,"c":  -2.5  }"#,
        r#"{"moreData0": 57.739726013343247, "moreData1": 52.230732688620829}"#,
        r#"{"a": " x ", "b": "}"}"#,
        r#"{"":0}"#,
        r#"{"a":-0.0,"}":"{,:"}"#,
        r#"{"a":"}"}"#,
        r#"{"b":10.000,"c":0,"d":-100,"e":"","f":0.05,"g":-0.001}"#,
    ];

    #[test]
    fn the_unusual_is_left_to_the_walk() {
        for (text, why) in REFUSED {
            assert_eq!(check(text.as_bytes()), None, "{why}: {text}");
        }
        let mut invalid = r#"{"a":"xé"}"#.as_bytes().to_vec();
        assert_eq!(check(&invalid), Some(invalid.len()));
        invalid[8] = 0xff;
        assert_eq!(check(&invalid), None, "invalid UTF-8");
        invalid.truncate(9);
        invalid.extend_from_slice(b"\"}");
        assert_eq!(check(&invalid), None, "a cut UTF-8 sequence");
        for (text, len) in [
            ("{}", 2),
            ("{},1", 2),
            (r#"{"":0}"#, 6),
            (r#"{"a":-0.0,"}":"{,:"}"#, 20),
            (r#"{"a":"}"}}"#, 9),
        ] {
            assert_eq!(check(text.as_bytes()), Some(len), "{text}");
        }
    }

    /// Each object above after a first member of every length up to two blocks, so that
    /// each of its bytes falls on each side of a block boundary: judged the same.
    #[test]
    fn every_rule_holds_across_block_boundaries() {
        for filler in 0..130 {
            let first = format!("{{\"k\":\"{}\",", "x".repeat(filler));
            // (After a first member the space is after a comma, which is fine.)
            for (text, why) in REFUSED.iter().filter(|(t, _)| !t.starts_with("{ ")) {
                let text = format!("{first}{}", &text[1..]);
                assert_eq!(check(text.as_bytes()), None, "{why}: {text}");
            }
            for text in TAKEN {
                let text = format!("{first}{}", &text[1..]);
                assert_eq!(check(text.as_bytes()), Some(text.len()), "{text}");
            }
        }
    }
}
