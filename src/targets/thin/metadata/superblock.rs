//! The thin superblock (block 0; `struct thin_disk_superblock` in dm-thin-metadata.c) and
//! the space-map roots embedded in it (`struct disk_sm_root`).

use crate::error::Result;

use super::block::{corrupt, le32, le64, put32, put64, seal, BLOCK_SIZE, SUPERBLOCK_CSUM_XOR};
pub use crate::targets::pdata::space_map::{SmRoot, SM_ROOT_SIZE};

/// `THIN_SUPERBLOCK_MAGIC`.
pub const MAGIC: u64 = 27_022_010;
/// `THIN_SUPERBLOCK_LOCATION`.
pub const LOCATION: u64 = 0;
/// `THIN_VERSION`: what the kernel writes.
pub const VERSION: u32 = 2;
/// `THIN_METADATA_NEEDS_CHECK_FLAG` in `flags`.
pub const NEEDS_CHECK: u32 = 1;
/// A decoded thin superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// `flags` (bit 0: needs_check).
    pub flags: u32,
    /// `uuid` (the kernel leaves it zero).
    pub uuid: [u8; 16],
    /// `version` (the kernel writes 2, thin_restore 0.9 writes 1; not checked on open).
    pub version: u32,
    /// The pool's current time (bumped by each snapshot).
    pub time: u32,
    /// Userspace transaction id (`set_transaction_id`).
    pub transaction_id: u64,
    /// Block of the metadata snapshot's superblock copy; 0 when none is held.
    pub held_root: u64,
    /// Data space map root.
    pub data_sm: SmRoot,
    /// Metadata space map root.
    pub metadata_sm: SmRoot,
    /// Root of the two-level mapping tree (dev id → virtual block → block and time).
    pub data_mapping_root: u64,
    /// Root of the device details tree.
    pub device_details_root: u64,
    /// Data block size in 512-byte sectors.
    pub data_block_size: u32,
    /// Metadata block size in sectors (8).
    pub metadata_block_size: u32,
    /// Metadata device size in blocks when formatted.
    pub metadata_nr_blocks: u64,
    /// `compat_flags`.
    pub compat_flags: u32,
    /// `compat_ro_flags` (no bit is known to the kernel: any refuses read-write use).
    pub compat_ro_flags: u32,
    /// `incompat_flags` (no bit is known: any refuses the metadata).
    pub incompat_flags: u32,
}

impl Superblock {
    /// The superblock of fresh metadata before any tree is written (`__format_metadata`'s
    /// fields): version 2, time and transaction 0, no roots, empty space maps of
    /// `nr_data_blocks` and `nr_meta` blocks.
    #[must_use]
    pub fn fresh(data_block_size: u32, nr_data_blocks: u64, nr_meta: u64) -> Superblock {
        Superblock {
            flags: 0,
            uuid: [0; 16],
            version: VERSION,
            time: 0,
            transaction_id: 0,
            held_root: 0,
            data_sm: SmRoot {
                nr_blocks: nr_data_blocks,
                ..SmRoot::default()
            },
            metadata_sm: SmRoot {
                nr_blocks: nr_meta,
                ..SmRoot::default()
            },
            data_mapping_root: 0,
            device_details_root: 0,
            data_block_size,
            metadata_block_size: 8,
            metadata_nr_blocks: nr_meta,
            compat_flags: 0,
            compat_ro_flags: 0,
            incompat_flags: 0,
        }
    }

    /// Decode a superblock read from `block` (already checksum-checked for block 0; a
    /// metadata snapshot copy lives elsewhere). Checks what the kernel's `sb_check` and
    /// `__check_incompat_features` check: magic and unsupported feature bits.
    pub fn parse(b: &[u8], block: u64) -> Result<Superblock> {
        let magic = le64(b, 32);
        if magic != MAGIC {
            return Err(corrupt(
                "thin superblock magic",
                block,
                32,
                format_args!("{magic}, wanted {MAGIC}"),
            ));
        }
        let sb = Superblock::fields(b);
        if sb.incompat_flags != 0 {
            return Err(corrupt(
                "thin superblock incompat_flags",
                block,
                360,
                format_args!(
                    "could not access metadata due to unsupported optional features ({:x})",
                    sb.incompat_flags
                ),
            ));
        }
        if sb.metadata_block_size != 8 {
            return Err(corrupt(
                "thin superblock metadata_block_size",
                block,
                340,
                format_args!("{} sectors, only 8 is supported", sb.metadata_block_size),
            ));
        }
        Ok(sb)
    }

    /// Decode a superblock's fields without checking any (thin_dump 0.9 checks only the
    /// checksum: it prints a superblock with another magic, blocknr, metadata block size
    /// or incompat flags).
    #[must_use]
    pub fn fields(b: &[u8]) -> Superblock {
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&b[16..32]);
        Superblock {
            flags: le32(b, 4),
            uuid,
            version: le32(b, 40),
            time: le32(b, 44),
            transaction_id: le64(b, 48),
            held_root: le64(b, 56),
            data_sm: SmRoot::parse(b, 64),
            metadata_sm: SmRoot::parse(b, 192),
            data_mapping_root: le64(b, 320),
            device_details_root: le64(b, 328),
            data_block_size: le32(b, 336),
            metadata_block_size: le32(b, 340),
            metadata_nr_blocks: le64(b, 344),
            compat_flags: le32(b, 352),
            compat_ro_flags: le32(b, 356),
            incompat_flags: le32(b, 360),
        }
    }

    /// Whether `needs_check` is set.
    #[must_use]
    pub fn needs_check(&self) -> bool {
        self.flags & NEEDS_CHECK != 0
    }

    /// Encode as block `block` with its checksum (`sb_prepare_for_write`).
    #[must_use]
    pub fn encode(&self, block: u64) -> Vec<u8> {
        let mut b = vec![0; BLOCK_SIZE];
        put32(&mut b, 4, self.flags);
        put64(&mut b, 8, block);
        b[16..32].copy_from_slice(&self.uuid);
        put64(&mut b, 32, MAGIC);
        put32(&mut b, 40, self.version);
        put32(&mut b, 44, self.time);
        put64(&mut b, 48, self.transaction_id);
        put64(&mut b, 56, self.held_root);
        self.data_sm.store(&mut b, 64);
        self.metadata_sm.store(&mut b, 192);
        put64(&mut b, 320, self.data_mapping_root);
        put64(&mut b, 328, self.device_details_root);
        put32(&mut b, 336, self.data_block_size);
        put32(&mut b, 340, self.metadata_block_size);
        put64(&mut b, 344, self.metadata_nr_blocks);
        put32(&mut b, 352, self.compat_flags);
        put32(&mut b, 356, self.compat_ro_flags);
        put32(&mut b, 360, self.incompat_flags);
        seal(&mut b, SUPERBLOCK_CSUM_XOR);
        b
    }
}
