//! An SSD-mode writecache as dm-writecache.c (6.12) runs it. From `start_sector` of the cache
//! device: `struct wc_memory_superblock` (magic 0x23489321, version 1, block size, n_blocks,
//! seq_count), the `struct wc_memory_entry` array (original sector, seq_count) from byte 64,
//! the data blocks after the metadata rounded up to a block.
//!
//! ```text
//!  cache: [start_sector] superblock(64) entries[n_blocks](16 each) pad | block 0 | block 1 ...
//! ```
//!
//! The metadata is held in memory as the kernel's `memory_map` ([`meta::Meta`]); the lists
//! (the tree of cached blocks, the LRU, the sorted free list and its `current_free`) are
//! rebuilt from it as `writecache_resume` does: an entry is committed when its seq_count is
//! below the superblock's, uncommitted ones are erased, of two committed entries for one
//! block the higher seq_count wins.
//!
//! I/O follows `writecache_map`: a read of a cached block comes from its data block, the rest
//! from the origin; a write to a cached block rewrites its data block in place (committed or
//! not, as SSD mode does), a write to any other block takes the next free entry (the run of
//! free entries that follow it for the next blocks) with the current seq_count, or goes
//! around the cache to the origin when none is free or `cleaner` is set. A flush (and a FUA
//! write, and `autocommit_blocks` uncommitted blocks) commits as `writecache_flush`: the data
//! is already written, then the entries' 64 KiB regions, a flush of the cache device, then
//! the superblock with seq_count + 1 (FUA). A discard frees the cached blocks in its range,
//! writes their entries and passes down to the origin.
//!
//! Writeback (`writecache_writeback`) copies runs of committed entries to the origin,
//! flushes it, then frees the entries and writes them: when the free blocks fall to the high
//! watermark (oldest first, down to the low watermark), for the `flush` message (every
//! entry, in origin order) and on suspend after `flush_on_suspend` or `cleaner`. It runs in
//! the request that started it, so no write ever meets an entry under writeback and one
//! block has one entry. The time-based `autocommit_time` and `max_age` are not run (commits
//! come from flushes, FUA, `autocommit_blocks` and teardown).
//!
//! The kernel's writes at activation (formatting an all-zero superblock, erasing uncommitted
//! entries) are made before the first write, discard or message that changes the cache,
//! or at teardown, so a cache that is only read is never written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};

use crate::error::{Error, Result};
use crate::targets::context::BuildContext;
use crate::targets::Target;
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, SharedVolume, Volume};

use super::meta::{calculate_memory_size, Lists, Meta, Stats, NO_SEQ};
use super::WritecacheArgs;

/// `BIO_MAX_VECS`: the longest run one writeback copy takes.
const MAX_RUN: u64 = 256;

/// A constructed SSD writecache.
#[derive(Debug)]
pub struct Writecache {
    origin: SharedVolume,
    cache: SharedVolume,
    size: SectorCount,
    /// Bytes per block.
    block: u64,
    block_sectors: u64,
    /// Cache sector of data block 0 (`start_sector + metadata_sectors`).
    data_start: u64,
    /// Sectors of the origin (`data_device_sectors`).
    origin_sectors: u64,
    autocommit_blocks: u64,
    metadata_only: bool,
    state: RwLock<State>,
    reads: AtomicU64,
    read_hits: AtomicU64,
}

#[derive(Debug)]
struct State {
    meta: Meta,
    lists: Lists,
    stats: Stats,
    /// `wc->error` (an errno), 0 while healthy.
    error: i32,
    /// `uncommitted_blocks`.
    uncommitted: u64,
    overwrote_committed: bool,
    /// `freelist_high_watermark` / `freelist_low_watermark` in blocks.
    high_wm: u64,
    low_wm: u64,
    cleaner: bool,
    flush_on_suspend: bool,
    /// The activation's own metadata writes are still to be made (see the module comment).
    pending: bool,
    /// Something was written since activation: teardown commits.
    written: bool,
    /// The free blocks reached the high watermark: write back after this request.
    wants_writeback: bool,
    /// The words of the first error.
    error_words: String,
}

