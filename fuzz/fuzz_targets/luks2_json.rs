//! LUKS2 JSON metadata and its validation never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::luks2_json(data));
