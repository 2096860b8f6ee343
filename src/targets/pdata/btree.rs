//! Persistent-data btree nodes (persistent-data/dm-btree-internal.h, dm-btree-spine.c):
//! reading with the kernel's node checks plus the ordering checks thin_check makes, and
//! walks bounded in depth and guarded against cycles, so a malicious tree errors out.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::{Error, Result};

use super::block::{corrupt, le32, le64, Kind, MetaDev, BLOCK_SIZE};
use super::cache::{BlockCache, Cached};

/// `INTERNAL_NODE` flag.
pub const INTERNAL_NODE: u32 = 1;
/// `LEAF_NODE` flag.
pub const LEAF_NODE: u32 = 2;
/// Node header size (`struct node_header`).
pub const HEADER_SIZE: usize = 32;
/// Deepest tree dmemu walks. Full nodes hold 126..336 entries and the kernel keeps non-root
/// nodes at least a third full, so a tree over every block of the largest metadata device
/// (4,161,600 blocks) is at most ~6 levels deep; anything deeper is corrupt.
pub const MAX_DEPTH: usize = 16;

/// `max_entries` a node with values of `value_size` bytes gets (`calc_max_entries`):
/// a multiple of 3 so splits share evenly.
#[must_use]
pub fn max_entries(value_size: usize) -> usize {
    let n = (BLOCK_SIZE - HEADER_SIZE) / (8 + value_size);
    3 * (n / 3)
}

/// One decoded btree node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Where it was read from.
    pub block: u64,
    /// Leaf (values are the tree's values) or internal (values are child block numbers).
    pub leaf: bool,
    /// Keys, strictly ascending.
    pub keys: Vec<u64>,
    /// `keys.len()` values of `value_size` bytes each.
    pub values: Vec<u8>,
    /// Bytes per value.
    pub value_size: usize,
    /// `max_entries` as stored.
    pub max_entries: usize,
}

impl Node {
    /// Value `i`.
    #[must_use]
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }

    /// Child block `i` of an internal node.
    #[must_use]
    pub fn child(&self, i: usize) -> u64 {
        le64(self.value(i), 0)
    }

    /// Decode block `block` as a node whose leaves hold `leaf_value_size`-byte values,
    /// with the kernel's `btree_node_check` and key order checks.
    pub fn parse(buf: &[u8], block: u64, leaf_value_size: usize) -> Result<Node> {
        let shape = Shape::check(buf, block, Some(leaf_value_size))?;
        let nr_entries = shape.nr_entries;
        let keys: Vec<u64> = (0..nr_entries).map(|i| shape.key(buf, i)).collect();
        let vstart = HEADER_SIZE + 8 * shape.max_entries;
        let values = buf[vstart..vstart + nr_entries * shape.value_size].to_vec();
        Ok(Node {
            block,
            leaf: shape.leaf,
            keys,
            values,
            value_size: shape.value_size,
            max_entries: shape.max_entries,
        })
    }
}

/// A checked node header: what a node holds, read in place from its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Leaf or internal.
    pub leaf: bool,
    /// Entries in use.
    pub nr_entries: usize,
    /// `max_entries` as stored.
    pub max_entries: usize,
    /// Bytes per value as stored.
    pub value_size: usize,
}

