//! Criterion benches of cache reads: the kernel-made writeback cache of
//! tests/fixtures/cache (wb2: format 2, 15 of 32 blocks mapped, 7 dirty, 64 KiB blocks over
//! an 8 MiB origin) read whole in 64 KiB requests and in random 4 KiB requests, against
//! linear reads of the origin alone (the target: cache >= 0.8 x linear); and a 1 GiB
//! writeback cache (benches/cache-1g-meta.img.gz, made by make-cache-1g.sh with
//! cache_restore: 16384 blocks of 64 KiB, all mapped in scattered order, a third dirty)
//! read whole in 1 MiB requests against a linear table over a 1 GiB origin.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::io::Read;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::table::args::Args;
use dmemu::targets::linear::Linear;
use dmemu::targets::{Cache, CacheArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

use common::Aligned;

/// A gzipped image under the crate, in memory.
fn gunzip(rel: &str) -> SharedVolume {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    Arc::new(MemVolume::from_bytes(out).unwrap())
}

fn image(name: &str) -> SharedVolume {
    gunzip(&format!("tests/fixtures/cache/wb2-{name}.img.gz"))
}

/// A format 2 writeback cache over the three volumes, and a linear table over its origin.
fn cache_and_linear(
    meta: SharedVolume,
    cache: SharedVolume,
    origin: SharedVolume,
) -> (Cache, Linear) {
    let tokens: Vec<String> = "m c o 128 2 writeback metadata2 smq 0"
        .split(' ')
        .map(str::to_string)
        .collect();
    let args = CacheArgs::parse(&mut Args::new(&tokens)).unwrap();
    let len = origin.size();
    let linear = Linear::over(Arc::clone(&origin), SectorCount(0), len).unwrap();
    (
        Cache::over(&args, len, meta, cache, origin).unwrap(),
        linear,
    )
}

fn bench(c: &mut Criterion) {
    let origin = image("origin");
    let len = origin.size();
    let (cache, linear) = cache_and_linear(image("meta"), image("cache"), origin);
    let vols: [(&str, &dyn Volume); 2] = [("cache_writeback", &cache), ("linear", &linear)];

    let mut g = c.benchmark_group("cache_read_64k_sequential");
    g.throughput(Throughput::Bytes(len.0 * 512));
    let mut buf = Aligned::new(65536);
    for (name, v) in vols {
        g.bench_function(name, |b| {
            b.iter(|| {
                for s in (0..len.0).step_by(128) {
                    v.read(Sector(s), buf.buf(65536)).unwrap();
                }
                black_box(&buf);
            })
        });
    }
    g.finish();

    common::random_4k_reads(c, "cache_read_4k_random", &vols, len);
    one_gib(c);
}

/// A 1 GiB volume in memory with a distinct first sector in each 64 KiB block.
fn gib(seed: u8) -> SharedVolume {
    let v = MemVolume::new(SectorCount(1 << 21)).unwrap();
    for b in 0..16384u64 {
        let sector = [seed ^ u8::try_from(b % 251).unwrap(); 512];
        v.write(Sector(b * 128), &sector).unwrap();
    }
    Arc::new(v)
}

fn one_gib(c: &mut Criterion) {
    let origin = gib(0x5a);
    let len = origin.size();
    let (cache, linear) =
        cache_and_linear(gunzip("benches/cache-1g-meta.img.gz"), gib(0xa5), origin);
    let vols: [(&str, &dyn Volume); 2] = [("cache_writeback_1g", &cache), ("linear_1g", &linear)];
    let mut g = c.benchmark_group("cache_read_1g_sequential_1m");
    g.throughput(Throughput::Bytes(len.0 * 512));
    g.sample_size(10);
    let mut buf = Aligned::new(1 << 20);
    for (name, v) in vols {
        g.bench_function(name, |b| {
            b.iter(|| {
                for s in (0..len.0).step_by(2048) {
                    v.read(Sector(s), buf.buf(1 << 20)).unwrap();
                }
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
