//! Every volume backing and every target with I/O passes the same `Volume` contract checks.

use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::testing::conformance;
use dmemu::volume::{Allocation, Extent, Unmap};
use dmemu::{
    Access, Error, FileVolume, MappedDevice, MemVolume, MmapVolume, Registry, Sector, SectorCount,
    SharedVolume, Table, TableMode, Volume,
};

fn mem(sectors: u64) -> SharedVolume {
    Arc::new(MemVolume::new(SectorCount(sectors)).unwrap())
}

fn device(registry: &Registry, table: &str, mode: TableMode) -> Arc<MappedDevice> {
    named(registry, "dev", table, mode)
}

fn named(registry: &Registry, name: &str, table: &str, mode: TableMode) -> Arc<MappedDevice> {
    registry
        .create(&DeviceSpec {
            name: name.to_string(),
            uuid: String::new(),
            minor: None,
            mode,
            table: Table::parse(table).unwrap(),
        })
        .unwrap()
}

#[test]
fn mem_volume_conforms() {
    conformance::check_read_write(&*mem(64));
}

#[test]
fn file_volume_conforms_and_discard_reads_zeros() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(64 * 512).unwrap();
    let v = FileVolume::open(f.path(), Access::ReadWrite).unwrap();
    conformance::check_read_write(&v);
    v.write(Sector(8), &[0xee; 4096]).unwrap();
    v.discard(Sector(8), SectorCount(8)).unwrap();
    let mut back = [0xffu8; 4096];
    v.read(Sector(8), &mut back).unwrap();
    assert_eq!(back, [0u8; 4096]);
}

#[test]
fn read_only_file_volume_refuses_writes() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(16 * 512).unwrap();
    conformance::check_read_only(&FileVolume::open(f.path(), Access::ReadOnly).unwrap());
}

#[test]
fn mmap_volume_reads_file_contents_and_refuses_writes() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let data = conformance::pattern(0, 16 * 512, 9);
    std::fs::write(f.path(), &data).unwrap();
    let v = MmapVolume::open(f.path()).unwrap();
    assert_eq!(v.size(), SectorCount(16));
    let mut back = vec![0u8; 3 * 512];
    v.read(Sector(5), &mut back).unwrap();
    assert_eq!(back, &data[5 * 512..8 * 512]);
    conformance::check_read_only(&v);
}

#[test]
fn linear_device_conforms_and_maps_at_offset() {
    let r = Registry::new();
    let disk = mem(100);
    r.insert_volume("disk", Arc::clone(&disk));
    let dev = device(&r, "0 64 linear disk 30", TableMode::ReadWrite);
    conformance::check_read_write(&*dev);
    dev.write(Sector(0), &[0x11; 512]).unwrap();
    let mut b = [0u8; 512];
    disk.read(Sector(30), &mut b).unwrap();
    assert_eq!(b, [0x11; 512]);
}

#[test]
fn striped_device_conforms_for_odd_chunk_and_stripe_counts() {
    for (stripes, chunk) in [(1u64, 1u64), (2, 8), (3, 7), (5, 3)] {
        let r = Registry::new();
        let mut table = format!("0 {} striped {stripes} {chunk}", stripes * chunk * 8);
        for i in 0..stripes {
            r.insert_volume(&format!("d{i}"), mem(chunk * 8 + 2));
            table.push_str(&format!(" d{i} 2"));
        }
        conformance::check_read_write(&*device(&r, &table, TableMode::ReadWrite));
    }
}

#[test]
fn striped_places_chunks_round_robin_like_the_kernel() {
    // 3 stripes of 7-sector chunks: target chunk k lives on stripe k % 3, row k / 3.
    let r = Registry::new();
    let disks: Vec<_> = (0..3).map(|_| mem(7 * 4)).collect();
    for (i, d) in disks.iter().enumerate() {
        r.insert_volume(&format!("d{i}"), Arc::clone(d));
    }
    let dev = device(&r, "0 84 striped 3 7 d0 0 d1 0 d2 0", TableMode::ReadWrite);
    let data = conformance::pattern(0, 84 * 512, 3);
    dev.write(Sector(0), &data).unwrap();
    for k in 0..12usize {
        let (stripe, row) = (k % 3, k / 3);
        let mut got = vec![0u8; 7 * 512];
        disks[stripe]
            .read(Sector(row as u64 * 7), &mut got)
            .unwrap();
        assert_eq!(got, &data[k * 7 * 512..(k + 1) * 7 * 512], "chunk {k}");
    }
}

