//! Targets: the `TargetSpec` enum (one variant per typed kernel target), the `Target` trait
//! that constructed targets implement, and device references.
//!
//! Each target module has three parts: `<X>Args` (pure parse + canonical output, no I/O),
//! `<X>::new` (the kernel's ctr: resolves devices, checks geometry) and `impl Volume`.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::table::args::{ArgResult, Args};
use crate::table::lexer::escape;
use crate::targets::context::BuildContext;
use crate::units::SectorCount;
use crate::volume::Volume;

pub mod cache;
pub mod clone;
pub mod context;
pub mod crypt;
pub mod delay;
pub mod dust;
pub mod ebs;
pub mod era;
pub mod error;
pub mod flakey;
pub mod integrity;
pub mod linear;
pub mod log_writes;
pub mod mirror;
pub mod multipath;
pub mod other;
pub mod pdata;
pub mod raid;
pub mod snapshot;
pub mod striped;
pub mod switch;
pub mod thin;
pub mod unstriped;
pub mod vdo;
pub mod verity;
pub mod writecache;
pub mod zero;
pub mod zoned;

pub use cache::{Cache, CacheArgs};
pub use clone::CloneArgs;
pub use crypt::{Crypt, CryptArgs};
pub use delay::{Delay, DelayArgs};
pub use dust::{Dust, DustArgs};
pub use ebs::{Ebs, EbsArgs};
pub use era::EraArgs;
pub use flakey::{Flakey, FlakeyArgs};
pub use integrity::{Integrity, IntegrityArgs};
pub use linear::{Linear, LinearArgs};
pub use log_writes::{LogWrites, LogWritesArgs};
pub use mirror::{Mirror, MirrorArgs};
pub use multipath::MultipathArgs;
pub use other::OtherArgs;
pub use raid::{Raid1, RaidArgs};
pub use snapshot::{Origin, OriginArgs, Snapshot, SnapshotArgs, SnapshotKind};
pub use striped::{Striped, StripedArgs};
pub use switch::{Switch, SwitchArgs};
pub use thin::{Thin, ThinArgs, ThinPool, ThinPoolArgs};
pub use unstriped::{Unstriped, UnstripedArgs};
pub use vdo::VdoArgs;
pub use verity::{Verity, VerityArgs};
pub use writecache::{Writecache, WritecacheArgs};
pub use zoned::ZonedArgs;

/// A constructed target: I/O plus the hooks `dmsetup status` and `dmsetup message` reach.
pub trait Target: Volume + Any {
    /// STATUSTYPE_INFO text, as `dmsetup status` prints it after the type.
    fn status(&self) -> String {
        String::new()
    }

    /// Handle `dmsetup message` words; the reply text (often empty).
    fn message(&self, argv: &[&str]) -> Result<String> {
        let _ = argv;
        Err(Error::invalid(
            "message",
            "Target type does not support messages",
        ))
    }

    /// Whether the target holds requests for a while before serving them (delay). A mapped
    /// device serves the pieces of a request that crosses into such a line at the same time,
    /// as the kernel submits each clone without waiting for the one before.
    fn holds_requests(&self) -> bool {
        false
    }

    /// Whether dm core sends the target flushes (its constructor sets `num_flush_bios`).
    /// A table's flush skips lines whose target says no, and an empty flush to a device
    /// of only such lines completes at once, as in 6.12 (switch, unstriped and error set
    /// none). The target's own `flush` is then never reached through a table.
    fn takes_flushes(&self) -> bool {
        true
    }

    /// `presuspend`: the device is about to suspend; new I/O will wait and in-flight I/O
    /// must be able to finish (delay releases every held request).
    fn presuspend(&self) {}

    /// `postsuspend`: the device is suspended and no I/O is in flight (thin-pool commits
    /// its metadata, crypt accepts key messages). A failure is reported, the suspend stands.
    fn postsuspend(&self) -> Result<()> {
        Ok(())
    }

    /// `preresume`: the table is about to go live (again); an error aborts the resume and
    /// the device stays suspended (crypt without a key: EAGAIN).
    fn preresume(&self) -> Result<()> {
        Ok(())
    }

    /// `resume`: the table is live and I/O flows again.
    fn resume(&self) {}

