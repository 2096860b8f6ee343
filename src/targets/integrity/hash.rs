//! Tags of the internal hash (kernel `integrity_sector_checksum`): the `internal_hash`
//! algorithm over `[salt ‖] le64(sector) ‖ block`, truncated or zero-padded to the tag size.
//! The salt is hashed first when the superblock has `fix_hmac`, whatever the algorithm.
//!
//! Names are the kernel crypto API's: `crc32c`, `crc32` (the kernel's raw CRC-32: seed 0,
//! no final inversion), `md5`, `sha1`, `sha224`, `sha256`, `sha384`, `sha512`, `sha3-*`,
//! `blake2b-*`, and `hmac(<sha1|sha224|sha256|sha384|sha512|md5>)`, which need a key.

use std::fmt;

use blake2::digest::consts::{U32, U64};
use blake2::Blake2b;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Digest;

use crate::error::{Error, Result};

/// Longest digest of a supported algorithm.
pub const MAX_DIGEST: usize = 64;

/// A keyless digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plain {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha3_256,
    Sha3_512,
    Blake2b256,
    Blake2b512,
}

const PLAIN: &[(Plain, &str, usize)] = &[
    (Plain::Md5, "md5", 16),
    (Plain::Sha1, "sha1", 20),
    (Plain::Sha224, "sha224", 28),
    (Plain::Sha256, "sha256", 32),
    (Plain::Sha384, "sha384", 48),
    (Plain::Sha512, "sha512", 64),
    (Plain::Sha3_256, "sha3-256", 32),
    (Plain::Sha3_512, "sha3-512", 64),
    (Plain::Blake2b256, "blake2b-256", 32),
    (Plain::Blake2b512, "blake2b-512", 64),
];

#[derive(Clone)]
enum Keyed {
    Md5(Hmac<md5::Md5>),
    Sha1(Hmac<sha1::Sha1>),
    Sha224(Hmac<sha2::Sha224>),
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
}

#[derive(Clone)]
enum Alg {
    Crc32c,
    Crc32,
    Plain(Plain),
    Keyed(Box<Keyed>),
}

/// The internal hash of one device, keyed and salted, ready to compute tags.
#[derive(Clone)]
pub struct TagHasher {
    alg: Alg,
    name: String,
    digest_size: usize,
    /// The superblock salt when `fix_hmac` is set.
    salt: Option<[u8; 16]>,
}

impl fmt::Debug for TagHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagHasher({})", self.name)
    }
}

fn plain_digest<D: Digest>(parts: [&[u8]; 3], out: &mut [u8; MAX_DIGEST]) -> usize {
    let mut d = D::new();
    for p in parts {
        d.update(p);
    }
    let r = d.finalize();
    out[..r.len()].copy_from_slice(&r);
    r.len()
}

fn mac_digest<M: Mac + Clone>(m: &M, parts: [&[u8]; 3], out: &mut [u8; MAX_DIGEST]) -> usize {
    let mut m = m.clone();
    for p in parts {
        m.update(p);
    }
    let r = m.finalize().into_bytes();
    out[..r.len()].copy_from_slice(&r);
    r.len()
}

