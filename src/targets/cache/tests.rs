//! Unit tests: table parsing with the kernel's words.

use super::*;
use crate::table::parse_table;
use crate::targets::TargetSpec;

fn parse(s: &str) -> crate::error::Result<crate::table::Table> {
    parse_table(s.as_bytes())
}

fn table_err(params: &str) -> String {
    parse(&format!("0 16384 cache {params}"))
        .unwrap_err()
        .to_string()
}

#[test]
fn kernel_tables_parse_and_print_back_unchanged() {
    for p in [
        "254:0 254:16 254:32 128 2 writeback metadata2 smq 0",
        "254:0 254:16 254:32 128 1 writethrough smq 2 migration_threshold 0",
        "a b c 64 0 mq 4 random_threshold 4 migration_threshold 100",
        "a b c 128 3 passthrough metadata2 no_discard_passdown cleaner 0 trailing",
    ] {
        let t = parse(&format!("0 16384 cache {p}")).unwrap();
        assert_eq!(t.to_string(), format!("0 16384 cache {p}\n"));
    }
}

#[test]
fn features_select_mode_and_format() {
    let t =
        parse("0 8 cache m c o 128 3 WriteThrough metadata2 no_discard_passdown smq 0").unwrap();
    let TargetSpec::Cache(a) = &t.lines[0].spec else {
        panic!("not a cache line")
    };
    assert_eq!(a.io_mode, IoMode::Writethrough);
    assert_eq!(a.metadata_version, 2);
    assert!(!a.discard_passdown);
    assert_eq!(a.policy, "smq");
}

#[test]
fn bad_tables_are_refused_with_the_kernels_words() {
    for (p, words) in [
        ("m c", "Insufficient args"),
        ("m c o", "Insufficient args"),
        ("m c o 100 0 smq 0", "Invalid data block size"),
        ("m c o 32 0 smq 0", "Invalid data block size"),
        ("m c o x 0 smq 0", "Invalid data block size"),
        ("m c o 4194304 0 smq 0", "Invalid data block size"),
        (
            "m c o 128 4 a b c d smq 0",
            "Invalid number of cache feature arguments",
        ),
        (
            "m c o 128 1 fast smq 0",
            "Unrecognised cache feature requested",
        ),
        (
            "m c o 128 2 writeback writethrough smq 0",
            "Duplicate cache io_mode features requested",
        ),
        ("m c o 128 0", "Insufficient args"),
        ("m c o 128 0 smq", "Invalid number of policy arguments"),
        (
            "m c o 128 0 smq 2 migration_threshold",
            "Invalid number of policy arguments",
        ),
    ] {
        let e = table_err(p);
        assert!(e.contains(words), "{p}: {e}");
    }
}
