//! dm-verity against veritysetup's own output (tests/fixtures/verity, made by make.sh with
//! cryptsetup 2.6.1): its trees read through the verity target, dmemu's trees equal its
//! bytes, each verifies the other's, and single-bit flips fail exactly the affected reads.

mod verity_support;

use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::targets::verity::format::{format, read_superblock, verify};
use dmemu::targets::verity::Verity;
use dmemu::{Error, MemVolume, Registry, Sector, SectorCount, SharedVolume, Table, TableMode};
use dmemu::{Target, Volume};
use verity_support::{blocks_under, case, cases, load};

fn mem(bytes: Vec<u8>) -> SharedVolume {
    Arc::new(MemVolume::from_bytes(bytes).unwrap())
}

#[test]
fn veritysetup_images_read_back_through_a_verity_table() {
    for c in cases() {
        let data = load(&c.data);
        let hash = load(&c.hash);
        let registry = Registry::new();
        registry.insert_volume("data", mem(data.clone()));
        registry.insert_volume("hash", mem(hash));
        let text = format!(
            "0 {} verity {}",
            c.sectors(),
            c.table_args("data", "hash", "")
        );
        let table = Table::parse(&text).unwrap();
        assert_eq!(
            table.to_text(dmemu::Keys::Hidden).trim_end(),
            text,
            "{}",
            c.name
        );
        let dev = registry
            .create(&DeviceSpec {
                name: "v".into(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadOnly,
                table,
            })
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let len = usize::try_from(c.sectors() * 512).unwrap();
        let mut buf = vec![0u8; len];
        dev.read(Sector(0), &mut buf).unwrap();
        assert!(buf == data[..len], "{}: data differs", c.name);
        assert_eq!(
            dev.status_text().trim_end(),
            format!("0 {} verity V", c.sectors())
        );
    }
}

#[test]
fn verity_table_on_a_read_write_device_is_refused() {
    let c = case("v1-sha256-4k");
    let text = format!("0 {} verity {}", c.sectors(), c.table_args("d", "h", ""));
    let e = Table::parse(&text)
        .unwrap()
        .check_mode(TableMode::ReadWrite)
        .unwrap_err();
    assert!(
        e.to_string().contains("readonly") || e.to_string().contains("read-only"),
        "{e}"
    );
}

#[test]
fn dmemu_format_writes_the_same_bytes_and_root_as_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    for c in cases() {
        let data = load(&c.data);
        let expected = load(&c.hash);
        let path = dir.path().join(format!("{}.img", c.name));
        // Same-device trees are written into a copy of the data image; others into a new file.
        let same = c.data == c.hash;
        let data_len = usize::try_from(c.blocks * u64::from(c.dbs)).unwrap();
        std::fs::write(&path, if same { &data[..data_len] } else { &[][..] }).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let root = format(&c.params(), &*mem(data.clone()), &file).unwrap();
        assert_eq!(root, c.root_bytes(), "{}: root", c.name);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), expected.len(), "{}: length", c.name);
        assert!(got == expected, "{}: hash image bytes differ", c.name);
    }
}

#[test]
fn dmemu_verify_accepts_veritysetup_trees_and_refuses_a_wrong_root() {
    for c in cases() {
        let data = mem(load(&c.data));
        let hash = mem(load(&c.hash));
        let mut p = c.params();
        if c.superblock {
            let sb = read_superblock(&*hash, c.hash_offset).unwrap();
            assert_eq!(sb, p.superblock(), "{}", c.name);
            p = dmemu::targets::verity::format::FormatParams::from_superblock(&sb, c.hash_offset);
            p.data_blocks = c.blocks;
        }
        verify(&p, &*data, &*hash, &c.root_bytes()).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let mut wrong = c.root_bytes();
        wrong[0] ^= 1;
        let e = verify(&p, &*data, &*hash, &wrong).unwrap_err();
        assert!(e.to_string().contains("root hash"), "{}: {e}", c.name);
    }
}

