//! The seed workflows (issue 12) as literal command lines, against the 6.12 kernel's answers
//! (tests/fixtures/dmsetup/kernel-6.12-workflows.txt, made by make-workflows.sh on the
//! oracle): the tutorial's linear concatenation and snapshot-origin + snapshot, docker's
//! devicemapper thin flow, lvm2 test aux's fault-table swaps; and kernel-6.12-flows.txt
//! (make-flows.sh): docker's pool growth, ember's flow, sts-libs' calls. Every step runs in order
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

/// The steps of kernel-6.12-flows.txt (made by make-flows.sh on the oracle) whose id starts
/// with `section`, replayed in a fresh sandbox (disks vda 4 MiB, vdb 64 MiB, vdc 16 MiB;
/// the guest's loop devices over `data` and `metadata` are those files); `node_io` are the
/// steps that need I/O through a device node (or numbers that depend on it), skipped where
/// /dev/fuse is missing.
fn replay_flows(section: &str, skip: &[(&str, &str)], node_io: &[&str]) {
    let sb = Sandbox::new(&[4 * MIB, 64 * MIB, 16 * MIB])
        .with_loop(0, "data")
        .with_loop(1, "metadata");
    let all: Vec<_> = steps("kernel-6.12-flows.txt")
        .into_iter()
        .filter(|s| s.id.starts_with(section))
        .collect();
    assert!(
        all.len() > 5,
        "{section}: the fixture has {} steps",
        all.len()
    );
    let mut skip = skip.to_vec();
    if !Sandbox::nodes() {
        skip.extend(node_io.iter().map(|id| (*id, NODE)));
    }
    let report = sb.replay(&all, &skip);
    assert!(report.is_empty(), "differences from the kernel:\n{report}");
}

/// docker's loop-lvm pool growth (deviceset.go ResizePool): truncate the sparse data file,
/// refresh the loop device's size, suspend the pool, reload it with the longer table,
/// resume; the base thin keeps its data and a new thin fills past the old size.
#[test]
fn docker_grows_its_pool_as_the_kernel_does() {
    const LOOP: &str = "a loop device: dmemu opens the file itself, and a load re-reads its size";
    replay_flows(
        "grow-",
        &[
            ("grow-loop", LOOP),
            ("grow-capacity", LOOP),
            ("grow-unloop", LOOP),
        ],
        &[
            "grow-write",
            "grow-status-0",
            "grow-resume",
            "grow-read",
            "grow-fill",
            "grow-status-1",
        ],
    );
}

/// ember's dm-thin flow: pool init, deinit and re-init on the same metadata keeping the
/// thins and their data, a snapshot, a volume restored from its snapshot (delete +
/// create_snap under the volume's id), and the same again after another re-init.
#[test]
fn ember_reinits_its_pool_and_restores_from_a_snapshot_as_the_kernel_does() {
    replay_flows(
        "ember-",
        &[],
        &[
            "ember-write-1",
            "ember-write-2",
            "ember-status-0",
            "ember-reinit",
            "ember-read",
            "ember-read-restored",
            "ember-status-1",
            "ember-reinit-2",
            "ember-read-2",
        ],
    );
}

/// The dmsetup command lines sts-libs' `DmDevice` methods run (sts/dm/base.py: create with
/// its flags, info in its three forms, status, table, deps in each output form, suspend,
/// resume, load, clear, its reload_table's positional table, message, rename, setuuid,
/// wipe_table, mknodes, mangle, setgeometry, splitname, wait, create --concise, ls in each
/// form, the udev calls, remove with each flag, remove_all).
#[test]
fn sts_libs_dm_calls_print_what_the_kernel_printed() {
    replay_flows("sts-", &[], &[]);
}

/// `ls --exec`, `measure` (6.12's IMA measurement strings) and `stats` with no regions.
#[test]
fn ls_exec_measure_and_stats_print_what_the_kernel_printed() {
    replay_flows("extra-", &[], &["extra-ls-exec-args"]);
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
