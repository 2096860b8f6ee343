//! Thin pools read on demand: a pool opens without loading its mappings, and each read
//! looks its block up in the committed btree through the pool's bounded cache of checked
//! metadata blocks. Checked against host `thin_restore` / `thin_dump` 0.9 output
//! (tests/fixtures/thin/restore-big-*, made by make.sh: 5 devices, ~9000 mappings in
//! multi-level trees): every mapping thin_dump printed reads back through the lazy pool,
//! the cache never holds more than its capacity, a damaged node found late fails exactly
//! the requests that reach it with the eager walk's error and nothing is written after it,
//! and writes after on-demand reads commit metadata that thin_check accepts and thin_dump
//! prints as expected.

mod thin_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use dmemu::table::args::Args;
use dmemu::targets::thin::metadata::block::{put64, seal, BTREE_CSUM_XOR};
use dmemu::targets::thin::metadata::btree::walk_located;
use dmemu::targets::thin::metadata::Metadata;
use dmemu::targets::{Target, Thin, ThinPool, ThinPoolArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};
use thin_support::gunzip;

/// Data block size of the fixture pool (sectors).
const BLOCK: u64 = 128;

/// Device id → virtual block → (data block, time), and each device's mapped_blocks.
type Xml = BTreeMap<u64, (u64, BTreeMap<u64, (u64, u32)>)>;

fn attr(line: &str, name: &str) -> u64 {
    let key = format!(" {name}=\"");
    let at = line.find(&key).unwrap() + key.len();
    let end = at + line[at..].find('"').unwrap();
    line[at..end].parse().unwrap()
}

/// The devices and mappings of a thin_dump XML (single and range mappings).
fn parse_xml(xml: &str) -> Xml {
    let mut out = Xml::new();
    let mut dev = None;
    for line in xml.lines() {
        let l = line.trim();
        if l.starts_with("<device ") {
            let id = attr(l, "dev_id");
            out.insert(id, (attr(l, "mapped_blocks"), BTreeMap::new()));
            dev = Some(id);
        } else if l.starts_with("<single_mapping ") {
            let m = &mut out.get_mut(&dev.unwrap()).unwrap().1;
            let t = u32::try_from(attr(l, "time")).unwrap();
            m.insert(attr(l, "origin_block"), (attr(l, "data_block"), t));
        } else if l.starts_with("<range_mapping ") {
            let m = &mut out.get_mut(&dev.unwrap()).unwrap().1;
            let t = u32::try_from(attr(l, "time")).unwrap();
            let (v, b) = (attr(l, "origin_begin"), attr(l, "data_begin"));
            for i in 0..attr(l, "length") {
                m.insert(v + i, (b + i, t));
            }
        }
    }
    out
}

fn fixture_xml() -> Xml {
    parse_xml(&String::from_utf8(gunzip("restore-big.dump.xml.gz")).unwrap())
}

fn pool_args() -> ThinPoolArgs {
    let tokens: Vec<String> = "meta data 128 0".split(' ').map(str::to_string).collect();
    ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap()
}

/// Data blocks of the fixture pool.
fn nr_data(meta: &SharedVolume) -> u64 {
    Metadata::open(meta.clone())
        .unwrap()
        .superblock()
        .data_sm
        .nr_blocks
}

/// A data device whose block `b` starts with the tag `b + 1` (little-endian u64).
fn tagged_data(nr: u64) -> Arc<MemVolume> {
    let data = Arc::new(MemVolume::new(SectorCount(nr * BLOCK)).unwrap());
    for b in 0..nr {
        let mut s = [0u8; 512];
        put64(&mut s, 0, b + 1);
        data.write(Sector(b * BLOCK), &s).unwrap();
    }
    data
}

/// The pool over `meta` and a tagged data device, with a cache of `cache` blocks.
fn lazy_pool(meta: SharedVolume, cache: usize) -> Arc<ThinPool> {
    let nr = nr_data(&meta);
    let data = tagged_data(nr);
    Arc::new(
        ThinPool::over_cached(&pool_args(), SectorCount(nr * BLOCK), meta, data, cache).unwrap(),
    )
}

/// The tag of virtual block `v` read through `t`: its data block + 1, 0 when unmapped.
fn tag(t: &Thin, v: u64) -> dmemu::Result<u64> {
    let mut s = [0u8; 512];
    t.read(Sector(v * BLOCK), &mut s)?;
    Ok(u64::from_le_bytes(s[..8].try_into().unwrap()))
}