#[test]
fn multi_line_table_splits_io_across_lines() {
    let r = Registry::new();
    r.insert_volume("a", mem(16));
    r.insert_volume("b", mem(16));
    let dev = device(
        &r,
        "0 10 linear a 0\n10 6 linear b 3\n16 8 striped 2 2 a 10 b 9",
        TableMode::ReadWrite,
    );
    conformance::check_read_write(&*dev);
}

#[test]
fn stacked_devices_conform() {
    let r = Registry::new();
    r.insert_volume("disk", mem(256));
    named(&r, "base", "0 200 linear disk 50", TableMode::ReadWrite);
    let top = named(
        &r,
        "top",
        "0 96 striped 2 4 /dev/mapper/base 0 base 100",
        TableMode::ReadWrite,
    );
    conformance::check_read_write(&*top);
}

#[test]
fn read_only_table_refuses_writes() {
    let r = Registry::new();
    r.insert_volume("disk", mem(64));
    conformance::check_read_only(&*device(&r, "0 64 linear disk 0", TableMode::ReadOnly));
}

#[test]
fn zero_target_reads_zeros_and_drops_writes() {
    let r = Registry::new();
    let dev = device(&r, "0 64 zero", TableMode::ReadWrite);
    dev.write(Sector(3), &[9u8; 1024]).unwrap();
    let mut b = [1u8; 1024];
    dev.read(Sector(3), &mut b).unwrap();
    assert_eq!(b, [0u8; 1024]);
    conformance::out_of_range_changes_nothing(&*dev);
    conformance::misaligned_is_refused(&*dev);
}

#[test]
fn error_target_fails_every_request_with_eio() {
    let r = Registry::new();
    let dev = device(&r, "0 64 error", TableMode::ReadWrite);
    let mut b = [0u8; 512];
    for e in [
        dev.read(Sector(0), &mut b).unwrap_err(),
        dev.write(Sector(0), &b).unwrap_err(),
        dev.write_fua(Sector(0), &b).unwrap_err(),
        dev.discard(Sector(0), SectorCount(1)).unwrap_err(),
    ] {
        assert!(matches!(e, Error::TargetFailed { .. }));
        assert_eq!(e.errno(), 5);
    }
    // No num_flush_bios: the flush completes at the dm core (tests/flush_kernel.rs).
    dev.flush().unwrap();
}

