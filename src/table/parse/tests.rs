use super::*;
use crate::targets::Keys;

fn err(text: &str) -> String {
    parse_table(text.as_bytes()).unwrap_err().to_string()
}

fn roundtrip(text: &str) {
    let t = parse_table(text.as_bytes()).unwrap();
    assert_eq!(t.to_text(Keys::Shown), text);
}

#[test]
fn canonical_lines_round_trip() {
    roundtrip("0 2048 linear /dev/sda 0\n");
    roundtrip("0 2048 striped 2 128 8:16 0 8:32 0\n");
    roundtrip("0 2048 zero \n");
    roundtrip("0 2048 error \n");
    roundtrip("0 100 linear a 0\n100 50 zero \n");
    roundtrip("0 2048 cache 8:1 8:2 8:3 512 1 writethrough smq 0\n");
    roundtrip("0 2048 linear /path/with\\ space 7\n");
}

#[test]
fn comments_and_blank_lines_are_skipped() {
    let t = parse_table(b"# header\n\n  0 8 zero\n8 8 linear d 0 # trailing comment\n").unwrap();
    assert_eq!(t.lines.len(), 2);
    assert_eq!(t.to_text(Keys::Shown), "0 8 zero \n8 8 linear d 0\n");
}

#[test]
fn gap_is_refused_with_line_number() {
    assert_eq!(
        err("0 8 zero\n9 8 zero\n"),
        "line 2: token 1 \"9\": zero: Gap in table"
    );
}

#[test]
fn first_line_must_start_at_zero() {
    assert!(err("1 8 zero").contains("Gap in table"));
}

#[test]
fn zero_length_is_refused() {
    assert!(err("0 0 zero").contains("zero-length target"));
}

#[test]
fn overflow_is_refused() {
    assert!(err("0 18014398509481983 zero\n18014398509481983 1 zero").contains("too large device"));
    // dmsetup's sscanf saturates an overflowing number: the kernel then finds it too large.
    assert!(err("0 99999999999999999999 zero").contains("too large device"));
    assert!(err("0 -8 zero").contains("too large device"));
}

#[test]
fn unknown_target_is_refused() {
    assert_eq!(
        err("0 8 frobnicate a b"),
        "line 1: frobnicate: unknown target type"
    );
}

#[test]
fn linear_errors_use_kernel_words() {
    assert_eq!(
        err("0 8 linear /dev/a x"),
        "line 1: token 5 \"x\": linear: Invalid device sector"
    );
    assert_eq!(
        err("0 8 linear /dev/a"),
        "line 1: linear: Invalid argument count"
    );
}

#[test]
fn striped_checks_geometry() {
    assert!(err("0 100 striped 3 8 a 0 b 0 c 0").contains("not divisible by number of stripes"));
    assert!(err("0 96 striped 3 7 a 0 b 0 c 0").contains("not divisible by chunk size"));
    assert!(err("0 96 striped 3 8 a 0 b 0").contains("Not enough destinations"));
    assert!(err("0 96 striped 0 8").contains("Invalid stripe count"));
    assert!(err("0 96 striped 2 0 a 0 b 0").contains("Invalid chunk_size"));
}

#[test]
fn trailing_escape_is_refused() {
    assert!(err("0 8 linear a\\").contains("backslash escape at end of line"));
}

#[test]
fn non_utf8_is_refused() {
    let e = parse_table(b"0 8 linear \xff 0").unwrap_err().to_string();
    assert_eq!(e, "line 1: not valid UTF-8 at byte 11");
}

#[test]
fn singleton_must_be_alone() {
    let root = "00".repeat(32);
    let e = err(&format!(
        "0 8 verity 1 a b 4096 4096 1 0 sha256 {root} -
8 8 zero"
    ));
    assert!(
        e.ends_with("target type verity must appear alone in table"),
        "{e}"
    );
}

#[test]
fn missing_fields_are_refused() {
    assert!(err("0 8").contains("Invalid format"));
}

#[test]
fn zero_takes_no_arguments() {
    assert!(err("0 8 zero x").contains("No arguments required"));
}
