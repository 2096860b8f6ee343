//! `FileVolume`: a regular file or block device used through pread/pwrite, locked against
//! other processes (see `lock`); holes through fallocate and SEEK_DATA/SEEK_HOLE.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{fallocate, seek, FallocateFlags, SeekFrom};
use rustix::io::{pwritev2, Errno, ReadWriteFlags};

use super::{
    check_io, check_range, write_zero_buffers, Allocation, Extent, Extents, ImageFile, Unmap,
    Volume,
};
use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};

/// How a backing file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Writes and discards are refused with `ReadOnly`.
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
}

/// A file as a volume. Its size is the file length rounded down to whole sectors, taken at
/// open. Discard punches a hole (reads of the range then return zeros). The file stays
/// locked (shared when read-only, exclusive when read-write) while the volume lives.
///
/// `allocation` answers from SEEK_DATA/SEEK_HOLE (holes are `Hole`, everything else `Data`;
/// a file system or block device without hole support reports all data). `write_zeroes`
/// punches a hole with `Unmap::Allowed` and uses FALLOC_FL_ZERO_RANGE with
/// `Unmap::Forbidden`, writing zeros where the file system refuses either. `write_fua` is
/// pwritev2 with RWF_DSYNC (write then fdatasync where the kernel refuses the flag).
#[derive(Debug)]
pub struct FileVolume {
    file: ImageFile,
    path: PathBuf,
    /// In sectors; re-read by `revalidate` (a grown image, as `losetup -c` does for a loop
    /// device).
    size: AtomicU64,
    access: Access,
}

impl FileVolume {
    /// Open `path` with the given access. Fails with `Busy` when another process holds the
    /// file locked against it (or this process holds it read-only and `access` is
    /// `ReadWrite`); opening it again in this process shares the open handle.
    pub fn open(path: impl AsRef<Path>, access: Access) -> Result<FileVolume> {
        let path = path.as_ref().to_path_buf();
        let file = ImageFile::open(&path, access)?;
        FileVolume::over(file, path, access)
    }

    /// Wrap an open file, taking it into the process's image table (and locking it) as
    /// `open` does; `path` is used in error messages only.
    pub fn from_file(file: File, path: PathBuf, access: Access) -> Result<FileVolume> {
        let file = ImageFile::adopt(file, &path, access)?;
        FileVolume::over(file, path, access)
    }

    /// A volume over an image handle; `access` may be narrower than the handle's.
    pub fn over(file: ImageFile, path: PathBuf, access: Access) -> Result<FileVolume> {
        if access == Access::ReadWrite && file.access() == Access::ReadOnly {
            return Err(Error::ReadOnly {
                target: path.display().to_string(),
            });
        }
        let len = block_len(file.file()).map_err(Error::io(&path.display()))?;
        Ok(FileVolume {
            file,
            path,
            size: AtomicU64::new(SectorCount::floor_bytes(len).0),
            access,
        })
    }

    /// Read the file's size again (it may have grown or shrunk since it was opened) and
    /// use it from now on; the new size.
    pub fn revalidate(&self) -> Result<SectorCount> {
        let len = block_len(self.file.file()).map_err(Error::io(&self.path.display()))?;
        let size = SectorCount::floor_bytes(len);
        self.size.store(size.0, Ordering::Release);
        Ok(size)
    }

    /// The path this volume was opened from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn os_error(&self, e: Errno) -> Error {
        Error::Io {
            device: self.path.display().to_string(),
            source: e.into(),
        }
    }

    /// fallocate `mode | KEEP_SIZE` over the range; `Ok(false)` when the file system or
    /// device does not offer that mode (EOPNOTSUPP, or EINVAL from a block device whose
    /// logical block is larger than the range's alignment).
    fn fallocate_range(
        &self,
        mode: FallocateFlags,
        sector: Sector,
        count: SectorCount,
    ) -> Result<bool> {
        match fallocate(
            self.file.file(),
            mode | FallocateFlags::KEEP_SIZE,
            sector.byte_offset(),
            count.bytes(),
        ) {
            Ok(()) => Ok(true),
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => Ok(false),
            Err(e) => Err(self.os_error(e)),
        }
    }

    /// The next offset at or after `from` where data (`SEEK_DATA`) or a hole (`SEEK_HOLE`)
    /// starts, capped at `end`; `None` when the kernel cannot tell (no hole support).
    fn seek_next(&self, whence: fn(u64) -> SeekFrom, from: u64, end: u64) -> Result<Option<u64>> {
        match seek(self.file.file(), whence(from)) {
            Ok(at) => Ok(Some(at.min(end))),
            // SEEK_DATA past the last data: the rest is hole.
            Err(Errno::NXIO) => Ok(Some(end)),
            Err(Errno::INVAL | Errno::OPNOTSUPP) => Ok(None),
            Err(e) => Err(self.os_error(e)),
        }
    }

    fn writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Error::ReadOnly {
                target: self.path.display().to_string(),
            }),
        }
    }
}

