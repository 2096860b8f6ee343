//! dm-cache metadata (kernel dm-cache-metadata.c, formats 1 and 2) read with the kernel's
//! checks: the superblock, the mapping array (`__le64`: origin block << 16 | flags), the
//! hint array, the dirty bitset (format 2; format 1 keeps `M_DIRTY` in the mapping) and the
//! discard bitset. Every damaged block is reported with its block number, byte offset and
//! field (`Error::Corrupt`).
//!
//! ```text
//!  block 0  superblock ─┬ mapping_root ──> array: cblock -> oblock << 16 | M_VALID | M_DIRTY
//!                       ├ hint_root ─────> array: cblock -> policy hint (4 bytes, smq)
//!                       ├ dirty_root ────> bitset: cblock -> dirty       (format 2 only)
//!                       ├ discard_root ──> bitset: discard block -> discarded
//!                       └ metadata_space_map_root (128 bytes, as thin's)
//! ```

use crate::error::{Error, Result};
use crate::targets::pdata::array;
use crate::targets::pdata::block::{checksum, corrupt, le32, le64, MetaDev, BLOCK_SIZE};
use crate::targets::pdata::space_map::SmRoot;

/// `CACHE_SUPERBLOCK_MAGIC` (06142003, octal in the kernel source).
pub const MAGIC: u64 = 0o6_142_003;
/// `SUPERBLOCK_CSUM_XOR` of dm-cache-metadata.c.
pub const SUPERBLOCK_CSUM_XOR: u32 = 9_031_977;
/// `MIN_CACHE_VERSION`..=`MAX_CACHE_VERSION`.
pub const VERSIONS: std::ops::RangeInclusive<u32> = 1..=2;
/// `CLEAN_SHUTDOWN` flag bit.
pub const CLEAN_SHUTDOWN: u32 = 1;
/// `NEEDS_CHECK` flag bit.
pub const NEEDS_CHECK: u32 = 2;
/// `M_VALID` mapping flag.
pub const M_VALID: u64 = 1;
/// `M_DIRTY` mapping flag (format 1).
pub const M_DIRTY: u64 = 2;
/// `CACHE_POLICY_NAME_SIZE`.
pub const POLICY_NAME_SIZE: usize = 16;
/// Name of the superblock in errors.
const SB: &str = "cache superblock";

/// `struct cache_disk_superblock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// `flags` (bit 0 clean shutdown, bit 1 needs check).
    pub flags: u32,
    /// `uuid`.
    pub uuid: [u8; 16],
    /// `version` (1 or 2).
    pub version: u32,
    /// `policy_name`, up to its first NUL.
    pub policy_name: String,
    /// `policy_version`.
    pub policy_version: [u32; 3],
    /// `policy_hint_size` as stored (see [`Superblock::hint_width`]).
    pub policy_hint_size: u32,
    /// `metadata_space_map_root`.
    pub metadata_sm: SmRoot,
    /// `mapping_root`.
    pub mapping_root: u64,
    /// `hint_root`.
    pub hint_root: u64,
    /// `discard_root`.
    pub discard_root: u64,
    /// `discard_block_size` (sectors).
    pub discard_block_size: u64,
    /// `discard_nr_blocks`.
    pub discard_nr_blocks: u64,
    /// `data_block_size` (sectors per cache block).
    pub data_block_size: u32,
    /// `metadata_block_size` (sectors, 8).
    pub metadata_block_size: u32,
    /// `cache_blocks`.
    pub cache_blocks: u32,
    /// `compat_flags`, `compat_ro_flags`, `incompat_flags`.
    pub compat: [u32; 3],
    /// `read_hits`, `read_misses`, `write_hits`, `write_misses`.
    pub stats: [u32; 4],
    /// `dirty_root` (format 2).
    pub dirty_root: u64,
}

