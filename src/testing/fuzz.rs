//! Fuzz drivers: arbitrary input must never panic, and what parses must round-trip.
//! The cargo-fuzz targets in fuzz/ are one-line calls of these.

use crate::table::concise::format_concise;
use crate::table::{parse_boot, parse_concise, parse_table};
use crate::targets::Keys;

/// Table text: parse; if it parses, its canonical text parses to the same table and is a
/// fixed point of formatting.
pub fn table_text(data: &[u8]) {
    let Ok(table) = parse_table(data) else {
        return;
    };
    let text = table.to_text(Keys::Shown);
    let again = parse_table(text.as_bytes())
        .unwrap_or_else(|e| panic!("canonical text does not parse: {e}\n{text}"));
    assert_eq!(again, table, "parse(format(t)) != t for\n{text}");
    assert_eq!(again.to_text(Keys::Shown), text);
    let _ = table.to_text(Keys::Hidden);
}

/// `--concise` and `dm-mod.create=` text: never panic; concise round-trips.
pub fn concise_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(devices) = parse_concise(text) {
        let out = format_concise(&devices, Keys::Shown);
        let again = parse_concise(&out)
            .unwrap_or_else(|e| panic!("canonical concise text does not parse: {e}\n{out}"));
        assert_eq!(again, devices);
    }
    let _ = parse_boot(text);
}

/// A COW device image from untrusted bytes: the first byte picks the table's chunk size
/// (0 = from the header), the rest (zero-padded to whole sectors) is the COW. Loading it as
/// a persistent snapshot and as snapshot-merge over a 64-sector origin must return an error
/// or a working target; reads, a write, the status and a full merge must never panic.
pub fn snapshot_cow(data: &[u8]) {
    use std::sync::Arc;

    use crate::targets::snapshot::{OriginSnapshots, Snapshot, SnapshotDiscard, StoreType};
    use crate::targets::{DeviceRef, SnapshotArgs, SnapshotKind, Target};
    use crate::units::{Sector, SectorCount};
    use crate::volume::{MemVolume, SharedVolume, Volume};

    let Some((&pick, cow)) = data.split_first() else {
        return;
    };
    let chunk_size = [0, 1, 2, 8][usize::from(pick % 4)];
    let mut bytes = cow.to_vec();
    bytes.resize(bytes.len().div_ceil(512).max(1) * 512, 0);
    let origin: SharedVolume = Arc::new(MemVolume::new(SectorCount(64)).expect("origin"));
    for kind in [SnapshotKind::Snapshot, SnapshotKind::Merge] {
        let cow: SharedVolume = Arc::new(MemVolume::from_bytes(bytes.clone()).expect("cow"));
        let args = SnapshotArgs {
            origin: DeviceRef("origin".into()),
            cow: DeviceRef("cow".into()),
            store: if pick & 4 == 0 {
                StoreType::Persistent
            } else {
                StoreType::PersistentOverflow
            },
            chunk_size,
            discard: SnapshotDiscard::Off,
        };
        let links = Arc::new(OriginSnapshots::default());
        let Ok(snap) = Snapshot::over(
            &args,
            kind,
            Arc::clone(&origin),
            cow,
            SectorCount(64),
            &links,
        ) else {
            continue;
        };
        let mut buf = vec![0; 64 * 512];
        let _ = snap.read(Sector(0), &mut buf);
        let _ = snap.write(Sector(5), &[0xa5; 512]);
        let _ = snap.status();
        if kind == SnapshotKind::Merge {
            let _ = snap.merge();
        }
        let _ = snap.read(Sector(0), &mut buf);
        let _ = snap.status();
    }
}

