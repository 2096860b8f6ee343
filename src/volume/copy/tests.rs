use std::sync::Mutex;

use super::*;
use crate::volume::{check_io, check_range, MemVolume};

/// A MemVolume whose reads and writes fail when they touch a bad sector, and which records
/// the sectors every successful write started at, in the order they were written.
#[derive(Debug)]
struct Faulty {
    inner: MemVolume,
    bad: Vec<u64>,
    writes: Mutex<Vec<(u64, usize)>>,
}

impl Faulty {
    fn new(sectors: u64, bad: &[u64]) -> Faulty {
        let data: Vec<u8> = (0..sectors * 512)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect();
        Faulty {
            inner: MemVolume::from_bytes(data).unwrap(),
            bad: bad.to_vec(),
            writes: Mutex::new(Vec::new()),
        }
    }
    fn touches_bad(&self, sector: Sector, len: usize) -> bool {
        let end = sector.0 + (len / 512) as u64;
        self.bad.iter().any(|&b| (sector.0..end).contains(&b))
    }
    fn contents(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.inner.size().usize_bytes().unwrap()];
        self.inner.read(Sector(0), &mut v).unwrap();
        v
    }
}

fn bad_sector() -> Error {
    Error::TargetFailed {
        target: "test",
        reason: "bad sector".into(),
    }
}

impl Volume for Faulty {
    fn size(&self) -> SectorCount {
        self.inner.size()
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size(), sector, buf.len())?;
        if self.touches_bad(sector, buf.len()) {
            return Err(bad_sector());
        }
        self.inner.read(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size(), sector, buf.len())?;
        if self.touches_bad(sector, buf.len()) {
            return Err(bad_sector());
        }
        self.writes.lock().unwrap().push((sector.0, buf.len()));
        self.inner.write(sector, buf)
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size(), sector, count)?;
        Ok(())
    }
}

fn opts(chunk: usize, workers: usize, block: usize) -> CopyOptions {
    CopyOptions {
        chunk,
        workers,
        block,
    }
}

/// Everything the sink got, checked to arrive in order and contiguous.
fn read_all(
    vol: &dyn Volume,
    start: u64,
    count: u64,
    o: &CopyOptions,
) -> (Vec<u8>, std::result::Result<(), Stopped>) {
    let mut out = Vec::new();
    let r = read_range(
        vol,
        Sector(start),
        SectorCount(count),
        o,
        &mut |pos, data| {
            assert_eq!(pos, out.len() as u64, "chunks out of order");
            out.extend_from_slice(data);
            Ok(())
        },
    );
    (out, r)
}

#[test]
fn read_range_delivers_every_chunk_in_order() {
    let v = Faulty::new(3000, &[]);
    let all = v.contents();
    for (chunk, workers) in [(4096, 1), (4096, 2), (64 * 1024, 3), (1 << 20, 2), (512, 4)] {
        let (out, r) = read_all(&v, 5, 2990, &opts(chunk, workers, 512));
        r.unwrap();
        assert_eq!(
            out,
            &all[5 * 512..2995 * 512],
            "chunk {chunk}, {workers} workers"
        );
    }
}

#[test]
fn read_range_of_nothing_calls_no_sink() {
    let v = Faulty::new(8, &[]);
    let (out, r) = read_all(&v, 8, 0, &CopyOptions::default());
    r.unwrap();
    assert!(out.is_empty());
}

#[test]
fn read_failure_reports_the_first_failing_sector_and_delivers_exactly_what_precedes_it() {
    // Bad sectors in two chunks: the later chunk may fail first on another worker, but the
    // earlier sector is the one reported and nothing from or after it reaches the sink.
    let v = Faulty::new(4096, &[1900, 1030]);
    let all = v.contents();
    for workers in [1, 2, 4] {
        let (out, r) = read_all(&v, 10, 4000, &opts(8 * 4096, workers, 512));
        let stopped = r.unwrap_err();
        assert_eq!(stopped.sector, Some(Sector(1030)), "{workers} workers");
        assert_eq!(stopped.done, SectorCount(1020));
        assert!(matches!(stopped.error, Error::TargetFailed { .. }));
        assert_eq!(out, &all[10 * 512..1030 * 512]);
    }
}

#[test]
fn read_failure_is_located_in_whole_blocks() {
    // With 4 KiB blocks (a crypt sector size) the failing block starts at sector 1024.
    let v = Faulty::new(4096, &[1030]);
    let all = v.contents();
    let (out, r) = read_all(&v, 0, 4096, &opts(1 << 20, 2, 4096));
    let stopped = r.unwrap_err();
    assert_eq!(stopped.sector, Some(Sector(1024)));
    assert_eq!(out, &all[..1024 * 512]);
}

#[test]
fn a_sink_error_stops_the_copy_without_a_sector() {
    let v = Faulty::new(4096, &[]);
    let mut calls = 0;
    let r = read_range(
        &v,
        Sector(0),
        SectorCount(4096),
        &opts(64 * 1024, 2, 512),
        &mut |_, _| {
            calls += 1;
            if calls == 3 {
                return Err(Error::invalid("sink", "full"));
            }
            Ok(())
        },
    );
    let stopped = r.unwrap_err();
    assert_eq!(calls, 3);
    assert_eq!(stopped.sector, None);
    assert_eq!(stopped.done, SectorCount(256));
}