fn invalid(words: &str) -> Error {
    Error::invalid("writecache", words.to_string())
}

fn failed(reason: impl Into<String>) -> Error {
    Error::TargetFailed {
        target: "writecache",
        reason: reason.into(),
    }
}

/// `x = n * (100 - percent) + 50; x / 100`.
fn watermark(n: u64, percent: u32) -> u64 {
    (n * u64::from(100 - percent.min(100)) + 50) / 100
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
        let Some((fresh_blocks, fresh_offset)) = calculate_memory_size(region, bs) else {
            return Err(invalid("Invalid device size"));
        };
        let mut first = vec![0u8; usize::try_from(bs).unwrap_or(4096)];
        cache.read(Sector(start), &mut first)?;
        let le32 = |o: usize| u32::from_le_bytes(first[o..o + 4].try_into().expect("4 bytes"));
        let le64 = |o: usize| u64::from_le_bytes(first[o..o + 8].try_into().expect("8 bytes"));
        let fresh = le32(0) == 0 && le32(4) == 0;
        let (n, offset) = if fresh {
            (fresh_blocks, fresh_offset)
        } else {
            if le32(0) != super::meta::MAGIC {
                return Err(invalid("Invalid magic in the superblock"));
            }
            if le32(4) != super::meta::VERSION {
                return Err(invalid("Invalid version in the superblock"));
            }
            if u64::from(le32(8)) != bs {
                return Err(invalid("Block size does not match superblock"));
            }
            let n = le64(16);
            let offset = n
                .checked_mul(16)
                .and_then(|o| o.checked_add(64))
                .and_then(|o| o.checked_next_multiple_of(bs))
                .ok_or_else(|| invalid("Overflow in size calculation"))?;
            let data = n
                .checked_mul(bs)
                .and_then(|d| d.checked_add(offset))
                .ok_or_else(|| invalid("Overflow in size calculation"))?;
            if data > region {
                return Err(invalid("Memory area is too small"));
            }
            (n, offset)
        };
        let meta = if fresh {
            Meta::formatted(n, offset, start, args.block_size)?
        } else {
            Meta::read(&*cache, start, n, offset)?
        };
        let mut wc = Writecache {
            origin_sectors: origin.size().0,
            origin,
            cache,
            size: len,
            block: bs,
            block_sectors: bs / 512,
            data_start: start + offset / 512,
            autocommit_blocks: u64::from(args.autocommit_blocks.unwrap_or(65536)),
            metadata_only: args.metadata_only,
            state: RwLock::new(State {
                meta,
                lists: Lists::default(),
                stats: Stats::default(),
                error: 0,
                uncommitted: 0,
                overwrote_committed: false,
                high_wm: watermark(n, args.high_watermark.unwrap_or(50)),
                low_wm: watermark(n, args.low_watermark.unwrap_or(45)),
                cleaner: false,
                flush_on_suspend: false,
                pending: fresh,
                written: false,
                wants_writeback: false,
                error_words: String::new(),
            }),
            reads: AtomicU64::new(0),
            read_hits: AtomicU64::new(0),
        };
        let st = wc.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        st.resume();
        if args.cleaner {
            st.activate_cleaner();
        }
        Ok(wc)
    }

    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cache sector of entry `idx`'s data (`cache_sector`).
    fn data_sector(&self, idx: u64) -> u64 {
        self.data_start + idx * self.block_sectors
    }

    /// `writecache_map`'s alignment check (EIO with its words).
    fn aligned(&self, sector: Sector, count: SectorCount) -> Result<()> {
        if (sector.0 | count.0) & (self.block_sectors - 1) != 0 {
            return Err(failed(format!(
                "I/O is not aligned, sector {}, size {}, block size {}",
                sector.0,
                count.0 * 512,
                self.block
            )));
        }
        Ok(())
    }

    /// A cached origin sector inside the block at `s` (damaged metadata: entries are
    /// block-aligned): the kernel splits the bio there and fails the rest as unaligned.
    fn split_inside_a_block(&self, s: u64) -> Error {
        failed(format!(
            "I/O is not aligned, a cached block starts inside block at sector {s}, block \
             size {}",
            self.block
        ))
    }

    /// Before the first change: the activation's own writes (format, erased entries).
    fn prepare(&self, st: &mut State) -> Result<()> {
        if st.error != 0 {
            return Err(failed(st.error_words.clone()));
        }
        if st.pending {
            st.pending = false;
            let r = if st.meta.fresh {
                st.meta.format(&*self.cache)
            } else {
                st.meta.commit(&*self.cache)
            };
            st.check(r)?;
        }
        st.written = true;
        Ok(())
    }

    /// `writecache_flush`: commit the uncommitted entries (data is written already):
    /// their regions, a flush, the superblock with seq_count + 1.
    fn commit(&self, st: &mut State) -> Result<()> {
        st.uncommitted = 0;
        let newest: Vec<u64> = st
            .lists
            .newest_first()
            .take_while(|&i| !st.meta.committed(i))
            .collect();
        if newest.is_empty() {
            if st.overwrote_committed && !st.lists.is_empty() {
                let r = self.cache.flush();
                st.check(r)?;
                st.overwrote_committed = false;
            }
            return Ok(());
        }
        for i in newest {
            st.meta.mark_entry(i);
        }
        let r = st.meta.commit(&*self.cache);
        st.check(r)?;
        let r = st.meta.commit_superblock(&*self.cache, self.block);
        st.check(r)?;
        st.overwrote_committed = false;
        Ok(())
    }

    /// `writecache_map_write` for the request `[s, s + blocks)`: how many blocks it takes and
    /// where they go (`Some(cache sector)`, `None` for the origin).
    fn map_write(&self, st: &mut State, s: u64, blocks: u64) -> Result<(u64, Option<u64>)> {
        let bsec = self.block_sectors;
        if let Some(e) = st.lists.find(s) {
            if st.meta.committed(e) {
                st.stats.write_hits_committed += 1;
                st.overwrote_committed = true;
            } else {
                st.stats.write_hits_uncommitted += 1;
            }
            // writecache_bio_copy_ssd, search_used: the next cached blocks while both the
            // origin blocks and the entries follow on.
            let mut n = 1;
            let mut f = e;
            while n < blocks {
                match st.lists.find(s + n * bsec) {
                    Some(g) if g == f + 1 => {
                        if st.meta.committed(g) {
                            st.overwrote_committed = true;
                        }
                        f = g;
                        n += 1;
                    }
                    _ => break,
                }
            }
            st.stats.writes += n;
            return Ok((n, Some(self.data_sector(e))));
        }
        let around = st.cleaner || self.metadata_only;
        let e = if around { None } else { st.pop_free(None) };
        let Some(e) = e else {
            // direct_write: up to the next cached block.
            let n = match st.lists.following(s) {
                Some(next) => ((next - s) / bsec).min(blocks),
                None => blocks,
            };
            if n == 0 {
                return Err(self.split_inside_a_block(s));
            }
            st.stats.writes_around += n;
            st.stats.writes += n;
            return Ok((n, None));
        };
        st.new_entry(e, s);
        st.stats.writes_allocate += 1;
        let mut n = 1;
        while n < blocks {
            let Some(f) = st.pop_free(Some(e + n)) else {
                break;
            };
            st.new_entry(f, s + n * bsec);
            n += 1;
        }
        st.stats.writes += n;
        st.stats.writes_allocate += n - 1;
        Ok((n, Some(self.data_sector(e))))
    }

    fn write_as(&self, sector: Sector, buf: &[u8], fua: bool) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.aligned(sector, count)?;
        let mut st = self.lock();
        self.prepare(&mut st)?;
        let mut s = sector.0;
        let mut at = 0usize;
        let mut to_cache = false;
        while at < buf.len() {
            let left = ((buf.len() - at) / 512) as u64 / self.block_sectors;
            let (n, dest) = self.map_write(&mut st, s, left)?;
            let bytes = usize::try_from(n * self.block).unwrap_or(usize::MAX);
            let piece = &buf[at..at + bytes];
            let r = match dest {
                Some(c) => {
                    to_cache = true;
                    self.cache.write(Sector(c), piece)
                }
                None if fua => self.origin.write_fua(Sector(s), piece),
                None => self.origin.write(Sector(s), piece),
            };
            if let Err(e) = r {
                if dest.is_some() {
                    st.error = e.errno();
                }
                return Err(e);
            }
            at += bytes;
            s += n * self.block_sectors;
        }
        if to_cache && (fua || st.uncommitted >= self.autocommit_blocks) {
            self.commit(&mut st)?;
        }
        self.writeback_if_low(&mut st)
    }

    /// `writecache_verify_watermark` and the writeback it queues: the oldest entries while
    /// the free blocks are at or under the low watermark.
    fn writeback_if_low(&self, st: &mut State) -> Result<()> {
        if !st.wants_writeback {
            return Ok(());
        }
        st.wants_writeback = false;
        loop {
            if st.lists.is_empty() || st.lists.free_len() > st.low_wm {
                return Ok(());
            }
            let oldest = st.lists.oldest().expect("not empty");
            self.write_back(st, oldest)?;
        }
    }

    /// One writeback run from entry `e` on: `e` and the committed entries after it in both
    /// origin and cache order (at most 256), copied, the origin flushed, then freed and
    /// written. Returns the entries taken.
    fn write_back(&self, st: &mut State, e: u64) -> Result<u64> {
        if !st.meta.committed(e) {
            self.commit(st)?;
        }
        let orig = st.meta.original_sector(e);
        let mut n = 1;
        while n < MAX_RUN {
            let next = orig.checked_add(n * self.block_sectors);
            match next.and_then(|o| st.lists.find(o)) {
                Some(g) if g == e + n && st.meta.committed(g) => n += 1,
                _ => break,
            }
        }
        // Clamped to the origin's end; a run past it is only freed.
        let end = orig
            .saturating_add(n * self.block_sectors)
            .min(self.origin_sectors);
        if orig < end {
            let r = self.copy(self.data_sector(e), orig, end - orig);
            st.check(r)?;
        }
        let r = self.origin.flush();
        st.check(r)?;
        for i in e..e + n {
            st.free_entry(i);
        }
        let r = st.meta.commit(&*self.cache);
        st.check(r)?;
        Ok(n)
    }

    fn copy(&self, from: u64, to: u64, sectors: u64) -> Result<()> {
        let mut buf = vec![0u8; usize::try_from(sectors.min(2048) * 512).unwrap_or(1 << 20)];
        let mut done = 0;
        while done < sectors {
            let k = (sectors - done).min(2048);
            let b = &mut buf[..usize::try_from(k * 512).unwrap_or(1 << 20)];
            self.cache.read(Sector(from + done), b)?;
            self.origin.write(Sector(to + done), b)?;
            done += k;
        }
        Ok(())
    }

    /// Commit, then copy every entry to the origin in origin order and free it (the `flush`
    /// message, `writeback_all`). Returns the blocks written back.
    fn write_back_all(&self, st: &mut State) -> Result<u64> {
        self.commit(st)?;
        let mut total = 0;
        while let Some(e) = st.lists.lowest() {
            total += self.write_back(st, e)?;
        }
        Ok(total)
    }

    /// Every cached block copied to the origin and freed, the metadata written (what the
    /// `flush` message does); the blocks written back.
    pub fn write_back_everything(&self) -> Result<u64> {
        let mut st = self.lock();
        self.prepare(&mut st)?;
        self.write_back_all(&mut st)
    }

    /// `writecache_suspend`: commit, then with `flush_on_suspend` (or `cleaner`) write
    /// everything back. At teardown the activation's own writes are made too, if still
    /// pending.
    fn suspend(&self, teardown: bool) -> Result<()> {
        let mut st = self.lock();
        if st.error != 0 || !(st.written || st.flush_on_suspend || (teardown && st.pending)) {
            return Ok(());
        }
        self.prepare(&mut st)?;
        self.commit(&mut st)?;
        if st.flush_on_suspend {
            st.flush_on_suspend = false;
            self.write_back_all(&mut st)?;
        }
        Ok(())
    }
}

