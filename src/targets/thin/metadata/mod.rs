//! Thin-pool metadata (kernel dm-thin-metadata.c over persistent-data/): the superblock,
//! btrees, the two-level mapping tree, device details and both space maps, read with the
//! kernel's checks. Every damaged block is reported with its block number, byte offset and
//! field (`Error::Corrupt`).
//!
//! ```text
//!  block 0  superblock ── data_mapping_root ──> btree dev_id ─> per-device btree
//!                │                                  virtual block ─> (data block << 24 | time)
//!                ├─ device_details_root ──> btree dev_id ─> details (24 bytes)
//!                ├─ data_sm_root ──> btree of index entries ─> bitmaps (+ ref count btree)
//!                └─ metadata_sm_root ──> index block ─> bitmaps (+ ref count btree)
//! ```

use std::collections::BTreeMap;

use crate::error::Result;
use crate::volume::SharedVolume;

pub use crate::targets::pdata::{block, btree, cache, space_map};
pub mod superblock;
pub mod tx;
pub mod writer;

use block::{corrupt, le32, le64, Kind, MetaDev};
use space_map::{SmKind, SpaceMap};
use superblock::Superblock;

use super::tools::xml::{XmlSuperblock, XmlWriter};

/// Size of a device details value (`struct disk_device_details`).
pub const DETAILS_SIZE: usize = 24;

/// A mapping tree value: data block and the pool time it was written at
/// (`pack_block_time`: 40-bit block, 24-bit time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockTime {
    /// Data block.
    pub block: u64,
    /// Pool time when mapped.
    pub time: u32,
}

impl BlockTime {
    /// `unpack_block_time`.
    #[must_use]
    pub fn unpack(v: u64) -> BlockTime {
        BlockTime {
            block: v >> 24,
            time: u32::try_from(v & 0xff_ffff).unwrap_or(0),
        }
    }

    /// `pack_block_time`.
    #[must_use]
    pub fn pack(self) -> u64 {
        (self.block << 24) | u64::from(self.time & 0xff_ffff)
    }
}

/// `struct disk_device_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceDetails {
    /// Blocks mapped (the kernel's count, shown by thin status).
    pub mapped_blocks: u64,
    /// Pool transaction id when the device was created.
    pub transaction_id: u64,
    /// Pool time when created.
    pub creation_time: u32,
    /// Pool time of the last snapshot of (or from) it.
    pub snapshotted_time: u32,
}

impl DeviceDetails {
    /// Decode 24 bytes.
    #[must_use]
    pub fn parse(v: &[u8]) -> DeviceDetails {
        DeviceDetails {
            mapped_blocks: le64(v, 0),
            transaction_id: le64(v, 8),
            creation_time: le32(v, 16),
            snapshotted_time: le32(v, 20),
        }
    }

    /// Encode to 24 bytes.
    #[must_use]
    pub fn encode(&self) -> [u8; DETAILS_SIZE] {
        let mut v = [0; DETAILS_SIZE];
        v[0..8].copy_from_slice(&self.mapped_blocks.to_le_bytes());
        v[8..16].copy_from_slice(&self.transaction_id.to_le_bytes());
        v[16..20].copy_from_slice(&self.creation_time.to_le_bytes());
        v[20..24].copy_from_slice(&self.snapshotted_time.to_le_bytes());
        v
    }
}

/// Reference counts a set of trees holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefCounts {
    /// Metadata block → references.
    pub meta: BTreeMap<u64, u32>,
    /// Data block → references.
    pub data: BTreeMap<u64, u32>,
}

/// Which tree a node belongs to when counting references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// Top level of the mapping tree (values: device tree roots).
    Top,
    /// A device's mapping tree (values: block and time).
    Bottom,
    /// The details tree.
    Details,
    /// The data space map's index btree (values: index entries naming bitmap blocks).
    Index,
    /// A space map's ref-count btree (values: u32 counts).
    RefCount,
}

/// Pool metadata opened read-only at its last committed superblock.
#[derive(Clone, Debug)]
pub struct Metadata {
    dev: MetaDev,
    sb: Superblock,
    /// Data blocks mappings may name: the live superblock's data space map size (a
    /// metadata snapshot's copy has its space map roots zeroed).
    nr_data_blocks: u64,
}

impl Metadata {
    /// Open the metadata on `volume`: read and check the superblock (`__open_metadata`).
    pub fn open(volume: SharedVolume) -> Result<Metadata> {
        let (dev, buf) = Metadata::superblock_block(volume)?;
        block::check(&buf, 0, Kind::Superblock)?;
        let sb = Superblock::parse(&buf, 0)?;
        Ok(Metadata::with(dev, sb))
    }

