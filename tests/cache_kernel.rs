//! cache over metadata, cache and origin devices the real Linux 6.12 kernel wrote
//! (tests/fixtures/cache, made by make.sh with kernel.guest.sh in the oracle VM): writeback
//! with dirty blocks in both metadata formats and writethrough. Each reads back with the
//! sha256 the kernel computed, the status equals what the kernel printed on activating the
//! result, the table prints back, and `dmemu cache dump` equals the host's cache_dump 0.9.

mod recorder_support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use dmemu::registry::{Registry, RemoveMode};
use dmemu::table::parse_concise;
use dmemu::{Access, Keys, Sector, Volume};
use recorder_support::Recorder;
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

/// Each cache after WRITES through dmemu (then a flush and the device's removal, which
/// syncs the metadata): the images and the sha256 dmemu read before removing it.
fn written_through_dmemu(name: &str) -> (tempfile::TempDir, String) {
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
    drop(d);
    r.remove(name, RemoveMode::Normal).unwrap();
    (t, ours)
}

/// Each kernel-made writeback cache after `dmemu cache writeback` (metadata updated), and
/// what it printed.
fn written_back_by_dmemu(name: &str) -> (tempfile::TempDir, String) {
    let t = images(name);
    let out = dmemu(
        &[
            "cache",
            "writeback",
            "--metadata-device",
            "meta.img",
            "--origin-device",
            "origin.img",
            "--fast-device",
            "cache.img",
        ],
        t.path(),
    );
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t, String::from_utf8(out.stdout).unwrap())
}

/// The file SHA256 of `path`.
fn file_sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    h.update(std::fs::read(path).unwrap());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What make-dmemu.sh runs: every image set dmemu made, copied to DMEMU_CACHE_WRITE_OUT
/// as w-NAME-* (writes) and b-NAME-* (writeback), with dmemu's sha256 of each.
#[test]
#[ignore = "make-dmemu.sh runs it to remake dmemu-kernel.txt"]
fn save_dmemu_written_images() {
    let dir = PathBuf::from(std::env::var_os("DMEMU_CACHE_WRITE_OUT").unwrap());
    let save = |t: &tempfile::TempDir, prefix: &str| {
        for f in ["meta", "cache", "origin"] {
            std::fs::copy(
                t.path().join(format!("{f}.img")),
                dir.join(format!("{prefix}-{f}.img")),
            )
            .unwrap();
        }
    };
    for name in CACHES {
        let (t, ours) = written_through_dmemu(name);
        save(&t, &format!("w-{name}"));
        println!("DMEMU_SHA256 w-{name} {ours}");
    }
    for name in ["wb2", "wb1"] {
        let (t, _) = written_back_by_dmemu(name);
        save(&t, &format!("b-{name}"));
    }
}

#[test]
fn dmemus_writes_read_back_as_the_kernel_reads_them() {
    // dmemu-kernel.txt: the kernel's sha256 of each cache after these writes, and of the
    // origin once the kernel's cleaner policy wrote back the blocks dmemu's metadata marks
    // dirty (a dirty block marked clean would leave the origin stale).
    let want = lines("dmemu-kernel.txt", "SHA256");
    let cleaned = lines("dmemu-kernel.txt", "CLEANED_ORIGIN_SHA256");
    let checked = lines("dmemu-kernel.txt", "CACHE_CHECK");
    for name in CACHES {
        let (_t, ours) = written_through_dmemu(name);
        let w = format!("w-{name}");
        assert_eq!(ours, want[&w], "{name}");
        assert_eq!(ours, cleaned[&w], "{name}: the cleaner's origin");
        assert_eq!(checked[&w], "ok", "{name}");
    }
}

#[test]
fn dmemus_committed_metadata_loads_with_the_kernels_status() {
    // The status of a fresh activation over what dmemu committed (space map usage, cached
    // and dirty blocks, the stats it saved) equals what the kernel printed activating it.
    let want = lines("dmemu-kernel.txt", "STATUS");
    for name in CACHES {
        let (t, _) = written_through_dmemu(name);
        let (_r, d) = create(name, t.path(), &write_table(name));
        let w = format!("w-{name}");
        assert_eq!(d.status_text(), format!("{}\n", want[&w]), "{name}");
    }
}

