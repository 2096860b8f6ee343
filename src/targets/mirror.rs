//! `mirror`: the legacy device-mapper RAID 1 (kernel dm-raid1.c, v1.14.0, with the `core`
//! and `disk` dirty logs of dm-log.c).
//!
//! Table args: `<log_type> <#log_args> <log_args>... <#mirrors> (<dev> <offset>){#mirrors}
//! [<#features> <feature>...]`, the log being `core <region_size> [sync|nosync]` or
//! `disk <log_dev> <region_size> [sync|nosync]`; features are `handle_errors` and
//! `keep_log` (which needs `handle_errors`).
//!
//! As in 6.12: the dirty log is made first, and its refusals are DMWARNs (`invalid region
//! size 3`) under the target's `Error creating mirror dirty log`; the region size is a power
//! of two from 2 to the target length; 2 to 9 mirrors (`DM_KCOPYD_MAX_REGIONS + 1`); each
//! mirror's offset is read before its device; a repeated feature counts once; the table
//! prints the log as `core|disk <#args> [<dev>] <region_size> [sync |nosync ]`, the
//! mirrors, then the feature count and `handle_errors`, `keep_log` only when there are any.
//! The `userspace` (cluster) log needs its daemon and is refused here.
//!
//! I/O as an in-sync mirror: reads from the first leg (the default mirror), writes, FUA
//! writes, flushes and discards to every leg; write-zeroes falls back to zero buffers (no
//! `num_write_zeroes_bios`). No resynchronisation runs: the status reports every region in
//! sync, and the legs other than the first keep what they held where nothing was written
//! since (the kernel's recovery would copy the first leg over them). A disk log's device is
//! checked for size but not written.

use std::fmt;

use crate::error::{Error, Result};
use crate::table::args::{ArgError, ArgResult, Args};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, Extent, SharedVolume, Volume};

use super::{DeviceAt, DeviceRef, Target};

/// A token as the kernel's message shows it: as written when short and printable, else
/// quoted and cut (the table error names the token in full already).
fn shown(t: &str) -> String {
    if t.len() <= crate::error::MAX_QUOTED_BYTES && !t.contains(char::is_control) {
        t.to_string()
    } else {
        crate::error::quote(t)
    }
}

/// `MAX_NR_MIRRORS`: `DM_KCOPYD_MAX_REGIONS + 1`.
pub const MAX_MIRRORS: u32 = 9;

/// The dirty log's sync argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogSync {
    /// None given: regions start out of sync unless the log says otherwise.
    #[default]
    Default,
    /// `sync`: resynchronise every region.
    Sync,
    /// `nosync`: take every region as in sync.
    NoSync,
}

/// The mirror's dirty region log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyLog {
    /// `disk` with its device, or `core` (`None`).
    pub device: Option<DeviceRef>,
    /// Sectors per region.
    pub region_size: u32,
    /// The sync argument.
    pub sync: LogSync,
}

impl DirtyLog {
    /// The log type's name.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        if self.device.is_some() {
            "disk"
        } else {
            "core"
        }
    }

    /// `create_dirty_log` + the type's ctr (`core_ctr`, `disk_ctr`, `create_log_context`).
    fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<DirtyLog> {
        const FAIL: &str = "Error creating mirror dirty log";
        if args.remaining() < 2 {
            return Err(Args::error("Insufficient mirror log arguments"));
        }
        let at = args.position();
        let type_name = args.next("Insufficient mirror log arguments")?;
        let count = args.scan_u32("Invalid mirror log argument count")?;
        if count as usize > args.remaining() {
            return Err(Args::error("Insufficient mirror log arguments"));
        }
        let mut log = args.take(count as usize);
        let fail = |index: usize, words: String| ArgError {
            index: Some(index),
            reason: format!("{FAIL} ({words})"),
        };
        let device = match type_name {
            "core" => {
                if !(1..=2).contains(&count) {
                    return Err(fail(
                        at + 1,
                        "wrong number of arguments to dirty region log".into(),
                    ));
                }
                None
            }
            "disk" => {
                if !(2..=3).contains(&count) {
                    return Err(fail(
                        at + 1,
                        "wrong number of arguments to disk dirty region log".into(),
                    ));
                }
                Some(DeviceRef::parse(&mut log, FAIL)?)
            }
            "userspace" => {
                return Err(fail(
                    at,
                    "the userspace (cluster) log needs its daemon, which dmemu has not".into(),
                ))
            }
            other => {
                return Err(fail(
                    at,
                    format!("Module for logging type \"{}\" not found.", shown(other)),
                ))
            }
        };
        let size_at = log.position();
        let size_token = log.next(FAIL)?;
        let sync = match log.next("") {
            Err(_) => LogSync::Default,
            Ok("sync") => LogSync::Sync,
            Ok("nosync") => LogSync::NoSync,
            Ok(other) => {
                return Err(fail(
                    size_at + 1,
                    format!(
                        "unrecognised sync argument to dirty region log: {}",
                        shown(other)
                    ),
                ))
            }
        };
        let region_size = crate::table::args::scan_u32(size_token)
            .filter(|&r| r >= 2 && u64::from(r) <= len.0 && r.is_power_of_two())
            .ok_or_else(|| {
                fail(
                    size_at,
                    format!("invalid region size {}", shown(size_token)),
                )
            })?;
        if len.0.div_ceil(u64::from(region_size)) > u64::from(u32::MAX) {
            return Err(fail(
                size_at,
                format!("region count exceeds limit of {}", u32::MAX),
            ));
        }
        Ok(DirtyLog {
            device,
            region_size,
            sync,
        })
    }
}

