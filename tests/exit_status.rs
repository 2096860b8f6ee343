//! Exit statuses and messages: dmemu exits with the errno of the failure and names its
//! cause; where cryptsetup and veritysetup exit differently, the documented difference is
//! checked against what they did (tests/fixtures/exit-status/make.sh).

use std::path::Path;
use std::process::Output;

mod cli_support;
use cli_support::{dmemu, unpack_fixture};

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The block `dmemu --help` ends with, as README's "Exit status" section repeats it.
fn help_exit_status() -> String {
    let o = dmemu(&["--help"], b"");
    assert!(o.status.success());
    let help = String::from_utf8(o.stdout).unwrap();
    let at = help
        .find("Exit status:")
        .expect("--help documents the exit status");
    help[at..].trim_end().to_string()
}

#[test]
fn help_and_readme_document_the_same_exit_statuses() {
    let help = help_exit_status();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&help),
        "README must repeat --help's exit status block:\n{help}"
    );
    for code in ["1 EPERM", "2 ENOENT", "5 EIO", "22 EINVAL", "30 EROFS"] {
        assert!(help.contains(code), "{code} missing:\n{help}");
    }
}

/// The status and message cryptsetup/veritysetup gave in `case` (fixture).
fn tool(case: &str, tool: &str) -> (i32, String) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exit-status/cryptsetup.txt"),
    )
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{case} {tool} ")))
        .unwrap();
    let mut w = line.splitn(4, ' ');
    let (_, _, code, msg) = (w.next(), w.next(), w.next().unwrap(), w.next().unwrap());
    (code.parse().unwrap(), msg.to_string())
}

#[test]
fn wrong_passphrase_corrupt_image_and_missing_file_are_three_messages_and_statuses() {
    let tmp = tempfile::tempdir().unwrap();
    let luks = unpack_fixture(tmp.path(), "luks/l2-argon2id.img");
    let luks = luks.to_str().unwrap();
    let zero = tmp.path().join("zero.img");
    std::fs::write(&zero, vec![0u8; 1 << 20]).unwrap();
    let missing = tmp.path().join("missing.img");

    let wrong = dmemu(&["luks", "table", luks, "--key-file", "-"], b"wrong\n");
    assert_eq!(wrong.status.code(), Some(1), "EPERM: {}", err(&wrong));
    assert!(err(&wrong).contains("no key available with this passphrase"));
    let not_luks = dmemu(&["luks", "dump", zero.to_str().unwrap()], b"");
    assert_eq!(
        not_luks.status.code(),
        Some(22),
        "EINVAL: {}",
        err(&not_luks)
    );
    let gone = dmemu(&["luks", "dump", missing.to_str().unwrap()], b"");
    assert_eq!(gone.status.code(), Some(2), "ENOENT: {}", err(&gone));
    assert_eq!(
        err(&gone),
        format!(
            "dmemu: {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    let msgs = [err(&wrong), err(&not_luks), err(&gone)];
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.lines().count(), 1, "{m}");
        assert!(msgs.iter().skip(i + 1).all(|n| n != m));
    }
    // cryptsetup exits 2, 1 and 4 for the same three (fixture); the help says so.
    let help = help_exit_status();
    assert_eq!(tool("wrong-passphrase", "cryptsetup").0, 2);
    assert_eq!(tool("not-luks", "cryptsetup").0, 1);
    assert_eq!(tool("missing-file", "cryptsetup").0, 4);
    assert!(help.contains("1 bad parameters or not LUKS, 2 wrong passphrase"));
    assert!(help.contains("4 missing device"));
}

#[test]
fn verity_verification_failure_is_einval_where_veritysetup_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = unpack_fixture(tmp.path(), "verity/data-a.img");
    let hash = unpack_fixture(tmp.path(), "verity/hash-v1-sha256-4k.img");
    let mut d = std::fs::read(&data).unwrap();
    d[40000] ^= 0xff;
    std::fs::write(&data, d).unwrap();
    let root = "20a8659eb54ff3e277d675bf53e84124b5abad6b84881415b796a9a0977d4512";
    let o = dmemu(
        &[
            "verity",
            "verify",
            data.to_str().unwrap(),
            hash.to_str().unwrap(),
            root,
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(22), "{}", err(&o));
    let (code, msg) = tool("verify-failed", "veritysetup");
    assert_eq!(code, 2);
    // Same position as veritysetup names.
    assert!(msg.contains("Verification failed at position 36864"));
    assert!(
        err(&o).contains("verification failed at position 36864"),
        "{}",
        err(&o)
    );
    assert!(help_exit_status().contains("2 wrong passphrase or verification failed"));
}

#[test]
fn os_errors_keep_their_errno_and_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.img");
    let table = format!("0 8 linear {} 0", missing.display());
    let o = dmemu(&["read", "--table", &table], b"");
    // A table naming a missing image fails to load with ENOENT, as the 6.12 kernel's
    // dm_get_device answers (tests/fixtures/lifecycle: load-g-bad-device), and the message
    // keeps the OS cause.
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("No such file or directory"), "{}", err(&o));
    // A file opened directly: the OS errno is the status.
    let o = dmemu(
        &[
            "write",
            "--table",
            "0 8 zero",
            "-i",
            missing.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert_eq!(
        err(&o),
        format!(
            "dmemu: {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    // A directory where an image belongs, read: EISDIR from the OS, not a generic EIO.
    let table = format!("0 8 linear {} 0", tmp.path().display());
    let o = dmemu(&["read", "--read-only", "--table", &table], b"");
    assert_eq!(o.status.code(), Some(21), "{}", err(&o));
    assert!(err(&o).contains("Is a directory"), "{}", err(&o));
    // A path through a file: the lookup's own errno (ENOTDIR), not "missing" for every
    // failed lookup (an unsearchable directory is EACCES the same way).
    let file = tmp.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let through = file.join("x.img");
    let table = format!("0 8 linear {} 0", through.display());
    let o = dmemu(&["read", "--table", &table], b"");
    assert_eq!(o.status.code(), Some(20), "{}", err(&o));
    assert!(
        err(&o).ends_with(&format!(
            "{}: Not a directory (os error 20)\n",
            through.display()
        )),
        "{}",
        err(&o)
    );
}
