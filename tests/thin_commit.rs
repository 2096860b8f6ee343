//! Incremental commits (src/targets/thin/metadata/tx.rs) against the host's
//! thin-provisioning-tools 0.9: pools that thin_restore lays out from generated XML take
//! random writes, discards, create_thin, create_snap and delete messages; after every
//! commit host `thin_check` is clean and host `thin_dump` prints exactly the mappings a
//! model expects (each mapping's data block holds the tag last written to it), snapshots
//! keep sharing the data blocks neither side rewrote, and a commit writes a number of
//! metadata blocks that follows the change, not the pool.

mod thin_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use dmemu::table::args::Args;
use dmemu::targets::{Target, Thin, ThinPool, ThinPoolArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

/// Data block size in sectors.
const BLOCK: u64 = 128;

fn have(name: &str) -> bool {
    let ok = Command::new(name).arg("-V").output().is_ok();
    if !ok {
        println!("skipped: {name} (thin-provisioning-tools 0.9) is not installed");
    }
    ok
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("thin-commit-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pool_args() -> ThinPoolArgs {
    let tokens: Vec<String> = "meta data 128 0".split(' ').map(str::to_string).collect();
    ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap()
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Per device: virtual block -> the tag its data block holds.
type Model = BTreeMap<u64, BTreeMap<u64, u64>>;

/// XML for thin_restore: `devices` devices of runs and scattered single mappings over
/// `nr_data` data blocks; the model with tag `data block + 1` for each mapping.
fn generate(rng: &mut Rng, devices: u64, per_dev: u64, nr_data: u64) -> (String, Model) {
    let mut xml = format!(
        "<superblock uuid=\"\" time=\"1\" transaction=\"1\" flags=\"0\" version=\"2\" \
         data_block_size=\"{BLOCK}\" nr_data_blocks=\"{nr_data}\">\n"
    );
    let mut model = Model::new();
    let mut free: Vec<u64> = (0..nr_data).collect();
    for i in (1..free.len()).rev() {
        let j = usize::try_from(rng.next(u64::try_from(i).unwrap() + 1)).unwrap();
        free.swap(i, j);
    }
    let mut next = 0;
    for id in 0..devices {
        let mut maps = BTreeMap::new();
        let mut v = rng.next(50);
        while maps.len() < usize::try_from(per_dev).unwrap() {
            let span = if rng.next(2) == 0 { 1 } else { 40 };
            let run = 1 + rng.next(span);
            for k in 0..run {
                maps.insert(v + k, free[next]);
                next += 1;
            }
            v += run + rng.next(30);
        }
        xml += &format!(
            "  <device dev_id=\"{id}\" mapped_blocks=\"{}\" transaction=\"0\" \
             creation_time=\"0\" snap_time=\"0\">\n",
            maps.len()
        );
        for (&k, &b) in &maps {
            xml += &format!(
                "    <single_mapping origin_block=\"{k}\" data_block=\"{b}\" time=\"0\"/>\n"
            );
        }
        xml += "  </device>\n";
        model.insert(id, maps.iter().map(|(&k, &b)| (k, b + 1)).collect());
    }
    xml += "</superblock>\n";
    (xml, model)
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn attr(line: &str, name: &str) -> u64 {
    let at = line.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
    line[at..at + line[at..].find('"').unwrap()]
        .parse()
        .unwrap()
}

/// thin_dump's mappings: device -> virtual block -> data block; and mapped_blocks.
fn dump(meta: &Path) -> BTreeMap<u64, (u64, BTreeMap<u64, u64>)> {
    let xml = run("thin_dump", &[meta.to_str().unwrap()]);
    let mut out = BTreeMap::new();
    let mut dev = 0;
    for l in xml.lines().map(str::trim) {
        if l.starts_with("<device ") {
            dev = attr(l, "dev_id");
            out.insert(dev, (attr(l, "mapped_blocks"), BTreeMap::new()));
        } else if l.starts_with("<single_mapping ") {
            let m = &mut out.get_mut(&dev).unwrap().1;
            m.insert(attr(l, "origin_block"), attr(l, "data_block"));
        } else if l.starts_with("<range_mapping ") {
            let m = &mut out.get_mut(&dev).unwrap().1;
            let (o, d) = (attr(l, "origin_begin"), attr(l, "data_begin"));
            for i in 0..attr(l, "length") {
                m.insert(o + i, d + i);
            }
        }
    }
    out
}

fn tag_of(data: &dyn Volume, block: u64) -> u64 {
    let mut s = [0u8; 512];
    data.read(Sector(block * BLOCK), &mut s).unwrap();
    u64::from_le_bytes(s[..8].try_into().unwrap())
}

/// Host thin_check is clean on `meta`'s bytes and thin_dump prints `model`.
fn check_against_model(meta: &MemVolume, data: &dyn Volume, model: &Model, file: &Path) {
    std::fs::write(file, meta.to_vec()).unwrap();
    run("thin_check", &[file.to_str().unwrap()]);
    let dumped = dump(file);
    assert_eq!(
        dumped.keys().collect::<Vec<_>>(),
        model.keys().collect::<Vec<_>>(),
        "devices"
    );
    let mut block_of_tag: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, want) in model {
        let (mapped, maps) = &dumped[id];
        assert_eq!(*mapped, u64::try_from(want.len()).unwrap(), "device {id}");
        assert_eq!(
            maps.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "device {id}'s mapped blocks"
        );
        for (v, &b) in maps {
            assert_eq!(tag_of(data, b), want[v], "device {id} block {v}");
            // A tag was written to one data block once: equal tags are one shared block.
            let first = *block_of_tag.entry(want[v]).or_insert(b);
            assert_eq!(
                first, b,
                "tag {} in two data blocks (sharing lost)",
                want[v]
            );
        }
    }
}

/// Changed bytes between two metadata images, in 4096-byte blocks.
fn blocks_changed(a: &[u8], b: &[u8]) -> usize {
    a.chunks(4096)
        .zip(b.chunks(4096))
        .filter(|(x, y)| x != y)
        .count()
}

fn restored(name: &str, xml: &str, meta_mib: u64) -> (Arc<MemVolume>, PathBuf) {
    let dir = tmp(name);
    let (x, m) = (dir.join("pool.xml"), dir.join("meta"));
    std::fs::write(&x, xml).unwrap();
    let f = std::fs::File::create(&m).unwrap();
    f.set_len(meta_mib << 20).unwrap();
    run(
        "thin_restore",
        &["-q", "-i", x.to_str().unwrap(), "-o", m.to_str().unwrap()],
    );
    let meta = Arc::new(MemVolume::from_bytes(std::fs::read(&m).unwrap()).unwrap());
    (meta, dir)
}

fn tagged_data(nr: u64) -> Arc<MemVolume> {
    let data = Arc::new(MemVolume::new(SectorCount(nr * BLOCK)).unwrap());
    for b in 0..nr {
        let mut s = [0u8; 512];
        s[..8].copy_from_slice(&(b + 1).to_le_bytes());
        data.write(Sector(b * BLOCK), &s).unwrap();
    }
    data
}

/// A pool of `nr_data` blocks over the images.
fn pool_over(meta: &Arc<MemVolume>, data: &Arc<MemVolume>, nr_data: u64) -> Arc<ThinPool> {
    Arc::new(
        ThinPool::over(
            &pool_args(),
            SectorCount(nr_data * BLOCK),
            meta.clone() as SharedVolume,
            data.clone() as SharedVolume,
        )
        .unwrap(),
    )
}

fn msg(pool: &ThinPool, words: &str) {
    let argv: Vec<&str> = words.split(' ').collect();
    pool.message(&argv).unwrap();
}

#[test]
fn random_changes_commit_what_thin_check_accepts_and_thin_dump_matches_the_model() {
    if !have("thin_restore") || !have("thin_check") || !have("thin_dump") {
        return;
    }
    for seed in [0x2545_f491_4f6c_dd1du64, 0x9e37_79b9_7f4a_7c15] {
        let mut rng = Rng(seed);
        let nr_data = 20_000;
        let (xml, mut model) = generate(&mut rng, 3, 3000, nr_data);
        let (meta, dir) = restored(&format!("{seed:x}"), &xml, 8);
        let data = tagged_data(nr_data);
        let file = dir.join("check");
        let pool = pool_over(&meta, &data, nr_data);
        check_against_model(&meta, &*data, &model, &file);
        let mut tag = 1 << 40;
        for round in 0..12 {
            for _ in 0..40 {
                let ids: Vec<u64> = model.keys().copied().collect();
                let id = ids[usize::try_from(rng.next(ids.len() as u64)).unwrap()];
                // Mostly near mapped blocks, so leaves fill, split, drain and merge.
                let hi = model[&id].keys().last().map_or(100, |h| h + 200);
                let v = rng.next(hi);
                match rng.next(20) {
                    0 if model.len() < 8 => {
                        let new = (0..).find(|i| !model.contains_key(i)).unwrap();
                        msg(&pool, &format!("create_thin {new}"));
                        model.insert(new, BTreeMap::new());
                    }
                    1 if model.len() < 8 => {
                        let new = (0..).find(|i| !model.contains_key(i)).unwrap();
                        msg(&pool, &format!("create_snap {new} {id}"));
                        let copy = model[&id].clone();
                        model.insert(new, copy);
                    }
                    2 if model.len() > 2 => {
                        msg(&pool, &format!("delete {id}"));
                        model.remove(&id);
                    }
                    3..=8 => {
                        // Discard a run of whole blocks.
                        let n = 1 + rng.next(60);
                        let t = Thin::over(pool.clone(), id, SectorCount(1 << 30), None).unwrap();
                        t.discard(Sector(v * BLOCK), SectorCount(n * BLOCK))
                            .unwrap();
                        let m = model.get_mut(&id).unwrap();
                        for k in v..v + n {
                            m.remove(&k);
                        }
                    }
                    _ => {
                        // A 512-byte write at the block's start: provisions (zeroing) or
                        // breaks sharing (copying), else writes in place.
                        tag += 1;
                        let t = Thin::over(pool.clone(), id, SectorCount(1 << 30), None).unwrap();
                        let mut s = [0u8; 512];
                        s[..8].copy_from_slice(&u64::to_le_bytes(tag));
                        t.write(Sector(v * BLOCK), &s).unwrap();
                        model.get_mut(&id).unwrap().insert(v, tag);
                    }
                }
            }
            pool.commit().unwrap();
            check_against_model(&meta, &*data, &model, &file);
            assert!(
                pool.status().starts_with("1 "),
                "round {round}: {}",
                pool.status()
            );
        }
        drop(pool);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn a_write_to_a_snapshot_copies_only_its_path_and_leaves_the_origin_intact() {
    if !have("thin_restore") || !have("thin_check") || !have("thin_dump") {
        return;
    }
    let mut rng = Rng(7);
    let nr_data = 40_000;
    let (xml, model) = generate(&mut rng, 1, 20_000, nr_data);
    let (meta, dir) = restored("snap", &xml, 16);
    let data = tagged_data(nr_data);
    let pool = pool_over(&meta, &data, nr_data);
    msg(&pool, "create_snap 1 0");
    let before = meta.to_vec();
    let t1 = Thin::over(pool.clone(), 1, SectorCount(1 << 30), None).unwrap();
    let (&v, &old) = model[&0].iter().nth(10_000).unwrap();
    let mut s = [0u8; 512];
    s[..8].copy_from_slice(&u64::to_le_bytes(1 << 41));
    t1.write(Sector(v * BLOCK), &s).unwrap();
    pool.commit().unwrap();
    // The snapshot's root-to-leaf path (3 levels over 20,000 mappings), the top level, the
    // details tree, changed bitmaps, the index block and the superblock: a few blocks.
    let changed = blocks_changed(&before, &meta.to_vec());
    assert!(changed <= 16, "{changed} blocks written");
    let mut want = model.clone();
    want.insert(1, model[&0].clone());
    want.get_mut(&1).unwrap().insert(v, 1 << 41);
    check_against_model(&meta, &*data, &want, &dir.join("check"));
    let dumped = dump(&dir.join("check"));
    assert_eq!(tag_of(&*data, dumped[&0].1[&v]), old);
    drop((t1, pool));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_commit_after_one_change_writes_as_many_blocks_on_a_pool_ten_times_larger() {
    if !have("thin_restore") {
        return;
    }
    let mut written = Vec::new();
    for (per_dev, nr_data) in [(5_000, 12_000), (50_000, 120_000)] {
        let mut rng = Rng(11);
        let (xml, model) = generate(&mut rng, 2, per_dev, nr_data);
        let (meta, dir) = restored(&format!("scale{per_dev}"), &xml, 32);
        let data = Arc::new(MemVolume::new(SectorCount(nr_data * BLOCK)).unwrap());
        let pool = pool_over(&meta, &data, nr_data);
        let before = meta.to_vec();
        let t = Thin::over(pool.clone(), 1, SectorCount(1 << 40), None).unwrap();
        let past = model[&1].keys().last().unwrap() + 10;
        t.write(Sector(past * BLOCK), &[5; 512]).unwrap();
        pool.commit().unwrap();
        written.push(blocks_changed(&before, &meta.to_vec()));
        drop((t, pool));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!("blocks written by one-change commits: {written:?}");
    // One more tree level at most for ten times the mappings.
    assert!(written[1] <= written[0] + 2, "{written:?}");
    assert!(written[0] <= 12, "{written:?}");
}
