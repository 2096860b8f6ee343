//! dm-verity with FEC over damaged data, hash and FEC images never panics; what it returns
//! is the undamaged data.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dmemu::testing::fuzz::verity_fec(data);
});
