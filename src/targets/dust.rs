//! `dust`: fails reads of blocks on a bad-block list, like a disk returning "Read Medium
//! Error" (kernel dm-dust.c, v1.0.0 in Linux 6.12; Debian does not build it, so this follows
//! the source).
//!
//! Table args: `<dev> <offset> <blksz>` (bytes, a power of two from 512 up to 1 GiB and at
//! most the target's length). The list starts empty and failing is off ("bypass"); messages
//! change both: `addbadblock <blk> [<write_fail_count>]`, `removebadblock <blk>`,
//! `queryblock <blk>`, `countbadblocks`, `clearbadblocks`, `listbadblocks`, `enable`,
//! `disable`, `quiet`. Block numbers count `blksz` blocks of the *underlying* device (the
//! mapped sector `offset + s`, shifted), as in `dust_map`.
//!
//! While enabled: a read touching a bad block fails with EIO; a write to a bad block with a
//! write-fail count left fails and decrements it, and otherwise removes the block from the
//! list and is written. Requests are split at target-relative multiples of the block size
//! (`dm_set_target_max_io_len`) and each piece is judged by its first sector; every piece is
//! processed and the request fails if any piece did. A flush is a WRITE bio at target sector
//! 0 (so it can clear or fail the block at `offset`: exact for a dust line at the start of
//! its table, where the kernel's flush bio lands); a discard is one WRITE bio judged by its
//! first sector.
//!
//! Message errors carry the kernel's log line (dmsetup itself only says "Invalid argument").

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};
use crate::table::args::{scan_llu, ArgResult, Args};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount, SECTOR_SHIFT};
use crate::volume::{check_io, check_range, chunks, SharedVolume, Volume};

use super::{DeviceAt, DeviceRef};

/// `DUST_MAX_BLKSZ_SECTORS`: 1 GiB.
const MAX_BLOCK_SECTORS: u64 = 2_097_152;

/// Parsed `dust` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DustArgs {
    /// The device and where the mapping starts on it.
    pub dest: DeviceAt,
    /// Block size in bytes.
    pub block_size: u32,
}

impl DustArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "dust";

    /// Parse like `dust_ctr` (in its order: block size checks, then the offset) for a line
    /// of `len` sectors.
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<DustArgs> {
        if args.len() != 3 {
            return Err(Args::error("Invalid argument count"));
        }
        let device = DeviceRef::parse(args, "Invalid argument count")?;
        let offset_at = args.position();
        let offset_token = args.next("Invalid argument count")?;
        let block_size = args.kstrtouint("Invalid block size parameter")?;
        let bad = |reason: &str| Err(args.error_at(offset_at + 1, reason));
        if block_size == 0 {
            return bad("Invalid block size parameter");
        }
        if block_size < 512 {
            return bad("Block size must be at least 512");
        }
        if !block_size.is_power_of_two() {
            return bad("Block size must be a power of 2");
        }
        if u64::from(block_size >> SECTOR_SHIFT) > len.0.min(MAX_BLOCK_SECTORS) {
            return bad("Block size is too large");
        }
        let offset = scan_llu(offset_token)
            .ok_or_else(|| args.error_at(offset_at, "Invalid device offset sector"))?;
        Ok(DustArgs {
            dest: DeviceAt {
                device,
                offset: SectorCount(offset),
            },
            block_size,
        })
    }
}

impl fmt::Display for DustArgs {
    /// `"%s %llu %u"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dest, self.block_size)
    }
}

#[derive(Debug, Default)]
struct DustState {
    /// Bad blocks and their remaining write-fail counts (the kernel's rbtree).
    bad: BTreeMap<u64, u8>,
    fail_read_on_bad_block: bool,
    quiet: bool,
}

/// A constructed dust target.
///
/// Testing how an application handles unreadable sectors: wrap its image in dust, list the
/// bad blocks, enable failures.
///
/// ```
/// use dmemu::table::DeviceSpec;
/// use dmemu::{Registry, Sector, Table, TableMode, Volume};
///
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("app.img");
/// std::fs::write(&image, vec![0x11; 1 << 20])?;
///
/// let registry = Registry::new();
/// let table = Table::parse(&format!("0 2048 dust {} 0 4096", image.display()))?;
/// let disk = registry.create(&DeviceSpec {
///     name: "dusty".into(),
///     uuid: String::new(),
///     minor: None,
///     mode: TableMode::ReadWrite,
///     table,
/// })?;
/// for words in [&["addbadblock", "3"][..], &["addbadblock", "9"], &["enable"]] {
///     disk.message(Sector(0), words)?;
/// }
/// assert_eq!(disk.message(Sector(0), &["countbadblocks"])?, "countbadblocks: 2 badblock(s) found");
///
/// let mut block = [0u8; 4096];
/// disk.read(Sector(2 * 8), &mut block)?; // block 2 reads
/// let err = disk.read(Sector(3 * 8), &mut block).unwrap_err(); // block 3 is bad
/// assert_eq!(err.errno(), 5);
/// // Writing a bad block takes it off the list (the drive "remapped" it).
/// disk.write(Sector(3 * 8), &[0x22; 4096])?;
/// disk.read(Sector(3 * 8), &mut block)?;
/// assert_eq!(block[0], 0x22);
/// assert_eq!(disk.message(Sector(0), &["listbadblocks"])?, "9\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Dust {
    args: DustArgs,
    device: SharedVolume,
    size: SectorCount,
    sectors_per_block: u64,
    shift: u32,
    state: Mutex<DustState>,
}

