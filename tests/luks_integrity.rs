//! LUKS2 with dm-integrity (issue 17 point 5), the parts dmemu has so far, against the real
//! 6.12 kernel. Fixtures: tests/fixtures/luks-integrity (make.sh, guest.sh): cryptsetup
//! formats LUKS2 with hmac(sha256) over xts, aes-gcm and aegis128 (--integrity-no-wipe),
//! the kernel writes seq(1) text at 0 and 2 MiB; kernel-6.12.txt holds luksDump, both
//! tables and the sha256 of what the kernel read back.
//!
//! Proven here: `dmemu luks dump` prints what cryptsetup printed; dmemu's integrity reader
//! opens the integrity layer under the crypt device with the kernel's table; the kernel's
//! crypt and integrity tables parse and print back as the kernel printed them, and
//! `dmemu luks table` gives both; `dmemu luks read` (and the library) decrypts and
//! authenticates every sector and gives the sha256 the kernel read back, and fails a
//! sector nobody wrote (or one whose data or tag changed) with EILSEQ naming it, as the
//! kernel's "INTEGRITY AEAD ERROR, sector N".
//!
//! Writes: write.sh / guest-write.sh made dmemu-written-NAME.img.gz with `dmemu luks
//! write` and had the kernel read them (kernel-written-6.12.txt). Here dmemu reads those
//! images as the kernel did, and the same writes done now (fresh random IVs) read back the
//! same through dmemu.

