//! Activation: the crypt table line cryptsetup loads for an unlocked image
//! (lib/setup.c `_open_and_activate`, lib/luks2/luks2_segment.c, lib/utils_dm.c) and the
//! decrypted volume, built as the crypt target from the same [`CryptArgs`].
//!
//! LUKS2 states dmemu does not handle are refused by name: mandatory requirements
//! (online re-encryption, OPAL, ...), more than one segment, non-crypt segments and
//! integrity-protected segments.

use zeroize::Zeroizing;

use super::luks2::Luks2Header;
use super::unlock::VolumeKey;
use super::{Header, Luks};
use crate::error::{Error, Result};
use crate::targets::crypt::{
    CipherSpec, Crypt, CryptArgs, CryptKey, CryptOptions, Keyring, KeyringRef,
};
use crate::targets::{DeviceAt, DeviceRef, Keys};
use crate::units::SectorCount;

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
/// options, cipher.
struct Mapping {
    offset: SectorCount,
    len: SectorCount,
    iv_offset: SectorCount,
    cipher: String,
    options: CryptOptions,
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
    if let Some(i) = &seg.integrity {
        return Err(refuse(&format!(
            "an integrity-protected segment (integrity {}, needs dm-integrity)",
            crate::error::quote(i)
        )));
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
    let options = CryptOptions {
        allow_discards: f(FLAGS[0]),
        same_cpu_crypt: f(FLAGS[1]),
        submit_from_crypt_cpus: f(FLAGS[2]),
        no_read_workqueue: f(FLAGS[3]),
        no_write_workqueue: f(FLAGS[4]),
        high_priority: f(FLAGS[5]),
        sector_size: seg.sector_size,
        ..CryptOptions::default()
    };
    Ok(Mapping {
        offset: SectorCount(offset),
        len: SectorCount(len),
        iv_offset: SectorCount(seg.iv_tweak),
        cipher: seg.encryption.clone().unwrap_or_default(),
        options,
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
                })
            }
            Header::V2(h) => luks2_mapping(h, data, self.detached),
        }
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
        let m = self.mapping()?;
        let cipher = CipherSpec::parse(&m.cipher, false)
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

    /// The decrypted volume: the crypt target over the data device.
    pub fn volume(&self, key: &VolumeKey) -> Result<Crypt> {
        let (len, args) = self.crypt_args(key, "luks-data", false)?;
        Crypt::over(self.data_dev.clone(), &args, len, &Keyring::default())
    }
}
