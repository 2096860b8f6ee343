//! Kernel targets dmemu does not type (vdo, zoned, multipath groups with other selectors,
//! ...): kept as their type and parameter text so a table prints back unchanged.

use std::fmt;

use super::Keys;

/// A target kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherArgs {
    /// Kernel target type name.
    pub target_type: String,
    /// The parameter text exactly as written after the type (without a `#` comment).
    pub params: String,
}

impl OtherArgs {
    /// Keep the parameter text `raw` for `target_type`.
    #[must_use]
    pub fn new(target_type: &str, raw: &str) -> OtherArgs {
        OtherArgs {
            target_type: target_type.to_string(),
            params: raw.to_string(),
        }
    }

    /// The operation name used in the "not executed" error.
    #[must_use]
    pub fn unsupported_op(&self) -> &'static str {
        "I/O (this target type is parsed and printed, not executed)"
    }
}

/// Untyped targets whose STATUSTYPE_TABLE output always ends in a space, which dmsetup's
/// line reader strips on input: `multipath_status` emits `"%s "` after every word (seen in
/// the kernel table corpus, tests/fixtures/kernel-tables).
const TRAILING_SPACE_TYPES: &[&str] = &["multipath"];

impl OtherArgs {
    /// Write the parameters as `dmsetup table` shows them: with `Keys::Hidden`, key text is
    /// overwritten with `0`s in place exactly as dmsetup's `_status` does on the kernel's
    /// text (crypt: the second word unless it starts with `:`; integrity: the key after
    /// `internal_hash:`, `journal_crypt:` and `journal_mac:`).
    pub fn write(&self, out: &mut impl fmt::Write, keys: Keys) -> fmt::Result {
        let mut params = self.params.clone().into_bytes();
        if keys == Keys::Hidden {
            match self.target_type.as_str() {
                "crypt" => hide_crypt_key(&mut params),
                "integrity" => {
                    for name in ["internal_hash:", "journal_crypt:", "journal_mac:"] {
                        hide_key(&mut params, name);
                    }
                }
                _ => {}
            }
        }
        // Only ASCII bytes were replaced by ASCII '0's, so this stays valid UTF-8.
        out.write_str(&String::from_utf8_lossy(&params))?;
        if TRAILING_SPACE_TYPES.contains(&self.target_type.as_str()) && !params.ends_with(b" ") {
            out.write_str(" ")?;
        }
        Ok(())
    }
}

/// Overwrite `params[from..]` with `'0'` up to the next space.
fn zero_word(params: &mut [u8], from: usize) {
    for b in params.iter_mut().skip(from).take_while(|b| **b != b' ') {
        *b = b'0';
    }
}

/// dmsetup: skip to the first space and past it; unless a `:` (keyring reference) is
/// there, zero the word.
fn hide_crypt_key(params: &mut [u8]) {
    let start = params
        .iter()
        .position(|&b| b == b' ')
        .map_or(params.len(), |p| p + 1);
    if params.get(start) != Some(&b':') {
        zero_word(params, start);
    }
}

/// dmsetup's `hide_key`: find the first `name` anywhere in the text; if a `:` comes after
/// it before any space, zero what follows up to the next space.
fn hide_key(params: &mut [u8], name: &str) {
    let Some(at) = params
        .windows(name.len())
        .position(|w| w == name.as_bytes())
    else {
        return;
    };
    let after = at + name.len();
    let Some(sep) = params[after..].iter().position(|&b| b == b' ' || b == b':') else {
        return;
    };
    if params[after + sep] == b':' {
        zero_word(params, after + sep + 1);
    }
}

impl fmt::Display for OtherArgs {
    /// The parameters with keys hidden (see [`OtherArgs::write`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, Keys::Hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(target_type: &str, params: &str) -> String {
        let mut s = String::new();
        OtherArgs::new(target_type, params)
            .write(&mut s, Keys::Hidden)
            .unwrap();
        s
    }

    #[test]
    fn crypt_keyring_reference_is_shown_like_dmsetup() {
        let p = "aes-xts-plain64 :64:logon:dm:k 0 7:0 0";
        assert_eq!(hidden("crypt", p), p);
        assert_eq!(
            hidden("crypt", "aes-xts-plain64 abcd 0 7:0 0"),
            "aes-xts-plain64 0000 0 7:0 0"
        );
    }

    #[test]
    fn integrity_hash_without_key_is_left_alone_and_every_key_kind_is_hidden() {
        let p = "7:0 0 4 J 1 internal_hash:crc32c";
        assert_eq!(hidden("integrity", p), p);
        assert_eq!(
            hidden(
                "integrity",
                "7:0 0 32 J 3 journal_mac:hmac(sha256):ab journal_crypt:ctr(aes):cd internal_hash:hmac(sha256):ef"
            ),
            "7:0 0 32 J 3 journal_mac:hmac(sha256):00 journal_crypt:ctr(aes):00 internal_hash:hmac(sha256):00"
        );
    }

    #[test]
    fn other_targets_print_unchanged_with_keys_hidden() {
        assert_eq!(hidden("era", "7:4 7:5 128"), "7:4 7:5 128");
    }
}
