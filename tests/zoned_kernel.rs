//! zoned against the real Linux 6.12 kernel: every case of tests/fixtures/zoned/cases.txt
//! (made by make.sh there on shared/oracle over regular loop devices). The guest has no
//! dmzadm to format a zoned device's metadata, so no zoned table loads there; every table it
//! refused is refused with its `ti->error` words and errno, device by device as
//! `dmz_get_zoned_device` checks them (files, like loop devices, are never zoned).

mod remap_support;

use remap_support::{cases, get, refused_as_the_kernel};

const FIXTURE: &str = include_str!("fixtures/zoned/cases.txt");

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    assert!(
        FIXTURE.starts_with("dmzadm none\n"),
        "the guest had no dmzadm"
    );
    let all = cases(FIXTURE);
    assert!(all.iter().all(|(_, l)| get(l, "create-rc").is_some()));
    assert_eq!(refused_as_the_kernel(FIXTURE, "zoned", 3), 8);
}
