//! `dmemu verity format|verify|dump|table` end to end, against veritysetup's files and
//! printed output (tests/fixtures/verity, made by make.sh), and bad superblocks.

mod verity_support;

use std::path::Path;
use std::process::{Command, Output};

use verity_support::{case, dir, load};

fn dmemu(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A temp dir holding data-a.img and veritysetup's hash image of case v1-sha256-4k as t.img.
fn setup() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let c = case("v1-sha256-4k");
    std::fs::write(t.path().join("data-a.img"), load(&c.data)).unwrap();
    std::fs::write(t.path().join("t.img"), load(&c.hash)).unwrap();
    t
}

#[test]
fn format_prints_what_veritysetup_prints_and_writes_its_bytes() {
    let t = setup();
    let c = case("v1-sha256-4k");
    let out = dmemu(
        &[
            "verity",
            "format",
            "data-a.img",
            "new.img",
            "--salt",
            &c.salt,
            "--uuid",
            &c.uuid,
        ],
        t.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = std::fs::read_to_string(dir().join("format-v1-sha256-4k.txt")).unwrap();
    assert_eq!(text(&out.stdout).replace("new.img", "t.img"), want);
    assert!(std::fs::read(t.path().join("new.img")).unwrap() == load(&c.hash));
}

/// veritysetup's short options: `-h` is the hash, `-s` the salt (`--help` stays help).
#[test]
fn format_takes_veritysetups_short_options() {
    let t = setup();
    let c = case("v1-sha256-4k");
    let out = dmemu(
        &[
            "verity",
            "format",
            "data-a.img",
            "new.img",
            "-h",
            "sha256",
            "-s",
            &c.salt,
            "--uuid",
            &c.uuid,
        ],
        t.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = std::fs::read_to_string(dir().join("format-v1-sha256-4k.txt")).unwrap();
    assert_eq!(text(&out.stdout).replace("new.img", "t.img"), want);
    let sha1 = dmemu(
        &[
            "verity",
            "format",
            "data-a.img",
            "x.img",
            "-h",
            "sha1",
            "-s",
            "-",
        ],
        t.path(),
    );
    assert!(
        text(&sha1.stdout).contains("Hash algorithm:  \tsha1\n"),
        "{}",
        text(&sha1.stdout)
    );
    let help = dmemu(&["verity", "format", "--help"], t.path());
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("-h, --hash"));
}

#[test]
fn dump_prints_what_veritysetup_dump_prints() {
    let t = setup();
    let out = dmemu(&["verity", "dump", "t.img"], t.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = std::fs::read_to_string(dir().join("dump-v1-sha256-4k.txt")).unwrap();
    assert_eq!(text(&out.stdout), want);
}

#[test]
fn verify_succeeds_on_a_good_pair_and_fails_on_damage_or_wrong_root() {
    let t = setup();
    let c = case("v1-sha256-4k");
    let ok = dmemu(
        &["verity", "verify", "data-a.img", "t.img", &c.root],
        t.path(),
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let mut wrong = c.root.clone();
    wrong.replace_range(0..1, if c.root.starts_with('0') { "1" } else { "0" });
    let bad = dmemu(
        &["verity", "verify", "data-a.img", "t.img", &wrong],
        t.path(),
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("root hash"),
        "{}",
        text(&bad.stderr)
    );
    let mut data = load(&c.data);
    data[4096 * 17 + 5] ^= 1;
    std::fs::write(t.path().join("data-a.img"), data).unwrap();
    let bad = dmemu(
        &["verity", "verify", "data-a.img", "t.img", &c.root],
        t.path(),
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("verification failed at position 69632"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn table_prints_the_line_veritysetup_open_would_load() {
    let t = setup();
    let c = case("v1-sha256-4k");
    let out = dmemu(
        &["verity", "table", "data-a.img", "t.img", &c.root],
        t.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "0 2048 verity {}\n",
            c.table_args("data-a.img", "t.img", "")
        )
    );
}

#[test]
fn bad_superblocks_and_roots_give_clear_errors() {
    let t = setup();
    let c = case("v1-sha256-4k");
    let good = load(&c.hash);
    let cases: &[(usize, &[u8], &str)] = &[
        (0, b"X", "magic"),
        (8, &[9, 0, 0, 0], "version"),
        (12, &[7, 0, 0, 0], "hash type"),
        (32, b"nohash\0", "unsupported hash"),
        (64, &[0, 3, 0, 0], "data block size"),
        (68, &[0, 0, 0, 1], "hash block size"),
        (72, &[0xff; 8], "data blocks"),
        (80, &[0x2c, 0x01], "salt size"),
    ];
    for (at, bytes, what) in cases {
        let mut h = good.clone();
        h[*at..*at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(t.path().join("bad.img"), h).unwrap();
        for args in [
            vec!["verity", "dump", "bad.img"],
            vec!["verity", "verify", "data-a.img", "bad.img", &c.root],
        ] {
            let out = dmemu(&args, t.path());
            assert!(!out.status.success(), "{what}");
            let err = text(&out.stderr);
            assert!(err.contains(what), "{what}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let short = dmemu(
        &["verity", "verify", "data-a.img", "t.img", "abcd"],
        t.path(),
    );
    assert!(
        text(&short.stderr).contains("root hash"),
        "{}",
        text(&short.stderr)
    );
    let hex = dmemu(&["verity", "verify", "data-a.img", "t.img", "zz"], t.path());
    assert!(
        text(&hex.stderr).contains("not hex"),
        "{}",
        text(&hex.stderr)
    );
    std::fs::write(t.path().join("small.img"), &good[..8192]).unwrap();
    let small = dmemu(
        &["verity", "verify", "data-a.img", "small.img", &c.root],
        t.path(),
    );
    assert!(
        text(&small.stderr).contains("too small"),
        "{}",
        text(&small.stderr)
    );
}

#[test]
fn verity_table_built_by_the_cli_reads_the_data() {
    let t = setup();
    let c = case("v1-sha256-4k");
    std::fs::write(
        t.path().join("v.table"),
        format!(
            "0 2048 verity {}\n",
            c.table_args("data-a.img", "t.img", "")
        ),
    )
    .unwrap();
    let out = dmemu(&["read", "--table", "v.table", "--read-only"], t.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == load(&c.data));
    let st = dmemu(&["status", "--table", "v.table", "--read-only"], t.path());
    assert_eq!(text(&st.stdout), "0 2048 verity V\n");
}

#[test]
fn format_with_fec_device_writes_veritysetup_parity() {
    let t = setup();
    let c = case("v1-sha256-4k");
    let out = dmemu(
        &[
            "verity",
            "format",
            "data-a.img",
            "new.img",
            "--salt",
            &c.salt,
            "--uuid",
            &c.uuid,
            "--fec-device",
            "fec.img",
            "--fec-roots",
            "4",
        ],
        t.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("FEC RS roots:   \t4\nFEC blocks:     \t8\n"));
    assert!(std::fs::read(t.path().join("new.img")).unwrap() == load(&c.hash));
    assert!(std::fs::read(t.path().join("fec.img")).unwrap() == load("fec-v1-sha256-4k-r4.img"));
    let table = dmemu(
        &[
            "verity",
            "table",
            "data-a.img",
            "new.img",
            &c.root,
            "--fec-device",
            "fec.img",
            "--fec-roots",
            "4",
        ],
        t.path(),
    );
    assert!(
        text(&table.stdout)
            .ends_with(" 8 use_fec_from_device fec.img fec_blocks 259 fec_start 0 fec_roots 4\n"),
        "{}",
        text(&table.stdout)
    );
}

/// `verity format` with data, hash and FEC areas sharing files: accepted or refused as host
/// veritysetup 2.6.1 did for each case, with its words (tests/fixtures/verity/overlaps,
/// made by make.sh there).
#[test]
fn format_refuses_overlapping_areas_as_veritysetup_does() {
    let text_of = std::fs::read_to_string(dir().join("overlaps/verdicts.txt")).unwrap();
    let mut cases: Vec<(String, i32, Vec<String>)> = Vec::new();
    for line in text_of.lines() {
        if let Some(args) = line.strip_prefix("case ") {
            cases.push((args.to_string(), 0, Vec::new()));
        } else if let Some(rc) = line.strip_prefix("rc ") {
            cases.last_mut().unwrap().1 = rc.parse().unwrap();
        } else if let Some(e) = line.strip_prefix("err ") {
            cases.last_mut().unwrap().2.push(e.to_string());
        }
    }
    assert_eq!(cases.len(), 17);
    for (args, rc, words) in cases {
        let t = tempfile::tempdir().unwrap();
        for (name, size) in [
            ("vd.img", 4u64 << 20),
            ("h.img", 1 << 20),
            ("f.img", 1 << 20),
        ] {
            std::fs::File::create(t.path().join(name))
                .unwrap()
                .set_len(size)
                .unwrap();
        }
        let mut argv = vec!["verity", "format"];
        argv.extend(args.split(' '));
        argv.extend(["--salt", "-"]);
        let out = dmemu(&argv, t.path());
        let err = text(&out.stderr);
        if rc == 0 {
            assert!(out.status.success(), "{args}: {err}");
        } else {
            // dmemu keeps its errno rule (EINVAL) where veritysetup exits 1.
            assert_eq!(out.status.code(), Some(22), "{args}: {err}");
            assert!(
                err.contains(&words[0]),
                "{args}: ours {err:?}, veritysetup {words:?}"
            );
        }
    }
}
