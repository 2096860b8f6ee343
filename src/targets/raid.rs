//! `raid`: md's RAID levels through device-mapper (kernel dm-raid.c, v1.15.1).
//!
//! Table args: `<raid_type> <#raid_params> <chunk_size> [<param> [<value>]]...
//! <#raid_devs> (<meta_dev>|- <data_dev>|-){#raid_devs}`.
//!
//! Typed as `raid_ctr` reads the line before it looks at superblocks: the raid type
//! (case-insensitive), the parameter group, `chunk_size` (`kstrtoint`; ignored and printed 0
//! for raid1, else a power of two of at least 8), the unordered parameters with their
//! once-only, range and level rules and the kernel's words, the combination rules (sync /
//! nosync / rebuild, write-mostly on every leg, recovery rates, the region size against the
//! length and chunk, raid10 copies and near sets, the level's valid flags), the device pairs
//! (`-` for none; a rebuilt or metadata-only slot needs a data device), and the length
//! against the data stripes. The table prints in `raid_status`'s documented order with the
//! parameter count it computes (which counts `raid10_use_near_sets` without printing it).
//!
//! I/O: raid1 without metadata devices, every leg present, as an in-sync mirror ([`Legs`]:
//! reads from the first leg, writes to every leg), with the status 6.12 prints once the
//! initial resync is done (`raid1 <n> A.. <len>/<len> idle 0 0 -`). Other levels, metadata
//! devices (md superblocks and the write-intent bitmap are not written), missing legs,
//! rebuilds and reshapes are refused at build.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{Error, Result};
use crate::table::args::{parse_llu, ArgResult, Args};
use crate::targets::context::BuildContext;
use crate::targets::mirror::Legs;
use crate::units::SectorCount;
use crate::volume::Volume;

use super::{DeviceRef, Target};

/// `MAX_RAID_DEVICES`.
pub const MAX_RAID_DEVICES: u32 = 253;

/// `raid_types[]`: name, parity devices, minimal devices, level.
const RAID_TYPES: &[(&str, u32, u32, u32)] = &[
    ("raid0", 0, 2, 0),
    ("raid1", 0, 2, 1),
    ("raid10_far", 0, 2, 10),
    ("raid10_offset", 0, 2, 10),
    ("raid10_near", 0, 2, 10),
    ("raid10", 0, 2, 10),
    ("raid4", 1, 2, 5),
    ("raid5_n", 1, 2, 5),
    ("raid5_ls", 1, 2, 5),
    ("raid5_rs", 1, 2, 5),
    ("raid5_la", 1, 2, 5),
    ("raid5_ra", 1, 2, 5),
    ("raid6_zr", 2, 4, 6),
    ("raid6_nr", 2, 4, 6),
    ("raid6_nc", 2, 4, 6),
    ("raid6_n_6", 2, 4, 6),
    ("raid6_ls_6", 2, 4, 6),
    ("raid6_rs_6", 2, 4, 6),
    ("raid6_la_6", 2, 4, 6),
    ("raid6_ra_6", 2, 4, 6),
];

/// One `<meta_dev> <data_dev>` pair (`None` for `-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaidDev {
    /// The metadata device.
    pub meta: Option<DeviceRef>,
    /// The data device.
    pub data: Option<DeviceRef>,
}

