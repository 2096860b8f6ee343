//! Build and check hash trees like veritysetup (cryptsetup `lib/verity/verity_hash.c`,
//! `VERITY_create_or_verify_hash`): level 0 from the data blocks, each higher level from the
//! level below as stored on the hash device, the root digest from the single top block.
//!
//! The bytes written equal veritysetup's: digests in slots (version 1: power-of-two slots,
//! zero padded; version 0: packed), the rest of each hash block zero, the superblock at
//! `hash_offset`, nothing else touched. Levels are hashed in chunks spread over all cores
//! (`std::thread::scope`), so memory stays bounded by the chunk size.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::hash::{BlockHasher, HashAlg};
use super::hash_tree::Geometry;
use super::superblock::{block_size_ok, Superblock, Uuid, MAX_SALT, SUPERBLOCK_SIZE};
use super::tree_io::{root_digest, FileSource, Level, Source, VolumeSource};
use super::{CorruptionMode, ErrorMode, VerityArgs};
use crate::error::{Error, Result};
use crate::targets::DeviceRef;
use crate::units::Sector;
use crate::volume::Volume;

/// What `veritysetup format` takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatParams {
    /// `--format`: 1 (normal) or 0 (Chrome OS).
    pub hash_type: u32,
    /// `--hash`.
    pub algorithm: HashAlg,
    /// `--data-block-size`.
    pub data_block_size: u32,
    /// `--hash-block-size`.
    pub hash_block_size: u32,
    /// `--data-blocks` (veritysetup default: the whole data device).
    pub data_blocks: u64,
    /// `--salt` (empty = none).
    pub salt: Vec<u8>,
    /// `--uuid`.
    pub uuid: Uuid,
    /// `--hash-offset`, bytes.
    pub hash_offset: u64,
    /// `false` with `--no-superblock`.
    pub superblock: bool,
}

impl FormatParams {
    /// cryptsetup's parameter checks.
    pub fn check(&self) -> Result<()> {
        if self.hash_type > 1 {
            return Err(Error::invalid(
                "format",
                format!("hash type {} is not 0 or 1", self.hash_type),
            ));
        }
        for (what, v) in [
            ("data block size", self.data_block_size),
            ("hash block size", self.hash_block_size),
        ] {
            if !block_size_ok(v) {
                return Err(Error::invalid(
                    what,
                    format!("{v} is not a power of two in 512..=524288"),
                ));
            }
        }
        if self.salt.len() > MAX_SALT {
            return Err(Error::invalid(
                "salt",
                format!("{} bytes; at most {MAX_SALT}", self.salt.len()),
            ));
        }
        if self.hash_offset % 512 != 0 {
            return Err(Error::invalid(
                "hash offset",
                "must be a multiple of 512 bytes",
            ));
        }
        if self
            .data_blocks
            .checked_mul(u64::from(self.data_block_size))
            .is_none_or(|b| b > i64::MAX as u64)
        {
            return Err(Error::invalid("data blocks", "data area overflows"));
        }
        self.geometry().map(|_| ())
    }

    /// The table's `hash_start_block` (cryptsetup `VERITY_hash_offset_block`).
    #[must_use]
    pub fn hash_start(&self) -> u64 {
        let hbs = u64::from(self.hash_block_size);
        if self.superblock {
            (self.hash_offset + SUPERBLOCK_SIZE as u64).div_ceil(hbs)
        } else {
            self.hash_offset / hbs
        }
    }

    /// The tree layout.
    pub fn geometry(&self) -> Result<Geometry> {
        Geometry::new(
            self.hash_type,
            self.data_block_size,
            self.hash_block_size,
            self.algorithm.digest_size(),
            self.data_blocks,
            self.hash_start(),
        )
        .map_err(|e| Error::invalid("verity geometry", e))
    }

    /// The superblock these parameters write.
    #[must_use]
    pub fn superblock(&self) -> Superblock {
        Superblock {
            hash_type: self.hash_type,
            uuid: self.uuid,
            algorithm: self.algorithm,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self.data_blocks,
            salt: self.salt.clone(),
        }
    }

    /// Parameters from a superblock found at `hash_offset`.
    #[must_use]
    pub fn from_superblock(sb: &Superblock, hash_offset: u64) -> FormatParams {
        FormatParams {
            hash_type: sb.hash_type,
            algorithm: sb.algorithm,
            data_block_size: sb.data_block_size,
            hash_block_size: sb.hash_block_size,
            data_blocks: sb.data_blocks,
            salt: sb.salt.clone(),
            uuid: sb.uuid,
            hash_offset,
            superblock: true,
        }
    }

    /// The `verity` table arguments for this tree (what `veritysetup open` loads).
    #[must_use]
    pub fn table_args(&self, data: &str, hash: &str, root: &[u8]) -> VerityArgs {
        VerityArgs {
            version: self.hash_type,
            data_dev: DeviceRef(data.to_string()),
            hash_dev: DeviceRef(hash.to_string()),
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks: self.data_blocks,
            hash_start: self.hash_start(),
            algorithm: self.algorithm,
            root_digest: root.to_vec(),
            salt: self.salt.clone(),
            corruption: CorruptionMode::Eio,
            error_mode: ErrorMode::Eio,
            ignore_zero_blocks: false,
            check_at_most_once: false,
            try_verify_in_tasklet: false,
            fec: None,
            root_hash_sig_key_desc: None,
        }
    }
}

