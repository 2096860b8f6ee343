//! The veritysetup superblock (512 bytes, little-endian; disk-formats.md §3.2, cryptsetup
//! `lib/verity/verity.c` `struct verity_sb`). The kernel never reads it; veritysetup and
//! dmemu use it to find the parameters of a formatted hash device.

use std::fmt;

use super::hash::HashAlg;
use crate::error::{Error, Result};

/// Size of the on-disk superblock.
pub const SUPERBLOCK_SIZE: usize = 512;
/// `"verity\0\0"`.
pub const MAGIC: &[u8; 8] = b"verity\0\0";
/// The only superblock version cryptsetup writes and accepts.
pub const SB_VERSION: u32 = 1;
/// Largest salt the superblock holds.
pub const MAX_SALT: usize = 256;

/// cryptsetup's `VERITY_BLOCK_SIZE_OK`: a power of two from 512 to 512 KiB.
#[must_use]
pub fn block_size_ok(x: u32) -> bool {
    x.is_power_of_two() && (512..=512 * 1024).contains(&x)
}

/// A 16-byte UUID, printed in the usual 8-4-4-4-12 form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Parse `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex in either case).
    pub fn parse(s: &str) -> Result<Uuid> {
        let bad = || Error::invalid("uuid", format!("{} is not a UUID", crate::error::quote(s)));
        let parts: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let bytes = super::hash::from_hex(&parts.concat()).ok_or_else(bad)?;
        let mut u = [0u8; 16];
        u.copy_from_slice(&bytes);
        Ok(Uuid(u))
    }

    /// A random (version 4) UUID, as libuuid's `uuid_generate` makes for veritysetup.
    pub fn random() -> Result<Uuid> {
        let mut u = [0u8; 16];
        getrandom::fill(&mut u)
            .map_err(|e| Error::invalid("uuid", format!("no randomness: {e}")))?;
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        Ok(Uuid(u))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = super::hash::to_hex(&self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// The decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// 0 = Chrome OS, 1 = normal.
    pub hash_type: u32,
    /// Volume UUID.
    pub uuid: Uuid,
    /// Hash algorithm.
    pub algorithm: HashAlg,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Number of data blocks.
    pub data_blocks: u64,
    /// Salt (at most 256 bytes).
    pub salt: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Superblock {
    /// The 512 on-disk bytes.
    pub fn encode(&self) -> Result<[u8; SUPERBLOCK_SIZE]> {
        if self.salt.len() > MAX_SALT {
            return Err(Error::invalid(
                "salt",
                format!("{} bytes; at most {MAX_SALT} fit", self.salt.len()),
            ));
        }
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&SB_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.hash_type.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid.0);
        let name = self.algorithm.name().as_bytes();
        b[32..32 + name.len()].copy_from_slice(name);
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt_size = u16::try_from(self.salt.len()).unwrap_or(u16::MAX);
        b[80..82].copy_from_slice(&salt_size.to_le_bytes());
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        Ok(b)
    }

    /// Decode and check a superblock read from byte `offset` of the hash device, with
    /// cryptsetup's `VERITY_read_sb` checks plus a size bound on `data_blocks`.
    pub fn decode(b: &[u8], offset: u64) -> Result<Superblock> {
        let corrupt = |what: &'static str, detail: String| Error::Corrupt {
            what,
            offset,
            detail,
        };
        if b.len() < SUPERBLOCK_SIZE {
            return Err(corrupt(
                "verity superblock",
                format!("only {} bytes, need {SUPERBLOCK_SIZE}", b.len()),
            ));
        }
        if &b[0..8] != MAGIC {
            return Err(corrupt(
                "verity superblock magic",
                "not \"verity\\0\\0\" (device is not a VERITY device)".into(),
            ));
        }
        let version = le32(b, 8);
        if version != SB_VERSION {
            return Err(corrupt(
                "verity superblock version",
                format!("unsupported VERITY version {version}"),
            ));
        }
        let hash_type = le32(b, 12);
        if hash_type > 1 {
            return Err(corrupt(
                "verity hash type",
                format!("unsupported VERITY hash type {hash_type}"),
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let name_field = &b[32..64];
        let name_len = name_field.iter().position(|&c| c == 0).unwrap_or(32);
        let name = String::from_utf8_lossy(&name_field[..name_len]).to_ascii_lowercase();
        let algorithm = HashAlg::from_name(&name).ok_or_else(|| {
            corrupt(
                "verity algorithm",
                format!(
                    "unsupported hash {} (known: {})",
                    crate::error::quote(&name),
                    HashAlg::names().join(", ")
                ),
            )
        })?;
        let data_block_size = le32(b, 64);
        let hash_block_size = le32(b, 68);
        for (what, v) in [
            ("verity data block size", data_block_size),
            ("verity hash block size", hash_block_size),
        ] {
            if !block_size_ok(v) {
                return Err(corrupt(
                    what,
                    format!("{v} is not a power of two in 512..=524288"),
                ));
            }
        }
        let mut d = [0u8; 8];
        d.copy_from_slice(&b[72..80]);
        let data_blocks = u64::from_le_bytes(d);
        // The data area must be addressable in bytes and in 512-byte sectors (kernel
        // "Invalid data blocks"); anything larger is a damaged header, not a real volume.
        if data_blocks
            .checked_mul(u64::from(data_block_size))
            .is_none_or(|bytes| bytes > i64::MAX as u64)
        {
            return Err(corrupt(
                "verity data blocks",
                format!("{data_blocks} blocks of {data_block_size} bytes overflow"),
            ));
        }
        let salt_size = usize::from(u16::from_le_bytes([b[80], b[81]]));
        if salt_size > MAX_SALT {
            return Err(corrupt(
                "verity salt size",
                format!("{salt_size} > {MAX_SALT} (VERITY header corrupted)"),
            ));
        }
        Ok(Superblock {
            hash_type,
            uuid: Uuid(uuid),
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt: b[88..88 + salt_size].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb() -> Superblock {
        Superblock {
            hash_type: 1,
            uuid: Uuid::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            algorithm: HashAlg::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 16,
            salt: vec![0xab; 32],
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let b = sb().encode().unwrap();
        assert_eq!(Superblock::decode(&b, 0).unwrap(), sb());
        assert_eq!(
            sb().uuid.to_string(),
            "11111111-2222-3333-4444-555555555555"
        );
    }

    #[test]
    fn bad_fields_are_refused_without_panic() {
        let good = sb().encode().unwrap();
        let cases: &[(usize, &[u8])] = &[
            (0, b"veritx"),
            (8, &2u32.to_le_bytes()),
            (12, &2u32.to_le_bytes()),
            (32, b"md4\0"),
            (64, &1000u32.to_le_bytes()),
            (68, &256u32.to_le_bytes()),
            (72, &u64::MAX.to_le_bytes()),
            (80, &257u16.to_le_bytes()),
        ];
        for (at, bytes) in cases {
            let mut b = good;
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
            let e = Superblock::decode(&b, 4096).unwrap_err();
            assert!(
                matches!(e, Error::Corrupt { offset: 4096, .. }),
                "{at}: {e}"
            );
        }
        assert!(Superblock::decode(&good[..100], 0).is_err());
    }

    #[test]
    fn uuid_parse_rejects_bad_shapes() {
        assert!(Uuid::parse("1111-2222").is_err());
        assert!(Uuid::parse("g1111111-2222-3333-4444-555555555555").is_err());
        let r = Uuid::random().unwrap();
        assert_eq!(r.0[6] >> 4, 4);
    }
}
