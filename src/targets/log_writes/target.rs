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

/// A write, flush, discard or mark waiting to be logged (`struct pending_block`): its
/// entry sector followed by the data, laid out as it goes to the log.
#[derive(Debug)]
struct Pending {
    flags: u64,
    nr_sectors: u64,
    buf: Vec<u8>,
}

impl Pending {
    fn new(sector: u64, nr_sectors: u64, flags: u64, mark: &[u8], data: &[u8]) -> Pending {
        let mut buf = Vec::with_capacity(SECTORSIZE as usize + data.len());
        push_entry_sector(&mut buf, sector, nr_sectors, flags, mark, SECTORSIZE);
        buf.extend_from_slice(data);
        Pending {
            flags,
            nr_sectors,
            buf,
        }
    }

    fn mark(text: &[u8]) -> Pending {
        // log_mark: kstrndup(data, sectorsize - sizeof(entry) - 1).
        let max = SECTORSIZE as usize - super::format::ENTRY_HEADER - 1;
        let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
        Pending::new(0, 0, MARK, &text[..text.len().min(max)], &[])
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
/// As in the kernel, a write is copied when it is submitted and joins the unflushed list
/// when it completes (whatever its outcome: `normal_end_io` does not look at the status);
/// a flush takes the unflushed list when it is submitted and, on completion, logs it
/// followed by the flush entry; a FUA write is logged on completion; a discard joins the
/// unflushed list; a mark is logged at once. The super is rewritten after every FUA and
/// mark entry. Reads pass through. When an entry would reach the last sector of the log
/// device, logging stops for good (`logging_disabled` in the status) and I/O passes
/// through. Dropping the target (the table is replaced or removed) logs the unflushed list
/// and the end mark `dm-log-writes-end`, as `log_writes_dtr` does.
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
    unflushed: Mutex<Vec<Pending>>,
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
            unflushed: Mutex::new(Vec::new()),
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
        self.log_blocks(vec![Pending::mark(text.as_bytes())]);
    }

    fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
    }

    /// The log kthread: give each block its place, write it, and rewrite the super after
    /// FUA and mark entries. Blocks arriving once logging is off are dropped.
    fn log_blocks(&self, blocks: Vec<Pending>) {
        let mut lg = lock(&self.logger);
        for block in blocks {
            if !self.logging_enabled() {
                return;
            }
            let sector = lg.next_sector;
            if block.flags & DISCARD == 0 {
                lg.next_sector += block.nr_sectors;
            }
            lg.next_sector += 1;
            if lg.end_sector != 0 && lg.next_sector >= lg.end_sector {
                self.disable();
                return;
            }
            lg.logged_entries += 1;
            if self.log.write(Sector(sector), &block.buf).is_err() {
                self.disable();
                return;
            }
            if block.flags & (FUA | MARK) != 0 {
                let sup = encode_super(lg.logged_entries, SECTORSIZE);
                if self.log.write(Sector(0), &sup).is_err() {
                    self.disable();
                    return;
                }
            }
        }
    }

    fn pending_write(&self, sector: Sector, buf: &[u8], flags: u64) -> Pending {
        let n = buf.len() as u64 / SECTOR_SIZE as u64;
        Pending::new(sector.0, n, flags, &[], buf)
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
        let block = self.pending_write(sector, buf, 0);
        let r = self.dev.write(sector, buf);
        lock(&self.unflushed).push(block);
        r
    }
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        if !self.logging_enabled() || buf.is_empty() {
            return self.dev.write_fua(sector, buf);
        }
        let block = self.pending_write(sector, buf, FUA);
        let r = self.dev.write_fua(sector, buf);
        self.log_blocks(vec![block]);
        r
    }
    fn flush(&self) -> Result<()> {
        if !self.logging_enabled() {
            return self.dev.flush();
        }
        let mut blocks = std::mem::take(&mut *lock(&self.unflushed));
        let r = self.dev.flush();
        blocks.push(Pending::new(0, 0, FLUSH, &[], &[]));
        self.log_blocks(blocks);
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
        let block = Pending::new(sector.0, count.0, DISCARD, &[], &[]);
        let r = match self.dev.discard(sector, count) {
            Err(Error::Unsupported { .. }) => Ok(()),
            r => r,
        };
        lock(&self.unflushed).push(block);
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
        let mut blocks = std::mem::take(&mut *lock(&self.unflushed));
        blocks.push(Pending::mark(END_MARK.as_bytes()));
        self.log_blocks(blocks);
    }
}