#[test]
fn writes_in_writeback_mode_leave_dirty_blocks_and_the_origin_untouched() {
    // wb1's block 6 is mapped and clean: the write goes to the cache block only.
    let (t, _) = written_through_dmemu("wb1");
    let origin = gunzip("wb1-origin.img.gz");
    let after = std::fs::read(t.path().join("origin.img")).unwrap();
    let b6 = 6 * 65536..7 * 65536;
    assert_eq!(after[b6.clone()], origin[b6]);
    let out = dmemu(&["cache", "ls", "meta.img"], t.path());
    let text = String::from_utf8(out.stdout).unwrap();
    let dirty = text.lines().skip(1).filter(|l| l.ends_with(" 1")).count();
    assert!(dirty > 6, "{text}");
}

#[test]
fn writeback_copies_the_dirty_blocks_to_the_origin_and_cleans_the_metadata() {
    // After `dmemu cache writeback` the origin alone reads what the kernel read through
    // the cache (kernel.txt), no block is dirty, the cache still reads the same, and the
    // kernel loads the metadata with that status (dmemu-kernel.txt).
    let sha = kernel("SHA256");
    let status = lines("dmemu-kernel.txt", "STATUS");
    let kernel_sha = lines("dmemu-kernel.txt", "SHA256");
    let checked = lines("dmemu-kernel.txt", "CACHE_CHECK");
    for name in ["wb2", "wb1"] {
        let (t, stdout) = written_back_by_dmemu(name);
        assert_eq!(
            file_sha256(&t.path().join("origin.img")),
            sha[name],
            "{name}"
        );
        let dirty = if name == "wb2" { 7 } else { 6 };
        assert_eq!(
            stdout,
            format!("{dirty}/{dirty} blocks successfully copied.\nUpdating metadata ... done\n")
        );
        let out = dmemu(&["cache", "ls", "meta.img"], t.path());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.lines().skip(1).all(|l| l.ends_with(" 0")), "{text}");
        let table = &kernel("FRESH_TABLE")[name];
        let (_r, d) = create(name, t.path(), table);
        let b = format!("b-{name}");
        assert_eq!(d.status_text(), format!("{}\n", status[&b]), "{name}");
        assert_eq!(sha256_of(d.as_ref()), kernel_sha[&b], "{name}");
        assert_eq!(checked[&b], "ok", "{name}");
        if name == "wb1" {
            // The host's cache_writeback 0.9 over wb1 (format 1) left the same origin.
            let host = lines("dmemu-kernel.txt", "HOST_WRITEBACK_ORIGIN_SHA256");
            assert_eq!(file_sha256(&t.path().join("origin.img")), host["wb1"]);
            let said = lines("dmemu-kernel.txt", "HOST_WRITEBACK_STDOUT");
            assert_eq!(stdout.lines().next(), Some(said["wb1"].as_str()));
        }
    }
}

/// `dmemu cache check` on wb2's metadata with `patch` applied: (success, stderr).
fn check_damaged(patch: &dyn Fn(&mut Vec<u8>)) -> (bool, String) {
    let t = images("wb2");
    let p = t.path().join("meta.img");
    let mut img = std::fs::read(&p).unwrap();
    patch(&mut img);
    std::fs::write(&p, img).unwrap();
    let out = dmemu(&["cache", "check", "meta.img"], t.path());
    (out.status.success(), String::from_utf8(out.stderr).unwrap())
}

/// Recompute the checksum of block `b` (CRC-32C of bytes 4.. xored with `xor`, at 0).
fn reseal(img: &mut [u8], b: usize, xor: u32) {
    let blk = &mut img[b * 4096..(b + 1) * 4096];
    let c = dmemu::targets::pdata::block::checksum(&blk[4..], xor);
    blk[..4].copy_from_slice(&c.to_le_bytes());
}

