//! The integrity target: reads verify every block's tag (EILSEQ on a mismatch, as
//! `integrity_metadata`'s TAG_CMP), writes store data and tags in the kernel's order for the
//! mode.
//!
//! Opening never writes: the journal is replayed into memory (the blocks it holds are served
//! from there, their tags checked as `do_journal_write(from_replay)` does) and written to
//! their places, with the journal cleared, before the first write (what the kernel's resume
//! does at once). Crash order of writes:
//! - J: each write goes to journal sections first (one section per write call of up to
//!   `journal_section_entries` blocks, all of its sectors carrying the commit id of the
//!   ring's sequence, flushed), then data and tags go to their places. Before a section is
//!   reused the device is flushed, so every journal copy that can still be replayed is
//!   either newer than or equal to what is in place; a torn section has mixed commit ids
//!   and the kernel's replay stops before it.
//! - B: the bitmap bit of a region is set and written (FUA) before its data and tags; a
//!   flush clears the bits again once data and tags are durable (`bitmap_flush_work`).
//! - D: data, then tags, no ordering between them (as the kernel: D mode is not crash safe).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{errno, Error, Result};
use crate::targets::context::BuildContext;
use crate::targets::{Target, TargetSpec};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, SharedVolume, TagProfile, Volume};

use super::hash::{Crc32cRun, TagHasher};
use super::journal::{self, JournalBlock, Replay};
use super::layout::Layout;
use super::superblock::{
    Superblock, FLAG_DIRTY_BITMAP, FLAG_DISCARD_KEYED, FLAG_FIXED_HMAC, FLAG_HAVE_JOURNAL_MAC,
    FLAG_INLINE, FLAG_RECALCULATING, SB_SECTORS,
};
use super::{IntegrityArgs, Mode};

const TARGET: &str = "integrity";
/// `DISCARD_FILLER`: the tag bytes of a discarded block (allow_discards without a key).
const DISCARD_FILLER: u8 = 0xf6;
/// `DEFAULT_BUFFER_SECTORS`.
const DEFAULT_BUFFER_SECTORS: u32 = 128;
/// `BITMAP_BLOCK_SIZE`.
const BITMAP_BLOCK_SIZE: u64 = 4096;
/// `DEFAULT_SECTORS_PER_BITMAP_BIT` (log2).
const DEFAULT_LOG2_SECTORS_PER_BITMAP_BIT: u32 = 15;
/// Largest journal (bytes) dmemu reads at open; the kernel's default maximum is 64 MiB.
const MAX_JOURNAL_BYTES: u64 = 1 << 30;

/// State changed by writes, under one lock (writes are serialised, as the kernel's range
/// locks serialise overlapping ones).
#[derive(Debug)]
struct WriteState {
    /// Replayed journal blocks not yet written to their places.
    pending: bool,
    /// J: the next section to write and its commit sequence.
    next_section: u32,
    seq: u8,
    /// Writes to data or tags since the last flush of the device.
    unflushed: bool,
    /// B: the bitmap as on disk, and whether the superblock says it is in use.
    bitmap: Vec<u8>,
    bitmap_live: bool,
    /// Dirty bitmap regions (a crash in B mode) still to recalculate.
    dirty_regions: Vec<u64>,
}

/// A built `integrity` target over one device.
#[derive(Debug)]
pub struct Integrity {
    dev: SharedVolume,
    args: IntegrityArgs,
    len: SectorCount,
    layout: Layout,
    sb: Mutex<Superblock>,
    hasher: Option<TagHasher>,
    /// crc32c with 4-byte tags: a whole run checked in one CRC pass (see [`Crc32cRun`]).
    crc_run: Option<Crc32cRun>,
    /// Start of the superblock on `dev`, in bytes.
    base: u64,
    /// Replayed journal blocks, by data sector.
    replayed: RwLock<BTreeMap<u64, JournalBlock>>,
    /// What the kernel would latch the device failed with (errno, why).
    failed: Option<(i32, String)>,
    /// Regions whose tags are not checked on read: the dirty bitmap after a B-mode crash
    /// (bit per `1 << log2_sectors_per_bit` sectors).
    unchecked: Vec<u8>,
    /// log2 of the sectors one bitmap bit covers (`log2_sectors_per_bitmap_bit`).
    bitmap_log2: u32,
    /// Bytes of the bitmap (whole 4 KiB bitmap blocks).
    n_bitmap_bytes: usize,
    /// Writes exclude reads of the blocks they change (a read must not see new data with an
    /// old tag).
    range: RwLock<()>,
    state: Mutex<WriteState>,
    mismatches: AtomicU64,
}

