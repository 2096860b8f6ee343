//! An incremental transaction over committed pool metadata, as persistent-data runs one
//! (dm-transaction-manager.c, dm-btree.c, dm-btree-remove.c, dm-space-map-common.c):
//!
//! - `shadow(block)` copies a committed node into a fresh block once per transaction; a
//!   block allocated in this transaction whose count is 1 is changed in place. A node
//!   whose count is above 1 (shared by a snapshot) is copied and its children each gain a
//!   reference (`dm_tm_shadow_block` + btree's `inc_children`); the original loses one.
//! - Btree insert, remove and delete shadow only the root-to-leaf path of the key they
//!   change. Insert is `btree_insert_raw`, top-down: a full node on the way makes room
//!   first (`btree_split_beneath` at the root; below it `rebalance_or_split`: entries into
//!   an unshared sibling with room, else a split in two or, with a sibling, in three).
//!   Nodes under a third full after a remove merge with or take entries from a sibling, a
//!   root with one child collapses.
//! - Both space maps read a bitmap (and the ref count btree for counts of 3 and more) on
//!   demand and keep the counts of the blocks this transaction touched; a block is handed
//!   out only when both its committed and its current count are 0, so nothing freed in
//!   this transaction is reused before the superblock that frees it is on disk.
//! - The commit writes the changed bitmaps into fresh blocks, updates the data index and
//!   the ref count btrees the same way, the metadata index block last (its own
//!   allocations folded in until nothing more changes), then `dm_tm_commit`'s order:
//!   every new block, flush, superblock, flush.
//!
//! Everything read from the committed metadata passes the checks a walk makes (checksum,
//! `blocknr`, node header, value size, key order, keys inside the parent's range, depth),
//! and a count that would go below zero is corrupt metadata, not a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::block_map::BlockMap;
use crate::error::{Error, Result};

use super::block::{
    corrupt, le32, le64, put32, put64, seal, Kind, BITMAP_CSUM_XOR, BLOCK_SIZE, BTREE_CSUM_XOR,
    INDEX_CSUM_XOR,
};
use super::btree::{
    lookup_cached_from, max_entries, Shape, Start, HEADER_SIZE, INTERNAL_NODE, LEAF_NODE, MAX_DEPTH,
};
use super::cache::BlockCache;
use super::space_map::{
    bitmap_entry, IndexEntry, SmKind, SmRoot, BITMAP_HEADER, ENTRIES_PER_BLOCK, INDEX_BLOCK_HEADER,
    INDEX_ENTRY_SIZE, MAX_METADATA_BITMAPS,
};
use super::superblock::{Superblock, VERSION};
use super::{BlockTime, DeviceDetails, DETAILS_SIZE};

/// What a tree's leaf values are, and what a reference to one holds (`dm_btree_value_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vt {
    /// A device's mapping tree: packed block/time, each naming a data block.
    Mapping,
    /// The top level of the mapping tree: device id to the root of its mapping tree.
    Top,
    /// The device details tree.
    Details,
    /// The data space map's index btree.
    Index,
    /// A space map's ref count btree (counts of 3 and more).
    Count,
}

impl Vt {
    fn size(self) -> usize {
        match self {
            Vt::Mapping | Vt::Top => 8,
            Vt::Details => DETAILS_SIZE,
            Vt::Index => INDEX_ENTRY_SIZE,
            Vt::Count => 4,
        }
    }

    /// `value_type.equal`: an overwrite with an equal value keeps the old one's
    /// reference (a mapping compares its data block only, as `data_block_equal`).
    fn equal(self, a: &[u8], b: &[u8]) -> bool {
        match self {
            Vt::Mapping => {
                BlockTime::unpack(le64(a, 0)).block == BlockTime::unpack(le64(b, 0)).block
            }
            _ => a == b,
        }
    }
}

/// A value found in a btree, as long as its tree's values (a details entry at most).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Val {
    len: usize,
    bytes: [u8; DETAILS_SIZE],
}

const _: () = assert!(INDEX_ENTRY_SIZE <= DETAILS_SIZE);

impl Val {
    fn new(v: &[u8]) -> Val {
        let mut bytes = [0; DETAILS_SIZE];
        bytes[..v.len()].copy_from_slice(v);
        Val {
            len: v.len(),
            bytes,
        }
    }

    /// The value's bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Its first 8 bytes as a little-endian number (a block, a root, a packed mapping).
    #[must_use]
    pub fn le64(&self) -> u64 {
        le64(&self.bytes, 0)
    }
}

/// A btree node held by the transaction (decoded; sealed when written).
#[derive(Clone, Debug)]
struct Node {
    leaf: bool,
    keys: Vec<u64>,
    vals: Vec<u8>,
    vs: usize,
    max: usize,
}

impl Node {
    fn empty(leaf: bool, vs: usize) -> Node {
        Node {
            leaf,
            keys: Vec::new(),
            vals: Vec::new(),
            vs,
            max: max_entries(vs),
        }
    }
    fn len(&self) -> usize {
        self.keys.len()
    }
    fn val(&self, i: usize) -> &[u8] {
        &self.vals[i * self.vs..(i + 1) * self.vs]
    }
    fn child(&self, i: usize) -> u64 {
        le64(self.val(i), 0)
    }
    fn set_val(&mut self, i: usize, v: &[u8]) {
        let vs = self.vs;
        self.vals[i * vs..(i + 1) * vs].copy_from_slice(v);
    }
    fn insert_at(&mut self, i: usize, key: u64, v: &[u8]) {
        self.keys.insert(i, key);
        let at = i * self.vs;
        self.vals.splice(at..at, v.iter().copied());
    }
    fn remove_at(&mut self, i: usize) -> Vec<u8> {
        self.keys.remove(i);
        let at = i * self.vs;
        self.vals.drain(at..at + self.vs).collect()
    }
    /// The index of the last key `<= key`.
    fn lower_bound(&self, key: u64) -> Option<usize> {
        self.keys.partition_point(|&k| k <= key).checked_sub(1)
    }
    /// `has_space_for_insert`: not full, or a full leaf that already holds `key`.
    fn has_space_for_insert(&self, key: u64) -> bool {
        self.len() < self.max || (self.leaf && self.keys.binary_search(&key).is_ok())
    }
    /// Split off entries `at..` into a new node.
    fn split_off(&mut self, at: usize) -> Node {
        Node {
            leaf: self.leaf,
            keys: self.keys.split_off(at),
            vals: self.vals.split_off(at * self.vs),
            vs: self.vs,
            max: self.max,
        }
    }
    fn encode(&self, block: u64) -> Vec<u8> {
        let mut b = vec![0; BLOCK_SIZE];
        put32(&mut b, 4, if self.leaf { LEAF_NODE } else { INTERNAL_NODE });
        put64(&mut b, 8, block);
        put32(&mut b, 16, u32::try_from(self.len()).unwrap_or(0));
        put32(&mut b, 20, u32::try_from(self.max).unwrap_or(0));
        put32(&mut b, 24, u32::try_from(self.vs).unwrap_or(0));
        for (i, &k) in self.keys.iter().enumerate() {
            put64(&mut b, HEADER_SIZE + 8 * i, k);
        }
        let v = HEADER_SIZE + 8 * self.max;
        b[v..v + self.vals.len()].copy_from_slice(&self.vals);
        seal(&mut b, BTREE_CSUM_XOR);
        b
    }
    fn decode(buf: &[u8], shape: &Shape) -> Node {
        let keys = (0..shape.nr_entries).map(|i| shape.key(buf, i)).collect();
        let v = shape.value_at(0);
        Node {
            leaf: shape.leaf,
            keys,
            vals: buf[v..v + shape.nr_entries * shape.value_size].to_vec(),
            vs: shape.value_size,
            max: shape.max_entries,
        }
    }
}

