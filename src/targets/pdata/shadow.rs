//! Copy-on-write transactions over persistent-data metadata (dm-transaction-manager.c's
//! shadowing over dm-space-map-metadata.c's reference counts), as the cache metadata
//! commits them.
//!
//! A block the committed metadata reaches is never written: changing it copies it to a
//! block free in both the committed and the current counts (`dm_tm_shadow_block`), the old
//! block loses one reference and, when it was shared, its children gain one (the copy
//! references them too). `commit` then writes the metadata space map as
//! `sm_metadata_commit` leaves it: the ref count btree rebuilt when a count of 3 or more
//! changed, every bitmap holding a changed count shadowed (a fixpoint: the new bitmaps'
//! own locations count), a new index block; every new block, flush, the superblock last,
//! flush (`dm_tm_commit`). A crash at any write leaves the previous transaction whole.
//!
//! ```text
//!  array_set(root, i, v):  btree root ─shadow─> ... ─shadow─> leaf ─shadow─> array block[i] = v
//!  commit:  [ref count tree] + bitmaps (fixpoint) + index block ─> write, flush ─> superblock, flush
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

use super::array::{self, ARRAY_CSUM_XOR, ARRAY_HEADER};
use super::block::{
    corrupt, le32, le64, put64, seal, Kind, MetaDev, BLOCK_SIZE, BTREE_CSUM_XOR, INDEX_CSUM_XOR,
};
use super::btree::{Shape, MAX_DEPTH};
use super::space_map::{
    SmKind, SmRoot, SpaceMap, ENTRIES_PER_BLOCK, INDEX_BLOCK_HEADER, INDEX_ENTRY_SIZE,
};
use super::write::{bitmap_block, build_tree, Allocator};

/// What a block written in this transaction is: its checksum salt and where its
/// `blocknr` self-reference lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    /// A btree node (`blocknr` at 8).
    Node,
    /// An array block (`blocknr` at 16).
    Array,
    /// Already sealed (the rebuilt ref count tree, the space map's own blocks).
    Sealed,
}

/// The metadata of one transaction in progress over a device.
#[derive(Debug)]
pub struct Tm {
    dev: MetaDev,
    sm: SmRoot,
    /// The committed index block's entries, one per bitmap.
    index: Vec<[u8; INDEX_ENTRY_SIZE]>,
    committed: Vec<u32>,
    counts: Vec<u32>,
    /// Blocks whose count changed in this transaction.
    touched: BTreeSet<u64>,
    /// Blocks allocated in this transaction, with their contents.
    fresh: BTreeMap<u64, (Ty, Vec<u8>)>,
    cursor: u64,
}

impl Tm {
    /// Open over `dev` whose committed metadata space map is `sm`: every count is read
    /// (at most 255 bitmaps, the metadata space map's limit).
    pub fn open(dev: MetaDev, sm: SmRoot) -> Result<Tm> {
        let map = SpaceMap::open(&dev, sm, SmKind::Metadata)?;
        let nr = usize::try_from(sm.nr_blocks).map_err(|_| too_big(sm.nr_blocks))?;
        let mut counts = vec![0u32; nr];
        map.for_each_nonzero(&dev, &mut |b, c| {
            counts[usize::try_from(b).unwrap_or(0)] = c;
            Ok(())
        })?;
        let ib = dev.read(sm.bitmap_root, Kind::Index)?;
        let index = (0..map.index.len())
            .map(|i| {
                let off = INDEX_BLOCK_HEADER + INDEX_ENTRY_SIZE * i;
                let mut e = [0; INDEX_ENTRY_SIZE];
                e.copy_from_slice(&ib[off..off + INDEX_ENTRY_SIZE]);
                e
            })
            .collect();
        Ok(Tm {
            dev,
            sm,
            index,
            committed: counts.clone(),
            counts,
            touched: BTreeSet::new(),
            fresh: BTreeMap::new(),
            cursor: 1,
        })
    }

    /// The committed metadata space map root.
    #[must_use]
    pub fn sm_root(&self) -> SmRoot {
        self.sm
    }