impl Superblock {
    /// Decode block 0 with `sb_check`'s order of checks (blocknr, magic, checksum, version)
    /// and the incompatible-feature check of `__check_incompat_features`.
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        if b.len() < BLOCK_SIZE {
            return Err(corrupt(SB, 0, 0, "short block"));
        }
        let blocknr = le64(b, 8);
        if blocknr != 0 {
            return Err(corrupt(
                SB,
                0,
                8,
                format_args!("blocknr {blocknr}: wanted 0"),
            ));
        }
        let magic = le64(b, 32);
        if magic != MAGIC {
            return Err(corrupt(
                SB,
                0,
                32,
                format_args!("magic {magic}: wanted {MAGIC}"),
            ));
        }
        let want = checksum(&b[4..BLOCK_SIZE], SUPERBLOCK_CSUM_XOR);
        let got = le32(b, 0);
        if got != want {
            return Err(corrupt(SB, 0, 0, format_args!("csum {want}: wanted {got}")));
        }
        let version = le32(b, 40);
        if !VERSIONS.contains(&version) {
            return Err(corrupt(
                SB,
                0,
                40,
                format_args!(
                    "Cache metadata version {version} found, but only versions between 1 and 2 \
                     supported."
                ),
            ));
        }
        let incompat = le32(b, 252);
        if incompat != 0 {
            return Err(corrupt(
                SB,
                0,
                252,
                format_args!(
                    "could not access metadata due to unsupported optional features ({incompat:#x})"
                ),
            ));
        }
        let name = &b[44..44 + POLICY_NAME_SIZE];
        let end = name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(POLICY_NAME_SIZE);
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&b[16..32]);
        let sb = Superblock {
            flags: le32(b, 4),
            uuid,
            version,
            policy_name: String::from_utf8_lossy(&name[..end]).into_owned(),
            policy_version: [le32(b, 272), le32(b, 276), le32(b, 280)],
            policy_hint_size: le32(b, 60),
            metadata_sm: SmRoot::parse(b, 64),
            mapping_root: le64(b, 192),
            hint_root: le64(b, 200),
            discard_root: le64(b, 208),
            discard_block_size: le64(b, 216),
            discard_nr_blocks: le64(b, 224),
            data_block_size: le32(b, 232),
            metadata_block_size: le32(b, 236),
            cache_blocks: le32(b, 240),
            compat: [le32(b, 244), le32(b, 248), incompat],
            stats: [le32(b, 256), le32(b, 260), le32(b, 264), le32(b, 268)],
            dirty_root: if version >= 2 { le64(b, 284) } else { 0 },
        };
        if sb.metadata_block_size != 8 {
            return Err(corrupt(
                SB,
                0,
                236,
                format_args!("metadata_block_size {}: wanted 8", sb.metadata_block_size),
            ));
        }
        Ok(sb)
    }

    /// Bytes per hint as the tools read them: `policy_hint_size` only with the
    /// variable-hint-size incompat bit (which the kernel refuses), else 4: cache_restore
    /// 0.9 stores 0 there for smq's 4-byte hints, the kernel stores 4.
    #[must_use]
    pub fn hint_width(&self) -> u32 {
        if self.compat[2] & 1 != 0 {
            self.policy_hint_size
        } else {
            4
        }
    }

    /// Whether the last shutdown was clean (`CLEAN_SHUTDOWN`).
    #[must_use]
    pub fn clean_shutdown(&self) -> bool {
        self.flags & CLEAN_SHUTDOWN != 0
    }

    /// Whether the metadata is flagged for the tools (`NEEDS_CHECK`).
    #[must_use]
    pub fn needs_check(&self) -> bool {
        self.flags & NEEDS_CHECK != 0
    }
}

/// One valid mapping of the mapping array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Cache block.
    pub cblock: u64,
    /// Origin block it holds.
    pub oblock: u64,
    /// `M_DIRTY` in the mapping's flags (what cache_dump 0.9 prints as `dirty`).
    pub flag_dirty: bool,
    /// Dirty as the kernel loads it (`__load_mapping_v1`/`_v2`): the flag (format 1) or the
    /// dirty bitset (format 2) after a clean shutdown, every mapping otherwise.
    pub dirty: bool,
}

/// The decoded metadata of one cache.
#[derive(Clone, Debug)]
pub struct Metadata {
    /// The superblock.
    pub sb: Superblock,
    /// Valid mappings, by cache block.
    pub mappings: Vec<Mapping>,
    /// Hints of the valid mappings, in the same order (empty without a hint array).
    pub hints: Vec<Vec<u8>>,
    /// Discard blocks set in the discard bitset.
    pub discarded: Vec<u64>,
}

