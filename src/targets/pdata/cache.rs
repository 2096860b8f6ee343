//! A bounded cache of verified metadata blocks: the role dm-bufio plays under the kernel's
//! persistent-data. A fixed number of 4096-byte blocks stay resident, replaced by the CLOCK
//! rule (a block used since the hand last passed it gets a second chance); every block is
//! checked when it is read in (its `blocknr` self-reference and its checksum for the kind
//! asked, and for btree nodes the node checks of `btree::Shape`), so a damaged block is
//! never cached and fails each request that reaches it with the same error, naming the
//! block, byte and field. Memory is `capacity` blocks whatever the metadata claims.
//!
//! ```text
//!  get(b, kind) ── hit ──> Arc<Cached> (referenced bit set)
//!       └── miss: read + check outside the lock ──> insert at the hand (evicting a
//!                 block not referenced since the hand last passed)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::block_map::BlockMap;
use crate::error::Result;

use super::block::{check, Kind, MetaDev};
use super::btree::Shape;

/// Blocks a cache holds unless told otherwise: 4096 blocks, 16 MiB.
pub const DEFAULT_CACHE_BLOCKS: usize = 4096;

/// One verified metadata block.
#[derive(Debug)]
pub struct Cached {
    /// Its block number.
    pub block: u64,
    /// The validator it passed.
    pub kind: Kind,
    /// Its 4096 bytes.
    pub bytes: Box<[u8]>,
    /// For a btree node: its checked header.
    pub shape: Option<Shape>,
}

#[derive(Debug)]
struct Slot {
    entry: Arc<Cached>,
    referenced: bool,
}

#[derive(Debug, Default)]
struct Inner {
    slots: Vec<Slot>,
    index: BlockMap<usize>,
    hand: usize,
}

/// A fixed-size cache of checked metadata blocks over one metadata device.
#[derive(Debug)]
pub struct BlockCache {
    dev: MetaDev,
    capacity: usize,
    inner: Mutex<Inner>,
    reads: AtomicU64,
}

impl BlockCache {
    /// A cache of at most `capacity` blocks (at least one) over `dev`.
    #[must_use]
    pub fn new(dev: MetaDev, capacity: usize) -> BlockCache {
        BlockCache {
            dev,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            reads: AtomicU64::new(0),
        }
    }

    /// The metadata device.
    #[must_use]
    pub fn dev(&self) -> &MetaDev {
        &self.dev
    }

    /// The most blocks it holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks resident now (never above `capacity`).
    #[must_use]
    pub fn resident(&self) -> usize {
        self.lock().slots.len()
    }

