//! Damaged dm-cache metadata never panics, hangs or allocates without bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::cache_metadata(data));
