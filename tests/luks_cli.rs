//! `dmemu luks ...` end to end on the cryptsetup/kernel fixtures of tests/fixtures/luks:
//! passphrase sources as cryptsetup reads them, dump and table output, read and write.

use std::path::{Path, PathBuf};
use std::process::Output;

mod cli_support;
use cli_support::{dmemu, unpack_fixture};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luks")
}

/// Decompress fixture `name` (.gz) into `tmp`, returning the path.
fn unpack(tmp: &Path, name: &str) -> PathBuf {
    unpack_fixture(tmp, &format!("luks/{name}"))
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The kernel's hex-key table line for `name`, with the device token replaced by `dev`.
fn kernel_hex_table(name: &str, dev: &str) -> String {
    let text = std::fs::read_to_string(dir().join("tables.txt")).unwrap();
    let line = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name} ")))
        .nth(1)
        .unwrap();
    let mut w: Vec<&str> = line.split(' ').collect();
    w[6] = dev;
    format!("{}\n", w.join(" "))
}

#[test]
fn dump_prints_what_cryptsetup_luksdump_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack(tmp.path(), "l2-essiv.img");
    let o = dmemu(&["luks", "dump", img.to_str().unwrap()], b"");
    let want = std::fs::read_to_string(dir().join("dump/l2-essiv.txt")).unwrap();
    assert_eq!(stdout(&o), want);
}

#[test]
fn table_with_key_file_offset_and_size_matches_the_kernel_line() {
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack(tmp.path(), "l2-argon2id.img");
    let path = img.to_str().unwrap();
    let kf = dir().join("keyfile.bin");
    let o = dmemu(
        &[
            "luks",
            "table",
            "--showkeys",
            path,
            "--key-file",
            kf.to_str().unwrap(),
            "--keyfile-offset",
            "100",
            "--keyfile-size",
            "64",
        ],
        b"",
    );
    assert_eq!(stdout(&o), kernel_hex_table("l2-argon2id", path));
    // Without --keyfile-size the whole rest of the file is the passphrase: wrong.
    let o = dmemu(
        &[
            "luks",
            "table",
            path,
            "-d",
            kf.to_str().unwrap(),
            "--keyfile-offset",
            "100",
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn stdin_passphrase_is_one_line_but_key_file_dash_keeps_the_newline() {
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack(tmp.path(), "l1-xts256.img");
    let path = img.to_str().unwrap();
    let want = kernel_hex_table("l1-xts256", path);
    assert_eq!(
        stdout(&dmemu(&["luks", "table", "--showkeys", path], b"alpha\n")),
        want
    );
    assert_eq!(
        stdout(&dmemu(
            &["luks", "table", "--showkeys", path, "--key-file", "-"],
            b"alpha"
        )),
        want
    );
    let o = dmemu(&["luks", "table", path, "--key-file", "-"], b"alpha\n");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no key available with this passphrase"),
        "{err}"
    );
    assert!(
        !err.contains("alpha"),
        "the passphrase must not be echoed: {err}"
    );
}

#[test]
fn table_hides_the_key_unless_showkeys() {
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack(tmp.path(), "l1-xts512.img");
    let line = stdout(&dmemu(
        &["luks", "table", img.to_str().unwrap()],
        b"alpha\n",
    ));
    assert!(line.contains(&format!(" {} 0 ", "0".repeat(128))), "{line}");
}

#[test]
fn read_gives_the_kernel_written_plaintext_and_write_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack(tmp.path(), "l2-detached.img");
    let hdr = unpack(tmp.path(), "l2-detached.hdr");
    let (img, hdr) = (img.to_str().unwrap(), hdr.to_str().unwrap());
    let out = tmp.path().join("plain");
    let o = dmemu(
        &[
            "luks",
            "read",
            img,
            "--header",
            hdr,
            "-o",
            out.to_str().unwrap(),
        ],
        b"alpha\n",
    );
    stdout(&o);
    let plain = std::fs::read(&out).unwrap();
    let pattern: Vec<u8> = (0..65536).map(|i| ((i % 251) ^ (i / 4096)) as u8).collect();
    assert_eq!(plain, pattern);
    // Write new data at 4 KiB and read it back through a fresh unlock.
    let data = tmp.path().join("new");
    std::fs::write(&data, vec![0x5a; 8192]).unwrap();
    let o = dmemu(
        &[
            "luks",
            "write",
            img,
            "--header",
            hdr,
            "--start",
            "8",
            "-i",
            data.to_str().unwrap(),
        ],
        b"alpha\n",
    );
    stdout(&o);
    let o = dmemu(&["luks", "read", img, "--header", hdr], b"alpha\n");
    let back = o.stdout;
    assert_eq!(&back[4096..12288], &[0x5a; 8192][..]);
    assert_eq!(&back[..4096], &pattern[..4096]);
    assert_eq!(&back[12288..], &pattern[12288..]);
}

#[test]
fn volume_key_file_unlocks_without_a_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack(tmp.path(), "l2-argon2i.img");
    let path = img.to_str().unwrap();
    let want = kernel_hex_table("l2-argon2i", path);
    let hex = want.split(' ').nth(4).unwrap();
    let key: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let kf = tmp.path().join("vk");
    std::fs::write(&kf, &key).unwrap();
    let o = dmemu(
        &[
            "luks",
            "table",
            "--showkeys",
            path,
            "--volume-key-file",
            kf.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(stdout(&o), want);
    std::fs::write(&kf, &key[1..]).unwrap();
    let o = dmemu(
        &[
            "luks",
            "table",
            path,
            "--volume-key-file",
            kf.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(1));
}
