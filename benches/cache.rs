//! Criterion benches of cache reads: the kernel-made writeback cache of
//! tests/fixtures/cache (wb2: format 2, 15 of 32 blocks mapped, 7 dirty, 64 KiB blocks over
//! an 8 MiB origin) read whole in 64 KiB requests and in random 4 KiB requests, against
//! linear reads of the origin alone (the target: cache >= 0.8 x linear).
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

fn image(name: &str) -> SharedVolume {
    let path = format!(
        "{}/tests/fixtures/cache/wb2-{name}.img.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    Arc::new(MemVolume::from_bytes(out).unwrap())
}

fn bench(c: &mut Criterion) {
    let tokens: Vec<String> = "m c o 128 2 writeback metadata2 smq 0"
        .split(' ')
        .map(str::to_string)
        .collect();
    let args = CacheArgs::parse(&mut Args::new(&tokens)).unwrap();
    let origin = image("origin");
    let len = origin.size();
    let cache = Cache::over(
        &args,
        len,
        image("meta"),
        image("cache"),
        Arc::clone(&origin),
    )
    .unwrap();
    let linear = Linear::over(Arc::clone(&origin), SectorCount(0), len).unwrap();
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
