//! dm-snapshot against the real kernel (fixtures made by tests/fixtures/snapshot/make.sh in
//! the Linux 6.12 oracle): dmemu reads the kernel's COW stores byte for byte, replaying the
//! kernel's write sequence produces byte-identical COW devices with the same statuses, a
//! merge leaves the same origin and COWs, and the kernel reads what dmemu wrote.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use dmemu::table::DeviceSpec;
use dmemu::targets::Keys;
use dmemu::{MemVolume, Registry, Sector, SectorCount, SharedVolume, Table, TableMode, Volume};

/// Origin size of every fixture (4 MiB).
const ORIGIN_SECTORS: u64 = 8192;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot")
}

fn gunzip(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir().join(name)).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn vol(bytes: Vec<u8>) -> Arc<MemVolume> {
    Arc::new(MemVolume::from_bytes(bytes).unwrap())
}

fn zeros(bytes: usize) -> Arc<MemVolume> {
    vol(vec![0; bytes])
}

fn sha256(v: &dyn Volume) -> String {
    let mut buf = vec![0; usize::try_from(v.size().bytes()).unwrap()];
    match v.read(Sector(0), &mut buf) {
        Ok(()) => Sha256::digest(&buf)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => "read-failed".into(),
    }
}

/// The guest's disks in order, as the kernel names them in `dmsetup table`.
const DISKS: [(&str, &str); 6] = [
    ("/dev/vda", "254:0"),
    ("/dev/vdb", "254:16"),
    ("/dev/vdc", "254:32"),
    ("/dev/vdd", "254:48"),
    ("/dev/vde", "254:64"),
    ("/dev/vdf", "254:80"),
];

fn registry(disks: &[Arc<MemVolume>]) -> Registry {
    let r = Registry::new();
    for ((path, _), v) in DISKS.iter().zip(disks) {
        r.insert_volume(path, Arc::clone(v) as SharedVolume);
    }
    r
}

fn create(r: &Registry, name: &str, table: &str) {
    r.create(&DeviceSpec {
        name: name.into(),
        uuid: String::new(),
        minor: None,
        mode: TableMode::ReadWrite,
        table: Table::parse(table).unwrap(),
    })
    .unwrap();
}