impl State {
    /// Store `r`'s failure as the cache's error (`writecache_error`).
    fn check(&mut self, r: Result<()>) -> Result<()> {
        if let Err(e) = &r {
            self.fail(e.errno().max(1), e.to_string());
        }
        r
    }

    /// `writecache_error`: the first error stays.
    fn fail(&mut self, errno: i32, words: String) {
        if self.error == 0 {
            self.error = errno;
            self.error_words = words;
        }
    }

    /// `writecache_resume`'s walk of the entries: uncommitted ones erased and freed, of two
    /// committed entries for one block the lower seq_count erased (equal ones are an error,
    /// the later one kept), the rest cached in entry order.
    fn resume(&mut self) {
        let n = self.meta.n_blocks;
        self.lists = Lists::new(n);
        let mut need_flush = false;
        for b in 0..n {
            let orig = self.meta.original_sector(b);
            let sq = self.meta.seq(b);
            if !self.meta.committed(b) {
                if sq != NO_SEQ {
                    self.meta.clear_seq(b);
                    need_flush = true;
                }
                self.lists.add_free(b);
                continue;
            }
            let Some(old) = self.lists.find(orig) else {
                self.lists.insert(b, orig);
                continue;
            };
            let old_seq = self.meta.seq(old);
            if old_seq == sq {
                self.fail(
                    crate::error::errno::EINVAL,
                    format!("two identical entries, position {b}, sector {orig}, sequence {sq}"),
                );
            }
            if old_seq > sq {
                self.meta.clear_seq(b);
                self.lists.add_free(b);
            } else {
                self.free_entry(old);
                self.lists.insert(b, orig);
            }
            need_flush = true;
        }
        if need_flush {
            self.meta.mark_all();
            self.pending = true;
        }
        self.uncommitted = 0;
        self.overwrote_committed = false;
        self.wants_writeback = self.lists.free_len() <= self.high_wm;
    }

