//! multipath against the real Linux 6.12 kernel: every case of
//! tests/fixtures/multipath/cases.txt (made by make.sh there, which runs guest.sh on
//! shared/oracle over loop devices). Every table the kernel loaded parses and prints as
//! `dmsetup table` printed it (feature order and count, dropped selector and handler
//! arguments, repeat counts, trailing space); every table it refused is refused with its
//! `ti->error` words and errno (a missing path device at build, as the kernel's lookup).

mod remap_support;

use dmemu::targets::TargetSpec;

use remap_support::{loaded_print_as_the_kernel, refused_as_the_kernel};

const FIXTURE: &str = include_str!("fixtures/multipath/cases.txt");

#[test]
fn tables_the_kernel_loaded_print_as_the_kernel() {
    let loaded = loaded_print_as_the_kernel(FIXTURE, |s| matches!(s, TargetSpec::Multipath(_)));
    assert_eq!(loaded, 17, "the fixture's loaded cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    assert_eq!(
        refused_as_the_kernel(FIXTURE, "multipath", 4),
        30,
        "the fixture's refused cases"
    );
}
