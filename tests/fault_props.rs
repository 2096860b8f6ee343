//! Property tests for the fault targets' table arguments: any token soup parses or fails
//! without panicking, and whatever parses prints a canonical form that parses back to the same
//! value and prints identically (the kernel's table output is a fixed point).

use dmemu::table::args::Args;
use dmemu::targets::{DelayArgs, DustArgs, FlakeyArgs};
use dmemu::SectorCount;
use proptest::prelude::*;

/// Tokens the kernel parsers look for, plus numbers at the edges and junk.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("error_reads".to_string()),
        Just("drop_writes".to_string()),
        Just("error_writes".to_string()),
        Just("corrupt_bio_byte".to_string()),
        Just("random_read_corrupt".to_string()),
        Just("random_write_corrupt".to_string()),
        Just("r".to_string()),
        Just("W".to_string()),
        Just("4294967295".to_string()),
        Just("4294967296".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1000000000".to_string()),
        Just("512".to_string()),
        Just("+4096".to_string()),
        (0u32..12).prop_map(|n| n.to_string()),
        "[a-z0-9:/+-]{1,6}",
    ]
}

fn tokens() -> impl Strategy<Value = Vec<String>> {
    ("[a-z0-9:/]{1,5}", prop::collection::vec(token(), 0..16)).prop_map(|(dev, mut rest)| {
        rest.insert(0, dev);
        rest
    })
}

fn split(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_string).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn flakey_parse_never_panics_and_prints_a_fixed_point(toks in tokens()) {
        if let Ok(a) = FlakeyArgs::parse(&mut Args::new(&toks)) {
            let text = a.to_string();
            let again = FlakeyArgs::parse(&mut Args::new(&split(&text)));
            prop_assert_eq!(again.as_ref(), Ok(&a), "{}", text);
        }
    }

    #[test]
    fn delay_parse_never_panics_and_prints_a_fixed_point(toks in tokens()) {
        if let Ok(a) = DelayArgs::parse(&mut Args::new(&toks)) {
            let text = a.to_string();
            let again = DelayArgs::parse(&mut Args::new(&split(&text)));
            prop_assert_eq!(again.as_ref(), Ok(&a), "{}", text);
        }
    }

    #[test]
    fn dust_parse_never_panics_and_prints_a_fixed_point(toks in tokens(), len in 1u64..1 << 24) {
        if let Ok(a) = DustArgs::parse(&mut Args::new(&toks), SectorCount(len)) {
            let text = a.to_string();
            let again = DustArgs::parse(&mut Args::new(&split(&text)), SectorCount(len));
            prop_assert_eq!(again.as_ref(), Ok(&a), "{}", text);
        }
    }
}
