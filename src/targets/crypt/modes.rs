//! The data transforms dm-crypt instantiates (`mode(cipher)`, optionally inside
//! `essiv(…,hash)`): AES, Serpent, Twofish, Camellia and `cipher_null` under ecb, cbc,
//! ctr, xts and lrw.
//!
//! A [`Tfm`] is one of the kernel's `cc->cipher_tfm.tfms[i]`: keyed with one subkey, it
//! encrypts or decrypts one crypt sector given its IV, exactly as crypto/{cbc,ctr,xts,lrw,
//! essiv}.c do.

use aes::cipher::consts::U16;
use aes::cipher::{Array, Block, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use md5::Digest as _;
use zeroize::Zeroizing;

use super::adiantum::Adiantum;
use super::cipher::{ChainMode, Transform};
use super::iv::Iv;
use super::iv::{Direction, IV_SIZE};
use super::lrw::Lrw;
use super::xts;

/// A keyed 16-byte-block cipher: AES, Serpent, Twofish or Camellia of any key size.
#[derive(Clone)]
pub(crate) enum Cipher {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
    Serpent(Box<serpent::Serpent>),
    Twofish(Box<twofish::Twofish>),
    Camellia128(Box<camellia::Camellia128>),
    Camellia192(Box<camellia::Camellia192>),
    Camellia256(Box<camellia::Camellia256>),
}

/// Run `$body` with `$c` bound to the concrete cipher inside `$cipher`.
macro_rules! with_cipher {
    ($cipher:expr, $c:ident => $body:expr) => {
        match $cipher {
            $crate::targets::crypt::modes::Cipher::A128($c) => $body,
            $crate::targets::crypt::modes::Cipher::A192($c) => $body,
            $crate::targets::crypt::modes::Cipher::A256($c) => $body,
            $crate::targets::crypt::modes::Cipher::Serpent(boxed) => {
                let $c = &**boxed;
                $body
            }
            $crate::targets::crypt::modes::Cipher::Twofish(boxed) => {
                let $c = &**boxed;
                $body
            }
            $crate::targets::crypt::modes::Cipher::Camellia128(boxed) => {
                let $c = &**boxed;
                $body
            }
            $crate::targets::crypt::modes::Cipher::Camellia192(boxed) => {
                let $c = &**boxed;
                $body
            }
            $crate::targets::crypt::modes::Cipher::Camellia256(boxed) => {
                let $c = &**boxed;
                $body
            }
        }
    };
}
pub(crate) use with_cipher;

/// Block ciphers dmemu implements (besides `cipher_null`).
pub(crate) const CIPHERS: &[&str] = &["aes", "serpent", "twofish", "camellia"];

impl Cipher {
    /// The cipher `name` keyed with `key`; `None` for a key length the kernel's setkey
    /// refuses (AES, Twofish, Camellia: 16, 24 or 32 bytes; Serpent: 0..=32) or an unknown
    /// name.
    pub(crate) fn new(name: &str, key: &[u8]) -> Option<Cipher> {
        Some(match (name, key.len()) {
            ("aes", 16) => Cipher::A128(aes::Aes128::new_from_slice(key).ok()?),
            ("aes", 24) => Cipher::A192(aes::Aes192::new_from_slice(key).ok()?),
            ("aes", 32) => Cipher::A256(aes::Aes256::new_from_slice(key).ok()?),
            ("serpent", n) if n <= 32 => {
                // __serpent_setkey: keys shorter than 32 bytes get a 1 byte, then zeros.
                let mut k = Zeroizing::new([0u8; 32]);
                k[..n].copy_from_slice(key);
                if n < 32 {
                    k[n] = 1;
                }
                Cipher::Serpent(Box::new(serpent::Serpent::new_from_slice(&k[..]).ok()?))
            }
            ("twofish", _) => {
                Cipher::Twofish(Box::new(twofish::Twofish::new_from_slice(key).ok()?))
            }
            ("camellia", 16) => {
                Cipher::Camellia128(Box::new(camellia::Camellia128::new_from_slice(key).ok()?))
            }
            ("camellia", 24) => {
                Cipher::Camellia192(Box::new(camellia::Camellia192::new_from_slice(key).ok()?))
            }
            ("camellia", 32) => {
                Cipher::Camellia256(Box::new(camellia::Camellia256::new_from_slice(key).ok()?))
            }
            _ => return None,
        })
    }

    /// AES keyed with `key` (16, 24 or 32 bytes).
    #[cfg(test)]
    pub(crate) fn aes(key: &[u8]) -> Option<Cipher> {
        Cipher::new("aes", key)
    }

    /// Whether this is AES (the VAES kernel applies).
    pub(crate) fn is_aes(&self) -> bool {
        matches!(self, Cipher::A128(_) | Cipher::A192(_) | Cipher::A256(_))
    }

    pub(crate) fn encrypt(&self, data: &mut [u8]) {
        with_cipher!(self, c => c.encrypt_blocks(blocks(data)));
    }

    pub(crate) fn decrypt(&self, data: &mut [u8]) {
        with_cipher!(self, c => c.decrypt_blocks(blocks(data)));
    }
}

/// `data` (a whole number of 16-byte blocks) as AES blocks.
pub(crate) fn blocks(data: &mut [u8]) -> &mut [Block<aes::Aes128>] {
    let (blocks, rest) = Array::<u8, U16>::slice_as_chunks_mut(data);
    debug_assert!(rest.is_empty());
    blocks
}

/// Why a transform could not be keyed (the kernel's setkey failing: "Error decoding and
/// setting key"), or is not implemented here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TfmError {
    /// The key length does not suit the cipher and mode.
    KeyLength(String),
    /// dmemu does not implement this transform.
    Unsupported(String),
}

