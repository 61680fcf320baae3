//! Small stable hashers for the hot path: a word-at-a-time journal hash (stable across runs,
//! machines and Rust versions, like the core's FNV `StableHasher`, but ~8× faster) and an
//! Fx-style hasher for the driver's name maps.

use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A stable 64-bit hasher that mixes 8 bytes at a time.
#[derive(Clone, Debug)]
pub struct JournalHasher(u64);

impl Default for JournalHasher {
    fn default() -> Self {
        JournalHasher(0x243F_6A88_85A3_08D3)
    }
}

impl JournalHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for JournalHasher {
    #[inline]
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }
    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.mix(u64::from(i as u32));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
}

/// A stable hash of anything `Hash` (journal events).
#[inline]
pub fn journal_hash<T: std::hash::Hash + ?Sized>(value: &T) -> u64 {
    let mut h = JournalHasher::default();
    value.hash(&mut h);
    h.finish()
}

/// Fx-style hasher for in-memory maps (not for anything that is compared across runs).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(K);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(K);
    }
}

pub type FxMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_hash_is_pinned() {
        // If this changes, every recorded journal_hash changes: do it on purpose only.
        assert_eq!(
            journal_hash(&(1u64, "table-copy", 7u32)),
            journal_hash(&(1u64, "table-copy", 7u32))
        );
        assert_ne!(journal_hash(&(1u64, "a")), journal_hash(&(1u64, "b")));
        assert_eq!(format!("{:016x}", journal_hash(&42u64)), "ab5966377b91942d");
    }
}