/// A kernel output file: `--- section` headers, then `key name: value` lines.
fn kernel_out(name: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix("--- ") {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once(": ") {
            // A repeated key (dmesg lines) keeps every value, one per line.
            out.entry(section.clone())
                .or_default()
                .entry(k.to_string())
                .and_modify(|old| {
                    old.push('\n');
                    old.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
    }
    out
}

/// The kernel's `dmsetup table` line with device numbers turned into the guest's paths.
fn kernel_table(line: &str) -> String {
    let mut s = line.to_string();
    for (path, devno) in DISKS.iter().rev() {
        s = s.replace(devno, path);
    }
    s
}

/// One line of ops.txt.
struct Op {
    phase: u32,
    dev: String,
    sector: u64,
    count: usize,
}

fn ops(name: &str) -> Vec<Op> {
    std::fs::read_to_string(dir().join(name))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Op {
                phase: f[0].parse().unwrap(),
                dev: f[1].to_string(),
                sector: f[2].parse().unwrap(),
                count: f[3].parse().unwrap(),
            }
        })
        .collect()
}

/// What the guest writes for an op: `yes "DEV@SECTOR" | head -c COUNT*512`.
fn op_data(op: &Op) -> Vec<u8> {
    let line = format!("{}@{}\n", op.dev, op.sector);
    line.as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(op.count * 512)
        .collect()
}

const SNAPS: [&str; 6] = ["snapA", "snapB", "snapN", "snapP", "snapPO", "orig"];

fn status(r: &Registry, name: &str) -> String {
    r.mapped(name)
        .unwrap()
        .status_text()
        .trim_end_matches('\n')
        .to_string()
}

#[test]
fn kernel_written_cows_read_back_with_the_kernels_view_status_and_table() {
    let k = kernel_out("kernel-writes.out");
    let after = &k["after phase 2"];
    let disks = [
        vol(gunzip("k1-origin.img.gz")),
        vol(gunzip("k1-cowA.img.gz")),
        vol(gunzip("k1-cowB.img.gz")),
        zeros(2 << 20),
        vol(gunzip("k1-cowP.img.gz")),
        vol(gunzip("k1-cowPO.img.gz")),
    ];
    let r = registry(&disks);
    // Chunk size 0 for A: the kernel printed the header's 8 (section "chunk 0").
    create(&r, "snapA", "0 8192 snapshot /dev/vda /dev/vdb P 0");
    create(&r, "snapB", "0 8192 snapshot /dev/vda /dev/vdc P 32");
    create(&r, "snapP", "0 8192 snapshot /dev/vda /dev/vde P 8");
    create(&r, "snapPO", "0 8192 snapshot /dev/vda /dev/vdf PO 8");
    assert_eq!(
        r.mapped("snapA")
            .unwrap()
            .table_text(Keys::Hidden)
            .trim_end(),
        kernel_table(&k["chunk 0"]["table snapA0"])
    );
    assert_eq!(status(&r, "snapA"), k["chunk 0"]["status snapA0"]);
    for name in ["snapA", "snapB", "snapP", "snapPO"] {
        let dev = r.mapped(name).unwrap();
        assert_eq!(sha256(&*dev), after[&format!("sha256 {name}")], "{name}");
        assert_eq!(status(&r, name), after[&format!("status {name}")], "{name}");
    }
}

/// Replay ops.txt through dmemu on fresh images; returns the disks and the failed ops.
fn replay_kernel_writes(check: bool) -> (Vec<Arc<MemVolume>>, Vec<String>) {
    let k = kernel_out("kernel-writes.out");
    let disks = vec![
        vol(gunzip("origin.img.gz")),
        zeros(4 << 20),
        zeros(2 << 20),
        zeros(2 << 20),
        zeros(64 << 10),
        zeros(64 << 10),
    ];
    let r = registry(&disks);
    create(&r, "snapA", "0 8192 snapshot /dev/vda /dev/vdb P 8");
    create(&r, "snapB", "0 8192 snapshot /dev/vda /dev/vdc P 32");
    create(&r, "snapN", "0 8192 snapshot /dev/vda /dev/vdd N 16");
    create(&r, "snapP", "0 8192 snapshot /dev/vda /dev/vde P 8");
    create(&r, "snapPO", "0 8192 snapshot /dev/vda /dev/vdf PO 8");
    create(&r, "orig", "0 8192 snapshot-origin /dev/vda");
    let compare = |section: &str, sums: bool| {
        if !check {
            return;
        }
        for name in SNAPS {
            let dev = r.mapped(name).unwrap();
            let want = &k[section];
            assert_eq!(
                dev.table_text(Keys::Hidden).trim_end(),
                kernel_table(&want[&format!("table {name}")]),
                "{section}: {name}"
            );
            assert_eq!(
                status(&r, name),
                want[&format!("status {name}")],
                "{section}: {name}"
            );
            if sums {
                assert_eq!(
                    sha256(&*dev),
                    want[&format!("sha256 {name}")],
                    "{section}: {name}"
                );
            }
        }
    };
    compare("loaded", false);
    let mut failed = Vec::new();
    let mut phase = 1;
    for op in ops("ops.txt") {
        if op.phase != phase {
            compare(&format!("after phase {phase}"), true);
            phase = op.phase;
        }
        let dev = r.mapped(&op.dev).unwrap();
        if dev.write(Sector(op.sector), &op_data(&op)).is_err() {
            failed.push(format!(
                "{} {} {} {}",
                op.phase, op.dev, op.sector, op.count
            ));
        }
    }
    compare(&format!("after phase {phase}"), true);
    (disks, failed)
}

#[test]
fn replaying_the_kernels_writes_gives_identical_cows_statuses_and_failures() {
    let (disks, failed) = replay_kernel_writes(true);
    let text = std::fs::read_to_string(dir().join("kernel-writes.out")).unwrap();
    let kernel_failed: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("write-failed "))
        .map(str::to_string)
        .collect();
    assert_eq!(failed, kernel_failed);
    for (i, name) in ["origin", "cowA", "cowB"].iter().enumerate() {
        assert!(
            disks[i].to_vec() == gunzip(&format!("k1-{name}.img.gz")),
            "{name} differs from the kernel's"
        );
    }
    assert!(disks[4].to_vec() == gunzip("k1-cowP.img.gz"), "cowP");
    assert!(disks[5].to_vec() == gunzip("k1-cowPO.img.gz"), "cowPO");
}

