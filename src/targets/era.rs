//! `era`: which blocks of an origin were written in which era (kernel dm-era-target.c,
//! v1.0.0). Typed here; its metadata and I/O are not executed.
//!
//! Table args: `<metadata_dev> <origin_dev> <block_size>`. As in 6.12: exactly three
//! arguments (`Invalid argument count`); the block size is `%u` (wrapping) and a non-zero
//! multiple of 8 sectors (`Error parsing block size`, `Invalid block size`); the devices are
//! looked up first, each failure being EINVAL with the kernel's words (`Error opening
//! metadata device`, `Error opening data device`); the table prints `%s %s %u`.

use std::fmt;

use crate::error::Error;
use crate::table::args::{ArgResult, Args};
use crate::targets::context::BuildContext;

use super::DeviceRef;

/// Parsed `era` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EraArgs {
    /// The metadata device.
    pub metadata: DeviceRef,
    /// The origin device.
    pub origin: DeviceRef,
    /// Sectors per block.
    pub block_size: u32,
}

impl EraArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "era";

    /// Parse like `era_ctr` (the device lookups happen at build).
    pub fn parse(args: &mut Args<'_>) -> ArgResult<EraArgs> {
        if args.len() != 3 {
            return Err(Args::error("Invalid argument count"));
        }
        let metadata = DeviceRef::parse(args, "Error opening metadata device")?;
        let origin = DeviceRef::parse(args, "Error opening data device")?;
        let block_size = args.scan_u32("Error parsing block size")?;
        if block_size == 0 || block_size % 8 != 0 {
            return Err(args.error_last("Invalid block size"));
        }
        Ok(EraArgs {
            metadata,
            origin,
            block_size,
        })
    }

    /// Why the line cannot be built: `era_ctr`'s lookups fail first (EINVAL with the
    /// kernel's words), else the refusal (era is parsed and printed, not executed).
    pub fn build_error(&self, ctx: &dyn BuildContext) -> Error {
        for (d, words) in [
            (&self.metadata, "Error opening metadata device"),
            (&self.origin, "Error opening data device"),
        ] {
            if let Err(e) = ctx.volume(d) {
                return Error::invalid("era", format!("{words} ({e})"));
            }
        }
        Error::Unsupported {
            target: "era",
            op: "I/O (era is parsed and printed, not executed)",
        }
    }
}

impl fmt::Display for EraArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metadata, self.origin, self.block_size)
    }
}
