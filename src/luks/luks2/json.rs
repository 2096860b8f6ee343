//! The LUKS2 JSON metadata as typed structs, read from `serde_json::Value` field by field
//! so that every error names its JSON path (`keyslots.1.area.offset: ...`).
//!
//! Bounds (cryptsetup's own where it has them, lib/luks2/luks2_internal.h): at most 32
//! keyslots, tokens and segments and 8 digests, keyed by decimal ids; 64-bit values are
//! decimal strings; nesting is checked before parsing so a deep text cannot recurse.

use std::collections::BTreeMap;

use serde_json::Value;

use super::super::hash::Hash;
use super::super::kdf::{Argon2Type, Kdf};
use super::super::{corrupt, MAX_KEY_BYTES, MAX_MATERIAL_BYTES};
use super::path::{Obj, MAX_OBJECTS};
use super::reencrypt;
pub use super::reencrypt::ReencryptKeyslot;
use crate::error::Result;

/// Deepest nesting of objects and arrays accepted (cryptsetup's metadata needs 4).
pub const MAX_DEPTH: usize = 16;
/// `LUKS2_DIGEST_MAX`.
const MAX_DIGESTS: u32 = 8;
/// Key-slot ids dmemu reads: cryptsetup's validation takes any decimal id (`numbered`) and
/// its unlock tries every one; only ids below `LUKS2_KEYSLOTS_MAX` (32) are dumped.
pub const MAX_KEYSLOT_ID: u32 = 1000;

/// A LUKS2 key slot of type `luks2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks2Keyslot {
    /// Volume key bytes (`key_size`; 0 is kept, as cryptsetup keeps it, and fails the
    /// unlock of this slot).
    pub key_size: u32,
    /// `priority`: 0 ignored, 1 normal, 2 preferred (absent = normal); any other integer
    /// is kept (dumped "invalid") and the slot is never tried, as in cryptsetup.
    pub priority: Option<i64>,
    /// `af.hash`.
    pub af_hash: Hash,
    /// `af.stripes`.
    pub stripes: u32,
    /// `area.offset` in bytes.
    pub area_offset: u64,
    /// `area.size` in bytes.
    pub area_size: u64,
    /// `area.encryption`.
    pub area_encryption: String,
    /// `area.key_size`.
    pub area_key_size: u32,
    /// The KDF.
    pub kdf: Kdf,
    /// `kdf.salt`; `None` when it is not base64 (cryptsetup checks only that it is a
    /// string: the dump prints nothing for it and the unlock of this slot fails).
    pub salt: Option<Vec<u8>>,
}

/// A key slot: a usable `luks2` one, a re-encryption state, or another type by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keyslot {
    /// `type: luks2`.
    Luks2(Luks2Keyslot),
    /// `type: reencrypt`.
    Reencrypt(ReencryptKeyslot),
    /// Unknown types: listed, never used.
    Other {
        /// The type.
        kind: String,
        /// `key_size`, when it is an integer (the dump shows it).
        key_size: Option<i64>,
        /// `priority` (the dump shows it).
        priority: Option<i64>,
    },
}

/// `priority`: any JSON integer (`json_object_get_int`: clamped to 32 bits).
pub(super) fn priority(o: &Obj<'_>) -> Result<Option<i64>> {
    match o.map.get("priority") {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(|p| Some(p.clamp(i64::from(i32::MIN), i64::from(i32::MAX))))
            .ok_or_else(|| o.err("priority", format!("{v} is not an integer"))),
    }
}

/// A data segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// `type`: `crypt`, `linear`, `hw-opal*`...
    pub kind: String,
    /// `offset` in bytes on the data device.
    pub offset: u64,
    /// `size` in bytes; `None` for `dynamic`.
    pub size: Option<u64>,
    /// `iv_tweak` (crypt).
    pub iv_tweak: u64,
    /// `encryption` (required for crypt, kept when another type has it: the dump shows it).
    pub encryption: Option<String>,
    /// `sector_size` (crypt; 512 for another type without one).
    pub sector_size: u32,
    /// Whether the object holds `sector_size` (the dump shows it then).
    pub has_sector_size: bool,
    /// `integrity.type`, when present.
    pub integrity: Option<String>,
    /// `flags`.
    pub flags: Vec<String>,
}

/// A digest: which key slots and segments share a volume key, and how to check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// `keyslots`.
    pub keyslots: Vec<u32>,
    /// `segments`.
    pub segments: Vec<u32>,
    /// The check, by `type`.
    pub kind: DigestKind,
}

