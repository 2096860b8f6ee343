//! dm-integrity against the real Linux 6.12 kernel.
//!
//! Fixtures: tests/fixtures/integrity, made by make.sh (guest.sh on the oracle VM):
//! integritysetup formats each image, the kernel opens it in D, J or B mode and writes
//! seq(1) text; the J and B images were copied while live, so they hold an unreplayed
//! journal / a dirty bitmap. kernel-6.12.txt has the kernel's table line, status, size and
//! the sha256 of the mapped device for each. dmemu opens the same images with the same
//! table and must read the same bytes (tags checked), print the same table and status,
//! and fail unwritten blocks of the --no-wipe image with EILSEQ as the kernel did.

use std::io::Read;
use std::sync::Arc;

use dmemu::error::errno;
use dmemu::table::parse_line_params;
use dmemu::targets::{Integrity, Keys, Target, TargetSpec};
use dmemu::volume::MemVolume;
use dmemu::{Sector, SectorCount, Volume};
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/integrity");
/// The key make.sh gives integritysetup for the hmac(sha256) image.
const HMAC_KEY: &[u8] = b"dmemu-integrity-hmac-key-32bytes";

fn gunzip(name: &str) -> Vec<u8> {
    let f = std::fs::File::open(format!("{DIR}/{name}.img.gz")).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The lines after `### <tag>` in kernel-6.12.txt.
fn kernel(tag: &str) -> String {
    let text = std::fs::read_to_string(format!("{DIR}/kernel-6.12.txt")).unwrap();
    let mut lines = text.lines().skip_while(|l| *l != format!("### {tag}"));
    lines.next().unwrap_or_else(|| panic!("no ### {tag}"));
    lines
        .take_while(|l| !l.starts_with("### "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The kernel's table line of device `name` with its device number replaced by `dev`, and
/// the hidden hmac key put back.
fn table_params(name: &str, dev: &str) -> (SectorCount, String) {
    let line = kernel(&format!("{name} table"));
    let mut words = line.split(' ');
    let _start = words.next().unwrap();
    let len = SectorCount(words.next().unwrap().parse().unwrap());
    assert_eq!(words.next(), Some("integrity"));
    let _kernel_dev = words.next().unwrap();
    let mut rest: Vec<String> = words.map(str::to_string).collect();
    for w in &mut rest {
        if let Some(zeros) = w.strip_prefix("internal_hash:hmac(sha256):") {
            assert!(zeros.bytes().all(|b| b == b'0'));
            *w = format!("internal_hash:hmac(sha256):{}", hex(HMAC_KEY));
        }
    }
    (len, format!("{dev} {}", rest.join(" ")))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn open(image: &str, name: &str) -> (Integrity, SectorCount, Arc<MemVolume>) {
    let vol = Arc::new(MemVolume::from_bytes(gunzip(image)).unwrap());
    let (len, params) = table_params(name, "/dev/disk");
    let TargetSpec::Integrity(args) = parse_line_params("integrity", len, &params).unwrap() else {
        panic!("not integrity");
    };
    let t = Integrity::over(vol.clone(), &args, len).unwrap();
    (t, len, vol)
}

fn sha256_of(v: &dyn Volume, len: SectorCount) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len.0 {
        let n = (len.0 - at).min(2048);
        let b = &mut buf[..usize::try_from(n * 512).unwrap()];
        v.read(Sector(at), b).unwrap();
        h.update(&*b);
        at += n;
    }
    hex(&h.finalize())
}

/// The kernel's table line for `name` with the device as dmemu prints it.
fn expected_table(name: &str) -> String {
    let line = kernel(&format!("{name} table"));
    let w: Vec<&str> = line.splitn(5, ' ').collect();
    format!("/dev/disk {}", w[4])
}

fn printed(t: &Integrity, keys: Keys) -> String {
    let TargetSpec::Integrity(a) = t.table_spec().unwrap() else {
        panic!()
    };
    let mut s = String::new();
    a.write(&mut s, keys).unwrap();
    format!("/dev/disk {}", s.split_once(' ').unwrap().1)
}

fn check_case(image: &str, name: &str) {
    let (t, len, _) = open(image, name);
    assert_eq!(len.0.to_string(), kernel(&format!("{name} size")));
    assert_eq!(
        t.layout().provided_data_sectors.to_string(),
        kernel(&format!("{name} size"))
    );
    assert_eq!(
        sha256_of(&t, len),
        kernel(&format!("{name} sha256")),
        "{image}"
    );
    assert_eq!(
        format!("0 {len} integrity {}", t.status()),
        kernel(&format!("{name} status"))
    );
    assert_eq!(printed(&t, Keys::Hidden), expected_table(name));
}

#[test]
fn direct_crc32c_image_reads_as_the_kernel_wrote_it() {
    check_case("d-crc32c", "d");
}

#[test]
fn journal_sha256_4k_image_with_unreplayed_journal_reads_as_the_kernel_saw_it() {
    let (t, _, _) = open("j-sha256-journal", "j");
    // The copy was taken with committed entries still in the journal.
    assert!(t.replayed_blocks() > 0);
    check_case("j-sha256-journal", "j");
}

#[test]
fn bitmap_crc32c_image_with_dirty_bitmap_reads_as_the_kernel_saw_it() {
    let (t, _, _) = open("b-crc32c-dirty", "b");
    assert!(t.superblock().flag_names().contains(&"dirty_bitmap"));
    check_case("b-crc32c-dirty", "b");
}

#[test]
fn direct_hmac_sha256_image_reads_with_the_key_and_prints_it_hidden() {
    check_case("d-hmac-sha256", "h");
    let (t, _, _) = open("d-hmac-sha256", "h");
    assert!(printed(&t, Keys::Shown).ends_with(&hex(HMAC_KEY)));
}

#[test]
fn direct_sha1_image_reads_as_the_kernel_wrote_it() {
    check_case("d-sha1", "s");
}

#[test]
fn journal_crc32_4k_image_reads_as_the_kernel_wrote_it() {
    check_case("j-crc32-4k", "c");
}

#[test]
fn hmac_image_with_a_wrong_key_fails_reads_with_eilseq() {
    let vol = Arc::new(MemVolume::from_bytes(gunzip("d-hmac-sha256")).unwrap());
    let (len, params) = table_params("h", "/dev/disk");
    let params = params.replace(&hex(HMAC_KEY), &"ab".repeat(32));
    let TargetSpec::Integrity(args) = parse_line_params("integrity", len, &params).unwrap() else {
        panic!()
    };
    let t = Integrity::over(vol, &args, len).unwrap();
    let err = t.read(Sector(0), &mut [0u8; 512]).unwrap_err();
    assert_eq!(err.errno(), errno::EILSEQ);
}

#[test]
fn nowipe_image_reads_written_blocks_and_fails_the_first_unwritten_one_like_the_kernel() {
    let vol = Arc::new(MemVolume::from_bytes(gunzip("d-nowipe")).unwrap());
    let len = SectorCount(15768);
    let params = "/dev/disk 0 4 D 1 internal_hash:crc32c";
    let TargetSpec::Integrity(args) = parse_line_params("integrity", len, params).unwrap() else {
        panic!()
    };
    let t = Integrity::over(vol, &args, len).unwrap();
    let mut written = vec![0u8; 65536];
    t.read(Sector(0), &mut written).unwrap();
    assert_eq!(
        hex(&Sha256::digest(&written)),
        kernel("n read-written sha256")
    );
    // dmesg: "Checksum failed at sector 0x80"; dd: "Invalid or incomplete multibyte ...".
    assert!(kernel("dmesg").contains("Checksum failed at sector 0x80"));
    assert!(kernel("n read-unwritten").contains("Invalid or incomplete multibyte"));
    let err = t.read(Sector(0x80), &mut [0u8; 4096]).unwrap_err();
    assert_eq!(err.errno(), errno::EILSEQ);
    assert!(err.to_string().contains("sector 128"), "{err}");
    assert_eq!(t.status(), "1 15768 -");
    assert_eq!(kernel("n status"), "0 15768 integrity 1 15768 -");
}

#[test]
fn flipped_data_byte_fails_that_block_with_eilseq_and_leaves_others_readable() {
    let (t, _, vol) = open("d-crc32c", "d");
    let phys = t.layout().data_sector(100);
    let mut s = [0u8; 512];
    vol.read(Sector(phys), &mut s).unwrap();
    s[7] ^= 1;
    vol.write(Sector(phys), &s).unwrap();
    assert_eq!(
        t.read(Sector(96), &mut [0u8; 4096]).unwrap_err().errno(),
        errno::EILSEQ
    );
    t.read(Sector(101), &mut [0u8; 512]).unwrap();
    assert_eq!(t.mismatches(), 1);
}

/// A device that stops taking writes after `left` more (a crash at that point).
#[derive(Debug)]
struct CrashAfter {
    inner: Arc<MemVolume>,
    left: std::sync::atomic::AtomicUsize,
}

impl Volume for CrashAfter {
    fn size(&self) -> SectorCount {
        self.inner.size()
    }
    fn read(&self, s: Sector, b: &mut [u8]) -> dmemu::Result<()> {
        self.inner.read(s, b)
    }
    fn write(&self, s: Sector, b: &[u8]) -> dmemu::Result<()> {
        use std::sync::atomic::Ordering;
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(dmemu::Error::TargetFailed {
                target: "crash",
                reason: "crashed".into(),
            });
        }
        self.inner.write(s, b)
    }
    fn flush(&self) -> dmemu::Result<()> {
        Ok(())
    }
    fn discard(&self, _: Sector, _: SectorCount) -> dmemu::Result<()> {
        Ok(())
    }
}

fn pattern(seed: u8, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| {
            let i = u32::try_from(i).unwrap();
            u8::try_from((i.wrapping_mul(2_654_435_761) >> 24) & 0xff).unwrap() ^ seed
        })
        .collect()
}

fn view(t: &dyn Volume, len: SectorCount) -> Vec<u8> {
    let mut v = vec![0u8; usize::try_from(len.bytes()).unwrap()];
    t.read(Sector(0), &mut v).unwrap();
    v
}

/// The images dmemu writes for the kernel to read (make.sh's second run): name, the
/// kernel-made image it starts from, the table name in kernel-6.12.txt, and the writes
/// (sector, seed, bytes); `crash_last` cuts the last write off after its first device
/// write (the journal section).
/// (name, source image, table name, writes (sector, seed, bytes), crash in the last write).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(u64, u8, usize)],
    bool,
);

const DMEMU_CASES: &[Case] = &[
    (
        "dw-d-crc32c",
        "d-crc32c",
        "d",
        &[(1000, 1, 65536), (15767, 2, 512)],
        false,
    ),
    (
        "dw-j-sha256",
        "j-sha256-journal",
        "j",
        &[(8, 3, 12288), (2048, 4, 163_840)],
        false,
    ),
    (
        "dw-j-sha256-crash",
        "j-sha256-journal",
        "j",
        &[(8, 5, 12288), (4096, 6, 16384)],
        true,
    ),
    (
        "dw-b-crc32c",
        "b-crc32c-dirty",
        "b",
        &[(0, 7, 4096), (9000, 8, 131_072)],
        false,
    ),
];

/// Run one case: the image dmemu leaves and the device view the kernel must see in it.
fn dmemu_case(case: &Case) -> (Vec<u8>, Vec<u8>) {
    let (_, image, name, writes, crash_last) = *case;
    let (t, len, vol) = open(image, name);
    let mut expect = view(&t, len);
    let (last, first) = writes.split_last().unwrap();
    for &(s, seed, n) in first {
        let data = pattern(seed, n);
        t.write(Sector(s), &data).unwrap();
        let at = usize::try_from(s * 512).unwrap();
        expect[at..at + n].copy_from_slice(&data);
    }
    t.flush().unwrap();
    let (s, seed, n) = *last;
    let data = pattern(seed, n);
    let at = usize::try_from(s * 512).unwrap();
    expect[at..at + n].copy_from_slice(&data);
    if crash_last {
        drop(t);
        let crash = Arc::new(CrashAfter {
            inner: vol.clone(),
            left: std::sync::atomic::AtomicUsize::new(usize::MAX),
        });
        let (len2, params) = table_params(name, "/dev/disk");
        let TargetSpec::Integrity(args) = parse_line_params("integrity", len2, &params).unwrap()
        else {
            panic!()
        };
        let t2 = Integrity::over(crash.clone(), &args, len2).unwrap();
        // A write to open the journal ring first, then the crash: only the section lands.
        t2.write(Sector(0), &expect[..4096]).unwrap();
        t2.flush().unwrap();
        crash.left.store(1, std::sync::atomic::Ordering::SeqCst);
        assert!(t2.write(Sector(s), &data).is_err());
    } else {
        t.write(Sector(s), &data).unwrap();
        t.flush().unwrap();
    }
    (vol.to_vec(), expect)
}

#[test]
#[ignore = "writes the dmemu-made images for make.sh (DMEMU_INTEGRITY_FIXTURE_OUT)"]
fn dmemu_written_images_export() {
    let out = std::path::PathBuf::from(std::env::var("DMEMU_INTEGRITY_FIXTURE_OUT").unwrap());
    for case in DMEMU_CASES {
        let (img, expect) = dmemu_case(case);
        std::fs::write(out.join(format!("{}.img", case.0)), img).unwrap();
        std::fs::write(
            out.join(format!("{}.view-sha256", case.0)),
            hex(&Sha256::digest(&expect)),
        )
        .unwrap();
    }
}

/// `kernel-6.12-dmemu.txt`: the kernel's view of each image dmemu wrote.
fn kernel_dmemu(tag: &str) -> String {
    let text = std::fs::read_to_string(format!("{DIR}/kernel-6.12-dmemu.txt")).unwrap();
    let mut lines = text.lines().skip_while(|l| *l != format!("### {tag}"));
    lines.next().unwrap_or_else(|| panic!("no ### {tag}"));
    lines
        .take_while(|l| !l.starts_with("### "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kernel_reads_what_dmemu_wrote_in_each_mode_with_no_integrity_errors() {
    for case in DMEMU_CASES {
        let (img, expect) = dmemu_case(case);
        let name = case.0;
        // The kernel was given exactly these bytes...
        assert_eq!(
            hex(&Sha256::digest(&img)),
            kernel_dmemu(&format!("{name} image")),
            "{name}"
        );
        // ...and read the view dmemu meant (new data, the journal replayed after the crash).
        assert_eq!(
            hex(&Sha256::digest(&expect)),
            kernel_dmemu(&format!("{name} sha256")),
            "{name}"
        );
        assert!(
            kernel_dmemu(&format!("{name} status")).contains(" integrity 0 "),
            "{name}"
        );
        // dmemu reads its own image back the same way.
        let vol = Arc::new(MemVolume::from_bytes(img).unwrap());
        let (len, params) = table_params(case.2, "/dev/disk");
        let TargetSpec::Integrity(args) = parse_line_params("integrity", len, &params).unwrap()
        else {
            panic!()
        };
        let t = Integrity::over(vol, &args, len).unwrap();
        assert!(view(&t, len) == expect, "{name}");
    }
    assert!(!kernel_dmemu("dmesg").contains("Checksum failed"));
}

/// `meta_device:` goes through `dm_get_device` like every device token: the 6.12 kernel
/// prints `0254:0016` back as `254:16` (fixture meta-device-6.12.txt, made by
/// meta-device.guest.sh). A path is kept as written (dmemu has no device numbers for
/// files; docs/design.md lists this among the deviations).
#[test]
fn meta_device_numbers_print_as_the_kernel_prints_them() {
    let text = std::fs::read_to_string(format!("{DIR}/meta-device-6.12.txt")).unwrap();
    assert!(text.starts_with("@@kernel 6.12."), "{text}");
    let meta = |line: &str| {
        line.split(' ')
            .find(|w| w.starts_with("meta_device:"))
            .unwrap()
            .to_string()
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut checked = 0;
    for pair in lines.windows(2) {
        let (Some(input), Some(table)) = (
            pair[0].strip_prefix("@@input "),
            pair[1].strip_prefix("@@table "),
        ) else {
            continue;
        };
        let mut words = input.splitn(4, ' ');
        let (_, len, kind, params) = (
            words.next(),
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
        );
        let spec = parse_line_params(kind, SectorCount(len.parse().unwrap()), params).unwrap();
        let mut ours = String::new();
        spec.write_params(&mut ours, Keys::Shown).unwrap();
        let ours = meta(&ours);
        if meta(input).contains('/') {
            assert_eq!(ours, meta(input), "a path is kept as written");
        } else {
            assert_eq!(ours, meta(table), "{input}");
            checked += 1;
        }
    }
    assert_eq!(checked, 2);
}