/// Length of a regular file, or of a block device (whose metadata length is 0).
fn block_len(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report their size only through seeking to the end; `&File` seeks
    // without needing `mut`, and the volume itself never depends on the file position.
    let mut handle = file;
    let len = handle.seek(SeekFrom::End(0))?;
    handle.seek(SeekFrom::Start(0))?;
    Ok(len)
}

impl Volume for FileVolume {
    fn size(&self) -> SectorCount {
        SectorCount(self.size.load(Ordering::Acquire))
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size(), sector, buf.len())?;
        self.file
            .file()
            .read_exact_at(buf, sector.byte_offset())
            .map_err(Error::io(&self.path.display()))
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size(), sector, buf.len())?;
        self.writable()?;
        self.file
            .file()
            .write_all_at(buf, sector.byte_offset())
            .map_err(Error::io(&self.path.display()))
    }

    fn flush(&self) -> Result<()> {
        if self.access == Access::ReadOnly {
            return Ok(());
        }
        self.file
            .file()
            .sync_data()
            .map_err(Error::io(&self.path.display()))
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size(), sector, count)?;
        self.writable()?;
        if count.0 == 0 {
            return Ok(());
        }
        fallocate(
            self.file.file(),
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            sector.byte_offset(),
            count.bytes(),
        )
        .map_err(|e| self.os_error(e))
    }

    /// pwritev2(RWF_DSYNC): the data and what is needed to read it back are durable when
    /// the call returns, as with a FUA write. Kernels or files refusing the flag get
    /// pwrite + fdatasync.
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size(), sector, buf.len())?;
        self.writable()?;
        let mut done = 0usize;
        while done < buf.len() {
            let at = sector.byte_offset() + done as u64;
            let slice = [std::io::IoSlice::new(&buf[done..])];
            match pwritev2(self.file.file(), &slice, at, ReadWriteFlags::DSYNC) {
                Ok(0) => return Err(self.os_error(Errno::IO)),
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                    self.write(sector, buf)?;
                    return self.flush();
                }
                Err(e) => return Err(self.os_error(e)),
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        check_range(self.size(), sector, count)?;
        self.writable()?;
        if count.0 == 0 {
            return Ok(());
        }
        if unmap == Unmap::Allowed
            && self.fallocate_range(FallocateFlags::PUNCH_HOLE, sector, count)?
        {
            return Ok(());
        }
        if self.fallocate_range(FallocateFlags::ZERO_RANGE, sector, count)? {
            return Ok(());
        }
        write_zero_buffers(self, sector, count)
    }

    /// SEEK_DATA / SEEK_HOLE from the range's start. Hole edges are rounded inwards to
    /// whole sectors (a partly written sector is data).
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size(), sector, count)?;
        let end = (sector + count).byte_offset();
        let mut at = sector.byte_offset();
        let mut out = Extents::new();
        while at < end {
            let Some(data) = self.seek_next(SeekFrom::Data, at, end)? else {
                out.push(SectorCount((end - at) / 512), Allocation::Data);
                break;
            };
            let data = data / 512 * 512;
            let (next, state) = if data > at {
                (data, Allocation::Hole)
            } else {
                // `at` is data: it runs to the next hole (at least this sector).
                let Some(hole) = self.seek_next(SeekFrom::Hole, at, end)? else {
                    out.push(SectorCount((end - at) / 512), Allocation::Data);
                    break;
                };
                (
                    hole.next_multiple_of(512).clamp(at + 512, end),
                    Allocation::Data,
                )
            };
            if !out.push(SectorCount((next - at) / 512), state) {
                break;
            }
            at = next;
        }
        Ok(out.into_vec())
    }
}
