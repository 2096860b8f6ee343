//! Device references → volumes, and the `BuildContext` a table load hands its target
//! constructors. A reference is, in this order: a mapped device (`NAME`, `/dev/mapper/NAME`,
//! `253:N`), a volume the caller registered by name, a `major:minor` the user bound to a file,
//! or else a path to an image file or block device.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{lock, Registry};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::mapped_device::{MappedDevice, OpenGuard, DM_MAJOR};
use crate::targets::context::{BuildContext, TableEvents};
use crate::targets::crypt::Keyring;
use crate::targets::snapshot::OriginSnapshots;
use crate::targets::thin::PoolTable;
use crate::targets::{DeviceRef, Target};
use crate::volume::{Access, FileVolume, MmapVolume, SharedVolume};

use super::Backing;

/// Whether `s` is `"%u:%u"` with nothing after (the kernel's `dm_devt_from_path` test).
#[must_use]
pub fn is_major_minor(s: &str) -> bool {
    parse_major_minor(s).is_some()
}

/// `major:minor` as numbers.
#[must_use]
pub fn parse_major_minor(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.split_once(':')?;
    let num = |t: &str| {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse::<u32>().ok()
    };
    Some((num(maj)?, num(min)?))
}

impl Registry {
    /// The mapped device a table token names, if it names one: `NAME`, `/dev/mapper/NAME`
    /// or `253:N`.
    #[must_use]
    pub fn mapped(&self, reference: &str) -> Option<Arc<MappedDevice>> {
        let hash = lock(&self.hash);
        if let Some((DM_MAJOR, minor)) = parse_major_minor(reference) {
            return hash.by_name.values().find(|d| d.dev().1 == minor).cloned();
        }
        let name = reference.strip_prefix("/dev/mapper/").unwrap_or(reference);
        hash.by_name.get(name).cloned()
    }

    /// Resolve a device reference to a volume (outside any table load: nothing is held
    /// open).
    pub fn volume(&self, dev: &DeviceRef) -> Result<SharedVolume> {
        self.resolve(dev).map(|(v, _)| v)
    }

    /// Resolve `dev`; for a mapped device also return it, so a table can hold it open.
    fn resolve(&self, dev: &DeviceRef) -> Result<(SharedVolume, Option<Arc<MappedDevice>>)> {
        let name = dev.0.as_str();
        if let Some(m) = self.mapped(name) {
            return Ok((Arc::clone(&m) as SharedVolume, Some(m)));
        }
        if name.starts_with("/dev/mapper/") {
            return Err(Error::NoDevice(format!(
                "{name} (no device of that name is defined)"
            )));
        }
        if let Some(v) = lock(&self.named).get(name) {
            return Ok((Arc::clone(v), None));
        }
        if let Some((major, minor)) = parse_major_minor(name) {
            // dm_devt_from_path: MKDEV of a major or minor past 12 / 20 bits fails the
            // lookup with EOVERFLOW ("Value too large for defined data type").
            if major >= 1 << 12 || minor >= 1 << 20 {
                return Err(Error::Io {
                    device: format!("{name} (does not fit a dev_t)"),
                    source: std::io::Error::from_raw_os_error(crate::error::errno::EOVERFLOW),
                });
            }
            let Some(path) = self.bindings.get(name) else {
                let hint = if major == DM_MAJOR {
                    "no mapped device has that number".to_string()
                } else {
                    format!("bind it to a file with --map {name}=PATH")
                };
                return Err(Error::NoDevice(format!("{name} ({hint})")));
            };
            return Ok((self.file(path)?, None));
        }
        Ok((self.file(Path::new(name))?, None))
    }