    /// `activate_cleaner`.
    fn activate_cleaner(&mut self) {
        self.flush_on_suspend = true;
        self.cleaner = true;
        self.high_wm = self.meta.n_blocks;
        self.low_wm = self.meta.n_blocks;
    }

    /// `writecache_pop_from_freelist` and its `writecache_verify_watermark`.
    fn pop_free(&mut self, expected: Option<u64>) -> Option<u64> {
        let e = self.lists.pop_free(expected)?;
        if self.lists.free_len() <= self.high_wm {
            self.wants_writeback = true;
        }
        Some(e)
    }

    /// A new entry `e` for origin sector `orig` with the current seq_count.
    fn new_entry(&mut self, e: u64, orig: u64) {
        let seq = self.meta.seq_count;
        self.meta.set_entry(e, orig, seq);
        self.lists.insert(e, orig);
        self.uncommitted += 1;
    }

    /// `writecache_free_entry`.
    fn free_entry(&mut self, e: u64) {
        let orig = self.meta.original_sector(e);
        self.lists.unlink(e, orig);
        self.lists.add_free(e);
        self.meta.clear_seq(e);
        self.meta.mark_entry(e);
    }
}

impl Volume for Writecache {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn logical_block_size(&self) -> u32 {
        u32::try_from(self.block).unwrap_or(4096)
    }

