//! dm-crypt's `integrity:<n>:none` (random IVs kept in dm-integrity tags without an AEAD)
//! against the real 6.12 kernel. Fixtures: tests/fixtures/crypt-integrity-none (make.sh,
//! guest.sh): the kernel formats a dm-integrity device with no internal hash and 16-byte
//! tags, puts `aes-xts-random` (512-byte sectors) or `capi:xts(aes)-random` (4096-byte
//! sectors) with `integrity:16:none` over it, writes seq(1) text at 0 and 2 MiB and prints
//! the sha256 of what it reads back; a third image is `aes-xts-plain64` with
//! `integrity:16:none` over a plain disk (no IV stored: the kernel skips
//! crypt_integrity_ctr), and the kernel refuses `random` over a disk without tags.
//!
//! Writes: write.sh / guest-write.sh had the kernel read images dmemu wrote
//! (dmemu-written-NAME.img.gz, kernel-written-6.12.txt); dmemu reads those as the kernel did.

mod fixture_support;

use std::sync::Arc;

use fixture_support::{seq, sha256};

use dmemu::table::parse_line_params;
use dmemu::targets::crypt::{Crypt, Keyring};
use dmemu::targets::{Integrity, TargetSpec};
use dmemu::volume::MemVolume;
use dmemu::{Sector, SectorCount, SharedVolume, Volume};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/crypt-integrity-none"
);
/// The cases with an integrity device below.
const TAGGED: [&str; 2] = ["xts-random-512", "capi-xts-random-4k"];

fn gunzip(path: &str) -> Vec<u8> {
    fixture_support::gunzip_path(path)
}

fn section(file: &str, tag: &str) -> String {
    fixture_support::section(&format!("{DIR}/{file}"), tag)
}

fn kernel(tag: &str) -> String {
    section("kernel-6.12.txt", tag)
}

/// The words of a table line (`start len type params...`) with the device (word `dev`,
/// counted from the params) replaced.
fn params(line: &str, dev: usize) -> (SectorCount, String) {
    let w: Vec<&str> = line.trim_end().split(' ').collect();
    let mut p: Vec<&str> = w[3..].to_vec();
    p[dev] = "/dev/x";
    (SectorCount(w[1].parse().unwrap()), p.join(" "))
}

/// The crypt device of case `name` over `img` as the kernel's tables built it: crypt over
/// integrity for the tagged cases, over the disk for plain64-none.
fn open(name: &str, img: Vec<u8>) -> (Arc<MemVolume>, Crypt) {
    let disk = Arc::new(MemVolume::from_bytes(img).unwrap());
    let lower: SharedVolume = if TAGGED.contains(&name) {
        let (len, p) = params(&kernel(&format!("{name} dif table")), 0);
        let TargetSpec::Integrity(args) = parse_line_params("integrity", len, &p).unwrap() else {
            panic!("not integrity");
        };
        Arc::new(Integrity::over(disk.clone(), &args, len).unwrap())
    } else {
        disk.clone()
    };
    let (len, p) = params(&kernel(&format!("{name} table")), 3);
    let TargetSpec::Crypt(args) = parse_line_params("crypt", len, &p).unwrap() else {
        panic!("not crypt");
    };
    let c = Crypt::over(lower, &args, len, &Keyring::default()).unwrap();
    (disk, c)
}

fn read(c: &Crypt, sector: u64, bytes: usize) -> Vec<u8> {
    let mut b = vec![0u8; bytes];
    c.read(Sector(sector), &mut b).unwrap();
    b
}

/// Every image reads back, through the kernel's own tables, with the sha256 the kernel
/// read: both written ranges (seq text, so also equal to what was written) and the whole
/// device (unwritten sectors decrypt with the zero IV their zero tags hold).
#[test]
fn kernel_images_read_back_as_the_kernel_read_them() {
    for name in TAGGED.iter().copied().chain(["plain64-none"]) {
        let (_, c) = open(name, gunzip(&format!("{DIR}/{name}.img.gz")));
        assert_eq!(
            c.size().0.to_string(),
            kernel(&format!("{name} size")).trim_end()
        );
        let first = read(&c, 0, 262_144);
        assert_eq!(first, seq(1, 262_144), "{name}");
        assert_eq!(
            sha256(&first),
            kernel(&format!("{name} first-sha256")).trim_end()
        );
        let second = read(&c, 4096, 65536);
        assert_eq!(second, seq(500_000, 65536), "{name}");
        assert_eq!(
            sha256(&second),
            kernel(&format!("{name} second-sha256")).trim_end()
        );
        let all = read(&c, 0, c.size().0 as usize * 512);
        assert_eq!(
            sha256(&all),
            kernel(&format!("{name} all-sha256")).trim_end(),
            "{name}"
        );
    }
}

