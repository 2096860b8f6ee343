//! The emulator's `/dev` and `/dev/mapper`: resolves the device references in tables to
//! volumes. A reference is, in this order: a mapped device defined earlier (`name` or
//! `/dev/mapper/name`), a volume the caller registered by name, a `major:minor` the user
//! bound to a file, or else a path to an image file or block device.

use std::any::Any;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::{SharedClock, SystemClock};
use crate::error::{Error, Result};
use crate::mapped_device::MappedDevice;
use crate::table::{DeviceSpec, TableMode};
use crate::targets::crypt::Keyring;
use crate::targets::snapshot::OriginSnapshots;
use crate::targets::{DeviceAt, DeviceRef, Target};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_range, Access, FileVolume, MmapVolume, SharedVolume};

/// How image files opened read-only are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backing {
    /// Memory-map regular files opened read-only (fastest for reads), pread otherwise.
    #[default]
    MmapReadOnly,
    /// Always pread/pwrite.
    Pread,
}

/// Resolves device references; owns the mapped devices created through it.
#[derive(Debug, Default)]
pub struct Registry {
    access: Option<Access>,
    backing: Backing,
    bindings: BTreeMap<String, PathBuf>,
    named: Mutex<BTreeMap<String, SharedVolume>>,
    devices: Mutex<BTreeMap<String, Arc<MappedDevice>>>,
    files: Mutex<BTreeMap<PathBuf, SharedVolume>>,
    clock: RegistryClock,
    keyring: Keyring,
    /// The kernel's `_origins` hash: each origin volume's snapshot list, so that writes
    /// through a `snapshot-origin` (or a merging snapshot) copy out to every snapshot of
    /// that origin. Keyed by volume identity (the same file or device resolves to the same
    /// `Arc`).
    origins: Mutex<Vec<(SharedVolume, Arc<OriginSnapshots>)>>,
}

/// The clock targets built through a registry read time from (system clock by default).
#[derive(Debug, Clone)]
struct RegistryClock(SharedClock);

