//! `dmemu thin metadata-pack` / `metadata-unpack` against thin-provisioning-tools 1.1.0's
//! thin_metadata_pack / thin_metadata_unpack (fixture: tests/fixtures/thin/pack/make.sh).
//! The input is 6.12's metadata from tests/fixtures/thin/btree-b-meta.img.gz with block 1000
//! overwritten by `yes dmemu` (not a metadata block: neither tool packs it).

mod cli_support;

use std::path::Path;

use sha2::{Digest, Sha256};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/thin/pack");

fn input() -> Vec<u8> {
    let mut img = cli_support::fixture_bytes("thin/btree-b-meta.img");
    let garbage: Vec<u8> = b"dmemu\n".iter().copied().cycle().take(4096).collect();
    img[1000 * 4096..1001 * 4096].copy_from_slice(&garbage);
    img
}

/// sums.txt: the sha256 of thin_metadata_unpack 1.1.0's output for each pack.
fn sum(pack: &str) -> String {
    let text = std::fs::read_to_string(Path::new(FIX).join("sums.txt")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{pack} ")))
        .unwrap()
        .to_string()
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn run(args: &[&str]) -> std::process::Output {
    cli_support::dmemu(args, b"")
}

#[test]
fn packs_of_the_reference_tool_unpack_as_it_unpacks_them_and_ours_are_read_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.img");
    let o = out.to_str().unwrap();
    // The reference tool's pack (its own encoding of every node, bitmap and index block)
    // and dmemu's pack (literal blocks, which the reference unpacker read back to the same
    // bytes when the fixture was made) unpack here to what thin_metadata_unpack made.
    for pack in ["real.pack", "dmemu.pack"] {
        let p = format!("{FIX}/{pack}");
        let r = run(&["thin", "metadata-unpack", "-i", &p, "-o", o]);
        assert!(r.status.success(), "{pack}: {r:?}");
        let got = std::fs::read(&out).unwrap();
        assert_eq!(hex(&got), sum(pack), "{pack}");
        // Block 1000 was not packed: zeros; every other block is the input's.
        let want = input();
        assert_eq!(got.len(), want.len());
        for b in 0..got.len() / 4096 {
            let (g, w) = (&got[b * 4096..][..4096], &want[b * 4096..][..4096]);
            if b == 1000 {
                assert!(g.iter().all(|&x| x == 0), "{pack}: block 1000 is not zeros");
            } else {
                assert_eq!(g, w, "{pack}: block {b}");
            }
        }
    }
    // Packing the input again gives the pack the reference tool read back.
    let img = dir.path().join("in.img");
    std::fs::write(&img, input()).unwrap();
    let packed = dir.path().join("again.pack");
    let r = run(&[
        "thin",
        "metadata-pack",
        "-i",
        img.to_str().unwrap(),
        "-o",
        packed.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{r:?}");
    assert_eq!(
        std::fs::read(&packed).unwrap(),
        std::fs::read(format!("{FIX}/dmemu.pack")).unwrap(),
        "dmemu's pack of the input changed; rerun make.sh so thin_metadata_unpack checks it"
    );
}

#[test]
fn damaged_packs_are_refused_with_the_offset_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(format!("{FIX}/real.pack")).unwrap();
    let chunk_len = u64::from_le_bytes(good[32..40].try_into().unwrap());
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 1;
    cases.push(("magic", bad_magic, "offset 0: magic"));
    let mut version = good.clone();
    version[8] = 2;
    cases.push((
        "version",
        version,
        "offset 8: unsupported pack file version 2",
    ));
    let mut huge = good.clone();
    huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("blocks", huge, "offset 24:"));
    let mut few = good.clone();
    few[24..32].copy_from_slice(&10u64.to_le_bytes());
    cases.push(("few blocks", few, "past the header's 10 blocks"));
    let mut long = good.clone();
    long[32..40].copy_from_slice(&(chunk_len + (1 << 40)).to_le_bytes());
    cases.push(("chunk length", long, "offset 32: chunk of"));
    let mut zlib = good.clone();
    zlib[45] ^= 0xff;
    cases.push(("zlib", zlib, "offset 32:"));
    cases.push((
        "cut header",
        good[..20].to_vec(),
        "offset 16: the header is cut short",
    ));
    for (name, bytes, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let out = dir.path().join(format!("{name}.img"));
        let r = run(&[
            "thin",
            "metadata-unpack",
            "-i",
            p.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name}: accepted");
        assert!(err.contains(want), "{name}: {err}");
    }
}
