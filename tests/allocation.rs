//! What `allocation`, `write_zeroes` and `write_fua` answer and do per implementation:
//! exact extents for sparse files (checked against `qemu-img map`), thin, snapshot,
//! striped and multi-line devices; dust and flakey FUA semantics.

use std::process::Command;
use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::testing::conformance;
use dmemu::volume::{Allocation, Extent, Unmap, MAX_EXTENTS};
use dmemu::{
    Access, FileVolume, MappedDevice, MemVolume, Registry, Sector, SectorCount, SharedVolume,
    Table, TableMode, Volume,
};

use Allocation::{Data, Hole};

fn ext(len: u64, state: Allocation) -> Extent {
    Extent {
        len: SectorCount(len),
        state,
    }
}

fn mem(sectors: u64) -> SharedVolume {
    Arc::new(MemVolume::new(SectorCount(sectors)).unwrap())
}

fn create(r: &Registry, name: &str, table: &str) -> Arc<MappedDevice> {
    r.create(&DeviceSpec {
        name: name.to_string(),
        uuid: String::new(),
        minor: None,
        mode: TableMode::ReadWrite,
        table: Table::parse(table).unwrap(),
    })
    .unwrap()
}

fn sparse(sectors: u64) -> (tempfile::NamedTempFile, FileVolume) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(sectors * 512).unwrap();
    let v = FileVolume::open(f.path(), Access::ReadWrite).unwrap();
    (f, v)
}

fn whole(v: &dyn Volume) -> Vec<Extent> {
    conformance::allocation_is_well_formed(v, Sector(0), v.size())
}

/// `qemu-img map --output=json` of a raw image as merged `(bytes, data)` runs.
fn qemu_map(path: &std::path::Path) -> Vec<(u64, bool)> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw"])
        .arg(path)
        .output()
        .expect("qemu-img (qemu-utils) must be installed; .ci/run installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut runs: Vec<(u64, bool)> = Vec::new();
    for e in entries {
        let len = e["length"].as_u64().unwrap();
        let data = e["data"].as_bool().unwrap();
        match runs.last_mut() {
            Some(last) if last.1 == data => last.0 += len,
            _ => runs.push((len, data)),
        }
    }
    runs
}

fn as_runs(extents: &[Extent]) -> Vec<(u64, bool)> {
    extents
        .iter()
        .map(|e| (e.len.bytes(), e.state == Data))
        .collect()
}

#[test]
fn file_allocation_follows_holes_and_agrees_with_qemu_img_map() {
    let (f, v) = sparse(8192);
    v.write(Sector(0), &[1u8; 4096]).unwrap();
    v.write(Sector(128), &[2u8; 64 * 512]).unwrap();
    v.write(Sector(8184), &[3u8; 4096]).unwrap();
    // A hole punched inside the second run, zeros kept allocated right after it.
    v.write_zeroes(Sector(160), SectorCount(16), Unmap::Allowed)
        .unwrap();
    let got = whole(&v);
    assert_eq!(
        got,
        [
            ext(8, Data),
            ext(120, Hole),
            ext(32, Data),
            ext(16, Hole),
            ext(16, Data),
            ext(7992, Hole),
            ext(8, Data)
        ]
    );
    assert_eq!(as_runs(&got), qemu_map(f.path()));
    // A question starting inside a hole and ending inside data.
    assert_eq!(
        v.allocation(Sector(100), SectorCount(40)).unwrap(),
        [ext(28, Hole), ext(12, Data)]
    );
}

#[test]
fn file_allocation_stops_after_max_extents_and_callers_loop() {
    let blocks = MAX_EXTENTS as u64 + 50;
    let (f, v) = sparse(blocks * 16);
    for b in 0..blocks {
        v.write(Sector(b * 16), &[9u8; 4096]).unwrap();
    }
    let first = v.allocation(Sector(0), v.size()).unwrap();
    assert_eq!(first.len(), MAX_EXTENTS);
    let all = whole(&v);
    assert_eq!(all.len(), 2 * blocks as usize);
    assert!(all.chunks(2).all(|p| p == [ext(8, Data), ext(8, Hole)]));
    assert_eq!(as_runs(&all), qemu_map(f.path()));
}

