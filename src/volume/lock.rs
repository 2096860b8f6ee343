//! Image locks: every image file or block device is opened once per process and locked
//! against other processes with `flock` (shared for read-only opens, exclusive for
//! read-write ones), so two dmemu processes never act on one pool, COW store or image while
//! either of them writes it.
//!
//! Within one process, opens of the same file (by device and inode number) share one handle:
//! a table of weak references finds the open one, and dropping its last user unlocks it.
//! docs/design.md ("Image locks") gives the rules and why `flock` and not `fcntl` locks.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

use super::Access;
use crate::error::{Error, Result};

/// An image file opened through the process-wide table: cloning it shares the handle, and
/// the lock is held until the last clone (and every volume built on it) is dropped.
#[derive(Clone, Debug)]
pub struct ImageFile(Arc<Handle>);

#[derive(Debug)]
struct Handle {
    file: File,
    access: Access,
    /// `(st_dev, st_ino)` of a locked file; `None` for files that are not images (pipes,
    /// character devices), which are neither locked nor shared.
    key: Option<Key>,
}

type Key = (u64, u64);

/// Open images by identity. An entry whose handle is being dropped stays until its `Drop`
/// has unlocked the file, so a new open waits (on `RELEASED`) instead of meeting the old
/// lock and failing with a spurious EBUSY.
static OPEN: Mutex<BTreeMap<Key, Weak<Handle>>> = Mutex::new(BTreeMap::new());
static RELEASED: Condvar = Condvar::new();