/// A digest's `type` and its fields. cryptsetup's header validation checks only `type`,
/// `keyslots` and `segments`; the rest is read when the digest verifies a key, so an
/// unusable value is kept and fails that verification, naming the digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DigestKind {
    /// `type: pbkdf2`.
    Pbkdf2 {
        /// `hash`.
        hash: Hash,
        /// `iterations` (0 kept: the verification fails).
        iterations: u32,
        /// `salt`; `None` when not base64.
        salt: Option<Vec<u8>>,
        /// `digest`; `None` when not base64.
        digest: Option<Vec<u8>>,
    },
    /// Any other type, by name (no handler: it verifies nothing).
    Other(String),
}

/// A token (kept by type; dmemu runs no token handler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// `type`.
    pub kind: String,
    /// `keyslots`.
    pub keyslots: Vec<u32>,
    /// `key_description` of a `luks2-keyring` token (its built-in dump shows it).
    pub key_description: Option<String>,
}

/// `config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `json_size`.
    pub json_size: u64,
    /// `keyslots_size`.
    pub keyslots_size: u64,
    /// `flags` (persistent activation flags).
    pub flags: Vec<String>,
    /// `requirements.mandatory`.
    pub requirements: Vec<String>,
}

/// The whole metadata object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Key slots by id.
    pub keyslots: BTreeMap<u32, Keyslot>,
    /// Tokens by id.
    pub tokens: BTreeMap<u32, Token>,
    /// Segments by id.
    pub segments: BTreeMap<u32, Segment>,
    /// Digests by id.
    pub digests: BTreeMap<u32, Digest>,
    /// Configuration.
    pub config: Config,
}

/// Refuse texts nested deeper than [`MAX_DEPTH`] (strings are skipped, escapes honoured).
pub fn check_depth(text: &str) -> std::result::Result<(), String> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, c) in text.bytes().enumerate() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} levels at byte {i}"));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn keyslot(o: &Obj<'_>) -> Result<Keyslot> {
    let kind = o.str("type")?;
    if kind == "reencrypt" {
        return reencrypt::parse(o).map(Keyslot::Reencrypt);
    }
    if kind != "luks2" {
        return Ok(Keyslot::Other {
            kind: kind.into(),
            key_size: o.map.get("key_size").and_then(Value::as_i64),
            priority: priority(o).unwrap_or(Some(0)),
        });
    }
    let key_size = o.u32n("key_size", 0)?;
    if key_size > MAX_KEY_BYTES {
        return Err(o.err("key_size", format!("{key_size} > {MAX_KEY_BYTES}")));
    }
    let priority = priority(o)?;
    let af = o.obj("af")?;
    if af.str("type")? != "luks1" {
        return Err(af.err("type", "only AF type luks1 exists"));
    }
    let stripes = af.u32n("stripes", 1)?;
    if u64::from(key_size) * u64::from(stripes) > MAX_MATERIAL_BYTES {
        return Err(af.err(
            "stripes",
            format!("{stripes} stripes of {key_size} bytes exceed {MAX_MATERIAL_BYTES} bytes"),
        ));
    }
    let area = o.obj("area")?;
    let area_type = area.str("type")?;
    if area_type != "raw" {
        return Err(area.err(
            "type",
            format!(
                "{} (only raw areas hold keys)",
                crate::error::quote(area_type)
            ),
        ));
    }
    let area_key_size = area.u32n("key_size", 1)?;
    if area_key_size > MAX_KEY_BYTES {
        return Err(area.err("key_size", format!("{area_key_size} > {MAX_KEY_BYTES}")));
    }
    let k = o.obj("kdf")?;
    let kdf = match k.str("type")? {
        "pbkdf2" => Kdf::Pbkdf2 {
            hash: k.hash("hash")?,
            iterations: k.u32n("iterations", 1)?,
        },
        t @ ("argon2i" | "argon2id") => Kdf::Argon2 {
            kind: if t == "argon2i" {
                Argon2Type::I
            } else {
                Argon2Type::Id
            },
            time: k.u32n("time", 1)?,
            memory_kib: k.u32n("memory", 1)?,
            cpus: k.u32n("cpus", 1)?,
        },
        // luks2_keyslot_validate checks no field of another type; its dump prints
        // `time`, `memory` and `cpus` (json_object_get_int64: 0 when absent).
        t => {
            let int = |key: &str| k.map.get(key).and_then(Value::as_i64).unwrap_or(0);
            Kdf::Unsupported {
                name: t.into(),
                time: int("time"),
                memory: int("memory"),
                cpus: int("cpus"),
            }
        }
    };
    Ok(Keyslot::Luks2(Luks2Keyslot {
        key_size,
        priority,
        af_hash: af.hash("hash")?,
        stripes,
        area_offset: area.u64s("offset")?,
        area_size: area.u64s("size")?,
        area_encryption: area.str("encryption")?.into(),
        area_key_size,
        kdf,
        salt: k.b64("salt")?,
    }))
}

