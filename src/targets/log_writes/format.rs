//! The dm-log-writes log format (drivers/md/dm-log-writes.c, Linux 6.12) and a bounded,
//! checking reader for it (after xfstests' src/log-writes/log-writes.c).
//!
//! ```text
//! sector 0        super: le64 magic 0x6a736677736872, le64 version 1, le64 nr_entries,
//!                 le32 sectorsize; zeros to sectorsize
//! then nr_entries times:
//!   1 sectorsize  entry: le64 sector, le64 nr_sectors (both in sectorsize units),
//!                 le64 flags, le64 data_len; a mark's text (data_len bytes); zeros
//!   nr_sectors    the data written (none for a DISCARD or a data-less entry)
//! ```
//!
//! The super is rewritten only after FUA and MARK entries, so a log may hold more entries
//! than `nr_entries` counts (written after the last rewrite); readers stop at `nr_entries`.

use crate::error::{Error, Result};
use crate::units::{Sector, SECTOR_SIZE};
use crate::volume::Volume;

/// `WRITE_LOG_MAGIC`.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// `WRITE_LOG_VERSION`.
pub const VERSION: u64 = 1;
/// Bytes of `struct log_write_entry` (and the used part of the super: 28).
pub const ENTRY_HEADER: usize = 32;
/// Bytes of `struct log_write_super`.
const SUPER_BYTES: usize = 28;
/// Largest sectorsize accepted in a log (the kernel's logical block sizes reach 64 KiB).
pub const MAX_SECTORSIZE: u32 = 65536;

/// `LOG_FLUSH_FLAG`: an empty REQ_PREFLUSH (or a flush carrying data).
pub const FLUSH: u64 = 1 << 0;
/// `LOG_FUA_FLAG`: a REQ_FUA write.
pub const FUA: u64 = 1 << 1;
/// `LOG_DISCARD_FLAG`: a discard; no data follows in the log.
pub const DISCARD: u64 = 1 << 2;
/// `LOG_MARK_FLAG`: a `mark` message; its text sits in the entry sector.
pub const MARK: u64 = 1 << 3;
/// `LOG_METADATA_FLAG`: a REQ_META write (file-system metadata; dmemu never sets it).
pub const METADATA: u64 = 1 << 4;

/// Flags as replay-log's `entry_flags_to_str` prints them: `FLUSH|FUA|DISCARD|MARK`,
/// unknown bits as `UNKNOWN.0x..`, nothing as `NONE`.
#[must_use]
pub fn flags_str(flags: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = flags;
    for (bit, name) in [
        (FLUSH, "FLUSH"),
        (FUA, "FUA"),
        (DISCARD, "DISCARD"),
        (MARK, "MARK"),
    ] {
        if rest & bit != 0 {
            parts.push(name.to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("UNKNOWN.0x{rest:x}"));
    }
    if parts.is_empty() {
        "NONE".to_string()
    } else {
        parts.join("|")
    }
}

/// The super block as the kernel writes it: 28 bytes, zero padded to `sectorsize`.
#[must_use]
pub fn encode_super(nr_entries: u64, sectorsize: u32) -> Vec<u8> {
    let mut b = vec![0u8; sectorsize as usize];
    b[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&nr_entries.to_le_bytes());
    b[24..28].copy_from_slice(&sectorsize.to_le_bytes());
    b
}

/// Append one entry sector (`write_metadata`): the header, a mark's text, zeros.
pub fn push_entry_sector(
    out: &mut Vec<u8>,
    sector: u64,
    nr_sectors: u64,
    flags: u64,
    mark: &[u8],
    sectorsize: u32,
) {
    let start = out.len();
    out.resize(start + sectorsize as usize, 0);
    let b = &mut out[start..];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..16].copy_from_slice(&nr_sectors.to_le_bytes());
    b[16..24].copy_from_slice(&flags.to_le_bytes());
    b[24..32].copy_from_slice(&(mark.len() as u64).to_le_bytes());
    b[ENTRY_HEADER..ENTRY_HEADER + mark.len()].copy_from_slice(mark);
}

/// The log's super block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSuper {
    /// Entries the log counts (the kernel's `logged_entries` at the last rewrite).
    pub nr_entries: u64,
    /// The logged device's logical block size: the unit of entry sectors and lengths.
    pub sectorsize: u32,
}

