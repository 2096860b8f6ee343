//! Salvage from damaged metadata (`thin repair`, `thin dump --repair`): every device and
//! mapping still readable, as thin_repair keeps them.
//!
//! 1. The superblock: its fields when its magic is there (checksum or not); the
//!    `--transaction-id`, `--data-block-size`, `--nr-data-blocks` options override them and
//!    must be given when it is gone (thin_repair's rule).
//! 2. With a readable superblock and roots, the trees are walked leniently: a node that
//!    fails its checks (checksum, block number, header, key order, key range, a cycle) is
//!    skipped with its subtree, everything else kept.
//! 3. When a root is gone (superblock or root node unreadable), every block of the device
//!    is scanned for btree nodes that pass their checks (as thin-provisioning-tools 1.x
//!    does). Nodes no other node points to are roots. A root whose leaves hold 24-byte
//!    values is a details tree; a root whose leaf values all name other roots of 8-byte
//!    trees is a top level (devices to mapping trees); the rest are mapping trees. Of
//!    several candidates (earlier transactions' trees stay on disk until reused), the top
//!    level whose mappings carry the latest time wins, then the one with most devices; the
//!    details tree covering most of its devices wins. A mapping tree no top level names
//!    goes to a device the details tree lists without one, when exactly one such device has
//!    its `mapped_blocks`.
//!
//! Mappings to data blocks past the pool's end are dropped (thin_check refuses them).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{Error, Result};

use super::super::metadata::block::{self, le64, Kind, MetaDev};
use super::super::metadata::btree::{self, Node};
use super::super::metadata::superblock::Superblock;
use super::super::metadata::writer::Devices;
use super::super::metadata::{BlockTime, DeviceDetails, DETAILS_SIZE};
use super::xml::{XmlPool, XmlSuperblock};
use super::Overrides;

/// What a salvage found and what it had to leave.
#[derive(Clone, Debug, Default)]
pub struct Salvage {
    /// The pool, ready to restore or dump.
    pub pool: XmlPool,
    /// What was damaged and skipped, one line each.
    pub damage: Vec<String>,
    /// Whether the roots came from a scan of the whole device.
    pub scanned: bool,
}

/// A node that passes the btree node checks, read with the value size its header gives
/// (8 or 24 bytes: the trees a salvage looks at).
fn node_at(dev: &MetaDev, b: u64) -> Option<Node> {
    let buf = dev.read_raw(b, "btree node").ok()?;
    block::check(&buf, b, Kind::BtreeNode).ok()?;
    let vs = usize::try_from(block::le32(&buf, 24)).ok()?;
    let leaf = block::le32(&buf, 4) & btree::LEAF_NODE != 0;
    if !leaf && vs != 8 {
        return None;
    }
    if vs != 8 && vs != DETAILS_SIZE {
        return None;
    }
    Node::parse(&buf, b, if leaf { vs } else { 8 }).ok()
}

/// Walk the tree at `root`, keeping every value of every node that reads and checks, and
/// noting the rest in `damage`.
fn walk_lenient(
    dev: &MetaDev,
    root: u64,
    value_size: usize,
    visit: &mut dyn FnMut(u64, &[u8]),
    damage: &mut Vec<String>,
) {
    let mut seen = HashSet::new();
    let mut stack = vec![(root, 0usize, 0u64, None::<u64>)];
    while let Some((b, depth, lo, hi)) = stack.pop() {
        if depth >= btree::MAX_DEPTH || !seen.insert(b) {
            damage.push(format!(
                "btree node {b}: reached twice or too deep, skipped"
            ));
            continue;
        }
        let node = match btree::read_node(dev, b, value_size) {
            Ok(n) => n,
            Err(e) => {
                damage.push(format!("{e}; its subtree is skipped"));
                continue;
            }
        };
        if let (Some(&f), Some(&l)) = (node.keys.first(), node.keys.last()) {
            if f < lo || hi.is_some_and(|h| l >= h) {
                damage.push(format!(
                    "btree node {b}: keys {f}..={l} outside its parent's range, skipped"
                ));
                continue;
            }
        }
        if node.leaf {
            for i in 0..node.keys.len() {
                visit(node.keys[i], node.value(i));
            }
        } else {
            // Children pushed in reverse so they pop in key order.
            for i in (0..node.keys.len()).rev() {
                let h = node.keys.get(i + 1).copied().or(hi);
                stack.push((node.child(i), depth + 1, node.keys[i], h));
            }
        }
    }
}

/// A device's mappings from its tree, leniently, dropping data blocks past `nr_data`.
fn mappings(
    dev: &MetaDev,
    root: u64,
    nr_data: u64,
    damage: &mut Vec<String>,
) -> Vec<(u64, BlockTime)> {
    let mut out = Vec::new();
    let mut dropped = 0u64;
    walk_lenient(
        dev,
        root,
        8,
        &mut |k, v| {
            let bt = BlockTime::unpack(le64(v, 0));
            if bt.block < nr_data {
                out.push((k, bt));
            } else {
                dropped += 1;
            }
        },
        damage,
    );
    if dropped > 0 {
        damage.push(format!(
            "mapping tree {root}: {dropped} mappings past the data device's {nr_data} blocks dropped"
        ));
    }
    out.sort_by_key(|&(k, _)| k);
    out.dedup_by_key(|&mut (k, _)| k);
    out
}