mod fixture_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use dmemu::luks::{KdfLimits, Luks};
use dmemu::registry::Registry;
use dmemu::table::parse_concise;
use dmemu::table::parse_line_params;
use dmemu::targets::crypt::{Crypt, Keyring};
use dmemu::targets::{Integrity, TargetSpec};
use dmemu::volume::MemVolume;
use dmemu::{Access, Keys, Sector, SectorCount, SharedVolume, Volume};
use fixture_support::{seq, sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/luks-integrity");
const NAMES: [&str; 3] = ["l2-hmac-sha256-xts", "l2-aes-gcm", "l2-aegis128"];

fn gunzip(name: &str) -> Vec<u8> {
    fixture_support::gunzip_path(&format!("{DIR}/{name}.img.gz"))
}

fn kernel(tag: &str) -> String {
    fixture_support::section(&format!("{DIR}/kernel-6.12.txt"), tag)
}

#[test]
fn luks_dump_of_integrity_images_is_what_cryptsetup_printed() {
    let tmp = tempfile::tempdir().unwrap();
    for name in NAMES {
        let img = tmp.path().join(format!("{name}.img"));
        std::fs::write(&img, gunzip(name)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
            .args(["luks", "dump", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            kernel(&format!("{name} luksDump")),
            "{name}"
        );
    }
}

#[test]
fn the_integrity_layer_under_luks2_opens_with_the_kernels_table() {
    for name in NAMES {
        let line = kernel(&format!("{name} dif table"));
        let w: Vec<&str> = line.trim_end().split(' ').collect();
        assert_eq!(w[2], "integrity");
        let len = SectorCount(w[1].parse().unwrap());
        let params = format!("/dev/disk {}", w[4..].join(" "));
        let TargetSpec::Integrity(args) = parse_line_params("integrity", len, &params).unwrap()
        else {
            panic!("not integrity");
        };
        let vol = Arc::new(MemVolume::from_bytes(gunzip(name)).unwrap());
        let t = Integrity::over(vol, &args, len).unwrap();
        // The size the kernel gave the crypt device is the integrity layer's.
        assert_eq!(
            t.layout().provided_data_sectors.to_string(),
            kernel(&format!("{name} size")).trim_end()
        );
        // Tags belong to dm-crypt (no internal hash): data reads back raw. The written
        // 256 KiB are ciphertext (not the seq text, not zeros); unwritten sectors zeros.
        let mut written = vec![0u8; 262_144];
        t.read(Sector(0), &mut written).unwrap();
        assert!(!written.starts_with(b"1\n2\n3\n"), "{name}");
        assert!(
            written.chunks(512).all(|s| s.iter().any(|&b| b != 0)),
            "{name}"
        );
        let mut unwritten = vec![0u8; 4096];
        t.read(Sector(2048), &mut unwritten).unwrap();
        assert!(unwritten.iter().all(|&b| b == 0), "{name}");
    }
}

const PASS: &str = "dmemu-luks-integrity";

fn written_kernel(tag: &str) -> String {
    fixture_support::section(&format!("{DIR}/kernel-written-6.12.txt"), tag)
}

/// A temporary copy of an image and the passphrase file.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pass"), PASS).unwrap();
        Work { dir }
    }
    fn image(&self, name: &str, gz: &str) -> PathBuf {
        let img = self.dir.path().join(format!("{name}.img"));
        std::fs::write(&img, gunzip(gz)).unwrap();
        img
    }
    fn pass(&self) -> PathBuf {
        self.dir.path().join("pass")
    }
    /// `dmemu luks <cmd> --key-file pass <img> <args>` with `input` on stdin.
    fn dmemu(&self, cmd: &str, img: &Path, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dmemu"))
            .args(["luks", cmd, "--key-file"])
            .arg(self.pass())
            .arg(img)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
    /// sha256 of `sectors` sectors from `start` as `dmemu luks read` gives them.
    fn read_sha(&self, img: &Path, start: u64, sectors: u64) -> String {
        let out = self.dmemu(
            "read",
            img,
            &[
                "--start",
                &start.to_string(),
                "--sectors",
                &sectors.to_string(),
            ],
            b"",
        );
        assert!(out.status.success(), "{img:?}: {out:?}");
        assert_eq!(out.stdout.len() as u64, sectors * 512);
        sha256(&out.stdout)
    }
}

/// Whether the kernel's second write (64 KiB at 2 MiB) fit the device (4000-sector
/// devices end before it: dd said "cannot seek").
fn second_written(name: &str) -> bool {
    kernel(&format!("{name} size"))
        .trim()
        .parse::<u64>()
        .unwrap()
        >= 4096 + 128
}

#[test]
fn the_kernels_tables_parse_and_print_back_as_the_kernel_printed_them() {
    for name in NAMES {
        for tag in ["table", "dif table"] {
            let line = kernel(&format!("{name} {tag}"));
            let line = line.trim_end();
            let w: Vec<&str> = line.splitn(4, ' ').collect();
            let spec = parse_line_params(w[2], SectorCount(w[1].parse().unwrap()), w[3])
                .unwrap_or_else(|e| panic!("{name} {tag}: {e}"));
            let mut out = format!("{} {} {} ", w[0], w[1], w[2]);
            spec.write_params(&mut out, Keys::Shown).unwrap();
            assert_eq!(out, line, "{name} {tag}");
        }
    }
}

#[test]
fn luks_table_prints_the_integrity_and_crypt_lines_cryptsetup_loads() {
    let w = Work::new();
    for name in NAMES {
        let img = w.image(name, name);
        let out = w.dmemu("table", &img, &["--showkeys", "--keyring"], b"");
        assert!(out.status.success(), "{name}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{name}: {text}");
        // Device names differ (the kernel's are major:minor); the rest is the kernel's.
        let dev = img.display().to_string();
        let dif = kernel(&format!("{name} dif table"));
        let kdev = dif.split(' ').nth(3).unwrap();
        assert_eq!(lines[0].replace(&dev, kdev), dif.trim_end(), "{name}");
        let crypt = kernel(&format!("{name} table"));
        let cdev = crypt.split(' ').nth(6).unwrap();
        assert_eq!(
            lines[1].replace(&format!("{dev}_dif"), cdev),
            crypt.trim_end(),
            "{name}"
        );
    }
}

#[test]
fn luks_read_gives_the_sha256_the_kernel_read_back() {
    let w = Work::new();
    for name in NAMES {
        let img = w.image(name, name);
        assert_eq!(
            w.read_sha(&img, 0, 512),
            kernel(&format!("{name} first-sha256")).trim(),
            "{name}"
        );
        if second_written(name) {
            assert_eq!(
                w.read_sha(&img, 4096, 128),
                kernel(&format!("{name} second-sha256")).trim(),
                "{name}"
            );
        }
    }
}

#[test]
fn an_unwritten_sector_fails_with_eilseq_naming_it_as_the_kernel() {
    // The guest read 4 KiB at sector 2048 (never written, no valid tag): EILSEQ, and
    // dmesg said "INTEGRITY AEAD ERROR, sector 2048".
    assert!(kernel("dmesg").contains("INTEGRITY AEAD ERROR, sector 2048"));
    let w = Work::new();
    for name in NAMES {
        assert!(kernel(&format!("{name} unwritten-read"))
            .contains("Invalid or incomplete multibyte or wide character"));
        let img = w.image(name, name);
        let out = w.dmemu("read", &img, &["--start", "2048", "--sectors", "8"], b"");
        assert_eq!(out.status.code(), Some(84), "{name}: EILSEQ, {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains("AEAD") && err.contains("sector 2048"),
            "{name}: {err}"
        );
    }
}

/// The LUKS volume and its integrity layer over an image in memory (the library API).
fn open_mem(img: Vec<u8>) -> (Luks, dmemu::luks::VolumeKey) {
    let dev: SharedVolume = Arc::new(MemVolume::from_bytes(img).unwrap());
    let luks = Luks::open(dev, None).unwrap();
    let key = luks
        .unlock(PASS.as_bytes(), None, &KdfLimits::default())
        .unwrap();
    (luks, key)
}

#[test]
fn a_changed_data_byte_or_tag_byte_fails_that_sector_only() {
    for name in NAMES {
        let raw = gunzip(name);
        let (luks, key) = open_mem(raw.clone());
        let vol = luks.volume(&key).unwrap();
        let mut clean = vec![0u8; 262_144];
        vol.read(Sector(0), &mut clean).unwrap();
        assert_eq!(
            sha256(&clean),
            kernel(&format!("{name} first-sha256")).trim()
        );

        // Change sector 5's ciphertext and sector 9's tag through the integrity layer.
        let line = kernel(&format!("{name} dif table"));
        let w: Vec<&str> = line.trim_end().split(' ').collect();
        let len = SectorCount(w[1].parse().unwrap());
        let TargetSpec::Integrity(args) =
            parse_line_params("integrity", len, &format!("/dev/disk {}", w[4..].join(" ")))
                .unwrap()
        else {
            panic!("not integrity");
        };
        let dev: SharedVolume = Arc::new(MemVolume::from_bytes(raw).unwrap());
        let t = Integrity::over(Arc::clone(&dev), &args, len).unwrap();
        let ts = t.tag_profile().unwrap().tuple_size as usize;
        for (sector, tag_byte) in [(5u64, None), (9, Some(3usize))] {
            let mut data = vec![0u8; 512];
            let mut tag = vec![0u8; ts];
            t.read_tagged(Sector(sector), &mut data, &mut tag).unwrap();
            match tag_byte {
                None => data[100] ^= 0x20,
                Some(i) => tag[i] ^= 1,
            }
            t.write_tagged(Sector(sector), &data, &tag).unwrap();
        }
        drop(t);
        let luks = Luks::open(dev, None).unwrap();
        let vol = luks.volume(&key).unwrap();
        let mut buf = vec![0u8; 4096];
        let e = vol.read(Sector(0), &mut buf).unwrap_err();
        assert_eq!(e.errno(), 84, "{name}: {e}");
        assert!(e.to_string().contains("sector 5"), "{name}: {e}");
        let e = vol.read(Sector(8), &mut buf).unwrap_err();
        assert!(e.to_string().contains("sector 9"), "{name}: {e}");
        // The sectors around them still read as before.
        let mut s = vec![0u8; 512];
        for ok in [4u64, 6, 8, 10] {
            vol.read(Sector(ok), &mut s).unwrap();
            let at = ok as usize * 512;
            assert_eq!(s, clean[at..at + 512], "{name} sector {ok}");
        }
    }
}

/// What write.sh wrote, as expected data: the kernel's 256 KiB with 4 KiB at sector 8,
/// and 64 KiB at sector 1024.
fn expected_after_writes() -> (String, String) {
    let mut first = seq(1, 262_144);
    first[4096..8192].copy_from_slice(&seq(900_000, 4096));
    (sha256(&first), sha256(&seq(700_000, 65536)))
}

#[test]
fn the_kernel_read_what_dmemu_wrote_and_so_does_dmemu() {
    let (first, second) = expected_after_writes();
    let w = Work::new();
    for name in NAMES {
        // The kernel's answers for the images dmemu wrote (write.sh).
        assert!(
            written_kernel(&format!("{name} open")).contains("rc=0"),
            "{name}"
        );
        assert_eq!(
            written_kernel(&format!("{name} first-sha256")).trim(),
            first
        );
        assert_eq!(
            written_kernel(&format!("{name} dmemu-sha256")).trim(),
            second
        );
        assert!(written_kernel(&format!("{name} unwritten-read"))
            .contains("Invalid or incomplete multibyte or wide character"));
        assert!(
            written_kernel(&format!("{name} dif status")).contains(" integrity 0 "),
            "{name}: no mismatches"
        );
        // dmemu reads those very images the same.
        let stored = w.image(&format!("stored-{name}"), &format!("dmemu-written-{name}"));
        assert_eq!(w.read_sha(&stored, 0, 512), first, "{name}");
        assert_eq!(w.read_sha(&stored, 1024, 128), second, "{name}");

        // The same writes now, by the same code path (`dmemu luks write`).
        let img = w.image(name, name);
        for (start, from, len) in [("8", 900_000, 4096), ("1024", 700_000, 65536)] {
            let out = w.dmemu("write", &img, &["--start", start], &seq(from, len));
            assert!(out.status.success(), "{name}: {out:?}");
        }
        assert_eq!(w.read_sha(&img, 0, 512), first, "{name}");
        assert_eq!(w.read_sha(&img, 1024, 128), second, "{name}");
        if name != "l2-hmac-sha256-xts" {
            // Random IVs: the same data is stored differently each time.
            assert_ne!(
                std::fs::read(&img).unwrap(),
                std::fs::read(&stored).unwrap(),
                "{name}: fresh IVs"
            );
        }
    }
}

#[test]
fn library_writes_read_back_and_leave_other_sectors_alone() {
    for name in NAMES {
        let (luks, key) = open_mem(gunzip(name));
        let vol = luks.volume(&key).unwrap();
        let mut before = vec![0u8; 262_144];
        vol.read(Sector(0), &mut before).unwrap();
        // 4 MiB would split over two threads; these devices are 2 MiB, so 1 MiB + 8 KiB.
        let data = seq(31_337, 1 << 20);
        vol.write(Sector(1024), &data).unwrap();
        let small = seq(4242, 8192);
        vol.write(Sector(16), &small).unwrap();
        vol.flush().unwrap();
        let mut back = vec![0u8; 1 << 20];
        vol.read(Sector(1024), &mut back).unwrap();
        assert!(back == data, "{name}");
        let mut now = vec![0u8; 262_144];
        vol.read(Sector(0), &mut now).unwrap();
        let mut want = before.clone();
        want[8192..16384].copy_from_slice(&small);
        assert!(now == want, "{name}");
        // A request not aligned to the crypt sector is refused, nothing written.
        assert!(vol.write(Sector(16), &[0u8; 100]).is_err());
    }
}

#[test]
fn crypt_with_aead_over_a_device_without_tags_is_refused_as_the_kernel() {
    let line = kernel("l2-aes-gcm table");
    let w: Vec<&str> = line.trim_end().split(' ').collect();
    let len = SectorCount(w[1].parse().unwrap());
    let params = format!("{} {} 0 /dev/x 0 1 {}", w[3], "00".repeat(32), w[9]);
    let TargetSpec::Crypt(args) = parse_line_params("crypt", len, &params).unwrap() else {
        panic!("not crypt");
    };
    let plain: SharedVolume = Arc::new(MemVolume::new(len).unwrap());
    let e = Crypt::over(plain, &args, len, &Keyring::default()).unwrap_err();
    assert!(
        e.to_string().contains("Integrity profile not supported."),
        "{e}"
    );
}

#[test]
fn the_kernels_two_tables_stack_in_a_registry_and_read_as_the_kernel() {
    // cryptsetup's devices as dmsetup loads them: x_dif (integrity over the image), then x
    // (crypt over x_dif, the key in the keyring), with the kernel's exact table lines.
    let w = Work::new();
    for name in NAMES {
        let img = w.image(name, name);
        let (luks, key) = open_mem(gunzip(name));
        let dif = kernel(&format!("{name} dif table"));
        let crypt = kernel(&format!("{name} table"));
        let mut r = Registry::new().with_access(Access::ReadOnly);
        r.bind(dif.split(' ').nth(3).unwrap(), &img).unwrap();
        r.keyring().insert(
            "logon",
            &format!("cryptsetup:{}-d0", luks.uuid()),
            &key.bytes,
        );
        // The concise format escapes the commas of authenc(hmac(sha256),xts(aes)).
        let specs = parse_concise(&format!(
            "x_dif,,,ro,{};x,,,ro,{}",
            dif.trim_end(),
            crypt.trim_end().replace(',', "\\,")
        ))
        .unwrap();
        let devs = r.create_all(&specs).unwrap();
        assert_eq!(
            devs[0].tag_profile().map(|p| p.interval),
            Some(512),
            "{name}"
        );
        let mut buf = vec![0u8; 262_144];
        devs[1].read(Sector(0), &mut buf).unwrap();
        assert_eq!(
            sha256(&buf),
            kernel(&format!("{name} first-sha256")).trim(),
            "{name}"
        );
        let e = devs[1].read(Sector(2048), &mut buf[..4096]).unwrap_err();
        assert_eq!(e.errno(), 84, "{name}: {e}");
    }
}

#[test]
fn large_requests_split_over_threads_and_name_the_first_failing_sector() {
    use dmemu::table::args::Args;
    use dmemu::targets::integrity::format::{format, FormatParams};
    use dmemu::targets::IntegrityArgs;
    // A 24 MiB integrity device with 28-byte external tags (dmemu integrity format), gcm
    // with random IVs over it, as the l2-aes-gcm table; 8 MiB requests take two threads.
    let dev: SharedVolume = Arc::new(MemVolume::new(SectorCount(24 << 11)).unwrap());
    let sb = format(
        &*dev,
        &FormatParams {
            tag_size: Some(28),
            wipe: false,
            salt: Some([1; 16]),
            ..FormatParams::default()
        },
    )
    .unwrap();
    let len = SectorCount(sb.provided_data_sectors);
    let tokens: Vec<String> = ["/dev/x", "0", "28", "J", "0"].map(String::from).to_vec();
    let iargs = IntegrityArgs::parse(&mut Args::new(&tokens)).unwrap();
    let integrity = Arc::new(Integrity::over(Arc::clone(&dev), &iargs, len).unwrap());
    let params = format!(
        "capi:gcm(aes)-random {} 0 /dev/x 0 1 integrity:28:aead",
        "5a".repeat(32)
    );
    let TargetSpec::Crypt(args) = parse_line_params("crypt", len, &params).unwrap() else {
        panic!("not crypt");
    };
    let lower: SharedVolume = integrity.clone();
    let vol = Crypt::over(lower, &args, len, &Keyring::default()).unwrap();
    let data = seq(77, 8 << 20);
    vol.write(Sector(0), &data).unwrap();
    let mut back = vec![0u8; 8 << 20];
    vol.read(Sector(0), &mut back).unwrap();
    assert!(back == data);
    // Break sectors 12000 (second half) and 3000 (first half): the first one is named.
    for s in [12_000u64, 3000] {
        let mut d = vec![0u8; 512];
        let mut t = vec![0u8; 28];
        integrity.read_tagged(Sector(s), &mut d, &mut t).unwrap();
        t[20] ^= 0x80; // the stored IV
        integrity.write_tagged(Sector(s), &d, &t).unwrap();
        let e = vol.read(Sector(0), &mut back).unwrap_err();
        assert!(e.to_string().contains(&format!("sector {s}")), "{e}");
    }
}
