//! Activation: the crypt table line cryptsetup loads for an unlocked image
//! (lib/setup.c `_open_and_activate`, lib/luks2/luks2_segment.c, lib/utils_dm.c) and the
//! decrypted volume, built as the crypt target from the same [`CryptArgs`].
//!
//! LUKS2 states dmemu does not handle are refused by name: mandatory requirements
//! (online re-encryption, OPAL, ...), more than one segment, non-crypt segments and
//! integrity types other than aead and hmac(sha1|sha256|sha512). Segments with integrity
//! get cryptsetup's dm-integrity layer under the crypt device.

use zeroize::Zeroizing;

use super::luks2::Luks2Header;
use super::unlock::VolumeKey;
use super::{Header, Luks};
use crate::error::{Error, Result};
use std::sync::Arc;

use crate::table::args::Args;
use crate::targets::crypt::{
    CipherSpec, Crypt, CryptArgs, CryptKey, CryptOptions, Integrity as CryptIntegrity, Keyring,
    KeyringRef,
};
use crate::targets::integrity::superblock::Superblock;
use crate::targets::{DeviceAt, DeviceRef, Integrity, IntegrityArgs, Keys, Target};
use crate::units::{Sector, SectorCount};
use crate::volume::SharedVolume;

/// Persistent LUKS2 `config.flags` and the crypt options they turn on
/// (`LUKS2_config_get_flags`, `persistent_flags[]`; cryptsetup 2.7 spells the last one
/// with an underscore). `no-journal` concerns dm-integrity only.
const FLAGS: [&str; 6] = [
    "allow-discards",
    "same-cpu-crypt",
    "submit-from-crypt-cpus",
    "no-read-workqueue",
    "no-write-workqueue",
    "high_priority",
];

fn refuse(what: &str) -> Error {
    Error::invalid("LUKS2 image", format!("{what} is not supported by dmemu"))
}

/// What to map: offset and length on the data device (sectors), IV offset, crypt
/// options, cipher, and the integrity layer below the crypt device if any.
struct Mapping {
    offset: SectorCount,
    len: SectorCount,
    iv_offset: SectorCount,
    cipher: String,
    options: CryptOptions,
    integrity: Option<IntegrityLayer>,
}

/// A LUKS2 segment with `integrity`: cryptsetup puts a dm-integrity device (`<name>_dif`,
/// its superblock at the segment offset, no internal hash) under the crypt device, which
/// then maps the integrity device from sector 0 with `integrity:<tag>:aead`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityLayer {
    /// `integrity.type` (`aead`, `hmac(sha256)`, ...).
    pub kind: String,
    /// Tag bytes per sector (`INTEGRITY_tag_size`): auth tag + stored IV.
    pub tag_size: u32,
    /// The persistent `no-journal` flag: direct writes (`D`) instead of the journal (`J`).
    pub no_journal: bool,
}

/// `INTEGRITY_tag_size` (cryptsetup lib/integrity/integrity.c): the IV bytes a random IV
/// mode stores plus the auth tag of the integrity type.
fn integrity_tag_size(integrity: &str, cipher: &str, mode: Option<&str>) -> Option<u32> {
    let iv = match mode {
        None => 0,
        Some("xts-random") | Some("ctr-random") => 16,
        Some("gcm-random") => 12,
        Some("ccm-random") => 8,
        Some("random") if cipher == "aegis256" => 32,
        Some("random") => 16,
        Some(_) => 0,
    };
    let auth = match integrity {
        "none" => 0,
        "aead" | "cmac(aes)" | "poly1305" => 16,
        "hmac(sha1)" => 20,
        "hmac(sha256)" => 32,
        "hmac(sha512)" => 64,
        _ => return None,
    };
    Some(iv + auth)
}

