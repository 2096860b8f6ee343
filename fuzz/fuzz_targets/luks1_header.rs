//! A LUKS1 header, its key slots and key material never panic; unlock costs stay bounded.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::luks1_header(data));
