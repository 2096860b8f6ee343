//! The SSD writecache's metadata in memory (the kernel's `memory_map`: superblock and entry
//! array, written back in 64 KiB regions marked dirty, `BITMAP_GRANULARITY`) and the lists
//! built from it: the tree of cached blocks by origin sector, the LRU, and the free list
//! sorted by entry with its `current_free` cursor (`WC_MODE_SORT_FREELIST`).

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::units::Sector;
use crate::volume::Volume;

/// `MEMORY_SUPERBLOCK_MAGIC`.
pub(super) const MAGIC: u32 = 0x2348_9321;
/// `MEMORY_SUPERBLOCK_VERSION`.
pub(super) const VERSION: u32 = 1;
/// `offsetof(struct wc_memory_superblock, entries)`.
const SB_SIZE: u64 = 64;
/// `sizeof(struct wc_memory_entry)`.
const ENTRY_SIZE: u64 = 16;
/// `BITMAP_GRANULARITY` (SSD mode).
const REGION: u64 = 65536;
/// A free entry's seq_count (and original sector once formatted): -1.
pub(super) const NO_SEQ: u64 = u64::MAX;

/// `calculate_memory_size`: the blocks a region of `bytes` holds and the metadata's size
/// in bytes (rounded up to a block), or None (`-ENOSPC`) when not one fits.
pub(super) fn calculate_memory_size(bytes: u64, block: u64) -> Option<(u64, u64)> {
    let mut n = bytes / (block + ENTRY_SIZE);
    while n > 0 {
        let offset = (SB_SIZE + n * ENTRY_SIZE).next_multiple_of(block);
        if offset + n * block <= bytes {
            return Some((n, offset));
        }
        n -= 1;
    }
    None
}

/// `wc->stats`, less the reads (counted beside, by readers).
#[derive(Clone, Debug, Default)]
pub(super) struct Stats {
    pub(super) writes: u64,
    pub(super) write_hits_uncommitted: u64,
    pub(super) write_hits_committed: u64,
    pub(super) writes_around: u64,
    pub(super) writes_allocate: u64,
    pub(super) flushes: u64,
    pub(super) discards: u64,
}

/// The metadata area as the kernel holds it.
#[derive(Debug)]
pub(super) struct Meta {
    bytes: Vec<u8>,
    /// `start_sector` on the cache device.
    start: u64,
    pub(super) n_blocks: u64,
    /// `wc->seq_count`.
    pub(super) seq_count: u64,
    /// Read as all zero: `init_memory` formats it at the first change.
    pub(super) fresh: bool,
    /// One bit per 64 KiB region to write.
    dirty: Vec<bool>,
}

