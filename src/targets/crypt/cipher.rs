//! Cipher specifications: `cipher[:keycount]-chainmode-ivmode[:ivopts]` (legacy) and
//! `capi:<crypto API name>-ivmode[:ivopts]`, parsed as 6.12's `crypt_ctr_cipher_old` /
//! `crypt_ctr_cipher_new` / `crypt_ctr_ivmode` do, with their `ti->error` words.

use std::fmt;

/// The block-cipher chaining mode of a transform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainMode {
    /// `ecb`: no IV.
    Ecb,
    /// `cbc`.
    Cbc,
    /// `ctr`: a 128-bit big-endian counter starting at the IV.
    Ctr,
    /// `xts`: IEEE 1619, key = data key ‖ tweak key.
    Xts,
    /// `lrw`: key = cipher key ‖ 16-byte tweak key.
    Lrw,
    /// Another kernel mode (pcbc, cts, ...), kept by name.
    Other(String),
}

impl ChainMode {
    fn from_name(name: &str) -> ChainMode {
        match name {
            "ecb" => ChainMode::Ecb,
            "cbc" => ChainMode::Cbc,
            "ctr" => ChainMode::Ctr,
            "xts" => ChainMode::Xts,
            "lrw" => ChainMode::Lrw,
            other => ChainMode::Other(other.to_string()),
        }
    }
}

/// What the kernel's crypto API would instantiate for the data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transform {
    /// `mode(cipher)`, optionally wrapped in `essiv(…,hash)`.
    Block {
        /// Chaining mode.
        mode: ChainMode,
        /// Block cipher name (`aes`, `serpent`, `cipher_null`, ...).
        cipher: String,
        /// ESSIV hash: the IV is encrypted with `cipher` keyed by `hash(key)`.
        essiv: Option<String>,
    },
    /// `adiantum(xchacha12|xchacha20,<block cipher>)`.
    Adiantum {
        /// XChaCha20 instead of XChaCha12.
        xchacha20: bool,
        /// The block cipher (AES in practice).
        block: String,
    },
    /// Any other API name (AEADs, ...), kept verbatim.
    Opaque(String),
}

/// The IV generators of dm-crypt (`crypt_ctr_ivmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvMode {
    /// le32 of the sector.
    Plain,
    /// le64 of the sector.
    Plain64,
    /// be64 of the sector in the last 8 bytes.
    Plain64Be,
    /// le64 of the sector, encrypted by the essiv template.
    Essiv,
    /// be64 narrow-block count starting at 1 (for LRW).
    Benbi,
    /// All zeros.
    Null,
    /// loop-AES: MD5 over the plaintext.
    Lmk,
    /// TrueCrypt: seed XOR sector, plus ciphertext whitening.
    Tcw,
    /// Random, stored in integrity metadata.
    Random,
    /// Encrypted byte offset (BitLocker).
    Eboiv,
    /// BitLocker Elephant diffuser.
    Elephant,
}

impl IvMode {
    fn from_name(name: &str) -> Option<IvMode> {
        Some(match name {
            "plain" => IvMode::Plain,
            "plain64" => IvMode::Plain64,
            "plain64be" => IvMode::Plain64Be,
            "essiv" => IvMode::Essiv,
            "benbi" => IvMode::Benbi,
            "null" => IvMode::Null,
            "lmk" => IvMode::Lmk,
            "tcw" => IvMode::Tcw,
            "random" => IvMode::Random,
            "eboiv" => IvMode::Eboiv,
            "elephant" => IvMode::Elephant,
            _ => return None,
        })
    }
}

/// A parsed cipher specification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CipherSpec {
    /// The specification exactly as given (what the kernel prints back).
    pub text: String,
    /// The data transform.
    pub transform: Transform,
    /// Number of keys (`tfms_count`): `:keycount` in legacy form, 64 for capi `lmk`.
    pub keycount: u32,
    /// The IV generator; `None` when the cipher takes no IV (ecb drops any ivmode).
    pub iv: Option<IvMode>,
    /// IV options (`essiv:<hash>`'s hash), as given.
    pub ivopts: Option<String>,
}

