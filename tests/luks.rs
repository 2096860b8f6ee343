//! LUKS1/LUKS2 against the fixtures of tests/fixtures/luks (make.sh): headers made by
//! cryptsetup 2.6.1 `luksFormat`, plaintext written through Linux 6.12 dm-crypt, table
//! lines printed by the kernel (`dmsetup table --showkeys`), dumps by `cryptsetup luksDump`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use dmemu::luks::{KdfLimits, Luks};
use dmemu::table::DeviceSpec;
use dmemu::{Keys, MemVolume, Registry, Sector, SharedVolume, Table, TableMode, Volume};

const IMAGES: [&str; 8] = [
    "l1-xts256",
    "l1-cbc-essiv",
    "l1-xts512",
    "l1-ripemd",
    "l2-argon2id",
    "l2-argon2i",
    "l2-essiv",
    "l2-detached",
];
/// Bytes of known plaintext at the start of every volume (make.sh's DATA).
const DATA: usize = 64 * 1024;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luks")
}

fn gunzip(name: &str) -> Vec<u8> {
    let f = std::fs::File::open(dir().join(name)).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn mem(name: &str) -> SharedVolume {
    Arc::new(MemVolume::from_bytes(gunzip(name)).unwrap())
}

/// The fixture `name` as a LUKS device (detached header for l2-detached).
fn open(name: &str) -> Luks {
    let header = (name == "l2-detached").then(|| mem(&format!("{name}.hdr.gz")));
    Luks::open(mem(&format!("{name}.img.gz")), header).unwrap()
}

/// pattern.py: byte i = (i % 251) ^ (i / 4096).
fn pattern() -> Vec<u8> {
    (0..DATA).map(|i| ((i % 251) ^ (i / 4096)) as u8).collect()
}

/// The kernel's table lines for `name`: (keyring form, hex form), device token removed.
fn kernel_tables(name: &str) -> (String, String) {
    let text = std::fs::read_to_string(dir().join("tables.txt")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|l| {
            let mut w: Vec<&str> = l.split(' ').collect();
            w[6] = "DEV";
            w.join(" ")
        })
        .collect();
    assert_eq!(lines.len(), 2, "{name}");
    (lines[0].clone(), lines[1].clone())
}

#[test]
fn every_fixture_unlocks_with_its_passphrase_and_reads_the_kernel_written_plaintext() {
    for name in IMAGES {
        let luks = open(name);
        let key = luks.unlock(b"alpha", None, &KdfLimits::default()).unwrap();
        let vol = luks.volume(&key).unwrap();
        let mut buf = vec![0u8; DATA];
        vol.read(Sector(0), &mut buf).unwrap();
        assert!(buf == pattern(), "{name}: plaintext differs");
    }
}

#[test]
fn table_lines_match_the_kernel_table_after_cryptsetup_open() {
    for name in IMAGES {
        let luks = open(name);
        let key = luks.unlock(b"alpha", None, &KdfLimits::default()).unwrap();
        let (keyring, hex) = kernel_tables(name);
        assert_eq!(
            luks.table_line(&key, "DEV", Keys::Shown, false).unwrap(),
            hex,
            "{name}"
        );
        if luks.version() == 2 {
            assert_eq!(
                luks.table_line(&key, "DEV", Keys::Shown, true).unwrap(),
                keyring,
                "{name}"
            );
        }
        let hidden = luks.table_line(&key, "DEV", Keys::Hidden, false).unwrap();
        let key_hex: String = key.bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !hidden.contains(&key_hex),
            "{name}: key shown without --showkeys"
        );
    }
}

#[test]
fn wrong_passphrase_is_refused_on_every_fixture() {
    for name in IMAGES {
        let e = open(name)
            .unlock(b"alphb", None, &KdfLimits::default())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("no key available with this passphrase"),
            "{name}: {e}"
        );
    }
}

#[test]
fn dump_matches_cryptsetup_luksdump_byte_for_byte() {
    for name in IMAGES {
        let want = std::fs::read_to_string(dir().join(format!("dump/{name}.txt"))).unwrap();
        let got = open(name).dump("IMAGE");
        if want.starts_with("LUKS header information for ") {
            // LUKS1's first line names the device cryptsetup was given.
            let skip = |s: &str| s.split_once('\n').unwrap().1.to_string();
            assert_eq!(skip(&got), skip(&want), "{name}");
        } else {
            assert_eq!(got, want, "{name}");
        }
    }
}

#[test]
fn second_keyslots_open_with_their_own_passphrase_and_report_the_slot() {
    let l1 = open("l1-xts256");
    let k = l1.unlock(b"bravo", None, &KdfLimits::default()).unwrap();
    assert_eq!(k.keyslot, Some(5));
    assert!(l1.unlock(b"bravo", Some(0), &KdfLimits::default()).is_err());
    assert!(l1.unlock(b"alpha", Some(3), &KdfLimits::default()).is_err());
    let l2 = open("l2-argon2id");
    assert_eq!(
        l2.unlock(b"bravo", None, &KdfLimits::default())
            .unwrap()
            .keyslot,
        Some(3)
    );
    // Key slot 4 was added with --new-keyfile-offset 100 --new-keyfile-size 64.
    let kf = std::fs::read(dir().join("keyfile.bin")).unwrap();
    let k = l2
        .unlock(&kf[100..164], None, &KdfLimits::default())
        .unwrap();
    assert_eq!(k.keyslot, Some(4));
    assert!(l2
        .unlock(&kf[100..165], None, &KdfLimits::default())
        .is_err());
}

