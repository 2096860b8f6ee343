//! I/O tests for snapshot, snapshot-origin and snapshot-merge over memory volumes: the
//! persistent store's layout and commit rules, copy-on-write from both sides, overflow,
//! merging, and damaged COW stores. Kernel-made images are checked in tests/snapshot_kernel.rs.

use std::sync::Arc;

use super::store::{DiskException, DiskHeader, PersistentStore, SNAP_MAGIC};
use super::*;
use crate::error::Error;
use crate::mapped_device::MappedDevice;
use crate::registry::Registry;
use crate::table::{DeviceSpec, Table, TableMode};
use crate::units::{Sector, SectorCount};
use crate::volume::{MemVolume, SharedVolume, Volume};

/// Origin size used throughout: 512 chunks of 8 sectors.
const ORIGIN: u64 = 4096;

fn mem(sectors: u64) -> Arc<MemVolume> {
    Arc::new(MemVolume::new(SectorCount(sectors)).unwrap())
}

/// A registry with `origin` (sector i filled with byte i % 251) and a zeroed `cow`.
fn setup(cow_sectors: u64) -> (Registry, Arc<MemVolume>, Arc<MemVolume>) {
    let r = Registry::new();
    let origin = mem(ORIGIN);
    for i in 0..ORIGIN {
        let b = u8::try_from(i % 251).unwrap();
        origin.write(Sector(i), &[b; 512]).unwrap();
    }
    let cow = mem(cow_sectors);
    r.insert_volume("origin", Arc::clone(&origin) as SharedVolume);
    r.insert_volume("cow", Arc::clone(&cow) as SharedVolume);
    (r, origin, cow)
}

/// A new registry over `r`'s origin and cow (its devices are gone, as after `dmsetup
/// remove`).
fn again(r: &Registry) -> Registry {
    let n = Registry::new();
    for name in ["origin", "cow"] {
        let v = r.volume(&crate::targets::DeviceRef(name.into())).unwrap();
        n.insert_volume(name, v);
    }
    n
}

/// A new registry over the same volumes (the devices of the old one are gone).
fn reopen(origin: &Arc<MemVolume>, cow: &Arc<MemVolume>) -> Registry {
    let r = Registry::new();
    r.insert_volume("origin", Arc::clone(origin) as SharedVolume);
    r.insert_volume("cow", Arc::clone(cow) as SharedVolume);
    r
}

fn create(r: &Registry, name: &str, table: &str) -> crate::error::Result<Arc<MappedDevice>> {
    r.create(&DeviceSpec {
        name: name.to_string(),
        uuid: String::new(),
        minor: None,
        mode: TableMode::ReadWrite,
        table: Table::parse(table)?,
    })
}

fn snap(r: &Registry, store: &str) -> Arc<MappedDevice> {
    create(
        r,
        "snap",
        &format!("0 {ORIGIN} snapshot origin cow {store}"),
    )
    .unwrap()
}

/// `snap` again over `r`'s origin and cow in a fresh registry: the exception store as
/// reloaded from the COW.
fn reload(r: &Registry, store: &str) -> Arc<MappedDevice> {
    create(
        &again(r),
        "again",
        &format!("0 {ORIGIN} snapshot origin cow {store}"),
    )
    .unwrap()
}

/// A snapshot-origin over `r`'s origin.
fn origin_dev(r: &Registry) -> Arc<MappedDevice> {
    create(r, "orig", &format!("0 {ORIGIN} snapshot-origin origin")).unwrap()
}

/// One 512-byte write of `byte` at the start of each of the first `chunks` 8-sector chunks.
fn write_chunks(d: &dyn Volume, chunks: u64, byte: u8) {
    for c in 0..chunks {
        d.write(Sector(c * 8), &[byte; 512]).unwrap();
    }
}

fn read(v: &dyn Volume, sector: u64, sectors: usize) -> Vec<u8> {
    let mut b = vec![0; sectors * 512];
    v.read(Sector(sector), &mut b).unwrap();
    b
}

