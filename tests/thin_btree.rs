//! dm-btree's insert against the real kernel: tests/fixtures/thin/btree.guest.sh made two
//! pools on 6.12 by inserting keys in an order that makes dm-btree move entries of full
//! nodes into their left and right siblings, split two nodes into three, split one into
//! two at the ends of a parent, and split the root beneath itself (pool A: 2,100 4 KiB
//! writes at drawn blocks of thin 0 and, after a snapshot, of both: 13 left and 4 right
//! rebalances, 3 splits in two, 1 in three, counted when it was written; pool B: 300
//! create_thin messages with drawn ids, so the top level and the details tree, which
//! rebalances and splits too, span several nodes). dmemu replays the
//! orders the kernel recorded on fresh images; every tree has the kernel's nodes (each
//! node's keys, in tree order, and which nodes two trees share), the same values, and the
//! pool status is the kernel's, metadata usage included.

mod thin_support;

use std::collections::HashSet;
use std::sync::Arc;

use dmemu::table::args::Args;
use dmemu::targets::thin::metadata::btree::read_node;
use dmemu::targets::thin::metadata::{Metadata, DETAILS_SIZE};
use dmemu::targets::{Target, Thin, ThinPool, ThinPoolArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};
use thin_support::{fixtures, gunzip};

/// The rest of btree-kernel.txt's line that starts with `head` and a space.
fn kernel_line(head: &str) -> String {
    let text = std::fs::read_to_string(fixtures().join("btree-kernel.txt")).unwrap();
    let l = text
        .lines()
        .find_map(|l| l.strip_prefix(head)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {head} line"));
    l.to_string()
}

/// The keys of an ORDER line.
fn order(name: &str) -> Vec<u64> {
    kernel_line(name)
        .split(' ')
        .map(|k| k.parse().unwrap())
        .collect()
}

/// The kernel's `STATUS POOL 0 LEN thin-pool ...` line without its first four words.
fn kernel_status(pool: &str) -> String {
    kernel_line(&format!("STATUS {pool}"))
        .splitn(4, ' ')
        .nth(3)
        .unwrap()
        .to_string()
}

/// Every node of the tree at `root` in tree order (depth first, children in key order):
/// depth, leaf or internal, its keys, and whether `shared` holds its block.
fn nodes(md: &Metadata, root: u64, vs: usize, shared: &HashSet<u64>) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(root, 0usize)];
    while let Some((b, depth)) = stack.pop() {
        let n = read_node(md.dev(), b, vs).unwrap();
        out.push(format!(
            "{depth} {} {}{:?}",
            if n.leaf { "leaf" } else { "internal" },
            if shared.contains(&b) { "shared " } else { "" },
            n.keys
        ));
        if !n.leaf {
            for i in (0..n.keys.len()).rev() {
                stack.push((n.child(i), depth + 1));
            }
        }
    }
    out
}

/// The blocks of every node of the tree at `root`.
fn blocks(md: &Metadata, root: u64, vs: usize) -> HashSet<u64> {
    let mut out = HashSet::new();
    let mut stack = vec![root];
    while let Some(b) = stack.pop() {
        out.insert(b);
        let n = read_node(md.dev(), b, vs).unwrap();
        if !n.leaf {
            stack.extend((0..n.keys.len()).map(|i| n.child(i)));
        }
    }
    out
}

/// dmemu's committed metadata (checked clean) and the kernel's from `fixture`.
fn ours_and_kernels(meta: &Arc<MemVolume>, fixture: &str) -> (Metadata, Metadata) {
    let ours = Metadata::open(meta.clone() as SharedVolume).unwrap();
    assert_eq!(ours.check().unwrap(), Vec::<String>::new());
    let theirs =
        Metadata::open(Arc::new(MemVolume::from_bytes(gunzip(fixture)).unwrap()) as SharedVolume)
            .unwrap();
    (ours, theirs)
}

fn open_pool(features: &str, meta: &Arc<MemVolume>, data: &Arc<MemVolume>) -> Arc<ThinPool> {
    let text = format!("meta data 128 16 {features}");
    let tokens: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    let args = ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap();
    Arc::new(ThinPool::over(&args, data.size(), meta.clone(), data.clone()).unwrap())
}