#[test]
fn volume_key_is_accepted_only_when_the_digest_matches() {
    for name in ["l1-xts512", "l2-argon2i"] {
        let luks = open(name);
        let key = luks.unlock(b"alpha", None, &KdfLimits::default()).unwrap();
        let again = luks.check_volume_key(&key.bytes).unwrap();
        assert_eq!(again.keyslot, None);
        let mut bad = key.bytes.to_vec();
        bad[0] ^= 1;
        assert!(luks.check_volume_key(&bad).is_err(), "{name}");
    }
}

#[test]
fn argon2_slot_above_the_memory_cap_is_refused_with_the_limit_named() {
    let luks = open("l2-argon2id");
    let tight = KdfLimits {
        max_memory_kib: 16,
        ..KdfLimits::default()
    };
    let e = luks.unlock(b"alpha", Some(0), &tight).unwrap_err();
    assert!(
        e.to_string().contains("more than the limit of 16 KiB"),
        "{e}"
    );
    // The pbkdf2 slot is not affected by the cap.
    assert_eq!(
        luks.unlock(b"bravo", None, &tight).unwrap().keyslot,
        Some(3)
    );
}

#[test]
fn writes_through_the_volume_read_back_and_keep_the_header_usable() {
    let data = mem("l2-argon2id.img.gz");
    let luks = Luks::open(data.clone(), None).unwrap();
    let key = luks.unlock(b"alpha", None, &KdfLimits::default()).unwrap();
    let vol = luks.volume(&key).unwrap();
    let block: Vec<u8> = (0..8192).map(|i| (i * 31 % 256) as u8).collect();
    vol.write(Sector(16), &block).unwrap();
    let mut raw = vec![0u8; 8192];
    data.read(Sector(4096 + 16), &mut raw).unwrap();
    assert_ne!(raw, block, "data must land encrypted");
    let again = Luks::open(data, None).unwrap();
    let key = again.unlock(b"alpha", None, &KdfLimits::default()).unwrap();
    let mut back = vec![0u8; 8192];
    again
        .volume(&key)
        .unwrap()
        .read(Sector(16), &mut back)
        .unwrap();
    assert_eq!(back, block);
}

#[test]
fn luks_volume_stacks_under_a_linear_table() {
    let luks = open("l1-cbc-essiv");
    let key = luks.unlock(b"alpha", None, &KdfLimits::default()).unwrap();
    let registry = Registry::new();
    registry.insert_volume("luks0", Arc::new(luks.volume(&key).unwrap()));
    let dev = registry
        .create(&DeviceSpec {
            name: "top".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadOnly,
            table: Table::parse("0 64 linear luks0 64").unwrap(),
        })
        .unwrap();
    let mut buf = vec![0u8; 64 * 512];
    dev.read(Sector(0), &mut buf).unwrap();
    assert!(
        buf == pattern()[32768..],
        "linear over LUKS reads the second half"
    );
}

#[test]
fn writing_the_pattern_through_dmemu_gives_the_kernels_ciphertext() {
    // XTS and CBC-ESSIV are deterministic: encrypting the same plaintext at the same
    // sectors must reproduce, byte for byte, what Linux dm-crypt wrote into the fixture.
    for name in IMAGES {
        let data = mem(&format!("{name}.img.gz"));
        let header = (name == "l2-detached").then(|| mem(&format!("{name}.hdr.gz")));
        let luks = Luks::open(data.clone(), header).unwrap();
        let key = luks.unlock(b"alpha", None, &KdfLimits::default()).unwrap();
        let (_, args) = luks.crypt_args(&key, "x", false).unwrap();
        let at = Sector(args.dest.offset.0);
        let mut kernel = vec![0u8; DATA];
        data.read(at, &mut kernel).unwrap();
        let vol = luks.volume(&key).unwrap();
        vol.write(Sector(0), &vec![0u8; DATA]).unwrap();
        vol.write(Sector(0), &pattern()).unwrap();
        let mut ours = vec![0u8; DATA];
        data.read(at, &mut ours).unwrap();
        assert!(
            ours == kernel,
            "{name}: ciphertext differs from the kernel's"
        );
    }
}

#[test]
fn serpent_and_twofish_images_dump_exactly_unlock_and_read_the_kernel_plaintext() {
    // Made entirely in the kernel oracle (make-other-ciphers.sh): the kernel-written
    // plaintext and the kernel's table must come back exactly.
    let tables = std::fs::read_to_string(dir().join("tables-other.txt")).unwrap();
    for name in ["l1-serpent", "l2-twofish"] {
        let luks = Luks::open(mem(&format!("{name}.img.gz")), None).unwrap();
        let want = std::fs::read_to_string(dir().join(format!("dump/{name}.txt"))).unwrap();
        let skip = |s: &str| s.split_once('\n').unwrap().1.to_string();
        assert_eq!(skip(&luks.dump("IMAGE")), skip(&want), "{name}");
        let key = luks
            .unlock(b"alpha", None, &KdfLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let hex = tables
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name} ")))
            .nth(1)
            .unwrap()
            .replace(" 254:", " DEV254:");
        let ours = luks
            .table_line(&key, "DEV254:X", Keys::Shown, false)
            .unwrap();
        assert_eq!(ours.split(' ').nth(4), hex.split(' ').nth(4), "{name}");
        let mut buf = vec![0u8; DATA];
        luks.volume(&key)
            .unwrap()
            .read(Sector(0), &mut buf)
            .unwrap();
        assert!(buf == pattern(), "{name}");
    }
}
