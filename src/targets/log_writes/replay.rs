//! Replaying a dm-log-writes log (xfstests' replay-log semantics) and the device states at
//! its crash points.
//!
//! [`Replay`] applies entries one by one onto a volume (writes copied from the log,
//! discards as zeros, flushes and marks change nothing). [`CowView`] is a copy-on-write
//! view of a volume held in memory (a transient snapshot): a checker may write to it, the
//! volume under it stays as replayed. [`crash_states`] walks a log and hands the caller a
//! view of the device at every chosen crash point; [`epoch_states`] adds the states where
//! some of the writes of a flush epoch (completed, logged before the flush, not yet made
//! durable by it) were lost, as CrashMonkey explores them. Each step costs the entry's own
//! data, never a copy of the device.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use crate::block_map::BlockMap;
use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::{check_io, check_range, Unmap, Volume};

use super::format::{LogEntry, LogReader, DISCARD, FLUSH, FUA, MARK};

/// Largest piece of entry data read from the log at once.
const COPY_CHUNK: u64 = 1 << 20;
/// replay-log's `max_chunk` (1 GiB): discards are zeroed in pieces of this size.
pub const DISCARD_CHUNK: u64 = 1 << 30;
/// replay-log's `max_zero_size` (128 MiB): a larger discard piece is skipped when the
/// replay device cannot discard (a file), as `zero_range` does.
pub const MAX_ZERO_SIZE: u64 = 128 << 20;

/// How entries are applied (replay-log's `--no-discard`, `--start-sector`, `--end-sector`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Apply discards (as zeros); false = `--no-discard`.
    pub discard: bool,
    /// Only entries touching `[start_sector, end_sector]` (log sectors) are applied.
    pub start_sector: u64,
    /// See `start_sector`.
    pub end_sector: u64,
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions {
            discard: true,
            start_sector: 0,
            end_sector: u64::MAX,
        }
    }
}

/// What applying one entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Data written, or a discard zeroed.
    Changed,
    /// Nothing to write: a flush, a mark, an empty entry, a discard with `--no-discard`.
    Nothing,
    /// Outside `--start-sector`/`--end-sector` (`log_should_skip`).
    Skipped,
    /// A discard piece larger than [`MAX_ZERO_SIZE`] left alone, as replay-log does.
    DiscardTooLarge,
}

/// `log_should_skip`: a write entirely outside `[start_sector, end_sector]`.
#[must_use]
pub fn should_skip(e: &LogEntry, opts: &ReplayOptions) -> bool {
    e.nr_sectors != 0
        && (e.sector + e.nr_sectors <= opts.start_sector || e.sector > opts.end_sector)
}

/// Apply entry `e` of `log` onto `target` (`log_replay_next_entry` after the entry is read).
pub fn apply_entry(
    log: &LogReader<'_>,
    e: &LogEntry,
    target: &dyn Volume,
    opts: &ReplayOptions,
) -> Result<Applied> {
    let ss = u64::from(log.super_block().sectorsize);
    let bytes = e.nr_sectors * ss;
    if bytes == 0 {
        return Ok(Applied::Nothing);
    }
    let start = Sector(e.sector * ss / SECTOR_SIZE as u64);
    let at = |err: Error| {
        Error::invalid(
            "log entry",
            format!(
                "entry {}: replaying {} bytes at sector {}: {err}",
                e.index, bytes, e.sector
            ),
        )
    };
    check_range(
        target.size(),
        start,
        SectorCount(bytes / SECTOR_SIZE as u64),
    )
    .map_err(at)?;
    if e.has(DISCARD) {
        if !opts.discard {
            return Ok(Applied::Nothing);
        }
        let mut done = 0;
        let mut result = Applied::Changed;
        while done < bytes {
            let len = (bytes - done).min(DISCARD_CHUNK);
            if len > MAX_ZERO_SIZE {
                result = Applied::DiscardTooLarge;
            } else {
                let s = start + SectorCount(done / SECTOR_SIZE as u64);
                target
                    .write_zeroes(s, SectorCount(len / SECTOR_SIZE as u64), Unmap::Allowed)
                    .map_err(at)?;
            }
            done += len;
        }
        return Ok(result);
    }
    if should_skip(e, opts) {
        return Ok(Applied::Skipped);
    }
    let mut buf = vec![0u8; bytes.min(COPY_CHUNK) as usize];
    let mut done = 0;
    while done < bytes {
        let len = (bytes - done).min(COPY_CHUNK) as usize;
        log.read_bytes(
            e.data_offset(log.super_block().sectorsize) + done,
            &mut buf[..len],
        )?;
        target
            .write(start + SectorCount(done / SECTOR_SIZE as u64), &buf[..len])
            .map_err(at)?;
        done += len as u64;
    }
    Ok(Applied::Changed)
}

