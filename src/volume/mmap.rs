//! `MmapVolume`: a read-only memory map of an image file.
//!
//! Copying 4 KiB out of a populated mapping is several times faster than pread here, which is
//! what read-mostly users (verity, forensics) want. This is one of the two modules where
//! `unsafe` is allowed. The file is locked shared while mapped (see `lock`).
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{check_io, check_range, Access, ImageFile, Unmap, Volume};
use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};

/// A read-only mapping of a file. Writes and discards fail with `ReadOnly`.
///
/// The file must not be truncated while mapped: the mapping would then fault (SIGBUS) on
/// access past the new end. dmemu never truncates images, and no other dmemu process can
/// open the file read-write while it is mapped (the shared lock); writers that ignore
/// `flock` are the user's responsibility, as with any mmap reader.
#[derive(Debug)]
pub struct MmapVolume {
    map: Option<Mmap>,
    path: PathBuf,
    size: SectorCount,
    /// Holds the shared lock (or this process's read-write handle) while mapped.
    _file: ImageFile,
}

impl MmapVolume {
    /// Map `path` read-only. Fails with `Busy` when another process has it open read-write.
    pub fn open(path: impl AsRef<Path>) -> Result<MmapVolume> {
        let path = path.as_ref().to_path_buf();
        let image = ImageFile::open(&path, Access::ReadOnly)?;
        let file = image.file();
        let len = file.metadata().map_err(Error::io(&path.display()))?.len();
        let size = SectorCount::floor_bytes(len);
        // An empty file cannot be mapped; it is a valid zero-sized volume.
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this volume; the documented
            // precondition above (no concurrent truncation) is the usual one for mmap readers.
            Some(unsafe { Mmap::map(file) }.map_err(Error::io(&path.display()))?)
        };
        Ok(MmapVolume {
            map,
            path,
            size,
            _file: image,
        })
    }

    fn readonly(&self) -> Error {
        Error::ReadOnly {
            target: self.path.display().to_string(),
        }
    }
}

impl Volume for MmapVolume {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let map = self.map.as_deref().unwrap_or(&[]);
        // The range was checked against `size`, which is within the mapping.
        let start = usize::try_from(sector.byte_offset())
            .map_err(|_| Error::invalid("sector", "beyond addressable memory"))?;
        buf.copy_from_slice(&map[start..start + buf.len()]);
        Ok(())
    }

    fn mapped(&self, sector: Sector, count: SectorCount) -> Option<&[u8]> {
        check_range(self.size, sector, count).ok()?;
        let start = usize::try_from(sector.byte_offset()).ok()?;
        let len = count.usize_bytes().ok()?;
        Some(&self.map.as_deref().unwrap_or(&[])[start..start + len])
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        Err(self.readonly())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        Err(self.readonly())
    }

    /// Refused like every write, even for an empty range; `write_fua` fails in its write
    /// and `allocation` is the default (data).
    fn write_zeroes(&self, sector: Sector, count: SectorCount, _unmap: Unmap) -> Result<()> {
        self.discard(sector, count)
    }
}
