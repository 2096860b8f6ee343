//! `clone`: a destination device hydrated region by region from a read-only source (kernel
//! dm-clone-target.c, v1.0.0, with dm-clone-metadata.c). Typed here; its hydration and I/O
//! are not executed.
//!
//! Table args: `<metadata dev> <destination dev> <source dev> <region size>
//! [<#feature args> [<feature arg>]* [<#core args> [<core arg>]*]]`. As in 6.12's
//! `clone_ctr`: at least four arguments; the region size is `dm_read_arg` (`%u`, wrapping)
//! from 8 to 2^21 sectors and a power of two; at most 2^31 regions; the feature group holds
//! at most 2 of `no_hydration` / `no_discard_passdown` (case-insensitive, repeats allowed);
//! the core group at most 4 words, an even count of `hydration_threshold` /
//! `hydration_batch_size` (case-insensitive) pairs with `kstrtouint` values; tokens after
//! the core group are ignored. The table prints the three devices and then every argument
//! after them exactly as it was given (`clone_status` prints the saved `ctr_args`), so
//! `0016` stays `0016` and ignored tokens print back.
//!
//! Build checks, in the kernel's order: the metadata, destination and source lookups, the
//! destination and source sizes against the target, the region size against both devices'
//! logical block sizes, then the metadata superblock as `dm_clone_metadata_open` reads it:
//! an all-zero superblock would be formatted, a superblock is checked as `sb_check` (block
//! number, magic, checksum, version, with the kernel's errno) and against the region size
//! and target size; then the line is refused (clone is parsed and printed, not executed).

use std::fmt;

use crate::error::{errno, Error};
use crate::table::args::{ArgResult, Args};
use crate::table::lexer::escape;
use crate::targets::context::BuildContext;
use crate::targets::pdata::block::checksum;
use crate::units::{Sector, SectorCount};

use super::DeviceRef;

/// `MIN_REGION_SIZE`: 4 KiB.
const MIN_REGION_SIZE: u32 = 1 << 3;
/// `MAX_REGION_SIZE`: 1 GiB.
const MAX_REGION_SIZE: u32 = 1 << 21;
/// `validate_nr_regions`: `test_bit` and co. restrict the bitmap to 2^31 regions.
const MAX_REGIONS: u64 = 1 << 31;
/// `DM_CLONE_METADATA_BLOCK_SIZE`: metadata blocks of 4 KiB.
const METADATA_BLOCK: usize = 4096;
/// `SUPERBLOCK_MAGIC`.
const SUPERBLOCK_MAGIC: u64 = 0x8af2_7f64;
/// `SUPERBLOCK_CSUM_XOR`.
const SUPERBLOCK_CSUM_XOR: u32 = 257_649_492;
/// `ENOTBLK`: `sb_check`'s answer to a block that names another location.
const ENOTBLK: i32 = 15;

/// Parsed `clone` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneArgs {
    /// The metadata device (the bitmap of hydrated regions).
    pub metadata: DeviceRef,
    /// The destination device, hydrated from the source.
    pub dest: DeviceRef,
    /// The read-only source device.
    pub source: DeviceRef,
    /// Sectors per region.
    pub region_size: u32,
    /// Hydration starts enabled (no `no_hydration`).
    pub hydration: bool,
    /// Discards are passed down to the destination (no `no_discard_passdown`).
    pub discard_passdown: bool,
    /// `hydration_threshold` (regions; 1 by default).
    pub hydration_threshold: u32,
    /// `hydration_batch_size` (regions; 1 by default).
    pub hydration_batch_size: u32,
    /// Every argument after the three devices as given: what the kernel saves and prints.
    pub ctr_args: Vec<String>,
}