#[test]
fn read_pieces_keeps_each_destination() {
    let v = Faulty::new(1024, &[]);
    let all = v.contents();
    let pieces = [
        Piece {
            sector: Sector(700),
            len: SectorCount(300),
            dest: 0,
        },
        Piece {
            sector: Sector(0),
            len: SectorCount(9),
            dest: 1 << 40,
        },
    ];
    let mut got = Vec::new();
    read_pieces(
        &v,
        pieces.into_iter(),
        &opts(64 * 512, 2, 512),
        &mut |p, d| {
            got.push((p, d.to_vec()));
            Ok(())
        },
    )
    .unwrap();
    // 300 sectors in chunks of 64: five pieces; then the short one.
    assert_eq!(got.len(), 6);
    for (p, d) in &got {
        let from = p.sector.0 as usize * 512;
        assert_eq!(d, &all[from..from + d.len()]);
        let base = if p.sector.0 >= 700 {
            (0, 700)
        } else {
            (1 << 40, 0)
        };
        assert_eq!(p.dest, base.0 + (p.sector.0 - base.1) * 512);
    }
    assert_eq!(got[5].0.dest, 1 << 40);
}

#[test]
fn read_into_fills_in_place_and_locates_a_failure() {
    let v = Faulty::new(4096, &[3000]);
    let all = v.contents();
    let mut buf = vec![0u8; 2048 * 512];
    read_into(&v, Sector(100), &mut buf, &opts(64 * 1024, 2, 512)).unwrap();
    assert_eq!(buf, &all[100 * 512..2148 * 512]);
    let mut buf = vec![0u8; 3000 * 512];
    let stopped = read_into(&v, Sector(1000), &mut buf, &opts(64 * 1024, 2, 512)).unwrap_err();
    assert_eq!(stopped.sector, Some(Sector(3000)));
    assert_eq!(stopped.done, SectorCount(2000));
    assert_eq!(&buf[..2000 * 512], &all[1000 * 512..3000 * 512]);
}

/// A source of `len` bytes of a counting pattern, `step` bytes per call at most.
fn source(len: usize, step: usize) -> impl FnMut(&mut [u8]) -> Result<usize> + Send {
    let mut at = 0usize;
    move |buf: &mut [u8]| {
        let mut n = 0;
        while n < buf.len() && at < len {
            let k = (buf.len() - n).min(step).min(len - at);
            for (i, b) in buf[n..n + k].iter_mut().enumerate() {
                *b = ((at + i) % 253) as u8;
            }
            n += k;
            at += k;
        }
        Ok(n)
    }
}

#[test]
fn write_from_writes_in_order() {
    let v = Faulty::new(4096, &[]);
    let len = 3000 * 512;
    let done = write_from(
        &v,
        Sector(7),
        64 * 1024,
        &mut source(len, 1000),
        &mut |_, _| Ok(()),
    )
    .unwrap();
    assert_eq!(done, SectorCount(3000));
    let c = v.contents();
    let want: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    assert_eq!(&c[7 * 512..3007 * 512], &want[..]);
    let w = v.writes.lock().unwrap();
    assert!(w.windows(2).all(|p| p[0].0 < p[1].0), "writes out of order");
}

#[test]
fn nothing_after_a_failed_write_is_written() {
    let v = Faulty::new(4096, &[1500]);
    let before = v.contents();
    let stopped = write_from(
        &v,
        Sector(0),
        64 * 1024,
        &mut source(4096 * 512, 4096),
        &mut |_, _| Ok(()),
    )
    .unwrap_err();
    // 128-sector writes: the one at 1408 holds the bad sector.
    assert_eq!(stopped.sector, Some(Sector(1408)));
    assert_eq!(stopped.done, SectorCount(1408));
    let w = v.writes.lock().unwrap();
    assert_eq!(w.last(), Some(&(1280, 64 * 1024)));
    let after = v.contents();
    assert_eq!(&after[1408 * 512..], &before[1408 * 512..]);
}

#[test]
fn a_refused_check_or_failing_source_stops_before_the_write() {
    let v = Faulty::new(4096, &[]);
    let stopped = write_from(
        &v,
        Sector(0),
        4096,
        &mut source(40960, 4096),
        &mut |done, _| {
            if done.0 >= 24 {
                return Err(Error::invalid("input", "too big"));
            }
            Ok(())
        },
    )
    .unwrap_err();
    assert_eq!((stopped.done, stopped.sector), (SectorCount(24), None));
    assert_eq!(v.writes.lock().unwrap().len(), 3);

    let v = Faulty::new(4096, &[]);
    let mut calls = 0;
    let mut failing = |buf: &mut [u8]| {
        calls += 1;
        if calls == 3 {
            return Err(Error::invalid("input", "unreadable"));
        }
        buf.fill(1);
        Ok(buf.len())
    };
    let stopped = write_from(&v, Sector(0), 4096, &mut failing, &mut |_, _| Ok(())).unwrap_err();
    assert_eq!((stopped.done, stopped.sector), (SectorCount(16), None));
    assert_eq!(v.writes.lock().unwrap().len(), 2);
}
