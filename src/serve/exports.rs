//! The set of exports a running server offers (over NBD and as FUSE files). It can grow and
//! shrink while serving: [`Exports::add`] makes a device reachable (a new NBD export name, a
//! new file in the FUSE directory), [`Exports::remove`] takes it away again, refused with
//! EBUSY while a client has it open (an NBD connection that chose it, an open FUSE file),
//! as the kernel refuses to remove an open device. Clones share one set.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{Error, Result};

use super::export::Export;

/// The exports being served; the empty name selects the default one, the last added.
#[derive(Clone, Debug, Default)]
pub struct Exports {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    list: RwLock<Vec<Entry>>,
    /// Ids handed to entries, never reused (FUSE inode numbers come from them).
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    export: Arc<Export>,
    users: Arc<AtomicUsize>,
}

/// An export a client has open: while any exists, [`Exports::remove`] refuses that export.
/// Dereferences to the [`Export`].
#[derive(Debug)]
pub struct OpenExport {
    id: u64,
    export: Arc<Export>,
    users: Arc<AtomicUsize>,
}

impl OpenExport {
    /// The export's id in its set: unique for the life of the set, never reused by a later
    /// export of the same name.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The export itself.
    #[must_use]
    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }
}

impl Deref for OpenExport {
    type Target = Export;
    fn deref(&self) -> &Export {
        &self.export
    }
}

impl Clone for OpenExport {
    fn clone(&self) -> OpenExport {
        self.users.fetch_add(1, Ordering::SeqCst);
        OpenExport {
            id: self.id,
            export: Arc::clone(&self.export),
            users: Arc::clone(&self.users),
        }
    }
}

