//! `dmemu cache writeback` (cache_writeback of thin-provisioning-tools 0.9): every dirty
//! block copied from the fast device to its origin block, then the dirty state cleared in
//! the metadata and committed with the clean-shutdown flag, in the kernel's commit order.
//!
//! Dirty means what the kernel would load dirty: after a clean shutdown the mapping's
//! `M_DIRTY` flag (format 1) or the dirty bitset (format 2: 0.9 reads no bitset and so
//! copies nothing there), otherwise every valid mapping. Blocks are copied in origin order,
//! a megabyte at a time; a block whose copy fails stays dirty.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::targets::pdata::block::MetaDev;
use crate::units::Sector;
use crate::volume::{SharedVolume, Volume};

use super::metadata::Metadata;
use super::state::State;

/// What a writeback did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Dirty blocks found (`blocks_issued`).
    pub issued: u64,
    /// Cache blocks whose copy failed, with the error.
    pub failed: Vec<(u64, String)>,
    /// Whether the metadata was updated.
    pub updated: bool,
}

/// Copy the dirty blocks of the cache whose metadata is `meta` from `fast` to `origin`;
/// with `update`, clear them in the metadata (those that failed stay dirty).
pub fn writeback(
    meta: SharedVolume,
    fast: &dyn Volume,
    origin: &dyn Volume,
    update: bool,
) -> Result<Report> {
    let dev = MetaDev::new(meta);
    let md = Metadata::open(&dev)?;
    let bs = u64::from(md.sb.data_block_size);
    let mut dirty: Vec<(u64, u64)> = md
        .mappings
        .iter()
        .filter(|m| m.dirty)
        .map(|m| (m.oblock, m.cblock))
        .collect();
    dirty.sort_unstable();
    let mut report = Report {
        issued: dirty.len() as u64,
        ..Report::default()
    };
    let mut buf = vec![0u8; 1 << 20];
    for &(ob, cb) in &dirty {
        if let Err(e) = copy_block(fast, origin, cb * bs, ob * bs, bs, &mut buf) {
            report.failed.push((cb, e.to_string()));
        }
    }
    origin.flush()?;
    if update {
        let mut st = State::new(dev, &md)?;
        st.dirty = report
            .failed
            .iter()
            .map(|&(cb, _)| cb)
            .collect::<BTreeSet<_>>();
        st.sync(md.sb.stats)?;
        report.updated = true;
    }
    Ok(report)
}

/// One cache block's copy: `bs` sectors from `src` on the fast device to `dst` on the
/// origin (cut at the origin's end, as its last block may be partial).
fn copy_block(
    fast: &dyn Volume,
    origin: &dyn Volume,
    src: u64,
    dst: u64,
    bs: u64,
    buf: &mut [u8],
) -> Result<()> {
    let end = (dst + bs).min(origin.size().0);
    let mut at = 0;
    while dst + at < end {
        let n = (end - dst - at).min(buf.len() as u64 / 512);
        let b = &mut buf[..usize::try_from(n * 512).unwrap_or(0)];
        fast.read(Sector(src + at), b)?;
        origin.write(Sector(dst + at), b)?;
        at += n;
    }
    Ok(())
}
