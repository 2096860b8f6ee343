//! Tests of the constructed crypt target: alignment, discards, keys, every mode's round
//! trip, key selection, parallel requests. Kernel-made vectors are in tests/crypt_vectors.rs.

use std::sync::Arc;

use super::*;
use crate::error::errno;
use crate::units::Sector;
use crate::volume::{MemVolume, Volume};

use super::tests::{parse, KEY256};

fn build(params: &str, len: u64) -> (Arc<MemVolume>, crate::Result<Crypt>) {
    let disk = Arc::new(MemVolume::new(SectorCount(len + 16)).unwrap());
    let args = parse(len, params).unwrap();
    let c = Crypt::over(disk.clone(), &args, SectorCount(len), &Keyring::default());
    (disk, c)
}

#[test]
fn crypt_requests_not_aligned_to_sector_size_fail_with_eio_and_no_effect() {
    let (disk, c) = build(
        &format!("aes-xts-plain64 {KEY256} 0 d 8 1 sector_size:4096"),
        32,
    );
    let c = c.unwrap();
    let e = c.write(Sector(4), &[1u8; 4096]).unwrap_err();
    assert_eq!(e.errno(), errno::EIO);
    assert!(c.read(Sector(0), &mut [0u8; 2048]).is_err());
    assert!(disk.to_vec().iter().all(|&b| b == 0));
}

#[test]
fn crypt_discard_without_allow_discards_is_unsupported() {
    let (_, c) = build(&format!("aes-xts-plain64 {KEY256} 0 d 0"), 32);
    let e = c.unwrap().discard(Sector(0), SectorCount(8)).unwrap_err();
    assert_eq!(e.errno(), errno::EOPNOTSUPP);
}

#[test]
fn crypt_discard_with_allow_discards_passes_down_at_the_offset() {
    let (disk, c) = build(
        &format!("aes-xts-plain64 {KEY256} 0 d 8 1 allow_discards"),
        32,
    );
    let c = c.unwrap();
    c.write(Sector(0), &[7u8; 16 * 512]).unwrap();
    c.discard(Sector(0), SectorCount(8)).unwrap();
    let raw = disk.to_vec();
    assert!(raw[8 * 512..16 * 512].iter().all(|&b| b == 0)); // MemVolume zeroes discards
    assert!(raw[16 * 512..24 * 512].iter().any(|&b| b != 0));
}