    /// Whether this transaction changed anything.
    #[must_use]
    pub fn changed(&self) -> bool {
        !self.fresh.is_empty() || !self.touched.is_empty()
    }

    fn slot(&self, b: u64, what: &'static str) -> Result<usize> {
        usize::try_from(b)
            .ok()
            .filter(|&i| i < self.counts.len())
            .ok_or_else(|| {
                corrupt(
                    what,
                    b,
                    0,
                    format_args!(
                        "block {b} is beyond the metadata space map ({} blocks)",
                        self.counts.len()
                    ),
                )
            })
    }

    fn inc(&mut self, b: u64) -> Result<()> {
        let i = self.slot(b, "block reference")?;
        self.counts[i] = self.counts[i].saturating_add(1);
        self.touched.insert(b);
        Ok(())
    }

    fn dec(&mut self, b: u64) -> Result<()> {
        let i = self.slot(b, "block reference")?;
        if self.counts[i] == 0 {
            return Err(corrupt(
                "space map ref count",
                b,
                0,
                "a referenced block has a zero count",
            ));
        }
        self.counts[i] -= 1;
        self.touched.insert(b);
        Ok(())
    }

    /// A block free in the committed and the current counts, now counted once.
    fn alloc(&mut self) -> Result<u64> {
        let limit = self
            .counts
            .len()
            .min(usize::try_from(self.dev.nr_blocks()).unwrap_or(0));
        let start = usize::try_from(self.cursor).unwrap_or(1).max(1);
        let found = (start..limit)
            .chain(1..start.min(limit))
            .find(|&i| self.counts[i] == 0 && self.committed[i] == 0)
            .ok_or(Error::NoSpace {
                target: "cache metadata",
            })?;
        self.counts[found] = 1;
        let b = found as u64;
        self.touched.insert(b);
        self.cursor = b + 1;
        Ok(b)
    }

    /// Block `b` as this transaction sees it (`ty` checks a committed block: a btree
    /// node's header, an array block of `value_size`-byte values).
    fn read(&self, b: u64, ty: Ty, value_size: usize) -> Result<Vec<u8>> {
        if let Some((_, buf)) = self.fresh.get(&b) {
            return Ok(buf.clone());
        }
        match ty {
            Ty::Node => {
                let buf = self.dev.read(b, Kind::BtreeNode)?;
                Shape::check(&buf, b, None)?;
                Ok(buf)
            }
            Ty::Array => array::read_block(&self.dev, b, value_size),
            Ty::Sealed => self.dev.read_raw(b, "metadata block"),
        }
    }

    /// `dm_tm_shadow_block`: a writable copy of `b` (itself when this transaction made it)
    /// and whether the old block was shared, so the copy's children gain a reference.
    fn shadow(&mut self, b: u64, ty: Ty, value_size: usize) -> Result<(u64, bool)> {
        if self.fresh.contains_key(&b) {
            return Ok((b, false));
        }
        let buf = self.read(b, ty, value_size)?;
        let shared = self.counts[self.slot(b, "shadowed block")?] > 1;
        let nb = self.alloc()?;
        self.dec(b)?;
        self.fresh.insert(nb, (ty, buf));
        Ok((nb, shared))
    }

    fn buf(&mut self, b: u64) -> &mut Vec<u8> {
        &mut self
            .fresh
            .get_mut(&b)
            .expect("a block of this transaction")
            .1
    }

    /// `dm_array_get_value`: value `index` of the array at `root`.
    pub fn array_get(&self, root: u64, index: u64, value_size: usize) -> Result<Vec<u8>> {
        let (ab, i) = self.locate(root, index, value_size)?;
        let buf = self.read(ab, Ty::Array, value_size)?;
        let off = ARRAY_HEADER + i * value_size;
        Ok(buf[off..off + value_size].to_vec())
    }

