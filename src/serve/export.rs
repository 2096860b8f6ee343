//! An export: a named `Volume` addressed in bytes, as NBD (and later FUSE) clients address it.
//! Requests not aligned to the export's block size become read-modify-write of the blocks
//! they touch, serialised against every other write to those blocks.

use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};
use crate::volume::{Allocation, SharedVolume, Unmap};

/// Whether clients may change an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportAccess {
    /// Reads only; writes, trims and zeroing fail with EPERM.
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
}

/// Whether a write must be durable before it is acknowledged (NBD_CMD_FLAG_FUA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Durable at the next flush.
    Cached,
    /// Durable when the call returns.
    Fua,
}

/// How a write-zeroes request may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroSpeed {
    /// Zero the range however long it takes.
    Any,
    /// Succeed only if it costs next to nothing (NBD_CMD_FLAG_FAST_ZERO); otherwise fail with
    /// `Unsupported` and change nothing, so the client can choose a different strategy.
    Fast,
}

/// A read that failed part way: bytes before `offset` were read correctly.
#[derive(Debug)]
pub struct ReadFailure {
    /// Byte offset (within the export) of the first block that failed.
    pub offset: u64,
    /// Why.
    pub error: Error,
}

/// A volume exported under a name.
#[derive(Debug)]
pub struct Export {
    name: String,
    description: String,
    volume: SharedVolume,
    access: ExportAccess,
    block_size: u32,
    size: u64,
    writes: RangeLocks,
}

/// Largest block size an export may require (NBD's limit for a minimum block size).
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;

/// Reads that fail are re-read in pieces of this size to find the failing block.
const LOCATE_PIECE: usize = 64 * 1024;

/// Allocation queries a fast-zero check makes before it gives up and answers "not fast".
const FAST_ZERO_QUERIES: usize = 64;

/// At most this many extents answer one block-status request.
pub const MAX_EXTENTS: usize = 4096;

impl Export {
    /// Export `volume` as `name`, read-write, with 512-byte blocks.
    pub fn new(name: impl Into<String>, volume: SharedVolume) -> Export {
        let size = volume.size().bytes();
        Export {
            name: name.into(),
            description: String::new(),
            volume,
            access: ExportAccess::ReadWrite,
            block_size: 512,
            size,
            writes: RangeLocks::default(),
        }
    }

    /// Set who may write.
    #[must_use]
    pub fn with_access(mut self, access: ExportAccess) -> Export {
        self.access = access;
        self
    }

    /// Set the text NBD_INFO_DESCRIPTION and NBD_OPT_LIST show.
    #[must_use]
    pub fn with_description(mut self, description: impl Into<String>) -> Export {
        self.description = description.into();
        self
    }

    /// Require I/O to the volume in units of `block_size` bytes (a power of two from 512 to
    /// 64 KiB that divides the volume's size): the crypt sector size, the verity data block.
    pub fn with_block_size(mut self, block_size: u32) -> Result<Export> {
        let ok = block_size.is_power_of_two()
            && (512..=MAX_BLOCK_SIZE).contains(&block_size)
            && self.size % u64::from(block_size) == 0;
        if !ok {
            return Err(Error::invalid(
                "export block size",
                format!(
                    "{block_size} for {} ({} bytes): needs a power of two in [512, 65536] dividing the size",
                    crate::error::quote(&self.name), self.size
                ),
            ));
        }
        self.block_size = block_size;
        Ok(self)
    }

    /// The export name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The description (may be empty).
    #[must_use]
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Who may write.
    #[must_use]
    pub fn access(&self) -> ExportAccess {
        self.access
    }

    /// The smallest unit the volume is addressed in, in bytes.
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The underlying volume.
    #[must_use]
    pub fn volume(&self) -> &SharedVolume {
        &self.volume
    }

