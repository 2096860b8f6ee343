//! Writing persistent-data blocks: btree nodes packed bottom-up (every non-root node at
//! least a third full, thin_check's and cache_check's rule) and space-map bitmap entries.
//! Shared by the thin writer and the cache metadata transactions.

use crate::error::{Error, Result};

use super::block::{put32, put64, seal, BITMAP_CSUM_XOR, BLOCK_SIZE, BTREE_CSUM_XOR};
use super::btree::{max_entries, HEADER_SIZE, INTERNAL_NODE, LEAF_NODE};
use super::space_map::{BITMAP_HEADER, INDEX_ENTRY_SIZE};

/// Hands out free metadata blocks for new nodes.
pub trait Allocator {
    /// The next free block (now in use).
    fn block(&mut self) -> Result<u64>;
}

/// A btree node image.
pub fn node(block: u64, leaf: bool, keys: &[u64], values: &[u8], value_size: usize) -> Vec<u8> {
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

/// Pack sorted `keys`/`values` evenly into as few nodes as hold them (one empty node when
/// `empty_node` and there is nothing), appending (first key, block) to `level`.
#[allow(clippy::too_many_arguments)]
pub fn pack(
    alloc: &mut dyn Allocator,
    out: &mut Vec<(u64, Vec<u8>)>,
    leaf: bool,
    keys: &[u64],
    values: &[u8],
    vs: usize,
    empty_node: bool,
    level: &mut Vec<(u64, u64)>,
) -> Result<()> {
    let max = max_entries(vs);
    let n = keys.len();
    let nodes = if empty_node {
        n.div_ceil(max).max(1)
    } else {
        n.div_ceil(max)
    };
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
    Ok(())
}

/// Internal levels over `level` (first key, block) up to a single root.
pub fn build_internal(
    alloc: &mut dyn Allocator,
    out: &mut Vec<(u64, Vec<u8>)>,
    mut level: Vec<(u64, u64)>,
) -> Result<u64> {
    while level.len() > 1 {
        let keys: Vec<u64> = level.iter().map(|&(k, _)| k).collect();
        let values: Vec<u8> = level.iter().flat_map(|&(_, b)| b.to_le_bytes()).collect();
        level.clear();
        pack(alloc, out, false, &keys, &values, 8, true, &mut level)?;
    }
    level
        .first()
        .map(|&(_, b)| b)
        .ok_or_else(|| Error::invalid("thin-pool metadata", "btree without a root"))
}

/// Build a btree bottom-up over sorted `keys`/`values`; nodes are filled evenly so every
/// non-root node holds at least a third of `max_entries` (thin_check's rule). Returns the
/// root.
pub fn build_tree(
    alloc: &mut dyn Allocator,
    out: &mut Vec<(u64, Vec<u8>)>,
    keys: &[u64],
    values: &[u8],
    value_size: usize,
) -> Result<u64> {
    let mut level = Vec::new();
    pack(alloc, out, true, keys, values, value_size, true, &mut level)?;
    build_internal(alloc, out, level)
}

/// Set entry `e` of a bitmap to `v` (0..=3; the lower bit position holds the high bit).
pub fn set_entry(bitmap: &mut [u8], e: usize, v: u32) {
    let off = BITMAP_HEADER + 8 * (e / 32);
    let mut w = [0; 8];
    w.copy_from_slice(&bitmap[off..off + 8]);
    let mut word = u64::from_le_bytes(w);
    let bit = 2 * (e % 32);
    word |= u64::from(v >> 1 & 1) << bit | u64::from(v & 1) << (bit + 1);
    bitmap[off..off + 8].copy_from_slice(&word.to_le_bytes());
}

/// A sealed space-map bitmap block at `loc` holding `nr_entries` entries whose non-zero
/// counts `used` yields as (entry, count) in ascending entry order, and its index entry
/// (`struct disk_index_entry`: the bitmap, free entries, the first free entry).
pub fn bitmap_block(
    loc: u64,
    nr_entries: u64,
    used: &mut dyn Iterator<Item = (u64, u32)>,
) -> (Vec<u8>, [u8; INDEX_ENTRY_SIZE]) {
    let mut bm = vec![0; BLOCK_SIZE];
    put64(&mut bm, 8, loc);
    let mut n = 0u64;
    let mut first_free = None;
    let mut at = 0u64;
    for (e, c) in used {
        if first_free.is_none() && e > at {
            first_free = Some(at);
        }
        at = e + 1;
        set_entry(&mut bm, usize::try_from(e).unwrap_or(0), c.min(3));
        n += 1;
    }
    seal(&mut bm, BITMAP_CSUM_XOR);
    let mut ie = [0; INDEX_ENTRY_SIZE];
    put64(&mut ie, 0, loc);
    put32(&mut ie, 8, u32::try_from(nr_entries - n).unwrap_or(0));
    put32(
        &mut ie,
        12,
        u32::try_from(first_free.unwrap_or(at)).unwrap_or(0),
    );
    (bm, ie)
}
