//! The emulator's dm-ioctl: named mapped devices (253:N) with the kernel's lifecycle —
//! create, load, resume, suspend, clear, remove, rename, uuid, info, deps, list, status,
//! table, message, events — and the `BuildContext` that resolves the device references in
//! tables (resolve.rs).
//!
//! Locking follows dm-ioctl: one lock over the name, uuid and minor maps (`_hash_lock`),
//! never held while a device suspends or I/O drains; each device serialises its own
//! suspend, resume and table swap (`md->suspend_lock`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::mapped_device::{DeviceInfo, LoadedTable, MappedDevice, Slot, SuspendFlags, DM_MAJOR};
use crate::table::{DeviceSpec, Table, TableLine, TableMode};
use crate::targets::context::{typed_target, BuildContext};
use crate::targets::crypt::Keyring;
use crate::targets::snapshot::OriginSnapshots;
use crate::targets::thin::PoolTable;
use crate::targets::{DeviceRef, Keys, Target, TargetSpec};
use crate::units::{Sector, SectorCount};
use crate::volume::{Access, FileVolume, SharedVolume};

mod resolve;

use resolve::LoadContext;
pub use resolve::{is_major_minor, parse_major_minor};

/// How image files opened read-only are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backing {
    /// Memory-map regular files opened read-only (fastest for reads), pread otherwise.
    #[default]
    MmapReadOnly,
    /// Always pread/pwrite.
    Pread,
}

/// How `remove` treats a device that is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RemoveMode {
    /// Fail with EBUSY (`dmsetup remove`).
    #[default]
    Normal,
    /// First replace the table by an `error` table of the same size so users of the device
    /// see EIO, then remove if nothing holds it open (`dmsetup remove --force`).
    Force,
    /// Remove when the last opener closes it (`dmsetup remove --deferred`).
    Deferred,
}

/// The deepest stack of mapped devices a table may build (a device over a device ... over
/// files counts its levels). I/O recurses once per level; this bound keeps any path well
/// inside a 2 MiB thread stack.
pub const MAX_STACK_DEPTH: usize = 64;

/// Longest device name (`DM_NAME_LEN` less its NUL).
pub const MAX_NAME_LEN: usize = 127;
/// Longest device uuid (`DM_UUID_LEN` less its NUL).
pub const MAX_UUID_LEN: usize = 128;

/// One device a table uses (`dmsetup deps`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dep {
    /// The reference as the table wrote it.
    pub reference: String,
    /// The mapped device's name and number, when it is one.
    pub mapped: Option<(String, (u32, u32))>,
}

#[derive(Debug, Default)]
struct DeviceHash {
    by_name: BTreeMap<String, Arc<MappedDevice>>,
    /// uuid → name.
    uuids: BTreeMap<String, String>,
    minors: BTreeSet<u32>,
    /// No minor below this is free (`idr_alloc` hands out the lowest free one).
    free_from: u32,
}

/// Resolves device references and owns the mapped devices created through it.
#[derive(Debug, Default)]
pub struct Registry {
    access: Option<Access>,
    backing: Backing,
    bindings: BTreeMap<String, PathBuf>,
    named: Mutex<BTreeMap<String, SharedVolume>>,
    hash: Mutex<DeviceHash>,
    files: Mutex<BTreeMap<PathBuf, OpenFile>>,
    clock: RegistryClock,
    keyring: Keyring,
    /// The kernel's `_origins` hash: each origin volume's snapshot list, keyed by volume
    /// identity (the same file or device resolves to the same `Arc`).
    origins: Mutex<Vec<(SharedVolume, Arc<OriginSnapshots>)>>,
    /// The kernel's `dm_thin_pool_table`: the pool object of each metadata device.
    pools: Arc<PoolTable>,
}

/// An image file a registry opened: the volume tables get, and the file handle when it is
/// one (its size is read again at each table load).
type OpenFile = (SharedVolume, Option<Arc<FileVolume>>);

/// The clock targets built through a registry read time from (system clock by default).
#[derive(Debug, Clone)]
struct RegistryClock(SharedClock);