fn alloc(bytes: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(bytes)
        .map_err(|_| Error::invalid("writecache", "Unable to allocate memory for metadata"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::invalid("writecache", "Unable to allocate memory for metadata"))?;
    v.resize(len, 0);
    Ok(v)
}

impl Meta {
    fn with(bytes: Vec<u8>, start: u64, n: u64) -> Meta {
        let regions = usize::try_from((bytes.len() as u64).div_ceil(REGION)).unwrap_or(0);
        Meta {
            bytes,
            start,
            n_blocks: n,
            seq_count: 0,
            fresh: false,
            dirty: vec![false; regions],
        }
    }

    /// `writecache_read_metadata`: the `offset` bytes of metadata from `start`, a megabyte
    /// at a time.
    pub(super) fn read(cache: &dyn Volume, start: u64, n: u64, offset: u64) -> Result<Meta> {
        let mut bytes = alloc(offset)?;
        for (i, chunk) in bytes.chunks_mut(1 << 20).enumerate() {
            cache.read(Sector(start + i as u64 * 2048), chunk)?;
        }
        let mut m = Meta::with(bytes, start, n);
        m.seq_count = m.le64(24);
        Ok(m)
    }

    /// `init_memory` in memory (the magic still zero, as before its first commit).
    pub(super) fn formatted(n: u64, offset: u64, start: u64, block: u32) -> Result<Meta> {
        let mut m = Meta::with(alloc(offset)?, start, n);
        m.put32(4, VERSION);
        m.put32(8, block);
        m.put64(16, n);
        for i in 0..n {
            m.set_entry(i, NO_SEQ, NO_SEQ);
        }
        m.fresh = true;
        Ok(m)
    }

    fn le64(&self, at: u64) -> u64 {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        u64::from_le_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    fn put64(&mut self, at: u64, v: u64) {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        self.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: u64, v: u32) {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Entry `i`'s original sector.
    pub(super) fn original_sector(&self, i: u64) -> u64 {
        self.le64(SB_SIZE + i * ENTRY_SIZE)
    }

    /// Entry `i`'s seq_count.
    pub(super) fn seq(&self, i: u64) -> u64 {
        self.le64(SB_SIZE + i * ENTRY_SIZE + 8)
    }

    /// `writecache_entry_is_committed`.
    pub(super) fn committed(&self, i: u64) -> bool {
        self.seq(i) < self.seq_count
    }

    /// `write_original_sector_seq_count` (in memory; the region is marked at commit).
    pub(super) fn set_entry(&mut self, i: u64, orig: u64, seq: u64) {
        self.put64(SB_SIZE + i * ENTRY_SIZE, orig);
        self.put64(SB_SIZE + i * ENTRY_SIZE + 8, seq);
    }

    /// `clear_seq_count`.
    pub(super) fn clear_seq(&mut self, i: u64) {
        self.put64(SB_SIZE + i * ENTRY_SIZE + 8, NO_SEQ);
    }

    /// `writecache_flush_region` of entry `i`.
    pub(super) fn mark_entry(&mut self, i: u64) {
        let r = usize::try_from((SB_SIZE + i * ENTRY_SIZE) / REGION).unwrap_or(usize::MAX);
        if let Some(d) = self.dirty.get_mut(r) {
            *d = true;
        }
    }

    /// `writecache_flush_all_metadata`.
    pub(super) fn mark_all(&mut self) {
        self.dirty.fill(true);
    }

    /// `ssd_commit_flushed`: each run of dirty regions written (the last one clipped to the
    /// metadata), then a flush of the cache device.
    pub(super) fn commit(&mut self, cache: &dyn Volume) -> Result<()> {
        let mut i = 0;
        while i < self.dirty.len() {
            if !self.dirty[i] {
                i += 1;
                continue;
            }
            let j = (i..self.dirty.len())
                .find(|&j| !self.dirty[j])
                .unwrap_or(self.dirty.len());
            let from = i * REGION as usize;
            let to = (j * REGION as usize).min(self.bytes.len());
            cache.write(
                Sector(self.start + (from / 512) as u64),
                &self.bytes[from..to],
            )?;
            i = j;
        }
        cache.flush()?;
        self.dirty.fill(false);
        Ok(())
    }

    /// `writecache_flush`'s last step: seq_count + 1 into the superblock and
    /// `ssd_commit_superblock`, its first `max(4096, block)` bytes (clipped to the
    /// metadata) written with FUA.
    pub(super) fn commit_superblock(&mut self, cache: &dyn Volume, block: u64) -> Result<()> {
        self.seq_count += 1;
        self.put64(24, self.seq_count);
        let len = usize::try_from(block.max(4096))
            .unwrap_or(4096)
            .min(self.bytes.len());
        cache.write_fua(Sector(self.start), &self.bytes[..len])
    }

    /// `init_memory`'s writes: everything (magic zero), a flush, then the magic.
    pub(super) fn format(&mut self, cache: &dyn Volume) -> Result<()> {
        self.mark_all();
        self.commit(cache)?;
        self.put32(0, MAGIC);
        self.dirty[0] = true;
        self.commit(cache)?;
        self.fresh = false;
        Ok(())
    }
}

/// The cached entries (tree and LRU) and the free list.
#[derive(Debug, Default)]
pub(super) struct Lists {
    /// Origin sector -> entry.
    tree: BTreeMap<u64, u64>,
    /// Insertion stamp -> entry (the LRU: highest stamp newest).
    lru: BTreeMap<u64, u64>,
    /// Entry -> its stamp.
    stamp: HashMap<u64, u64>,
    next_stamp: u64,
    /// One bit per free entry.
    free: Vec<u64>,
    free_len: u64,
    /// `current_free`.
    current: Option<u64>,
}

impl Lists {
    /// Empty lists for `n` entries.
    pub(super) fn new(n: u64) -> Lists {
        Lists {
            free: vec![0; usize::try_from(n.div_ceil(64)).unwrap_or(0)],
            ..Lists::default()
        }
    }

    /// The entry caching origin sector `s`.
    pub(super) fn find(&self, s: u64) -> Option<u64> {
        self.tree.get(&s).copied()
    }

    /// The first cached origin sector at or after `s` (`WFE_RETURN_FOLLOWING`).
    pub(super) fn following(&self, s: u64) -> Option<u64> {
        self.tree.range(s..).next().map(|(&o, _)| o)
    }

    /// The entry of the lowest cached origin sector (`rb_first`).
    pub(super) fn lowest(&self) -> Option<u64> {
        self.tree.values().next().copied()
    }

    /// The entries caching `[a, b)`, in origin order.
    pub(super) fn cached_in(&self, a: u64, b: u64) -> Vec<u64> {
        self.tree.range(a..b).map(|(_, &e)| e).collect()
    }

    /// Whether no block is cached.
    pub(super) fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// `freelist_size`.
    pub(super) fn free_len(&self) -> u64 {
        self.free_len
    }

    /// The cached entries, newest first (`wc->lru` from its head).
    pub(super) fn newest_first(&self) -> impl Iterator<Item = u64> + '_ {
        self.lru.values().rev().copied()
    }

    /// The oldest cached entry (`wc->lru.prev`).
    pub(super) fn oldest(&self) -> Option<u64> {
        self.lru.values().next().copied()
    }

    /// `writecache_insert_entry`.
    pub(super) fn insert(&mut self, e: u64, orig: u64) {
        self.tree.insert(orig, e);
        self.lru.insert(self.next_stamp, e);
        self.stamp.insert(e, self.next_stamp);
        self.next_stamp += 1;
    }

    /// `writecache_unlink`.
    pub(super) fn unlink(&mut self, e: u64, orig: u64) {
        if self.tree.get(&orig) == Some(&e) {
            self.tree.remove(&orig);
        }
        if let Some(s) = self.stamp.remove(&e) {
            self.lru.remove(&s);
        }
    }

    /// `writecache_add_to_freelist`.
    pub(super) fn add_free(&mut self, e: u64) {
        if self.free_len == 0 {
            self.current = Some(e);
        }
        let (w, b) = (usize::try_from(e / 64).unwrap_or(usize::MAX), e % 64);
        if let Some(word) = self.free.get_mut(w) {
            if *word & (1 << b) == 0 {
                *word |= 1 << b;
                self.free_len += 1;
            }
        }
    }

    /// The lowest free entry at or after `from`.
    fn next_free(&self, from: u64) -> Option<u64> {
        let mut w = usize::try_from(from / 64).ok()?;
        let mut mask = !0u64 << (from % 64);
        while w < self.free.len() {
            let bits = self.free[w] & mask;
            if bits != 0 {
                return Some(w as u64 * 64 + u64::from(bits.trailing_zeros()));
            }
            w += 1;
            mask = !0;
        }
        None
    }

    /// `writecache_pop_from_freelist`: `current_free` (only if it is `expected`), the
    /// cursor moving to the next free entry, wrapping to the first.
    pub(super) fn pop_free(&mut self, expected: Option<u64>) -> Option<u64> {
        let e = self.current?;
        if expected.is_some_and(|x| x != e) {
            return None;
        }
        let w = usize::try_from(e / 64).ok()?;
        self.free[w] &= !(1 << (e % 64));
        self.free_len -= 1;
        self.current = self.next_free(e + 1).or_else(|| self.next_free(0));
        Some(e)
    }
}
