//! dm-crypt's IV generators (dm-crypt.c `crypt_iv_*`), per crypt sector `s` (= iv_sector).
//!
//! plain, plain64, plain64be, essiv (le64; the essiv transform encrypts it), benbi, null,
//! eboiv depend only on the sector; lmk and tcw also read or change the sector's data, so
//! they hook before and after the cipher like the kernel's `generator`/`post` callbacks.

use zeroize::Zeroizing;

use super::cipher::IvMode;
use super::elephant;
use super::modes::{Cipher, Tfm};

/// The IV size of 16-byte-block cipher modes.
pub(crate) const IV_SIZE: usize = 16;

/// An IV buffer: the IV is its first `Tfm::iv_size()` bytes (16, or 32 for Adiantum).
pub(crate) type Iv = [u8; 32];

/// A keyed IV generator.
pub(crate) enum IvGen {
    /// No IV (ecb, or a cipher without IVs): the IV buffer stays zero.
    None,
    Plain,
    Plain64,
    Plain64Be,
    /// le64 of the sector; the essiv transform encrypts it with hash(key).
    Essiv,
    /// `shift = 9 - log2(block size)`.
    Benbi {
        shift: u32,
    },
    Null,
    /// Encrypts `le64(s * sector_size)` with transform 0 (`any_tfm`).
    Eboiv {
        sector_size: u64,
    },
    /// loop-AES v2 (no seed) or v3 (64-byte seed: the 65th key's first 16 bytes, zero padded).
    Lmk {
        seed: Option<Zeroizing<[u8; 64]>>,
    },
    /// TrueCrypt: IV seed and whitening from the key's tail.
    Tcw {
        seed: Zeroizing<[u8; 16]>,
        whitening: Zeroizing<[u8; 16]>,
    },
    /// BitLocker: eboiv IVs plus the Elephant diffuser keyed with the key's second half.
    Elephant {
        sector_size: u64,
        key: Box<Cipher>,
    },
}

impl std::fmt::Debug for IvGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IvGen::None => "None",
            IvGen::Plain => "Plain",
            IvGen::Plain64 => "Plain64",
            IvGen::Plain64Be => "Plain64Be",
            IvGen::Essiv => "Essiv",
            IvGen::Benbi { .. } => "Benbi",
            IvGen::Null => "Null",
            IvGen::Eboiv { .. } => "Eboiv",
            IvGen::Lmk { .. } => "Lmk",
            IvGen::Tcw { .. } => "Tcw",
            IvGen::Elephant { .. } => "Elephant",
        })
    }
}

/// The error of [`IvGen::new`] for modes the kernel has but dmemu does not implement.
pub(crate) const UNSUPPORTED: &str = "IV mode not implemented by dmemu";

/// Which way data goes through the cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Plaintext to ciphertext (a write).
    Encrypt,
    /// Ciphertext to plaintext (a read).
    Decrypt,
}