impl Default for RegistryClock {
    fn default() -> RegistryClock {
        RegistryClock(Arc::new(SystemClock::new()))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::invalid(
            "device name",
            format!("{}: {reason}", crate::error::quote(name)),
        ))
    };
    if name.is_empty() {
        return bad("name not supplied when creating device");
    }
    if name.contains('/') {
        return bad("device name cannot contain '/'");
    }
    if name == "control" || name == "." || name == ".." {
        return bad("device name cannot be \"control\", \".\", or \"..\"");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} bytes"));
    }
    Ok(())
}

fn check_uuid(uuid: &str) -> Result<()> {
    if uuid.len() > MAX_UUID_LEN {
        return Err(Error::invalid(
            "device uuid",
            format!("longer than {MAX_UUID_LEN} bytes"),
        ));
    }
    Ok(())
}

impl Registry {
    /// A registry that opens files read-write (falling back to read-only where the file
    /// cannot be written).
    #[must_use]
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Open every file with `access`.
    #[must_use]
    pub fn with_access(mut self, access: Access) -> Registry {
        self.access = Some(access);
        self
    }

    /// Choose how read-only files are read.
    #[must_use]
    pub fn with_backing(mut self, backing: Backing) -> Registry {
        self.backing = backing;
        self
    }

    /// Build time-dependent targets (delay, flakey) on `clock` instead of the system clock.
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Registry {
        self.clock = RegistryClock(clock);
        self
    }

    /// The clock targets built through this registry read time from.
    #[must_use]
    pub fn clock(&self) -> SharedClock {
        Arc::clone(&self.clock.0)
    }

    /// Bind `major:minor` to an image file.
    pub fn bind(&mut self, major_minor: &str, path: impl Into<PathBuf>) -> Result<()> {
        if !is_major_minor(major_minor) {
            return Err(Error::invalid(
                "--map",
                format!(
                    "{} is not <major>:<minor>",
                    crate::error::quote(major_minor)
                ),
            ));
        }
        self.bindings.insert(major_minor.to_string(), path.into());
        Ok(())
    }

    /// The keys that crypt tables name by keyring reference (`:<size>:<type>:<desc>`).
    #[must_use]
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// dm-thin's `no_space_timeout` module parameter for pools created from now on: how
    /// long a full pool in `queue_if_no_space` mode holds writes that need a block before
    /// failing them (default 60 s; zero: for ever).
    pub fn set_thin_no_space_timeout(&self, timeout: std::time::Duration) {
        self.pools.set_no_space_timeout(timeout);
    }

    /// Make `volume` available to tables under `name`.
    pub fn insert_volume(&self, name: &str, volume: SharedVolume) {
        lock(&self.named).insert(name.to_string(), volume);
    }

    /// The snapshot list of `origin` (created empty on first use), shared by every snapshot
    /// and snapshot-origin target over that volume.
    pub fn origin_snapshots(&self, origin: &SharedVolume) -> Arc<OriginSnapshots> {
        let mut origins = lock(&self.origins);
        let same = |v: &SharedVolume| std::ptr::addr_eq(Arc::as_ptr(v), Arc::as_ptr(origin));
        if let Some((_, links)) = origins.iter().find(|(v, _)| same(v)) {
            return Arc::clone(links);
        }
        let links = Arc::new(OriginSnapshots::default());
        origins.push((Arc::clone(origin), Arc::clone(&links)));
        links
    }

    /// The single target of a one-line mapped device, if it is a `T` (typed links between
    /// targets: a thin device finds its pool, a snapshot its origin).
    pub fn target<T: Target + Send + Sync>(&self, dev: &DeviceRef) -> Result<Arc<T>> {
        typed_target::<T>(&LoadContext::new(self, None), dev)
    }

