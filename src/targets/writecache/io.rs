//! Reading an SSD-mode writecache as dm-writecache.c lays it out: from `start_sector` of the
//! cache device, `struct wc_memory_superblock` (magic 0x23489321, version 1, block size,
//! n_blocks, seq_count), the `struct wc_memory_entry` array (original sector, seq_count) from
//! byte 64, the data blocks after the metadata rounded up to a block. An entry is committed
//! when its seq_count is below the superblock's; of the committed entries for one origin
//! block the highest seq_count wins (`writecache_resume`). Reads of a cached block come from
//! its data block, the rest from the origin. Writes, discards and the writeback are not
//! executed (refused), so nothing is written: an all-zero superblock (which the kernel
//! formats) reads as an empty cache.
//!
//! ```text
//!  cache: [start_sector] superblock(64) entries[n_blocks](16 each) pad | block 0 | block 1 ...
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::targets::context::BuildContext;
use crate::targets::Target;
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, SharedVolume, Volume};

use super::WritecacheArgs;

/// `MEMORY_SUPERBLOCK_MAGIC`.
const MAGIC: u32 = 0x2348_9321;
/// `MEMORY_SUPERBLOCK_VERSION`.
const VERSION: u32 = 1;
/// `sizeof(struct wc_memory_superblock)` up to its entries.
const SB_SIZE: u64 = 64;
/// `sizeof(struct wc_memory_entry)`.
const ENTRY_SIZE: u64 = 16;

/// A constructed SSD writecache, read side.
#[derive(Debug)]
pub struct Writecache {
    origin: SharedVolume,
    cache: SharedVolume,
    size: SectorCount,
    block_sectors: u64,
    /// Origin block's first sector -> the cache sector of its data.
    map: HashMap<u64, u64>,
    n_blocks: u64,
    reads: AtomicU64,
    read_hits: AtomicU64,
}

fn invalid(words: &str) -> Error {
    Error::invalid("writecache", words.to_string())
}

/// `calculate_memory_size`: whether a region of `bytes` holds at least one block.
fn fits_a_block(bytes: u64, block: u64) -> bool {
    let mut n = bytes / (block + ENTRY_SIZE);
    while n > 0 {
        let offset = (SB_SIZE + n * ENTRY_SIZE).next_multiple_of(block);
        if offset + n * block <= bytes {
            return true;
        }
        n -= 1;
    }
    false
}