    /// The line's arguments as `dmsetup table` prints them once the target is built, when
    /// construction settles something the text left open (a snapshot's chunk size 0 becomes
    /// the size read from the COW header). None: print the parsed arguments.
    fn table_spec(&self) -> Option<TargetSpec> {
        None
    }
}

/// Whether key material is printed or replaced by zeros (dmsetup's `--showkeys`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Keys {
    /// Keys print as `0` characters of the same length (the default, as in dmsetup).
    #[default]
    Hidden,
    /// Keys print as given.
    Shown,
}

/// A device as named in a table: a path, a mapped-device name or `major:minor`, kept as
/// written (files have no device numbers, so this is what prints back).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceRef(pub String);

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

impl DeviceRef {
    /// Read a device token ([`DeviceRef::from_token`]).
    pub fn parse(args: &mut Args<'_>, reason: &str) -> ArgResult<DeviceRef> {
        let t = args.next(reason)?;
        DeviceRef::from_token(t).map_err(|e| args.error_last(e))
    }

    /// A device token as the kernel's `dm_devt_from_path` reads it: `sscanf("%u:%u%c")`
    /// matching two numbers is a device number (digits only, each taken modulo 2^32, as
    /// the kernel's sscanf stores them), kept in the form the kernel prints (`007:01` is
    /// `7:1`). A major or minor that does not fit a `dev_t` (12 and 20 bits) parses, as in
    /// the kernel, and fails its lookup when the table is built (EOVERFLOW, see
    /// `Registry`'s resolver). Anything else (`+7:1`, `7:1x`, a name) is a path, kept as
    /// written.
    pub fn from_token(t: &str) -> Result<DeviceRef, String> {
        // dmsetup trims the end of every line it reads, so a device token ending in an
        // (escaped) space could not print back as the last token of a line.
        if t.ends_with(|c: char| c.is_ascii() && crate::table::parse::is_c_space(c as u8)) {
            return Err(
                "a device path ending in whitespace cannot be written as table text".into(),
            );
        }
        let Some((maj, min)) = t.split_once(':') else {
            return Ok(DeviceRef(t.to_string()));
        };
        let (Some(major), Some(minor)) = (
            crate::table::args::scan_u32(maj),
            crate::table::args::scan_u32(min),
        ) else {
            return Ok(DeviceRef(t.to_string()));
        };
        Ok(DeviceRef(format!("{major}:{minor}")))
    }
}

/// A device and a sector offset into it (`<dev> <offset>` pairs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAt {
    /// The device.
    pub device: DeviceRef,
    /// Where on the device the mapping starts.
    pub offset: SectorCount,
}

impl fmt::Display for DeviceAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.device, self.offset)
    }
}