    /// A context for building targets outside any device (library use: `spec.build(len,
    /// &registry.context())`). Devices it opens are not held open.
    #[must_use]
    pub fn context(&self) -> impl BuildContext + '_ {
        LoadContext::new(self, None)
    }

    // ----- dm-ioctl -----

    /// `DM_DEV_CREATE`: a device with no table. Names and uuids must be unused (EBUSY, as
    /// `dm_hash_insert` answers); the minor is the lowest free one, or `minor` if given
    /// (EBUSY when taken).
    pub fn create_device(
        &self,
        name: &str,
        uuid: Option<&str>,
        minor: Option<u32>,
    ) -> Result<Arc<MappedDevice>> {
        check_name(name)?;
        let uuid = uuid.filter(|u| !u.is_empty());
        if let Some(u) = uuid {
            check_uuid(u)?;
        }
        let mut hash = lock(&self.hash);
        if hash.by_name.contains_key(name) {
            return Err(Error::Busy {
                what: name.to_string(),
                reason: "a device of that name already exists".to_string(),
            });
        }
        if let Some(u) = uuid {
            if hash.uuids.contains_key(u) {
                return Err(Error::Busy {
                    what: name.to_string(),
                    reason: format!("a device with uuid {u} already exists"),
                });
            }
        }
        let minor = match minor {
            // `specific_minor`: a taken minor is ENXIO (seen on 6.12), not EBUSY.
            Some(m) if hash.minors.contains(&m) => {
                return Err(Error::NoSuchDevice(format!(
                    "{name} ({DM_MAJOR}:{m}): minor number in use"
                )))
            }
            Some(m) => m,
            None => {
                let mut m = hash.free_from;
                for &used in hash.minors.range(m..) {
                    if used != m {
                        break;
                    }
                    m += 1;
                }
                hash.free_from = m + 1;
                m
            }
        };
        hash.minors.insert(minor);
        let dev = Arc::new(MappedDevice::new(name, uuid.map(str::to_string), minor));
        hash.by_name.insert(name.to_string(), Arc::clone(&dev));
        if let Some(u) = uuid {
            hash.uuids.insert(u.to_string(), name.to_string());
        }
        Ok(dev)
    }

    /// Remove the devices whose deferred remove is due (no longer open). The kernel does
    /// it at the last close; here the next registry call does it.
    fn sweep_deferred(&self) {
        let due: Vec<String> = lock(&self.hash)
            .by_name
            .values()
            .filter(|d| d.deferred_remove() && d.open_count() == 0)
            .map(|d| d.name())
            .collect();
        for name in due {
            let _ = self.remove(&name, RemoveMode::Normal);
        }
    }

    /// A mapped device by name, `/dev/mapper/NAME` or `253:N` (ENXIO when there is none).
    pub fn device(&self, name: &str) -> Result<Arc<MappedDevice>> {
        self.sweep_deferred();
        self.mapped(name)
            .ok_or_else(|| Error::NoSuchDevice(name.to_string()))
    }

    /// A mapped device by uuid.
    pub fn device_by_uuid(&self, uuid: &str) -> Result<Arc<MappedDevice>> {
        let hash = lock(&self.hash);
        hash.uuids
            .get(uuid)
            .and_then(|n| hash.by_name.get(n))
            .cloned()
            .ok_or_else(|| Error::NoSuchDevice(format!("uuid {uuid}")))
    }

    /// `DM_TABLE_LOAD`: construct `table` and put it in the device's inactive slot
    /// (replacing any table there). The kernel's checks apply: the table's own rules, its
    /// mode, and an immutable target type (thin-pool, verity, multipath) that a new table may
    /// not change except to `error`. Nothing changes when the load fails.
    pub fn load(&self, name: &str, table: Table, mode: TableMode) -> Result<()> {
        let dev = self.device(name)?;
        let loaded = self.build(&dev, table, mode)?;
        if let Some(old) = dev.immutable_type() {
            let new = loaded.immutable_type();
            let wildcard = loaded
                .table()
                .lines
                .iter()
                .any(|l| matches!(l.spec, TargetSpec::Error));
            if new != Some(old.as_str()) && !wildcard {
                return Err(Error::invalid(
                    "table",
                    format!("can't replace immutable target type {old}"),
                ));
            }
        }
        let old = dev.set_inactive(Arc::new(loaded));
        drop(old);
        Ok(())
    }

    /// Construct a table for `dev`, holding the devices it uses open, with the stack depth
    /// bounded.
    fn build(&self, dev: &MappedDevice, table: Table, mode: TableMode) -> Result<LoadedTable> {
        let ctx = LoadContext::new(self, Some(dev));
        let mut loaded = LoadedTable::new(&dev.name(), table, mode, &ctx)?;
        let holds = std::mem::take(&mut *lock(&ctx.holds));
        let mut memo = BTreeMap::new();
        let depth = 1 + holds
            .iter()
            .map(|g| device_depth(g.device(), &mut memo))
            .max()
            .unwrap_or(0);
        let above = self.height_above(dev);
        if depth + above > MAX_STACK_DEPTH {
            return Err(Error::invalid(
                "table",
                format!(
                    "devices would stack {} deep, more than the {MAX_STACK_DEPTH} dmemu allows",
                    depth + above
                ),
            ));
        }
        for g in holds {
            loaded.hold(g);
        }
        if let Some(e) = lock(&ctx.area_errors).drain(..).next() {
            loaded.refuse_resume(e);
        }
        Ok(loaded)
    }

    /// How many levels of devices sit on top of `dev` at most.
    fn height_above(&self, dev: &MappedDevice) -> usize {
        let all: Vec<Arc<MappedDevice>> = lock(&self.hash).by_name.values().cloned().collect();
        let mut memo: BTreeMap<u32, usize> = BTreeMap::new();
        height(dev.dev().1, &all, &mut memo, 0)
    }

    /// Whether `dev`'s tables use the device with minor `minor`, directly or through
    /// other devices.
    pub(crate) fn uses(&self, dev: &Arc<MappedDevice>, minor: Option<u32>) -> bool {
        let Some(minor) = minor else { return false };
        let mut seen = BTreeSet::new();
        let mut stack = vec![Arc::clone(dev)];
        while let Some(d) = stack.pop() {
            if d.dev().1 == minor {
                return true;
            }
            if !seen.insert(d.dev().1) {
                continue;
            }
            for t in [d.live_table(), d.inactive_table()].into_iter().flatten() {
                stack.extend(t.uses().cloned());
            }
        }
        false
    }

    /// `DM_DEV_SUSPEND` with the suspend flag.
    pub fn suspend(&self, name: &str, flags: SuspendFlags) -> Result<()> {
        self.device(name)?.suspend(flags)
    }

    /// `DM_DEV_SUSPEND` without it: resume, making an inactive table live first.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.device(name)?.resume().map(|_| ())
    }

    /// `DM_TABLE_CLEAR`: drop the inactive table.
    pub fn clear(&self, name: &str) -> Result<()> {
        let dev = self.device(name)?;
        let old = dev.take_inactive();
        drop(old);
        Ok(())
    }

    /// `DM_DEV_REMOVE`. An open device (by a user or by another device's table) is busy
    /// (EBUSY); see `RemoveMode` for `--force` and `--deferred`. The live table's targets
    /// are suspended first when the device was not (thin-pool commits), and every request
    /// still waiting fails with ENXIO.
    pub fn remove(&self, name: &str, mode: RemoveMode) -> Result<()> {
        let dev = self
            .mapped(name)
            .ok_or_else(|| Error::NoSuchDevice(name.to_string()))?;
        if mode == RemoveMode::Force && dev.open_count() > 0 {
            self.load_error_table(&dev)?;
        }
        let mut hash = lock(&self.hash);
        if dev.open_count() > 0 {
            if mode == RemoveMode::Deferred {
                dev.set_deferred_remove(true);
                return Ok(());
            }
            return Err(Error::Busy {
                what: dev.name(),
                reason: "device is open (in use by a user or another device)".to_string(),
            });
        }
        let key = dev.name();
        hash.by_name.remove(&key);
        if let Some(u) = dev.uuid() {
            hash.uuids.remove(&u);
        }
        let minor = dev.dev().1;
        hash.minors.remove(&minor);
        hash.free_from = hash.free_from.min(minor);
        drop(hash);
        dev.raise_event();
        let tables = dev.destroy();
        drop(tables);
        Ok(())
    }

    /// Replace a device's table by `error` lines of the same size, live at once
    /// (dmsetup's `_error_device` before a forced remove).
    fn load_error_table(&self, dev: &MappedDevice) -> Result<()> {
        let size = dev.live_table().map_or(SectorCount(0), |t| {
            use crate::volume::Volume;
            t.size()
        });
        if size.0 == 0 {
            return Ok(());
        }
        let table = Table {
            lines: vec![TableLine {
                start: Sector(0),
                len: size,
                spec: TargetSpec::Error,
            }],
        };
        let name = dev.name();
        self.load(&name, table, TableMode::ReadWrite)?;
        self.resume(&name)
    }

    /// `DM_REMOVE_ALL`: remove every device that nothing holds open, upper devices first;
    /// returns how many stayed because they are open.
    pub fn remove_all(&self, mode: RemoveMode) -> usize {
        loop {
            let devices: Vec<Arc<MappedDevice>> =
                lock(&self.hash).by_name.values().cloned().collect();
            let mut removed = false;
            let mut left = 0;
            for d in devices {
                if d.open_count() == 0 {
                    removed |= self.remove(&d.name(), RemoveMode::Normal).is_ok();
                } else if mode == RemoveMode::Force && self.remove(&d.name(), mode).is_ok() {
                    removed = true;
                } else {
                    left += 1;
                }
            }
            if !removed || left == 0 {
                return left;
            }
        }
    }

    /// `DM_DEV_RENAME`: a new name (EBUSY if taken).
    pub fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        check_name(new_name)?;
        let mut hash = lock(&self.hash);
        if hash.by_name.contains_key(new_name) {
            return Err(Error::Busy {
                what: name.to_string(),
                reason: format!(
                    "Unable to change name on mapped device {name} to one that already exists: {new_name}"
                ),
            });
        }
        let dev = hash.by_name.remove(name).ok_or_else(|| {
            Error::NoSuchDevice(format!(
                "Unable to rename non-existent device, {name} to {new_name}"
            ))
        })?;
        dev.set_name(new_name);
        if let Some(u) = dev.uuid() {
            hash.uuids.insert(u, new_name.to_string());
        }
        hash.by_name.insert(new_name.to_string(), Arc::clone(&dev));
        drop(hash);
        dev.raise_event();
        Ok(())
    }

    /// `DM_DEV_RENAME` with `DM_UUID_FLAG`: set the uuid of a device that has none.
    pub fn set_uuid(&self, name: &str, uuid: &str) -> Result<()> {
        check_uuid(uuid)?;
        let mut hash = lock(&self.hash);
        if hash.uuids.contains_key(uuid) {
            return Err(Error::Busy {
                what: name.to_string(),
                reason: format!(
                    "Unable to change uuid on mapped device {name} to one that already exists: {uuid}"
                ),
            });
        }
        let dev = hash.by_name.get(name).cloned().ok_or_else(|| {
            Error::NoSuchDevice(format!(
                "Unable to rename non-existent device, {name} to uuid {uuid}"
            ))
        })?;
        if let Some(old) = dev.uuid() {
            return Err(Error::invalid(
                "uuid",
                format!(
                    "Unable to change uuid of mapped device {name} to {uuid} because uuid is already set to {old}"
                ),
            ));
        }
        dev.set_uuid(uuid);
        hash.uuids.insert(uuid.to_string(), name.to_string());
        drop(hash);
        dev.raise_event();
        Ok(())
    }

    /// `DM_DEV_STATUS`.
    pub fn info(&self, name: &str) -> Result<DeviceInfo> {
        Ok(self.device(name)?.info())
    }

    /// `DM_LIST_DEVICES`: names and numbers, by name.
    #[must_use]
    pub fn list(&self) -> Vec<(String, (u32, u32))> {
        self.sweep_deferred();
        lock(&self.hash)
            .by_name
            .iter()
            .map(|(n, d)| (n.clone(), d.dev()))
            .collect()
    }

    /// `DM_TABLE_DEPS`: the devices the live (or inactive) table uses, each once, the
    /// device a table names last first (the kernel adds each new device at the head of
    /// the table's device list: `deps` of `0 512 linear 253:1 0` + `512 512 linear 253:6
    /// 0` is `(253, 6) (253, 1)` on 6.12).
    pub fn deps(&self, name: &str, which: Slot) -> Result<Vec<Dep>> {
        let dev = self.device(name)?;
        let table = match which {
            Slot::Live => dev.live_table(),
            Slot::Inactive => dev.inactive_table(),
        };
        Ok(table
            .map(|t| loaded_refs(&t))
            .unwrap_or_default()
            .into_iter()
            .rev()
            .map(|r| Dep {
                mapped: self.mapped(&r).map(|m| (m.name(), m.dev())),
                reference: r,
            })
            .collect())
    }

    /// `DM_TABLE_STATUS` of the live or inactive table: `dmsetup table [--inactive]`.
    pub fn table_text(&self, name: &str, which: Slot, keys: Keys) -> Result<String> {
        Ok(self.device(name)?.table_text_of(which, keys))
    }

    /// `dmsetup status [--inactive]`.
    pub fn status_text(&self, name: &str, which: Slot) -> Result<String> {
        Ok(self.device(name)?.status_text_of(which))
    }

    /// `DM_TARGET_MSG` to the live table.
    pub fn message(&self, name: &str, sector: Sector, argv: &[&str]) -> Result<String> {
        self.device(name)?.message(sector, argv)
    }

    /// `DM_DEV_WAIT`: wait until the device's event number differs from `event_nr` (at most
    /// `timeout`), returning the event number then.
    pub fn wait_event(&self, name: &str, event_nr: u32, timeout: Option<Duration>) -> Result<u32> {
        let dev = self.device(name)?;
        Ok(dev.events().wait_change(event_nr, timeout))
    }

    // ----- whole devices in one call -----

    /// Create, load and resume a device from a spec (`dmsetup create NAME TABLE`); on any
    /// failure the device is removed again, as libdm does.
    pub fn create(&self, spec: &DeviceSpec) -> Result<Arc<MappedDevice>> {
        let minor = match spec.minor {
            Some(m) => Some(
                u32::try_from(m)
                    .map_err(|_| Error::invalid("minor", format!("{m} does not fit in 32 bits")))?,
            ),
            None => None,
        };
        let dev = self.create_device(&spec.name, Some(spec.uuid.as_str()), minor)?;
        let r = self
            .load(&spec.name, spec.table.clone(), spec.mode)
            .and_then(|()| self.resume(&spec.name));
        if let Err(e) = r {
            let _ = self.remove(&spec.name, RemoveMode::Normal);
            return Err(e);
        }
        Ok(dev)
    }

    /// Create devices in order (a device may use those before it).
    pub fn create_all(&self, specs: &[DeviceSpec]) -> Result<Vec<Arc<MappedDevice>>> {
        specs.iter().map(|s| self.create(s)).collect()
    }
}

