//! Argument tests for thin-pool and thin: every `ti->error` the parser can raise, with the
//! token it blames, and the canonical output (thin-pool's trailing space).

use super::*;
use crate::table::args::ArgError;
use crate::table::lexer::split_args;

fn tokens(s: &str) -> Vec<String> {
    split_args(s.as_bytes())
        .into_iter()
        .map(|t| String::from_utf8(t).unwrap())
        .collect()
}

fn pool(s: &str) -> Result<ThinPoolArgs, ArgError> {
    let t = tokens(s);
    ThinPoolArgs::parse(&mut Args::new(&t))
}

fn thin(s: &str) -> Result<ThinArgs, ArgError> {
    let t = tokens(s);
    ThinArgs::parse(&mut Args::new(&t))
}

/// The error's reason and the text of the token it names.
fn blame(s: &str, e: ArgError) -> (String, Option<String>) {
    let t = tokens(s);
    (e.reason, e.index.map(|i| t[i].clone()))
}

fn pool_err(s: &str) -> (String, Option<String>) {
    blame(s, pool(s).unwrap_err())
}

fn thin_err(s: &str) -> (String, Option<String>) {
    blame(s, thin(s).unwrap_err())
}

#[test]
fn thin_pool_without_features_ends_in_zero_and_a_space() {
    assert_eq!(
        pool("7:0 7:1 128 0").unwrap().to_string(),
        "7:0 7:1 128 0 0 "
    );
    assert_eq!(
        pool("7:0 7:1 +256 +10 0").unwrap().to_string(),
        "7:0 7:1 256 10 0 "
    );
}

#[test]
fn thin_pool_features_print_in_kernel_order_each_followed_by_a_space() {
    assert_eq!(
        pool("m d 128 0 4 error_if_no_space READ_ONLY ignore_discard skip_block_zeroing")
            .unwrap()
            .to_string(),
        "m d 128 0 4 skip_block_zeroing ignore_discard read_only error_if_no_space "
    );
    assert_eq!(
        pool("m d 1024 5 2 no_discard_passdown no_discard_passdown")
            .unwrap()
            .to_string(),
        "m d 1024 5 1 no_discard_passdown "
    );
}

#[test]
fn thin_pool_tokens_after_the_feature_group_are_ignored_like_the_kernel() {
    assert_eq!(
        pool("m d 128 0 0 junk").unwrap().to_string(),
        "m d 128 0 0 "
    );
}

#[test]
fn thin_pool_with_fewer_than_four_args_is_refused() {
    assert_eq!(pool_err("m d 128"), ("Invalid argument count".into(), None));
}

#[test]
fn thin_pool_same_metadata_and_data_string_is_refused_first() {
    assert_eq!(
        pool_err("m m 0 x"),
        (
            "Error setting metadata or data device".into(),
            Some("m".into())
        )
    );
}

#[test]
fn thin_pool_bad_feature_count_is_refused_at_the_count() {
    let want = |t: &str| {
        (
            "Invalid number of pool feature arguments".to_string(),
            Some(t.to_string()),
        )
    };
    assert_eq!(pool_err("m d 128 0 5 a b c d e"), want("5"));
    assert_eq!(pool_err("m d 128 0 2 read_only"), want("2"));
    assert_eq!(pool_err("m d 128 0 read_only"), want("read_only"));
}

#[test]
fn thin_pool_unknown_feature_is_refused_at_the_word() {
    assert_eq!(
        pool_err("m d 128 0 2 read_only discard"),
        (
            "Unrecognised pool feature requested".into(),
            Some("discard".into())
        )
    );
}

#[test]
fn thin_pool_features_are_checked_before_the_block_size() {
    assert_eq!(
        pool_err("m d 7 0 1 bogus").0,
        "Unrecognised pool feature requested"
    );
}

#[test]
fn thin_pool_block_size_outside_64k_to_1g_or_not_a_multiple_of_64k_is_refused() {
    for bad in [
        "0",
        "64",
        "192",
        "2097280",
        "4194304",
        "x",
        "-128",
        "18446744073709551616",
    ] {
        let line = format!("m d {bad} 0");
        assert_eq!(
            pool_err(&line),
            ("Invalid block size".into(), Some(bad.to_string())),
            "{line}"
        );
    }
    assert!(pool("m d 2097152 0").is_ok());
    assert!(pool("m d 384 0").is_ok());
}

