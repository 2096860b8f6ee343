//! The thin write path against the real kernel: the operations of
//! tests/fixtures/thin/kernel.guest.sh (create_thin, 4 KiB writes, a deleted thin,
//! create_snap and writes that break sharing, an external origin, set_transaction_id)
//! replayed in dmemu on fresh images give thins with the kernel's sha256, the kernel's
//! thin status lines and data usage, and the mappings thin_dump showed for the kernel's
//! metadata; the metadata dmemu commits reopens with the same contents.

mod recorder_support;
mod thin_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dmemu::table::args::Args;
use dmemu::targets::thin::metadata::btree::{read_node, walk_located};
use dmemu::targets::thin::metadata::Metadata;
use dmemu::targets::{Target, Thin, ThinPool, ThinPoolArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};
use recorder_support::Recorder;
use sha2::{Digest, Sha256};
use thin_support::{fixtures, gunzip, kernel, lines, sha256_of};

fn pool_args(features: &str) -> ThinPoolArgs {
    let text = format!("meta data 128 16 {features}");
    let tokens: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap()
}

/// kernel.guest.sh's `pat TAG N`: N 4 KiB blocks "TAG block NNNN ....\n".
fn pat(tag: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut line = format!("{tag} block {i:04} ").into_bytes();
        line.resize(4095, b'.');
        line.push(b'\n');
        out.extend(line);
    }
    out
}

/// `dd bs=4096 seek=SEEK oflag=direct`: one 4 KiB write at a time, as the kernel saw them.
fn wr(v: &dyn Volume, tag: &str, n: usize, seek: u64) {
    for (i, chunk) in pat(tag, n).chunks(4096).enumerate() {
        v.write(Sector((seek + i as u64) * 8), chunk).unwrap();
    }
}

/// Every space map count agrees with the trees (dmemu's thin_check space map check,
/// which kernel-written fixtures pass: src/targets/thin/metadata/tests.rs).
fn assert_consistent(meta: &SharedVolume) {
    let md = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md.check().unwrap(), Vec::<String>::new());
}

fn msg(pool: &ThinPool, words: &str) {
    let argv: Vec<&str> = words.split(' ').collect();
    pool.message(&argv).unwrap();
}

