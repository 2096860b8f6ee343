//! Criterion benches of integrity reads (issue 17's target: integrity with crc32c >= 0.7 x
//! linear): a 64 MiB device `dmemu integrity format` wiped (crc32c, 512-byte blocks,
//! every tag valid) read through the integrity target in 64 KiB sequential and 4 KiB
//! random requests, against linear reads of as many sectors of the same memory image.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::table::args::Args;
use dmemu::targets::integrity::format::{format, FormatParams};
use dmemu::targets::linear::Linear;
use dmemu::targets::{Integrity, IntegrityArgs};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

use common::Aligned;

fn bench(c: &mut Criterion) {
    let dev: SharedVolume = Arc::new(MemVolume::new(SectorCount(64 << 11)).unwrap());
    let sb = format(
        &*dev,
        &FormatParams {
            salt: Some([7; 16]),
            ..FormatParams::default()
        },
    )
    .unwrap();
    let len = SectorCount(sb.provided_data_sectors);
    let tokens: Vec<String> = "/dev/x 0 4 D 1 internal_hash:crc32c"
        .split(' ')
        .map(str::to_string)
        .collect();
    let args = IntegrityArgs::parse(&mut Args::new(&tokens)).unwrap();
    let integrity = Integrity::over(Arc::clone(&dev), &args, len).unwrap();
    let linear = Linear::over(Arc::clone(&dev), SectorCount(0), len).unwrap();
    let vols: [(&str, &dyn Volume); 2] = [("integrity_crc32c", &integrity), ("linear", &linear)];

    let mut buf = Aligned::new(65536);
    let mut g = c.benchmark_group("integrity_read_64k_sequential");
    g.throughput(Throughput::Bytes(65536));
    for (name, v) in vols {
        g.bench_function(name, |b| {
            let mut s = 0u64;
            b.iter(|| {
                if s + 128 > len.0 {
                    s = 0;
                }
                v.read(Sector(s), buf.buf(65536)).unwrap();
                s += 128;
                black_box(&buf);
            })
        });
    }
    g.finish();

    common::random_4k_reads(c, "integrity_read_4k_random", &vols, len);
}

criterion_group!(benches, bench);
criterion_main!(benches);