/// The optional parameters, each `None` unless given (printed only when given).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaidParams {
    /// `sync`
    pub sync: bool,
    /// `nosync`
    pub nosync: bool,
    /// `rebuild <idx>`, every index given.
    pub rebuild: BTreeSet<u32>,
    /// `daemon_sleep <ms>`
    pub daemon_sleep: Option<i32>,
    /// `min_recovery_rate <kB/s>`
    pub min_recovery_rate: Option<i32>,
    /// `max_recovery_rate <kB/s>`
    pub max_recovery_rate: Option<i32>,
    /// `write_mostly <idx>`, every index given.
    pub write_mostly: BTreeSet<u32>,
    /// `max_write_behind <sectors>`, kept as md keeps it (kB: the value halved).
    pub max_write_behind_kb: Option<i32>,
    /// `stripe_cache <entries>`
    pub stripe_cache: Option<i32>,
    /// `region_size <sectors>`
    pub region_size: Option<i32>,
    /// `raid10_copies <n>`
    pub raid10_copies: Option<i32>,
    /// `raid10_format near|offset|far` (lower case)
    pub raid10_format: Option<&'static str>,
    /// `delta_disks <±n>`
    pub delta_disks: Option<i32>,
    /// `data_offset <sectors>`
    pub data_offset: Option<i32>,
    /// `raid10_use_near_sets`
    pub raid10_use_near_sets: bool,
    /// `journal_dev <dev>`
    pub journal_dev: Option<DeviceRef>,
    /// `journal_mode writethrough|writeback` (lower case)
    pub journal_mode: Option<&'static str>,
}

/// Parsed `raid` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaidArgs {
    /// The raid type's canonical (lower-case) name.
    pub raid_type: &'static str,
    /// The chunk size as md keeps it (0 for raid1).
    pub chunk_size: i32,
    /// The optional parameters.
    pub params: RaidParams,
    /// The device pairs.
    pub devs: Vec<RaidDev>,
}

/// `kstrtoint(s, 10)`: optional sign, decimal digits, optional trailing newline, within i32.
fn kstrtoint(t: &str) -> Option<i32> {
    let t = t.strip_suffix('\n').unwrap_or(t);
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let v = i64::try_from(parse_llu(digits)?).ok()?;
    i32::try_from(if neg { -v } else { v }).ok()
}

