//! Hash maps keyed by block or chunk numbers: snapshot exception tables, thin mapping
//! indexes, the verity hash-block cache.
//!
//! SipHash costs more than the lookup it guards on these I/O paths, so the hash is
//! foldhash's folded multiply (`foldhash::fast`). The keys can come from untrusted images
//! (thin metadata, COW stores), so each map starts from its own random seed (foldhash's
//! `RandomState` seeds every instance apart): a crafted image cannot line its keys up in one
//! bucket chain without knowing it.

use std::collections::HashMap;

/// Builds the hashers of one [`BlockMap`], from that map's own random seed.
pub(crate) type BlockHashBuilder = foldhash::fast::RandomState;

/// A hash map from block (or chunk) numbers to `V`.
pub(crate) type BlockMap<V> = HashMap<u64, V, BlockHashBuilder>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    /// Keys that differ only in high bits (what a crafted image would pick) spread over the
    /// low bits a table indexes by: no map piles them into one bucket chain, and over many
    /// maps (seeds) they land nearly as apart as random values. One seed alone can be
    /// unlucky (foldhash's folded multiply gave 42 distinct low-12-bit values of 64 for
    /// about one seed in 30), so the spread is averaged.
    #[test]
    fn keys_differing_only_in_high_bits_hash_apart_and_seeds_differ_per_map() {
        let maps = 32;
        let mut distinct_total = 0;
        for _ in 0..maps {
            let b = BlockHashBuilder::default();
            let mut buckets = std::collections::BTreeMap::<u64, usize>::new();
            for i in 0..64u64 {
                *buckets.entry(b.hash_one(i << 40) & 0xfff).or_default() += 1;
            }
            let longest = buckets.values().copied().max().unwrap_or(0);
            assert!(longest <= 8, "a chain of {longest} of 64 high-bit keys");
            distinct_total += buckets.len();
        }
        let mean = distinct_total as f64 / f64::from(maps);
        assert!(
            mean > 56.0,
            "high-bit keys crowd the low bits: {mean} of 64 apart"
        );
        let (b, other) = (BlockHashBuilder::default(), BlockHashBuilder::default());
        assert_ne!(b.hash_one(7u64), other.hash_one(7u64));
    }
}
