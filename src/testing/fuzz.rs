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
