//! The hashes LUKS names by string (`hashSpec`, `af.hash`, `kdf.hash`, digest `hash`,
//! `checksum_alg`), with PBKDF2-HMAC and the plain digest the AF splitter needs.
//!
//! cryptsetup resolves these names through its crypto backend (OpenSSL on Debian); the
//! ones below are the backend's usual set. Others (whirlpool, stribog, sm3, blake2) are
//! refused by name.

use std::fmt;

/// A hash algorithm known by its cryptsetup name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// `sha1` (LUKS1's old default).
    Sha1,
    /// `sha224`.
    Sha224,
    /// `sha256` (the default everywhere since cryptsetup 1.7).
    Sha256,
    /// `sha384`.
    Sha384,
    /// `sha512`.
    Sha512,
    /// `ripemd160`.
    Ripemd160,
}

/// Names accepted by [`Hash::from_name`], for error messages.
pub const HASH_NAMES: &str = "sha1, sha224, sha256, sha384, sha512, ripemd160";

impl Hash {
    /// The hash called `name` (case-insensitive, as the backend's lookups are).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Hash> {
        Some(match name.to_ascii_lowercase().as_str() {
            "sha1" => Hash::Sha1,
            "sha224" => Hash::Sha224,
            "sha256" => Hash::Sha256,
            "sha384" => Hash::Sha384,
            "sha512" => Hash::Sha512,
            "ripemd160" => Hash::Ripemd160,
            _ => return None,
        })
    }

    /// The cryptsetup name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "sha1",
            Hash::Sha224 => "sha224",
            Hash::Sha256 => "sha256",
            Hash::Sha384 => "sha384",
            Hash::Sha512 => "sha512",
            Hash::Ripemd160 => "ripemd160",
        }
    }

    /// Digest length in bytes.
    #[must_use]
    pub fn digest_len(self) -> usize {
        match self {
            Hash::Sha1 | Hash::Ripemd160 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// PBKDF2-HMAC with this hash: fills `out`.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac as p;
        match self {
            Hash::Sha1 => p::<sha1::Sha1>(password, salt, rounds, out),
            Hash::Sha224 => p::<sha2::Sha224>(password, salt, rounds, out),
            Hash::Sha256 => p::<sha2::Sha256>(password, salt, rounds, out),
            Hash::Sha384 => p::<sha2::Sha384>(password, salt, rounds, out),
            Hash::Sha512 => p::<sha2::Sha512>(password, salt, rounds, out),
            Hash::Ripemd160 => p::<ripemd::Ripemd160>(password, salt, rounds, out),
        }
    }

    /// The digest of the concatenation of `parts`, first `out.len()` bytes (at most
    /// [`Hash::digest_len`]) written to `out`.
    pub fn digest_into(self, parts: &[&[u8]], out: &mut [u8]) {
        fn run<D: sha2::Digest>(parts: &[&[u8]], out: &mut [u8]) {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            let r = d.finalize();
            let n = out.len().min(r.len());
            out[..n].copy_from_slice(&r[..n]);
        }
        match self {
            Hash::Sha1 => run::<sha1::Sha1>(parts, out),
            Hash::Sha224 => run::<sha2::Sha224>(parts, out),
            Hash::Sha256 => run::<sha2::Sha256>(parts, out),
            Hash::Sha384 => run::<sha2::Sha384>(parts, out),
            Hash::Sha512 => run::<sha2::Sha512>(parts, out),
            Hash::Ripemd160 => run::<ripemd::Ripemd160>(parts, out),
        }
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `diffuse` of cryptsetup's lib/luks1/af.c: piece i of `buf` (digest-sized, the last
/// one possibly shorter) becomes `H(be32(i) ‖ piece)` truncated to the piece's length.
fn diffuse(buf: &mut [u8], hash: Hash) {
    let mut tmp = [0u8; 64];
    for (i, piece) in buf.chunks_mut(hash.digest_len()).enumerate() {
        let iv = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
        hash.digest_into(&[&iv, piece], &mut tmp[..piece.len()]);
        piece.copy_from_slice(&tmp[..piece.len()]);
    }
    // The pieces are (partial) key material.
    zeroize::Zeroize::zeroize(&mut tmp);
}

/// `AF_merge` (af.c): `src` holds `stripes` blocks of `out.len()` bytes; the merged key
/// is written to `out`. `src.len()` must be at least `stripes * out.len()`.
pub fn af_merge(src: &[u8], stripes: usize, hash: Hash, out: &mut [u8]) {
    let n = out.len();
    out.fill(0);
    if stripes == 0 || n == 0 {
        return;
    }
    for block in src.chunks_exact(n).take(stripes - 1) {
        out.iter_mut().zip(block).for_each(|(a, b)| *a ^= b);
        diffuse(out, hash);
    }
    let last = &src[(stripes - 1) * n..stripes * n];
    out.iter_mut().zip(last).for_each(|(a, b)| *a ^= b);
}

/// `AF_split` with caller-given random stripes 0..stripes-2 in `dst` (tests build key
/// material with it, the fuzz driver checks merge against it; the last stripe is computed
/// here).
#[cfg(any(test, feature = "testing"))]
pub fn af_split(key: &[u8], dst: &mut [u8], stripes: usize, hash: Hash) {
    let n = key.len();
    let mut acc = vec![0u8; n];
    for block in dst.chunks_exact(n).take(stripes - 1) {
        acc.iter_mut().zip(block).for_each(|(a, b)| *a ^= b);
        diffuse(&mut acc, hash);
    }
    let last = &mut dst[(stripes - 1) * n..stripes * n];
    for ((l, a), k) in last.iter_mut().zip(&acc).zip(key) {
        *l = a ^ k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn af_merge_inverts_af_split_for_every_hash_and_odd_key_sizes() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512, Hash::Ripemd160] {
            for n in [16usize, 32, 33, 64] {
                let key: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
                let mut m: Vec<u8> = (0..n * 10).map(|i| (i * 13 % 256) as u8).collect();
                af_split(&key, &mut m, 10, hash);
                let mut out = vec![0u8; n];
                af_merge(&m, 10, hash, &mut out);
                assert_eq!(out, key, "{hash} {n}");
            }
        }
    }

    #[test]
    fn pbkdf2_sha256_matches_rfc7914_vector() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256("passwd", "salt", 1, 64).
        let mut out = [0u8; 64];
        Hash::Sha256.pbkdf2(b"passwd", b"salt", 1, &mut out);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }

    #[test]
    fn hash_names_are_case_insensitive_and_unknown_ones_refused() {
        assert_eq!(Hash::from_name("SHA256"), Some(Hash::Sha256));
        assert_eq!(Hash::from_name("whirlpool"), None);
    }
}