impl Drop for OpenExport {
    fn drop(&mut self) {
        self.users.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Exports {
    /// Offer `list` (at least one export, names distinct); `""` names the last one.
    pub fn new(list: Vec<Arc<Export>>) -> Result<Exports> {
        if list.is_empty() {
            return Err(Error::invalid("exports", "no export to serve"));
        }
        let exports = Exports::empty();
        for e in list {
            exports.add(e)?;
        }
        Ok(exports)
    }

    /// A set with no exports yet (a host that adds devices as they are created).
    #[must_use]
    pub fn empty() -> Exports {
        Exports::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, Vec<Entry>> {
        self.shared
            .list
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Entry>> {
        self.shared
            .list
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Add `export` under its name; it becomes the default export. A name already served
    /// is refused with EBUSY and nothing changes.
    pub fn add(&self, export: Arc<Export>) -> Result<()> {
        let mut list = self.write();
        if list.iter().any(|e| e.export.name() == export.name()) {
            return Err(Error::Busy {
                what: format!("export {}", crate::error::quote(export.name())),
                reason: "an export of that name is already served".into(),
            });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        list.push(Entry {
            id,
            export,
            users: Arc::new(AtomicUsize::new(0)),
        });
        Ok(())
    }

    /// Stop offering export `name`: new NBD clients cannot choose it and its FUSE file
    /// disappears. Refused with EBUSY while it is open (see [`OpenExport`]), ENXIO when no
    /// export has that name. The export is returned unflushed; flushing is the caller's.
    pub fn remove(&self, name: &str) -> Result<Arc<Export>> {
        let mut list = self.write();
        let Some(i) = list.iter().position(|e| e.export.name() == name) else {
            return Err(Error::NoSuchDevice(format!(
                "export {}",
                crate::error::quote(name)
            )));
        };
        let users = list[i].users.load(Ordering::SeqCst);
        if users > 0 {
            return Err(Error::Busy {
                what: format!("export {}", crate::error::quote(name)),
                reason: format!("open by {users} client(s)"),
            });
        }
        Ok(list.remove(i).export)
    }

    /// Every export, in the order added.
    #[must_use]
    pub fn list(&self) -> Vec<Arc<Export>> {
        self.read().iter().map(|e| Arc::clone(&e.export)).collect()
    }

    /// Every export with its id, in the order added.
    #[must_use]
    pub fn entries(&self) -> Vec<(u64, Arc<Export>)> {
        self.read()
            .iter()
            .map(|e| (e.id, Arc::clone(&e.export)))
            .collect()
    }

    /// How many exports are offered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn position(list: &[Entry], name: &[u8]) -> Option<usize> {
        if name.is_empty() {
            return list.len().checked_sub(1);
        }
        list.iter().position(|e| e.export.name().as_bytes() == name)
    }

    /// The export a client naming `name` gets (`""`: the default, the last added).
    #[must_use]
    pub fn find(&self, name: &[u8]) -> Option<Arc<Export>> {
        let list = self.read();
        Exports::position(&list, name).map(|i| Arc::clone(&list[i].export))
    }

    /// The export with id `id`, if it is still offered.
    #[must_use]
    pub fn find_id(&self, id: u64) -> Option<Arc<Export>> {
        self.read()
            .iter()
            .find(|e| e.id == id)
            .map(|e| Arc::clone(&e.export))
    }

    /// The id of the export a client naming `name` gets.
    #[must_use]
    pub fn id_of(&self, name: &[u8]) -> Option<u64> {
        let list = self.read();
        Exports::position(&list, name).map(|i| list[i].id)
    }

    /// Open the export a client naming `name` gets; it cannot be removed until the
    /// returned handle (and every clone of it) is dropped.
    #[must_use]
    pub fn open(&self, name: &[u8]) -> Option<OpenExport> {
        let list = self.read();
        Exports::position(&list, name).map(|i| open_entry(&list[i]))
    }

    /// Open the export with id `id`, if it is still offered.
    #[must_use]
    pub fn open_id(&self, id: u64) -> Option<OpenExport> {
        self.read().iter().find(|e| e.id == id).map(open_entry)
    }

    /// How many clients have export `name` open (`None`: no such export): the open count
    /// `dmsetup info` shows.
    #[must_use]
    pub fn open_count(&self, name: &str) -> Option<usize> {
        self.read()
            .iter()
            .find(|e| e.export.name() == name)
            .map(|e| e.users.load(Ordering::SeqCst))
    }
}

/// Called with the set's lock held (read), so a remove cannot slip between the lookup and
/// the count going up.
fn open_entry(e: &Entry) -> OpenExport {
    e.users.fetch_add(1, Ordering::SeqCst);
    OpenExport {
        id: e.id,
        export: Arc::clone(&e.export),
        users: Arc::clone(&e.users),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::SectorCount;
    use crate::volume::{MemVolume, SharedVolume};

    fn export(name: &str) -> Arc<Export> {
        let v: SharedVolume = Arc::new(MemVolume::new(SectorCount(8)).unwrap());
        Arc::new(Export::new(name, v))
    }

    #[test]
    fn add_remove_default_and_open_count() {
        let x = Exports::empty();
        assert!(x.find(b"").is_none());
        x.add(export("a")).unwrap();
        x.add(export("b")).unwrap();
        assert_eq!(x.find(b"").unwrap().name(), "b");
        assert_eq!(x.add(export("a")).unwrap_err().errno(), 16);
        let open = x.open(b"a").unwrap();
        assert_eq!(x.open_count("a"), Some(1));
        let again = open.clone();
        assert_eq!(x.remove("a").unwrap_err().errno(), 16);
        drop(open);
        assert_eq!(x.remove("a").unwrap_err().errno(), 16);
        drop(again);
        assert_eq!(x.remove("a").unwrap().name(), "a");
        assert_eq!(x.remove("a").unwrap_err().errno(), 6);
        let old = x.id_of(b"b").unwrap();
        x.remove("b").unwrap();
        assert!(x.is_empty());
        x.add(export("b")).unwrap();
        assert_ne!(x.id_of(b"b").unwrap(), old, "ids are never reused");
        assert!(x.find_id(old).is_none());
    }

    #[test]
    fn clones_share_one_set() {
        let x = Exports::new(vec![export("a")]).unwrap();
        let y = x.clone();
        y.add(export("b")).unwrap();
        assert_eq!(x.len(), 2);
        assert!(Exports::new(Vec::new()).is_err());
    }
}
