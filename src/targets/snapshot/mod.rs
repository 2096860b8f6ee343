//! `snapshot`, `snapshot-merge` and `snapshot-origin` (kernel dm-snap.c, v1.16.0 / v1.5.0 /
//! v1.9.0; exception stores in dm-exception-store.c, dm-snap-persistent.c,
//! dm-snap-transient.c). This file parses the arguments with the kernel's checks and words
//! and prints what 6.12's STATUSTYPE_TABLE prints; `store` holds the exception stores,
//! `target` the snapshot's copy-on-write I/O, `origin` snapshot-origin and `merge` the merge.
//!
//! Table args:
//! * `snapshot` / `snapshot-merge`:
//!   `<origin> <cow> <P|PO|N> <chunk_sectors> [<#features> <feature>...]`
//! * `snapshot-origin`: `<origin>`

use std::fmt;

use crate::table::args::{ArgResult, Args};

use super::DeviceRef;

mod merge;
mod origin;
pub mod store;
mod target;

pub use merge::MergeStep;
pub use origin::{Origin, OriginSnapshots};
pub use target::Snapshot;

/// The exception store named by the third argument (`dm_exception_store_create`: only the
/// first character counts, upper-cased; a `P` store takes one option character).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreType {
    /// `P`: persistent store on the COW device.
    Persistent,
    /// `PO`: persistent, and userspace handles overflow (the snapshot reports `Overflow`
    /// instead of being invalidated when the COW fills up).
    PersistentOverflow,
    /// `N`: transient store (exceptions kept in memory only).
    Transient,
}

impl StoreType {
    /// The word the kernel prints (`persistent_status` / `transient_status`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StoreType::Persistent => "P",
            StoreType::PersistentOverflow => "PO",
            StoreType::Transient => "N",
        }
    }
}

/// Which discard features are on. `discard_passdown_origin` is only valid together with
/// `discard_zeroes_cow` (`parse_snapshot_features`), so there are three states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotDiscard {
    /// No feature: discards are not supported by the snapshot.
    #[default]
    Off,
    /// `discard_zeroes_cow`: a discard zeroes the COW chunks it covers.
    ZeroesCow,
    /// `discard_zeroes_cow discard_passdown_origin`: ... and is also passed to the origin.
    ZeroesCowPassdownOrigin,
}

/// The kernel's error when the exception store cannot be made. `snapshot_ctr` overwrites
/// whatever `dm_exception_store_create` said with this, so it is what dmesg shows; the
/// store's own reason follows it after a colon.
pub const STORE_ERROR: &str = "Couldn't create exception store";

/// `INT_MAX >> SECTOR_SHIFT`: the largest chunk size `dm_exception_store_set_chunk_size`
/// accepts.
pub const MAX_CHUNK_SECTORS: u32 = i32::MAX.unsigned_abs() >> 9;

/// Whether the line is a `snapshot` or a `snapshot-merge` (same grammar, two extra rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// `snapshot`.
    Snapshot,
    /// `snapshot-merge`: merges the COW back into the origin; persistent stores only.
    Merge,
}

/// Parsed `snapshot` / `snapshot-merge` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotArgs {
    /// The origin device (read through for chunks that have no exception).
    pub origin: DeviceRef,
    /// The COW device holding the exception store.
    pub cow: DeviceRef,
    /// The exception store type.
    pub store: StoreType,
    /// Chunk size in sectors; 0 = take it from the persistent header (or the default 32).
    /// The kernel then prints the size it settled on, and so does a constructed target.
    pub chunk_size: u32,
    /// Discard features.
    pub discard: SnapshotDiscard,
}

impl SnapshotArgs {
    /// Kernel target type name of a snapshot.
    pub const TYPE: &'static str = "snapshot";
    /// Kernel target type name of a merging snapshot.
    pub const MERGE_TYPE: &'static str = "snapshot-merge";