/// A space map's counts in this transaction over its committed bitmaps.
#[derive(Clone, Debug)]
struct Sm {
    kind: SmKind,
    committed: SmRoot,
    index: Vec<IndexEntry>,
    nr_blocks: u64,
    /// Current counts of the blocks this transaction touched.
    counts: BlockMap<u32>,
    allocated: u64,
    /// Where the next free block search starts (`begin`).
    cursor: u64,
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn name(kind: SmKind) -> &'static str {
    match kind {
        SmKind::Data => "data space map",
        SmKind::Metadata => "metadata space map",
    }
}

impl Sm {
    fn open(cache: &BlockCache, root: SmRoot, kind: SmKind, cursor: u64) -> Result<Sm> {
        let sm = super::space_map::SpaceMap::open(cache.dev(), root, kind)?;
        Ok(Sm {
            kind,
            committed: root,
            index: sm.index,
            nr_blocks: root.nr_blocks,
            counts: BlockMap::default(),
            allocated: root.nr_allocated,
            cursor,
        })
    }

    fn bitmap(&self, cache: &BlockCache, i: usize) -> Result<Option<Arc<super::cache::Cached>>> {
        match self.index.get(i) {
            Some(e) => Ok(Some(cache.get(e.blocknr, Kind::Bitmap)?)),
            None => Ok(None),
        }
    }

    fn committed_count(&self, cache: &BlockCache, b: u64) -> Result<u32> {
        let i = usize_of(b / ENTRIES_PER_BLOCK);
        let Some(bm) = self.bitmap(cache, i)? else {
            return Ok(0);
        };
        let n = bitmap_entry(&bm.bytes, usize_of(b % ENTRIES_PER_BLOCK));
        if n < 3 {
            return Ok(n);
        }
        let root = self.committed.ref_count_root;
        match super::btree::lookup_cached(cache, root, b, 4)? {
            Some(f) => Ok(le32(f.value(4), 0)),
            None => Err(corrupt(
                "space map ref count",
                root,
                0,
                format_args!("block {b} has count 3+ in its bitmap but no ref count entry"),
            )),
        }
    }

    fn count(&self, cache: &BlockCache, b: u64) -> Result<u32> {
        if b >= self.nr_blocks {
            return Err(corrupt(
                name(self.kind),
                0,
                0,
                format_args!("block {b} is beyond its {} blocks", self.nr_blocks),
            ));
        }
        match self.counts.get(&b) {
            Some(&c) => Ok(c),
            None => self.committed_count(cache, b),
        }
    }

    fn set(&mut self, cache: &BlockCache, b: u64, new: u32) -> Result<()> {
        let old = self.count(cache, b)?;
        match (old == 0, new == 0) {
            (true, false) => self.allocated += 1,
            (false, true) => self.allocated = self.allocated.saturating_sub(1),
            _ => {}
        }
        self.counts.insert(b, new);
        Ok(())
    }

    fn inc(&mut self, cache: &BlockCache, b: u64) -> Result<()> {
        let c = self.count(cache, b)?;
        self.set(cache, b, c.saturating_add(1))
    }

    /// Drop one count; whether the block is free now.
    fn dec(&mut self, cache: &BlockCache, b: u64) -> Result<bool> {
        let c = self.count(cache, b)?;
        if c == 0 {
            return Err(corrupt(
                name(self.kind),
                0,
                0,
                format_args!("block {b} loses a reference it does not have (count 0)"),
            ));
        }
        self.set(cache, b, c - 1)?;
        Ok(c == 1)
    }

