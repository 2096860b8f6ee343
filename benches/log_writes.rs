//! Criterion bench: log-writes against linear for 4 KiB writes with a flush every 64 writes
//! (issue #16's target: at most 10 % over linear), over memory and over image files (in
//! /dev/shm where it exists, so the disk's fdatasync does not drown the targets' cost).
//! log-writes writes every byte twice (the device and the log), so the memory case shows
//! the copy; the file case shows what a user of images pays.
//!
//! `two_copies_floor` writes each buffer to the device and once more to a second volume:
//! what any log costs at least; log-writes' own cost is its distance from that floor.
//!
//! Each sample is the fastest of several batches (the machine is shared; preemption only
//! adds time). A batch is 64 writes and a flush; before the log would fill, a new target is
//! built outside the timing (dropping the old one logs its end mark).

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::targets::linear::Linear;
use dmemu::targets::LogWrites;
use dmemu::volume::{Access, FileVolume};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

use common::Aligned;

const SIZE: SectorCount = SectorCount(64 * 2048); // 64 MiB device
const LOG: SectorCount = SectorCount(128 * 2048); // 128 MiB log
const IO: usize = 4096;
const PER_FLUSH: u64 = 64;

/// Runs batches of 64 scattered 4 KiB writes and a flush on what `make` builds; `make`
/// is called again (untimed) when `full` says the log is about to fill.
fn batches<V: Volume>(
    c: &mut Criterion,
    group: &str,
    name: &str,
    mut make: impl FnMut() -> V,
    full: impl Fn(&V) -> bool,
) {
    let mut aligned = Aligned::new(IO);
    let buf = aligned.buf(IO);
    buf.fill(0xa5);
    let steps = SIZE.0 / 8;
    let mut i = 0u64;
    let mut v = Some(make());
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(IO as u64 * PER_FLUSH));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut best = Duration::MAX;
            for _ in 0..iters.clamp(3, 64) {
                if v.as_ref().is_some_and(&full) {
                    v = None;
                    v = Some(make());
                }
                let dev = v.as_ref().unwrap();
                let t = Instant::now();
                for _ in 0..PER_FLUSH {
                    i = (i + 7919) % steps;
                    dev.write(Sector(i * 8), black_box(&*buf)).unwrap();
                }
                dev.flush().unwrap();
                best = best.min(t.elapsed());
            }
            best.mul_f64(iters as f64)
        });
    });
    g.finish();
}

/// The floor any log pays: each write goes to the device and, once more, to the next
/// place on a second volume (no entry headers, no staging, no ordering).
#[derive(Debug)]
struct TwoCopies {
    dev: SharedVolume,
    log: SharedVolume,
    next: std::sync::atomic::AtomicU64,
}

impl TwoCopies {
    fn new(dev: &SharedVolume, log: &SharedVolume) -> TwoCopies {
        TwoCopies {
            dev: Arc::clone(dev),
            log: Arc::clone(log),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Volume for TwoCopies {
    fn size(&self) -> SectorCount {
        SIZE
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> dmemu::Result<()> {
        self.dev.read(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> dmemu::Result<()> {
        use std::sync::atomic::Ordering;
        self.dev.write(sector, buf)?;
        let n = buf.len() as u64 / 512;
        let at = self.next.fetch_add(n, Ordering::Relaxed) % (LOG.0 - n);
        self.log.write(Sector(at), buf)
    }
    fn flush(&self) -> dmemu::Result<()> {
        self.dev.flush()?;
        self.log.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> dmemu::Result<()> {
        self.dev.discard(sector, count)
    }
}

fn mem(sectors: SectorCount) -> SharedVolume {
    // Real pages (not the shared zero page).
    let bytes = vec![0x5au8; usize::try_from(sectors.bytes()).unwrap()];
    Arc::new(MemVolume::from_bytes(bytes).unwrap())
}

/// Room for one more batch in the log (each write is an entry sector and its data).
fn log_full(t: &LogWrites) -> bool {
    let per_batch = PER_FLUSH * (1 + IO as u64 / 512) + 1;
    let used = t.logged_entries() * (1 + IO as u64 / 512);
    used + per_batch + 64 >= LOG.0 || !t.logging_enabled()
}

/// linear, log-writes, the two-copies floor and linear again, over `dev` and `log`.
fn bench_all(c: &mut Criterion, group: &str, dev: &SharedVolume, log: &SharedVolume) {
    batches(
        c,
        group,
        "linear",
        || Linear::over(Arc::clone(dev), SectorCount(0), SIZE).unwrap(),
        |_| false,
    );
    batches(
        c,
        group,
        "log_writes",
        || LogWrites::over(Arc::clone(dev), Arc::clone(log), SIZE),
        log_full,
    );
    batches(
        c,
        group,
        "two_copies_floor",
        || TwoCopies::new(dev, log),
        |_| false,
    );
    batches(
        c,
        group,
        "linear_again",
        || Linear::over(Arc::clone(dev), SectorCount(0), SIZE).unwrap(),
        |_| false,
    );
}

fn bench_mem(c: &mut Criterion) {
    let dev = mem(SIZE);
    let log = mem(LOG);
    bench_all(c, "log_writes_4k_write_flush64_mem", &dev, &log);
}

fn file(dir: &std::path::Path, name: &str, sectors: SectorCount) -> SharedVolume {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(sectors.bytes()).unwrap();
    drop(f);
    Arc::new(FileVolume::open(&p, Access::ReadWrite).unwrap())
}

fn bench_files(c: &mut Criterion) {
    let dir = match std::fs::metadata("/dev/shm") {
        Ok(m) if m.is_dir() => tempfile::tempdir_in("/dev/shm").unwrap(),
        _ => tempfile::tempdir().unwrap(),
    };
    let dev = file(dir.path(), "dev.img", SIZE);
    let log = file(dir.path(), "log.img", LOG);
    // Every block of the device written once, so no sample pays for page allocation.
    let chunk = vec![0x5au8; 1 << 20];
    for s in (0..SIZE.0).step_by(2048) {
        dev.write(Sector(s), &chunk).unwrap();
    }
    for s in (0..LOG.0).step_by(2048) {
        log.write(Sector(s), &chunk).unwrap();
    }
    bench_all(c, "log_writes_4k_write_flush64_file", &dev, &log);
}

criterion_group!(benches, bench_mem, bench_files);
criterion_main!(benches);
