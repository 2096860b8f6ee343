//! The LUKS1 partition header (`struct luks_phdr`, cryptsetup lib/luks1/luks.h): 592
//! big-endian bytes at offset 0 with 8 key slots of 48 bytes.
//!
//! Every field is checked before use: strings must be NUL-terminated printable ASCII,
//! key slots must be ENABLED or DISABLED, key material must lie after the header, before
//! the payload (when the payload is on the same device) and inside the header device.

use super::hash::Hash;
use super::{corrupt, MAX_KEY_BYTES, MAX_MATERIAL_BYTES};
use crate::error::Result;

/// `LUKS\xba\xbe`.
pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Bytes of the header proper.
pub const PHDR_SIZE: usize = 592;
/// `LUKS_KEY_ENABLED`.
const KEY_ENABLED: u32 = 0x00AC_71F3;
/// `LUKS_KEY_DISABLED`.
const KEY_DISABLED: u32 = 0x0000_DEAD;
/// Key slots in a LUKS1 header.
pub const SLOTS: usize = 8;

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
    /// holding the header (key material must fit in it), `detached` says the payload lives
    /// on another device.
    pub fn parse(b: &[u8], device_bytes: u64, detached: bool) -> Result<Luks1Header> {
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
        if key_bytes == 0 || key_bytes > MAX_KEY_BYTES {
            return Err(corrupt(
                "LUKS1 keyBytes",
                108,
                format!("{key_bytes}, must be 1..={MAX_KEY_BYTES}"),
            ));
        }
        let mk_digest_iterations = be32(b, 164);
        if mk_digest_iterations == 0 {
            return Err(corrupt("LUKS1 mkDigestIterations", 164, "0"));
        }
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
            let at = 208 + 48 * i;
            h.slots
                .push(h.parse_slot(b, at, i, device_bytes, detached)?);
        }
        Ok(h)
    }

    fn parse_slot(
        &self,
        b: &[u8],
        at: usize,
        i: usize,
        device_bytes: u64,
        detached: bool,
    ) -> Result<Luks1Slot> {
        let active = match be32(b, at) {
            KEY_ENABLED => true,
            KEY_DISABLED => false,
            v => {
                return Err(corrupt(
                    "LUKS1 key slot state",
                    at as u64,
                    format!("slot {i}: 0x{v:08x} is neither ENABLED nor DISABLED"),
                ))
            }
        };
        let slot = Luks1Slot {
            active,
            iterations: be32(b, at + 4),
            salt: b[at + 8..at + 40].try_into().unwrap_or([0; 32]),
            material_offset: be32(b, at + 40),
            stripes: be32(b, at + 44),
        };
        if !active {
            return Ok(slot);
        }
        let bad = |field: &'static str, off: usize, why: String| {
            corrupt(field, (at + off) as u64, format!("slot {i}: {why}"))
        };
        if slot.iterations == 0 {
            return Err(bad("LUKS1 passwordIterations", 4, "0".into()));
        }
        let material = u64::from(self.key_bytes) * u64::from(slot.stripes);
        if slot.stripes == 0 || material > MAX_MATERIAL_BYTES {
            return Err(bad(
                "LUKS1 stripes",
                44,
                format!(
                    "{} stripes of {} bytes: must be 1.. and at most {MAX_MATERIAL_BYTES} bytes",
                    slot.stripes, self.key_bytes
                ),
            ));
        }
        let start = u64::from(slot.material_offset) * 512;
        let end = start + material.div_ceil(512) * 512;
        let payload = u64::from(self.payload_offset) * 512;
        if start < 1024 || end > device_bytes || (!detached && payload > 0 && end > payload) {
            return Err(bad(
                "LUKS1 keyMaterialOffset",
                40,
                format!(
                    "key material [{start}, {end}) must lie after the header, inside the \
                     device ({device_bytes} bytes){}",
                    if detached {
                        String::new()
                    } else {
                        format!(" and before the payload ({payload})")
                    }
                ),
            ));
        }
        Ok(slot)
    }

    /// The dm-crypt cipher specification: `cipherName-cipherMode`.
    #[must_use]
    pub fn cipher_spec(&self) -> String {
        format!("{}-{}", self.cipher_name, self.cipher_mode)
    }
}