impl IvGen {
    /// Build the generator for `mode` (`crypt_ctr_ivmode` + the mode's `ctr`/`init`).
    /// `extra` is the key's tail reserved for the IV (lmk seed, tcw seed + whitening).
    pub(crate) fn new(
        mode: Option<IvMode>,
        block_size: usize,
        iv_size: usize,
        sector_size: u64,
        extra: &[u8],
    ) -> Result<IvGen, String> {
        if iv_size != IV_SIZE && matches!(mode, Some(IvMode::Lmk | IvMode::Tcw)) {
            // Adiantum's 32-byte IV: the kernel would read past lmk's 16-byte digest.
            return Err(UNSUPPORTED.into());
        }
        Ok(match mode {
            None => IvGen::None,
            Some(IvMode::Plain) => IvGen::Plain,
            Some(IvMode::Plain64) => IvGen::Plain64,
            Some(IvMode::Plain64Be) => IvGen::Plain64Be,
            Some(IvMode::Essiv) => IvGen::Essiv,
            Some(IvMode::Null) => IvGen::Null,
            Some(IvMode::Benbi) => {
                // crypt_iv_benbi_ctr: block size a power of two, at most 512.
                if !block_size.is_power_of_two() {
                    return Err("Error creating IV (cypher blocksize is not a power of 2)".into());
                }
                let log = block_size.trailing_zeros();
                if log > 9 {
                    return Err("Error creating IV (cypher blocksize is > 512)".into());
                }
                IvGen::Benbi { shift: 9 - log }
            }
            Some(IvMode::Eboiv) => {
                if block_size != iv_size {
                    return Err(
                        "Error creating IV (Block size of EBOIV cipher does not match IV size of block cipher)".into(),
                    );
                }
                IvGen::Eboiv { sector_size }
            }
            Some(IvMode::Lmk) => {
                if sector_size != 512 {
                    return Err("Error creating IV (Unsupported sector size for LMK)".into());
                }
                let seed = if extra.is_empty() {
                    None
                } else {
                    // crypt_iv_lmk_init copies digest-size (16) bytes of the extra key.
                    let mut s = Zeroizing::new([0u8; 64]);
                    let n = extra.len().min(16);
                    s[..n].copy_from_slice(&extra[..n]);
                    Some(s)
                };
                IvGen::Lmk { seed }
            }
            Some(IvMode::Tcw) => {
                if sector_size != 512 {
                    return Err("Error creating IV (Unsupported sector size for TCW)".into());
                }
                let mut seed = Zeroizing::new([0u8; 16]);
                let mut whitening = Zeroizing::new([0u8; 16]);
                if extra.len() != 32 {
                    return Err("Error creating IV (Wrong key size for TCW)".into());
                }
                seed.copy_from_slice(&extra[..16]);
                whitening.copy_from_slice(&extra[16..]);
                IvGen::Tcw { seed, whitening }
            }
            Some(IvMode::Elephant) => {
                // crypt_iv_elephant_ctr: eboiv's check, then an ecb(aes) keyed (at init)
                // with the key's second half.
                if block_size != iv_size {
                    return Err("Error creating IV (Block size of EBOIV cipher does not match IV size of block cipher)".into());
                }
                let key = Cipher::new("aes", extra).ok_or_else(|| {
                    format!(
                        "Error initialising IV (a {}-byte Elephant key is not an AES key)",
                        extra.len()
                    )
                })?;
                IvGen::Elephant {
                    sector_size,
                    key: Box::new(key),
                }
            }
            Some(IvMode::Random) => return Err(UNSUPPORTED.into()),
        })
    }

    /// Whether the IV depends on the sector's data (no batching across sectors).
    pub(crate) fn reads_data(&self) -> bool {
        matches!(
            self,
            IvGen::Lmk { .. } | IvGen::Tcw { .. } | IvGen::Elephant { .. }
        )
    }

    /// The IV of sector `s` for generators that depend only on the sector.
    pub(crate) fn sector_iv(&self, s: u64, tfm0: &Tfm) -> Iv {
        let mut iv = [0u8; 32];
        let n = tfm0.iv_size();
        match self {
            IvGen::None | IvGen::Null | IvGen::Lmk { .. } => {}
            // Wraps at 2^32 sectors, as the kernel's plain does.
            IvGen::Plain => iv[..4].copy_from_slice(&((s & 0xffff_ffff) as u32).to_le_bytes()),
            IvGen::Plain64 | IvGen::Essiv => iv[..8].copy_from_slice(&s.to_le_bytes()),
            IvGen::Plain64Be => iv[n - 8..n].copy_from_slice(&s.to_be_bytes()),
            IvGen::Benbi { shift } => {
                let v = (s << shift).wrapping_add(1);
                iv[n - 8..n].copy_from_slice(&v.to_be_bytes());
            }
            IvGen::Eboiv { sector_size } | IvGen::Elephant { sector_size, .. } => {
                // Encrypt a zero block with IV = le64(s * sector_size) (wrapping like u64).
                let mut buf = [0u8; IV_SIZE];
                buf[..8].copy_from_slice(&s.wrapping_mul(*sector_size).to_le_bytes());
                let mut out = [0u8; IV_SIZE];
                let mut b = [0u8; 32];
                b[..IV_SIZE].copy_from_slice(&buf);
                tfm0.encrypt(&b, &mut out);
                iv[..IV_SIZE].copy_from_slice(&out);
            }
            IvGen::Tcw { seed, .. } => {
                let b = s.to_le_bytes();
                for i in 0..IV_SIZE {
                    iv[i] = seed[i] ^ b[i % 8];
                }
            }
        }
        iv
    }

    /// Before the cipher: the IV for this sector, and the kernel's `generator` side effects
    /// (tcw removes the whitening from ciphertext before decryption; lmk hashes the
    /// plaintext before encryption).
    pub(crate) fn before(&self, s: u64, dir: Direction, data: &mut [u8], tfm0: &Tfm) -> Iv {
        match (self, dir) {
            (IvGen::Lmk { seed }, Direction::Encrypt) => lmk_iv(seed.as_deref(), s, data),
            (IvGen::Tcw { whitening, .. }, Direction::Decrypt) => {
                tcw_whiten(whitening, s, data);
                self.sector_iv(s, tfm0)
            }
            (IvGen::Elephant { sector_size, key }, Direction::Encrypt) => {
                elephant::encrypt(key, s, *sector_size, data);
                self.sector_iv(s, tfm0)
            }
            _ => self.sector_iv(s, tfm0),
        }
    }