/// sha256 of the first `sectors` of `v` (the guest's thins are 4 MiB views).
fn sha256_head(v: &dyn Volume, sectors: u64) -> String {
    let mut b = vec![0; usize::try_from(sectors * 512).unwrap()];
    v.read(Sector(0), &mut b).unwrap();
    Sha256::digest(&b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

struct Images {
    meta: Arc<MemVolume>,
    data: Arc<MemVolume>,
    ext: SharedVolume,
}

const VSZ: SectorCount = SectorCount(32 * 2048);

/// The pool over the images (block size 128, low water mark 16) with `features`.
fn open_pool(img: &Images, features: &str) -> Arc<ThinPool> {
    Arc::new(
        ThinPool::over(
            &pool_args(features),
            SectorCount(65536),
            img.meta.clone(),
            img.data.clone(),
        )
        .unwrap(),
    )
}

/// A `dmsetup status` line without its "<start> <len> <target>" head: what
/// `Target::status` returns.
fn tail(line: &str) -> &str {
    line.splitn(4, ' ').nth(3).unwrap()
}

/// Pool status `ours` is the kernel's `theirs`, metadata usage and the held metadata
/// snapshot's block included: dmemu's btree inserts split and rebalance nodes as
/// dm-btree's do and its space maps hand out blocks in the kernel's order.
fn assert_status(ours: &str, theirs: &str) {
    assert_eq!(ours, theirs);
}

/// reserve-kernel.txt (make-reserve.sh): the kernel's `KIND NAME` value.
fn reserve_kernel(kind: &str, name: &str) -> String {
    lines("reserve-kernel.txt", kind)[name].clone()
}

/// Replay kernel.guest.sh on fresh images; the pool and the thins still open.
fn replay() -> (Images, Arc<ThinPool>, Vec<(String, Thin)>) {
    let img = Images {
        meta: Arc::new(MemVolume::new(SectorCount(4 * 2048)).unwrap()),
        data: Arc::new(MemVolume::new(SectorCount(32 * 2048)).unwrap()),
        ext: Arc::new(MemVolume::from_bytes(gunzip("kernel-ext.img.gz")).unwrap()),
    };
    let pool = open_pool(&img, "0");
    msg(&pool, "create_thin 0");
    let thin0 = Thin::over(pool.clone(), 0, VSZ, None).unwrap();
    wr(&thin0, "thin0-A", 256, 0);
    wr(&thin0, "thin0-B", 64, 2560);
    wr(&thin0, "thin0-P", 1, 1282);
    msg(&pool, "create_thin 3");
    let thin3 = Thin::over(pool.clone(), 3, VSZ, None).unwrap();
    wr(&thin3, "thin3-X", 64, 0);
    drop(thin3);
    msg(&pool, "delete 3");
    thin0.flush().unwrap(); // dmsetup suspend thin0
    msg(&pool, "create_snap 1 0");
    wr(&thin0, "thin0-C", 16, 0);
    wr(&thin0, "thin0-D", 2, 241);
    let thin1 = Thin::over(pool.clone(), 1, VSZ, None).unwrap();
    wr(&thin1, "thin1-E", 16, 5120);
    wr(&thin1, "thin1-F", 1, 8191);
    msg(&pool, "create_thin 2");
    let thin2 = Thin::over(
        pool.clone(),
        2,
        SectorCount(16 * 2048),
        Some(img.ext.clone()),
    )
    .unwrap();
    wr(&thin2, "thin2-G", 1, 257);
    wr(&thin2, "thin2-H", 16, 3072);
    msg(&pool, "set_transaction_id 0 7");
    let thins = vec![
        ("thin0".to_string(), thin0),
        ("thin1".to_string(), thin1),
        ("thin2".to_string(), thin2),
    ];
    (img, pool, thins)
}

#[test]
fn replayed_kernel_script_gives_the_kernels_thin_contents_and_status() {
    let (img, pool, thins) = replay();
    let sha = kernel("SHA256");
    let status = kernel("STATUS");
    for (name, t) in &thins {
        assert_eq!(sha256_of(t), sha[name], "{name}");
        // "0 <len> thin <status>"
        let want = tail(&status[name]);
        assert_eq!(t.status(), want, "{name}");
    }
    // The kernel's pool status, metadata usage included.
    assert_status(&pool.status(), tail(&status["pool"]));
    if let Ok(dir) = std::env::var("DMEMU_THIN_WRITE_OUT") {
        drop(thins);
        drop(pool);
        std::fs::write(format!("{dir}/dmemu-meta.img"), img.meta.to_vec()).unwrap();
        std::fs::write(format!("{dir}/dmemu-data.img"), img.data.to_vec()).unwrap();
    }
}

#[test]
fn replayed_kernel_script_commits_the_mappings_thin_dump_showed_for_the_kernel() {
    let (img, pool, thins) = replay();
    drop(thins);
    drop(pool); // commits
    let md = Metadata::open(img.meta.clone()).unwrap();
    let want = std::fs::read_to_string(fixtures().join("kernel.xml")).unwrap();
    assert_eq!(md.dump_xml().unwrap(), want);
}

#[test]
fn committed_pool_reopens_with_the_same_thin_contents() {
    let (img, pool, thins) = replay();
    let before: Vec<String> = thins.iter().map(|(_, t)| sha256_of(t)).collect();
    drop(thins);
    drop(pool);
    assert_consistent(&(img.meta.clone() as SharedVolume));
    let pool = open_pool(&img, "0");
    for (i, (id, len, origin)) in [
        (0, VSZ, None),
        (1, VSZ, None),
        (2, SectorCount(16 * 2048), Some(img.ext.clone())),
    ]
    .into_iter()
    .enumerate()
    {
        let t = Thin::over(pool.clone(), id, len, origin).unwrap();
        assert_eq!(sha256_of(&t), before[i], "thin {id}");
    }
}

#[test]
fn dmemu_commits_the_metadata_bytes_the_kernel_and_thin_check_accepted() {
    // make-dmemu.sh: host thin_check and the 6.12 kernel accepted these bytes and the
    // kernel read the thins back with the sha256 it computed on its own pool.
    let (img, pool, thins) = replay();
    drop(thins);
    drop(pool);
    assert!(img.meta.to_vec() == gunzip("dmemu-meta.img.gz"));
    let on_dmemu = lines("dmemu-kernel.txt", "SHA256");
    assert_eq!(on_dmemu, kernel("SHA256"));
    let status = lines("dmemu-kernel.txt", "STATUS");
    assert_eq!(status, kernel("STATUS"));
}

#[test]
fn writes_after_the_kernels_own_give_what_the_kernel_read_after_writing_on_dmemus_pool() {
    // dmemu.guest.sh: after activating dmemu's pool the kernel wrote 4 KiB into unmapped
    // block 100 of thin 1 and into shared block 160 of thin 0 (`dd conv=sync`).
    let (_img, _pool, thins) = replay();
    let mut block = b"kernel after dmemu".to_vec();
    block.resize(4096, 0);
    thins[1].1.write(Sector(1600 * 8), &block).unwrap();
    thins[0].1.write(Sector(2561 * 8), &block).unwrap();
    let want = lines("dmemu-kernel.txt", "SHA256_AFTER");
    assert_eq!(sha256_of(&thins[0].1), want["thin0"]);
    assert_eq!(sha256_of(&thins[1].1), want["thin1"]);
}

fn dump(image: Vec<u8>) -> String {
    Metadata::open(Arc::new(MemVolume::from_bytes(image).unwrap()))
        .unwrap()
        .dump_xml()
        .unwrap()
}

#[test]
fn a_commit_cut_short_at_any_write_leaves_the_previous_transaction_readable() {
    let meta = Arc::new(Recorder::new(
        MemVolume::new(SectorCount(4 * 2048)).unwrap(),
    ));
    let data = Arc::new(MemVolume::new(SectorCount(65536)).unwrap());
    let pool =
        Arc::new(ThinPool::over(&pool_args("0"), SectorCount(65536), meta.clone(), data).unwrap());
    msg(&pool, "create_thin 0");
    let thin = Thin::over(pool.clone(), 0, VSZ, None).unwrap();
    wr(&thin, "first", 40, 0);
    thin.flush().unwrap();
    let before = meta.inner.to_vec();
    let dump_before = dump(before.clone());
    meta.log.lock().unwrap().clear();

    wr(&thin, "second", 300, 100);
    assert!(
        meta.log.lock().unwrap().is_empty(),
        "metadata written before a commit"
    );
    thin.flush().unwrap();
    let log = meta.take();
    let dump_after = dump(meta.inner.to_vec());
    assert_ne!(dump_before, dump_after);
    assert_eq!(log.last().unwrap().0, Sector(0), "the superblock goes last");
    let mut image = before;
    for (k, (sector, bytes)) in log.iter().enumerate() {
        // State after k writes: still the old transaction.
        assert_eq!(dump(image.clone()), dump_before, "cut after {k} writes");
        let at = usize::try_from(sector.0 * 512).unwrap();
        image[at..at + bytes.len()].copy_from_slice(bytes);
    }
    assert_eq!(dump(image), dump_after);
}

#[test]
fn pool_messages_fail_with_the_kernels_words() {
    let (_img, pool, thins) = replay();
    let err = |words: &str| {
        let argv: Vec<&str> = words.split(' ').collect();
        pool.message(&argv).unwrap_err().to_string()
    };
    assert!(err("create_thin 0")
        .contains("Creation of new thinly-provisioned device with id 0 failed."));
    assert!(
        err("create_thin 16777216").contains("Message received with invalid device id: 16777216")
    );
    assert!(err("create_thin").contains("Message received with 1 arguments instead of 2."));
    assert!(err("create_snap 5 9").contains("Creation of new snapshot 5 of device 9 failed."));
    assert!(err("delete 1").contains("Deletion of thin device 1 failed.")); // open
    assert!(err("delete 8").contains("Deletion of thin device 8 failed."));
    assert!(err("set_transaction_id 3 4").contains("mismatched transaction id"));
    assert!(
        err("set_transaction_id x 4").contains("set_transaction_id message: Unrecognised id x.")
    );
    assert!(err("frob 1").contains("Unrecognised thin pool target message received: frob"));
    drop(thins);
    msg(&pool, "delete 1");
    msg(&pool, "set_transaction_id 7 8");
    pool.commit().unwrap();
    assert!(pool.status().starts_with("8 "));
}

#[test]
fn deleting_a_snapshot_frees_only_the_blocks_no_other_device_maps() {
    let (_img, pool, thins) = replay();
    drop(thins);
    let used = |p: &ThinPool| p.status().split(' ').nth(2).unwrap().to_string();
    assert_eq!(used(&pool), "27/512");
    // kernel.xml: thin 1 alone maps data blocks 0 and 15 (thin 0 broke sharing of its
    // virtual blocks 0 and 15) and 27, 28; the other 19 it maps are thin 0's too.
    msg(&pool, "delete 1");
    assert_eq!(used(&pool), "23/512");
}

#[test]
fn read_only_pool_writes_in_place_but_refuses_to_provision_and_to_take_messages() {
    let (img, pool, thins) = replay();
    drop(thins);
    drop(pool);
    let pool = open_pool(&img, "1 read_only");
    assert!(pool.status().contains(" ro "));
    let t = Thin::over(pool.clone(), 2, SectorCount(16 * 2048), None).unwrap();
    // Block 16 of thin 2 is mapped and not shared: written in place.
    t.write(Sector(16 * 128), &[7; 512]).unwrap();
    // Block 17 is not mapped.
    assert!(t.write(Sector(17 * 128), &[7; 512]).is_err());
    assert!(pool.message(&["create_thin", "9"]).is_err());
}

#[test]
fn partial_writes_to_new_blocks_are_zeroed_unless_skip_block_zeroing() {
    for (features, zeroed) in [("0", true), ("1 skip_block_zeroing", false)] {
        let meta = Arc::new(MemVolume::new(SectorCount(4 * 2048)).unwrap());
        // Data full of 0xee: what a block holds before it is provisioned.
        let data = Arc::new(MemVolume::from_bytes(vec![0xee; 32 << 20]).unwrap());
        let pool =
            Arc::new(ThinPool::over(&pool_args(features), SectorCount(65536), meta, data).unwrap());
        msg(&pool, "create_thin 0");
        let t = Thin::over(pool.clone(), 0, VSZ, None).unwrap();
        t.write(Sector(8), &[1; 4096]).unwrap();
        let mut b = vec![0; 65536];
        t.read(Sector(0), &mut b).unwrap();
        assert!(b[4096..8192].iter().all(|&x| x == 1));
        let rest_zero = b[..4096].iter().chain(&b[8192..]).all(|&x| x == 0);
        let rest_old = b[..4096].iter().chain(&b[8192..]).all(|&x| x == 0xee);
        assert!(if zeroed { rest_zero } else { rest_old }, "{features}");
    }
}

#[test]
fn out_of_data_space_fails_the_write_with_enospc() {
    let meta = Arc::new(MemVolume::new(SectorCount(4 * 2048)).unwrap());
    let meta_vol = meta.clone();
    let data = Arc::new(MemVolume::new(SectorCount(4 * 128)).unwrap());
    let pool = Arc::new(ThinPool::over(&pool_args("0"), SectorCount(512), meta, data).unwrap());
    msg(&pool, "create_thin 0");
    let t = Thin::over(pool.clone(), 0, VSZ, None).unwrap();
    for b in 0..4 {
        t.write(Sector(b * 128), &[1; 512]).unwrap();
    }
    let e = t.write(Sector(4 * 128), &[1; 512]).unwrap_err();
    assert_eq!(e.errno(), 28, "{e}");
    // pool_status prints the mode instead of rw.
    assert!(
        pool.status().contains(" 4/4 - out_of_data_space "),
        "{}",
        pool.status()
    );
    // Blocks a discard frees in the same transaction are found after the commit the
    // allocator makes before giving up; the pool leaves the mode.
    t.discard(Sector(0), SectorCount(128)).unwrap();
    t.write(Sector(4 * 128), &[1; 512]).unwrap();
    assert!(pool.status().contains(" 4/4 - rw "), "{}", pool.status());
    assert_consistent(&(meta_vol as SharedVolume));
}

#[test]
fn discard_unmaps_whole_blocks_only_and_frees_unshared_data_blocks() {
    let (img, pool, thins) = replay();
    let (thin0, thin1) = (&thins[0].1, &thins[1].1);
    // thin 1, virtual blocks 320 (its own, data 27) and 0 (its own, data 0), plus half of
    // block 1 (shared with thin 0): the half block stays mapped.
    thin1.discard(Sector(320 * 128), SectorCount(128)).unwrap();
    thin1.discard(Sector(0), SectorCount(128 + 64)).unwrap();
    let mut b = vec![0xffu8; 65536];
    thin1.read(Sector(320 * 128), &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    thin1.read(Sector(128), &mut b).unwrap();
    assert!(b.starts_with(b"thin0-A block 0016 "));
    // 23 mapped blocks - 2; highest mapped is still 511.
    assert_eq!(thin1.status(), format!("{} 65535", 21 * 128));
    // Data blocks 0 and 27 are free now: 27 - 2 in use after the commit.
    assert_eq!(pool.status().split(' ').nth(2).unwrap(), "25/512");
    // thin 0's block 160 is shared with thin 1: unmapping it frees nothing.
    thin0.discard(Sector(160 * 128), SectorCount(128)).unwrap();
    assert_eq!(pool.status().split(' ').nth(2).unwrap(), "25/512");
    // A discard not covering a whole block changes nothing.
    thin0.discard(Sector(8), SectorCount(8)).unwrap();
    thin0.read(Sector(0), &mut b[..4096]).unwrap();
    assert!(b.starts_with(b"thin0-C block 0000 "));
    // The 6.12 kernel did the same discards on the same pool (make-discard.sh).
    let status = lines("discard-kernel.txt", "STATUS2");
    let sha = lines("discard-kernel.txt", "SHA256");
    for (name, t) in [("thin0", thin0), ("thin1", thin1)] {
        assert_eq!(t.status(), tail(&status[name]));
        assert_eq!(sha256_of(t), sha[name], "{name}");
    }
    assert_eq!(pool.status(), tail(&status["pool"]), "pool");
    assert_consistent(&(img.meta.clone() as SharedVolume));
}

// ---- a pool the kernel left with a metadata snapshot held (make-snap.sh) ----

fn snap_pool() -> (Arc<MemVolume>, Arc<ThinPool>, Arc<MemVolume>) {
    let meta = Arc::new(MemVolume::from_bytes(gunzip("snap-meta.img.gz")).unwrap());
    let data = Arc::new(MemVolume::from_bytes(gunzip("snap-data.img.gz")).unwrap());
    let tokens: Vec<String> = ["m", "d", "128", "0"].map(str::to_string).to_vec();
    let args = ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap();
    let pool = ThinPool::over(&args, SectorCount(32768), meta.clone(), data.clone()).unwrap();
    (meta, Arc::new(pool), data)
}

#[test]
fn metadata_snapshot_dumps_as_thin_dump_and_thin_dump_m_print_it() {
    let md = Metadata::open(Arc::new(
        MemVolume::from_bytes(gunzip("snap-meta.img.gz")).unwrap(),
    ))
    .unwrap();
    let read = |f: &str| std::fs::read_to_string(fixtures().join(f)).unwrap();
    assert_eq!(md.dump_xml().unwrap(), read("snap.xml"));
    assert_eq!(
        md.metadata_snap().unwrap().unwrap().dump_xml().unwrap(),
        read("snap-m.xml")
    );
}

#[test]
fn pool_with_a_held_metadata_snapshot_reports_it_and_reads_like_the_kernel() {
    let (_meta, pool, _data) = snap_pool();
    let status = lines("snap-kernel.txt", "STATUS");
    assert_eq!(pool.status(), tail(&status["pool"]));
    let t = Thin::over(pool.clone(), 0, SectorCount(8192), None).unwrap();
    assert_eq!(t.status(), tail(&status["thin0"]));
    assert_eq!(sha256_of(&t), lines("snap-kernel.txt", "SHA256")["thin0"]);
}

#[test]
fn changes_on_a_kernel_held_metadata_snapshot_keep_it_until_released() {
    let (meta, pool, data) = snap_pool();
    let t = Thin::over(pool.clone(), 0, SectorCount(8192), None).unwrap();
    t.write(Sector(128 * 9), &[5; 512]).unwrap();
    msg(&pool, "create_thin 4");
    let err = pool.message(&["reserve_metadata_snap"]).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    // Committed: the snapshot still dumps as thin_dump -m printed it from the kernel's.
    let md = Metadata::open(meta.clone()).unwrap();
    let snap = md.metadata_snap().unwrap().unwrap().dump_xml().unwrap();
    let want = std::fs::read_to_string(fixtures().join("snap-m.xml")).unwrap();
    assert_eq!(snap, want);
    assert_ne!(md.superblock().held_root, 0);
    assert_consistent(&(meta.clone() as SharedVolume));
    // The 6.12 kernel on this pool (make-reserve.sh): same status and contents, and the
    // same again after it released the snapshot and wrote 4 KiB into block 2.
    assert_eq!(pool.status(), tail(&reserve_kernel("STATUS", "held-pool")));
    assert_eq!(sha256_head(&t, 8192), reserve_kernel("SHA256", "held-t0"));
    if std::env::var("DMEMU_THIN_WRITE_OUT").is_err() {
        let r = Thin::over(pool.clone(), 0, SectorCount(8192), None).unwrap();
        msg(&pool, "release_metadata_snap");
        let mut b = b"kernel after release".to_vec();
        b.resize(4096, 0);
        r.write(Sector(40 * 8), &b).unwrap();
        assert_eq!(
            pool.status(),
            tail(&reserve_kernel("STATUS", "held-released"))
        );
        return;
    }
    if let Ok(dir) = std::env::var("DMEMU_THIN_WRITE_OUT") {
        drop(t);
        drop(pool);
        std::fs::write(format!("{dir}/held-meta.img"), meta.to_vec()).unwrap();
        std::fs::write(format!("{dir}/held-data.img"), data.to_vec()).unwrap();
    }
}

#[test]
fn releasing_a_held_metadata_snapshot_frees_it_and_a_second_release_fails() {
    let (meta, pool, _data) = snap_pool();
    msg(&pool, "release_metadata_snap");
    let err = pool.message(&["release_metadata_snap"]).unwrap_err();
    assert!(err.to_string().contains("nothing to release"), "{err}");
    let md = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md.superblock().held_root, 0);
    assert!(md.metadata_snap().unwrap().is_none());
    assert!(pool.status().contains(" 2/256 - rw "), "{}", pool.status());
}

#[test]
fn reserve_metadata_snap_keeps_the_mappings_of_that_moment() {
    let (img, pool, thins) = replay();
    let before = Metadata::open(img.meta.clone())
        .unwrap()
        .dump_xml()
        .unwrap();
    msg(&pool, "reserve_metadata_snap");
    wr(&thins[1].1, "after-snap", 32, 6000);
    wr(&thins[0].1, "after-snap", 16, 0);
    msg(&pool, "create_thin 9");
    let held = pool.status().split(' ').nth(3).unwrap().to_string();
    assert_ne!(held, "-");
    let md = Metadata::open(img.meta.clone()).unwrap();
    assert_eq!(md.superblock().held_root.to_string(), held);
    let snap = md.metadata_snap().unwrap().unwrap();
    // The copy: the live superblock of that moment with its space map roots wiped.
    let live_then = before.replace(r#"nr_data_blocks="512""#, r#"nr_data_blocks="0""#);
    assert_eq!(snap.dump_xml().unwrap(), live_then);
    assert_ne!(md.dump_xml().unwrap(), before);
    assert_consistent(&(img.meta.clone() as SharedVolume));
    // make-reserve.sh takes the images here, before the comparison with what the
    // kernel reported on them.
    let status = pool.status();
    if let Ok(dir) = std::env::var("DMEMU_THIN_WRITE_OUT") {
        drop(thins);
        drop(pool);
        std::fs::write(format!("{dir}/reserve-meta.img"), img.meta.to_vec()).unwrap();
        std::fs::write(format!("{dir}/reserve-data.img"), img.data.to_vec()).unwrap();
        return;
    }
    assert_status(&status, tail(&reserve_kernel("STATUS", "reserve-pool")));
    assert_eq!(
        sha256_head(&thins[0].1, 8192),
        reserve_kernel("SHA256", "reserve-t0")
    );
    assert_eq!(
        sha256_head(&thins[1].1, 8192),
        reserve_kernel("SHA256", "reserve-t1")
    );
    msg(&pool, "release_metadata_snap");
    let mut b = b"kernel after release".to_vec();
    b.resize(4096, 0);
    thins[0].1.write(Sector(40 * 8), &b).unwrap();
    assert_status(
        &pool.status(),
        tail(&reserve_kernel("STATUS", "reserve-released")),
    );
}

// ---- incremental commits over a kernel-made pool with shared subtrees ----

/// The mapping tree of `dev_id` in `md`: its root and leaf blocks.
fn tree_nodes(md: &Metadata, dev_id: u64) -> (u64, BTreeSet<u64>) {
    let root = md.device_root(dev_id).unwrap().unwrap();
    let mut leaves = BTreeSet::new();
    walk_located(md.dev(), root, 8, &mut |_, _, at| {
        leaves.insert(at.block);
        Ok(())
    })
    .unwrap();
    (root, leaves)
}

/// Metadata blocks in use by `md`'s space map.
fn meta_used(md: &Metadata) -> u64 {
    md.superblock().metadata_sm.nr_allocated
}

/// The 4 KiB metadata block `b` of `image`.
fn block_of(image: &[u8], b: u64) -> &[u8] {
    let at = usize::try_from(b).unwrap() * 4096;
    &image[at..at + 4096]
}

const INCR_LEN: SectorCount = SectorCount(131_072);

/// make-incremental.sh's scenario on the kernel's pool (incremental-kernel-meta.img.gz;
/// its data device is all zeroes): three dmemu commits, each checked for kept nodes and
/// consistent counts. The images and each thin's sha256 after the last commit.
fn incremental() -> (Arc<MemVolume>, Arc<MemVolume>, BTreeMap<u64, String>) {
    let meta = Arc::new(MemVolume::from_bytes(gunzip("incremental-kernel-meta.img.gz")).unwrap());
    let data = Arc::new(MemVolume::new(INCR_LEN).unwrap());
    let before = meta.to_vec();
    let md0 = Metadata::open(meta.clone()).unwrap();
    // The kernel's sharing: the snapshots share one root, thin 0 shares all its leaves
    // but the one the kernel wrote after the snapshots.
    let (r1, leaves1) = tree_nodes(&md0, 1);
    let (r2, _) = tree_nodes(&md0, 2);
    let (r0, leaves0) = tree_nodes(&md0, 0);
    assert_eq!(r1, r2);
    assert_eq!(leaves1.len(), 3, "a root over three leaves");
    assert_ne!(r0, r1);
    assert_eq!(leaves0.intersection(&leaves1).count(), leaves1.len() - 1);
    let used0 = meta_used(&md0);

    let pool =
        Arc::new(ThinPool::over(&pool_args("0"), INCR_LEN, meta.clone(), data.clone()).unwrap());
    let thin = |id| Thin::over(pool.clone(), id, INCR_LEN, None).unwrap();

    // Commit 1: one block of thin 0 (in a leaf all three devices share) rewritten.
    let t0 = thin(0);
    wr(&t0, "incr-1", 1, 16 * 10);
    pool.commit().unwrap();
    let after = meta.to_vec();
    let md1 = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md1.check().unwrap(), Vec::<String>::new());
    // The untouched snapshots: same root, same leaves, same bytes in them.
    for id in [1, 2] {
        let (r, leaves) = tree_nodes(&md1, id);
        assert_eq!((r, &leaves), (r1, &leaves1), "thin {id}");
        for &b in leaves.iter().chain([&r]) {
            assert_eq!(block_of(&after, b), block_of(&before, b), "block {b}");
        }
    }
    // Thin 0: a new root over its kept leaves and one re-packed leaf.
    let (n0, new_leaves0) = tree_nodes(&md1, 0);
    assert_ne!(n0, r0);
    assert_eq!(new_leaves0.len(), leaves0.len());
    assert_eq!(new_leaves0.difference(&leaves0).count(), 1);
    // Space maps and the small trees are re-written in place of the old ones; the tree
    // grows by its new root and leaf, less the old root no one references now.
    let used1 = meta_used(&md1);
    assert!(used1 <= used0 + 2, "{used0} -> {used1}");

    // Commit 2: a write to snapshot 2 breaks its sharing of one block; thin 1 stays.
    let t2 = thin(2);
    wr(&t2, "incr-2", 2, 16 * 500);
    pool.commit().unwrap();
    let md2 = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md2.check().unwrap(), Vec::<String>::new());
    assert_eq!(tree_nodes(&md2, 1), (r1, leaves1.clone()));
    let (_, leaves2) = tree_nodes(&md2, 2);
    assert_eq!(leaves2.difference(&leaves1).count(), 1);
    assert!(
        meta_used(&md2) <= used1 + 3,
        "{used1} -> {}",
        meta_used(&md2)
    );

    // Commit 3: a dmemu snapshot of thin 0 (sharing its root), then a discard in thin 1
    // and a write in the new snapshot.
    t0.flush().unwrap();
    msg(&pool, "create_snap 3 0");
    let t1 = thin(1);
    t1.discard(Sector(128 * 20), SectorCount(128)).unwrap();
    let t3 = thin(3);
    wr(&t3, "incr-3", 1, 16 * 599);
    pool.commit().unwrap();
    let md3 = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md3.check().unwrap(), Vec::<String>::new());
    let (_, leaves3) = tree_nodes(&md3, 3);
    assert_eq!(tree_nodes(&md3, 0), tree_nodes(&md1, 0));
    assert_eq!(leaves3.difference(&new_leaves0).count(), 1);

    let mut sha = BTreeMap::new();
    for (id, t) in [(0, &t0), (1, &t1), (2, &t2), (3, &t3)] {
        sha.insert(id, sha256_of(t));
    }
    drop((t0, t1, t2, t3));
    drop(pool);
    (meta, data, sha)
}

