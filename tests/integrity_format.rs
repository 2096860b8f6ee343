//! `dmemu integrity dump|format` against integritysetup 2.6.1 and the real 6.12 kernel.
//!
//! Fixtures (tests/fixtures/integrity):
//! - `*.dump.txt` beside the kernel-written images (make.sh) and in format/ (make-format.sh):
//!   host integritysetup 2.6.1's `dump NAME.img` of each image.
//! - dump-edge/ (make.sh): damaged copies of d-crc32c.img (patches.txt) and what host
//!   integritysetup printed (NAME.out) and its exit status (NAME.rc).
//! - format/cases.txt + make-format.sh: images integritysetup formatted in the 6.12 guest
//!   with each case's options; kernel-6.12-format.txt is the guest's output.
//! - format/dmemu-cases.txt + make-dmemu-format.sh: images `dmemu integrity format` made,
//!   which the 6.12 kernel then opened with integritysetup, read and wrote
//!   (kernel-6.12-dmemu-format.txt); the images are as the kernel left them.

mod fixture_support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use dmemu::table::parse_line_params;
use dmemu::targets::{Integrity, TargetSpec};
use dmemu::volume::MemVolume;
use dmemu::{Sector, SectorCount, Volume};
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/integrity");
/// The key the make scripts give integritysetup for hmac-sha256.
const HMAC_KEY: &[u8] = b"dmemu-integrity-hmac-key-32bytes";

use fixture_support::gunzip_path as gunzip;

fn dmemu(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// Every `NAME.dump.txt` in `dir` with its image `NAME.img.gz`.
fn dump_cases(dir: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".dump.txt")?.to_string();
            Some((format!("{dir}/{stem}.img.gz"), format!("{dir}/{name}")))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dump_prints_what_integritysetup_prints_for_kernel_and_integritysetup_made_images() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = dump_cases(DIR);
    cases.extend(dump_cases(&format!("{DIR}/format")));
    assert!(cases.len() >= 16, "{} dump fixtures", cases.len());
    for (img, want) in cases {
        let want = std::fs::read_to_string(&want).unwrap();
        // The first line names the image as integritysetup was given it.
        let name = want
            .lines()
            .next()
            .unwrap()
            .strip_prefix("Info for integrity device ")
            .unwrap()
            .strip_suffix('.')
            .unwrap()
            .to_string();
        std::fs::write(tmp.path().join(&name), gunzip(&img)).unwrap();
        let out = dmemu(tmp.path(), &["integrity", "dump", &name]);
        assert!(out.status.success(), "{img}: {out:?}");
        assert!(out.stderr.is_empty(), "{img}: {out:?}");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{img}");
    }
}

/// The damaged images of dump-edge/patches.txt: (name, bytes).
fn edge_images() -> Vec<(String, Vec<u8>)> {
    let base = gunzip(&format!("{DIR}/d-crc32c.img.gz"));
    let text = std::fs::read_to_string(format!("{DIR}/dump-edge/patches.txt")).unwrap();
    let mut v = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut img = base.clone();
        for pair in words[1..].chunks(2) {
            if pair[0] == "truncate" {
                img.truncate(pair[1].parse().unwrap());
            } else {
                let at: usize = pair[0].parse().unwrap();
                for (i, b) in pair[1].as_bytes().chunks(2).enumerate() {
                    img[at + i] = u8::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
                }
            }
        }
        v.push((words[0].to_string(), img));
    }
    v
}

#[test]
fn dump_of_damaged_superblocks_matches_integritysetup_or_fails_naming_offset_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = edge_images();
    assert!(cases.len() >= 20);
    let mut refused = 0;
    for (name, img) in cases {
        let file = format!("{name}.img");
        std::fs::write(tmp.path().join(&file), &img).unwrap();
        let out = dmemu(tmp.path(), &["integrity", "dump", &file]);
        let rc: i32 = std::fs::read_to_string(format!("{DIR}/dump-edge/{name}.rc"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let want = std::fs::read_to_string(format!("{DIR}/dump-edge/{name}.out")).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        if rc == 0 {
            assert!(out.status.success(), "{name}: {stderr}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), want, "{name}");
        } else {
            refused += 1;
            assert!(!out.status.success(), "{name}");
            assert!(out.stdout.is_empty() && want.is_empty(), "{name}");
            assert!(
                stderr.contains("at offset ") && stderr.contains("field "),
                "{name}: {stderr}"
            );
        }
    }
    assert!(refused >= 6);
}

#[test]
fn dump_reports_what_the_kernel_would_refuse_beside_integritysetups_output() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, img) in edge_images() {
        let (field, offset) = match name.as_str() {
            "interleave-neg" => ("interleave_sectors", 9),
            "sector-size-4m" => ("log2_sectors_per_block", 28),
            "journal-max" => ("journal_sections", 12),
            "provided-max" => ("provided_data_sectors", 16),
            _ => continue,
        };
        let file = format!("{name}.img");
        std::fs::write(tmp.path().join(&file), &img).unwrap();
        let out = dmemu(tmp.path(), &["integrity", "dump", &file]);
        assert!(out.status.success());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&format!("at offset {offset}:")) && stderr.contains(field),
            "{name}: {stderr}"
        );
    }
}