fn corrupt(offset: u64, detail: String) -> Error {
    Error::Corrupt {
        what: "integrity superblock",
        offset,
        detail,
    }
}

fn invalid(reason: &str) -> Error {
    Error::InvalidArgument {
        what: "integrity table",
        reason: reason.to_string(),
    }
}

fn bytes_usize(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::InvalidArgument {
        what: "integrity",
        reason: format!("{n} bytes do not fit in memory"),
    })
}

impl Integrity {
    /// The kernel's ctr + resume for `args` over `dev` (the device named in the table).
    pub fn new(
        args: &IntegrityArgs,
        len: SectorCount,
        ctx: &dyn BuildContext,
    ) -> Result<Integrity> {
        let dev = ctx.volume(&args.dev)?;
        Integrity::over(dev, args, len)
    }

    /// The target over an already opened device.
    pub fn over(dev: SharedVolume, args: &IntegrityArgs, len: SectorCount) -> Result<Integrity> {
        if args.meta_device.is_some() {
            return Err(Error::Unsupported {
                target: TARGET,
                op: "meta_device (a separate metadata device)",
            });
        }
        if args.mode == Mode::Inline {
            return Err(Error::Unsupported {
                target: TARGET,
                op: "inline mode (tags in the device's integrity profile)",
            });
        }
        if args.journal_crypt.is_some() || args.journal_mac.is_some() {
            return Err(Error::Unsupported {
                target: TARGET,
                op: "journal_crypt and journal_mac",
            });
        }
        let base = args.offset.bytes();
        let mut raw = [0u8; Superblock::SIZE];
        let mut sector0 = [0u8; 512];
        dev.read(Sector(args.offset.0), &mut sector0)?;
        raw.copy_from_slice(&sector0[..Superblock::SIZE]);
        let Some(sb) = Superblock::decode(&raw)? else {
            return Err(corrupt(
                base,
                "The device is not initialized (no \"integrt\" superblock; dmemu integrity \
                 format makes one)"
                    .into(),
            ));
        };
        if sb.has(FLAG_INLINE) {
            return Err(invalid("Inline flag mismatch"));
        }
        let hasher = match &args.internal_hash {
            None => None,
            Some(a) => {
                let key = a.key.as_ref().map(super::HexKey::bytes);
                let salt = sb.has(FLAG_FIXED_HMAC).then_some(sb.salt);
                Some(TagHasher::new(
                    &a.alg,
                    key.as_ref().map(|k| k.as_slice()),
                    salt,
                )?)
            }
        };
        let tag_size = match (args.tag_size, &hasher) {
            (Some(t), _) => t,
            (None, Some(h)) => u32::try_from(h.digest_size()).unwrap_or(0),
            (None, None) => return Err(invalid("Unknown tag size")),
        };
        if u32::from(sb.integrity_tag_size) != tag_size {
            return Err(invalid(&format!(
                "Tag size doesn't match the information in superblock ({} there, {tag_size} in the table)",
                sb.integrity_tag_size
            )));
        }
        if u32::from(sb.log2_sectors_per_block) != args.sectors_per_block().trailing_zeros() {
            return Err(invalid(
                "Block size doesn't match the information in superblock",
            ));
        }
        if !args.flags.allow_discards_keyed && sb.has(FLAG_DISCARD_KEYED) {
            return Err(invalid("Keyed discard cannot be disabled once enabled"));
        }
        if sb.has(FLAG_HAVE_JOURNAL_MAC) {
            return Err(invalid("Journal mac mismatch"));
        }
        if sb.has(FLAG_RECALCULATING) && hasher.is_none() {
            return Err(invalid(
                "Recalculate can only be specified with internal_hash",
            ));
        }
        let layout = Layout::new(
            &sb,
            args.offset.0,
            dev.size().0,
            args.buffer_sectors.unwrap_or(DEFAULT_BUFFER_SECTORS),
        )?;
        if len.0 > layout.provided_data_sectors {
            return Err(invalid(
                "Not enough provided sectors for requested mapping size",
            ));
        }
        if layout.journal_area_sectors() * 512 > MAX_JOURNAL_BYTES {
            return Err(corrupt(
                base + 12,
                format!(
                    "journal of {} sectors is larger than dmemu reads",
                    layout.journal_area_sectors()
                ),
            ));
        }
        let bitmap_log2 = bitmap_log2_sectors(args, &layout);
        let n_bits = layout.provided_data_sectors.div_ceil(1 << bitmap_log2);
        let n_bitmap_bytes =
            bytes_usize(n_bits.div_ceil(BITMAP_BLOCK_SIZE * 8) * BITMAP_BLOCK_SIZE)?;

        let read_journal =
            |at: u64, buf: &mut [u8]| dev.read(Sector(args.offset.0 + SB_SECTORS + at), buf);
        let mut unchecked = Vec::new();
        let mut replay = Replay::default();
        if sb.has(FLAG_DIRTY_BITMAP) {
            // A B-mode device that was not suspended: the bitmap (at the journal's place)
            // says which regions may have data and tags out of step. The kernel
            // recalculates their tags, so reads there are not checked; a bitmap of another
            // granularity than this table's makes every region dirty, as in the kernel.
            unchecked = vec![0u8; n_bitmap_bytes];
            if u32::from(sb.log2_blocks_per_bitmap_bit) + layout.log2_sectors_per_block
                == bitmap_log2
            {
                read_journal(0, &mut unchecked)?;
            } else {
                unchecked.fill(0xff);
            }
        } else if args.mode != Mode::Recovery {
            let check_hasher = hasher.clone();
            let check = move |sec: u64, data: &[u8], out: &mut [u8]| {
                if let Some(h) = &check_hasher {
                    h.tag(sec, data, out);
                }
            };
            replay = journal::replay(
                &layout,
                &read_journal,
                hasher
                    .is_some()
                    .then_some(&check as &dyn Fn(u64, &[u8], &mut [u8])),
            )?;
        }
        let dirty_regions = (0..unchecked.len() * 8)
            .filter(|&b| unchecked[b / 8] & (1 << (b % 8)) != 0)
            .map(|b| b as u64)
            .collect();
        let pending = !replay.blocks.is_empty();
        let crc_run = hasher.as_ref().and_then(|h| {
            h.crc32c_run(
                usize::try_from(layout.tag_size).unwrap_or(0),
                layout.block_bytes(),
            )
        });
        Ok(Integrity {
            crc_run,
            args: args.clone(),
            len,
            base,
            hasher,
            replayed: RwLock::new(replay.blocks),
            failed: replay.failure,
            unchecked,
            bitmap_log2,
            n_bitmap_bytes,
            range: RwLock::new(()),
            state: Mutex::new(WriteState {
                pending,
                next_section: 0,
                seq: 0,
                unflushed: false,
                bitmap: Vec::new(),
                bitmap_live: false,
                dirty_regions,
            }),
            mismatches: AtomicU64::new(0),
            sb: Mutex::new(sb),
            layout,
            dev,
        })
    }

