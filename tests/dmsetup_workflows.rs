//! The seed workflows (issue 12) as literal command lines, against the 6.12 kernel's answers
//! (tests/fixtures/dmsetup/kernel-6.12-workflows.txt, made by make-workflows.sh on the
//! oracle): the tutorial's linear concatenation and snapshot-origin + snapshot, docker's
//! devicemapper thin flow, lvm2 test aux's fault-table swaps. Every step runs in order
//! through the `dmsetup` and `blockdev` symlinks; output and exit status must be the
//! kernel's. `/dev/mapper/NAME` is dmemu's device node `$DM_DEV_DIR/mapper/NAME` (the
//! host's FUSE mount), so dd, mkfs.ext4 and e2fsck run on the device; where /dev/fuse is
//! missing those steps, and the status steps whose numbers depend on their I/O, are
//! skipped with the reason printed.

mod dmsetup_support;

use dmsetup_support::{steps, Sandbox};

const MIB: u64 = 1 << 20;
const NODE: &str = "I/O through a device node (/dev/fuse is missing)";
const AFTER: &str = "numbers that depend on I/O through a device node";

#[test]
fn the_seed_workflows_print_what_the_kernel_printed() {
    let sb = Sandbox::new(&[16 * MIB, 16 * MIB, 4 * MIB, 64 * MIB]);
    let all = steps("kernel-6.12-workflows.txt");
    assert!(all.len() > 50, "the fixture has {} steps", all.len());
    let skip: &[(&str, &str)] = if Sandbox::nodes() {
        &[]
    } else {
        &[
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
        ]
    };
    let report = sb.replay(&all, skip);
    assert!(report.is_empty(), "differences from the kernel:\n{report}");
}

/// The data blocks `dmsetup status POOL` reports: `used/total` of a thin-pool status line.
fn data_blocks(status: &str) -> (u64, u64) {
    let f: Vec<&str> = status.split_whitespace().collect();
    assert_eq!(f.get(2), Some(&"thin-pool"), "a thin-pool status: {status}");
    let (used, total) = f[5].split_once('/').expect("used/total data blocks");
    (used.parse().unwrap(), total.parse().unwrap())
}

/// docker's devicemapper driver grows its pool by enlarging the sparse data file and
/// reloading the pool with the longer table (the fixture has no growth step): the literal
/// command lines, then the new size in the status, and the thin device still intact.
#[test]
fn docker_grows_its_pool_by_truncate_reload_resume() {
    let sb = Sandbox::new(&[4 * MIB, 64 * MIB]);
    let run = |cmd: &str| {
        let (out, rc) = sb.run(cmd);
        assert_eq!(rc, 0, "{cmd}:\n{out}");
        out
    };
    run("dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=notrunc status=none");
    run("dmsetup create pool --table \"0 131072 thin-pool /dev/vda /dev/vdb 128 32768 1 skip_block_zeroing\"");
    run("dmsetup message pool 0 \"create_thin 0\" && dmsetup create base --table \"0 65536 thin /dev/mapper/pool 0\"");
    if Sandbox::nodes() {
        run("printf 'kept' | dd of=/dev/mapper/base bs=512 seek=1000 conv=notrunc status=none; sync");
    }
    assert_eq!(data_blocks(&run("dmsetup status pool")).1, 1024);
    run("truncate -s 128M /dev/vdb");
    run("dmsetup reload pool --table \"0 262144 thin-pool /dev/vda /dev/vdb 128 32768 1 skip_block_zeroing\"");
    // Loaded, not yet live: the pool still has its old size.
    assert_eq!(data_blocks(&run("dmsetup status pool")).1, 1024);
    run("dmsetup resume pool");
    let status = run("dmsetup status pool");
    assert!(status.starts_with("0 262144 thin-pool "), "{status}");
    let (used, total) = data_blocks(&status);
    assert_eq!(total, 2048, "{status}");
    assert_eq!(
        run("blockdev --getsz /dev/mapper/pool"),
        "262144\n",
        "the pool device grew"
    );
    if Sandbox::nodes() {
        assert_eq!(used, 1, "{status}");
        assert_eq!(
            run("dd if=/dev/mapper/base bs=512 skip=1000 count=1 status=none | head -c 4"),
            "kept"
        );
    } else {
        eprintln!("skipping the I/O through /dev/mapper/base: /dev/fuse is missing");
    }
    run("dmsetup remove base && dmsetup remove pool");
}

/// The device nodes follow the devices: a file per active device in `$DM_DEV_DIR/mapper`,
/// renamed and removed with it; a table naming a node by a relative path gets the device
/// (not the file; `.` keeps the sandbox from rewriting the path); the mount goes with
/// the host.
#[test]
fn device_nodes_follow_create_rename_remove() {
    if !Sandbox::nodes() {
        eprintln!("skipping: /dev/fuse is missing");
        return;
    }
    let sb = Sandbox::new(&[16 * MIB]);
    let mapper = sb.state().join("dev/mapper");
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&mapper)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let run = |cmd: &str| {
        let (out, rc) = sb.run(cmd);
        assert_eq!(
            rc,
            0,
            "{cmd}:\n{out}{}",
            std::fs::read_to_string(sb.state().join("dmesg.log")).unwrap_or_default()
        );
        out
    };
    run("dmsetup create a --table \"0 32768 linear /dev/vda 0\"");
    assert_eq!(names(), ["a"]);
    assert_eq!(std::fs::metadata(mapper.join("a")).unwrap().len(), 16 * MIB);
    run("dmsetup create b --notable");
    assert_eq!(names(), ["a"], "a device without a live table has no node");
    run("dmsetup rename a c");
    assert_eq!(names(), ["c"]);
    run("dmsetup load b --table \"0 8 linear state/dev/./mapper/c 8\" && dmsetup resume b");
    assert_eq!(run("dmsetup table b"), "0 8 linear 253:0 8\n");
    assert_eq!(names(), ["b", "c"]);
    run("dmsetup remove b");
    assert_eq!(names(), ["c"]);
    run("dmsetup remove c");
    // The host has exited and unmounted: the directory is the empty one underneath.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&mapper.display().to_string()),
        "still mounted: {mounts}"
    );
    assert!(names().is_empty());
}
