//! Writing a transaction: the whole metadata (mapping and details btrees, both space maps)
//! is laid out afresh in blocks the last committed metadata does not use, then committed in
//! `dm_tm_commit`'s order: every new block, flush, the superblock last, flush. A crash at
//! any point leaves the previous superblock and everything it reaches intact.
//!
//! This is thin_restore's layout (no btree node shared between devices, every metadata
//! block referenced once; a data block's count is the number of device mappings naming it),
//! which the kernel opens and thin_check accepts; the kernel itself shadows and shares
//! nodes incrementally instead (see docs/design.md).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::block::INDEX_CSUM_XOR;
use super::block::{put32, put64, seal, MetaDev, BITMAP_CSUM_XOR, BLOCK_SIZE, BTREE_CSUM_XOR};
use super::btree::{max_entries, HEADER_SIZE, INTERNAL_NODE, LEAF_NODE};
use super::space_map::{BITMAP_HEADER, MAX_METADATA_BITMAPS};
use super::space_map::{ENTRIES_PER_BLOCK, INDEX_BLOCK_HEADER, INDEX_ENTRY_SIZE};
use super::superblock::{SmRoot, Superblock, VERSION};
use super::{BlockTime, DeviceDetails, DETAILS_SIZE};

/// Every device of a pool: its details and its mappings sorted by virtual block.
pub type Devices = BTreeMap<u64, (DeviceDetails, Vec<(u64, BlockTime)>)>;

/// Metadata blocks handed out in ascending order from those free in the committed space map.
struct Alloc {
    free: Vec<u64>,
    next: usize,
    used: Vec<u64>,
}

impl Alloc {
    fn block(&mut self) -> Result<u64> {
        let b = *self.free.get(self.next).ok_or(Error::NoSpace {
            target: "thin-pool metadata",
        })?;
        self.next += 1;
        self.used.push(b);
        Ok(b)
    }
}

/// A btree node image.
fn node(block: u64, leaf: bool, keys: &[u64], values: &[u8], value_size: usize) -> Vec<u8> {
    let max = max_entries(value_size);
    let mut b = vec![0; BLOCK_SIZE];
    put32(&mut b, 4, if leaf { LEAF_NODE } else { INTERNAL_NODE });
    put64(&mut b, 8, block);
    put32(&mut b, 16, u32::try_from(keys.len()).unwrap_or(0));
    put32(&mut b, 20, u32::try_from(max).unwrap_or(0));
    put32(&mut b, 24, u32::try_from(value_size).unwrap_or(0));
    for (i, &k) in keys.iter().enumerate() {
        put64(&mut b, HEADER_SIZE + 8 * i, k);
    }
    let v = HEADER_SIZE + 8 * max;
    b[v..v + values.len()].copy_from_slice(values);
    seal(&mut b, BTREE_CSUM_XOR);
    b
}

