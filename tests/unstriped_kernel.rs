//! unstriped against the real Linux 6.12 kernel: every case of
//! tests/fixtures/remap/kernel-6.12-unstriped.txt (made by make-unstriped.sh, which runs
//! unstriped.guest.sh on shared/oracle) replays on dmemu over the same disk bytes: the table and
//! status dmsetup printed, the device size, the sha256 of the device read 4 KiB at a time up to
//! the first failing block and how many blocks read, the disk's sha256 after a pattern written
//! 4 KiB at a time through the device (up to the first failing block), and discards refused with
//! EOPNOTSUPP. Tables the kernel refused are refused with the kernel's `ti->error` words.

mod remap_support;

use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};
use sha2::{Digest, Sha256};

use remap_support::{all, cases, get, hex, one, seq_text};

const FIXTURE: &str = include_str!("fixtures/remap/kernel-6.12-unstriped.txt");
const DISK: usize = 8 << 20;

#[test]
fn unstriped_reads_writes_and_prints_as_the_kernel() {
    let mut accepted = 0;
    for (name, case) in cases(FIXTURE) {
        if get(&case, "create-rc").is_some() {
            continue;
        }
        let disk = Arc::new(MemVolume::from_bytes(seq_text(1, 1, 2_000_000, DISK)).unwrap());
        let reg = Registry::new();
        reg.insert_volume("254:0", disk.clone());
        let input = one(&case, "table-in", &name).replace("/dev/vda", "254:0");
        let dev = reg
            .create(&DeviceSpec {
                name: name.clone(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadWrite,
                table: Table::parse(&input).unwrap_or_else(|e| panic!("{name}: {e}")),
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            dev.table_text(Default::default()).trim_end(),
            one(&case, "table", &name),
            "{name}"
        );
        assert_eq!(
            dev.status_text().trim_end_matches('\n'),
            one(&case, "status", &name),
            "{name}"
        );
        let size = dev.size().0 * 512;
        assert_eq!(size.to_string(), one(&case, "size", &name), "{name}");

        // dd bs=4096: blocks in order until the first failure; the sha256 of what it read.
        let mut h = Sha256::new();
        let mut blocks = 0u64;
        let mut buf = vec![0u8; 4096];
        while blocks * 4096 < size {
            if dev.read(Sector(blocks * 8), &mut buf).is_err() {
                break;
            }
            h.update(&buf);
            blocks += 1;
        }
        assert_eq!(
            hex(h.finalize()),
            one(&case, "read-sha256", &name),
            "{name}"
        );
        assert_eq!(
            blocks.to_string(),
            one(&case, "read-blocks", &name),
            "{name}"
        );

        let pattern = seq_text(3_000_000, -1, 1, usize::try_from(size).unwrap());
        let mut rc = 0;
        for (i, block) in pattern.chunks(4096).enumerate() {
            if dev.write(Sector(i as u64 * 8), block).is_err() {
                rc = 1;
                break;
            }
        }
        dev.flush().unwrap();
        assert_eq!(rc.to_string(), one(&case, "write-rc", &name), "{name}");
        let mut bytes = vec![0u8; DISK];
        disk.read(Sector(0), &mut bytes).unwrap();
        assert_eq!(
            hex(Sha256::digest(&bytes)),
            one(&case, "disk-sha256-after-write", &name),
            "{name}"
        );

        let discard = one(&case, "discard-rc", &name);
        if discard.contains("Operation not supported") {
            let err = dev.discard(Sector(0), SectorCount(8)).unwrap_err();
            assert_eq!(err.errno(), 95, "{name}: {err}");
        }
        accepted += 1;
    }
    assert_eq!(accepted, 6, "the fixture's accepted cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let mut refused = 0;
    for (name, case) in cases(FIXTURE) {
        if get(&case, "create-rc").is_none() {
            continue;
        }
        let reg = Registry::new();
        reg.insert_volume(
            "254:0",
            Arc::new(MemVolume::new(SectorCount((DISK / 512) as u64)).unwrap()),
        );
        let input = one(&case, "table-in", &name).replace("/dev/vda", "254:0");
        let err = Table::parse(&input).and_then(|table| {
            reg.create(&DeviceSpec {
                name: name.clone(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadWrite,
                table,
            })
        });
        let err = err.expect_err(&name);
        assert_eq!(err.errno(), 22, "{name}: {err}");
        // "device-mapper: table: 254:0: unstriped: WORDS" (dm_table_add_target), or the
        // device-area check's own line.
        let kernel = one(&case, "kernel-err", &name);
        let words = match kernel.find("too small for target") {
            Some(at) => &kernel[at..],
            None => kernel
                .split_once("unstriped: ")
                .map_or(kernel, |(_, w)| w.split(" (-").next().unwrap()),
        };
        let ours = err.to_string();
        assert!(
            ours.contains(words.trim()),
            "{name}: ours {ours:?}, kernel {kernel:?}"
        );
        refused += 1;
    }
    assert_eq!(refused, 6, "the fixture's refused cases");
}

/// Through the dmsetup front end, each refused create prints what the 6.12 dmsetup printed
/// (`reload ioctl ... failed`: the kernel refuses a table off its device at the device's
/// first load, not at the resume) and exits 1.
#[test]
fn refused_creates_print_what_dmsetup_printed() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("vda.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK as u64)
        .unwrap();
    let bin = dir.path().join("dmsetup");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dmemu"), &bin).unwrap();
    let mut refused = 0;
    for (name, case) in cases(FIXTURE) {
        let want = all(&case, "create-err");
        if want.is_empty() {
            continue;
        }
        let table = one(&case, "table-in", &name).replace("/dev/vda", &disk.display().to_string());
        let out = std::process::Command::new(&bin)
            .args(["create", &name, "--table", &table])
            .env("DMEMU_DIR", dir.path().join("state"))
            .env_remove("DM_DEV_DIR")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            want.iter().map(|l| format!("{l}\n")).collect::<String>(),
            "{name}"
        );
        refused += 1;
    }
    assert_eq!(refused, 6, "the fixture's refused cases");
}

/// The kernel checks device areas at a device's first good load (`dm_setup_md_queue`), and
/// on later loads only at the resume (`dm_swap_table`; tests/lifecycle_kernel.rs).
#[test]
fn a_table_off_its_device_fails_the_first_load_and_a_later_resume() {
    let reg = Registry::new();
    reg.insert_volume(
        "254:0",
        Arc::new(MemVolume::new(SectorCount((DISK / 512) as u64)).unwrap()),
    );
    let off = Table::parse("0 8 unstriped 4 8 0 254:0 16380").unwrap();
    reg.create_device("u", None, None).unwrap();
    let err = reg
        .load("u", off.clone(), TableMode::ReadWrite)
        .unwrap_err();
    assert!(err.to_string().contains("too small for target"), "{err}");
    assert!(reg.device("u").unwrap().inactive_table().is_none());
    let good = Table::parse("0 8 unstriped 4 8 0 254:0 0").unwrap();
    reg.load("u", good, TableMode::ReadWrite).unwrap();
    reg.resume("u").unwrap();
    reg.load("u", off, TableMode::ReadWrite).unwrap();
    let err = reg.resume("u").unwrap_err();
    assert!(err.to_string().contains("too small for target"), "{err}");
}
