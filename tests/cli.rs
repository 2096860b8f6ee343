//! End-to-end tests of the `dmemu` command: exit status, stdout, stderr.

use std::path::Path;

mod cli_support;
use cli_support::dmemu;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn image(dir: &Path, name: &str, sectors: usize, fill: u8) -> String {
    let p = dir.join(name);
    std::fs::write(&p, vec![fill; sectors * 512]).unwrap();
    p.display().to_string()
}

#[test]
fn check_accepts_valid_table_silently() {
    let out = dmemu(&["check", "-"], b"0 8 zero\n8 8 error\n");
    assert!(out.status.success());
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
}

#[test]
fn check_reports_line_and_token_and_fails_with_einval() {
    let out = dmemu(&["check", "-"], b"0 8 zero\n8 8 linear /dev/x 1x\n");
    assert_eq!(out.status.code(), Some(22));
    assert_eq!(
        text(&out.stderr),
        "dmemu: line 2: token 5 \"1x\": linear: Invalid device sector\n"
    );
}

#[test]
fn check_verity_needs_read_only() {
    let t = format!(
        "0 8 verity 1 a b 4096 4096 1 0 sha256 {} -\n",
        "0".repeat(64)
    );
    let out = dmemu(&["check", "-"], t.as_bytes());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Device must be readonly"));
}

#[test]
fn fmt_prints_canonical_table() {
    let out = dmemu(
        &["fmt", "-"],
        b"# lvm\n0   8 zero   \n8 16 striped 2 +4 a 0 b 0 # two\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0 8 zero \n8 16 striped 2 4 a 0 b 0\n");
}

#[test]
fn fmt_concise_round_trips() {
    let spec = "a,,,rw,0 8 zero ;b,u,3,ro,0 8 linear a 0\n";
    let out = dmemu(&["fmt", "--concise", "-"], spec.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), spec);
}

#[test]
fn write_then_read_through_striped_concise_stack() {
    let dir = tempfile::tempdir().unwrap();
    let a = image(dir.path(), "a.img", 64, 0);
    let b = image(dir.path(), "b.img", 64, 0);
    let spec = format!("s,,,rw,0 128 striped 2 8 {a} 0 {b} 0;top,,,rw,0 64 linear s 32");
    let data: Vec<u8> = (0..16 * 512).map(|i| (i % 251) as u8).collect();
    let out = dmemu(&["write", "--concise", &spec, "--start", "4"], &data);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = dmemu(
        &[
            "read",
            "--concise",
            &spec,
            "--start",
            "4",
            "--sectors",
            "16",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, data);
    // top sector 4 = striped sector 36 = chunk 4 (stripe 0, row 2) + 4 -> a.img sector 20.
    let a_img = std::fs::read(&a).unwrap();
    assert_eq!(&a_img[20 * 512..24 * 512], &data[..4 * 512]);
}

#[test]
fn read_to_file_with_map_binding() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img", 16, 0x42);
    let table = dir.path().join("t");
    std::fs::write(&table, "0 8 linear 8:16 8\n").unwrap();
    let out_path = dir.path().join("out");
    let out = dmemu(
        &[
            "read",
            "--table",
            table.to_str().unwrap(),
            "--map",
            &format!("8:16={disk}"),
            "-o",
            out_path.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&out_path).unwrap(), vec![0x42; 8 * 512]);
}

#[test]
fn unbound_major_minor_is_a_clear_error() {
    let out = dmemu(&["read", "--table", "-"], b"0 8 linear 8:16 0\n");
    // ENOENT, as the kernel's dm_get_device answers a device it cannot find.
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--map 8:16=PATH"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn write_of_partial_sector_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "d.img", 8, 0);
    let input = dir.path().join("in");
    std::fs::write(&input, vec![1u8; 700]).unwrap();
    let table = format!("0 8 linear {disk} 0\n");
    let tf = dir.path().join("t");
    std::fs::write(&tf, table).unwrap();
    let out = dmemu(
        &[
            "write",
            "--table",
            tf.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(22));
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0u8; 8 * 512]);
}

