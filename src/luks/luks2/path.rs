//! Typed reads from a `serde_json` object that remember their JSON path, so every error
//! says where it is (`keyslots.1.area.offset: "x" is not a decimal number`).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::super::corrupt;
use super::super::hash::Hash;
use crate::error::{Error, Result};

/// `LUKS2_KEYSLOTS_MAX`, `LUKS2_TOKENS_MAX`, `LUKS2_SEGMENT_MAX`.
pub(super) const MAX_OBJECTS: u32 = 32;
/// Longest base64-decoded salt or digest.
const MAX_BLOB: usize = 256;

/// A JSON object with its path, for error messages.
pub(super) struct Obj<'a> {
    pub(super) map: &'a Map<String, Value>,
    pub(super) path: String,
    pub(super) at: u64,
}

impl<'a> Obj<'a> {
    pub(super) fn err(&self, key: &str, why: impl std::fmt::Display) -> Error {
        let p = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        corrupt("LUKS2 JSON", self.at, format!("{p}: {why}"))
    }
    pub(super) fn get(&self, key: &str) -> Result<&'a Value> {
        self.map.get(key).ok_or_else(|| self.err(key, "missing"))
    }
    pub(super) fn obj(&self, key: &str) -> Result<Obj<'a>> {
        let map = self
            .get(key)?
            .as_object()
            .ok_or_else(|| self.err(key, "not an object"))?;
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        Ok(Obj {
            map,
            path,
            at: self.at,
        })
    }
    pub(super) fn str(&self, key: &str) -> Result<&'a str> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| self.err(key, "not a string"))
    }
    /// A 64-bit value written as a decimal string.
    pub(super) fn u64s(&self, key: &str) -> Result<u64> {
        let s = self.str(key)?;
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.err(
                key,
                format!("{} is not a decimal number", crate::error::quote(s)),
            ));
        }
        s.parse()
            .map_err(|_| self.err(key, format!("{s} does not fit in 64 bits")))
    }
    /// A JSON integer within `lo..=hi`.
    pub(super) fn num(&self, key: &str, lo: u64, hi: u64) -> Result<u64> {
        let v = self.get(key)?;
        match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(self.err(key, format!("{v} is not an integer in {lo}..={hi}"))),
        }
    }
    pub(super) fn u32n(&self, key: &str, lo: u32) -> Result<u32> {
        let n = self.num(key, u64::from(lo), u64::from(u32::MAX))?;
        u32::try_from(n).map_err(|_| self.err(key, "out of range"))
    }
    /// A hash name; one dmemu lacks is kept as [`Hash::Unsupported`] (cryptsetup's
    /// validation checks only that it is a string; using it fails later).
    pub(super) fn hash(&self, key: &str) -> Result<Hash> {
        Ok(Hash::parse(self.str(key)?))
    }
    /// A base64 string kept as `None` when it does not decode (cryptsetup's validation
    /// checks only that it is a string; its dump prints nothing for it, and whatever
    /// needs the bytes fails then). Longer than [`MAX_BLOB`] bytes is refused, ours.
    pub(super) fn b64(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let s = self.str(key)?;
        if s.len() > MAX_BLOB * 2 {
            return Err(self.err(key, format!("longer than {MAX_BLOB} bytes")));
        }
        Ok(base64::engine::general_purpose::STANDARD.decode(s).ok())
    }
    /// An array of decimal id strings below `max`.
    pub(super) fn ids(&self, key: &str, max: u32) -> Result<Vec<u32>> {
        let a = self
            .get(key)?
            .as_array()
            .ok_or_else(|| self.err(key, "not an array"))?;
        if a.len() > MAX_OBJECTS as usize {
            return Err(self.err(key, "too many entries"));
        }
        a.iter()
            .map(|v| {
                v.as_str()
                    .and_then(|s| id(s, max))
                    .ok_or_else(|| self.err(key, format!("{v} is not an id below {max}")))
            })
            .collect()
    }
    pub(super) fn strings(&self, key: &str) -> Result<Vec<String>> {
        let Some(v) = self.map.get(key) else {
            return Ok(Vec::new());
        };
        let a = v.as_array().ok_or_else(|| self.err(key, "not an array"))?;
        if a.len() > 64 {
            return Err(self.err(key, "more than 64 entries"));
        }
        a.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(key, format!("{v} is not a string")))
            })
            .collect()
    }
    /// Each member `id -> object` of the section `key`, ids below `max`.
    pub(super) fn section(&self, key: &str, max: u32) -> Result<Vec<(u32, Obj<'a>)>> {
        let s = self.obj(key)?;
        let mut out = Vec::new();
        for (k, v) in s.map {
            let n = id(k, max)
                .ok_or_else(|| s.err(k, format!("the id is not a decimal number below {max}")))?;
            let map = v.as_object().ok_or_else(|| s.err(k, "not an object"))?;
            out.push((
                n,
                Obj {
                    map,
                    path: format!("{key}.{k}"),
                    at: self.at,
                },
            ));
        }
        Ok(out)
    }
}

pub(super) fn id(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n < max)
}
