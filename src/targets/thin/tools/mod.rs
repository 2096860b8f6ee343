//! The thin metadata toolbox beyond dump/ls/check, as thin-provisioning-tools 0.9 has it:
//! restore from thin_dump's XML (`xml`, [`restore()`]), delta and rmap (`delta`), the
//! metadata size estimate (`size`), repair (`repair`), and what only a tool holding the
//! data too can do: trim a data image, extract a thin volume, write the changed extents of
//! two snapshots ([`trim`], `extract`).

use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};
use crate::volume::Volume;

use super::metadata::block::MetaDev;
use super::metadata::btree::max_entries;
use super::metadata::space_map::{ENTRIES_PER_BLOCK, MAX_METADATA_BITMAPS};
use super::metadata::Metadata;

pub mod delta;
pub mod pack;
pub mod repair;
pub mod restore;
pub mod size;
pub mod xml;

pub use restore::{restore, restore_file};

/// Metadata blocks a pool uses at most (`THIN_METADATA_MAX_SECTORS` / 8): what one
/// metadata space map index block can count.
pub const MAX_METADATA_BLOCKS: u64 = MAX_METADATA_BITMAPS * ENTRIES_PER_BLOCK;

/// Metadata blocks restore lays out on `dev` (its whole size up to the kernel's limit).
pub(crate) fn meta_blocks(dev: &MetaDev) -> Result<u64> {
    let n = dev.nr_blocks().min(MAX_METADATA_BLOCKS);
    if n < 8 {
        return Err(Error::invalid(
            "thin restore output",
            format!(
                "{} bytes is too small for pool metadata",
                dev.volume().size().bytes()
            ),
        ));
    }
    Ok(n)
}

/// Mappings a metadata device of `dev`'s size could hold (full leaves in every block):
/// the bound on what an XML document may ask restore to build.
pub fn max_mappings(dev: &MetaDev) -> Result<u64> {
    Ok(meta_blocks(dev)? * max_entries(8) as u64)
}

/// Overrides of the superblock fields (thin_restore's and thin_repair's
/// `--transaction-id`, `--data-block-size`, `--nr-data-blocks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Transaction id.
    pub transaction_id: Option<u64>,
    /// Data block size in sectors.
    pub data_block_size: Option<u32>,
    /// Data blocks.
    pub nr_data_blocks: Option<u64>,
}

/// Data block runs `(first, blocks)` the data space map counts free, within the first
/// `limit` blocks (`thin_trim`'s walk of the data space map).
pub fn free_data_runs(md: &Metadata, limit: u64) -> Result<Vec<(u64, u64)>> {
    let problems = md.check()?;
    if let Some(p) = problems.first() {
        return Err(Error::Corrupt {
            what: "thin metadata space maps",
            offset: 0,
            detail: format!(
                "{} count mismatches (first: {p}); trimming could discard mapped data, run \
                 `dmemu thin check`",
                problems.len()
            ),
        });
    }
    let sm = md.data_space_map()?;
    let end = sm.nr_blocks().min(limit);
    let mut runs = Vec::new();
    let mut next = 0; // first block not yet known used
    sm.for_each_nonzero(md.dev(), &mut |b, _| {
        if b >= end {
            return Ok(());
        }
        if b > next {
            runs.push((next, b - next));
        }
        next = b + 1;
        Ok(())
    })?;
    if end > next {
        runs.push((next, end - next));
    }
    Ok(runs)
}

/// Discard every data block of `data` that `md`'s data space map counts free (thin_trim;
/// dmemu also trims image files, by punching holes). Refused when the space maps disagree
/// with the trees. Returns the blocks discarded.
pub fn trim(md: &Metadata, data: &dyn Volume) -> Result<u64> {
    let bs = u64::from(md.superblock().data_block_size);
    if bs == 0 {
        return Err(Error::invalid(
            "thin trim",
            "data block size 0 in the superblock",
        ));
    }
    let limit = data.size().0 / bs;
    let mut n = 0;
    for (b, len) in free_data_runs(md, limit)? {
        data.discard(Sector(b * bs), SectorCount(len * bs))?;
        n += len;
    }
    data.flush()?;
    Ok(n)
}

/// A stretch of a thin volume to copy: virtual and data sectors and the length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Sector in the thin volume (and in the output image).
    pub virt: Sector,
    /// Sector on the data device.
    pub data: Sector,
    /// Sectors.
    pub len: SectorCount,
}

/// Device `id`'s mapped runs as extents, in order.
pub fn device_extents(md: &Metadata, id: u64) -> Result<Vec<Extent>> {
    let root = md.device_root(id)?.ok_or_else(|| {
        Error::invalid("--dev-id", format!("no thin device {id} in the metadata"))
    })?;
    let bs = u64::from(md.superblock().data_block_size);
    Ok(delta::runs(md, root)?
        .into_iter()
        .map(|r| Extent {
            virt: Sector(r.vbegin * bs),
            data: Sector(r.dbegin * bs),
            len: SectorCount(r.len * bs),
        })
        .collect())
}

/// Copy `extents` from `data` into `out` at their virtual offsets, skipping all-zero 4 KiB
/// blocks (left as holes in a sparse output); `progress` gets the bytes copied so far.
pub fn copy_extents(
    data: &dyn Volume,
    out: &std::fs::File,
    extents: &[Extent],
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    const CHUNK: u64 = 8192; // sectors: 4 MiB
    let mut buf = vec![0u8; usize::try_from(CHUNK * 512).unwrap_or(1 << 22)];
    let mut done = 0;
    for e in extents {
        let mut at = 0;
        while at < e.len.0 {
            let n = (e.len.0 - at).min(CHUNK);
            let b = &mut buf[..usize::try_from(n * 512).unwrap_or(0)];
            data.read(Sector(e.data.0 + at), b)?;
            for (i, page) in b.chunks(4096).enumerate() {
                if page.iter().any(|&x| x != 0) {
                    let off = (e.virt.0 + at) * 512 + i as u64 * 4096;
                    out.write_all_at(page, off)
                        .map_err(Error::io(&"thin extract output"))?;
                }
            }
            at += n;
            done += n * 512;
            progress(done);
        }
    }
    Ok(())
}
