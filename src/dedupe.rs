//! Duplicate detection, per partition, in bounded memory.
//!
//! * By `eventId`: a 64-bit hash of the id stamped with the watermark at which it was
//!   seen, kept at least until the watermark has advanced by the horizon (the
//!   out-of-order bound + lateness + the largest window: past that, every window the
//!   event belongs to has closed, so a re-delivery is *late* and is caught there).
//!   Expired ids are swept when the table is full and each time the watermark moves a
//!   horizon: amortised O(1) per event.
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
/// An open-addressing table of `Bucket`s, each one cache line of 7 ids (64-bit
/// hashes) and their stamps (the watermark they were seen at, in ticks of at most a
/// 64th of the horizon): a check of a new id touches one line, usually, and
/// [`EventIdSet::prefetch`] lets the partition ask for it an event ahead. An id's home
/// bucket is its hash's top bits; a full bucket overflows into the next. The table is
/// kept at most 5/8 full. Expired ids are swept in place, in one pass in bucket order,
/// when the table is full (it doubles if it is still more than 3/8 full) and once per
/// horizon of watermark time (it shrinks if it is then mostly empty). A sweep visits
/// every bucket: sweeping only when needed, not on a schedule short enough to keep
/// memory tight, visits each about a third as often.
///
/// 9 bytes per id held, where a slot of hash and watermark took 16: the kernel zeroes
/// half as much fresh memory as the table grows, and the table takes half as much of
/// the cache.
///
/// An id is remembered for at least the horizon: a sweep drops it once its stamp's
/// tick (at most a 64th of the horizon) ended a horizon or more before the watermark.
/// Two different ids share a 64-bit hash with probability ~n/2⁶⁴ per check (n live
/// ids: about 10⁻¹⁴ at 300,000): such an event would be counted a duplicate.
pub struct EventIdSet {
    buckets: Buckets,
    /// Ids held.
    len: usize,
    /// The oldest tick of an id held (so a sweep up to an earlier one would drop
    /// nothing, and is skipped); `i64::MAX` when empty.
    oldest: i64,
    horizon: i64,
    /// A stamp's tick is `2^shift` ms of watermark time: the power of two at or below
    /// a 64th of the horizon (at least 1 ms), so a horizon is under 128 ticks.
    shift: u32,
    /// The tick stamps count from: an id's tick is `base` + its stamp.
    base: i64,
    next_sweep: i64,
}

/// Ids per bucket.
const WAYS: usize = 7;

/// One cache line of the id table: its first `len` ways hold ids, the rest 0 (no id
/// hashes to 0, see [`id_hash`]).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket {
    ids: [u64; WAYS],
    /// `stamps[j]`: when `ids[j]` was seen, in ticks from the table's base.
    stamps: [u8; WAYS],
    len: u8,
}

impl Bucket {
    /// Whether `hash` is here: every way compared, without an early exit (no branch
    /// on how full the bucket is).
    #[inline]
    fn holds(&self, hash: u64) -> bool {
        self.ids
            .iter()
            .fold(false, |found, &id| found | (id == hash))
    }

    /// Adds `hash` with its stamp; false if the bucket is full.
    #[inline]
    fn add(&mut self, hash: u64, stamp: u8) -> bool {
        let j = self.len as usize;
        if j == WAYS {
            return false;
        }
        self.ids[j] = hash;
        self.stamps[j] = stamp;
        self.len += 1;
        true
    }

    /// The ids held, with their stamps.
    fn held(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        let n = self.len as usize;
        self.ids[..n]
            .iter()
            .copied()
            .zip(self.stamps[..n].iter().copied())
    }
}

/// Zeroed (empty) buckets for the id table. Past [`HUGE_PAGE`] bytes they are mapped
/// on their own and the kernel asked for 2 MiB pages: the table is probed at random,
/// and with 4 KiB pages most probes of a table of some MiB also miss the TLB (the CPU
/// then walks the page tables even for a prefetch, and waits).
struct Buckets {
    ptr: std::ptr::NonNull<Bucket>,
    len: usize,
    /// The mapping (start, length) holding the buckets, or `None` if they are on the
    /// heap.
    mapping: Option<(*mut libc::c_void, usize)>,
}

const HUGE_PAGE: usize = 2 << 20;