/// The 512-byte sectors of the target an entry writes or zeroes.
#[must_use]
pub fn entry_range(e: &LogEntry, sectorsize: u32) -> (Sector, SectorCount) {
    let f = u64::from(sectorsize) / SECTOR_SIZE as u64;
    (Sector(e.sector * f), SectorCount(e.nr_sectors * f))
}

/// A copy-on-write view of `base` in memory: reads see `base` under the sectors written
/// to the view; writes, discards and zeroes go to the view only. Memory grows with what is
/// written to the view.
#[derive(Debug)]
pub struct CowView<'a> {
    base: &'a dyn Volume,
    sectors: Mutex<BlockMap<Box<[u8; SECTOR_SIZE]>>>,
}

impl<'a> CowView<'a> {
    /// A view of `base` with nothing written.
    #[must_use]
    pub fn new(base: &'a dyn Volume) -> CowView<'a> {
        CowView {
            base,
            sectors: Mutex::new(BlockMap::default()),
        }
    }

    /// Sectors the view holds.
    #[must_use]
    pub fn written_sectors(&self) -> usize {
        self.sectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn put(&self, sector: Sector, buf: &[u8]) {
        let mut map = self.sectors.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, s) in buf.chunks_exact(SECTOR_SIZE).enumerate() {
            let mut b = Box::new([0u8; SECTOR_SIZE]);
            b.copy_from_slice(s);
            map.insert(sector.0 + i as u64, b);
        }
    }
}

impl Volume for CowView<'_> {
    fn size(&self) -> SectorCount {
        self.base.size()
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size(), sector, buf.len())?;
        self.base.read(sector, buf)?;
        let map = self.sectors.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return Ok(());
        }
        for (i, s) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            if let Some(b) = map.get(&(sector.0 + i as u64)) {
                s.copy_from_slice(&b[..]);
            }
        }
        Ok(())
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size(), sector, buf.len())?;
        self.put(sector, buf);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    /// A discarded range reads as zeros.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        self.write_zeroes(sector, count, Unmap::Allowed)
    }
    fn write_zeroes(&self, sector: Sector, count: SectorCount, _unmap: Unmap) -> Result<()> {
        check_range(self.size(), sector, count)?;
        let mut map = self.sectors.lock().unwrap_or_else(PoisonError::into_inner);
        for s in sector.0..sector.0 + count.0 {
            map.insert(s, Box::new([0u8; SECTOR_SIZE]));
        }
        Ok(())
    }
}

/// A log being replayed onto a volume, entry by entry.
#[derive(Debug)]
pub struct Replay<'a> {
    log: LogReader<'a>,
    target: &'a dyn Volume,
    opts: ReplayOptions,
    next_index: u64,
    next_offset: u64,
}

impl<'a> Replay<'a> {
    /// Open `log` (checking its super) to replay onto `target`.
    pub fn new(
        log: &'a dyn Volume,
        target: &'a dyn Volume,
        opts: ReplayOptions,
    ) -> Result<Replay<'a>> {
        let log = LogReader::open(log)?;
        let next_offset = log.first_offset();
        Ok(Replay {
            log,
            target,
            opts,
            next_index: 0,
            next_offset,
        })
    }

    /// The log being replayed.
    #[must_use]
    pub fn log(&self) -> &LogReader<'a> {
        &self.log
    }

    /// The entry number the next call reads.
    #[must_use]
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Byte offset of the next entry in the log (replay-log's `cur_pos`).
    #[must_use]
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Read the next entry without applying it; None at the end of the counted entries.
    pub fn skip_next(&mut self) -> Option<Result<LogEntry>> {
        if self.next_index >= self.log.super_block().nr_entries {
            return None;
        }
        Some(
            self.log
                .entry_at(self.next_index, self.next_offset)
                .inspect(|e| {
                    self.next_index += 1;
                    self.next_offset = e.end_offset(self.log.super_block().sectorsize);
                }),
        )
    }

    /// Read the next entry and apply it onto the target.
    pub fn apply_next(&mut self) -> Option<Result<(LogEntry, Applied)>> {
        let e = match self.skip_next()? {
            Ok(e) => e,
            Err(err) => return Some(Err(err)),
        };
        Some(apply_entry(&self.log, &e, self.target, &self.opts).map(|a| (e, a)))
    }

    /// Skip to entry `index` (`--start-entry`) without applying the entries before it.
    pub fn seek(&mut self, index: u64) -> Result<()> {
        if index >= self.log.super_block().nr_entries {
            return Err(Error::invalid("entry", "Invalid entry number"));
        }
        while self.next_index < index {
            self.skip_next()
                .unwrap_or_else(|| Err(Error::invalid("entry", "Invalid entry number")))?;
        }
        Ok(())
    }
}

