//! cache over metadata, cache and origin devices the real Linux 6.12 kernel wrote
//! (tests/fixtures/cache, made by make.sh with kernel.guest.sh in the oracle VM): writeback
//! with dirty blocks in both metadata formats and writethrough. Each reads back with the
//! sha256 the kernel computed, the status equals what the kernel printed on activating the
//! result, the table prints back, and `dmemu cache dump` equals the host's cache_dump 0.9.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use dmemu::registry::Registry;
use dmemu::table::parse_concise;
use dmemu::{Access, Keys, Sector, Volume};
use sha2::{Digest, Sha256};

const CACHES: [&str; 3] = ["wb2", "wb1", "wt1"];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cache")
}

fn gunzip(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixtures().join(name)).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// kernel.txt's `KIND NAME REST` lines as NAME -> REST.
fn kernel(kind: &str) -> BTreeMap<String, String> {
    lines("kernel.txt", kind)
}

/// A fixture text file's `KIND NAME REST` lines as NAME -> REST.
fn lines(file: &str, kind: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(fixtures().join(file))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, v) = l.strip_prefix(kind)?.strip_prefix(' ')?.split_once(' ')?;
            Some((name.to_string(), v.to_string()))
        })
        .collect()
}

fn sha256_of(v: &dyn Volume) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let total = v.size().0;
    let mut at = 0;
    while at < total {
        let n = (total - at).min(2048);
        let b = &mut buf[..usize::try_from(n * 512).unwrap()];
        v.read(Sector(at), b).unwrap();
        h.update(&*b);
        at += n;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The three images of `name` in a temp dir as meta.img, cache.img, origin.img.
fn images(name: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for f in ["meta", "cache", "origin"] {
        std::fs::write(
            t.path().join(format!("{f}.img")),
            gunzip(&format!("{name}-{f}.img.gz")),
        )
        .unwrap();
    }
    t
}

/// The device numbers the kernel's table of `name` uses (254:0.. in disk order).
fn numbers(name: &str) -> [String; 3] {
    let i = CACHES.iter().position(|c| *c == name).unwrap() * 3;
    [0, 1, 2].map(|k| format!("254:{}", (i + k) * 16))
}

fn registry(name: &str, dir: &Path, access: Access) -> Registry {
    let mut r = Registry::new().with_access(access);
    for (mm, f) in numbers(name).iter().zip(["meta", "cache", "origin"]) {
        r.bind(mm, dir.join(format!("{f}.img"))).unwrap();
    }
    r
}

fn create(name: &str, dir: &Path, table: &str) -> (Registry, std::sync::Arc<dmemu::MappedDevice>) {
    let r = registry(name, dir, Access::ReadOnly);
    let mut devs = r
        .create_all(&parse_concise(&format!("{name},,,ro,{table}")).unwrap())
        .unwrap();
    (r, devs.remove(0))
}

#[test]
fn kernel_caches_read_back_with_the_kernels_sha256() {
    let want = kernel("SHA256");
    let tables = kernel("FRESH_TABLE");
    for name in CACHES {
        let t = images(name);
        let (_r, d) = create(name, t.path(), &tables[name]);
        assert_eq!(sha256_of(d.as_ref()), want[name], "{name}");
    }
}

#[test]
fn the_origin_alone_differs_from_a_writeback_cache_and_equals_a_writethrough_one() {
    let dev = kernel("SHA256");
    let origin = kernel("ORIGIN_SHA256");
    assert_ne!(dev["wb1"], origin["wb1"]);
    assert_ne!(dev["wb2"], origin["wb2"]);
    assert_eq!(dev["wt1"], origin["wt1"]);
}

#[test]
fn status_equals_the_kernels_on_activating_the_images() {
    let want = kernel("FRESH_STATUS");
    let tables = kernel("FRESH_TABLE");
    for name in CACHES {
        let t = images(name);
        let (_r, d) = create(name, t.path(), &tables[name]);
        assert_eq!(d.status_text(), format!("{}\n", want[name]), "{name}");
    }
}

#[test]
fn tables_print_back_as_dmsetup_table() {
    let tables = kernel("TABLE");
    let fresh = kernel("FRESH_TABLE");
    for name in CACHES {
        let t = images(name);
        for want in [&tables[name], &fresh[name]] {
            let (_r, d) = create(name, t.path(), want);
            assert_eq!(d.table_text(Keys::Hidden), format!("{want}\n"), "{name}");
        }
    }
}

fn dmemu(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn dump_equals_the_host_cache_dump_byte_for_byte() {
    for name in CACHES {
        let t = images(name);
        let out = dmemu(&["cache", "dump", "meta.img"], t.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = std::fs::read_to_string(fixtures().join(format!("{name}.xml"))).unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{name}");
    }
}

#[test]
fn writeback_dirty_blocks_come_from_the_bitset_in_format_2_and_the_flags_in_format_1() {
    // The kernel's status counted 7 (wb2) and 6 (wb1) dirty blocks; cache_dump 0.9 shows
    // format 2's as clean (it reads no dirty bitset), `dmemu cache ls` shows the kernel's view.
    for (name, dirty) in [("wb2", 7), ("wb1", 6), ("wt1", 0)] {
        let t = images(name);
        let out = dmemu(&["cache", "ls", "meta.img"], t.path());
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let n = text.lines().skip(1).filter(|l| l.ends_with(" 1")).count();
        assert_eq!(n, dirty, "{name}: {text}");
    }
}

/// The writes `replayed_writes_read_back_as_the_kernel_reads_them` makes on each cache:
/// (sector, 4 KiB pages, fill byte): inside a dirty block, inside clean mapped blocks,
/// unmapped blocks, across a block edge, and the last page of the device.
const WRITES: [(u64, usize, u8); 6] = [
    (4 * 128 + 16, 1, 0xa1),
    (6 * 128, 2, 0xb2),
    (41 * 128 + 120, 4, 0xc3),
    (60 * 128 + 8, 1, 0xd4),
    (90 * 128, 16, 0xe5),
    (16384 - 8, 1, 0xf6),
];

/// The table each cache is written through: its kernel table, wt1 in passthrough mode.
fn write_table(name: &str) -> String {
    let t = kernel("FRESH_TABLE")[name].clone();
    if name == "wt1" {
        t.replace("1 writethrough", "1 passthrough")
    } else {
        t
    }
}

#[test]
fn replayed_writes_read_back_as_the_kernel_reads_them() {
    let out = std::env::var_os("DMEMU_CACHE_WRITE_OUT").map(PathBuf::from);
    for name in CACHES {
        let t = images(name);
        let r = registry(name, t.path(), Access::ReadWrite);
        let d = r
            .create_all(&parse_concise(&format!("{name},,,rw,{}", write_table(name))).unwrap())
            .unwrap()
            .remove(0);
        for (sector, pages, byte) in WRITES {
            let buf: Vec<u8> = (0..pages * 4096)
                .map(|i| byte ^ u8::try_from(i % 251).unwrap())
                .collect();
            d.write(Sector(sector), &buf).unwrap();
        }
        d.flush().unwrap();
        let ours = sha256_of(d.as_ref());
        if let Some(dir) = &out {
            for f in ["meta", "cache", "origin"] {
                std::fs::copy(
                    t.path().join(format!("{f}.img")),
                    dir.join(format!("{name}-{f}.img")),
                )
                .unwrap();
            }
            println!("DMEMU_SHA256 {name} {ours}");
        } else {
            // dmemu-kernel.txt: the kernel's sha256 of each cache after these writes.
            let want = lines("dmemu-kernel.txt", "SHA256");
            assert_eq!(ours, want[name], "{name}");
        }
    }
}

/// `dmemu cache check` on wb2's metadata with `patch` applied: its stderr (it must fail).
fn check_damaged(patch: &dyn Fn(&mut Vec<u8>)) -> String {
    let t = images("wb2");
    let p = t.path().join("meta.img");
    let mut img = std::fs::read(&p).unwrap();
    patch(&mut img);
    std::fs::write(&p, img).unwrap();
    let out = dmemu(&["cache", "check", "meta.img"], t.path());
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

/// Recompute the checksum of block `b` (CRC-32C of bytes 4.. xored with `xor`, at 0).
fn reseal(img: &mut [u8], b: usize, xor: u32) {
    let blk = &mut img[b * 4096..(b + 1) * 4096];
    let c = dmemu::targets::pdata::block::checksum(&blk[4..], xor);
    blk[..4].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn damaged_metadata_is_refused_naming_block_and_field() {
    let e = check_damaged(&|m| m[100] ^= 1);
    assert!(
        e.contains("cache superblock") && e.contains("block 0, byte 0: csum"),
        "{e}"
    );
    let e = check_damaged(&|m| {
        m[32] = 1;
        reseal(m, 0, 9_031_977);
    });
    assert!(e.contains("block 0, byte 32: magic"), "{e}");
    let e = check_damaged(&|m| {
        m[40] = 3;
        reseal(m, 0, 9_031_977);
    });
    assert!(e.contains("version 3 found"), "{e}");
    // The mapping array's btree root (mapping_root, byte 192) names an array block.
    let e = check_damaged(&|m| {
        let root = usize::try_from(u64::from_le_bytes(m[192..200].try_into().unwrap())).unwrap();
        let leaf = u64::from_le_bytes(m[root * 4096 + 32 + 8 * 252..][..8].try_into().unwrap());
        let leaf = usize::try_from(leaf).unwrap();
        m[leaf * 4096 + 12] = 9; // value_size
        reseal(m, leaf, 595_846_735);
    });
    assert!(
        e.contains("array block") && e.contains("byte 12: value_size 9"),
        "{e}"
    );
    let e = check_damaged(&|m| m.truncate(2048));
    assert!(e.contains("smaller than one block"), "{e}");
}

/// The valid mappings of a cache_dump XML: (cache block, origin block, dirty).
fn xml_mappings(xml: &str) -> Vec<(u64, u64, bool)> {
    xml.lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("<mapping cache_block=\"")?;
            let (c, l) = l.split_once("\" origin_block=\"")?;
            let (o, l) = l.split_once("\" dirty=\"")?;
            Some((c.parse().ok()?, o.parse().ok()?, l.starts_with("true")))
        })
        .collect()
}

#[test]
fn cache_restore_metadata_of_both_formats_dumps_as_cache_dump_and_lists_its_dirty_blocks() {
    // restore.xml went through the host's cache_restore 0.9 (make-restore.sh): 600 cache
    // blocks, 400 mapped over two array blocks, about 30 % dirty.
    let input = std::fs::read_to_string(fixtures().join("restore.xml")).unwrap();
    let want = xml_mappings(&input);
    assert_eq!(want.len(), 400);
    for v in [1, 2] {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("meta.img"),
            gunzip(&format!("restore-v{v}-meta.img.gz")),
        )
        .unwrap();
        let out = dmemu(&["cache", "dump", "meta.img"], t.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dumped = String::from_utf8(out.stdout).unwrap();
        let host = std::fs::read_to_string(fixtures().join(format!("restore-v{v}.xml"))).unwrap();
        assert_eq!(dumped, host, "format {v}");
        let out = dmemu(&["cache", "ls", "meta.img"], t.path());
        let listed: Vec<(u64, u64, bool)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let w: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
                (w[0], w[1], w[2] == 1)
            })
            .collect();
        assert_eq!(listed, want, "format {v}");
    }
}
