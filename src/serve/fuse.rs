//! The FUSE export: every export of an [`Exports`] set as a regular file, read and written
//! at any byte offset through [`Export`] (read-modify-write for unaligned writes), as
//! qemu-storage-daemon's FUSE export does. Mounted on a directory, the set's exports are
//! the files `DIR/NAME` (appearing and disappearing as the set changes); mounted on an
//! existing regular file, the default export replaces that one file.
//!
//! Files are opened direct-I/O (no page cache, so the file and the NBD export of the same
//! device never disagree). fsync = flush; `fallocate(PUNCH_HOLE | KEEP_SIZE)` = write-zeroes
//! that may unmap (a discard that reads back as zeros, as a block device does it),
//! `ZERO_RANGE` = write-zeroes that keeps the blocks; `lseek(SEEK_DATA / SEEK_HOLE)` answer
//! from the allocation query. Read-only exports are mode 0444 and refuse to open for writing
//! (EACCES).
//!
//! Mounting uses fuser's own mount code (mount(2) as root, fusermount3 otherwise): no
//! libfuse is linked.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use crate::error::{Error, Result};
use crate::volume::{Allocation, Unmap};

use super::export::{Durability, Export, ExportAccess, ZeroSpeed, MAX_EXTENTS};
use super::exports::{Exports, OpenExport};

/// Attributes and entries are not cached by the kernel: exports come and go.
const TTL: Duration = Duration::ZERO;

/// Threads reading requests from the kernel.
const THREADS: usize = 4;

const ROOT: u64 = 1;

/// What the mount shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A directory holding one file per export, `DIR/NAME`.
    Directory,
    /// One file: the export with this id (the default export when mounted).
    File {
        /// The export's id in the set.
        id: u64,
        /// Its name.
        name: String,
    },
}

/// A mounted FUSE export; [`FuseMount::unmount`] (or drop) unmounts it.
pub struct FuseMount {
    path: PathBuf,
    layout: Layout,
    exports: Exports,
    session: Option<fuser::BackgroundSession>,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// How an unmount went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// Unmounted; every request was answered before it returned.
    Clean,
    /// A file was still open (EBUSY): the mount was detached lazily; programs holding it
    /// open keep it until they close it or this process exits.
    Detached,
}