/// Every node on the device that passes its checks.
struct Scan {
    nodes: HashMap<u64, Node>,
    roots: Vec<u64>,
}

impl Scan {
    fn run(dev: &MetaDev) -> Scan {
        let mut nodes = HashMap::new();
        for b in 1..dev.nr_blocks() {
            if let Some(n) = node_at(dev, b) {
                nodes.insert(b, n);
            }
        }
        let mut pointed = HashSet::new();
        for n in nodes.values().filter(|n| !n.leaf) {
            for i in 0..n.keys.len() {
                pointed.insert(n.child(i));
            }
        }
        let mut roots: Vec<u64> = nodes
            .keys()
            .filter(|b| !pointed.contains(b))
            .copied()
            .collect();
        roots.sort_unstable();
        Scan { nodes, roots }
    }

    /// The value size of the leaves under `b` (following first children).
    fn leaf_size(&self, mut b: u64) -> Option<usize> {
        for _ in 0..btree::MAX_DEPTH {
            let n = self.nodes.get(&b)?;
            if n.leaf {
                return Some(n.value_size);
            }
            b = n.child(0);
        }
        None
    }

    /// The values of the leaves of the tree at `root` (only nodes the scan found).
    fn leaf_values(&self, root: u64, value_size: usize) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![(root, 0)];
        let mut seen = HashSet::new();
        while let Some((b, depth)) = stack.pop() {
            let Some(n) = self.nodes.get(&b) else {
                continue;
            };
            if depth >= btree::MAX_DEPTH || !seen.insert(b) {
                continue;
            }
            if n.leaf {
                if n.value_size == value_size {
                    out.extend((0..n.keys.len()).map(|i| (n.keys[i], n.value(i).to_vec())));
                }
            } else {
                stack.extend((0..n.keys.len()).rev().map(|i| (n.child(i), depth + 1)));
            }
        }
        out.sort_by_key(|(k, _)| *k);
        out
    }
}

/// The superblock fields to use: the damaged superblock's where its magic survives, the
/// overrides over them; an error naming the missing fields otherwise.
fn fields(dev: &MetaDev, over: Overrides) -> Result<(XmlSuperblock, Option<Superblock>)> {
    let raw = dev.read_raw(0, "thin superblock")?;
    let sb = Superblock::parse(&raw, 0).ok();
    let missing: Vec<&str> = [
        (over.transaction_id.is_none(), "transaction id"),
        (over.data_block_size.is_none(), "data block size"),
        (over.nr_data_blocks.is_none(), "nr data blocks"),
    ]
    .iter()
    .filter(|(m, _)| *m && sb.is_none())
    .map(|&(_, n)| n)
    .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(
            "thin repair",
            format!(
                "The following field needs to be provided on the command line due to \
                 corruption in the superblock: {} (--transaction-id, --data-block-size, \
                 --nr-data-blocks)",
                missing.join(", ")
            ),
        ));
    }
    let x = XmlSuperblock {
        time: sb.as_ref().map_or(0, |s| s.time),
        transaction: over
            .transaction_id
            .or(sb.as_ref().map(|s| s.transaction_id))
            .unwrap_or(0),
        flags: 0,
        version: sb.as_ref().map_or(2, |s| s.version),
        data_block_size: over
            .data_block_size
            .or(sb.as_ref().map(|s| s.data_block_size))
            .unwrap_or(0),
        nr_data_blocks: over
            .nr_data_blocks
            .or(sb.as_ref().map(|s| s.data_sm.nr_blocks))
            .unwrap_or(0),
    };
    let checksum_ok = block::check(&raw, 0, Kind::Superblock).is_ok();
    Ok((x, sb.filter(|_| checksum_ok)))
}

