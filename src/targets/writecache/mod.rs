//! `writecache`: a write-back cache on an SSD or persistent memory (kernel dm-writecache.c,
//! v1.6.0). SSD mode runs as the kernel does (io.rs, meta.rs); `p` needs DAX and is refused.
//!
//! Table args: `p|s <origin> <cache> <block_size> <#opts> <opt>...`, options
//! `start_sector`, `high_watermark`, `low_watermark`, `writeback_jobs`,
//! `autocommit_blocks`, `autocommit_time`, `max_age`, `pause_writeback` with a value, and
//! `cleaner`, `fua`, `nofua`, `metadata_only`.
//!
//! As in 6.12: the mode and option names are case-insensitive; a missing argument is `Bad
//! arguments`; the block size is `%u`, a power of two from 512 to 4096; the option group
//! holds at most 18 words; any bad option or value is `Invalid optional argument` (the
//! watermarks 0–100, `autocommit_time` at most 3600000 ms, `max_age` at most 86400000,
//! `pause_writeback` at most 60000 and only with `s`, `fua`/`nofua` only with `p`, a
//! `start_sector` inside the cache device, checked at build); the high watermark may not be
//! below the low one, the defaults (50 and 45) standing in for one not given. The table
//! prints `%c %s %s %u ` then the option count and the options in `writecache_status`'s
//! order, each once with its last value.

use std::fmt;

use crate::error::{Error, Result};
use crate::table::args::{ArgResult, Args};
use crate::targets::context::BuildContext;
use crate::volume::SharedVolume;

use super::DeviceRef;

mod io;
mod meta;
pub use io::Writecache;

/// Parsed `writecache` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritecacheArgs {
    /// `p`: persistent memory; `s`: an SSD.
    pub pmem: bool,
    /// The origin device.
    pub origin: DeviceRef,
    /// The cache device.
    pub cache: DeviceRef,
    /// Bytes per cache block.
    pub block_size: u32,
    /// `start_sector`
    pub start_sector: Option<u64>,
    /// `high_watermark`
    pub high_watermark: Option<u32>,
    /// `low_watermark`
    pub low_watermark: Option<u32>,
    /// `writeback_jobs`
    pub writeback_jobs: Option<u32>,
    /// `autocommit_blocks`
    pub autocommit_blocks: Option<u32>,
    /// `autocommit_time` (ms)
    pub autocommit_time: Option<u32>,
    /// `max_age` (ms)
    pub max_age: Option<u32>,
    /// `cleaner`
    pub cleaner: bool,
    /// `fua` (`Some(true)`) or `nofua` (`Some(false)`), pmem only.
    pub writeback_fua: Option<bool>,
    /// `metadata_only`
    pub metadata_only: bool,
    /// `pause_writeback` (ms), SSD only.
    pub pause_writeback: Option<u32>,
}

