//! The tree-building engine shared by format and verify: a level is hashed in chunks of
//! hash blocks spread over all cores (`std::thread::scope`), reading source blocks (data or
//! the level below) in batches, so memory stays bounded by the chunk size.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::hash::BlockHasher;
use super::hash_tree::Geometry;
use crate::error::{Error, Result};
use crate::units::{Sector, SECTOR_SIZE};
use crate::volume::Volume;

/// Hash blocks a thread takes at a time (16 x 128 data blocks of 4 KiB = 8 MiB of data).
const CHUNK_HASH_BLOCKS: usize = 16;
/// Source bytes read per call.
const READ_BYTES: usize = 1 << 20;

/// Where source blocks come from: a volume or the hash file being written.
pub(super) trait Source: Sync {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

pub(super) struct VolumeSource<'a>(pub(super) &'a dyn Volume);
impl Source for VolumeSource<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0.read(Sector(offset / SECTOR_SIZE as u64), buf)
    }
}

pub(super) struct FileSource<'a>(pub(super) &'a File);
impl Source for FileSource<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.0
            .read_exact_at(buf, offset)
            .map_err(Error::io(&"hash device"))
    }
}

/// One level's job: hash `count` source blocks of `src_bs` bytes from `src_off` into hash
/// blocks, passing each finished run of hash blocks to `sink(first_block_index_in_level, bytes)`.
pub(super) struct Level<'a> {
    pub(super) geo: &'a Geometry,
    pub(super) hasher: &'a BlockHasher,
    pub(super) src: &'a dyn Source,
    pub(super) src_off: u64,
    pub(super) src_bs: usize,
    pub(super) count: u64,
}

impl Level<'_> {
    fn hash_blocks(&self, first: u64, out: &mut [u8]) -> Result<()> {
        let hbs = self.geo.hash_block_size as usize;
        let per = self.geo.per_block() as u64;
        let ds = self.geo.digest_size;
        let slot = self.geo.slot_size();
        let batch = (READ_BYTES / self.src_bs).max(1);
        // Page-aligned: copies into large buffers at page offset 16 (where glibc puts big
        // allocations) run several times slower on this class of CPU (DESIGN.md).
        let len = batch.min(usize::try_from(per).unwrap_or(batch)) * self.src_bs;
        let mut raw = vec![0u8; len + 4096];
        let at = raw.as_ptr().align_offset(4096).min(4096);
        let buf = &mut raw[at..at + len];
        for (i, block) in out.chunks_exact_mut(hbs).enumerate() {
            let h = first + i as u64;
            let s0 = h * per;
            let s1 = (s0 + per).min(self.count);
            let mut s = s0;
            while s < s1 {
                let n = usize::try_from((s1 - s).min(batch as u64)).unwrap_or(1);
                let bytes = &mut buf[..n * self.src_bs];
                self.src
                    .read_at(self.src_off + s * self.src_bs as u64, bytes)?;
                for (j, data) in bytes.chunks_exact(self.src_bs).enumerate() {
                    let at = usize::try_from(s - s0).unwrap_or(0) + j;
                    self.hasher
                        .hash(data, &mut block[at * slot..at * slot + ds]);
                }
                s += n as u64;
            }
        }
        Ok(())
    }

    /// Run over the whole level on all cores. Threads take runs of hash blocks from a shared
    /// counter (no barrier per round, so a descheduled thread stalls nobody) and hand each
    /// finished run to `sink(first_block_in_level, bytes)`, which must be position-addressed.
    /// On failure the error of the lowest run wins.
    pub(super) fn run(&self, sink: &(dyn Fn(u64, &[u8]) -> Result<()> + Sync)) -> Result<()> {
        let hbs = self.geo.hash_block_size as usize;
        let per = self.geo.per_block() as u64;
        let total = self.count.div_ceil(per);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let next = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let step = CHUNK_HASH_BLOCKS as u64;
        let worker = || -> Option<(u64, Error)> {
            let mut buf = vec![0u8; CHUNK_HASH_BLOCKS * hbs];
            loop {
                let h = next.fetch_add(step, Ordering::Relaxed);
                if h >= total || failed.load(Ordering::Relaxed) {
                    return None;
                }
                let n = usize::try_from((total - h).min(step)).unwrap_or(1);
                let part = &mut buf[..n * hbs];
                part.fill(0);
                if let Err(e) = self.hash_blocks(h, part).and_then(|()| sink(h, part)) {
                    failed.store(true, Ordering::Relaxed);
                    return Some((h, e));
                }
            }
        };
        let mut errors: Vec<(u64, Error)> = std::thread::scope(|scope| {
            let jobs: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
            jobs.into_iter()
                .filter_map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Some((0, Error::invalid("verity", "hash thread panicked")))
                    })
                })
                .collect()
        });
        errors.sort_by_key(|(h, _)| *h);
        match errors.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

/// Digest of the top block (or of data block 0 when there is no tree), as cryptsetup
/// computes the root; zeros for an empty data area.
pub(super) fn root_digest(
    geo: &Geometry,
    hasher: &BlockHasher,
    data: &dyn Source,
    hash: &dyn Source,
) -> Result<Vec<u8>> {
    let mut root = vec![0u8; geo.digest_size];
    let (src, off, bs) = match geo.levels() {
        0 if geo.data_blocks == 0 => return Ok(root),
        0 => (data, 0, geo.data_block_size),
        l => (
            hash,
            geo.level_block[l - 1] * u64::from(geo.hash_block_size),
            geo.hash_block_size,
        ),
    };
    let mut b = vec![0u8; bs as usize];
    src.read_at(off, &mut b)?;
    hasher.hash(&b, &mut root);
    Ok(root)
}
