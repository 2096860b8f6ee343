//! The `Volume` trait: a fixed-size array of 512-byte sectors, and its backings.
//!
//! Every target and every backing implements it, so targets stack over files, memory and each
//! other through one interface.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};

pub mod copy;
mod file;
mod io;
mod lock;
mod memory;
mod mmap;

pub use file::{Access, FileVolume};
pub use io::VolumeIo;
pub use lock::ImageFile;
pub use memory::MemVolume;
pub use mmap::MmapVolume;

/// A fixed-size array of 512-byte sectors that many threads may read and write at once.
///
/// Contract (checked for every implementation by `testing::conformance`):
/// - `buf.len()` is a whole number of sectors and `[sector, sector + len)` lies within
///   `size()`; otherwise the call fails with `Misaligned` / `OutOfRange` and has no effect.
/// - Reads and writes are exact: they transfer all of `buf` or return an error.
/// - A write that has returned is visible to every later read, from any thread.
/// - `flush` makes every write that returned before it durable (REQ_PREFLUSH).
pub trait Volume: Send + Sync + fmt::Debug {
    /// Length in sectors; fixed for the lifetime of the volume.
    fn size(&self) -> SectorCount;
    /// Fill `buf` from `sector` on.
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()>;
    /// Write all of `buf` from `sector` on.
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> Result<()>;

    /// The logical block size in bytes (what `blockdev --getss` reports): 512 for plain
    /// volumes. A target that emulates another one says so (ebs), and a target that adapts
    /// to its device's (ebs without `<ubs>`) asks it. Wrappers need not forward it.
    fn logical_block_size(&self) -> u32 {
        512
    }
    /// The range's contents are no longer needed (REQ_OP_DISCARD). What a later read returns
    /// is documented per implementation; volumes that cannot discard return `Unsupported`.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()>;

    /// A write with force-unit-access (REQ_FUA): `buf` is durable when this returns. The
    /// default writes and then flushes, which is what the block layer does for a device
    /// without native FUA.
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write(sector, buf)?;
        self.flush()
    }

    /// Make `[sector, sector + count)` read as zeros (REQ_OP_WRITE_ZEROES). With
    /// `Unmap::Allowed` the volume may deallocate the range instead of writing zeros
    /// (NBD_CMD_WRITE_ZEROES without NBD_CMD_FLAG_NO_HOLE); with `Unmap::Forbidden` the range
    /// stays allocated. The default writes zero buffers of at most `ZERO_CHUNK` bytes.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        let _ = unmap;
        check_range(self.size(), sector, count)?;
        write_zero_buffers(self, sector, count)
    }

    /// The bytes of `[sector, sector + count)` in memory, when the volume is a memory map
    /// of them (`MmapVolume`): a target that transforms what it reads (crypt) can then do it
    /// in one pass from the mapping into the caller's buffer instead of copying first. The
    /// default (and any range out of bounds) is `None`; callers then `read`.
    fn mapped(&self, sector: Sector, count: SectorCount) -> Option<&[u8]> {
        let _ = (sector, count);
        None
    }

    /// The integrity profile: per-block metadata this volume keeps beside the data for
    /// the layer above (the block layer's `blk_integrity`, which dm-integrity without an
    /// internal hash offers dm-crypt). `None` (the default) for volumes without one.
    fn tag_profile(&self) -> Option<TagProfile> {
        None
    }

    /// Read `buf` from `sector` on and the tags of its blocks into `tags`
    /// (`tuple_size` bytes per `interval` bytes of data, in order). Only volumes with a
    /// [`tag_profile`](Volume::tag_profile) implement it; the default is `Unsupported`.
    fn read_tagged(&self, sector: Sector, buf: &mut [u8], tags: &mut [u8]) -> Result<()> {
        let _ = (sector, buf, tags);
        Err(Error::Unsupported {
            target: "volume",
            op: "tagged reads (no integrity profile)",
        })
    }

    /// Write `buf` from `sector` on with the tags of its blocks, data and tags committed
    /// together as the volume's own writes are. The default is `Unsupported`.
    fn write_tagged(&self, sector: Sector, buf: &[u8], tags: &[u8]) -> Result<()> {
        let _ = (sector, buf, tags);
        Err(Error::Unsupported {
            target: "volume",
            op: "tagged writes (no integrity profile)",
        })
    }

    /// How `[sector, sector + count)` is allocated (NBD's `base:allocation` context):
    /// extents in order from `sector`, adjacent extents of equal state merged, covering at
    /// least one sector and at most the range. An implementation may stop early (after a
    /// bounded number of extents), so callers loop from where the answer ends. The default
    /// says the whole range is data.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size(), sector, count)?;
        Ok(vec![Extent {
            len: count,
            state: Allocation::Data,
        }])
    }
}

/// A volume's integrity profile (what `blk_get_integrity` gives dm-crypt): `tuple_size`
/// tag bytes for each `interval` bytes of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagProfile {
    /// Tag bytes per interval (`bi->tuple_size`).
    pub tuple_size: u32,
    /// Data bytes one tag covers (`1 << bi->interval_exp`): the block size.
    pub interval: u32,
}

