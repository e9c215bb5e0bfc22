//! Duplicate detection, per partition, in bounded memory.
//!
//! * By `eventId`: a 64-bit hash of the id with the watermark at which it was seen,
//!   kept while the watermark has advanced less than the horizon (the out-of-order
//!   bound + lateness + the largest window: past that, every window the event belongs
//!   to has closed, so a re-delivery is *late* and is caught there). Expired ids are
//!   swept when the table is full and each time the watermark moves a horizon:
//!   amortised O(1) per event.
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

/// Hasher for dense integer keys (`u32`/`u64` ids: mixed so that both the low bits,
/// which pick the bucket, and the high bits, which hashbrown keeps as a tag, vary).
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
    fn write_u64(&mut self, v: u64) {
        self.0 = mix(v);
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = mix(v as u64);
    }
}

pub type PreHashedMap<K, V> = HashMap<K, V, BuildHasherDefault<PreHashed>>;

/// Remembers event ids for a horizon of watermark time.
///
/// An open-addressing table of 16-byte slots (a 64-bit hash of the id, the watermark
/// it was seen at), probed linearly and kept at most half full: a check of a new id
/// touches one cache line, usually, and [`EventIdSet::prefetch`] lets the partition
/// ask for that line an event ahead. Expired ids are swept in place, in one pass in
/// slot order, when the table is half full (it doubles if it is still more than 3/8
/// full) and once per horizon of watermark time (it shrinks if it is then mostly
/// empty). A sweep visits every slot: sweeping only when needed, not on a schedule
/// short enough to keep memory tight, visits each slot about a third as often.
///
/// Two different ids share a 64-bit hash with probability ~n/2⁶⁴ per check (n live
/// ids: about 10⁻¹⁴ at 300,000): such an event would be counted a duplicate.
pub struct EventIdSet {
    slots: Slots,
    /// Ids held.
    len: usize,
    /// No id held was seen before this watermark (so a sweep up to an earlier cutoff
    /// would drop nothing, and is skipped).
    oldest: i64,
    horizon: i64,
    next_sweep: i64,
}

#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Slot {
    /// The id's hash; 0 marks an empty slot (no id hashes to 0, see [`id_hash`]).
    hash: u64,
    seen_at: i64,
}

/// Zeroed (empty) slots for the id table. Past [`HUGE_PAGE`] bytes they are mapped on
/// their own and the kernel asked for 2 MiB pages: the table is probed at random, and
/// with 4 KiB pages most probes of a table of some MiB also miss the TLB (the CPU then
/// walks the page tables even for a prefetch, and waits).
struct Slots {
    ptr: std::ptr::NonNull<Slot>,
    len: usize,
    /// The mapping (start, length) holding the slots, or `None` if they are on the heap.
    mapping: Option<(*mut libc::c_void, usize)>,
}

const HUGE_PAGE: usize = 2 << 20;

// SAFETY: `Slots` owns its memory (heap or mapping) exclusively, like a `Vec`.
unsafe impl Send for Slots {}

impl Slots {
    fn zeroed(len: usize) -> Slots {
        let bytes = len * std::mem::size_of::<Slot>();
        if bytes >= HUGE_PAGE {
            let map_len = bytes + HUGE_PAGE;
            // SAFETY: a fresh private anonymous mapping (zero-filled by the kernel);
            // nothing else refers to it.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base != libc::MAP_FAILED {
                let aligned = (base as usize).next_multiple_of(HUGE_PAGE);
                // SAFETY: `aligned..aligned + bytes` lies within the mapping. A refused
                // hint leaves 4 KiB pages, which work the same.
                unsafe { libc::madvise(aligned as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
                return Slots {
                    ptr: std::ptr::NonNull::new(aligned as *mut Slot).expect("mapped"),
                    len,
                    mapping: Some((base, map_len)),
                };
            }
        }
        let mut heap = std::mem::ManuallyDrop::new(vec![Slot::default(); len].into_boxed_slice());
        Slots {
            ptr: std::ptr::NonNull::new(heap.as_mut_ptr()).expect("a box is never null"),
            len,
            mapping: None,
        }
    }
}

impl std::ops::Deref for Slots {
    type Target = [Slot];
    #[inline]
    fn deref(&self) -> &[Slot] {
        // SAFETY: `ptr` points to `len` initialised slots owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Slots {
    #[inline]
    fn deref_mut(&mut self) -> &mut [Slot] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        match self.mapping {
            // SAFETY: unmaps exactly the mapping `zeroed` made; no slice outlives `self`.
            Some((base, map_len)) => unsafe {
                libc::munmap(base, map_len);
            },
            // SAFETY: the boxed slice `zeroed` leaked, rebuilt with its length.
            None => unsafe {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                )));
            },
        }
    }
}