    fn block(&self) -> u64 {
        u64::from(self.block_size)
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                sector: Sector(offset / 512),
                count: SectorCount(len.div_ceil(512)),
                size: self.volume.size(),
            }),
        }
    }

    /// The blocks covering `[offset, offset + len)`, as a byte range.
    fn covering(&self, offset: u64, len: u64) -> (u64, u64) {
        let b = self.block();
        (offset / b * b, (offset + len).div_ceil(b) * b)
    }

    /// What a FUA request owes after its writes: a flush.
    fn settle(&self, durability: Durability) -> Result<()> {
        match durability {
            Durability::Cached => Ok(()),
            Durability::Fua => self.volume.flush(),
        }
    }

    fn writable(&self) -> Result<()> {
        match self.access {
            ExportAccess::ReadWrite => Ok(()),
            ExportAccess::ReadOnly => Err(Error::ReadOnly {
                target: format!("export {}", crate::error::quote(&self.name)),
            }),
        }
    }

    /// Fill `buf` from byte `offset`. On failure the bytes before the failing block are valid.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadFailure> {
        let len = buf.len() as u64;
        self.check(offset, len)
            .map_err(|error| ReadFailure { offset, error })?;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.covering(offset, len);
        if start == offset && end == offset + len {
            return self.read_aligned(start, buf);
        }
        let at = move |error| ReadFailure { offset, error };
        let mut tmp = vec![0u8; usize_of(end - start).map_err(at)?];
        let head = usize_of(offset - start).map_err(at)?;
        let result = self.read_aligned(start, &mut tmp);
        let valid = match &result {
            Ok(()) => buf.len(),
            Err(f) => usize_of(f.offset.max(offset) - offset)
                .map_err(at)?
                .min(buf.len()),
        };
        buf[..valid].copy_from_slice(&tmp[head..head + valid]);
        result.map_err(|f| ReadFailure {
            offset: f.offset.max(offset),
            error: f.error,
        })
    }

    /// Read block-aligned `[start, start + buf.len())`; on failure find the first failing
    /// block by re-reading in pieces, leaving every byte before it valid.
    fn read_aligned(&self, start: u64, buf: &mut [u8]) -> Result<(), ReadFailure> {
        let Err(first) = self.volume.read(Sector(start / 512), buf) else {
            return Ok(());
        };
        let block = usize_of(self.block()).map_err(|error| ReadFailure {
            offset: start,
            error,
        })?;
        for (piece_at, piece) in (0..)
            .step_by(LOCATE_PIECE)
            .zip(buf.chunks_mut(LOCATE_PIECE))
        {
            let piece_start = start + piece_at as u64;
            if self.volume.read(Sector(piece_start / 512), piece).is_ok() {
                continue;
            }
            for (block_at, blk) in (0..).step_by(block).zip(piece.chunks_mut(block)) {
                let at = piece_start + block_at as u64;
                if let Err(error) = self.volume.read(Sector(at / 512), blk) {
                    return Err(ReadFailure { offset: at, error });
                }
            }
        }
        // Nothing failed the second time (a fault window closed): report the first answer
        // at the start, since the data read then is not known good.
        Err(ReadFailure {
            offset: start,
            error: first,
        })
    }

    /// Write `data` at byte `offset`.
    pub fn write(&self, offset: u64, data: &[u8], durability: Durability) -> Result<()> {
        self.writable()?;
        let len = data.len() as u64;
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.covering(offset, len);
        let _held = self.writes.lock(start, end);
        if start == offset && end == offset + len {
            return match durability {
                Durability::Cached => self.volume.write(Sector(start / 512), data),
                Durability::Fua => self.volume.write_fua(Sector(start / 512), data),
            };
        }
        self.patch(offset, len, Some(data), Unmap::Forbidden)?;
        self.settle(durability)
    }

    /// Make `[offset, offset + len)` read as zeros.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: Unmap,
        speed: ZeroSpeed,
        durability: Durability,
    ) -> Result<()> {
        self.writable()?;
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = self.covering(offset, len);
        let _held = self.writes.lock(start, end);
        if speed == ZeroSpeed::Fast {
            // Only a range that already reads as zeros is zeroed for free; a volume's own
            // write_zeroes may be a loop of writes, so anything else is "not fast".
            return if self.already_zero(start, end, unmap)? {
                Ok(())
            } else {
                Err(Error::Unsupported {
                    target: "export",
                    op: "fast zeroing of a range that is not already zero",
                })
            };
        }
        self.patch(offset, len, None, unmap)?;
        self.settle(durability)
    }

    fn already_zero(&self, start: u64, end: u64, unmap: Unmap) -> Result<bool> {
        let mut at = start / 512;
        let stop = end / 512;
        for _ in 0..FAST_ZERO_QUERIES {
            if at >= stop {
                return Ok(true);
            }
            for e in self.volume.allocation(Sector(at), SectorCount(stop - at))? {
                let zero = match e.state {
                    Allocation::Zero => true,
                    Allocation::Hole => unmap == Unmap::Allowed,
                    Allocation::Data => false,
                };
                if !zero || e.len.0 == 0 {
                    return Ok(false);
                }
                at += e.len.0;
            }
        }
        Ok(at >= stop)
    }

    /// Write `data` (or zeros) over unaligned `[offset, offset + len)`: partial head and tail
    /// blocks are read, patched and written back; whole blocks in between go straight down.
    /// The caller holds the write lock over the covering blocks.
    fn patch(&self, offset: u64, len: u64, data: Option<&[u8]>, unmap: Unmap) -> Result<()> {
        let b = self.block();
        let end = offset + len;
        let head_block = offset / b * b;
        let mid_start = offset.div_ceil(b) * b;
        let mid_end = (end / b * b).max(mid_start);
        if offset % b != 0 {
            let patch_end = end.min(head_block + b);
            self.patch_block(
                head_block,
                offset,
                patch_end,
                match data {
                    Some(d) => Some(&d[..usize_of(patch_end - offset)?]),
                    None => None,
                },
            )?;
        }
        if mid_end > mid_start {
            let sector = Sector(mid_start / 512);
            match data {
                Some(d) => {
                    let from = usize_of(mid_start - offset)?;
                    let to = usize_of(mid_end - offset)?;
                    self.volume.write(sector, &d[from..to])?;
                }
                None => self.volume.write_zeroes(
                    sector,
                    SectorCount((mid_end - mid_start) / 512),
                    unmap,
                )?,
            }
        }
        let tail_block = end / b * b;
        if end % b != 0 && tail_block >= mid_start {
            let from = tail_block.max(offset);
            self.patch_block(
                tail_block,
                from,
                end,
                match data {
                    Some(d) => Some(&d[usize_of(from - offset)?..]),
                    None => None,
                },
            )?;
        }
        Ok(())
    }

    fn patch_block(&self, block: u64, from: u64, to: u64, data: Option<&[u8]>) -> Result<()> {
        let mut buf = vec![0u8; usize_of(self.block())?];
        self.volume.read(Sector(block / 512), &mut buf)?;
        let range = usize_of(from - block)?..usize_of(to - block)?;
        match data {
            Some(d) => buf[range].copy_from_slice(d),
            None => buf[range].fill(0),
        }
        self.volume.write(Sector(block / 512), &buf)
    }

    /// The client no longer needs `[offset, offset + len)`: the whole blocks inside it are
    /// discarded; partial blocks are left as they are (a trim is advisory).
    pub fn trim(&self, offset: u64, len: u64, durability: Durability) -> Result<()> {
        self.writable()?;
        self.check(offset, len)?;
        let b = self.block();
        let (start, end) = (offset.div_ceil(b) * b, (offset + len) / b * b);
        if end > start {
            let _held = self.writes.lock(start, end);
            match self
                .volume
                .discard(Sector(start / 512), SectorCount((end - start) / 512))
            {
                Ok(()) | Err(Error::Unsupported { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.settle(durability)
    }

    /// Make every completed write durable (on every connection: they share the volume).
    pub fn flush(&self) -> Result<()> {
        self.volume.flush()
    }

    /// Check a range for commands that move no data (NBD_CMD_CACHE).
    pub fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)
    }

    /// Allocation of `[offset, offset + len)` as `(bytes, state)` runs, in order, merged,
    /// clipped to the range, at most `max` of them (and at most `MAX_EXTENTS`). Covers at
    /// least one byte of a non-empty range; may stop early.
    pub fn allocation(&self, offset: u64, len: u64, max: usize) -> Result<Vec<(u64, Allocation)>> {
        self.check(offset, len)?;
        let max = max.clamp(1, MAX_EXTENTS);
        let end = offset + len;
        let mut out: Vec<(u64, Allocation)> = Vec::new();
        let mut at = offset / 512;
        let stop = end.div_ceil(512);
        while at < stop && out.len() < max {
            let extents = self.volume.allocation(Sector(at), SectorCount(stop - at))?;
            if extents.is_empty() {
                break;
            }
            for e in extents {
                if e.len.0 == 0 || at >= stop {
                    break;
                }
                let from = (at * 512).max(offset);
                let to = ((at + e.len.0.min(stop - at)) * 512).min(end);
                at += e.len.0.min(stop - at);
                if let Some((n, _)) = out.last_mut().filter(|(_, s)| *s == e.state) {
                    *n += to - from;
                } else if out.len() == max {
                    return Ok(out);
                } else {
                    out.push((to - from, e.state));
                }
            }
        }
        Ok(out)
    }
}

fn usize_of(n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| Error::invalid("request length", format!("{n} bytes")))
}