/// The dm-crypt cipher cryptsetup loads for `cipher` (`aes-xts-plain64`, `aes-gcm-random`,
/// `aegis128-random`) with `integrity` (`cipher_c2dm`): `capi:<mode>(<cipher>)-<iv>` for
/// AEADs, `capi:authenc(<mac>,<mode>(<cipher>))-<iv>` for an HMAC over a cipher, and
/// `capi:<cipher>-<iv>` for ciphers that are their own AEAD.
fn integrity_cipher(cipher: &str, integrity: &str) -> String {
    let (c, rest) = cipher.split_once('-').unwrap_or((cipher, ""));
    match rest.split_once('-') {
        Some((mode, iv)) if integrity == "aead" || integrity == "none" => {
            format!("capi:{mode}({c})-{iv}")
        }
        Some((mode, iv)) => format!("capi:authenc({integrity},{mode}({c}))-{iv}"),
        None => format!("capi:{c}-{rest}"),
    }
}

fn luks2_mapping(h: &Luks2Header, data_sectors: u64, detached: bool) -> Result<Mapping> {
    let m = &h.meta;
    if let Some(r) = m.config.requirements.first() {
        let what = if r.starts_with("online-reencrypt") {
            format!(
                "online re-encryption in progress (mandatory requirement {})",
                crate::error::quote(r)
            )
        } else if r.contains("opal") {
            format!(
                "OPAL hardware encryption (mandatory requirement {})",
                crate::error::quote(r)
            )
        } else {
            format!("the mandatory requirement {}", crate::error::quote(r))
        };
        return Err(refuse(&what));
    }
    if m.segments.len() != 1 {
        return Err(refuse(&format!(
            "a header with {} segments (re-encryption or no data segment)",
            m.segments.len()
        )));
    }
    let Some(seg) = m.segments.get(&0) else {
        return Err(refuse("a header whose only segment is not segment 0"));
    };
    if seg.kind != "crypt" {
        return Err(refuse(&format!("segment type {:?}", seg.kind)));
    }
    let cipher_text = seg.encryption.clone().unwrap_or_default();
    let integrity = match &seg.integrity {
        None => None,
        Some(i) => {
            let (c, mode) = match cipher_text.split_once('-') {
                Some((c, m)) => (c, Some(m)),
                None => (cipher_text.as_str(), None),
            };
            let tag_size = integrity_tag_size(i, c, mode)
                .filter(|_| {
                    matches!(
                        i.as_str(),
                        "aead" | "hmac(sha1)" | "hmac(sha256)" | "hmac(sha512)"
                    )
                })
                .ok_or_else(|| {
                    refuse(&format!(
                        "a segment with integrity {} (dmemu takes aead and hmac(sha1|sha256|sha512))",
                        crate::error::quote(i)
                    ))
                })?;
            Some(IntegrityLayer {
                kind: i.clone(),
                tag_size,
                no_journal: m.config.flags.iter().any(|f| f == "no-journal"),
            })
        }
    };
    // The header takes any multiple of 512; dm-crypt's constructor only a power of two
    // from 512 to 4096 ("Invalid feature arguments").
    if !seg.sector_size.is_power_of_two() || !(512..=4096).contains(&seg.sector_size) {
        return Err(Error::invalid(
            "LUKS2 image",
            format!(
                "segments.0.sector_size {}: dm-crypt takes a power of two from 512 to 4096",
                seg.sector_size
            ),
        ));
    }
    let unit = u64::from(seg.sector_size / 512);
    let metadata_end = 2 * h.bin.hdr_size + m.config.keyslots_size;
    if !detached && seg.offset < metadata_end {
        return Err(Error::invalid(
            "LUKS2 image",
            format!(
                "segment 0 starts at byte {}, inside the header and key-slot area (which ends \
                 at {metadata_end}); only a detached header allows that",
                seg.offset
            ),
        ));
    }
    let offset = seg.offset / 512;
    let len = match seg.size {
        Some(s) => s / 512,
        // "dynamic": the rest of the device, whole crypt sectors only.
        None => data_sectors.saturating_sub(offset) / unit * unit,
    };
    if len == 0 || offset + len > data_sectors {
        return Err(Error::invalid(
            "LUKS2 image",
            format!(
                "segment 0 ({} sectors at sector {offset}) does not fit the data device of \
                 {data_sectors} sectors",
                len
            ),
        ));
    }
    if seg.iv_tweak % unit != 0 {
        return Err(Error::invalid(
            "LUKS2 image",
            format!(
                "segments.0.iv_tweak {} is not a multiple of the sector size",
                seg.iv_tweak
            ),
        ));
    }
    let f = |name: &str| m.config.flags.iter().any(|x| x == name);
    let mut options = CryptOptions {
        allow_discards: f(FLAGS[0]),
        same_cpu_crypt: f(FLAGS[1]),
        submit_from_crypt_cpus: f(FLAGS[2]),
        no_read_workqueue: f(FLAGS[3]),
        no_write_workqueue: f(FLAGS[4]),
        high_priority: f(FLAGS[5]),
        sector_size: seg.sector_size,
        ..CryptOptions::default()
    };
    let cipher = match &integrity {
        Some(l) => {
            options.integrity = Some(CryptIntegrity {
                tag_size: l.tag_size,
                profile: "aead".into(),
            });
            integrity_cipher(&cipher_text, &l.kind)
        }
        None => cipher_text,
    };
    Ok(Mapping {
        offset: SectorCount(offset),
        len: SectorCount(len),
        iv_offset: SectorCount(seg.iv_tweak),
        cipher,
        options,
        integrity,
    })
}