impl RaidArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "raid";

    /// Parse like `raid_ctr` up to the superblock analysis (device lookups and sizes are
    /// checked at build).
    #[allow(clippy::too_many_lines)] // one kernel function, in its order
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<RaidArgs> {
        let name = args.next("No arguments")?;
        let &(raid_type, parity, minimal, level) = RAID_TYPES
            .iter()
            .find(|t| t.0.eq_ignore_ascii_case(name))
            .ok_or_else(|| args.error_last("Unrecognised raid_type"))?;
        // dm_read_arg_group {0, argc}: the count, not consumed as a group.
        let at = args.position();
        let nr_params = args
            .scan_arg_in(0..=u32::MAX, "Cannot understand number of raid parameters")
            .ok()
            .filter(|&n| n as usize <= args.remaining())
            .ok_or_else(|| args.error_at(at, "Cannot understand number of raid parameters"))?;
        {
            // The device count after the parameters, at most (what is left - 1) / 2.
            let mut rest = args.clone();
            rest.take(nr_params as usize);
            let max = u32::try_from(rest.remaining().saturating_sub(1) / 2).unwrap_or(u32::MAX);
            let n = rest.scan_arg_in(
                1..=max.max(1),
                "Cannot understand number of raid devices parameters",
            )?;
            if n > max {
                return Err(rest.error_last("Cannot understand number of raid devices parameters"));
            }
            if !(1..=MAX_RAID_DEVICES).contains(&n) {
                return Err(rest.error_last("Invalid number of supplied raid devices"));
            }
            if n <= parity {
                return Err(rest.error_last("Insufficient number of devices"));
            }
        }
        // The device count, read again by parse_dev_params.
        let raid_disks = {
            let mut rest = args.clone();
            rest.take(nr_params as usize);
            rest.scan_u32("")?
        };
        let is_raid1 = level == 1;
        let is_raid10 = level == 10;
        let is_raid456 = matches!(level, 5 | 6);

        // parse_raid_params: the chunk size, taken from the arguments whatever the count.
        let left = nr_params.wrapping_sub(1);
        let chunk = args.next("Bad numerical argument given for chunk_size")?;
        let chunk = kstrtoint(chunk)
            .ok_or_else(|| args.error_last("Bad numerical argument given for chunk_size"))?;
        let chunk_size = if is_raid1 {
            0
        } else if chunk <= 0 || !chunk.cast_unsigned().is_power_of_two() {
            return Err(args.error_last("Chunk size must be a power of 2"));
        } else if chunk < 8 {
            return Err(args.error_last("Chunk size value is too small"));
        } else {
            chunk
        };
        let mut p = RaidParams::default();
        let mut write_mostly = 0u32;
        let mut i = 0u32;
        while i < left {
            let key = args.next("Not enough raid parameters given")?;
            let once = |set: bool, words: &str| -> ArgResult<()> {
                if set {
                    Err(args.error_last(words))
                } else {
                    Ok(())
                }
            };
            if key.eq_ignore_ascii_case("nosync") {
                once(p.nosync, "Only one 'nosync' argument allowed")?;
                p.nosync = true;
                i += 1;
                continue;
            }
            if key.eq_ignore_ascii_case("sync") {
                once(p.sync, "Only one 'sync' argument allowed")?;
                p.sync = true;
                i += 1;
                continue;
            }
            if key.eq_ignore_ascii_case("raid10_use_near_sets") {
                once(
                    p.raid10_use_near_sets,
                    "Only one 'raid10_use_new_sets' argument allowed",
                )?;
                p.raid10_use_near_sets = true;
                i += 1;
                continue;
            }
            let key_at = args.position() - 1;
            let arg = args.next("Wrong number of raid parameters given")?;
            i = i.saturating_add(2);
            let err = |words: &str| args.error_at(key_at, words);
            if key.eq_ignore_ascii_case("raid10_format") {
                if p.raid10_format.is_some() {
                    return Err(err("Only one 'raid10_format' argument pair allowed"));
                }
                if !is_raid10 {
                    return Err(err(
                        "'raid10_format' is an invalid parameter for this RAID type",
                    ));
                }
                let f = ["near", "offset", "far"]
                    .into_iter()
                    .find(|f| f.eq_ignore_ascii_case(arg))
                    .ok_or_else(|| args.error_last("Invalid 'raid10_format' value given"))?;
                p.raid10_format = Some(f);
                continue;
            }
            if key.eq_ignore_ascii_case("journal_dev") {
                if p.journal_dev.is_some() {
                    return Err(err("Only one raid4/5/6 set journaling device allowed"));
                }
                if !is_raid456 {
                    return Err(err(
                        "'journal_dev' is an invalid parameter for this RAID type",
                    ));
                }
                p.journal_dev = Some(DeviceRef::from_token(arg).map_err(|e| args.error_last(e))?);
                continue;
            }
            if key.eq_ignore_ascii_case("journal_mode") {
                if p.journal_dev.is_none() {
                    return Err(err(
                        "raid4/5/6 'journal_mode' is invalid without 'journal_dev'",
                    ));
                }
                if p.journal_mode.is_some() {
                    return Err(err("Only one raid4/5/6 'journal_mode' argument allowed"));
                }
                let m = ["writethrough", "writeback"]
                    .into_iter()
                    .find(|m| m.eq_ignore_ascii_case(arg))
                    .ok_or_else(|| args.error_last("Invalid 'journal_mode' argument"))?;
                p.journal_mode = Some(m);
                continue;
            }
            let value = kstrtoint(arg)
                .ok_or_else(|| args.error_last("Bad numerical argument given in raid params"))?;
            let k = key.to_ascii_lowercase();
            let pair_once = |v: bool, name: &str| -> ArgResult<()> {
                if v {
                    Err(args.error_at(key_at, format!("Only one {name} argument pair allowed")))
                } else {
                    Ok(())
                }
            };
            match k.as_str() {
                "rebuild" => {
                    let idx = u32::try_from(value)
                        .ok()
                        .filter(|&v| v < raid_disks)
                        .ok_or_else(|| args.error_last("Invalid rebuild index given"))?;
                    if !p.rebuild.insert(idx) {
                        return Err(args.error_last("rebuild for this index already given"));
                    }
                }
                "write_mostly" => {
                    if !is_raid1 {
                        return Err(err("write_mostly option is only valid for RAID1"));
                    }
                    let idx = u32::try_from(value)
                        .ok()
                        .filter(|&v| v < raid_disks)
                        .ok_or_else(|| args.error_last("Invalid write_mostly index given"))?;
                    write_mostly += 1;
                    p.write_mostly.insert(idx);
                }
                "max_write_behind" => {
                    if !is_raid1 {
                        return Err(err("max_write_behind option is only valid for RAID1"));
                    }
                    pair_once(p.max_write_behind_kb.is_some(), "max_write_behind")?;
                    if value < 0 || value / 2 > (1 << 14) - 1 {
                        return Err(args.error_last("Max write-behind limit out of range"));
                    }
                    p.max_write_behind_kb = Some(value / 2);
                }
                "daemon_sleep" => {
                    pair_once(p.daemon_sleep.is_some(), "daemon_sleep")?;
                    if value < 0 {
                        return Err(args.error_last("daemon sleep period out of range"));
                    }
                    p.daemon_sleep = Some(value);
                }
                "data_offset" => {
                    pair_once(p.data_offset.is_some(), "data_offset")?;
                    if value < 0 || (value != 0 && (value < 32 || value % 8 != 0)) {
                        return Err(args.error_last("Bogus data_offset value"));
                    }
                    p.data_offset = Some(value);
                }
                "delta_disks" => {
                    pair_once(p.delta_disks.is_some(), "delta_disks")?;
                    if !(1..=MAX_RAID_DEVICES - minimal).contains(&value.unsigned_abs()) {
                        return Err(args.error_last("Too many delta_disk requested"));
                    }
                    p.delta_disks = Some(value);
                }
                "stripe_cache" => {
                    pair_once(p.stripe_cache.is_some(), "stripe_cache")?;
                    if !is_raid456 {
                        return Err(err("Inappropriate argument: stripe_cache"));
                    }
                    if value < 0 {
                        return Err(args.error_last("Bogus stripe cache entries value"));
                    }
                    p.stripe_cache = Some(value);
                }
                "min_recovery_rate" => {
                    pair_once(p.min_recovery_rate.is_some(), "min_recovery_rate")?;
                    if value < 0 {
                        return Err(args.error_last("min_recovery_rate out of range"));
                    }
                    p.min_recovery_rate = Some(value);
                }
                "max_recovery_rate" => {
                    pair_once(p.max_recovery_rate.is_some(), "max_recovery_rate")?;
                    if value < 0 {
                        return Err(args.error_last("max_recovery_rate out of range"));
                    }
                    p.max_recovery_rate = Some(value);
                }
                "region_size" => {
                    pair_once(p.region_size.is_some(), "region_size")?;
                    p.region_size = Some(value);
                }
                "raid10_copies" => {
                    pair_once(p.raid10_copies.is_some(), "raid10_copies")?;
                    if !(2..=i64::from(raid_disks)).contains(&i64::from(value)) {
                        return Err(args.error_last("Bad value for 'raid10_copies'"));
                    }
                    p.raid10_copies = Some(value);
                }
                _ => return Err(err("Unable to parse RAID parameter")),
            }
        }
        if p.sync && p.nosync {
            return Err(Args::error("sync and nosync are mutually exclusive"));
        }
        if !p.rebuild.is_empty() && (p.sync || p.nosync) {
            return Err(Args::error(
                "sync/nosync and rebuild are mutually exclusive",
            ));
        }
        if write_mostly >= raid_disks {
            return Err(Args::error("Can't set all raid1 devices to write_mostly"));
        }
        if let (Some(min), Some(max)) = (p.min_recovery_rate, p.max_recovery_rate) {
            if max != 0 && min > max {
                return Err(Args::error("Bogus recovery rates"));
            }
        }
        if level != 0 {
            if let Some(r) = p.region_size.filter(|&r| r != 0) {
                // validate_region_size: `unsigned long`, so a negative size is huge.
                let r = i64::from(r).cast_unsigned();
                let min = len.0 / (1 << 21);
                if r > len.0 {
                    return Err(Args::error("Supplied region size is too large"));
                }
                if r < min {
                    return Err(Args::error(format!(
                        "Supplied region size is too small (Supplied region_size ({r} sectors) below minimum ({min}))"
                    )));
                }
                if !r.is_power_of_two() {
                    return Err(Args::error("Region size is not a power of 2"));
                }
                if r < chunk_size.unsigned_abs().into() {
                    return Err(Args::error("Region size is smaller than the chunk size"));
                }
            }
        }
        if is_raid10 {
            let copies = p.raid10_copies.unwrap_or(2);
            if i64::from(copies) > i64::from(raid_disks) {
                return Err(Args::error("Not enough devices to satisfy specification"));
            }
            let near = match p.raid10_format {
                Some(f) => f == "near",
                None => raid_type == "raid10" || raid_type == "raid10_near",
            };
            if near && p.raid10_use_near_sets {
                return Err(Args::error(
                    "RAID10 format 'near' and 'raid10_use_near_sets' are incompatible",
                ));
            }
        }
        if !flags_valid(level, raid_type, &p) {
            return Err(Args::error("Invalid flags combination"));
        }

        // parse_dev_params.
        args.next("")?;
        let mut devs = Vec::new();
        for idx in 0..raid_disks {
            let meta = args.next("")?;
            let meta = if meta == "-" {
                None
            } else {
                Some(DeviceRef::from_token(meta).map_err(|e| args.error_last(e))?)
            };
            let data = args.next("")?;
            let data = if data == "-" {
                if p.rebuild.contains(&idx) {
                    return Err(args.error_last("Drive designated for rebuild not specified"));
                }
                if meta.is_some() {
                    return Err(args.error_last("No data device supplied with metadata device"));
                }
                None
            } else {
                Some(DeviceRef::from_token(data).map_err(|e| args.error_last(e))?)
            };
            devs.push(RaidDev { meta, data });
        }

        // rs_set_dev_and_array_sectors.
        let delta = p.delta_disks.unwrap_or(0);
        if is_raid10 {
            let copies = u64::try_from(p.raid10_copies.unwrap_or(2)).unwrap_or(2);
            if delta < 0 {
                return Err(Args::error("Bogus raid10 data copies or delta disks"));
            }
            let stripes = u64::from(raid_disks);
            let dev = u128::from(len.0) * u128::from(copies);
            if dev % u128::from(stripes) != 0 {
                return Err(Args::error(
                    "Target length not divisible by number of data devices",
                ));
            }
            let array = (u128::from(stripes) + u128::from(delta.unsigned_abs()))
                * (dev / u128::from(stripes));
            if array % u128::from(copies) != 0 {
                return Err(Args::error(
                    "Target length not divisible by number of data devices",
                ));
            }
        } else if !is_raid1 && len.0 % u64::from(raid_disks - parity) != 0 {
            return Err(Args::error(
                "Target length not divisible by number of data devices",
            ));
        }
        Ok(RaidArgs {
            raid_type,
            chunk_size,
            params: p,
            devs,
        })
    }

    /// The devices in argument order: the journal device, then each pair.
    #[must_use]
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .params
            .journal_dev
            .iter()
            .map(|d| d.0.clone())
            .collect();
        for d in &self.devs {
            v.extend(d.meta.iter().chain(&d.data).map(|d| d.0.clone()));
        }
        v
    }
}