impl Shape {
    /// The kernel's `btree_node_check` and the key order checks over node `block`; with
    /// `leaf_value_size`, also the value size this tree's nodes must hold (checked where
    /// `Node::parse` always checked it; a cache checks it per tree with `expect`).
    pub fn check(buf: &[u8], block: u64, leaf_value_size: Option<usize>) -> Result<Shape> {
        let what = Kind::BtreeNode.name();
        let flags = le32(buf, 4);
        let nr = le32(buf, 16);
        let max = le32(buf, 20);
        let vs = le32(buf, 24);
        let leaf = match (flags & INTERNAL_NODE != 0, flags & LEAF_NODE != 0) {
            (true, false) => false,
            (false, true) => true,
            (true, true) => {
                return Err(corrupt(what, block, 4, "node is both INTERNAL and LEAF"));
            }
            (false, false) => {
                return Err(corrupt(what, block, 4, "node is neither INTERNAL or LEAF"));
            }
        };
        let value_size = usize::try_from(vs).unwrap_or(usize::MAX);
        let shape0 = Shape {
            leaf,
            nr_entries: 0,
            max_entries: 0,
            value_size,
        };
        if let Some(lvs) = leaf_value_size {
            shape0.expect(block, lvs)?;
        }
        let max_entries = usize::try_from(max).unwrap_or(usize::MAX);
        let fits = max_entries
            .checked_mul(8usize.saturating_add(value_size))
            .and_then(|n| n.checked_add(HEADER_SIZE))
            .is_some_and(|n| n <= BLOCK_SIZE);
        if !fits {
            return Err(corrupt(
                "btree node max_entries",
                block,
                20,
                format_args!("{max} entries of {value_size}-byte values do not fit a block"),
            ));
        }
        let nr_entries = usize::try_from(nr).unwrap_or(usize::MAX);
        if nr_entries > max_entries {
            return Err(corrupt(
                "btree node nr_entries",
                block,
                16,
                format_args!("{nr} entries, max_entries is {max}"),
            ));
        }
        if !leaf && nr_entries == 0 {
            return Err(corrupt(
                "btree node nr_entries",
                block,
                16,
                "internal node without entries",
            ));
        }
        let shape = Shape {
            leaf,
            nr_entries,
            max_entries,
            value_size,
        };
        for i in 1..nr_entries {
            let (a, b) = (shape.key(buf, i - 1), shape.key(buf, i));
            if a >= b {
                return Err(corrupt(
                    "btree node keys",
                    block,
                    HEADER_SIZE + 8 * i,
                    format_args!("key {b} after {a}: keys must be strictly ascending"),
                ));
            }
        }
        Ok(shape)
    }

    /// The value size check of a tree whose leaves hold `leaf_value_size`-byte values
    /// (internal nodes hold 8-byte block numbers).
    pub fn expect(&self, block: u64, leaf_value_size: usize) -> Result<()> {
        let want_vs = if self.leaf { leaf_value_size } else { 8 };
        if self.value_size != want_vs {
            return Err(corrupt(
                "btree node value_size",
                block,
                24,
                format_args!(
                    "{}, this tree's nodes hold {want_vs}-byte values",
                    self.value_size
                ),
            ));
        }
        Ok(())
    }

    /// Key `i` (< `nr_entries`) of the node in `buf`.
    #[must_use]
    pub fn key(&self, buf: &[u8], i: usize) -> u64 {
        le64(buf, HEADER_SIZE + 8 * i)
    }

    /// Byte offset of value `i` in the block.
    #[must_use]
    pub fn value_at(&self, i: usize) -> usize {
        HEADER_SIZE + 8 * self.max_entries + i * self.value_size
    }