    /// After the cipher (the kernel's `post`): lmk XORs its IV into the first plaintext
    /// block after decryption; tcw whitens the ciphertext after encryption.
    pub(crate) fn after(&self, s: u64, dir: Direction, data: &mut [u8]) {
        match (self, dir) {
            (IvGen::Lmk { seed }, Direction::Decrypt) => {
                let iv = lmk_iv(seed.as_deref(), s, data);
                for (d, v) in data.iter_mut().zip(&iv[..IV_SIZE]) {
                    *d ^= v;
                }
            }
            (IvGen::Tcw { whitening, .. }, Direction::Encrypt) => tcw_whiten(whitening, s, data),
            (IvGen::Elephant { sector_size, key }, Direction::Decrypt) => {
                elephant::decrypt(key, s, *sector_size, data);
            }
            _ => {}
        }
    }
}

/// MD5 initial state (RFC 1321).
const MD5_INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// crypt_iv_lmk_one: the raw MD5 state (no padding) over [seed ‖] blocks 1..31 of the
/// plaintext ‖ le32(s) ‖ le32((s >> 32 & 0xffffff) | 0x80000000) ‖ le32(4024) ‖ le32(0).
fn lmk_iv(seed: Option<&[u8; 64]>, s: u64, data: &[u8]) -> Iv {
    let mut out = [0u8; 32];
    out[..IV_SIZE].copy_from_slice(&lmk_md5(seed, s, data));
    out
}

fn lmk_md5(seed: Option<&[u8; 64]>, s: u64, data: &[u8]) -> [u8; IV_SIZE] {
    let mut blocks = Zeroizing::new([[0u8; 64]; 9]);
    let msg = blocks.as_flattened_mut();
    let mut at = 0;
    if let Some(seed) = seed {
        msg[..64].copy_from_slice(seed);
        at = 64;
    }
    msg[at..at + 496].copy_from_slice(&data[16..512]);
    at += 496;
    let lo = (s & 0xffff_ffff) as u32; // the kernel crops the sector to 56 bits
    let hi = ((s >> 32) & 0x00ff_ffff) as u32 | 0x8000_0000;
    msg[at..at + 4].copy_from_slice(&lo.to_le_bytes());
    msg[at + 4..at + 8].copy_from_slice(&hi.to_le_bytes());
    msg[at + 8..at + 12].copy_from_slice(&4024u32.to_le_bytes());
    at += 16;
    let mut state = MD5_INIT;
    md5::block_api::compress(&mut state, &blocks[..at / 64]);
    let mut iv = [0u8; IV_SIZE];
    for (chunk, word) in iv.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    iv
}

/// The kernel "crc32" shash: CRC-32 (reflected 0xedb88320) seeded with 0, no final xor.
fn crc32_raw(bytes: &[u8]) -> u32 {
    crc32_le(0, bytes)
}

/// The kernel's `crc32_le(seed, p, len)`.
fn crc32_le(seed: u32, bytes: &[u8]) -> u32 {
    let mut crc = seed;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (if crc & 1 == 1 { 0xedb8_8320 } else { 0 });
        }
    }
    crc
}

/// crypt_iv_tcw_whitening: XOR an 8-byte value derived from the whitening key and the
/// sector into every 8 bytes of the 512-byte sector.
fn tcw_whiten(whitening: &[u8; 16], s: u64, data: &mut [u8]) {
    let sb = s.to_le_bytes();
    let mut buf = Zeroizing::new([0u8; 16]);
    for i in 0..16 {
        buf[i] = whitening[i] ^ sb[i % 8];
    }
    for i in 0..4 {
        let crc = crc32_raw(&buf[i * 4..i * 4 + 4]);
        buf[i * 4..i * 4 + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let mut w = [0u8; 8];
    for i in 0..4 {
        w[i] = buf[i] ^ buf[12 + i];
        w[4 + i] = buf[4 + i] ^ buf[8 + i];
    }
    for chunk in data[..512].chunks_exact_mut(8) {
        for (d, x) in chunk.iter_mut().zip(w) {
            *d ^= x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_le_with_inverted_seed_and_result_is_standard_crc32() {
        // The standard CRC-32 check value of "123456789" is 0xcbf43926 (seed and result
        // inverted); the kernel "crc32" shash that tcw uses does neither.
        assert_eq!(!crc32_le(!0, b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32_raw(b""), 0);
    }
}
