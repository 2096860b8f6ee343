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
