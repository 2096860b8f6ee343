//! Writing a transaction: copy-on-write at btree node granularity, as the kernel shadows.
//! A device whose mappings did not change since the last commit keeps its committed root
//! (its whole subtree, wherever it is shared); a changed device keeps every committed leaf
//! whose key range holds no changed key and re-packs only the ranges with changes, under
//! fresh internal nodes. The top-level, details and space-map trees are rewritten. New
//! blocks go only where the committed metadata space map says free, then the commit runs in
//! `dm_tm_commit`'s order: every new block, flush, the superblock last, flush. A crash at
//! any point leaves the previous superblock and everything it reaches intact.
//!
//! Reference counts are the kernel's: a metadata block counts one per parent pointer (a
//! shared node's children once), a data block once per distinct leaf naming it; a held
//! metadata snapshot's trees are counted in the same walk.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::error::{Error, Result};

use super::block::MetaDev;
use super::btree::{max_entries, read_node};
use super::space_map::MAX_METADATA_BITMAPS;
use super::space_map::{ENTRIES_PER_BLOCK, INDEX_ENTRY_SIZE};
use super::superblock::{SmRoot, Superblock, VERSION};
use super::{BlockTime, DeviceDetails, Metadata, RefCounts, DETAILS_SIZE};
use crate::targets::pdata::write::{self, build_internal, build_tree, pack, Allocator};

/// Every device of a pool: its details and its mappings sorted by virtual block.
pub type Devices = BTreeMap<u64, (DeviceDetails, Vec<(u64, BlockTime)>)>;

/// What a device's mappings derive from: the committed tree at `root`, with the
/// mappings at `changed` keys since altered, added or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Base {
    /// The committed mapping tree root.
    pub root: u64,
    /// Keys whose mapping differs from that tree.
    pub changed: BTreeSet<u64>,
}

/// One leaf of a planned device tree.
#[derive(Clone, Copy, Debug)]
enum Seg {
    /// A committed leaf kept as is, covering keys `lo..hi` (`None`: unbounded).
    Old {
        block: u64,
        lo: u64,
        hi: Option<u64>,
    },
    /// Mappings `start..end` (indices into the device's sorted mappings), to be packed.
    New { start: usize, end: usize },
}

/// A device's planned mapping tree.
#[derive(Debug)]
enum Plan {
    /// The committed root, kept whole.
    Keep(u64),
    /// Leaves in key order (new internal levels above).
    Leaves(Vec<Seg>),
}

/// Index range of `maps` holding keys in `lo..hi`.
fn key_range(maps: &[(u64, BlockTime)], lo: u64, hi: Option<u64>) -> (usize, usize) {
    let start = maps.partition_point(|&(k, _)| k < lo);
    let end = hi.map_or(maps.len(), |h| maps.partition_point(|&(k, _)| k < h));
    (start, end.max(start))
}

/// An internal node's keys and children, and whether those are leaves.
type Children = (Vec<u64>, Vec<u64>, bool);

/// A committed node's children and whether they are leaves (all children of a node are at
/// one depth: probing the first decides).
fn children(md: &Metadata, block: u64) -> Result<Option<Children>> {
    let node = read_node(md.dev(), block, 8)?;
    if node.leaf {
        return Ok(None);
    }
    let kids: Vec<u64> = (0..node.keys.len()).map(|i| node.child(i)).collect();
    let leaf = match kids.first() {
        Some(&c) => read_node(md.dev(), c, 8)?.leaf,
        None => true,
    };
    Ok(Some((node.keys, kids, leaf)))
}

/// Key range of child `i` of a node with `keys` covering `lo..hi`.
fn child_range(keys: &[u64], i: usize, lo: u64, hi: Option<u64>) -> (u64, Option<u64>) {
    let l = if i == 0 { lo } else { keys[i] };
    let h = keys.get(i + 1).copied().or(hi);
    (l, h)
}

