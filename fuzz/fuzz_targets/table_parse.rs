//! Table text never panics the parser; what parses round-trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::table_text(data));