/// Parsed arguments of one table line's target. Typed for the targets dmemu executes or
/// validates; every other kernel target is kept verbatim in `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // typed args differ in size; tables are small
pub enum TargetSpec {
    /// `linear <dev> <offset>`
    Linear(LinearArgs),
    /// `striped <#stripes> <chunk> (<dev> <offset>)+`
    Striped(StripedArgs),
    /// `unstriped <#stripes> <chunk_size> <stripe #> <dev> <offset>`
    Unstriped(UnstripedArgs),
    /// `switch <num_paths> <region_size> <#opt args> (<dev> <offset>)+`
    Switch(SwitchArgs),
    /// `ebs <dev> <offset> <ebs> [<ubs>]`
    Ebs(EbsArgs),
    /// `crypt <cipher> <key> <iv_offset> <dev> <offset> [<#opts> <opts>...]`
    Crypt(CryptArgs),
    /// `zero`
    Zero,
    /// `error` (arguments accepted and dropped, as the kernel prints none)
    Error,
    /// `verity <version> <data> <hash> <dbs> <hbs> <blocks> <hash_start> <alg> <root> <salt> [opts]`
    Verity(VerityArgs),
    /// `delay <dev> <offset> <ms> [<wdev> <woffset> <wms> [<fdev> <foffset> <fms>]]`
    Delay(DelayArgs),
    /// `flakey <dev> <offset> <up> <down> [<#features> <features>...]`
    Flakey(FlakeyArgs),
    /// `dust <dev> <offset> <blksz>`
    Dust(DustArgs),
    /// `snapshot <origin> <cow> <P|PO|N> <chunk> [<#features> <feature>...]`
    Snapshot(SnapshotArgs),
    /// `snapshot-merge`, same arguments as `snapshot`
    SnapshotMerge(SnapshotArgs),
    /// `snapshot-origin <origin>`
    SnapshotOrigin(OriginArgs),
    /// `thin-pool <meta> <data> <block> <low_water> [<#features> <feature>...]`
    ThinPool(ThinPoolArgs),
    /// `thin <pool> <dev_id> [<external_origin>]`
    Thin(ThinArgs),
    /// `log-writes <dev> <logdev>`
    LogWrites(LogWritesArgs),
    /// `cache <meta> <cache> <origin> <block> <#features> <feature>* <policy> <#args> <arg>*`
    Cache(CacheArgs),
    /// `integrity <dev> <offset> <tag_size> <mode> <#opts> <opt>...`
    Integrity(IntegrityArgs),
    /// `mirror <log_type> <#log_args> <log_args>... <#mirrors> (<dev> <offset>)+ [<#features> <feature>...]`
    Mirror(MirrorArgs),
    /// `raid <raid_type> <#raid_params> <chunk_size> [<param>...] <#raid_devs> (<meta>|- <data>|-)+`
    Raid(RaidArgs),
    /// `multipath <#features> <feature>... <#hw_args> [<hw>...] <#pgs> <initial_pg> <group>...`
    Multipath(MultipathArgs),
    /// `era <metadata_dev> <origin_dev> <block_size>`
    Era(EraArgs),
    /// `clone <metadata> <dest> <source> <region_size> [<#features> <feature>* [<#core> <core>*]]`
    Clone(CloneArgs),
    /// `zoned <dev> [<dev>...]`
    Zoned(ZonedArgs),
    /// `vdo V4 <storage> <physical blocks> <512|4096> <cache> <period> [<key> <value>]*`
    Vdo(VdoArgs),
    /// `writecache p|s <origin> <cache> <block_size> <#opts> <opt>...`
    Writecache(WritecacheArgs),
    /// Any other kernel target, kept as written.
    Other(OtherArgs),
}

/// Every target type name registered by Linux 6.12's drivers/md (plus targets common in
/// distribution kernels). A type not in this list is refused as "unknown target type".
pub const KERNEL_TARGET_TYPES: &[&str] = &[
    "cache",
    "clone",
    "crypt",
    "delay",
    "dust",
    "ebs",
    "era",
    "error",
    "flakey",
    "integrity",
    "linear",
    "log-writes",
    "mirror",
    "multipath",
    "raid",
    "snapshot",
    "snapshot-merge",
    "snapshot-origin",
    "striped",
    "switch",
    "thin",
    "thin-pool",
    "unstriped",
    "vdo",
    "verity",
    "writecache",
    "zero",
    "zoned",
];

/// Targets that must be the only target of their table (`DM_TARGET_SINGLETON`).
pub const SINGLETON_TYPES: &[&str] = &[
    "thin-pool",
    "verity",
    "multipath",
    "integrity",
    "zoned",
    "vdo",
];
/// Targets whose table may hold no other target type (`DM_TARGET_IMMUTABLE`).
pub const IMMUTABLE_TYPES: &[&str] = &["thin-pool", "verity", "multipath"];