impl fmt::Display for DirtyLog {
    /// `core_status` / `disk_status` STATUSTYPE_TABLE, with its trailing space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra = u32::from(self.sync != LogSync::Default);
        match &self.device {
            Some(d) => write!(f, "disk {} {d} {} ", 2 + extra, self.region_size)?,
            None => write!(f, "core {} {} ", 1 + extra, self.region_size)?,
        }
        match self.sync {
            LogSync::Default => Ok(()),
            LogSync::Sync => f.write_str("sync "),
            LogSync::NoSync => f.write_str("nosync "),
        }
    }
}

/// Parsed `mirror` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorArgs {
    /// The dirty region log.
    pub log: DirtyLog,
    /// The mirror legs, each a device and where the mirrored data starts on it.
    pub legs: Vec<DeviceAt>,
    /// `handle_errors`: a failing leg is taken out and an event raised.
    pub handle_errors: bool,
    /// `keep_log`: keep a failed log device (needs `handle_errors`).
    pub keep_log: bool,
}

impl MirrorArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "mirror";

    /// Parse like `mirror_ctr` (the device lookups happen at build).
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<MirrorArgs> {
        let log = DirtyLog::parse(args, len)?;
        let nr = args
            .scan_u32("Invalid number of mirrors")
            .ok()
            .filter(|n| (2..=MAX_MIRRORS).contains(n))
            .ok_or_else(|| args.error_last("Invalid number of mirrors"))?;
        if args.remaining() < 2 * nr as usize {
            return Err(Args::error("Too few mirror arguments"));
        }
        let mut legs = Vec::with_capacity(nr as usize);
        for _ in 0..nr {
            let at = args.position();
            let token = args.next("Too few mirror arguments")?;
            let offset = SectorCount(args.scan_llu("Invalid offset")?);
            let device = DeviceRef::from_token(token).map_err(|e| args.error_at(at, e))?;
            legs.push(DeviceAt { device, offset });
        }
        let (mut handle_errors, mut keep_log) = (false, false);
        if args.remaining() > 0 {
            let n = args.scan_u32("Invalid number of features")?;
            if n as usize > args.remaining() {
                return Err(args.error_last("Not enough arguments to support feature count"));
            }
            for _ in 0..n {
                match args.next("Not enough arguments to support feature count")? {
                    "handle_errors" => handle_errors = true,
                    "keep_log" => keep_log = true,
                    _ => return Err(args.error_last("Unrecognised feature requested")),
                }
            }
            if keep_log && !handle_errors {
                return Err(Args::error(
                    "keep_log feature requires the handle_errors feature",
                ));
            }
        }
        args.finish("Too many mirror arguments")?;
        Ok(MirrorArgs {
            log,
            legs,
            handle_errors,
            keep_log,
        })
    }

    /// The devices in argument order: the log device (if any), then the legs.
    #[must_use]
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self.log.device.iter().map(|d| d.0.clone()).collect();
        v.extend(self.legs.iter().map(|l| l.device.0.clone()));
        v
    }
}

impl fmt::Display for MirrorArgs {
    /// `mirror_status` STATUSTYPE_TABLE.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.log, self.legs.len())?;
        for l in &self.legs {
            write!(f, " {l}")?;
        }
        let n = u32::from(self.handle_errors) + u32::from(self.keep_log);
        if n > 0 {
            write!(f, " {n}")?;
            if self.handle_errors {
                f.write_str(" handle_errors")?;
            }
            if self.keep_log {
                f.write_str(" keep_log")?;
            }
        }
        Ok(())
    }
}

/// Mirror legs kept in sync by writing every one (mirror, and raid1 without metadata): reads
/// come from the first leg, the default mirror dm-raid1's `choose_mirror` and an in-sync md
/// raid1 read from; writes, FUA writes, flushes and discards go to every leg.
#[derive(Debug)]
pub struct Legs {
    legs: Vec<(SharedVolume, u64)>,
    size: SectorCount,
}

impl Legs {
    /// Legs over already-open volumes, each with the sector where the mirrored data starts;
    /// each must hold `[offset, offset + len)`.
    pub fn over(legs: Vec<(SharedVolume, u64)>, len: SectorCount) -> Result<Legs> {
        if legs.is_empty() {
            return Err(Error::invalid("mirror", "no legs"));
        }
        for (v, offset) in &legs {
            check_range(v.size(), Sector(*offset), len)?;
        }
        Ok(Legs { legs, size: len })
    }

