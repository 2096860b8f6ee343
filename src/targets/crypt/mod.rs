//! `crypt`: transparent encryption (kernel dm-crypt.c, v1.28.0 in Linux 6.12).
//!
//! Table args: `<cipher> <key> <iv_offset> <dev> <offset> [<#opt_params> <opt_params>...]`,
//! cipher `cipher[:keycount]-chainmode-ivmode[:ivopts]` or `capi:<api>-ivmode[:ivopts]`, key
//! hex, `-` (none) or `:<size>:<type>:<desc>` (kernel keyring). Options (any order in, the
//! kernel's order out): allow_discards same_cpu_crypt high_priority submit_from_crypt_cpus
//! no_read_workqueue no_write_workqueue `integrity:<n>:<type>` `sector_size:<n>`
//! iv_large_sectors `integrity_key_size:<n>`.

use std::fmt;

use crate::table::args::{ArgResult, Args};
use crate::units::SectorCount;

use super::{DeviceAt, DeviceRef, Keys};

mod adiantum;
mod aead;
mod aes_keys;
mod cipher;
mod elephant;
mod iv;
mod key;
mod lrw;
mod modes;
mod target;
mod vaes;
mod vaes_gcm;
mod xts;

pub use cipher::{ChainMode, CipherSpec, IvMode, Transform};
pub use key::{CryptKey, KeyBytes, Keyring, KeyringRef};
pub use target::Crypt;

/// Largest `integrity:<bytes>` tag (kernel `MAX_TAG_SIZE`).
const MAX_TAG_SIZE: u32 = 480;

/// `integrity:<bytes>:<type>`: per-sector metadata on an integrity device below.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Integrity {
    /// Tag bytes per sector (1..=480).
    pub tag_size: u32,
    /// `aead` or `none` (any case), printed as given.
    pub profile: String,
}

/// The optional parameters of a crypt line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptOptions {
    /// Pass discards down.
    pub allow_discards: bool,
    /// Encrypt on the submitting CPU (no effect on results).
    pub same_cpu_crypt: bool,
    /// High-priority workqueues (no effect on results).
    pub high_priority: bool,
    /// No write offload thread (no effect on results).
    pub submit_from_crypt_cpus: bool,
    /// Decrypt reads synchronously (no effect on results).
    pub no_read_workqueue: bool,
    /// Encrypt writes synchronously (no effect on results).
    pub no_write_workqueue: bool,
    /// Per-sector integrity metadata (I/O through dmemu is refused).
    pub integrity: Option<Integrity>,
    /// Encryption unit in bytes: 512..=4096, a power of two.
    pub sector_size: u32,
    /// IVs count `sector_size` units instead of 512-byte sectors.
    pub iv_large_sectors: bool,
    /// MAC key size for authenc AEADs when it is not the digest size.
    pub integrity_key_size: Option<u32>,
}

impl Default for CryptOptions {
    fn default() -> Self {
        CryptOptions {
            allow_discards: false,
            same_cpu_crypt: false,
            high_priority: false,
            submit_from_crypt_cpus: false,
            no_read_workqueue: false,
            no_write_workqueue: false,
            integrity: None,
            sector_size: 512,
            iv_large_sectors: false,
            integrity_key_size: None,
        }
    }
}

impl CryptOptions {
    /// The options as the kernel prints them, in its order (`crypt_status`).
    #[must_use]
    pub fn words(&self) -> Vec<String> {
        let mut w = Vec::new();
        let flags = [
            (self.allow_discards, "allow_discards"),
            (self.same_cpu_crypt, "same_cpu_crypt"),
            (self.high_priority, "high_priority"),
            (self.submit_from_crypt_cpus, "submit_from_crypt_cpus"),
            (self.no_read_workqueue, "no_read_workqueue"),
            (self.no_write_workqueue, "no_write_workqueue"),
        ];
        w.extend(flags.iter().filter(|f| f.0).map(|f| f.1.to_string()));
        if let Some(i) = &self.integrity {
            w.push(format!("integrity:{}:{}", i.tag_size, i.profile));
        }
        if self.sector_size != 512 {
            w.push(format!("sector_size:{}", self.sector_size));
        }
        if self.iv_large_sectors {
            w.push("iv_large_sectors".into());
        }
        if let Some(n) = self.integrity_key_size {
            w.push(format!("integrity_key_size:{n}"));
        }
        w
    }

