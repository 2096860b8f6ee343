//! The crypt key token (`<hex>`, `-`, or a kernel keyring reference `:<size>:<type>:<desc>`)
//! and the [`Keyring`] that stands in for the kernel keyring.
//!
//! Key bytes live only in zeroizing buffers and never appear in `Debug` output or errors
//! (kernel dm-crypt.c `get_key_size`, `crypt_set_key`, `crypt_set_keyring_key`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use zeroize::Zeroizing;

use crate::targets::Keys;

/// Key bytes, wiped when dropped.
pub type KeyBytes = Zeroizing<Vec<u8>>;

/// The key argument of a crypt table line.
#[derive(Clone, PartialEq, Eq)]
pub enum CryptKey {
    /// `-`: no key (key size 0), for `cipher_null`.
    Empty,
    /// Hex digits decoded to bytes (an odd trailing nibble is ignored, as `hex2bin` does).
    Hex(KeyBytes),
    /// `:<size>:<type>:<description>`: the key is in the kernel keyring.
    Keyring(KeyringRef),
}

/// A kernel keyring reference: what `dmsetup table` prints back after the size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringRef {
    /// Key size in bytes, as given.
    pub size: u32,
    /// `logon`, `user`, `encrypted` or `trusted`.
    pub key_type: String,
    /// The key description (non-empty, no whitespace).
    pub description: String,
}

/// Keyring key types the 6.12 kernel accepts (`encrypted`/`trusted` need kernel config but
/// are built in Debian's kernel).
const KEY_TYPES: &[&str] = &["logon", "user", "encrypted", "trusted"];

impl CryptKey {
    /// Parse a key token; `Err` carries the kernel's `ti->error` words.
    pub fn parse(token: &str) -> Result<CryptKey, &'static str> {
        if let Some(rest) = token.strip_prefix(':') {
            return parse_keyring(rest);
        }
        // Kernel: key_size = strlen/2; a size of 0 is only allowed for "-".
        let size = token.len() / 2;
        if size == 0 {
            return if token == "-" {
                Ok(CryptKey::Empty)
            } else {
                Err("Error decoding and setting key")
            };
        }
        let mut bytes = Zeroizing::new(vec![0u8; size]);
        for (i, pair) in token.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]);
            let lo = hex_digit(pair[1]);
            match (hi, lo) {
                (Some(h), Some(l)) => bytes[i] = (h << 4) | l,
                _ => return Err("Error decoding and setting key"),
            }
        }
        Ok(CryptKey::Hex(bytes))
    }

    /// The key size in bytes (the kernel's `cc->key_size`).
    #[must_use]
    pub fn size(&self) -> usize {
        match self {
            CryptKey::Empty => 0,
            CryptKey::Hex(b) => b.len(),
            CryptKey::Keyring(k) => usize::try_from(k.size).unwrap_or(usize::MAX),
        }
    }

    /// Write the token as `dmsetup table` prints it: lowercase hex (zeros unless `Shown`),
    /// `-` for no key (`0` when hidden, as dmsetup zeroes it), keyring references always in
    /// full.
    pub fn write(&self, f: &mut impl fmt::Write, keys: Keys) -> fmt::Result {
        match self {
            // dmsetup zeroes the key token character by character, so even `-` shows as `0`
            // unless keys are shown.
            CryptKey::Empty => f.write_str(match keys {
                Keys::Shown => "-",
                Keys::Hidden => "0",
            }),
            CryptKey::Hex(bytes) => {
                for b in bytes.iter() {
                    match keys {
                        Keys::Shown => write!(f, "{b:02x}")?,
                        Keys::Hidden => f.write_str("00")?,
                    }
                }
                Ok(())
            }
            CryptKey::Keyring(k) => write!(f, ":{}:{}:{}", k.size, k.key_type, k.description),
        }
    }
}

impl fmt::Debug for CryptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptKey::Empty => f.write_str("Empty"),
            CryptKey::Hex(b) => write!(f, "Hex(<{} bytes hidden>)", b.len()),
            CryptKey::Keyring(k) => f.debug_tuple("Keyring").field(k).finish(),
        }
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `<size>:<type>:<desc>` after the leading `:` (kernel `get_key_size` then
/// `crypt_set_keyring_key`: `"%u%c"` with `:` directly after, a known type, a non-empty
/// description without whitespace).
fn parse_keyring(rest: &str) -> Result<CryptKey, &'static str> {
    const BAD_SIZE: &str = "Cannot parse key size";
    const BAD_KEY: &str = "Error decoding and setting key";
    let (size, rest) = rest.split_once(':').ok_or(BAD_SIZE)?;
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD_SIZE);
    }
    let size: u32 = size.parse().map_err(|_| BAD_SIZE)?;
    let (key_type, description) = rest.split_once(':').ok_or(BAD_KEY)?;
    if !KEY_TYPES.contains(&key_type)
        || description.is_empty()
        || description.chars().any(char::is_whitespace)
        || size == 0
    {
        return Err(BAD_KEY);
    }
    Ok(CryptKey::Keyring(KeyringRef {
        size,
        key_type: key_type.to_string(),
        description: description.to_string(),
    }))
}

/// Keys the caller supplies for keyring references in tables (the stand-in for the kernel
/// keyring, which a user-space program cannot read for `logon` keys).
#[derive(Default)]
pub struct Keyring {
    keys: Mutex<BTreeMap<(String, String), KeyBytes>>,
}

impl Keyring {
    /// Make `key` available as `<key_type>:<description>`.
    pub fn insert(&self, key_type: &str, description: &str, key: &[u8]) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (key_type.to_string(), description.to_string()),
                Zeroizing::new(key.to_vec()),
            );
    }

    /// The key a reference names, if it was supplied.
    #[must_use]
    pub fn get(&self, r: &KeyringRef) -> Option<KeyBytes> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(r.key_type.clone(), r.description.clone()))
            .cloned()
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let names: Vec<String> = keys.keys().map(|(t, d)| format!("{t}:{d}")).collect();
        f.debug_struct("Keyring").field("keys", &names).finish()
    }
}
