//! Space maps (persistent-data/dm-space-map-common.c, -disk.c, -metadata.c): reference
//! counts of data blocks and of metadata blocks, as 2-bit entries in bitmap blocks with
//! counts of 3 and more in a btree of u32.
//!
//! The data space map's bitmaps are indexed by a btree of 16-byte index entries; the
//! metadata space map's by one index block of up to 255 entries.

use crate::error::Result;

use super::block::{corrupt, le32, le64, put64, Kind, MetaDev, BLOCK_SIZE};
use super::btree;

/// Size of the space-map root area in the superblock (`SPACE_MAP_ROOT_SIZE`).
pub const SM_ROOT_SIZE: usize = 128;

/// `struct disk_sm_root`: the root of a space map, stored in the superblock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmRoot {
    /// Blocks the space map covers.
    pub nr_blocks: u64,
    /// Blocks with a non-zero reference count.
    pub nr_allocated: u64,
    /// Data: root of the btree of index entries; metadata: the index block.
    pub bitmap_root: u64,
    /// Root of the btree of reference counts above 2.
    pub ref_count_root: u64,
}

impl SmRoot {
    /// Decode the 32 meaningful bytes at `off`.
    #[must_use]
    pub fn parse(b: &[u8], off: usize) -> SmRoot {
        SmRoot {
            nr_blocks: le64(b, off),
            nr_allocated: le64(b, off + 8),
            bitmap_root: le64(b, off + 16),
            ref_count_root: le64(b, off + 24),
        }
    }

    /// Encode at `off`, zeroing the rest of the 128-byte area.
    pub fn store(&self, b: &mut [u8], off: usize) {
        b[off..off + SM_ROOT_SIZE].fill(0);
        put64(b, off, self.nr_blocks);
        put64(b, off + 8, self.nr_allocated);
        put64(b, off + 16, self.bitmap_root);
        put64(b, off + 24, self.ref_count_root);
    }
}

/// Bitmap block header (`struct disk_bitmap_header`).
pub const BITMAP_HEADER: usize = 16;
/// Entries per bitmap block (`ENTRIES_PER_BLOCK`): 2 bits per block.
pub const ENTRIES_PER_BLOCK: u64 = ((BLOCK_SIZE - BITMAP_HEADER) * 4) as u64;
/// `MAX_METADATA_BITMAPS`: index entries in the metadata index block.
pub const MAX_METADATA_BITMAPS: u64 = 255;
/// Size of an index entry (`struct disk_index_entry`).
pub const INDEX_ENTRY_SIZE: usize = 16;
/// Offset of the entries in the metadata index block (`struct disk_metadata_index`).
pub const INDEX_BLOCK_HEADER: usize = 16;

/// `struct disk_index_entry`: where one bitmap block is and a summary of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexEntry {
    /// The bitmap block.
    pub blocknr: u64,
    /// Free entries in it.
    pub nr_free: u32,
    /// A hint: no free entry before this one.
    pub none_free_before: u32,
}

impl IndexEntry {
    fn parse(b: &[u8]) -> IndexEntry {
        IndexEntry {
            blocknr: le64(b, 0),
            nr_free: le32(b, 8),
            none_free_before: le32(b, 12),
        }
    }
}

/// Which of the pool's two space maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmKind {
    /// Data blocks (disk space map, index in a btree).
    Data,
    /// Metadata blocks (index in one index block).
    Metadata,
}

/// A space map opened read-only from its root.
#[derive(Clone, Debug)]
pub struct SpaceMap {
    /// Its root as the superblock stores it.
    pub root: SmRoot,
    /// Index entries, one per bitmap block, in order.
    pub index: Vec<IndexEntry>,
    kind: SmKind,
}

/// Bitmap blocks needed for `nr_blocks` entries.
fn nr_bitmaps(nr_blocks: u64) -> u64 {
    nr_blocks.div_ceil(ENTRIES_PER_BLOCK)
}

/// The 2-bit count of entry `e` in a bitmap block (`sm_lookup_bitmap`): the lower bit
/// position holds the high bit of the value.
#[must_use]
pub fn bitmap_entry(bitmap: &[u8], e: usize) -> u32 {
    let word = le64(bitmap, BITMAP_HEADER + 8 * (e / 32));
    let bit = 2 * (e % 32);
    let hi = u32::from(word >> bit & 1 == 1);
    let lo = u32::from(word >> (bit + 1) & 1 == 1);
    (hi << 1) | lo
}

