//! `thin-pool` and `thin` (kernel dm-thin.c, v1.23.0): arguments parsed with the kernel's
//! checks and words and printed as 6.12's STATUSTYPE_TABLE prints them (this file),
//! metadata (`metadata/`), the constructed targets (`pool.rs`: thin-pool, `device.rs`: thin)
//! and `dmemu thin` (`cli.rs`).
//!
//! Table args:
//! * `thin-pool`: `<metadata_dev> <data_dev> <data_block_sectors> <low_water_blocks>
//!   [<#features> <feature>...]`
//! * `thin`: `<pool_dev> <dev_id> [<external_origin_dev>]`

use std::fmt;

use crate::table::args::{parse_kstrtoull, ArgResult, Args};

use super::DeviceRef;

/// `DATA_DEV_BLOCK_SIZE_MIN_SECTORS`: 64 KiB. Block sizes must also be multiples of it.
pub const MIN_BLOCK_SECTORS: u64 = 128;
/// `DATA_DEV_BLOCK_SIZE_MAX_SECTORS`: 1 GiB.
pub const MAX_BLOCK_SECTORS: u64 = 2_097_152;
/// `MAX_DEV_ID`: thin device ids are 24 bits.
pub const MAX_DEV_ID: u64 = (1 << 24) - 1;

/// The pool features a table asked for (`struct pool_features` as `parse_pool_features`
/// fills `requested_pf`; the kernel prints the requested set, not the one it adjusted to
/// the devices). Each field is one feature word; duplicates in the table collapse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolFeatures {
    /// `skip_block_zeroing`: new blocks are not zeroed before a partial write.
    pub skip_block_zeroing: bool,
    /// `ignore_discard`: discards are not supported.
    pub ignore_discard: bool,
    /// `no_discard_passdown`: discards free pool blocks but are not sent to the data device.
    pub no_discard_passdown: bool,
    /// `read_only`: the pool starts in read-only mode (metadata opened read-only).
    pub read_only: bool,
    /// `error_if_no_space`: fail writes at once when the data device is full instead of
    /// queueing them.
    pub error_if_no_space: bool,
}

impl PoolFeatures {
    /// The set words in the order `emit_flags` prints them.
    fn words(self) -> impl Iterator<Item = &'static str> {
        [
            (self.skip_block_zeroing, "skip_block_zeroing"),
            (self.ignore_discard, "ignore_discard"),
            (self.no_discard_passdown, "no_discard_passdown"),
            (self.read_only, "read_only"),
            (self.error_if_no_space, "error_if_no_space"),
        ]
        .into_iter()
        .filter_map(|(on, word)| on.then_some(word))
    }
}

/// Parsed `thin-pool` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinPoolArgs {
    /// Device holding the pool metadata (space maps and mapping btrees).
    pub metadata: DeviceRef,
    /// Device holding the data blocks.
    pub data: DeviceRef,
    /// Data block size in sectors: 128..=2097152, a multiple of 128.
    pub block_size: u64,
    /// Free data blocks below which the pool raises an event.
    pub low_water_blocks: u64,
    /// Requested features.
    pub features: PoolFeatures,
}

impl ThinPoolArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "thin-pool";

    /// Parse like `pool_ctr`, in its order: argument count, metadata and data not the same
    /// string, features, (devices,) block size, low water mark. Tokens after the feature
    /// group are ignored, as the kernel does.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<ThinPoolArgs> {
        if args.len() < 4 {
            return Err(Args::error("Invalid argument count"));
        }
        let metadata = DeviceRef::parse(args, "Invalid argument count")?;
        let data_at = args.position();
        let data = DeviceRef::parse(args, "Invalid argument count")?;
        if metadata == data {
            return Err(args.error_at(data_at, "Error setting metadata or data device"));
        }
        let block_at = args.position();
        let block_token = args.next("Invalid argument count")?;
        let water_at = args.position();
        let water_token = args.next("Invalid argument count")?;

        let features = parse_features(args)?;

        // kstrtoul: `unsigned long` is 64 bits on the kernels dmemu follows.
        let block_size = parse_kstrtoull(block_token)
            .filter(|b| {
                (MIN_BLOCK_SECTORS..=MAX_BLOCK_SECTORS).contains(b) && b % MIN_BLOCK_SECTORS == 0
            })
            .ok_or_else(|| args.error_at(block_at, "Invalid block size"))?;
        let low_water_blocks = parse_kstrtoull(water_token)
            .ok_or_else(|| args.error_at(water_at, "Invalid low water mark"))?;
        Ok(ThinPoolArgs {
            metadata,
            data,
            block_size,
            low_water_blocks,
            features,
        })
    }
}