fn table() -> MutexGuard<'static, BTreeMap<Key, Weak<Handle>>> {
    OPEN.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ImageFile {
    /// Open `path` for reading, and for writing with `Access::ReadWrite`, locked shared or
    /// exclusive. Fails with `Busy` (EBUSY) before any byte is read when another process
    /// holds a conflicting lock, or when this process has the file open read-only and a
    /// read-write open is asked for.
    pub fn open(path: impl AsRef<Path>, access: Access) -> Result<ImageFile> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(path)
            .map_err(Error::io(&path.display()))?;
        ImageFile::adopt(file, path, access)
    }

    /// Open `path` read-write, creating it if missing, locked exclusive. An existing file
    /// keeps its contents: it is never truncated before the lock is held.
    pub fn create(path: impl AsRef<Path>) -> Result<ImageFile> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(Error::io(&path.display()))?;
        ImageFile::adopt(file, path, Access::ReadWrite)
    }

    /// Open `path` as an output, as `File::create` does (created, truncated to zero when it
    /// is a regular file), but truncated only once the exclusive lock is held, so an image
    /// in use by another process is left whole.
    pub fn create_output(path: impl AsRef<Path>) -> Result<ImageFile> {
        let path = path.as_ref();
        let out = ImageFile::create(path)?;
        let file = out.file();
        if file.metadata().is_ok_and(|m| m.is_file()) {
            file.set_len(0).map_err(Error::io(&path.display()))?;
        }
        Ok(out)
    }

    /// Take `file` (opened by the caller for `access`) into the table: the handle already
    /// open for the same file if there is one (and `file` is closed), else `file`, locked.
    /// `path` names the file in errors.
    pub fn adopt(file: File, path: &Path, access: Access) -> Result<ImageFile> {
        let what = || path.display().to_string();
        let meta = file.metadata().map_err(Error::io(&path.display()))?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Ok(ImageFile(Arc::new(Handle {
                file,
                access,
                key: None,
            })));
        }
        let key = (meta.dev(), meta.ino());
        let mut open = table();
        loop {
            match open.get(&key).map(Weak::upgrade) {
                Some(Some(shared)) => {
                    drop(open);
                    return if access == Access::ReadWrite && shared.access == Access::ReadOnly {
                        drop(shared);
                        Err(Error::Busy {
                            what: what(),
                            reason: "open read-only in this process, so it cannot also be \
                                     opened read-write (close the read-only users first)"
                                .into(),
                        })
                    } else {
                        Ok(ImageFile(shared))
                    };
                }
                Some(None) => {
                    #[cfg(test)]
                    tests::WAITING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    open = RELEASED.wait(open).unwrap_or_else(PoisonError::into_inner);
                    #[cfg(test)]
                    tests::WAITING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
                None => break,
            }
        }
        let op = match access {
            Access::ReadOnly => FlockOperation::NonBlockingLockShared,
            Access::ReadWrite => FlockOperation::NonBlockingLockExclusive,
        };
        match flock(&file, op) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                drop(open);
                return Err(Error::Busy {
                    what: what(),
                    reason: match access {
                        Access::ReadOnly => {
                            "in use by another process (open read-write there: exclusive lock)"
                        }
                        Access::ReadWrite => {
                            "in use by another process (open there: shared or exclusive lock)"
                        }
                    }
                    .into(),
                });
            }
            Err(e) => {
                drop(open);
                return Err(Error::Io {
                    device: format!("{} (flock)", what()),
                    source: e.into(),
                });
            }
        }
        let handle = Arc::new(Handle {
            file,
            access,
            key: Some(key),
        });
        open.insert(key, Arc::downgrade(&handle));
        Ok(ImageFile(handle))
    }

    /// The open file, for positional I/O.
    #[must_use]
    pub fn file(&self) -> &File {
        &self.0.file
    }

    /// How the shared handle is open: `ReadWrite` when any user opened it read-write first.
    #[must_use]
    pub fn access(&self) -> Access {
        self.0.access
    }

    /// Whether `self` and `other` are one handle (the same file opened twice in a process).
    #[must_use]
    pub fn same_handle(&self, other: &ImageFile) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = table();
        // Unlock now rather than at close: a mapping made from this file keeps its open
        // file description (and with it an flock lock) alive after the fd is closed.
        let _ = flock(&self.file, FlockOperation::Unlock);
        if open
            .get(&key)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), std::ptr::from_ref(self)))
        {
            open.remove(&key);
        }
        drop(open);
        RELEASED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Opens waiting for a dying handle's release.
    pub(super) static WAITING: AtomicUsize = AtomicUsize::new(0);

    fn image(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("img");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        p
    }

    /// Whether another open file description could lock `path` with `op` right now.
    fn lockable(path: &Path, op: FlockOperation) -> bool {
        let f = File::open(path).unwrap();
        match flock(&f, op) {
            Ok(()) => true,
            Err(Errno::WOULDBLOCK) => false,
            Err(e) => panic!("flock: {e}"),
        }
    }

    #[test]
    fn opening_one_file_twice_read_write_shares_one_handle() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let a = ImageFile::open(&p, Access::ReadWrite).unwrap();
        let b = ImageFile::open(d.path().join(".").join("img"), Access::ReadWrite).unwrap();
        assert!(a.same_handle(&b));
        a.file().write_all_at(&[1; 512], 0).unwrap();
        let mut back = [0; 512];
        b.file().read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [1; 512]);
    }

    #[test]
    fn read_only_open_of_a_file_open_read_write_shares_the_handle() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let w = ImageFile::open(&p, Access::ReadWrite).unwrap();
        let r = ImageFile::open(&p, Access::ReadOnly).unwrap();
        assert!(w.same_handle(&r));
        assert_eq!(r.access(), Access::ReadWrite);
    }

    #[test]
    fn read_write_open_holds_an_exclusive_lock_until_the_last_user_drops() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let a = ImageFile::open(&p, Access::ReadWrite).unwrap();
        let b = a.clone();
        assert!(!lockable(&p, FlockOperation::NonBlockingLockShared));
        drop(a);
        assert!(!lockable(&p, FlockOperation::NonBlockingLockShared));
        drop(b);
        assert!(lockable(&p, FlockOperation::NonBlockingLockExclusive));
    }

    #[test]
    fn read_only_open_holds_a_shared_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let r = ImageFile::open(&p, Access::ReadOnly).unwrap();
        assert!(lockable(&p, FlockOperation::NonBlockingLockShared));
        assert!(!lockable(&p, FlockOperation::NonBlockingLockExclusive));
        drop(r);
        assert!(lockable(&p, FlockOperation::NonBlockingLockExclusive));
    }

    #[test]
    fn read_write_open_of_a_file_open_read_only_in_this_process_is_busy() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let r = ImageFile::open(&p, Access::ReadOnly).unwrap();
        let e = ImageFile::open(&p, Access::ReadWrite).unwrap_err();
        assert_eq!(e.errno(), crate::error::errno::EBUSY);
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        assert!(e.to_string().contains("read-only in this process"), "{e}");
        drop(r);
        ImageFile::open(&p, Access::ReadWrite).unwrap();
    }

    #[test]
    fn open_against_a_foreign_exclusive_lock_is_busy_and_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let other = File::open(&p).unwrap();
        flock(&other, FlockOperation::NonBlockingLockExclusive).unwrap();
        for access in [Access::ReadOnly, Access::ReadWrite] {
            let e = ImageFile::open(&p, access).unwrap_err();
            assert_eq!(e.errno(), crate::error::errno::EBUSY);
            assert!(e.to_string().contains("in use by another process"), "{e}");
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
        drop(other);
        ImageFile::open(&p, Access::ReadWrite).unwrap();
    }

    #[test]
    fn create_keeps_an_existing_file_and_locks_it() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let c = ImageFile::create(&p).unwrap();
        assert_eq!(c.file().metadata().unwrap().len(), 4096);
        assert!(!lockable(&p, FlockOperation::NonBlockingLockShared));
    }

    #[test]
    fn create_output_truncates_only_a_file_it_could_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        let other = File::open(&p).unwrap();
        flock(&other, FlockOperation::NonBlockingLockShared).unwrap();
        let e = ImageFile::create_output(&p).unwrap_err();
        assert_eq!(e.errno(), crate::error::errno::EBUSY);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 4096);
        drop(other);
        let out = ImageFile::create_output(&p).unwrap();
        assert_eq!(out.file().metadata().unwrap().len(), 0);
    }

    #[test]
    fn open_during_the_last_drop_waits_for_the_unlock_instead_of_failing() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        // The state between a handle's last `Arc` going and its `Drop` unlocking: a dead
        // table entry, and the file still locked by the dying handle's descriptor.
        let dying = File::open(&p).unwrap();
        flock(&dying, FlockOperation::NonBlockingLockExclusive).unwrap();
        let meta = dying.metadata().unwrap();
        let key = (meta.dev(), meta.ino());
        let dead = Arc::downgrade(&Arc::new(Handle {
            file: File::open(&p).unwrap(),
            access: Access::ReadOnly,
            key: None,
        }));
        table().insert(key, dead);
        let opener = std::thread::spawn({
            let p = p.clone();
            move || ImageFile::open(&p, Access::ReadWrite)
        });
        while WAITING.load(Ordering::SeqCst) == 0 && !opener.is_finished() {
            std::thread::yield_now();
        }
        {
            let mut open = table();
            flock(&dying, FlockOperation::Unlock).unwrap();
            open.remove(&key);
        }
        RELEASED.notify_all();
        opener.join().unwrap().unwrap();
    }

    #[test]
    fn opens_racing_with_the_last_drop_never_see_a_stale_lock() {
        let d = tempfile::tempdir().unwrap();
        let p = image(d.path());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        drop(ImageFile::open(&p, Access::ReadWrite).unwrap());
                    }
                });
            }
        });
    }
}
