//! Argument tests for snapshot, snapshot-merge and snapshot-origin: every `ti->error` the
//! parser can raise, with the token it blames, and the canonical output.

use super::*;
use crate::table::args::ArgError;
use crate::table::lexer::split_args;

fn tokens(s: &str) -> Vec<String> {
    split_args(s.as_bytes())
        .into_iter()
        .map(|t| String::from_utf8(t).unwrap())
        .collect()
}

fn snap(s: &str, kind: SnapshotKind) -> Result<SnapshotArgs, ArgError> {
    let t = tokens(s);
    SnapshotArgs::parse(&mut Args::new(&t), kind)
}

fn ok(s: &str) -> String {
    snap(s, SnapshotKind::Snapshot).unwrap().to_string()
}

/// The error's reason and the text of the token it names.
fn err(s: &str, kind: SnapshotKind) -> (String, Option<String>) {
    let t = tokens(s);
    let e = SnapshotArgs::parse(&mut Args::new(&t), kind).unwrap_err();
    (e.reason, e.index.map(|i| t[i].clone()))
}

fn snap_err(s: &str) -> (String, Option<String>) {
    err(s, SnapshotKind::Snapshot)
}

#[test]
fn snapshot_store_type_prints_upper_case_with_overflow_suffix() {
    assert_eq!(ok("7:0 7:1 P 8"), "7:0 7:1 P 8");
    assert_eq!(ok("7:0 7:1 p 8"), "7:0 7:1 P 8");
    assert_eq!(ok("7:0 7:1 po 16"), "7:0 7:1 PO 16");
    assert_eq!(ok("7:0 7:1 pOverflow 16"), "7:0 7:1 PO 16");
    assert_eq!(ok("7:0 7:1 n 32"), "7:0 7:1 N 32");
    assert_eq!(ok("7:0 7:1 Nanything 32"), "7:0 7:1 N 32");
}

#[test]
fn snapshot_chunk_accepts_kstrtouint_forms_and_zero_for_persistent() {
    assert_eq!(ok("a b P +64"), "a b P 64");
    assert_eq!(ok("a b P 0"), "a b P 0");
    assert_eq!(ok("a b P 2097152"), "a b P 2097152");
}

#[test]
fn snapshot_features_print_counted_in_fixed_order() {
    assert_eq!(ok("a b P 8 0"), "a b P 8");
    assert_eq!(
        ok("a b P 8 1 DISCARD_ZEROES_COW"),
        "a b P 8 1 discard_zeroes_cow"
    );
    assert_eq!(
        ok("a b P 8 2 discard_passdown_origin discard_zeroes_cow"),
        "a b P 8 2 discard_zeroes_cow discard_passdown_origin"
    );
    assert_eq!(
        ok("a b P 8 2 discard_zeroes_cow discard_zeroes_cow"),
        "a b P 8 1 discard_zeroes_cow"
    );
}

#[test]
fn snapshot_tokens_after_the_feature_group_are_ignored_like_the_kernel() {
    assert_eq!(ok("a b P 8 0 extra words"), "a b P 8");
}

#[test]
fn snapshot_with_fewer_than_four_args_is_refused() {
    assert_eq!(
        snap_err("a b P"),
        ("requires 4 or more arguments".into(), None)
    );
    assert_eq!(snap_err(""), ("requires 4 or more arguments".into(), None));
}

#[test]
fn snapshot_bad_feature_count_is_refused_at_the_count() {
    let want = |t: &str| {
        (
            "Invalid number of feature arguments".to_string(),
            Some(t.to_string()),
        )
    };
    assert_eq!(snap_err("a b P 8 3 x y z"), want("3"));
    assert_eq!(snap_err("a b P 8 2 discard_zeroes_cow"), want("2"));
    assert_eq!(snap_err("a b P 8 one"), want("one"));
    assert_eq!(snap_err("a b P 8 -1"), want("-1"));
}

#[test]
fn snapshot_unknown_feature_is_refused_at_the_word() {
    assert_eq!(
        snap_err("a b P 8 1 discard"),
        (
            "Unrecognised feature requested".into(),
            Some("discard".into())
        )
    );
}

#[test]
fn snapshot_passdown_without_zeroes_is_refused_even_after_an_unknown_word() {
    let want = (
        "discard_passdown_origin feature depends on discard_zeroes_cow".to_string(),
        None,
    );
    assert_eq!(snap_err("a b P 8 1 discard_passdown_origin"), want);
    assert_eq!(snap_err("a b P 8 2 discard_passdown_origin bogus"), want);
}

#[test]
fn snapshot_features_are_checked_before_the_devices() {
    assert_eq!(
        snap_err("a a P 8 1 bogus").0,
        "Unrecognised feature requested"
    );
}

#[test]
fn snapshot_cow_same_as_origin_is_refused() {
    assert_eq!(
        snap_err("7:0 7:0 P 8"),
        (
            "COW device cannot be the same as origin device".into(),
            Some("7:0".into())
        )
    );
}