/// Thin-pool metadata from damaged bytes: never panic, hang or allocate without bound.
///
/// The input patches a pool dmemu laid out itself (3 devices, two of them snapshots
/// sharing blocks, multi-level btrees, ref counts in the ref-count btree, a held metadata
/// snapshot): 4-byte records
/// `block | offset lo | offset hi | byte`. A block whose record has the top bit of `block`
/// clear gets its checksum fixed afterwards, so the fuzzer reaches the structure checks
/// behind the checksums. Then the metadata is opened, dumped, its space maps counted, and a
/// pool and each thin built, read, written and committed.
pub fn thin_metadata(data: &[u8]) {
    use std::collections::BTreeSet;
    use std::sync::{Arc, OnceLock};

    use crate::targets::thin::metadata::block::{check, seal, Kind, MetaDev, BLOCK_SIZE};
    use crate::targets::thin::metadata::Metadata;
    use crate::targets::{Target, Thin, ThinPool, ThinPoolArgs};
    use crate::volume::{MemVolume, Volume};
    use crate::{Sector, SectorCount};

    const META_BLOCKS: usize = 256;
    const DATA_SECTORS: u64 = 64 * 128;
    let args = || {
        let tokens: Vec<String> = ["m", "d", "128", "0"].map(str::to_string).to_vec();
        ThinPoolArgs::parse(&mut crate::table::args::Args::new(&tokens))
    };
    static BASE: OnceLock<(Vec<u8>, Vec<Option<Kind>>)> = OnceLock::new();
    let (base, kinds) = BASE.get_or_init(|| {
        let meta = Arc::new(MemVolume::new(SectorCount(8 * 256)).unwrap());
        let data = Arc::new(MemVolume::new(SectorCount(DATA_SECTORS)).unwrap());
        let pool = Arc::new(
            ThinPool::over(
                &args().unwrap(),
                SectorCount(DATA_SECTORS),
                meta.clone(),
                data,
            )
            .unwrap(),
        );
        pool.message(&["create_thin", "1"]).unwrap();
        let t = Thin::over(pool.clone(), 1, SectorCount(1 << 20), None).unwrap();
        for i in 0..60u64 {
            t.write(Sector(i * 1000 % (1 << 20) / 8 * 8), &[1; 512])
                .unwrap();
        }
        pool.message(&["create_snap", "2", "1"]).unwrap();
        pool.message(&["create_snap", "3", "1"]).unwrap();
        t.write(Sector(0), &[2; 512]).unwrap();
        // A held metadata snapshot, so commits walk its trees too.
        pool.message(&["reserve_metadata_snap"]).unwrap();
        t.write(Sector(128 * 500), &[3; 512]).unwrap();
        drop(t);
        drop(pool);
        let img = meta.to_vec();
        let kinds = img
            .chunks(BLOCK_SIZE)
            .enumerate()
            .map(|(b, blk)| {
                let b = u64::try_from(b).unwrap_or(0);
                [Kind::Superblock, Kind::BtreeNode, Kind::Bitmap, Kind::Index]
                    .into_iter()
                    .find(|&k| check(blk, b, k).is_ok())
            })
            .collect();
        (img, kinds)
    });
    let mut img = base.clone();
    let mut touched = BTreeSet::new();
    for rec in data.chunks_exact(4) {
        let b = usize::from(rec[0] & 0x7f) % META_BLOCKS;
        let off = usize::from(u16::from_le_bytes([rec[1], rec[2]])) % BLOCK_SIZE;
        img[b * BLOCK_SIZE + off] = rec[3];
        if rec[0] & 0x80 == 0 {
            touched.insert(b);
        }
    }
    for b in touched {
        if let Some(k) = kinds[b] {
            seal(&mut img[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE], k.xor());
        }
    }
    let meta = Arc::new(MemVolume::from_bytes(img).unwrap());
    let Ok(md) = Metadata::open(meta.clone()) else {
        return;
    };
    let _ = md.dump_xml();
    let _ = md.check();
    for sm in [md.data_space_map(), md.metadata_space_map()]
        .into_iter()
        .flatten()
    {
        let _ = sm.for_each_nonzero(md.dev(), &mut |_, _| Ok(()));
        let _ = sm.ref_count(md.dev(), 3);
    }
    let _ = MetaDev::new(meta.clone()).read(1, Kind::BtreeNode);
    let data = Arc::new(MemVolume::new(SectorCount(DATA_SECTORS)).unwrap());
    let Ok(pool) = ThinPool::over(&args().unwrap(), SectorCount(DATA_SECTORS), meta, data) else {
        return;
    };
    let pool = Arc::new(pool);
    let _ = pool.status();
    for id in 0..4 {
        if let Ok(t) = Thin::over(pool.clone(), id, SectorCount(1 << 20), None) {
            let mut buf = vec![0; 4096];
            let _ = t.read(Sector(0), &mut buf);
            let _ = t.read(Sector(8000), &mut buf);
            let _ = t.status();
            // A write and the commit it leads to: the writer lays out what was read
            // (and walks the held snapshot's damaged trees).
            if t.write(Sector(8 * 128), &buf).is_ok() {
                let _ = t.flush();
            }
        }
    }
}

/// One NBD client session from arbitrary bytes (everything the client sends: flags,
/// options, requests, payloads) against a read-write export `a` (512-byte blocks, the
/// default) and a read-only export `b` (4096-byte blocks). The server must answer or drop
/// the client, never panic or hang; and `b` must be unchanged afterwards.
pub fn nbd_session(data: &[u8]) {
    use std::sync::Arc;

    use crate::serve::nbd::{serve_client, Exports, Stopping};
    use crate::serve::{Export, ExportAccess};
    use crate::units::SectorCount;
    use crate::volume::{MemVolume, SharedVolume};

    let b_bytes: Vec<u8> = (0..16 * 512).map(|i| (i % 251) as u8).collect();
    let b_mem = Arc::new(MemVolume::from_bytes(b_bytes.clone()).expect("b"));
    let a: SharedVolume = Arc::new(MemVolume::new(SectorCount(64)).expect("a"));
    let b = Export::new("b", Arc::clone(&b_mem) as SharedVolume)
        .with_access(ExportAccess::ReadOnly)
        .with_block_size(4096)
        .expect("block size");
    let exports = Exports::new(vec![Arc::new(b), Arc::new(Export::new("a", a))]).expect("exports");
    let mut input = data;
    let _ = serve_client(
        &mut input,
        &mut std::io::sink(),
        &exports,
        &Stopping::default(),
    );
    assert!(b_mem.to_vec() == b_bytes, "a read-only export changed");
}