/// Build a btree bottom-up over sorted `keys`/`values`; nodes are filled evenly so every
/// non-root node holds at least a third of `max_entries` (thin_check's rule). Returns the
/// root.
fn build_tree(
    alloc: &mut Alloc,
    out: &mut Vec<(u64, Vec<u8>)>,
    keys: &[u64],
    values: &[u8],
    value_size: usize,
) -> Result<u64> {
    let mut level: Vec<(u64, u64)> = Vec::new(); // (first key, block)
    let mut leaf = true;
    let (mut keys, mut values) = (keys.to_vec(), values.to_vec());
    let mut vs = value_size;
    loop {
        let max = max_entries(vs);
        let n = keys.len();
        let nodes = n.div_ceil(max).max(1);
        level.clear();
        let mut at = 0;
        for i in 0..nodes {
            let take = n / nodes + usize::from(i < n % nodes);
            let b = alloc.block()?;
            out.push((
                b,
                node(
                    b,
                    leaf,
                    &keys[at..at + take],
                    &values[at * vs..(at + take) * vs],
                    vs,
                ),
            ));
            level.push((keys.get(at).copied().unwrap_or(0), b));
            at += take;
        }
        if level.len() == 1 {
            return Ok(level[0].1);
        }
        keys = level.iter().map(|&(k, _)| k).collect();
        values = level.iter().flat_map(|&(_, b)| b.to_le_bytes()).collect();
        vs = 8;
        leaf = false;
    }
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

/// Set entry `e` of a bitmap to `v` (0..=3; the lower bit position holds the high bit).
fn set_entry(bitmap: &mut [u8], e: usize, v: u32) {
    let off = BITMAP_HEADER + 8 * (e / 32);
    let mut w = [0; 8];
    w.copy_from_slice(&bitmap[off..off + 8]);
    let mut word = u64::from_le_bytes(w);
    let bit = 2 * (e % 32);
    word |= u64::from(v >> 1 & 1) << bit | u64::from(v & 1) << (bit + 1);
    bitmap[off..off + 8].copy_from_slice(&word.to_le_bytes());
}

/// Bitmaps for `counts` (block → count, all others 0) over `nr_blocks`, at `blocks`; the
/// index entries; the overflow counts (>= 3).
fn bitmaps(
    nr_blocks: u64,
    counts: &BTreeMap<u64, u32>,
    blocks: &[u64],
    out: &mut Vec<(u64, Vec<u8>)>,
) -> (Vec<[u8; INDEX_ENTRY_SIZE]>, Vec<(u64, u32)>) {
    let mut index = Vec::new();
    let mut overflow = Vec::new();
    for (i, &loc) in blocks.iter().enumerate() {
        let base = u64::try_from(i).unwrap_or(u64::MAX) * ENTRIES_PER_BLOCK;
        let end = nr_blocks.saturating_sub(base).min(ENTRIES_PER_BLOCK);
        let mut bm = vec![0; BLOCK_SIZE];
        put64(&mut bm, 8, loc);
        let mut used = 0u64;
        let mut first_free = None;
        let mut at = base;
        for (&b, &c) in counts.range(base..base + end) {
            if first_free.is_none() && b > at {
                first_free = Some(at - base);
            }
            at = b + 1;
            let e = usize::try_from(b - base).unwrap_or(0);
            set_entry(&mut bm, e, c.min(3));
            if c >= 3 {
                overflow.push((b, c));
            }
            used += 1;
        }
        let first_free = first_free.unwrap_or(at - base);
        seal(&mut bm, BITMAP_CSUM_XOR);
        out.push((loc, bm));
        let mut ie = [0; INDEX_ENTRY_SIZE];
        put64(&mut ie, 0, loc);
        put32(&mut ie, 8, u32::try_from(end - used).unwrap_or(0));
        put32(&mut ie, 12, u32::try_from(first_free).unwrap_or(0));
        index.push(ie);
    }
    (index, overflow)
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

    /// Lay the pool out afresh. `sb` carries the pool's fields (time, transaction id, data
    /// block size, space-map sizes, held root); `free_meta` lists metadata blocks the
    /// committed metadata does not use (never block 0) and `held_meta` the references a
    /// held metadata snapshot keeps on metadata blocks outside it; `data_refs` gives each
    /// used data block's count (the snapshot's included).
    pub fn build(
        sb: &Superblock,
        free_meta: Vec<u64>,
        devices: &Devices,
        data_refs: &BTreeMap<u64, u32>,
        held_meta: &BTreeMap<u64, u32>,
    ) -> Result<Transaction> {
        let nr_meta = sb.metadata_sm.nr_blocks;
        let nr_meta_bitmaps = nr_meta.div_ceil(ENTRIES_PER_BLOCK);
        if nr_meta_bitmaps > MAX_METADATA_BITMAPS {
            return Err(Error::invalid(
                "thin-pool metadata",
                format!("{nr_meta} blocks need more than {MAX_METADATA_BITMAPS} bitmaps"),
            ));
        }
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
        // Blocks of this transaction are referenced once; a held snapshot's shared nodes
        // can reach 3+ and go to the ref count tree, whose size is known now.
        let held_overflow: Vec<(u64, u32)> = held_meta
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
            let keys: Vec<u64> = maps.iter().map(|&(k, _)| k).collect();
            let vals: Vec<u8> = maps
                .iter()
                .flat_map(|&(_, bt)| bt.pack().to_le_bytes())
                .collect();
            let root = build_tree(&mut alloc, &mut out, &keys, &vals, 8)?;
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
        let (index, overflow) = bitmaps(nr_data, data_refs, &data_bitmap_blocks, &mut out);
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
        for (&b, &c) in held_meta {
            *meta_counts.entry(b).or_insert(0) += c;
        }
        let (mindex, meta_overflow) = bitmaps(nr_meta, &meta_counts, &meta_bitmaps, &mut out);
        let mut ib = vec![0; BLOCK_SIZE];
        put64(&mut ib, 8, meta_index);
        for (i, e) in mindex.iter().enumerate() {
            let off = INDEX_BLOCK_HEADER + INDEX_ENTRY_SIZE * i;
            ib[off..off + INDEX_ENTRY_SIZE].copy_from_slice(e);
        }
        seal(&mut ib, INDEX_CSUM_XOR);
        out.push((meta_index, ib));

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
    let sb = Superblock {
        flags: 0,
        uuid: [0; 16],
        version: VERSION,
        time: 0,
        transaction_id: 0,
        held_root: 0,
        data_sm: SmRoot {
            nr_blocks: nr_data_blocks,
            ..SmRoot::default()
        },
        metadata_sm: SmRoot {
            nr_blocks: nr_meta,
            ..SmRoot::default()
        },
        data_mapping_root: 0,
        device_details_root: 0,
        data_block_size,
        metadata_block_size: 8,
        metadata_nr_blocks: nr_meta,
        compat_flags: 0,
        compat_ro_flags: 0,
        incompat_flags: 0,
    };
    let tx = Transaction::build(
        &sb,
        (1..nr_meta).collect(),
        &Devices::new(),
        &BTreeMap::new(),
        &BTreeMap::new(),
    )?;
    tx.commit(dev)
}