/// An integrity device of `len` data sectors with `tag`-byte tags and no internal hash.
fn tagged(tag: u32) -> (Arc<MemVolume>, SectorCount, crate::volume::SharedVolume) {
    use crate::table::args::Args;
    use crate::targets::integrity::format::{format, FormatParams};
    use crate::targets::{Integrity, IntegrityArgs};
    let mem = Arc::new(MemVolume::new(SectorCount(4096)).unwrap());
    let sb = format(
        &*mem,
        &FormatParams {
            tag_size: Some(tag),
            salt: Some([3; 16]),
            ..FormatParams::default()
        },
    )
    .unwrap();
    let len = SectorCount(sb.provided_data_sectors);
    let tokens: Vec<String> = ["/dev/x", "0", &tag.to_string(), "J", "0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let args = IntegrityArgs::parse(&mut Args::new(&tokens)).unwrap();
    let t = Arc::new(Integrity::over(mem.clone(), &args, len).unwrap());
    (mem, len, t)
}

#[test]
fn crypt_random_iv_needs_tags_big_enough_for_the_iv() {
    // No tags below: the kernel's crypt_integrity_ctr refusal (its 6.12 dmesg is in
    // tests/fixtures/crypt-integrity-none, checked by tests/crypt_integrity_none.rs).
    let (_, c) = build(
        &format!("aes-xts-random {KEY256} 0 d 0 1 integrity:16:none"),
        32,
    );
    let e = c.unwrap_err();
    assert_eq!(e.errno(), errno::EINVAL);
    assert!(
        e.to_string().contains("Integrity profile not supported."),
        "{e}"
    );
    // The refusal for `integrity:<n>:none` over tags of `tag` bytes.
    let refusal = |tag: u32, n: u32| {
        let (_, len, dev) = tagged(tag);
        let p = format!("aes-xts-random {KEY256} 0 d 0 1 integrity:{n}:none");
        let args = parse(len.0, &p).unwrap();
        let e = Crypt::over(dev, &args, len, &Keyring::default()).unwrap_err();
        e.to_string()
    };
    // 8-byte tuples cannot hold xts's 16-byte IV.
    let e = refusal(8, 8);
    assert!(
        e.contains("Not enough space for integrity tag in the profile."),
        "{e}"
    );
    // integrity:20:none asks more than the 16-byte tuples have.
    let e = refusal(16, 20);
    assert!(e.contains("Integrity profile tag size mismatch."), "{e}");
}

#[test]
fn crypt_integrity_none_with_a_sector_iv_is_plain_crypt() {
    // integrity_iv_size is 0, so the kernel never calls crypt_integrity_ctr: the option
    // changes nothing on the disk (the kernel's own such image is read back in
    // tests/crypt_integrity_none.rs).
    let data: Vec<u8> = (0..16 * 512).map(|i| (i * 7 % 251) as u8).collect();
    let mut raws = Vec::new();
    for opts in ["", " 1 integrity:16:none"] {
        let (disk, c) = build(&format!("aes-xts-plain64 {KEY256} 0 d 0{opts}"), 32);
        c.unwrap().write(Sector(0), &data).unwrap();
        raws.push(disk.to_vec());
    }
    assert_eq!(raws[0], raws[1]);
}

#[test]
fn crypt_keyring_key_needs_the_caller_to_supply_it() {
    let disk = Arc::new(MemVolume::new(SectorCount(32)).unwrap());
    let args = parse(32, "aes-xts-plain64 :64:logon:vol 0 d 0").unwrap();
    let ring = Keyring::default();
    let e = Crypt::over(disk.clone(), &args, SectorCount(32), &ring).unwrap_err();
    assert!(
        e.to_string().contains("\"logon:vol\" was not supplied"),
        "{e}"
    );
    ring.insert("logon", "vol", &[9u8; 32]);
    let e = Crypt::over(disk.clone(), &args, SectorCount(32), &ring).unwrap_err();
    assert!(e.to_string().contains("has 32 bytes"), "{e}");
    ring.insert("logon", "vol", &[9u8; 64]);
    let by_ring = Crypt::over(disk.clone(), &args, SectorCount(32), &ring).unwrap();
    let hex = parse(32, &format!("aes-xts-plain64 {} 0 d 0", "09".repeat(64))).unwrap();
    let by_hex = Crypt::over(disk, &hex, SectorCount(32), &ring).unwrap();
    by_ring.write(Sector(0), &[5u8; 512]).unwrap();
    let mut back = [0u8; 512];
    by_hex.read(Sector(0), &mut back).unwrap();
    assert_eq!(back, [5u8; 512]);
}

#[test]
fn crypt_every_implemented_mode_reads_back_what_it_wrote() {
    let k = |n: usize| {
        (0..n)
            .map(|i| format!("{:02x}", (i * 7 + 3) & 0xff))
            .collect::<String>()
    };
    let specs = [
        format!("aes-cbc-plain {} 0 d 0", k(16)),
        format!("aes-cbc-plain64be {} 0 d 0", k(24)),
        format!("aes-cbc-essiv:sha256 {} 0 d 0 1 sector_size:4096", k(32)),
        format!("aes-cbc-essiv:md5 {} 8 d 0", k(16)),
        format!("aes-cbc-null {} 0 d 0", k(16)),
        format!(
            "aes-cbc-eboiv {} 0 d 0 2 sector_size:4096 iv_large_sectors",
            k(32)
        ),
        format!("aes:64-cbc-lmk {} 0 d 0", k(64 * 16)),
        format!("aes:64-cbc-lmk {} 0 d 0", k(65 * 16)),
        format!("aes-cbc-tcw {} 0 d 0", k(48)),
        format!("aes-ecb {} 0 d 0", k(16)),
        format!("aes-ctr-plain64 {} 0 d 0", k(16)),
        format!("aes-lrw-benbi {} 0 d 0", k(32)),
        format!("aes:4-xts-plain64 {} 0 d 0 1 sector_size:1024", k(4 * 64)),
        format!("capi:xts(aes)-plain64 {} 0 d 0", k(48)),
        "cipher_null-ecb - 0 d 0".to_string(),
    ];
    let data: Vec<u8> = (0..32 * 512).map(|i| (i * 13 % 251) as u8).collect();
    for spec in &specs {
        let (disk, c) = build(spec, 32);
        let c = c.unwrap_or_else(|e| panic!("{spec}: {e}"));
        c.write(Sector(0), &data).unwrap();
        if !spec.starts_with("cipher_null") {
            assert_ne!(
                &disk.to_vec()[..data.len()],
                &data[..],
                "{spec} wrote plaintext"
            );
        }
        let mut back = vec![0u8; data.len()];
        c.read(Sector(0), &mut back).unwrap();
        assert_eq!(back, data, "{spec}");
    }
}

#[test]
fn crypt_keycount_selects_the_key_by_512_byte_sector_including_iv_offset() {
    // With 2 keys, sector 1 (cc_sector 1) uses key 1; with iv_offset 1, sector 0 does.
    let k1 = "11".repeat(32);
    let k2 = "22".repeat(32);
    let (a_disk, a) = build(&format!("aes:2-xts-plain64 {k1}{k2} 1 d 0"), 8);
    let (b_disk, b) = build(&format!("aes-xts-plain64 {k2} 1 d 0"), 8);
    a.unwrap().write(Sector(0), &[3u8; 512]).unwrap();
    b.unwrap().write(Sector(0), &[3u8; 512]).unwrap();
    assert_eq!(a_disk.to_vec()[..512], b_disk.to_vec()[..512]);
}

#[test]
fn crypt_large_parallel_request_equals_sector_by_sector_result() {
    // 5 MiB: above the size from which requests are split over two threads.
    let (disk, c) = build(&format!("aes-xts-plain64 {KEY256} 0 d 0"), 10240);
    let c = c.unwrap();
    let data: Vec<u8> = (0..10240 * 512).map(|i| (i % 253) as u8).collect();
    c.write(Sector(0), &data).unwrap();
    let whole = disk.to_vec();
    for s in (0..10240).step_by(97) {
        c.write(Sector(s), &data[s as usize * 512..(s as usize + 1) * 512])
            .unwrap();
    }
    assert_eq!(disk.to_vec(), whole);
}

#[test]
fn crypt_over_a_memory_map_decrypts_from_it_as_from_a_copy() {
    // Ciphertext written through a MemVolume, then read back through a crypt over a map of
    // the same bytes (`Volume::mapped`: decryption straight from the mapping): the XTS fast
    // path with 4 KiB sectors and a request split over two threads, and a generic mode.
    let len = 10240u64;
    let data: Vec<u8> = (0..len as usize * 512)
        .map(|i| ((i % 251) ^ (i / 4096)) as u8)
        .collect();
    for params in [
        format!("aes-xts-plain64 {KEY256} 0 d 16 1 sector_size:4096"),
        format!("aes-cbc-essiv:sha256 {} 0 d 16", &KEY256[..64]),
    ] {
        let (disk, c) = build(&params, len);
        c.unwrap().write(Sector(0), &data).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, disk.to_vec()).unwrap();
        let map: crate::volume::SharedVolume =
            Arc::new(crate::volume::MmapVolume::open(&path).unwrap());
        assert_eq!(
            map.mapped(Sector(16), SectorCount(8)),
            Some(&disk.to_vec()[16 * 512..24 * 512])
        );
        assert_eq!(map.mapped(Sector(len + 10), SectorCount(8)), None);
        let args = parse(len, &params).unwrap();
        let c = Crypt::over(map, &args, SectorCount(len), &Keyring::default()).unwrap();
        let mut back = vec![0u8; data.len()];
        c.read(Sector(0), &mut back).unwrap();
        assert!(back == data, "{params}");
        let mut part = vec![0u8; 8 * 4096];
        c.read(Sector(800), &mut part).unwrap();
        assert!(
            part[..] == data[800 * 512..800 * 512 + part.len()],
            "{params}"
        );
    }
}