fn header(cow: &MemVolume) -> DiskHeader {
    let b = read(cow, 0, 1);
    DiskHeader::decode(b[..16].try_into().unwrap())
}

fn entry(cow: &MemVolume, chunk: u64, i: usize) -> DiskException {
    let b = read(cow, chunk * 8, 8);
    DiskException::decode(b[i * 16..i * 16 + 16].try_into().unwrap())
}

fn status(d: &MappedDevice) -> String {
    d.single_target().unwrap().status()
}

#[test]
fn codec_header_and_exception_round_trip_little_endian() {
    let h = DiskHeader {
        magic: SNAP_MAGIC,
        valid: 1,
        version: 1,
        chunk_size: 8,
    };
    assert_eq!(&h.encode()[..4], b"SnAp");
    assert_eq!(DiskHeader::decode(&h.encode()), h);
    let e = DiskException {
        old_chunk: 0x0102_0304_0506_0708,
        new_chunk: 9,
    };
    assert_eq!(e.encode()[0], 8);
    assert_eq!(DiskException::decode(&e.encode()), e);
}

#[test]
fn new_persistent_store_writes_header_and_zeroes_area_zero() {
    let (r, _, cow) = setup(1024);
    cow.write(Sector(8), &[0xff; 4096]).unwrap();
    let d = snap(&r, "P 8");
    assert_eq!(
        header(&cow),
        DiskHeader {
            magic: SNAP_MAGIC,
            valid: 1,
            version: 1,
            chunk_size: 8
        }
    );
    assert_eq!(read(&*cow, 8, 8), vec![0; 4096]);
    assert_eq!(status(&d), "16/1024 16");
}

#[test]
fn snapshot_partial_write_copies_origin_chunk_then_commits_area() {
    let (r, origin, cow) = setup(1024);
    let d = snap(&r, "P 8");
    d.write(Sector(19), &[0xaa; 512]).unwrap();
    // Chunk 2 of the origin (sectors 16..24) went to COW chunk 2, with sector 19 replaced.
    let mut want = read(&*origin, 16, 8);
    want[3 * 512..4 * 512].fill(0xaa);
    assert_eq!(read(&*cow, 16, 8), want);
    assert_eq!(
        entry(&cow, 1, 0),
        DiskException {
            old_chunk: 2,
            new_chunk: 2
        }
    );
    assert_eq!(read(&*d, 16, 8), want);
    assert_eq!(read(&*origin, 19, 1), vec![19; 512]);
    assert_eq!(status(&d), "24/1024 16");
}

#[test]
fn snapshot_view_survives_reload_from_the_cow() {
    let (r, _, _) = setup(1024);
    let d = snap(&r, "P 8");
    d.write(Sector(100), &[1; 1024]).unwrap();
    d.write(Sector(4000), &[2; 4096]).unwrap();
    let before = read(&*d, 0, usize::try_from(ORIGIN).unwrap());
    drop(d);
    let again = reload(&r, "P 8");
    assert_eq!(read(&*again, 0, usize::try_from(ORIGIN).unwrap()), before);
    assert_eq!(status(&again), "32/1024 16");
}

#[test]
fn origin_write_copies_old_chunk_into_snapshot_first() {
    let (r, origin, _) = setup(1024);
    let s = snap(&r, "P 8");
    let o = origin_dev(&r);
    let old = read(&*s, 40, 16);
    o.write(Sector(44), &[0x55; 4096]).unwrap();
    assert_eq!(read(&*origin, 44, 8), vec![0x55; 4096]);
    assert_eq!(read(&*s, 40, 16), old);
    // Chunks 5 and 6 were copied (the write spans both).
    assert_eq!(status(&s), "32/1024 16");
}

