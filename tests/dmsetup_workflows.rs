//! The seed workflows (issue 12) as literal command lines, against the 6.12 kernel's answers
//! (tests/fixtures/dmsetup/kernel-6.12-workflows.txt, made by make-workflows.sh on the
//! oracle): the tutorial's linear concatenation and snapshot-origin + snapshot, docker's
//! devicemapper thin flow, lvm2 test aux's fault-table swaps. Every step runs in order
//! through the `dmsetup` and `blockdev` symlinks; output and exit status must be the
//! kernel's. Steps that do I/O through a device node (dd, mkfs.ext4, e2fsck on
//! /dev/mapper/NAME), and the status steps whose numbers depend on that I/O, are skipped
//! with the reason printed: dmemu has no device nodes yet (the FUSE export is not on main).

mod dmsetup_support;

use dmsetup_support::{steps, Sandbox};

const MIB: u64 = 1 << 20;
const NODE: &str = "I/O through a device node (no FUSE device nodes yet)";
const AFTER: &str = "numbers that depend on I/O through a device node";

#[test]
fn the_seed_workflows_print_what_the_kernel_printed() {
    let sb = Sandbox::new(&[16 * MIB, 16 * MIB, 4 * MIB, 64 * MIB]);
    let all = steps("kernel-6.12-workflows.txt");
    assert!(all.len() > 50, "the fixture has {} steps", all.len());
    let skip = [
        ("concat-write", NODE),
        ("concat-read", AFTER),
        ("snap-write-base", NODE),
        ("snap-write-origin", NODE),
        ("snap-read", NODE),
        ("snap-status-1", AFTER),
        ("thin-mkfs", NODE),
        ("thin-fsck", NODE),
        ("thin-fsck-layer2", NODE),
        ("thin-status", AFTER),
        ("thin-status-2", AFTER),
        ("aux-fill", NODE),
        ("aux-error-read", NODE),
        ("aux-zero-read", NODE),
        ("aux-delay-read", NODE),
        ("aux-flakey-write", NODE),
        ("aux-flakey-read", NODE),
    ];
    let report = sb.replay(&all, &skip);
    assert!(report.is_empty(), "differences from the kernel:\n{report}");
}