    /// `crypt_ctr_optional`.
    fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<CryptOptions> {
        let mut o = CryptOptions::default();
        let mut group = args.group(0..=9, "Invalid number of feature args")?;
        while group.remaining() > 0 {
            let word = group.next("Not enough feature arguments")?;
            let is = |name: &str| word.eq_ignore_ascii_case(name);
            if is("allow_discards") {
                o.allow_discards = true;
            } else if is("same_cpu_crypt") {
                o.same_cpu_crypt = true;
            } else if is("high_priority") {
                o.high_priority = true;
            } else if is("submit_from_crypt_cpus") {
                o.submit_from_crypt_cpus = true;
            } else if is("no_read_workqueue") {
                o.no_read_workqueue = true;
            } else if is("no_write_workqueue") {
                o.no_write_workqueue = true;
            } else if let Some(rest) = word.strip_prefix("integrity:") {
                o.integrity = Some(parse_integrity(rest).map_err(|e| group.error_last(e))?);
            } else if let Some(v) = word.strip_prefix("integrity_key_size:") {
                let n = digits(v)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| group.error_last("Invalid feature arguments"))?;
                if n == 0 {
                    return Err(group.error_last("Invalid integrity_key_size argument"));
                }
                o.integrity_key_size = Some(n);
            } else if let Some(v) = word.strip_prefix("sector_size:") {
                // "%hu%c": the kernel stores the number in a u16 (wrapping).
                let n = digits(v).ok_or_else(|| group.error_last("Invalid feature arguments"))?;
                let n = u32::from((n & 0xffff) as u16);
                if !(512..=4096).contains(&n) || !n.is_power_of_two() {
                    return Err(group.error_last("Invalid feature value for sector_size"));
                }
                if len.0 % u64::from(n / 512) != 0 {
                    return Err(
                        group.error_last("Device size is not multiple of sector_size feature")
                    );
                }
                o.sector_size = n;
            } else if is("iv_large_sectors") {
                o.iv_large_sectors = true;
            } else {
                return Err(group.error_last("Invalid feature arguments"));
            }
        }
        Ok(o)
    }
}

/// Decimal digits within `u64` (sscanf `%u`/`%hu` without sign or junk).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// After `integrity:`: `<n>:<type>`, n in 1..=480, type aead or none (any case).
fn parse_integrity(rest: &str) -> Result<Integrity, &'static str> {
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let n = digits(&rest[..end]).ok_or("Invalid feature arguments")?;
    let profile = rest[end..]
        .strip_prefix(':')
        .ok_or("Invalid integrity arguments")?;
    let tag_size = u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_TAG_SIZE).contains(n))
        .ok_or("Invalid integrity arguments")?;
    if !profile.eq_ignore_ascii_case("aead") && !profile.eq_ignore_ascii_case("none") {
        return Err("Unknown integrity profile");
    }
    Ok(Integrity {
        tag_size,
        profile: profile.to_string(),
    })
}

/// Parsed `crypt` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptArgs {
    /// The cipher specification (printed as given).
    pub cipher: CipherSpec,
    /// The key (hidden as zeros in output unless keys are shown).
    pub key: CryptKey,
    /// Added to the sector number before IVs are computed, in 512-byte sectors.
    pub iv_offset: SectorCount,
    /// Where the ciphertext lives.
    pub dest: DeviceAt,
    /// Optional parameters.
    pub options: CryptOptions,
}

impl CryptArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "crypt";

    /// Parse like `crypt_ctr` for a line of `len` sectors, in the kernel's order of checks:
    /// key size, optional parameters, cipher, key, iv_offset, device, offset.
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<CryptArgs> {
        if args.len() < 5 {
            return Err(Args::error("Not enough arguments"));
        }
        let all = args.all();
        // Errors about the key never name the token: it is secret.
        let key_error = |e: &str| Args::error(format!("{e} (key, argument 2)"));
        let key = CryptKey::parse(&all[1]).map_err(key_error)?;
        let options = if all.len() > 5 {
            let mut rest = args.clone();
            for _ in 0..5 {
                rest.next("Not enough arguments")?;
            }
            // Like crypt_ctr_optional, tokens after the option group are not looked at.
            CryptOptions::parse(&mut rest, len)?
        } else {
            CryptOptions::default()
        };
        let cipher_at = args.position();
        let text = args.next("Not enough arguments")?;
        let aead = options
            .integrity
            .as_ref()
            .is_some_and(|i| i.profile.eq_ignore_ascii_case("aead"));
        let cipher = CipherSpec::parse(text, aead).map_err(|e| args.error_at(cipher_at, e))?;
        target::check_key(&cipher, &key, &options).map_err(|e| key_error(&e))?;
        args.next("Not enough arguments")?;
        let iv_offset = args.llu("Invalid iv_offset sector")?;
        if iv_offset % u64::from(options.sector_size / 512) != 0 {
            return Err(args.error_last("Invalid iv_offset sector"));
        }
        let device = DeviceRef::parse(args, "Not enough arguments")?;
        let offset = args.llu("Invalid device sector")?;
        Ok(CryptArgs {
            cipher,
            key,
            iv_offset: SectorCount(iv_offset),
            dest: DeviceAt {
                device,
                offset: SectorCount(offset),
            },
            options,
        })
    }

    /// Write the canonical parameters; the key as zeros unless `keys` is `Shown`.
    pub fn write(&self, f: &mut impl fmt::Write, keys: Keys) -> fmt::Result {
        // The cipher token prints as given, escaped so it tokenises back to itself.
        write!(
            f,
            "{} ",
            crate::table::lexer::escape(&self.cipher.to_string())
        )?;
        self.key.write(f, keys)?;
        write!(f, " {} {}", self.iv_offset, self.dest)?;
        let words = self.options.words();
        if !words.is_empty() {
            write!(f, " {}", words.len())?;
            for w in words {
                write!(f, " {w}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for CryptArgs {
    /// The table with the key hidden (as `dmsetup table` without `--showkeys`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, Keys::Hidden)
    }
}

#[cfg(test)]
mod io_tests;
#[cfg(test)]
mod tests;