impl TargetSpec {
    /// Parse the arguments of a `target_type` line of `len` sectors. `raw` is the parameter
    /// text as written (kept for targets dmemu does not type).
    pub fn parse(
        target_type: &str,
        len: SectorCount,
        args: &mut Args<'_>,
        raw: &str,
    ) -> ArgResult<TargetSpec> {
        Ok(match target_type {
            "linear" => TargetSpec::Linear(LinearArgs::parse(args)?),
            "striped" => TargetSpec::Striped(StripedArgs::parse(args, len)?),
            "unstriped" => TargetSpec::Unstriped(UnstripedArgs::parse(args, len)?),
            "switch" => TargetSpec::Switch(SwitchArgs::parse(args)?),
            "ebs" => TargetSpec::Ebs(EbsArgs::parse(args)?),
            "crypt" => TargetSpec::Crypt(CryptArgs::parse(args, len)?),
            "zero" => {
                zero::parse(args)?;
                TargetSpec::Zero
            }
            "error" => {
                error::parse(args)?;
                TargetSpec::Error
            }
            "verity" => TargetSpec::Verity(VerityArgs::parse(args, len)?),
            "delay" => TargetSpec::Delay(DelayArgs::parse(args)?),
            "flakey" => TargetSpec::Flakey(FlakeyArgs::parse(args)?),
            "dust" => TargetSpec::Dust(DustArgs::parse(args, len)?),
            "snapshot" => TargetSpec::Snapshot(SnapshotArgs::parse(args, SnapshotKind::Snapshot)?),
            "snapshot-merge" => {
                TargetSpec::SnapshotMerge(SnapshotArgs::parse(args, SnapshotKind::Merge)?)
            }
            "snapshot-origin" => TargetSpec::SnapshotOrigin(OriginArgs::parse(args)?),
            "thin-pool" => TargetSpec::ThinPool(ThinPoolArgs::parse(args)?),
            "thin" => TargetSpec::Thin(ThinArgs::parse(args)?),
            "log-writes" => TargetSpec::LogWrites(LogWritesArgs::parse(args)?),
            "cache" => TargetSpec::Cache(CacheArgs::parse(args)?),
            "integrity" => TargetSpec::Integrity(IntegrityArgs::parse(args)?),
            "mirror" => TargetSpec::Mirror(MirrorArgs::parse(args, len)?),
            "raid" => TargetSpec::Raid(RaidArgs::parse(args, len)?),
            "multipath" => match MultipathArgs::parse(args)? {
                Some(a) => TargetSpec::Multipath(a),
                None => TargetSpec::Other(OtherArgs::new(target_type, raw)),
            },
            "era" => TargetSpec::Era(EraArgs::parse(args)?),
            "clone" => TargetSpec::Clone(CloneArgs::parse(args, len)?),
            "zoned" => TargetSpec::Zoned(ZonedArgs::parse(args)?),
            "vdo" => match VdoArgs::parse(args, len)? {
                Some(a) => TargetSpec::Vdo(a),
                None => TargetSpec::Other(OtherArgs::new(target_type, raw)),
            },
            "writecache" => TargetSpec::Writecache(WritecacheArgs::parse(args)?),
            t if KERNEL_TARGET_TYPES.contains(&t) => TargetSpec::Other(OtherArgs::new(t, raw)),
            _ => return Err(Args::error("unknown target type")),
        })
    }

    /// The kernel target type name.
    #[must_use]
    pub fn target_type(&self) -> &str {
        match self {
            TargetSpec::Linear(_) => LinearArgs::TYPE,
            TargetSpec::Striped(_) => StripedArgs::TYPE,
            TargetSpec::Unstriped(_) => UnstripedArgs::TYPE,
            TargetSpec::Switch(_) => SwitchArgs::TYPE,
            TargetSpec::Ebs(_) => EbsArgs::TYPE,
            TargetSpec::Crypt(_) => CryptArgs::TYPE,
            TargetSpec::Zero => "zero",
            TargetSpec::Error => "error",
            TargetSpec::Verity(_) => VerityArgs::TYPE,
            TargetSpec::Delay(_) => DelayArgs::TYPE,
            TargetSpec::Flakey(_) => FlakeyArgs::TYPE,
            TargetSpec::Dust(_) => DustArgs::TYPE,
            TargetSpec::Snapshot(_) => SnapshotArgs::TYPE,
            TargetSpec::SnapshotMerge(_) => SnapshotArgs::MERGE_TYPE,
            TargetSpec::SnapshotOrigin(_) => OriginArgs::TYPE,
            TargetSpec::ThinPool(_) => ThinPoolArgs::TYPE,
            TargetSpec::Thin(_) => ThinArgs::TYPE,
            TargetSpec::LogWrites(_) => LogWritesArgs::TYPE,
            TargetSpec::Cache(_) => CacheArgs::TYPE,
            TargetSpec::Integrity(_) => IntegrityArgs::TYPE,
            TargetSpec::Mirror(_) => MirrorArgs::TYPE,
            TargetSpec::Raid(_) => RaidArgs::TYPE,
            TargetSpec::Multipath(_) => MultipathArgs::TYPE,
            TargetSpec::Era(_) => EraArgs::TYPE,
            TargetSpec::Clone(_) => CloneArgs::TYPE,
            TargetSpec::Zoned(_) => ZonedArgs::TYPE,
            TargetSpec::Vdo(_) => VdoArgs::TYPE,
            TargetSpec::Writecache(_) => WritecacheArgs::TYPE,
            TargetSpec::Other(o) => &o.target_type,
        }
    }

