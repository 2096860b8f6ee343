//! `zero`: reads return zeros, writes are accepted and dropped (kernel dm-zero.c, v1.2.0).
//!
//! Table args: none ("No arguments required").

use crate::error::Result;
use crate::table::args::{ArgResult, Args};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, Allocation, Extent, Unmap, Volume};

use super::Target;

/// Check that no arguments were given.
pub fn parse(args: &Args<'_>) -> ArgResult<()> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(args.error_at(0, "No arguments required"))
    }
}

/// The zero target.
#[derive(Debug)]
pub struct Zero {
    size: SectorCount,
}

impl Zero {
    /// A zero target of `len` sectors.
    #[must_use]
    pub fn new(len: SectorCount) -> Zero {
        Zero { size: len }
    }
}

impl Volume for Zero {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        buf.fill(0);
        Ok(())
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    /// Discards are accepted and do nothing (reads stay zero).
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)
    }
    /// 6.12 dm-zero takes no REQ_OP_WRITE_ZEROES, so the block layer sends zero writes,
    /// which it drops: a no-op that succeeds. (`write_fua` is the default: a dropped write.)
    fn write_zeroes(&self, sector: Sector, count: SectorCount, _unmap: Unmap) -> Result<()> {
        check_range(self.size, sector, count)
    }
    /// Nothing is allocated and everything reads zeros.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        Ok(vec![Extent {
            len: count,
            state: Allocation::Hole,
        }])
    }
}

/// zero_ctr sets no `num_flush_bios`: a table's flush skips the line.
impl Target for Zero {
    fn takes_flushes(&self) -> bool {
        false
    }
}
