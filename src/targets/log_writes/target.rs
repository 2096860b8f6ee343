//! The constructed `log-writes` target.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};
use crate::targets::context::{device_area, BuildContext};
use crate::targets::{DeviceAt, Target};
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::{check_io, check_range, SharedVolume, Volume};

use super::format::{encode_super, push_entry_sector, DISCARD, FLUSH, FUA, MARK};
use super::LogWritesArgs;

/// The logged device's logical block size. dmemu volumes are arrays of 512-byte sectors,
/// so the log's `sectorsize` is always 512 (the kernel takes the device's logical block
/// size; a 512-byte virtio disk gives the same).
const SECTORSIZE: u32 = 512;

/// The end mark `log_writes_dtr` logs.
pub const END_MARK: &str = "dm-log-writes-end";

/// One block of a [`Blocks`] run (`struct pending_block`).
#[derive(Clone, Copy, Debug)]
struct Meta {
    flags: u64,
    nr_sectors: u64,
}

/// Writes, flushes, discards and marks waiting to be logged, laid out as they go to the
/// log: each block's entry sector followed by its data, back to back, so a run of them is
/// written with one call (the log kthread writes them to consecutive sectors).
#[derive(Debug, Default)]
struct Blocks {
    bytes: Vec<u8>,
    meta: Vec<Meta>,
}

impl Blocks {
    fn push(&mut self, sector: u64, nr_sectors: u64, flags: u64, mark: &[u8], data: &[u8]) {
        push_entry_sector(&mut self.bytes, sector, nr_sectors, flags, mark, SECTORSIZE);
        self.bytes.extend_from_slice(data);
        self.meta.push(Meta { flags, nr_sectors });
    }

    fn one(sector: u64, nr_sectors: u64, flags: u64, mark: &[u8], data: &[u8]) -> Blocks {
        let mut b = Blocks {
            bytes: Vec::with_capacity(SECTORSIZE as usize + data.len()),
            meta: Vec::with_capacity(1),
        };
        b.push(sector, nr_sectors, flags, mark, data);
        b
    }

    fn push_mark(&mut self, text: &[u8]) {
        // log_mark: kstrndup(data, sectorsize - sizeof(entry) - 1).
        let max = SECTORSIZE as usize - super::format::ENTRY_HEADER - 1;
        let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
        self.push(0, 0, MARK, &text[..text.len().min(max)], &[]);
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.meta.clear();
    }
}

/// Where the next entry goes (the kernel's log kthread state).
#[derive(Debug)]
struct Logger {
    logged_entries: u64,
    /// In 512-byte sectors, as the kernel's `next_sector`.
    next_sector: u64,
    end_sector: u64,
}

/// A constructed `log-writes` target.
///
/// As in the kernel, a write joins the unflushed list when it completes (whatever its
/// outcome: `normal_end_io` does not look at the status; the kernel copies the data at
/// submission, dmemu at completion, which is the same bytes as the caller's buffer is
/// borrowed for the whole call);
/// a flush takes the unflushed list when it is submitted and, on completion, logs it
/// followed by the flush entry; a FUA write is logged on completion; a discard joins the
/// unflushed list; a mark is logged at once. The super is rewritten after every FUA and
/// mark entry. Reads pass through. When an entry would reach the last sector of the log
/// device, logging stops for good (`logging_disabled` in the status) and I/O passes
/// through. Dropping the target (the table is replaced or removed) logs the unflushed list
/// and the end mark `dm-log-writes-end`, as `log_writes_dtr` does.
///
/// The unflushed list is one buffer laid out as the log will hold it, so a flush writes
/// its writes to the log in one call (`benches/log_writes.rs`).
///
/// Locking: completions append to `unflushed` under a short lock; entries are written to
/// the log under the `logger` lock, which is the kernel's single log kthread: it is held
/// across writes to the log device (never the data device), so entries and super rewrites
/// land in the order they were logged.
#[derive(Debug)]
pub struct LogWrites {
    dev: SharedVolume,
    log: SharedVolume,
    size: SectorCount,
    enabled: AtomicBool,
    unflushed: Mutex<Blocks>,
    /// The buffers of the last flush's list, reused by the next one.
    spare: Mutex<Blocks>,
    logger: Mutex<Logger>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogWrites {
    /// `log_writes_ctr`: resolve both devices; the data device must hold the line.
    pub fn new(
        args: &LogWritesArgs,
        len: SectorCount,
        ctx: &dyn BuildContext,
    ) -> Result<LogWrites> {
        let dev = device_area(
            ctx,
            &DeviceAt {
                device: args.dev.clone(),
                offset: SectorCount(0),
            },
            len,
        )?;
        let log = ctx.volume(&args.log_dev)?;
        Ok(LogWrites::over(dev, log, len))
    }

    /// A log-writes target over open volumes (library use); `dev` must hold `len` sectors.
    #[must_use]
    pub fn over(dev: SharedVolume, log: SharedVolume, len: SectorCount) -> LogWrites {
        let end_sector = log.size().0;
        LogWrites {
            dev,
            log,
            size: len,
            enabled: AtomicBool::new(true),
            unflushed: Mutex::new(Blocks::default()),
            spare: Mutex::new(Blocks::default()),
            logger: Mutex::new(Logger {
                logged_entries: 0,
                next_sector: u64::from(SECTORSIZE) / SECTOR_SIZE as u64,
                end_sector,
            }),
        }
    }

    /// Whether entries are still being logged.
    #[must_use]
    pub fn logging_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Entries logged so far.
    #[must_use]
    pub fn logged_entries(&self) -> u64 {
        lock(&self.logger).logged_entries
    }

    /// Log a mark now (the `mark` message).
    pub fn mark(&self, text: &str) {
        let mut b = Blocks::default();
        b.push_mark(text.as_bytes());
        self.log_blocks(&b);
    }

    fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
    }

