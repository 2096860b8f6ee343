//! `thin delta` (thin_delta 0.9's XML, byte for byte) and `thin rmap` (thin_rmap 0.9):
//! two devices' mappings compared run by run, and the devices and virtual blocks that
//! map given data blocks.

use std::fmt::Write as _;

use crate::error::{Error, Result};

use super::super::metadata::Metadata;

/// A run of consecutive virtual blocks mapped to consecutive data blocks (time is not
/// looked at: thin_delta's `mapping_recorder`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// First virtual block.
    pub vbegin: u64,
    /// First data block.
    pub dbegin: u64,
    /// Blocks.
    pub len: u64,
}

impl Run {
    fn consume(&mut self, n: u64) {
        let n = n.min(self.len);
        self.vbegin += n;
        self.dbegin += n;
        self.len -= n;
    }
}

/// A device's mappings as runs, in virtual block order.
pub fn runs(md: &Metadata, root: u64) -> Result<Vec<Run>> {
    let mut out: Vec<Run> = Vec::new();
    md.for_each_mapping(root, &mut |k, bt| {
        match out.last_mut() {
            Some(r) if r.vbegin + r.len == k && r.dbegin + r.len == bt.block => r.len += 1,
            _ => out.push(Run {
                vbegin: k,
                dbegin: bt.block,
                len: 1,
            }),
        }
        Ok(())
    })?;
    Ok(out)
}

/// How a stretch of virtual blocks compares between the left and right device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Mapped only on the left, to these data blocks.
    LeftOnly {
        /// First data block.
        dbegin: u64,
    },
    /// Mapped only on the right.
    RightOnly {
        /// First data block.
        dbegin: u64,
    },
    /// Mapped on both, to different data blocks.
    Differ {
        /// Left's first data block.
        left: u64,
        /// Right's first data block.
        right: u64,
    },
    /// Mapped on both to the same data blocks.
    Same {
        /// First data block.
        dbegin: u64,
    },
}

/// Walk both run lists in parallel (thin_delta's `dump_diff`), calling `emit(vbegin, len,
/// change)` for each stretch in virtual block order.
pub fn diff(left: &[Run], right: &[Run], emit: &mut dyn FnMut(u64, u64, Change)) {
    let (mut li, mut ri) = (left.iter(), right.iter());
    let (mut l, mut r) = (Run::default(), Run::default());
    loop {
        if l.len == 0 {
            match li.next() {
                Some(&m) => l = m,
                None => break,
            }
        }
        if r.len == 0 {
            match ri.next() {
                Some(&m) => r = m,
                None => break,
            }
        }
        if l.vbegin < r.vbegin {
            let n = l.len.min(r.vbegin - l.vbegin);
            emit(l.vbegin, n, Change::LeftOnly { dbegin: l.dbegin });
            l.consume(n);
        } else if l.vbegin > r.vbegin {
            let n = r.len.min(l.vbegin - r.vbegin);
            emit(r.vbegin, n, Change::RightOnly { dbegin: r.dbegin });
            r.consume(n);
        } else {
            let n = l.len.min(r.len);
            let c = if l.dbegin == r.dbegin {
                Change::Same { dbegin: l.dbegin }
            } else {
                Change::Differ {
                    left: l.dbegin,
                    right: r.dbegin,
                }
            };
            emit(l.vbegin, n, c);
            l.consume(n);
            r.consume(n);
        }
    }
    for m in std::iter::once(l).chain(li.copied()).filter(|m| m.len > 0) {
        emit(m.vbegin, m.len, Change::LeftOnly { dbegin: m.dbegin });
    }
    for m in std::iter::once(r).chain(ri.copied()).filter(|m| m.len > 0) {
        emit(m.vbegin, m.len, Change::RightOnly { dbegin: m.dbegin });
    }
}

fn tag(c: Change) -> &'static str {
    match c {
        Change::LeftOnly { .. } => "left_only",
        Change::RightOnly { .. } => "right_only",
        Change::Differ { .. } => "different",
        Change::Same { .. } => "same",
    }
}

/// The mapping tree root of device `id`, or thin_delta's words for `which` (snap1/snap2).
fn root_of(md: &Metadata, id: u64, which: &str) -> Result<u64> {
    md.device_root(id)?.ok_or_else(|| {
        Error::invalid(
            "thin delta",
            format!("Unable to find mapping tree for {which} ({id})"),
        )
    })
}

