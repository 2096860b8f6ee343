//! Criterion benches of dm-snapshot: random 4 KiB reads through a snapshot whose exception
//! table is half populated (hits read the COW, misses the origin) beside linear over the
//! same memory volume, and the cost of the first write to a chunk (copy-on-write: origin
//! copy, COW write, area commit) beside a write to a chunk that already has its exception.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::targets::snapshot::{OriginSnapshots, Snapshot, SnapshotDiscard, StoreType};
use dmemu::targets::{DeviceRef, Linear, SnapshotArgs, SnapshotKind};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

use common::Aligned;

const ORIGIN_SECTORS: u64 = 64 * 2048; // 64 MiB
const CHUNK: u64 = 8; // 4 KiB chunks: one 4 KiB read is one chunk
const CHUNKS: u64 = ORIGIN_SECTORS / CHUNK;

fn args(store: StoreType) -> SnapshotArgs {
    SnapshotArgs {
        origin: DeviceRef("origin".into()),
        cow: DeviceRef("cow".into()),
        store,
        chunk_size: 8,
        discard: SnapshotDiscard::Off,
    }
}

fn volume(sectors: u64, fill: u8) -> SharedVolume {
    let v = MemVolume::new(SectorCount(sectors)).unwrap();
    let block = vec![fill; 1 << 20];
    for i in 0..sectors / 2048 {
        v.write(Sector(i * 2048), &block).unwrap();
    }
    Arc::new(v)
}

fn snapshot(origin: &SharedVolume, cow_sectors: u64) -> Arc<Snapshot> {
    let cow: SharedVolume = Arc::new(MemVolume::new(SectorCount(cow_sectors)).unwrap());
    Snapshot::over(
        &args(StoreType::Persistent),
        SnapshotKind::Snapshot,
        Arc::clone(origin),
        cow,
        SectorCount(ORIGIN_SECTORS),
        &Arc::new(OriginSnapshots::default()),
    )
    .unwrap()
}

/// xorshift: a cheap reproducible stream of chunk numbers.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn reads(c: &mut Criterion) {
    let origin = volume(ORIGIN_SECTORS, 0x5a);
    let snap = snapshot(&origin, ORIGIN_SECTORS * 2);
    // Even chunks get an exception.
    for chunk in (0..CHUNKS).step_by(2) {
        snap.write(Sector(chunk * CHUNK), &[1; 512]).unwrap();
    }
    let linear = Linear::over(
        Arc::clone(&origin),
        SectorCount(0),
        SectorCount(ORIGIN_SECTORS),
    )
    .unwrap();
    let mut g = c.benchmark_group("snapshot_read_4k");
    g.throughput(Throughput::Bytes(4096));
    let mut buf = Aligned::new(4096);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function("linear", |b| {
        b.iter(|| {
            let chunk = next(&mut x) % CHUNKS;
            linear
                .read(Sector(chunk * CHUNK), black_box(buf.buf(4096)))
                .unwrap();
        });
    });
    g.bench_function("snapshot_exception_hit", |b| {
        b.iter(|| {
            let chunk = (next(&mut x) % CHUNKS) & !1;
            snap.read(Sector(chunk * CHUNK), black_box(buf.buf(4096)))
                .unwrap();
        });
    });
    g.bench_function("snapshot_exception_miss", |b| {
        b.iter(|| {
            let chunk = (next(&mut x) % CHUNKS) | 1;
            snap.read(Sector(chunk * CHUNK), black_box(buf.buf(4096)))
                .unwrap();
        });
    });
    g.finish();
}

fn first_write(c: &mut Criterion) {
    let origin = volume(ORIGIN_SECTORS, 0x5a);
    let mut g = c.benchmark_group("snapshot_write");
    g.throughput(Throughput::Bytes(512));
    let data = vec![7u8; 512];
    // A 512-byte write to a chunk without an exception: copy 4 KiB from the origin, write
    // the COW chunk, commit the area (4 KiB). Fresh snapshots are built outside the timing.
    g.bench_function("first_write_512_copy_on_write", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNKS);
                let snap = snapshot(&origin, ORIGIN_SECTORS * 2);
                let start = Instant::now();
                for chunk in 0..n {
                    snap.write(Sector(chunk * CHUNK + 3), black_box(&data))
                        .unwrap();
                }
                total += start.elapsed();
                left -= n;
            }
            total
        });
    });
    let snap = snapshot(&origin, ORIGIN_SECTORS * 2);
    for chunk in 0..1024 {
        snap.write(Sector(chunk * CHUNK), &data).unwrap();
    }
    let mut x = 1u64;
    g.bench_function("write_512_existing_exception", |b| {
        b.iter(|| {
            let chunk = next(&mut x) % 1024;
            snap.write(Sector(chunk * CHUNK + 3), black_box(&data))
                .unwrap();
        });
    });
    g.finish();
}

criterion_group!(benches, reads, first_write);
criterion_main!(benches);
