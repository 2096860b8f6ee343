//! dmemu's `dmsetup` against the real dmsetup 1.02.185 on Linux 6.12: every command line of
//! tests/fixtures/dmsetup/kernel-6.12-verbs.txt (made by make-verbs.sh on the oracle) runs
//! literally, in order, through the `dmsetup` symlink and a device host in a private state
//! dir; stdout and stderr (merged, in order) and the exit status must be the kernel's.

mod dmsetup_support;

use dmsetup_support::{steps, Sandbox};

const MIB: u64 = 1 << 20;

#[test]
fn every_verb_prints_what_dmsetup_prints() {
    let sb = Sandbox::new(&[16 * MIB, 16 * MIB, 4 * MIB, 64 * MIB]);
    let all = steps("kernel-6.12-verbs.txt");
    assert!(all.len() > 100, "the fixture has {} steps", all.len());
    let skip = [
        (
            "targets",
            "compared as a subset below (the kernel lists the modules loaded)",
        ),
        (
            "mknodes-a",
            "lists /dev/mapper, which dmemu does not populate",
        ),
    ];
    let report = sb.replay(&all, &skip);
    assert!(report.is_empty(), "differences from the kernel:\n{report}");
}

#[test]
fn targets_lists_the_kernel_versions() {
    let sb = Sandbox::new(&[]);
    let kernel = steps("kernel-6.12-verbs.txt")
        .into_iter()
        .find(|s| s.id == "targets")
        .unwrap();
    let (ours, rc) = sb.run("dmsetup targets");
    assert_eq!(rc, 0);
    for line in kernel.out.lines() {
        assert!(
            ours.lines().any(|l| l == line),
            "{line:?} missing from:\n{ours}"
        );
    }
}
