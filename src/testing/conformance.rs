//! The `Volume` contract as reusable checks (in the style of cloud-hypervisor's raw disk
//! tests). Each function panics with a message naming the broken rule.

use crate::error::Error;
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::{Allocation, Extent, Unmap, Volume};

/// A deterministic, position-dependent byte pattern so misplaced data is detected.
#[must_use]
pub fn pattern(sector: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let pos = sector * SECTOR_SIZE as u64 + i as u64;
            (pos.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed
        })
        .collect()
}

fn sectors(n: u64) -> usize {
    usize::try_from(n).expect("small test size") * SECTOR_SIZE
}

/// Every check for a writable volume whose reads return what was written
/// (file, memory, linear, striped, mapped devices of those).
pub fn check_read_write(v: &dyn Volume) {
    let size = v.size().0;
    assert!(
        size >= 4,
        "conformance needs a volume of at least 4 sectors"
    );
    read_after_write_at_boundaries(v);
    out_of_range_changes_nothing(v);
    misaligned_is_refused(v);
    concurrent_disjoint_io(v);
    write_fua_is_visible(v);
    write_zeroes_reads_zeros_and_spares_neighbours(v, Unmap::Forbidden);
    write_zeroes_reads_zeros_and_spares_neighbours(v, Unmap::Allowed);
    allocation_is_well_formed(v, Sector(0), v.size());
    extended_out_of_range_changes_nothing(v);
    v.flush().expect("flush must succeed");
    assert_eq!(v.size().0, size, "size must not change");
}

/// Writes at the first sector, the last sector and across the middle read back exactly.
pub fn read_after_write_at_boundaries(v: &dyn Volume) {
    let size = v.size().0;
    let cases = [(0, 1), (size - 1, 1), (size / 2 - 1, 2), (0, size.min(64))];
    for (i, &(at, n)) in cases.iter().enumerate() {
        let data = pattern(at, sectors(n), i as u8 + 1);
        v.write(Sector(at), &data).expect("write within range");
        let mut back = vec![0u8; data.len()];
        v.read(Sector(at), &mut back).expect("read within range");
        assert!(
            back == data,
            "read after write differs at sector {at} (+{n})"
        );
    }
}

/// A request crossing or past the end fails with `OutOfRange` and changes nothing.
pub fn out_of_range_changes_nothing(v: &dyn Volume) {
    let size = v.size().0;
    let mut before = vec![0u8; SECTOR_SIZE];
    v.read(Sector(size - 1), &mut before).unwrap();
    let junk = vec![0x5a; 2 * SECTOR_SIZE];
    assert!(
        matches!(
            v.write(Sector(size - 1), &junk),
            Err(Error::OutOfRange { .. })
        ),
        "write crossing the end must fail with OutOfRange"
    );
    assert!(matches!(
        v.write(Sector(size), &junk[..SECTOR_SIZE]),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        v.write(Sector(u64::MAX), &junk[..SECTOR_SIZE]),
        Err(Error::OutOfRange { .. })
    ));
    let mut buf = vec![0u8; 2 * SECTOR_SIZE];
    assert!(matches!(
        v.read(Sector(size - 1), &mut buf),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        v.discard(Sector(size), SectorCount(1)),
        Err(Error::OutOfRange { .. })
    ));
    let mut after = vec![0u8; SECTOR_SIZE];
    v.read(Sector(size - 1), &mut after).unwrap();
    assert!(before == after, "a refused request changed the last sector");
}

/// Buffers that are not whole sectors fail with `Misaligned` and change nothing.
pub fn misaligned_is_refused(v: &dyn Volume) {
    let mut before = vec![0u8; SECTOR_SIZE];
    v.read(Sector(0), &mut before).unwrap();
    assert!(matches!(
        v.write(Sector(0), &[1u8; 100]),
        Err(Error::Misaligned { len: 100 })
    ));
    let mut buf = vec![0u8; SECTOR_SIZE + 1];
    assert!(matches!(
        v.read(Sector(0), &mut buf),
        Err(Error::Misaligned { .. })
    ));
    let mut after = vec![0u8; SECTOR_SIZE];
    v.read(Sector(0), &mut after).unwrap();
    assert!(before == after, "a misaligned write changed data");
}