#[test]
fn full_area_spills_into_next_area_and_allocator_skips_it() {
    // chunk 8: 256 exceptions per area; area 1 is chunk 258.
    let (r, _, cow) = setup(4096);
    let d = snap(&r, "P 8");
    write_chunks(&*d, 257, 3);
    assert_eq!(
        entry(&cow, 1, 255),
        DiskException {
            old_chunk: 255,
            new_chunk: 257
        }
    );
    // Exception 257 skips chunk 258 (area 1) and lands in 259.
    assert_eq!(
        entry(&cow, 258, 0),
        DiskException {
            old_chunk: 256,
            new_chunk: 259
        }
    );
    assert_eq!(status(&d), "2080/4096 24");
    let view = read(&*d, 0, 4096);
    drop(d);
    let again = reload(&r, "P 0");
    assert_eq!(read(&*again, 0, 4096), view);
    assert_eq!(status(&again), "2080/4096 24");
}

#[test]
fn persistent_overflow_invalidates_snapshot_on_disk() {
    // 16 chunks: header, area 0 and 14 data chunks.
    let (r, _, cow) = setup(128);
    let d = snap(&r, "P 8");
    write_chunks(&*d, 14, 1);
    let err = d.write(Sector(14 * 8), &[1; 512]).unwrap_err();
    assert_eq!(err.errno(), libc_eio());
    assert_eq!(status(&d), "Invalid");
    assert_eq!(header(&cow).valid, 0);
    assert!(d.read(Sector(0), &mut [0; 512]).is_err());
    drop(d);
    let again = reload(&r, "P 8");
    assert_eq!(status(&again), "Invalid");
    assert!(again.read(Sector(0), &mut [0; 512]).is_err());
}

fn libc_eio() -> i32 {
    5
}

#[test]
fn overflow_store_reports_overflow_and_keeps_reads() {
    let (r, _, cow) = setup(128);
    let d = snap(&r, "PO 8");
    write_chunks(&*d, 14, 1);
    assert!(d.write(Sector(14 * 8), &[1; 512]).is_err());
    assert_eq!(status(&d), "Overflow");
    assert_eq!(header(&cow).valid, 1);
    assert_eq!(read(&*d, 0, 1), vec![1; 512]);
    assert!(d.write(Sector(0), &[2; 512]).is_err());
}

#[test]
fn transient_store_allocates_from_chunk_zero_with_no_metadata() {
    let (r, _, cow) = setup(256);
    let d = snap(&r, "N 16");
    d.write(Sector(33), &[9; 512]).unwrap();
    assert_eq!(read(&*cow, 1, 1), vec![9; 512]);
    assert_eq!(status(&d), "16/256 0");
}

#[test]
fn table_with_chunk_zero_prints_the_header_chunk_size() {
    let (r, _, _) = setup(1024);
    drop(snap(&r, "P 16"));
    let d = reload(&r, "P 0");
    assert_eq!(
        d.table_text(crate::targets::Keys::Hidden),
        format!("0 {ORIGIN} snapshot origin cow P 16\n")
    );
}

#[test]
fn merge_copies_exceptions_back_and_empties_the_store() {
    let (r, origin, cow) = setup(1024);
    let s = snap(&r, "P 8");
    s.write(Sector(0), &[7; 4096 * 3]).unwrap();
    s.write(Sector(801), &[8; 512]).unwrap();
    let view = read(&*s, 0, 4096);
    // A fresh registry: the snapshot is gone, as after `dmsetup remove`.
    let r = reopen(&origin, &cow);
    let m = create(
        &r,
        "merge",
        &format!("0 {ORIGIN} snapshot-merge origin cow P 8"),
    )
    .unwrap();
    assert_eq!(read(&*m, 0, 4096), view);
    // Last exception first (chunk 100), then the batch of consecutive chunks 0..3.
    assert_eq!(m.message(Sector(0), &["merge", "1"]).unwrap(), "1");
    assert_eq!(status(&m), "40/1024 16");
    assert_eq!(m.message(Sector(0), &["merge"]).unwrap(), "1");
    assert_eq!(status(&m), "16/1024 16");
    assert_eq!(read(&*origin, 0, 4096), view);
    assert_eq!(read(&*cow, 8, 8), vec![0; 4096]);
}

