//! `dmemu cache check`: cache_check 0.9's verdicts and messages. 0.9 checks the superblock
//! (checksum, magic, version), walks the mapping and hint arrays (btree nodes, array block
//! checksums and locations) and only opens the discard bitset; it does not read the dirty
//! bitset or the space map, and does not refuse `needs_check`. Exit status 1 on damage,
//! nested messages on stderr as 0.9 prints them (the key ranges of its `missing mappings`
//! lines are not reproduced: dmemu names the block and field instead).
//!
//! After 0.9's verdict dmemu adds one line when the kernel would still refuse to load the
//! metadata (its load checks are wider), so a pass is never mistaken for loadable.

use std::fmt::Write as _;

use crate::error::Result;
use crate::targets::pdata::array::ARRAY_CSUM_XOR;
use crate::targets::pdata::block::{checksum, le32, le64, MetaDev};
use crate::targets::pdata::btree;

use super::metadata::{Metadata, MAGIC, NEEDS_CHECK, SUPERBLOCK_CSUM_XOR, VERSIONS};

/// Which parts to examine (cache_check's `--skip-*` and `--super-block-only`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skip {
    /// `--skip-mappings` (and `--super-block-only`).
    pub mappings: bool,
    /// `--skip-hints` (and `--super-block-only`).
    pub hints: bool,
    /// `--skip-discards`.
    pub discards: bool,
}

/// A check's outcome: cache_check's stderr and whether it passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What cache_check prints on stderr, line by line.
    pub text: String,
    /// Exit status 0.
    pub ok: bool,
    /// Whether the superblock has `NEEDS_CHECK` (for `--clear-needs-check-flag`).
    pub needs_check: bool,
}

/// Check the metadata on `dev` as cache_check 0.9 does.
pub fn check(dev: &MetaDev, skip: Skip) -> Result<Verdict> {
    let mut v = Verdict {
        text: String::new(),
        ok: true,
        needs_check: false,
    };
    if dev.nr_blocks() == 0 {
        v.text = "Metadata device/file too small.  Is this binary metadata?\n".into();
        v.ok = false;
        return Ok(v);
    }
    let sb = dev.read_raw(0, "cache superblock")?;
    v.text.push_str("examining superblock\n");
    let magic = le64(&sb, 32);
    let version = le32(&sb, 40);
    let fault = if checksum(&sb[4..], SUPERBLOCK_CSUM_XOR) != le32(&sb, 0) {
        Some(("corrupt", "bad checksum in superblock".to_string()))
    } else if magic != MAGIC {
        Some(("invalid", format!("magic is incorrect: {magic}")))
    } else if !VERSIONS.contains(&version) {
        Some(("invalid", format!("version incorrect: {version}")))
    } else {
        None
    };
    if let Some((kind, desc)) = fault {
        let _ = write!(v.text, "  superblock is {kind}\n    {desc}\n");
        v.ok = false;
        return Ok(v);
    }
    v.needs_check = le32(&sb, 4) & NEEDS_CHECK != 0;
    if !skip.mappings {
        v.text.push_str("examining mapping array\n");
        array(dev, le64(&sb, 192), &mut v);
    }
    if !skip.hints {
        let root = le64(&sb, 200);
        if root == 0 {
            v.text.push_str("no hint array present\n");
        } else {
            v.text.push_str("examining hint array\n");
            let width = if le32(&sb, 252) & 1 != 0 {
                le32(&sb, 60)
            } else {
                4
            };
            if !(1..=128).contains(&width) {
                let _ = writeln!(v.text, "invalid hint width: {width}");
                v.ok = false;
                return Ok(v);
            }
            array(dev, root, &mut v);
        }
    }
    if !skip.discards {
        v.text.push_str(if le64(&sb, 208) == 0 {
            "no discard bitset present\n"
        } else {
            "examining discard bitset\n"
        });
    }
    if v.ok && !skip.mappings && !skip.hints {
        if let Err(e) = Metadata::open(dev) {
            let _ = writeln!(v.text, "the kernel would refuse to load it: {}", e.chain());
        }
    }
    Ok(v)
}

/// 0.9's array walk: the btree's nodes checked, each array block's checksum and location;
/// damage reported as `missing mappings`, with what dmemu found.
fn array(dev: &MetaDev, root: u64, v: &mut Verdict) {
    let mut damage = Vec::new();
    let walked = btree::walk(dev, root, 8, &mut |_, val| {
        let b = le64(val, 0);
        match dev.read_raw(b, "array block") {
            Err(e) => damage.push(e.chain()),
            Ok(buf) => {
                if le64(&buf, 16) != b {
                    damage.push(format!(
                        "array block {b}: blocknr field says {}",
                        le64(&buf, 16)
                    ));
                } else if checksum(&buf[4..], ARRAY_CSUM_XOR) != le32(&buf, 0) {
                    damage.push(format!("bad checksum in array block node (block {b})"));
                }
            }
        }
        Ok(())
    });
    if let Err(e) = walked {
        damage.push(e.chain());
    }
    for d in damage {
        let _ = write!(v.text, "  missing mappings:\n    {d}\n");
        v.ok = false;
    }
}
