//! Cache hints for the hot path.

/// Asks the CPU to start loading the cache line at `p`. A hint: reads nothing, never
/// faults, whatever `p` is.
#[inline(always)]
pub fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch_line`] for the first 16 lines of `bytes` (an event about to be decoded).
#[inline(always)]
pub fn prefetch(bytes: &[u8]) {
    let p = bytes.as_ptr();
    for offset in (0..bytes.len().min(16 * 64)).step_by(64) {
        prefetch_line(p.wrapping_add(offset));
    }
}
