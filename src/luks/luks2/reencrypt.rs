//! The `reencrypt` key slot of an online re-encryption (cryptsetup
//! lib/luks2/luks2_keyslot_reenc.c): read so `dump` shows it as luksDump does and so
//! activation can be refused by name; dmemu never opens it.

use super::json::priority;
use super::path::Obj;
use crate::error::Result;

/// A `reencrypt` key slot: the state of an online re-encryption (luks2_reencrypt.c);
/// parsed for `dump` and to refuse activation by name, never opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReencryptKeyslot {
    /// `key_size` (always 1).
    pub key_size: u32,
    /// `priority`.
    pub priority: Option<i64>,
    /// `mode`: reencrypt, encrypt or decrypt.
    pub mode: String,
    /// `direction`: forward or backward.
    pub direction: String,
    /// `area.type`: the resilience mode.
    pub resilience: String,
    /// `area.hash` (checksum resilience).
    pub hash: Option<String>,
    /// `area.sector_size` (checksum resilience).
    pub hash_block: Option<u32>,
    /// `area.shift_size` (datashift resilience).
    pub shift_size: Option<u64>,
    /// `area.offset`.
    pub area_offset: u64,
    /// `area.size`.
    pub area_size: u64,
}

/// Read a `reencrypt` key slot.
pub(super) fn parse(o: &Obj<'_>) -> Result<ReencryptKeyslot> {
    let area = o.obj("area")?;
    let resilience = area.str("type")?.to_string();
    let checksum = resilience.ends_with("checksum");
    Ok(ReencryptKeyslot {
        key_size: o.u32n("key_size", 1)?,
        priority: priority(o)?,
        mode: o.str("mode")?.into(),
        direction: o.str("direction")?.into(),
        hash: if checksum {
            Some(area.str("hash")?.into())
        } else {
            None
        },
        hash_block: if checksum {
            Some(area.u32n("sector_size", 512)?)
        } else {
            None
        },
        shift_size: if resilience.starts_with("datashift") {
            Some(area.u64s("shift_size")?)
        } else {
            None
        },
        resilience,
        area_offset: area.u64s("offset")?,
        area_size: area.u64s("size")?,
    })
}