impl Writecache {
    /// `writecache_ctr` + `writecache_resume` in SSD mode.
    pub fn new(args: &WritecacheArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Self> {
        let (origin, cache) = args.devices(ctx)?;
        Writecache::over(args, len, origin, cache)
    }

    /// [`Writecache::new`] over volumes already open (SSD mode).
    pub fn over(
        args: &WritecacheArgs,
        len: SectorCount,
        origin: SharedVolume,
        cache: SharedVolume,
    ) -> Result<Self> {
        let bs = u64::from(args.block_size);
        let start = args.start_sector.unwrap_or(0);
        let region = cache.size().0.saturating_sub(start) * 512;
        if !fits_a_block(region, bs) {
            return Err(invalid("Invalid device size"));
        }
        let mut sb = vec![0u8; usize::try_from(bs).unwrap_or(4096)];
        cache.read(Sector(start), &mut sb)?;
        let le32 = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes"));
        let le64 = |o: usize| u64::from_le_bytes(sb[o..o + 8].try_into().expect("8 bytes"));
        let mut wc = Writecache {
            origin,
            cache,
            size: len,
            block_sectors: bs / 512,
            map: HashMap::new(),
            n_blocks: 0,
            reads: AtomicU64::new(0),
            read_hits: AtomicU64::new(0),
        };
        if le32(0) == 0 && le32(4) == 0 {
            // init_memory would format it: no entry is in use.
            return Ok(wc);
        }
        if le32(0) != MAGIC {
            return Err(invalid("Invalid magic in the superblock"));
        }
        if le32(4) != VERSION {
            return Err(invalid("Invalid version in the superblock"));
        }
        if u64::from(le32(8)) != bs {
            return Err(invalid("Block size does not match superblock"));
        }
        let n = le64(16);
        let seq = le64(24);
        let offset = n
            .checked_mul(ENTRY_SIZE)
            .and_then(|o| o.checked_add(SB_SIZE))
            .and_then(|o| o.checked_next_multiple_of(bs))
            .ok_or_else(|| invalid("Overflow in size calculation"))?;
        let data = n
            .checked_mul(bs)
            .and_then(|d| d.checked_add(offset))
            .ok_or_else(|| invalid("Overflow in size calculation"))?;
        if data > region {
            return Err(invalid("Memory area is too small"));
        }
        let data_start = start + offset / 512;
        // The entries, a megabyte at a time; only committed ones are kept.
        let mut best: HashMap<u64, (u64, u64)> = HashMap::new();
        let mut buf = vec![0u8; 1 << 20];
        let first = start * 512 + SB_SIZE;
        let mut i = 0u64;
        while i < n {
            // Read whole sectors covering entries i.. (the entry array starts at byte 64).
            let byte = first + i * ENTRY_SIZE;
            let sector = byte / 512;
            let skip = usize::try_from(byte % 512).unwrap_or(0);
            let take = usize::try_from((n - i) * ENTRY_SIZE)
                .unwrap_or(usize::MAX)
                .min(buf.len() - 512);
            let span = (skip + take).next_multiple_of(512);
            wc.cache.read(Sector(sector), &mut buf[..span])?;
            for e in buf[skip..skip + take].chunks_exact(16) {
                let orig = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
                let sq = u64::from_le_bytes(e[8..].try_into().expect("8 bytes"));
                if sq < seq {
                    match best.get(&orig) {
                        Some(&(s, _)) if s == sq => {
                            return Err(Error::Corrupt {
                                what: "writecache entry",
                                offset: first + i * ENTRY_SIZE,
                                detail: format!(
                                    "two identical entries, position {i}, sector {orig}, \
                                     sequence {sq}"
                                ),
                            });
                        }
                        Some(&(s, _)) if s > sq => {}
                        _ => {
                            best.insert(orig, (sq, i));
                        }
                    }
                }
                i += 1;
            }
        }
        wc.n_blocks = n;
        wc.map = best
            .into_iter()
            .map(|(orig, (_, idx))| (orig, data_start + idx * wc.block_sectors))
            .collect();
        Ok(wc)
    }
}

impl Volume for Writecache {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let mut at = 0usize;
        let mut s = sector.0;
        while at < buf.len() {
            let off = s % self.block_sectors;
            let n = usize::try_from((self.block_sectors - off) * 512)
                .unwrap_or(usize::MAX)
                .min(buf.len() - at);
            self.reads.fetch_add(1, Ordering::Relaxed);
            let piece = &mut buf[at..at + n];
            match self.map.get(&(s - off)) {
                Some(&c) => {
                    self.read_hits.fetch_add(1, Ordering::Relaxed);
                    self.cache.read(Sector(c + off), piece)?;
                }
                None => self.origin.read(Sector(s), piece)?,
            }
            at += n;
            s += (n / 512) as u64;
        }
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        Err(Error::Unsupported {
            target: "writecache",
            op: "writes (dmemu reads writecache devices, it does not write them)",
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        Err(Error::Unsupported {
            target: "writecache",
            op: "discard",
        })
    }
}

impl Target for Writecache {
    /// `writecache_status` STATUSTYPE_INFO: error, blocks, free blocks, blocks under
    /// writeback, then the counters (reads and read hits counted per block piece).
    fn status(&self) -> String {
        let free = self.n_blocks - self.map.len() as u64;
        format!(
            "0 {} {free} 0 {} {} 0 0 0 0 0 0 0 0",
            self.n_blocks,
            self.reads.load(Ordering::Relaxed),
            self.read_hits.load(Ordering::Relaxed),
        )
    }
}