impl Metadata {
    /// Read and check everything the kernel loads (`dm_cache_metadata_open` then
    /// `dm_cache_load_mappings` and `dm_cache_load_discards`).
    pub fn open(dev: &MetaDev) -> Result<Metadata> {
        if dev.nr_blocks() == 0 {
            return Err(corrupt(
                SB,
                0,
                0,
                "the metadata device is smaller than one block",
            ));
        }
        let b0 = dev.read_raw(0, SB)?;
        if b0.iter().all(|&c| c == 0) {
            return Err(Error::Corrupt {
                what: SB,
                offset: 0,
                detail: "metadata block 0 is all zeroes: the metadata is not formatted".into(),
            });
        }
        let sb = Superblock::parse(&b0)?;
        let nr = u64::from(sb.cache_blocks);
        // Array blocks that hold valid mappings are never shared (only the zero default is,
        // by dm_array_resize), so valid mappings cannot outnumber what distinct blocks hold.
        let bound = dev.nr_blocks().saturating_mul(array::max_entries(8) as u64);
        let mut mappings = Vec::new();
        array::walk(dev, sb.mapping_root, nr, 8, &mut |cb, v| {
            let value = le64(v, 0);
            if value & M_VALID != 0 {
                if mappings.len() as u64 >= bound {
                    return Err(corrupt(
                        "mapping array",
                        sb.mapping_root,
                        0,
                        format_args!("more valid mappings than {bound} distinct array blocks hold"),
                    ));
                }
                let flag_dirty = value & M_DIRTY != 0;
                mappings.push(Mapping {
                    cblock: cb,
                    oblock: value >> 16,
                    flag_dirty,
                    dirty: !sb.clean_shutdown() || (sb.version == 1 && flag_dirty),
                });
            }
            Ok(())
        })?;
        if sb.version >= 2 && sb.clean_shutdown() {
            let mut i = 0;
            array::walk_bitset(dev, sb.dirty_root, nr, &mut |cb| {
                while i < mappings.len() && mappings[i].cblock < cb {
                    i += 1;
                }
                if let Some(m) = mappings.get_mut(i).filter(|m| m.cblock == cb) {
                    m.dirty = true;
                }
                Ok(())
            })?;
        }
        let mut hints = Vec::new();
        if sb.hint_root != 0 {
            let size = sb.hint_width() as usize;
            let mut i = 0;
            array::walk(dev, sb.hint_root, nr, size, &mut |cb, v| {
                if mappings.get(i).is_some_and(|m| m.cblock == cb) {
                    hints.push(v.to_vec());
                    i += 1;
                }
                Ok(())
            })?;
        }
        let mut discarded = Vec::new();
        if sb.discard_root != 0 {
            let dbound = dev
                .nr_blocks()
                .saturating_mul(array::max_entries(8) as u64 * 64);
            array::walk_bitset(dev, sb.discard_root, sb.discard_nr_blocks, &mut |d| {
                if discarded.len() as u64 >= dbound {
                    return Err(corrupt(
                        "discard bitset",
                        sb.discard_root,
                        0,
                        "more set bits than the metadata device holds",
                    ));
                }
                discarded.push(d);
                Ok(())
            })?;
        }
        Ok(Metadata {
            sb,
            mappings,
            hints,
            discarded,
        })
    }

    /// Mappings the kernel counts dirty (`nr_dirty` in the status).
    #[must_use]
    pub fn nr_dirty(&self) -> usize {
        self.mappings.iter().filter(|m| m.dirty).count()
    }
}

impl Metadata {
    /// cache_dump's XML (thin-provisioning-tools 0.9), byte for byte: the superblock, the
    /// valid mappings with `dirty` from the mapping's `M_DIRTY` flag (0.9 reads no dirty
    /// bitset, so format 2 metadata dumps every block clean), the hints of valid blocks in
    /// base64. 0.9 writes no discards.
    #[must_use]
    pub fn dump_xml(&self) -> String {
        use base64::Engine as _;
        use std::fmt::Write as _;
        let sb = &self.sb;
        let end = sb.uuid.iter().position(|&c| c == 0).unwrap_or(16);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "<superblock uuid=\"{}\" block_size=\"{}\" nr_cache_blocks=\"{}\" policy=\"{}\" \
             hint_width=\"{}\">",
            String::from_utf8_lossy(&sb.uuid[..end]),
            sb.data_block_size,
            sb.cache_blocks,
            sb.policy_name,
            sb.hint_width()
        );
        out.push_str("  <mappings>\n");
        for m in &self.mappings {
            let _ = writeln!(
                out,
                "    <mapping cache_block=\"{}\" origin_block=\"{}\" dirty=\"{}\"/>",
                m.cblock, m.oblock, m.flag_dirty
            );
        }
        out.push_str("  </mappings>\n  <hints>\n");
        for (m, h) in self.mappings.iter().zip(&self.hints) {
            let _ = writeln!(
                out,
                "    <hint cache_block=\"{}\" data=\"{}\"/>",
                m.cblock,
                base64::engine::general_purpose::STANDARD.encode(h)
            );
        }
        out.push_str("  </hints>\n</superblock>\n");
        out
    }
}