/// `rs_check_for_valid_flags`: the flags each level takes.
fn flags_valid(level: u32, raid_type: &str, p: &RaidParams) -> bool {
    let given = [
        ("sync", p.sync),
        ("nosync", p.nosync),
        ("rebuild", !p.rebuild.is_empty()),
        ("daemon_sleep", p.daemon_sleep.is_some()),
        ("min_recovery_rate", p.min_recovery_rate.is_some()),
        ("max_recovery_rate", p.max_recovery_rate.is_some()),
        ("max_write_behind", p.max_write_behind_kb.is_some()),
        ("write_mostly", !p.write_mostly.is_empty()),
        ("stripe_cache", p.stripe_cache.is_some()),
        ("region_size", p.region_size.is_some()),
        ("raid10_copies", p.raid10_copies.is_some()),
        ("raid10_format", p.raid10_format.is_some()),
        ("delta_disks", p.delta_disks.is_some()),
        ("data_offset", p.data_offset.is_some()),
        ("raid10_use_near_sets", p.raid10_use_near_sets),
        ("journal_dev", p.journal_dev.is_some()),
        ("journal_mode", p.journal_mode.is_some()),
    ];
    let common = [
        "sync",
        "nosync",
        "rebuild",
        "daemon_sleep",
        "min_recovery_rate",
        "max_recovery_rate",
        "region_size",
        "delta_disks",
        "data_offset",
    ];
    let valid: Vec<&str> = match level {
        0 => vec!["data_offset"],
        1 => [&common[..], &["max_write_behind", "write_mostly"]].concat(),
        10 => [
            &common[..],
            &["raid10_copies", "raid10_format", "raid10_use_near_sets"],
        ]
        .concat(),
        _ => {
            let mut v = [
                &common[..],
                &["stripe_cache", "journal_dev", "journal_mode"],
            ]
            .concat();
            if raid_type.starts_with("raid6") {
                v.retain(|f| *f != "nosync");
            }
            v
        }
    };
    given.iter().all(|(f, set)| !set || valid.contains(f))
}

