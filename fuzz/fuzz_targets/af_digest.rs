//! The anti-forensic merge and the LUKS digests never panic; merge inverts split.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::af_digest(data));