    /// `sm_ll_find_common_free_block` from the cursor, wrapping once: a block free in the
    /// committed map and now.
    fn alloc(&mut self, cache: &BlockCache) -> Result<Option<u64>> {
        let n = self.nr_blocks;
        let begin = self.cursor.min(n);
        for (lo, hi) in [(begin, n), (0, begin)] {
            if let Some(b) = self.find_free(cache, lo, hi)? {
                self.set(cache, b, 1)?;
                self.cursor = b + 1;
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    fn find_free(&self, cache: &BlockCache, lo: u64, hi: u64) -> Result<Option<u64>> {
        let mut b = lo;
        while b < hi {
            let i = usize_of(b / ENTRIES_PER_BLOCK);
            let end = ((b / ENTRIES_PER_BLOCK + 1) * ENTRIES_PER_BLOCK).min(hi);
            // A bitmap's free count covers the blocks the committed map had; blocks added
            // by a growth in this transaction are free whatever it says.
            let grown = (b / ENTRIES_PER_BLOCK + 1) * ENTRIES_PER_BLOCK > self.committed.nr_blocks
                && self.nr_blocks > self.committed.nr_blocks;
            let bm = match self.index.get(i) {
                Some(e) if e.nr_free == 0 && !grown => {
                    b = end;
                    continue;
                }
                Some(_) => self.bitmap(cache, i)?,
                None => None,
            };
            for x in b..end {
                let e = usize_of(x % ENTRIES_PER_BLOCK);
                let committed_free = bm.as_ref().is_none_or(|bm| {
                    let word = le64(&bm.bytes, BITMAP_HEADER + 8 * (e / 32));
                    word >> (2 * (e % 32)) & 3 == 0
                });
                if committed_free && self.counts.get(&x).is_none_or(|&c| c == 0) {
                    return Ok(Some(x));
                }
            }
            b = end;
        }
        Ok(None)
    }

    /// Bitmaps whose entries changed (and bitmaps added by growth), in order.
    fn dirty_bitmaps(&self) -> BTreeSet<usize> {
        let mut d: BTreeSet<usize> = self
            .counts
            .keys()
            .map(|&b| usize_of(b / ENTRIES_PER_BLOCK))
            .collect();
        // Growth: the last committed bitmap (its free count) and every new one.
        let want = usize_of(self.nr_blocks.div_ceil(ENTRIES_PER_BLOCK));
        if self.nr_blocks > self.committed.nr_blocks {
            d.extend(usize_of(self.committed.nr_blocks / ENTRIES_PER_BLOCK)..want);
        }
        d.extend(self.index.len()..want);
        d
    }

    /// The ref count btree changes: (block, Some(count >= 3)) to store, (block, None) to
    /// remove.
    fn overflow_changes(&self, cache: &BlockCache) -> Result<Vec<(u64, Option<u32>)>> {
        let mut out = Vec::new();
        let mut keys: Vec<u64> = self.counts.keys().copied().collect();
        keys.sort_unstable();
        for b in keys {
            let new = self.counts[&b];
            let old = self.committed_count(cache, b)?;
            if new >= 3 && new != old {
                out.push((b, Some(new)));
            } else if new < 3 && old >= 3 {
                out.push((b, None));
            }
        }
        Ok(out)
    }

    /// The touched blocks' counts by bitmap.
    fn by_bitmap(&self) -> BTreeMap<usize, Vec<(u64, u32)>> {
        let mut out: BTreeMap<usize, Vec<(u64, u32)>> = BTreeMap::new();
        for (&b, &c) in &self.counts {
            out.entry(usize_of(b / ENTRIES_PER_BLOCK))
                .or_default()
                .push((b, c));
        }
        out
    }

    /// Bitmap `i` with `counts` (its touched blocks' counts), stored at `loc`, and its
    /// index entry.
    fn render(
        &self,
        cache: &BlockCache,
        i: usize,
        counts: &[(u64, u32)],
        loc: u64,
    ) -> Result<(Vec<u8>, IndexEntry)> {
        let mut bm = match self.bitmap(cache, i)? {
            Some(c) => c.bytes.to_vec(),
            None => vec![0; BLOCK_SIZE],
        };
        let base = u64::try_from(i).unwrap_or(u64::MAX) * ENTRIES_PER_BLOCK;
        let end = usize_of(self.nr_blocks.saturating_sub(base).min(ENTRIES_PER_BLOCK));
        for &(b, c) in counts {
            set_entry(&mut bm, usize_of(b - base), c.min(3));
        }
        put64(&mut bm, 8, loc);
        let (mut nr_free, mut first) = (0u32, None);
        for e in 0..end {
            if bitmap_entry(&bm, e) == 0 {
                nr_free += 1;
                first.get_or_insert(e);
            }
        }
        seal(&mut bm, BITMAP_CSUM_XOR);
        let entry = IndexEntry {
            blocknr: loc,
            nr_free,
            none_free_before: u32::try_from(first.unwrap_or(end)).unwrap_or(0),
        };
        Ok((bm, entry))
    }
}

/// Set entry `e` of a bitmap to `v` (0..=3; the lower bit position holds the high bit).
fn set_entry(bitmap: &mut [u8], e: usize, v: u32) {
    let off = BITMAP_HEADER + 8 * (e / 32);
    let mut word = le64(bitmap, off);
    let bit = 2 * (e % 32);
    word &= !(3u64 << bit);
    word |= u64::from(v >> 1 & 1) << bit | u64::from(v & 1) << (bit + 1);
    put64(bitmap, off, word);
}

fn index_entry_bytes(e: &IndexEntry) -> [u8; INDEX_ENTRY_SIZE] {
    let mut b = [0; INDEX_ENTRY_SIZE];
    put64(&mut b, 0, e.blocknr);
    put32(&mut b, 8, e.nr_free);
    put32(&mut b, 12, e.none_free_before);
    b
}

/// Key range a node must keep its keys in.
type Range = (u64, Option<u64>);

/// A full node an insert passes below the root: entry `pi` of (shadowed) parent `p`,
/// whose keys lie in `prange`, at `depth`, on the way to `key` of a `vt` tree.
#[derive(Clone, Copy)]
struct Full {
    p: u64,
    pi: usize,
    cur: u64,
    vt: Vt,
    key: u64,
    prange: Range,
    depth: usize,
}

/// The range of entry `j`'s child of node `n`, whose own keys lie in `range`.
fn child_range(n: &Node, j: usize, range: Range) -> Range {
    (n.keys[j], n.keys.get(j + 1).copied().or(range.1))
}

/// `redistribute2` / `redistribute3`: the nodes' entries, in order, shared out so that
/// node `i` of `k` gets a `1 / (k - i)` share of what the ones before it left.
fn redistribute(nodes: &mut [&mut Node]) {
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    for n in nodes.iter_mut() {
        keys.append(&mut n.keys);
        vals.append(&mut n.vals);
    }
    let (k, vs) = (nodes.len(), nodes[0].vs);
    let mut left = keys.len();
    let mut at = 0;
    for (i, n) in nodes.iter_mut().enumerate() {
        let take = left / (k - i);
        n.keys.extend_from_slice(&keys[at..at + take]);
        n.vals.extend_from_slice(&vals[at * vs..(at + take) * vs]);
        at += take;
        left -= take;
    }
}

/// A walk's checks on a node reached at `depth` through a parent whose entry gives
/// `range`: keys inside it, an internal node not empty.
fn check_node(n: &Node, b: u64, range: Range, depth: usize) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(corrupt(
            "btree depth",
            b,
            0,
            format_args!("tree deeper than {MAX_DEPTH} levels"),
        ));
    }
    if let (Some(&first), Some(&last)) = (n.keys.first(), n.keys.last()) {
        let (lo, hi) = range;
        if first < lo || hi.is_some_and(|h| last >= h) {
            return Err(corrupt(
                "btree node keys",
                b,
                HEADER_SIZE,
                format_args!(
                    "keys {first}..={last} outside the parent's range {lo}..{}",
                    hi.map_or_else(String::new, |h| h.to_string())
                ),
            ));
        }
    }
    if !n.leaf && n.keys.is_empty() {
        return Err(corrupt(
            "btree node nr_entries",
            b,
            16,
            "internal node without entries",
        ));
    }
    Ok(())
}

/// One transaction on a pool's metadata.
#[derive(Clone, Debug)]
pub struct Tx {
    cache: Arc<BlockCache>,
    meta: Sm,
    data: Sm,
    /// Nodes allocated in this transaction.
    nodes: BlockMap<Node>,
    /// Other blocks to write (a metadata snapshot's superblock copy).
    raw: BlockMap<Vec<u8>>,
    /// The superblock being built (roots, time, transaction id, held root).
    pub sb: Superblock,
}

/// What a commit wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Metadata blocks written besides the superblock.
    pub blocks: usize,
}

impl Tx {
    /// Begin a transaction on the metadata `sb` describes, read through `cache`; the data
    /// block search starts at `data_cursor`.
    pub fn begin(cache: Arc<BlockCache>, sb: &Superblock, data_cursor: u64) -> Result<Tx> {
        if sb.metadata_sm.nr_blocks.div_ceil(ENTRIES_PER_BLOCK) > MAX_METADATA_BITMAPS {
            return Err(Error::invalid(
                "thin-pool metadata",
                format!(
                    "{} blocks need more than {MAX_METADATA_BITMAPS} bitmaps",
                    sb.metadata_sm.nr_blocks
                ),
            ));
        }
        let meta = Sm::open(&cache, sb.metadata_sm, SmKind::Metadata, 0)?;
        let data = Sm::open(&cache, sb.data_sm, SmKind::Data, data_cursor)?;
        Ok(Tx {
            cache,
            meta,
            data,
            nodes: BlockMap::default(),
            raw: BlockMap::default(),
            sb: sb.clone(),
        })
    }

