//! LUKS2: the binary header pair ([`header`]) and the JSON metadata ([`json`]), chosen and
//! cross-checked as cryptsetup's `LUKS2_hdr_read` and `LUKS2_hdr_validate` do.

pub mod header;
pub mod json;
mod path;
mod reencrypt;

use self::header::{read_copies, BinHeader, BIN_SIZE};
use self::json::{Keyslot, Metadata, Segment};
use super::corrupt;
use crate::error::{Error, Result};
use crate::volume::Volume;

/// A LUKS2 header: the copy in use, its metadata, and warnings about the other copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks2Header {
    /// The binary fields of the copy in use.
    pub bin: BinHeader,
    /// Its JSON metadata.
    pub meta: Metadata,
    /// What was wrong with the other copy, if anything.
    pub warnings: Vec<String>,
}

/// Parse and validate one verified copy.
fn load(bin: BinHeader, dev_bytes: u64) -> Result<(BinHeader, Metadata)> {
    let at = bin.offset + BIN_SIZE as u64;
    let meta = Metadata::parse(&bin.json, at)?;
    validate(&bin, &meta, dev_bytes)?;
    Ok((bin, meta))
}

/// Geometry checks (`hdr_validate_areas`, `hdr_validate_config`): key slot areas inside the
/// key-slot area and the device, not overlapping; digests naming existing objects.
fn validate(bin: &BinHeader, m: &Metadata, dev_bytes: u64) -> Result<()> {
    let at = bin.offset + BIN_SIZE as u64;
    let bad = |why: String| corrupt("LUKS2 JSON", at, why);
    if m.config.json_size != bin.hdr_size - BIN_SIZE as u64 {
        return Err(bad(format!(
            "config.json_size: {} does not match hdr_size {} - 4096",
            m.config.json_size, bin.hdr_size
        )));
    }
    if m.config.keyslots_size % 4096 != 0 {
        return Err(bad(format!(
            "config.keyslots_size: {} is not a multiple of 4096",
            m.config.keyslots_size
        )));
    }
    // LUKS2_MAX_KEYSLOTS_SIZE (luks2.h): 128 MiB.
    if m.config.keyslots_size > 128 << 20 {
        return Err(bad(format!(
            "config.keyslots_size: {} is more than 128 MiB",
            m.config.keyslots_size
        )));
    }
    // hdr_validate_config: the key-slot area fits between the two header copies and the
    // lowest segment offset (0: a detached header).
    let lowest = m.segments.values().map(|s| s.offset).min().unwrap_or(0);
    if lowest != 0
        && (lowest < m.config.keyslots_size || lowest - m.config.keyslots_size < 2 * bin.hdr_size)
    {
        return Err(bad(format!(
            "config.keyslots_size: {} does not fit between the headers (2 x {}) and the \
             data at {lowest}",
            m.config.keyslots_size, bin.hdr_size
        )));
    }
    // hdr_validate_segments: only the last regular (not backup) segment may be dynamic.
    let regular: Vec<(&u32, &Segment)> = m
        .segments
        .iter()
        .filter(|(_, s)| !s.flags.iter().any(|f| f.starts_with("backup-")))
        .collect();
    if let Some((id, _)) = regular.iter().rev().skip(1).find(|(_, s)| s.size.is_none()) {
        return Err(bad(format!(
            "segments.{id}.size: dynamic, but only the last regular segment may be"
        )));
    }
    let area_start = 2 * bin.hdr_size;
    let area_end = area_start
        .checked_add(m.config.keyslots_size)
        .ok_or_else(|| bad("config.keyslots_size: overflows".into()))?;
    let mut areas: Vec<(u64, u64, u32)> = Vec::new();
    for (&id, ks) in &m.keyslots {
        let (offset, size) = match ks {
            Keyslot::Luks2(k) => (k.area_offset, k.area_size),
            Keyslot::Reencrypt(r) => (r.area_offset, r.area_size),
            Keyslot::Other { .. } => continue,
        };
        let end = offset.saturating_add(size);
        // cryptsetup checks the range only (an unaligned offset is accepted).
        if offset < area_start || end > area_end {
            return Err(bad(format!(
                "keyslots.{id}.area: [{offset}, {end}) is not inside the key-slot area \
                 [{area_start}, {area_end})"
            )));
        }
        if end > dev_bytes {
            return Err(bad(format!(
                "keyslots.{id}.area: ends at {end}, past the end of the header device \
                 ({dev_bytes} bytes)"
            )));
        }
        if let Some(&(_, _, other)) = areas.iter().find(|&&(s, e, _)| offset < e && s < end) {
            return Err(bad(format!(
                "keyslots.{id}.area overlaps keyslots.{other}.area"
            )));
        }
        areas.push((offset, end, id));
        let Keyslot::Luks2(k) = ks else { continue };
        let need = (u64::from(k.key_size) * u64::from(k.stripes)).div_ceil(512) * 512;
        if k.area_size < need {
            return Err(bad(format!(
                "keyslots.{id}.area.size: {} is smaller than the {need} bytes of {} stripes",
                k.area_size, k.stripes
            )));
        }
    }
    for (&id, t) in &m.tokens {
        if let Some(k) = t.keyslots.iter().find(|k| !m.keyslots.contains_key(k)) {
            return Err(bad(format!("tokens.{id}.keyslots: no keyslot {k}")));
        }
    }
    for (&id, d) in &m.digests {
        if let Some(k) = d.keyslots.iter().find(|k| !m.keyslots.contains_key(k)) {
            return Err(bad(format!("digests.{id}.keyslots: no keyslot {k}")));
        }
        if let Some(s) = d.segments.iter().find(|s| !m.segments.contains_key(s)) {
            return Err(bad(format!("digests.{id}.segments: no segment {s}")));
        }
    }
    // hdr_validate_digests / segments: every key slot that holds a key is named by exactly
    // one digest ("Keyslot %d is not assigned to exactly 1 digest"), every crypt segment by
    // at least one ("Crypt segment %s not assigned to key digest").
    for (&id, ks) in &m.keyslots {
        if !matches!(ks, Keyslot::Luks2(_)) {
            continue;
        }
        let n = m
            .digests
            .values()
            .filter(|d| d.keyslots.contains(&id))
            .count();
        if n != 1 {
            return Err(bad(format!(
                "keyslots.{id}: named by {n} digests, must be exactly 1"
            )));
        }
    }
    for (&id, s) in &m.segments {
        if s.kind == "crypt" && !m.digests.values().any(|d| d.segments.contains(&id)) {
            return Err(bad(format!(
                "segments.{id}: crypt segment named by no digest"
            )));
        }
    }
    Ok(())
}