/// Non-comment lines of a cases file.
fn case_lines(file: &str) -> Vec<String> {
    std::fs::read_to_string(format!("{DIR}/format/{file}"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The lines after `### <tag>` in a guest output.
fn section(file: &str, tag: &str) -> String {
    let text = std::fs::read_to_string(format!("{DIR}/format/{file}")).unwrap();
    let mut lines = text.lines().skip_while(|l| *l != format!("### {tag}"));
    lines.next().unwrap_or_else(|| panic!("no ### {tag}"));
    lines
        .take_while(|l| !l.starts_with("### "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn format_writes_the_bytes_integritysetup_and_the_kernel_write_given_the_same_salt() {
    // The only random input of a format is the salt the kernel draws (get_random_bytes in
    // initialize_superblock; fix_hmac is always set). It is taken from the kernel's image
    // and given to dmemu; every other byte (superblock, journal, every tag of the wiped
    // data, the data) must then be the same.
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("hmac.key");
    std::fs::write(&key, HMAC_KEY).unwrap();
    let cases = case_lines("cases.txt");
    assert!(cases.len() >= 8);
    for line in cases {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap();
        let mib: u64 = words.next().unwrap().parse().unwrap();
        let opts: Vec<String> = words
            .map(|w| w.replace("KEYFILE", key.to_str().unwrap()))
            .collect();
        let kernel = gunzip(&format!("{DIR}/format/{name}.img.gz"));
        assert_eq!(kernel.len() as u64, mib << 20);
        let img = tmp.path().join(format!("{name}.img"));
        std::fs::write(&img, vec![0u8; kernel.len()]).unwrap();
        let salt = hex(&kernel[48..64]);
        let mut args = vec!["integrity", "format", "--batch-mode", "--salt", &salt];
        args.extend(opts.iter().map(String::as_str));
        args.push(img.to_str().unwrap());
        let out = dmemu(tmp.path(), &args);
        assert!(out.status.success(), "{name}: {out:?}");
        // integritysetup's warning for a tag size other than the digest's, word for word.
        let guest = section("kernel-6.12-format.txt", &format!("{name} format"));
        let warned: Vec<&str> = guest.lines().filter(|l| l.starts_with("WARNING")).collect();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().collect::<Vec<_>>(), warned, "{name}");
        let mine = std::fs::read(&img).unwrap();
        if let Some(at) = mine.iter().zip(&kernel).position(|(a, b)| a != b) {
            panic!(
                "{name}: first difference at byte {at} (sector {})",
                at / 512
            );
        }
    }
}

#[test]
fn format_draws_a_new_salt_each_time_and_a_keyed_hash_needs_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mut salts = Vec::new();
    for n in ["a.img", "b.img"] {
        std::fs::write(tmp.path().join(n), vec![0u8; 4 << 20]).unwrap();
        let out = dmemu(tmp.path(), &["integrity", "format", n]);
        assert!(out.status.success(), "{out:?}");
        salts.push(std::fs::read(tmp.path().join(n)).unwrap()[48..64].to_vec());
    }
    assert_ne!(salts[0], salts[1]);
    assert!(salts.iter().all(|s| s.iter().any(|&b| b != 0)));
    let out = dmemu(
        tmp.path(),
        &["integrity", "format", "--integrity", "hmac-sha256", "a.img"],
    );
    assert!(!out.status.success());
    // Too small for the journal and one tag area: refused, the image left alone.
    std::fs::write(tmp.path().join("tiny.img"), vec![0u8; 8192]).unwrap();
    let out = dmemu(tmp.path(), &["integrity", "format", "tiny.img"]);
    assert!(!out.status.success());
    assert!(std::fs::read(tmp.path().join("tiny.img"))
        .unwrap()
        .iter()
        .all(|&b| b == 0));
}

/// The kernel's table for a dmemu-format case, over `dev`, hmac key put back.
fn kernel_table(name: &str, dev: &str) -> (SectorCount, String) {
    let line = section("kernel-6.12-dmemu-format.txt", &format!("{name} table"));
    let w: Vec<&str> = line.split(' ').collect();
    assert_eq!(w[2], "integrity");
    let len = SectorCount(w[1].parse().unwrap());
    let rest: Vec<String> = w[4..]
        .iter()
        .map(|t| match t.strip_prefix("internal_hash:hmac(sha256):") {
            Some(z) => {
                assert!(z.bytes().all(|b| b == b'0'));
                format!("internal_hash:hmac(sha256):{}", hex(HMAC_KEY))
            }
            None => (*t).to_string(),
        })
        .collect();
    (len, format!("{dev} {}", rest.join(" ")))
}

#[test]
fn the_kernel_opens_dmemu_formatted_images_and_dmemu_reads_what_the_kernel_wrote() {
    let zeros_4k = sha256(&[0u8; 4096]);
    let cases = case_lines("dmemu-cases.txt");
    assert!(cases.len() >= 4);
    let mut total_mismatches = 0;
    for line in cases {
        let name = line.split_whitespace().next().unwrap();
        let wiped = !line.contains("--no-wipe");
        let k = |what: &str| section("kernel-6.12-dmemu-format.txt", &format!("{name} {what}"));
        let status = k("status");
        let mismatches: u64 = status.split(' ').nth(3).unwrap().parse().unwrap();
        let image = gunzip(&format!("{DIR}/format/{name}.img.gz"));
        let vol = Arc::new(MemVolume::from_bytes(image).unwrap());
        let (len, params) = kernel_table(name, "/dev/disk");
        let TargetSpec::Integrity(args) = parse_line_params("integrity", len, &params).unwrap()
        else {
            panic!("not integrity");
        };
        let t = Integrity::over(vol.clone(), &args, len).unwrap();
        assert_eq!(t.layout().provided_data_sectors.to_string(), k("size"));
        let mut first_mib = vec![0u8; 1 << 20];
        t.read(Sector(0), &mut first_mib).unwrap();
        assert_eq!(sha256(&first_mib), k("written-sha256"), "{name}");
        if wiped {
            // The kernel read the fresh device with no tag failure, and all of it after
            // its writes; dmemu reads the same bytes.
            assert_eq!(k("first-4k-read"), zeros_4k, "{name}");
            assert_eq!(mismatches, 0, "{name}");
            let mut all = vec![0u8; usize::try_from(len.bytes()).unwrap()];
            t.read(Sector(0), &mut all).unwrap();
            assert_eq!(sha256(&all), k("whole-read"), "{name}");
        } else {
            // --no-wipe: the unwritten blocks have no valid tag, for the kernel and dmemu.
            assert!(k("first-4k-read").contains("Invalid or incomplete multibyte"));
            assert_eq!(k("whole-read"), "read error");
            assert!(mismatches > 0);
            let mut b = vec![0u8; 4096];
            let e = t.read(Sector(2048), &mut b).unwrap_err();
            assert_eq!(e.errno(), dmemu::error::errno::EILSEQ, "{name}: {e}");
            let mut w = vec![0u8; 262_144];
            t.read(Sector(4096), &mut w).unwrap();
        }
        total_mismatches += mismatches;
        // The dump of the kernel-written image is what the guest's integritysetup printed.
        let tmp = tempfile::tempdir().unwrap();
        let mut raw = vec![0u8; 4096];
        vol.read(Sector(0), &mut raw).unwrap();
        std::fs::write(tmp.path().join("x.img"), &raw).unwrap();
        let out = dmemu(tmp.path(), &["integrity", "dump", "x.img"]);
        let mine = String::from_utf8(out.stdout).unwrap();
        let guest = k("dump");
        assert_eq!(
            mine.lines().skip(1).collect::<Vec<_>>(),
            guest.lines().skip(1).collect::<Vec<_>>(),
            "{name}"
        );
    }
    // Every tag failure the kernel logged is one of the --no-wipe reads counted above.
    let dmesg = section("kernel-6.12-dmemu-format.txt", "dmesg");
    assert_eq!(
        dmesg.matches("Checksum failed").count() as u64,
        total_mismatches
    );
}
