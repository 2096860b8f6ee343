//! The verity target's memory: a bounded FIFO of verified hash blocks (the kernel keeps
//! them in dm-bufio with a `hash_verified` flag) and the `check_at_most_once` bitmap.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// Cached blocks by hash block index, and their insertion order.
type CacheMap = (crate::block_map::BlockMap<Arc<[u8]>>, VecDeque<u64>);

/// A bounded FIFO of verified hash blocks.
#[derive(Debug)]
pub(super) struct HashCache {
    capacity: usize,
    inner: Mutex<CacheMap>,
}

impl HashCache {
    pub(super) fn new(capacity: usize) -> HashCache {
        HashCache {
            capacity: capacity.max(1),
            inner: Mutex::new((HashMap::default(), VecDeque::new())),
        }
    }

    pub(super) fn get(&self, block: u64) -> Option<Arc<[u8]>> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.0.get(&block).cloned()
    }

    pub(super) fn insert(&self, block: u64, data: Arc<[u8]>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.0.insert(block, data).is_none() {
            g.1.push_back(block);
        }
        while g.1.len() > self.capacity {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
    }
}

/// A bitmap that many readers set bits in at once.
#[derive(Debug)]
pub(super) struct AtomicBitmap(Vec<AtomicU64>);

impl AtomicBitmap {
    pub(super) fn new(bits: u64) -> Result<AtomicBitmap> {
        let words = usize::try_from(bits.div_ceil(64))
            .map_err(|_| Error::invalid("check_at_most_once", "bitmap too large"))?;
        Ok(AtomicBitmap(
            (0..words).map(|_| AtomicU64::new(0)).collect(),
        ))
    }
    fn word(&self, bit: u64) -> Option<(&AtomicU64, u64)> {
        let w = usize::try_from(bit / 64).ok()?;
        Some((self.0.get(w)?, 1u64 << (bit % 64)))
    }
    pub(super) fn test(&self, bit: u64) -> bool {
        self.word(bit)
            .is_some_and(|(w, m)| w.load(Ordering::Relaxed) & m != 0)
    }
    pub(super) fn set(&self, bit: u64) {
        if let Some((w, m)) = self.word(bit) {
            w.fetch_or(m, Ordering::Relaxed);
        }
    }
}