/// The committed leaves of the tree at `root` with their key ranges, in key order.
fn old_leaves(
    md: &Metadata,
    root: u64,
    leaf: Option<bool>,
    (lo, hi): (u64, Option<u64>),
    depth: usize,
    seen: &mut HashSet<u64>,
    out: &mut Vec<(u64, u64, Option<u64>)>,
) -> Result<()> {
    if depth > super::btree::MAX_DEPTH {
        return Err(Error::invalid(
            "thin-pool metadata",
            "mapping tree too deep",
        ));
    }
    if !seen.insert(root) {
        return Err(Error::invalid(
            "thin-pool metadata",
            format!("mapping tree node {root} reached twice"),
        ));
    }
    if leaf == Some(true) {
        out.push((root, lo, hi));
        return Ok(());
    }
    match children(md, root)? {
        None => out.push((root, lo, hi)),
        Some((keys, kids, kleaf)) => {
            for (i, &c) in kids.iter().enumerate() {
                let (l, h) = child_range(&keys, i, lo, hi);
                old_leaves(md, c, Some(kleaf), (l, h), depth + 1, seen, out)?;
            }
        }
    }
    Ok(())
}

/// Plan a changed device's leaves: committed leaves whose range holds no changed key are
/// kept; runs of the others are re-packed, widened by a neighbour while they would hold
/// fewer than a third of a leaf (thin_check's fill rule for non-root nodes).
fn plan_leaves(md: &Metadata, base: &Base, maps: &[(u64, BlockTime)]) -> Result<Vec<Seg>> {
    let mut leaves = Vec::new();
    old_leaves(
        md,
        base.root,
        None,
        (0, None),
        0,
        &mut HashSet::new(),
        &mut leaves,
    )?;
    let dirty = |&(_, lo, hi): &(u64, u64, Option<u64>)| {
        base.changed
            .range(lo..)
            .next()
            .is_some_and(|&k| hi.is_none_or(|h| k < h))
    };
    let min = max_entries(8) / 3;
    let mut out: Vec<Seg> = Vec::new();
    let mut i = 0;
    while i < leaves.len() {
        if !dirty(&leaves[i]) {
            let (block, lo, hi) = leaves[i];
            out.push(Seg::Old { block, lo, hi });
            i += 1;
            continue;
        }
        let mut lo = leaves[i].1;
        let mut j = i + 1;
        while j < leaves.len() && dirty(&leaves[j]) {
            j += 1;
        }
        loop {
            let hi = leaves.get(j).map(|l| l.1);
            let (s, e) = key_range(maps, lo, hi);
            if e - s >= min || (j == leaves.len() && out.is_empty()) {
                break;
            }
            if j < leaves.len() {
                j += 1;
            } else {
                // The last run: widened leftwards, over a kept leaf or a re-packed run
                // just before it (no mapping lies between its first key and `lo`).
                match out.pop() {
                    Some(Seg::Old { lo: l, .. }) => lo = l,
                    Some(Seg::New { start, end }) => {
                        if let Some(&(k, _)) = maps[start..end].first() {
                            lo = lo.min(k);
                        }
                    }
                    None => break,
                }
            }
        }
        let hi = leaves.get(j).map(|l| l.1);
        let (start, end) = key_range(maps, lo, hi);
        out.push(Seg::New { start, end });
        i = j;
    }
    Ok(out)
}

/// Reference counts of committed blocks the new trees keep, walking each kept subtree once.
struct Counter<'a> {
    md: &'a Metadata,
    rc: RefCounts,
    seen: HashSet<u64>,
}