fn thin(pool: &Arc<ThinPool>, id: u64) -> Thin {
    Thin::over(pool.clone(), id, SectorCount(1 << 30), None).unwrap()
}

fn meta_of(image: Vec<u8>) -> SharedVolume {
    Arc::new(MemVolume::from_bytes(image).unwrap())
}

#[test]
fn a_lazy_pool_reads_every_mapping_thin_dump_printed_and_the_status_it_implies() {
    let xml = fixture_xml();
    assert!(xml.values().map(|(_, m)| m.len()).sum::<usize>() > 8000);
    let pool = lazy_pool(meta_of(gunzip("restore-big-meta.img.gz")), 8);
    for (&id, (mapped, maps)) in &xml {
        let t = thin(&pool, id);
        for (&v, &(b, _)) in maps {
            assert_eq!(tag(&t, v).unwrap(), b + 1, "device {id} block {v}");
            for n in [v.wrapping_sub(1), v + 1] {
                if n != u64::MAX && !maps.contains_key(&n) {
                    assert_eq!(tag(&t, n).unwrap(), 0, "device {id} unmapped block {n}");
                }
            }
        }
        let highest = *maps.keys().last().unwrap();
        assert_eq!(
            t.status(),
            format!("{} {}", mapped * BLOCK, (highest + 1) * BLOCK - 1)
        );
    }
    assert!(!pool.mappings_loaded(), "reads loaded the mappings");
    let cache = pool.metadata_cache();
    assert!(
        cache.resident() <= 8,
        "{} blocks resident",
        cache.resident()
    );
    assert!(cache.reads() > 8, "only {} metadata reads", cache.reads());
}

#[test]
fn random_reads_across_every_tree_never_hold_more_blocks_than_the_cache_capacity() {
    let xml = fixture_xml();
    let pool = lazy_pool(meta_of(gunzip("restore-big-meta.img.gz")), 3);
    let thins: Vec<(Thin, Vec<(u64, u64)>)> = xml
        .iter()
        .map(|(&id, (_, m))| {
            (
                thin(&pool, id),
                m.iter().map(|(&v, &(b, _))| (v, b)).collect(),
            )
        })
        .collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (t, maps) = &thins[usize::try_from(x % thins.len() as u64).unwrap()];
        let (v, b) = maps[usize::try_from((x >> 20) % maps.len() as u64).unwrap()];
        assert_eq!(tag(t, v).unwrap(), b + 1);
        assert!(pool.metadata_cache().resident() <= 3);
    }
    assert!(pool.metadata_cache().reads() > 5000);
}

/// The leaves of device `id`'s tree in `md` with their keys, in key order.
fn leaves(md: &Metadata, id: u64) -> Vec<(u64, Vec<u64>)> {
    let root = md.device_root(id).unwrap().unwrap();
    let mut out: Vec<(u64, Vec<u64>)> = Vec::new();
    walk_located(md.dev(), root, 8, &mut |k, _, at| {
        match out.last_mut() {
            Some((b, keys)) if *b == at.block => keys.push(k),
            _ => out.push((at.block, vec![k])),
        }
        Ok(())
    })
    .unwrap();
    out
}

