//! raid against the real Linux 6.12 kernel: every case of tests/fixtures/raid/cases.txt
//! (made by make.sh there, which runs guest.sh on shared/oracle over loop devices). Every
//! table the kernel loaded parses and prints as `dmsetup table` printed it; the raid1 sets
//! without metadata (the cases with I/O) are built over the same data bytes and give the
//! kernel's in-sync status, size, the sha256 of the device read 4 KiB at a time and of each
//! data device after a pattern is written through the device. Tables the kernel refused are
//! refused with the kernel's `ti->error` words and errno.

mod remap_support;

use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};
use sha2::{Digest, Sha256};

use remap_support::{assert_refused_like_kernel, cases, get, hex, input, one, seq_text};

const FIXTURE: &str = include_str!("fixtures/raid/cases.txt");
const DEV_BYTES: usize = 1 << 20;

/// The guest's loop devices: four data devices with their `fill` patterns, two zeroed
/// metadata devices.
fn registry() -> (Registry, Vec<Arc<MemVolume>>) {
    let reg = Registry::new();
    let mut vols: Vec<Arc<MemVolume>> = (0..4)
        .map(|i| {
            // `seq 3000001 3000000` prints nothing: the fourth stays zeros.
            let mut bytes = seq_text(i * 1_000_000 + 1, 1, 3_000_000, DEV_BYTES);
            bytes.resize(DEV_BYTES, 0);
            Arc::new(MemVolume::from_bytes(bytes).unwrap())
        })
        .collect();
    for _ in 0..2 {
        vols.push(Arc::new(MemVolume::new(SectorCount(2048)).unwrap()));
    }
    for (i, v) in vols.iter().enumerate() {
        reg.insert_volume(&format!("7:{i}"), v.clone());
    }
    (reg, vols)
}

fn spec(name: &str, table: Table) -> DeviceSpec {
    DeviceSpec {
        name: name.to_string(),
        uuid: String::new(),
        minor: None,
        mode: TableMode::ReadWrite,
        table,
    }
}

#[test]
fn tables_the_kernel_loaded_print_as_the_kernel_and_raid1_reads_and_writes_as_it() {
    let (mut loaded, mut with_io) = (0, 0);
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_some() {
            continue;
        }
        let table = Table::parse(&input(&lines, &name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            table.to_text(Default::default()).trim_end(),
            one(&lines, "table", &name),
            "{name}"
        );
        loaded += 1;
        let Some(want_size) = get(&lines, "size") else {
            continue;
        };
        let (reg, vols) = registry();
        let dev = reg
            .create(&spec(&name, table))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            dev.status_text().trim_end_matches('\n'),
            one(&lines, "status", &name),
            "{name}"
        );
        let size = dev.size().0 * 512;
        assert_eq!(size.to_string(), want_size, "{name}");
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 4096];
        for b in 0..size / 4096 {
            dev.read(Sector(b * 8), &mut buf).unwrap();
            h.update(&buf);
        }
        assert_eq!(
            hex(h.finalize()),
            one(&lines, "read-sha256", &name),
            "{name}"
        );
        let pattern = seq_text(9_000_000, -1, 1, usize::try_from(size).unwrap());
        for (i, block) in pattern.chunks(4096).enumerate() {
            dev.write(Sector(i as u64 * 8), block).unwrap();
        }
        assert_eq!(one(&lines, "write-rc", &name), "0");
        for (i, v) in vols[..4].iter().enumerate() {
            let mut b = vec![0u8; DEV_BYTES];
            v.read(Sector(0), &mut b).unwrap();
            let key = format!("leg{i}-sha256");
            assert_eq!(
                hex(Sha256::digest(&b)),
                one(&lines, &key, &name),
                "{name}: {key}"
            );
        }
        with_io += 1;
    }
    assert_eq!((loaded, with_io), (14, 5), "the fixture's loaded cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let mut refused = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_none() {
            continue;
        }
        let (reg, _vols) = registry();
        let err = Table::parse(&input(&lines, &name))
            .and_then(|table| reg.create(&spec(&name, table)))
            .expect_err(&name);
        assert_refused_like_kernel(&name, &lines, "raid", &err);
        refused += 1;
    }
    assert_eq!(refused, 52, "the fixture's refused cases");
}
