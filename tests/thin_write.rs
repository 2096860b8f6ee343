//! The thin write path against the real kernel: the operations of
//! tests/fixtures/thin/kernel.guest.sh (create_thin, 4 KiB writes, a deleted thin,
//! create_snap and writes that break sharing, an external origin, set_transaction_id)
//! replayed in dmemu on fresh images give thins with the kernel's sha256, the kernel's
//! thin status lines and data usage, and the mappings thin_dump showed for the kernel's
//! metadata; the metadata dmemu commits reopens with the same contents.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use dmemu::table::args::Args;
use dmemu::targets::thin::metadata::Metadata;
use dmemu::targets::{Target, Thin, ThinPool, ThinPoolArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/thin")
}

fn gunzip(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixtures().join(name)).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

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

fn msg(pool: &ThinPool, words: &str) {
    let argv: Vec<&str> = words.split(' ').collect();
    pool.message(&argv).unwrap();
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

struct Images {
    meta: Arc<MemVolume>,
    data: Arc<MemVolume>,
    ext: SharedVolume,
}

const VSZ: SectorCount = SectorCount(32 * 2048);

/// Replay kernel.guest.sh on fresh images; the pool and the thins still open.
fn replay() -> (Images, Arc<ThinPool>, Vec<(String, Thin)>) {
    let img = Images {
        meta: Arc::new(MemVolume::new(SectorCount(4 * 2048)).unwrap()),
        data: Arc::new(MemVolume::new(SectorCount(32 * 2048)).unwrap()),
        ext: Arc::new(MemVolume::from_bytes(gunzip("kernel-ext.img.gz")).unwrap()),
    };
    let pool = Arc::new(
        ThinPool::over(
            &pool_args("0"),
            SectorCount(65536),
            img.meta.clone(),
            img.data.clone(),
        )
        .unwrap(),
    );
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
        let want = status[name].splitn(4, ' ').nth(3).unwrap();
        assert_eq!(t.status(), want, "{name}");
    }
    // Transaction id and data usage as the kernel's pool status; metadata usage differs
    // (dmemu lays trees out afresh, the kernel shares and shadows nodes).
    let ours: Vec<String> = pool.status().split(' ').map(str::to_string).collect();
    let theirs: Vec<&str> = status["pool"].split(' ').skip(3).collect();
    assert_eq!(ours[0], theirs[0]);
    assert_eq!(ours[2], theirs[2]);
    assert_eq!(ours[3..], theirs[3..]);
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
    let pool = Arc::new(
        ThinPool::over(
            &pool_args("0"),
            SectorCount(65536),
            img.meta.clone(),
            img.data.clone(),
        )
        .unwrap(),
    );
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
