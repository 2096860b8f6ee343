//! `dmemu integrity dump`: what `integritysetup dump` (cryptsetup 2.6.1,
//! `INTEGRITY_dump`) prints for an image, byte for byte, and the kernel's refusals of the
//! same superblock as warnings.
//!
//! integritysetup 2.6.1 reads the first 40 bytes (its `struct superblock` stops before the salt), wants the magic and a version from 1 to
//! 5, and prints every field as stored (no sanity checks: `log2_interleave_sectors` as a
//! signed byte, `sector_size` as the C `unsigned` `512 << log2_sectors_per_block`, the
//! shift count taken mod 32 as x86 does). Those two refusals are errors here, naming the
//! offset and field; what the kernel would refuse on open (geometry, sizes) is reported
//! beside the dump by [`kernel_refusal`], stdout staying what integritysetup prints.

use std::fmt::Write as _;

use crate::error::{Error, Result};

use super::layout::Layout;
use super::superblock::{
    Superblock, FLAG_DIRTY_BITMAP, FLAG_FIXED_HMAC, FLAG_FIXED_PADDING, FLAG_HAVE_JOURNAL_MAC,
    FLAG_RECALCULATING, MAGIC,
};

/// Bytes of cryptsetup 2.6.1's `struct superblock` (up to `recalc_sector`; the salt is
/// not in it): a shorter image is "not a valid INTEGRITY device".
pub const DUMP_SB_BYTES: usize = 40;
/// Newest superblock version integritysetup 2.6.1 reads (`SB_VERSION_5`).
pub const DUMP_MAX_VERSION: u8 = 5;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn refuse(offset: u64, detail: String) -> Error {
    Error::Corrupt {
        what: "integrity superblock",
        offset,
        detail,
    }
}

/// The superblock as integritysetup 2.6.1 accepts it from the image's first bytes
/// (`INTEGRITY_read_superblock`): at least 40 bytes, the magic, a version from 1 to 5.
pub fn read_superblock(image: &[u8]) -> Result<Superblock> {
    if image.len() < DUMP_SB_BYTES {
        return Err(refuse(
            image.len() as u64,
            format!(
                "field magic: the image ends after {} bytes, inside the superblock \
                 (integritysetup reads its first {DUMP_SB_BYTES} bytes)",
                image.len()
            ),
        ));
    }
    // The salt (not printed) as far as the image holds it.
    let mut full = [0u8; Superblock::SIZE];
    let n = image.len().min(Superblock::SIZE);
    full[..n].copy_from_slice(&image[..n]);
    let b = &full[..];
    if &b[0..8] != MAGIC {
        return Err(refuse(
            0,
            format!(
                "field magic: {:02x?} is not \"integrt\\0\" (not a dm-integrity device)",
                &b[0..8]
            ),
        ));
    }
    let version = b[8];
    if version == 0 || version > DUMP_MAX_VERSION {
        return Err(refuse(
            8,
            format!(
                "field version: {version}, integritysetup 2.6.1 reads versions 1 to \
                 {DUMP_MAX_VERSION} (Incompatible kernel dm-integrity metadata)"
            ),
        ));
    }
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&b[48..64]);
    Ok(Superblock {
        version,
        log2_interleave_sectors: b[9],
        integrity_tag_size: le16(b, 10),
        journal_sections: le32(b, 12),
        provided_data_sectors: le64(b, 16),
        flags: le32(b, 24),
        log2_sectors_per_block: b[28],
        log2_blocks_per_bitmap_bit: b[29],
        recalc_sector: le64(b, 32),
        salt,
    })
}

/// `integritysetup dump NAME` of `sb`: NAME is printed as given on the command line.
#[must_use]
pub fn dump_text(name: &str, sb: &Superblock) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Info for integrity device {name}.");
    let _ = writeln!(s, "superblock_version {}", sb.version);
    // int8_t printed with %d.
    let _ = writeln!(
        s,
        "log2_interleave_sectors {}",
        i8::from_le_bytes([sb.log2_interleave_sectors])
    );
    let _ = writeln!(s, "integrity_tag_size {}", sb.integrity_tag_size);
    let _ = writeln!(s, "journal_sections {}", sb.journal_sections);
    let _ = writeln!(s, "provided_data_sectors {}", sb.provided_data_sectors);
    // `SECTOR_SIZE << log2_sectors_per_block` in 32-bit arithmetic, the count mod 32 (x86).
    let _ = writeln!(
        s,
        "sector_size {}",
        512u32.wrapping_shl(u32::from(sb.log2_sectors_per_block))
    );
    if sb.version >= 2 && sb.has(FLAG_RECALCULATING) {
        let _ = writeln!(s, "recalc_sector {}", sb.recalc_sector);
    }
    let _ = writeln!(
        s,
        "log2_blocks_per_bitmap {}",
        sb.log2_blocks_per_bitmap_bit
    );
    s.push_str("flags ");
    for (f, n) in [
        (FLAG_HAVE_JOURNAL_MAC, "have_journal_mac "),
        (FLAG_RECALCULATING, "recalculating "),
        (FLAG_DIRTY_BITMAP, "dirty_bitmap "),
        (FLAG_FIXED_PADDING, "fix_padding "),
        (FLAG_FIXED_HMAC, "fix_hmac "),
    ] {
        if sb.has(f) {
            s.push_str(n);
        }
    }
    s.push('\n');
    s
}

/// Why the 6.12 kernel would refuse to open `sb` on a device of `device_bytes` (the
/// superblock at its start), or `None`: the geometry checks of the ctr
/// ([`Layout::new`]), and a `provided_data_sectors` other than what the geometry gives.
#[must_use]
pub fn kernel_refusal(sb: &Superblock, device_bytes: u64) -> Option<Error> {
    let layout = match Layout::new(sb, 0, device_bytes / 512, 128) {
        Ok(l) => l,
        Err(e) => return Some(e),
    };
    if sb.provided_data_sectors > layout.provided_data_sectors {
        return Some(refuse(
            16,
            format!(
                "field provided_data_sectors: {} but the device holds {} (the kernel: \
                 \"The device is too small\")",
                sb.provided_data_sectors, layout.provided_data_sectors
            ),
        ));
    }
    None
}