#[test]
fn incremental_commits_on_a_kernel_pool_keep_untouched_shared_nodes_and_add_up() {
    let (meta, data, sha) = incremental();
    if let Ok(dir) = std::env::var("DMEMU_THIN_WRITE_OUT") {
        std::fs::write(format!("{dir}/incremental-meta.img"), meta.to_vec()).unwrap();
        std::fs::write(format!("{dir}/incremental-data.img"), data.to_vec()).unwrap();
        let lines: String = sha
            .iter()
            .map(|(id, s)| format!("SHA256 thin{id} {s}\n"))
            .collect();
        std::fs::write(format!("{dir}/incremental-sha.txt"), lines).unwrap();
    }
}

#[test]
fn incremental_commits_give_the_bytes_host_thin_check_and_the_kernel_accepted() {
    // make-incremental.sh: host thin_check accepted these bytes and thin_dump printed
    // incremental-dmemu.xml; the 6.12 kernel activated the pool, thin_check'ed it and
    // read every thin with the sha256 dmemu reads.
    let (meta, _data, sha) = incremental();
    assert!(meta.to_vec() == gunzip("incremental-dmemu-meta.img.gz"));
    let md = Metadata::open(meta.clone()).unwrap();
    let want = std::fs::read_to_string(fixtures().join("incremental-dmemu.xml")).unwrap();
    assert_eq!(md.dump_xml().unwrap(), want);
    let on_kernel = lines("incremental-dmemu-kernel.txt", "SHA256");
    let ours: BTreeMap<String, String> = sha
        .into_iter()
        .map(|(id, s)| (format!("thin{id}"), s))
        .collect();
    assert_eq!(on_kernel, ours);
    let text = std::fs::read_to_string(fixtures().join("incremental-dmemu-kernel.txt")).unwrap();
    for l in ["THIN_CHECK_BEFORE ok", "THIN_CHECK_AFTER ok"] {
        assert!(text.lines().any(|x| x == l), "{l}");
    }
}

