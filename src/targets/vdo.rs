//! `vdo`: deduplication, compression and thin provisioning over a formatted VDO volume
//! (kernel drivers/md/dm-vdo/, v9.1.0 in 6.12). Typed here for table version 4; a VDO
//! volume is not executed.
//!
//! Table args (V4): `V4 <storage dev> <physical blocks> <512|4096> <block map cache blocks>
//! <block map period> [<key> <value>]*`. As 6.12's `parse_device_config`: the target length a
//! whole number of 4 KiB blocks (`Logical size must be a multiple of 4096`), some arguments
//! (`Incorrect number of arguments`), the version (`V%u`, 1 to 4, else `Unknown version number
//! detected`; a first word without `V` is version 0), the version's argument count, then the
//! physical block count (`kstrtoull`), the logical block size (exactly `512` or `4096`), the
//! cache size and period (`kstrtouint`), the key/value pairs (an even count; `deduplication`
//! and `compression` take `on`/`off`, every other key a `kstrtouint` value checked as
//! `process_one_key_value_pair` does — `maxDiscard` 1 to 2^20 − 1, `bioRotationInterval` 1 to
//! 1024, `logical` ≤ 60, `physical` ≤ 16, `cpu` and `bio` ≥ 1, every other key, unknown ones
//! included, ≤ 100 — each failure `Invalid optional argument configuration` with vdo's own
//! words after it), the zone counts all zero or all non-zero, and a block map cache of at
//! least 2 × 2048 blocks per logical zone. The table prints the arguments as given, joined by
//! single spaces (`vdo_status` prints the saved `original_string`). Lines of table versions 0
//! to 3 (vdo's older tools) are checked for their version and argument count and otherwise
//! kept verbatim ([`crate::targets::OtherArgs`]).
//!
//! Build: the storage device is looked up (`Unable to open storage device`, EINVAL, as vdo
//! reports every parse failure), then its geometry block (block 0) is read: without vdo's
//! magic `dmvdo001` the kernel fails `Could not load geometry block` (EIO); a formatted VDO
//! volume is refused (its block map, slab depot and recovery journal are not executed).

use std::fmt;

use crate::error::{errno, Error};
use crate::table::args::{parse_kstrtoull, ArgResult, Args};
use crate::table::lexer::escape;
use crate::targets::context::BuildContext;
use crate::units::{Sector, SectorCount};

use super::DeviceRef;

/// `TABLE_VERSION`.
const TABLE_VERSION: u32 = 4;
/// `REQUIRED_ARGC`: arguments each table version needs (0 and 1: exactly).
const REQUIRED_ARGC: [usize; 5] = [10, 12, 9, 7, 6];
/// `VDO_BLOCK_SIZE`.
const VDO_BLOCK_SIZE: u64 = 4096;
/// `MAXIMUM_VDO_USER_VIOS`.
const MAXIMUM_VDO_USER_VIOS: u64 = 2048;
/// `VDO_GEOMETRY_MAGIC_NUMBER`.
const GEOMETRY_MAGIC: &[u8; 8] = b"dmvdo001";
/// What `parse_optional_arguments` sets when a pair is bad.
const BAD_OPTION: &str = "Invalid optional argument configuration";

/// Parsed `vdo` V4 arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdoArgs {
    /// The storage device holding the VDO volume.
    pub storage: DeviceRef,
    /// Physical blocks (4 KiB) of the storage the volume may use.
    pub physical_blocks: u64,
    /// The device's logical block size: 512 (512e) or 4096.
    pub logical_block_size: u32,
    /// Block map cache size in 4 KiB pages.
    pub cache_size: u32,
    /// Block map era length (`block_map_maximum_age`).
    pub block_map_period: u32,
    /// The key/value pairs as given.
    pub options: Vec<(String, String)>,
    /// Every argument as given: what the kernel saves and prints.
    pub tokens: Vec<String>,
}

/// `sscanf(argv[0], "V%u")`: the table version a first word names (`None`: version 0, no
/// version word). `%u` reads digits after the `V` and ignores what follows them.
fn version_word(t: &str) -> Option<u32> {
    let digits: String = t
        .strip_prefix('V')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    crate::table::args::scan_u32(&digits)
}

