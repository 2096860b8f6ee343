//! ebs against the real Linux 6.12 kernel: every case of
//! tests/fixtures/remap/kernel-6.12-ebs.txt (made by make-ebs.sh, which builds dm-ebs.ko
//! and runs ebs.guest.sh on shared/oracle over two loop devices, 7:0 with 512-byte and 7:1
//! with 4096-byte logical blocks) replays on dmemu over the same bytes: the table and
//! status dmsetup printed, the size and logical block size, the sha256 of the device read
//! 4 KiB at a time, then each dd write or read of odd sizes and offsets (one request per dd
//! block, in order, stopping at the first failure, as `dd oflag=direct` does) and each
//! blkdiscard, with its verdict and the backing device's sha256 after it. Tables the
//! kernel refused are refused with the kernel's words.

mod remap_support;

use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::volume::SharedVolume;
use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};
use sha2::{Digest, Sha256};

use remap_support::{cases, get, hex, input, one, seq_text, Loop};

const FIXTURE: &str = include_str!("fixtures/remap/kernel-6.12-ebs.txt");
const BACKING: usize = 2 << 20;

/// The backing devices as the guest's `fill` leaves them.
fn backing() -> (Registry, [Arc<MemVolume>; 2]) {
    let mems = [0i64, 1].map(|i| {
        Arc::new(MemVolume::from_bytes(seq_text(i * 1_000_000 + 1, 1, 3_000_000, BACKING)).unwrap())
    });
    let reg = Registry::new();
    for (i, lbs) in [(0usize, 512u64), (1, 4096)] {
        let v: SharedVolume = Arc::new(Loop {
            mem: mems[i].clone(),
            lbs,
        });
        reg.insert_volume(&format!("7:{i}"), v);
    }
    (reg, mems)
}

fn sha_of(v: &MemVolume) -> String {
    let mut bytes = vec![0u8; BACKING];
    v.read(Sector(0), &mut bytes).unwrap();
    hex(Sha256::digest(&bytes))
}

/// `dd if=DEV bs=BS skip=SKIP count=COUNT iflag=direct`: what it read, and whether it
/// stopped on an error.
fn dd_read(dev: &dyn Volume, bs: u64, skip: u64, count: Option<u64>) -> (Vec<u8>, bool) {
    let size = dev.size().0 * 512;
    let mut out = Vec::new();
    let mut buf = vec![0u8; usize::try_from(bs).unwrap()];
    let mut k = 0;
    while count.is_none_or(|c| k < c) && (skip + k) * bs < size {
        if dev.read(Sector((skip + k) * bs / 512), &mut buf).is_err() {
            return (out, true);
        }
        out.extend_from_slice(&buf);
        k += 1;
    }
    (out, false)
}

