//! Criterion benches of thin reads: 4 KiB random reads through a thin device whose mapping
//! tree thin_restore built (~2000 mappings per device, 5 devices, over 8192 data blocks:
//! tests/fixtures/thin/restore-big-meta.img.gz) against linear reads of the same data
//! volume; opening the pool (superblock, space map checks, details and top level: the
//! mappings are read on demand) and opening it plus a first 4 KiB read; sequential 1 MiB
//! reads of a fully mapped 256 MiB thin read on demand against linear; the random reads
//! again while a transaction is open (one block written, not committed);
//! commits: after one new mapping on that pool, and after one changed mapping on a
//! 200,000-mapping tree four snapshots share (incremental against laying out afresh).
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::io::Read;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Bencher, Criterion, Throughput};
use dmemu::table::args::Args;
use dmemu::targets::linear::Linear;
use std::collections::BTreeMap;

use dmemu::targets::thin::metadata::block::MetaDev;
use dmemu::targets::thin::metadata::writer::{
    format, free_metadata_blocks, Base, Devices, Transaction,
};
use dmemu::targets::thin::metadata::{BlockTime, DeviceDetails, Metadata};
use dmemu::targets::zero::Zero;
use dmemu::targets::{Target, Thin, ThinPool, ThinPoolArgs};
use dmemu::volume::{Access, FileVolume};
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
    if let Ok(path) = std::env::var("THIN_BENCH_META") {
        return external(c, &path);
    }
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
    g.bench_function("thin_mapped", |b| random_reads(b, &thin, &mapped, &mut buf));
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

    // The same reads while a transaction is open: one block written (provisioned) and
    // not committed, so every lookup goes through the transaction.
    let mut g = c.benchmark_group("thin_read_4k_random_pending_writes");
    g.throughput(Throughput::Bytes(4096));
    {
        let meta: SharedVolume = Arc::new(MemVolume::from_bytes(meta_bytes.clone()).unwrap());
        let pool = open_pool(&meta, &data, len);
        let thin = Thin::over(Arc::clone(&pool), 1, SectorCount(virt.0 + BLOCK), None).unwrap();
        thin.write(Sector((mapped.last().unwrap() + 1) * BLOCK), &[7; 4096])
            .unwrap();
        assert!(pool.mappings_loaded());
        g.bench_function("thin_mapped", |b| random_reads(b, &thin, &mapped, &mut buf));
    }
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

    commit_big_tree(c);

    let mut g = c.benchmark_group("thin_metadata_load");
    g.bench_function("pool_open_8000_mappings_and_a_thin", |b| {
        b.iter(|| {
            let pool = open_pool(&meta, &data, len);
            black_box(Thin::over(pool, 1, virt, None).unwrap());
        })
    });
    // Opening reads the superblock, details and top level only; the first read looks its
    // block up through a cold cache (root to leaf).
    g.bench_function("pool_open_and_first_4k_read", |b| {
        let first = mapped[mapped.len() / 2];
        b.iter(|| {
            let pool = open_pool(&meta, &data, len);
            let t = Thin::over(pool, 1, virt, None).unwrap();
            t.read(Sector(first * BLOCK), buf.buf(4096)).unwrap();
            black_box(&buf);
        })
    });
    g.finish();

    sequential(c);
}

/// 4 KiB reads of `thin` at random offsets of random mapped blocks.
fn random_reads(b: &mut Bencher<'_>, thin: &Thin, mapped: &[u64], buf: &mut Aligned) {
    let mut r = xorshift();
    b.iter(|| {
        let x = r();
        let v = mapped[usize::try_from(x % mapped.len() as u64).unwrap()];
        let s = v * BLOCK + (x >> 32) % (BLOCK / 8) * 8;
        thin.read(Sector(s), buf.buf(4096)).unwrap();
        black_box(&*buf);
    });
}

/// With `THIN_BENCH_META=PATH` (benches/thin_scale.sh sets it for each pool it makes) only
/// this runs: opening the pool on that metadata read-only (data: a zero target of the
/// pool's size) and reading thin 1's first 4 KiB, in process.
fn external(c: &mut Criterion, path: &str) {
    let meta: SharedVolume = Arc::new(FileVolume::open(path, Access::ReadOnly).unwrap());
    let nr = Metadata::open(Arc::clone(&meta))
        .unwrap()
        .superblock()
        .data_sm
        .nr_blocks;
    let len = SectorCount(nr * BLOCK);
    let data: SharedVolume = Arc::new(Zero::new(len));
    let tokens: Vec<String> = "m d 128 0 1 read_only"
        .split(' ')
        .map(str::to_string)
        .collect();
    let args = ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap();
    let mut buf = Aligned::new(4096);
    let mut g = c.benchmark_group("thin_scale_open");
    g.bench_function("open_and_first_4k_read", |b| {
        b.iter(|| {
            let pool = ThinPool::over(&args, len, Arc::clone(&meta), Arc::clone(&data)).unwrap();
            let t = Thin::over(Arc::new(pool), 1, SectorCount(1 << 40), None).unwrap();
            t.read(Sector(0), buf.buf(4096)).unwrap();
            black_box(&buf);
        })
    });
    g.finish();
}

/// Blocks of the fully mapped thin the sequential read bench reads (256 MiB).
const SEQ_BLOCKS: u64 = 4096;