impl Luks {
    fn mapping(&self) -> Result<Mapping> {
        let data = self.data_dev.size().0;
        match &self.header {
            Header::V1(h) => {
                let offset = u64::from(h.payload_offset);
                if !self.detached && offset < 2 {
                    return Err(Error::invalid(
                        "LUKS1 image",
                        format!(
                            "payload offset {offset} overlaps the header; only a detached \
                             header allows that"
                        ),
                    ));
                }
                if offset >= data {
                    return Err(Error::invalid(
                        "LUKS1 image",
                        format!(
                            "payload offset {offset} is not inside the data device of {data} \
                             sectors"
                        ),
                    ));
                }
                Ok(Mapping {
                    offset: SectorCount(offset),
                    len: SectorCount(data - offset),
                    iv_offset: SectorCount(0),
                    cipher: h.cipher_spec(),
                    options: CryptOptions::default(),
                    integrity: None,
                })
            }
            Header::V2(h) => luks2_mapping(h, data, self.detached),
        }
    }

    /// The integrity layer's table arguments over the data device named `device` and
    /// the size it provides (from its superblock), for a segment with integrity.
    fn integrity_args(&self, device: &str) -> Result<Option<(IntegrityArgs, SectorCount)>> {
        let m = self.mapping()?;
        let Some(layer) = &m.integrity else {
            return Ok(None);
        };
        let mode = if layer.no_journal { "D" } else { "J" };
        let tokens: Vec<String> = vec![
            device.to_string(),
            m.offset.0.to_string(),
            layer.tag_size.to_string(),
            mode.to_string(),
            "0".to_string(),
        ];
        let args = IntegrityArgs::parse(&mut Args::new(&tokens))
            .map_err(|e| Error::invalid("LUKS2 integrity", e.to_string()))?;
        let mut first = [0u8; 512];
        self.data_dev.read(Sector(m.offset.0), &mut first)?;
        let mut raw = [0u8; Superblock::SIZE];
        raw.copy_from_slice(&first[..Superblock::SIZE]);
        let sb = Superblock::decode(&raw)?.ok_or_else(|| {
            crate::luks::corrupt(
                "LUKS2 integrity superblock",
                m.offset.bytes(),
                "no dm-integrity superblock at the segment offset (the image was formatted \
                 without its integrity layer)",
            )
        })?;
        Ok(Some((args, SectorCount(sb.provided_data_sectors))))
    }