/// The references a loaded table's lines name, each once, in order.
fn loaded_refs(t: &LoadedTable) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in &t.table().lines {
        for r in line.spec.device_refs() {
            if seen.insert(r.clone()) {
                out.push(r);
            }
        }
    }
    out
}

/// Levels of mapped devices under `dev` (itself included; a device over files is 1). Loads
/// keep every stack within `MAX_STACK_DEPTH`, so the recursion is bounded; `memo` keeps
/// shared lower devices from being walked twice.
fn device_depth(dev: &MappedDevice, memo: &mut BTreeMap<u32, usize>) -> usize {
    if let Some(&d) = memo.get(&dev.dev().1) {
        return d;
    }
    let mut depth = 1;
    for t in [dev.live_table(), dev.inactive_table()]
        .into_iter()
        .flatten()
    {
        for d in t.uses() {
            depth = depth.max(1 + device_depth(d, memo));
        }
    }
    memo.insert(dev.dev().1, depth);
    depth
}

/// Levels of devices above the device with minor `minor` among `all`.
fn height(
    minor: u32,
    all: &[Arc<MappedDevice>],
    memo: &mut BTreeMap<u32, usize>,
    level: usize,
) -> usize {
    if let Some(&h) = memo.get(&minor) {
        return h;
    }
    if level > MAX_STACK_DEPTH {
        return level;
    }
    let mut h = 0;
    for d in all {
        let holds = [d.live_table(), d.inactive_table()]
            .into_iter()
            .flatten()
            .any(|t| t.uses().any(|u| u.dev().1 == minor));
        if holds {
            h = h.max(1 + height(d.dev().1, all, memo, level + 1));
        }
    }
    memo.insert(minor, h);
    h
}

#[cfg(test)]
mod tests;
