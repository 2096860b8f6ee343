//! `VolumeIo`: any `Volume` as `std::io::Read + Write + Seek` at byte offsets, with the
//! errno-keeping conversion of the crate's `Error` into `io::Error`.
//!
//! Positions are bytes, as for a block device file (`/dev/dm-N`); the semantics at the end
//! follow 6.12's `blkdev_read_iter` / `blkdev_write_iter`: a read at or past the end returns
//! 0, a read or write crossing it is cut short there, and a write at or past it fails with
//! ENOSPC.

use std::io::{self, SeekFrom};
use std::ops::Deref;

use crate::error::{errno, Error};
use crate::units::{Sector, SECTOR_SIZE};
use crate::volume::Volume;

/// A `Volume` read, written and seeked like a file (see the module docs).
///
/// Aligned whole sectors move straight between the caller's buffer and the volume; a
/// request that starts inside a sector or is shorter than one goes through a one-sector
/// bounce buffer (read, or read-modify-write), and its call returns at that sector's end,
/// as `Read` and `Write` allow. `write_all`, `read_exact` and `io::copy` loop over that.
///
/// Errors come back as `io::Error`s whose `raw_os_error()` is the errno (see
/// [`From<Error> for io::Error`](#impl-From<Error>-for-Error)); the crate error with its
/// words is kept and [`take_error`](VolumeIo::take_error) returns it.
///
/// ```
/// use std::io::{Read, Seek, SeekFrom, Write};
/// use dmemu::{MemVolume, SectorCount, VolumeIo};
///
/// let disk = MemVolume::new(SectorCount(8))?;
/// let mut io = VolumeIo::new(&disk);
/// io.seek(SeekFrom::Start(510))?;
/// io.write_all(b"across a sector edge")?;
/// io.seek(SeekFrom::Start(510))?;
/// let mut back = [0u8; 20];
/// io.read_exact(&mut back)?;
/// assert_eq!(&back, b"across a sector edge");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct VolumeIo<V> {
    volume: V,
    pos: u64,
    bounce: [u8; SECTOR_SIZE],
    last_error: Option<Error>,
}

impl<V> VolumeIo<V>
where
    V: Deref<Target: Volume>,
{
    /// An adapter at byte 0 of `volume` (`&MemVolume`, `Arc<dyn Volume>`, `Arc<MappedDevice>`…).
    pub fn new(volume: V) -> VolumeIo<V> {
        VolumeIo {
            volume,
            pos: 0,
            bounce: [0; SECTOR_SIZE],
            last_error: None,
        }
    }

    /// The volume.
    pub fn get_ref(&self) -> &V {
        &self.volume
    }

    /// The volume, giving up the adapter.
    pub fn into_inner(self) -> V {
        self.volume
    }

    /// The crate error behind the last `io::Error` this adapter returned, with its message
    /// and source, if it has not been taken yet.
    pub fn take_error(&mut self) -> Option<Error> {
        self.last_error.take()
    }

    fn len(&self) -> u64 {
        self.volume.size().bytes()
    }

    fn fail(&mut self, e: Error) -> io::Error {
        let io = io::Error::from_raw_os_error(io_errno(&e));
        self.last_error = Some(e);
        io
    }

    /// Bytes of a request of `want` bytes that fit before the end (`want` > 0, pos < len).
    fn clip(&self, want: usize) -> usize {
        usize::try_from(self.len() - self.pos).map_or(want, |left| want.min(left))
    }

    /// The sector holding `pos`, the offset in it, and whether a request of `n` bytes goes
    /// through the bounce buffer (it does not start on a sector edge or is under a sector).
    fn place(&self, n: usize) -> (Sector, usize, bool) {
        let sector = Sector(self.pos / SECTOR_SIZE as u64);
        let head = usize::try_from(self.pos % SECTOR_SIZE as u64).unwrap_or(0);
        (sector, head, head != 0 || n < SECTOR_SIZE)
    }
}

impl<V> io::Read for VolumeIo<V>
where
    V: Deref<Target: Volume>,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.len() {
            return Ok(0);
        }
        let n = self.clip(buf.len());
        let (sector, head, bounce) = self.place(n);
        let done = if bounce {
            let take = n.min(SECTOR_SIZE - head);
            if let Err(e) = self.volume.read(sector, &mut self.bounce) {
                return Err(self.fail(e));
            }
            buf[..take].copy_from_slice(&self.bounce[head..head + take]);
            take
        } else {
            let len = n / SECTOR_SIZE * SECTOR_SIZE;
            if let Err(e) = self.volume.read(sector, &mut buf[..len]) {
                return Err(self.fail(e));
            }
            len
        };
        self.pos += done as u64;
        Ok(done)
    }
}

