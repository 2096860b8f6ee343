//! dmemu shell lines never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::shell_lines(data));