/// The chaining mode with its keyed cipher(s). Built once per key; the size of the
/// expanded AES keys (hundreds of bytes) is not worth a box on the data path.
#[allow(clippy::large_enum_variant)]
enum Mode {
    /// ecb(cipher_null) / cbc(cipher_null): the identity.
    Null,
    Ecb(Cipher),
    Cbc(Cipher),
    Ctr(Cipher),
    Xts(Box<xts::XtsKeys>),
    Lrw(Box<Lrw>),
    Adiantum(Box<Adiantum>),
}

/// One keyed transform (one of the kernel's `tfms[i]`).
pub(crate) struct Tfm {
    mode: Mode,
    /// ESSIV: the IV is first encrypted with this cipher, keyed with hash(subkey).
    essiv: Option<Cipher>,
}

impl std::fmt::Debug for Tfm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tfm(<keyed>)")
    }
}

impl Tfm {
    /// Key `transform` with `key` (`crypto_skcipher_setkey`).
    pub(crate) fn new(transform: &Transform, key: &[u8]) -> Result<Tfm, TfmError> {
        let (mode, cipher, essiv) = match transform {
            Transform::Block {
                mode,
                cipher,
                essiv,
            } => (mode, cipher, essiv),
            Transform::Adiantum { xchacha20, block } => {
                if !CIPHERS.contains(&block.as_str()) {
                    return Err(TfmError::Unsupported(format!("adiantum over {block}")));
                }
                let a = Adiantum::new(*xchacha20, block, key).ok_or_else(|| {
                    TfmError::KeyLength(format!(
                        "a {}-byte key does not fit adiantum (32 bytes)",
                        key.len()
                    ))
                })?;
                return Ok(Tfm {
                    mode: Mode::Adiantum(Box::new(a)),
                    essiv: None,
                });
            }
            Transform::Opaque(name) => {
                return Err(TfmError::Unsupported(format!(
                    "crypto API {}",
                    crate::error::quote(name)
                )));
            }
        };
        let bad_len = |what: &str| {
            TfmError::KeyLength(format!("a {}-byte key does not fit {what}", key.len()))
        };
        let name = cipher.as_str();
        if name != "cipher_null" && !CIPHERS.contains(&name) {
            return Err(TfmError::Unsupported(format!("cipher {name}")));
        }
        let what = format!("{mode:?}({name})").to_lowercase();
        let keyed = |k: &[u8]| Cipher::new(name, k).ok_or_else(|| bad_len(&what));
        let mode = match (name, mode) {
            // crypto_null.c: min and max key size 0, so setkey refuses any key but `-`.
            ("cipher_null", ChainMode::Ecb | ChainMode::Cbc) if !key.is_empty() => {
                return Err(bad_len(&what))
            }
            ("cipher_null", ChainMode::Ecb | ChainMode::Cbc) => Mode::Null,
            ("cipher_null", _) => return Err(TfmError::Unsupported(what)),
            (_, ChainMode::Ecb) => Mode::Ecb(keyed(key)?),
            (_, ChainMode::Cbc) => Mode::Cbc(keyed(key)?),
            (_, ChainMode::Ctr) => Mode::Ctr(keyed(key)?),
            (_, ChainMode::Xts) => {
                // xts_verify_key: an even length whose halves are keys of the cipher. Equal
                // halves are accepted outside FIPS mode, as the kernel does.
                if key.len() % 2 != 0 {
                    return Err(bad_len(&what));
                }
                let (k1, k2) = key.split_at(key.len() / 2);
                let (data, tweak) = (keyed(k1)?, keyed(k2)?);
                Mode::Xts(Box::new(xts::XtsKeys::new(data, tweak, k1)))
            }
            (_, ChainMode::Lrw) => {
                let split = key.len().checked_sub(16).ok_or_else(|| bad_len(&what))?;
                let (k, t) = key.split_at(split);
                let mut tk = [0u8; 16];
                tk.copy_from_slice(t);
                let lrw = Lrw::new(keyed(k)?, &tk);
                tk.fill(0);
                Mode::Lrw(Box::new(lrw))
            }
            (_, ChainMode::Other(m)) => return Err(TfmError::Unsupported(format!("{m}({name})"))),
        };
        let essiv = match essiv {
            None => None,
            Some(hash) => Some(essiv_cipher(cipher, hash, key)?),
        };
        Ok(Tfm { mode, essiv })
    }

