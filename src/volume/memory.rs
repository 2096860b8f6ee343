//! `MemVolume`: a volume held in memory, for tests, benches and stacking demos.

use std::sync::RwLock;

use super::{check_io, check_range, Volume};
use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};

/// A zero-filled in-memory volume. Discard zeroes the range.
#[derive(Debug)]
pub struct MemVolume {
    data: RwLock<Vec<u8>>,
    size: SectorCount,
}

impl MemVolume {
    /// A zeroed volume of `size` sectors.
    pub fn new(size: SectorCount) -> Result<MemVolume> {
        let len = size.usize_bytes()?;
        Ok(MemVolume {
            data: RwLock::new(vec![0; len]),
            size,
        })
    }

    /// A volume holding `bytes`, which must be a whole number of sectors.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<MemVolume> {
        let size = SectorCount::from_bytes(bytes.len())?;
        Ok(MemVolume {
            data: RwLock::new(bytes),
            size,
        })
    }

    /// A copy of the whole contents.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn byte_range(sector: Sector, len: usize) -> Result<std::ops::Range<usize>> {
    let start = usize::try_from(sector.byte_offset())
        .map_err(|_| Error::invalid("sector", "beyond addressable memory"))?;
    Ok(start..start + len)
}

impl Volume for MemVolume {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let range = byte_range(sector, buf.len())?;
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        buf.copy_from_slice(&data[range]);
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let range = byte_range(sector, buf.len())?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        let range = byte_range(sector, count.usize_bytes()?)?;
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        data[range].fill(0);
        Ok(())
    }
}