    /// The geometry in use.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The superblock as last read or written.
    #[must_use]
    pub fn superblock(&self) -> Superblock {
        self.sb
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |s| s.clone())
    }

    /// Reads that failed their tag check so far (the status line's first number).
    #[must_use]
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// Blocks the replayed journal holds that are not yet written in place.
    #[must_use]
    pub fn replayed_blocks(&self) -> usize {
        self.replayed.read().map_or(0, |r| r.len())
    }

    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some((e, why)) if *e == errno::EILSEQ => {
                let _ = why;
                Err(Error::ChecksumMismatch {
                    target: TARGET,
                    sector: Sector(0),
                })
            }
            Some((_, why)) => Err(Error::TargetFailed {
                target: TARGET,
                reason: why.clone(),
            }),
        }
    }

    fn block_aligned(&self, sector: Sector, len: usize) -> Result<()> {
        let spb = self.layout.sectors_per_block();
        if sector.0 % spb != 0 || len % self.layout.block_bytes() != 0 {
            return Err(Error::Misaligned { len });
        }
        Ok(())
    }

    /// Whether reads of the block at `sec` skip the tag check.
    fn skip_check(&self, sec: u64, sb: &Superblock) -> bool {
        if self.args.mode == Mode::Recovery || self.hasher.is_none() {
            return true;
        }
        if sb.has(FLAG_RECALCULATING) && sec + self.layout.sectors_per_block() > sb.recalc_sector {
            return true;
        }
        if !self.unchecked.is_empty() {
            let bit = sec >> self.bitmap_log2;
            let byte = usize::try_from(bit / 8).unwrap_or(usize::MAX);
            if self
                .unchecked
                .get(byte)
                .is_some_and(|b| b & (1 << (bit % 8)) != 0)
            {
                return true;
            }
        }
        false
    }

    /// Read the blocks of `[sec, sec + buf)` (within one area) from their places and their
    /// tags.
    fn read_in_place(&self, sec: u64, buf: &mut [u8], tags: &mut [u8]) -> Result<()> {
        let l = &self.layout;
        // Tags first: their few cache lines are then in flight while the data copy starts
        // (a random 4 KiB read misses the cache in both places).
        self.read_bytes(self.base + l.tag_position(sec), tags)?;
        self.dev.read(Sector(l.start + l.data_sector(sec)), buf)
    }

    /// Read bytes at a byte offset of `dev` (tags are not sector aligned): straight into
    /// `out` when it is whole sectors, else through a bounce buffer (on the stack when
    /// small, as for 64 KiB requests with 4-byte tags; small because it is zeroed).
    fn read_bytes(&self, at: u64, out: &mut [u8]) -> Result<()> {
        let first = at / 512;
        let skip = usize::try_from(at % 512).unwrap_or(0);
        if skip == 0 && out.len() % 512 == 0 {
            return self.dev.read(Sector(first), out);
        }
        let span = (skip + out.len()).div_ceil(512) * 512;
        let mut stack = [0u8; 1024];
        let mut heap = Vec::new();
        let tmp: &mut [u8] = if span <= stack.len() {
            &mut stack[..span]
        } else {
            heap.resize(span, 0);
            &mut heap
        };
        self.dev.read(Sector(first), tmp)?;
        out.copy_from_slice(&tmp[skip..skip + out.len()]);
        Ok(())
    }

    /// Read-modify-write bytes at a byte offset of `dev`.
    fn write_bytes(&self, at: u64, data: &[u8]) -> Result<()> {
        let first = at / 512;
        let end = (at + data.len() as u64).div_ceil(512);
        let mut tmp = vec![0u8; bytes_usize((end - first) * 512)?];
        self.dev.read(Sector(first), &mut tmp)?;
        let skip = usize::try_from(at - first * 512).unwrap_or(0);
        tmp[skip..skip + data.len()].copy_from_slice(data);
        self.dev.write(Sector(first), &tmp)
    }

    fn verify(&self, sec: u64, data: &[u8], tags: &[u8], sb: &Superblock) -> Result<()> {
        let Some(h) = &self.hasher else {
            return Ok(());
        };
        let l = &self.layout;
        // All blocks matching passes at once; otherwise each block is checked as the kernel
        // does (the failing sector, the mismatch count, skipped and discarded blocks).
        if let Some(run) = &self.crc_run {
            if run.run_ok(sec, l.sectors_per_block(), data, tags) {
                return Ok(());
            }
        }
        let ts = usize::try_from(l.tag_size).unwrap_or(0);
        let mut t = [0u8; 256];
        let discard_ok = self.args.flags.allow_discards && !self.args.flags.allow_discards_keyed;
        for (i, (block, want)) in data
            .chunks(l.block_bytes())
            .zip(tags.chunks(ts))
            .enumerate()
        {
            let s = sec + i as u64 * l.sectors_per_block();
            if self.skip_check(s, sb) {
                continue;
            }
            h.tag(s, block, &mut t[..ts]);
            if t[..ts] != *want && !(discard_ok && want.iter().all(|&b| b == DISCARD_FILLER)) {
                self.mismatches.fetch_add(1, Ordering::Relaxed);
                return Err(Error::ChecksumMismatch {
                    target: TARGET,
                    sector: Sector(s),
                });
            }
        }
        Ok(())
    }

    /// Split `[sec, sec + len)` at area edges: (first sector, bytes).
    fn area_runs(&self, sec: u64, len: usize) -> Vec<(u64, usize)> {
        let il = 1u64 << self.layout.log2_interleave_sectors;
        let mut runs = Vec::new();
        let mut at = sec;
        let end = sec + (len as u64) / 512;
        while at < end {
            let next = ((at / il) + 1) * il;
            let stop = next.min(end);
            runs.push((at, usize::try_from((stop - at) * 512).unwrap_or(0)));
            at = stop;
        }
        runs
    }

    fn tags_of(&self, sec: u64, data: &[u8]) -> Vec<u8> {
        let l = &self.layout;
        let ts = usize::try_from(l.tag_size).unwrap_or(0);
        let mut tags = vec![0u8; data.len() / l.block_bytes() * ts];
        if let Some(h) = &self.hasher {
            for (i, (block, out)) in data
                .chunks(l.block_bytes())
                .zip(tags.chunks_mut(ts))
                .enumerate()
            {
                h.tag(sec + i as u64 * l.sectors_per_block(), block, out);
            }
        }
        tags
    }

    /// Data and tags of `[sec, sec + data)` to their places (no flush).
    fn write_in_place(&self, sec: u64, data: &[u8], tags: Option<&[u8]>) -> Result<()> {
        let l = &self.layout;
        let ts = usize::try_from(l.tag_size).unwrap_or(0);
        let computed;
        let tags = match tags {
            Some(t) => t,
            None => {
                computed = self.tags_of(sec, data);
                &computed
            }
        };
        let mut done_blocks = 0usize;
        for (at, bytes) in self.area_runs(sec, data.len()) {
            let blocks = bytes / l.block_bytes();
            let d = &data[done_blocks * l.block_bytes()..(done_blocks + blocks) * l.block_bytes()];
            let t = &tags[done_blocks * ts..(done_blocks + blocks) * ts];
            self.dev.write(Sector(l.start + l.data_sector(at)), d)?;
            self.write_bytes(self.base + l.tag_position(at), t)?;
            done_blocks += blocks;
        }
        Ok(())
    }

    /// Before the first write: put the replayed journal in place and start a clean journal
    /// (the kernel's resume), recalculate the tags of dirty bitmap regions, and in B mode
    /// mark the bitmap in use.
    fn prepare_writes(&self, st: &mut WriteState) -> Result<()> {
        if st.pending {
            let blocks = self.replayed.read().map_err(|_| poisoned())?.clone();
            for (sec, b) in &blocks {
                self.write_in_place(*sec, &b.data, Some(&b.tag))?;
            }
            self.dev.flush()?;
            self.clear_journal()?;
            self.replayed.write().map_err(|_| poisoned())?.clear();
            st.pending = false;
            st.next_section = 0;
            st.seq = 1;
        }
        if !st.dirty_regions.is_empty() {
            let per = 1u64 << self.bitmap_log2;
            let step = 256 * 1024 / 512;
            for &r in &st.dirty_regions {
                let mut s = r * per;
                let end = ((r + 1) * per).min(self.layout.provided_data_sectors);
                while s < end {
                    let n = step.min(end - s);
                    for (at, bytes) in self.area_runs(s, bytes_usize(n * 512)?) {
                        let mut d = vec![0u8; bytes];
                        self.dev.read(
                            Sector(self.layout.start + self.layout.data_sector(at)),
                            &mut d,
                        )?;
                        self.write_in_place(at, &d, None)?;
                    }
                    s += n;
                }
            }
            self.dev.flush()?;
            st.dirty_regions.clear();
            // The regions are consistent again; the bitmap is rewritten below (B) or the
            // flag dropped with a fresh journal (J, D), as the kernel's resume does.
            if self.args.mode != Mode::Bitmap {
                self.clear_journal()?;
                st.next_section = 0;
                st.seq = 1;
                let mut sb = self.sb.lock().map_err(|_| poisoned())?;
                sb.flags &= !FLAG_DIRTY_BITMAP;
                self.write_superblock(&mut sb)?;
            }
        }
        if self.args.mode == Mode::Journal && st.seq == 0 {
            // A journal that replayed nothing: start over on a clean ring as well, so the
            // sequence used for new sections is known.
            self.clear_journal()?;
            st.next_section = 0;
            st.seq = 1;
        }
        if self.args.mode == Mode::Bitmap && !st.bitmap_live {
            let mut sb = self.sb.lock().map_err(|_| poisoned())?;
            sb.flags |= FLAG_DIRTY_BITMAP;
            sb.log2_blocks_per_bitmap_bit =
                u8::try_from(self.bitmap_log2 - self.layout.log2_sectors_per_block).unwrap_or(0);
            self.write_superblock(&mut sb)?;
            drop(sb);
            st.bitmap = vec![0u8; self.n_bitmap_bytes];
            self.dev
                .write_fua(Sector(self.args.offset.0 + SB_SECTORS), &st.bitmap)?;
            st.bitmap_live = true;
        }
        Ok(())
    }

    /// `init_journal` over every section with sequence 0 in the kernel's clearing order
    /// (the oldest section first), leaving the ring to continue at section 0 with
    /// sequence 1.
    fn clear_journal(&self) -> Result<()> {
        let l = &self.layout;
        for i in 0..l.journal_sections {
            let s = journal::build_section(l, i, 0, &[])?;
            self.dev.write(
                Sector(l.start + SB_SECTORS + u64::from(i) * u64::from(l.journal_section_sectors)),
                &s,
            )?;
        }
        self.dev.flush()
    }

    fn write_superblock(&self, sb: &mut Superblock) -> Result<()> {
        sb.set_version(self.args.mode == Mode::Bitmap, false);
        let mut sector0 = [0u8; 512];
        self.dev.read(Sector(self.args.offset.0), &mut sector0)?;
        sector0[..Superblock::SIZE].copy_from_slice(&sb.encode());
        self.dev.write_fua(Sector(self.args.offset.0), &sector0)
    }

    /// J mode: the blocks to journal sections, flushed, then in place.
    fn write_journalled(
        &self,
        st: &mut WriteState,
        sec: u64,
        buf: &[u8],
        given: Option<&[u8]>,
    ) -> Result<()> {
        let l = &self.layout;
        let bb = l.block_bytes();
        let per = usize::try_from(l.journal_section_entries)
            .unwrap_or(1)
            .max(1);
        let computed;
        let tags = match given {
            Some(t) => t,
            None => {
                computed = self.tags_of(sec, buf);
                &computed
            }
        };
        let ts = usize::try_from(l.tag_size).unwrap_or(0);
        let blocks = buf.len() / bb;
        let mut first = 0usize;
        while first < blocks {
            let n = per.min(blocks - first);
            // Reusing a section: what it held must be in place and durable first.
            if st.unflushed {
                self.dev.flush()?;
                st.unflushed = false;
            }
            let list: Vec<(u64, &[u8], &[u8])> = (first..first + n)
                .map(|b| {
                    (
                        sec + b as u64 * l.sectors_per_block(),
                        &buf[b * bb..(b + 1) * bb],
                        &tags[b * ts..(b + 1) * ts],
                    )
                })
                .collect();
            let section = journal::build_section(l, st.next_section, st.seq, &list)?;
            self.dev.write_fua(
                Sector(
                    l.start
                        + SB_SECTORS
                        + u64::from(st.next_section) * u64::from(l.journal_section_sectors),
                ),
                &section,
            )?;
            st.next_section += 1;
            if st.next_section >= l.journal_sections {
                st.next_section = 0;
                st.seq = journal::next_seq(st.seq);
            }
            let s0 = sec + first as u64 * l.sectors_per_block();
            self.write_in_place(
                s0,
                &buf[first * bb..(first + n) * bb],
                Some(&tags[first * ts..(first + n) * ts]),
            )?;
            st.unflushed = true;
            first += n;
        }
        Ok(())
    }

    /// B mode: set and write the bits of `[sec, sec + buf)` before the data.
    fn mark_bitmap(&self, st: &mut WriteState, sec: u64, len: u64) -> Result<()> {
        let log2 = self.bitmap_log2;
        let first = sec >> log2;
        let last = (sec + len - 1) >> log2;
        let mut changed = false;
        for bit in first..=last {
            let byte = bytes_usize(bit / 8)?;
            if let Some(b) = st.bitmap.get_mut(byte) {
                if *b & (1 << (bit % 8)) == 0 {
                    *b |= 1 << (bit % 8);
                    changed = true;
                }
            }
        }
        if changed {
            self.dev
                .write_fua(Sector(self.args.offset.0 + SB_SECTORS), &st.bitmap)?;
        }
        Ok(())
    }

    /// Read and verify `buf`; with `tags_out`, the blocks' tags are handed up (an external
    /// user's tags, no internal hash) instead of checked.
    fn read_inner(
        &self,
        sector: Sector,
        buf: &mut [u8],
        mut tags_out: Option<&mut [u8]>,
    ) -> Result<()> {
        check_io(self.len, sector, buf.len())?;
        self.block_aligned(sector, buf.len())?;
        self.check_failed()?;
        let _range = self.range.read().map_err(|_| poisoned())?;
        let sb = self.superblock();
        let l = &self.layout;
        let replayed = self.replayed.read().map_err(|_| poisoned())?;
        let bb = l.block_bytes();
        let ts = usize::try_from(l.tag_size).unwrap_or(0);
        let mut tag_stack = [0u8; 512];
        let mut tag_heap = Vec::new();
        let il = 1u64 << l.log2_interleave_sectors;
        let end = sector.0 + buf.len() as u64 / 512;
        let mut at = sector.0;
        let mut done = 0usize;
        // One run per area: its data in one read, its tags (contiguous) in another.
        while at < end {
            let stop = ((at / il) + 1).saturating_mul(il).min(end);
            let bytes = usize::try_from((stop - at) * 512).unwrap_or(0);
            let piece = &mut buf[done..done + bytes];
            let need = bytes / bb * ts;
            let tags: &mut [u8] = if let Some(out) = tags_out.as_deref_mut() {
                let first = done / bb * ts;
                &mut out[first..first + need]
            } else if need <= tag_stack.len() {
                &mut tag_stack[..need]
            } else {
                tag_heap.resize(need, 0);
                &mut tag_heap[..need]
            };
            self.read_in_place(at, piece, tags)?;
            if replayed.is_empty() {
                self.verify(at, piece, tags, &sb)?;
            } else {
                for (i, block) in piece.chunks_mut(bb).enumerate() {
                    let s = at + i as u64 * l.sectors_per_block();
                    match replayed.get(&s) {
                        // Checked against its tag when the journal was replayed.
                        Some(j) => {
                            block.copy_from_slice(&j.data);
                            tags[i * ts..(i + 1) * ts].copy_from_slice(&j.tag);
                        }
                        None => self.verify(s, block, &tags[i * ts..(i + 1) * ts], &sb)?,
                    }
                }
            }
            done += bytes;
            at = stop;
        }
        Ok(())
    }

    /// Write `buf` with `tags` (an external user's) or tags of the internal hash.
    fn write_inner(&self, sector: Sector, buf: &[u8], tags: Option<&[u8]>) -> Result<()> {
        check_io(self.len, sector, buf.len())?;
        self.block_aligned(sector, buf.len())?;
        if self.args.mode == Mode::Recovery {
            return Err(Error::ReadOnly {
                target: "integrity (recovery mode)".into(),
            });
        }
        self.check_failed()?;
        if buf.is_empty() {
            return Ok(());
        }
        let _range = self.range.write().map_err(|_| poisoned())?;
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        self.prepare_writes(&mut st)?;
        match self.args.mode {
            Mode::Journal => self.write_journalled(&mut st, sector.0, buf, tags),
            Mode::Bitmap => {
                self.mark_bitmap(&mut st, sector.0, buf.len() as u64 / 512)?;
                self.write_in_place(sector.0, buf, tags)?;
                st.unflushed = true;
                Ok(())
            }
            _ => {
                self.write_in_place(sector.0, buf, tags)?;
                st.unflushed = true;
                Ok(())
            }
        }
    }

    /// A tagged request's tag buffer must hold one tag per block of its data.
    fn check_tag_buffer(&self, data: usize, tags: usize) -> Result<()> {
        let Some(p) = self.tag_profile() else {
            return Err(Error::Unsupported {
                target: TARGET,
                op: "tagged I/O with an internal_hash (the tags are the target's own)",
            });
        };
        if p.tag_bytes(data) != tags {
            return Err(Error::invalid(
                "integrity tagged request",
                format!(
                    "{tags} tag bytes for {data} data bytes ({} per {}-byte block)",
                    p.tuple_size, p.interval
                ),
            ));
        }
        Ok(())
    }

    /// The table line as the kernel prints it once built (values settled from the
    /// superblock and geometry).
    fn settled_args(&self) -> IntegrityArgs {
        let sb = self.superblock();
        let l = &self.layout;
        let mut a = self.args.clone();
        a.tag_size = Some(l.tag_size);
        a.journal_sectors = Some(u32::try_from(l.initial_sectors - SB_SECTORS).unwrap_or(u32::MAX));
        a.interleave_sectors = Some(1 << l.log2_interleave_sectors);
        a.buffer_sectors = Some(1 << l.log2_buffer_sectors);
        a.flags.recalculate = sb.has(FLAG_RECALCULATING);
        a.flags.fix_padding = sb.has(super::superblock::FLAG_FIXED_PADDING);
        a.flags.fix_hmac = sb.has(FLAG_FIXED_HMAC);
        if a.mode == Mode::Journal {
            // (entries - threshold) * 100 rounded, threshold = entries * (100 - wm) / 100.
            let entries = l.journal_entries();
            let wm = u64::from(a.journal_watermark.unwrap_or(50));
            let threshold = (entries * (100 - wm) + 50) / 100;
            let printed = ((entries - threshold) * 100 + entries / 2) / entries.max(1);
            a.journal_watermark = Some(u32::try_from(printed).unwrap_or(100));
            a.commit_time = Some(a.commit_time.unwrap_or(10000));
        } else {
            a.journal_watermark = None;
            a.commit_time = None;
        }
        if a.mode == Mode::Bitmap {
            a.sectors_per_bit = Some(1 << self.bitmap_log2);
            a.bitmap_flush_interval =
                Some(u32::try_from(a.bitmap_flush_interval_printed()).unwrap_or(u32::MAX));
        } else {
            a.sectors_per_bit = None;
            a.bitmap_flush_interval = None;
        }
        a
    }
}

