//! Unit tests of `VerityArgs`: the kernel's checks and words, canonical output.

use super::*;

const ROOT: &str = "d1ff3a5d300334a12a08f6798088f0baee61ce900dbfd848f414fe8208d3d3ca";

fn toks(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn parse(s: &str, len: u64) -> ArgResult<VerityArgs> {
    let t = toks(s);
    VerityArgs::parse(&mut Args::new(&t), SectorCount(len))
}

fn base(extra: &str) -> String {
    format!("1 /d /h 4096 4096 16 1 sha256 {ROOT} 00ff {extra}")
}

fn err(s: &str) -> (Option<usize>, String) {
    let e = parse(s, 128).unwrap_err();
    (e.index, e.reason)
}

#[test]
fn minimal_table_parses_and_prints_back() {
    let a = parse(&base(""), 128).unwrap();
    assert_eq!(a.algorithm, HashAlg::Sha256);
    assert_eq!(a.hash_start, 1);
    assert_eq!(a.salt, vec![0, 0xff]);
    assert_eq!(a.to_string(), base("").trim_end());
}

#[test]
fn dash_salt_and_uppercase_hex_print_canonically() {
    let up = ROOT.to_uppercase();
    let a = parse(&format!("0 /d /h 512 512 8 0 sha256 {up} -"), 8).unwrap();
    assert!(a.salt.is_empty());
    assert_eq!(
        a.to_string(),
        format!("0 /d /h 512 512 8 0 sha256 {ROOT} -")
    );
}

#[test]
fn options_print_in_kernel_order_with_recomputed_count() {
    let a = parse(
        &base("6 Check_At_Most_Once try_verify_in_tasklet ignore_zero_blocks panic_on_error IGNORE_CORRUPTION root_hash_sig_key_desc"),
        128,
    );
    // root_hash_sig_key_desc needs a value: it has none here.
    assert_eq!(
        a.unwrap_err().reason,
        "DM Verity Sig Verification Signature key not specified"
    );
    let a = parse(
        &base("7 Check_At_Most_Once try_verify_in_tasklet ignore_zero_blocks panic_on_error IGNORE_CORRUPTION root_hash_sig_key_desc k:1"),
        128,
    )
    .unwrap();
    assert_eq!(
        a.to_string(),
        base("7 ignore_corruption panic_on_error ignore_zero_blocks check_at_most_once try_verify_in_tasklet root_hash_sig_key_desc k:1")
            .trim_end()
    );
}

#[test]
fn fec_options_print_as_the_kernel_orders_them_and_drop_without_device() {
    let a = parse(
        &base("8 use_fec_from_device /f fec_start 3 fec_blocks 20 fec_roots 2"),
        128,
    )
    .unwrap();
    assert_eq!(
        a.to_string(),
        base("8 use_fec_from_device /f fec_blocks 20 fec_start 3 fec_roots 2").trim_end()
    );
    let a = parse(&base("2 fec_roots 2"), 128).unwrap();
    assert_eq!(a.fec, None);
    assert_eq!(a.to_string(), base("").trim_end());
}

#[test]
fn try_verify_in_tasklet_counts_even_as_another_options_value() {
    // The kernel's first pass looks at every word as an option name.
    let a = parse(&base("2 root_hash_sig_key_desc try_verify_in_tasklet"), 128).unwrap();
    assert!(a.try_verify_in_tasklet);
    assert_eq!(
        a.to_string(),
        base("3 try_verify_in_tasklet root_hash_sig_key_desc try_verify_in_tasklet").trim_end()
    );
}

#[test]
fn positional_errors_use_kernel_words_and_token_index() {
    assert_eq!(err("1 /d /h 4096"), (None, "Not enough arguments".into()));
    let cases = [
        ("2 /d /h 4096 4096 16 1 sha256 R 00", 0, "Invalid version"),
        (
            "1 /d /h 1000 4096 16 1 sha256 R 00",
            3,
            "Invalid data device block size",
        ),
        (
            "1 /d /h 8192 4096 16 1 sha256 R 00",
            3,
            "Invalid data device block size",
        ),
        (
            "1 /d /h 256 4096 16 1 sha256 R 00",
            3,
            "Invalid data device block size",
        ),
        (
            "1 /d /h 4096 3 16 1 sha256 R 00",
            4,
            "Invalid hash device block size",
        ),
        (
            "1 /d /h 4096 4096 x 1 sha256 R 00",
            5,
            "Invalid data blocks",
        ),
        (
            "1 /d /h 4096 4096 9223372036854775807 1 sha256 R 00",
            5,
            "Invalid data blocks",
        ),
        (
            "1 /d /h 4096 4096 15 1 sha256 R 00",
            5,
            "Data device is too small",
        ),
        (
            "1 /d /h 4096 4096 16 -1 sha256 R 00",
            6,
            "Invalid hash start",
        ),
        (
            "1 /d /h 4096 4096 16 1 md4 R 00",
            7,
            "Cannot initialize hash function",
        ),
        (
            "1 /d /h 4096 4096 16 1 sha256 abcd 00",
            8,
            "Invalid root digest",
        ),
        ("1 /d /h 4096 4096 16 1 sha256 R 0", 9, "Invalid salt"),
        ("1 /d /h 4096 4096 16 1 sha256 R 0g", 9, "Invalid salt"),
    ];
    for (s, idx, reason) in cases {
        let s = s.replace(" R ", &format!(" {ROOT} "));
        assert_eq!(err(&s), (Some(idx), reason.to_string()), "{s}");
    }
    let bad_hex = ROOT.replace('d', "x");
    assert_eq!(
        err(&format!("1 /d /h 4096 4096 16 1 sha256 {bad_hex} 00")),
        (Some(8), "Invalid root digest".into())
    );
}

#[test]
fn option_errors_use_kernel_words() {
    let cases = [
        ("16 a", Some(10), "Invalid number of feature args"),
        (
            "3 ignore_corruption",
            Some(10),
            "Invalid number of feature args",
        ),
        ("1 bogus", Some(11), "Unrecognized verity feature request"),
        (
            "2 ignore_corruption restart_on_corruption",
            Some(12),
            "Conflicting error handling parameters",
        ),
        (
            "2 panic_on_error panic_on_error",
            Some(12),
            "Conflicting error handling parameters",
        ),
        ("1 fec_roots", None, "FEC feature arguments require a value"),
        ("2 fec_roots 25", Some(12), "Invalid fec_roots"),
        ("2 fec_roots 1", Some(12), "Invalid fec_roots"),
        ("2 fec_blocks x", Some(12), "Invalid fec_blocks"),
        (
            "2 fec_start 99999999999999999999",
            Some(12),
            "Invalid fec_start",
        ),
        (
            "4 use_fec_from_device a use_fec_from_device b",
            Some(14),
            "FEC device already specified",
        ),
    ];
    for (opts, idx, reason) in cases {
        assert_eq!(err(&base(opts)), (idx, reason.to_string()), "{opts}");
    }
    // The count is checked in the first pass, before the positional arguments.
    assert_eq!(
        err(&format!("7 /d /h 4096 4096 16 1 sha256 {ROOT} 00 99")).1,
        "Invalid number of feature args"
    );
    // ignore + an error mode is no conflict.
    assert!(parse(&base("2 ignore_corruption restart_on_error"), 128).is_ok());
}

#[test]
fn check_at_most_once_refuses_more_than_int_max_blocks() {
    let s = format!("1 /d /h 4096 4096 2147483648 1 sha256 {ROOT} - 1 check_at_most_once");
    assert_eq!(
        parse(&s, 8).unwrap_err().reason,
        "device too large to use check_at_most_once"
    );
}

mod roundtrip {
    use super::*;
    use proptest::prelude::*;

    const WORDS: &[&str] = &[
        "ignore_corruption",
        "restart_on_corruption",
        "panic_on_corruption",
        "restart_on_error",
        "panic_on_error",
        "ignore_zero_blocks",
        "check_at_most_once",
        "try_verify_in_tasklet",
    ];

    proptest! {
        /// Any accepted option list prints canonically, and the canonical text parses to
        /// the same arguments and prints identically (a fixed point).
        #[test]
        fn canonical_output_is_a_fixed_point(
            version in 0u32..=1,
            alg in prop::sample::select(HashAlg::names()),
            dbs_bits in 9u32..=12,
            hbs_bits in 9u32..=14,
            blocks in 1u64..100_000,
            salt in prop::collection::vec(any::<u8>(), 0..40),
            words in prop::collection::vec(prop::sample::select(WORDS), 0..6),
            fec in prop::option::of((1u64..1000, 0u64..1000, 2u8..=24)),
            sig in prop::option::of("[a-z:0-9]{1,12}"),
        ) {
            let alg = HashAlg::from_name(alg).unwrap();
            let root = hash::to_hex(&vec![0x5a; alg.digest_size()]);
            let salt = if salt.is_empty() { "-".to_string() } else { hash::to_hex(&salt) };
            let mut opts: Vec<String> = words.iter().map(|w| w.to_string()).collect();
            // FEC needs equal block sizes and fec_blocks covering data and hash blocks
            // (verity_fec_ctr): at most `blocks` hash blocks, as each holds 2 digests.
            let hbs_bits = if fec.is_some() { dbs_bits } else { hbs_bits };
            if let Some((b, s, r)) = fec {
                opts.extend(["use_fec_from_device".into(), "/f".into(), "fec_blocks".into(),
                    (2 * blocks + b).to_string(), "fec_start".into(), s.to_string(), "fec_roots".into(), r.to_string()]);
            }
            if let Some(k) = sig {
                opts.extend(["root_hash_sig_key_desc".into(), k]);
            }
            let text = format!(
                "{version} /d /h {} {} {blocks} 3 {alg} {root} {salt} {} {}",
                1u32 << dbs_bits, 1u32 << hbs_bits, opts.len(), opts.join(" ")
            );
            let len = blocks << (dbs_bits - 9);
            let Ok(a) = parse(&text, len) else {
                // Conflicting modes are refused; nothing else in this space may be.
                let e = parse(&text, len).unwrap_err().reason;
                prop_assert!(e == "Conflicting error handling parameters" || e == "Digest size too big", "{}", e);
                return Ok(());
            };
            let canon = a.to_string();
            let b = parse(&canon, len).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(canon, b.to_string());
        }
    }
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary superblock bytes decode or fail with an error, never panic.
        #[test]
        fn superblock_decode_never_panics(mut b in prop::collection::vec(any::<u8>(), 0..600), magic in any::<bool>()) {
            if magic && b.len() >= 12 {
                b[..8].copy_from_slice(superblock::MAGIC);
                b[8..12].copy_from_slice(&1u32.to_le_bytes());
            }
            let _ = Superblock::decode(&b, 0);
        }

        /// Arbitrary geometry inputs lay out a tree or fail with the kernel's words.
        #[test]
        fn geometry_never_panics(
            version in 0u32..=1,
            dbs in any::<u32>(),
            hbs in any::<u32>(),
            ds in 0usize..100,
            blocks in any::<u64>(),
            start in any::<u64>(),
        ) {
            if let Ok(g) = Geometry::new(version, dbs, hbs, ds, blocks, start) {
                prop_assert!(g.levels() <= hash_tree::MAX_LEVELS);
                if blocks > 0 && g.levels() > 0 {
                    let (hb, off) = g.hash_at(blocks - 1, 0);
                    prop_assert!(hb < g.hash_end);
                    prop_assert!(off < hbs as usize);
                }
            }
        }

        /// Arbitrary tokens after a valid prefix parse or fail, never panic.
        #[test]
        fn option_parsing_never_panics(words in prop::collection::vec("[a-z_0-9]{0,24}", 0..20)) {
            let t = format!("{} {}", base(""), words.join(" "));
            let _ = parse(&t, 128);
        }
    }
}
