//! Duplicate detection, per partition, in bounded memory.
//!
//! * By `eventId`: a 128-bit hash of the id with the watermark at which it was seen,
//!   kept while the watermark has advanced less than the horizon (the out-of-order
//!   bound + lateness + the largest window: past that, every window the event belongs
//!   to has closed, so a re-delivery is *late* and is caught there). Expired ids are
//!   swept each time the watermark moves a quarter horizon: amortised O(1) per event.
//! * By (`deviceId`, `deviceSequenceNumber`): per device, a high-water mark and a ring
//!   bitmap of the last [`SEQ_WINDOW`] sequence numbers. A number above the mark that
//!   skips some counts them as gaps; a skipped number that arrives later fills its gap.
//!   A number older than the bitmap cannot be checked and is accepted (the id check,
//!   and the late check, still apply).

use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashMap;

/// Sequence numbers remembered per device.
pub const SEQ_WINDOW: u64 = 1024;
const WORDS: usize = (SEQ_WINDOW / 64) as usize;

/// Hasher for keys that are already uniform hashes (`u128` event-id hashes: used as
/// they are) or dense integers (`u32`/`u64` ids: mixed so that both the low bits, which
/// pick the bucket, and the high bits, which hashbrown keeps as a tag, vary).
#[derive(Default, Clone, Copy)]
pub struct PreHashed(u64);

#[inline]
fn mix(v: u64) -> u64 {
    let x = (v ^ (v >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0.rotate_left(8) ^ b as u64);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = mix(v);
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = mix(v as u64);
    }
}

pub type PreHashedMap<K, V> = HashMap<K, V, BuildHasherDefault<PreHashed>>;

/// Remembers event ids for a horizon of watermark time.
pub struct EventIdSet {
    seen: PreHashedMap<u128, i64>,
    horizon: i64,
    next_sweep: i64,
}

impl EventIdSet {
    pub fn new(horizon_ms: i64) -> Self {
        EventIdSet {
            seen: PreHashedMap::default(),
            horizon: horizon_ms.max(1),
            next_sweep: i64::MIN,
        }
    }

    /// Records `id` at watermark `wm`; true if it was already there.
    #[inline]
    pub fn check_and_insert(&mut self, id: &str, wm: i64) -> bool {
        let key = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
        match self.seen.entry(key) {
            hashbrown::hash_map::Entry::Occupied(_) => true,
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(wm);
                false
            }
        }
    }

    /// Forgets ids older than the horizon. Cheap unless a sweep is due.
    #[inline]
    pub fn advance(&mut self, wm: i64) {
        if wm < self.next_sweep {
            return;
        }
        let cutoff = wm.saturating_sub(self.horizon);
        self.seen.retain(|_, seen_at| *seen_at > cutoff);
        self.next_sweep = wm.saturating_add(self.horizon / 4 + 1);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Per-device sequence state. See the module docs.
#[derive(Clone, Default)]
struct SeqState {
    /// One past the highest sequence number seen; 0 before the first.
    next: u64,
    /// The first number seen: gaps are counted above it only.
    first: u64,
    /// This device's share of [`SeqTracker::gaps`].
    gaps: u64,
    bits: [u64; WORDS],
}

/// What a sequence check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    New,
    Duplicate,
}

/// Per-device sequence tracking, indexed by interned device number.
#[derive(Default)]
pub struct SeqTracker {
    devices: Vec<SeqState>,
    /// Sequence numbers skipped and not (yet) seen, over all devices.
    pub gaps: u64,
}

impl SeqTracker {
    /// A device's highest sequence number and open gaps, once it has been seen.
    pub fn device(&self, device: u32) -> Option<(u64, u64)> {
        self.devices
            .get(device as usize)
            .filter(|s| s.next > 0)
            .map(|s| (s.next - 1, s.gaps))
    }

