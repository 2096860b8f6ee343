//! A COW device image from arbitrary bytes never panics the snapshot targets.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::snapshot_cow(data));