#[test]
fn snapshot_store_errors_carry_the_kernel_words_then_the_store_reason() {
    let cases = [
        ("a b X 8", "Exception store type is not P or N", "X"),
        ("a b PX 8", "Unsupported persistent store option", "PX"),
        ("a b P eight", "Invalid chunk size", "eight"),
        ("a b P -8", "Invalid chunk size", "-8"),
        ("a b P 4294967296", "Invalid chunk size", "4294967296"),
        ("a b P 12", "Chunk size is not a power of 2", "12"),
        ("a b N 4194304", "Chunk size is too high", "4194304"),
    ];
    for (line, why, token) in cases {
        assert_eq!(
            snap_err(line),
            (format!("{STORE_ERROR}: {why}"), Some(token.to_string())),
            "{line}"
        );
    }
}

#[test]
fn snapshot_store_type_is_checked_before_the_chunk_size() {
    assert!(snap_err("a b Q x")
        .0
        .ends_with("Exception store type is not P or N"));
}

#[test]
fn transient_snapshot_needs_a_chunk_size() {
    assert_eq!(
        snap_err("a b N 0"),
        ("Chunk size not set".into(), Some("0".into()))
    );
}

#[test]
fn snapshot_merge_refuses_a_transient_store() {
    assert_eq!(
        err("a b N 8", SnapshotKind::Merge),
        (
            "Snapshot exception store does not support snapshot-merge.".into(),
            Some("N".into())
        )
    );
    assert_eq!(
        snap("a b PO 8", SnapshotKind::Merge).unwrap().to_string(),
        "a b PO 8"
    );
}

#[test]
fn snapshot_origin_takes_exactly_one_device() {
    let parse = |s: &str| {
        let t = tokens(s);
        OriginArgs::parse(&mut Args::new(&t))
    };
    assert_eq!(parse("253:4").unwrap().to_string(), "253:4");
    for bad in ["", "a b"] {
        assert_eq!(
            parse(bad).unwrap_err().reason,
            "origin: incorrect number of arguments"
        );
    }
}

#[test]
fn snapshot_table_errors_name_line_token_type_and_kernel_words() {
    let e = crate::table::Table::parse("0 8 zero\n8 8 snapshot a b P 12\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "line 2: token 7 \"12\": snapshot: Couldn't create exception store: \
         Chunk size is not a power of 2"
    );
    let e = crate::table::Table::parse("0 8 snapshot-merge a b N 8")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "line 1: token 6 \"N\": snapshot-merge: \
         Snapshot exception store does not support snapshot-merge."
    );
}

mod roundtrip {
    use super::*;
    use proptest::prelude::*;

    fn device() -> impl Strategy<Value = DeviceRef> {
        prop_oneof![
            (0u32..4096, 0u32..1_048_576).prop_map(|(a, b)| DeviceRef(format!("{a}:{b}"))),
            "/dev/[a-z]{1,8}".prop_map(DeviceRef),
            "[a-z]{1,4} [a-z]{1,4}".prop_map(DeviceRef),
        ]
    }

    fn args() -> impl Strategy<Value = SnapshotArgs> {
        let store = prop_oneof![
            Just(StoreType::Persistent),
            Just(StoreType::PersistentOverflow),
            Just(StoreType::Transient),
        ];
        let discard = prop_oneof![
            Just(SnapshotDiscard::Off),
            Just(SnapshotDiscard::ZeroesCow),
            Just(SnapshotDiscard::ZeroesCowPassdownOrigin),
        ];
        (device(), device(), store, 0u32..=21, any::<bool>(), discard)
            .prop_filter("origin and COW differ", |(o, c, ..)| o != c)
            .prop_map(|(origin, cow, store, shift, zero, discard)| SnapshotArgs {
                origin,
                cow,
                store,
                chunk_size: if zero && store != StoreType::Transient {
                    0
                } else {
                    1 << shift
                },
                discard,
            })
    }

    proptest! {
        #[test]
        fn snapshot_args_parse_back_from_their_canonical_text(a in args()) {
            let t = tokens(&a.to_string());
            for kind in [SnapshotKind::Snapshot, SnapshotKind::Merge] {
                if kind == SnapshotKind::Merge && a.store == StoreType::Transient {
                    continue;
                }
                prop_assert_eq!(&SnapshotArgs::parse(&mut Args::new(&t), kind).unwrap(), &a);
            }
        }

        #[test]
        fn snapshot_origin_args_parse_back_from_their_canonical_text(d in device()) {
            let a = OriginArgs { origin: d };
            let t = tokens(&a.to_string());
            prop_assert_eq!(OriginArgs::parse(&mut Args::new(&t)).unwrap(), a);
        }

        #[test]
        fn snapshot_parse_never_panics_on_arbitrary_tokens(
            t in proptest::collection::vec("[a-zA-Z0-9_:+-]{0,12}", 0..10),
        ) {
            let _ = SnapshotArgs::parse(&mut Args::new(&t), SnapshotKind::Snapshot);
            let _ = OriginArgs::parse(&mut Args::new(&t));
        }
    }
}