#[test]
fn merge_leaves_the_kernels_origin_and_cows_including_a_live_snapshot() {
    let k = kernel_out("kernel-merge.out");
    let k = &k[""];
    let origin = vol(gunzip("k1-origin.img.gz"));
    let cow_a = vol(gunzip("k1-cowA.img.gz"));
    let cow_b = vol(gunzip("k1-cowB.img.gz"));
    let r = registry(&[Arc::clone(&origin), Arc::clone(&cow_a), Arc::clone(&cow_b)]);
    create(&r, "snapB", "0 8192 snapshot /dev/vda /dev/vdc P 32");
    assert_eq!(status(&r, "snapB"), k["status snapB before"]);
    create(&r, "merge", "0 8192 snapshot-merge /dev/vda /dev/vdb P 8");
    let merge = r.mapped("merge").unwrap();
    assert_eq!(
        merge.table_text(Keys::Hidden).trim_end(),
        kernel_table(&k["table merge"])
    );
    // Before the merge runs the merged view is already the snapshot's.
    assert_eq!(sha256(&*merge), k["sha256 merge"]);
    merge.message(Sector(0), &["merge"]).unwrap();
    assert_eq!(status(&r, "merge"), k["status merge done"]);
    assert_eq!(sha256(&*merge), k["sha256 merge"]);
    assert_eq!(sha256(&*origin), k["sha256 origin after"]);
    assert_eq!(status(&r, "snapB"), k["status snapB after"]);
    assert!(origin.to_vec() == gunzip("k2-origin.img.gz"), "origin");
    assert!(cow_a.to_vec() == gunzip("k2-cowA.img.gz"), "cowA");
    assert!(cow_b.to_vec() == gunzip("k2-cowB.img.gz"), "cowB");
}

#[test]
fn ops_data_matches_the_guests_yes_pipeline() {
    let op = Op {
        phase: 1,
        dev: "snapA".into(),
        sector: 7,
        count: 1,
    };
    let d = op_data(&op);
    assert_eq!(&d[..16], b"snapA@7\nsnapA@7\n");
    assert_eq!(d.len(), 512);
    assert_eq!(SectorCount(ORIGIN_SECTORS).bytes(), 4 << 20);
}

/// dmemu's side of ops3.txt: `snap` (P 16) and `orig` over a fresh origin and 4 MiB COW,
/// writing the ops of `phases`.
fn dmemu_ops3(disks: &[Arc<MemVolume>], phases: &[u32]) -> Registry {
    let r = registry(disks);
    create(&r, "snap", "0 8192 snapshot /dev/vda /dev/vdb P 16");
    create(&r, "orig", "0 8192 snapshot-origin /dev/vda");
    for op in ops("ops3.txt") {
        if phases.contains(&op.phase) {
            let dev = r.mapped(&op.dev).unwrap();
            dev.write(Sector(op.sector), &op_data(&op)).unwrap();
        }
    }
    r
}

fn check_views(r: &Registry, want: &BTreeMap<String, String>) {
    for name in ["snap", "orig"] {
        let dev = r.mapped(name).unwrap();
        assert_eq!(
            dev.table_text(Keys::Hidden).trim_end(),
            kernel_table(&want[&format!("table {name}")])
        );
        assert_eq!(status(r, name), want[&format!("status {name}")], "{name}");
        assert_eq!(sha256(&*dev), want[&format!("sha256 {name}")], "{name}");
    }
}

#[test]
#[ignore = "writes fixture images for make.sh (DMEMU_SNAPSHOT_FIXTURE_OUT)"]
fn dmemu_written_cow_export() {
    let out = PathBuf::from(std::env::var("DMEMU_SNAPSHOT_FIXTURE_OUT").unwrap());
    let disks = [vol(gunzip("origin.img.gz")), zeros(4 << 20)];
    dmemu_ops3(&disks, &[1]);
    std::fs::write(out.join("dmemu-origin.img"), disks[0].to_vec()).unwrap();
    std::fs::write(out.join("dmemu-cow.img"), disks[1].to_vec()).unwrap();
}