#[test]
fn cow_with_bad_magic_is_refused_naming_the_field() {
    let (r, _, cow) = setup(1024);
    cow.write(Sector(0), &[0x41; 512]).unwrap();
    let err = create(&r, "s", &format!("0 {ORIGIN} snapshot origin cow P 8")).unwrap_err();
    assert!(err.to_string().contains("magic"), "{err}");
}

fn write_header(cow: &MemVolume, valid: u32, version: u32, chunk: u32) {
    let h = DiskHeader {
        magic: SNAP_MAGIC,
        valid,
        version,
        chunk_size: chunk,
    };
    let mut s = vec![0; 512];
    s[..16].copy_from_slice(&h.encode());
    cow.write(Sector(0), &s).unwrap();
}

fn open_err(cow: &MemVolume, table_chunk: u32) -> Error {
    PersistentStore::open(cow, table_chunk, |_, _, _| Ok(())).unwrap_err()
}

#[test]
fn cow_with_unknown_version_or_bad_chunk_size_is_refused() {
    let cow = mem(1024);
    write_header(&cow, 1, 2, 8);
    assert!(open_err(&cow, 8).to_string().contains("version 2"));
    write_header(&cow, 1, 1, 12);
    assert!(open_err(&cow, 8).to_string().contains("not a power of 2"));
    write_header(&cow, 1, 1, 0);
    assert!(open_err(&cow, 8).to_string().contains("chunk_size"));
    write_header(&cow, 1, 1, 1 << 22);
    assert!(open_err(&cow, 8).to_string().contains("too high"));
    // 2^21 sectors passes the kernel's limit but not this 1024-sector COW: no 1 GiB buffer.
    write_header(&cow, 1, 1, 1 << 21);
    assert!(open_err(&cow, 8).to_string().contains("does not fit"));
}

#[test]
fn cow_smaller_than_one_chunk_is_refused() {
    let cow = mem(4);
    assert!(open_err(&cow, 8).to_string().contains("does not fit"));
}

#[test]
fn exception_beyond_the_cow_loads_and_its_chunk_fails_io_naming_the_field() {
    // As the kernel (kernel-misc.out, "beyond"): the store loads, next_free follows the bad
    // entry, and only I/O to that chunk fails.
    let (r, _, cow) = setup(64);
    write_header(&cow, 1, 1, 8);
    let e = DiskException {
        old_chunk: 1,
        new_chunk: u64::MAX,
    };
    cow.write(Sector(8), &[e.encode().to_vec(), vec![0; 496]].concat())
        .unwrap();
    let d = snap(&r, "P 8");
    let err = d.read(Sector(8), &mut [0; 512]).unwrap_err();
    assert!(err.to_string().contains("exception new_chunk"), "{err}");
    assert_eq!(err.errno(), 5);
    assert_eq!(read(&*d, 16, 1), vec![16; 512]);
    // next_free wrapped to 0 (kernel sector_t arithmetic): allocated 0.
    assert_eq!(status(&d), "0/64 16");
}

#[test]
fn full_areas_up_to_the_end_of_the_cow_are_refused_not_looped() {
    // Area 0 full of valid exceptions, and area 1 would lie beyond the COW.
    let cow = mem(8 * 258);
    write_header(&cow, 1, 1, 8);
    let mut area = Vec::new();
    for i in 0..256u64 {
        area.extend_from_slice(
            &DiskException {
                old_chunk: i,
                new_chunk: 2 + i,
            }
            .encode(),
        );
    }
    cow.write(Sector(8), &area).unwrap();
    let err = open_err(&cow, 8);
    assert!(err.to_string().contains("area 1"), "{err}");
}

