//! Writing persistent-data blocks: btree nodes packed bottom-up (every non-root node at
//! least a third full, thin_check's and cache_check's rule) and space-map bitmap entries.
//! Shared by the thin writer and the cache metadata transactions.

use crate::error::{Error, Result};

use super::block::{
    put32, put64, seal, BITMAP_CSUM_XOR, BLOCK_SIZE, BTREE_CSUM_XOR, INDEX_CSUM_XOR,
};
use super::btree::{max_entries, HEADER_SIZE, INTERNAL_NODE, LEAF_NODE};
use super::space_map::{BITMAP_HEADER, ENTRIES_PER_BLOCK, INDEX_BLOCK_HEADER, INDEX_ENTRY_SIZE};

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

/// A btree level packed as its entries arrive in key order: `n` entries spread evenly over
/// as few nodes as hold them (one empty node for none when `empty_node`), each node
/// allocated and written to `out` as soon as it holds its share. Only the node being
/// filled and the level's (first key, block) list are held, so a leaf level of any size
/// streams through.
#[derive(Debug)]
pub struct Packer {
    leaf: bool,
    vs: usize,
    n: usize,
    nodes: usize,
    done: usize,
    pushed: usize,
    keys: Vec<u64>,
    values: Vec<u8>,
    level: Vec<(u64, u64)>,
}

impl Packer {
    /// A level of `n` entries with values of `vs` bytes.
    #[must_use]
    pub fn new(leaf: bool, n: usize, vs: usize, empty_node: bool) -> Packer {
        let nodes = n.div_ceil(max_entries(vs));
        Packer {
            leaf,
            vs,
            n,
            nodes: if empty_node { nodes.max(1) } else { nodes },
            done: 0,
            pushed: 0,
            keys: Vec::new(),
            values: Vec::new(),
            level: Vec::new(),
        }
    }

    /// Entries node `i` takes: the even split (the first `n % nodes` take one more).
    fn share(&self, i: usize) -> usize {
        self.n / self.nodes + usize::from(i < self.n % self.nodes)
    }

    /// The next entry, in key order; `value` is `vs` bytes.
    pub fn push(
        &mut self,
        alloc: &mut dyn Allocator,
        out: &mut Vec<(u64, Vec<u8>)>,
        key: u64,
        value: &[u8],
    ) -> Result<()> {
        if self.pushed >= self.n || value.len() != self.vs {
            return Err(Error::invalid(
                "btree packing",
                format!(
                    "entry {} of a level announced as {} entries of {} bytes ({} given)",
                    self.pushed,
                    self.n,
                    self.vs,
                    value.len()
                ),
            ));
        }
        self.pushed += 1;
        self.keys.push(key);
        self.values.extend_from_slice(value);
        if self.keys.len() == self.share(self.done) {
            self.emit(alloc, out)?;
        }
        Ok(())
    }

    fn emit(&mut self, alloc: &mut dyn Allocator, out: &mut Vec<(u64, Vec<u8>)>) -> Result<()> {
        let b = alloc.block()?;
        out.push((b, node(b, self.leaf, &self.keys, &self.values, self.vs)));
        self.level
            .push((self.keys.first().copied().unwrap_or(0), b));
        self.keys.clear();
        self.values.clear();
        self.done += 1;
        Ok(())
    }

    /// Every entry is in: the (first key, block) of each node, in order.
    pub fn finish(
        mut self,
        alloc: &mut dyn Allocator,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> Result<Vec<(u64, u64)>> {
        if self.pushed != self.n {
            return Err(Error::invalid(
                "btree packing",
                format!(
                    "{} entries given to a level announced as {}",
                    self.pushed, self.n
                ),
            ));
        }
        while self.done < self.nodes {
            self.emit(alloc, out)?; // the empty node of an empty tree
        }
        Ok(self.level)
    }
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
    let mut p = Packer::new(leaf, keys.len(), vs, empty_node);
    for (&k, v) in keys.iter().zip(values.chunks(vs.max(1))) {
        p.push(alloc, out, k, v)?;
    }
    level.extend(p.finish(alloc, out)?);
    Ok(())
}

/// Blocks [`build_tree`] allocates for `n` entries of `value_size` bytes: the leaves and
/// every internal level up to the root.
#[must_use]
pub fn tree_blocks(n: u64, value_size: usize) -> u64 {
    let fanout = max_entries(8) as u64;
    let mut nodes = n.div_ceil(max_entries(value_size) as u64).max(1);
    let mut total = nodes;
    while nodes > 1 {
        nodes = nodes.div_ceil(fanout);
        total += nodes;
    }
    total
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

/// A space map's bitmaps over `nr_blocks` entries, one at each block `locs` yields
/// (`ENTRIES_PER_BLOCK` entries each), from the non-zero counts `counts` yields as (block,
/// count) in ascending block order (counts past `nr_blocks` are left out). Each sealed
/// bitmap goes to `emit` with its index entry, in order.
pub fn bitmaps(
    nr_blocks: u64,
    locs: &mut dyn Iterator<Item = u64>,
    counts: &mut dyn Iterator<Item = (u64, u32)>,
    emit: &mut dyn FnMut(u64, Vec<u8>, [u8; INDEX_ENTRY_SIZE]) -> Result<()>,
) -> Result<()> {
    let mut counts = counts.peekable();
    for (i, loc) in locs.enumerate() {
        let base = u64::try_from(i)
            .unwrap_or(u64::MAX)
            .saturating_mul(ENTRIES_PER_BLOCK);
        let end = nr_blocks.saturating_sub(base).min(ENTRIES_PER_BLOCK);
        while counts.next_if(|&(b, _)| b < base).is_some() {}
        let mut range = std::iter::from_fn(|| {
            counts
                .next_if(|&(b, _)| b - base < end)
                .map(|(b, c)| (b - base, c))
        });
        let (bm, ie) = bitmap_block(loc, end, &mut range);
        emit(loc, bm, ie)?;
    }
    Ok(())
}

/// The metadata space map's index block at `loc` (`struct disk_metadata_index`): the
/// index entries of its bitmaps.
#[must_use]
pub fn index_block(loc: u64, entries: &[[u8; INDEX_ENTRY_SIZE]]) -> Vec<u8> {
    let mut ib = vec![0; BLOCK_SIZE];
    put64(&mut ib, 8, loc);
    let fits = (BLOCK_SIZE - INDEX_BLOCK_HEADER) / INDEX_ENTRY_SIZE;
    for (i, e) in entries.iter().take(fits).enumerate() {
        let off = INDEX_BLOCK_HEADER + INDEX_ENTRY_SIZE * i;
        ib[off..off + INDEX_ENTRY_SIZE].copy_from_slice(e);
    }
    seal(&mut ib, INDEX_CSUM_XOR);
    ib
}