impl TagProfile {
    /// Tag bytes for `data` bytes of data.
    #[must_use]
    pub fn tag_bytes(&self, data: usize) -> usize {
        data / self.interval.max(1) as usize * self.tuple_size as usize
    }
}

/// Whether `write_zeroes` may deallocate the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmap {
    /// The volume may punch a hole or unmap blocks, as long as the range reads as zeros.
    Allowed,
    /// The range must stay allocated (NBD_CMD_FLAG_NO_HOLE, REQ_NOUNMAP).
    Forbidden,
}

/// The allocation state of an extent (NBD `base:allocation` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Allocated; contents may be anything (flags 0).
    Data,
    /// Allocated and known to read as zeros (NBD_STATE_ZERO).
    Zero,
    /// Not allocated, reads as zeros (NBD_STATE_HOLE | NBD_STATE_ZERO).
    Hole,
}

/// A run of sectors in one allocation state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length of the run.
    pub len: SectorCount,
    /// Its state.
    pub state: Allocation,
}

/// Most extents one `allocation` answer holds before it stops early (callers loop).
pub const MAX_EXTENTS: usize = 1024;

/// Most blocks or chunks an `allocation` answer walks (thin blocks, snapshot chunks, stripe
/// chunks) before it stops early, so one call's work is bounded on a huge device.
pub const MAX_WALK: u64 = 1 << 16;

/// An `allocation` answer being built: appends merge with the last extent of the same
/// state; it is full at `MAX_EXTENTS` extents.
#[derive(Debug, Default)]
pub struct Extents {
    list: Vec<Extent>,
    covered: SectorCount,
}

impl Extents {
    /// An empty answer.
    #[must_use]
    pub fn new() -> Extents {
        Extents::default()
    }

    /// Whether another extent of a new state would exceed `MAX_EXTENTS`.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.list.len() >= MAX_EXTENTS
    }

    /// Sectors covered so far.
    #[must_use]
    pub fn covered(&self) -> SectorCount {
        self.covered
    }

    /// Append `len` sectors in `state`; returns false (and appends nothing) when that would
    /// start an extent past `MAX_EXTENTS`. Zero lengths are ignored.
    pub fn push(&mut self, len: SectorCount, state: Allocation) -> bool {
        if len.0 == 0 {
            return true;
        }
        let full = self.is_full();
        match self.list.last_mut() {
            Some(last) if last.state == state => last.len.0 += len.0,
            _ if full => return false,
            _ => self.list.push(Extent { len, state }),
        }
        self.covered.0 += len.0;
        true
    }

    /// Append `volume`'s answer for `[sector, sector + count)`. Returns false when this
    /// answer should stop here: it filled up, or the lower answer itself stopped early (so
    /// one call's work stays bounded through a stack of volumes; the caller asks again).
    /// A lower answer that covers nothing or reaches past what was asked is an error (it
    /// would otherwise loop forever or misplace extents).
    pub fn append_from(
        &mut self,
        volume: &(impl Volume + ?Sized),
        sector: Sector,
        count: SectorCount,
    ) -> Result<bool> {
        if count.0 == 0 {
            return Ok(true);
        }
        let answer = volume.allocation(sector, count)?;
        let got = answer.iter().try_fold(0u64, |n, e| n.checked_add(e.len.0));
        let got = match got {
            Some(n) if n > 0 && n <= count.0 => n,
            _ => {
                return Err(Error::invalid(
                    "allocation",
                    format!(
                        "answer for sectors [{}, +{count}) covers {got:?} sectors",
                        sector.0
                    ),
                ))
            }
        };
        for e in answer {
            if !self.push(e.len, e.state) {
                return Ok(false);
            }
        }
        Ok(got == count.0)
    }

    /// The extents.
    #[must_use]
    pub fn into_vec(self) -> Vec<Extent> {
        self.list
    }
}

/// Whether every byte of `b` is zero: an OR over 4 KiB pieces, which the compiler
/// vectorises (a byte-by-byte `all`, with its exit test per byte, ran at a fraction of
/// memory speed and capped NBD reads of holes), stopping at the first piece that is not.
#[must_use]
pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|piece| piece.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// Largest zero buffer the default `write_zeroes` writes at once (1 MiB).
pub const ZERO_CHUNK: usize = 1 << 20;

/// Write zeros over `[sector, sector + count)` in buffers of at most `ZERO_CHUNK` bytes.
pub fn write_zero_buffers<V: Volume + ?Sized>(
    volume: &V,
    sector: Sector,
    count: SectorCount,
) -> Result<()> {
    let chunk = SectorCount::floor_bytes(ZERO_CHUNK as u64);
    let zeros = vec![0u8; ZERO_CHUNK.min(count.usize_bytes().unwrap_or(ZERO_CHUNK))];
    for (at, len) in chunks(sector, count, chunk) {
        volume.write(at, &zeros[..len.usize_bytes()?])?;
    }
    Ok(())
}

/// A volume shared between targets and threads.
pub type SharedVolume = Arc<dyn Volume>;

