//! Verity corruption and error modes, ignore_zero_blocks, check_at_most_once, partial
//! reads and bad geometry, on veritysetup-made fixtures (tests/fixtures/verity).

mod verity_support;

use std::sync::Arc;

use dmemu::error::HaltAction;
use dmemu::table::args::Args;
use dmemu::targets::verity::{Verity, VerityArgs};
use dmemu::{Error, MemVolume, Result, Sector, SectorCount, SharedVolume, Target, Volume};
use verity_support::{case, load, Case};

fn mem(bytes: Vec<u8>) -> Arc<MemVolume> {
    Arc::new(MemVolume::from_bytes(bytes).unwrap())
}

/// v1-sha256-4k with data block `corrupt` damaged, and the given option words.
fn target(opts: &str, corrupt: Option<u64>) -> (Case, Verity, Arc<MemVolume>) {
    let c = case("v1-sha256-4k");
    let mut data = load(&c.data);
    if let Some(b) = corrupt {
        data[usize::try_from(b).unwrap() * 4096 + 100] ^= 0x40;
    }
    let data = mem(data);
    let hash = mem(load(&c.hash));
    let v = Verity::over(
        &c.args("d", "h", opts),
        SectorCount(c.sectors()),
        Arc::clone(&data) as SharedVolume,
        hash,
    )
    .unwrap();
    (c, v, data)
}

fn read_block(v: &Verity, b: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    v.read(Sector(b * 8), &mut buf).map(|()| buf)
}

#[test]
fn default_mode_fails_the_corrupt_block_with_eio_and_status_turns_c() {
    let (_, v, _) = target("", Some(7));
    assert_eq!(v.status(), "V");
    assert!(read_block(&v, 6).is_ok());
    let e = read_block(&v, 7).unwrap_err();
    assert!(matches!(e, Error::TargetFailed { .. }), "{e}");
    assert_eq!(e.errno(), 5);
    assert!(e.to_string().contains("data block 7 is corrupted"), "{e}");
    assert_eq!(v.status(), "C");
    assert!(read_block(&v, 8).is_ok());
}

#[test]
fn ignore_corruption_returns_the_damaged_data_and_counts_it() {
    let (c, v, _) = target("1 ignore_corruption", Some(7));
    let got = read_block(&v, 7).unwrap();
    let mut want = load(&c.data)[7 * 4096..8 * 4096].to_vec();
    want[100] ^= 0x40;
    assert_eq!(got, want);
    read_block(&v, 7).unwrap();
    assert_eq!(v.corruption_count(), 2);
    assert_eq!(v.status(), "C");
}

#[test]
fn restart_and_panic_on_corruption_give_a_halt_error_callers_can_match() {
    for (opt, action) in [
        ("restart_on_corruption", HaltAction::Restart),
        ("panic_on_corruption", HaltAction::Panic),
    ] {
        let (_, v, _) = target(&format!("1 {opt}"), Some(3));
        match read_block(&v, 3) {
            Err(Error::Halt { action: a, .. }) => assert_eq!(a, action),
            other => panic!("{opt}: {other:?}"),
        }
        assert!(read_block(&v, 4).is_ok());
    }
}

/// A volume whose reads all fail.
#[derive(Debug)]
struct Broken(SectorCount);
impl Volume for Broken {
    fn size(&self) -> SectorCount {
        self.0
    }
    fn read(&self, _: Sector, _: &mut [u8]) -> Result<()> {
        Err(Error::Io {
            device: "broken".into(),
            source: std::io::Error::other("medium error"),
        })
    }
    fn write(&self, _: Sector, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, _: Sector, _: SectorCount) -> Result<()> {
        Ok(())
    }
}