/// Two writer threads and two reader threads on disjoint ranges do not disturb each other.
pub fn concurrent_disjoint_io(v: &dyn Volume) {
    let size = v.size().0;
    let half = size / 2;
    let n = half.min(16);
    let ranges = [(0u64, n), (half, n)];
    std::thread::scope(|s| {
        for (i, &(at, n)) in ranges.iter().enumerate() {
            s.spawn(move || {
                for round in 0..8u8 {
                    let data = pattern(at, sectors(n), round.wrapping_add(i as u8 * 16));
                    v.write(Sector(at), &data).unwrap();
                    let mut back = vec![0u8; data.len()];
                    v.read(Sector(at), &mut back).unwrap();
                    assert!(back == data, "concurrent read-after-write differs at {at}");
                }
            });
        }
    });
}

/// A FUA write reads back exactly, at the first and last sectors and across the middle.
pub fn write_fua_is_visible(v: &dyn Volume) {
    let size = v.size().0;
    for (i, (at, n)) in [(0, 1), (size - 1, 1), (size / 2 - 1, 2)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(at, sectors(n), 0x40 + i as u8);
        v.write_fua(Sector(at), &data)
            .expect("write_fua within range");
        let mut back = vec![0u8; data.len()];
        v.read(Sector(at), &mut back).unwrap();
        assert!(
            back == data,
            "read after write_fua differs at sector {at} (+{n})"
        );
    }
}

/// `write_zeroes` in `unmap` mode makes its range read as zeros and leaves the sectors on
/// either side as they were: one sector at each end, a piece across the middle, and
/// everything but the first and last sectors (whole blocks and chunks for thin, snapshot
/// and striped).
pub fn write_zeroes_reads_zeros_and_spares_neighbours(v: &dyn Volume, unmap: Unmap) {
    let size = v.size().0;
    let seed = if unmap == Unmap::Allowed { 0x60 } else { 0x70 };
    for (i, (at, n)) in [(0, 1), (size - 1, 1), (size / 2 - 1, 3), (1, size - 2)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(0, sectors(size), seed + i as u8);
        v.write(Sector(0), &data).unwrap();
        v.write_zeroes(Sector(at), SectorCount(n), unmap)
            .unwrap_or_else(|e| panic!("write_zeroes [{at}, +{n}) {unmap:?}: {e}"));
        let mut back = vec![0xa5u8; data.len()];
        v.read(Sector(0), &mut back).unwrap();
        let (lo, hi) = (sectors(at), sectors(at + n));
        assert!(
            back[lo..hi].iter().all(|&b| b == 0),
            "[{at}, +{n}) does not read zeros after write_zeroes {unmap:?}"
        );
        assert!(
            back[..lo] == data[..lo] && back[hi..] == data[hi..],
            "write_zeroes [{at}, +{n}) {unmap:?} changed a neighbour"
        );
        allocation_is_well_formed(v, Sector(0), SectorCount(size));
    }
}

/// The allocation of `[sector, sector + count)`, asked for again from where each answer
/// ends: every answer is non-empty, has no empty extents, merges equal neighbours and
/// stays within what was asked; every `Hole` or `Zero` extent reads as zeros. Returns the
/// whole answer, merged.
pub fn allocation_is_well_formed(
    v: &dyn Volume,
    sector: Sector,
    count: SectorCount,
) -> Vec<Extent> {
    let end = sector.0 + count.0;
    let mut at = sector.0;
    let mut all: Vec<Extent> = Vec::new();
    while at < end {
        let answer = v
            .allocation(Sector(at), SectorCount(end - at))
            .unwrap_or_else(|e| panic!("allocation [{at}, {end}): {e}"));
        assert!(!answer.is_empty(), "allocation [{at}, {end}) is empty");
        for pair in answer.windows(2) {
            assert!(
                pair[0].state != pair[1].state,
                "allocation [{at}, {end}) not merged: {answer:?}"
            );
        }
        for e in &answer {
            assert!(
                e.len.0 > 0,
                "allocation [{at}, {end}) has an empty extent: {answer:?}"
            );
            assert!(
                at + e.len.0 <= end,
                "allocation [{at}, {end}) reaches past the range: {answer:?}"
            );
            if e.state != Allocation::Data {
                let mut buf = vec![0xa5u8; sectors(e.len.0)];
                v.read(Sector(at), &mut buf).unwrap();
                assert!(
                    buf.iter().all(|&b| b == 0),
                    "{:?} extent [{at}, +{}) does not read zeros",
                    e.state,
                    e.len
                );
            }
            match all.last_mut() {
                Some(last) if last.state == e.state => last.len.0 += e.len.0,
                _ => all.push(*e),
            }
            at += e.len.0;
        }
    }
    all
}