impl SpaceMap {
    /// Open a space map from its root, reading and checking its index.
    pub fn open(dev: &MetaDev, root: SmRoot, kind: SmKind) -> Result<SpaceMap> {
        let want = nr_bitmaps(root.nr_blocks);
        // Where the root sits in the superblock (data_space_map_root at 64, metadata at 192).
        let root_at = match kind {
            SmKind::Data => 64,
            SmKind::Metadata => 192,
        };
        if root.nr_allocated > root.nr_blocks {
            return Err(corrupt(
                "space map root nr_allocated",
                0,
                root_at + 8,
                format_args!(
                    "{} allocated of {} blocks",
                    root.nr_allocated, root.nr_blocks
                ),
            ));
        }
        let index = match kind {
            SmKind::Metadata => {
                if want > MAX_METADATA_BITMAPS {
                    return Err(corrupt(
                        "metadata space map nr_blocks",
                        0,
                        192,
                        format_args!(
                            "{} blocks need {want} bitmaps, the index block holds {MAX_METADATA_BITMAPS}",
                            root.nr_blocks
                        ),
                    ));
                }
                let b = dev.read(root.bitmap_root, Kind::Index)?;
                (0..usize::try_from(want).unwrap_or(0))
                    .map(|i| {
                        let off = INDEX_BLOCK_HEADER + INDEX_ENTRY_SIZE * i;
                        IndexEntry::parse(&b[off..off + INDEX_ENTRY_SIZE])
                    })
                    .collect()
            }
            SmKind::Data => {
                let mut index = Vec::new();
                btree::walk(dev, root.bitmap_root, INDEX_ENTRY_SIZE, &mut |k, v| {
                    let expected = u64::try_from(index.len()).unwrap_or(u64::MAX);
                    if k != expected || k >= want {
                        return Err(corrupt(
                            "data space map index key",
                            root.bitmap_root,
                            0,
                            format_args!("key {k}, expected {expected} of {want} bitmaps"),
                        ));
                    }
                    index.push(IndexEntry::parse(v));
                    Ok(())
                })?;
                if u64::try_from(index.len()).unwrap_or(u64::MAX) != want {
                    return Err(corrupt(
                        "data space map index",
                        root.bitmap_root,
                        0,
                        format_args!("{} bitmaps indexed, {want} needed", index.len()),
                    ));
                }
                index
            }
        };
        Ok(SpaceMap { root, index, kind })
    }

    /// Which space map this is.
    #[must_use]
    pub fn kind(&self) -> SmKind {
        self.kind
    }

    /// Blocks counted.
    #[must_use]
    pub fn nr_blocks(&self) -> u64 {
        self.root.nr_blocks
    }

    /// Blocks with a zero count, as the root records it (`sm_get_nr_free`).
    #[must_use]
    pub fn nr_free(&self) -> u64 {
        self.root.nr_blocks - self.root.nr_allocated
    }

    /// Read and check bitmap `i`.
    pub fn bitmap(&self, dev: &MetaDev, i: usize) -> Result<Vec<u8>> {
        dev.read(self.index[i].blocknr, Kind::Bitmap)
    }

    /// The reference count of block `b` (`sm_ll_lookup`).
    pub fn ref_count(&self, dev: &MetaDev, b: u64) -> Result<u32> {
        if b >= self.root.nr_blocks {
            return Err(crate::error::Error::invalid(
                "block",
                format!(
                    "{b} is beyond the space map ({} blocks)",
                    self.root.nr_blocks
                ),
            ));
        }
        let i = usize::try_from(b / ENTRIES_PER_BLOCK).unwrap_or(usize::MAX);
        let e = usize::try_from(b % ENTRIES_PER_BLOCK).unwrap_or(0);
        let n = bitmap_entry(&self.bitmap(dev, i)?, e);
        if n < 3 {
            return Ok(n);
        }
        match btree::lookup(dev, self.root.ref_count_root, b, 4)? {
            Some(v) => Ok(le32(&v, 0)),
            None => Err(corrupt(
                "space map ref count",
                self.root.ref_count_root,
                0,
                format_args!("block {b} has count 3+ in its bitmap but no ref count entry"),
            )),
        }
    }

    /// Every block's count, in order, calling `visit(block, count)` for non-zero ones
    /// (bitmaps one at a time, ref counts above 2 from the btree).
    pub fn for_each_nonzero(
        &self,
        dev: &MetaDev,
        visit: &mut dyn FnMut(u64, u32) -> Result<()>,
    ) -> Result<()> {
        let mut overflow = std::collections::BTreeMap::new();
        if self.root.ref_count_root != 0 {
            btree::walk(dev, self.root.ref_count_root, 4, &mut |k, v| {
                overflow.insert(k, le32(v, 0));
                Ok(())
            })?;
        }
        for i in 0..self.index.len() {
            let bm = self.bitmap(dev, i)?;
            let base = u64::try_from(i).unwrap_or(u64::MAX) * ENTRIES_PER_BLOCK;
            let end = (self.root.nr_blocks - base).min(ENTRIES_PER_BLOCK);
            for e in 0..usize::try_from(end).unwrap_or(0) {
                let n = bitmap_entry(&bm, e);
                let b = base + u64::try_from(e).unwrap_or(0);
                match n {
                    0 => {}
                    3 => {
                        let c = overflow.get(&b).copied().ok_or_else(|| {
                            corrupt(
                                "space map ref count",
                                self.root.ref_count_root,
                                0,
                                format_args!(
                                    "block {b} has count 3+ in its bitmap but no ref count entry"
                                ),
                            )
                        })?;
                        visit(b, c)?;
                    }
                    n => visit(b, n)?,
                }
            }
        }
        Ok(())
    }
}