/// The slot where the search for an id with this hash starts, in a table of `len`
/// slots (a power of two): the hash's top bits. So the ids lie in the table in the
/// order of their hashes (but for runs that wrap past its end), and a table read in
/// slot order is written in slot order when it is moved into one twice as large
/// (whose homes are the same bits and one more): resizing streams through memory
/// instead of writing each id at random.
#[inline]
fn home(hash: u64, len: usize) -> usize {
    (hash >> (64 - len.trailing_zeros())) as usize
}

/// Puts `s` (not in `slots`) in the first empty slot from its home.
fn place(slots: &mut [Slot], s: Slot) {
    let mask = slots.len() - 1;
    let mut i = home(s.hash, slots.len());
    while slots[i].hash != 0 {
        i = (i + 1) & mask;
    }
    slots[i] = s;
}

/// Fewest slots a table has.
const MIN_SLOTS: usize = 1024;

/// The hash [`EventIdSet`] keeps of an id (never 0).
#[inline]
pub fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes()).max(1)
}

impl EventIdSet {
    pub fn new(horizon_ms: i64) -> Self {
        EventIdSet {
            slots: Slots::zeroed(MIN_SLOTS),
            len: 0,
            oldest: i64::MAX,
            horizon: horizon_ms.max(1),
            next_sweep: i64::MIN,
        }
    }

    /// Records `id` at watermark `wm`; true if it was already there.
    #[inline]
    pub fn check_and_insert(&mut self, id: &str, wm: i64) -> bool {
        self.check_and_insert_hash(id_hash(id), wm)
    }

