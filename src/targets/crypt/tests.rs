//! Tests of crypt argument parsing and canonical output (the target's behaviour is in
//! io_tests.rs; kernel-made vectors in tests/crypt_vectors.rs).

use super::*;
use crate::table::parse_line_params;
use crate::targets::{Keys, TargetSpec};

pub(super) const KEY256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                      202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

pub(super) fn parse(len: u64, params: &str) -> crate::Result<CryptArgs> {
    match parse_line_params("crypt", SectorCount(len), params)? {
        TargetSpec::Crypt(a) => Ok(a),
        other => panic!("not crypt: {other:?}"),
    }
}

fn reason(len: u64, params: &str) -> String {
    match parse(len, params) {
        Ok(a) => panic!("{params:?} parsed: {a}"),
        Err(e) => e.to_string(),
    }
}

fn shown(a: &CryptArgs) -> String {
    let mut s = String::new();
    a.write(&mut s, Keys::Shown).unwrap();
    s
}

#[test]
fn crypt_canonical_table_round_trips_with_keys_shown() {
    let t = format!("aes-xts-plain64 {KEY256} 0 /dev/vdb 32768 1 sector_size:4096");
    assert_eq!(shown(&parse(8, &t).unwrap()), t);
}

#[test]
fn crypt_key_prints_as_zeros_of_same_length_by_default() {
    let a = parse(
        8,
        &format!("aes-xts-plain64 {} 0 /dev/vdb 0", KEY256.to_uppercase()),
    )
    .unwrap();
    assert_eq!(
        a.to_string(),
        format!("aes-xts-plain64 {} 0 /dev/vdb 0", "0".repeat(128))
    );
    assert_eq!(shown(&a), format!("aes-xts-plain64 {KEY256} 0 /dev/vdb 0"));
}

#[test]
fn crypt_options_print_in_kernel_order_with_recomputed_count() {
    // cryptsetup's order in, the kernel's crypt_status order out.
    let a = parse(
        8,
        "aes-cbc-essiv:sha256 000102030405060708090a0b0c0d0e0f 8 d 0 9 ALLOW_DISCARDS \
         same_cpu_crypt submit_from_crypt_cpus no_read_workqueue no_write_workqueue \
         iv_large_sectors high_priority sector_size:4096 integrity_key_size:32",
    )
    .unwrap();
    assert_eq!(
        a.to_string(),
        format!(
            "aes-cbc-essiv:sha256 {} 8 d 0 9 allow_discards same_cpu_crypt high_priority \
             submit_from_crypt_cpus no_read_workqueue no_write_workqueue sector_size:4096 \
             iv_large_sectors integrity_key_size:32",
            "0".repeat(32)
        )
    );
}

#[test]
fn crypt_sector_size_512_and_duplicate_flags_print_once_or_not_at_all() {
    let a = parse(8, "aes-ecb 000102030405060708090a0b0c0d0e0f 0 d 0 3 sector_size:512 allow_discards allow_discards").unwrap();
    assert!(a.to_string().ends_with(" 0 d 0 1 allow_discards"));
}

#[test]
fn crypt_keyring_key_is_always_shown_and_canonicalised() {
    let a = parse(8, "capi:xts(aes)-plain64 :064:logon:cryptsetup:abc 0 d 0").unwrap();
    assert_eq!(
        a.to_string(),
        "capi:xts(aes)-plain64 :64:logon:cryptsetup:abc 0 d 0"
    );
}

#[test]
fn crypt_integrity_option_is_parsed_and_printed_as_given() {
    let a = parse(
        8,
        &format!(
            "capi:gcm(aes)-random {} 0 d 0 1 integrity:28:AEAD",
            &KEY256[..64]
        ),
    )
    .unwrap();
    assert_eq!(a.options.integrity.as_ref().unwrap().tag_size, 28);
    assert!(a.to_string().ends_with(" 1 integrity:28:AEAD"));
}

