//! The verity superblock and hash tree never panic; verified reads return the data.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::verity_tree(data));
