//! A damaged SSD writecache device never panics, hangs or allocates without bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::writecache_ssd(data));