#[test]
fn io_errors_pass_up_or_halt_under_restart_and_panic_on_error() {
    let c = case("v1-sha256-4k");
    let hash = mem(load(&c.hash));
    for (opts, halt) in [
        ("", None),
        ("1 restart_on_error", Some(HaltAction::Restart)),
        (
            "2 ignore_corruption panic_on_error",
            Some(HaltAction::Panic),
        ),
    ] {
        let data: SharedVolume = Arc::new(Broken(SectorCount(c.sectors())));
        let v = Verity::over(
            &c.args("d", "h", opts),
            SectorCount(c.sectors()),
            data,
            hash.clone(),
        )
        .unwrap();
        let e = read_block(&v, 0).unwrap_err();
        match halt {
            None => assert!(matches!(e, Error::Io { .. }), "{e}"),
            Some(a) => assert!(
                matches!(e, Error::Halt { action, .. } if action == a),
                "{e}"
            ),
        }
        // An I/O error is not corruption.
        assert_eq!(v.status(), "V");
    }
}

#[test]
fn ignore_zero_blocks_reads_zero_blocks_as_zeros_without_reading_data() {
    // Block 5 of data-a is all zeros; its digest is the zero-block digest.
    let (_, v, _) = target("1 ignore_zero_blocks", Some(5));
    assert_eq!(read_block(&v, 5).unwrap(), vec![0u8; 4096]);
    assert_eq!(v.status(), "V");
    let (_, v, _) = target("", Some(5));
    assert!(read_block(&v, 5).is_err());
}

#[test]
fn check_at_most_once_skips_blocks_already_verified() {
    let (c, v, data) = target("1 check_at_most_once", None);
    let good = read_block(&v, 9).unwrap();
    assert_eq!(good, load(&c.data)[9 * 4096..10 * 4096]);
    // Damage the block under the target: the kernel does not look again, nor do we.
    let mut bad = good.clone();
    bad[0] ^= 1;
    data.write(Sector(9 * 8), &bad).unwrap();
    assert_eq!(read_block(&v, 9).unwrap(), bad);
    // A block never read is still checked.
    data.write(Sector(10 * 8), &bad).unwrap();
    assert!(read_block(&v, 10).is_err());
    // Without the option the damaged block 9 fails.
    let (_, plain, d2) = target("", None);
    d2.write(Sector(9 * 8), &bad).unwrap();
    assert!(read_block(&plain, 9).is_err());
}

#[test]
fn unaligned_reads_verify_whole_blocks_and_return_the_asked_part() {
    let (c, v, _) = target("", None);
    let data = load(&c.data);
    let mut buf = vec![0u8; 3 * 512];
    v.read(Sector(7), &mut buf).unwrap();
    assert_eq!(buf, data[7 * 512..10 * 512]);
    let (_, v, _) = target("", Some(1));
    // Sector 7 is in block 0, sectors 8-9 in corrupt block 1.
    assert!(v.read(Sector(7), &mut buf).is_err());
    assert!(v.read(Sector(0), &mut buf[..512]).is_ok());
}

#[test]
fn writes_and_discards_are_refused() {
    let (_, v, _) = target("", None);
    assert!(matches!(
        v.write(Sector(0), &[0; 512]),
        Err(Error::ReadOnly { .. })
    ));
    assert!(v.discard(Sector(0), SectorCount(8)).is_err());
}

#[test]
fn hash_device_too_small_is_refused_at_construction() {
    let c = case("v1-sha256-4k");
    let mut hash = load(&c.hash);
    hash.truncate(hash.len() - 4096);
    let e = Verity::over(
        &c.args("d", "h", ""),
        SectorCount(c.sectors()),
        mem(load(&c.data)),
        mem(hash),
    )
    .unwrap_err();
    assert!(e.to_string().contains("Hash device is too small"), "{e}");
}