#[test]
fn kernel_loads_dmemu_written_cow_and_sees_dmemus_view() {
    let k = kernel_out("kernel-reads-dmemu.out");
    let disks = [vol(gunzip("origin.img.gz")), zeros(4 << 20)];
    let r = dmemu_ops3(&disks, &[1]);
    // The images the kernel was given are these bytes...
    assert!(disks[0].to_vec() == gunzip("dmemu-origin.img.gz"), "origin");
    assert!(disks[1].to_vec() == gunzip("dmemu-cow.img.gz"), "cow");
    // ...and the kernel saw the same views and usage dmemu sees.
    check_views(&r, &k["loaded"]);
}

#[test]
fn dmemu_extends_its_cow_exactly_as_the_kernel_did_and_reads_the_kernels() {
    let k = kernel_out("kernel-reads-dmemu.out");
    let disks = [vol(gunzip("origin.img.gz")), zeros(4 << 20)];
    let r = dmemu_ops3(&disks, &[1, 2]);
    check_views(&r, &k["after phase 2"]);
    assert!(disks[0].to_vec() == gunzip("k3-origin.img.gz"), "origin");
    assert!(disks[1].to_vec() == gunzip("k3-cow.img.gz"), "cow");
    let kernel = [
        vol(gunzip("k3-origin.img.gz")),
        vol(gunzip("k3-cow.img.gz")),
    ];
    let r = registry(&kernel);
    create(&r, "snap", "0 8192 snapshot /dev/vda /dev/vdb P 16");
    create(&r, "orig", "0 8192 snapshot-origin /dev/vda");
    check_views(&r, &k["after phase 2"]);
}

#[test]
fn merge_with_large_chunks_copies_out_every_small_chunk_of_a_live_snapshot() {
    // guest-merge-small-chunks.sh: snapshot M (P 32) written, then merged while S (P 8) is
    // live; S keeps its view and holds 16 chunks.
    let k = kernel_out("kernel-merge-small.out");
    let k = &k[""];
    let disks = [vol(gunzip("origin.img.gz")), zeros(2 << 20), zeros(2 << 20)];
    let r = registry(&disks);
    create(&r, "snapM", "0 8192 snapshot /dev/vda /dev/vdb P 32");
    for (sector, count) in [(0, 64), (100, 3), (4000, 1)] {
        let op = Op {
            phase: 1,
            dev: "snapM".into(),
            sector,
            count,
        };
        let dev = r.mapped("snapM").unwrap();
        dev.write(Sector(sector), &op_data(&op)).unwrap();
    }
    drop(r); // dmsetup remove snapM
    let r = registry(&disks);
    create(&r, "snapS", "0 8192 snapshot /dev/vda /dev/vdc P 8");
    assert_eq!(
        sha256(&*r.mapped("snapS").unwrap()),
        k["sha256 snapS before"]
    );
    create(&r, "merge", "0 8192 snapshot-merge /dev/vda /dev/vdb P 32");
    r.mapped("merge")
        .unwrap()
        .message(Sector(0), &["merge"])
        .unwrap();
    assert_eq!(status(&r, "merge"), k["status merge done"]);
    assert_eq!(status(&r, "snapS"), k["status snapS after"]);
    assert_eq!(
        sha256(&*r.mapped("snapS").unwrap()),
        k["sha256 snapS after"]
    );
    assert_eq!(sha256(&*disks[0]), k["sha256 origin after"]);
    assert!(disks[2].to_vec() == gunzip("k4-cowS.img.gz"), "cowS");
}