impl Luks2Header {
    /// Read both header copies from `dev`, verify them and pick one.
    pub fn read(dev: &dyn Volume) -> Result<Luks2Header> {
        let dev_bytes = dev.size().bytes();
        let copies = read_copies(dev);
        let p = copies.primary.and_then(|b| load(b, dev_bytes));
        let s = copies.secondary.and_then(|b| load(b, dev_bytes));
        let (use_secondary, warnings) = match (&p, &s) {
            (Ok(a), Ok(b)) => {
                let w = if a.0.seqid == b.0.seqid {
                    Vec::new()
                } else {
                    vec![format!(
                        "header copies differ: primary seqid {}, secondary seqid {}; using \
                         the newer",
                        a.0.seqid, b.0.seqid
                    )]
                };
                (b.0.seqid > a.0.seqid, w)
            }
            (Ok(_), Err(e)) => (false, vec![format!("secondary header unusable: {e}")]),
            (Err(e), Ok(_)) => (
                true,
                vec![format!(
                    "primary header unusable, using the secondary copy: {e}"
                )],
            ),
            (Err(a), Err(b)) => {
                return Err(match (a, b) {
                    // Not LUKS at all: say that, not two magic errors.
                    (Error::Corrupt { detail, .. }, _) if detail.contains("no primary magic") => {
                        corrupt("LUKS header", 0, "bad magic (not a LUKS device)")
                    }
                    _ => corrupt(
                        "LUKS2 header",
                        0,
                        format!("both copies are unusable: primary: {a}; secondary: {b}"),
                    ),
                });
            }
        };
        let (bin, meta) = if use_secondary { s? } else { p? };
        Ok(Luks2Header {
            bin,
            meta,
            warnings,
        })
    }
}
