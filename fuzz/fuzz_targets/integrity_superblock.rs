//! Damaged dm-integrity superblocks and journals never panic, hang or allocate without bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::integrity_superblock(data));