    /// Resolve each leg and check its area, as dm core does for what `iterate_devices`
    /// reports (`[offset, offset + len)`).
    pub fn open(legs: &[DeviceAt], len: SectorCount, ctx: &dyn BuildContext) -> Result<Legs> {
        let legs = legs
            .iter()
            .map(|l| Ok((device_area(ctx, l, len)?, l.offset.0)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Legs { legs, size: len })
    }

    fn each(&self, mut op: impl FnMut(&dyn Volume, u64) -> Result<()>) -> Result<()> {
        for (v, offset) in &self.legs {
            op(&**v, *offset)?;
        }
        Ok(())
    }
}

impl Volume for Legs {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let (v, offset) = &self.legs[0];
        v.read(Sector(sector.0 + offset), buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.each(|v, offset| v.write(Sector(sector.0 + offset), buf))
    }
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.each(|v, offset| v.write_fua(Sector(sector.0 + offset), buf))
    }
    fn flush(&self) -> Result<()> {
        self.each(|v, _| v.flush())
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.each(|v, offset| v.discard(Sector(sector.0 + offset), count))
    }
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        let (v, offset) = &self.legs[0];
        v.allocation(Sector(sector.0 + offset), count)
    }
}

/// A constructed mirror: its legs, taken as in sync (no resynchronisation runs).
#[derive(Debug)]
pub struct Mirror {
    args: MirrorArgs,
    legs: Legs,
    nr_regions: u64,
}

/// `LOG_OFFSET`: the disk log's bitset starts 2 sectors in, after its header.
const LOG_OFFSET_BYTES: u64 = 2 * 512;

impl Mirror {
    /// `mirror_ctr`'s device work: the log device must hold the header and the clean bitset
    /// (`create_log_context`), each leg `[offset, offset + len)`.
    pub fn new(args: &MirrorArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Mirror> {
        let nr_regions = len.0.div_ceil(u64::from(args.log.region_size));
        if let Some(dev) = &args.log.device {
            let v = ctx.volume(dev).map_err(|e| {
                Error::invalid("mirror", format!("Error creating mirror dirty log ({e})"))
            })?;
            let need = LOG_OFFSET_BYTES + nr_regions.div_ceil(64) * 8;
            let lbs = u64::from(v.logical_block_size().max(512));
            let need = need.div_ceil(lbs) * lbs;
            if need > v.size().bytes() {
                return Err(Error::invalid(
                    "mirror",
                    format!(
                        "Error creating mirror dirty log (log device {dev} too small: need {need} bytes)"
                    ),
                ));
            }
        }
        let legs = Legs::open(&args.legs, len, ctx)?;
        Ok(Mirror {
            args: args.clone(),
            legs,
            nr_regions,
        })
    }
}

/// `impl Volume` for a target whose I/O is its `legs` field.
macro_rules! volume_through_legs {
    ($t:ty) => {
        impl $crate::volume::Volume for $t {
            fn size(&self) -> $crate::units::SectorCount {
                self.legs.size()
            }
            fn read(
                &self,
                sector: $crate::units::Sector,
                buf: &mut [u8],
            ) -> $crate::error::Result<()> {
                self.legs.read(sector, buf)
            }
            fn write(
                &self,
                sector: $crate::units::Sector,
                buf: &[u8],
            ) -> $crate::error::Result<()> {
                self.legs.write(sector, buf)
            }
            fn write_fua(
                &self,
                sector: $crate::units::Sector,
                buf: &[u8],
            ) -> $crate::error::Result<()> {
                self.legs.write_fua(sector, buf)
            }
            fn flush(&self) -> $crate::error::Result<()> {
                self.legs.flush()
            }
            fn discard(
                &self,
                sector: $crate::units::Sector,
                count: $crate::units::SectorCount,
            ) -> $crate::error::Result<()> {
                self.legs.discard(sector, count)
            }
            fn allocation(
                &self,
                sector: $crate::units::Sector,
                count: $crate::units::SectorCount,
            ) -> $crate::error::Result<Vec<$crate::volume::Extent>> {
                self.legs.allocation(sector, count)
            }
        }
    };
}
pub(crate) use volume_through_legs;

volume_through_legs!(Mirror);

impl Target for Mirror {
    /// `mirror_status` STATUSTYPE_INFO for a set whose regions are all in sync and whose
    /// legs and log have not failed: `<#legs> <leg>... <in sync>/<regions> 1 A... ` then the
    /// log's `1 core` or `3 disk <dev> A`.
    fn status(&self) -> String {
        let mut s = format!("{} ", self.args.legs.len());
        for l in &self.args.legs {
            s.push_str(&format!("{} ", l.device));
        }
        s.push_str(&format!(
            "{0}/{0} 1 {1} ",
            self.nr_regions,
            "A".repeat(self.args.legs.len())
        ));
        match &self.args.log.device {
            Some(d) => s.push_str(&format!("3 disk {d} A")),
            None => s.push_str("1 core"),
        }
        s
    }
}