    /// Where the next data block search starts.
    #[must_use]
    pub fn data_cursor(&self) -> u64 {
        self.data.cursor
    }

    /// Data blocks with no reference now.
    #[must_use]
    pub fn data_free(&self) -> u64 {
        self.data.nr_blocks.saturating_sub(self.data.allocated)
    }

    /// Data blocks the space map covers.
    #[must_use]
    pub fn data_blocks(&self) -> u64 {
        self.data.nr_blocks
    }

    /// Grow the data space map to `nr` blocks (`sm_ll_extend`).
    pub fn extend_data(&mut self, nr: u64) {
        self.data.nr_blocks = self.data.nr_blocks.max(nr);
    }

    /// A data block's count now.
    pub fn data_count(&self, b: u64) -> Result<u32> {
        self.data.count(&self.cache, b)
    }

    /// Allocate a data block (count 1), or `None` when none is free.
    pub fn alloc_data(&mut self) -> Result<Option<u64>> {
        self.data.alloc(&self.cache)
    }

    /// Drop one reference to data block `b`; whether it is free now.
    pub fn dec_data(&mut self, b: u64) -> Result<bool> {
        self.data.dec(&self.cache, b)
    }

    fn alloc_meta(&mut self) -> Result<u64> {
        self.meta.alloc(&self.cache)?.ok_or(Error::NoSpace {
            target: "thin-pool metadata",
        })
    }

    fn dec_meta(&mut self, b: u64) -> Result<()> {
        if self.meta.dec(&self.cache, b)? {
            self.nodes.remove(&b);
            self.raw.remove(&b);
        }
        Ok(())
    }

    /// Node `b` of a `vt` tree, its keys checked to lie in `range`, at `depth`.
    fn fetch(&self, b: u64, vt: Vt, range: Range, depth: usize) -> Result<Node> {
        if depth >= MAX_DEPTH {
            return Err(corrupt(
                "btree depth",
                b,
                0,
                format_args!("tree deeper than {MAX_DEPTH} levels"),
            ));
        }
        let n = match self.nodes.get(&b) {
            Some(n) => n.clone(),
            None => {
                let c = self.cache.get(b, Kind::BtreeNode)?;
                let shape = c
                    .shape
                    .ok_or_else(|| corrupt(Kind::BtreeNode.name(), b, 0, "not a btree node"))?;
                shape.expect(b, vt.size())?;
                Node::decode(&c.bytes, &shape)
            }
        };
        check_node(&n, b, range, depth)?;
        Ok(n)
    }

    /// One more reference to each of `n`'s children (a shared node was copied).
    fn inc_children(&mut self, n: &Node, vt: Vt) -> Result<()> {
        for i in 0..n.len() {
            if !n.leaf {
                self.meta.inc(&self.cache, n.child(i))?;
                continue;
            }
            match vt {
                Vt::Mapping => {
                    let bt = BlockTime::unpack(le64(n.val(i), 0));
                    self.data.inc(&self.cache, bt.block)?;
                }
                Vt::Top => self.meta.inc(&self.cache, le64(n.val(i), 0))?,
                Vt::Details | Vt::Index | Vt::Count => {}
            }
        }
        Ok(())
    }

    /// A leaf value of a `vt` tree loses its reference (`value_type.dec`).
    fn dec_value(&mut self, vt: Vt, v: &[u8]) -> Result<()> {
        match vt {
            Vt::Mapping => {
                self.data
                    .dec(&self.cache, BlockTime::unpack(le64(v, 0)).block)?;
            }
            Vt::Top => self.del(le64(v, 0), Vt::Mapping)?,
            Vt::Details | Vt::Index | Vt::Count => {}
        }
        Ok(())
    }

    /// `dm_tm_shadow_block` for node `b` (already fetched as `n`): the block to change.
    fn shadow(&mut self, b: u64, n: Node, vt: Vt) -> Result<u64> {
        let shared = self.meta.count(&self.cache, b)? > 1;
        if !shared && self.nodes.contains_key(&b) {
            return Ok(b);
        }
        if shared {
            self.inc_children(&n, vt)?;
        }
        let nb = self.alloc_meta()?;
        self.dec_meta(b)?;
        self.nodes.insert(nb, n);
        Ok(nb)
    }

    fn new_node(&mut self, n: Node) -> Result<u64> {
        let b = self.alloc_meta()?;
        self.nodes.insert(b, n);
        Ok(b)
    }

    /// An empty tree (`dm_btree_empty`): one empty leaf.
    pub fn empty_tree(&mut self, vt: Vt) -> Result<u64> {
        self.new_node(Node::empty(true, vt.size()))
    }

    /// `dm_btree_lookup`: the value of `key`. Nodes this transaction holds are read in
    /// place; below the first committed node on the path (everything under it is
    /// committed too) the descent goes through the block cache as a committed lookup
    /// does, with the same checks.
    pub fn lookup(&self, root: u64, vt: Vt, key: u64) -> Result<Option<Val>> {
        let (mut b, mut range) = (root, (0, None));
        for depth in 0..MAX_DEPTH {
            let Some(n) = self.nodes.get(&b) else {
                let start = Start { range, depth };
                let found = lookup_cached_from(&self.cache, b, key, vt.size(), start)?;
                return Ok(found.map(|f| Val::new(f.value(vt.size()))));
            };
            check_node(n, b, range, depth)?;
            if n.leaf {
                return Ok(n.keys.binary_search(&key).ok().map(|i| Val::new(n.val(i))));
            }
            let Some(i) = n.lower_bound(key) else {
                return Ok(None);
            };
            range = child_range(n, i, range);
            b = n.child(i);
        }
        Err(corrupt(
            "btree depth",
            b,
            0,
            format_args!("tree deeper than {MAX_DEPTH} levels"),
        ))
    }

    /// `dm_btree_find_highest_key`.
    pub fn highest(&self, root: u64, vt: Vt) -> Result<Option<u64>> {
        let (mut b, mut range) = (root, (0, None));
        for depth in 0..=MAX_DEPTH {
            let n = self.fetch(b, vt, range, depth)?;
            let Some(i) = n.len().checked_sub(1) else {
                return Ok(None);
            };
            if n.leaf {
                return Ok(Some(n.keys[i]));
            }
            range = (n.keys[i], range.1);
            b = n.child(i);
        }
        Err(corrupt("btree depth", root, 0, "lookup too deep"))
    }

    /// `dm_btree_insert`: store `value` at `key` (an old value loses its reference unless
    /// equal); the new root and the old value.
    pub fn insert(
        &mut self,
        root: u64,
        vt: Vt,
        key: u64,
        value: &[u8],
    ) -> Result<(u64, Option<Vec<u8>>)> {
        self.insert_levels(root, &[(key, vt)], value, true)
    }