impl WritecacheArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "writecache";

    /// Parse like `writecache_ctr` (lookups, logical block sizes and `start_sector`'s bound
    /// are checked at build).
    pub fn parse(args: &mut Args<'_>) -> ArgResult<WritecacheArgs> {
        const BAD: &str = "Bad arguments";
        let mode = args.next(BAD)?;
        let pmem = if mode.eq_ignore_ascii_case("s") {
            false
        } else if mode.eq_ignore_ascii_case("p") {
            true
        } else {
            return Err(args.error_last(BAD));
        };
        let origin = DeviceRef::parse(args, BAD)?;
        let cache = DeviceRef::parse(args, BAD)?;
        let at = args.position();
        let token = args.next(BAD)?;
        let block_size = crate::table::args::scan_u32(token)
            .filter(|b| (512..=4096).contains(b) && b.is_power_of_two())
            .ok_or_else(|| args.error_at(at, "Invalid block size"))?;
        let mut w = WritecacheArgs {
            pmem,
            origin,
            cache,
            block_size,
            start_sector: None,
            high_watermark: None,
            low_watermark: None,
            writeback_jobs: None,
            autocommit_blocks: None,
            autocommit_time: None,
            max_age: None,
            cleaner: false,
            writeback_fua: None,
            metadata_only: false,
            pause_writeback: None,
        };
        let mut opts = args.group(0..=18, "Invalid number of feature args")?;
        while opts.remaining() > 0 {
            let name = opts.next("")?.to_ascii_lowercase();
            let valued = opts.remaining() >= 1;
            let value = |opts: &mut Args<'_>, max: u32| -> ArgResult<u32> {
                let v = opts.scan_u32("Invalid optional argument")?;
                if v > max {
                    return Err(opts.error_last("Invalid optional argument"));
                }
                Ok(v)
            };
            match name.as_str() {
                "start_sector" if valued => {
                    w.start_sector = Some(opts.scan_llu("Invalid optional argument")?);
                }
                "high_watermark" if valued => w.high_watermark = Some(value(&mut opts, 100)?),
                "low_watermark" if valued => w.low_watermark = Some(value(&mut opts, 100)?),
                "writeback_jobs" if valued => w.writeback_jobs = Some(value(&mut opts, u32::MAX)?),
                "autocommit_blocks" if valued => {
                    w.autocommit_blocks = Some(value(&mut opts, u32::MAX)?)
                }
                "autocommit_time" if valued => {
                    w.autocommit_time = Some(value(&mut opts, 3_600_000)?)
                }
                "max_age" if valued => w.max_age = Some(value(&mut opts, 86_400_000)?),
                "cleaner" => w.cleaner = true,
                "fua" if pmem => w.writeback_fua = Some(true),
                "nofua" if pmem => w.writeback_fua = Some(false),
                "metadata_only" => w.metadata_only = true,
                "pause_writeback" if valued && !pmem => {
                    w.pause_writeback = Some(value(&mut opts, 60_000)?);
                }
                _ => return Err(opts.error_last("Invalid optional argument")),
            }
        }
        if w.high_watermark.unwrap_or(50) < w.low_watermark.unwrap_or(45) {
            return Err(Args::error(
                "High watermark must be greater than or equal to low watermark",
            ));
        }
        Ok(w)
    }

    /// `writecache_ctr`'s lookups and checks against the devices, in the kernel's order
    /// (EINVAL with its words; a missing device keeps ENOENT): the origin and cache.
    fn devices(&self, ctx: &dyn BuildContext) -> Result<(SharedVolume, SharedVolume)> {
        let mut vols = Vec::new();
        for (d, words) in [
            (&self.origin, "Origin data device lookup failed"),
            (&self.cache, "Cache data device lookup failed"),
        ] {
            match ctx.volume(d) {
                Ok(v) => vols.push(v),
                // A missing device (no such file, no such mapped device) keeps ENOENT.
                Err(e) if e.errno() == crate::error::errno::ENOENT => return Err(e),
                Err(e) => return Err(Error::invalid("writecache", format!("{words} ({e})"))),
            }
        }
        if self.pmem {
            // Files and memory volumes are never DAX devices.
            return Err(Error::Unsupported {
                target: "writecache",
                op: "p mode: Cache device is not a DAX device",
            });
        }
        if vols
            .iter()
            .any(|v| self.block_size < v.logical_block_size())
        {
            return Err(Error::invalid(
                "writecache",
                "Block size is smaller than device logical block size",
            ));
        }
        if self.start_sector.is_some_and(|s| s >= vols[1].size().0) {
            return Err(Error::invalid(
                "writecache",
                "Invalid optional argument (start_sector)",
            ));
        }
        let cache = vols.pop().expect("two devices");
        let origin = vols.pop().expect("two devices");
        Ok((origin, cache))
    }
}

impl fmt::Display for WritecacheArgs {
    /// `writecache_status` STATUSTYPE_TABLE.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let valued = [
            self.start_sector.is_some(),
            self.high_watermark.is_some(),
            self.low_watermark.is_some(),
            self.writeback_jobs.is_some(),
            self.autocommit_blocks.is_some(),
            self.autocommit_time.is_some(),
            self.max_age.is_some(),
            self.pause_writeback.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let flags = usize::from(self.cleaner)
            + usize::from(self.writeback_fua.is_some())
            + usize::from(self.metadata_only);
        write!(
            f,
            "{} {} {} {} {}",
            if self.pmem { 'p' } else { 's' },
            self.origin,
            self.cache,
            self.block_size,
            2 * valued + flags
        )?;
        let opt = |f: &mut fmt::Formatter<'_>, name: &str, v: Option<u32>| match v {
            Some(v) => write!(f, " {name} {v}"),
            None => Ok(()),
        };
        if let Some(s) = self.start_sector {
            write!(f, " start_sector {s}")?;
        }
        opt(f, "high_watermark", self.high_watermark)?;
        opt(f, "low_watermark", self.low_watermark)?;
        opt(f, "writeback_jobs", self.writeback_jobs)?;
        opt(f, "autocommit_blocks", self.autocommit_blocks)?;
        opt(f, "autocommit_time", self.autocommit_time)?;
        opt(f, "max_age", self.max_age)?;
        if self.cleaner {
            f.write_str(" cleaner")?;
        }
        match self.writeback_fua {
            Some(true) => f.write_str(" fua")?,
            Some(false) => f.write_str(" nofua")?,
            None => {}
        }
        if self.metadata_only {
            f.write_str(" metadata_only")?;
        }
        opt(f, "pause_writeback", self.pause_writeback)
    }
}
