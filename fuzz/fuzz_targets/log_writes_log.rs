//! A dm-log-writes log from arbitrary bytes never panics the log reader or the replay.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::log_writes_log(data));