    /// An image file, opened once per registry. A file opened before has its size read
    /// again, so a table loaded after the image grew sees the new size (a loop device
    /// after `losetup -c`): how a thin pool's data file is grown.
    fn file(&self, path: &Path) -> Result<SharedVolume> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some((v, file)) = lock(&self.files).get(&key) {
            if let Some(f) = file {
                f.revalidate()?;
            }
            return Ok(Arc::clone(v));
        }
        let (v, file) = self.open_file(path)?;
        lock(&self.files).insert(key, (Arc::clone(&v), file));
        Ok(v)
    }

    fn open_file(&self, path: &Path) -> Result<(SharedVolume, Option<Arc<FileVolume>>)> {
        // The OS's error as it is: a missing file is ENOENT, a directory that cannot be
        // searched EACCES ("x.img: Permission denied"), a 10 KiB name ENAMETOOLONG; the
        // path in the message is bounded.
        let shown = crate::error::clip(&path.display().to_string());
        let is_regular = std::fs::metadata(path)
            .map_err(Error::io(&shown))?
            .is_file();
        let file = match self.access {
            Some(Access::ReadOnly) => {
                if self.backing == Backing::MmapReadOnly && is_regular {
                    return Ok((Arc::new(MmapVolume::open(path)?), None));
                }
                FileVolume::open(path, Access::ReadOnly)?
            }
            Some(Access::ReadWrite) => FileVolume::open(path, Access::ReadWrite)?,
            None => match FileVolume::open(path, Access::ReadWrite) {
                Err(Error::Io { source, .. })
                    if matches!(
                        source.kind(),
                        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    FileVolume::open(path, Access::ReadOnly)?
                }
                other => other?,
            },
        };
        let file = Arc::new(file);
        Ok((Arc::clone(&file) as SharedVolume, Some(file)))
    }
}

/// The context of one table load: resolves through the registry, holds every mapped device
/// the table uses open, and gives the table its event hook.
pub(super) struct LoadContext<'a> {
    pub(super) registry: &'a Registry,
    /// The device being loaded (a table may not use it: no loops).
    pub(super) target_minor: Option<u32>,
    pub(super) events: TableEvents,
    pub(super) holds: Mutex<Vec<OpenGuard>>,
    pub(super) seen: Mutex<BTreeSet<u32>>,
    /// Mapped ranges that do not fit their devices: the resume fails with the first.
    pub(super) area_errors: Mutex<Vec<Error>>,
}

impl<'a> LoadContext<'a> {
    pub(super) fn new(registry: &'a Registry, target: Option<&MappedDevice>) -> LoadContext<'a> {
        LoadContext {
            registry,
            target_minor: target.map(|d| d.dev().1),
            events: TableEvents::new(),
            holds: Mutex::new(Vec::new()),
            seen: Mutex::new(BTreeSet::new()),
            area_errors: Mutex::new(Vec::new()),
        }
    }

    fn hold(&self, m: &Arc<MappedDevice>) -> Result<()> {
        let minor = m.dev().1;
        if Some(minor) == self.target_minor || self.registry.uses(m, self.target_minor) {
            return Err(Error::invalid(
                "device",
                format!(
                    "{}: a table may not use the device it is loaded into, directly or through other devices",
                    m.name()
                ),
            ));
        }
        if lock(&self.seen).insert(minor) {
            lock(&self.holds).push(m.open()?);
        }
        Ok(())
    }
}

impl BuildContext for LoadContext<'_> {
    fn volume(&self, dev: &DeviceRef) -> Result<SharedVolume> {
        let (v, mapped) = self.registry.resolve(dev)?;
        if let Some(m) = &mapped {
            self.hold(m)?;
        }
        Ok(v)
    }

    fn target(&self, dev: &DeviceRef) -> Result<Arc<dyn Target>> {
        let m = self
            .registry
            .mapped(&dev.0)
            .ok_or_else(|| Error::NoDevice(dev.0.clone()))?;
        self.hold(&m)?;
        m.single_target()
    }

    fn clock(&self) -> SharedClock {
        self.registry.clock()
    }

    fn keyring(&self) -> &Keyring {
        self.registry.keyring()
    }

    fn origin_snapshots(&self, origin: &SharedVolume) -> Arc<OriginSnapshots> {
        self.registry.origin_snapshots(origin)
    }

    fn events(&self) -> TableEvents {
        self.events.clone()
    }

    fn thin_pools(&self) -> Arc<PoolTable> {
        Arc::clone(&self.registry.pools)
    }

    fn device_minor(&self) -> Option<u32> {
        self.target_minor
    }

    fn area_error(&self, error: Error) -> Result<()> {
        if self.target_minor.is_none() {
            return Err(error);
        }
        lock(&self.area_errors).push(error);
        Ok(())
    }
}