/// Byte ranges being written; a writer waits until no range it overlaps is held.
#[derive(Debug, Default)]
struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    freed: Condvar,
}

struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: (u64, u64),
}

impl RangeLocks {
    fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let mut held = lock(&self.held);
        while held.iter().any(|&(s, e)| s < end && start < e) {
            held = self
                .freed
                .wait(held)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        held.push((start, end));
        RangeGuard {
            locks: self,
            range: (start, end),
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.locks.held);
        if let Some(i) = held.iter().position(|&r| r == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.locks.freed.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::volume::{MemVolume, Volume};

    const BLOCK: u32 = 4096; // a crypt-like unit, larger than a sector
    const SIZE: usize = 64 << 10;

    #[derive(Clone, Debug)]
    enum Op {
        Write(u64, Vec<u8>),
        Zero(u64, u64),
        Trim(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let at = 0..SIZE as u64 - 1;
        prop_oneof![
            (at.clone(), prop::collection::vec(any::<u8>(), 1..10_000))
                .prop_map(|(a, d)| Op::Write(a, d)),
            (at.clone(), 1..20_000u64).prop_map(|(a, n)| Op::Zero(a, n)),
            (at, 1..20_000u64).prop_map(|(a, n)| Op::Trim(a, n)),
        ]
    }

    fn export() -> Export {
        let mem: SharedVolume = Arc::new(MemVolume::new(SectorCount(SIZE as u64 / 512)).unwrap());
        Export::new("t", mem).with_block_size(BLOCK).unwrap()
    }

    proptest! {
        /// Unaligned writes and zeroes read back as a byte model says; trims (whole blocks
        /// only, MemVolume zeroes them) never touch bytes outside their range.
        #[test]
        fn unaligned_ops_match_a_byte_model(ops in prop::collection::vec(op(), 1..24)) {
            let e = export();
            let mut model = vec![0u8; SIZE];
            for op in ops {
                match op {
                    Op::Write(at, data) => {
                        let n = data.len().min(SIZE - at as usize);
                        e.write(at, &data[..n], Durability::Cached).unwrap();
                        model[at as usize..at as usize + n].copy_from_slice(&data[..n]);
                    }
                    Op::Zero(at, n) => {
                        let n = n.min(SIZE as u64 - at);
                        e.write_zeroes(at, n, Unmap::Allowed, ZeroSpeed::Any, Durability::Fua).unwrap();
                        model[at as usize..(at + n) as usize].fill(0);
                    }
                    Op::Trim(at, n) => {
                        let n = n.min(SIZE as u64 - at);
                        e.trim(at, n, Durability::Cached).unwrap();
                        let b = u64::from(BLOCK);
                        let (s, t) = (at.div_ceil(b) * b, (at + n) / b * b);
                        if t > s {
                            model[s as usize..t as usize].fill(0);
                        }
                    }
                }
                let mut got = vec![0u8; SIZE];
                e.read(0, &mut got).unwrap();
                prop_assert!(got == model);
            }
            let mut piece = vec![0u8; 777];
            e.read(3, &mut piece).unwrap();
            prop_assert_eq!(&piece[..], &model[3..780]);
        }
    }

    /// A volume that runs a hook (once) inside its next read: the window between the read
    /// and the write of a read-modify-write.
    struct Interleave {
        inner: MemVolume,
        hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl std::fmt::Debug for Interleave {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Interleave")
        }
    }

    impl Volume for Interleave {
        fn size(&self) -> SectorCount {
            self.inner.size()
        }
        fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
            self.inner.read(sector, buf)?;
            let hook = lock(&self.hook).take();
            if let Some(h) = hook {
                h();
            }
            Ok(())
        }
        fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
            self.inner.write(sector, buf)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
            self.inner.discard(sector, count)
        }
    }

    /// Another connection's write to the same block arrives while a read-modify-write holds
    /// the block between its read and its write: the range lock makes it wait (up to the
    /// hook's patience, then it lands afterwards), so both writes survive. Without the lock
    /// it would land inside the window and be overwritten with the old contents.
    #[test]
    fn write_during_read_modify_write_of_its_block_is_not_lost() {
        let vol = Arc::new(Interleave {
            inner: MemVolume::new(SectorCount(16)).unwrap(),
            hook: Mutex::new(None),
        });
        let e = Arc::new(
            Export::new("t", Arc::clone(&vol) as SharedVolume)
                .with_block_size(BLOCK)
                .unwrap(),
        );
        let other = Arc::new(Mutex::new(None));
        let (e2, other2) = (Arc::clone(&e), Arc::clone(&other));
        *lock(&vol.hook) = Some(Box::new(move || {
            let (tx, rx) = std::sync::mpsc::channel();
            let t = std::thread::spawn(move || {
                e2.write(0, &[2; 512], Durability::Cached).unwrap();
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(std::time::Duration::from_millis(200));
            *lock(&other2) = Some(t);
        }));
        e.write(1000, &[1; 100], Durability::Cached).unwrap();
        lock(&other).take().unwrap().join().unwrap();
        let mut got = vec![0u8; 4096];
        e.read(0, &mut got).unwrap();
        assert_eq!(&got[..512], &[2u8; 512][..]);
        assert_eq!(&got[1000..1100], &[1u8; 100][..]);
    }

    #[test]
    fn read_only_export_refuses_writes_and_keeps_data() {
        let e = export().with_access(ExportAccess::ReadOnly);
        assert!(matches!(
            e.write(0, &[1; 10], Durability::Cached),
            Err(Error::ReadOnly { .. })
        ));
        assert!(matches!(
            e.write_zeroes(0, 10, Unmap::Allowed, ZeroSpeed::Any, Durability::Cached),
            Err(Error::ReadOnly { .. })
        ));
        assert!(matches!(
            e.trim(0, 8192, Durability::Cached),
            Err(Error::ReadOnly { .. })
        ));
    }

    #[test]
    fn fast_zero_of_data_is_refused_without_writing() {
        let e = export();
        e.write(100, &[7; 10], Durability::Cached).unwrap();
        let r = e.write_zeroes(0, 4096, Unmap::Allowed, ZeroSpeed::Fast, Durability::Cached);
        assert!(matches!(r, Err(Error::Unsupported { .. })));
        let mut got = [0u8; 10];
        e.read(100, &mut got).unwrap();
        assert_eq!(got, [7; 10]);
    }

    #[test]
    fn block_size_must_divide_the_size() {
        let mem: SharedVolume = Arc::new(MemVolume::new(SectorCount(9)).unwrap());
        assert!(Export::new("t", mem).with_block_size(4096).is_err());
    }
}
