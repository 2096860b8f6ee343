//! thin_dump XML (what `thin restore` reads) never panics, hangs or allocates without
//! bound; what parses restores and dumps back as itself.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dmemu::testing::fuzz::thin_xml(data));