#[test]
fn ebs_reads_writes_discards_and_prints_as_the_kernel() {
    let mut accepted = 0;
    let mut ops = [0usize; 2];
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_some() {
            continue;
        }
        let (reg, mems) = backing();
        let dev = reg
            .create(&DeviceSpec {
                name: name.clone(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadWrite,
                table: Table::parse(&input(&lines, &name))
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            dev.table_text(Default::default()).trim_end(),
            one(&lines, "table", &name),
            "{name}"
        );
        assert_eq!(
            dev.status_text().trim_end_matches('\n'),
            one(&lines, "status", &name),
            "{name}"
        );
        let size = dev.size().0 * 512;
        assert_eq!(size.to_string(), one(&lines, "size", &name), "{name}");
        let lbs = one(&lines, "block-sizes", &name).split(' ').next().unwrap();
        assert_eq!(dev.logical_block_size().to_string(), lbs, "{name}");
        let backing = if input(&lines, &name).contains("7:0") {
            &mems[0]
        } else {
            &mems[1]
        };

        let (data, _) = dd_read(&*dev, 4096, 0, None);
        assert_eq!(
            hex(Sha256::digest(&data)),
            one(&lines, "read-sha256", &name),
            "{name}"
        );

        for (n, (k, op)) in lines.iter().enumerate().filter(|(_, (k, _))| k == "op") {
            let _ = k;
            let what = format!("{name}: op {op}");
            let after = &lines[n + 1..];
            let w: Vec<u64> = op.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
            let rc = one(after, "rc", &what);
            match op.as_bytes()[0] {
                b'w' => {
                    let (bs, seek, count) = (w[0], w[1], w[2]);
                    let pattern = seq_text(5_000_000, -1, 1, usize::try_from(bs * count).unwrap());
                    // dd cannot seek past the device's end; then it writes nothing.
                    let mut failed = seek * bs > size;
                    if !failed {
                        for (k, block) in pattern.chunks(usize::try_from(bs).unwrap()).enumerate() {
                            if dev
                                .write(Sector((seek + k as u64) * bs / 512), block)
                                .is_err()
                            {
                                failed = true;
                                break;
                            }
                        }
                    }
                    dev.flush().unwrap();
                    assert_eq!(rc.starts_with('1'), failed, "{what}: kernel {rc:?}");
                }
                b'r' => {
                    // The rc the guest printed is not dd's; its stderr tells whether it
                    // stopped on an error.
                    let (data, failed) = dd_read(&*dev, w[0], w[1], Some(w[2]));
                    assert_eq!(rc.contains("error reading"), failed, "{what}: {rc:?}");
                    assert_eq!(
                        hex(Sha256::digest(&data)),
                        one(after, "data-sha256", &what),
                        "{what}"
                    );
                }
                b'd' => {
                    // blkdiscard reads the device's start first (libblkid); when that
                    // fails it discards nothing.
                    if !rc.contains("failed to probe") {
                        let r = dev.discard(Sector(w[0] / 512), SectorCount(w[1] / 512));
                        assert_eq!(rc.starts_with('1'), r.is_err(), "{what}: {rc:?} {r:?}");
                        if let Err(e) = r {
                            assert_eq!(e.errno(), 22, "{what}: {e}");
                            assert!(rc.contains("not aligned"), "{what}: {rc:?}");
                        }
                    }
                }
                _ => panic!("{what}: unknown op"),
            }
            assert_eq!(
                sha_of(backing),
                one(after, "disk-sha256", &what),
                "{what}: the backing device"
            );
            ops[usize::from(rc.starts_with('1'))] += 1;
        }
        accepted += 1;
    }
    assert_eq!(accepted, 10, "the fixture's accepted cases");
    assert!(ops[0] >= 50 && ops[1] >= 30, "ops ok/failed: {ops:?}");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let mut refused = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_none() {
            continue;
        }
        let (reg, _) = backing();
        let err = Table::parse(&input(&lines, &name)).and_then(|table| {
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
        // "device-mapper: table: 253:0: ebs: WORDS (-EINVAL)" (dm_table_add_target), or a
        // device-area check's own line (which names the device as the kernel does).
        // The last one: a misaligned table first logs blk_stack_limits' "caused an
        // alignment inconsistency" lines, then the refusal.
        let kernel = lines
            .iter()
            .rev()
            .find(|(k, _)| k == "kernel-err")
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name}: kernel-err in case"));
        let words = if let Some(at) = kernel.find("too small for target") {
            &kernel[at..]
        } else if let Some(at) = kernel.find("table line ") {
            &kernel[at..]
        } else if let Some(at) = kernel.find("len=") {
            kernel[at..].split(" of ").next().unwrap()
        } else {
            kernel
                .split_once("ebs: ")
                .map_or(kernel, |(_, w)| w.split(" (-").next().unwrap())
        };
        let ours = err.to_string();
        assert!(
            ours.contains(words.trim()),
            "{name}: ours {ours:?}, kernel {kernel:?}"
        );
        refused += 1;
    }
    assert_eq!(refused, 17, "the fixture's refused cases");
}