    /// Blocks read from the device so far (misses).
    #[must_use]
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Forget every block (after the device was written behind the cache's back).
    pub fn clear(&self) {
        let mut g = self.lock();
        g.slots.clear();
        g.index.clear();
        g.hand = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Block `b` checked as `kind`: from the cache, or read, checked and cached. A block
    /// cached as another kind is checked again as this one (and fails its checksum unless
    /// both salts agree, which no two do).
    pub fn get(&self, b: u64, kind: Kind) -> Result<Arc<Cached>> {
        {
            let mut g = self.lock();
            if let Some(&i) = g.index.get(&b) {
                let slot = &mut g.slots[i];
                if slot.entry.kind == kind {
                    slot.referenced = true;
                    return Ok(Arc::clone(&slot.entry));
                }
                check(&slot.entry.bytes, b, kind)?;
            }
        }
        // Read and check without holding the lock, so other requests' hits go on.
        let bytes = self.dev.read_raw(b, kind.name())?.into_boxed_slice();
        self.reads.fetch_add(1, Ordering::Relaxed);
        check(&bytes, b, kind)?;
        let shape = match kind {
            Kind::BtreeNode => Some(Shape::check(&bytes, b, None)?),
            _ => None,
        };
        let entry = Arc::new(Cached {
            block: b,
            kind,
            bytes,
            shape,
        });
        self.insert(Arc::clone(&entry));
        Ok(entry)
    }

    fn insert(&self, entry: Arc<Cached>) {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(&i) = g.index.get(&entry.block) {
            // Another request read it meanwhile (or it was cached as another kind).
            g.slots[i] = Slot {
                entry,
                referenced: true,
            };
            return;
        }
        if g.slots.len() < self.capacity {
            g.index.insert(entry.block, g.slots.len());
            g.slots.push(Slot {
                entry,
                referenced: false,
            });
            return;
        }
        // CLOCK: clear referenced bits until a block without one comes under the hand.
        loop {
            let h = g.hand;
            g.hand = (h + 1) % g.slots.len();
            let slot = &mut g.slots[h];
            if slot.referenced {
                slot.referenced = false;
                continue;
            }
            g.index.remove(&slot.entry.block);
            g.index.insert(entry.block, h);
            *slot = Slot {
                entry,
                referenced: false,
            };
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::targets::pdata::block::{put32, put64, seal, BITMAP_CSUM_XOR, BTREE_CSUM_XOR};
    use crate::targets::pdata::btree::{max_entries, LEAF_NODE};
    use crate::units::SectorCount;
    use crate::volume::MemVolume;

    /// 20 blocks: empty btree leaves, but block 5 (a leaf with a bad checksum) and block 6
    /// (a bitmap).
    fn dev() -> MetaDev {
        let mut img = vec![0u8; 20 * 4096];
        for (i, b) in img.chunks_mut(4096).enumerate() {
            let i = i as u64;
            put64(b, 8, i);
            if i == 6 {
                seal(b, BITMAP_CSUM_XOR);
                continue;
            }
            put32(b, 4, LEAF_NODE);
            put32(b, 20, u32::try_from(max_entries(8)).unwrap());
            put32(b, 24, 8);
            seal(b, BTREE_CSUM_XOR);
            if i == 5 {
                b[100] ^= 1;
            }
        }
        let v = MemVolume::from_bytes(img).unwrap();
        assert_eq!(v.size(), SectorCount(160));
        MetaDev::new(Arc::new(v))
    }

    use crate::volume::Volume as _;

    #[test]
    fn resident_blocks_never_exceed_the_capacity_and_hits_read_nothing() {
        let c = BlockCache::new(dev(), 3);
        for round in 0..5 {
            for b in (0..20).filter(|&b| b != 5 && b != 6) {
                let e = c.get(b, Kind::BtreeNode).unwrap();
                assert_eq!((e.block, e.shape.unwrap().leaf), (b, true));
                assert!(c.resident() <= 3, "round {round}: {}", c.resident());
            }
        }
        let reads = c.reads();
        assert_eq!(reads, 5 * 18);
        // A block used over and over stays resident while others pass through.
        for b in 7..19 {
            c.get(0, Kind::BtreeNode).unwrap();
            c.get(b, Kind::BtreeNode).unwrap();
        }
        let before = c.reads();
        c.get(0, Kind::BtreeNode).unwrap();
        assert_eq!(c.reads(), before);
    }

    #[test]
    fn a_damaged_block_is_never_cached_and_fails_every_time_with_its_block_and_field() {
        let c = BlockCache::new(dev(), 4);
        let e1 = c.get(5, Kind::BtreeNode).unwrap_err().to_string();
        let e2 = c.get(5, Kind::BtreeNode).unwrap_err().to_string();
        assert_eq!(e1, e2);
        assert!(e1.contains("metadata block 5, byte 0: checksum"), "{e1}");
        assert_eq!(c.resident(), 0);
        assert_eq!(c.reads(), 2);
        // A bitmap is no btree node, and a cached node is no bitmap.
        c.get(6, Kind::Bitmap).unwrap();
        let e = c.get(6, Kind::BtreeNode).unwrap_err().to_string();
        assert!(e.contains("metadata block 6, byte 0: checksum"), "{e}");
        c.get(7, Kind::BtreeNode).unwrap();
        assert!(c.get(7, Kind::Bitmap).is_err());
        // Past the device's end.
        let e = c.get(20, Kind::BtreeNode).unwrap_err().to_string();
        assert!(e.contains("beyond the metadata device"), "{e}");
        c.clear();
        assert_eq!(c.resident(), 0);
    }
}