    #[inline]
    pub fn check(&mut self, device: u32, seq: u64) -> SeqCheck {
        let d = device as usize;
        if d >= self.devices.len() {
            self.devices.resize(d + 1, SeqState::default());
        }
        let s = &mut self.devices[d];
        let bit = |seq: u64| ((seq % SEQ_WINDOW / 64) as usize, 1u64 << (seq % 64));
        if s.next == 0 || seq >= s.next {
            if s.next != 0 {
                self.gaps += seq - s.next;
                s.gaps += seq - s.next;
                // Clear the bits of the numbers skipped over (they are new positions).
                if seq - s.next >= SEQ_WINDOW {
                    s.bits = [0; WORDS];
                } else {
                    for q in s.next..seq {
                        let (w, m) = bit(q);
                        s.bits[w] &= !m;
                    }
                }
            } else {
                s.bits = [0; WORDS];
                s.first = seq;
            }
            let (w, m) = bit(seq);
            s.bits[w] |= m;
            s.next = seq + 1;
            return SeqCheck::New;
        }
        if s.next - seq > SEQ_WINDOW {
            return SeqCheck::New; // too old to check; see the module docs
        }
        let (w, m) = bit(seq);
        if s.bits[w] & m != 0 {
            return SeqCheck::Duplicate;
        }
        s.bits[w] |= m;
        if seq > s.first {
            // It filled a gap counted when the mark jumped past it.
            self.gaps = self.gaps.saturating_sub(1);
            s.gaps = s.gaps.saturating_sub(1);
        }
        SeqCheck::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_a_duplicate_within_the_horizon_only() {
        let mut s = EventIdSet::new(1000);
        assert!(!s.check_and_insert("a", 0));
        assert!(s.check_and_insert("a", 500));
        s.advance(999);
        assert!(s.check_and_insert("a", 999));
        s.advance(1001);
        s.advance(5000);
        assert!(
            !s.check_and_insert("a", 5000),
            "forgotten after the horizon"
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn memory_stays_bounded_over_a_long_run() {
        let mut s = EventIdSet::new(1000);
        for i in 0..200_000i64 {
            let wm = i; // one id per ms of watermark
            s.advance(wm);
            s.check_and_insert(&i.to_string(), wm);
            assert!(s.len() <= 1000 + 1000 / 4 + 2);
        }
    }

    #[test]
    fn dense_keys_spread_over_buckets() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<PreHashed>::default();
        // Series keys are device << 32 | type: the low bits alone must not decide.
        let mut low: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for device in 0..1000u64 {
            low.insert(b.hash_one(device << 32 | 1) & 1023);
        }
        assert!(low.len() > 500, "only {} of 1024 buckets used", low.len());
    }

    #[test]
    fn sequence_numbers_find_duplicates_and_count_gaps() {
        let mut t = SeqTracker::default();
        assert_eq!(t.check(0, 10), SeqCheck::New);
        assert_eq!(t.check(0, 10), SeqCheck::Duplicate);
        assert_eq!(t.check(0, 13), SeqCheck::New);
        assert_eq!(t.gaps, 2);
        assert_eq!(t.check(0, 12), SeqCheck::New);
        assert_eq!(t.gaps, 1);
        assert_eq!(t.check(0, 12), SeqCheck::Duplicate);
        assert_eq!(t.check(1, 5), SeqCheck::New, "devices are independent");
        assert_eq!(t.check(1, 4), SeqCheck::New);
        assert_eq!(
            t.gaps, 1,
            "a number below the first seen is not a gap filled"
        );
        assert_eq!(t.check(0, 13 + SEQ_WINDOW * 3), SeqCheck::New);
        assert_eq!(t.check(0, 13 + SEQ_WINDOW * 3), SeqCheck::Duplicate);
        assert_eq!(
            t.check(0, 8 + SEQ_WINDOW * 3),
            SeqCheck::New,
            "a skipped number fills its gap"
        );
        assert_eq!(t.check(0, 8 + SEQ_WINDOW * 3), SeqCheck::Duplicate);
        assert_eq!(t.check(0, 5), SeqCheck::New, "too old to check is accepted");
    }
}