impl CloneArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "clone";

    /// Parse like `clone_ctr` for a line of `len` sectors (the device checks happen at
    /// build).
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<CloneArgs> {
        if args.len() < 4 {
            return Err(Args::error("Invalid number of arguments"));
        }
        let metadata = DeviceRef::parse(args, "Error opening metadata device")?;
        let dest = DeviceRef::parse(args, "Error opening destination device")?;
        let source = DeviceRef::parse(args, "Error opening source device")?;
        let ctr_args = args.all()[args.position()..].to_vec();
        let region_size =
            args.scan_arg_in(MIN_REGION_SIZE..=MAX_REGION_SIZE, "Invalid region size")?;
        if !region_size.is_power_of_two() {
            return Err(args.error_last("Region size is not a power of 2"));
        }
        if len.0.div_ceil(u64::from(region_size)) > MAX_REGIONS {
            return Err(Args::error(
                "Too many regions. Consider increasing the region size",
            ));
        }
        let mut out = CloneArgs {
            metadata,
            dest,
            source,
            region_size,
            hydration: true,
            discard_passdown: true,
            hydration_threshold: 1,
            hydration_batch_size: 1,
            ctr_args,
        };
        if args.remaining() > 0 {
            out.parse_features(args)?;
        }
        if args.remaining() > 0 {
            out.parse_core(args)?;
        }
        Ok(out)
    }

    /// `parse_feature_args`.
    fn parse_features(&mut self, args: &mut Args<'_>) -> ArgResult<()> {
        let mut group = args.group(0..=2, "Invalid number of feature arguments")?;
        while group.remaining() > 0 {
            let name = group.next("Invalid feature argument")?;
            if name.eq_ignore_ascii_case("no_hydration") {
                self.hydration = false;
            } else if name.eq_ignore_ascii_case("no_discard_passdown") {
                self.discard_passdown = false;
            } else {
                return Err(group.error_last("Invalid feature argument"));
            }
        }
        Ok(())
    }

    /// `parse_core_args`.
    fn parse_core(&mut self, args: &mut Args<'_>) -> ArgResult<()> {
        let mut group = args.group(0..=4, "Invalid number of core arguments")?;
        if group.len() % 2 == 1 {
            return Err(Args::error("Number of core arguments must be even"));
        }
        while group.remaining() > 0 {
            let name = group.next("Invalid core argument")?;
            if name.eq_ignore_ascii_case("hydration_threshold") {
                self.hydration_threshold =
                    group.kstrtouint("Invalid value for argument `hydration_threshold'")?;
            } else if name.eq_ignore_ascii_case("hydration_batch_size") {
                self.hydration_batch_size =
                    group.kstrtouint("Invalid value for argument `hydration_batch_size'")?;
            } else {
                return Err(group.error_last("Invalid core argument"));
            }
        }
        Ok(())
    }

    /// Why a line of `len` sectors cannot be built: `clone_ctr`'s device checks and
    /// `dm_clone_metadata_open`'s superblock checks fail first, with the kernel's words and
    /// errno, else the refusal (clone is parsed and printed, not executed).
    pub fn build_error(&self, len: SectorCount, ctx: &dyn BuildContext) -> Error {
        let metadata = match ctx.volume(&self.metadata) {
            Ok(v) => v,
            Err(e) => return lookup_error(e, "Error opening metadata device"),
        };
        let mut lbs = Vec::new();
        for (d, open, size) in [
            (
                &self.dest,
                "Error opening destination device",
                "Device size larger than destination device",
            ),
            (
                &self.source,
                "Error opening source device",
                "Device size larger than source device",
            ),
        ] {
            match ctx.volume(d) {
                Ok(v) if v.size() < len => return Error::invalid("clone", size),
                Ok(v) => lbs.push(v.logical_block_size()),
                Err(e) => return lookup_error(e, open),
            }
        }
        if lbs.iter().any(|b| self.region_size % (b / 512).max(1) != 0) {
            return Error::invalid(
                "clone",
                "Region size is not a multiple of device logical block size",
            );
        }
        let mut sb = vec![0u8; METADATA_BLOCK];
        if let Err(e) = metadata.read(Sector(0), &mut sb) {
            return metadata_error(format!("reading the superblock: {e}"), e.errno());
        }
        if let Err(e) = self.check_superblock(&sb, len) {
            return e;
        }
        Error::Unsupported {
            target: "clone",
            op: if crate::volume::is_zero(&sb) {
                "I/O (clone is parsed and printed, not executed; its metadata would be formatted)"
            } else {
                "I/O (clone is parsed and printed, not executed)"
            },
        }
    }

    /// `sb_check` and `__open_metadata`'s size check on the superblock `sb` (all zeros:
    /// not formatted, nothing to check).
    fn check_superblock(&self, sb: &[u8], len: SectorCount) -> Result<(), Error> {
        if crate::volume::is_zero(sb) {
            return Ok(());
        }
        let le32 = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap_or([0; 4]));
        let le64 = |at: usize| u64::from_le_bytes(sb[at..at + 8].try_into().unwrap_or([0; 8]));
        let blocknr = le64(8);
        if blocknr != 0 {
            return Err(metadata_error(
                format!("Superblock check failed: blocknr {blocknr}, expected 0"),
                ENOTBLK,
            ));
        }
        let magic = le64(32);
        if magic != SUPERBLOCK_MAGIC {
            return Err(metadata_error(
                format!("Superblock check failed: magic {magic}, expected {SUPERBLOCK_MAGIC}"),
                errno::EILSEQ,
            ));
        }
        let csum = checksum(&sb[4..], SUPERBLOCK_CSUM_XOR);
        if csum != le32(0) {
            return Err(metadata_error(
                format!(
                    "Superblock check failed: checksum {csum}, expected {}",
                    le32(0)
                ),
                errno::EILSEQ,
            ));
        }
        let version = le32(40);
        if version != 1 {
            return Err(metadata_error(
                format!(
                    "Clone metadata version {version} found, but only versions between 1 and 1 supported."
                ),
                errno::EINVAL,
            ));
        }
        // After the 128-byte space map root: region_size, target_size.
        if le64(172) != u64::from(self.region_size) || le64(180) != len.0 {
            return Err(metadata_error(
                "Region and/or target size don't match the ones in metadata".into(),
                errno::EINVAL,
            ));
        }
        Ok(())
    }
}

/// A failed lookup: a missing device keeps ENOENT (`dm_get_device`'s answer), with the
/// kernel's words in front.
fn lookup_error(e: Error, words: &str) -> Error {
    Error::Io {
        device: format!("clone: {words} ({e})"),
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// `ti->error = "Failed to load metadata"` with the errno `dm_clone_metadata_open` gave and
/// its DMERR words.
fn metadata_error(why: String, errno: i32) -> Error {
    Error::Io {
        device: format!("clone: Failed to load metadata ({why})"),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

impl fmt::Display for CloneArgs {
    /// `clone_status` STATUSTYPE_TABLE: the devices, then the saved arguments.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metadata, self.dest, self.source)?;
        for a in &self.ctr_args {
            write!(f, " {}", escape(a))?;
        }
        Ok(())
    }
}