impl TagHasher {
    /// `crypto_alloc_shash(name)` + `setkey`: an unknown name is "Invalid internal hash"
    /// (the kernel's words), a keyed hash without a key "Error setting internal hash key".
    pub fn new(name: &str, key: Option<&[u8]>, salt: Option<[u8; 16]>) -> Result<TagHasher> {
        let invalid = || Error::InvalidArgument {
            what: "internal_hash",
            reason: format!("Invalid internal hash: {name} is not supported"),
        };
        let no_key = || Error::InvalidArgument {
            what: "internal_hash",
            reason: "Error setting internal hash key".into(),
        };
        let (alg, digest_size) =
            if let Some(inner) = name.strip_prefix("hmac(").and_then(|s| s.strip_suffix(')')) {
                let key = key.ok_or_else(no_key)?;
                let k = match inner {
                    "md5" => Keyed::Md5(Hmac::new_from_slice(key).map_err(|_| no_key())?),
                    "sha1" => Keyed::Sha1(Hmac::new_from_slice(key).map_err(|_| no_key())?),
                    "sha224" => Keyed::Sha224(Hmac::new_from_slice(key).map_err(|_| no_key())?),
                    "sha256" => Keyed::Sha256(Hmac::new_from_slice(key).map_err(|_| no_key())?),
                    "sha384" => Keyed::Sha384(Hmac::new_from_slice(key).map_err(|_| no_key())?),
                    "sha512" => Keyed::Sha512(Hmac::new_from_slice(key).map_err(|_| no_key())?),
                    _ => return Err(invalid()),
                };
                let size = match inner {
                    "md5" => 16,
                    "sha1" => 20,
                    "sha224" => 28,
                    "sha256" => 32,
                    "sha384" => 48,
                    _ => 64,
                };
                (Alg::Keyed(Box::new(k)), size)
            } else {
                // Unkeyed shashes refuse a key (`setkey` is -ENOSYS): "Error setting ... key".
                if key.is_some() {
                    return Err(no_key());
                }
                match name {
                    "crc32c" => (Alg::Crc32c, 4),
                    "crc32" => (Alg::Crc32, 4),
                    _ => {
                        let (p, _, size) = PLAIN
                            .iter()
                            .find(|(_, n, _)| *n == name)
                            .ok_or_else(invalid)?;
                        (Alg::Plain(*p), *size)
                    }
                }
            };
        Ok(TagHasher {
            alg,
            name: name.to_string(),
            digest_size,
            salt,
        })
    }

    /// The digest size (the tag size when the table says `-`).
    #[must_use]
    pub fn digest_size(&self) -> usize {
        self.digest_size
    }

    /// The kernel algorithm name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag of `block` at data sector `sector` into `out` (the tag size): the digest
    /// truncated, or zero-padded when the tag is longer.
    pub fn tag(&self, sector: u64, block: &[u8], out: &mut [u8]) {
        let sector_le = sector.to_le_bytes();
        let salt: &[u8] = self.salt.as_ref().map_or(&[], |s| &s[..]);
        let parts = [salt, &sector_le[..], block];
        let mut d = [0u8; MAX_DIGEST];
        let n = match &self.alg {
            Alg::Crc32c => {
                let mut c = crc32c::crc32c(salt);
                c = crc32c::crc32c_append(c, &sector_le);
                c = crc32c::crc32c_append(c, block);
                d[..4].copy_from_slice(&c.to_le_bytes());
                4
            }
            Alg::Crc32 => {
                // crc32_le(0, ...) with no inversion = !standard CRC-32 seeded with !0.
                let mut h = crc32fast::Hasher::new_with_initial(u32::MAX);
                for p in parts {
                    h.update(p);
                }
                d[..4].copy_from_slice(&(!h.finalize()).to_le_bytes());
                4
            }
            Alg::Plain(p) => match p {
                Plain::Md5 => plain_digest::<md5::Md5>(parts, &mut d),
                Plain::Sha1 => plain_digest::<sha1::Sha1>(parts, &mut d),
                Plain::Sha224 => plain_digest::<sha2::Sha224>(parts, &mut d),
                Plain::Sha256 => plain_digest::<sha2::Sha256>(parts, &mut d),
                Plain::Sha384 => plain_digest::<sha2::Sha384>(parts, &mut d),
                Plain::Sha512 => plain_digest::<sha2::Sha512>(parts, &mut d),
                Plain::Sha3_256 => plain_digest::<sha3::Sha3_256>(parts, &mut d),
                Plain::Sha3_512 => plain_digest::<sha3::Sha3_512>(parts, &mut d),
                Plain::Blake2b256 => plain_digest::<Blake2b<U32>>(parts, &mut d),
                Plain::Blake2b512 => plain_digest::<Blake2b<U64>>(parts, &mut d),
            },
            Alg::Keyed(k) => match k.as_ref() {
                Keyed::Md5(m) => mac_digest(m, parts, &mut d),
                Keyed::Sha1(m) => mac_digest(m, parts, &mut d),
                Keyed::Sha224(m) => mac_digest(m, parts, &mut d),
                Keyed::Sha256(m) => mac_digest(m, parts, &mut d),
                Keyed::Sha384(m) => mac_digest(m, parts, &mut d),
                Keyed::Sha512(m) => mac_digest(m, parts, &mut d),
            },
        };
        let take = out.len().min(n);
        out[..take].copy_from_slice(&d[..take]);
        out[take..].fill(0);
    }
}
