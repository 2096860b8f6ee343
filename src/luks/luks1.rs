//! The LUKS1 partition header (`struct luks_phdr`, cryptsetup lib/luks1/luks.h): 592
//! big-endian bytes at offset 0 with 8 key slots of 48 bytes.
//!
//! Every field is checked before use: strings must be NUL-terminated printable ASCII; the
//! key-slot geometry is checked as cryptsetup 2.6.1's lib/luks1/keymanage.c checks it
//! (`LUKS_check_keyslots`, then `LUKS_check_device_size`), for every slot, enabled or not:
//! 4000 stripes, material after the header, before the payload when payloadOffset is not 0,
//! no two slots' material overlapping, the last slot's material inside the device. A slot
//! whose state is neither ENABLED nor DISABLED is unusable, not a bad header (as cryptsetup).
//! tests/luks_verdicts.rs holds dmemu's verdicts to cryptsetup's on damaged headers.

use super::hash::Hash;
use super::{corrupt, MAX_KEY_BYTES};
use crate::error::Result;

/// `LUKS\xba\xbe`.
pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Bytes of the header proper.
pub const PHDR_SIZE: usize = 592;
/// `LUKS_KEY_ENABLED`.
const KEY_ENABLED: u32 = 0x00AC_71F3;
/// Key slots in a LUKS1 header.
pub const SLOTS: usize = 8;
/// `LUKS_STRIPES`: the only stripe count cryptsetup accepts.
pub const STRIPES: u32 = 4000;
/// Byte offset of key slot 0 and the size of one.
const SLOT_AT: usize = 208;
const SLOT_SIZE: usize = 48;

/// One LUKS1 key slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks1Slot {
    /// ENABLED (`0x00AC71F3`).
    pub active: bool,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; 32],
    /// Start of the key material, in 512-byte sectors.
    pub material_offset: u32,
    /// AF stripes.
    pub stripes: u32,
}

/// A parsed LUKS1 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks1Header {
    /// `cipherName`, e.g. `aes`.
    pub cipher_name: String,
    /// `cipherMode`, e.g. `xts-plain64`.
    pub cipher_mode: String,
    /// `hashSpec` as written.
    pub hash_spec: String,
    /// The hash `hashSpec` names.
    pub hash: Hash,
    /// Data start, in 512-byte sectors.
    pub payload_offset: u32,
    /// Volume key length in bytes.
    pub key_bytes: u32,
    /// PBKDF2 of the volume key (20 bytes).
    pub mk_digest: [u8; 20],
    /// Salt of `mk_digest`.
    pub mk_digest_salt: [u8; 32],
    /// Iterations of `mk_digest`.
    pub mk_digest_iterations: u32,
    /// UUID text.
    pub uuid: String,
    /// The 8 key slots.
    pub slots: Vec<Luks1Slot>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

/// A NUL-terminated printable-ASCII field of `len` bytes at `at`.
pub(super) fn c_string(b: &[u8], at: usize, len: usize, what: &'static str) -> Result<String> {
    let field = &b[at..at + len];
    let end = field.iter().position(|&c| c == 0).ok_or_else(|| {
        corrupt(
            what,
            at as u64,
            format!("not NUL-terminated within {len} bytes"),
        )
    })?;
    let s = &field[..end];
    if let Some(i) = s.iter().position(|c| !(0x20..0x7f).contains(c)) {
        return Err(corrupt(
            what,
            (at + i) as u64,
            format!("byte 0x{:02x} is not printable ASCII", s[i]),
        ));
    }
    Ok(String::from_utf8_lossy(s).into_owned())
}

impl Luks1Header {
    /// Parse the first [`PHDR_SIZE`] bytes of `b`; `device_bytes` is the size of the device
    /// holding the header (key material must fit in it). `_detached` (the payload lives on
    /// another device) changes no check: as in cryptsetup, a payloadOffset of 0 is what
    /// skips the payload rules.
    pub fn parse(b: &[u8], device_bytes: u64, _detached: bool) -> Result<Luks1Header> {
        if b.len() < PHDR_SIZE {
            return Err(corrupt(
                "LUKS1 header",
                0,
                format!("needs {PHDR_SIZE} bytes, the device has {}", b.len()),
            ));
        }
        if &b[..6] != MAGIC {
            return Err(corrupt("LUKS header", 0, "bad magic (not a LUKS device)"));
        }
        let version = u16::from_be_bytes([b[6], b[7]]);
        if version != 1 {
            return Err(corrupt(
                "LUKS1 header version",
                6,
                format!("{version}, expected 1"),
            ));
        }
        let cipher_name = c_string(b, 8, 32, "LUKS1 cipherName")?;
        let cipher_mode = c_string(b, 40, 32, "LUKS1 cipherMode")?;
        let hash_spec = c_string(b, 72, 32, "LUKS1 hashSpec")?;
        if cipher_name.is_empty() || cipher_mode.is_empty() {
            return Err(corrupt("LUKS1 cipherName/cipherMode", 8, "empty"));
        }
        // keymanage.c _check_and_convert_hdr: "Requested LUKS hash %s is not supported."
        let hash = Hash::parse(&hash_spec).supported("LUKS1 hashSpec")?;
        let payload_offset = be32(b, 104);
        let key_bytes = be32(b, 108);
        // cryptsetup accepts a zero count here and fails the unlock (the digest's PBKDF2).
        let mk_digest_iterations = be32(b, 164);
        let uuid = c_string(b, 168, 40, "LUKS1 uuid")?;
        let mut h = Luks1Header {
            cipher_name,
            cipher_mode,
            hash_spec,
            hash,
            payload_offset,
            key_bytes,
            mk_digest: b[112..132].try_into().unwrap_or([0; 20]),
            mk_digest_salt: b[132..164].try_into().unwrap_or([0; 32]),
            mk_digest_iterations,
            uuid,
            slots: Vec::with_capacity(SLOTS),
        };
        for i in 0..SLOTS {
            let at = SLOT_AT + SLOT_SIZE * i;
            h.slots.push(Luks1Slot {
                // A state neither ENABLED nor DISABLED is an unusable slot
                // (LUKS_keyslot_info: CRYPT_SLOT_INVALID), not a bad header.
                active: be32(b, at) == KEY_ENABLED,
                iterations: be32(b, at + 4),
                salt: b[at + 8..at + 40].try_into().unwrap_or([0; 32]),
                material_offset: be32(b, at + 40),
                stripes: be32(b, at + 44),
            });
        }
        h.check_keyslots()?;
        h.check_device_size(device_bytes)?;
        Ok(h)
    }