    /// Open as thin_dump 0.9 does: the superblock's checksum is checked, not its blocknr,
    /// magic, metadata block size or incompat flags (which the kernel and [`Metadata::open`]
    /// refuse); for dumping what such a superblock holds.
    pub fn open_for_dump(volume: SharedVolume) -> Result<Metadata> {
        let (dev, buf) = Metadata::superblock_block(volume)?;
        let want = block::checksum(&buf[4..], block::SUPERBLOCK_CSUM_XOR);
        let got = le32(&buf, 0);
        if got != want {
            return Err(corrupt(
                "thin superblock",
                0,
                0,
                format_args!("checksum {got:#010x}, computed {want:#010x}"),
            ));
        }
        let mut sb = Superblock::fields(&buf);
        if le64(&buf, 8) != 0 {
            // thin_dump 0.9 reads a superblock its validator refuses (the blocknr) without
            // opening the data space map, and prints nr_data_blocks="0".
            sb.data_sm.nr_blocks = 0;
        }
        Ok(Metadata::with(dev, sb))
    }

    fn superblock_block(volume: SharedVolume) -> Result<(MetaDev, Vec<u8>)> {
        let dev = MetaDev::new(volume);
        let buf = dev.read_raw(0, "thin superblock")?;
        if crate::volume::is_zero(&buf) {
            return Err(corrupt(
                "thin superblock",
                0,
                0,
                "all zeroes: unformatted metadata (the kernel would format it)",
            ));
        }
        Ok((dev, buf))
    }

    fn with(dev: MetaDev, sb: Superblock) -> Metadata {
        let nr_data_blocks = sb.data_sm.nr_blocks;
        Metadata {
            dev,
            sb,
            nr_data_blocks,
        }
    }

    /// The committed superblock.
    #[must_use]
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The metadata device.
    #[must_use]
    pub fn dev(&self) -> &MetaDev {
        &self.dev
    }

    /// The superblock copy a metadata snapshot holds (`thin_dump --metadata-snap`).
    pub fn metadata_snap(&self) -> Result<Option<Metadata>> {
        if self.sb.held_root == 0 {
            return Ok(None);
        }
        let buf = self.dev.read(self.sb.held_root, Kind::Superblock)?;
        let sb = Superblock::parse(&buf, self.sb.held_root)?;
        Ok(Some(Metadata {
            dev: self.dev.clone(),
            sb,
            nr_data_blocks: self.nr_data_blocks,
        }))
    }

    /// The superblock copy at `block` read as a metadata snapshot (`thin_dump -m BLOCK`).
    pub fn metadata_snap_at(&self, block: u64) -> Result<Metadata> {
        let buf = self.dev.read(block, Kind::Superblock)?;
        let sb = Superblock::parse(&buf, block)?;
        Ok(Metadata {
            dev: self.dev.clone(),
            sb,
            nr_data_blocks: self.nr_data_blocks,
        })
    }

    /// The references a metadata snapshot at `held_root` holds (`reserve_metadata_snap`
    /// keeps its trees alive): each metadata block it reaches, counted once per reference
    /// (the copy itself, its roots, every child pointer and device root), and each data
    /// block once per distinct leaf naming it (the kernel's counting: a shared node counts
    /// once for its children). `None` when no snapshot is held.
    pub fn snapshot_refs(&self, held_root: u64) -> Result<Option<RefCounts>> {
        if held_root == 0 {
            return Ok(None);
        }
        let mut rc = RefCounts::default();
        let mut seen = std::collections::HashSet::new();
        self.snapshot_refs_into(held_root, &mut rc, &mut seen)?;
        Ok(Some(rc))
    }

    /// `snapshot_refs` adding into `rc`, skipping the children of nodes already in `seen`
    /// (a node shared with trees counted before counts its children once).
    pub fn snapshot_refs_into(
        &self,
        held_root: u64,
        rc: &mut RefCounts,
        seen: &mut std::collections::HashSet<u64>,
    ) -> Result<()> {
        let buf = self.dev.read(held_root, Kind::Superblock)?;
        let copy = Superblock::parse(&buf, held_root)?;
        *rc.meta.entry(held_root).or_insert(0) += 1;
        self.count_node(copy.data_mapping_root, Level::Top, 0, rc, seen)?;
        self.count_node(copy.device_details_root, Level::Details, 0, rc, seen)
    }