#[test]
fn duplicate_origin_chunk_in_the_store_is_refused() {
    let (r, _, cow) = setup(1024);
    write_header(&cow, 1, 1, 8);
    let e = DiskException {
        old_chunk: 3,
        new_chunk: 2,
    };
    let f = DiskException {
        old_chunk: 3,
        new_chunk: 3,
    };
    cow.write(Sector(8), &[e.encode(), f.encode()].concat().repeat(16))
        .unwrap();
    let err = create(&r, "s", &format!("0 {ORIGIN} snapshot origin cow P 8")).unwrap_err();
    assert!(err.to_string().contains("second exception"), "{err}");
}

#[test]
fn invalid_snapshot_loads_and_fails_io_but_merge_reads_origin() {
    let (r, origin, cow) = setup(1024);
    write_header(&cow, 0, 1, 8);
    let d = snap(&r, "P 8");
    assert_eq!(status(&d), "Invalid");
    assert_eq!(d.read(Sector(0), &mut [0; 512]).unwrap_err().errno(), 5);
    let m = create(
        &again(&r),
        "m",
        &format!("0 {ORIGIN} snapshot-merge origin cow P 8"),
    )
    .unwrap();
    assert_eq!(read(&*m, 9, 1), read(&*origin, 9, 1));
}

#[test]
fn discard_zeroes_whole_cow_chunk_and_ignores_chunks_without_exception() {
    let (r, _, cow) = setup(1024);
    let d = create(
        &r,
        "s",
        &format!("0 {ORIGIN} snapshot origin cow P 8 1 discard_zeroes_cow"),
    )
    .unwrap();
    d.write(Sector(8), &[4; 4096]).unwrap();
    d.discard(Sector(8), SectorCount(8)).unwrap();
    assert_eq!(read(&*cow, 16, 8), vec![0; 4096]);
    assert_eq!(read(&*d, 8, 8), vec![0; 4096]);
    d.discard(Sector(64), SectorCount(8)).unwrap();
    assert_eq!(read(&*d, 64, 1), vec![64; 512]);
}

#[test]
fn snapshot_without_discard_feature_refuses_discard() {
    let (r, _, _) = setup(1024);
    let d = snap(&r, "P 8");
    assert!(matches!(
        d.discard(Sector(0), SectorCount(8)),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn snapshot_of_same_volume_as_cow_is_refused() {
    let (r, _, _) = setup(1024);
    let err = create(
        &r,
        "s",
        &format!("0 {ORIGIN} snapshot origin /dev/mapper/x P 8"),
    );
    assert!(err.is_err());
    let origin: SharedVolume = mem(64);
    let links = Arc::new(OriginSnapshots::default());
    let args = SnapshotArgs {
        origin: crate::targets::DeviceRef("a".into()),
        cow: crate::targets::DeviceRef("b".into()),
        store: StoreType::Persistent,
        chunk_size: 8,
        discard: SnapshotDiscard::Off,
    };
    let err = Snapshot::over(
        &args,
        SnapshotKind::Snapshot,
        Arc::clone(&origin),
        origin,
        SectorCount(64),
        &links,
    )
    .unwrap_err();
    assert!(err.to_string().contains("same as origin"));
}

#[test]
fn fuzz_driver_survives_the_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/snapshot_cow");
    let mut seen = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        crate::testing::fuzz::snapshot_cow(&std::fs::read(f.unwrap().path()).unwrap());
        seen += 1;
    }
    assert!(seen >= 5);
}

#[test]
fn merge_of_consecutive_chunks_copies_them_in_one_batch() {
    // Seed "consecutive-merge": chunk 1, exceptions 3->2, 4->3, 5->4, 9->5.
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/snapshot_cow/consecutive-merge"),
    )
    .unwrap();
    let cow = Arc::new(MemVolume::from_bytes(bytes[1..].to_vec()).unwrap());
    let origin = mem(16);
    let r = reopen(&origin, &cow);
    let m = create(&r, "m", "0 16 snapshot-merge origin cow P 1").unwrap();
    assert_eq!(m.message(Sector(0), &["merge", "1"]).unwrap(), "1");
    assert_eq!(read(&*origin, 9, 1), vec![0x22; 512]);
    assert_eq!(read(&*origin, 5, 1), vec![0; 512]);
    assert_eq!(m.message(Sector(0), &["merge", "1"]).unwrap(), "1");
    assert_eq!(read(&*origin, 3, 3), vec![0x22; 1536]);
    assert_eq!(status(&m), "2/6 2");
}