/// Damage a middle leaf of device 3 with `damage`, then: the pool opens; device 3's other
/// leaves and the other devices read; each read reaching the leaf fails with the error
/// the eager walk gives for that tree (the same text every time); a write that needs the
/// mappings loaded fails with it too and the metadata is not written.
fn damaged_leaf_found_late(damage: impl Fn(&mut [u8], &[u64])) {
    let mut image = gunzip("restore-big-meta.img.gz");
    let md = Metadata::open(meta_of(image.clone())).unwrap();
    let ls = leaves(&md, 3);
    assert!(ls.len() >= 3);
    let (bad, bad_keys) = ls[ls.len() / 2].clone();
    let (_, good_keys) = ls[0].clone();
    let at = usize::try_from(bad).unwrap() * 4096;
    damage(&mut image[at..at + 4096], &bad_keys);
    let meta = meta_of(image.clone());
    let eager = Metadata::open(meta.clone()).unwrap();
    let root = eager.device_root(3).unwrap().unwrap();
    let want = eager.mappings(root).unwrap_err().to_string();
    assert!(want.contains(&format!("metadata block {bad}")), "{want}");

    let xml = fixture_xml();
    let pool = lazy_pool(meta.clone(), 16);
    let t3 = thin(&pool, 3);
    for &k in &good_keys {
        assert_eq!(tag(&t3, k).unwrap(), xml[&3].1[&k].0 + 1);
    }
    for _ in 0..2 {
        for &k in &bad_keys {
            assert_eq!(tag(&t3, k).unwrap_err().to_string(), want, "block {k}");
        }
    }
    let t1 = thin(&pool, 1);
    for (&v, &(b, _)) in xml[&1].1.iter().take(500) {
        assert_eq!(tag(&t1, v).unwrap(), b + 1);
    }
    // A change elsewhere reads only its own path: a new block for device 9 and a new
    // device commit, and the damaged leaf stays as it was on disk, still failing with the
    // walk's error. A write or discard reaching it fails with that error and changes nothing.
    let t9 = thin(&pool, 9);
    let k = bad_keys[bad_keys.len() / 2];
    assert_eq!(
        t3.write(Sector(k * BLOCK), &[3; 4096])
            .unwrap_err()
            .to_string(),
        want
    );
    assert_eq!(
        t3.discard(Sector(k * BLOCK), SectorCount(BLOCK))
            .unwrap_err()
            .to_string(),
        want
    );
    t9.write(Sector(5000 * BLOCK), &[7; 4096]).unwrap();
    pool.message(&["create_thin", "77"]).unwrap();
    assert_eq!(tag(&t9, 5000).unwrap(), u64::from_le_bytes([7; 8]));
    drop((t1, t3, t9));
    drop(pool);
    let mut now = vec![0; image.len()];
    meta.read(Sector(0), &mut now).unwrap();
    assert!(now != image, "nothing was committed");
    assert!(
        now[at..at + 4096] == image[at..at + 4096],
        "the damaged leaf was rewritten"
    );
    let md = Metadata::open(meta.clone()).unwrap();
    assert_eq!(
        md.device_root(3).unwrap(),
        Some(root),
        "device 3 was shadowed"
    );
    assert_eq!(md.mappings(root).unwrap_err().to_string(), want);
    let m9 = md.mappings(md.device_root(9).unwrap().unwrap()).unwrap();
    assert_eq!(m9.len(), xml[&9].1.len() + 1);
    assert!(md.device_root(77).unwrap().is_some());
}

#[test]
fn a_leaf_with_a_bad_checksum_fails_the_reads_that_reach_it_with_the_walks_error() {
    damaged_leaf_found_late(|b, _| b[4000] ^= 0x40);
}

#[test]
fn a_leaf_with_keys_outside_its_parents_range_fails_with_the_walks_error() {
    damaged_leaf_found_late(|b, keys| {
        // The first key moved below the range the parent gives the leaf; resealed, so
        // only the range check can tell.
        put64(b, 32, keys[0] / 2);
        seal(b, BTREE_CSUM_XOR);
    });
}

#[test]
fn a_leaf_pointing_into_a_cycle_is_refused_on_the_lookup_path() {
    // Device 1's root made to point at itself from its last child: a walk and a lookup
    // of a key under that child both report a node reached twice.
    let mut image = gunzip("restore-big-meta.img.gz");
    let md = Metadata::open(meta_of(image.clone())).unwrap();
    let root = md.device_root(1).unwrap().unwrap();
    let node = dmemu::targets::thin::metadata::btree::read_node(md.dev(), root, 8).unwrap();
    assert!(!node.leaf);
    let last = node.keys.len() - 1;
    let at = usize::try_from(root).unwrap() * 4096;
    let b = &mut image[at..at + 4096];
    put64(b, 32 + 8 * node.max_entries + 8 * last, root);
    seal(b, BTREE_CSUM_XOR);
    let meta = meta_of(image);
    let eager = Metadata::open(meta.clone()).unwrap();
    let want = eager.mappings(root).unwrap_err().to_string();
    assert!(want.contains("cycle") || want.contains("outside"), "{want}");
    let pool = lazy_pool(meta, 16);
    let t = thin(&pool, 1);
    let err = tag(&t, *fixture_xml()[&1].1.keys().last().unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("cycle") || err.to_string().contains("outside"),
        "{err}"
    );
    assert_eq!(t.status(), "Error");
}

fn have(name: &str) -> bool {
    let ok = Command::new(name).arg("-V").output().is_ok();
    if !ok {
        println!("skipped: {name} (thin-provisioning-tools 0.9) is not installed");
    }
    ok
}

