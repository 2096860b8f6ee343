//! Criterion benches of thin reads: 4 KiB random reads through a thin device whose mapping
//! tree thin_restore built (~2000 mappings per device, 5 devices, over 8192 data blocks:
//! tests/fixtures/thin/restore-big-meta.img.gz) against linear reads of the same data
//! volume; and the metadata load (superblock, space map checks, the device's mapping tree).
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::io::Read;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::table::args::Args;
use dmemu::targets::linear::Linear;
use dmemu::targets::thin::metadata::Metadata;
use dmemu::targets::{Thin, ThinPool, ThinPoolArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

use common::Aligned;

const BLOCK: u64 = 128;

fn metadata_bytes() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/thin/restore-big-meta.img.gz"
    );
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn xorshift() -> impl FnMut() -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn pool_args(meta: &str, data: &str) -> ThinPoolArgs {
    let text = format!("{meta} {data} 128 0");
    let tokens: Vec<String> = text.split(' ').map(str::to_string).collect();
    ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap()
}

/// The pool over `meta` and `data` (block size 128, no low-water mark), as its ctr builds it.
fn open_pool(meta: &SharedVolume, data: &SharedVolume, len: SectorCount) -> Arc<ThinPool> {
    Arc::new(
        ThinPool::over(
            &pool_args("m", "d"),
            len,
            Arc::clone(meta),
            Arc::clone(data),
        )
        .unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let meta_bytes = metadata_bytes();
    let meta: SharedVolume = Arc::new(MemVolume::from_bytes(meta_bytes.clone()).unwrap());
    let nr_data = Metadata::open(Arc::clone(&meta))
        .unwrap()
        .superblock()
        .data_sm
        .nr_blocks;
    let data: SharedVolume = Arc::new(MemVolume::new(SectorCount(nr_data * BLOCK)).unwrap());
    // Touch every page so neither variant pays for first faults.
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..(nr_data * BLOCK / 2048) {
        data.write(Sector(i * 2048), &chunk).unwrap();
    }
    let len = SectorCount(nr_data * BLOCK);
    let pool = open_pool(&meta, &data, len);
    let md = pool.metadata();
    let root = md.device_root(1).unwrap().unwrap();
    let mapped: Vec<u64> = md.mappings(root).unwrap().keys().copied().collect();
    let virt = SectorCount((mapped.last().unwrap() + 1) * BLOCK);
    let thin = Thin::over(Arc::clone(&pool), 1, virt, None).unwrap();
    let linear = Linear::over(Arc::clone(&data), SectorCount(0), len).unwrap();

    let mut g = c.benchmark_group("thin_read_4k_random");
    g.throughput(Throughput::Bytes(4096));
    let mut buf = Aligned::new(4096);
    g.bench_function("thin_mapped", |b| {
        let mut r = xorshift();
        b.iter(|| {
            let x = r();
            let v = mapped[usize::try_from(x % mapped.len() as u64).unwrap()];
            let s = v * BLOCK + (x >> 32) % (BLOCK / 8) * 8;
            thin.read(Sector(s), buf.buf(4096)).unwrap();
            black_box(&buf);
        })
    });
    g.bench_function("linear", |b| {
        let mut r = xorshift();
        b.iter(|| {
            let x = r();
            // The same shape of work: pick a block, then an offset in it.
            let v = black_box(mapped[usize::try_from(x % mapped.len() as u64).unwrap()]) % nr_data;
            let s = v * BLOCK + (x >> 32) % (BLOCK / 8) * 8;
            linear.read(Sector(s), buf.buf(4096)).unwrap();
            black_box(&buf);
        })
    });
    g.finish();

    // A commit after one new mapping: dmemu rewrites the whole metadata (5 devices,
    // ~8,000 mappings) into free blocks, then the superblock. The block is discarded
    // again so the pool never fills.
    let mut g = c.benchmark_group("thin_commit");
    g.bench_function("provision_commit_8000_mappings", |b| {
        let meta: SharedVolume = Arc::new(MemVolume::from_bytes(meta_bytes.clone()).unwrap());
        let pool = open_pool(&meta, &data, len);
        let t = Thin::over(Arc::clone(&pool), 9, SectorCount(1 << 30), None).unwrap();
        let v = 1_000_000u64;
        let block = vec![0x11u8; 65536];
        b.iter(|| {
            // A whole block (no zeroing), then the commit a flush makes.
            t.write(Sector(v * BLOCK), &block).unwrap();
            t.flush().unwrap();
            t.discard(Sector(v * BLOCK), SectorCount(BLOCK)).unwrap();
        })
    });
    g.finish();

    let mut g = c.benchmark_group("thin_metadata_load");
    g.bench_function("pool_open_8000_mappings_and_a_thin", |b| {
        b.iter(|| {
            let pool = open_pool(&meta, &data, len);
            black_box(Thin::over(pool, 1, virt, None).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