#[test]
fn read_past_end_is_refused() {
    let out = dmemu(
        &["read", "--table", "-", "--start", "6", "--sectors", "4"],
        b"0 8 zero\n",
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out.stderr).contains("outside a volume of 8 sectors"));
}

#[test]
fn read_only_spec_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "d.img", 8, 0);
    let tf = dir.path().join("t");
    std::fs::write(&tf, format!("0 8 linear {disk} 0\n")).unwrap();
    let out = dmemu(
        &["write", "--table", tf.to_str().unwrap(), "--read-only"],
        &[1u8; 512],
    );
    assert_eq!(out.status.code(), Some(30));
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0u8; 8 * 512]);
}

#[test]
fn status_and_table_print_dmsetup_lines() {
    let dir = tempfile::tempdir().unwrap();
    let a = image(dir.path(), "a.img", 8, 0);
    let b = image(dir.path(), "b.img", 8, 0);
    let tf = dir.path().join("t");
    std::fs::write(&tf, format!("0 16 striped 2 4 {a} 0 {b} 0\n16 8 zero\n")).unwrap();
    let t = tf.to_str().unwrap();
    let out = dmemu(&["status", "--table", t], b"");
    assert_eq!(
        text(&out.stdout),
        format!("0 16 striped 2 {a} {b} 1 AA\n16 8 zero \n")
    );
    let out = dmemu(&["table", "--table", t], b"");
    assert_eq!(
        text(&out.stdout),
        format!("0 16 striped 2 4 {a} 0 {b} 0\n16 8 zero \n")
    );
}

#[test]
fn message_to_target_without_messages_is_refused() {
    let out = dmemu(&["message", "--table", "-", "0", "hello"], b"0 8 zero\n");
    // EINVAL, "Target type does not support messages" (6.12, tests/fixtures/lifecycle).
    assert_eq!(out.status.code(), Some(22));
}

#[test]
fn unexecuted_target_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let meta = image(dir.path(), "m.img", 16, 0);
    let origin = image(dir.path(), "o.img", 16, 0);
    let table = format!("0 8 era {meta} {origin} 8\n");
    let out = dmemu(&["read", "--table", "-"], table.as_bytes());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("parsed and printed, not executed"));
}

#[test]
fn table_option_takes_text_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "d.img", 16, 0x5a);
    let table = format!("0 8 linear {disk} 8\n8 8 zero");
    let tf = dir.path().join("t");
    std::fs::write(&tf, &table).unwrap();
    let want = format!("0 8 linear {disk} 8\n8 8 zero \n");
    for (arg, stdin) in [
        (table.as_str(), &b""[..]),
        (tf.to_str().unwrap(), &b""[..]),
        ("-", table.as_bytes()),
    ] {
        let out = dmemu(&["table", "--table", arg], stdin);
        assert!(out.status.success(), "{arg}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want, "--table {arg}");
    }
    // Every command with a device spec takes it; text is parsed as a table, not opened.
    let out = dmemu(&["read", "--table", "0 8 linear", "--sectors", "1"], b"");
    assert_eq!(out.status.code(), Some(22), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 1"),
        "{}",
        text(&out.stderr)
    );
    let out = dmemu(&["read", "--table", &table, "--sectors", "8"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, vec![0x5a; 8 * 512]);
    // check and fmt take the same forms as their positional argument.
    let out = dmemu(&["fmt", "0 8   zero"], b"");
    assert_eq!(text(&out.stdout), "0 8 zero \n");
    let out = dmemu(&["check", "0 8 linear"], b"");
    assert_eq!(out.status.code(), Some(22));
}

#[test]
fn table_option_that_is_neither_text_nor_a_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("vg.table");
    let missing = missing.to_str().unwrap();
    let out = dmemu(&["status", "--table", missing], b"");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(missing), "{err}");
    assert!(err.contains("not table text"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    // "zero 0 8" starts with no digit: a path, so the same error, not a parse of text.
    let out = dmemu(&["status", "--table", "zero 0 8"], b"");
    assert!(text(&out.stderr).contains("No such file or directory"));
}