    /// dm-btree.c's `insert` over `levels` (key and value type per level: a two-level
    /// mapping tree is `[(dev, Top), (block, Mapping)]`), one shadow spine from the top
    /// root to the bottom leaf; a missing key on an upper level gets an empty subtree.
    /// `drop_old`: an overwritten value that differs loses its reference. The new top
    /// root and the old value.
    fn insert_levels(
        &mut self,
        root: u64,
        levels: &[(u64, Vt)],
        value: &[u8],
        drop_old: bool,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let mut parent = None;
        let mut block = root;
        let mut new_root = None;
        for (level, &(key, vt)) in levels.iter().enumerate() {
            let (sub_root, leaf, i) = self.insert_raw(block, vt, key, parent)?;
            new_root.get_or_insert(sub_root);
            let mut n = self.nodes.remove(&leaf).ok_or_else(|| missing(leaf))?;
            let present = n.keys.get(i) == Some(&key);
            if level + 1 < levels.len() {
                if !present {
                    let t = self.empty_tree(levels[level + 1].1)?;
                    n.insert_at(i, key, &t.to_le_bytes());
                }
                block = n.child(i);
                self.nodes.insert(leaf, n);
                parent = Some((leaf, i));
                continue;
            }
            let mut old = None;
            if present {
                let o = n.val(i).to_vec();
                n.set_val(i, value);
                self.nodes.insert(leaf, n);
                if drop_old && !vt.equal(&o, value) {
                    self.dec_value(vt, &o)?;
                }
                old = Some(o);
            } else {
                n.insert_at(i, key, value);
                self.nodes.insert(leaf, n);
            }
            return Ok((new_root.unwrap_or(sub_root), old));
        }
        Err(Error::invalid(
            "thin-pool metadata",
            "btree insert without a key",
        ))
    }

    /// `btree_insert_raw`: shadow the path from `root` to the leaf `key` belongs in,
    /// making room in every full node on the way down (`btree_split_beneath` at the root,
    /// `rebalance_or_split` below it); `parent` is the node (already shadowed) and entry
    /// pointing at `root` when this tree hangs under another level. The shadowed root,
    /// the leaf and the index where `key` is or goes.
    fn insert_raw(
        &mut self,
        root: u64,
        vt: Vt,
        key: u64,
        mut parent: Option<(u64, usize)>,
    ) -> Result<(u64, u64, usize)> {
        let (mut b, mut range) = (root, (0, None));
        let mut prange: Range = (0, None);
        let mut top = true;
        let mut new_root = None;
        for depth in 0..=MAX_DEPTH {
            let mut cur = self.shadow_at(b, vt, range, depth)?;
            new_root.get_or_insert(cur);
            if let Some((p, pi)) = parent {
                self.node_mut(p)?.set_val(pi, &cur.to_le_bytes());
            }
            if !self.node(cur)?.has_space_for_insert(key) {
                if top {
                    self.split_beneath(cur)?;
                } else if let Some((p, pi)) = parent {
                    let full = Full {
                        p,
                        pi,
                        cur,
                        vt,
                        key,
                        prange,
                        depth,
                    };
                    cur = self.rebalance_or_split(full)?;
                    // The node the key belongs in may be a sibling now: its range is
                    // its entry's in the parent.
                    let pn = self.node(p)?;
                    let ci = pn.lower_bound(key).unwrap_or(0);
                    range = child_range(pn, ci, prange);
                }
            }
            let n = self.node_mut(cur)?;
            let lb = n.lower_bound(key);
            if n.leaf {
                let i = match lb {
                    Some(i) if n.keys[i] == key => i,
                    Some(i) => i + 1,
                    None => 0,
                };
                return Ok((new_root.unwrap_or(cur), cur, i));
            }
            let i = match lb {
                Some(i) => i,
                None => {
                    // Change the bounds on the lowest key.
                    n.keys[0] = key;
                    range.0 = range.0.min(key);
                    0
                }
            };
            prange = range;
            range = (n.keys[i], n.keys.get(i + 1).copied().or(range.1));
            b = n.child(i);
            parent = Some((cur, i));
            top = false;
        }
        Err(corrupt("btree depth", root, 0, "insert too deep"))
    }

    /// Fetch node `b` (checked) and shadow it: the block to change.
    fn shadow_at(&mut self, b: u64, vt: Vt, range: Range, depth: usize) -> Result<u64> {
        if let Some(n) = self.nodes.get(&b) {
            if self.meta.count(&self.cache, b)? <= 1 {
                check_node(n, b, range, depth)?;
                return Ok(b);
            }
        }
        let n = self.fetch(b, vt, range, depth)?;
        self.shadow(b, n, vt)
    }

    /// `shadow_child`: shadow entry `j` of (shadowed) node `p`, whose own keys lie in
    /// `prange`, and point `p` at the copy.
    fn shadow_child(
        &mut self,
        p: u64,
        j: usize,
        vt: Vt,
        prange: Range,
        depth: usize,
    ) -> Result<u64> {
        let pn = self.node(p)?;
        let (b, crange) = (pn.child(j), child_range(pn, j, prange));
        let nb = self.shadow_at(b, vt, crange, depth)?;
        self.node_mut(p)?.set_val(j, &nb.to_le_bytes());
        Ok(nb)
    }

    fn node(&self, b: u64) -> Result<&Node> {
        self.nodes.get(&b).ok_or_else(|| missing(b))
    }

    fn node_mut(&mut self, b: u64) -> Result<&mut Node> {
        self.nodes.get_mut(&b).ok_or_else(|| missing(b))
    }

    /// Two held nodes, taken out of the map to change together; `put2` returns them.
    fn take2(&mut self, a: u64, b: u64) -> Result<(Node, Node)> {
        let x = self.nodes.remove(&a).ok_or_else(|| missing(a))?;
        match self.nodes.remove(&b) {
            Some(y) => Ok((x, y)),
            None => {
                self.nodes.insert(a, x);
                Err(missing(b))
            }
        }
    }

    fn put2(&mut self, (a, x): (u64, Node), (b, y): (u64, Node)) {
        self.nodes.insert(a, x);
        self.nodes.insert(b, y);
    }

    /// `btree_split_beneath`: the full root `r` keeps its block and becomes an internal
    /// node over two new children holding its lower and upper halves.
    fn split_beneath(&mut self, r: u64) -> Result<()> {
        let mut n = self.nodes.remove(&r).ok_or_else(|| missing(r))?;
        let right = n.split_off(n.len() / 2);
        let (lk, rk) = (n.keys.first().copied(), right.keys.first().copied());
        let lb = self.new_node(n)?;
        let rb = self.new_node(right)?;
        let mut root = Node::empty(false, 8);
        root.insert_at(0, lk.unwrap_or(0), &lb.to_le_bytes());
        root.insert_at(1, rk.unwrap_or(0), &rb.to_le_bytes());
        self.nodes.insert(r, root);
        Ok(())
    }