#[test]
fn thin_pool_bad_low_water_mark_is_refused() {
    for bad in ["-1", "1k", "18446744073709551616"] {
        let line = format!("m d 128 {bad}");
        assert_eq!(
            pool_err(&line),
            ("Invalid low water mark".into(), Some(bad.to_string()))
        );
    }
}

#[test]
fn thin_prints_pool_id_and_optional_external_origin() {
    assert_eq!(thin("253:0 0").unwrap().to_string(), "253:0 0");
    assert_eq!(
        thin("253:0 +16777215").unwrap().to_string(),
        "253:0 16777215"
    );
    assert_eq!(thin("253:0 7 7:3").unwrap().to_string(), "253:0 7 7:3");
}

#[test]
fn thin_with_wrong_argument_count_is_refused() {
    for bad in ["", "p", "p 1 o x"] {
        assert_eq!(thin_err(bad), ("Invalid argument count".into(), None));
    }
}

#[test]
fn thin_origin_same_as_pool_is_refused_before_the_id() {
    assert_eq!(
        thin_err("p x p"),
        ("Error setting origin device".into(), Some("p".into()))
    );
}

#[test]
fn thin_device_id_over_24_bits_or_not_a_number_is_refused() {
    for bad in ["16777216", "-1", "0x10", "id"] {
        let line = format!("p {bad}");
        assert_eq!(
            thin_err(&line),
            ("Invalid device id".into(), Some(bad.to_string()))
        );
    }
}

mod roundtrip {
    use super::*;
    use proptest::prelude::*;

    fn device() -> impl Strategy<Value = DeviceRef> {
        prop_oneof![
            (0u32..4096, 0u32..1_048_576).prop_map(|(a, b)| DeviceRef(format!("{a}:{b}"))),
            "/dev/mapper/[a-z]{1,8}".prop_map(DeviceRef),
            "[a-z]{1,4}\\\\[a-z]{1,4}".prop_map(DeviceRef),
        ]
    }

    fn pool_args() -> impl Strategy<Value = ThinPoolArgs> {
        let features = proptest::array::uniform5(any::<bool>()).prop_map(|f| PoolFeatures {
            skip_block_zeroing: f[0],
            ignore_discard: f[1],
            no_discard_passdown: f[2],
            read_only: f[3],
            error_if_no_space: f[4],
        });
        (device(), device(), 1u64..=16384, any::<u64>(), features)
            .prop_filter("metadata and data differ", |(m, d, ..)| m != d)
            .prop_map(
                |(metadata, data, blocks, low_water_blocks, features)| ThinPoolArgs {
                    metadata,
                    data,
                    block_size: blocks * MIN_BLOCK_SECTORS,
                    low_water_blocks,
                    features,
                },
            )
            // The kernel's group takes at most 4 feature words.
            .prop_filter("at most 4 features", |a| a.features.words().count() <= 4)
    }

    fn thin_args() -> impl Strategy<Value = ThinArgs> {
        (
            device(),
            0u32..=(1 << 24) - 1,
            proptest::option::of(device()),
        )
            .prop_filter("origin is not the pool", |(p, _, o)| o.as_ref() != Some(p))
            .prop_map(|(pool, dev_id, external_origin)| ThinArgs {
                pool,
                dev_id,
                external_origin,
            })
    }

    proptest! {
        #[test]
        fn thin_pool_args_parse_back_from_their_canonical_text(a in pool_args()) {
            let t = tokens(&a.to_string());
            prop_assert_eq!(ThinPoolArgs::parse(&mut Args::new(&t)).unwrap(), a);
        }

        #[test]
        fn thin_args_parse_back_from_their_canonical_text(a in thin_args()) {
            let t = tokens(&a.to_string());
            prop_assert_eq!(ThinArgs::parse(&mut Args::new(&t)).unwrap(), a);
        }

        #[test]
        fn thin_parse_never_panics_on_arbitrary_tokens(
            t in proptest::collection::vec("[a-zA-Z0-9_:+-]{0,12}", 0..10),
        ) {
            let _ = ThinPoolArgs::parse(&mut Args::new(&t));
            let _ = ThinArgs::parse(&mut Args::new(&t));
        }
    }
}
