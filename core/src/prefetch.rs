//! Prefetch hints: asking the CPU to start loading memory that the core will read a few
//! hundred instructions later.
//!
//! With 10,000 groups, a lifecycle's lanes, groups, bucket heads and task record are mostly
//! cache misses, and each was found through the one before it (the group's name gives the
//! lane, the lane gives its heads). As soon as the core knows where the next ones are, it asks
//! for them all at once, and the misses overlap instead of following each other: in the core
//! bench, ~12% of a lifecycle at 100k queued.
//!
//! A hint changes nothing but timing: it cannot fault, even on an address that is not mapped,
//! and it leaves every value and decision as it was, so the core stays deterministic. On other
//! architectures it does nothing.

/// Asks for the cache lines that hold `bytes` bytes from `addr`.
#[inline(always)]
pub(crate) fn prefetch_bytes(addr: usize, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        let mut line = addr & !(LINE - 1);
        let end = addr.saturating_add(bytes);
        while line < end {
            // SAFETY: PREFETCHT0 only hints the cache. It reads nothing into a register,
            // never faults (an invalid address is ignored), and has no effect a program can
            // observe other than timing. SSE, which it needs, is part of every x86-64 CPU.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, bytes);
}

/// Asks for the cache lines of `value`.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    prefetch_bytes(value as *const T as usize, std::mem::size_of::<T>());
}
