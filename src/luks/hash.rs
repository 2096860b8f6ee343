//! The hashes LUKS names by string (`hashSpec`, `af.hash`, `kdf.hash`, digest `hash`,
//! `checksum_alg`), with PBKDF2-HMAC and the plain digest the AF splitter needs.
//!
//! cryptsetup resolves these names through its crypto backend (OpenSSL on Debian); the
//! ones below are the backend's usual set plus whirlpool. A name dmemu does not
//! implement (stribog, sm3, ...) is kept as [`Hash::Unsupported`]: a LUKS2 header naming
//! it still dumps (cryptsetup's JSON validation does not look hashes up), and using it
//! fails with "unsupported hash NAME", never as corrupt or as a wrong passphrase.

use std::fmt;

/// The longest unsupported hash name kept (longer ones are truncated for messages;
/// cryptsetup's LUKS1 `hashSpec` field holds 32 bytes).
pub const MAX_HASH_NAME: usize = 32;

/// A hash name dmemu does not implement, kept (up to [`MAX_HASH_NAME`] bytes) for dumps
/// and messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashName {
    len: u8,
    bytes: [u8; MAX_HASH_NAME],
}

impl HashName {
    fn new(name: &str) -> HashName {
        let mut end = name.len().min(MAX_HASH_NAME);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; MAX_HASH_NAME];
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        HashName {
            len: u8::try_from(end).unwrap_or(0),
            bytes,
        }
    }

    /// The name as given (possibly truncated).
    #[must_use]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl fmt::Debug for HashName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

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
    /// `whirlpool`.
    Whirlpool,
    /// A name dmemu does not implement: [`Hash::supported`] refuses it, and
    /// [`Hash::pbkdf2`] / [`Hash::digest_into`] write zeros for it (callers check first).
    Unsupported(HashName),
}

/// Names accepted by [`Hash::from_name`], for error messages.
pub const HASH_NAMES: &str = "sha1, sha224, sha256, sha384, sha512, ripemd160, whirlpool";

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
            "whirlpool" => Hash::Whirlpool,
            _ => return None,
        })
    }

    /// [`Hash::from_name`], or [`Hash::Unsupported`] keeping the name.
    #[must_use]
    pub fn parse(name: &str) -> Hash {
        Hash::from_name(name).unwrap_or_else(|| Hash::Unsupported(HashName::new(name)))
    }

    /// `self` if dmemu implements it, else "unsupported hash NAME" naming `what` used it.
    pub fn supported(self, what: &'static str) -> crate::error::Result<Hash> {
        match self {
            Hash::Unsupported(n) => Err(unsupported(what, n.as_str())),
            h => Ok(h),
        }
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
            Hash::Whirlpool => "whirlpool",
            Hash::Unsupported(_) => "unsupported",
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
            Hash::Sha512 | Hash::Whirlpool => 64,
            // No check can be made with it; 64 bounds what a digest field may hold.
            Hash::Unsupported(_) => 64,
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
            Hash::Whirlpool => p::<whirlpool::Whirlpool>(password, salt, rounds, out),
            Hash::Unsupported(_) => out.fill(0),
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
            Hash::Whirlpool => run::<whirlpool::Whirlpool>(parts, out),
            Hash::Unsupported(_) => out.fill(0),
        }
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hash::Unsupported(n) => f.write_str(n.as_str()),
            h => f.write_str(h.name()),
        }
    }
}

/// "unsupported hash NAME" (cryptsetup: "Requested LUKS hash NAME is not supported."),
/// an invalid argument, not damage: the header is well formed, dmemu lacks the hash.
pub(crate) fn unsupported(what: &'static str, name: &str) -> crate::error::Error {
    crate::error::Error::invalid(
        what,
        format!(
            "unsupported hash {} (dmemu has: {HASH_NAMES})",
            crate::error::quote(name)
        ),
    )
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
        for hash in [
            Hash::Sha1,
            Hash::Sha256,
            Hash::Sha512,
            Hash::Ripemd160,
            Hash::Whirlpool,
        ] {
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
        assert_eq!(Hash::from_name("WhirlPool"), Some(Hash::Whirlpool));
        assert_eq!(Hash::from_name("stribog512"), None);
        let h = Hash::parse("stribog512");
        assert_eq!(h.to_string(), "stribog512");
        let e = h.supported("LUKS2 digest hash").unwrap_err().to_string();
        assert!(e.contains("unsupported hash \"stribog512\""), "{e}");
    }

    #[test]
    fn whirlpool_is_the_iso_10118_3_digest() {
        // ISO/IEC 10118-3 test vector: Whirlpool("abc").
        let mut out = [0u8; 64];
        Hash::Whirlpool.digest_into(&[b"abc"], &mut out);
        assert_eq!(out[..8], [0x4e, 0x24, 0x48, 0xa4, 0xc6, 0xf4, 0x86, 0xbb]);
    }
}
