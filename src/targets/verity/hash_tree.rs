//! Hash tree geometry, exactly as the kernel's `verity_ctr` and cryptsetup's `hash_levels`
//! lay it out (disk-formats.md §3.1).
//!
//! Level 0 holds the digests of the data blocks; level `levels-1` is a single block, the one
//! the root digest covers. Levels are stored top first from `hash_start`, leaf level last.

/// The kernel's `DM_VERITY_MAX_LEVELS`.
pub const MAX_LEVELS: usize = 63;

/// Where every level of a tree sits, in hash blocks on the hash device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Digest size in bytes.
    pub digest_size: usize,
    /// Format version (0 = Chrome OS, packed digests; 1 = power-of-two slots).
    pub version: u32,
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Hash block of the top level.
    pub hash_start: u64,
    /// log2 of the digests per hash block (kernel `hash_per_block_bits`).
    pub hpb_bits: u32,
    /// First hash block of each level, index 0 = leaf level.
    pub level_block: Vec<u64>,
    /// Blocks in each level, index 0 = leaf level.
    pub level_size: Vec<u64>,
    /// One past the last hash block (kernel `hash_blocks`): the hash device must hold this many.
    pub hash_end: u64,
}

/// `__fls`: index of the highest set bit (`x` > 0).
fn fls(x: u64) -> u32 {
    63 - x.leading_zeros()
}

impl Geometry {
    /// Lay out the tree. Errors use the kernel's `ti->error` words.
    pub fn new(
        version: u32,
        data_block_size: u32,
        hash_block_size: u32,
        digest_size: usize,
        data_blocks: u64,
        hash_start: u64,
    ) -> Result<Geometry, &'static str> {
        let ds = u64::try_from(digest_size).unwrap_or(u64::MAX).max(1);
        let per_block = u64::from(hash_block_size) / ds;
        if digest_size == 0 || per_block < 2 {
            return Err("Digest size too big");
        }
        let hpb_bits = fls(per_block);
        let mut levels = 0usize;
        if data_blocks > 0 {
            loop {
                let shift = u64::from(hpb_bits) * u64::try_from(levels).unwrap_or(u64::MAX);
                if shift >= 64 || (data_blocks - 1) >> shift == 0 {
                    break;
                }
                levels += 1;
            }
        }
        if levels > MAX_LEVELS {
            return Err("Too many tree levels");
        }
        let mut level_block = vec![0u64; levels];
        let mut level_size = vec![0u64; levels];
        let mut pos = hash_start;
        for i in (0..levels).rev() {
            level_block[i] = pos;
            // ceil(data_blocks / 2^((i+1)*bits)), exact even where the kernel's shift would
            // leave 64 bits (the quotient is then 1).
            let shift = (i as u64 + 1) * u64::from(hpb_bits);
            let s = if shift >= 64 {
                1
            } else {
                let (q, r) = (data_blocks >> shift, data_blocks & ((1u64 << shift) - 1));
                q + u64::from(r != 0)
            };
            level_size[i] = s;
            pos = pos.checked_add(s).ok_or("Hash device offset overflow")?;
        }
        Ok(Geometry {
            data_block_size,
            hash_block_size,
            digest_size,
            version,
            data_blocks,
            hash_start,
            hpb_bits,
            level_block,
            level_size,
            hash_end: pos,
        })
    }

    /// Number of tree levels.
    #[must_use]
    pub fn levels(&self) -> usize {
        self.level_block.len()
    }

    /// Hash blocks in the tree (`hash_end - hash_start`).
    #[must_use]
    pub fn tree_blocks(&self) -> u64 {
        self.hash_end - self.hash_start
    }

    /// Digests per hash block.
    #[must_use]
    pub fn per_block(&self) -> usize {
        1usize << self.hpb_bits
    }

    /// Bytes from one digest to the next in a hash block: packed for version 0, a power-of-two
    /// slot for version 1 (kernel `verity_hash_at_level`).
    #[must_use]
    pub fn slot_size(&self) -> usize {
        if self.version == 0 {
            self.digest_size
        } else {
            usize::try_from(self.hash_block_size >> self.hpb_bits).unwrap_or(usize::MAX)
        }
    }

    /// The hash block holding the digest of `block` (a data block index at level 0) at
    /// `level`, and the digest's byte offset in it (kernel `verity_hash_at_level`).
    #[must_use]
    pub fn hash_at(&self, block: u64, level: usize) -> (u64, usize) {
        let bits = u64::from(self.hpb_bits);
        let position = block >> (bits * level as u64);
        let hash_block = self.level_block[level] + (position >> bits);
        let idx = usize::try_from(position & ((1u64 << bits) - 1)).unwrap_or(0);
        (hash_block, idx * self.slot_size())
    }

    /// Hash device bytes the tree needs, counted from byte 0 (`hash_end * hash_block_size`).
    #[must_use]
    pub fn hash_end_bytes(&self) -> Option<u64> {
        self.hash_end.checked_mul(u64::from(self.hash_block_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mib_sha256_4k_has_two_levels_top_first() {
        // 256 data blocks, 128 digests per block: leaf level 2 blocks, top level 1 block.
        let g = Geometry::new(1, 4096, 4096, 32, 256, 1).unwrap();
        assert_eq!(g.levels(), 2);
        assert_eq!(g.level_block, vec![2, 1]);
        assert_eq!(g.level_size, vec![2, 1]);
        assert_eq!(g.hash_end, 4);
        assert_eq!(g.hash_at(129, 0), (3, 32));
        assert_eq!(g.hash_at(129, 1), (1, 32));
    }

    #[test]
    fn single_data_block_has_no_levels() {
        let g = Geometry::new(1, 4096, 4096, 32, 1, 0).unwrap();
        assert_eq!(g.levels(), 0);
        assert_eq!(g.hash_end, 0);
    }

    #[test]
    fn sha1_uses_32_byte_slots_in_v1_and_packed_in_v0() {
        let g1 = Geometry::new(1, 4096, 4096, 20, 1000, 0).unwrap();
        let g0 = Geometry::new(0, 4096, 4096, 20, 1000, 0).unwrap();
        assert_eq!(g1.hpb_bits, 7);
        assert_eq!(g1.slot_size(), 32);
        assert_eq!(g0.slot_size(), 20);
        assert_eq!(g0.hash_at(3, 0).1, 60);
    }

    #[test]
    fn huge_tree_and_overflow_are_refused_with_kernel_words() {
        assert_eq!(
            Geometry::new(1, 512, 64, 32, u64::MAX, 0).unwrap_err(),
            "Too many tree levels"
        );
        assert_eq!(
            Geometry::new(1, 4096, 4096, 32, 1 << 40, u64::MAX - 2).unwrap_err(),
            "Hash device offset overflow"
        );
        assert_eq!(
            Geometry::new(1, 4096, 32, 32, 10, 0).unwrap_err(),
            "Digest size too big"
        );
    }
}
