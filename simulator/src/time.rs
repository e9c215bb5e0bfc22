//! RFC 3339 timestamps as milliseconds since the Unix epoch, without allocation.
//!
//! Shared by the generator (which writes them) and eventide (which parses `createdAt`
//! on the hot path and writes `windowStart`/`windowEnd`).

/// Appends `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn push_rfc3339_ms(out: &mut Vec<u8>, ms: i64) {
    out.extend_from_slice(&rfc3339_ms_bytes(ms));
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_ms_bytes(ms: i64) -> [u8; 24] {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, m, d) = civil_from_days(days);
    let mut buf = [0u8; 24];
    let y = y.clamp(0, 9999) as u32;
    put(&mut buf[0..4], y, 4);
    buf[4] = b'-';
    put(&mut buf[5..7], m, 2);
    buf[7] = b'-';
    put(&mut buf[8..10], d, 2);
    buf[10] = b'T';
    put(&mut buf[11..13], sod / 3600, 2);
    buf[13] = b':';
    put(&mut buf[14..16], sod / 60 % 60, 2);
    buf[16] = b':';
    put(&mut buf[17..19], sod % 60, 2);
    buf[19] = b'.';
    put(&mut buf[20..23], millis, 3);
    buf[23] = b'Z';
    buf
}

/// `ms` as an RFC 3339 string (for tests and cold paths).
pub fn rfc3339_ms(ms: i64) -> String {
    let mut v = Vec::with_capacity(24);
    push_rfc3339_ms(&mut v, ms);
    String::from_utf8(v).expect("ASCII")
}