mod model {
    //! Snapshot and origin against two byte-array models, with reloads from the COW.
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Snap(u64, usize, u8),
        Origin(u64, usize, u8),
        Reload,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..ORIGIN - 40, 1..40usize, any::<u8>()).prop_map(|(s, n, b)| Op::Snap(s, n, b)),
            (0..ORIGIN - 40, 1..40usize, any::<u8>()).prop_map(|(s, n, b)| Op::Origin(s, n, b)),
            Just(Op::Reload),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn snapshot_and_origin_writes_match_two_models(
            ops in proptest::collection::vec(op(), 1..40),
            chunk in prop_oneof![Just(1u32), Just(8), Just(16)],
        ) {
            let (_, origin, cow) = setup(ORIGIN * 3);
            let mut origin_model = origin.to_vec();
            let mut snap_model = origin_model.clone();
            let mut r = reopen(&origin, &cow);
            let table = format!("0 {ORIGIN} snapshot origin cow P {chunk}");
            let mut s = create(&r, "s", &table).unwrap();
            let mut o = origin_dev(&r);
            for op in ops {
                match op {
                    Op::Snap(at, n, b) => {
                        s.write(Sector(at), &vec![b; n * 512]).unwrap();
                        let at = usize::try_from(at).unwrap() * 512;
                        snap_model[at..at + n * 512].fill(b);
                    }
                    Op::Origin(at, n, b) => {
                        o.write(Sector(at), &vec![b; n * 512]).unwrap();
                        let at = usize::try_from(at).unwrap() * 512;
                        origin_model[at..at + n * 512].fill(b);
                    }
                    Op::Reload => {
                        r = reopen(&origin, &cow);
                        s = create(&r, "s", &table).unwrap();
                        o = origin_dev(&r);
                    }
                }
            }
            prop_assert!(read(&*s, 0, 4096) == snap_model);
            prop_assert!(origin.to_vec() == origin_model);
        }
    }
}

#[test]
fn concurrent_snapshot_and_origin_writers_keep_both_views() {
    let (r, origin, _) = setup(ORIGIN * 3);
    let before = origin.to_vec();
    let s = snap(&r, "P 8");
    let o = origin_dev(&r);
    // Thread 1 writes the origin's even chunks, thread 2 the snapshot's odd chunks; the
    // snapshot must still show the old origin everywhere it did not write.
    std::thread::scope(|t| {
        t.spawn(|| {
            for c in (0..ORIGIN / 8).step_by(2) {
                o.write(Sector(c * 8 + 1), &[0xee; 1024]).unwrap();
            }
        });
        t.spawn(|| {
            for c in (1..ORIGIN / 8).step_by(2) {
                s.write(Sector(c * 8), &[0xdd; 512]).unwrap();
            }
        });
    });
    let view = read(&*s, 0, 4096);
    for c in 0..ORIGIN / 8 {
        let at = usize::try_from(c * 8 * 512).unwrap();
        let want: &[u8] = if c % 2 == 1 {
            &[0xdd; 512]
        } else {
            &before[at..at + 512]
        };
        assert_eq!(&view[at..at + 512], want, "chunk {c}");
    }
    crate::testing::conformance::check_read_write(&*s);
    crate::testing::conformance::check_read_write(&*o);
}