/// thin_check's fill rule: every non-root node of the tree at `block` holds at least a
/// third of its `max_entries`; returns the tree's height.
fn assert_filled(md: &Metadata, block: u64, root: bool) -> usize {
    let node = read_node(md.dev(), block, 8).unwrap();
    if !root {
        assert!(
            node.keys.len() >= node.max_entries / 3,
            "node {block}: {} of {}",
            node.keys.len(),
            node.max_entries
        );
    }
    if node.leaf {
        return 1;
    }
    let heights: BTreeSet<usize> = (0..node.keys.len())
        .map(|i| assert_filled(md, node.child(i), false))
        .collect();
    assert_eq!(heights.len(), 1, "node {block}: unbalanced");
    1 + heights.first().unwrap()
}

#[test]
fn random_writes_discards_and_snapshots_over_many_incremental_commits_stay_consistent() {
    let meta = Arc::new(MemVolume::from_bytes(gunzip("incremental-kernel-meta.img.gz")).unwrap());
    let data = Arc::new(MemVolume::new(INCR_LEN).unwrap());
    let open =
        || Arc::new(ThinPool::over(&pool_args("0"), INCR_LEN, meta.clone(), data.clone()).unwrap());
    let pool = open();
    let mut ids: Vec<u64> = vec![0, 1, 2];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for round in 0..12 {
        for _ in 0..120 {
            let id = ids[usize::try_from(rnd(ids.len() as u64)).unwrap()];
            let t = Thin::over(pool.clone(), id, INCR_LEN, None).unwrap();
            let vb = rnd(1024);
            match rnd(8) {
                // Discards in runs, so leaves drain below a third and must merge.
                0..=3 => t
                    .discard(
                        Sector(128 * vb),
                        SectorCount(128 * (1 + rnd(40)).min(1024 - vb)),
                    )
                    .unwrap(),
                _ => {
                    if t.write(Sector(128 * vb), &[u8::try_from(round).unwrap(); 4096])
                        .is_err()
                    {
                        continue;
                    }
                }
            }
        }
        if round % 3 == 1 {
            let new = 10 + round;
            let origin = ids[usize::try_from(rnd(ids.len() as u64)).unwrap()];
            msg(&pool, &format!("create_snap {new} {origin}"));
            ids.push(u64::try_from(new).unwrap());
        }
        if round == 7 {
            msg(&pool, &format!("delete {}", ids.remove(1)));
        }
        pool.commit().unwrap();
        let md = Metadata::open(meta.clone()).unwrap();
        assert_eq!(md.check().unwrap(), Vec::<String>::new(), "round {round}");
        for (_, root) in md.device_roots().unwrap() {
            assert_filled(&md, root, true);
        }
    }
    let sha: Vec<String> = ids
        .iter()
        .map(|&id| sha256_of(&Thin::over(pool.clone(), id, INCR_LEN, None).unwrap()))
        .collect();
    drop(pool);
    let pool = open();
    for (&id, s) in ids.iter().zip(&sha) {
        let t = Thin::over(pool.clone(), id, INCR_LEN, None).unwrap();
        assert_eq!(&sha256_of(&t), s, "thin {id}");
    }
    if let Ok(dir) = std::env::var("DMEMU_THIN_WRITE_OUT") {
        drop(pool);
        std::fs::write(format!("{dir}/random-meta.img"), meta.to_vec()).unwrap();
    }
}