    fn count_node(
        &self,
        block: u64,
        level: Level,
        depth: usize,
        rc: &mut RefCounts,
        seen: &mut std::collections::HashSet<u64>,
    ) -> Result<()> {
        *rc.meta.entry(block).or_insert(0) += 1;
        if !seen.insert(block) {
            return Ok(());
        }
        if depth >= 2 * btree::MAX_DEPTH {
            return Err(corrupt(
                "btree depth",
                block,
                0,
                "metadata snapshot trees too deep",
            ));
        }
        let vs = match level {
            Level::Details => DETAILS_SIZE,
            Level::Index => space_map::INDEX_ENTRY_SIZE,
            Level::RefCount => 4,
            Level::Top | Level::Bottom => 8,
        };
        let node = btree::read_node(&self.dev, block, vs)?;
        for i in 0..node.keys.len() {
            if !node.leaf {
                self.count_node(node.child(i), level, depth + 1, rc, seen)?;
                continue;
            }
            match level {
                Level::Top => {
                    let root = le64(node.value(i), 0);
                    self.count_node(root, Level::Bottom, depth + 1, rc, seen)?;
                }
                Level::Bottom => {
                    let bt = BlockTime::unpack(le64(node.value(i), 0));
                    if bt.block >= self.nr_data_blocks {
                        return Err(corrupt(
                            "mapping data block",
                            block,
                            btree::HEADER_SIZE,
                            format_args!("data block {} beyond the pool", bt.block),
                        ));
                    }
                    *rc.data.entry(bt.block).or_insert(0) += 1;
                }
                Level::Index => {
                    *rc.meta.entry(le64(node.value(i), 0)).or_insert(0) += 1;
                }
                Level::Details | Level::RefCount => {}
            }
        }
        Ok(())
    }

    /// thin_check's space map check: count every reference the trees make (metadata blocks
    /// once per pointer, a shared node's children once; data blocks once per distinct leaf
    /// naming them), including the space maps' own blocks and a held metadata snapshot,
    /// and compare with both space maps. The problems found, empty when all agree.
    pub fn check(&self) -> Result<Vec<String>> {
        let sb = &self.sb;
        // The trees' key rules first (thin_check's and the lookups'): every child's keys
        // inside its parent's range, ascending across leaves, non-root nodes a third full.
        let strict = btree::Rules::STRICT;
        btree::walk_with(
            &self.dev,
            sb.device_details_root,
            DETAILS_SIZE,
            strict,
            &mut |_, _| Ok(()),
        )?;
        let mut roots = Vec::new();
        btree::walk_with(&self.dev, sb.data_mapping_root, 8, strict, &mut |_, v| {
            roots.push(le64(v, 0));
            Ok(())
        })?;
        for root in roots {
            btree::walk_with(&self.dev, root, 8, strict, &mut |_, _| Ok(()))?;
        }
        let mut rc = RefCounts::default();
        let mut seen = std::collections::HashSet::new();
        rc.meta.insert(0, 1);
        self.count_node(sb.data_mapping_root, Level::Top, 0, &mut rc, &mut seen)?;
        self.count_node(
            sb.device_details_root,
            Level::Details,
            0,
            &mut rc,
            &mut seen,
        )?;
        if let Some(snap) = self.metadata_snap()? {
            *rc.meta.entry(sb.held_root).or_insert(0) += 1;
            let s = &snap.sb;
            self.count_node(s.data_mapping_root, Level::Top, 0, &mut rc, &mut seen)?;
            self.count_node(s.device_details_root, Level::Details, 0, &mut rc, &mut seen)?;
        }
        let dsm = self.data_space_map()?;
        let msm = self.metadata_space_map()?;
        self.count_node(sb.data_sm.bitmap_root, Level::Index, 0, &mut rc, &mut seen)?;
        *rc.meta.entry(sb.metadata_sm.bitmap_root).or_insert(0) += 1;
        for e in &msm.index {
            *rc.meta.entry(e.blocknr).or_insert(0) += 1;
        }
        for root in [sb.data_sm.ref_count_root, sb.metadata_sm.ref_count_root] {
            if root != 0 {
                self.count_node(root, Level::RefCount, 0, &mut rc, &mut seen)?;
            }
        }
        let mut problems = Vec::new();
        for (sm, want, what) in [(&msm, &rc.meta, "metadata"), (&dsm, &rc.data, "data")] {
            let mut have = BTreeMap::new();
            sm.for_each_nonzero(&self.dev, &mut |b, c| {
                have.insert(b, c);
                Ok(())
            })?;
            let blocks: std::collections::BTreeSet<u64> =
                have.keys().chain(want.keys()).copied().collect();
            for b in blocks {
                let (h, w) = (
                    have.get(&b).copied().unwrap_or(0),
                    want.get(&b).copied().unwrap_or(0),
                );
                if h != w {
                    problems.push(format!(
                        "{what} block {b}: space map count {h}, referenced {w} times"
                    ));
                }
            }
        }
        Ok(problems)
    }

