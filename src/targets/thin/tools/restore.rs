//! thin_restore with bounded memory. The XML is read (streamed, never held) in passes:
//! the first checks the whole document and counts, per device, its mappings, and per data
//! block the leaves naming it; the layout of every block follows from those counts, and a
//! document that does not fit is refused before the first write. The last pass builds
//! each device's tree bottom-up as its mappings arrive ([`Packer`]: a leaf written as soon
//! as it holds its share, the even split of a tree packed whole), so what is held is the
//! leaf being filled, one (first key, block) per leaf of the device being written, the
//! device list and a byte per data block. A device whose mappings are not in ascending
//! order (thin_restore lets a later mapping replace an earlier one) is the exception: a
//! second counting pass holds its mappings, sorted, bounded by what the output can hold.
//!
//! The blocks are the ones [`Transaction::build`](super::super::metadata::writer) lays out
//! for a fresh pool (allocated in ascending order from block 1: the metadata space map's
//! bitmaps, its index block and empty ref count tree, each device tree in id order, the
//! top-level and details trees, the data space map's bitmaps, index tree and ref count
//! tree), byte for byte; the commit is the kernel's order (every block, flush, the
//! superblock, flush).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::error::{Error, Result};
use crate::targets::pdata::write::{self, build_internal, build_tree, tree_blocks, Packer};

use super::super::metadata::block::MetaDev;
use super::super::metadata::space_map::{ENTRIES_PER_BLOCK, INDEX_ENTRY_SIZE};
use super::super::metadata::superblock::{SmRoot, Superblock};
use super::super::metadata::{BlockTime, DeviceDetails, DETAILS_SIZE};
use super::xml::{self, Item, ReadError, XmlPool, XmlSuperblock};
use super::{max_mappings, meta_blocks, Overrides};

/// Data blocks counted a byte each at most (256 MiB, zero pages until touched); blocks
/// past it are counted in a map.
const DENSE_MAX: u64 = 1 << 28;

/// Blocks written at once.
const BATCH: usize = 256;

/// Reference counts of a space map's blocks: a byte per block of the first `dense` (255:
/// the exact count is in `big`), a map for the blocks past them.
#[derive(Debug, Default)]
pub struct BlockCounts {
    dense: Vec<u8>,
    big: BTreeMap<u64, u32>,
}

impl BlockCounts {
    /// Counts for blocks `0..nr_blocks`, all 0 (a byte each for the first
    /// `min(nr_blocks, dense)`, at most 2^28).
    #[must_use]
    pub fn new(nr_blocks: u64, dense: u64) -> BlockCounts {
        let n = nr_blocks.min(dense).min(DENSE_MAX);
        BlockCounts {
            dense: vec![0; usize::try_from(n).unwrap_or(0)],
            big: BTreeMap::new(),
        }
    }

    /// One more reference to block `b`.
    pub fn add(&mut self, b: u64) {
        match usize::try_from(b).ok().and_then(|i| self.dense.get_mut(i)) {
            Some(c) if *c < u8::MAX - 1 => *c += 1,
            Some(c) if *c == u8::MAX - 1 => {
                *c = u8::MAX;
                self.big.insert(b, u32::from(u8::MAX));
            }
            _ => {
                let c = self.big.entry(b).or_insert(0);
                *c = c.saturating_add(1);
            }
        }
    }

    /// References to block `b`.
    #[must_use]
    pub fn get(&self, b: u64) -> u32 {
        match usize::try_from(b).ok().and_then(|i| self.dense.get(i)) {
            Some(&c) if c < u8::MAX => u32::from(c),
            _ => self.big.get(&b).copied().unwrap_or(0),
        }
    }

    /// The blocks with references and their counts, in ascending block order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let dense_end = self.dense.len() as u64;
        self.dense
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c != 0)
            .map(|(i, &c)| {
                let b = i as u64;
                (
                    b,
                    if c < u8::MAX {
                        u32::from(c)
                    } else {
                        self.get(b)
                    },
                )
            })
            .chain(self.big.range(dense_end..).map(|(&b, &c)| (b, c)))
    }
}

