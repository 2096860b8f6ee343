//! Verity digests: the hash algorithms dm-verity uses in practice (kernel crypto API names),
//! and the salted block hash of both formats (kernel `verity_hash`, cryptsetup
//! `verify_hash_block`): version 1 hashes `salt ‖ block`, version 0 (Chrome OS) `block ‖ salt`.
//!
//! Version 1 keeps a hasher already fed with the salt and clones it per block, as the kernel's
//! `initial_hashstate` does, so the salt is not rehashed for every block.

use std::fmt;

use blake2::digest::consts::{U32, U48, U64};
use blake2::Blake2b;
use sha2::Digest;

/// A hash algorithm by its kernel crypto API name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// `sha1` (20-byte digest).
    Sha1,
    /// `sha224`.
    Sha224,
    /// `sha256` (the veritysetup default).
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
    /// `sha3-224`.
    Sha3_224,
    /// `sha3-256`.
    Sha3_256,
    /// `sha3-384`.
    Sha3_384,
    /// `sha3-512`.
    Sha3_512,
    /// `blake2b-256`.
    Blake2b256,
    /// `blake2b-384`.
    Blake2b384,
    /// `blake2b-512`.
    Blake2b512,
}

const ALL: &[(HashAlg, &str, usize)] = &[
    (HashAlg::Sha1, "sha1", 20),
    (HashAlg::Sha224, "sha224", 28),
    (HashAlg::Sha256, "sha256", 32),
    (HashAlg::Sha384, "sha384", 48),
    (HashAlg::Sha512, "sha512", 64),
    (HashAlg::Sha3_224, "sha3-224", 28),
    (HashAlg::Sha3_256, "sha3-256", 32),
    (HashAlg::Sha3_384, "sha3-384", 48),
    (HashAlg::Sha3_512, "sha3-512", 64),
    (HashAlg::Blake2b256, "blake2b-256", 32),
    (HashAlg::Blake2b384, "blake2b-384", 48),
    (HashAlg::Blake2b512, "blake2b-512", 64),
];

/// The largest digest of any supported algorithm.
pub const MAX_DIGEST: usize = 64;

impl HashAlg {
    /// Look up a kernel algorithm name. The crypto API matches names exactly (lower case).
    #[must_use]
    pub fn from_name(name: &str) -> Option<HashAlg> {
        ALL.iter().find(|(_, n, _)| *n == name).map(|(a, _, _)| *a)
    }

    /// The kernel (and veritysetup) name.
    #[must_use]
    pub fn name(self) -> &'static str {
        ALL.iter().find(|(a, _, _)| *a == self).map_or("", |e| e.1)
    }

    /// Digest length in bytes.
    #[must_use]
    pub fn digest_size(self) -> usize {
        ALL.iter().find(|(a, _, _)| *a == self).map_or(0, |e| e.2)
    }

    /// Every supported name, for error messages.
    #[must_use]
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|e| e.1).collect()
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A salted hasher of one format, ready to hash blocks.
#[derive(Clone)]
pub struct BlockHasher {
    inner: Inner,
}

impl fmt::Debug for BlockHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockHasher")
    }
}

#[derive(Clone)]
enum Inner {
    Sha1(Salted<sha1::Sha1>),
    Sha224(Salted<sha2::Sha224>),
    Sha256(Salted<sha2::Sha256>),
    Sha384(Salted<sha2::Sha384>),
    Sha512(Salted<sha2::Sha512>),
    Sha3_224(Salted<sha3::Sha3_224>),
    Sha3_256(Salted<sha3::Sha3_256>),
    Sha3_384(Salted<sha3::Sha3_384>),
    Sha3_512(Salted<sha3::Sha3_512>),
    B256(Salted<Blake2b<U32>>),
    B384(Salted<Blake2b<U48>>),
    B512(Salted<Blake2b<U64>>),
}

/// `prefix` is the hasher after the salt (version 1) or fresh (version 0); `suffix` is the
/// salt to append (version 0) or empty.
#[derive(Clone)]
struct Salted<D> {
    prefix: D,
    suffix: Vec<u8>,
}

