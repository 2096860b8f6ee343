//! Reed-Solomon decoding never panics and corrects what is within its capacity.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::fec_decode(data));
