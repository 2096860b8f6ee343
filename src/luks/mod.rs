//! LUKS1 and LUKS2 in user space: read and check the headers, unlock a key slot with a
//! passphrase (or take a volume key), and hand back the dm-crypt table line cryptsetup
//! would load, or the decrypted [`Volume`] itself, built as a [`Crypt`] target.
//!
//! Formats: cryptsetup 2.6 (lib/luks1/luks.h, lib/luks2/luks2.h); the unlock path follows
//! lib/luks1/keymanage.c (`LUKS_open_key`) and lib/luks2/luks2_keyslot_luks2.c
//! (`luks2_keyslot_get_key`): KDF, decrypt the slot area with the area's cipher in
//! 512-byte sectors from 0, AF merge ([`hash::af_merge`]), digest check.
//!
//! ```no_run
//! use dmemu::luks::{Luks, KdfLimits};
//! use dmemu::{Keys, Volume, Sector};
//! let luks = Luks::open_path("disk.img", None, dmemu::Access::ReadOnly)?;
//! let key = luks.unlock(b"passphrase", None, &KdfLimits::default())?;
//! println!("{}", luks.table_line(&key, "disk.img", Keys::Hidden, false)?);
//! let vol = luks.volume(&key)?;
//! let mut first = vec![0u8; 4096];
//! vol.read(Sector(0), &mut first)?;
//! # Ok::<(), dmemu::Error>(())
//! ```
//!
//! [`Crypt`]: crate::targets::crypt::Crypt

pub mod activate;
#[cfg(feature = "cli")]
pub mod cli;
pub mod dump;
pub mod hash;
pub mod kdf;
pub mod luks1;
pub mod luks2;
pub mod unlock;

use std::path::Path;
use std::sync::Arc;

pub use self::kdf::{
    Kdf, KdfBudget, KdfLimits, DEFAULT_MAX_KDF_MEMORY_KIB, DEFAULT_MAX_TOTAL_WORK,
};
pub use self::luks1::Luks1Header;
pub use self::luks2::Luks2Header;
pub use self::unlock::VolumeKey;
use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};
use crate::volume::{Access, FileVolume, MmapVolume, SharedVolume, Volume};

/// Largest volume or key-slot key accepted, in bytes (4096 bits).
pub const MAX_KEY_BYTES: u32 = 512;
/// Largest key material (key size × stripes) read for one key slot: 32 MiB.
pub const MAX_MATERIAL_BYTES: u64 = 32 << 20;

/// A `Corrupt` error about `what` at byte `offset` of the header device.
pub(crate) fn corrupt(what: &'static str, offset: u64, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        what,
        offset,
        detail: detail.into(),
    }
}

/// Read `len` bytes at byte `offset` (a multiple of 512) of `dev`. Callers bound `len`.
/// `len` bytes at byte `offset` (any alignment: cryptsetup accepts key-slot areas at
/// unaligned offsets), refused when they run past the end of `dev`.
pub(crate) fn read_at(dev: &dyn Volume, offset: u64, len: usize) -> Result<Vec<u8>> {
    let skip = (offset % 512) as usize;
    let span = (skip + len).div_ceil(512) * 512;
    let end = offset.saturating_add(len as u64);
    if end > dev.size().bytes() {
        return Err(corrupt(
            "LUKS area",
            offset,
            format!(
                "{len} bytes run past the end of the device ({} bytes)",
                dev.size().bytes()
            ),
        ));
    }
    let mut buf = vec![0u8; span];
    dev.read(Sector(offset / 512), &mut buf)?;
    buf.truncate(skip + len);
    buf.drain(..skip);
    Ok(buf)
}

/// A parsed header of either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// LUKS1.
    V1(Luks1Header),
    /// LUKS2.
    V2(Luks2Header),
}

/// A LUKS device: its header and the devices holding header and data.
#[derive(Debug)]
pub struct Luks {
    /// The parsed header.
    pub header: Header,
    header_dev: SharedVolume,
    data_dev: SharedVolume,
    detached: bool,
}

impl Luks {
    /// Read the header from `header` (a detached header) or from `data`.
    pub fn open(data: SharedVolume, header: Option<SharedVolume>) -> Result<Luks> {
        let detached = header.is_some();
        let header_dev = header.unwrap_or_else(|| data.clone());
        let dev_bytes = header_dev.size().bytes();
        if dev_bytes < 1024 {
            return Err(corrupt(
                "LUKS header",
                0,
                format!("the device has only {dev_bytes} bytes, a LUKS header needs at least 1024"),
            ));
        }
        let first = read_at(&*header_dev, 0, 1024)?;
        let header = if &first[..6] == luks1::MAGIC && first[6..8] == [0, 1] {
            Header::V1(Luks1Header::parse(&first, dev_bytes, detached)?)
        } else {
            // LUKS2, or a damaged primary: the secondary copy may still be good.
            Header::V2(Luks2Header::read(&*header_dev)?)
        };
        Ok(Luks {
            header,
            header_dev,
            data_dev: data,
            detached,
        })
    }

    /// Open image files: `data`, and the detached header file if given.
    pub fn open_path(
        data: impl AsRef<Path>,
        header: Option<&Path>,
        access: Access,
    ) -> Result<Luks> {
        // A regular file read only is mapped: crypt then decrypts from the mapping in one
        // pass (`Volume::mapped`).
        let data = data.as_ref();
        let d: SharedVolume =
            if access == Access::ReadOnly && std::fs::metadata(data).is_ok_and(|m| m.is_file()) {
                Arc::new(MmapVolume::open(data)?)
            } else {
                Arc::new(FileVolume::open(data, access)?)
            };
        let h = match header {
            Some(p) => Some(Arc::new(FileVolume::open(p, Access::ReadOnly)?) as SharedVolume),
            None => None,
        };
        Luks::open(d, h)
    }

    /// 1 or 2.
    #[must_use]
    pub fn version(&self) -> u16 {
        match self.header {
            Header::V1(_) => 1,
            Header::V2(_) => 2,
        }
    }

    /// The header's UUID.
    #[must_use]
    pub fn uuid(&self) -> &str {
        match &self.header {
            Header::V1(h) => &h.uuid,
            Header::V2(h) => &h.bin.uuid,
        }
    }

    /// Problems found on the way that did not stop us (a damaged header copy).
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        match &self.header {
            Header::V1(_) => &[],
            Header::V2(h) => &h.warnings,
        }
    }

    /// The data device's size.
    #[must_use]
    pub fn data_size(&self) -> SectorCount {
        self.data_dev.size()
    }

    /// Whether the header lives on its own device.
    #[must_use]
    pub fn is_detached(&self) -> bool {
        self.detached
    }
}

#[cfg(test)]
mod tests;