    /// Write the canonical parameters (what `dmsetup table` prints after the type).
    pub fn write_params(&self, out: &mut impl fmt::Write, keys: Keys) -> fmt::Result {
        match self {
            TargetSpec::Linear(a) => write!(out, "{a}"),
            TargetSpec::Striped(a) => write!(out, "{a}"),
            TargetSpec::Unstriped(a) => write!(out, "{a}"),
            TargetSpec::Switch(a) => write!(out, "{a}"),
            TargetSpec::Ebs(a) => write!(out, "{a}"),
            TargetSpec::Crypt(a) => a.write(out, keys),
            TargetSpec::Zero | TargetSpec::Error => Ok(()),
            TargetSpec::Verity(a) => write!(out, "{a}"),
            TargetSpec::Delay(a) => write!(out, "{a}"),
            TargetSpec::Flakey(a) => write!(out, "{a}"),
            TargetSpec::Dust(a) => write!(out, "{a}"),
            TargetSpec::Snapshot(a) | TargetSpec::SnapshotMerge(a) => write!(out, "{a}"),
            TargetSpec::SnapshotOrigin(a) => write!(out, "{a}"),
            TargetSpec::ThinPool(a) => write!(out, "{a}"),
            TargetSpec::Thin(a) => write!(out, "{a}"),
            TargetSpec::LogWrites(a) => write!(out, "{a}"),
            TargetSpec::Cache(a) => write!(out, "{a}"),
            TargetSpec::Integrity(a) => a.write(out, keys),
            TargetSpec::Mirror(a) => write!(out, "{a}"),
            TargetSpec::Raid(a) => write!(out, "{a}"),
            TargetSpec::Multipath(a) => write!(out, "{a}"),
            TargetSpec::Era(a) => write!(out, "{a}"),
            TargetSpec::Clone(a) => write!(out, "{a}"),
            TargetSpec::Zoned(a) => write!(out, "{a}"),
            TargetSpec::Vdo(a) => write!(out, "{a}"),
            TargetSpec::Writecache(a) => write!(out, "{a}"),
            TargetSpec::Other(a) => a.write(out, keys),
        }
    }

    /// The devices the line names, in argument order (what `dmsetup deps` lists).
    #[must_use]
    pub fn device_refs(&self) -> Vec<String> {
        let at = |d: &DeviceAt| d.device.0.clone();
        match self {
            TargetSpec::Linear(a) => vec![at(&a.dest)],
            TargetSpec::Striped(a) => a.stripes.iter().map(at).collect(),
            TargetSpec::Unstriped(a) => vec![at(&a.dest)],
            TargetSpec::Switch(a) => a.paths.iter().map(at).collect(),
            TargetSpec::Ebs(a) => vec![at(&a.dest)],
            TargetSpec::Crypt(a) => vec![at(&a.dest)],
            TargetSpec::Verity(a) => {
                let mut v = vec![a.data_dev.0.clone(), a.hash_dev.0.clone()];
                v.extend(a.fec.iter().map(|f| f.device.0.clone()));
                v
            }
            TargetSpec::Delay(a) => a.classes().iter().map(|c| at(&c.dest)).collect(),
            TargetSpec::Flakey(a) => vec![at(&a.dest)],
            TargetSpec::Dust(a) => vec![at(&a.dest)],
            TargetSpec::Snapshot(a) | TargetSpec::SnapshotMerge(a) => {
                vec![a.origin.0.clone(), a.cow.0.clone()]
            }
            TargetSpec::SnapshotOrigin(a) => vec![a.origin.0.clone()],
            TargetSpec::ThinPool(a) => vec![a.metadata.0.clone(), a.data.0.clone()],
            TargetSpec::Thin(a) => {
                let mut v = vec![a.pool.0.clone()];
                v.extend(a.external_origin.iter().map(|o| o.0.clone()));
                v
            }
            TargetSpec::LogWrites(a) => vec![a.dev.0.clone(), a.log_dev.0.clone()],
            TargetSpec::Cache(a) => {
                vec![a.metadata.0.clone(), a.cache.0.clone(), a.origin.0.clone()]
            }
            TargetSpec::Integrity(a) => {
                let mut v = vec![a.dev.0.clone()];
                v.extend(a.meta_device.iter().map(|d| d.0.clone()));
                v
            }
            TargetSpec::Mirror(a) => a.devices(),
            TargetSpec::Raid(a) => a.devices(),
            TargetSpec::Multipath(a) => a.devices(),
            TargetSpec::Era(a) => vec![a.metadata.0.clone(), a.origin.0.clone()],
            TargetSpec::Clone(a) => {
                vec![a.metadata.0.clone(), a.dest.0.clone(), a.source.0.clone()]
            }
            TargetSpec::Zoned(a) => a.devices.iter().map(|d| d.0.clone()).collect(),
            TargetSpec::Vdo(a) => vec![a.storage.0.clone()],
            TargetSpec::Writecache(a) => vec![a.origin.0.clone(), a.cache.0.clone()],
            TargetSpec::Zero | TargetSpec::Error | TargetSpec::Other(_) => Vec::new(),
        }
    }