/// Sequential 1 MiB reads of a fully mapped thin whose pool was reopened (so every read
/// looks its block up in the committed tree through the cache) against linear reads of
/// the same data volume.
fn sequential(c: &mut Criterion) {
    let meta: SharedVolume = Arc::new(MemVolume::new(SectorCount(16 * 2048)).unwrap());
    let len = SectorCount(SEQ_BLOCKS * BLOCK);
    let data: SharedVolume = Arc::new(MemVolume::new(len).unwrap());
    {
        let pool = open_pool(&meta, &data, len);
        pool.message(&["create_thin", "1"]).unwrap();
        let t = Thin::over(Arc::clone(&pool), 1, len, None).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for i in 0..(len.0 / 2048) {
            t.write(Sector(i * 2048), &chunk).unwrap();
        }
        t.flush().unwrap();
    }
    let pool = open_pool(&meta, &data, len);
    let thin = Thin::over(Arc::clone(&pool), 1, len, None).unwrap();
    assert!(!pool.mappings_loaded());
    let linear = Linear::over(Arc::clone(&data), SectorCount(0), len).unwrap();
    let mut g = c.benchmark_group("thin_read_seq_1m");
    g.throughput(Throughput::Bytes(len.0 * 512));
    g.sample_size(20);
    let mut buf = Aligned::new(1 << 20);
    for (name, v) in [
        ("thin_on_demand", &thin as &dyn Volume),
        ("linear", &linear),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                for i in 0..(len.0 / 2048) {
                    v.read(Sector(i * 2048), buf.buf(1 << 20)).unwrap();
                }
                black_box(&buf);
            })
        });
    }
    g.finish();
}

/// Mappings of the big shared tree: ~800 leaves, 4 internal nodes.
const BIG: u64 = 200_000;

/// A commit after one changed mapping of a device whose 200,000-mapping tree four
/// snapshots share (a kernel-like pool, built through the writer): dmemu's incremental
/// commit (kept snapshot roots, kept leaves, one re-packed leaf) against laying every
/// device out afresh (what commits did before: five separate trees, ~4,000 leaves).
fn commit_big_tree(c: &mut Criterion) {
    let meta: SharedVolume = Arc::new(MemVolume::new(SectorCount(64 * 2048)).unwrap());
    let dev = MetaDev::new(Arc::clone(&meta));
    format(&dev, 128, BIG + 1024, 16384).unwrap();
    let details = DeviceDetails {
        mapped_blocks: BIG,
        transaction_id: 0,
        creation_time: 0,
        snapshotted_time: 0,
    };
    let maps: Vec<(u64, BlockTime)> = (0..BIG)
        .map(|k| (k, BlockTime { block: k, time: 0 }))
        .collect();
    let commit = |devices: &Devices, bases: &BTreeMap<u64, Base>| {
        let md = Metadata::open(Arc::clone(&meta)).unwrap();
        let free = free_metadata_blocks(&md).unwrap();
        let tx = Transaction::build(md.superblock(), free, devices, bases, Some(&md)).unwrap();
        tx.commit(md.dev()).unwrap();
        tx.nr_blocks()
    };
    let mut devices = Devices::new();
    devices.insert(0, (details, maps));
    commit(&devices, &BTreeMap::new());
    // Four snapshots sharing device 0's root, as create_snap leaves them.
    let root = Metadata::open(Arc::clone(&meta))
        .unwrap()
        .device_root(0)
        .unwrap()
        .unwrap();
    let mut bases: BTreeMap<u64, Base> = BTreeMap::new();
    for id in 0..5 {
        devices.insert(id, devices[&0].clone());
        bases.insert(
            id,
            Base {
                root,
                changed: Default::default(),
            },
        );
    }
    commit(&devices, &bases);
    let used = Metadata::open(Arc::clone(&meta))
        .unwrap()
        .superblock()
        .metadata_sm
        .nr_allocated;

    let mut g = c.benchmark_group("thin_commit_one_change_200000_shared_mappings");
    g.sample_size(10);
    let mut flip = 0u64;
    let mut written = 0;
    g.bench_function("incremental", |b| {
        b.iter(|| {
            flip ^= 1;
            let key = 123_456;
            devices.get_mut(&0).unwrap().1[usize::try_from(key).unwrap()]
                .1
                .block = key ^ flip;
            let mut bases = bases.clone();
            let md = Metadata::open(Arc::clone(&meta)).unwrap();
            for (id, r) in md.device_roots().unwrap() {
                bases.insert(
                    id,
                    Base {
                        root: r,
                        changed: Default::default(),
                    },
                );
            }
            bases.get_mut(&0).unwrap().changed.insert(key);
            written = commit(&devices, &bases);
        })
    });
    let after = Metadata::open(Arc::clone(&meta))
        .unwrap()
        .superblock()
        .metadata_sm
        .nr_allocated;
    eprintln!(
        "incremental: {written} metadata blocks written per commit; blocks used {used} -> {after}"
    );
    g.bench_function("afresh", |b| {
        b.iter(|| {
            flip ^= 1;
            devices.get_mut(&0).unwrap().1[123_456].1.block = 123_456 ^ flip;
            written = commit(&devices, &BTreeMap::new());
        })
    });
    eprintln!("afresh: {written} metadata blocks written per commit");
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