/// The ctr's `log2_sectors_per_bitmap_bit`: `sectors_per_bit` (32768 by default), no less
/// than a block, grown until the bitmap fits in the journal area.
fn bitmap_log2_sectors(args: &IntegrityArgs, l: &Layout) -> u32 {
    let mut log2 = args
        .sectors_per_bit
        .map_or(DEFAULT_LOG2_SECTORS_PER_BITMAP_BIT, |v| {
            if v == 0 {
                0
            } else {
                63 - v.leading_zeros()
            }
        })
        .max(l.log2_sectors_per_block);
    let bits_in_journal = (l.journal_area_sectors() << 12).min(u64::from(u32::MAX));
    while log2 < 63 && bits_in_journal < l.provided_data_sectors.div_ceil(1u64 << log2) {
        log2 += 1;
    }
    log2
}

fn poisoned() -> Error {
    Error::TargetFailed {
        target: TARGET,
        reason: "lock poisoned".into(),
    }
}

impl Volume for Integrity {
    fn size(&self) -> SectorCount {
        self.len
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        self.read_inner(sector, buf, None)
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write_inner(sector, buf, None)
    }

    /// Tags belong to the layer above only without an internal hash (dm_integrity_ctr
    /// registers the profile then).
    fn tag_profile(&self) -> Option<TagProfile> {
        if self.hasher.is_some() {
            return None;
        }
        Some(TagProfile {
            tuple_size: self.layout.tag_size,
            interval: u32::try_from(self.layout.block_bytes()).unwrap_or(u32::MAX),
        })
    }