impl fmt::Display for CipherSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Block ciphers registered by Linux 6.12 (Debian's build). Names outside this list fail
/// as the kernel's tfm allocation does; names inside it parse even where dmemu cannot
/// execute them (building such a target fails as unsupported).
const KERNEL_CIPHERS: &[&str] = &[
    "aes",
    "anubis",
    "aria",
    "blowfish",
    "camellia",
    "cast5",
    "cast6",
    "cipher_null",
    "des",
    "des3_ede",
    "fcrypt",
    "khazad",
    "seed",
    "serpent",
    "sm4",
    "tea",
    "twofish",
    "xeta",
    "xtea",
];

/// Chaining modes (skcipher templates) of Linux 6.12.
const KERNEL_MODES: &[&str] = &[
    "ecb", "cbc", "ctr", "xts", "lrw", "pcbc", "cts", "cfb", "ofb", "hctr2", "xctr",
];

/// Hashes of Debian's 6.12 build usable in essiv, with their digest sizes.
const KERNEL_HASHES: &[(&str, usize)] = &[
    ("md4", 16),
    ("md5", 16),
    ("rmd160", 20),
    ("sha1", 20),
    ("sha224", 28),
    ("sha256", 32),
    ("sha384", 48),
    ("sha512", 64),
    ("sha3-224", 28),
    ("sha3-256", 32),
    ("sha3-384", 48),
    ("sha3-512", 64),
    ("sm3", 32),
    ("streebog256", 32),
    ("streebog512", 64),
    ("wp256", 32),
    ("wp384", 48),
    ("wp512", 64),
    ("blake2b-256", 32),
    ("blake2b-512", 64),
];

/// Which key lengths within a cipher's range its setkey takes.
type KeyLenOk = fn(usize) -> bool;

/// A kernel block cipher's key sizes: `cia_min_keysize..=cia_max_keysize` and which
/// lengths in that range its setkey takes (Linux 6.12 crypto/).
fn kernel_key_sizes(cipher: &str) -> Option<(usize, usize, KeyLenOk)> {
    let aes_like: KeyLenOk = |n| matches!(n, 16 | 24 | 32);
    let any: KeyLenOk = |_| true;
    let words: KeyLenOk = |n| n % 4 == 0;
    Some(match cipher {
        "aes" | "twofish" | "camellia" | "aria" => (16, 32, aes_like),
        "serpent" => (0, 32, any),
        "cast6" => (16, 32, words),
        "anubis" => (16, 40, words),
        "sm4" | "seed" | "tea" | "xtea" | "xeta" | "khazad" => (16, 16, any),
        "blowfish" => (4, 56, any),
        "cast5" => (5, 16, any),
        "des" | "fcrypt" => (8, 8, any),
        "des3_ede" => (24, 24, any),
        "cipher_null" => (0, 0, any),
        _ => return None,
    })
}

/// Whether `cipher`'s setkey takes an `n`-byte key; `None` for a cipher not listed.
#[must_use]
pub(super) fn kernel_key_size_ok(cipher: &str, n: usize) -> Option<bool> {
    kernel_key_sizes(cipher).map(|(lo, hi, ok)| (lo..=hi).contains(&n) && ok(n))
}

/// The digest size of a kernel hash.
#[must_use]
pub(super) fn digest_size(hash: &str) -> Option<usize> {
    KERNEL_HASHES.iter().find(|h| h.0 == hash).map(|h| h.1)
}

impl CipherSpec {
    /// Parse `text`; `aead` is whether `integrity:<n>:aead` was given (legacy form refuses it).
    pub fn parse(text: &str, aead: bool) -> Result<CipherSpec, String> {
        if let Some(rest) = text.strip_prefix("capi:") {
            Self::parse_capi(text, rest)
        } else {
            Self::parse_legacy(text, aead)
        }
    }

    fn parse_legacy(text: &str, aead: bool) -> Result<CipherSpec, String> {
        if text.contains('(') || aead {
            return Err("Bad cipher specification".into());
        }
        // strsep on '-': cipher[:keycount], chainmode, then ivmode[:ivopts] (split at ':').
        let (head, rest) = split_opt(text, '-');
        let (cipher, keycount) = split_opt(head, ':');
        let keycount = match keycount {
            None => 1,
            Some(k) => parse_u32(k)
                .filter(|n| n.is_power_of_two())
                .ok_or("Bad cipher key count specification")?,
        };
        let (chainmode, rest) = match rest {
            Some(r) => {
                let (c, r) = split_opt(r, '-');
                (Some(c), r)
            }
            None => (None, None),
        };
        let (mut ivmode, mut ivopts) = match rest {
            Some(r) => {
                let (m, o) = split_opt(r, ':');
                (Some(m), o)
            }
            None => (None, None),
        };
        let chainmode = match chainmode {
            None => {
                ivmode = Some("plain");
                "cbc"
            }
            Some("plain") if ivmode.is_none() => {
                ivmode = Some("plain");
                ivopts = None;
                "cbc"
            }
            Some(c) => c,
        };
        if chainmode != "ecb" && ivmode.is_none() {
            return Err("IV mechanism required".into());
        }
        let essiv = essiv_hash(ivmode, ivopts, Some(cipher))?;
        if chainmode == "adiantum" {
            let transform = adiantum(cipher).ok_or_else(|| {
                format!(
                    "Error allocating crypto tfm (no {} in the kernel)",
                    crate::error::quote(&format!("adiantum({cipher})"))
                )
            })?;
            return Self::finish(text, transform, keycount, ivmode, ivopts);
        }
        if !KERNEL_CIPHERS.contains(&cipher) || !KERNEL_MODES.contains(&chainmode) {
            return Err(format!(
                "Error allocating crypto tfm (no {} in the kernel)",
                crate::error::quote(&format!("{chainmode}({cipher})"))
            ));
        }
        let transform = Transform::Block {
            mode: ChainMode::from_name(chainmode),
            cipher: cipher.to_string(),
            essiv,
        };
        Self::finish(text, transform, keycount, ivmode, ivopts)
    }

    fn parse_capi(text: &str, rest: &str) -> Result<CipherSpec, String> {
        // ivopts after the last ':', ivmode after the last '-', the rest is the API name.
        let (rest, ivopts) = match rest.rfind(':') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (api, ivmode) = match rest.rfind('-') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let keycount = if ivmode == Some("lmk") { 64 } else { 1 };
        let mut transform = parse_api(api)?;
        let block_cipher = match &transform {
            Transform::Block { cipher, .. } => Some(cipher.as_str()),
            _ => None,
        };
        if let Some(hash) = essiv_hash(ivmode, ivopts, block_cipher)? {
            transform = match transform {
                Transform::Block {
                    mode,
                    cipher,
                    essiv: None,
                } => Transform::Block {
                    mode,
                    cipher,
                    essiv: Some(hash),
                },
                _ => Transform::Opaque(format!("essiv({api},{hash})")),
            };
        }
        Self::finish(text, transform, keycount, ivmode, ivopts)
    }

    fn finish(
        text: &str,
        transform: Transform,
        keycount: u32,
        ivmode: Option<&str>,
        ivopts: Option<&str>,
    ) -> Result<CipherSpec, String> {
        let has_iv = !matches!(
            transform,
            Transform::Block {
                mode: ChainMode::Ecb,
                ..
            }
        );
        // crypt_ctr_ivmode: a cipher without IVs drops the ivmode (with a warning).
        let iv = match ivmode {
            Some(m) if has_iv => Some(IvMode::from_name(m).ok_or("Invalid IV mode")?),
            _ => None,
        };
        Ok(CipherSpec {
            text: text.to_string(),
            transform,
            keycount,
            iv,
            ivopts: ivopts.map(str::to_string),
        })
    }

    /// Whether the transform is an AEAD (needs `integrity:<n>:aead`).
    #[must_use]
    pub fn is_aead_name(&self) -> bool {
        matches!(&self.transform, Transform::Opaque(a)
            if a.starts_with("authenc(") || a.starts_with("gcm(") || a.starts_with("rfc")
                || a.starts_with("ccm("))
    }
}

/// strsep: the part before the first `sep`, and what follows it (if `sep` occurs).
fn split_opt(s: &str, sep: char) -> (&str, Option<&str>) {
    match s.split_once(sep) {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

/// `"%u%c"` with exactly one conversion: digits only, within `u32`.
fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The essiv hash when the ivmode is `essiv` ("Digest algorithm missing for ESSIV mode").
fn essiv_hash(
    ivmode: Option<&str>,
    ivopts: Option<&str>,
    cipher: Option<&str>,
) -> Result<Option<String>, String> {
    if ivmode != Some("essiv") {
        return Ok(None);
    }
    let hash = ivopts.ok_or("Digest algorithm missing for ESSIV mode")?;
    // essiv_supported_algorithms: the digest must lie within the cipher's key size range
    // (16..=32 for AES, 0..=32 for Serpent; 16..=32 when the cipher is not listed); a size
    // inside the range that is not a key size (sha1's 20 for AES) passes here and fails at
    // setkey ("Error decoding and setting key").
    let (lo, hi) = cipher
        .and_then(kernel_key_sizes)
        .map_or((16, 32), |(lo, hi, _)| (lo, hi));
    match digest_size(hash) {
        None => {
            return Err(format!(
                "Error allocating crypto tfm (no hash {} in the kernel)",
                crate::error::quote(hash)
            ))
        }
        Some(n) if !(lo..=hi).contains(&n) => {
            return Err(format!(
                "Error allocating crypto tfm ({hash} digest of {n} bytes cannot key the cipher)"
            ))
        }
        Some(_) => {}
    }
    Ok(Some(hash.to_string()))
}

/// `xchacha12,<cipher>` or `xchacha20,<cipher>` (adiantum's arguments), the cipher one of
/// the kernel's 16-byte-block ciphers with 32-byte keys.
fn adiantum(args: &str) -> Option<Transform> {
    let (stream, block) = args.split_once(',')?;
    let xchacha20 = match stream {
        "xchacha12" => false,
        "xchacha20" => true,
        _ => return None,
    };
    ["aes", "serpent", "twofish", "camellia", "aria", "sm4"]
        .contains(&block)
        .then(|| Transform::Adiantum {
            xchacha20,
            block: block.to_string(),
        })
}

/// A crypto API name: `mode(cipher)` and `essiv(mode(cipher),hash)` are typed, anything
/// else is kept opaque. Unbalanced parentheses are refused.
pub(super) fn parse_api(api: &str) -> Result<Transform, String> {
    let mut depth = 0i32;
    for c in api.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    if depth != 0 || api.is_empty() {
        return Err("Error allocating crypto tfm (malformed crypto API name)".into());
    }
    if let Some(inner) = api.strip_prefix("essiv(").and_then(|r| r.strip_suffix(')')) {
        if let Some((alg, hash)) = inner.rsplit_once(',') {
            if let Transform::Block {
                mode,
                cipher,
                essiv: None,
            } = parse_api(alg)?
            {
                return Ok(Transform::Block {
                    mode,
                    cipher,
                    essiv: Some(hash.to_string()),
                });
            }
        }
        return Ok(Transform::Opaque(api.to_string()));
    }
    if let Some(t) = api
        .strip_prefix("adiantum(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(adiantum)
    {
        return Ok(t);
    }
    if let Some((mode, rest)) = api.split_once('(') {
        if let Some(cipher) = rest.strip_suffix(')') {
            if KERNEL_MODES.contains(&mode)
                && !cipher.contains(['(', ')', ','])
                && KERNEL_CIPHERS.contains(&cipher)
            {
                return Ok(Transform::Block {
                    mode: ChainMode::from_name(mode),
                    cipher: cipher.to_string(),
                    essiv: None,
                });
            }
        }
    }
    Ok(Transform::Opaque(api.to_string()))
}