    /// `rebalance_or_split`: make room in full node `cur`, entry `pi` of `p` (whose keys
    /// lie in `prange`): move entries into the left sibling, else the right one, when
    /// it is not shared and has at least `SPACE_THRESHOLD` free entries; else split it
    /// in two (at either end of the parent, next to a shared sibling, or under a parent
    /// of at most two entries) or split it and a sibling into three. The node `key`
    /// belongs in now.
    fn rebalance_or_split(&mut self, f: Full) -> Result<u64> {
        let (p, pi, cur, vt, key) = (f.p, f.pi, f.cur, f.vt, f.key);
        let (prange, depth) = (f.prange, f.depth);
        const SPACE_THRESHOLD: usize = 8;
        let nr_parent = self.node(p)?.len();
        let (mut left_shared, mut right_shared) = (false, false);
        for (j, left) in [(pi.checked_sub(1), true), (Some(pi + 1), false)] {
            let Some(j) = j.filter(|&j| j < nr_parent) else {
                continue;
            };
            let pn = self.node(p)?;
            let (sb, srange) = (pn.child(j), child_range(pn, j, prange));
            let shared = self.meta.count(&self.cache, sb)? > 1;
            if left {
                left_shared = shared;
            } else {
                right_shared = shared;
            }
            if shared {
                continue;
            }
            let free = match self.nodes.get(&sb) {
                Some(s) => s.max.saturating_sub(s.len()),
                None => {
                    let s = self.fetch(sb, vt, srange, depth)?;
                    s.max.saturating_sub(s.len())
                }
            };
            if free >= SPACE_THRESHOLD {
                let sib = self.shadow_child(p, j, vt, prange, depth)?;
                let (l, r) = if left { (sib, cur) } else { (cur, sib) };
                let (mut ln, mut rn) = self.take2(l, r)?;
                redistribute(&mut [&mut ln, &mut rn]);
                let first = rn.keys.first().copied().unwrap_or(0);
                self.put2((l, ln), (r, rn));
                self.node_mut(p)?.keys[if left { pi } else { pi + 1 }] = first;
                return Ok(if key < first { l } else { r });
            }
        }
        if left_shared || right_shared || nr_parent <= 2 || pi == 0 || pi + 1 == nr_parent {
            self.split_one_into_two(p, pi, cur, key)
        } else {
            self.split_two_into_three(f)
        }
    }

    /// `split_one_into_two`: the upper half of `cur` (entry `pi` of `p`) moves to a new
    /// right sibling.
    fn split_one_into_two(&mut self, p: u64, pi: usize, cur: u64, key: u64) -> Result<u64> {
        let template = self.node(cur)?;
        let right = Node::empty(template.leaf, template.vs);
        let rb = self.new_node(right)?;
        let (mut ln, mut rn) = self.take2(cur, rb)?;
        redistribute(&mut [&mut ln, &mut rn]);
        let first = rn.keys.first().copied().unwrap_or(0);
        self.put2((cur, ln), (rb, rn));
        self.node_mut(p)?
            .insert_at(pi + 1, first, &rb.to_le_bytes());
        Ok(if key < first { cur } else { rb })
    }

    /// `split_two_into_three`: `cur` (entry `pi` of `p`) and its left sibling (its right
    /// one when `cur` is the first) share their entries with a new node between them.
    fn split_two_into_three(&mut self, f: Full) -> Result<u64> {
        let (p, pi, key) = (f.p, f.pi, f.key);
        let (middle_index, l, r) = if pi == 0 {
            let r = self.shadow_child(p, pi + 1, f.vt, f.prange, f.depth)?;
            (1, f.cur, r)
        } else {
            let l = self.shadow_child(p, pi - 1, f.vt, f.prange, f.depth)?;
            (pi, l, f.cur)
        };
        let template = self.node(l)?;
        let middle = Node::empty(template.leaf, template.vs);
        let mb = self.new_node(middle)?;
        let (mut ln, mut rn) = self.take2(l, r)?;
        let mut mn = self.nodes.remove(&mb).ok_or_else(|| missing(mb))?;
        redistribute(&mut [&mut ln, &mut mn, &mut rn]);
        let (mk, rk) = (
            mn.keys.first().copied().unwrap_or(0),
            rn.keys.first().copied().unwrap_or(0),
        );
        self.put2((l, ln), (r, rn));
        self.nodes.insert(mb, mn);
        let pn = self.node_mut(p)?;
        pn.keys[middle_index] = rk;
        pn.insert_at(middle_index, mk, &mb.to_le_bytes());
        Ok(if key < mk {
            l
        } else if key < rk {
            mb
        } else {
            r
        })
    }

    /// `dm_btree_remove`: the new root and the removed value (its reference dropped);
    /// nothing changes when `key` is not there.
    pub fn remove(&mut self, root: u64, vt: Vt, key: u64) -> Result<(u64, Option<Vec<u8>>)> {
        if self.lookup(root, vt, key)?.is_none() {
            return Ok((root, None));
        }
        let (mut nb, old) = self.remove_rec(root, vt, key, (0, None), 0)?;
        // A root left with one child collapses onto it.
        loop {
            let n = self.nodes.get(&nb).ok_or_else(|| missing(nb))?;
            if n.leaf || n.len() != 1 {
                break;
            }
            let child = n.child(0);
            self.dec_meta(nb)?;
            nb = child;
            if !self.nodes.contains_key(&nb) {
                break;
            }
        }
        Ok((nb, old))
    }

    fn remove_rec(
        &mut self,
        b: u64,
        vt: Vt,
        key: u64,
        range: Range,
        depth: usize,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let n = self.fetch(b, vt, range, depth)?;
        let nb = self.shadow(b, n, vt)?;
        let mut n = self.nodes.remove(&nb).ok_or_else(|| missing(nb))?;
        if n.leaf {
            let old = match n.keys.binary_search(&key) {
                Ok(i) => Some(n.remove_at(i)),
                Err(_) => None,
            };
            self.nodes.insert(nb, n);
            if let Some(o) = &old {
                self.dec_value(vt, o)?;
            }
            return Ok((nb, old));
        }
        let Some(i) = n.lower_bound(key) else {
            self.nodes.insert(nb, n);
            return Ok((nb, None));
        };
        let crange = (n.keys[i], n.keys.get(i + 1).copied().or(range.1));
        let child = n.child(i);
        self.nodes.insert(nb, n);
        let (cb, old) = self.remove_rec(child, vt, key, crange, depth + 1)?;
        let mut n = self.nodes.remove(&nb).ok_or_else(|| missing(nb))?;
        n.set_val(i, &cb.to_le_bytes());
        let short = {
            let c = self.nodes.get(&cb).ok_or_else(|| missing(cb))?;
            c.len() < c.max / 3
        };
        if short && n.len() > 1 {
            self.rebalance(&mut n, i, vt, range, depth)?;
        }
        self.nodes.insert(nb, n);
        Ok((nb, old))
    }