#[test]
fn discard_zeroes_cow_zeroes_whole_chunk_exceptions_like_the_kernel() {
    // guest-discard.sh: four whole-chunk writes, then discards of chunk 1 (has an
    // exception: zeroed on the COW) and chunks 10-11 (none: nothing happens).
    let k = kernel_out("kernel-discard.out");
    let k = &k[""];
    let disks = [vol(gunzip("origin.img.gz")), zeros(1 << 20)];
    let r = registry(&disks);
    create(
        &r,
        "snapD",
        "0 8192 snapshot /dev/vda /dev/vdb P 8 1 discard_zeroes_cow",
    );
    let dev = r.mapped("snapD").unwrap();
    assert_eq!(
        dev.table_text(Keys::Hidden).trim_end(),
        kernel_table(&k["table snapD"])
    );
    for c in 0..4u64 {
        let line = format!("snapD@{c}\n");
        let data: Vec<u8> = line.bytes().cycle().take(4096).collect();
        dev.write(Sector(c * 8), &data).unwrap();
    }
    assert_eq!(status(&r, "snapD"), k["status before"]);
    dev.discard(Sector(8), SectorCount(8)).unwrap();
    dev.discard(Sector(80), SectorCount(16)).unwrap();
    assert_eq!(status(&r, "snapD"), k["status after"]);
    assert_eq!(sha256(&*dev), k["sha256 snapD"]);
    assert!(disks[1].to_vec() == gunzip("k5-cowD.img.gz"), "cowD");
}

/// make-bad-cows.py: a 64 KiB COW with a header and area-0 entries.
fn bad_cow(magic: u32, valid: u32, version: u32, entries: &[(u64, u64)]) -> Arc<MemVolume> {
    let mut img = vec![0u8; 64 << 10];
    for (i, v) in [magic, valid, version, 8].iter().enumerate() {
        img[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    for (i, (old, new)) in entries.iter().enumerate() {
        let at = 4096 + 16 * i;
        img[at..at + 8].copy_from_slice(&old.to_le_bytes());
        img[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
    }
    vol(img)
}

#[test]
fn new_and_damaged_cows_load_status_and_fail_like_the_kernel() {
    let k = kernel_out("kernel-misc.out");
    let origin = vol(gunzip("origin.img.gz"));
    let fresh = zeros(1 << 20);
    // The guest's disks: vda origin, then one COW per case in this order.
    let cases = [
        ("new", Arc::clone(&fresh), 0),
        ("magic", bad_cow(0x1234_5678, 1, 1, &[]), 8),
        ("version", bad_cow(0x7041_6e53, 1, 2, &[]), 8),
        ("invalid", bad_cow(0x7041_6e53, 0, 1, &[]), 8),
        (
            "beyond",
            bad_cow(0x7041_6e53, 1, 1, &[(3, 2), (5, 1000)]),
            8,
        ),
    ];
    let mut disks = vec![Arc::clone(&origin)];
    disks.extend(cases.iter().map(|(_, cow, _)| Arc::clone(cow)));
    let r = registry(&disks);
    for (i, (name, _, chunk)) in cases.iter().enumerate() {
        let want = &k[*name];
        let cow_path = DISKS[i + 1].0;
        let table = format!("0 8192 snapshot /dev/vda {cow_path} P {chunk}");
        let made = r.create(&DeviceSpec {
            name: (*name).into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse(&table).unwrap(),
        });
        let dev = match made {
            Err(e) => {
                assert_eq!(want["create"], "failed", "{name}: {e}");
                // The persistent store's own words (first dmesg line) are in the error.
                let first = want["dmesg"].lines().next().unwrap();
                let words = first.trim_start_matches("device-mapper: persistent snapshot: ");
                assert!(e.to_string().contains(words), "{name}: {e} lacks {words:?}");
                continue;
            }
            Ok(dev) => dev,
        };
        assert_eq!(want["create"], "ok", "{name}");
        assert_eq!(
            dev.table_text(Keys::Hidden).trim_end(),
            kernel_table(&want["table"]),
            "{name}"
        );
        assert_eq!(status(&r, name), want["status"], "{name}");
        for c in [3u64, 5, 6] {
            let ok = dev.read(Sector(c * 8), &mut [0; 4096]).is_ok();
            let word = if ok { "ok" } else { "failed" };
            assert_eq!(word, want[&format!("read chunk {c}")], "{name} chunk {c}");
        }
    }
    assert!(
        fresh.to_vec() == gunzip("k6-cowNew.img.gz"),
        "new COW initialised as the kernel"
    );
}