    /// Sectors of one key slot's material: `AF_split_sectors(keyBytes, 4000)`.
    fn slot_sectors(&self) -> u64 {
        (u64::from(self.key_bytes) * u64::from(STRIPES)).div_ceil(512)
    }

    /// keymanage.c `LUKS_check_keyslots`, rule for rule and in its order: every slot,
    /// enabled or not, has 4000 stripes and its material after the header; when the payload
    /// is on this device (payloadOffset not 0) each slot's material ends before it; sorted
    /// by offset, no slot's material runs into the next one's. Each refusal names the slot
    /// cryptsetup names ("LUKS keyslot N is invalid.") and the field.
    fn check_keyslots(&self) -> Result<()> {
        let secs = self.slot_sectors();
        let payload = self.payload_offset;
        let field_at = |i: usize, off: usize| (SLOT_AT + SLOT_SIZE * i + off) as u64;
        for (i, k) in self.slots.iter().enumerate() {
            if k.stripes != STRIPES {
                return Err(corrupt(
                    "LUKS1 stripes",
                    field_at(i, 44),
                    format!(
                        "key slot {i}: {} stripes, LUKS1 requires {STRIPES} (enabled or not)",
                        k.stripes
                    ),
                ));
            }
            // cryptsetup multiplies in 32 bits: an offset of 2^23 sectors wraps to 0.
            if (k.material_offset.wrapping_mul(512) as usize) < PHDR_SIZE {
                return Err(corrupt(
                    "LUKS1 keyMaterialOffset",
                    field_at(i, 40),
                    format!(
                        "key slot {i}: offset {} sectors lies inside the {PHDR_SIZE}-byte header",
                        k.material_offset
                    ),
                ));
            }
            if payload == 0 {
                continue;
            }
            if payload <= k.material_offset {
                return Err(corrupt(
                    "LUKS1 keyMaterialOffset",
                    field_at(i, 40),
                    format!(
                        "key slot {i}: offset {} sectors is at or beyond the data area \
                         (payloadOffset {payload})",
                        k.material_offset
                    ),
                ));
            }
            if u64::from(payload) < u64::from(k.material_offset) + secs {
                return Err(corrupt(
                    "LUKS1 keyMaterialOffset",
                    field_at(i, 40),
                    format!(
                        "key slot {i}: key material of {secs} sectors (keyBytes {} x {STRIPES} \
                         stripes) at offset {} runs into the data area (payloadOffset {payload})",
                        self.key_bytes, k.material_offset
                    ),
                ));
            }
        }
        let mut sorted: Vec<usize> = (0..SLOTS).collect();
        // Stable, as cryptsetup's insertion sort.
        sorted.sort_by_key(|&i| self.slots[i].material_offset);
        for w in sorted.windows(2) {
            let (prev, next) = (w[0], w[1]);
            let (p, n) = (
                u64::from(self.slots[prev].material_offset),
                u64::from(self.slots[next].material_offset),
            );
            if n < p + secs {
                return Err(corrupt(
                    "LUKS1 keyMaterialOffset",
                    field_at(prev, 40),
                    format!(
                        "key slot {prev}: key material [{p}, {}) sectors (keyBytes {} x \
                         {STRIPES} stripes) overlaps key slot {next}'s at offset {n}",
                        p + secs,
                        self.key_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// keymanage.c `LUKS_check_device_size`: a volume key of some bytes, and the device
    /// holds the last key slot's material.
    fn check_device_size(&self, device_bytes: u64) -> Result<()> {
        if self.key_bytes == 0 || self.key_bytes > MAX_KEY_BYTES {
            return Err(corrupt(
                "LUKS1 keyBytes",
                108,
                format!("{}, must be 1..={MAX_KEY_BYTES}", self.key_bytes),
            ));
        }
        let (last, k) = self
            .slots
            .iter()
            .enumerate()
            .max_by_key(|(i, k)| (k.material_offset, *i))
            .unwrap_or((0, &self.slots[0]));
        let need = u64::from(k.material_offset) + self.slot_sectors();
        if need > device_bytes / 512 {
            return Err(corrupt(
                "LUKS1 device size",
                0,
                format!(
                    "device size {device_bytes} bytes: LUKS1 requires at least {} bytes (key \
                     slot {last}'s material ends at sector {need})",
                    need * 512
                ),
            ));
        }
        Ok(())
    }

    /// The dm-crypt cipher specification: `cipherName-cipherMode`.
    #[must_use]
    pub fn cipher_spec(&self) -> String {
        format!("{}-{}", self.cipher_name, self.cipher_mode)
    }
}