fn segment(o: &Obj<'_>) -> Result<Segment> {
    let kind = o.str("type")?.to_string();
    let size = match o.str("size")? {
        "dynamic" => None,
        _ => Some(o.u64s("size")?),
    };
    if size == Some(0) {
        // hdr_validate_crypt_segment... `Illegal segment size value.`
        return Err(o.err("size", "0 (a segment has a size or is dynamic)"));
    }
    let crypt = kind == "crypt";
    let has_sector_size = o.map.contains_key("sector_size");
    let sector_size = if crypt || has_sector_size {
        o.u32n("sector_size", 512)?
    } else {
        512
    };
    // hdr_validate_crypt_segment: `!sector_size || MISALIGNED_512(sector_size)`; what
    // dm-crypt takes (a power of two up to 4096) is checked at activation.
    if sector_size % 512 != 0 {
        return Err(o.err(
            "sector_size",
            format!("{sector_size} is not a multiple of 512"),
        ));
    }
    let offset = o.u64s("offset")?;
    if offset % 512 != 0 {
        return Err(o.err("offset", format!("{offset} is not a multiple of 512")));
    }
    if size.is_some_and(|s| s % u64::from(sector_size) != 0) {
        return Err(o.err(
            "size",
            format!("not a multiple of sector_size {sector_size}"),
        ));
    }
    let integrity = match o.map.get("integrity") {
        None => None,
        Some(_) => Some(o.obj("integrity")?.str("type")?.to_string()),
    };
    Ok(Segment {
        iv_tweak: if crypt { o.u64s("iv_tweak")? } else { 0 },
        encryption: if crypt || o.map.contains_key("encryption") {
            Some(o.str("encryption")?.into())
        } else {
            None
        },
        has_sector_size,
        kind,
        offset,
        size,
        sector_size,
        integrity,
        flags: o.strings("flags")?,
    })
}

fn digest(o: &Obj<'_>) -> Result<Digest> {
    let t = o.str("type")?;
    let kind = if t == "pbkdf2" {
        DigestKind::Pbkdf2 {
            hash: o.hash("hash")?,
            iterations: o.u32n("iterations", 0)?,
            salt: o.b64("salt")?,
            digest: o.b64("digest")?,
        }
    } else {
        DigestKind::Other(t.into())
    };
    Ok(Digest {
        keyslots: o.ids("keyslots", MAX_KEYSLOT_ID)?,
        segments: o.ids("segments", MAX_OBJECTS)?,
        kind,
    })
}

impl Metadata {
    /// Parse the JSON text of a header copy whose JSON area starts at `at`.
    pub fn parse(text: &str, at: u64) -> Result<Metadata> {
        check_depth(text).map_err(|e| corrupt("LUKS2 JSON", at, e))?;
        let v: Value = serde_json::from_str(text).map_err(|e| {
            corrupt(
                "LUKS2 JSON",
                at,
                format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let map = v
            .as_object()
            .ok_or_else(|| corrupt("LUKS2 JSON", at, "the top level is not an object"))?;
        let top = Obj {
            map,
            path: String::new(),
            at,
        };
        let c = top.obj("config")?;
        let requirements = match c.map.get("requirements") {
            None => Vec::new(),
            Some(_) => c.obj("requirements")?.strings("mandatory")?,
        };
        let config = Config {
            json_size: c.u64s("json_size")?,
            keyslots_size: c.u64s("keyslots_size")?,
            flags: c.strings("flags")?,
            requirements,
        };
        let mut m = Metadata {
            keyslots: BTreeMap::new(),
            tokens: BTreeMap::new(),
            segments: BTreeMap::new(),
            digests: BTreeMap::new(),
            config,
        };
        for (id, o) in top.section("keyslots", MAX_KEYSLOT_ID)? {
            m.keyslots.insert(id, keyslot(&o)?);
        }
        for (id, o) in top.section("tokens", MAX_OBJECTS)? {
            let kind = o.str("type")?;
            let key_description = match o.map.get("key_description") {
                Some(Value::String(d)) if kind == "luks2-keyring" => Some(d.clone()),
                Some(v) if kind == "luks2-keyring" => Some(v.to_string()),
                _ => None,
            };
            let token = Token {
                kind: kind.into(),
                keyslots: o.ids("keyslots", MAX_KEYSLOT_ID)?,
                key_description,
            };
            m.tokens.insert(id, token);
        }
        for (id, o) in top.section("segments", MAX_OBJECTS)? {
            m.segments.insert(id, segment(&o)?);
        }
        for (id, o) in top.section("digests", MAX_DIGESTS)? {
            m.digests.insert(id, digest(&o)?);
        }
        Ok(m)
    }
}