/// btree.guest.sh's `writes`: a 4 KiB write of zeros at each drawn block.
fn writes(t: &Thin, keys: &[u64]) {
    for &k in keys {
        t.write(Sector(k * 128), &[0; 4096]).unwrap();
    }
}

#[test]
fn mapping_trees_split_and_rebalance_as_the_kernels_did() {
    let meta = Arc::new(MemVolume::new(SectorCount(4 * 2048)).unwrap());
    let data = Arc::new(MemVolume::new(SectorCount(256 * 2048)).unwrap());
    let pool = open_pool("1 skip_block_zeroing", &meta, &data);
    let vsz = SectorCount(4096 * 128);
    pool.message(&["create_thin", "0"]).unwrap();
    let a0 = Thin::over(pool.clone(), 0, vsz, None).unwrap();
    writes(&a0, &order("ORDER-A0"));
    a0.flush().unwrap(); // dmsetup suspend a0
    pool.message(&["create_snap", "1", "0"]).unwrap();
    let a1 = Thin::over(pool.clone(), 1, vsz, None).unwrap();
    writes(&a0, &order("ORDER-A1"));
    writes(&a1, &order("ORDER-A2"));
    assert_eq!(pool.status(), kernel_status("poola"));
    drop((a0, a1));
    drop(pool);

    let (ours, theirs) = ours_and_kernels(&meta, "btree-a-meta.img.gz");
    let mut compared = 0;
    for md in [&ours, &theirs] {
        assert_eq!(md.device_roots().unwrap().len(), 2);
    }
    let trees = |md: &Metadata| {
        let (r0, r1) = (
            md.device_root(0).unwrap().unwrap(),
            md.device_root(1).unwrap().unwrap(),
        );
        let (b0, b1) = (blocks(md, r0, 8), blocks(md, r1, 8));
        let shared: HashSet<u64> = b0.intersection(&b1).copied().collect();
        (
            nodes(md, r0, 8, &shared),
            nodes(md, r1, 8, &shared),
            md.mappings(r0).unwrap(),
            md.mappings(r1).unwrap(),
        )
    };
    let (o, t) = (trees(&ours), trees(&theirs));
    for (name, a, b) in [("thin 0", &o.0, &t.0), ("snapshot 1", &o.1, &t.1)] {
        assert_eq!(a.len(), b.len(), "{name}: node count");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x, y, "{name}: node {i}");
            compared += 1;
        }
    }
    assert!(compared >= 14, "{compared} nodes");
    assert_eq!(o.2, t.2, "thin 0 mappings");
    assert_eq!(o.3, t.3, "snapshot 1 mappings");
    assert_eq!(ours.devices().unwrap(), theirs.devices().unwrap());
}

#[test]
fn the_top_level_and_details_trees_of_300_thins_are_the_kernels() {
    let meta = Arc::new(MemVolume::new(SectorCount(4 * 2048)).unwrap());
    let data = Arc::new(MemVolume::new(SectorCount(16 * 2048)).unwrap());
    let pool = open_pool("0", &meta, &data);
    let ids = order("ORDER-B");
    assert_eq!(ids.len(), 300);
    for id in &ids {
        pool.message(&["create_thin", &id.to_string()]).unwrap();
    }
    assert_eq!(pool.status(), kernel_status("poolb"));
    drop(pool);

    let (ours, theirs) = ours_and_kernels(&meta, "btree-b-meta.img.gz");
    let none = HashSet::new();
    for (what, vs, details) in [("top level", 8, false), ("details", DETAILS_SIZE, true)] {
        let root = |md: &Metadata| {
            let sb = md.superblock();
            if details {
                sb.device_details_root
            } else {
                sb.data_mapping_root
            }
        };
        let (a, b) = (
            nodes(&ours, root(&ours), vs, &none),
            nodes(&theirs, root(&theirs), vs, &none),
        );
        assert!(a.len() >= 3, "{what}: {} nodes", a.len());
        assert_eq!(a, b, "{what}");
    }
    assert_eq!(ours.devices().unwrap(), theirs.devices().unwrap());
}
