//! `zoned`: a regular block device over host-managed zoned devices (kernel dm-zoned-target.c,
//! v2.0.0). Typed here; it needs zoned block devices, which files are not, so it is never
//! built.
//!
//! Table args: `<dev> [<dev>...]`: one zoned device, or a regular device followed by zoned
//! ones. As in 6.12's `dmz_ctr`: at least one argument (`Invalid argument count`); each
//! device is looked up in turn (`Get target device failed`, the lookup's errno) and checked
//! by `dmz_get_zoned_device` before the next: a lone regular device is `Invalid regular
//! device`, a regular device after the first is `First device must be a regular device`
//! (EINVAL). Every device dmemu opens is regular, so every line fails one of them. The table
//! prints the devices separated by spaces (`dmz_status` STATUSTYPE_TABLE).

use std::fmt;

use crate::error::Error;
use crate::table::args::{ArgResult, Args};
use crate::targets::context::BuildContext;

use super::DeviceRef;

/// Parsed `zoned` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZonedArgs {
    /// The devices: one zoned device, or a regular device followed by zoned ones.
    pub devices: Vec<DeviceRef>,
}

impl ZonedArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "zoned";

    /// Parse like `dmz_ctr` (the device checks happen at build).
    pub fn parse(args: &mut Args<'_>) -> ArgResult<ZonedArgs> {
        if args.is_empty() {
            return Err(Args::error("Invalid argument count"));
        }
        let mut devices = Vec::with_capacity(args.len());
        while args.remaining() > 0 {
            devices.push(DeviceRef::parse(args, "Get target device failed")?);
        }
        Ok(ZonedArgs { devices })
    }

    /// Why the line cannot be built: `dmz_get_zoned_device` on each device in turn (its
    /// lookup's errno with the kernel's words, then EINVAL: no device dmemu opens is
    /// zoned).
    pub fn build_error(&self, ctx: &dyn BuildContext) -> Error {
        let words = |w: &str| Error::invalid("zoned", w.to_string());
        for (i, d) in self.devices.iter().enumerate() {
            if let Err(e) = ctx.volume(d) {
                return Error::Io {
                    device: format!("zoned: Get target device failed ({e})"),
                    source: std::io::Error::from_raw_os_error(e.errno()),
                };
            }
            if self.devices.len() == 1 {
                return words(
                    "Invalid regular device (a zoned block device is needed; files are not zoned)",
                );
            }
            if i != 0 {
                return words("First device must be a regular device (the others must be zoned block devices; files are not zoned)");
            }
        }
        // Not reached: parse keeps at least one device, and the loop returns at the first
        // (alone) or the second. `dmz_fixup_devices` would say this.
        words("Disk is not a zoned device")
    }
}

impl fmt::Display for ZonedArgs {
    /// `dmz_status` STATUSTYPE_TABLE: the devices, space-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.devices.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
