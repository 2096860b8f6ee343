//! Metadata blocks: 4096-byte reads from the metadata device, the persistent-data checksum
//! (`dm_bm_checksum`: CRC-32C seeded with `~0`, no final inversion, xored with a per-type
//! salt) and the `blocknr` self-reference every block carries at offset 8.

use std::fmt;

use crate::error::{Error, Result};
use crate::units::Sector;
use crate::volume::SharedVolume;

/// Metadata block size in bytes (`THIN_METADATA_BLOCK_SIZE`, 8 sectors).
pub const BLOCK_SIZE: usize = 4096;
/// `BLOCK_SIZE` as a u64, for byte offsets.
const BLOCK_BYTES: u64 = 4096;
/// Sectors per metadata block.
pub const BLOCK_SECTORS: u64 = 8;

/// `SUPERBLOCK_CSUM_XOR` (dm-thin-metadata.c).
pub const SUPERBLOCK_CSUM_XOR: u32 = 160_774;
/// `BTREE_CSUM_XOR` (persistent-data/dm-btree-spine.c).
pub const BTREE_CSUM_XOR: u32 = 121_107;
/// `BITMAP_CSUM_XOR` (persistent-data/dm-space-map-common.c).
pub const BITMAP_CSUM_XOR: u32 = 240_779;
/// `INDEX_CSUM_XOR` (persistent-data/dm-space-map-common.c, the metadata index block).
pub const INDEX_CSUM_XOR: u32 = 160_478;

/// `dm_bm_checksum(data, len, xor)`: `crc32c(~0, data) ^ xor`, where the kernel's crc32c
/// does not invert at the end (the crc32c crate does, so undo it).
#[must_use]
pub fn checksum(data: &[u8], xor: u32) -> u32 {
    crc32c::crc32c(data) ^ 0xffff_ffff ^ xor
}

/// Little-endian u32 at `off` (callers index inside a 4096-byte block).
#[must_use]
pub fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// Little-endian u64 at `off`.
#[must_use]
pub fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Store a little-endian u32 at `off`.
pub fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Store a little-endian u64 at `off`.
pub fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Set the checksum at offset 0 over bytes 4.. with `xor` (what the kernel's `prepare_for_write`
/// validators do).
pub fn seal(b: &mut [u8], xor: u32) {
    let c = checksum(&b[4..], xor);
    put32(b, 0, c);
}

/// A corrupt-metadata error naming the field, the block and the byte offset in the block.
pub fn corrupt(what: &'static str, block: u64, off: usize, detail: impl fmt::Display) -> Error {
    let off64 = u64::try_from(off).unwrap_or(u64::MAX);
    Error::Corrupt {
        what,
        offset: block.saturating_mul(BLOCK_BYTES).saturating_add(off64),
        detail: format!("metadata block {block}, byte {off}: {detail}"),
    }
}

/// Which validator a block must pass: its checksum salt and its name in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The thin superblock (or a metadata-snapshot copy of it).
    Superblock,
    /// A btree node.
    BtreeNode,
    /// A space-map bitmap block.
    Bitmap,
    /// The metadata space map's index block.
    Index,
}

impl Kind {
    /// The checksum salt of this block type.
    #[must_use]
    pub fn xor(self) -> u32 {
        match self {
            Kind::Superblock => SUPERBLOCK_CSUM_XOR,
            Kind::BtreeNode => BTREE_CSUM_XOR,
            Kind::Bitmap => BITMAP_CSUM_XOR,
            Kind::Index => INDEX_CSUM_XOR,
        }
    }

    /// The structure's name in errors.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Superblock => "thin superblock",
            Kind::BtreeNode => "btree node",
            Kind::Bitmap => "space map bitmap",
            Kind::Index => "space map index block",
        }
    }
}

/// The metadata device as an array of 4096-byte blocks.
#[derive(Clone, Debug)]
pub struct MetaDev {
    volume: SharedVolume,
    nr_blocks: u64,
}

impl MetaDev {
    /// Wrap a metadata volume; its size in whole blocks bounds every block number.
    #[must_use]
    pub fn new(volume: SharedVolume) -> MetaDev {
        let nr_blocks = volume.size().0 / BLOCK_SECTORS;
        MetaDev { volume, nr_blocks }
    }

    /// Whole 4096-byte blocks on the device.
    #[must_use]
    pub fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    /// The underlying volume.
    #[must_use]
    pub fn volume(&self) -> &SharedVolume {
        &self.volume
    }

    /// Read block `b` without checks. `what` names the reference in errors when `b` lies
    /// beyond the device.
    pub fn read_raw(&self, b: u64, what: &'static str) -> Result<Vec<u8>> {
        if b >= self.nr_blocks {
            return Err(Error::Corrupt {
                what,
                offset: 0,
                detail: format!(
                    "block {b} is beyond the metadata device ({} blocks)",
                    self.nr_blocks
                ),
            });
        }
        let mut buf = vec![0; BLOCK_SIZE];
        self.volume.read(Sector(b * BLOCK_SECTORS), &mut buf)?;
        Ok(buf)
    }

    /// Read block `b` and run the kernel validator for `kind`: the stored `blocknr` (offset 8)
    /// must be `b` (`-ENOTBLK` in the kernel) and the checksum must match (`-EILSEQ`).
    pub fn read(&self, b: u64, kind: Kind) -> Result<Vec<u8>> {
        let buf = self.read_raw(b, kind.name())?;
        check(&buf, b, kind)?;
        Ok(buf)
    }

    /// Write block `b` as it is (callers seal it first).
    pub fn write(&self, b: u64, buf: &[u8]) -> Result<()> {
        if b >= self.nr_blocks {
            return Err(Error::invalid(
                "metadata block",
                format!("{b} is beyond the device ({} blocks)", self.nr_blocks),
            ));
        }
        self.volume.write(Sector(b * BLOCK_SECTORS), buf)
    }
}

/// The validator checks of one block already read.
pub fn check(buf: &[u8], b: u64, kind: Kind) -> Result<()> {
    let stored = le64(buf, 8);
    if stored != b {
        return Err(corrupt(
            kind.name(),
            b,
            8,
            format_args!("blocknr field says {stored}"),
        ));
    }
    let want = checksum(&buf[4..], kind.xor());
    let got = le32(buf, 0);
    if got != want {
        return Err(corrupt(
            kind.name(),
            b,
            0,
            format_args!("checksum {got:#010x}, computed {want:#010x}"),
        ));
    }
    Ok(())
}