#[test]
fn file_write_zeroes_forbidden_keeps_data_readable_as_zeros_without_a_hole_punch() {
    let (_f, v) = sparse(64);
    v.write(Sector(0), &[4u8; 64 * 512]).unwrap();
    v.write_zeroes(Sector(8), SectorCount(8), Unmap::Forbidden)
        .unwrap();
    let mut back = vec![1u8; 64 * 512];
    v.read(Sector(0), &mut back).unwrap();
    assert!(back[8 * 512..16 * 512].iter().all(|&b| b == 0));
    assert!(back[..8 * 512].iter().all(|&b| b == 4));
    // st_blocks: a punched hole would free the 4 KiB; ZERO_RANGE keeps it allocated.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(v.path()).unwrap().blocks(), 64);
}

#[test]
fn striped_allocation_merges_each_chunks_stripe_answer() {
    let r = Registry::new();
    let (_fa, a) = sparse(64);
    let (_fb, b) = sparse(64);
    a.write(Sector(8), &[1u8; 4096]).unwrap();
    r.insert_volume("a", Arc::new(a));
    r.insert_volume("b", Arc::new(b));
    // Chunk k is on stripe k % 2: chunk 2 is a's second chunk (data), the rest holes.
    let dev = create(&r, "s", "0 128 striped 2 8 a 0 b 0");
    assert_eq!(whole(&*dev), [ext(16, Hole), ext(8, Data), ext(104, Hole)]);
}

#[test]
fn mapped_device_merges_extents_across_lines() {
    let r = Registry::new();
    r.insert_volume("disk", mem(64));
    let dev = create(
        &r,
        "m",
        "0 64 zero\n64 32 zero\n96 64 linear disk 0\n160 8 zero",
    );
    assert_eq!(whole(&*dev), [ext(96, Hole), ext(64, Data), ext(8, Hole)]);
}

fn pool(r: &Registry) -> Arc<MappedDevice> {
    r.insert_volume("meta", mem(4 * 2048));
    r.insert_volume("data", mem(8 * 2048));
    create(r, "pool", "0 16384 thin-pool meta data 128 0")
}

#[test]
fn thin_allocation_is_the_mapping_and_write_zeroes_may_unmap_whole_blocks() {
    let r = Registry::new();
    let p = pool(&r);
    p.message(Sector(0), &["create_thin", "1"]).unwrap();
    let thin = create(&r, "t", "0 2048 thin pool 1");
    assert_eq!(whole(&*thin), [ext(2048, Hole)]);
    thin.write(Sector(200), &[5u8; 512]).unwrap();
    assert_eq!(
        whole(&*thin),
        [ext(128, Hole), ext(128, Data), ext(1792, Hole)]
    );
    // Block 1 is whole in the range and unmapped; the partial blocks 0 and 2 are unmapped
    // already and stay so.
    thin.write_zeroes(Sector(100), SectorCount(200), Unmap::Allowed)
        .unwrap();
    assert_eq!(whole(&*thin), [ext(2048, Hole)]);
    assert!(
        thin.status_text().ends_with(" thin 0 -\n"),
        "{}",
        thin.status_text()
    );
    // Without permission to unmap, zeros are written and provision the block.
    thin.write_zeroes(Sector(0), SectorCount(1), Unmap::Forbidden)
        .unwrap();
    assert_eq!(whole(&*thin), [ext(128, Data), ext(1920, Hole)]);
}

#[test]
fn thin_with_external_origin_answers_the_origin_for_unmapped_blocks() {
    let r = Registry::new();
    let p = pool(&r);
    p.message(Sector(0), &["create_thin", "2"]).unwrap();
    let (_f, origin) = sparse(1000);
    origin.write(Sector(504), &[6u8; 4096]).unwrap();
    r.insert_volume("ext", Arc::new(origin));
    let thin = create(&r, "t", "0 2048 thin pool 2 ext");
    thin.write(Sector(1024), &[7u8; 512]).unwrap();
    assert_eq!(
        whole(&*thin),
        [
            ext(504, Hole),
            ext(8, Data),
            ext(512, Hole),
            ext(128, Data),
            ext(896, Hole)
        ]
    );
    // Unmapping would expose the origin: zeros are written instead.
    thin.write_zeroes(Sector(384), SectorCount(256), Unmap::Allowed)
        .unwrap();
    assert_eq!(
        whole(&*thin),
        [
            ext(384, Hole),
            ext(256, Data),
            ext(384, Hole),
            ext(128, Data),
            ext(896, Hole)
        ]
    );
}