    /// The log kthread: give each block its place, write it, and rewrite the super after
    /// FUA and mark entries. Blocks arriving once logging is off are dropped. Consecutive
    /// blocks go to the log in one write, up to a FUA or mark (whose super rewrite must
    /// follow it) or the block that would fill the log.
    fn log_blocks(&self, blocks: &Blocks) {
        let mut lg = lock(&self.logger);
        let mut at = 0usize; // byte offset in blocks.bytes of the run's start
        let mut run_sector = lg.next_sector;
        let mut run_bytes = 0usize;
        for m in &blocks.meta {
            if !self.logging_enabled() {
                return;
            }
            let data = if m.flags & DISCARD == 0 {
                m.nr_sectors
            } else {
                0
            };
            lg.next_sector += data + 1;
            if lg.end_sector != 0 && lg.next_sector >= lg.end_sector {
                self.disable();
                let _ = self.write_run(run_sector, &blocks.bytes[at..at + run_bytes]);
                return;
            }
            lg.logged_entries += 1;
            run_bytes += SECTORSIZE as usize + (data * SECTOR_SIZE as u64) as usize;
            if m.flags & (FUA | MARK) != 0 {
                if self
                    .write_run(run_sector, &blocks.bytes[at..at + run_bytes])
                    .is_err()
                {
                    return;
                }
                let sup = encode_super(lg.logged_entries, SECTORSIZE);
                if self.log.write(Sector(0), &sup).is_err() {
                    self.disable();
                    return;
                }
                at += run_bytes;
                run_bytes = 0;
                run_sector = lg.next_sector;
            }
        }
        let _ = self.write_run(run_sector, &blocks.bytes[at..at + run_bytes]);
    }

    /// Write a run of blocks at `sector` of the log; a failure disables logging.
    fn write_run(&self, sector: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.log
            .write(Sector(sector), bytes)
            .inspect_err(|_| self.disable())
    }

    /// Take the unflushed list, leaving the spare buffers in its place.
    fn take_unflushed(&self) -> Blocks {
        let mut spare = std::mem::take(&mut *lock(&self.spare));
        spare.clear();
        std::mem::replace(&mut *lock(&self.unflushed), spare)
    }

    /// Keep a logged list's buffers for the next flush.
    fn recycle(&self, blocks: Blocks) {
        *lock(&self.spare) = blocks;
    }
}

impl Volume for LogWrites {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.dev.read(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        if !self.logging_enabled() || buf.is_empty() {
            return self.dev.write(sector, buf);
        }
        let r = self.dev.write(sector, buf);
        let n = buf.len() as u64 / SECTOR_SIZE as u64;
        lock(&self.unflushed).push(sector.0, n, 0, &[], buf);
        r
    }
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        if !self.logging_enabled() || buf.is_empty() {
            return self.dev.write_fua(sector, buf);
        }
        let n = buf.len() as u64 / SECTOR_SIZE as u64;
        let block = Blocks::one(sector.0, n, FUA, &[], buf);
        let r = self.dev.write_fua(sector, buf);
        self.log_blocks(&block);
        r
    }
    fn flush(&self) -> Result<()> {
        if !self.logging_enabled() {
            return self.dev.flush();
        }
        let mut blocks = self.take_unflushed();
        let r = self.dev.flush();
        blocks.push(0, 0, FLUSH, &[], &[]);
        self.log_blocks(&blocks);
        self.recycle(blocks);
        r
    }
    /// Passed down when the device discards; completed at once when it cannot (the
    /// kernel's `device_supports_discard == false`). Either way the discard joins the
    /// unflushed list.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        if !self.logging_enabled() || count.0 == 0 {
            return self.dev.discard(sector, count);
        }
        let r = match self.dev.discard(sector, count) {
            Err(Error::Unsupported { .. }) => Ok(()),
            r => r,
        };
        lock(&self.unflushed).push(sector.0, count.0, DISCARD, &[], &[]);
        r
    }
}

impl Target for LogWrites {
    /// `<logged entries> <highest allocated sector>[ logging_disabled]`.
    fn status(&self) -> String {
        let lg = lock(&self.logger);
        let mut s = format!("{} {}", lg.logged_entries, lg.next_sector - 1);
        if !self.logging_enabled() {
            s.push_str(" logging_disabled");
        }
        s
    }

    /// `mark <text>` (the word is matched ignoring case); anything else is EINVAL with the
    /// kernel's log line.
    fn message(&self, argv: &[&str]) -> Result<String> {
        if argv.len() != 2 {
            return Err(Error::invalid(
                "message",
                format!(
                    "Invalid log-writes message arguments, expect 2 arguments, got {}",
                    argv.len()
                ),
            ));
        }
        if !argv[0].eq_ignore_ascii_case("mark") {
            return Err(Error::invalid(
                "message",
                format!(
                    "Unrecognised log writes target message received: {}",
                    argv[0]
                ),
            ));
        }
        self.mark(argv[1]);
        Ok(String::new())
    }
}

impl Drop for LogWrites {
    /// `log_writes_dtr`: log the unflushed list and the end mark.
    fn drop(&mut self) {
        let mut blocks = self.take_unflushed();
        blocks.push_mark(END_MARK.as_bytes());
        self.log_blocks(&blocks);
    }
}