#[test]
fn a_leaf_drained_below_a_third_is_merged_with_its_neighbour_and_the_last_leaf_kept() {
    let meta = Arc::new(MemVolume::from_bytes(gunzip("incremental-kernel-meta.img.gz")).unwrap());
    let data = Arc::new(MemVolume::new(INCR_LEN).unwrap());
    let (_, leaves) = tree_nodes(&Metadata::open(meta.clone()).unwrap(), 1);
    let pool = Arc::new(ThinPool::over(&pool_args("0"), INCR_LEN, meta.clone(), data).unwrap());
    let t1 = Thin::over(pool.clone(), 1, INCR_LEN, None).unwrap();
    // Thin 1's three leaves hold 600 mappings; unmapping 0-189 leaves 10 in the first.
    t1.discard(Sector(0), SectorCount(128 * 190)).unwrap();
    pool.commit().unwrap();
    let md = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md.check().unwrap(), Vec::<String>::new());
    let (root, now) = tree_nodes(&md, 1);
    assert_eq!(assert_filled(&md, root, true), 2);
    assert_eq!(now.len(), 2);
    assert_eq!(now.intersection(&leaves).count(), 1, "the last leaf kept");
    let maps = md.mappings(root).unwrap();
    assert_eq!(maps.len(), 410);
    assert_eq!(maps.keys().next(), Some(&190));
}

