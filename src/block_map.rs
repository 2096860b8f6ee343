//! Hash maps keyed by block or chunk numbers: snapshot exception tables, thin mapping
//! indexes, the verity hash-block cache.
//!
//! SipHash costs more than the lookup it guards on these I/O paths, so the hash is one
//! multiply and a fold (`BlockHasher`). The keys can come from untrusted images (thin metadata, COW
//! stores), so each map starts from a random seed: a crafted image cannot line its keys up
//! in one bucket chain without knowing it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hasher of a [`BlockMap`]: the 128-bit product `(seed ^ key) * MUL`, its halves xored.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Folded multiply (as foldhash does): the high half of the 128-bit product depends
        // on every bit of the key, so xoring it into the low half spreads keys that differ
        // only in high bits over the buckets too. One `mul` on x86_64.
        let x = u128::from(self.0 ^ n) * u128::from(MUL);
        self.0 = (x as u64) ^ ((x >> 64) as u64);
    }
}

/// Builds [`BlockHasher`]s from one per-map random seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockHashBuilder(u64);

impl Default for BlockHashBuilder {
    fn default() -> BlockHashBuilder {
        BlockHashBuilder(RandomState::new().hash_one(0u64))
    }
}

impl BuildHasher for BlockHashBuilder {
    type Hasher = BlockHasher;
    fn build_hasher(&self) -> BlockHasher {
        BlockHasher(self.0)
    }
}

/// A hash map from block (or chunk) numbers to `V`.
pub(crate) type BlockMap<V> = HashMap<u64, V, BlockHashBuilder>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differing_only_in_high_bits_hash_apart_and_seeds_differ_per_map() {
        let b = BlockHashBuilder::default();
        let low: std::collections::BTreeSet<u64> =
            (0..64u64).map(|i| b.hash_one(i << 40) & 0xfff).collect();
        assert!(
            low.len() > 48,
            "high-bit keys crowd the low bits: {}",
            low.len()
        );
        let other = BlockHashBuilder::default();
        assert_ne!(b.hash_one(7u64), other.hash_one(7u64));
    }
}
