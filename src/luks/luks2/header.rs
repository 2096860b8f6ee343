//! The LUKS2 binary header pair (`struct luks2_hdr_disk`, cryptsetup
//! lib/luks2/luks2_disk_metadata.c): a 4096-byte big-endian header followed by the JSON
//! area, twice. Each copy's checksum is `H(copy with csum zeroed)` over `hdr_size` bytes.
//!
//! As `LUKS2_disk_hdr_read` does, the secondary copy is looked for at the primary's
//! `hdr_size`, or, when the primary is unusable, at every offset a secondary may have;
//! of two good copies the higher `seqid` wins (the primary on a tie), and using one copy
//! because the other is damaged is reported as a warning.

use super::super::hash::Hash;
use super::super::luks1::c_string;
use super::super::{corrupt, read_at};
use crate::error::{Error, Result};
use crate::volume::Volume;

/// Binary header bytes.
pub const BIN_SIZE: usize = 4096;
/// Secondary magic.
const MAGIC_2: &[u8; 6] = b"SKUL\xba\xbe";
/// The offsets a secondary header may have (`hdr2_offsets`): also the valid `hdr_size`s.
pub const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

/// One verified header copy: its binary fields and JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinHeader {
    /// Offset of this copy in the header device.
    pub offset: u64,
    /// Binary header plus JSON area, in bytes.
    pub hdr_size: u64,
    /// Sequence number (cryptsetup's "Epoch").
    pub seqid: u64,
    /// Label.
    pub label: String,
    /// Checksum algorithm.
    pub checksum_alg: String,
    /// UUID.
    pub uuid: String,
    /// Subsystem.
    pub subsystem: String,
    /// The JSON text (up to its terminating NUL).
    pub json: String,
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// Read and verify the copy at `offset` (`primary` selects the magic).
pub fn read_copy(dev: &dyn Volume, offset: u64, primary: bool) -> Result<BinHeader> {
    let dev_bytes = dev.size().bytes();
    let which = if primary { "primary" } else { "secondary" };
    if offset + BIN_SIZE as u64 > dev_bytes {
        return Err(corrupt(
            "LUKS2 header",
            offset,
            format!("{which} header lies beyond the end of the device ({dev_bytes} bytes)"),
        ));
    }
    let bin = read_at(dev, offset, BIN_SIZE)?;
    let magic: &[u8; 6] = if primary {
        super::super::luks1::MAGIC
    } else {
        MAGIC_2
    };
    if &bin[..6] != magic {
        return Err(corrupt(
            "LUKS2 header magic",
            offset,
            format!("no {which} magic"),
        ));
    }
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version != 2 {
        return Err(corrupt(
            "LUKS2 header version",
            offset + 6,
            format!("{version}, expected 2"),
        ));
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(corrupt(
            "LUKS2 hdr_size",
            offset + 8,
            format!("{hdr_size} is not a power of two in 16 KiB..4 MiB"),
        ));
    }
    let hdr_offset = be64(&bin, 256);
    if hdr_offset != offset {
        return Err(corrupt(
            "LUKS2 hdr_offset",
            offset + 256,
            format!("{hdr_offset}, but the copy is at {offset}"),
        ));
    }
    if offset + hdr_size > dev_bytes {
        return Err(corrupt(
            "LUKS2 hdr_size",
            offset + 8,
            format!("{hdr_size} bytes run past the end of the device ({dev_bytes} bytes)"),
        ));
    }
    let rel = |e: Error| match e {
        Error::Corrupt {
            what,
            offset: o,
            detail,
        } => corrupt(what, offset + o, detail),
        e => e,
    };
    let label = c_string(&bin, 24, 48, "LUKS2 label").map_err(rel)?;
    let checksum_alg = c_string(&bin, 72, 32, "LUKS2 checksum_alg").map_err(rel)?;
    let uuid = c_string(&bin, 168, 40, "LUKS2 uuid").map_err(rel)?;
    let subsystem = c_string(&bin, 208, 48, "LUKS2 subsystem").map_err(rel)?;
    let hash = Hash::from_name(&checksum_alg).ok_or_else(|| {
        corrupt(
            "LUKS2 checksum_alg",
            offset + 72,
            format!(
                "unknown checksum algorithm {}",
                crate::error::quote(&checksum_alg)
            ),
        )
    })?;
    let json_len = usize::try_from(hdr_size).unwrap_or(usize::MAX) - BIN_SIZE;
    let mut area = read_at(dev, offset + BIN_SIZE as u64, json_len)?;
    // The checksum covers the binary header with csum zeroed, then the JSON area.
    let mut zeroed = bin.clone();
    zeroed[448..512].fill(0);
    let mut sum = [0u8; 64];
    hash.digest_into(&[&zeroed, &area], &mut sum[..hash.digest_len()]);
    if sum[..] != bin[448..512] {
        return Err(corrupt(
            "LUKS2 header checksum",
            offset + 448,
            format!("{which} header: the {checksum_alg} checksum does not match"),
        ));
    }
    let end = area.iter().position(|&c| c == 0).ok_or_else(|| {
        corrupt(
            "LUKS2 JSON area",
            offset + BIN_SIZE as u64,
            "JSON text is not NUL-terminated",
        )
    })?;
    // validate_json_area: nothing but zeros after the JSON text.
    if let Some(i) = area[end..].iter().position(|&c| c != 0) {
        return Err(corrupt(
            "LUKS2 JSON area",
            offset + BIN_SIZE as u64 + (end + i) as u64,
            "non-zero bytes after the JSON text's terminating NUL",
        ));
    }
    area.truncate(end);
    let json = String::from_utf8(area).map_err(|e| {
        corrupt(
            "LUKS2 JSON area",
            offset + BIN_SIZE as u64 + e.utf8_error().valid_up_to() as u64,
            "not valid UTF-8",
        )
    })?;
    Ok(BinHeader {
        offset,
        hdr_size,
        seqid: be64(&bin, 16),
        label,
        checksum_alg,
        uuid,
        subsystem,
        json,
    })
}

/// Both copies, each verified or with the reason it is unusable.
pub struct Copies {
    /// The copy at offset 0.
    pub primary: Result<BinHeader>,
    /// The secondary copy.
    pub secondary: Result<BinHeader>,
}

/// Read both copies: the secondary at the primary's `hdr_size`, or scanned for.
pub fn read_copies(dev: &dyn Volume) -> Copies {
    let primary = read_copy(dev, 0, true);
    let secondary = match &primary {
        Ok(p) => read_copy(dev, p.hdr_size, false),
        Err(_) => {
            let mut last = Err(corrupt(
                "LUKS2 secondary header",
                HDR_SIZES[0],
                "not found at any offset from 16 KiB to 4 MiB",
            ));
            for &off in &HDR_SIZES {
                if off + BIN_SIZE as u64 > dev.size().bytes() {
                    break;
                }
                match read_copy(dev, off, false) {
                    Ok(h) => {
                        last = Ok(h);
                        break;
                    }
                    // Keep the most telling error: one about a copy that has the magic.
                    Err(e) if !e.to_string().contains("no secondary magic") => last = Err(e),
                    Err(_) => {}
                }
            }
            last
        }
    };
    Copies { primary, secondary }
}