    /// The index of the last key `<= key` (`lower_bound` in dm-btree.c), by binary search
    /// over the keys in place.
    #[must_use]
    pub fn lower_bound(&self, buf: &[u8], key: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.nr_entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(buf, mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
}

/// Read and decode node `block`.
pub fn read_node(dev: &MetaDev, block: u64, leaf_value_size: usize) -> Result<Node> {
    let buf = dev.read(block, Kind::BtreeNode)?;
    Node::parse(&buf, block, leaf_value_size)
}

/// Visit every (key, value) of the tree at `root` in key order. Errors on nodes reached
/// twice (a cycle or a node shared inside one tree), on trees deeper than `MAX_DEPTH`, and
/// on child keys outside the range their parent's keys give them.
pub fn walk(
    dev: &MetaDev,
    root: u64,
    value_size: usize,
    visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    walk_located(dev, root, value_size, &mut |k, v, _| visit(k, v))
}

/// Which key and occupancy rules a walk applies beyond each node's own checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// A child's keys must stay below its parent's next key (`lookup` could not reach
    /// them otherwise). thin_dump 0.9 and thin_check 0.9 do not check it.
    pub upper_bound: bool,
    /// A non-root node holds at least a third of its `max_entries` (thin_check and
    /// thin_dump 0.9: "too few entries in btree_node").
    pub min_entries: bool,
}

impl Rules {
    /// `walk`'s rules: the parent's range, no occupancy check.
    pub const RANGE: Rules = Rules {
        upper_bound: true,
        min_entries: false,
    };
    /// thin_dump 0.9's (`btree_node_checker` and its key checks): a child's lowest key at
    /// or above its parent key ("parent key mismatch"), keys ascending across leaves
    /// ("the last key of the previous leaf"), non-root nodes a third full.
    pub const THIN_TOOLS: Rules = Rules {
        upper_bound: false,
        min_entries: true,
    };
    /// What `thin check` applies: both.
    pub const STRICT: Rules = Rules {
        upper_bound: true,
        min_entries: true,
    };
}

/// `walk` with `rules`.
pub fn walk_with(
    dev: &MetaDev,
    root: u64,
    value_size: usize,
    rules: Rules,
    visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut w = Walk {
        dev,
        value_size,
        rules,
        seen: HashSet::new(),
        last: None,
    };
    w.node(root, 0, (0, None), None, &mut |k, v, _| visit(k, v))
}

/// Where a value lies: its leaf block and byte offset in it (for errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// The leaf node's block.
    pub block: u64,
    /// Byte offset of the value in the block.
    pub offset: usize,
}

/// A visitor of located values: key, value bytes, where the value lies.
pub type LocatedVisit<'a> = dyn FnMut(u64, &[u8], At) -> Result<()> + 'a;

/// `walk`, also telling the visitor where each value lies.
pub fn walk_located(
    dev: &MetaDev,
    root: u64,
    value_size: usize,
    visit: &mut LocatedVisit<'_>,
) -> Result<()> {
    let mut w = Walk {
        dev,
        value_size,
        rules: Rules::RANGE,
        seen: HashSet::new(),
        last: None,
    };
    w.node(root, 0, (0, None), None, visit)
}

/// Name the pointer that led to a node that could not be read: the parent node and the
/// byte offset of the child pointer in it.
fn via(e: Error, parent: Option<(u64, usize, usize)>) -> Error {
    match (e, parent) {
        (
            Error::Corrupt {
                what,
                offset,
                detail,
            },
            Some((p, i, at)),
        ) => Error::Corrupt {
            what,
            offset,
            detail: format!(
                "{detail} (reached through child pointer {i} of btree node {p}, byte {at} of \
                 that block)"
            ),
        },
        (e, _) => e,
    }
}

/// A node's first and last keys must lie in the range `lo..hi` its parent gives it.
fn in_range(block: u64, (first, last): (u64, u64), (lo, hi): (u64, Option<u64>)) -> Result<()> {
    if first < lo || hi.is_some_and(|h| last >= h) {
        return Err(corrupt(
            "btree node keys",
            block,
            HEADER_SIZE,
            format_args!(
                "keys {first}..={last} outside the parent's range {lo}..{}",
                hi.map_or_else(|| "".to_string(), |h| h.to_string())
            ),
        ));
    }
    Ok(())
}

/// One walk's state: the nodes seen (a node twice is a cycle or a node shared inside one
/// tree) and the last key visited (keys ascend across leaves).
struct Walk<'a> {
    dev: &'a MetaDev,
    value_size: usize,
    rules: Rules,
    seen: HashSet<u64>,
    last: Option<u64>,
}

