//! `MemVolume`: a volume held in memory, for tests, benches and stacking demos.

use std::sync::RwLock;

use super::{check_io, check_range, Unmap, Volume};
use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};

/// A zero-filled in-memory volume. Discard zeroes the range.
///
/// The contents start on a 4096-byte boundary: glibc places large allocations at page
/// offset 16, and copies between buffers whose addresses differ by 16 (mod 4096) run several
/// times slower on this class of CPU (DESIGN.md), which would make every target measured over
/// a `MemVolume` look slow.
#[derive(Debug)]
pub struct MemVolume {
    data: RwLock<Vec<u8>>,
    /// Where the contents start in `data` (page-aligned address).
    start: usize,
    size: SectorCount,
}

const ALIGN: usize = 4096;

impl MemVolume {
    /// A zeroed volume of `size` sectors.
    pub fn new(size: SectorCount) -> Result<MemVolume> {
        let len = size.usize_bytes()?;
        let data = vec![0u8; len + ALIGN];
        let start = data.as_ptr().align_offset(ALIGN).min(ALIGN);
        Ok(MemVolume {
            data: RwLock::new(data),
            start,
            size,
        })
    }

    /// A volume holding `bytes`, which must be a whole number of sectors.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<MemVolume> {
        let v = MemVolume::new(SectorCount::from_bytes(bytes.len())?)?;
        {
            let mut data = v.data.write().unwrap_or_else(|e| e.into_inner());
            data[v.start..v.start + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(v)
    }

    /// A copy of the whole contents.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let len = usize::try_from(self.size.bytes()).unwrap_or(0);
        data[self.start..self.start + len].to_vec()
    }

    fn byte_range(&self, sector: Sector, len: usize) -> Result<std::ops::Range<usize>> {
        let start = usize::try_from(sector.byte_offset())
            .map_err(|_| Error::invalid("sector", "beyond addressable memory"))?;
        Ok(self.start + start..self.start + start + len)
    }
}

impl Volume for MemVolume {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let range = self.byte_range(sector, buf.len())?;
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        buf.copy_from_slice(&data[range]);
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let range = self.byte_range(sector, buf.len())?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        let range = self.byte_range(sector, count.usize_bytes()?)?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data[range].fill(0);
        Ok(())
    }

    /// Zeroes in place (memory has nothing to unmap); `allocation` is the default: data.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, _unmap: Unmap) -> Result<()> {
        self.discard(sector, count)
    }
}