#[test]
fn hand_built_args_with_bad_chunk_size_are_refused() {
    let links = Arc::new(OriginSnapshots::default());
    for (store, chunk) in [(StoreType::Transient, 0), (StoreType::Persistent, 12)] {
        let args = SnapshotArgs {
            origin: crate::targets::DeviceRef("a".into()),
            cow: crate::targets::DeviceRef("b".into()),
            store,
            chunk_size: chunk,
            discard: SnapshotDiscard::Off,
        };
        let err = Snapshot::over(
            &args,
            SnapshotKind::Snapshot,
            mem(64) as SharedVolume,
            mem(64) as SharedVolume,
            SectorCount(64),
            &links,
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
}

/// A COW that loses power after `left` writes: later writes report success but never reach
/// the medium (a crash with a volatile write cache that was flushed up to that point).
#[derive(Debug)]
struct CrashAfter {
    inner: Arc<MemVolume>,
    /// Shared by every volume of one machine: power goes for all of them at once.
    left: Arc<std::sync::atomic::AtomicUsize>,
}

impl Volume for CrashAfter {
    fn size(&self) -> SectorCount {
        self.inner.size()
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> crate::error::Result<()> {
        self.inner.read(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> crate::error::Result<()> {
        use std::sync::atomic::Ordering;
        let left = self.left.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        self.left.store(left - 1, Ordering::SeqCst);
        self.inner.write(sector, buf)
    }
    fn flush(&self) -> crate::error::Result<()> {
        Ok(())
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> crate::error::Result<()> {
        self.inner.discard(sector, count)
    }
}

/// A persistent `kind` target with chunk size 1 over the whole origin, built directly (no
/// registry), with links of its own.
fn chunk1(
    kind: SnapshotKind,
    origin: SharedVolume,
    cow: SharedVolume,
) -> crate::error::Result<Arc<Snapshot>> {
    let args = SnapshotArgs {
        origin: crate::targets::DeviceRef("origin".into()),
        cow: crate::targets::DeviceRef("cow".into()),
        store: StoreType::Persistent,
        chunk_size: 1,
        discard: SnapshotDiscard::Off,
    };
    Snapshot::over(
        &args,
        kind,
        origin,
        cow,
        SectorCount(ORIGIN),
        &Arc::new(OriginSnapshots::default()),
    )
}

#[test]
fn crash_at_any_cow_write_leaves_a_state_of_completed_writes() {
    // Chunk 1 (32 exceptions per area) so the writes cross into areas 1 and 2.
    let (_, origin, _) = setup(1);
    // One sector each: a write spanning chunks makes one exception per chunk, and a crash
    // between them keeps the first (as in the kernel), so states are per chunk.
    let writes: Vec<(u64, usize, u8)> = (0..120u64)
        .map(|i| ((i * 37) % 90, 1, 1 + u8::try_from(i).unwrap()))
        .collect();
    let mut states = vec![origin.to_vec()[..200 * 512 + 4 * 512].to_vec()];
    for &(at, n, b) in &writes {
        let mut s = states.last().unwrap().clone();
        let at = usize::try_from(at).unwrap() * 512;
        s[at..at + n * 512].fill(b);
        states.push(s);
    }
    for crash in (0..260).step_by(3) {
        let inner = mem(1024);
        let cow: SharedVolume = Arc::new(CrashAfter {
            inner: Arc::clone(&inner),
            left: Arc::new(crash.into()),
        });
        let o = Arc::clone(&origin) as SharedVolume;
        if let Ok(s) = chunk1(SnapshotKind::Snapshot, o, cow) {
            for &(at, n, b) in &writes {
                let _ = s.write(Sector(at), &vec![b; n * 512]);
            }
        }
        let o = Arc::clone(&origin) as SharedVolume;
        let again = chunk1(SnapshotKind::Snapshot, o, inner).unwrap();
        let view = read(&*again, 0, 204);
        assert!(
            states.contains(&view),
            "crash after {crash} COW writes: torn state"
        );
    }
}

#[test]
fn crash_during_merge_resumes_to_the_same_origin() {
    // 40 one-sector exceptions with chunk 1 (two areas), some consecutive.
    let (_, origin0, _) = setup(1);
    let cow0 = mem(1024);
    let s = chunk1(
        SnapshotKind::Snapshot,
        Arc::clone(&origin0) as SharedVolume,
        Arc::clone(&cow0) as SharedVolume,
    )
    .unwrap();
    for i in 0..40u64 {
        let at = if i < 20 { i } else { 100 + i * 3 };
        s.write(Sector(at), &[u8::try_from(i).unwrap() + 1; 512])
            .unwrap();
    }
    let want = read(&*s, 0, 300);
    drop(s);
    let merge = |origin, cow| chunk1(SnapshotKind::Merge, origin, cow);
    for crash in 0..60 {
        let origin = Arc::new(MemVolume::from_bytes(origin0.to_vec()).unwrap());
        let cow = Arc::new(MemVolume::from_bytes(cow0.to_vec()).unwrap());
        let power = Arc::new(std::sync::atomic::AtomicUsize::new(crash));
        let crashing = |v: &Arc<MemVolume>| -> SharedVolume {
            Arc::new(CrashAfter {
                inner: Arc::clone(v),
                left: Arc::clone(&power),
            })
        };
        let m = merge(crashing(&origin), crashing(&cow)).unwrap();
        let _ = m.merge();
        drop(m);
        let m = merge(
            Arc::clone(&origin) as SharedVolume,
            Arc::clone(&cow) as SharedVolume,
        )
        .unwrap();
        assert_eq!(read(&*m, 0, 300), want, "crash after {crash}: merged view");
        m.merge().unwrap();
        assert_eq!(read(&*origin, 0, 300), want, "crash after {crash}: origin");
        assert_eq!(crate::targets::Target::status(&*m), "2/1024 2");
    }
}

#[test]
fn second_live_target_on_the_same_cow_is_refused() {
    let (r, _, _) = setup(1024);
    let _s = snap(&r, "P 8");
    let err = create(
        &r,
        "m",
        &format!("0 {ORIGIN} snapshot-merge origin cow P 8"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("using the COW"), "{err}");
}

#[test]
fn concurrent_first_writes_to_one_chunk_both_land() {
    // Two threads write different sectors of the same fresh chunks; whichever makes the
    // exception second must still write its data into it.
    for _ in 0..20 {
        let (r, _, _) = setup(ORIGIN * 3);
        let s = snap(&r, "P 8");
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|t| {
            for half in 0..2u64 {
                let (s, barrier) = (&s, &barrier);
                t.spawn(move || {
                    for c in 0..64u64 {
                        barrier.wait();
                        let b = u8::try_from(0xa0 + half).unwrap();
                        s.write(Sector(c * 8 + half), &[b; 512]).unwrap();
                    }
                });
            }
        });
        for c in 0..64u64 {
            assert_eq!(
                read(&*s, c * 8, 2),
                [[0xa0; 512], [0xa1; 512]].concat(),
                "chunk {c}"
            );
        }
        assert_eq!(status(&s), "528/12288 16");
    }
}

#[test]
fn discard_passdown_origin_discards_the_origin_without_copying_out() {
    // discard_passdown_origin: the second discard bio goes to the origin "without
    // triggering snapshot exceptions" (snapshot_map), so chunks the snapshot never copied
    // read the discarded origin afterwards.
    let (r, origin, _) = setup(1024);
    let d = create(
        &r,
        "s",
        &format!("0 {ORIGIN} snapshot origin cow P 8 2 discard_zeroes_cow discard_passdown_origin"),
    )
    .unwrap();
    d.write(Sector(8), &[4; 4096]).unwrap();
    d.discard(Sector(0), SectorCount(16)).unwrap();
    assert_eq!(read(&*origin, 0, 16), vec![0; 16 * 512]);
    assert_eq!(read(&*d, 0, 16), vec![0; 16 * 512]);
    assert_eq!(status(&d), "24/1024 16");
}