impl Walk<'_> {
    fn node(
        &mut self,
        block: u64,
        depth: usize,
        (lo, hi): (u64, Option<u64>),
        parent: Option<(u64, usize, usize)>,
        visit: &mut LocatedVisit<'_>,
    ) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(corrupt(
                "btree depth",
                block,
                0,
                format_args!("tree deeper than {MAX_DEPTH} levels"),
            ));
        }
        if !self.seen.insert(block) {
            return Err(corrupt(
                "btree child pointer",
                block,
                0,
                "node reached twice in one tree (cycle)",
            ));
        }
        let node = read_node(self.dev, block, self.value_size).map_err(|e| via(e, parent))?;
        if self.rules.min_entries && depth > 0 && node.keys.len() < node.max_entries / 3 {
            return Err(corrupt(
                "btree node nr_entries",
                block,
                16,
                format_args!(
                    "{} entries, a non-root node holds at least {} (a third of max_entries {})",
                    node.keys.len(),
                    node.max_entries / 3,
                    node.max_entries
                ),
            ));
        }
        if let (Some(&first), Some(&last)) = (node.keys.first(), node.keys.last()) {
            let hi = if self.rules.upper_bound { hi } else { None };
            in_range(block, (first, last), (lo, hi))?;
            if node.leaf {
                if let Some(prev) = self.last.filter(|&p| first <= p) {
                    return Err(corrupt(
                        "btree node keys",
                        block,
                        HEADER_SIZE,
                        format_args!(
                            "first key {first} is not above the previous leaf's last key {prev}"
                        ),
                    ));
                }
                self.last = Some(last);
            }
        }
        for i in 0..node.keys.len() {
            if node.leaf {
                let at = At {
                    block,
                    offset: HEADER_SIZE + 8 * node.max_entries + i * node.value_size,
                };
                visit(node.keys[i], node.value(i), at)?;
            } else {
                let range = (node.keys[i], node.keys.get(i + 1).copied().or(hi));
                self.node(
                    node.child(i),
                    depth + 1,
                    range,
                    Some((block, i, HEADER_SIZE + 8 * node.max_entries + 8 * i)),
                    visit,
                )?;
            }
        }
        Ok(())
    }
}

/// Look `key` up in the tree at `root` (`dm_btree_lookup`): the value, or `None`.
pub fn lookup(dev: &MetaDev, root: u64, key: u64, value_size: usize) -> Result<Option<Vec<u8>>> {
    let mut block = root;
    for _ in 0..MAX_DEPTH {
        let node = read_node(dev, block, value_size)?;
        if node.leaf {
            return Ok(node
                .keys
                .binary_search(&key)
                .ok()
                .map(|i| node.value(i).to_vec()));
        }
        // The last key <= `key` (`lower_bound` in dm-btree.c).
        let i = node.keys.partition_point(|&k| k <= key);
        if i == 0 {
            return Ok(None);
        }
        block = node.child(i - 1);
    }
    Err(corrupt(
        "btree depth",
        root,
        0,
        format_args!("lookup deeper than {MAX_DEPTH} levels"),
    ))
}

/// A value a lookup through a [`BlockCache`] found: its leaf, held while it is read.
#[derive(Clone, Debug)]
pub struct Found {
    /// The leaf node.
    pub leaf: Arc<Cached>,
    /// Byte offset of the value in the leaf.
    pub offset: usize,
}

impl Found {
    /// The value's first `len` bytes.
    #[must_use]
    pub fn value(&self, len: usize) -> &[u8] {
        &self.leaf.bytes[self.offset..self.offset + len]
    }

    /// Where the value lies.
    #[must_use]
    pub fn at(&self) -> At {
        At {
            block: self.leaf.block,
            offset: self.offset,
        }
    }
}

/// One step of a cached descent: node `block`, checked as a node of a tree whose leaves
/// hold `value_size`-byte values, whose keys must lie in `lo..hi`, reached through
/// `parent` (named in read errors, as a walk names it); `path` holds the nodes above it
/// in this descent, below `above` more.
fn step(
    cache: &BlockCache,
    block: u64,
    value_size: usize,
    (lo, hi): (u64, Option<u64>),
    parent: Option<(u64, usize, usize)>,
    (path, above): (&[u64], usize),
) -> Result<(Arc<Cached>, Shape)> {
    if above + path.len() >= MAX_DEPTH {
        return Err(corrupt(
            "btree depth",
            block,
            0,
            format_args!("tree deeper than {MAX_DEPTH} levels"),
        ));
    }
    if path.contains(&block) {
        return Err(corrupt(
            "btree child pointer",
            block,
            0,
            "node reached twice in one tree (cycle)",
        ));
    }
    let node = cache
        .get(block, Kind::BtreeNode)
        .map_err(|e| via(e, parent))?;
    let shape = node
        .shape
        .ok_or_else(|| corrupt(Kind::BtreeNode.name(), block, 0, "not checked as a node"))?;
    shape
        .expect(block, value_size)
        .map_err(|e| via(e, parent))?;
    if shape.nr_entries > 0 {
        let keys = (
            shape.key(&node.bytes, 0),
            shape.key(&node.bytes, shape.nr_entries - 1),
        );
        in_range(block, keys, (lo, hi))?;
    }
    Ok((node, shape))
}