#[test]
fn writes_after_on_demand_reads_commit_what_thin_check_accepts_and_thin_dump_expects() {
    let mut xml = fixture_xml();
    let meta = Arc::new(MemVolume::from_bytes(gunzip("restore-big-meta.img.gz")).unwrap());
    let pool = lazy_pool(meta.clone(), 16);
    let (t2, t4, t9) = (thin(&pool, 2), thin(&pool, 4), thin(&pool, 9));
    // A block device 2 shares with its origin (mapped before the snapshot time, 3).
    let shared = *xml[&2]
        .1
        .iter()
        .find(|&(v, m)| m.1 < 3 && xml[&1].1.get(v) == Some(m))
        .unwrap()
        .0;
    let gone = *xml[&4].1.keys().nth(20).unwrap();
    assert_eq!(tag(&t2, shared).unwrap(), xml[&2].1[&shared].0 + 1);
    assert!(!pool.mappings_loaded());
    // A new block in device 9, a write breaking device 2's sharing, a discard in 4.
    t9.write(Sector(5000 * BLOCK), &vec![9; 4096]).unwrap();
    t2.write(Sector(shared * BLOCK + 8), &vec![2; 4096])
        .unwrap();
    t4.discard(Sector(gone * BLOCK), SectorCount(BLOCK))
        .unwrap();
    assert!(pool.mappings_loaded());
    pool.commit().unwrap();
    let md = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md.check().unwrap(), Vec::<String>::new());
    let ours = parse_xml(&md.dump_xml().unwrap());
    // What changed: 9 gains block 5000, 2's block moved to a new data block at the
    // pool's time (4), 4 lost one mapping; everything else is as thin_dump printed it.
    let new9 = ours[&9].1[&5000];
    let new2 = ours[&2].1[&shared];
    assert_ne!(new2.0, xml[&2].1[&shared].0);
    assert_eq!((new9.1, new2.1), (4, 4));
    let e9 = xml.get_mut(&9).unwrap();
    e9.0 += 1;
    e9.1.insert(5000, new9);
    xml.get_mut(&2).unwrap().1.insert(shared, new2);
    let e4 = xml.get_mut(&4).unwrap();
    e4.0 -= 1;
    e4.1.remove(&gone);
    assert_eq!(ours, xml);
    let mut back = [0u8; 512];
    t2.read(Sector(shared * BLOCK + 8), &mut back).unwrap();
    assert_eq!(back, [2; 512]);

    if have("thin_check") && have("thin_dump") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thin-ondemand-meta.img");
        std::fs::write(&path, meta.to_vec()).unwrap();
        let check = Command::new("thin_check").arg(&path).output().unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let dump = Command::new("thin_dump").arg(&path).output().unwrap();
        assert!(dump.status.success());
        assert_eq!(
            String::from_utf8(dump.stdout).unwrap(),
            md.dump_xml().unwrap()
        );
    }
}

#[test]
fn writes_in_place_discards_of_nothing_status_and_flushes_keep_a_lazy_pool_lazy_and_unwritten() {
    let image = gunzip("restore-big-meta.img.gz");
    let meta = Arc::new(MemVolume::from_bytes(image.clone()).unwrap());
    let pool = lazy_pool(meta.clone(), 16);
    let xml = fixture_xml();
    // Device 9 was never snapshotted (snap_time 0): its blocks are written in place.
    let t9 = thin(&pool, 9);
    let (&v, &(b, _)) = xml[&9].1.iter().nth(3).unwrap();
    t9.write(Sector(v * BLOCK + 8), &[0x99; 1024]).unwrap();
    let mut back = [0u8; 1024];
    t9.read(Sector(v * BLOCK + 8), &mut back).unwrap();
    assert_eq!(back, [0x99; 1024]);
    assert_eq!(tag(&t9, v).unwrap(), b + 1);
    t9.flush().unwrap();
    // A discard of blocks nothing maps (between device 9's blocks and past them).
    t9.discard(Sector(1000 * BLOCK), SectorCount(64 * BLOCK))
        .unwrap();
    assert_eq!(tag(&t9, v).unwrap(), b + 1);
    let _ = pool.status();
    let _ = t9.status();
    drop(t9);
    assert!(!pool.mappings_loaded());
    drop(pool);
    assert!(meta.to_vec() == image, "the metadata was written");
}