    /// Every device's details, by id.
    pub fn devices(&self) -> Result<BTreeMap<u64, DeviceDetails>> {
        let mut out = BTreeMap::new();
        btree::walk(
            &self.dev,
            self.sb.device_details_root,
            DETAILS_SIZE,
            &mut |k, v| {
                out.insert(k, DeviceDetails::parse(v));
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// The top level of the mapping tree: each device's mapping tree root, by id.
    pub fn device_roots(&self) -> Result<BTreeMap<u64, u64>> {
        let mut out = BTreeMap::new();
        btree::walk(&self.dev, self.sb.data_mapping_root, 8, &mut |k, v| {
            out.insert(k, le64(v, 0));
            Ok(())
        })?;
        Ok(out)
    }

    /// One device's details, if it exists.
    pub fn device(&self, dev_id: u64) -> Result<Option<DeviceDetails>> {
        Ok(
            btree::lookup(&self.dev, self.sb.device_details_root, dev_id, DETAILS_SIZE)?
                .map(|v| DeviceDetails::parse(&v)),
        )
    }

    /// One device's mapping tree root, if it exists.
    pub fn device_root(&self, dev_id: u64) -> Result<Option<u64>> {
        Ok(btree::lookup(&self.dev, self.sb.data_mapping_root, dev_id, 8)?.map(|v| le64(&v, 0)))
    }

    /// Visit a device tree's mappings in virtual-block order. Data blocks beyond the data
    /// space map are corrupt.
    pub fn for_each_mapping(
        &self,
        root: u64,
        visit: &mut dyn FnMut(u64, BlockTime) -> Result<()>,
    ) -> Result<()> {
        let nr_data = self.nr_data_blocks;
        btree::walk_located(&self.dev, root, 8, &mut |k, v, at| {
            let bt = BlockTime::unpack(le64(v, 0));
            if bt.block >= nr_data {
                return Err(corrupt(
                    "mapping data block",
                    at.block,
                    at.offset,
                    format_args!(
                        "virtual block {k} maps to data block {}, the pool has {nr_data}",
                        bt.block
                    ),
                ));
            }
            visit(k, bt)
        })
    }

    /// A device tree's mappings.
    pub fn mappings(&self, root: u64) -> Result<BTreeMap<u64, BlockTime>> {
        let mut out = BTreeMap::new();
        self.for_each_mapping(root, &mut |k, bt| {
            out.insert(k, bt);
            Ok(())
        })?;
        Ok(out)
    }

    /// The data space map.
    pub fn data_space_map(&self) -> Result<SpaceMap> {
        SpaceMap::open(&self.dev, self.sb.data_sm, SmKind::Data)
    }

    /// The metadata space map.
    pub fn metadata_space_map(&self) -> Result<SpaceMap> {
        if self.sb.metadata_sm.nr_blocks > self.dev.nr_blocks() {
            return Err(corrupt(
                "metadata space map nr_blocks",
                0,
                192,
                format_args!(
                    "{} blocks, the device has {}",
                    self.sb.metadata_sm.nr_blocks,
                    self.dev.nr_blocks()
                ),
            ));
        }
        SpaceMap::open(&self.dev, self.sb.metadata_sm, SmKind::Metadata)
    }

    /// thin_dump's XML (thin-provisioning-tools 0.9, `xml_format`): the superblock, then
    /// each device of the mapping tree with its details and its mappings, runs of
    /// consecutive virtual and data blocks with one time merged into `range_mapping`s.
    /// As lenient as thin_dump where it still prints: a mapping to a data block past the
    /// pool's end is printed (thin check reports it).
    pub fn dump_xml(&self) -> Result<String> {
        let sb = &self.sb;
        let mut w = XmlWriter::new(&XmlSuperblock {
            time: sb.time,
            transaction: sb.transaction_id,
            flags: sb.flags,
            version: sb.version,
            data_block_size: sb.data_block_size,
            nr_data_blocks: sb.data_sm.nr_blocks,
        });
        // thin_dump's key rules, not the lookups' (a child key at or above its parent's
        // next key is printed).
        let rules = btree::Rules::THIN_TOOLS;
        let mut details = BTreeMap::new();
        btree::walk_with(
            &self.dev,
            sb.device_details_root,
            DETAILS_SIZE,
            rules,
            &mut |k, v| {
                details.insert(k, DeviceDetails::parse(v));
                Ok(())
            },
        )?;
        let mut roots = Vec::new();
        btree::walk_with(&self.dev, sb.data_mapping_root, 8, rules, &mut |k, v| {
            roots.push((k, le64(v, 0)));
            Ok(())
        })?;
        for (dev_id, root) in roots {
            let d = details.get(&dev_id).ok_or_else(|| {
                corrupt(
                    "device details",
                    sb.device_details_root,
                    0,
                    format_args!("device {dev_id} is in the mapping tree but has no details"),
                )
            })?;
            w.device(dev_id, d);
            btree::walk_with(&self.dev, root, 8, rules, &mut |k, v| {
                w.mapping(k, BlockTime::unpack(le64(v, 0)));
                Ok(())
            })?;
            w.end_device();
        }
        Ok(w.finish())
    }
}

#[cfg(test)]
mod tests;