// SAFETY: `Buckets` owns its memory (heap or mapping) exclusively, like a `Vec`.
unsafe impl Send for Buckets {}

impl Buckets {
    fn zeroed(len: usize) -> Buckets {
        let bytes = len * std::mem::size_of::<Bucket>();
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
                return Buckets {
                    ptr: std::ptr::NonNull::new(aligned as *mut Bucket).expect("mapped"),
                    len,
                    mapping: Some((base, map_len)),
                };
            }
        }
        let mut heap = std::mem::ManuallyDrop::new(vec![Bucket::default(); len].into_boxed_slice());
        Buckets {
            ptr: std::ptr::NonNull::new(heap.as_mut_ptr()).expect("a box is never null"),
            len,
            mapping: None,
        }
    }
}

impl std::ops::Deref for Buckets {
    type Target = [Bucket];
    #[inline]
    fn deref(&self) -> &[Bucket] {
        // SAFETY: `ptr` points to `len` initialised buckets owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Buckets {
    #[inline]
    fn deref_mut(&mut self) -> &mut [Bucket] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Buckets {
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

/// The bucket where the search for an id with this hash starts, in a table of `len`
/// buckets (a power of two): the hash's top bits. So the ids lie in the table in the
/// order of their hashes (but for runs that wrap past its end), and a table read in
/// bucket order is written in bucket order when it is moved into one twice as large
/// (whose homes are the same bits and one more): resizing streams through memory
/// instead of writing each id at random.
#[inline]
fn home(hash: u64, len: usize) -> usize {
    (hash >> (64 - len.trailing_zeros())) as usize
}

/// Puts `hash` (not in `buckets`) with its stamp in the first bucket with room from its
/// home.
fn place(buckets: &mut [Bucket], hash: u64, stamp: u8) {
    let mask = buckets.len() - 1;
    let mut i = home(hash, buckets.len());
    while !buckets[i].add(hash, stamp) {
        i = (i + 1) & mask;
    }
}

/// Fewest buckets a table has.
const MIN_BUCKETS: usize = 128;

/// The fewest ticks in a horizon of 64 ms or more (shorter ones tick every ms).
const TICKS: i64 = 64;

/// The hash [`EventIdSet`] keeps of an id (never 0).
#[inline]
pub fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes()).max(1)
}

impl EventIdSet {
    pub fn new(horizon_ms: i64) -> Self {
        let horizon = horizon_ms.max(1);
        EventIdSet {
            buckets: Buckets::zeroed(MIN_BUCKETS),
            len: 0,
            oldest: i64::MAX,
            horizon,
            shift: (horizon / TICKS).max(1).ilog2(),
            base: 0,
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
        debug_assert_ne!(hash, 0, "0 marks an empty way");
        if 8 * (self.len + 1) > 5 * self.ways() {
            self.make_room(wm);
        }
        // A watermark before the base (it does not go back in a partition) is stamped
        // at the base: kept longer, never shorter.
        let mut stamp = (wm >> self.shift).saturating_sub(self.base).max(0);
        if stamp > u8::MAX as i64 {
            stamp = self.restamp(wm);
        }
        let mask = self.buckets.len() - 1;
        let mut i = home(hash, self.buckets.len());
        loop {
            let bucket = &mut self.buckets[i];
            if bucket.holds(hash) {
                return true;
            }
            if bucket.add(hash, stamp as u8) {
                self.len += 1;
                self.oldest = self.oldest.min(self.base + stamp);
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    /// Ids the table holds with every way of every bucket full (the loads that decide
    /// when to sweep, double and shrink are eighths of it).
    #[inline]
    fn ways(&self) -> usize {
        WAYS * self.buckets.len()
    }

    /// Bytes held by the table.
    pub fn heap_bytes(&self) -> usize {
        self.buckets.len * std::mem::size_of::<Bucket>()
    }

    /// Asks the CPU for the cache line where the id with this hash would be.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let bucket = &self.buckets[home(hash, self.buckets.len())];
        crate::hint::prefetch_line(bucket as *const Bucket as *const u8);
    }

    /// The table is 5/8 full: expired ids go first, and it doubles only if the rest
    /// fill more than 3/8 of it (so the next sweep is at least 1/4 of it away).
    #[cold]
    fn make_room(&mut self, wm: i64) {
        self.sweep(wm.saturating_sub(self.horizon), false);
        if 8 * (self.len + 1) > 3 * self.ways() {
            self.resize(self.buckets.len() * 2);
        }
    }

    /// The watermark has moved more than 255 ticks past the base without a sweep
    /// (which moves the base): one now, whatever it drops. Returns `wm`'s stamp then.
    #[cold]
    fn restamp(&mut self, wm: i64) -> i64 {
        self.sweep(wm.saturating_sub(self.horizon), true);
        (wm >> self.shift) - self.base
    }

    /// Forgets ids older than the horizon once per horizon (so memory follows a
    /// falling rate). Cheap unless that sweep is due.
    #[inline]
    pub fn advance(&mut self, wm: i64) {
        if wm < self.next_sweep {
            return;
        }
        self.sweep(wm.saturating_sub(self.horizon), false);
        if 8 * self.len < self.ways() && self.buckets.len() > MIN_BUCKETS {
            // Mostly expired (the rate fell): a quarter full from here.
            let size = (4 * self.len).div_ceil(WAYS).next_power_of_two();
            self.resize(size.max(MIN_BUCKETS));
        }
        self.next_sweep = wm.saturating_add(self.horizon);
    }

    /// Drops the ids seen in a tick before `cutoff`'s, in place, and counts the stamps
    /// from `cutoff`'s tick (if later than the base). Skipped when no id held is that
    /// old, unless `force`d.
    ///
    /// One pass in bucket order from a bucket with room (so no run of full buckets
    /// wraps past the start): each bucket's kept ids are taken out and put back from
    /// their home bucket, which lands them at or before where they were, so every id
    /// stays reachable from its home with only full buckets between.
    fn sweep(&mut self, cutoff: i64, force: bool) {
        let keep_from = cutoff >> self.shift;
        if self.oldest >= keep_from && !force {
            return; // nothing to drop
        }
        let base = keep_from.max(self.base);
        let shift = base - self.base;
        let n = self.buckets.len();
        let mask = n - 1;
        // At most 5/8 full: some bucket has room.
        let Some(start) = self.buckets.iter().position(|b| (b.len as usize) < WAYS) else {
            return;
        };
        let (mut len, mut oldest) = (0, i64::MAX);
        for k in 1..=n {
            let i = (start + k) & mask;
            let taken = std::mem::take(&mut self.buckets[i]);
            for (hash, stamp) in taken.held() {
                let tick = self.base + stamp as i64;
                if tick < keep_from {
                    continue;
                }
                place(&mut self.buckets, hash, (stamp as i64 - shift) as u8);
                len += 1;
                oldest = oldest.min(tick);
            }
        }
        self.len = len;
        self.oldest = oldest;
        self.base = base;
    }

    /// Moves every id into a table of `size` buckets (a power of two, room for all).
    fn resize(&mut self, size: usize) {
        let mut next = Buckets::zeroed(size);
        for (hash, stamp) in self.buckets.iter().flat_map(Bucket::held) {
            place(&mut next, hash, stamp);
        }
        self.buckets = next;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Per-device sequence state. See the module docs.
///
/// A device whose numbers have come in order, without a gap, has no bitmap: the
/// numbers seen are exactly `first..next`. Its first gap or number from before
/// `first` gives it one (most devices of a fleet never need it: 32 bytes a device
/// instead of 152).
#[derive(Clone, Default)]
struct SeqState {
    /// One past the highest sequence number seen; 0 before the first.
    next: u64,
    /// The first number seen: gaps are counted above it only.
    first: u64,
    /// This device's share of [`SeqTracker::gaps`].
    gaps: u64,
    bits: Option<Box<[u64; WORDS]>>,
}

impl SeqState {
    /// The bitmap, made from `first..next` (all seen) if the device had none.
    #[cold]
    fn materialize(&mut self) -> &mut [u64; WORDS] {
        let (first, next) = (self.first, self.next);
        self.bits.get_or_insert_with(|| {
            let mut bits = Box::new([0; WORDS]);
            for q in first.max(next.saturating_sub(SEQ_WINDOW))..next {
                let (w, m) = bit(q);
                bits[w] |= m;
            }
            bits
        })
    }
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
            if let Some(bits) = &s.bits {
                let word = &bits[bit(seq).0];
                crate::hint::prefetch_line((word as *const u64).cast());
            }
        }
    }

    /// Bytes held (every device's high-water mark and bitmap).
    pub fn heap_bytes(&self) -> usize {
        let bitmaps = self.devices.iter().filter(|s| s.bits.is_some()).count();
        self.devices.capacity() * std::mem::size_of::<SeqState>()
            + bitmaps * (std::mem::size_of::<[u64; WORDS]>() + 16)
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
        if s.next == 0 {
            s.first = seq;
            s.next = seq + 1;
            return SeqCheck::New;
        }
        if seq >= s.next {
            if seq > s.next {
                self.gaps += seq - s.next;
                s.gaps += seq - s.next;
                let next = s.next;
                let bits = s.materialize();
                // Clear the bits of the numbers skipped over (they are new positions).
                if seq - next >= SEQ_WINDOW {
                    *bits = [0; WORDS];
                } else {
                    for q in next..seq {
                        let (w, m) = bit(q);
                        bits[w] &= !m;
                    }
                }
            }
            if let Some(bits) = &mut s.bits {
                let (w, m) = bit(seq);
                bits[w] |= m;
            }
            s.next = seq + 1;
            return SeqCheck::New;
        }
        if s.next - seq > SEQ_WINDOW {
            return SeqCheck::New; // too old to check; see the module docs
        }
        if s.bits.is_none() && seq >= s.first {
            return SeqCheck::Duplicate; // first..next were all seen
        }
        let (w, m) = bit(seq);
        let bits = s.materialize();
        if bits[w] & m != 0 {
            return SeqCheck::Duplicate;
        }
        bits[w] |= m;
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
    fn an_id_is_kept_at_least_the_horizon_and_at_most_a_tick_longer() {
        // Horizon 10 s: ticks of 128 ms (the power of two at or below 10 s / 64).
        let h = 10_000;
        assert_eq!(1 << EventIdSet::new(h).shift, 128);
        let seen = 1_000; // in the tick [896, 1024)
        for (swept_at, kept) in [(seen + h, true), (1_024 + h - 1, true), (1_024 + h, false)] {
            let mut s = EventIdSet::new(h);
            assert!(!s.check_and_insert("a", seen));
            s.advance(swept_at);
            assert_eq!(
                s.check_and_insert("a", swept_at),
                kept,
                "swept at {swept_at}"
            );
        }
    }

    #[test]
    fn a_watermark_jumping_far_between_sweeps_restamps_the_table() {
        // No `advance` between inserts: the stamps run out of ticks, and the table is
        // swept on the insert that needs it.
        let h = 10_000;
        let mut s = EventIdSet::new(h);
        assert!(!s.check_and_insert("a", 0));
        assert!(!s.check_and_insert("b", 99 * h + h / 2));
        assert_eq!(s.len(), 1, "a swept");
        assert!(!s.check_and_insert("c", 100 * h));
        assert!(s.check_and_insert("b", 100 * h), "b within the horizon");
        assert!(!s.check_and_insert("a", 100 * h), "a forgotten");
        // 225 ticks past the base: no sweep yet; then past 255, one.
        assert!(!s.check_and_insert("d", 101 * h + 30 * 128));
        assert_eq!(s.len(), 4);
        assert!(!s.check_and_insert("e", 102 * h));
        assert_eq!(s.len(), 2, "b, c and the second a swept; d, e kept");
        assert!(s.check_and_insert("d", 102 * h));
        assert!(!s.check_and_insert("b", 102 * h));
    }

    #[test]
    fn memory_stays_bounded_over_a_long_run() {
        let mut s = EventIdSet::new(1000);
        for i in 0..200_000i64 {
            let wm = i; // one id per ms of watermark
            s.advance(wm);
            s.check_and_insert(&i.to_string(), wm);
            // ~1,000 ids within the horizon (and a tick of 8 ms); 5/8 full at most,
            // more than 3/8 full after a sweep only below 384 buckets of 7.
            assert!(s.buckets.len() <= 512, "{} buckets", s.buckets.len());
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
        // Hashes that share their top bits (one run of full buckets, wrapping past
        // the last), some of them later than others.
        let mut s = EventIdSet::new(1000);
        let chain = |k: u64| (MIN_BUCKETS as u64 - 3) << (64 - MIN_BUCKETS.trailing_zeros()) | k;
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
        /// The sequence tracker (a bitmap only once a device has a gap or a number
        /// from before its first) against a set of every number seen: the same
        /// answers and gap counts, in order or not, near and far apart.
        #[test]
        fn sequence_numbers_answer_as_a_set_would(
            ops in proptest::collection::vec((0u32..3, 0u64..40, 0u8..4), 1..600),
        ) {
            let mut t = SeqTracker::default();
            // Per device: numbers seen, one past the highest, the first.
            let mut model: HashMap<u32, (std::collections::BTreeSet<u64>, u64, u64)> =
                HashMap::new();
            let mut gaps = 0u64;
            let mut last: HashMap<u32, u64> = HashMap::new();
            for (device, step, far) in ops {
                // Mostly the next number, sometimes back a little or far ahead.
                let base = *last.get(&device).unwrap_or(&5000);
                let seq = match far {
                    0 => base + 1,
                    1 => base.saturating_sub(step),
                    2 => base + step,
                    _ => base + step * 100,
                };
                last.insert(device, seq.max(base));
                let got = t.check(device, seq);
                let want = match model.get_mut(&device) {
                    None => {
                        model.insert(device, ([seq].into(), seq + 1, seq));
                        SeqCheck::New
                    }
                    Some((seen, next, first)) => {
                        if seq >= *next {
                            gaps += seq - *next;
                            // Numbers skipped further back than the window are
                            // forgotten, as the bitmap forgets them.
                            seen.insert(seq);
                            *next = seq + 1;
                            SeqCheck::New
                        } else if *next - seq > SEQ_WINDOW {
                            SeqCheck::New
                        } else if seen.contains(&seq) {
                            SeqCheck::Duplicate
                        } else {
                            seen.insert(seq);
                            if seq > *first {
                                gaps = gaps.saturating_sub(1);
                            }
                            SeqCheck::New
                        }
                    }
                };
                proptest::prop_assert_eq!(got, want, "device {} seq {}", device, seq);
                proptest::prop_assert_eq!(t.gaps, gaps);
            }
        }

        /// The id table against a map swept by the same rules: the same answers
        /// through growth, sweeps when full and per horizon that empty runs of slots
        /// (hashes crowd a few home slots, some near the end so runs wrap) and
        /// shrinking.
        #[test]
        fn the_id_table_answers_as_a_map_would(
            ops in proptest::collection::vec((0u64..1500, 0u64..6, 0i64..300), 1..4000),
        ) {
            // Under 128 ms the tick is 1 ms: stamps are exact watermarks.
            let horizon = 100;
            let mut set = EventIdSet::new(horizon);
            let mut model = std::collections::HashMap::new();
            let mut buckets = MIN_BUCKETS;
            let mut next_sweep = i64::MIN;
            let mut wm = 0i64;
            for (id, home, step) in ops {
                if step == 0 {
                    wm += 30;
                    set.advance(wm);
                    if wm >= next_sweep {
                        model.retain(|_, seen: &mut i64| *seen >= wm - horizon);
                        if 8 * model.len() < WAYS * buckets && buckets > MIN_BUCKETS {
                            buckets = (4 * model.len())
                                .div_ceil(WAYS)
                                .next_power_of_two()
                                .max(MIN_BUCKETS);
                        }
                        next_sweep = wm + horizon;
                    }
                    proptest::prop_assert_eq!(set.len(), model.len());
                    proptest::prop_assert_eq!(set.buckets.len(), buckets);
                    let oldest = model.values().min().copied().unwrap_or(i64::MAX);
                    proptest::prop_assert_eq!(set.oldest, oldest);
                    continue;
                }
                if 8 * (model.len() + 1) > 5 * WAYS * buckets {
                    model.retain(|_, seen: &mut i64| *seen >= wm - horizon);
                    if 8 * (model.len() + 1) > 3 * WAYS * buckets {
                        buckets *= 2;
                    }
                }
                let home =
                    [0, 1, 2, MIN_BUCKETS as u64 - 2, MIN_BUCKETS as u64 - 1, 7][home as usize];
                let hash = home << (64 - MIN_BUCKETS.trailing_zeros()) | (id + 1);
                let dup = model.contains_key(&hash);
                if !dup {
                    model.insert(hash, wm);
                }
                proptest::prop_assert_eq!(set.check_and_insert_hash(hash, wm), dup);
                proptest::prop_assert_eq!(set.buckets.len(), buckets);
            }
        }
    }
}