/// `parse_pool_features`: a group of 0..=4 words, matched without case.
fn parse_features(args: &mut Args<'_>) -> ArgResult<PoolFeatures> {
    let mut f = PoolFeatures::default();
    if args.remaining() == 0 {
        return Ok(f);
    }
    let mut group = args.group(0..=4, "Invalid number of pool feature arguments")?;
    while group.remaining() > 0 {
        let at = group.position();
        let word = group.next("Invalid number of pool feature arguments")?;
        let flag = match word.to_ascii_lowercase().as_str() {
            "skip_block_zeroing" => &mut f.skip_block_zeroing,
            "ignore_discard" => &mut f.ignore_discard,
            "no_discard_passdown" => &mut f.no_discard_passdown,
            "read_only" => &mut f.read_only,
            "error_if_no_space" => &mut f.error_if_no_space,
            _ => return Err(args.error_at(at, "Unrecognised pool feature requested")),
        };
        *flag = true;
    }
    Ok(f)
}

impl fmt::Display for ThinPoolArgs {
    /// `pool_status(STATUSTYPE_TABLE)`: `"%s %s %lu %llu "` then `emit_flags`: the count
    /// and each word, every one followed by a space, so the line ends in a space.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} ",
            self.metadata,
            self.data,
            self.block_size,
            self.low_water_blocks,
            self.features.words().count()
        )?;
        for word in self.features.words() {
            write!(f, "{word} ")?;
        }
        Ok(())
    }
}

/// Parsed `thin` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinArgs {
    /// The pool device (a `thin-pool` mapped device).
    pub pool: DeviceRef,
    /// The thin device id inside the pool (24 bits).
    pub dev_id: u32,
    /// A read-only device whose contents show through unprovisioned blocks.
    pub external_origin: Option<DeviceRef>,
}

impl ThinArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "thin";

    /// Parse like `thin_ctr`: 2 or 3 arguments, the origin not the same string as the
    /// pool, the device id a `kstrtoull` number up to `MAX_DEV_ID`.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<ThinArgs> {
        if args.len() != 2 && args.len() != 3 {
            return Err(Args::error("Invalid argument count"));
        }
        let pool = DeviceRef::parse(args, "Invalid argument count")?;
        let id_at = args.position();
        let id_token = args.next("Invalid argument count")?;
        let external_origin = if args.remaining() > 0 {
            let at = args.position();
            let origin = DeviceRef::parse(args, "Invalid argument count")?;
            if origin == pool {
                return Err(args.error_at(at, "Error setting origin device"));
            }
            Some(origin)
        } else {
            None
        };
        let dev_id = parse_kstrtoull(id_token)
            .filter(|&id| id <= MAX_DEV_ID)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| args.error_at(id_at, "Invalid device id"))?;
        Ok(ThinArgs {
            pool,
            dev_id,
            external_origin,
        })
    }
}

impl fmt::Display for ThinArgs {
    /// `thin_status(STATUSTYPE_TABLE)`: `"%s %lu"` and `" %s"` for an external origin.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.pool, self.dev_id)?;
        if let Some(origin) = &self.external_origin {
            write!(f, " {origin}")?;
        }
        Ok(())
    }
}

#[cfg(feature = "cli")]
pub mod cli;
mod device;
pub mod metadata;
mod pool;
pub mod tools;

pub use device::Thin;
pub use pool::{PoolTable, ThinPool, NO_SPACE_TIMEOUT};

#[cfg(test)]
mod tests;
