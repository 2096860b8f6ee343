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

#[test]
fn every_active_device_is_an_nbd_export_of_the_host() {
    if !dmsetup_support::have("nbdinfo") || !dmsetup_support::have("nbdcopy") {
        eprintln!("skipping: nbdinfo/nbdcopy (libnbd-bin) not installed");
        return;
    }
    let sb = Sandbox::new(&[MIB]);
    let sock = sb.state().join("nbd.sock");
    let uri = |name: &str| format!("nbd+unix:///{name}?socket={}", sock.display());
    let (out, rc) = sb.run("dmsetup create a --table '0 1024 linear /dev/vda 1024'");
    assert_eq!((out.as_str(), rc), ("", 0));
    let (out, rc) = sb.run(&format!("nbdinfo --size '{}'", uri("a")));
    assert_eq!((out.as_str(), rc), ("524288\n", 0));
    // Bytes written through the export land where the linear table maps them.
    let (out, rc) = sb.run(&format!(
        "head -c 524288 /dev/urandom > data.bin; nbdcopy data.bin '{}'",
        uri("a")
    ));
    assert_eq!((out.as_str(), rc), ("", 0), "{out}");
    let data = std::fs::read(sb.dir.path().join("data.bin")).unwrap();
    let img = std::fs::read(&sb.disks[0]).unwrap();
    assert_eq!(&img[512 * 1024..], &data[..]);
    // A device without a live table has no export; a reload that grows the device
    // re-exports it at the new size.
    let (_, rc) = sb.run("dmsetup create n --notable");
    assert_eq!(rc, 0);
    let (_, rc) = sb.run(&format!("nbdinfo --size '{}'", uri("n")));
    assert_ne!(rc, 0, "a device without a table is exported");
    let (_, rc) = sb.run("dmsetup load n --table '0 2048 zero' && dmsetup resume n");
    assert_eq!(rc, 0);
    let (out, _) = sb.run(&format!("nbdinfo --size '{}'", uri("n")));
    assert_eq!(out, "1048576\n");
    let (out, rc) = sb.run("dmsetup remove n a && dmsetup ls");
    assert_eq!((out.as_str(), rc), ("No devices found\n", 0));
    assert!(!sock.exists(), "the host left its NBD socket behind");
}

#[test]
fn a_killed_host_is_reported_and_the_next_command_starts_afresh() {
    let sb = Sandbox::new(&[MIB]);
    let (out, rc) = sb.run("dmsetup create a --table '0 8 zero' && dmsetup create b --notable");
    assert_eq!((out.as_str(), rc), ("", 0));
    let pid = std::fs::read_to_string(sb.state().join("host.pid")).unwrap();
    let pid = pid.trim();
    let (_, rc) = sb.run(&format!(
        "kill -9 {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.01; done"
    ));
    assert_eq!(rc, 0);
    let (out, rc) = sb.run("dmsetup ls");
    assert_eq!(rc, 0);
    let lost = format!(
        "dmemu: the device host in {} ended without removing its devices (it crashed or was \
         killed); lost: a, b. Starting afresh.\nNo devices found\n",
        sb.state().display()
    );
    assert_eq!(out, lost);
    // Reported once; the name is free again.
    let (out, rc) = sb.run("dmsetup ls; dmsetup create a --table '0 8 zero' && dmsetup ls");
    assert_eq!((out.as_str(), rc), ("No devices found\na\t(253:0)\n", 0));
}

#[test]
fn stale_socket_second_host_and_foreign_state_dir() {
    let sb = Sandbox::new(&[MIB]);
    std::fs::create_dir(sb.state()).unwrap();
    // A socket file nobody listens on (a host that died long ago).
    let stale = std::os::unix::net::UnixListener::bind(sb.state().join("host.sock")).unwrap();
    drop(stale);
    let (out, rc) = sb.run("dmsetup create a --table '0 8 zero' && dmsetup ls");
    assert_eq!((out.as_str(), rc), ("a\t(253:0)\n", 0));
    // A second host on the same dir leaves at once and the first keeps its devices.
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .arg("__dmsetup-host")
        .arg(sb.state())
        .status()
        .unwrap();
    assert!(st.success());
    let (out, _) = sb.run("dmsetup ls");
    assert_eq!(out, "a\t(253:0)\n");
    let (_, rc) = sb.run("dmsetup remove a");
    assert_eq!(rc, 0);
    // A state dir another user owns is refused with one line.
    let foreign = sb.dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    if std::os::unix::fs::chown(&foreign, Some(4242), None).is_err() {
        eprintln!("skipping the foreign-owner check: chown needs root");
        return;
    }
    let (out, rc) = sb.run(&format!("DMEMU_DIR={} dmsetup ls", foreign.display()));
    assert_eq!(rc, 1);
    assert!(
        out.starts_with(&format!(
            "dmsetup: state directory {} is owned by uid 4242, not by you",
            foreign.display()
        )) && out.lines().count() == 1,
        "{out}"
    );
}

/// Paths reaching `/dev/mapper/NAME` through symlinks, `..` and relative names (in tables
/// and as device arguments) name the device, as the kernel's `lookup_bdev` finds the dm
/// node (tests/fixtures/dmsetup/kernel-6.12-paths.txt, made by make-paths.sh). In dmemu
/// `/dev/mapper` is the host's own FUSE mount: a host that opened one of its node files
/// as an image would serve its own I/O (and hang on exit); the table shows the device's
/// number instead, the device is held (remove is busy), and a path to a missing node, to
/// the node directory or below a node fails as the kernel's does.
#[test]
fn paths_through_symlinks_into_the_node_dir_name_the_device() {
    let sb = Sandbox::new(&[MIB]);
    let all = steps("kernel-6.12-paths.txt");
    assert!(all.len() > 10, "the fixture has {} steps", all.len());
    let skip: &[(&str, &str)] = if Sandbox::nodes() {
        &[]
    } else {
        &[(
            "paths-io",
            "I/O through a device node (/dev/fuse is missing)",
        )]
    };
    let report = sb.replay(&all, skip);
    assert!(report.is_empty(), "differences from the kernel:\n{report}");
}
