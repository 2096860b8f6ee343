//! writecache against the real Linux 6.12 kernel: every case of
//! tests/fixtures/writecache/cases.txt (made by make.sh there on shared/oracle over loop
//! devices). Every table the kernel loaded parses and prints as `dmsetup table` printed it
//! (case-folded mode and options, `%u` wrapping, options once each with their last value, in
//! `writecache_status`'s order); every table it refused is refused with its `ti->error`
//! words and errno (lookups, `start_sector` past the cache and `p` without DAX at build).

mod remap_support;

use dmemu::targets::TargetSpec;

use remap_support::{loaded_print_as_the_kernel, refused_as_the_kernel};

const FIXTURE: &str = include_str!("fixtures/writecache/cases.txt");

#[test]
fn tables_the_kernel_loaded_print_as_the_kernel() {
    let loaded = loaded_print_as_the_kernel(FIXTURE, |s| matches!(s, TargetSpec::Writecache(_)));
    assert_eq!(loaded, 7, "the fixture's loaded cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    assert_eq!(
        refused_as_the_kernel(FIXTURE, "writecache", 2),
        26,
        "the fixture's refused cases"
    );
}