    /// The cipher's IV size (`crypto_skcipher_ivsize`): 0 without IVs, 32 for Adiantum.
    pub(crate) fn iv_size(&self) -> usize {
        match self.mode {
            Mode::Null | Mode::Ecb(_) => 0,
            Mode::Adiantum(_) => 32,
            _ => IV_SIZE,
        }
    }

    /// The cipher's block size.
    pub(crate) fn block_size(&self) -> usize {
        match self.mode {
            Mode::Null => 1,
            _ => 16,
        }
    }

    /// The XTS keys when this is XTS without ESSIV (the batched fast path applies).
    pub(crate) fn xts_keys(&self) -> Option<&xts::XtsKeys> {
        match (&self.mode, &self.essiv) {
            (Mode::Xts(k), None) => Some(k),
            _ => None,
        }
    }

    /// Encrypt one sector in place with `iv`.
    pub(crate) fn encrypt(&self, iv_buf: &Iv, data: &mut [u8]) {
        let iv = self.essiv_iv(iv_buf);
        match &self.mode {
            Mode::Null => {}
            Mode::Ecb(c) => c.encrypt(data),
            Mode::Cbc(c) => {
                let mut prev = iv;
                for block in data.chunks_exact_mut(16) {
                    xor16(block, &prev);
                    c.encrypt(block);
                    prev.copy_from_slice(block);
                }
            }
            Mode::Ctr(c) => ctr(c, &iv, data),
            Mode::Xts(k) => {
                let mut t0 = [iv];
                k.encrypt_ivs(&mut t0);
                k.unit(&t0[0], None, data, Direction::Encrypt);
            }
            Mode::Lrw(l) => l.encrypt(&iv, data),
            Mode::Adiantum(a) => a.encrypt(iv_buf, data),
        }
    }

