//! `FileVolume`: a regular file or block device used through pread/pwrite, locked against
//! other processes (see `lock`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{fallocate, FallocateFlags};

use super::{check_io, check_range, ImageFile, Volume};
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
#[derive(Debug)]
pub struct FileVolume {
    file: ImageFile,
    path: PathBuf,
    size: SectorCount,
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
            size: SectorCount::floor_bytes(len),
            access,
        })
    }

    /// The path this volume was opened from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
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
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.file
            .file()
            .read_exact_at(buf, sector.byte_offset())
            .map_err(Error::io(&self.path.display()))
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
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
        check_range(self.size, sector, count)?;
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
        .map_err(|e| Error::Io {
            device: self.path.display().to_string(),
            source: e.into(),
        })
    }
}