    /// `writecache_map_read`: a cached block from its data block, a run of others from the
    /// origin (up to the next cached block).
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.aligned(sector, count)?;
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let mut at = 0usize;
        let mut s = sector.0;
        while at < buf.len() {
            let left = ((buf.len() - at) / 512) as u64 / self.block_sectors;
            self.reads.fetch_add(1, Ordering::Relaxed);
            let (n, from) = match st.lists.following(s) {
                Some(o) if o == s => {
                    self.read_hits.fetch_add(1, Ordering::Relaxed);
                    let e = st.lists.find(s).expect("found");
                    (1, Some(self.data_sector(e)))
                }
                Some(o) => (((o - s) / self.block_sectors).min(left), None),
                None => (left, None),
            };
            if n == 0 {
                return Err(self.split_inside_a_block(s));
            }
            self.reads.fetch_add(n - 1, Ordering::Relaxed);
            let bytes = usize::try_from(n * self.block).unwrap_or(usize::MAX);
            let piece = &mut buf[at..at + bytes];
            match from {
                Some(c) => self.cache.read(Sector(c), piece)?,
                None => self.origin.read(Sector(s), piece)?,
            }
            at += bytes;
            s += n * self.block_sectors;
        }
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write_as(sector, buf, false)
    }

    /// The data goes where `write` sends it; a block that went to the cache is then
    /// committed (`writecache_end_io` offloads the FUA bio to `writecache_flush`).
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write_as(sector, buf, true)
    }

    /// REQ_PREFLUSH: the second flush bio to the origin, the first counted and committed.
    fn flush(&self) -> Result<()> {
        {
            let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
            if st.error != 0 {
                return Err(failed(st.error_words.clone()));
            }
        }
        self.origin.flush()?;
        let mut st = self.lock();
        st.stats.flushes += 1;
        self.commit(&mut st)
    }

    /// `writecache_discard`: the cached blocks in the range are freed and their entries
    /// written, then the discard goes to the origin.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.aligned(sector, count)?;
        let mut st = self.lock();
        st.stats.discards += count.0 / self.block_sectors;
        self.prepare(&mut st)?;
        let end = sector.0 + count.0;
        let hit = st.lists.cached_in(sector.0, end);
        if !hit.is_empty() {
            for e in hit {
                st.free_entry(e);
            }
            let r = st.meta.commit(&*self.cache);
            st.check(r)?;
        }
        drop(st);
        self.origin.discard(sector, count)
    }
}