    fn read_tagged(&self, sector: Sector, buf: &mut [u8], tags: &mut [u8]) -> Result<()> {
        self.check_tag_buffer(buf.len(), tags.len())?;
        self.read_inner(sector, buf, Some(tags))
    }

    fn write_tagged(&self, sector: Sector, buf: &[u8], tags: &[u8]) -> Result<()> {
        self.check_tag_buffer(buf.len(), tags.len())?;
        self.write_inner(sector, buf, Some(tags))
    }

    fn flush(&self) -> Result<()> {
        self.check_failed()?;
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        self.dev.flush()?;
        st.unflushed = false;
        if self.args.mode == Mode::Bitmap && st.bitmap_live && st.bitmap.iter().any(|&b| b != 0) {
            // bitmap_flush_work: data and tags are durable, the bits can go.
            st.bitmap.fill(0);
            self.dev
                .write_fua(Sector(self.args.offset.0 + SB_SECTORS), &st.bitmap)?;
        }
        Ok(())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        crate::volume::check_range(self.len, sector, count)?;
        Err(Error::Unsupported {
            target: TARGET,
            op: "discard",
        })
    }
}

impl Target for Integrity {
    fn status(&self) -> String {
        let sb = self.superblock();
        let recalc = if sb.has(FLAG_RECALCULATING) {
            sb.recalc_sector.to_string()
        } else {
            "-".to_string()
        };
        format!(
            "{} {} {recalc}",
            self.mismatches(),
            self.layout.provided_data_sectors
        )
    }

    fn table_spec(&self) -> Option<TargetSpec> {
        Some(TargetSpec::Integrity(self.settled_args()))
    }
}

/// The target as a shared handle.
pub(crate) fn build(
    args: &IntegrityArgs,
    len: SectorCount,
    ctx: &dyn BuildContext,
) -> Result<Arc<dyn Target>> {
    Ok(Arc::new(Integrity::new(args, len, ctx)?))
}