    /// Decrypt one sector in place with `iv`.
    pub(crate) fn decrypt(&self, iv_buf: &Iv, data: &mut [u8]) {
        let iv = self.essiv_iv(iv_buf);
        match &self.mode {
            Mode::Null => {}
            Mode::Ecb(c) => c.decrypt(data),
            Mode::Cbc(c) => {
                let mut prev = iv;
                // Decrypt a sector's blocks in one batch, then XOR each with the previous
                // ciphertext block (saved first, since decryption is in place). Sectors are
                // at most 4096 bytes; the copy holds only ciphertext.
                let mut prev_ct = [0u8; 4096];
                for piece in data.chunks_mut(4096) {
                    let n = piece.len();
                    prev_ct[..n].copy_from_slice(piece);
                    c.decrypt(piece);
                    xor16(piece, &prev);
                    for (block, p) in piece
                        .chunks_exact_mut(16)
                        .skip(1)
                        .zip(prev_ct[..n].chunks_exact(16))
                    {
                        xor16(block, p);
                    }
                    prev.copy_from_slice(&prev_ct[n - 16..n]);
                }
            }
            Mode::Ctr(c) => ctr(c, &iv, data),
            Mode::Xts(k) => {
                let mut t0 = [iv];
                k.encrypt_ivs(&mut t0);
                k.unit(&t0[0], None, data, Direction::Decrypt);
            }
            Mode::Lrw(l) => l.decrypt(&iv, data),
            Mode::Adiantum(a) => a.decrypt(iv_buf, data),
        }
    }

    fn essiv_iv(&self, iv: &Iv) -> [u8; IV_SIZE] {
        let mut out = [0u8; IV_SIZE];
        out.copy_from_slice(&iv[..IV_SIZE]);
        if let Some(e) = &self.essiv {
            e.encrypt(&mut out);
        }
        out
    }
}

/// The essiv template's IV cipher: the same block cipher keyed with hash(key)
/// (crypto/essiv.c `essiv_skcipher_setkey`: the cipher's setkey refuses a digest that is
/// not one of its key sizes, e.g. sha1's 20 bytes with AES or Twofish; Serpent takes any
/// length up to 32).
fn essiv_cipher(cipher: &str, hash: &str, key: &[u8]) -> Result<Cipher, TfmError> {
    if let Some(n) = super::cipher::digest_size(hash)
        .filter(|&n| super::cipher::kernel_key_size_ok(cipher, n) == Some(false))
    {
        return Err(TfmError::KeyLength(format!(
            "the {n}-byte {hash} digest does not key {cipher}"
        )));
    }
    let salt: Zeroizing<Vec<u8>> = Zeroizing::new(match hash {
        "sha256" => sha2::Sha256::digest(key).to_vec(),
        "md5" => md5::Md5::digest(key).to_vec(),
        other => {
            return Err(TfmError::Unsupported(format!("essiv hash {other}")));
        }
    });
    Cipher::new(cipher, &salt)
        .ok_or_else(|| TfmError::KeyLength(format!("the {hash} digest does not key {cipher}")))
}

fn xor16(block: &mut [u8], other: &[u8]) {
    for (a, b) in block.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// crypto/ctr.c: the IV is a 128-bit big-endian counter, incremented per block.
fn ctr(c: &Cipher, iv: &[u8; 16], data: &mut [u8]) {
    let mut counter = u128::from_be_bytes(*iv);
    let mut ks = Zeroizing::new([0u8; 4096]);
    for piece in data.chunks_mut(4096) {
        let ks = &mut ks[..piece.len()];
        for chunk in ks.chunks_exact_mut(16) {
            chunk.copy_from_slice(&counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        c.encrypt(ks);
        xor16_all(piece, ks);
    }
}

fn xor16_all(data: &mut [u8], ks: &[u8]) {
    for (a, b) in data.iter_mut().zip(ks) {
        *a ^= b;
    }
}