#[test]
fn damaged_metadata_is_refused_naming_block_and_field() {
    // cache_check 0.9's verdicts and words (check_gives_cache_check_0_9s_verdicts_on_damaged_metadata has the corpus);
    // what 0.9 passes but the kernel refuses gets one more line naming block and field.
    let (ok, e) = check_damaged(&|m| m[100] ^= 1);
    assert!(!ok && e.contains("bad checksum in superblock"), "{e}");
    let (ok, e) = check_damaged(&|m| {
        m[32] = 1;
        reseal(m, 0, 9_031_977);
    });
    assert!(!ok && e.contains("magic is incorrect"), "{e}");
    let (ok, e) = check_damaged(&|m| {
        m[40] = 3;
        reseal(m, 0, 9_031_977);
    });
    assert!(!ok && e.contains("version incorrect: 3"), "{e}");
    // The mapping array's btree root (mapping_root, byte 192) names an array block.
    let (ok, e) = check_damaged(&|m| {
        let root = usize::try_from(u64::from_le_bytes(m[192..200].try_into().unwrap())).unwrap();
        let leaf = u64::from_le_bytes(m[root * 4096 + 32 + 8 * 252..][..8].try_into().unwrap());
        let leaf = usize::try_from(leaf).unwrap();
        m[leaf * 4096 + 12] = 9; // value_size
        reseal(m, leaf, 595_846_735);
    });
    assert!(
        ok && e.contains("the kernel would refuse to load it")
            && e.contains("array block")
            && e.contains("byte 12: value_size 9"),
        "{e}"
    );
    let (ok, e) = check_damaged(&|m| m.truncate(2048));
    assert!(!ok && e.contains("Metadata device/file too small"), "{e}");
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

/// Reference counts of every block the cache superblock reaches, counted as the kernel's
/// space map counts them: block 0, each btree node once per parent pointer (roots once),
/// each array block once per leaf value naming it, the metadata space map's bitmaps, index
/// block and ref count tree nodes once each.
fn reachable_counts(meta: &Path) -> (BTreeMap<u64, u32>, BTreeMap<u64, u32>) {
    use dmemu::targets::pdata::block::{le64, MetaDev};
    use dmemu::targets::pdata::btree::read_node;
    use dmemu::targets::pdata::space_map::{SmKind, SmRoot, SpaceMap};
    let dev = MetaDev::new(std::sync::Arc::new(
        dmemu::MemVolume::from_bytes(std::fs::read(meta).unwrap()).unwrap(),
    ));
    let sb = dev.read_raw(0, "sb").unwrap();
    let mut want = BTreeMap::new();
    want.insert(0u64, 1u32);
    fn tree(dev: &MetaDev, b: u64, vs: usize, array: bool, want: &mut BTreeMap<u64, u32>) {
        *want.entry(b).or_insert(0) += 1;
        if want[&b] > 1 {
            return; // a shared node's children count once
        }
        let n = read_node(dev, b, vs).unwrap();
        for i in 0..n.keys.len() {
            if !n.leaf {
                tree(dev, n.child(i), vs, array, want);
            } else if array {
                *want.entry(le64(n.value(i), 0)).or_insert(0) += 1;
            }
        }
    }
    let version = u32::from_le_bytes(sb[40..44].try_into().unwrap());
    let mut roots = vec![192, 200, 208];
    if version == 2 {
        roots.push(284);
    }
    for off in roots {
        let r = le64(&sb, off);
        if r != 0 {
            tree(&dev, r, 8, true, &mut want);
        }
    }
    let root = SmRoot::parse(&sb, 64);
    let sm = SpaceMap::open(&dev, root, SmKind::Metadata).unwrap();
    for e in &sm.index {
        *want.entry(e.blocknr).or_insert(0) += 1;
    }
    *want.entry(root.bitmap_root).or_insert(0) += 1;
    tree(&dev, root.ref_count_root, 4, false, &mut want);
    let mut have = BTreeMap::new();
    sm.for_each_nonzero(&dev, &mut |b, c| {
        have.insert(b, c);
        Ok(())
    })
    .unwrap();
    assert_eq!(root.nr_allocated, have.len() as u64);
    (want, have)
}

#[test]
fn the_space_map_counts_every_reference_in_kernel_and_dmemu_metadata() {
    // The kernel's own metadata first (the rule holds there), then what dmemu committed
    // after writes (passthrough invalidations included) and after writeback.
    for name in CACHES {
        let t = images(name);
        let (want, have) = reachable_counts(&t.path().join("meta.img"));
        assert_eq!(want, have, "kernel {name}");
        let (t, _) = written_through_dmemu(name);
        let (want, have) = reachable_counts(&t.path().join("meta.img"));
        assert_eq!(want, have, "dmemu writes {name}");
    }
    for name in ["wb2", "wb1"] {
        let (t, _) = written_back_by_dmemu(name);
        let (want, have) = reachable_counts(&t.path().join("meta.img"));
        assert_eq!(want, have, "dmemu writeback {name}");
    }
}

/// cache_dump's XML and the dirty listing of a metadata image.
fn view(image: &[u8]) -> String {
    use dmemu::targets::cache::metadata::Metadata;
    use dmemu::targets::pdata::block::MetaDev;
    let vol = std::sync::Arc::new(dmemu::MemVolume::from_bytes(image.to_vec()).unwrap());
    let md = Metadata::open(&MetaDev::new(vol)).unwrap();
    let dirty: Vec<u64> = md
        .mappings
        .iter()
        .filter(|m| m.dirty)
        .map(|m| m.cblock)
        .collect();
    format!("{}{dirty:?}", md.dump_xml())
}

#[test]
fn a_commit_cut_short_at_any_write_leaves_the_previous_transaction_readable() {
    use dmemu::table::args::Args;
    use dmemu::targets::{Cache, CacheArgs};
    // wb1 in writeback mode (a sync commits new dirty flags), wt1 in passthrough mode (a
    // write hit commits the mapping's removal before it proceeds).
    for (name, mode, sector) in [
        ("wb1", "writeback", 6 * 128),
        ("wt1", "passthrough", 41 * 128),
    ] {
        let mem = |f: &str| {
            std::sync::Arc::new(
                dmemu::MemVolume::from_bytes(gunzip(&format!("{name}-{f}.img.gz"))).unwrap(),
            )
        };
        let meta = std::sync::Arc::new(Recorder::new(
            dmemu::MemVolume::from_bytes(gunzip(&format!("{name}-meta.img.gz"))).unwrap(),
        ));
        let tokens: Vec<String> = format!("m c o 128 1 {mode} smq 0")
            .split(' ')
            .map(str::to_string)
            .collect();
        let args = CacheArgs::parse(&mut Args::new(&tokens)).unwrap();
        let origin = mem("origin");
        let cache = Cache::over(
            &args,
            origin.size(),
            meta.clone(),
            mem("cache"),
            origin.clone(),
        )
        .unwrap();
        let mut image = meta.inner.to_vec();
        cache.write(Sector(sector), &[0x77; 4096]).unwrap();
        if mode == "writeback" {
            // Only the clean flag went, in place, before the block turned dirty.
            let first = meta.take();
            assert_eq!(
                first.len(),
                1,
                "{name}: only the superblock before the sync"
            );
            assert_eq!(first[0].0, Sector(0));
            image[..4096].copy_from_slice(&first[0].1);
        }
        // Writeback: the sync on teardown; passthrough: the invalidation's commit.
        let mut live = Some(cache);
        if mode == "writeback" {
            live = None;
        }
        let log = meta.take();
        let (last, commit) = log.split_last().unwrap();
        assert_eq!(last.0, Sector(0), "{name}: the superblock goes last");
        assert!(commit.iter().all(|(s, _)| *s != Sector(0)), "{name}");
        let view_old = view(&image);
        for (k, (s, bytes)) in commit.iter().enumerate() {
            let at = usize::try_from(s.0 * 512).unwrap();
            image[at..at + bytes.len()].copy_from_slice(bytes);
            assert_eq!(view(&image), view_old, "{name}: cut after {} writes", k + 1);
        }
        image[..4096].copy_from_slice(&last.1);
        assert_eq!(image, meta.inner.to_vec());
        assert_ne!(view(&image), view_old, "{name}");
        drop(live);
    }
}

// `dmemu cache check` against cache_check 0.9 (tests/fixtures/cache/check: make.sh applied
// every case of cases.txt to the cache_restore metadata of both formats and recorded
// cache_check's exit status and stderr in verdicts.txt). The same damage is applied here
// (as damage.py does); dmemu must give the same exit status, the same superblock and
// `examining` lines, and report `missing mappings` exactly where 0.9 does.

fn le(img: &[u8], off: usize, n: usize) -> u64 {
    let mut a = [0u8; 8];
    a[..n].copy_from_slice(&img[off..off + n]);
    u64::from_le_bytes(a)
}

fn first_value(img: &[u8], node: u64) -> u64 {
    let base = usize::try_from(node).unwrap() * 4096;
    let max = usize::try_from(le(img, base + 20, 4)).unwrap();
    le(img, base + 32 + 8 * max, 8)
}

/// damage.py's block names.
fn block(img: &[u8], what: &str) -> u64 {
    if let Ok(n) = what.parse() {
        return n;
    }
    match what {
        "sb" => 0,
        "mapping_root" => le(img, 192, 8),
        "hint_root" => le(img, 200, 8),
        "discard_root" => le(img, 208, 8),
        "dirty_root" => le(img, 284, 8),
        "sm_index" => le(img, 80, 8),
        "mapping_ablock" => first_value(img, le(img, 192, 8)),
        "hint_ablock" => first_value(img, le(img, 200, 8)),
        "sm_bitmap" => le(img, usize::try_from(le(img, 80, 8)).unwrap() * 4096 + 16, 8),
        _ => panic!("unknown block {what}"),
    }
}

/// Apply one line of cases.txt.
fn damage(img: &mut [u8], f: &[&str]) {
    let b = usize::try_from(block(img, f[1])).unwrap();
    let at = b * 4096 + f[2].parse::<usize>().unwrap();
    let v: u64 = f[4].parse().unwrap();
    match f[3] {
        "xor" => img[at] ^= u8::try_from(v).unwrap(),
        "set8" => img[at] = u8::try_from(v).unwrap(),
        "set32" => img[at..at + 4].copy_from_slice(&u32::try_from(v).unwrap().to_le_bytes()),
        "set64" => img[at..at + 8].copy_from_slice(&v.to_le_bytes()),
        "zero" => img[b * 4096..(b + 1) * 4096].fill(0),
        op => panic!("unknown op {op}"),
    }
    let xor = match f[5] {
        "-" => return,
        "sb" => 9_031_977,
        "btree" => 121_107,
        "array" => 595_846_735,
        "index" => 160_478,
        "bitmap" => 240_779,
        x => panic!("unknown reseal {x}"),
    };
    let blk = &mut img[b * 4096..(b + 1) * 4096];
    let c = dmemu::targets::pdata::block::checksum(&blk[4..], xor);
    blk[..4].copy_from_slice(&c.to_le_bytes());
}

/// The lines dmemu must print as 0.9 does (all but the nested damage descriptions).
fn shared_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.starts_with("examining")
                || l.starts_with("no ")
                || l.starts_with("invalid hint width")
                || l.starts_with("Metadata device/file too small")
                || l.starts_with("  superblock is")
                || (l.starts_with("    ")
                    && [
                        "bad checksum in superblock",
                        "magic is",
                        "version incorrect",
                    ]
                    .iter()
                    .any(|w| l.trim_start().starts_with(w)))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn check_gives_cache_check_0_9s_verdicts_on_damaged_metadata() {
    let cases = std::fs::read_to_string(fixtures().join("check/cases.txt")).unwrap();
    let verdicts = std::fs::read_to_string(fixtures().join("check/verdicts.txt")).unwrap();
    let mut status = BTreeMap::new();
    let mut msgs: BTreeMap<(String, String), String> = BTreeMap::new();
    for l in verdicts.lines() {
        let w: Vec<&str> = l.splitn(4, ' ').collect();
        let key = (w[1].to_string(), w[2].to_string());
        match w[0] {
            "VERDICT" => {
                status.insert(key, w[3].parse::<i32>().unwrap());
            }
            _ => {
                let m = msgs.entry(key).or_default();
                m.push_str(w.get(3).copied().unwrap_or(""));
                m.push('\n');
            }
        }
    }
    let mut failing = 0;
    for line in cases
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        for v in ["v1", "v2"] {
            let t = tempfile::tempdir().unwrap();
            let mut img = gunzip(&format!("restore-{v}-meta.img.gz"));
            damage(&mut img, &f);
            std::fs::write(t.path().join("m.img"), img).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
                .args(["cache", "check", "m.img"])
                .current_dir(t.path())
                .output()
                .unwrap();
            let key = (f[0].to_string(), v.to_string());
            let ours = String::from_utf8(out.stderr).unwrap();
            let theirs = msgs.get(&key).cloned().unwrap_or_default();
            assert_eq!(out.status.code(), Some(status[&key]), "{key:?}: {ours}");
            assert_eq!(
                shared_lines(&ours),
                shared_lines(&theirs),
                "{key:?}: {ours}"
            );
            assert_eq!(
                ours.contains("missing mappings"),
                theirs.contains("missing mappings"),
                "{key:?}: {ours}"
            );
            failing += status[&key];
        }
    }
    assert!(failing > 10, "the corpus holds refusals");
}