impl<D: Digest + Clone> Salted<D> {
    fn new(version: u32, salt: &[u8]) -> Salted<D> {
        let mut prefix = D::new();
        let suffix = if version >= 1 {
            prefix.update(salt);
            Vec::new()
        } else {
            salt.to_vec()
        };
        Salted { prefix, suffix }
    }

    fn hash(&self, data: &[u8], out: &mut [u8]) {
        let mut d = self.prefix.clone();
        d.update(data);
        if !self.suffix.is_empty() {
            d.update(&self.suffix);
        }
        out.copy_from_slice(&d.finalize());
    }
}

impl BlockHasher {
    /// A hasher for `alg` with the salt placement of `version` (0 or 1).
    #[must_use]
    pub fn new(alg: HashAlg, version: u32, salt: &[u8]) -> BlockHasher {
        let inner = match alg {
            HashAlg::Sha1 => Inner::Sha1(Salted::new(version, salt)),
            HashAlg::Sha224 => Inner::Sha224(Salted::new(version, salt)),
            HashAlg::Sha256 => Inner::Sha256(Salted::new(version, salt)),
            HashAlg::Sha384 => Inner::Sha384(Salted::new(version, salt)),
            HashAlg::Sha512 => Inner::Sha512(Salted::new(version, salt)),
            HashAlg::Sha3_224 => Inner::Sha3_224(Salted::new(version, salt)),
            HashAlg::Sha3_256 => Inner::Sha3_256(Salted::new(version, salt)),
            HashAlg::Sha3_384 => Inner::Sha3_384(Salted::new(version, salt)),
            HashAlg::Sha3_512 => Inner::Sha3_512(Salted::new(version, salt)),
            HashAlg::Blake2b256 => Inner::B256(Salted::new(version, salt)),
            HashAlg::Blake2b384 => Inner::B384(Salted::new(version, salt)),
            HashAlg::Blake2b512 => Inner::B512(Salted::new(version, salt)),
        };
        BlockHasher { inner }
    }

    /// Hash `data` into `out`, which must be exactly the digest size.
    pub fn hash(&self, data: &[u8], out: &mut [u8]) {
        match &self.inner {
            Inner::Sha1(s) => s.hash(data, out),
            Inner::Sha224(s) => s.hash(data, out),
            Inner::Sha256(s) => s.hash(data, out),
            Inner::Sha384(s) => s.hash(data, out),
            Inner::Sha512(s) => s.hash(data, out),
            Inner::Sha3_224(s) => s.hash(data, out),
            Inner::Sha3_256(s) => s.hash(data, out),
            Inner::Sha3_384(s) => s.hash(data, out),
            Inner::Sha3_512(s) => s.hash(data, out),
            Inner::B256(s) => s.hash(data, out),
            Inner::B384(s) => s.hash(data, out),
            Inner::B512(s) => s.hash(data, out),
        }
    }
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(H[usize::from(b >> 4)]));
        s.push(char::from(H[usize::from(b & 15)]));
    }
    s
}

/// The kernel's `hex2bin` over a whole string: an even number of hex digits (either case).
/// `None` on an odd length or a non-hex character.
#[must_use]
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    b.chunks_exact(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_matches_fips_vector() {
        let h = BlockHasher::new(HashAlg::Sha256, 1, &[]);
        let mut out = [0u8; 32];
        h.hash(b"abc", &mut out);
        assert_eq!(
            to_hex(&out),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn salt_goes_first_in_v1_and_last_in_v0() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        BlockHasher::new(HashAlg::Sha256, 1, b"ab").hash(b"c", &mut a);
        BlockHasher::new(HashAlg::Sha256, 0, b"c").hash(b"ab", &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        assert_eq!(from_hex("00fF10"), Some(vec![0, 255, 16]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(to_hex(&[0xab, 0x01]), "ab01");
        for (alg, name, size) in ALL {
            assert_eq!(HashAlg::from_name(name), Some(*alg));
            assert_eq!(alg.digest_size(), *size);
        }
    }
}