    /// `dm_array_set_value`: value `index` of the array at `root` becomes `value`; the path
    /// down to its array block is shadowed. Returns the new root.
    pub fn array_set(&mut self, root: u64, index: u64, value: &[u8]) -> Result<u64> {
        let vs = value.len();
        let per = array::max_entries(vs) as u64;
        let key = index / per;
        let mut new_root = root;
        let mut parent: Option<(u64, usize)> = None;
        let mut b = root;
        for _ in 0..=MAX_DEPTH {
            let (nb, shared) = self.shadow(b, Ty::Node, 8)?;
            let node = self.buf(nb).clone();
            let shape = Shape::check(&node, nb, None)?;
            shape.expect(nb, 8)?;
            if shared {
                for i in 0..shape.nr_entries {
                    self.inc(le64(&node, shape.value_at(i)))?;
                }
            }
            match parent {
                Some((p, off)) => put64(self.buf(p), off, nb),
                None => new_root = nb,
            }
            let i = shape
                .lower_bound(&node, key)
                .ok_or_else(|| missing(nb, key))?;
            let child = le64(&node, shape.value_at(i));
            if !shape.leaf {
                parent = Some((nb, shape.value_at(i)));
                b = child;
                continue;
            }
            if shape.key(&node, i) != key {
                return Err(missing(nb, key));
            }
            let (na, _) = self.shadow(child, Ty::Array, vs)?;
            put64(self.buf(nb), shape.value_at(i), na);
            let ab = self.buf(na);
            let e = usize::try_from(index % per).unwrap_or(0);
            if e >= usize::try_from(le32(ab, 8)).unwrap_or(0) {
                return Err(corrupt(
                    "array block",
                    child,
                    8,
                    format_args!("nr_entries does not reach entry {e}"),
                ));
            }
            let off = ARRAY_HEADER + e * vs;
            ab[off..off + vs].copy_from_slice(value);
            return Ok(new_root);
        }
        Err(too_deep(root))
    }

    /// The array block holding `index` and the entry in it, descending from `root`.
    fn locate(&self, root: u64, index: u64, value_size: usize) -> Result<(u64, usize)> {
        let per = array::max_entries(value_size) as u64;
        let key = index / per;
        let mut b = root;
        for _ in 0..=MAX_DEPTH {
            let node = self.read(b, Ty::Node, 8)?;
            let shape = Shape::check(&node, b, None)?;
            shape.expect(b, 8)?;
            let i = shape
                .lower_bound(&node, key)
                .ok_or_else(|| missing(b, key))?;
            let child = le64(&node, shape.value_at(i));
            if shape.leaf {
                if shape.key(&node, i) != key {
                    return Err(missing(b, key));
                }
                return Ok((child, usize::try_from(index % per).unwrap_or(0)));
            }
            b = child;
        }
        Err(too_deep(root))
    }