impl Default for RegistryClock {
    fn default() -> RegistryClock {
        RegistryClock(Arc::new(SystemClock::new()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `s` is `"%u:%u"` with nothing after (the kernel's `dm_devt_from_path` test).
#[must_use]
pub fn is_major_minor(s: &str) -> bool {
    let Some((maj, min)) = s.split_once(':') else {
        return false;
    };
    let num = |t: &str| {
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && t.parse::<u32>().is_ok()
    };
    num(maj) && num(min)
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

    /// Make `volume` available to tables under `name`.
    pub fn insert_volume(&self, name: &str, volume: SharedVolume) {
        lock(&self.named).insert(name.to_string(), volume);
    }

    /// Build and register a mapped device.
    pub fn create(&self, spec: &DeviceSpec) -> Result<Arc<MappedDevice>> {
        if self.mapped(&spec.name).is_some() {
            return Err(Error::invalid(
                "device name",
                format!("{} already exists", spec.name),
            ));
        }
        let dev = Arc::new(MappedDevice::new(
            &spec.name,
            spec.table.clone(),
            spec.mode,
            self,
        )?);
        lock(&self.devices).insert(spec.name.clone(), Arc::clone(&dev));
        Ok(dev)
    }

    /// Create devices in order (a device may use those before it).
    pub fn create_all(&self, specs: &[DeviceSpec]) -> Result<Vec<Arc<MappedDevice>>> {
        specs.iter().map(|s| self.create(s)).collect()
    }

    /// A mapped device by name (`name` or `/dev/mapper/name`).
    #[must_use]
    pub fn mapped(&self, name: &str) -> Option<Arc<MappedDevice>> {
        let name = name.strip_prefix("/dev/mapper/").unwrap_or(name);
        lock(&self.devices).get(name).cloned()
    }

    /// The single target of a one-line mapped device, if it is a `T` (typed links between
    /// targets: a thin device finds its pool, a snapshot its origin).
    pub fn target<T: Target + Send + Sync>(&self, dev: &DeviceRef) -> Result<Arc<T>> {
        let mapped = self
            .mapped(&dev.0)
            .ok_or_else(|| Error::NoDevice(dev.0.clone()))?;
        let [seg] = mapped.segments() else {
            return Err(Error::invalid(
                "device",
                format!("{} must have exactly one target", dev.0),
            ));
        };
        let any: Arc<dyn Any + Send + Sync> = Arc::clone(&seg.target) as Arc<dyn Target>;
        any.downcast::<T>().map_err(|_| {
            Error::invalid(
                "device",
                format!("{} is not a {} device", dev.0, std::any::type_name::<T>()),
            )
        })
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

    /// Resolve a device reference to a volume.
    pub fn volume(&self, dev: &DeviceRef) -> Result<SharedVolume> {
        let name = dev.0.as_str();
        if let Some(m) = self.mapped(name) {
            return Ok(m as SharedVolume);
        }
        if name.starts_with("/dev/mapper/") {
            return Err(Error::NoDevice(format!(
                "{name} (no device of that name is defined in this spec)"
            )));
        }
        if let Some(v) = lock(&self.named).get(name) {
            return Ok(Arc::clone(v));
        }
        if is_major_minor(name) {
            let path = self.bindings.get(name).ok_or_else(|| {
                Error::NoDevice(format!("{name} (bind it to a file with --map {name}=PATH)"))
            })?;
            return self.file(path);
        }
        self.file(Path::new(name))
    }

    /// Resolve `d` and check that `[offset, offset + len)` lies on it (the kernel's
    /// `device_area_is_invalid`).
    pub fn device_area(&self, d: &DeviceAt, len: SectorCount) -> Result<SharedVolume> {
        let v = self.volume(&d.device)?;
        check_range(v.size(), Sector(d.offset.0), len).map_err(|_| {
            Error::invalid(
                "device",
                format!(
                    "{} too small for target: start={}, len={}, dev_size={}",
                    d.device,
                    d.offset,
                    len,
                    v.size()
                ),
            )
        })?;
        Ok(v)
    }

    fn file(&self, path: &Path) -> Result<SharedVolume> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(v) = lock(&self.files).get(&key) {
            return Ok(Arc::clone(v));
        }
        let v = self.open_file(path)?;
        lock(&self.files).insert(key, Arc::clone(&v));
        Ok(v)
    }

    fn open_file(&self, path: &Path) -> Result<SharedVolume> {
        let is_regular = std::fs::metadata(path)
            .map_err(|e| Error::NoDevice(format!("{} ({e})", path.display())))?
            .is_file();
        match self.access {
            Some(Access::ReadOnly) => {
                if self.backing == Backing::MmapReadOnly && is_regular {
                    Ok(Arc::new(MmapVolume::open(path)?))
                } else {
                    Ok(Arc::new(FileVolume::open(path, Access::ReadOnly)?))
                }
            }
            Some(Access::ReadWrite) => Ok(Arc::new(FileVolume::open(path, Access::ReadWrite)?)),
            None => match FileVolume::open(path, Access::ReadWrite) {
                Err(Error::Io { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    Ok(Arc::new(FileVolume::open(path, Access::ReadOnly)?))
                }
                other => Ok(Arc::new(other?)),
            },
        }
    }
}

/// Whether a device spec is read-only, for callers choosing file access.
#[must_use]
pub fn spec_access(mode: TableMode) -> Access {
    match mode {
        TableMode::ReadOnly => Access::ReadOnly,
        TableMode::ReadWrite => Access::ReadWrite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_minor_pattern() {
        assert!(is_major_minor("8:16"));
        assert!(!is_major_minor("8:16x"));
        assert!(!is_major_minor("/dev/sda"));
        assert!(!is_major_minor(":1"));
    }
}