    /// Parse like `snapshot_ctr`, in its order: argument count, features, the devices (here
    /// only: not the same name), the store (type, chunk size, option), then the rules that
    /// depend on the store. Tokens after the feature group are ignored, as the kernel does.
    /// Checks that need the devices (chunk size a multiple of their logical block size) are
    /// left to construction.
    pub fn parse(args: &mut Args<'_>, kind: SnapshotKind) -> ArgResult<SnapshotArgs> {
        if args.len() < 4 {
            return Err(Args::error("requires 4 or more arguments"));
        }
        let origin = DeviceRef::parse(args, "requires 4 or more arguments")?;
        let cow_at = args.position();
        let cow = DeviceRef::parse(args, "requires 4 or more arguments")?;
        let store_at = args.position();
        let store_token = args.next("requires 4 or more arguments")?;
        let chunk_at = args.position();
        let chunk_token = args.next("requires 4 or more arguments")?;

        let discard = parse_features(args)?;

        if origin == cow {
            return Err(args.error_at(cow_at, "COW device cannot be the same as origin device"));
        }

        let store_err = |at: usize, why: &str| args.error_at(at, format!("{STORE_ERROR}: {why}"));
        let mut chars = store_token.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase());
        let options = chars.as_str();
        let base = match first {
            Some('P') => StoreType::Persistent,
            Some('N') => StoreType::Transient,
            _ => return Err(store_err(store_at, "Exception store type is not P or N")),
        };
        let chunk_size = parse_chunk_size(chunk_token).map_err(|why| store_err(chunk_at, why))?;
        // persistent_ctr looks at the first option character only; transient_ctr ignores
        // its options.
        let store = match (base, options.chars().next()) {
            (StoreType::Persistent, Some(c)) if c.eq_ignore_ascii_case(&'O') => {
                StoreType::PersistentOverflow
            }
            (StoreType::Persistent, Some(_)) => {
                return Err(store_err(store_at, "Unsupported persistent store option"))
            }
            (other, _) => other,
        };
        if kind == SnapshotKind::Merge && store == StoreType::Transient {
            return Err(args.error_at(
                store_at,
                "Snapshot exception store does not support snapshot-merge.",
            ));
        }
        if store == StoreType::Transient && chunk_size == 0 {
            return Err(args.error_at(chunk_at, "Chunk size not set"));
        }
        Ok(SnapshotArgs {
            origin,
            cow,
            store,
            chunk_size,
            discard,
        })
    }
}

/// `set_chunk_size` + `dm_exception_store_set_chunk_size` without the device checks.
fn parse_chunk_size(token: &str) -> Result<u32, &'static str> {
    let chunk = crate::table::args::parse_kstrtoull(token)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or("Invalid chunk size")?;
    if chunk == 0 {
        return Ok(0);
    }
    if !chunk.is_power_of_two() {
        return Err("Chunk size is not a power of 2");
    }
    if chunk > MAX_CHUNK_SECTORS {
        return Err("Chunk size is too high");
    }
    Ok(chunk)
}

/// `parse_snapshot_features`. Note the kernel checks the dependency of
/// `discard_passdown_origin` even after an unknown word, and that message wins.
fn parse_features(args: &mut Args<'_>) -> ArgResult<SnapshotDiscard> {
    if args.remaining() == 0 {
        return Ok(SnapshotDiscard::Off);
    }
    let mut group = args.group(0..=2, "Invalid number of feature arguments")?;
    let (mut zeroes, mut passdown) = (false, false);
    let mut unknown = None;
    while group.remaining() > 0 {
        let at = group.position();
        let word = group.next("Invalid number of feature arguments")?;
        if word.eq_ignore_ascii_case("discard_zeroes_cow") {
            zeroes = true;
        } else if word.eq_ignore_ascii_case("discard_passdown_origin") {
            passdown = true;
        } else {
            unknown = Some(at);
            break;
        }
    }
    if passdown && !zeroes {
        return Err(Args::error(
            "discard_passdown_origin feature depends on discard_zeroes_cow",
        ));
    }
    if let Some(at) = unknown {
        return Err(args.error_at(at, "Unrecognised feature requested"));
    }
    Ok(match (zeroes, passdown) {
        (false, _) => SnapshotDiscard::Off,
        (true, false) => SnapshotDiscard::ZeroesCow,
        (true, true) => SnapshotDiscard::ZeroesCowPassdownOrigin,
    })
}

impl fmt::Display for SnapshotArgs {
    /// `snapshot_status(STATUSTYPE_TABLE)`: `"%s %s"`, the store's `" %s %llu"`, then
    /// `" %u"` and the features in fixed order when any is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.origin,
            self.cow,
            self.store.as_str(),
            self.chunk_size
        )?;
        match self.discard {
            SnapshotDiscard::Off => Ok(()),
            SnapshotDiscard::ZeroesCow => f.write_str(" 1 discard_zeroes_cow"),
            SnapshotDiscard::ZeroesCowPassdownOrigin => {
                f.write_str(" 2 discard_zeroes_cow discard_passdown_origin")
            }
        }
    }
}

/// Parsed `snapshot-origin` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginArgs {
    /// The origin device.
    pub origin: DeviceRef,
}

impl OriginArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "snapshot-origin";

    /// Parse like `origin_ctr`: exactly one argument.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<OriginArgs> {
        if args.len() != 1 {
            return Err(Args::error("origin: incorrect number of arguments"));
        }
        let origin = DeviceRef::parse(args, "origin: incorrect number of arguments")?;
        Ok(OriginArgs { origin })
    }
}

impl fmt::Display for OriginArgs {
    /// `origin_status(STATUSTYPE_TABLE)`: the device.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod io_tests;
