//! Damaged thin-pool metadata never panics, hangs or allocates without bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::thin_metadata(data));