/// The kernel refuses a random IV over a disk without tags ("Integrity profile not
/// supported.", its dmesg in the fixture); dmemu gives the same words and EINVAL.
#[test]
fn random_iv_without_tags_is_refused_with_the_kernels_words() {
    let dmesg = kernel("dmesg");
    let words = "Integrity profile not supported.";
    assert!(
        dmesg.contains(&format!("crypt: {words} (-EINVAL)")),
        "{dmesg}"
    );
    let disk: SharedVolume = Arc::new(MemVolume::new(SectorCount(64)).unwrap());
    let key = "00".repeat(64);
    let p = format!("aes-xts-random {key} 0 /dev/x 0 1 integrity:16:none");
    let TargetSpec::Crypt(args) = parse_line_params("crypt", SectorCount(64), &p).unwrap() else {
        panic!("not crypt");
    };
    let e = Crypt::over(disk, &args, SectorCount(64), &Keyring::default()).unwrap_err();
    assert!(e.to_string().contains(words), "{e}");
    assert_eq!(e.errno(), dmemu::error::errno::EINVAL);
}

/// dmemu's writes into a kernel image: what it writes reads back, the kernel's data
/// around it is untouched, each sector's tuple holds a fresh random IV (the same data
/// written twice gives other ciphertext), and the raw disk never holds the plaintext.
#[test]
fn dmemu_writes_store_fresh_random_ivs_and_read_back() {
    for name in TAGGED {
        let (disk, c) = open(name, gunzip(&format!("{DIR}/{name}.img.gz")));
        let data = seq(700_000, 65536);
        c.write(Sector(1024), &data).unwrap();
        assert_eq!(read(&c, 1024, 65536), data, "{name}");
        let raw1 = disk.to_vec();
        c.write(Sector(1024), &data).unwrap();
        let raw2 = disk.to_vec();
        assert_ne!(raw1, raw2, "{name}: the same data twice, other IVs");
        assert_eq!(read(&c, 1024, 65536), data, "{name}");
        assert!(
            !raw2.windows(64).any(|w| w == &data[4096..4160]),
            "{name}: plaintext on the disk"
        );
        assert_eq!(
            sha256(&read(&c, 4096, 65536)),
            kernel(&format!("{name} second-sha256")).trim_end()
        );
        assert_eq!(read(&c, 0, 262_144), seq(1, 262_144), "{name}");
    }
}

/// What write.sh exports: each tagged kernel image with dmemu's writes (seq text, 4 KiB at
/// sector 8 inside what the kernel wrote, 64 KiB at sector 1024 where nothing was).
fn dmemu_written(name: &str) -> Vec<u8> {
    let (disk, c) = open(name, gunzip(&format!("{DIR}/{name}.img.gz")));
    c.write(Sector(8), &seq(900_000, 4096)).unwrap();
    c.write(Sector(1024), &seq(700_000, 65536)).unwrap();
    c.flush().unwrap();
    drop(c);
    disk.to_vec()
}

#[test]
#[ignore = "writes the dmemu-made images for write.sh (DMEMU_CRYPT_NONE_FIXTURE_OUT)"]
fn dmemu_written_images_export() {
    let out = std::path::PathBuf::from(std::env::var("DMEMU_CRYPT_NONE_FIXTURE_OUT").unwrap());
    for name in TAGGED {
        std::fs::write(out.join(format!("{name}.img")), dmemu_written(name)).unwrap();
    }
}

/// The kernel read the images dmemu wrote (write.sh, guest-write.sh): both of dmemu's
/// ranges and the kernel's own data around them, as dmemu reads them from the same images.
#[test]
fn the_kernel_reads_what_dmemu_wrote() {
    let path = format!("{DIR}/kernel-written-6.12.txt");
    if !std::path::Path::new(&path).exists() {
        panic!("{path} missing: run tests/fixtures/crypt-integrity-none/write.sh");
    }
    for name in TAGGED {
        let w = |tag: &str| section("kernel-written-6.12.txt", &format!("{name} {tag}"));
        assert_eq!(w("rc").trim_end(), "rc=0", "{name}");
        let img = gunzip(&format!("{DIR}/dmemu-written-{name}.img.gz"));
        let (_, c) = open(name, img);
        let mut want_first = seq(1, 262_144);
        want_first[4096..8192].copy_from_slice(&seq(900_000, 4096));
        assert_eq!(sha256(&want_first), w("first-sha256").trim_end(), "{name}");
        assert_eq!(sha256(&read(&c, 0, 262_144)), w("first-sha256").trim_end());
        let dm = seq(700_000, 65536);
        assert_eq!(sha256(&dm), w("dmemu-sha256").trim_end(), "{name}");
        assert_eq!(sha256(&read(&c, 1024, 65536)), w("dmemu-sha256").trim_end());
        assert_eq!(
            w("second-sha256").trim_end(),
            kernel(&format!("{name} second-sha256")).trim_end()
        );
    }
}
