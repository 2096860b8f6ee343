//! era against the real Linux 6.12 kernel: every case of tests/fixtures/era/cases.txt (made
//! by make.sh there on shared/oracle over loop devices). Every table the kernel loaded parses
//! and prints as `dmsetup table` printed it (the block size as `%u`, wrapping); every table it
//! refused is refused with its `ti->error` words and errno, device lookups included.

mod remap_support;

use dmemu::targets::TargetSpec;

use remap_support::{loaded_print_as_the_kernel, refused_as_the_kernel};

const FIXTURE: &str = include_str!("fixtures/era/cases.txt");

#[test]
fn tables_the_kernel_loaded_print_as_the_kernel() {
    let loaded = loaded_print_as_the_kernel(FIXTURE, |s| matches!(s, TargetSpec::Era(_)));
    assert_eq!(loaded, 5, "the fixture's loaded cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    assert_eq!(
        refused_as_the_kernel(FIXTURE, "era", 2),
        9,
        "the fixture's refused cases"
    );
}