/// Which crash points [`crash_states`] stops at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckAt {
    /// After every entry.
    Every,
    /// After every Nth entry replayed (`--check N`).
    EveryNth(u64),
    /// After every entry with FLUSH set (`--check flush`).
    Flush,
    /// After every entry with FUA set (`--check fua`).
    Fua,
    /// After every DISCARD entry (`--check discard`).
    Discard,
    /// After every mark.
    Mark,
}

impl CheckAt {
    /// Whether the state after `e` (the `n`th entry replayed, from 1) is a crash point.
    #[must_use]
    pub fn stops_at(&self, e: &LogEntry, n: u64) -> bool {
        match self {
            CheckAt::Every => true,
            CheckAt::EveryNth(k) => *k != 0 && n % k == 0,
            CheckAt::Flush => e.has(FLUSH),
            CheckAt::Fua => e.has(FUA),
            CheckAt::Discard => e.has(DISCARD),
            CheckAt::Mark => e.has(MARK),
        }
    }
}

/// Replay all of `log` onto `target`, and at every crash point `at` call `check` with the
/// entry just applied and a copy-on-write view of the device state then. `check` returns
/// whether to go on. The target ends at the last state replayed.
pub fn crash_states(
    log: &dyn Volume,
    target: &dyn Volume,
    opts: ReplayOptions,
    at: &CheckAt,
    mut check: impl FnMut(&LogEntry, &CowView<'_>) -> Result<bool>,
) -> Result<()> {
    let mut r = Replay::new(log, target, opts)?;
    let mut n = 0;
    while let Some(step) = r.apply_next() {
        let (e, _) = step?;
        n += 1;
        if at.stops_at(&e, n) {
            let view = CowView::new(target);
            if !check(&e, &view)? {
                break;
            }
        }
    }
    Ok(())
}

/// A state inside a flush epoch: the entries of the epoch that were lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochState {
    /// Entry number of the flush that ends the epoch.
    pub flush: u64,
    /// Entry numbers of the epoch's writes that the state lacks (the rest are applied).
    pub lost: Vec<u64>,
}

/// Replay `log` onto `target`; before each flush entry, call `check` with views where
/// subsets of the epoch's writes (the data entries logged since the previous flush or FUA)
/// were lost: every subset of up to `max_lost` writes, at most `max_states` states per
/// epoch, fewest losses first. Each view costs the epoch's kept writes, laid over the
/// state at the epoch's start.
pub fn epoch_states(
    log: &dyn Volume,
    target: &dyn Volume,
    opts: ReplayOptions,
    max_lost: usize,
    max_states: usize,
    mut check: impl FnMut(&EpochState, &CowView<'_>) -> Result<bool>,
) -> Result<()> {
    let mut r = Replay::new(log, target, opts)?;
    let mut epoch: Vec<LogEntry> = Vec::new();
    while let Some(step) = r.skip_next() {
        let e = step?;
        if e.has(FLUSH) && !epoch.is_empty() {
            for lost in subsets(epoch.len(), max_lost, max_states) {
                let view = CowView::new(target);
                let lost_set: BTreeSet<usize> = lost.iter().copied().collect();
                for (i, w) in epoch.iter().enumerate() {
                    if !lost_set.contains(&i) {
                        apply_entry(&r.log, w, &view, &opts)?;
                    }
                }
                let state = EpochState {
                    flush: e.index,
                    lost: lost.iter().map(|&i| epoch[i].index).collect(),
                };
                if !check(&state, &view)? {
                    return Ok(());
                }
            }
            for w in epoch.drain(..) {
                apply_entry(&r.log, &w, target, &opts)?;
            }
        }
        if e.has(FLUSH | FUA) {
            for w in epoch.drain(..) {
                apply_entry(&r.log, &w, target, &opts)?;
            }
            apply_entry(&r.log, &e, target, &opts)?;
        } else if e.nr_sectors != 0 {
            epoch.push(e);
        }
    }
    for w in epoch.drain(..) {
        apply_entry(&r.log, &w, target, &opts)?;
    }
    Ok(())
}

/// Non-empty subsets of `0..n` with at most `max_lost` members, smallest first, at most
/// `max_states` of them.
fn subsets(n: usize, max_lost: usize, max_states: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for k in 1..=max_lost.min(n) {
        let mut idx: Vec<usize> = (0..k).collect();
        loop {
            if out.len() >= max_states {
                return out;
            }
            out.push(idx.clone());
            // next combination of k out of n
            let mut i = k;
            while i > 0 && idx[i - 1] == n - k + i - 1 {
                i -= 1;
            }
            if i == 0 {
                break;
            }
            idx[i - 1] += 1;
            for j in i..k {
                idx[j] = idx[j - 1] + 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod subset_tests {
    use super::subsets;

    #[test]
    fn subsets_are_smallest_first_and_bounded() {
        let s = subsets(3, 2, 100);
        assert_eq!(
            s,
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2]
            ]
        );
        assert_eq!(subsets(10, 3, 4).len(), 4);
        assert!(subsets(0, 3, 4).is_empty());
    }
}
