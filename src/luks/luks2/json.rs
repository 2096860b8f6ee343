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

/// A LUKS2 key slot of type `luks2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks2Keyslot {
    /// Volume key bytes (`key_size`).
    pub key_size: u32,
    /// `priority`: 0 ignored, 1 normal, 2 preferred (absent = normal).
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
    /// `kdf.salt`.
    pub salt: Vec<u8>,
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
    },
}

pub(super) fn priority(o: &Obj<'_>) -> Result<Option<i64>> {
    match o.map.get("priority") {
        None => Ok(None),
        Some(_) => Ok(Some(i64::try_from(o.num("priority", 0, 2)?).unwrap_or(1))),
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
    /// `encryption` (crypt).
    pub encryption: Option<String>,
    /// `sector_size` (crypt).
    pub sector_size: u32,
    /// `integrity.type`, when present.
    pub integrity: Option<String>,
    /// `flags`.
    pub flags: Vec<String>,
}

/// A `pbkdf2` digest: which key slots and segments share a volume key, and its check value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// `keyslots`.
    pub keyslots: Vec<u32>,
    /// `segments`.
    pub segments: Vec<u32>,
    /// `hash`.
    pub hash: Hash,
    /// `iterations`.
    pub iterations: u32,
    /// `salt`.
    pub salt: Vec<u8>,
    /// `digest`.
    pub digest: Vec<u8>,
}

/// A token (kept by type; dmemu runs no token handler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// `type`.
    pub kind: String,
    /// `keyslots`.
    pub keyslots: Vec<u32>,
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
        return Ok(Keyslot::Other { kind: kind.into() });
    }
    let key_size = o.u32n("key_size", 1)?;
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
        t => {
            return Err(k.err(
                "type",
                format!(
                    "unknown KDF {} (known: pbkdf2, argon2i, argon2id)",
                    crate::error::quote(t)
                ),
            ))
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
    let sector_size = if crypt {
        o.u32n("sector_size", 512)?
    } else {
        512
    };
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(o.err("sector_size", format!("{sector_size} is not 512..4096")));
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
        encryption: if crypt {
            Some(o.str("encryption")?.into())
        } else {
            None
        },
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
    if t != "pbkdf2" {
        return Err(o.err(
            "type",
            format!(
                "unknown digest type {} (known: pbkdf2)",
                crate::error::quote(t)
            ),
        ));
    }
    let hash = o.hash("hash")?;
    let digest = o.b64("digest")?;
    if digest.len() > hash.digest_len() {
        return Err(o.err("digest", format!("longer than a {hash} digest")));
    }
    Ok(Digest {
        keyslots: o.ids("keyslots", MAX_OBJECTS)?,
        segments: o.ids("segments", MAX_OBJECTS)?,
        hash,
        iterations: o.u32n("iterations", 1)?,
        salt: o.b64("salt")?,
        digest,
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
        for (id, o) in top.section("keyslots", MAX_OBJECTS)? {
            m.keyslots.insert(id, keyslot(&o)?);
        }
        for (id, o) in top.section("tokens", MAX_OBJECTS)? {
            let token = Token {
                kind: o.str("type")?.into(),
                keyslots: o.ids("keyslots", MAX_OBJECTS)?,
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