    /// [`check_and_insert`](Self::check_and_insert) with the id's [`id_hash`].
    #[inline]
    pub fn check_and_insert_hash(&mut self, hash: u64, wm: i64) -> bool {
        if 2 * (self.len + 1) > self.slots.len() {
            self.make_room(wm);
        }
        let mask = self.slots.len() - 1;
        let mut i = home(hash, self.slots.len());
        loop {
            let slot = &mut self.slots[i];
            if slot.hash == hash {
                return true;
            }
            if slot.hash == 0 {
                *slot = Slot { hash, seen_at: wm };
                self.len += 1;
                self.oldest = self.oldest.min(wm);
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    /// Asks the CPU for the cache line where the id with this hash would be.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let slot = &self.slots[home(hash, self.slots.len())];
        crate::hint::prefetch_line(slot as *const Slot as *const u8);
    }

    /// The table is half full: expired ids go first, and it doubles only if the rest
    /// fill more than 3/8 of it (so the next sweep is at least 1/8 of it away).
    #[cold]
    fn make_room(&mut self, wm: i64) {
        self.sweep(wm.saturating_sub(self.horizon));
        if 8 * (self.len + 1) > 3 * self.slots.len() {
            self.resize(self.slots.len() * 2);
        }
    }

    /// Forgets ids older than the horizon once per horizon (so memory follows a
    /// falling rate). Cheap unless that sweep is due.
    #[inline]
    pub fn advance(&mut self, wm: i64) {
        if wm < self.next_sweep {
            return;
        }
        self.sweep(wm.saturating_sub(self.horizon));
        if 8 * self.len < self.slots.len() && self.slots.len() > MIN_SLOTS {
            // Mostly expired (the rate fell): a quarter full from here.
            self.resize((4 * self.len).next_power_of_two().max(MIN_SLOTS));
        }
        self.next_sweep = wm.saturating_add(self.horizon);
    }

    /// Drops the ids seen at or before `cutoff`, in place. One pass in slot order from
    /// an empty slot (so no run of full slots wraps past the start): each kept id is
    /// taken out and put back from its home slot, which lands it at or before where it
    /// was, so every id stays reachable from its home without gaps.
    fn sweep(&mut self, cutoff: i64) {
        if self.oldest > cutoff {
            return; // nothing to drop
        }
        let n = self.slots.len();
        let mask = n - 1;
        // At most half full: there is an empty slot.
        let Some(start) = self.slots.iter().position(|s| s.hash == 0) else {
            return;
        };
        let (mut len, mut oldest) = (0, i64::MAX);
        for k in 1..n {
            let i = (start + k) & mask;
            let s = self.slots[i];
            if s.hash == 0 {
                continue;
            }
            self.slots[i] = Slot::default();
            if s.seen_at <= cutoff {
                continue;
            }
            place(&mut self.slots, s);
            len += 1;
            oldest = oldest.min(s.seen_at);
        }
        self.len = len;
        self.oldest = oldest;
    }

    /// Moves every id into a table of `size` slots (a power of two, > 2 × len).
    fn resize(&mut self, size: usize) {
        let mut next = Slots::zeroed(size);
        for s in self.slots.iter().filter(|s| s.hash != 0) {
            place(&mut next, *s);
        }
        self.slots = next;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
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

/// Where `seq` is in a device's bitmap: its word, and its bit in that word.
#[inline]
fn bit(seq: u64) -> (usize, u64) {
    ((seq % SEQ_WINDOW / 64) as usize, 1u64 << (seq % 64))
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
    /// Asks the CPU for the cache lines [`Self::check`] will read for `device` and
    /// `seq` (its high-water mark, and the word of the bitmap `seq` falls in).
    #[inline]
    pub fn prefetch(&self, device: u32, seq: u64) {
        if let Some(s) = self.devices.get(device as usize) {
            crate::hint::prefetch_line((s as *const SeqState).cast());
            let word = &s.bits[bit(seq).0];
            crate::hint::prefetch_line((word as *const u64).cast());
        }
    }

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
            // 1,001 ids within the horizon; half full at most, more than 3/8 full
            // after a sweep only below 2,670 slots.
            assert!(s.slots.len() <= 4096, "{} slots", s.slots.len());
        }
    }

    #[test]
    fn the_id_table_grows_and_sweeps_without_losing_an_id() {
        let mut s = EventIdSet::new(1000);
        // Past several doublings, all at one watermark: every id stays.
        for i in 0..50_000u32 {
            assert!(!s.check_and_insert(&format!("id-{i}"), 0));
        }
        assert_eq!(s.len(), 50_000);
        for i in 0..50_000u32 {
            assert!(
                s.check_and_insert(&format!("id-{i}"), 10),
                "id-{i} was lost"
            );
        }
        // Hashes that share their top bits (one probe chain, wrapping past the last
        // slot), some of them later than others.
        let mut s = EventIdSet::new(1000);
        let chain = |k: u64| (MIN_SLOTS as u64 - 3) << (64 - MIN_SLOTS.trailing_zeros()) | k;
        for k in 1..=300 {
            assert!(!s.check_and_insert_hash(chain(k), if k <= 150 { 0 } else { 600 }));
        }
        for k in 1..=300 {
            assert!(s.check_and_insert_hash(chain(k), 600));
        }
        // A sweep keeps exactly those seen within the horizon, and the chain works
        // after it.
        s.advance(1200);
        assert_eq!(s.len(), 150);
        for k in 1..=300 {
            assert_eq!(s.check_and_insert_hash(chain(k), 1200), k > 150, "k = {k}");
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

    proptest::proptest! {
        /// The id table against a map swept by the same rules: the same answers
        /// through growth, sweeps when full and per horizon that empty runs of slots
        /// (hashes crowd a few home slots, some near the end so runs wrap) and
        /// shrinking.
        #[test]
        fn the_id_table_answers_as_a_map_would(
            ops in proptest::collection::vec((0u64..1500, 0u64..6, 0i64..300), 1..4000),
        ) {
            let horizon = 100;
            let mut set = EventIdSet::new(horizon);
            let mut model = std::collections::HashMap::new();
            let mut slots = MIN_SLOTS;
            let mut next_sweep = i64::MIN;
            let mut wm = 0i64;
            for (id, home, step) in ops {
                if step == 0 {
                    wm += 30;
                    set.advance(wm);
                    if wm >= next_sweep {
                        model.retain(|_, seen: &mut i64| *seen > wm - horizon);
                        if 8 * model.len() < slots && slots > MIN_SLOTS {
                            slots = (4 * model.len()).next_power_of_two().max(MIN_SLOTS);
                        }
                        next_sweep = wm + horizon;
                    }
                    proptest::prop_assert_eq!(set.len(), model.len());
                    proptest::prop_assert_eq!(set.slots.len(), slots);
                    let oldest = model.values().min().copied().unwrap_or(i64::MAX);
                    proptest::prop_assert_eq!(set.oldest, oldest);
                    continue;
                }
                if 2 * (model.len() + 1) > slots {
                    model.retain(|_, seen: &mut i64| *seen > wm - horizon);
                    if 8 * (model.len() + 1) > 3 * slots {
                        slots *= 2;
                    }
                }
                let home = [0, 1, 2, MIN_SLOTS as u64 - 2, MIN_SLOTS as u64 - 1, 7][home as usize];
                let hash = home << (64 - MIN_SLOTS.trailing_zeros()) | (id + 1);
                let dup = model.contains_key(&hash);
                if !dup {
                    model.insert(hash, wm);
                }
                proptest::prop_assert_eq!(set.check_and_insert_hash(hash, wm), dup);
                proptest::prop_assert_eq!(set.slots.len(), slots);
            }
        }
    }
}