    /// The integrity layer under the crypt device, for LUKS2 segments with `integrity`:
    /// its table line (`0 <len> integrity ...`, as the kernel prints it once loaded) over
    /// the data device named `device`. `None` for images without integrity.
    pub fn integrity_table_line(&self, device: &str) -> Result<Option<String>> {
        let Some((mut args, len)) = self.integrity_args(device)? else {
            return Ok(None);
        };
        let t = Integrity::over(self.data_dev.clone(), &args, len)?;
        if let Some(crate::targets::TargetSpec::Integrity(settled)) = t.table_spec() {
            args = settled;
        }
        let mut s = format!("0 {len} {} ", IntegrityArgs::TYPE);
        args.write(&mut s, Keys::Hidden)
            .map_err(|_| Error::invalid("table", "formatting failed"))?;
        Ok(Some(s))
    }

    /// The crypt arguments and line length for `key`, the device named `device`.
    /// `keyring` = the key as cryptsetup 2.6 passes a LUKS2 key, through the kernel
    /// keyring (`:<size>:logon:cryptsetup:<uuid>-d<digest>`).
    pub fn crypt_args(
        &self,
        key: &VolumeKey,
        device: &str,
        keyring: bool,
    ) -> Result<(SectorCount, CryptArgs)> {
        let mut m = self.mapping()?;
        if let Some((_, provided)) = self.integrity_args(device)? {
            // The crypt device maps the whole integrity device from its sector 0.
            m.offset = SectorCount(0);
            m.len = provided;
        }
        let aead = m.integrity.is_some();
        let cipher = CipherSpec::parse(&m.cipher, aead)
            .map_err(|e| Error::invalid("LUKS cipher", format!("{:?}: {e}", m.cipher)))?;
        let key = match (keyring, &self.header, key.digest) {
            (true, Header::V2(h), Some(d)) => CryptKey::Keyring(KeyringRef {
                size: u32::try_from(key.bytes.len())
                    .map_err(|_| Error::invalid("volume key", "too long"))?,
                key_type: "logon".into(),
                description: format!("cryptsetup:{}-d{d}", h.bin.uuid),
            }),
            (true, _, _) => {
                return Err(Error::invalid(
                    "--keyring",
                    "only LUKS2 keys verified by a digest go through the keyring",
                ))
            }
            _ => CryptKey::Hex(Zeroizing::new(key.bytes.to_vec())),
        };
        Ok((
            m.len,
            CryptArgs {
                cipher,
                key,
                iv_offset: m.iv_offset,
                dest: DeviceAt {
                    device: DeviceRef(device.into()),
                    offset: m.offset,
                },
                options: m.options,
            },
        ))
    }

    /// `0 <len> crypt <args>` as `dmsetup table` prints it (keys hidden unless `Shown`).
    pub fn table_line(
        &self,
        key: &VolumeKey,
        device: &str,
        keys: Keys,
        keyring: bool,
    ) -> Result<String> {
        let (len, args) = self.crypt_args(key, device, keyring)?;
        let mut s = format!("0 {len} {} ", CryptArgs::TYPE);
        args.write(&mut s, keys)
            .map_err(|_| Error::invalid("table", "formatting failed"))?;
        Ok(s)
    }

    /// The decrypted volume: the crypt target over the data device, or over the
    /// integrity target over it for LUKS2 segments with integrity (reads authenticate
    /// every sector, writes store tags and IVs as the kernel does).
    pub fn volume(&self, key: &VolumeKey) -> Result<Crypt> {
        let (len, args) = self.crypt_args(key, "luks-data", false)?;
        let lower: SharedVolume = match self.integrity_args("luks-data")? {
            Some((iargs, provided)) => {
                Arc::new(Integrity::over(self.data_dev.clone(), &iargs, provided)?)
            }
            None => self.data_dev.clone(),
        };
        Crypt::over(lower, &args, len, &Keyring::default())
    }
}