fn put(dst: &mut [u8], mut v: u32, width: usize) {
    for i in (0..width).rev() {
        dst[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` into epoch milliseconds
/// (fractions below a millisecond are truncated). `None` if it is not RFC 3339.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    match parse_usual(s.as_bytes()) {
        Some(ms) => Some(ms),
        None => parse_any(s.as_bytes()),
    }
}

/// [`parse_rfc3339_ms`] for a stream of timestamps: it remembers the minute of the last
/// one in the usual form (see `parse_usual`), so that the next in the same minute,
/// the usual case for events from one partition, is read from its last 8 bytes.
#[derive(Debug, Default, Clone)]
pub struct MinuteCache {
    /// The first 16 bytes (`YYYY-MM-DDTHH:MM`) of the last usual timestamp read in
    /// full (zero before: no timestamp starts with zero bytes), and its minute in ms.
    head: [u64; 2],
    minute_ms: i64,
}

impl MinuteCache {
    /// What [`parse_rfc3339_ms`] gives for `s`.
    #[inline]
    pub fn parse(&mut self, s: &str) -> Option<i64> {
        let Ok(b) = <&[u8; 24]>::try_from(s.as_bytes()) else {
            return parse_any(s.as_bytes());
        };
        let head = [word(b, 0), word(b, 8)];
        if head == self.head
            && let Some(ms) = seconds_ms(word(b, 16))
        {
            return Some(self.minute_ms + ms);
        }
        let Some(ms) = parse_usual(b) else {
            return parse_any(b);
        };
        // The whole timestamp is in the usual form, so its seconds are too.
        self.head = head;
        self.minute_ms = ms - seconds_ms(word(b, 16))?;
        Some(ms)
    }
}

#[inline(always)]
fn word(b: &[u8; 24], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The milliseconds since the minute of a usual timestamp's last 8 bytes
/// (`:SS.mmmZ`), checked as [`parse_usual`] checks them.
#[inline(always)]
fn seconds_ms(w: u64) -> Option<i64> {
    let d = usual_digits(w, 2)?;
    let at = |i: usize| (d >> (8 * i) & 0xFF) as i64;
    let second = 10 * at(1) + at(2);
    (second <= 60).then_some(second * 1000 + 100 * at(4) + 10 * at(5) + at(6))
}

/// Word `k` (bytes `8k..8k + 8`) of a usual timestamp, `w`, as digit values (its
/// separators zeroed), if its digits and separators are where they should be.
#[inline(always)]
fn usual_digits(w: u64, k: usize) -> Option<u64> {
    // Per word: the bytes that are digits, and the separators between them.
    const DIGITS: [u64; 3] = [
        0x00FF_FF00_FFFF_FFFF, // YYYY-MM-
        0xFFFF_00FF_FF00_FFFF, // DDTHH:MM
        0x00FF_FFFF_00FF_FF00, // :SS.mmmZ
    ];
    const SEPARATORS: [u64; 3] = [
        0x2D00_002D_0000_0000,
        0x0000_3A00_0054_0000,
        0x5A00_0000_2E00_003A,
    ];
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let digits = DIGITS[k];
    // A byte is a digit when it is 0x30..=0x39: its high half is 3, also after
    // adding 6 (no carry leaves a byte that passes the first test).
    if w & !digits != SEPARATORS[k]
        || w & digits & HIGH != ZEROS & digits
        || w.wrapping_add(0x0606_0606_0606_0606) & digits & HIGH != ZEROS & digits
    {
        return None;
    }
    Some((w & digits) - (ZEROS & digits))
}

/// [`parse_rfc3339_ms`] for the usual form, `YYYY-MM-DDTHH:MM:SS.mmmZ` exactly (what the
/// generator and most devices write), read as three 8-byte words: a few dozen
/// instructions instead of a loop per field. `None` for anything else.
#[inline]
fn parse_usual(b: &[u8]) -> Option<i64> {
    let b: &[u8; 24] = b.try_into().ok()?;
    let d = [
        usual_digits(word(b, 0), 0)?,
        usual_digits(word(b, 8), 1)?,
        usual_digits(word(b, 16), 2)?,
    ];
    let at = |k: usize, i: usize| (d[k] >> (8 * i) & 0xFF) as u32;
    let two = |k: usize, i: usize| 10 * at(k, i) + at(k, i + 1);
    let year = (100 * two(0, 0) + two(0, 2)) as i64;
    let (month, day) = (two(0, 5), two(1, 0));
    let (hour, minute, second) = (two(1, 3), two(1, 6), two(2, 1));
    let millis = 10 * two(2, 4) + at(2, 6);
    if !valid(year, month, day, hour, minute, second) {
        return None;
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    Some(secs * 1000 + millis as i64)
}

/// [`parse_rfc3339_ms`] for any form.
fn parse_any(b: &[u8]) -> Option<i64> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&b[0..4])? as i64;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !valid(year, month, day, hour, minute, second) {
        return None;
    }
    let mut i = 19;
    let mut millis = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as u32;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(&b[i + 1..i + 3])? as i64;
            let om = digits(&b[i + 4..i + 6])? as i64;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_secs;
    Some(secs * 1000 + millis as i64)
}

fn digits(b: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

/// Whether the fields make a date and time (a leap second, :60, allowed).
fn valid(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> bool {
    (1..=12).contains(&month)
        && day != 0
        && day <= days_in_month(year, month)
        && hour <= 23
        && minute <= 59
        && second <= 60
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usual_form_reads_as_any_form_does() {
        // Times from year 0 to 9999 (a simple generator: no dependencies here), each
        // also with every byte replaced by each of a few others.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let replacements = b"0159:-.TtZz+ /a";
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = (x % 315_537_897_600_000) as i64 - 62_167_219_200_000;
            let s = rfc3339_ms(ms);
            assert_eq!(parse_usual(s.as_bytes()), Some(ms), "{s}");
            assert_eq!(parse_any(s.as_bytes()), Some(ms), "{s}");
            for i in 0..s.len() {
                for &c in replacements {
                    let mut b = s.clone().into_bytes();
                    b[i] = c;
                    if let Some(usual) = parse_usual(&b) {
                        assert_eq!(
                            Some(usual),
                            parse_any(&b),
                            "{}",
                            String::from_utf8_lossy(&b)
                        );
                    } else if b[10] == b'T' && b[19] == b'.' && b[23] == b'Z' {
                        // Refused in the usual form: refused in any form too.
                        assert_eq!(parse_any(&b), None, "{}", String::from_utf8_lossy(&b));
                    }
                }
            }
        }
        for s in [
            "2026-02-29T00:00:00.000Z",
            "2024-02-30T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-00-01T00:00:00.000Z",
            "2026-01-00T00:00:00.000Z",
            "2026-01-01T24:00:00.000Z",
            "2026-01-01T00:60:00.000Z",
            "2026-01-01T00:00:61.000Z",
            "2026-01-01T00:00:00.0a0Z",
        ] {
            assert_eq!(parse_usual(s.as_bytes()), None, "{s}");
        }
        assert_eq!(
            parse_usual(b"2024-02-29T23:59:60.999Z"),
            parse_any(b"2024-02-29T23:59:60.999Z")
        );
    }

    #[test]
    fn the_minute_cache_reads_as_the_parser_does() {
        // Streams of timestamps from a few nearby minutes (so the cache is hit, missed
        // and refilled), a fifth of them with one byte replaced (some valid in another
        // form, some invalid, some leap seconds), all through one cache.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let replacements = b"0123456789:-.TtZz+ /a";
        let mut cache = MinuteCache::default();
        let (mut hits, mut edited) = (0, 0);
        for _ in 0..200 {
            let base = (next() % 315_537_897_600_000) as i64 - 62_167_219_200_000;
            for _ in 0..500 {
                let ms = base + (next() % 180_000) as i64;
                let mut b = rfc3339_ms(ms).into_bytes();
                if next() % 5 == 0 {
                    let i = (next() % 24) as usize;
                    b[i] = replacements[(next() % replacements.len() as u64) as usize];
                    edited += 1;
                }
                let Ok(s) = std::str::from_utf8(&b) else {
                    continue;
                };
                let before = cache.head;
                assert_eq!(cache.parse(s), parse_rfc3339_ms(s), "{s}");
                hits += (before == cache.head && before[0] != 0) as u32;
            }
        }
        assert!(
            hits > 30_000 && edited > 10_000,
            "{hits} hits, {edited} edited"
        );
        for s in [
            "2026-01-01T00:00:59.999Z",
            "2026-01-01T00:00:60.000Z",
            "2026-01-01T00:00:61.000Z",
            "2026-01-01T00:00:05.000+01:00",
            "2026-01-01T00:00:05.5Z",
            "2026-01-01T00:00:05.000z",
            "2026-01-01T00:00:0a.000Z",
            "2026-01-01T00:00:05",
        ] {
            assert_eq!(cache.parse(s), parse_rfc3339_ms(s), "{s}");
        }
    }

    #[test]
    fn formats_and_parses_round_trip() {
        for ms in [
            0i64,
            1,
            999,
            1_767_225_600_123,
            951_782_400_000,
            -1,
            -86_400_001,
            4_102_444_799_999,
        ] {
            let s = rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_ms(&s), Some(ms), "{s}");
        }
        assert_eq!(rfc3339_ms(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_offsets_and_fractions() {
        let z = parse_rfc3339_ms("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_ms("2026-01-01T01:30:00+01:30"), Some(z));
        assert_eq!(parse_rfc3339_ms("2025-12-31T23:00:00-01:00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-01-01T00:00:00.5Z"), Some(z + 500));
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T00:00:00.123456789Z"),
            Some(z + 123)
        );
        assert_eq!(parse_rfc3339_ms("2026-01-01t00:00:00z"), Some(z));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for s in [
            "",
            "yesterday",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00Zjunk",
            "2026-01-01T00:00:00+0100",
            "1e10",
        ] {
            assert_eq!(parse_rfc3339_ms(s), None, "{s}");
        }
    }
}