#[test]
fn corrupt_hash_block_is_reported_as_metadata_and_not_cached() {
    let c = case("v1-sha256-4k");
    let mut hash = load(&c.hash);
    let geo = c.geometry();
    // Damage the second leaf hash block: data blocks 128..256 depend on it.
    let hb = usize::try_from(geo.level_block[0] + 1).unwrap();
    hash[hb * 4096 + 4000] ^= 1;
    let v = Verity::over(
        &c.args("d", "h", "1 ignore_corruption"),
        SectorCount(c.sectors()),
        mem(load(&c.data)),
        mem(hash),
    )
    .unwrap();
    // Padding damage: the digests are still right, so ignore mode returns good data.
    let data = load(&c.data);
    assert_eq!(read_block(&v, 130).unwrap(), data[130 * 4096..131 * 4096]);
    read_block(&v, 131).unwrap();
    assert_eq!(v.corruption_count(), 2);
    assert!(read_block(&v, 0).is_ok());
    assert_eq!(v.corruption_count(), 2);
}

/// A verity target with FEC; the error as text, whether the table parse (verity_fec_ctr's
/// device-free checks) or the build (device sizes) refused it.
fn fec_target(opts: &str, fec_len: usize) -> std::result::Result<Verity, String> {
    let c = case("v1-sha256-4k");
    let mut fec = load("fec-v1-sha256-4k-r4.img");
    fec.resize(fec_len, 0);
    let toks: Vec<String> = c
        .table_args("d", "h", opts)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let args =
        VerityArgs::parse(&mut Args::new(&toks), SectorCount(c.sectors())).map_err(|e| e.reason)?;
    Verity::over_with_fec(
        &args,
        SectorCount(c.sectors()),
        mem(load(&c.data)),
        mem(load(&c.hash)),
        Some(mem(fec)),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn fec_table_checks_use_the_kernel_words() {
    let full = load("fec-v1-sha256-4k-r4.img").len();
    let fec = |w: &str| format!("8 use_fec_from_device f {w}");
    let cases = [
        (
            fec("fec_blocks 259 fec_start 0 fec_roots 4"),
            full - 4096,
            "FEC device is too small",
        ),
        (
            fec("fec_blocks 258 fec_start 0 fec_roots 4"),
            full,
            "Invalid fec_blocks",
        ),
        (
            fec("fec_blocks 1000 fec_start 0 fec_roots 4"),
            full,
            "Hash device is too small for fec_blocks",
        ),
        (
            "6 use_fec_from_device f fec_blocks 259 fec_start 0".to_string(),
            full,
            "Missing fec_roots",
        ),
        (
            "6 use_fec_from_device f fec_roots 4 fec_start 0".to_string(),
            full,
            "Missing fec_blocks",
        ),
    ];
    for (opts, len, want) in cases {
        let e = fec_target(&opts, len).err().unwrap();
        assert!(e.contains(want), "{opts}: {e}");
    }
    let v = fec_target(&fec("fec_blocks 259 fec_start 0 fec_roots 4"), full).unwrap();
    assert_eq!(read_block(&v, 0).unwrap(), load("data-a.img")[..4096]);
    // Without the FEC device the library refuses the table rather than ignore FEC.
    let c = case("v1-sha256-4k");
    let e = Verity::over(
        &c.args("d", "h", &fec("fec_blocks 259 fec_start 0 fec_roots 4")),
        SectorCount(c.sectors()),
        mem(load(&c.data)),
        mem(load(&c.hash)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("FEC device lookup failed"), "{e}");
}

#[test]
fn fec_corrects_a_damaged_block_keeps_status_v_and_counts_it() {
    let c = case("v1-sha256-4k");
    let mut data = load(&c.data);
    let good = data[33 * 4096..34 * 4096].to_vec();
    for b in &mut data[33 * 4096..33 * 4096 + 100] {
        *b ^= 0xff;
    }
    let v = Verity::over_with_fec(
        &c.args(
            "d",
            "h",
            "8 use_fec_from_device f fec_blocks 259 fec_start 0 fec_roots 4",
        ),
        SectorCount(c.sectors()),
        mem(data),
        mem(load(&c.hash)),
        Some(mem(load("fec-v1-sha256-4k-r4.img"))),
    )
    .unwrap();
    assert_eq!(read_block(&v, 33).unwrap(), good);
    assert_eq!(v.fec_corrected(), 1);
    assert_eq!(v.status(), "V");
}

#[test]
fn large_reads_verify_on_all_cores_and_report_the_lowest_bad_block() {
    let (c, v, _) = target("", None);
    let mut all = vec![0u8; 1 << 20];
    v.read(Sector(0), &mut all).unwrap();
    assert!(all == load(&c.data));
    let c = case("v1-sha256-4k");
    let mut data = load(&c.data);
    data[200 * 4096] ^= 1;
    data[10 * 4096 + 9] ^= 1;
    let v = Verity::over(
        &c.args("d", "h", ""),
        SectorCount(c.sectors()),
        mem(data),
        mem(load(&c.hash)),
    )
    .unwrap();
    let e = v.read(Sector(0), &mut all).unwrap_err();
    assert!(e.to_string().contains("data block 10 is corrupted"), "{e}");
    // A large read past both bad blocks is fine.
    assert!(v.read(Sector(201 * 8), &mut all[..55 * 4096]).is_ok());
}

/// A volume whose reads of one sector range fail.
#[derive(Debug)]
struct BadRange(Arc<MemVolume>, std::ops::Range<u64>);
impl Volume for BadRange {
    fn size(&self) -> SectorCount {
        self.0.size()
    }
    fn read(&self, s: Sector, buf: &mut [u8]) -> Result<()> {
        let end = s.0 + buf.len() as u64 / 512;
        if s.0 < self.1.end && self.1.start < end {
            return Err(Error::Io {
                device: "bad".into(),
                source: std::io::Error::other("medium error"),
            });
        }
        self.0.read(s, buf)
    }
    fn write(&self, s: Sector, buf: &[u8]) -> Result<()> {
        self.0.write(s, buf)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, _: Sector, _: SectorCount) -> Result<()> {
        Ok(())
    }
}

#[test]
fn fec_rebuilds_a_block_whose_read_failed_and_without_fec_the_error_passes_up() {
    let c = case("v1-sha256-4k");
    let data: SharedVolume = Arc::new(BadRange(mem(load(&c.data)), 12 * 8..13 * 8));
    let fec = "8 use_fec_from_device f fec_blocks 259 fec_start 0 fec_roots 4";
    let v = Verity::over_with_fec(
        &c.args("d", "h", fec),
        SectorCount(c.sectors()),
        Arc::clone(&data),
        mem(load(&c.hash)),
        Some(mem(load("fec-v1-sha256-4k-r4.img"))),
    )
    .unwrap();
    assert_eq!(
        read_block(&v, 12).unwrap(),
        load(&c.data)[12 * 4096..13 * 4096]
    );
    assert_eq!(v.fec_corrected(), 1);
    let v = Verity::over(
        &c.args("d", "h", ""),
        SectorCount(c.sectors()),
        data,
        mem(load(&c.hash)),
    )
    .unwrap();
    assert!(matches!(read_block(&v, 12), Err(Error::Io { .. })));
}

#[test]
fn a_root_digest_of_another_length_than_the_algorithms_is_refused_at_construction() {
    // VerityArgs is public, so a library caller can pair a sha256-sized root with sha512
    // (the table parser refuses that with "Invalid root digest"); construction must too.
    let c = case("v1-sha256-4k");
    let mut args = c.args("d", "h", "");
    args.algorithm = dmemu::targets::verity::HashAlg::from_name("sha512").unwrap();
    let e = Verity::over(
        &args,
        SectorCount(c.sectors()),
        mem(load(&c.data)),
        mem(load(&c.hash)),
    )
    .unwrap_err();
    assert!(e.to_string().contains("Invalid root digest"), "{e}");
}
