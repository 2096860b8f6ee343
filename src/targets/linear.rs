//! `linear`: maps the target's sectors onto a contiguous range of one device
//! (kernel dm-linear.c, v1.4.0).
//!
//! Table args: `<dev> <offset>`.

use std::fmt;

use crate::error::Result;
use crate::table::args::{ArgResult, Args};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, Extent, SharedVolume, TagProfile, Unmap, Volume};

use super::{DeviceAt, DeviceRef, Target};

/// Parsed `linear` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearArgs {
    /// The device and where the mapping starts on it.
    pub dest: DeviceAt,
}

impl LinearArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "linear";

    /// Parse like `linear_ctr`.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<LinearArgs> {
        if args.len() != 2 {
            return Err(Args::error("Invalid argument count"));
        }
        let device = DeviceRef::parse(args, "Invalid argument count")?;
        let offset = SectorCount(args.llu("Invalid device sector")?);
        Ok(LinearArgs {
            dest: DeviceAt { device, offset },
        })
    }
}

impl fmt::Display for LinearArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dest)
    }
}

/// A constructed linear target.
#[derive(Debug)]
pub struct Linear {
    device: SharedVolume,
    offset: SectorCount,
    size: SectorCount,
}

impl Linear {
    /// Resolve the device and check that `[offset, offset + len)` lies on it.
    pub fn new(args: &LinearArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Linear> {
        let device = device_area(ctx, &args.dest, len)?;
        Ok(Linear {
            device,
            offset: args.dest.offset,
            size: len,
        })
    }

    /// A linear mapping over an already-open volume (library use, stacking in tests).
    pub fn over(device: SharedVolume, offset: SectorCount, len: SectorCount) -> Result<Linear> {
        check_range(device.size(), Sector(offset.0), len)?;
        Ok(Linear {
            device,
            offset,
            size: len,
        })
    }
}

impl Volume for Linear {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.device.read(sector + self.offset, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.device.write(sector + self.offset, buf)
    }
    fn flush(&self) -> Result<()> {
        self.device.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.device.discard(sector + self.offset, count)
    }
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.device.write_fua(sector + self.offset, buf)
    }
    /// linear_ctr sets `num_write_zeroes_bios = 1`: the request goes down remapped.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.device.write_zeroes(sector + self.offset, count, unmap)
    }
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        self.device.allocation(sector + self.offset, count)
    }
    /// DM_TARGET_PASSES_INTEGRITY: the device's integrity profile passes through.
    fn tag_profile(&self) -> Option<TagProfile> {
        self.device.tag_profile()
    }
    fn read_tagged(&self, sector: Sector, buf: &mut [u8], tags: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.device.read_tagged(sector + self.offset, buf, tags)
    }
    fn write_tagged(&self, sector: Sector, buf: &[u8], tags: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.device.write_tagged(sector + self.offset, buf, tags)
    }
}

impl Target for Linear {}