/// `write_fua`, `write_zeroes` and `allocation` crossing or past the end fail with
/// `OutOfRange`, a misaligned FUA write with `Misaligned`, and none of them change data.
pub fn extended_out_of_range_changes_nothing(v: &dyn Volume) {
    let size = v.size().0;
    let mut before = vec![0u8; 2 * SECTOR_SIZE];
    v.read(Sector(size - 2), &mut before).unwrap();
    let junk = vec![0x5a; 2 * SECTOR_SIZE];
    let out = |r: crate::Result<()>, what: &str| {
        assert!(
            matches!(r, Err(Error::OutOfRange { .. })),
            "{what} must fail with OutOfRange: {r:?}"
        );
    };
    out(
        v.write_fua(Sector(size - 1), &junk),
        "write_fua crossing the end",
    );
    out(
        v.write_fua(Sector(u64::MAX), &junk[..SECTOR_SIZE]),
        "write_fua at u64::MAX",
    );
    for unmap in [Unmap::Allowed, Unmap::Forbidden] {
        out(
            v.write_zeroes(Sector(size - 1), SectorCount(2), unmap),
            "write_zeroes crossing the end",
        );
        out(
            v.write_zeroes(Sector(u64::MAX), SectorCount(2), unmap),
            "write_zeroes at u64::MAX",
        );
    }
    out(
        v.allocation(Sector(size - 1), SectorCount(2)).map(drop),
        "allocation crossing the end",
    );
    out(
        v.allocation(Sector(size), SectorCount(1)).map(drop),
        "allocation past the end",
    );
    assert!(matches!(
        v.write_fua(Sector(size - 2), &junk[..SECTOR_SIZE + 7]),
        Err(Error::Misaligned { .. })
    ));
    let mut after = vec![0u8; 2 * SECTOR_SIZE];
    v.read(Sector(size - 2), &mut after).unwrap();
    assert!(
        before == after,
        "a refused request changed the last sectors"
    );
}

/// Checks for a volume that must refuse writes and discards with `ReadOnly`.
pub fn check_read_only(v: &dyn Volume) {
    let size = v.size().0;
    let mut before = vec![0u8; SECTOR_SIZE];
    v.read(Sector(0), &mut before).unwrap();
    assert!(matches!(
        v.write(Sector(0), &[7u8; SECTOR_SIZE]),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        v.discard(Sector(0), SectorCount(1)),
        Err(Error::ReadOnly { .. })
    ));
    for r in [
        v.write_fua(Sector(0), &[7u8; SECTOR_SIZE]),
        v.write_zeroes(Sector(0), SectorCount(1), Unmap::Allowed),
        v.write_zeroes(Sector(0), SectorCount(1), Unmap::Forbidden),
    ] {
        assert!(matches!(r, Err(Error::ReadOnly { .. })), "{r:?}");
    }
    let mut after = vec![0u8; SECTOR_SIZE];
    v.read(Sector(0), &mut after).unwrap();
    assert_eq!(before, after);
    allocation_is_well_formed(v, Sector(0), v.size());
    extended_out_of_range_changes_nothing(v);
    let mut buf = vec![0u8; 2 * SECTOR_SIZE];
    assert!(matches!(
        v.read(Sector(size - 1), &mut buf),
        Err(Error::OutOfRange { .. })
    ));
    v.flush().expect("flush of a read-only volume succeeds");
}