    /// Child `i` of `p` is under a third full: merge it with a sibling, or share their
    /// entries evenly (dm-btree-remove.c's rebalance2).
    fn rebalance(
        &mut self,
        p: &mut Node,
        i: usize,
        vt: Vt,
        range: Range,
        depth: usize,
    ) -> Result<()> {
        let (l, r) = if i + 1 < p.len() {
            (i, i + 1)
        } else {
            (i - 1, i)
        };
        let mut blocks = [0u64; 2];
        for (slot, j) in [l, r].into_iter().enumerate() {
            let b = p.child(j);
            let crange = (p.keys[j], p.keys.get(j + 1).copied().or(range.1));
            let n = self.fetch(b, vt, crange, depth + 1)?;
            let nb = self.shadow(b, n, vt)?;
            p.set_val(j, &nb.to_le_bytes());
            blocks[slot] = nb;
        }
        let mut left = self
            .nodes
            .remove(&blocks[0])
            .ok_or_else(|| missing(blocks[0]))?;
        let mut right = self
            .nodes
            .remove(&blocks[1])
            .ok_or_else(|| missing(blocks[1]))?;
        let total = left.len() + right.len();
        if total <= left.max {
            left.keys.append(&mut right.keys);
            left.vals.append(&mut right.vals);
            self.nodes.insert(blocks[0], left);
            self.nodes.insert(blocks[1], right);
            p.remove_at(r);
            self.dec_meta(blocks[1])?;
        } else {
            let want_left = total / 2;
            if left.len() > want_left {
                let mut moved = left.split_off(want_left);
                moved.keys.append(&mut right.keys);
                moved.vals.append(&mut right.vals);
                right.keys = moved.keys;
                right.vals = moved.vals;
            } else {
                let take = want_left - left.len();
                let rest = right.split_off(take);
                left.keys.append(&mut right.keys);
                left.vals.append(&mut right.vals);
                right = rest;
            }
            p.keys[r] = right.keys[0];
            self.nodes.insert(blocks[0], left);
            self.nodes.insert(blocks[1], right);
        }
        Ok(())
    }

    /// `dm_btree_del`: drop one reference to the tree at `root`; a node that was not
    /// shared goes, with the references its entries hold.
    pub fn del(&mut self, root: u64, vt: Vt) -> Result<()> {
        self.del_rec(root, vt, (0, None), 0)
    }

    fn del_rec(&mut self, b: u64, vt: Vt, range: Range, depth: usize) -> Result<()> {
        if self.meta.count(&self.cache, b)? > 1 {
            return self.dec_meta(b);
        }
        let n = self.fetch(b, vt, range, depth)?;
        for i in 0..n.len() {
            if n.leaf {
                self.dec_value(vt, n.val(i))?;
            } else {
                let crange = (n.keys[i], n.keys.get(i + 1).copied().or(range.1));
                self.del_rec(n.child(i), vt, crange, depth + 1)?;
            }
        }
        self.dec_meta(b)
    }

    /// One more reference to metadata block `b` (`dm_tm_inc`: a snapshot shares a tree).
    pub fn inc_meta(&mut self, b: u64) -> Result<()> {
        self.meta.inc(&self.cache, b)
    }

    // The pool's trees.

    /// The mapping tree root of device `id`.
    pub fn device_root(&self, id: u64) -> Result<Option<u64>> {
        Ok(self
            .lookup(self.sb.data_mapping_root, Vt::Top, id)?
            .map(|v| v.le64()))
    }

    /// The mapping of `vblock` in device `id`.
    pub fn find_block(&self, id: u64, vblock: u64) -> Result<Option<BlockTime>> {
        let Some(root) = self.device_root(id)? else {
            return Ok(None);
        };
        Ok(self
            .lookup(root, Vt::Mapping, vblock)?
            .map(|v| BlockTime::unpack(v.le64())))
    }

    /// The highest mapped block of device `id`.
    pub fn highest_block(&self, id: u64) -> Result<Option<u64>> {
        match self.device_root(id)? {
            Some(root) => self.highest(root, Vt::Mapping),
            None => Ok(None),
        }
    }

    /// Point device `id` at mapping tree `root` in the top level. The old value keeps
    /// its reference: the shadowing of the subtree already moved it.
    fn set_device_root(&mut self, id: u64, root: u64) -> Result<()> {
        let top = self.sb.data_mapping_root;
        let nt = self
            .insert_levels(top, &[(id, Vt::Top)], &root.to_le_bytes(), false)?
            .0;
        self.sb.data_mapping_root = nt;
        Ok(())
    }

    /// Map `vblock` of device `id` to `bt` (`dm_thin_insert_block`): a block it mapped
    /// before loses this reference. The old mapping.
    pub fn insert_block(
        &mut self,
        id: u64,
        vblock: u64,
        bt: BlockTime,
    ) -> Result<Option<BlockTime>> {
        self.device_root(id)?.ok_or_else(|| no_device(id))?;
        // One spine through both levels, as the kernel's two-level insert: a top leaf
        // shared with a metadata snapshot is shadowed (handing its subtree roots a
        // reference) before the subtree is.
        let levels = [(id, Vt::Top), (vblock, Vt::Mapping)];
        let top = self.sb.data_mapping_root;
        let (nt, old) = self.insert_levels(top, &levels, &bt.pack().to_le_bytes(), true)?;
        self.sb.data_mapping_root = nt;
        Ok(old.map(|v| BlockTime::unpack(le64(&v, 0))))
    }

    /// Unmap `vblock` of device `id` (`dm_thin_remove_block`): the old mapping.
    pub fn remove_block(&mut self, id: u64, vblock: u64) -> Result<Option<BlockTime>> {
        let root = self.device_root(id)?.ok_or_else(|| no_device(id))?;
        if self.lookup(root, Vt::Mapping, vblock)?.is_none() {
            return Ok(None);
        }
        self.set_device_root(id, root)?;
        let (nr, old) = self.remove(root, Vt::Mapping, vblock)?;
        self.set_device_root(id, nr)?;
        Ok(old.map(|v| BlockTime::unpack(le64(&v, 0))))
    }

    /// `__create_thin`: an empty mapping tree for a new device.
    pub fn create_thin(&mut self, id: u64) -> Result<()> {
        let root = self.empty_tree(Vt::Mapping)?;
        self.set_device_root(id, root)
    }

    /// `__create_snap`: device `id` shares `origin`'s mapping tree.
    pub fn create_snap(&mut self, id: u64, origin: u64) -> Result<()> {
        let root = self.device_root(origin)?.ok_or_else(|| no_device(origin))?;
        self.inc_meta(root)?;
        self.set_device_root(id, root)
    }

    /// `__delete_device`: the device's mapping tree loses its reference, its details go.
    pub fn delete_device(&mut self, id: u64) -> Result<()> {
        let (nt, old) = self.remove(self.sb.data_mapping_root, Vt::Top, id)?;
        self.sb.data_mapping_root = nt;
        if old.is_none() {
            return Err(no_device(id));
        }
        let (nd, _) = self.remove(self.sb.device_details_root, Vt::Details, id)?;
        self.sb.device_details_root = nd;
        Ok(())
    }