/// Check a request of `len` bytes at `sector` against a volume of `size` sectors.
///
/// Called first in every `read`/`write` so the contract is enforced the same way everywhere.
pub fn check_io(size: SectorCount, sector: Sector, len: usize) -> Result<SectorCount> {
    let count = SectorCount::from_bytes(len)?;
    check_range(size, sector, count)?;
    Ok(count)
}

/// Check that `[sector, sector + count)` lies within a volume of `size` sectors.
pub fn check_range(size: SectorCount, sector: Sector, count: SectorCount) -> Result<()> {
    match sector.0.checked_add(count.0) {
        Some(end) if end <= size.0 => Ok(()),
        _ => Err(Error::OutOfRange {
            sector,
            count,
            size,
        }),
    }
}

/// Split `[sector, sector + count)` at every multiple of `chunk` sectors, yielding
/// `(sector, count)` pieces in order. `chunk` must not be zero.
pub fn chunks(
    sector: Sector,
    count: SectorCount,
    chunk: SectorCount,
) -> impl Iterator<Item = (Sector, SectorCount)> {
    debug_assert!(chunk.0 > 0);
    let end = sector.0 + count.0;
    let mut at = sector.0;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let boundary = (at / chunk.0 + 1).saturating_mul(chunk.0);
        let next = boundary.min(end);
        let piece = (Sector(at), SectorCount(next - at));
        at = next;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_sees_one_set_byte_anywhere() {
        assert!(is_zero(&[]));
        for len in [1, 4095, 4096, 4097, 3 * 4096 + 17] {
            assert!(is_zero(&vec![0u8; len]), "{len}");
            for at in [0, len / 2, len - 1] {
                let mut b = vec![0u8; len];
                b[at] = 0x80;
                assert!(!is_zero(&b), "{len} {at}");
            }
        }
    }

    #[test]
    fn chunks_split_at_boundaries() {
        let pieces: Vec<_> = chunks(Sector(6), SectorCount(12), SectorCount(8)).collect();
        assert_eq!(
            pieces,
            vec![
                (Sector(6), SectorCount(2)),
                (Sector(8), SectorCount(8)),
                (Sector(16), SectorCount(2))
            ]
        );
    }

    /// A volume whose `allocation` answers whatever it was given.
    #[derive(Debug)]
    struct Answers(Vec<Extent>);
    impl Volume for Answers {
        fn size(&self) -> SectorCount {
            SectorCount(100)
        }
        fn read(&self, _: Sector, _: &mut [u8]) -> Result<()> {
            Ok(())
        }
        fn write(&self, _: Sector, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn discard(&self, _: Sector, _: SectorCount) -> Result<()> {
            Ok(())
        }
        fn allocation(&self, _: Sector, _: SectorCount) -> Result<Vec<Extent>> {
            Ok(self.0.clone())
        }
    }

    fn ext(len: u64, state: Allocation) -> Extent {
        Extent {
            len: SectorCount(len),
            state,
        }
    }

    #[test]
    fn extents_merge_equal_neighbours_and_stop_at_the_cap() {
        let mut e = Extents::new();
        assert!(e.push(SectorCount(2), Allocation::Data));
        assert!(e.push(SectorCount(0), Allocation::Hole));
        assert!(e.push(SectorCount(3), Allocation::Data));
        assert_eq!(e.covered(), SectorCount(5));
        for i in 1..MAX_EXTENTS {
            let state = [Allocation::Data, Allocation::Hole][i % 2];
            assert!(e.push(SectorCount(1), state));
        }
        assert!(e.is_full());
        // The last extent still grows; a new one does not start.
        let last = e.list[MAX_EXTENTS - 1].state;
        assert!(e.push(SectorCount(1), last));
        assert!(!e.push(SectorCount(1), Allocation::Zero));
        let v = e.into_vec();
        assert_eq!(v.len(), MAX_EXTENTS);
        assert_eq!(v[0], ext(5, Allocation::Data));
    }

    #[test]
    fn append_from_asks_again_where_an_answer_stops_and_refuses_bad_answers() {
        let mut e = Extents::new();
        // A lower answer that stops early stops this one too, after what it said.
        let partial = Answers(vec![ext(2, Allocation::Hole)]);
        assert!(e.append_from(&partial, Sector(0), SectorCount(2)).unwrap());
        assert!(!e.append_from(&partial, Sector(2), SectorCount(20)).unwrap());
        assert_eq!(e.into_vec(), [ext(4, Allocation::Hole)]);
        for bad in [
            vec![],
            vec![ext(0, Allocation::Data)],
            vec![ext(21, Allocation::Data)],
        ] {
            let err = Extents::new()
                .append_from(&Answers(bad), Sector(3), SectorCount(20))
                .unwrap_err();
            assert!(
                err.to_string().contains("answer for sectors [3, +20)"),
                "{err}"
            );
        }
    }

    #[test]
    fn check_range_rejects_overflow() {
        assert!(check_range(SectorCount(10), Sector(u64::MAX), SectorCount(2)).is_err());
        assert!(check_range(SectorCount(10), Sector(8), SectorCount(2)).is_ok());
        assert!(check_range(SectorCount(10), Sector(9), SectorCount(2)).is_err());
    }
}