impl fmt::Display for RaidArgs {
    /// `raid_status` STATUSTYPE_TABLE, in its order and with its parameter count.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        let no_args =
            usize::from(p.sync) + usize::from(p.nosync) + usize::from(p.raid10_use_near_sets);
        let one_arg = [
            p.daemon_sleep.is_some(),
            p.min_recovery_rate.is_some(),
            p.max_recovery_rate.is_some(),
            p.max_write_behind_kb.is_some(),
            p.stripe_cache.is_some(),
            p.region_size.is_some(),
            p.raid10_copies.is_some(),
            p.raid10_format.is_some(),
            p.delta_disks.is_some(),
            p.data_offset.is_some(),
            p.journal_dev.is_some(),
            p.journal_mode.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        let count = 1 + no_args + 2 * (one_arg + p.rebuild.len() + p.write_mostly.len());
        write!(f, "{} {count} {}", self.raid_type, self.chunk_size)?;
        if p.sync {
            f.write_str(" sync")?;
        }
        if p.nosync {
            f.write_str(" nosync")?;
        }
        for i in &p.rebuild {
            write!(f, " rebuild {i}")?;
        }
        if let Some(v) = p.daemon_sleep {
            write!(f, " daemon_sleep {v}")?;
        }
        if let Some(v) = p.min_recovery_rate {
            write!(f, " min_recovery_rate {v}")?;
        }
        if let Some(v) = p.max_recovery_rate {
            write!(f, " max_recovery_rate {v}")?;
        }
        for i in &p.write_mostly {
            write!(f, " write_mostly {i}")?;
        }
        if let Some(v) = p.max_write_behind_kb {
            write!(f, " max_write_behind {v}")?;
        }
        if let Some(v) = p.stripe_cache {
            write!(f, " stripe_cache {v}")?;
        }
        if let Some(v) = p.region_size {
            write!(f, " region_size {v}")?;
        }
        if let Some(v) = p.raid10_copies {
            write!(f, " raid10_copies {v}")?;
        }
        if let Some(v) = p.raid10_format {
            write!(f, " raid10_format {v}")?;
        }
        if let Some(v) = p.delta_disks {
            write!(f, " delta_disks {v}")?;
        }
        if let Some(v) = p.data_offset {
            write!(f, " data_offset {v}")?;
        }
        if let Some(v) = &p.journal_dev {
            write!(f, " journal_dev {v}")?;
        }
        if let Some(v) = p.journal_mode {
            write!(f, " journal_mode {v}")?;
        }
        write!(f, " {}", self.devs.len())?;
        let name = |d: &Option<DeviceRef>| d.as_ref().map_or("-".to_string(), ToString::to_string);
        for d in &self.devs {
            write!(f, " {} {}", name(&d.meta), name(&d.data))?;
        }
        Ok(())
    }
}