/// Where a cached descent starts: the keys its first node must hold (`lo..hi`) and how
/// many nodes lie above it (a subtree reached from nodes held elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The key range the parent's entry gives the first node.
    pub range: (u64, Option<u64>),
    /// Nodes above the first one.
    pub depth: usize,
}

impl Start {
    /// A whole tree: any keys, no node above.
    pub const ROOT: Start = Start {
        range: (0, None),
        depth: 0,
    };
}

/// A descent through `cache` from `root`: at each node `pick` names the entry to follow
/// (`None`: the key is not there); the leaf, its shape and the entry picked in it.
fn descend(
    cache: &BlockCache,
    root: u64,
    value_size: usize,
    start: Start,
    pick: impl Fn(&[u8], &Shape) -> Option<usize>,
) -> Result<Option<(Arc<Cached>, Shape, usize)>> {
    let mut path = [0u64; MAX_DEPTH];
    let mut depth = 0;
    let mut block = root;
    let mut range = start.range;
    let mut parent = None;
    loop {
        let at = (&path[..depth], start.depth);
        let (node, shape) = step(cache, block, value_size, range, parent, at)?;
        path[depth] = block;
        depth += 1;
        let buf = &node.bytes;
        let Some(i) = pick(buf, &shape) else {
            return Ok(None);
        };
        if shape.leaf {
            return Ok(Some((node, shape, i)));
        }
        let next = (i + 1 < shape.nr_entries).then(|| shape.key(buf, i + 1));
        range = (shape.key(buf, i), next.or(range.1));
        parent = Some((block, i, shape.value_at(i)));
        block = le64(buf, shape.value_at(i));
    }
}

/// `dm_btree_lookup` through `cache`: the value of `key` in the tree at `root`, or `None`.
/// Each node on the path gets every check a walk gives it (checksum, `blocknr`, node
/// header, key order, keys inside the parent's range, depth, no node twice), so a
/// damaged node fails the lookup with the walk's error.
pub fn lookup_cached(
    cache: &BlockCache,
    root: u64,
    key: u64,
    value_size: usize,
) -> Result<Option<Found>> {
    lookup_cached_from(cache, root, key, value_size, Start::ROOT)
}

/// `lookup_cached` in the subtree at `block`, reached as `start` says (its keys checked
/// against the range its parent gives it, the depth counted from the tree's root).
pub fn lookup_cached_from(
    cache: &BlockCache,
    block: u64,
    key: u64,
    value_size: usize,
    start: Start,
) -> Result<Option<Found>> {
    let found = descend(cache, block, value_size, start, |buf, s| {
        s.lower_bound(buf, key)
    })?;
    Ok(found
        .filter(|(leaf, s, i)| s.key(&leaf.bytes, *i) == key)
        .map(|(leaf, s, i)| Found {
            offset: s.value_at(i),
            leaf,
        }))
}

/// `dm_btree_find_highest_key` through `cache`: the last key of the tree at `root`, following
/// the last child down with a lookup's checks; `None` for an empty tree (the kernel's
/// `-ENODATA` from an empty node).
pub fn highest_key_cached(cache: &BlockCache, root: u64, value_size: usize) -> Result<Option<u64>> {
    let found = descend(cache, root, value_size, Start::ROOT, |_, s| {
        s.nr_entries.checked_sub(1)
    })?;
    Ok(found.map(|(leaf, s, i)| s.key(&leaf.bytes, i)))
}