/// What the trees will hold: the superblock's fields, every device's details and mapping
/// count, the data blocks' reference counts, and the mappings of the devices
/// whose document order was not ascending (sorted).
#[derive(Debug, Default)]
struct Plan {
    sb: XmlSuperblock,
    nr_data: u64,
    devices: BTreeMap<u64, (DeviceDetails, u64)>,
    counts: BlockCounts,
    held: BTreeMap<u64, Vec<(u64, BlockTime)>>,
}

/// thin_restore's refusal of a mapping past the (overridden) data device's end.
fn beyond(id: u64, k: u64, b: u64, nr: u64) -> Error {
    Error::invalid(
        "thin restore",
        format!(
            "device {id} maps virtual block {k} to data block {b}: mapping beyond end of data \
             device ({b} >= {nr})"
        ),
    )
}

impl Plan {
    fn new(sb: XmlSuperblock, over: Overrides, dense: u64) -> Plan {
        let nr_data = over.nr_data_blocks.unwrap_or(sb.nr_data_blocks);
        Plan {
            sb,
            nr_data,
            counts: BlockCounts::new(nr_data, dense),
            ..Plan::default()
        }
    }

    /// Count sorted mappings `maps` of device `id`, each checked against the data device.
    fn count(&mut self, id: u64, maps: &mut dyn Iterator<Item = (u64, BlockTime)>) -> Result<()> {
        for (k, bt) in maps {
            if bt.block >= self.nr_data {
                return Err(beyond(id, k, bt.block, self.nr_data));
            }
            self.counts.add(bt.block);
        }
        Ok(())
    }
}

/// The device the survey is reading.
struct Open {
    id: u64,
    details: DeviceDetails,
    count: u64,
    last: Option<u64>,
    held: Option<Vec<(u64, BlockTime)>>,
}