impl VdoArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "vdo";

    /// Parse like `parse_device_config` for a line of `len` sectors: `Ok(None)` for a valid
    /// line of table version 0 to 3 (kept verbatim). The device lookup happens at build.
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<Option<VdoArgs>> {
        if (len.0 * 512) % VDO_BLOCK_SIZE != 0 {
            return Err(Args::error("Logical size must be a multiple of 4096"));
        }
        if args.is_empty() {
            return Err(Args::error("Incorrect number of arguments"));
        }
        let version = match args.peek().and_then(version_word) {
            Some(v) if (1..=TABLE_VERSION).contains(&v) => v,
            Some(_) => return Err(args.error_at(0, "Unknown version number detected")),
            None => 0,
        };
        let need = REQUIRED_ARGC[version as usize];
        if (version <= 1 && args.len() != need) || args.len() < need {
            return Err(Args::error("Incorrect number of arguments for version"));
        }
        if version != TABLE_VERSION {
            return Ok(None);
        }
        let tokens = args.all().to_vec();
        args.next("Incorrect number of arguments")?;
        let storage = DeviceRef::parse(args, "Unable to open storage device")?;
        let physical_blocks = args.kstrtoull("Invalid physical block count")?;
        let logical_block_size = match args.next("Invalid logical block size")? {
            "512" => 512,
            "4096" => 4096,
            _ => return Err(args.error_last("Invalid logical block size")),
        };
        let cache_size = args.kstrtouint("Invalid block map page cache size")?;
        let block_map_period = args.kstrtouint("Invalid block map maximum age")?;
        if args.remaining() % 2 != 0 {
            return Err(Args::error(
                "Odd number of optional arguments given but they should be <key> <value> pairs",
            ));
        }
        let mut zones = [0u32; 3]; // logical, physical, hash
        let mut options = Vec::new();
        while args.remaining() > 0 {
            let key = args.next(BAD_OPTION)?;
            let value = args.next(BAD_OPTION)?;
            check_option(key, value, &mut zones)
                .map_err(|why| args.error_last(format!("{BAD_OPTION} ({why})")))?;
            options.push((key.to_string(), value.to_string()));
        }
        if (zones[0] == 0) != (zones[1] == 0) || (zones[1] == 0) != (zones[2] == 0) {
            return Err(Args::error(
                "Logical, physical, and hash zones counts must all be zero or all non-zero",
            ));
        }
        if u64::from(cache_size) < 2 * MAXIMUM_VDO_USER_VIOS * u64::from(zones[0]) {
            return Err(Args::error(
                "Insufficient block map cache for logical zones",
            ));
        }
        Ok(Some(VdoArgs {
            storage,
            physical_blocks,
            logical_block_size,
            cache_size,
            block_map_period,
            options,
            tokens,
        }))
    }

    /// Why the line cannot be built: the storage lookup (EINVAL, vdo's words), the geometry
    /// block (EIO without vdo's magic, as the kernel), else the refusal.
    pub fn build_error(&self, ctx: &dyn BuildContext) -> Error {
        let dev = match ctx.volume(&self.storage) {
            Ok(v) => v,
            Err(e) => return Error::invalid("vdo", format!("Unable to open storage device ({e})")),
        };
        let mut block = vec![0u8; 4096];
        let read = dev.read(Sector(0), &mut block);
        if read.is_err() || !block.starts_with(GEOMETRY_MAGIC) {
            let why = match read {
                Err(e) => e.to_string(),
                Ok(()) => "no vdo geometry magic \"dmvdo001\" in block 0".into(),
            };
            return Error::Io {
                device: format!("vdo: Could not load geometry block ({why})"),
                source: std::io::Error::from_raw_os_error(errno::EIO),
            };
        }
        Error::Unsupported {
            target: "vdo",
            op: "I/O (vdo is parsed and printed, a VDO volume is not executed)",
        }
    }
}

/// `parse_one_key_value_pair` → `process_one_key_value_pair` →
/// `process_one_thread_config_spec`: `Err` carries vdo's log words.
fn check_option(key: &str, value: &str, zones: &mut [u32; 3]) -> Result<(), String> {
    if key == "deduplication" || key == "compression" {
        return match value {
            "on" | "off" => Ok(()),
            _ => Err(format!("{key} must be on or off, found \"{value}\"")),
        };
    }
    let count = parse_kstrtoull(value)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| {
            format!("optional config string error: integer value needed, found \"{value}\"")
        })?;
    let thread = |msg: String| Err(format!("thread config string error: {msg}"));
    match key {
        "maxDiscard" if count == 0 => {
            Err("optional parameter error: at least one max discard block required".into())
        }
        "maxDiscard" if count > u32::MAX / 4096 => Err(format!(
            "optional parameter error: at most {} max discard blocks are allowed",
            u32::MAX / 4096
        )),
        "maxDiscard" => Ok(()),
        "bioRotationInterval" if count == 0 => {
            thread(" 'bioRotationInterval' of at least 1 is required".into())
        }
        "bioRotationInterval" if count > 1024 => {
            thread("'bioRotationInterval' cannot be higher than 1024".into())
        }
        "bioRotationInterval" => Ok(()),
        "logical" if count > 60 => thread("at most 60 'logical' threads are allowed".into()),
        "physical" if count > 16 => thread("at most 16 'physical' threads are allowed".into()),
        "logical" | "physical" => {
            zones[usize::from(key == "physical")] = count;
            Ok(())
        }
        _ if count > 100 => thread(format!("at most 100 '{key}' threads are allowed")),
        "hash" => {
            zones[2] = count;
            Ok(())
        }
        "cpu" | "bio" if count == 0 => thread(format!("at least one '{key}' thread required")),
        // ack, cpu, bio; an unknown key is only logged by the kernel.
        _ => Ok(()),
    }
}

impl fmt::Display for VdoArgs {
    /// `vdo_status` STATUSTYPE_TABLE: the saved arguments joined by spaces (a token holding
    /// whitespace or a backslash escaped, so that the line reads back as the same tokens).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.tokens.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(&escape(t))?;
        }
        Ok(())
    }
}
