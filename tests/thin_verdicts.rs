//! `dmemu thin check` and `dmemu thin dump` on damaged pool metadata give the verdicts of
//! thin-provisioning-tools 0.9: tests/fixtures/thin/verdicts/make.py restores one pool with
//! thin_restore (base.img.gz), damages it one way per case (byte patches, checksums
//! recomputed except in the checksum cases) and records thin_check's exit status and
//! thin_dump's exit status and output (its SHA-256) in cases.json.gz. For every case
//! `thin check` succeeds exactly where thin_check does, and `thin dump` succeeds where
//! thin_dump does with the same bytes, except the cases listed below with their reason.

mod cli_support;

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::Digest;

fn sha256(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Cases where dmemu's `thin check` refuses what thin_check 0.9 passes, each with why.
/// All are damage the 6.12 kernel refuses at pool load or that lets a pool hand out a block
/// still in use; dmemu's pool loading or lookups refuse them too, and `thin check` catches
/// everything they refuse.
const CHECK_STRICTER: &[(&str, &str)] = &[
    (
        "dsm-bitmap-count-2",
        "data space map count 1 for a block 2 mappings name (thin_check 0.9 reports none \
         of the data count mismatches here); a count below the references frees a shared \
         block too early",
    ),
    (
        "dsm-bitmap-count-3-no-tree",
        "a bitmap count of 3 (\"look in the ref count tree\") with no tree entry: the \
         kernel's sm_ll_lookup fails on it",
    ),
    (
        "dsm-bitmap-free-as-used",
        "a data block counted but named by no mapping (a leak thin_check 0.9 ignores)",
    ),
    (
        "dsm-bitmap-used-as-free",
        "a mapped data block counted free: the pool would allocate it again (data loss)",
    ),
    (
        "internal-key-too-low",
        "a child holds keys at or above its parent's next key: dm_btree_lookup (and \
         dmemu's lazy lookup) cannot reach those mappings",
    ),
    (
        "leaf-data-block-last",
        "a mapping moved to a data block the space map counts free",
    ),
    (
        "leaf-data-block-past-pool",
        "a mapping past the data space map (nr_data_blocks): the kernel's data space map \
         refuses the block, dmemu's pool refuses the read",
    ),
    (
        "leaf-data-block-shared",
        "two mappings name one data block counted once",
    ),
    (
        "leaf-entry-dropped",
        "a data block counted but no longer mapped (a leak)",
    ),
    (
        "sb-blocknr",
        "the kernel's superblock validator (sb_check) refuses a wrong blocknr",
    ),
    (
        "sb-data-nr-blocks-large",
        "the data space map claims more blocks than its index btree has bitmaps for",
    ),
    (
        "sb-data-nr-blocks-small",
        "mappings past the data space map's end",
    ),
    (
        "sb-incompat-flags",
        "__check_incompat_features refuses unknown incompat flags",
    ),
    ("sb-magic", "sb_check refuses a wrong magic"),
    (
        "sb-meta-nr-blocks-large",
        "the metadata space map claims more blocks than the device has",
    ),
    (
        "sb-metadata-block-size",
        "dm-thin supports 4 KiB metadata blocks only (8 sectors)",
    ),
];

/// Cases where dmemu's `thin dump` refuses what thin_dump 0.9 prints.
const DUMP_STRICTER: &[(&str, &str)] = &[(
    "internal-child-repeated",
    "a node reached twice inside one tree: walking a tree whose nodes repeat can take time \
     exponential in its depth, so dmemu's walks refuse it (thin_check fails it too)",
)];

#[test]
fn thin_check_and_dump_verdicts_equal_thin_tools_0_9() {
    let base = cli_support::fixture_bytes("thin/verdicts/base.img");
    let cases: BTreeMap<String, Value> =
        serde_json::from_slice(&cli_support::fixture_bytes("thin/verdicts/cases.json")).unwrap();
    assert!(cases.len() >= 60, "{}", cases.len());
    let tmp = tempfile::tempdir().unwrap();
    let mut differ = Vec::new();
    let (mut check_stricter, mut dump_stricter) = (Vec::new(), Vec::new());
    for (name, c) in &cases {
        let mut img = base.clone();
        for p in c["patches"].as_array().unwrap() {
            let (at, hex) = p.as_str().unwrap().split_once('=').unwrap();
            let at: usize = at.parse().unwrap();
            for (i, b) in (0..hex.len()).step_by(2).enumerate() {
                img[at + i] = u8::from_str_radix(&hex[b..b + 2], 16).unwrap();
            }
        }
        let path = tmp.path().join(name);
        std::fs::write(&path, &img).unwrap();
        let p = path.to_str().unwrap();
        let check = cli_support::dmemu(&["thin", "check", p], b"");
        let want_ok = c["check_rc"].as_i64() == Some(0);
        let why = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
        match (check.status.success(), want_ok) {
            (true, true) | (false, false) => {}
            (false, true) if CHECK_STRICTER.iter().any(|(n, _)| n == name) => {
                check_stricter.push(name.as_str());
            }
            (got, _) => differ.push(format!(
                "{name}: thin_check exits {} ({}), dmemu thin check {}: {}",
                c["check_rc"],
                c["check_err"].as_str().unwrap().trim().replace('\n', " / "),
                if got { "succeeds" } else { "fails" },
                why(&check).trim()
            )),
        }
        let dump = cli_support::dmemu(&["thin", "dump", p], b"");
        let want_ok = c["dump_rc"].as_i64() == Some(0);
        match (dump.status.success(), want_ok) {
            (true, true) => {
                if sha256(&dump.stdout) != c["dump_sha256"].as_str().unwrap() {
                    differ.push(format!("{name}: the dump differs from thin_dump's"));
                }
            }
            (false, false) => {}
            (false, true) if DUMP_STRICTER.iter().any(|(n, _)| n == name) => {
                dump_stricter.push(name.as_str());
            }
            (got, _) => differ.push(format!(
                "{name}: thin_dump exits {} ({}), dmemu thin dump {}: {}",
                c["dump_rc"],
                c["dump_err"].as_str().unwrap().trim().replace('\n', " / "),
                if got { "succeeds" } else { "fails" },
                why(&dump).trim()
            )),
        }
    }
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    // Each listed case is in the fixture and still differs: the lists are exact.
    fn names(l: &[(&'static str, &str)]) -> Vec<&'static str> {
        l.iter().map(|(n, _)| *n).collect()
    }
    assert_eq!(check_stricter, names(CHECK_STRICTER));
    assert_eq!(dump_stricter, names(DUMP_STRICTER));
}