/// One counting pass over the document: the plan, and the devices found out of order
/// (their counts are then wrong; a second pass with them in `hold` holds them).
fn survey(
    src: impl std::io::BufRead,
    max: u64,
    over: Overrides,
    hold: &BTreeSet<u64>,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<(Plan, BTreeSet<u64>), ReadError> {
    let mut plan = Plan::default();
    let mut open: Option<Open> = None;
    let mut unsorted = BTreeSet::new();
    xml::read(src, max, progress, &mut |item| {
        match item {
            Item::Superblock(sb) => plan = Plan::new(sb, over, max),
            Item::Device(id, details) => {
                open = Some(Open {
                    id,
                    details,
                    count: 0,
                    last: None,
                    held: hold.contains(&id).then(Vec::new),
                });
            }
            Item::Mapping(run) => {
                let Some(o) = open.as_mut() else {
                    return Ok(());
                };
                if let Some(maps) = o.held.as_mut() {
                    maps.extend(run.blocks());
                } else if o.last.is_none_or(|l| run.origin > l) {
                    o.count += run.len;
                    o.last = Some(run.origin + (run.len - 1));
                    plan.count(o.id, &mut run.blocks())?;
                } else {
                    unsorted.insert(o.id);
                }
            }
            Item::EndDevice => {
                let Some(mut o) = open.take() else {
                    return Ok(());
                };
                if let Some(maps) = o.held.take() {
                    let (d, maps) = xml::finish(maps, o.details);
                    plan.count(o.id, &mut maps.iter().copied())?;
                    o.details = d;
                    o.count = d.mapped_blocks;
                    plan.held.insert(o.id, maps);
                } else {
                    o.details.mapped_blocks = o.count;
                }
                plan.devices.insert(o.id, (o.details, o.count));
            }
        }
        Ok(())
    })?;
    Ok((plan, unsorted))
}

/// Blocks a contiguous layout hands out, `next..end`.
struct Seq {
    next: u64,
    end: u64,
}

impl write::Allocator for Seq {
    fn block(&mut self) -> Result<u64> {
        if self.next >= self.end {
            return Err(Error::NoSpace {
                target: "thin-pool metadata",
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// Where each part of the new metadata goes (its first block and the blocks it takes).
struct Layout {
    nr_meta: u64,
    meta_bitmaps: u64,
    meta_index: u64,
    meta_rc: u64,
    /// Per device: first block, blocks, mappings.
    devices: BTreeMap<u64, (u64, u64, u64)>,
    rest: u64,
    end: u64,
}

impl Layout {
    /// The layout of `plan` on `nr_meta` blocks, or `NoSpace` when it does not fit.
    fn new(plan: &Plan, nr_meta: u64) -> Result<Layout> {
        let meta_bitmaps = nr_meta.div_ceil(ENTRIES_PER_BLOCK);
        let meta_index = 1 + meta_bitmaps;
        let meta_rc = meta_index + 1;
        let mut next = meta_rc + tree_blocks(0, 4);
        let mut devices = BTreeMap::new();
        for (&id, &(_, maps)) in &plan.devices {
            let n = tree_blocks(maps, 8);
            devices.insert(id, (next, n, maps));
            next = next.saturating_add(n);
        }
        let rest = next;
        let nr_devices = plan.devices.len() as u64;
        let data_bitmaps = plan.nr_data.div_ceil(ENTRIES_PER_BLOCK);
        let overflow = plan.counts.iter().filter(|&(_, c)| c >= 3).count() as u64;
        for n in [
            tree_blocks(nr_devices, 8),
            tree_blocks(nr_devices, DETAILS_SIZE),
            data_bitmaps,
            tree_blocks(data_bitmaps, INDEX_ENTRY_SIZE),
            tree_blocks(overflow, 4),
        ] {
            next = next.saturating_add(n);
        }
        if next > nr_meta {
            return Err(Error::NoSpace {
                target: "thin-pool metadata",
            });
        }
        Ok(Layout {
            nr_meta,
            meta_bitmaps,
            meta_index,
            meta_rc,
            devices,
            rest,
            end: next,
        })
    }
}

/// The device trees being written, in whatever order the document has the devices.
struct Trees<'a> {
    dev: &'a MetaDev,
    layout: &'a Layout,
    out: Vec<(u64, Vec<u8>)>,
    roots: BTreeMap<u64, u64>,
    open: Option<(u64, Seq, Packer)>,
}

impl<'a> Trees<'a> {
    fn new(dev: &'a MetaDev, layout: &'a Layout) -> Trees<'a> {
        Trees {
            dev,
            layout,
            out: Vec::new(),
            roots: BTreeMap::new(),
            open: None,
        }
    }

    /// Write what is pending once a batch is.
    fn drain_full(&mut self) -> Result<()> {
        if self.out.len() >= BATCH {
            self.drain()?;
        }
        Ok(())
    }

    /// Write what is pending, contiguous blocks in one write.
    fn drain(&mut self) -> Result<()> {
        let mut run: Option<(u64, Vec<u8>)> = None;
        for (b, data) in self.out.drain(..) {
            match run.as_mut() {
                Some((first, buf)) if *first + (buf.len() / data.len().max(1)) as u64 == b => {
                    buf.extend_from_slice(&data);
                }
                _ => {
                    if let Some((first, buf)) = run.take() {
                        self.dev.write(first, &buf)?;
                    }
                    run = Some((b, data));
                }
            }
        }
        if let Some((first, buf)) = run {
            self.dev.write(first, &buf)?;
        }
        Ok(())
    }

    fn changed() -> Error {
        Error::invalid(
            "thin restore",
            "the XML changed while it was read (a device or its mappings differ between \
             passes)",
        )
    }

    fn begin(&mut self, id: u64) -> Result<()> {
        let &(first, n, maps) = self.layout.devices.get(&id).ok_or_else(Self::changed)?;
        let maps = usize::try_from(maps).map_err(|_| Self::changed())?;
        if self.open.is_some() || self.roots.contains_key(&id) {
            return Err(Self::changed());
        }
        let seq = Seq {
            next: first,
            end: first + n,
        };
        self.open = Some((id, seq, Packer::new(true, maps, 8, true)));
        Ok(())
    }

    fn push(&mut self, k: u64, bt: BlockTime) -> Result<()> {
        let Some((_, seq, p)) = self.open.as_mut() else {
            return Err(Self::changed());
        };
        p.push(seq, &mut self.out, k, &bt.pack().to_le_bytes())?;
        self.drain_full()
    }

    fn end(&mut self) -> Result<()> {
        let Some((id, mut seq, p)) = self.open.take() else {
            return Err(Self::changed());
        };
        let level = p.finish(&mut seq, &mut self.out)?;
        let root = build_internal(&mut seq, &mut self.out, level)?;
        if seq.next != seq.end {
            return Err(Self::changed());
        }
        self.roots.insert(id, root);
        self.drain()
    }
}

/// The superblock of restored metadata before its roots are known: the XML's fields (the
/// version kept, as thin_restore does) under `over`, empty space maps of their sizes.
pub fn fresh_superblock(s: XmlSuperblock, over: Overrides, nr_meta: u64) -> Superblock {
    let mut sb = Superblock::fresh(
        over.data_block_size.unwrap_or(s.data_block_size),
        over.nr_data_blocks.unwrap_or(s.nr_data_blocks),
        nr_meta,
    );
    sb.flags = s.flags;
    sb.version = s.version;
    sb.time = s.time;
    sb.transaction_id = over.transaction_id.unwrap_or(s.transaction);
    sb
}

/// Everything after the device trees, then the commit: the top-level and details trees,
/// the data space map (bitmaps, index tree, ref count tree), the metadata space map
/// (every block up to the last one used counted once), flush, superblock, flush.
fn commit(plan: &Plan, mut trees: Trees<'_>, over: Overrides) -> Result<()> {
    let layout = trees.layout;
    if trees.open.is_some() || trees.roots.len() != plan.devices.len() {
        return Err(Trees::changed());
    }
    let mut seq = Seq {
        next: layout.rest,
        end: layout.end,
    };
    let ids: Vec<u64> = plan.devices.keys().copied().collect();
    let roots: Vec<u8> = trees.roots.values().flat_map(|r| r.to_le_bytes()).collect();
    let details: Vec<u8> = plan
        .devices
        .values()
        .flat_map(|(d, _)| d.encode())
        .collect();
    let mapping_root = build_tree(&mut seq, &mut trees.out, &ids, &roots, 8)?;
    let details_root = build_tree(&mut seq, &mut trees.out, &ids, &details, DETAILS_SIZE)?;
    trees.drain()?;

    // The data space map: its bitmaps (reserved first), the index tree over them and the
    // ref count tree of the blocks counted 3 or more, both streamed.
    let nr_data = plan.nr_data;
    let data_bitmaps = nr_data.div_ceil(ENTRIES_PER_BLOCK);
    let first_bitmap = seq.next;
    seq.next += data_bitmaps;
    let mut index = Packer::new(
        true,
        usize::try_from(data_bitmaps).map_err(|_| Trees::changed())?,
        INDEX_ENTRY_SIZE,
        true,
    );
    write::bitmaps(
        nr_data,
        &mut (first_bitmap..first_bitmap + data_bitmaps),
        &mut plan.counts.iter(),
        &mut |loc, bm, ie| {
            trees.out.push((loc, bm));
            index.push(&mut seq, &mut trees.out, loc - first_bitmap, &ie)?;
            trees.drain_full()
        },
    )?;
    let level = index.finish(&mut seq, &mut trees.out)?;
    let data_index_root = build_internal(&mut seq, &mut trees.out, level)?;
    let overflow = || plan.counts.iter().filter(|&(_, c)| c >= 3);
    let mut rc = Packer::new(true, overflow().count(), 4, true);
    for (b, c) in overflow() {
        rc.push(&mut seq, &mut trees.out, b, &c.to_le_bytes())?;
        trees.drain_full()?;
    }
    let level = rc.finish(&mut seq, &mut trees.out)?;
    let data_rc_root = build_internal(&mut seq, &mut trees.out, level)?;
    if seq.next != seq.end {
        return Err(Trees::changed());
    }

    // The metadata space map: block 0 and every block handed out, once each.
    let nr_meta = layout.nr_meta;
    let used = seq.next;
    let mut entries = Vec::new();
    write::bitmaps(
        nr_meta,
        &mut (1..=layout.meta_bitmaps),
        &mut (0..used).map(|b| (b, 1)),
        &mut |loc, bm, ie| {
            trees.out.push((loc, bm));
            entries.push(ie);
            Ok(())
        },
    )?;
    let meta_index = layout.meta_index;
    trees
        .out
        .push((meta_index, write::index_block(meta_index, &entries)));
    let mut empty = Seq {
        next: layout.meta_rc,
        end: layout.meta_rc + 1,
    };
    let meta_rc_root = build_tree(&mut empty, &mut trees.out, &[], &[], 4)?;
    trees.drain()?;

    let mut sb = fresh_superblock(plan.sb, over, nr_meta);
    sb.data_sm = SmRoot {
        nr_blocks: nr_data,
        nr_allocated: plan.counts.iter().count() as u64,
        bitmap_root: data_index_root,
        ref_count_root: data_rc_root,
    };
    sb.metadata_sm = SmRoot {
        nr_blocks: nr_meta,
        nr_allocated: used,
        bitmap_root: meta_index,
        ref_count_root: meta_rc_root,
    };
    sb.data_mapping_root = mapping_root;
    sb.device_details_root = details_root;
    let dev = trees.dev;
    dev.volume().flush()?;
    dev.write(0, &sb.encode(0))?;
    dev.volume().flush()
}

/// Write `pool` as fresh metadata on `dev` (thin_restore from a document already read, and
/// thin_repair): every mapping checked against the data device before the first write.
pub fn restore(pool: &XmlPool, dev: &MetaDev, over: Overrides) -> Result<()> {
    let nr_meta = meta_blocks(dev)?;
    let mut plan = Plan::new(pool.sb, over, max_mappings(dev)?);
    for (&id, (d, maps)) in &pool.devices {
        plan.count(id, &mut maps.iter().copied())?;
        plan.devices.insert(id, (*d, maps.len() as u64));
    }
    let layout = Layout::new(&plan, nr_meta)?;
    let mut trees = Trees::new(dev, &layout);
    for (&id, (_, maps)) in &pool.devices {
        trees.begin(id)?;
        for &(k, bt) in maps {
            trees.push(k, bt)?;
        }
        trees.end()?;
    }
    commit(&plan, trees, over)
}

/// thin_restore of the document in the file `path` onto `dev`, streamed (see the module
/// comment). `progress` is told the bytes read so far, counting each pass's (two, three
/// when some device's mappings are out of order).
pub fn restore_file(
    path: &Path,
    dev: &MetaDev,
    over: Overrides,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let nr_meta = meta_blocks(dev)?;
    let max = max_mappings(dev)?;
    let open = || -> Result<BufReader<File>> {
        let f = File::open(path).map_err(Error::io(&path.display()))?;
        Ok(BufReader::with_capacity(1 << 16, f))
    };
    let len = std::fs::metadata(path)
        .map_err(Error::io(&path.display()))?
        .len();
    let mut passed = 0;
    let mut located = |e: ReadError| -> Error {
        match open() {
            Ok(src) => e.locate(src),
            Err(io) => io,
        }
    };
    let (mut plan, unsorted) = survey(open()?, max, over, &BTreeSet::new(), &mut |n| {
        progress(passed + n);
    })
    .map_err(&mut located)?;
    passed += len;
    if !unsorted.is_empty() {
        plan = survey(open()?, max, over, &unsorted, &mut |n| progress(passed + n))
            .map_err(&mut located)?
            .0;
        passed += len;
    }
    let layout = Layout::new(&plan, nr_meta)?;
    let mut trees = Trees::new(dev, &layout);
    let mut held = false;
    xml::read(open()?, max, &mut |n| progress(passed + n), &mut |item| {
        match item {
            Item::Superblock(_) => {}
            Item::Device(id, _) => {
                held = plan.held.contains_key(&id);
                trees.begin(id)?;
            }
            Item::Mapping(run) => {
                if !held {
                    for (k, bt) in run.blocks() {
                        trees.push(k, bt)?;
                    }
                }
            }
            Item::EndDevice => {
                let id = trees.open.as_ref().map(|o| o.0);
                if let Some(maps) = id.and_then(|id| plan.held.get(&id)) {
                    for &(k, bt) in maps {
                        trees.push(k, bt)?;
                    }
                }
                trees.end()?;
            }
        }
        Ok(())
    })
    .map_err(&mut located)?;
    commit(&plan, trees, over)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::targets::thin::metadata::writer::Transaction;
    use crate::targets::thin::metadata::Metadata;
    use crate::volume::MemVolume;
    use crate::SectorCount;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// A pool of `devices` devices over `nr_data` data blocks: device 0 maps runs, the
    /// others share most of its blocks (counts 3 and more; block 7 by every device, past
    /// 255 when there are that many) and remap some.
    fn pool(seed: u64, devices: u64, base: u64, nr_data: u64) -> XmlPool {
        let mut r = Rng(seed | 1);
        let mut first = Vec::new();
        let (mut v, mut d) = (0, 10);
        while (first.len() as u64) < base && d + 40 < nr_data {
            let n = 1 + r.below(40);
            for i in 0..n {
                first.push((v + i, d + i));
            }
            v += n + r.below(30);
            d += n + r.below(3);
        }
        let mut devs = BTreeMap::new();
        for id in 0..devices {
            let mut m: BTreeMap<u64, BlockTime> = first
                .iter()
                .map(|&(k, b)| (k, BlockTime { block: b, time: 0 }))
                .collect();
            if id > 0 {
                for _ in 0..base / 10 {
                    let k = r.below(v + 100);
                    let block = r.below(nr_data);
                    m.insert(
                        k,
                        BlockTime {
                            block,
                            time: 1 + r.below(5) as u32,
                        },
                    );
                }
                m.insert(v + 1000, BlockTime { block: 7, time: 2 });
            }
            let maps: Vec<(u64, BlockTime)> = m.into_iter().collect();
            let details = DeviceDetails {
                mapped_blocks: maps.len() as u64,
                transaction_id: id,
                creation_time: id as u32,
                snapshotted_time: id as u32,
            };
            devs.insert(id * 3 + 1, (details, maps));
        }
        if devices > 1 {
            // An empty device too.
            let details = DeviceDetails {
                mapped_blocks: 0,
                transaction_id: 9,
                creation_time: 9,
                snapshotted_time: 9,
            };
            devs.insert(2, (details, Vec::new()));
        }
        XmlPool {
            sb: XmlSuperblock {
                time: 5,
                transaction: 17,
                flags: 0,
                version: 2,
                data_block_size: 128,
                nr_data_blocks: nr_data,
            },
            devices: devs,
        }
    }

    /// What restore wrote before it streamed: the whole pool through
    /// `Transaction::build`, committed.
    fn built(pool: &XmlPool, over: Overrides, vol: &Arc<MemVolume>) {
        let dev = MetaDev::new(vol.clone());
        let nr_meta = meta_blocks(&dev).unwrap();
        let sb = fresh_superblock(pool.sb, over, nr_meta);
        let mut tx = Transaction::build(
            &sb,
            (1..nr_meta).collect(),
            &pool.devices,
            &BTreeMap::new(),
            None,
        )
        .unwrap();
        tx.set_version(pool.sb.version);
        tx.commit(&dev).unwrap();
    }

    fn volume(sectors: u64) -> Arc<MemVolume> {
        Arc::new(MemVolume::new(SectorCount(sectors)).unwrap())
    }

    /// The streaming restore, from the pool held and from its XML in a file (in document
    /// order, and with the devices and one device's mappings shuffled), writes exactly the
    /// bytes the whole-pool transaction writes, and they read back as the pool.
    #[test]
    fn streamed_restore_writes_what_the_whole_pool_transaction_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            (1, 1, 3000, 20_000, Overrides::default()),
            (2, 5, 2000, 40_000, Overrides::default()),
            (3, 300, 20, 2_000, Overrides::default()),
            (4, 0, 0, 100, Overrides::default()),
            (
                5,
                3,
                500,
                600_000,
                Overrides {
                    transaction_id: Some(3),
                    data_block_size: Some(256),
                    nr_data_blocks: Some(700_000),
                },
            ),
        ];
        for (seed, devices, base, nr_data, over) in cases {
            let pool = pool(seed, devices, base, nr_data);
            let sectors = 16 << 11; // 16 MiB
            let want = volume(sectors);
            built(&pool, over, &want);
            let want = want.to_vec();

            let held = volume(sectors);
            restore(&pool, &MetaDev::new(held.clone()), over).unwrap();
            assert!(
                held.to_vec() == want,
                "seed {seed}: restore of the held pool"
            );

            let xml = pool.dump_xml();
            let x = tmp.path().join("in.xml");
            std::fs::write(&x, &xml).unwrap();
            let streamed = volume(sectors);
            restore_file(&x, &MetaDev::new(streamed.clone()), over, &mut |_| {}).unwrap();
            assert!(streamed.to_vec() == want, "seed {seed}: streamed restore");

            // Devices in reverse order, the last device's mappings reversed.
            let mut lines: Vec<&str> = xml.lines().collect();
            let (head, tail) = (lines.remove(0), lines.pop().unwrap());
            let mut devs: Vec<Vec<&str>> = Vec::new();
            for l in lines {
                if l.starts_with("  <device") {
                    devs.push(Vec::new());
                }
                devs.last_mut().unwrap().push(l);
            }
            if let Some(d) = devs.last_mut() {
                let end = d.pop().unwrap();
                d[1..].reverse();
                d.push(end);
            }
            devs.reverse();
            let mut shuffled = format!("{head}\n");
            for l in devs.iter().flatten() {
                shuffled.push_str(l);
                shuffled.push('\n');
            }
            shuffled.push_str(tail);
            std::fs::write(&x, &shuffled).unwrap();
            let other = volume(sectors);
            restore_file(&x, &MetaDev::new(other.clone()), over, &mut |_| {}).unwrap();
            assert!(other.to_vec() == want, "seed {seed}: shuffled document");

            let md = Metadata::open(other).unwrap();
            assert!(md.check().unwrap().is_empty(), "seed {seed}: space maps");
        }
    }

    /// Errors come before the first write: a document that does not fit the metadata
    /// device, or maps past an overridden data device's end, leaves it untouched.
    #[test]
    fn refusals_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let x = tmp.path().join("in.xml");
        // Fewer mappings than 60 blocks of leaves hold, but a device tree each for 100.
        std::fs::write(&x, pool(7, 100, 1, 2_000).dump_xml()).unwrap();
        let small = volume(8 * 60);
        let e = restore_file(
            &x,
            &MetaDev::new(small.clone()),
            Overrides::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, Error::NoSpace { .. }), "{e}");
        assert!(small.to_vec().iter().all(|&b| b == 0));
        let vol = volume(16 << 11);
        let over = Overrides {
            nr_data_blocks: Some(100),
            ..Overrides::default()
        };
        std::fs::write(&x, pool(7, 4, 3000, 20_000).dump_xml()).unwrap();
        let e = restore_file(&x, &MetaDev::new(vol.clone()), over, &mut |_| {}).unwrap_err();
        assert!(
            e.to_string().contains("mapping beyond end of data device"),
            "{e}"
        );
        assert!(vol.to_vec().iter().all(|&b| b == 0));
    }

    #[test]
    fn block_counts_are_exact_past_a_byte_and_past_the_dense_part() {
        let mut c = BlockCounts::new(1000, 10);
        for _ in 0..300 {
            c.add(3);
        }
        c.add(500);
        c.add(500);
        c.add(9);
        assert_eq!((c.get(3), c.get(500), c.get(9), c.get(4)), (300, 2, 1, 0));
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            vec![(3, 300), (9, 1), (500, 2)]
        );
    }
}