#[test]
fn snapshot_allocation_is_data_for_exceptions_and_the_origins_elsewhere() {
    let r = Registry::new();
    let (_f, origin) = sparse(256);
    origin.write(Sector(32), &[8u8; 4096]).unwrap();
    r.insert_volume("origin", Arc::new(origin));
    r.insert_volume("cow", mem(1024));
    let snap = create(&r, "snap", "0 256 snapshot origin cow N 8");
    snap.write(Sector(9), &[1u8; 512]).unwrap();
    assert_eq!(
        whole(&*snap),
        [
            ext(8, Hole),
            ext(8, Data),
            ext(16, Hole),
            ext(8, Data),
            ext(216, Hole)
        ]
    );
    let origin = create(&r, "orig", "0 256 snapshot-origin origin");
    assert_eq!(
        whole(&*origin),
        [ext(32, Hole), ext(8, Data), ext(216, Hole)]
    );
    // Zeroing the origin copies its chunks out to the snapshot first.
    origin
        .write_zeroes(Sector(0), SectorCount(256), Unmap::Allowed)
        .unwrap();
    assert_eq!(whole(&*origin), [ext(256, Hole)]);
    let mut back = [0u8; 512];
    snap.read(Sector(32), &mut back).unwrap();
    assert_eq!(back, [8u8; 512]);
}

#[test]
fn dust_fua_write_is_one_write_not_a_write_and_a_flush_to_block_zero() {
    let r = Registry::new();
    r.insert_volume("disk", mem(64));
    let dust = create(&r, "d", "0 64 dust disk 0 512");
    dust.message(Sector(0), &["addbadblock", "0", "1"]).unwrap();
    dust.message(Sector(0), &["enable"]).unwrap();
    dust.write_fua(Sector(5), &[1u8; 512]).unwrap();
    // Block 0's one write failure is still there.
    assert!(dust.write(Sector(0), &[2u8; 512]).is_err());
    dust.write(Sector(0), &[2u8; 512]).unwrap();
}

#[test]
fn flakey_corrupt_bio_byte_with_the_fua_flag_corrupts_fua_writes_only() {
    let r = Registry::new();
    let disk = mem(64);
    r.insert_volume("disk", Arc::clone(&disk));
    // Always down; corrupt byte 1 of writes whose bi_opf has REQ_FUA (1 << 17).
    let f = create(
        &r,
        "f",
        "0 64 flakey disk 0 0 1 5 corrupt_bio_byte 1 w 7 131072",
    );
    f.write(Sector(0), &[1u8; 512]).unwrap();
    f.write_fua(Sector(1), &[1u8; 512]).unwrap();
    let mut back = [0u8; 1024];
    disk.read(Sector(0), &mut back).unwrap();
    assert_eq!(back[0], 1, "a plain write must not match the FUA flag");
    assert_eq!(back[512], 7, "the FUA write must be corrupted");
    assert!(back[513..].iter().all(|&b| b == 1));
}

#[test]
fn flakey_drop_writes_drops_fua_writes_and_error_writes_fails_them() {
    let r = Registry::new();
    let disk = mem(64);
    r.insert_volume("disk", Arc::clone(&disk));
    let drop = create(&r, "d", "0 64 flakey disk 0 0 1 1 drop_writes");
    drop.write_fua(Sector(0), &[1u8; 512]).unwrap();
    drop.write_zeroes(Sector(0), SectorCount(1), Unmap::Forbidden)
        .unwrap();
    let fail = create(&r, "e", "0 64 flakey disk 0 0 1 1 error_writes");
    assert_eq!(
        fail.write_fua(Sector(0), &[1u8; 512]).unwrap_err().errno(),
        5
    );
    let mut back = [9u8; 512];
    disk.read(Sector(0), &mut back).unwrap();
    assert_eq!(
        back, [0u8; 512],
        "a dropped or failed FUA write reached the disk"
    );
}

#[test]
fn thin_allocation_walks_a_bounded_number_of_blocks_per_answer() {
    let r = Registry::new();
    let p = pool(&r);
    p.message(Sector(0), &["create_thin", "4"]).unwrap();
    let blocks = dmemu::volume::MAX_WALK + 100;
    let thin = create(&r, "t", &format!("0 {} thin pool 4", blocks * 128));
    thin.write(Sector((blocks - 1) * 128), &[1u8; 512]).unwrap();
    let first = thin.allocation(Sector(0), thin.size()).unwrap();
    assert_eq!(first, [ext(dmemu::volume::MAX_WALK * 128, Hole)]);
    // The rest, asked from where the first answer ended (not read back: 4 GiB of zeros).
    let rest_at = dmemu::volume::MAX_WALK * 128;
    let rest = thin
        .allocation(Sector(rest_at), SectorCount(thin.size().0 - rest_at))
        .unwrap();
    assert_eq!(rest, [ext(99 * 128, Hole), ext(128, Data)]);
}
