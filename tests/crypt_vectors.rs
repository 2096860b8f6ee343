//! Crypt known-answer tests: ciphertext made by the real Linux 6.12 dm-crypt
//! (tests/fixtures/crypt/kernel, see make.sh there) and by python `cryptography`
//! (tests/fixtures/crypt/kat, see make_kat.py) decrypts through dmemu to the known
//! plaintext, and dmemu writing that plaintext produces exactly the same ciphertext.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::{MemVolume, Registry, SectorCount, Table, TableMode, Volume};

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