fn io_error(what: &str, block: u64) -> Error {
    Error::TargetFailed {
        target: "dust",
        reason: format!("{what} of bad block {block}"),
    }
}

fn msg_error(reason: impl Into<String>) -> Error {
    Error::invalid("dust message", reason)
}

impl Dust {
    /// The kernel's ctr: resolve the device and check the range.
    pub fn new(args: &DustArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Dust> {
        let device = device_area(ctx, &args.dest, len)?;
        Dust::over(device, args, len)
    }

    /// A dust mapping over an already-open volume (library use).
    pub fn over(device: SharedVolume, args: &DustArgs, len: SectorCount) -> Result<Dust> {
        check_range(device.size(), Sector(args.dest.offset.0), len)?;
        let sectors_per_block = u64::from(args.block_size >> SECTOR_SHIFT);
        if !sectors_per_block.is_power_of_two() {
            return Err(Error::invalid(
                "dust block size",
                "must be a power of two of at least 512",
            ));
        }
        Ok(Dust {
            args: args.clone(),
            device,
            size: len,
            sectors_per_block,
            shift: sectors_per_block.trailing_zeros(),
            state: Mutex::new(DustState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, DustState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bad blocks and their write-fail counts, in block order.
    #[must_use]
    pub fn bad_blocks(&self) -> Vec<(u64, u8)> {
        self.lock().bad.iter().map(|(&b, &n)| (b, n)).collect()
    }

    fn block_of(&self, target_sector: Sector) -> u64 {
        (self.args.dest.offset.0 + target_sector.0) >> self.shift
    }

    /// `dust_map_read`: whether a read piece starting at `s` may proceed.
    fn map_read(&self, s: Sector) -> Result<()> {
        let st = self.lock();
        let block = self.block_of(s);
        if st.fail_read_on_bad_block && st.bad.contains_key(&block) {
            return Err(io_error("read", block));
        }
        Ok(())
    }

    /// `dust_map_write`: a write to a bad block fails while it has write failures left, and
    /// otherwise takes the block off the list.
    fn map_write(&self, s: Sector) -> Result<()> {
        let mut st = self.lock();
        if !st.fail_read_on_bad_block {
            return Ok(());
        }
        let block = self.block_of(s);
        match st.bad.get_mut(&block) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Err(io_error("write", block))
            }
            Some(_) => {
                st.bad.remove(&block);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Run `op` on each block-sized piece, after `map` allowed it; every piece is processed
    /// and the first failure is returned.
    fn pieces(
        &self,
        sector: Sector,
        count: SectorCount,
        map: impl Fn(&Self, Sector) -> Result<()>,
        mut op: impl FnMut(Sector, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let mut first_error = None;
        let mut done = 0usize;
        for (s, n) in chunks(sector, count, SectorCount(self.sectors_per_block)) {
            let bytes = n.usize_bytes()?;
            let r = map(self, s).and_then(|()| op(s + self.args.dest.offset, done..done + bytes));
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
            done += bytes;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The last valid block number for messages: the underlying device's size in blocks (the
    /// kernel compares with `>`, so this block itself is accepted).
    fn max_block(&self) -> u64 {
        self.device.size().0 / self.sectors_per_block
    }

    fn parse_block(&self, token: &str) -> Result<u64> {
        let block = scan_llu(token).ok_or_else(|| msg_error("Invalid argument"))?;
        if block > self.max_block() {
            return Err(msg_error("selected block value out of range"));
        }
        Ok(block)
    }

    fn add_block(&self, block: u64, write_fails: u8) -> Result<String> {
        let mut st = self.lock();
        if st.bad.contains_key(&block) {
            return Err(msg_error(format!(
                "dust_add_block: block {block} already in badblocklist"
            )));
        }
        st.bad.insert(block, write_fails);
        Ok(String::new())
    }
}

impl Volume for Dust {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        let device = &self.device;
        self.pieces(sector, count, Dust::map_read, |at, range| {
            device.read(at, &mut buf[range])
        })
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        let device = &self.device;
        self.pieces(sector, count, Dust::map_write, |at, range| {
            device.write(at, &buf[range])
        })
    }
    fn flush(&self) -> Result<()> {
        self.map_write(Sector(0))?;
        self.device.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.map_write(sector)?;
        self.device.discard(sector + self.args.dest.offset, count)
    }
    /// A FUA write is one write bio per block (`dust_map_write`), passed down with its FUA;
    /// not a write followed by a flush, which dust would see as a write to block 0.
    /// (`write_zeroes` is the default: 6.12 dm-dust takes no REQ_OP_WRITE_ZEROES, so the
    /// block layer sends zero writes, which bad blocks fail as they fail writes.)
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        let device = &self.device;
        self.pieces(sector, count, Dust::map_write, |at, range| {
            device.write_fua(at, &buf[range])
        })
    }
}

mod message;

#[cfg(test)]
mod tests;