/// Flip bits of the data or hash image and check which single-block reads fail.
fn flip_and_read(c: &verity_support::Case, stride: usize) {
    let data = load(&c.data);
    let hash = load(&c.hash);
    let geo = c.geometry();
    let args = c.args("data", "hash", "");
    let dbs = c.dbs as usize;
    let hbs = c.hbs as usize;
    let failing = |d: &[u8], h: &[u8]| -> Vec<u64> {
        let v = Verity::over(
            &args,
            SectorCount(c.sectors()),
            mem(d.to_vec()),
            mem(h.to_vec()),
        )
        .unwrap();
        let mut buf = vec![0u8; dbs];
        let bad: Vec<u64> = (0..c.blocks)
            .filter(
                |&b| match v.read(Sector(b * u64::from(c.dbs) / 512), &mut buf) {
                    Ok(()) => false,
                    Err(e @ Error::TargetFailed { .. }) => {
                        assert_eq!(e.errno(), 5);
                        true
                    }
                    Err(e) => panic!("unexpected error {e}"),
                },
            )
            .collect();
        assert_eq!(v.status(), if bad.is_empty() { "V" } else { "C" });
        bad
    };
    assert!(failing(&data, &hash).is_empty());
    let data_bits = c.blocks as usize * dbs * 8;
    for bit in (0..data_bits).step_by(stride) {
        let mut d = data.clone();
        d[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            failing(&d, &hash),
            vec![(bit / 8 / dbs) as u64],
            "{} data bit {bit}",
            c.name
        );
    }
    let tree = geo.hash_start as usize * hbs..geo.hash_end as usize * hbs;
    for bit in (tree.start * 8..tree.end * 8).step_by(stride) {
        let mut h = hash.clone();
        h[bit / 8] ^= 1 << (bit % 8);
        let hb = (bit / 8 / hbs) as u64;
        assert_eq!(
            failing(&data, &h),
            blocks_under(&geo, hb),
            "{} hash bit {bit}",
            c.name
        );
    }
}

/// Every bit in release builds; a sample in debug builds (unoptimised SHA-256 is slow).
fn stride() -> usize {
    if cfg!(debug_assertions) {
        997
    } else {
        1
    }
}

#[test]
fn every_single_bit_flip_fails_exactly_the_blocks_that_depend_on_it_v1() {
    flip_and_read(&case("v1-sha256-512"), stride());
}

#[test]
fn every_single_bit_flip_fails_exactly_the_blocks_that_depend_on_it_v0() {
    flip_and_read(&case("v0-sha256-512"), stride());
}

#[test]
fn sampled_bit_flips_in_4k_multi_level_trees_fail_the_dependent_blocks() {
    let slow = if cfg!(debug_assertions) { 16 } else { 1 };
    flip_and_read(&case("v1-sha512-1k-off"), (4099 * 8 + 3) * slow);
    flip_and_read(&case("v0-sha1-4k-nosb"), (3001 * 8 + 5) * slow);
}

#[test]
fn fec_parity_equals_veritysetup_fec_device_bytes() {
    let text = std::fs::read_to_string(verity_support::dir().join("fec-cases.txt")).unwrap();
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let c = case(f[0]);
        let (roots, offset, blocks): (u32, u64, u64) = (
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        let geo = c.geometry();
        let g = dmemu::targets::verity::fec::FecGeometry::new(
            roots,
            c.dbs,
            blocks,
            offset / u64::from(c.dbs),
            c.blocks,
            geo.hash_start,
            geo.hash_end,
        )
        .unwrap();
        let out = tempfile::tempfile().unwrap();
        let (data, hash) = (mem(load(&c.data)), mem(load(&c.hash)));
        dmemu::targets::verity::fec::encode(&g, &*data, &*hash, &out, offset).unwrap();
        let mut got = vec![0u8; usize::try_from(out.metadata().unwrap().len()).unwrap()];
        std::os::unix::fs::FileExt::read_exact_at(&out, &mut got, 0).unwrap();
        assert!(got == load(f[1]), "{}: parity bytes differ", f[0]);
    }
}
