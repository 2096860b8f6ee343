//! Criterion bench: parsing and validating a 100,000-line table (target < 100 ms).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::table::parse_table;

fn bench_parse(c: &mut Criterion) {
    let mut text = String::new();
    for i in 0..100_000u64 {
        match i % 4 {
            0 => text.push_str(&format!(
                "{} 2048 linear /dev/disk/by-id/wwn-0x5000c500{i:08x} {}\n",
                i * 2048,
                i * 4096
            )),
            1 => text.push_str(&format!(
                "{} 2048 striped 2 128 8:16 {} 8:32 {}\n",
                i * 2048,
                i * 1024,
                i * 1024
            )),
            2 => text.push_str(&format!("{} 2048 zero\n", i * 2048)),
            _ => text.push_str(&format!("{} 2048 error\n", i * 2048)),
        }
    }
    let mut g = c.benchmark_group("table_parse");
    g.sample_size(20);
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("parse_validate_100k_lines", |b| {
        b.iter(|| parse_table(text.as_bytes()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