/// `thin_delta [--verbose] --snap1 A --snap2 B` over `md` (the live metadata or a metadata
/// snapshot), byte for byte.
pub fn delta_xml(md: &Metadata, snap1: u64, snap2: u64, verbose: bool) -> Result<String> {
    let r1 = root_of(md, snap1, "snap1")?;
    let r2 = root_of(md, snap2, "snap2")?;
    let (left, right) = (runs(md, r1)?, runs(md, r2)?);
    let sb = md.superblock();
    let mut out = String::new();
    let _ = write!(
        out,
        "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" data_block_size=\"{}\" nr_data_blocks=\"{}",
        sb.time, sb.transaction_id, sb.data_block_size, sb.data_sm.nr_blocks
    );
    if sb.held_root != 0 {
        let _ = write!(out, "\" metadata_snap=\"{}", sb.held_root);
    }
    out.push_str("\">\n");
    let _ = writeln!(out, "  <diff left=\"{snap1}\" right=\"{snap2}\">");
    if verbose {
        let mut open: Option<&'static str> = None;
        diff(&left, &right, &mut |v, n, c| {
            let t = tag(c);
            if open != Some(t) {
                if let Some(o) = open {
                    let _ = writeln!(out, "    </{o}>");
                }
                let _ = writeln!(out, "    <{t}>");
                open = Some(t);
            }
            let _ = match c {
                Change::Differ { left, right } => writeln!(
                    out,
                    "      <range begin=\"{v}\" left_data_begin=\"{left}\" right_data_begin=\"{right}\" length=\"{n}\"/>"
                ),
                Change::LeftOnly { dbegin } | Change::RightOnly { dbegin } | Change::Same { dbegin } => {
                    writeln!(
                        out,
                        "      <range begin=\"{v}\" data_begin=\"{dbegin}\" length=\"{n}\"/>"
                    )
                }
            };
        });
        if let Some(o) = open {
            let _ = writeln!(out, "    </{o}>");
        }
    } else {
        let mut cur: Option<(&'static str, u64, u64)> = None;
        let flush = |out: &mut String, cur: Option<(&'static str, u64, u64)>| {
            if let Some((t, b, e)) = cur {
                let _ = writeln!(out, "    <{t} begin=\"{b}\" length=\"{}\"/>", e - b);
            }
        };
        diff(&left, &right, &mut |v, n, c| {
            let t = tag(c);
            match &mut cur {
                Some((ct, _, end)) if *ct == t && *end == v => *end += n,
                _ => {
                    flush(&mut out, cur);
                    cur = Some((t, v, v + n));
                }
            }
        });
        flush(&mut out, cur);
    }
    out.push_str("  </diff>\n</superblock>\n");
    Ok(out)
}

/// A data block range `begin..end` (`thin_rmap --region`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First block.
    pub begin: u64,
    /// One past the last block.
    pub end: u64,
}

impl std::str::FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Region, String> {
        let (b, e) = s
            .split_once("..")
            .ok_or_else(|| "badly formed region (no dots)".to_string())?;
        let num = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| "badly formed region (couldn't parse numbers)".to_string())
        };
        let (begin, end) = (num(b)?, num(e)?);
        if end <= begin {
            return Err("badly formed region (end <= begin)".into());
        }
        Ok(Region { begin, end })
    }
}

/// `thin_rmap --region R...` over `md`: for each run of data blocks in the regions that
/// one device maps to consecutive virtual blocks, `data B..E -> thin(D) V..W`, ordered by
/// data block (devices in id order for one data block), byte for byte.
pub fn rmap(md: &Metadata, regions: &[Region]) -> Result<String> {
    if regions.is_empty() {
        return Err(Error::invalid("--region", "No regions provided."));
    }
    let inside = |b: u64| regions.iter().any(|r| (r.begin..r.end).contains(&b));
    // (data_begin, data_end, dev, thin_begin)
    let mut found: Vec<(u64, u64, u64, u64)> = Vec::new();
    for (dev, root) in md.device_roots()? {
        md.for_each_mapping(root, &mut |k, bt| {
            if !inside(bt.block) {
                return Ok(());
            }
            match found.last_mut() {
                Some((db, de, d, tb)) if *d == dev && bt.block == *de && k == *tb + (*de - *db) => {
                    *de += 1;
                }
                _ => found.push((bt.block, bt.block + 1, dev, k)),
            }
            Ok(())
        })?;
    }
    found.sort_by_key(|&(db, ..)| db);
    let mut out = String::new();
    for (db, de, dev, tb) in found {
        let _ = writeln!(
            out,
            "data {db}..{de} -> thin({dev}) {tb}..{}",
            tb + (de - db)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(vbegin: u64, dbegin: u64, len: u64) -> Run {
        Run {
            vbegin,
            dbegin,
            len,
        }
    }

    #[test]
    fn a_longer_left_run_is_reported_to_its_end() {
        let mut got = Vec::new();
        diff(&[r(0, 0, 10)], &[r(0, 0, 5)], &mut |v, n, c| {
            got.push((v, n, c))
        });
        assert_eq!(
            got,
            vec![
                (0, 5, Change::Same { dbegin: 0 }),
                (5, 5, Change::LeftOnly { dbegin: 5 })
            ]
        );
    }

    #[test]
    fn regions_parse_as_thin_rmap_does() {
        assert_eq!("5..45".parse(), Ok(Region { begin: 5, end: 45 }));
        assert!("5".parse::<Region>().unwrap_err().contains("no dots"));
        assert!("5..5"
            .parse::<Region>()
            .unwrap_err()
            .contains("end <= begin"));
        assert!("a..5"
            .parse::<Region>()
            .unwrap_err()
            .contains("parse numbers"));
    }
}
