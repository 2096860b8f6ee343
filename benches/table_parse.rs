//! Criterion bench: parsing and validating a 100,000-line table (target < 100 ms).
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::table::concise::format_concise;
use dmemu::table::{parse_concise, parse_table};
use dmemu::Keys;

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

/// 100,000 concise devices: parse (including the duplicate-name check), check and format.
/// Each step is one pass over the text or the devices, so this grows linearly.
fn bench_concise(c: &mut Criterion) {
    let text: Vec<String> = (0..100_000u64)
        .map(|i| {
            format!(
                "vol{i},uuid-{i},,ro,0 2048 linear 8:{} {},2048 8 zero",
                i % 64,
                i * 8
            )
        })
        .collect();
    let text = text.join(";");
    let mut g = c.benchmark_group("concise");
    g.sample_size(10);
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("parse_check_fmt_100k_devices", |b| {
        b.iter(|| {
            let d = parse_concise(&text).unwrap();
            for s in &d {
                s.table.check_mode(s.mode).unwrap();
            }
            format_concise(&d, Keys::Shown)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_parse, bench_concise);
criterion_main!(benches);
