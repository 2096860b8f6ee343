//! raid against the real Linux 6.12 kernel: every case of tests/fixtures/raid/cases.txt
//! (made by make.sh there, which runs guest.sh on shared/oracle over loop devices). Every
//! table the kernel loaded parses and prints as `dmsetup table` printed it; the raid1 sets
//! without metadata (the cases with I/O) are built over the same data bytes and give the
//! kernel's in-sync status, size, the sha256 of the device read 4 KiB at a time and of each
//! data device after a pattern is written through the device. Tables the kernel refused are
//! refused with the kernel's `ti->error` words and errno.

mod remap_support;

use std::sync::Arc;

use dmemu::{MemVolume, Registry, SectorCount, Table};

use remap_support::{
    assert_refused_like_kernel, cases, create_read_and_write_as_the_kernel, get, input, one,
    patterned, registry_of, spec, volume_shas,
};

const FIXTURE: &str = include_str!("fixtures/raid/cases.txt");
const DEV_BYTES: usize = 1 << 20;

/// The guest's loop devices: four data devices with their `fill` patterns, two zeroed
/// metadata devices.
fn registry() -> (Registry, Vec<Arc<MemVolume>>) {
    let mut vols = patterned(4, DEV_BYTES);
    for _ in 0..2 {
        vols.push(Arc::new(MemVolume::new(SectorCount(2048)).unwrap()));
    }
    (registry_of(&vols), vols)
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
        if get(&lines, "size").is_none() {
            continue;
        }
        let (reg, vols) = registry();
        let (_dev, _size) = create_read_and_write_as_the_kernel(&reg, &name, &lines);
        for (i, sha) in volume_shas(&vols[..4], DEV_BYTES).iter().enumerate() {
            assert_eq!(
                sha,
                one(&lines, &format!("leg{i}-sha256"), &name),
                "{name}: leg {i}"
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
