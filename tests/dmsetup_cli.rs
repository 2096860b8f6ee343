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