    /// Construct the target (the kernel's ctr) for a line of `len` sectors.
    pub fn build(&self, len: SectorCount, ctx: &dyn BuildContext) -> Result<Arc<dyn Target>> {
        Ok(match self {
            TargetSpec::Linear(a) => Arc::new(Linear::new(a, len, ctx)?),
            TargetSpec::Striped(a) => Arc::new(Striped::new(a, len, ctx)?),
            TargetSpec::Unstriped(a) => Arc::new(Unstriped::new(a, len, ctx)?),
            TargetSpec::Switch(a) => Arc::new(Switch::new(a, len, ctx)?),
            TargetSpec::Ebs(a) => Arc::new(Ebs::new(a, len, ctx)?),
            TargetSpec::Crypt(a) => Arc::new(Crypt::new(a, len, ctx)?),
            TargetSpec::Zero => Arc::new(zero::Zero::new(len)),
            TargetSpec::Error => Arc::new(error::ErrorTarget::new(len)),
            TargetSpec::Verity(a) => Arc::new(Verity::new(a, len, ctx)?),
            TargetSpec::Delay(a) => Arc::new(Delay::new(a, len, ctx)?),
            TargetSpec::Flakey(a) => Arc::new(Flakey::new(a, len, ctx)?),
            TargetSpec::Dust(a) => Arc::new(Dust::new(a, len, ctx)?),
            TargetSpec::Snapshot(a) => Snapshot::new(a, SnapshotKind::Snapshot, len, ctx)?,
            TargetSpec::SnapshotMerge(a) => Snapshot::new(a, SnapshotKind::Merge, len, ctx)?,
            TargetSpec::SnapshotOrigin(a) => Arc::new(Origin::new(a, len, ctx)?),
            TargetSpec::ThinPool(a) => Arc::new(ThinPool::new(a, len, ctx)?),
            TargetSpec::Thin(a) => Arc::new(Thin::new(a, len, ctx)?),
            TargetSpec::LogWrites(a) => Arc::new(LogWrites::new(a, len, ctx)?),
            TargetSpec::Cache(a) => Arc::new(Cache::new(a, len, ctx)?),
            TargetSpec::Integrity(a) => integrity::build(a, len, ctx)?,
            TargetSpec::Mirror(a) => Arc::new(Mirror::new(a, len, ctx)?),
            TargetSpec::Raid(a) => Arc::new(Raid1::new(a, len, ctx)?),
            TargetSpec::Era(a) => return Err(a.build_error(ctx)),
            TargetSpec::Clone(a) => return Err(a.build_error(len, ctx)),
            TargetSpec::Zoned(a) => return Err(a.build_error(ctx)),
            TargetSpec::Vdo(a) => return Err(a.build_error(ctx)),
            TargetSpec::Writecache(a) => Arc::new(Writecache::new(a, len, ctx)?),
            TargetSpec::Multipath(a) => {
                // parse_path looks each device up before anything runs.
                for d in a.groups.iter().flat_map(|g| &g.paths) {
                    ctx.volume(&d.device)?;
                }
                return Err(Error::Unsupported {
                    target: "multipath",
                    op: "I/O (multipath is parsed and printed, not executed)",
                });
            }
            TargetSpec::Other(a) => {
                return Err(Error::Unsupported {
                    target: "dmemu",
                    op: a.unsupported_op(),
                })
            }
        })
    }
}
