//! The `Volume` contract as reusable checks (in the style of cloud-hypervisor's raw disk
//! tests). Each function panics with a message naming the broken rule.

use crate::error::Error;
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::Volume;

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
    let mut after = vec![0u8; SECTOR_SIZE];
    v.read(Sector(0), &mut after).unwrap();
    assert_eq!(before, after);
    let mut buf = vec![0u8; 2 * SECTOR_SIZE];
    assert!(matches!(
        v.read(Sector(size - 1), &mut buf),
        Err(Error::OutOfRange { .. })
    ));
    v.flush().expect("flush of a read-only volume succeeds");
}