impl<V> io::Write for VolumeIo<V>
where
    V: Deref<Target: Volume>,
{
    /// ENOSPC at or past the end, as `blkdev_write_iter` answers; a write crossing the end
    /// is cut short there.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.len() {
            return Err(io::Error::from_raw_os_error(errno::ENOSPC));
        }
        let n = self.clip(buf.len());
        let (sector, head, bounce) = self.place(n);
        let done = if bounce {
            // Read-modify-write of the one sector the bytes fall in.
            let take = n.min(SECTOR_SIZE - head);
            let mut r = self.volume.read(sector, &mut self.bounce);
            if r.is_ok() {
                self.bounce[head..head + take].copy_from_slice(&buf[..take]);
                r = self.volume.write(sector, &self.bounce);
            }
            if let Err(e) = r {
                return Err(self.fail(e));
            }
            take
        } else {
            let len = n / SECTOR_SIZE * SECTOR_SIZE;
            if let Err(e) = self.volume.write(sector, &buf[..len]) {
                return Err(self.fail(e));
            }
            len
        };
        self.pos += done as u64;
        Ok(done)
    }

    /// `Volume::flush`: every write that returned is durable.
    fn flush(&mut self) -> io::Result<()> {
        self.volume.flush().map_err(|e| self.fail(e))
    }
}

impl<V> io::Seek for VolumeIo<V>
where
    V: Deref<Target: Volume>,
{
    /// Any position from 0 up may be set, past the end too (reads there return 0, writes
    /// fail); a position before 0 or past `u64::MAX` fails with EINVAL, as lseek does.
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let to = match from {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let to = to.ok_or_else(|| io::Error::from_raw_os_error(errno::EINVAL))?;
        self.pos = to;
        Ok(to)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

/// The errno an `io::Error` made from `e` carries: the OS's own for an `Io` error that has
/// one (ENOSPC from a full file system stays ENOSPC), `e.errno()` otherwise.
fn io_errno(e: &Error) -> i32 {
    match e {
        Error::Io { source, .. } => source.raw_os_error().unwrap_or(errno::EIO),
        e => e.errno(),
    }
}

/// The errno is kept: `raw_os_error()` of the result is `Some(errno)`.
///
/// An `io::Error` holds either an OS errno or a custom payload, never both, and readers of
/// `std::io` errors (and anything that hands them to C or a wire protocol, like an NBD
/// server) look at the errno, so the errno wins: an `Io` error whose source came from the
/// OS becomes that source, unchanged (its errno and words); every other error becomes
/// `io::Error::from_raw_os_error(e.errno())` (words: the OS's for that errno). The crate
/// error's own words are lost in this conversion; `VolumeIo` keeps them for
/// [`VolumeIo::take_error`], and callers holding the `Error` can log it before converting.
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io { source, .. } if source.raw_os_error().is_some() => source,
            e => io::Error::from_raw_os_error(io_errno(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::SectorCount;

    #[test]
    fn from_error_keeps_the_errno_and_the_os_source() {
        let os = Error::Io {
            device: "img".into(),
            source: io::Error::from_raw_os_error(errno::ENOSPC),
        };
        assert_eq!(io::Error::from(os).raw_os_error(), Some(errno::ENOSPC));
        let custom = Error::Io {
            device: "img".into(),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "short"),
        };
        assert_eq!(io::Error::from(custom).raw_os_error(), Some(errno::EIO));
        let range = Error::OutOfRange {
            sector: Sector(9),
            count: SectorCount(1),
            size: SectorCount(8),
        };
        assert_eq!(io::Error::from(range).raw_os_error(), Some(errno::EIO));
        let ro = Error::ReadOnly { target: "x".into() };
        let ro = io::Error::from(ro);
        assert_eq!(ro.raw_os_error(), Some(errno::EROFS));
        assert_eq!(ro.kind(), io::ErrorKind::ReadOnlyFilesystem);
        let busy = Error::Busy {
            what: "pool".into(),
            reason: "in use".into(),
        };
        assert_eq!(io::Error::from(busy).raw_os_error(), Some(errno::EBUSY));
    }
}
