//! `error`: every request fails with EIO, discards too (kernel dm-target.c). A flush
//! succeeds: `io_err_ctr` sets no `num_flush_bios`, so dm core sends the target no flush
//! (`__send_empty_flush` skips it) and the empty flush completes (kernel fixture
//! tests/fixtures/remap/kernel-6.12-flush.txt: `fsync` of an error device returns 0).
//!
//! Table args: any. Exactly two are parsed like linear (`<dev> <offset>`, used by the kernel
//! only for limits); any other count is ignored. Nothing is printed back.

use crate::error::{Error, Result};
use crate::table::args::{ArgResult, Args};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, Extent, Unmap, Volume};

use super::Target;

/// Validate the arguments the way `io_err_ctr` does.
pub fn parse(args: &mut Args<'_>) -> ArgResult<()> {
    if args.len() == 2 {
        args.next("Invalid argument count")?;
        args.llu("Invalid device sector")?;
    }
    Ok(())
}

/// The error target.
#[derive(Debug)]
pub struct ErrorTarget {
    size: SectorCount,
}

impl ErrorTarget {
    /// An error target of `len` sectors.
    #[must_use]
    pub fn new(len: SectorCount) -> ErrorTarget {
        ErrorTarget { size: len }
    }
}

fn fail() -> Error {
    Error::TargetFailed {
        target: "error",
        reason: "every request fails".into(),
    }
}

impl Volume for ErrorTarget {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        Err(fail())
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        Err(fail())
    }
    /// Nothing to flush (and a table never calls it: no `num_flush_bios`).
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        Err(fail())
    }
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write(sector, buf)
    }
    fn write_zeroes(&self, sector: Sector, count: SectorCount, _unmap: Unmap) -> Result<()> {
        self.discard(sector, count)
    }
    /// Not an I/O in the kernel, but every read fails, so no answer is given either.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        Err(fail())
    }
}

impl Target for ErrorTarget {
    fn takes_flushes(&self) -> bool {
        false
    }
}