impl Drop for Writecache {
    /// Teardown suspends (errors cannot be reported from here).
    fn drop(&mut self) {
        let _ = self.suspend(true);
    }
}

impl Target for Writecache {
    /// `writecache_status` STATUSTYPE_INFO: error, blocks, free blocks, blocks under
    /// writeback, then the counters.
    fn status(&self) -> String {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let s = &st.stats;
        format!(
            "{} {} {} 0 {} {} {} {} {} {} {} 0 {} {}",
            u8::from(st.error != 0),
            st.meta.n_blocks,
            st.lists.free_len(),
            self.reads.load(Ordering::Relaxed),
            self.read_hits.load(Ordering::Relaxed),
            s.writes,
            s.write_hits_uncommitted,
            s.write_hits_committed,
            s.writes_around,
            s.writes_allocate,
            s.flushes,
            s.discards,
        )
    }

    /// `writecache_message`: `flush`, `flush_on_suspend`, `cleaner`, `clear_stats` (one
    /// word each, case-insensitive).
    fn message(&self, argv: &[&str]) -> Result<String> {
        let word = argv
            .first()
            .map(|w| w.to_ascii_lowercase())
            .unwrap_or_default();
        let known = ["flush", "flush_on_suspend", "cleaner", "clear_stats"];
        if !known.contains(&word.as_str()) {
            return Err(invalid(&format!(
                "unrecognised message received: {}",
                argv.first().unwrap_or(&"")
            )));
        }
        if argv.len() != 1 {
            return Err(invalid("Invalid argument count"));
        }
        let mut st = self.lock();
        match word.as_str() {
            "flush" => {
                self.prepare(&mut st)
                    .map_err(|_| failed("flush: the cache has failed"))?;
                self.write_back_all(&mut st)?;
            }
            "flush_on_suspend" => st.flush_on_suspend = true,
            "cleaner" => {
                st.activate_cleaner();
                st.wants_writeback = true;
                if !st.lists.is_empty() {
                    self.prepare(&mut st)?;
                }
                self.writeback_if_low(&mut st)?;
            }
            _ => {
                st.stats = Stats::default();
                self.reads.store(0, Ordering::Relaxed);
                self.read_hits.store(0, Ordering::Relaxed);
            }
        }
        Ok(String::new())
    }

