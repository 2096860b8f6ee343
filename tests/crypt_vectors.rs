//! Crypt known-answer tests: ciphertext made by the real Linux 6.12 dm-crypt
//! (tests/fixtures/crypt/kernel, see make.sh there) and by python `cryptography`
//! (tests/fixtures/crypt/kat, see make_kat.py) decrypts through dmemu to the known
//! plaintext, and dmemu writing that plaintext produces exactly the same ciphertext.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use dmemu::table::parse_line_params;
use dmemu::table::DeviceSpec;
use dmemu::{Keys, MemVolume, Registry, SectorCount, Table, TableMode, Volume};

/// The fixtures' plaintext (tests/fixtures/crypt/pattern.py).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|o| (((o >> 9) * 131 + (o & 511) * 7 + 0x5a) & 0xff) as u8)
        .collect()
}

struct Case {
    name: String,
    table: String,
    ciphertext: Vec<u8>,
    /// What `dmsetup table --showkeys` printed for the line (kernel fixtures only).
    printed: Option<String>,
}

fn cases(dir: &str) -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crypt")
        .join(dir);
    let text = std::fs::read_to_string(dir.join("cases.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut f = l.split('|');
            let (name, table, file) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let mut ciphertext = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(dir.join(file)).unwrap())
                .read_to_end(&mut ciphertext)
                .unwrap();
            Case {
                name: name.to_string(),
                table: table.to_string(),
                ciphertext,
                printed: f.next().map(str::to_string),
            }
        })
        .collect()
}

fn device(table: &str, disk: MemVolume) -> (Arc<MemVolume>, Arc<dmemu::MappedDevice>) {
    let registry = Registry::new();
    let disk = Arc::new(disk);
    registry.insert_volume("disk", disk.clone());
    let dev = registry
        .create(&DeviceSpec {
            name: "c".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse(table).unwrap(),
        })
        .unwrap();
    (disk, dev)
}

/// Every case of `dir`: decrypt the fixture, and re-encrypt the plaintext.
fn check_dir(dir: &str) -> usize {
    let all = cases(dir);
    assert!(!all.is_empty(), "no cases in {dir}");
    let mut failures = Vec::new();
    for case in &all {
        let len = case.ciphertext.len();
        let (_, dev) = device(
            &case.table,
            MemVolume::from_bytes(case.ciphertext.clone()).unwrap(),
        );
        let mut plain = vec![0u8; len];
        dev.read(dmemu::Sector(0), &mut plain).unwrap();
        if plain != pattern(len) {
            failures.push(format!("{}: decrypt differs", case.name));
        }
        let (disk, dev) = device(
            &case.table,
            MemVolume::new(SectorCount(len as u64 / 512)).unwrap(),
        );
        dev.write(dmemu::Sector(0), &pattern(len)).unwrap();
        if disk.to_vec() != case.ciphertext {
            failures.push(format!("{}: encrypt differs", case.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    all.len()
}

#[test]
fn crypt_python_kat_vectors_decrypt_and_encrypt_bit_exact() {
    assert_eq!(check_dir("kat"), 24);
}

#[test]
fn crypt_kernel_ciphertext_decrypts_and_dmemu_writes_the_same_bytes() {
    // 31 cipher specs (aes incl. elephant, adiantum, serpent, twofish, camellia) x IV modes x sector_size 512/4096 x iv_large_sectors x iv_offset.
    assert_eq!(check_dir("kernel"), 131);
}

#[test]
fn crypt_canonical_output_equals_what_the_kernel_printed() {
    let mut failures = Vec::new();
    for case in cases("kernel") {
        let printed = case.printed.unwrap();
        let params = case
            .table
            .splitn(4, ' ')
            .nth(3)
            .unwrap()
            .trim_start_matches("crypt ");
        let len = SectorCount(case.ciphertext.len() as u64 / 512);
        for text in [params, printed.as_str()] {
            let spec = parse_line_params("crypt", len, text).unwrap();
            let mut ours = String::new();
            spec.write_params(&mut ours, Keys::Shown).unwrap();
            if ours != printed {
                failures.push(format!("{}: {ours:?} != kernel {printed:?}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// tests/fixtures/crypt/errors: crypt tables the real kernel refused (with the message it
/// logged) or accepted (with what it printed back).
#[test]
fn crypt_tables_are_refused_and_accepted_with_the_kernels_words() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crypt/errors/cases.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let registry = Registry::new();
    registry.insert_volume("disk", Arc::new(MemVolume::new(SectorCount(2048)).unwrap()));
    let mut failures = Vec::new();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.splitn(3, '|');
        let (len, params, kernel) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let len = SectorCount(len.parse().unwrap());
        let ours = parse_line_params("crypt", len, params)
            .and_then(|spec| spec.build(len, &registry.context()).map(|_| spec));
        match (kernel.split_once(' ').unwrap(), ours) {
            (("ERR", msg), Err(e)) if e.to_string().contains(msg) => {}
            (("OK", printed), Ok(spec)) => {
                let mut s = String::new();
                spec.write_params(&mut s, Keys::Shown).unwrap();
                if s != printed {
                    failures.push(format!("{params}: printed {s:?}, kernel {printed:?}"));
                }
            }
            (k, ours) => failures.push(format!("{params}: kernel {k:?}, dmemu {ours:?}")),
        }
        n += 1;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(n, 48);
}

/// `dmemu read` decrypts a kernel image whose table names its key by keyring reference,
/// with the key supplied by `--key-file`; `dmemu fmt` hides hex keys as zeros.
#[test]
fn crypt_cli_reads_kernel_image_with_keyring_key_from_key_file() {
    let case = cases("kernel")
        .into_iter()
        .find(|c| c.name == "xts-plain64-ss4096-large-ivo1000")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, &case.ciphertext).unwrap();
    // "0 16 crypt aes-xts-plain64 <hex> 1000 disk 0 2 sector_size:4096 iv_large_sectors"
    let f: Vec<&str> = case.table.split(' ').collect();
    let key: Vec<u8> = (0..f[4].len() / 2)
        .map(|i| u8::from_str_radix(&f[4][2 * i..2 * i + 2], 16).unwrap())
        .collect();
    std::fs::write(dir.path().join("key.bin"), &key).unwrap();
    let table = format!(
        "0 {} crypt {} :{}:logon:dmemu:test {} {} 0 {}",
        f[1],
        f[3],
        key.len(),
        f[5],
        img.display(),
        f[8..].join(" ")
    );
    std::fs::write(dir.path().join("t.table"), &table).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dmemu"))
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "read",
        "--table",
        "t.table",
        "--key-file",
        "logon:dmemu:test=key.bin",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, pattern(case.ciphertext.len()));
    let out = run(&["read", "--table", "t.table"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not supplied"));
    std::fs::write(dir.path().join("h.table"), &case.table).unwrap();
    let out = run(&["fmt", "h.table"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&"0".repeat(f[4].len())));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(f[4]));
}
