//! An NBD client session from arbitrary bytes never panics or hangs the server.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::nbd_session(data));