    fn postsuspend(&self) -> Result<()> {
        self.suspend(false)
    }

    /// `writecache_resume`: the lists rebuilt from the metadata.
    fn resume(&self) {
        self.lock().resume();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::table::args::Args;
    use crate::volume::MemVolume;

    fn wc(opts: &str) -> (Writecache, Arc<MemVolume>, Arc<MemVolume>) {
        let words: Vec<String> = format!("s o c 4096 {opts}")
            .split(' ')
            .map(str::to_string)
            .collect();
        let args = WritecacheArgs::parse(&mut Args::new(&words)).unwrap();
        let origin = Arc::new(MemVolume::new(SectorCount(16384)).unwrap());
        let cache = Arc::new(MemVolume::new(SectorCount(2048)).unwrap());
        let w = Writecache::over(&args, SectorCount(16384), origin.clone(), cache.clone());
        (w.unwrap(), origin, cache)
    }

    fn field(w: &Writecache, i: usize) -> u64 {
        w.status().split(' ').nth(i).unwrap().parse().unwrap()
    }

    #[test]
    fn cleaner_writes_everything_back_and_later_writes_go_around() {
        let (w, origin, _) = wc("0");
        w.write(Sector(0), &[1; 8192]).unwrap();
        w.write(Sector(800), &[2; 4096]).unwrap();
        assert_eq!((field(&w, 1), field(&w, 2)), (254, 251));
        w.message(&["cleaner"]).unwrap();
        // activate_cleaner: both watermarks at n_blocks, so every entry is written back.
        assert_eq!(field(&w, 2), 254);
        let mut b = vec![0; 4096];
        origin.read(Sector(800), &mut b).unwrap();
        assert_eq!(b, vec![2; 4096]);
        // A block not cached goes around the cache (writes_around).
        w.write(Sector(8), &[3; 4096]).unwrap();
        assert_eq!((field(&w, 2), field(&w, 9)), (254, 1));
        origin.read(Sector(8), &mut b).unwrap();
        assert_eq!(b, vec![3; 4096]);
    }

    #[test]
    fn unaligned_io_and_unknown_messages_fail_with_the_kernels_words() {
        let (w, _, _) = wc("0");
        let e = w.write(Sector(4), &[0; 4096]).unwrap_err();
        assert!(
            e.to_string().contains("I/O is not aligned, sector 4"),
            "{e}"
        );
        assert_eq!(e.errno(), 5);
        let e = w.message(&["bogus"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("unrecognised message received: bogus"),
            "{e}"
        );
        assert_eq!(w.message(&["flush", "x"]).unwrap_err().errno(), 22);
        assert_eq!(w.message(&["CLEAR_STATS"]).unwrap(), "");
    }
}