    /// Store device `id`'s details (`__write_changed_details`).
    pub fn set_details(&mut self, id: u64, d: &DeviceDetails) -> Result<()> {
        let (nd, _) = self.insert(self.sb.device_details_root, Vt::Details, id, &d.encode())?;
        self.sb.device_details_root = nd;
        Ok(())
    }

    /// `__reserve_metadata_snap` on metadata just committed (`committed`): a copy of its
    /// superblock with the space map roots wiped in a new block, holding a reference to
    /// the mapping and details trees.
    pub fn reserve_metadata_snap(&mut self, committed: &Superblock) -> Result<u64> {
        let b = self.alloc_meta()?;
        let mut copy = committed.clone();
        copy.data_sm = SmRoot::default();
        copy.metadata_sm = SmRoot::default();
        copy.held_root = 0;
        self.inc_meta(copy.data_mapping_root)?;
        self.inc_meta(copy.device_details_root)?;
        self.raw.insert(b, copy.encode(b));
        self.sb.held_root = b;
        Ok(b)
    }

    /// `__release_metadata_snap`: the held copy's trees lose their references.
    pub fn release_metadata_snap(&mut self) -> Result<()> {
        let held = self.sb.held_root;
        let buf = self.cache.get(held, Kind::Superblock)?;
        let copy = Superblock::parse(&buf.bytes, held)?;
        self.del(copy.data_mapping_root, Vt::Top)?;
        self.del(copy.device_details_root, Vt::Details)?;
        self.dec_meta(held)?;
        self.sb.held_root = 0;
        Ok(())
    }

    /// A space map's ref count btree after `changes`.
    fn apply_overflow(&mut self, mut root: u64, changes: &[(u64, Option<u32>)]) -> Result<u64> {
        if changes.is_empty() {
            return Ok(root);
        }
        if root == 0 {
            root = self.empty_tree(Vt::Count)?;
        }
        for &(b, c) in changes {
            root = match c {
                Some(c) => self.insert(root, Vt::Count, b, &c.to_le_bytes())?.0,
                None => self.remove(root, Vt::Count, b)?.0,
            };
        }
        Ok(root)
    }

    /// Write the transaction in `dm_tm_commit`'s order and return the superblock written.
    pub fn commit(mut self) -> Result<(Superblock, Committed)> {
        let cache = Arc::clone(&self.cache);
        // Data space map: changed bitmaps into new blocks, their index entries, counts
        // of 3 and more.
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let dirty = self.data.dirty_bitmaps();
        let overflow = self.data.overflow_changes(&cache)?;
        let mut index_root = self.data.committed.bitmap_root;
        if index_root == 0 {
            index_root = self.empty_tree(Vt::Index)?;
        }
        let groups = self.data.by_bitmap();
        for &i in &dirty {
            let loc = self.alloc_meta()?;
            if let Some(e) = self.data.index.get(i) {
                let old = e.blocknr;
                self.dec_meta(old)?;
            }
            let touched = groups.get(&i).map_or(&[][..], Vec::as_slice);
            let (bm, entry) = self.data.render(&cache, i, touched, loc)?;
            out.push((loc, bm));
            let key = u64::try_from(i).unwrap_or(u64::MAX);
            index_root = self
                .insert(index_root, Vt::Index, key, &index_entry_bytes(&entry))?
                .0;
        }
        let data_rc = self.apply_overflow(self.data.committed.ref_count_root, &overflow)?;
        self.sb.data_sm = SmRoot {
            nr_blocks: self.data.nr_blocks,
            nr_allocated: self.data.allocated,
            bitmap_root: index_root,
            ref_count_root: data_rc,
        };

        // Metadata space map: its ref count tree, a new index block, then new homes for
        // every changed bitmap until their own allocations change no further bitmap.
        let overflow = self.meta.overflow_changes(&cache)?;
        let meta_rc = self.apply_overflow(self.meta.committed.ref_count_root, &overflow)?;
        let index_loc = self.alloc_meta()?;
        self.dec_meta(self.meta.committed.bitmap_root)?;
        let mut homes: BTreeMap<usize, u64> = BTreeMap::new();
        loop {
            let pending: Vec<usize> = self
                .meta
                .dirty_bitmaps()
                .into_iter()
                .filter(|i| !homes.contains_key(i))
                .collect();
            if pending.is_empty() {
                break;
            }
            for i in pending {
                let loc = self.alloc_meta()?;
                if let Some(e) = self.meta.index.get(i) {
                    let old = e.blocknr;
                    self.dec_meta(old)?;
                }
                homes.insert(i, loc);
            }
        }
        let mut entries = self.meta.index.clone();
        entries.resize(
            usize_of(self.meta.nr_blocks.div_ceil(ENTRIES_PER_BLOCK)),
            IndexEntry::default(),
        );
        let groups = self.meta.by_bitmap();
        for (&i, &loc) in &homes {
            let touched = groups.get(&i).map_or(&[][..], Vec::as_slice);
            let (bm, entry) = self.meta.render(&cache, i, touched, loc)?;
            out.push((loc, bm));
            entries[i] = entry;
        }
        let mut ib = vec![0; BLOCK_SIZE];
        put64(&mut ib, 8, index_loc);
        for (i, e) in entries.iter().enumerate() {
            let off = INDEX_BLOCK_HEADER + INDEX_ENTRY_SIZE * i;
            ib[off..off + INDEX_ENTRY_SIZE].copy_from_slice(&index_entry_bytes(e));
        }
        seal(&mut ib, INDEX_CSUM_XOR);
        out.push((index_loc, ib));
        self.sb.metadata_sm = SmRoot {
            nr_blocks: self.meta.nr_blocks,
            nr_allocated: self.meta.allocated,
            bitmap_root: index_loc,
            ref_count_root: meta_rc,
        };
        self.sb.version = VERSION;

        for (&b, n) in &self.nodes {
            out.push((b, n.encode(b)));
        }
        for (&b, r) in &self.raw {
            out.push((b, r.clone()));
        }
        out.sort_unstable_by_key(|&(b, _)| b);
        let dev = cache.dev();
        for (b, data) in &out {
            if *b == 0 {
                return Err(Error::invalid(
                    "thin-pool metadata",
                    "a transaction block landed on the superblock",
                ));
            }
            dev.write(*b, data)?;
        }
        dev.volume().flush()?;
        dev.write(0, &self.sb.encode(0))?;
        dev.volume().flush()?;
        cache.clear();
        Ok((self.sb, Committed { blocks: out.len() }))
    }
}

fn missing(b: u64) -> Error {
    Error::invalid(
        "thin-pool metadata",
        format!("transaction node {b} is not held"),
    )
}

fn no_device(id: u64) -> Error {
    Error::invalid("thin-pool", format!("device {id} does not exist"))
}
