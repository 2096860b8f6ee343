//! The dm-integrity superblock: the first 4 KiB (`SB_SECTORS`) at the table's offset
//! (kernel `struct superblock`, versions 1 to 7).
//!
//! ```text
//!  0  magic "integrt\0"       8  version            9  log2_interleave_sectors
//! 10  integrity_tag_size le16 12  journal_sections le32
//! 16  provided_data_sectors le64                    24  flags le32
//! 28  log2_sectors_per_block 29  log2_blocks_per_bitmap_bit 30 pad[2]
//! 32  recalc_sector le64      40  pad2[8]           48  salt[16]
//! (with fix_hmac and a journal_mac, the MAC of bytes [0, 512 - mac) ends sector 0)
//! ```

use crate::error::{Error, Result};

/// `SB_MAGIC`.
pub const MAGIC: &[u8; 8] = b"integrt\0";
/// Sectors the superblock area takes (`SB_SECTORS`).
pub const SB_SECTORS: u64 = 8;
/// Newest version the kernel reads (`SB_VERSION_7`).
pub const MAX_VERSION: u8 = 7;
/// Salt bytes (`SALT_SIZE`).
pub const SALT_SIZE: usize = 16;

/// `SB_FLAG_HAVE_JOURNAL_MAC`.
pub const FLAG_HAVE_JOURNAL_MAC: u32 = 0x1;
/// `SB_FLAG_RECALCULATING`.
pub const FLAG_RECALCULATING: u32 = 0x2;
/// `SB_FLAG_DIRTY_BITMAP`.
pub const FLAG_DIRTY_BITMAP: u32 = 0x4;
/// `SB_FLAG_FIXED_PADDING`.
pub const FLAG_FIXED_PADDING: u32 = 0x8;
/// `SB_FLAG_FIXED_HMAC`.
pub const FLAG_FIXED_HMAC: u32 = 0x10;
/// `SB_FLAG_INLINE`.
pub const FLAG_INLINE: u32 = 0x20;
/// `SB_FLAG_DISCARD_KEYED`.
pub const FLAG_DISCARD_KEYED: u32 = 0x40;

/// The decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Format version (1..=7), set from the flags on every write (`sb_set_version`).
    pub version: u8,
    /// log2 of the data sectors between two tag areas.
    pub log2_interleave_sectors: u8,
    /// Tag bytes per block.
    pub integrity_tag_size: u16,
    /// Journal sections (the journal or bitmap area's size).
    pub journal_sections: u32,
    /// Sectors the device provides (what userspace sees).
    pub provided_data_sectors: u64,
    /// `SB_FLAG_*`.
    pub flags: u32,
    /// log2 of the sectors in one block.
    pub log2_sectors_per_block: u8,
    /// log2 of the blocks one bitmap bit covers.
    pub log2_blocks_per_bitmap_bit: u8,
    /// Where recalculation has got to (with `FLAG_RECALCULATING`).
    pub recalc_sector: u64,
    /// Salt of the keyed hashes (with `FLAG_FIXED_HMAC`).
    pub salt: [u8; SALT_SIZE],
}

impl Superblock {
    /// Bytes of the structure (the rest of the 4 KiB area is zero or the MAC).
    pub const SIZE: usize = 64;

    /// Decode the first sector. `None` when the magic is not there (a blank or foreign
    /// device); an error names the field for a superblock the kernel would refuse whatever
    /// the table says.
    pub fn decode(b: &[u8; Self::SIZE]) -> Result<Option<Superblock>> {
        if &b[0..8] != MAGIC {
            return Ok(None);
        }
        let le16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let le32 = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let le64 = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let mut salt = [0u8; SALT_SIZE];
        salt.copy_from_slice(&b[48..64]);
        let sb = Superblock {
            version: b[8],
            log2_interleave_sectors: b[9],
            integrity_tag_size: le16(10),
            journal_sections: le32(12),
            provided_data_sectors: le64(16),
            flags: le32(24),
            log2_sectors_per_block: b[28],
            log2_blocks_per_bitmap_bit: b[29],
            recalc_sector: le64(32),
            salt,
        };
        if sb.version == 0 || sb.version > MAX_VERSION {
            return Err(corrupt(8, format!("Unknown version {}", sb.version)));
        }
        Ok(Some(sb))
    }

    /// Encode (padding zero).
    #[must_use]
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8] = self.version;
        b[9] = self.log2_interleave_sectors;
        b[10..12].copy_from_slice(&self.integrity_tag_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.journal_sections.to_le_bytes());
        b[16..24].copy_from_slice(&self.provided_data_sectors.to_le_bytes());
        b[24..28].copy_from_slice(&self.flags.to_le_bytes());
        b[28] = self.log2_sectors_per_block;
        b[29] = self.log2_blocks_per_bitmap_bit;
        b[32..40].copy_from_slice(&self.recalc_sector.to_le_bytes());
        b[48..64].copy_from_slice(&self.salt);
        b
    }

    /// Whether `flag` (an `FLAG_*`) is set.
    #[must_use]
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    /// `sb_set_version`: the lowest version that has every feature in use.
    pub fn set_version(&mut self, bitmap_mode: bool, meta_dev: bool) {
        self.version = if self.has(FLAG_DISCARD_KEYED) {
            7
        } else if self.has(FLAG_INLINE) {
            6
        } else if self.has(FLAG_FIXED_HMAC) {
            5
        } else if self.has(FLAG_FIXED_PADDING) {
            4
        } else if bitmap_mode || self.has(FLAG_DIRTY_BITMAP) {
            3
        } else if meta_dev || self.has(FLAG_RECALCULATING) {
            2
        } else {
            1
        };
    }

    /// Flag names as `integritysetup dump` prints them, in its order.
    #[must_use]
    pub fn flag_names(&self) -> Vec<&'static str> {
        [
            (FLAG_HAVE_JOURNAL_MAC, "have_journal_mac"),
            (FLAG_RECALCULATING, "recalculating"),
            (FLAG_DIRTY_BITMAP, "dirty_bitmap"),
            (FLAG_FIXED_PADDING, "fix_padding"),
            (FLAG_FIXED_HMAC, "fix_hmac"),
            (FLAG_INLINE, "inline"),
            (FLAG_DISCARD_KEYED, "discard_keyed"),
        ]
        .into_iter()
        .filter(|(f, _)| self.has(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

/// A superblock error at byte `offset` of the superblock.
pub(crate) fn corrupt(offset: u64, detail: String) -> Error {
    Error::Corrupt {
        what: "integrity superblock",
        offset,
        detail,
    }
}