impl Counter<'_> {
    /// One pointer to committed mapping node `block` covering keys `lo..hi` of `maps`.
    fn old(
        &mut self,
        block: u64,
        leaf: Option<bool>,
        lo: u64,
        hi: Option<u64>,
        maps: &[(u64, BlockTime)],
        depth: usize,
    ) -> Result<()> {
        *self.rc.meta.entry(block).or_insert(0) += 1;
        if !self.seen.insert(block) {
            return Ok(());
        }
        if depth > super::btree::MAX_DEPTH {
            return Err(Error::invalid(
                "thin-pool metadata",
                "mapping tree too deep",
            ));
        }
        let kids = if leaf == Some(true) {
            None
        } else {
            children(self.md, block)?
        };
        match kids {
            // An unchanged range: the leaf holds exactly the device's mappings in it.
            None => self.data(maps, key_range(maps, lo, hi)),
            Some((keys, kids, kleaf)) => {
                for (i, &c) in kids.iter().enumerate() {
                    let (l, h) = child_range(&keys, i, lo, hi);
                    self.old(c, Some(kleaf), l, h, maps, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// One leaf naming `maps[start..end]`.
    fn data(&mut self, maps: &[(u64, BlockTime)], (start, end): (usize, usize)) {
        for &(_, bt) in &maps[start..end] {
            *self.rc.data.entry(bt.block).or_insert(0) += 1;
        }
    }
}

/// Metadata blocks handed out in ascending order from those free in the committed space map.
struct Alloc {
    free: Vec<u64>,
    next: usize,
    used: Vec<u64>,
}

impl Allocator for Alloc {
    fn block(&mut self) -> Result<u64> {
        let b = *self.free.get(self.next).ok_or(Error::NoSpace {
            target: "thin-pool metadata",
        })?;
        self.next += 1;
        self.used.push(b);
        Ok(b)
    }
}

/// A device's mapping tree from its planned leaves.
fn build_device_tree(
    alloc: &mut Alloc,
    out: &mut Vec<(u64, Vec<u8>)>,
    segs: &[Seg],
    maps: &[(u64, BlockTime)],
) -> Result<u64> {
    let mut level = Vec::new();
    for seg in segs {
        match *seg {
            Seg::Old { block, lo, hi } => {
                let (s, e) = key_range(maps, lo, hi);
                level.push((maps[s..e].first().map_or(lo, |&(k, _)| k), block));
            }
            Seg::New { start, end } => {
                let m = &maps[start..end];
                let keys: Vec<u64> = m.iter().map(|&(k, _)| k).collect();
                let vals: Vec<u8> = m
                    .iter()
                    .flat_map(|&(_, bt)| bt.pack().to_le_bytes())
                    .collect();
                pack(
                    alloc,
                    out,
                    true,
                    &keys,
                    &vals,
                    8,
                    segs.len() == 1,
                    &mut level,
                )?;
            }
        }
    }
    if level.is_empty() {
        pack(alloc, out, true, &[], &[], 8, true, &mut level)?;
    }
    build_internal(alloc, out, level)
}

/// A space map's ref count btree (persistent-data's `sm_ll` ref_count_root): block numbers
/// to little-endian u32 counts, for the blocks whose count is 3 or more.
fn build_count_tree(
    alloc: &mut Alloc,
    out: &mut Vec<(u64, Vec<u8>)>,
    counts: &[(u64, u32)],
) -> Result<u64> {
    let keys: Vec<u64> = counts.iter().map(|&(b, _)| b).collect();
    let values: Vec<u8> = counts.iter().flat_map(|&(_, c)| c.to_le_bytes()).collect();
    build_tree(alloc, out, &keys, &values, 4)
}

/// A space map's index entries and its overflow counts (>= 3).
type Bitmapped = (Vec<[u8; INDEX_ENTRY_SIZE]>, Vec<(u64, u32)>);

/// Bitmaps for `counts` (block → count, all others 0) over `nr_blocks`, at `blocks`; the
/// index entries; the overflow counts (>= 3).
fn bitmaps(
    nr_blocks: u64,
    counts: &BTreeMap<u64, u32>,
    blocks: &[u64],
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<Bitmapped> {
    let mut overflow = Vec::new();
    let mut counts = counts.range(..nr_blocks).map(|(&b, &c)| {
        if c >= 3 {
            overflow.push((b, c));
        }
        (b, c)
    });
    let mut index = Vec::new();
    let mut locs = blocks.iter().copied();
    write::bitmaps(nr_blocks, &mut locs, &mut counts, &mut |loc, bm, ie| {
        out.push((loc, bm));
        index.push(ie);
        Ok(())
    })?;
    drop(counts);
    Ok((index, overflow))
}

/// The blocks and superblock of one transaction, ready to commit.
#[derive(Debug)]
pub struct Transaction {
    blocks: Vec<(u64, Vec<u8>)>,
    sb: Superblock,
}

impl Transaction {
    /// The superblock that commits it.
    #[must_use]
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Build the next transaction. `sb` carries the pool's fields (time, transaction id,
    /// data block size, space-map sizes, held root); `free_meta` lists metadata blocks the
    /// committed metadata does not use (never block 0); `bases` names, per device, the
    /// committed tree its mappings derive from (a device without one is laid out afresh);
    /// `committed` is the committed metadata those trees and a held snapshot live in.
    pub fn build(
        sb: &Superblock,
        free_meta: Vec<u64>,
        devices: &Devices,
        bases: &BTreeMap<u64, Base>,
        committed: Option<&Metadata>,
    ) -> Result<Transaction> {
        let nr_meta = sb.metadata_sm.nr_blocks;
        let nr_meta_bitmaps = nr_meta.div_ceil(ENTRIES_PER_BLOCK);
        if nr_meta_bitmaps > MAX_METADATA_BITMAPS {
            return Err(Error::invalid(
                "thin-pool metadata",
                format!("{nr_meta} blocks need more than {MAX_METADATA_BITMAPS} bitmaps"),
            ));
        }

        // Plan every device tree and count what the kept committed blocks are referenced
        // by (a held snapshot's trees first, in the same walk: a node both reach counts
        // its children once) and the data every leaf names.
        let mut plans = BTreeMap::new();
        let mut rc = RefCounts::default();
        let mut seen = HashSet::new();
        if let Some(md) = committed {
            if sb.held_root != 0 {
                md.snapshot_refs_into(sb.held_root, &mut rc, &mut seen)?;
            }
        }
        let mut counter = committed.map(|md| Counter { md, rc, seen });
        let mut fresh = RefCounts::default();
        for (&id, (_, maps)) in devices {
            let plan = match (bases.get(&id), counter.as_mut()) {
                (Some(base), Some(c)) if base.changed.is_empty() => {
                    c.old(base.root, None, 0, None, maps, 0)?;
                    Plan::Keep(base.root)
                }
                (Some(base), Some(c)) => {
                    let segs = plan_leaves(c.md, base, maps)?;
                    for seg in &segs {
                        match *seg {
                            Seg::Old { block, lo, hi } => {
                                c.old(block, Some(true), lo, hi, maps, 0)?;
                            }
                            Seg::New { start, end } => c.data(maps, (start, end)),
                        }
                    }
                    Plan::Leaves(segs)
                }
                _ => {
                    for &(_, bt) in maps {
                        *fresh.data.entry(bt.block).or_insert(0) += 1;
                    }
                    Plan::Leaves(vec![Seg::New {
                        start: 0,
                        end: maps.len(),
                    }])
                }
            };
            plans.insert(id, plan);
        }
        let mut old = counter.map(|c| c.rc).unwrap_or_default();
        for (b, c) in fresh.data {
            *old.data.entry(b).or_insert(0) += c;
        }
        let (old_meta, data_refs) = (old.meta, old.data);

        let mut alloc = Alloc {
            free: free_meta,
            next: 0,
            used: Vec::new(),
        };
        let mut out = Vec::new();

        // The metadata space map's own blocks first: its size does not depend on the rest.
        let meta_bitmaps: Vec<u64> = (0..nr_meta_bitmaps)
            .map(|_| alloc.block())
            .collect::<Result<_>>()?;
        let meta_index = alloc.block()?;
        // Blocks of this transaction are referenced once; kept committed blocks can reach
        // 3+ and go to the ref count tree, whose size is known now.
        let held_overflow: Vec<(u64, u32)> = old_meta
            .iter()
            .filter(|&(_, &c)| c >= 3)
            .map(|(&b, &c)| (b, c))
            .collect();
        let meta_rc_root = build_count_tree(&mut alloc, &mut out, &held_overflow)?;

        // Device trees, then the top level of the mapping tree and the details tree.
        let mut top_keys = Vec::new();
        let mut top_vals = Vec::new();
        let mut det_keys = Vec::new();
        let mut det_vals = Vec::new();
        for (&id, (details, maps)) in devices {
            let root = match plans.get(&id) {
                Some(Plan::Keep(root)) => *root,
                Some(Plan::Leaves(segs)) => build_device_tree(&mut alloc, &mut out, segs, maps)?,
                None => build_device_tree(
                    &mut alloc,
                    &mut out,
                    &[Seg::New {
                        start: 0,
                        end: maps.len(),
                    }],
                    maps,
                )?,
            };
            top_keys.push(id);
            top_vals.extend_from_slice(&root.to_le_bytes());
            det_keys.push(id);
            det_vals.extend_from_slice(&details.encode());
        }
        let mapping_root = build_tree(&mut alloc, &mut out, &top_keys, &top_vals, 8)?;
        let details_root = build_tree(&mut alloc, &mut out, &det_keys, &det_vals, DETAILS_SIZE)?;

        // Data space map: bitmaps, an index btree over them, the overflow count btree.
        let nr_data = sb.data_sm.nr_blocks;
        let data_bitmap_blocks: Vec<u64> = (0..nr_data.div_ceil(ENTRIES_PER_BLOCK))
            .map(|_| alloc.block())
            .collect::<Result<_>>()?;
        let (index, overflow) = bitmaps(nr_data, &data_refs, &data_bitmap_blocks, &mut out)?;
        let index_keys: Vec<u64> = (0..u64::try_from(index.len()).unwrap_or(0)).collect();
        let index_vals: Vec<u8> = index.iter().flatten().copied().collect();
        let data_index_root = build_tree(
            &mut alloc,
            &mut out,
            &index_keys,
            &index_vals,
            INDEX_ENTRY_SIZE,
        )?;
        let data_rc_root = build_count_tree(&mut alloc, &mut out, &overflow)?;

        // Now every block is allocated: the metadata space map counts them and block 0.
        let mut meta_counts: BTreeMap<u64, u32> = alloc.used.iter().map(|&b| (b, 1)).collect();
        meta_counts.insert(0, 1);
        for (&b, &c) in &old_meta {
            *meta_counts.entry(b).or_insert(0) += c;
        }
        let (mindex, meta_overflow) = bitmaps(nr_meta, &meta_counts, &meta_bitmaps, &mut out)?;
        out.push((meta_index, write::index_block(meta_index, &mindex)));

        debug_assert!(meta_overflow.iter().all(|o| held_overflow.contains(o)));
        let mut nsb = sb.clone();
        nsb.version = VERSION;
        nsb.data_mapping_root = mapping_root;
        nsb.device_details_root = details_root;
        nsb.data_sm = SmRoot {
            nr_blocks: nr_data,
            nr_allocated: u64::try_from(data_refs.len()).unwrap_or(0),
            bitmap_root: data_index_root,
            ref_count_root: data_rc_root,
        };
        nsb.metadata_sm = SmRoot {
            nr_blocks: nr_meta,
            nr_allocated: u64::try_from(meta_counts.len()).unwrap_or(0),
            bitmap_root: meta_index,
            ref_count_root: meta_rc_root,
        };
        Ok(Transaction {
            blocks: out,
            sb: nsb,
        })
    }

    /// Write `version` in the superblock instead of the kernel's (thin_restore keeps the
    /// XML's).
    pub fn set_version(&mut self, version: u32) {
        self.sb.version = version;
    }

    /// Commit in `dm_tm_commit` order: every new block, flush, the superblock, flush.
    pub fn commit(&self, dev: &MetaDev) -> Result<()> {
        for (b, data) in &self.blocks {
            debug_assert!(*b != 0);
            dev.write(*b, data)?;
        }
        dev.volume().flush()?;
        dev.write(0, &self.sb.encode(0))?;
        dev.volume().flush()
    }

    /// Metadata blocks this transaction writes (besides the superblock).
    #[must_use]
    pub fn nr_blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// Metadata blocks in `0..nr_blocks` that `dev`'s committed metadata space map leaves free.
pub fn free_metadata_blocks(md: &super::Metadata) -> Result<Vec<u64>> {
    let sm = md.metadata_space_map()?;
    let mut used = std::collections::HashSet::new();
    sm.for_each_nonzero(md.dev(), &mut |b, _| {
        used.insert(b);
        Ok(())
    })?;
    let limit = sm.nr_blocks().min(md.dev().nr_blocks());
    Ok((1..limit).filter(|b| !used.contains(b)).collect())
}

/// Format empty pool metadata on `dev` (`__format_metadata`): no devices, time and
/// transaction id 0, a data space map of `nr_data_blocks`, the metadata space map over the
/// whole device (up to the kernel's limit of `max_blocks`).
pub fn format(
    dev: &MetaDev,
    data_block_size: u32,
    nr_data_blocks: u64,
    max_blocks: u64,
) -> Result<()> {
    let nr_meta = dev.nr_blocks().min(max_blocks);
    let sb = Superblock::fresh(data_block_size, nr_data_blocks, nr_meta);
    let tx = Transaction::build(
        &sb,
        (1..nr_meta).collect(),
        &Devices::new(),
        &BTreeMap::new(),
        None,
    )?;
    tx.commit(dev)
}