/// Read the superblock at byte `hash_offset` of `hash`.
pub fn read_superblock(hash: &dyn Volume, hash_offset: u64) -> Result<Superblock> {
    if hash_offset % 512 != 0 {
        return Err(Error::invalid(
            "hash offset",
            "must be a multiple of 512 bytes",
        ));
    }
    let size = hash.size().bytes();
    if hash_offset.saturating_add(SUPERBLOCK_SIZE as u64) > size {
        return Err(Error::Corrupt {
            what: "verity superblock",
            offset: hash_offset,
            detail: format!(
                "the hash device has {size} bytes; the superblock needs {SUPERBLOCK_SIZE} \
                 bytes at offset {hash_offset}"
            ),
        });
    }
    let mut b = [0u8; SUPERBLOCK_SIZE];
    hash.read(Sector(hash_offset / 512), &mut b)?;
    Superblock::decode(&b, hash_offset)
}

fn check_data_size(p: &FormatParams, data: &dyn Volume) -> Result<()> {
    let need = p.data_blocks * u64::from(p.data_block_size);
    if data.size().bytes() < need {
        return Err(Error::invalid(
            "data device",
            format!("too small: {} bytes, {need} needed", data.size().bytes()),
        ));
    }
    Ok(())
}

/// Write the hash tree (and superblock) for `data` into `hash`, byte-identical to
/// `veritysetup format`; returns the root digest. The file grows as needed.
pub fn format(p: &FormatParams, data: &dyn Volume, hash: &File) -> Result<Vec<u8>> {
    p.check()?;
    check_data_size(p, data)?;
    let geo = p.geometry()?;
    let hasher = BlockHasher::new(p.algorithm, p.hash_type, &p.salt);
    let hbs = u64::from(p.hash_block_size);
    let werr = Error::io(&"hash device");
    for i in 0..geo.levels() {
        let file_src = FileSource(hash);
        let data_src = VolumeSource(data);
        let level = if i == 0 {
            Level {
                geo: &geo,
                hasher: &hasher,
                src: &data_src,
                src_off: 0,
                src_bs: p.data_block_size as usize,
                count: p.data_blocks,
            }
        } else {
            Level {
                geo: &geo,
                hasher: &hasher,
                src: &file_src,
                src_off: geo.level_block[i - 1] * hbs,
                src_bs: hbs as usize,
                count: geo.level_size[i - 1],
            }
        };
        let base = geo.level_block[i];
        level.run(&|h, bytes| {
            hash.write_all_at(bytes, (base + h) * hbs)
                .map_err(Error::io(&"hash device"))
        })?;
    }
    if p.superblock {
        hash.write_all_at(&p.superblock().encode()?, p.hash_offset)
            .map_err(werr)?;
    }
    hash.sync_data().map_err(Error::io(&"hash device"))?;
    root_digest(&geo, &hasher, &VolumeSource(data), &FileSource(hash))
}

/// Check `data` against the tree on `hash` and the `root` digest like `veritysetup verify`:
/// every stored digest, every padding byte, then the root.
pub fn verify(p: &FormatParams, data: &dyn Volume, hash: &dyn Volume, root: &[u8]) -> Result<()> {
    p.check()?;
    check_data_size(p, data)?;
    if root.len() != p.algorithm.digest_size() {
        return Err(Error::invalid(
            "root hash",
            format!(
                "{} bytes; {} takes {}",
                root.len(),
                p.algorithm,
                p.algorithm.digest_size()
            ),
        ));
    }
    let geo = p.geometry()?;
    let hbs = u64::from(p.hash_block_size);
    let need = geo.hash_end_bytes().unwrap_or(u64::MAX);
    if hash.size().bytes() < need {
        return Err(Error::invalid(
            "hash device",
            format!(
                "too small: {} bytes, the tree needs {need}",
                hash.size().bytes()
            ),
        ));
    }
    let hasher = BlockHasher::new(p.algorithm, p.hash_type, &p.salt);
    let hash_src = VolumeSource(hash);
    let data_src = VolumeSource(data);
    for i in 0..geo.levels() {
        let (src, src_off, src_bs, count): (&dyn Source, u64, u64, u64) = if i == 0 {
            (&data_src, 0, u64::from(p.data_block_size), p.data_blocks)
        } else {
            (
                &hash_src,
                geo.level_block[i - 1] * hbs,
                hbs,
                geo.level_size[i - 1],
            )
        };
        let level = Level {
            geo: &geo,
            hasher: &hasher,
            src,
            src_off,
            src_bs: src_bs as usize,
            count,
        };
        let base = geo.level_block[i];
        level.run(&|h, bytes| {
            let mut stored = vec![0u8; bytes.len()];
            hash_src.read_at((base + h) * hbs, &mut stored)?;
            if stored == bytes {
                return Ok(());
            }
            let at = stored
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(0) as u64;
            let (blk, within) = (h + at / hbs, at % hbs);
            let slot = within / geo.slot_size() as u64;
            let in_digest = within % (geo.slot_size() as u64) < geo.digest_size as u64
                && slot < geo.per_block() as u64;
            let src_index = blk * geo.per_block() as u64 + slot;
            Err(if in_digest && src_index < count {
                Error::Corrupt {
                    what: "verity data",
                    offset: src_off + src_index * src_bs,
                    detail: format!(
                        "verification failed at position {}",
                        src_off + src_index * src_bs
                    ),
                }
            } else {
                let pos = (base + h) * hbs + at;
                Error::Corrupt {
                    what: "verity hash area",
                    offset: pos,
                    detail: format!("spare area is not zeroed at position {pos}"),
                }
            })
        })?;
    }
    let computed = root_digest(&geo, &hasher, &data_src, &hash_src)?;
    if computed != root {
        return Err(Error::Corrupt {
            what: "verity root hash",
            offset: geo.hash_start * hbs,
            detail: "verification of root hash failed".into(),
        });
    }
    Ok(())
}