#[test]
fn crypt_legacy_spec_defaults_to_cbc_plain_and_prints_as_given() {
    let a = parse(8, "aes 000102030405060708090a0b0c0d0e0f 0 d 0").unwrap();
    assert_eq!(a.cipher.iv, Some(IvMode::Plain));
    assert!(matches!(
        &a.cipher.transform,
        Transform::Block {
            mode: ChainMode::Cbc,
            ..
        }
    ));
    assert!(a.to_string().starts_with("aes 0000"));
}

#[test]
fn crypt_ecb_drops_any_iv_mode_like_the_kernel() {
    let a = parse(8, "aes-ecb-whatever 000102030405060708090a0b0c0d0e0f 0 d 0").unwrap();
    assert_eq!(a.cipher.iv, None);
}

#[test]
fn crypt_capi_spec_takes_ivopts_after_last_colon_and_ivmode_after_last_dash() {
    let a = parse(
        8,
        "capi:cbc(aes)-essiv:sha256 000102030405060708090a0b0c0d0e0f 0 d 0",
    )
    .unwrap();
    assert_eq!(a.cipher.iv, Some(IvMode::Essiv));
    assert_eq!(
        a.cipher.transform,
        Transform::Block {
            mode: ChainMode::Cbc,
            cipher: "aes".into(),
            essiv: Some("sha256".into())
        }
    );
    let lmk = parse(
        8,
        &format!("capi:cbc(aes)-lmk {} 0 d 0", "ab".repeat(64 * 16)),
    )
    .unwrap();
    assert_eq!(lmk.cipher.keycount, 64);
}

#[test]
fn crypt_cipher_null_takes_the_empty_key() {
    let a = parse(8, "cipher_null-ecb - 0 d 0").unwrap();
    assert_eq!(a.key, CryptKey::Empty);
    // dmsetup zeroes the key token in place, `-` included (kernel corpus case crypt-null).
    assert_eq!(a.to_string(), "cipher_null-ecb 0 0 d 0");
    let mut shown = String::new();
    a.write(&mut shown, crate::Keys::Shown).unwrap();
    assert_eq!(shown, "cipher_null-ecb - 0 d 0");
}

#[test]
fn crypt_unimplemented_kernel_cipher_parses_and_prints_back() {
    let t = format!("serpent-xts-plain64 {} 0 d 0", "0".repeat(128));
    assert_eq!(parse(8, &t).unwrap().to_string(), t);
}

#[test]
fn crypt_debug_output_never_contains_the_key() {
    let a = parse(8, &format!("aes-xts-plain64 {KEY256} 0 d 0")).unwrap();
    let dbg = format!("{a:?}");
    assert!(!dbg.contains("0405060708"), "{dbg}");
    assert!(dbg.contains("64 bytes hidden"));
}