    /// The node blocks of the btree at `root`; a node reached twice is an error.
    fn tree_nodes(&self, root: u64, depth: usize, out: &mut BTreeSet<u64>) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(too_deep(root));
        }
        if out.contains(&root) {
            return Err(corrupt("btree", root, 0, "node reached twice"));
        }
        let node = self.read(root, Ty::Node, 0)?;
        let shape = Shape::check(&node, root, None)?;
        out.insert(root);
        if !shape.leaf {
            for i in 0..shape.nr_entries {
                self.tree_nodes(le64(&node, shape.value_at(i)), depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// Commit the transaction: the metadata space map, every new block, flush, then the
    /// superblock `superblock` makes from the new space map root, flush.
    pub fn commit(&mut self, superblock: &dyn Fn(SmRoot) -> Vec<u8>) -> Result<()> {
        let mut root = self.sm;
        // The ref count tree holds the counts of 3 and more (new blocks count 1, freed
        // ones 0: neither changes it once the data structures are done).
        let over = |c: &[u32]| -> Vec<(u64, u32)> {
            c.iter()
                .enumerate()
                .filter(|&(_, &n)| n >= 3)
                .map(|(b, &n)| (b as u64, n))
                .collect()
        };
        let new_over = over(&self.counts);
        if new_over != over(&self.committed) || root.ref_count_root == 0 {
            let mut old = BTreeSet::new();
            if root.ref_count_root != 0 {
                self.tree_nodes(root.ref_count_root, 0, &mut old)?;
            }
            for b in old {
                self.dec(b)?;
            }
            let keys: Vec<u64> = new_over.iter().map(|&(b, _)| b).collect();
            let vals: Vec<u8> = new_over
                .iter()
                .flat_map(|&(_, c)| c.to_le_bytes())
                .collect();
            let mut out = Vec::new();
            root.ref_count_root = build_tree(&mut *self, &mut out, &keys, &vals, 4)?;
            for (b, buf) in out {
                self.fresh.insert(b, (Ty::Sealed, buf));
            }
        }
        // A new index block, then every bitmap holding a changed count, until the new
        // bitmaps' own locations are counted too.
        let index_block = self.alloc()?;
        self.dec(root.bitmap_root)?;
        let mut moved: BTreeMap<usize, u64> = BTreeMap::new();
        loop {
            let due: BTreeSet<usize> = self
                .touched
                .iter()
                .map(|&b| usize::try_from(b / ENTRIES_PER_BLOCK).unwrap_or(usize::MAX))
                .filter(|i| !moved.contains_key(i))
                .collect();
            if due.is_empty() {
                break;
            }
            for i in due {
                let old = self
                    .index
                    .get(i)
                    .map(|e| le64(e, 0))
                    .ok_or_else(|| too_big(self.sm.nr_blocks))?;
                let nb = self.alloc()?;
                self.dec(old)?;
                moved.insert(i, nb);
            }
        }
        let nr = self.sm.nr_blocks;
        for (&i, &loc) in &moved {
            let base = i as u64 * ENTRIES_PER_BLOCK;
            let end = (nr - base).min(ENTRIES_PER_BLOCK);
            let counts = &self.counts[i * ENTRIES_PER_BLOCK as usize..][..end as usize];
            let mut used = counts
                .iter()
                .enumerate()
                .filter(|&(_, &c)| c > 0)
                .map(|(e, &c)| (e as u64, c));
            let (bm, ie) = bitmap_block(loc, end, &mut used);
            self.index[i] = ie;
            self.fresh.insert(loc, (Ty::Sealed, bm));
        }
        let mut ib = vec![0; BLOCK_SIZE];
        put64(&mut ib, 8, index_block);
        for (i, e) in self.index.iter().enumerate() {
            let off = INDEX_BLOCK_HEADER + INDEX_ENTRY_SIZE * i;
            ib[off..off + INDEX_ENTRY_SIZE].copy_from_slice(e);
        }
        seal(&mut ib, INDEX_CSUM_XOR);
        self.fresh.insert(index_block, (Ty::Sealed, ib));
        root.bitmap_root = index_block;
        root.nr_allocated = self.counts.iter().filter(|&&c| c > 0).count() as u64;

        for (&b, (ty, buf)) in &mut self.fresh {
            match ty {
                Ty::Node => {
                    put64(buf, 8, b);
                    seal(buf, BTREE_CSUM_XOR);
                }
                Ty::Array => {
                    put64(buf, 16, b);
                    seal(buf, ARRAY_CSUM_XOR);
                }
                Ty::Sealed => {}
            }
            self.dev.write(b, buf)?;
        }
        self.dev.volume().flush()?;
        self.dev.write(0, &superblock(root))?;
        self.dev.volume().flush()?;
        self.sm = root;
        self.committed.clone_from(&self.counts);
        self.touched.clear();
        self.fresh.clear();
        Ok(())
    }
}

impl Allocator for Tm {
    fn block(&mut self) -> Result<u64> {
        self.alloc()
    }
}

fn missing(node: u64, key: u64) -> Error {
    corrupt(
        "array btree",
        node,
        0,
        format_args!("array block {key} is not in the tree"),
    )
}

fn too_deep(root: u64) -> Error {
    corrupt(
        "btree",
        root,
        0,
        format_args!("deeper than {MAX_DEPTH} levels"),
    )
}

fn too_big(nr: u64) -> Error {
    corrupt(
        "metadata space map nr_blocks",
        0,
        0,
        format_args!("{nr} blocks"),
    )
}
