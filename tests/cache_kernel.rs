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
    std::fs::read_to_string(fixtures().join("kernel.txt"))
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
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