#[test]
fn linear_past_device_end_is_refused_at_load() {
    let r = Registry::new();
    r.insert_volume("disk", mem(64));
    let e = r
        .create(&DeviceSpec {
            name: "x".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse("0 64 linear disk 1").unwrap(),
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("too small for target"), "{e}");
}

#[test]
fn striped_status_marks_failed_stripe() {
    let r = Registry::new();
    r.insert_volume("a", mem(8));
    named(&r, "bad", "0 8 error", TableMode::ReadWrite);
    let dev = device(&r, "0 16 striped 2 4 a 0 bad 0", TableMode::ReadWrite);
    let mut b = [0u8; 8 * 512];
    assert!(dev.read(Sector(0), &mut b).is_err());
    assert_eq!(dev.status_text(), "0 16 striped 2 a bad 1 AD\n");
}

#[test]
fn thin_device_conforms_through_a_fresh_pool() {
    // An all-zero metadata device is formatted by the pool, as the kernel does.
    let r = Registry::new();
    r.insert_volume("meta", mem(4 * 2048));
    r.insert_volume("data", mem(8 * 2048));
    let pool = named(
        &r,
        "pool",
        "0 16384 thin-pool meta data 128 0",
        TableMode::ReadWrite,
    );
    pool.message(Sector(0), &["create_thin", "7"]).unwrap();
    // 1 MiB virtual over 8 MiB of data: blocks get provisioned, broken into 4 KiB writes
    // at block edges and read back across mapped and unmapped blocks.
    let thin = device(&r, "0 2048 thin pool 7", TableMode::ReadWrite);
    conformance::check_read_write(&*thin);
}

fn sparse_file(sectors: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(sectors * 512).unwrap();
    f
}

#[test]
fn sparse_file_volume_conforms() {
    // 1 MiB, mostly hole, data in two places: every extension method meets holes.
    let f = sparse_file(2048);
    let v = FileVolume::open(f.path(), Access::ReadWrite).unwrap();
    v.write(Sector(128), &[1u8; 4096]).unwrap();
    v.write(Sector(1024), &[2u8; 8192]).unwrap();
    conformance::check_read_write(&v);
}

#[test]
fn thin_device_with_external_origin_conforms() {
    let r = Registry::new();
    r.insert_volume("meta", mem(4 * 2048));
    r.insert_volume("data", mem(8 * 2048));
    r.insert_volume(
        "ext",
        Arc::new(MemVolume::from_bytes(conformance::pattern(0, 1000 * 512, 5)).unwrap()),
    );
    let pool = named(
        &r,
        "pool",
        "0 16384 thin-pool meta data 128 0",
        TableMode::ReadWrite,
    );
    pool.message(Sector(0), &["create_thin", "3"]).unwrap();
    // The origin covers part of the device only: reads past it are zeros.
    let thin = device(&r, "0 2048 thin pool 3 ext", TableMode::ReadWrite);
    conformance::check_read_write(&*thin);
}

#[test]
fn snapshot_devices_conform_over_memory() {
    for store in ["N", "P"] {
        let r = Registry::new();
        r.insert_volume(
            "origin",
            Arc::new(MemVolume::from_bytes(conformance::pattern(0, 256 * 512, 1)).unwrap()),
        );
        r.insert_volume("cow", mem(1024));
        let snap = named(
            &r,
            "snap",
            &format!("0 256 snapshot origin cow {store} 8"),
            TableMode::ReadWrite,
        );
        conformance::check_read_write(&*snap);
    }
}

#[test]
fn snapshot_origin_conforms_and_keeps_its_snapshot() {
    let r = Registry::new();
    let before = conformance::pattern(0, 256 * 512, 2);
    r.insert_volume(
        "base",
        Arc::new(MemVolume::from_bytes(before.clone()).unwrap()),
    );
    r.insert_volume("cow", mem(1024));
    let snap = named(
        &r,
        "snap",
        "0 256 snapshot base cow P 8",
        TableMode::ReadWrite,
    );
    let origin = named(
        &r,
        "orig",
        "0 256 snapshot-origin base",
        TableMode::ReadWrite,
    );
    conformance::check_read_write(&*origin);
    let mut back = vec![0u8; before.len()];
    snap.read(Sector(0), &mut back).unwrap();
    assert!(
        back == before,
        "origin write_zeroes or write_fua skipped the copy-out"
    );
}

#[test]
fn delay_flakey_dust_and_crypt_conform() {
    let key = "0123456789abcdef".repeat(4);
    for table in [
        "0 64 delay disk 0 0".to_string(),
        "0 64 flakey disk 0 1 0".to_string(),
        "0 64 dust disk 0 512".to_string(),
        format!("0 64 crypt aes-xts-plain64 {key} 0 disk 0"),
    ] {
        let r = Registry::new();
        r.insert_volume("disk", mem(64));
        conformance::check_read_write(&*device(&r, &table, TableMode::ReadWrite));
    }
}

#[test]
fn zero_target_extensions_drop_and_answer_holes() {
    let r = Registry::new();
    let dev = device(&r, "0 64 zero", TableMode::ReadWrite);
    dev.write_fua(Sector(1), &[3u8; 512]).unwrap();
    for unmap in [Unmap::Allowed, Unmap::Forbidden] {
        dev.write_zeroes(Sector(0), SectorCount(64), unmap).unwrap();
    }
    let extents = conformance::allocation_is_well_formed(&*dev, Sector(0), SectorCount(64));
    assert_eq!(
        extents,
        [Extent {
            len: SectorCount(64),
            state: Allocation::Hole
        }]
    );
    conformance::extended_out_of_range_changes_nothing(&*dev);
}

#[test]
fn error_target_fails_the_extensions_with_eio() {
    let r = Registry::new();
    let dev = device(&r, "0 64 error", TableMode::ReadWrite);
    for e in [
        dev.write_fua(Sector(0), &[0u8; 512]).unwrap_err(),
        dev.write_zeroes(Sector(0), SectorCount(1), Unmap::Allowed)
            .unwrap_err(),
        dev.write_zeroes(Sector(63), SectorCount(1), Unmap::Forbidden)
            .unwrap_err(),
        dev.allocation(Sector(0), SectorCount(64)).unwrap_err(),
    ] {
        assert!(matches!(e, Error::TargetFailed { .. }), "{e}");
        assert_eq!(e.errno(), 5);
    }
}
