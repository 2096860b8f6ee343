//! Sector units: `Sector` (a position) and `SectorCount` (a length), both in 512-byte sectors.
//!
//! This is the only module that converts between sectors and bytes (shift by 9).

use std::fmt;
use std::ops::{Add, AddAssign, Mul, Sub};

use crate::error::{Error, Result};

/// Bytes in one sector, the unit of every device-mapper table.
pub const SECTOR_SIZE: usize = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;

/// A position on a volume, in 512-byte sectors from its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sector(pub u64);

/// A length in 512-byte sectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SectorCount(pub u64);

impl Sector {
    /// The byte offset of this sector. Callers stay within validated volume sizes, whose
    /// byte length fits in `u64` (checked by `Table::validate` and the volume constructors).
    #[must_use]
    pub fn byte_offset(self) -> u64 {
        self.0 << SECTOR_SHIFT
    }

    /// Distance from the start of the volume.
    #[must_use]
    pub fn as_count(self) -> SectorCount {
        SectorCount(self.0)
    }
}

impl SectorCount {
    /// The length in bytes.
    #[must_use]
    pub fn bytes(self) -> u64 {
        self.0 << SECTOR_SHIFT
    }

    /// The length of a buffer in sectors; `Misaligned` if it is not a whole number of sectors.
    pub fn from_bytes(len: usize) -> Result<SectorCount> {
        if len % SECTOR_SIZE != 0 {
            return Err(Error::Misaligned { len });
        }
        Ok(SectorCount((len / SECTOR_SIZE) as u64))
    }

    /// Whole sectors in `bytes`, rounding down (for sizing volumes from file lengths).
    #[must_use]
    pub fn floor_bytes(bytes: u64) -> SectorCount {
        SectorCount(bytes >> SECTOR_SHIFT)
    }

    /// The length in bytes as a `usize`, for slicing buffers already in memory.
    pub fn usize_bytes(self) -> Result<usize> {
        usize::try_from(self.bytes()).map_err(|_| Error::InvalidArgument {
            what: "length",
            reason: format!("{} sectors do not fit in memory", self.0),
        })
    }
}

impl Add<SectorCount> for Sector {
    type Output = Sector;
    fn add(self, rhs: SectorCount) -> Sector {
        Sector(self.0 + rhs.0)
    }
}

impl AddAssign<SectorCount> for Sector {
    fn add_assign(&mut self, rhs: SectorCount) {
        self.0 += rhs.0;
    }
}

impl Sub<Sector> for Sector {
    type Output = SectorCount;
    fn sub(self, rhs: Sector) -> SectorCount {
        SectorCount(self.0 - rhs.0)
    }
}

impl Add for SectorCount {
    type Output = SectorCount;
    fn add(self, rhs: SectorCount) -> SectorCount {
        SectorCount(self.0 + rhs.0)
    }
}

impl AddAssign for SectorCount {
    fn add_assign(&mut self, rhs: SectorCount) {
        self.0 += rhs.0;
    }
}

impl Sub for SectorCount {
    type Output = SectorCount;
    fn sub(self, rhs: SectorCount) -> SectorCount {
        SectorCount(self.0 - rhs.0)
    }
}

impl Mul<u64> for SectorCount {
    type Output = SectorCount;
    fn mul(self, rhs: u64) -> SectorCount {
        SectorCount(self.0 * rhs)
    }
}

impl fmt::Display for Sector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for SectorCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_bytes_rejects_partial_sector() {
        assert!(matches!(
            SectorCount::from_bytes(513),
            Err(Error::Misaligned { len: 513 })
        ));
        assert_eq!(SectorCount::from_bytes(1024).unwrap(), SectorCount(2));
    }

    #[test]
    fn sector_arithmetic() {
        assert_eq!(Sector(10) + SectorCount(5), Sector(15));
        assert_eq!(Sector(15) - Sector(10), SectorCount(5));
        assert_eq!(SectorCount(3).bytes(), 1536);
    }
}