#[test]
fn a_drained_last_leaf_merges_back_into_the_run_repacked_before_it() {
    let meta = Arc::new(MemVolume::from_bytes(gunzip("incremental-kernel-meta.img.gz")).unwrap());
    let data = Arc::new(MemVolume::new(INCR_LEN).unwrap());
    let pool = Arc::new(ThinPool::over(&pool_args("0"), INCR_LEN, meta.clone(), data).unwrap());
    let t1 = Thin::over(pool.clone(), 1, INCR_LEN, None).unwrap();
    // First leaf drained (merged with the middle one), last leaf drained too: the last
    // run has no right neighbour and a re-packed run on its left.
    t1.discard(Sector(0), SectorCount(128 * 190)).unwrap();
    t1.discard(Sector(128 * 410), SectorCount(128 * 180))
        .unwrap();
    pool.commit().unwrap();
    let md = Metadata::open(meta.clone()).unwrap();
    assert_eq!(md.check().unwrap(), Vec::<String>::new());
    let (root, _) = tree_nodes(&md, 1);
    // The shadowing remove keeps every non-root node at least a third full (merging a
    // drained leaf into its neighbour or taking entries from it), as dm-btree-remove does:
    // 230 mappings stay in at most two leaves under the root.
    let height = assert_filled(&md, root, true);
    assert!(height <= 2, "height {height}");
    let (_, nodes) = tree_nodes(&md, 1);
    assert!(nodes.len() <= 2, "{} leaves", nodes.len());
    assert_eq!(md.mappings(root).unwrap().len(), 230);
}

/// A pool built without a device layer (`ThinPool::over`) cannot be reloaded to grow, so a
/// write that needs a block on a full pool fails ENOSPC at once in `queue_if_no_space` mode:
/// the pool is out of data space but still queueing by its feature (a timed-out queue would
/// have turned it to `error_if_no_space`).
#[test]
fn a_full_pool_without_a_device_layer_fails_writes_at_once() {
    let meta = Arc::new(MemVolume::new(SectorCount(8192)).unwrap());
    let data = Arc::new(MemVolume::new(SectorCount(512)).unwrap());
    let pool = Arc::new(ThinPool::over(&pool_args("0"), SectorCount(512), meta, data).unwrap());
    msg(&pool, "create_thin 0");
    let t = Thin::over(pool.clone(), 0, SectorCount(4096), None).unwrap();
    for b in 0..4 {
        t.write(Sector(b * 128), &[1u8; 4096]).unwrap();
    }
    let e = t.write(Sector(4 * 128), &[1u8; 4096]).unwrap_err();
    assert_eq!(e.errno(), 28, "{e}");
    let status = pool.status();
    assert!(status.contains("out_of_data_space"), "{status}");
    assert!(status.contains("queue_if_no_space"), "{status}");
}
