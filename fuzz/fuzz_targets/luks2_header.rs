//! The LUKS2 binary header pair (checksums, copy choice) never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::luks2_header(data));