/// A constructed raid1 set without metadata: its legs, in sync.
#[derive(Debug)]
pub struct Raid1 {
    legs: Legs,
    nr: usize,
}

impl Raid1 {
    /// `raid_ctr`'s device work, then a set dmemu can execute: raid1, no metadata devices,
    /// every leg present, no rebuild or reshape. Every device is looked up first, in the
    /// kernel's order (each slot's metadata device, then its data device); each data device
    /// must hold the target's length (`Component device(s) too small`). A new raid10 set is
    /// refused as 6.12's md refuses it at run (`unsupported raid10 layout`).
    pub fn new(args: &RaidArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Raid1> {
        let lookup = |d: &DeviceRef, what: &str| {
            ctx.volume(d).map_err(|e| match e {
                // A missing device (no such file, no such mapped device) keeps ENOENT.
                e if e.errno() == crate::error::errno::ENOENT => e,
                e => Error::invalid("raid", format!("{what} ({e})")),
            })
        };
        let mut data = Vec::new();
        for d in &args.devs {
            if let Some(m) = &d.meta {
                lookup(m, "RAID metadata device lookup failure")?;
            }
            if let Some(dd) = &d.data {
                data.push((dd.clone(), lookup(dd, "RAID device lookup failure")?));
            }
        }
        if args.raid_type.starts_with("raid10") {
            return Err(Error::invalid(
                "raid",
                "Failed to run raid array (md/raid10: unsupported raid10 layout, as 6.12 \
                 answers a new raid10 set)",
            ));
        }
        if args.raid_type == "raid1" && data.iter().any(|(_, v)| v.size().0 < len.0) {
            return Err(Error::invalid("raid", "Component device(s) too small"));
        }
        let p = &args.params;
        let refuse =
            |op: &'static str| -> Result<Raid1> { Err(Error::Unsupported { target: "raid", op }) };
        if args.raid_type != "raid1" {
            return refuse(
                "I/O of raid levels other than raid1 (parsed and printed, not executed)",
            );
        }
        if args.devs.iter().any(|d| d.meta.is_some()) {
            return refuse(
                "raid1 with metadata devices (md superblocks and the bitmap are not written)",
            );
        }
        if data.len() != args.devs.len() {
            return refuse("raid1 with a missing leg");
        }
        if !p.rebuild.is_empty() || p.delta_disks.is_some() || p.data_offset.is_some_and(|o| o != 0)
        {
            return refuse("raid1 rebuild, reshape or data_offset");
        }
        let nr = data.len();
        let legs = Legs::over(data.into_iter().map(|(_, v)| (v, 0)).collect(), len)?;
        Ok(Raid1 { legs, nr })
    }
}

crate::targets::mirror::volume_through_legs!(Raid1);

impl Target for Raid1 {
    /// `raid_status` STATUSTYPE_INFO of an idle, in-sync raid1 set without metadata:
    /// `raid1 <n> A.. <len>/<len> idle 0 0 -`.
    fn status(&self) -> String {
        let len = self.legs.size().0;
        format!(
            "raid1 {} {} {len}/{len} idle 0 0 -",
            self.nr,
            "A".repeat(self.nr)
        )
    }
}