#[test]
fn crypt_bad_input_is_refused_with_kernel_words() {
    let k16 = "000102030405060708090a0b0c0d0e0f";
    let cases: &[(u64, String, &str)] = &[
        (8, "aes-xts-plain64 00 0 d".into(), "Not enough arguments"),
        (
            8,
            format!("aes(x)-cbc-plain {k16} 0 d 0"),
            "Bad cipher specification",
        ),
        (
            8,
            format!("aes:3-cbc-plain {k16} 0 d 0"),
            "Bad cipher key count specification",
        ),
        (
            8,
            format!("aes:0-cbc-plain {k16} 0 d 0"),
            "Bad cipher key count specification",
        ),
        (
            8,
            format!("aes:2x-cbc-plain {k16} 0 d 0"),
            "Bad cipher key count specification",
        ),
        (8, format!("aes-cbc {k16} 0 d 0"), "IV mechanism required"),
        (
            8,
            format!("aes-cbc-essiv {k16} 0 d 0"),
            "Digest algorithm missing for ESSIV mode",
        ),
        (8, format!("aes-cbc-bogus {k16} 0 d 0"), "Invalid IV mode"),
        (
            8,
            format!("rot13-cbc-plain {k16} 0 d 0"),
            "Error allocating crypto tfm",
        ),
        (
            8,
            format!("aes-cbc-plain 0g{} 0 d 0", &k16[2..]),
            "Error decoding and setting key",
        ),
        (
            8,
            "aes-cbc-plain 0011 0 d 0".into(),
            "Error decoding and setting key",
        ),
        (
            8,
            format!("aes-xts-plain64 {k16} 0 d 0"),
            "Error decoding and setting key",
        ),
        (
            8,
            "aes-cbc-plain - 0 d 0".into(),
            "Error decoding and setting key",
        ),
        (
            8,
            "aes-cbc-plain x 0 d 0".into(),
            "Error decoding and setting key",
        ),
        (
            8,
            "aes-cbc-plain :32:bogus:desc 0 d 0".into(),
            "Error decoding and setting key",
        ),
        (
            8,
            "aes-cbc-plain :32x:logon:desc 0 d 0".into(),
            "Cannot parse key size",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 sector_size:1000"),
            "Invalid feature value for sector_size",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 sector_size:8192"),
            "Invalid feature value for sector_size",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 sector_size:256"),
            "Invalid feature value for sector_size",
        ),
        (
            9,
            format!("aes-cbc-plain {k16} 0 d 0 1 sector_size:4096"),
            "Device size is not multiple of sector_size feature",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 4 d 0 1 sector_size:4096"),
            "Invalid iv_offset sector",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} -1 d 0"),
            "Invalid iv_offset sector",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d x"),
            "Invalid device sector",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 bogus"),
            "Invalid feature arguments",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 10 a b c d e f g h i j"),
            "Invalid number of feature args",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 2 allow_discards"),
            "Invalid number of feature args",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 integrity:0:none"),
            "Invalid integrity arguments",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 integrity:481:none"),
            "Invalid integrity arguments",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 integrity:4:crc"),
            "Unknown integrity profile",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 integrity_key_size:0"),
            "Invalid integrity_key_size argument",
        ),
        (
            8,
            format!("aes-cbc-plain {k16} 0 d 0 1 integrity:16:aead"),
            "Bad cipher specification",
        ),
        (
            8,
            format!("aes-cbc-lmk {k16} 0 d 0 1 sector_size:4096"),
            "Unsupported sector size for LMK",
        ),
        (
            8,
            format!("aes-cbc-tcw {k16}{k16}{k16} 0 d 0 1 sector_size:4096"),
            "Unsupported sector size for TCW",
        ),
        (
            8,
            format!("aes-cbc-essiv:sha1 {k16} 0 d 0"),
            "Error decoding and setting key",
        ),
    ];
    for (len, params, want) in cases {
        let got = reason(*len, params);
        assert!(got.contains(want), "{params}: got {got:?}, want {want:?}");
    }
}

#[test]
fn crypt_huge_keyring_key_or_keycount_is_refused_without_allocating() {
    assert!(reason(8, "aes-xts-plain64 :4294967295:logon:x 0 d 0").contains("Cannot allocate"));
    assert!(reason(8, "cipher_null:2147483648-ecb - 0 d 0").contains("Error allocating crypto tfm"));
}

proptest::proptest! {
    /// Arbitrary crypt parameter text never panics, and what parses prints back to text
    /// that parses to the same arguments.
    #[test]
    fn crypt_arbitrary_params_never_panic_and_round_trip(
        params in "(aes|capi:|xts|cbc|-|:|[0-9]|essiv|plain64|lmk|tcw|elephant|,|\\(|\\)| |sector_size:|integrity:|allow_discards|[a-f]){0,40}"
    ) {
        if let Ok(a) = parse(64, &params) {
            let again = parse(64, &shown(&a)).unwrap();
            proptest::prop_assert_eq!(a, again);
        }
    }
}

#[test]
fn crypt_key_errors_do_not_echo_the_key() {
    let err = reason(8, "aes-xts-plain64 00112233445566778899aabbccddeeff 0 d 0");
    assert!(!err.contains("0011223344"), "{err}");
}

#[test]
fn crypt_odd_trailing_nibble_is_ignored_like_hex2bin() {
    let a = parse(8, "aes-cbc-plain 000102030405060708090a0b0c0d0e0fZ 0 d 0").unwrap();
    assert_eq!(a.key.size(), 16);
    assert!(shown(&a).starts_with("aes-cbc-plain 000102030405060708090a0b0c0d0e0f 0"));
}