/// Salvage the pool on `dev` (see the module docs).
pub fn salvage(dev: &MetaDev, over: Overrides) -> Result<Salvage> {
    let (mut sbx, sb) = fields(dev, over)?;
    let nr_data = sbx.nr_data_blocks;
    let mut damage = Vec::new();
    if sb.is_none() {
        damage.push("superblock: damaged, roots searched for".into());
    }
    let usable = sb.as_ref().filter(|s| {
        node_at(dev, s.data_mapping_root).is_some() && node_at(dev, s.device_details_root).is_some()
    });
    let (tops, details, scanned) = match usable {
        Some(s) => {
            let mut tops = BTreeMap::new();
            walk_lenient(
                dev,
                s.data_mapping_root,
                8,
                &mut |k, v| {
                    tops.insert(k, le64(v, 0));
                },
                &mut damage,
            );
            let mut details = BTreeMap::new();
            walk_lenient(
                dev,
                s.device_details_root,
                DETAILS_SIZE,
                &mut |k, v| {
                    details.insert(k, DeviceDetails::parse(v));
                },
                &mut damage,
            );
            (tops, details, false)
        }
        None => {
            if sb.is_some() {
                damage.push("superblock roots unreadable, roots searched for".into());
            }
            let (t, d) = from_scan(dev, nr_data, &mut damage);
            (t, d, true)
        }
    };
    let mut devices = Devices::new();
    let mut max_time = 0;
    for (&id, &root) in &tops {
        let maps = mappings(dev, root, nr_data, &mut damage);
        max_time = maps.iter().map(|(_, bt)| bt.time).fold(max_time, u32::max);
        let mut d = details.get(&id).copied().unwrap_or_else(|| {
            damage.push(format!("device {id}: no details, zeros used"));
            DeviceDetails::default()
        });
        d.mapped_blocks = maps.len() as u64;
        devices.insert(id, (d, maps));
    }
    for id in details.keys().filter(|id| !tops.contains_key(id)) {
        damage.push(format!(
            "device {id}: details but no mapping tree, left out"
        ));
    }
    if sb.is_none() {
        let dt = details
            .values()
            .map(|d| d.creation_time.max(d.snapshotted_time))
            .max()
            .unwrap_or(0);
        sbx.time = sbx.time.max(max_time).max(dt);
    }
    Ok(Salvage {
        pool: XmlPool { sb: sbx, devices },
        damage,
        scanned,
    })
}

type Found = (BTreeMap<u64, u64>, BTreeMap<u64, DeviceDetails>);

/// Roots from a scan of every block (see the module docs).
fn from_scan(dev: &MetaDev, nr_data: u64, damage: &mut Vec<String>) -> Found {
    let scan = Scan::run(dev);
    let mut detail_roots = Vec::new();
    let mut eight = Vec::new();
    for &r in &scan.roots {
        match scan.leaf_size(r) {
            Some(DETAILS_SIZE) => detail_roots.push(r),
            Some(8) => eight.push(r),
            _ => {}
        }
    }
    let eight_set: HashSet<u64> = eight.iter().copied().collect();
    // Top levels: every leaf value names another 8-byte root (and there is one at least).
    let mut tops: Vec<(u64, BTreeMap<u64, u64>)> = Vec::new();
    for &r in &eight {
        let vals = scan.leaf_values(r, 8);
        let names_roots = !vals.is_empty()
            && vals.iter().all(|(k, v)| {
                let b = le64(v, 0);
                *k < (1 << 24) && b != r && eight_set.contains(&b)
            });
        if names_roots {
            tops.push((r, vals.iter().map(|(k, v)| (*k, le64(v, 0))).collect()));
        }
    }
    let latest = |m: &BTreeMap<u64, u64>| {
        m.values()
            .flat_map(|&root| scan.leaf_values(root, 8))
            .map(|(_, v)| BlockTime::unpack(le64(&v, 0)).time)
            .max()
            .unwrap_or(0)
    };
    let best = tops
        .iter()
        .max_by_key(|(r, m)| (latest(m), m.len(), *r))
        .map(|(r, m)| (*r, m.clone()));
    let mut top = BTreeMap::new();
    if let Some((r, m)) = best {
        damage.push(format!("top level of the mapping tree found at block {r}"));
        top = m;
    }
    let details: BTreeMap<u64, DeviceDetails> = detail_roots
        .iter()
        .map(|&r| {
            let m: BTreeMap<u64, DeviceDetails> = scan
                .leaf_values(r, DETAILS_SIZE)
                .into_iter()
                .map(|(k, v)| (k, DeviceDetails::parse(&v)))
                .collect();
            (r, m)
        })
        .max_by_key(|(r, m)| {
            (
                m.keys().filter(|k| top.contains_key(k)).count(),
                m.len(),
                *r,
            )
        })
        .map(|(r, m)| {
            damage.push(format!("device details tree found at block {r}"));
            m
        })
        .unwrap_or_default();
    // Mapping trees no top level names, given to the one details-only device of their size.
    let named: HashSet<u64> = tops.iter().flat_map(|(_, m)| m.values().copied()).collect();
    let top_roots: HashSet<u64> = tops.iter().map(|(r, _)| *r).collect();
    for &r in eight
        .iter()
        .filter(|r| !named.contains(r) && !top_roots.contains(r))
    {
        let n = mappings(dev, r, nr_data, &mut Vec::new()).len() as u64;
        let fits: Vec<u64> = details
            .iter()
            .filter(|(id, d)| !top.contains_key(id) && d.mapped_blocks == n)
            .map(|(id, _)| *id)
            .collect();
        if let [id] = fits[..] {
            damage.push(format!(
                "mapping tree at block {r} ({n} mappings) given to device {id} by its mapped_blocks"
            ));
            top.insert(id, r);
        }
    }
    (top, details)
}