/// One entry of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// 0-based entry number.
    pub index: u64,
    /// Byte offset of the entry sector in the log.
    pub offset: u64,
    /// First sector written, in `sectorsize` units.
    pub sector: u64,
    /// Sectors written or discarded, in `sectorsize` units.
    pub nr_sectors: u64,
    /// `FLUSH | FUA | DISCARD | MARK | METADATA` bits.
    pub flags: u64,
    /// The mark text (MARK entries), as logged (at most sectorsize - 33 bytes).
    pub mark: Option<Vec<u8>>,
    /// Bytes of data that follow the entry sector in the log.
    pub data_bytes: u64,
}

impl LogEntry {
    /// Byte offset of the entry's data in the log.
    #[must_use]
    pub fn data_offset(&self, sectorsize: u32) -> u64 {
        self.offset + u64::from(sectorsize)
    }

    /// Byte offset of the next entry.
    #[must_use]
    pub fn end_offset(&self, sectorsize: u32) -> u64 {
        self.data_offset(sectorsize) + self.data_bytes
    }

    /// Whether any of `flags` is set.
    #[must_use]
    pub fn has(&self, flags: u64) -> bool {
        self.flags & flags != 0
    }

    /// Whether this is a MARK entry whose text is `name` (replay-log's `should_stop`
    /// compares up to the first NUL).
    #[must_use]
    pub fn is_mark(&self, name: &str) -> bool {
        self.mark.as_deref().is_some_and(|m| {
            let m = m.split(|&b| b == 0).next().unwrap_or(&[]);
            m == name.as_bytes()
        })
    }
}

/// A log on a volume: the super and a cursor over its entries. Every entry is checked as
/// replay-log checks it, and bounded by the log's size before anything is read or
/// allocated.
#[derive(Debug)]
pub struct LogReader<'a> {
    log: &'a dyn Volume,
    sup: LogSuper,
    log_bytes: u64,
}

fn corrupt(what: &'static str, offset: u64, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        what,
        offset,
        detail: detail.into(),
    }
}

impl<'a> LogReader<'a> {
    /// Read and check the super (`log_open`).
    pub fn open(log: &'a dyn Volume) -> Result<LogReader<'a>> {
        let log_bytes = log.size().bytes();
        if log_bytes < SECTOR_SIZE as u64 {
            return Err(corrupt("log super", 0, "Error reading super: log is empty"));
        }
        let mut b = vec![0u8; SECTOR_SIZE];
        log.read(Sector(0), &mut b)?;
        let le64 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        if le64(0) != MAGIC {
            return Err(corrupt("log super magic", 0, "Magic doesn't match"));
        }
        let version = le64(8);
        if version != VERSION {
            return Err(corrupt(
                "log super version",
                8,
                format!(
                    "Version mismatch, wanted {VERSION}, have {}",
                    version as i32
                ),
            ));
        }
        let sectorsize = u32::from_le_bytes(b[24..SUPER_BYTES].try_into().unwrap_or([0; 4]));
        if !(512..=MAX_SECTORSIZE).contains(&sectorsize) || !sectorsize.is_power_of_two() {
            return Err(corrupt(
                "log super sectorsize",
                24,
                format!("sectorsize {sectorsize} is not a power of two from 512 to 65536"),
            ));
        }
        Ok(LogReader {
            log,
            sup: LogSuper {
                nr_entries: le64(16),
                sectorsize,
            },
            log_bytes,
        })
    }

    /// The super block.
    #[must_use]
    pub fn super_block(&self) -> LogSuper {
        self.sup
    }

    /// The log's size in bytes.
    #[must_use]
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// The volume the log is on.
    #[must_use]
    pub fn volume(&self) -> &'a dyn Volume {
        self.log
    }

    /// Byte offset of entry 0.
    #[must_use]
    pub fn first_offset(&self) -> u64 {
        u64::from(self.sup.sectorsize)
    }

    /// Read entry `index` at byte `offset` (`log_seek_next_entry`'s checks): the entry
    /// sector must lie in the log, not be all zeros, be zero padded unless it is a mark,
    /// and its data must fit in the log.
    pub fn entry_at(&self, index: u64, offset: u64) -> Result<LogEntry> {
        let e = self.header_at(index, offset)?;
        self.check_data(&e)?;
        Ok(e)
    }

