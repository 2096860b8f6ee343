//! `--concise` and `dm-mod.create=` text never panic; concise round-trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::concise_text(data));
