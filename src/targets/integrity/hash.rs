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

/// One check of a whole run of crc32c tags (4-byte tags, consecutive blocks of one area)
/// in a single hardware CRC pass over the data, instead of one short, serial CRC per block.
///
/// CRC-32C is affine: `crc(A ‖ B) = shift_|B|(crc(A)) ^ crc(B)`, where `shift_n` (the
/// register advanced over n zero bytes) is linear. A block's tag is
/// `crc(P_i ‖ B_i)` with `P_i = [salt ‖] le64(sector_i)`, so `crc(B_i) = tag_i ^
/// shift_L(crc(P_i))`, and the CRC of all the blocks back to back follows from the tags
/// alone (Horner: `acc = shift_L(acc ^ crc(P_i)) ^ tag_i`). The run passes when that equals
/// the CRC of the data. A single wrong block always changes it (`shift` is invertible);
/// wrong blocks whose differences cancel exactly (2^-32 for random damage, the same odds by
/// which one damaged block passes the kernel's own check) could pass, which gives nothing to
/// someone who can write the image: the salt is on it, so matching tags can be written
/// anyway. A failed run is checked block by block, so the failing sector and the mismatch
/// count are the kernel's.
#[derive(Clone)]
pub struct Crc32cRun {
    block_len: usize,
    /// `shift_L` by bytes of the argument.
    shift: Box<[[u32; 256]; 4]>,
    /// `crc(P(v)) ^ crc(P(0))` (linear in v) by bytes of `v`.
    sector: Box<[[u32; 256]; 8]>,
    /// `crc(P(0))`.
    base: u32,
}

impl fmt::Debug for Crc32cRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crc32cRun({} bytes)", self.block_len)
    }
}

impl Crc32cRun {
    /// The run check for blocks of `block_len` bytes with the superblock `salt` (when
    /// fix_hmac is set).
    #[must_use]
    pub fn new(salt: Option<[u8; 16]>, block_len: usize) -> Crc32cRun {
        let mut shift = Box::new([[0u32; 256]; 4]);
        for (j, t) in shift.iter_mut().enumerate() {
            for (v, e) in t.iter_mut().enumerate() {
                *e = crc32c::crc32c_combine((v as u32) << (8 * j), 0, block_len);
            }
        }
        let s: &[u8] = salt.as_ref().map_or(&[], |s| &s[..]);
        let salt_crc = crc32c::crc32c(s);
        let base = crc32c::crc32c_append(salt_crc, &[0u8; 8]);
        let zero8 = crc32c::crc32c(&[0u8; 8]);
        let mut sector = Box::new([[0u32; 256]; 8]);
        for (j, t) in sector.iter_mut().enumerate() {
            for (v, e) in t.iter_mut().enumerate() {
                *e = crc32c::crc32c(&((v as u64) << (8 * j)).to_le_bytes()) ^ zero8;
            }
        }
        Crc32cRun {
            block_len,
            shift,
            sector,
            base,
        }
    }

    fn shift(&self, a: u32) -> u32 {
        let t = &self.shift;
        t[0][(a & 0xff) as usize]
            ^ t[1][((a >> 8) & 0xff) as usize]
            ^ t[2][((a >> 16) & 0xff) as usize]
            ^ t[3][(a >> 24) as usize]
    }

    /// The prefix CRC's part from bytes 1..8 of the sector number (with `base`): the same
    /// for up to 256 consecutive sectors, so a run computes it once per 256.
    fn prefix_high(&self, sector: u64) -> u32 {
        let b = sector.to_le_bytes();
        let t = &self.sector;
        self.base
            ^ t[1][usize::from(b[1])]
            ^ t[2][usize::from(b[2])]
            ^ t[3][usize::from(b[3])]
            ^ t[4][usize::from(b[4])]
            ^ t[5][usize::from(b[5])]
            ^ t[6][usize::from(b[6])]
            ^ t[7][usize::from(b[7])]
    }

    /// Whether the blocks of `data` (the first at data sector `first`, each `spb` sectors
    /// further) all match their 4-byte `tags`.
    #[must_use]
    pub fn run_ok(&self, first: u64, spb: u64, data: &[u8], tags: &[u8]) -> bool {
        let n = data.len() / self.block_len;
        if n == 0 || data.len() % self.block_len != 0 || tags.len() != n * 4 {
            return false;
        }
        let mut acc = 0u32;
        let mut sec = first;
        let mut high = (first >> 8, self.prefix_high(first));
        for t in tags.chunks_exact(4) {
            let tag = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
            if sec >> 8 != high.0 {
                high = (sec >> 8, self.prefix_high(sec));
            }
            let prefix = high.1 ^ self.sector[0][(sec & 0xff) as usize];
            acc = self.shift(acc ^ prefix) ^ tag;
            sec += spb;
        }
        acc == crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
    }
}

impl TagHasher {
    /// The run check when this is unsalted-or-salted crc32c with 4-byte tags.
    #[must_use]
    pub fn crc32c_run(&self, tag_size: usize, block_len: usize) -> Option<Crc32cRun> {
        (matches!(self.alg, Alg::Crc32c) && tag_size == 4)
            .then(|| Crc32cRun::new(self.salt, block_len))
    }
}
