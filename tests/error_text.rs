//! Error text bounds (issue 13): whatever a table holds, an error message quotes a token by
//! at most its first 64 bytes (then `... (N bytes)`), and no message carries a raw control
//! byte (C0, DEL, C1). Every table line the 6.12 kernel loaded (tests/fixtures/kernel-tables)
//! is fed back with each of its tokens in turn replaced by a 10 KiB token holding control
//! bytes, through the library and through the `dmemu` command.

mod cli_support;
use cli_support::dmemu;

use dmemu::table::Table;

const CORPUS: &str = include_str!("fixtures/kernel-tables/corpus.txt");
const GRAMMAR: &str = include_str!("fixtures/kernel-tables/grammar.txt");

/// 10 KiB: an escape sequence, DEL, a C1 control, a newline-free body.
fn nasty() -> String {
    format!("\x1b[2J\x7f\u{9b}{}\x07end", "a".repeat(10 * 1024))
}

/// The longest message any such table may produce: the line and token prefix, one quoted
/// token (64 bytes, escapes at most 4x), the reason in the kernel's words.
const MAX_MESSAGE: usize = 700;

fn lines() -> Vec<String> {
    CORPUS
        .lines()
        .chain(GRAMMAR.lines())
        .filter_map(|l| l.strip_prefix("@@input "))
        .map(str::to_string)
        .collect()
}

fn bad_message(m: &str) -> Option<String> {
    if m.chars().any(char::is_control) {
        return Some(format!("raw control character: {m:?}"));
    }
    if m.len() > MAX_MESSAGE {
        return Some(format!("{} bytes: {}...", m.len(), &m[..200]));
    }
    None
}

#[test]
fn every_token_of_every_kernel_table_line_replaced_by_a_long_nasty_token_errs_boundedly() {
    let long = nasty();
    let mut failures = Vec::new();
    let mut tried = 0;
    for line in lines() {
        let tokens: Vec<&str> = line.split(' ').collect();
        for i in 0..tokens.len() {
            let mut t = tokens.clone();
            t[i] = &long;
            let text = format!("{}\n", t.join(" "));
            tried += 1;
            if let Err(e) = Table::parse(&text) {
                if let Some(why) = bad_message(&e.to_string()) {
                    failures.push(format!("{line:?} token {}: {why}", i + 1));
                }
            }
        }
    }
    assert!(tried > 2000, "{tried}");
    failures.dedup();
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_command_prints_bounded_escaped_errors_for_a_10_kib_token() {
    let long = nasty();
    for table in [
        format!("0 8 {long} 7:0 0\n"),
        format!("0 8 linear 7:0 {long}\n"),
        format!("0 8 crypt {long} - 0 7:0 0\n"),
        format!("0 8 crypt aes-cbc-essiv:{long} - 0 7:0 0\n"),
        format!("0 8 verity 1 7:0 7:1 4096 4096 1 0 {long} 00 -\n"),
        format!("0 8 thin-pool 7:0 7:1 128 0 1 {long}\n"),
        format!("{long} 8 zero\n"),
    ] {
        let out = dmemu(&["check", "-"], table.as_bytes());
        assert_eq!(out.status.code(), Some(22), "{table:.80}");
        let err = String::from_utf8(out.stderr).unwrap();
        let err = err.strip_suffix('\n').unwrap_or(&err);
        assert!(!err.contains('\n'), "{err:.300}");
        if let Some(why) = bad_message(err) {
            panic!("{table:.80}: {why}");
        }
        assert!(err.contains("... (") || err.contains("bytes"), "{err}");
    }
    // A device path of 10 KiB: the command tries to open it, and the OS's ENAMETOOLONG is
    // the status; the path in the message is clipped.
    let out = dmemu(
        &["read", "--table", "-"],
        format!("0 8 linear {long} 0\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(36));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(bad_message(err.trim_end()), None);
    assert!(
        err.contains("... (102") && err.contains("File name too long"),
        "{err}"
    );
}
