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