impl FuseMount {
    /// Mount `exports` on `path`: a directory shows every export as `path/NAME`; an
    /// existing regular file is replaced by the default export.
    pub fn mount(exports: Exports, path: &Path) -> Result<FuseMount> {
        let meta = std::fs::metadata(path).map_err(Error::io(&path.display()))?;
        let layout = if meta.is_dir() {
            Layout::Directory
        } else if meta.is_file() {
            let (id, export) = exports
                .entries()
                .pop()
                .ok_or_else(|| Error::invalid("--mount", "no export to mount on a file"))?;
            Layout::File {
                id,
                name: export.name().to_string(),
            }
        } else {
            return Err(Error::invalid(
                "--mount",
                format!("{}: neither a directory nor a regular file", path.display()),
            ));
        };
        let mut options = vec![
            MountOption::FSName("dmemu".into()),
            MountOption::Subtype("dmemu".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        if let Layout::File { id, .. } = &layout {
            if exports
                .find_id(*id)
                .is_some_and(|e| e.access() == ExportAccess::ReadOnly)
            {
                options.push(MountOption::RO);
            }
        }
        let mut config = fuser::Config::default();
        config.mount_options = options;
        config.n_threads = Some(THREADS);
        let fs = Fs {
            exports: exports.clone(),
            layout: layout.clone(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
            mounted_at: SystemTime::now(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
        };
        let session = fuser::spawn_mount(fs, path, &config)
            .map_err(|e| Error::io(&format!("mount {}", path.display()))(e))?;
        Ok(FuseMount {
            path: path.to_path_buf(),
            layout,
            exports,
            session: Some(session),
        })
    }

    /// Where it is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What it shows.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The file export `name` is reachable at (`None`: this mount does not show it).
    #[must_use]
    pub fn file_of(&self, name: &str) -> Option<PathBuf> {
        match &self.layout {
            Layout::Directory => listable(name).then(|| self.path.join(name)),
            Layout::File { name: n, .. } => (n == name).then(|| self.path.clone()),
        }
    }

    /// Unmount: refuse new opens, let the requests in flight finish, then flush every
    /// export. A mount still in use is detached lazily (see [`Unmounted::Detached`]).
    pub fn unmount(mut self) -> Result<Unmounted> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<Unmounted> {
        let Some(session) = self.session.take() else {
            return Ok(Unmounted::Clean);
        };
        let how = match unmount(&self.path, false) {
            Ok(()) => Unmounted::Clean,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                unmount(&self.path, true).map_err(Error::io(&self.path.display()))?;
                Unmounted::Detached
            }
            Err(e) => return Err(Error::io(&self.path.display())(e)),
        };
        match how {
            // The kernel ends the session once unmounted: join its threads (every request
            // answered). Not `umount_and_join`: it would try to unmount a second time.
            Unmounted::Clean => session.join().map_err(Error::io(&self.path.display()))?,
            // Its threads serve the open files until they are closed; joining would wait
            // for them, and dropping would try to unmount again.
            Unmounted::Detached => std::mem::forget(session),
        }
        let mut first = Ok(how);
        for e in self.exports.list() {
            if let Err(err) = e.flush() {
                if first.is_ok() {
                    first = Err(err);
                }
            }
        }
        first
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Detach whatever FUSE mount is left on `path` by a process that ended without
/// unmounting (its files answer ENOTCONN); a no-op when nothing is mounted there.
pub fn unmount_stale(path: &Path) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => {
            unmount(path, true)
        }
        _ => Ok(()),
    }
}

/// umount(2) as root; fusermount3 -u otherwise. `lazy`: MNT_DETACH / -z.
fn unmount(path: &Path, lazy: bool) -> std::io::Result<()> {
    use rustix::mount::UnmountFlags;
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    match rustix::mount::unmount(path, flags) {
        Ok(()) => return Ok(()),
        Err(e) if e != rustix::io::Errno::PERM => return Err(e.into()),
        Err(_) => {}
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u").arg("-q");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(path).output()?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    if text.contains("busy") {
        return Err(std::io::Error::from_raw_os_error(
            rustix::io::Errno::BUSY.raw_os_error(),
        ));
    }
    Err(std::io::Error::other(format!(
        "fusermount3 -u: {}",
        text.trim()
    )))
}

/// Whether an export name can be a file name in the directory.
fn listable(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains('/')
        && !name.contains('\0')
}

struct Handle {
    export: OpenExport,
    /// Opened O_SYNC / O_DSYNC: every write is FUA.
    sync: bool,
}

struct Fs {
    exports: Exports,
    layout: Layout,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

impl Fs {
    /// The export id inode `ino` shows, if it is a file.
    fn id_of(&self, ino: INodeNo) -> Option<u64> {
        match &self.layout {
            Layout::Directory => ino.0.checked_sub(ROOT).filter(|&id| id > 0),
            Layout::File { id, .. } => (ino.0 == ROOT).then_some(*id),
        }
    }

    fn ino_of(&self, id: u64) -> INodeNo {
        match self.layout {
            Layout::Directory => INodeNo(id + ROOT),
            Layout::File { .. } => INodeNo(ROOT),
        }
    }

    fn is_dir(&self, ino: INodeNo) -> bool {
        self.layout == Layout::Directory && ino.0 == ROOT
    }

    fn file_attr(&self, id: u64, export: &Export) -> FileAttr {
        let perm = match export.access() {
            ExportAccess::ReadOnly => 0o444,
            ExportAccess::ReadWrite => 0o644,
        };
        FileAttr {
            ino: self.ino_of(id),
            size: export.size(),
            blocks: export.size().div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::RegularFile,
            perm,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: export.block_size().max(4096),
            flags: 0,
        }
    }

    fn dir_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo(ROOT),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        if self.is_dir(ino) {
            return Some(self.dir_attr());
        }
        let id = self.id_of(ino)?;
        let export = self.exports.find_id(id)?;
        Some(self.file_attr(id, &export))
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        lock(&self.handles).get(&fh.0).cloned()
    }
}

/// The first offset at or after `offset` that is a hole (`hole`) or data (`!hole`):
/// `None` when there is none before the end (SEEK_DATA's ENXIO); SEEK_HOLE finds the end.
fn seek(export: &Export, offset: u64, hole: bool) -> Result<Option<u64>> {
    let size = export.size();
    if offset >= size {
        return Ok(None);
    }
    let mut at = offset;
    while at < size {
        let runs = export.allocation(at, size - at, MAX_EXTENTS)?;
        if runs.is_empty() {
            break;
        }
        for (len, state) in runs {
            if (state == Allocation::Hole) == hole {
                return Ok(Some(at));
            }
            at += len;
        }
    }
    Ok(hole.then_some(size))
}

const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // O_TRUNC arrives as an open flag (ignored, as a block device ignores it) instead
        // of a truncate to 0, so `cp image DIR/NAME` writes over the device.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if !self.is_dir(parent) {
            return reply.error(Errno::ENOTDIR);
        }
        let found = self
            .exports
            .entries()
            .into_iter()
            .find(|(_, e)| listable(e.name()) && e.name().as_bytes() == name.as_bytes());
        match found {
            Some((id, export)) => {
                reply.entry(&TTL, &self.file_attr(id, &export), fuser::Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // A device has the size it has (truncate(2) of a block device is EINVAL); mode,
        // owner and times are not kept.
        match size {
            Some(s) if s != attr.size || attr.kind == FileType::Directory => {
                reply.error(Errno::EINVAL);
            }
            _ => reply.attr(&TTL, &attr),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.is_dir(ino) {
            return reply.error(Errno::EISDIR);
        }
        let Some(export) = self.id_of(ino).and_then(|id| self.exports.open_id(id)) else {
            return reply.error(Errno::ENOENT);
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY && export.access() == ExportAccess::ReadOnly {
            return reply.error(Errno::EACCES);
        }
        let sync = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let fh = self.next_fh.fetch_add(1, Ordering::SeqCst);
        lock(&self.handles).insert(fh, Arc::new(Handle { export, sync }));
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let e = &h.export;
        let len = u64::from(size).min(e.size().saturating_sub(offset));
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        match e.read(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            // Bytes before the failing block are good: a short read, then the error.
            Err(f) if f.offset > offset => {
                let good = usize::try_from(f.offset - offset).map_or(0, |n| n.min(buf.len()));
                reply.data(&buf[..good]);
            }
            Err(f) => reply.error(errno(&f.error)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let e = &h.export;
        if offset >= e.size() && !data.is_empty() {
            return reply.error(Errno::ENOSPC);
        }
        let room = usize::try_from(e.size() - offset).unwrap_or(usize::MAX);
        let data = &data[..data.len().min(room)];
        let sync = h.sync || flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let durability = if sync {
            Durability::Fua
        } else {
            Durability::Cached
        };
        match e.write(offset, data, durability) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): nothing is cached here; durability is fsync's.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        match h.export.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if !self.is_dir(ino) {
            return reply.error(Errno::ENOTDIR);
        }
        // Offsets: 1 ".", 2 "..", then 2 + id per export (ids grow in list order), so a
        // listing resumed after a change neither repeats nor skips a surviving entry.
        let mut entries = vec![
            (INodeNo(ROOT), 1, FileType::Directory, ".".to_string()),
            (INodeNo(ROOT), 2, FileType::Directory, "..".to_string()),
        ];
        for (id, e) in self.exports.entries() {
            if listable(e.name()) {
                entries.push((
                    self.ino_of(id),
                    id + 2,
                    FileType::RegularFile,
                    e.name().to_string(),
                ));
            }
        }
        for (ino, off, kind, name) in entries.into_iter().filter(|e| e.1 > offset) {
            if reply.add(ino, off, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let e = &h.export;
        let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
        let end = offset.saturating_add(length);
        if end > e.size() && !keep {
            // The file cannot grow.
            return reply.error(Errno::EINVAL);
        }
        let len = end.min(e.size()).saturating_sub(offset);
        let unmap = match mode & !FALLOC_FL_KEEP_SIZE {
            // Every byte of a device is allocated already.
            0 => return reply.ok(),
            FALLOC_FL_PUNCH_HOLE if keep => Unmap::Allowed,
            FALLOC_FL_PUNCH_HOLE => return reply.error(Errno::EINVAL),
            FALLOC_FL_ZERO_RANGE => Unmap::Forbidden,
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        if len == 0 {
            return reply.ok();
        }
        match e.write_zeroes(offset, len, unmap, ZeroSpeed::Any, Durability::Cached) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(h) = self.handle(fh) else {
            return reply.error(Errno::EBADF);
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let hole = match whence {
            SEEK_DATA => false,
            SEEK_HOLE => true,
            _ => return reply.error(Errno::EINVAL),
        };
        match seek(&h.export, offset, hole) {
            Ok(Some(at)) => reply.offset(i64::try_from(at).unwrap_or(i64::MAX)),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::SectorCount;
    use crate::volume::{Extent, MemVolume, SharedVolume, Volume};

    /// A volume with a fixed allocation map.
    #[derive(Debug)]
    struct Mapped(MemVolume, Vec<Extent>);

    impl Volume for Mapped {
        fn size(&self) -> SectorCount {
            self.0.size()
        }
        fn read(&self, s: crate::units::Sector, b: &mut [u8]) -> Result<()> {
            self.0.read(s, b)
        }
        fn write(&self, s: crate::units::Sector, b: &[u8]) -> Result<()> {
            self.0.write(s, b)
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn discard(&self, s: crate::units::Sector, n: SectorCount) -> Result<()> {
            self.0.discard(s, n)
        }
        fn allocation(&self, s: crate::units::Sector, n: SectorCount) -> Result<Vec<Extent>> {
            // The map clipped to [s, s + n).
            let mut out = Vec::new();
            let mut at = 0;
            for e in &self.1 {
                let (from, to) = (at.max(s.0), (at + e.len.0).min(s.0 + n.0));
                if to > from {
                    out.push(Extent {
                        len: SectorCount(to - from),
                        state: e.state,
                    });
                }
                at += e.len.0;
            }
            Ok(out)
        }
    }

    #[test]
    fn seek_data_and_hole_follow_the_allocation_map() {
        let ext = |n, state| Extent {
            len: SectorCount(n),
            state,
        };
        let v: SharedVolume = Arc::new(Mapped(
            MemVolume::new(SectorCount(16)).unwrap(),
            vec![
                ext(4, Allocation::Hole),
                ext(4, Allocation::Data),
                ext(8, Allocation::Hole),
            ],
        ));
        let e = Export::new("t", v);
        assert_eq!(seek(&e, 0, false).unwrap(), Some(4 * 512));
        assert_eq!(seek(&e, 100, true).unwrap(), Some(100));
        assert_eq!(seek(&e, 5 * 512 + 3, false).unwrap(), Some(5 * 512 + 3));
        assert_eq!(seek(&e, 5 * 512, true).unwrap(), Some(8 * 512));
        assert_eq!(seek(&e, 9 * 512, false).unwrap(), None);
        assert_eq!(seek(&e, 16 * 512, true).unwrap(), None);
        assert_eq!(seek(&e, 16 * 512 - 1, true).unwrap(), Some(16 * 512 - 1));
    }

    #[test]
    fn names_that_cannot_be_files_are_not_listed() {
        assert!(listable("vg-root"));
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(!listable(bad), "{bad:?}");
        }
        assert!(!listable(&"x".repeat(256)));
    }
}