    /// The entry sector's checks of [`entry_at`](Self::entry_at), not the data's: what
    /// replay-log knows when it prints an entry, before it reads the data.
    pub fn header_at(&self, index: u64, offset: u64) -> Result<LogEntry> {
        let ss = u64::from(self.sup.sectorsize);
        let at = |detail: String| corrupt("log entry", offset, format!("entry {index}: {detail}"));
        if offset
            .checked_add(ss)
            .is_none_or(|end| end > self.log_bytes)
        {
            return Err(at(format!(
                "Error reading entry: the entry sector at byte {offset} is past the log end \
                 ({} bytes; the super claims {} entries)",
                self.log_bytes, self.sup.nr_entries
            )));
        }
        let mut b = vec![0u8; ss as usize];
        self.log.read(Sector(offset / SECTOR_SIZE as u64), &mut b)?;
        let le64 = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let (sector, nr_sectors, flags, data_len) = (le64(0), le64(8), le64(16), le64(24));
        let malformed = || at(format!("Malformed entry @{}", offset / ss));
        if flags == 0 && nr_sectors == 0 {
            return Err(malformed());
        }
        if flags != MARK && b[ENTRY_HEADER] != 0 {
            return Err(malformed());
        }
        let mark = if flags & MARK != 0 {
            let room = ss as usize - ENTRY_HEADER;
            let len = usize::try_from(data_len)
                .ok()
                .filter(|&l| l <= room)
                .ok_or_else(|| {
                    at(format!(
                        "mark length {data_len} does not fit in a {ss}-byte entry sector"
                    ))
                })?;
            Some(b[ENTRY_HEADER..ENTRY_HEADER + len].to_vec())
        } else {
            None
        };
        let bytes = nr_sectors.checked_mul(ss).ok_or_else(|| {
            at(format!(
                "sector count {nr_sectors} does not fit (times sectorsize {ss})"
            ))
        })?;
        let data_bytes = if flags & DISCARD != 0 { 0 } else { bytes };
        if sector
            .checked_add(nr_sectors)
            .and_then(|end| end.checked_mul(ss))
            .is_none()
        {
            return Err(at(format!(
                "sector {sector} + {nr_sectors} sectors does not fit in 64 bits of bytes"
            )));
        }
        Ok(LogEntry {
            index,
            offset,
            sector,
            nr_sectors,
            flags,
            mark,
            data_bytes,
        })
    }

    /// Whether the entry's data lies in the log.
    pub fn check_data(&self, e: &LogEntry) -> Result<()> {
        let data_end = e.data_offset(self.sup.sectorsize);
        if data_end
            .checked_add(e.data_bytes)
            .is_none_or(|end| end > self.log_bytes)
        {
            return Err(corrupt(
                "log entry",
                e.offset,
                format!(
                    "entry {}: Error reading data: {} bytes at byte {data_end} run past the \
                     log end ({} bytes)",
                    e.index, e.data_bytes, self.log_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The entries the super counts, in order; the first damaged one ends the walk with
    /// an error naming it (the ones before it are whole).
    #[must_use]
    pub fn entries(&self) -> Entries<'_, 'a> {
        Entries {
            reader: self,
            index: 0,
            offset: self.first_offset(),
            failed: false,
        }
    }

    /// Read `len` bytes of the log at byte `offset` (a multiple of 512) into `buf`.
    pub fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.log.read(Sector(offset / SECTOR_SIZE as u64), buf)
    }
}

/// Iterator over a log's entries (see [`LogReader::entries`]).
#[derive(Debug)]
pub struct Entries<'r, 'a> {
    reader: &'r LogReader<'a>,
    index: u64,
    offset: u64,
    failed: bool,
}

impl Entries<'_, '_> {
    /// Byte offset of the next entry (replay-log's `cur_pos`).
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Iterator for Entries<'_, '_> {
    type Item = Result<LogEntry>;
    fn next(&mut self) -> Option<Result<LogEntry>> {
        if self.failed || self.index >= self.reader.sup.nr_entries {
            return None;
        }
        match self.reader.entry_at(self.index, self.offset) {
            Ok(e) => {
                self.index += 1;
                self.offset = e.end_offset(self.reader.sup.sectorsize);
                Some(Ok(e))
            }
            Err(err) => {
                self.failed = true;
                Some(Err(err))
            }
        }
    }
}
