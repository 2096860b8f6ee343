//! `zero`: reads return zeros, writes are accepted and dropped (kernel dm-zero.c, v1.2.0).
//!
//! Table args: none ("No arguments required").

use crate::error::Result;
use crate::table::args::{ArgResult, Args};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, Volume};

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
}

impl Target for Zero {}