#[test]
fn crypt_key_messages_fail_like_on_an_active_kernel_device() {
    use crate::targets::Target;
    let (_, c) = build(&format!("aes-xts-plain64 {KEY256} 0 d 0"), 8);
    let c = c.unwrap();
    let e = c.message(&["key", "wipe"]).unwrap_err();
    assert_eq!(e.errno(), errno::EINVAL);
    assert!(e.to_string().contains("not suspended"), "{e}");
    assert!(c
        .message(&["bogus"])
        .unwrap_err()
        .to_string()
        .contains("unrecognised"));
}

mod model {
    use proptest::prelude::*;

    use super::*;

    /// One request: write (with a fill byte) or read, at a crypt-sector index, of a number
    /// of crypt sectors.
    #[derive(Clone, Debug)]
    enum Op {
        Write(u64, u64, u8),
        Read(u64, u64),
    }

    fn op(units: u64) -> impl Strategy<Value = Op> {
        (0..units, 1..=units, any::<u8>(), any::<bool>()).prop_map(move |(at, n, b, w)| {
            let n = n.min(units - at);
            if w {
                Op::Write(at, n, b)
            } else {
                Op::Read(at, n)
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Random reads and writes through crypt read back like a plain byte array, for
        /// XTS (fast path, parallel above 256 KiB) and lmk (data-dependent IVs, 64 keys).
        #[test]
        fn crypt_random_ops_match_a_byte_array_model(
            ops in proptest::collection::vec(op(96), 1..12),
            big in any::<bool>(),
            lmk in any::<bool>(),
        ) {
            let (spec, unit) = if lmk {
                (format!("aes:64-cbc-lmk {} 8 d 0", "5a".repeat(65 * 16)), 512u64)
            } else {
                (format!("aes-xts-plain64 {KEY256} 16 d 8 1 sector_size:4096"), 4096u64)
            };
            // Big: 4.5 MiB, so whole-device requests are split over two threads.
            let scale = if big { 12 } else { 1 };
            let units = 96 * scale;
            let len = units * unit / 512;
            let (_, c) = build(&spec, len);
            let c = c.unwrap();
            let mut model = vec![0u8; usize::try_from(units * unit).unwrap()];
            // Start from a known state: the model's zeros, encrypted.
            c.write(Sector(0), &model).unwrap();
            for o in ops {
                match o {
                    Op::Write(at, n, b) => {
                        let (at, n) = (at * scale, n * scale);
                        let r = usize::try_from(at * unit).unwrap()..usize::try_from((at + n) * unit).unwrap();
                        let data: Vec<u8> = r.clone().map(|i| b ^ (i as u8)).collect();
                        c.write(Sector(at * unit / 512), &data).unwrap();
                        model[r].copy_from_slice(&data);
                    }
                    Op::Read(at, n) => {
                        let (at, n) = (at * scale, n * scale);
                        let r = usize::try_from(at * unit).unwrap()..usize::try_from((at + n) * unit).unwrap();
                        let mut got = vec![0u8; r.len()];
                        c.read(Sector(at * unit / 512), &mut got).unwrap();
                        prop_assert_eq!(&got[..], &model[r]);
                    }
                }
            }
            let mut all = vec![0u8; model.len()];
            c.read(Sector(0), &mut all).unwrap();
            prop_assert_eq!(all, model);
        }
    }
}
