//! `dmemu thin ls`: thin_ls' table byte for byte (tests/fixtures/thin/make-ls.sh ran the
//! real thin_ls 0.9 over the kernel-made fixtures), and dmemu's own listing, whose
//! per-device specs read each thin as the kernel wrote it.

use std::path::Path;

use sha2::Digest as _;

mod cli_support;
use cli_support::{dmemu, unpack_fixture};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn format_prints_what_thin_ls_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/thin");
    let want = std::fs::read_to_string(fixtures.join("thin-ls.txt")).unwrap();
    let mut runs = 0;
    for block in want.split("== ").skip(1) {
        let (head, expected) = block.split_once('\n').unwrap();
        let mut words: Vec<&str> = head.split_whitespace().collect();
        let image = words.remove(0);
        if !words.contains(&"-o") {
            // thin_ls' default fields; dmemu's own default is its listing.
            words.extend(["-o", "DEV,MAPPED,CREATE_TIME,SNAP_TIME"]);
        }
        let path = tmp.path().join(format!("{image}.img"));
        if !path.exists() {
            unpack_fixture(tmp.path(), &format!("thin/{image}.img"));
        }
        let mut args = vec!["thin", "ls"];
        args.extend(&words);
        args.push(path.to_str().unwrap());
        let out = dmemu(&args, b"");
        assert!(out.status.success(), "{head}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected, "thin_ls {head}");
        runs += 1;
    }
    assert_eq!(runs, 13);
}

#[test]
fn an_unknown_field_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = unpack_fixture(tmp.path(), "thin/kernel-meta.img");
    let out = dmemu(
        &["thin", "ls", "-o", "DEV,SIZE", meta.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(22));
    assert!(text(&out.stderr).contains("unknown field \"SIZE\""));
}

#[test]
fn listing_specs_read_each_thin_as_the_kernel_wrote_it() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = unpack_fixture(tmp.path(), "thin/kernel-meta.img");
    let data = unpack_fixture(tmp.path(), "thin/kernel-data.img");
    let before = std::fs::read(&meta).unwrap();
    let out = dmemu(
        &["thin", "ls", meta.to_str().unwrap(), data.to_str().unwrap()],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "kernel metadata passes the check");
    let listing = text(&out.stdout);
    let kernel = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/thin/kernel.txt"),
    )
    .unwrap();
    // thin0 and thin1 are as long as the pool (65536 sectors) in the kernel's tables.
    for id in ["0", "1"] {
        let spec = listing
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{id}: ")))
            .unwrap_or_else(|| panic!("no spec for {id}:\n{listing}"));
        assert!(
            spec.contains("0 65536 thin-pool") && spec.contains("read_only"),
            "{spec}"
        );
        let out = dmemu(
            &["read", "--concise", spec, "--device", &format!("t{id}")],
            b"",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Past the highest mapped block a thin reads zeros: pad to the kernel's length.
        let mut img = out.stdout;
        assert!(img.len() <= 65536 * 512);
        img.resize(65536 * 512, 0);
        let want = kernel
            .lines()
            .find_map(|l| l.strip_prefix(&format!("SHA256 thin{id} ")))
            .unwrap();
        assert_eq!(
            dmemu::targets::verity::hash::to_hex(&sha2::Sha256::digest(&img)),
            want,
            "thin{id}"
        );
    }
    assert!(
        std::fs::read(&meta).unwrap() == before,
        "a read-only pool writes nothing"
    );
}

#[test]
fn listing_warns_when_the_metadata_fails_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = unpack_fixture(tmp.path(), "thin/kernel-meta.img");
    // Give free data block 21 a count of 1 in its bitmap, checksum fixed.
    let mut m = std::fs::read(&meta).unwrap();
    let md = dmemu::targets::thin::metadata::Metadata::open(std::sync::Arc::new(
        dmemu::MemVolume::from_bytes(m.clone()).unwrap(),
    ))
    .unwrap();
    let bm = usize::try_from(md.data_space_map().unwrap().index[0].blocknr).unwrap() * 4096;
    m[bm + 16 + 5] |= 1 << 3;
    dmemu::targets::thin::metadata::block::seal(
        &mut m[bm..bm + 4096],
        dmemu::targets::thin::metadata::block::BITMAP_CSUM_XOR,
    );
    std::fs::write(&meta, m).unwrap();
    let out = dmemu(&["thin", "ls", meta.to_str().unwrap()], b"");
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("dmemu: warning: ")
            && err.contains("1 count mismatches, first: data block 21: space map count 1"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("pool table:"));
}

#[test]
fn thin_help_says_what_each_subcommand_prints() {
    let out = dmemu(&["thin", "--help"], b"");
    assert!(out.status.success());
    let help = text(&out.stdout);
    for s in [
        "thin_dump's XML",
        "ready-to-paste",
        "thin_ls' table",
        "Prints `ok`",
    ] {
        assert!(help.contains(s), "{s:?} missing:\n{help}");
    }
}

/// `--read-only` loads a thin pool as a `read_only` pool (the kernel takes no pool in a
/// read-only table): over the kernel's pool it reports the kernel's status in `ro` mode,
/// and neither image changes.
#[test]
fn read_only_loads_a_pool_as_a_read_only_pool_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let meta = unpack_fixture(tmp.path(), "thin/kernel-meta.img");
    let data = unpack_fixture(tmp.path(), "thin/kernel-data.img");
    let sha = |p: &Path| sha2::Sha256::digest(std::fs::read(p).unwrap()).to_vec();
    let before = (sha(&meta), sha(&data));
    let table = format!(
        "0 65536 thin-pool {} {} 128 16 0",
        meta.display(),
        data.display()
    );
    let out = dmemu(&["status", "--read-only", "--table", &table], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // tests/fixtures/thin/kernel.txt: the kernel's status of this pool, read-write.
    let kernel =
        "0 65536 thin-pool 7 114/1024 27/512 - rw discard_passdown queue_if_no_space - 256 \n";
    assert_eq!(text(&out.stdout), kernel.replace(" rw ", " ro "));
    assert_eq!((sha(&meta), sha(&data)), before);
}
