//! Criterion benches of the remapping hot path: linear and striped 4 KiB / 64 KiB reads and
//! writes over file and memory backings, beside a raw pread of the same file; linear 4 KiB
//! reads over a read-only mapped image; segment lookup in a 100,000-line table; the
//! allocation map of a sparse file with 2,048 extents (SEEK_DATA/SEEK_HOLE).
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dmemu::registry::Backing;
use dmemu::table::DeviceSpec;
use dmemu::{
    Access, FileVolume, MappedDevice, MemVolume, Registry, Sector, SectorCount, Table, TableMode,
    Volume,
};

use common::Aligned;

const IMAGE_SECTORS: u64 = 64 * 2048; // 64 MiB: stays in page cache
const SIZES: [usize; 2] = [4096, 65536];

fn image() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..IMAGE_SECTORS / 2048 {
        f.as_file().write_all_at(&chunk, i << 20).unwrap();
    }
    // Touch it once so it is in page cache.
    let mut b = vec![0u8; 1 << 20];
    for i in 0..IMAGE_SECTORS / 2048 {
        f.as_file().read_exact_at(&mut b, i << 20).unwrap();
    }
    f
}

fn device(r: &Registry, table: &str, mode: TableMode) -> Arc<MappedDevice> {
    r.create(&DeviceSpec {
        name: "bench".into(),
        uuid: String::new(),
        minor: None,
        mode,
        table: Table::parse(table).unwrap(),
    })
    .unwrap()
}

/// Pseudo-random request-aligned offsets within the first `span` sectors (a fixed xorshift
/// walk, the same for every variant), so each read misses the CPU caches as random I/O on a
/// large image does.
fn offsets(len: usize, span: u64) -> impl FnMut() -> u64 {
    let step = (len / 512) as u64;
    let slots = span / step;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % slots) * step
    }
}

fn bench_reads(c: &mut Criterion) {
    let img = image();
    let path = img.path().to_str().unwrap().to_string();
    let file_rw = Registry::new().with_access(Access::ReadWrite);
    let linear_file = device(
        &file_rw,
        &format!("0 {IMAGE_SECTORS} linear {path} 0"),
        TableMode::ReadWrite,
    );
    let striped_file = device(
        &Registry::new().with_access(Access::ReadWrite),
        &format!(
            "0 {IMAGE_SECTORS} striped 2 128 {path} 0 {path} {}",
            IMAGE_SECTORS / 2
        ),
        TableMode::ReadWrite,
    );
    let mapped = device(
        &Registry::new()
            .with_access(Access::ReadOnly)
            .with_backing(Backing::MmapReadOnly),
        &format!("0 {IMAGE_SECTORS} linear {path} 0"),
        TableMode::ReadOnly,
    );
    let mem = Registry::new();
    mem.insert_volume(
        "m",
        Arc::new(MemVolume::new(SectorCount(IMAGE_SECTORS)).unwrap()),
    );
    let linear_mem = device(
        &mem,
        &format!("0 {IMAGE_SECTORS} linear m 0"),
        TableMode::ReadWrite,
    );
    let mem2 = Registry::new();
    mem2.insert_volume(
        "m",
        Arc::new(MemVolume::new(SectorCount(IMAGE_SECTORS)).unwrap()),
    );
    let striped_mem = device(
        &mem2,
        &format!(
            "0 {IMAGE_SECTORS} striped 2 128 m 0 m {}",
            IMAGE_SECTORS / 2
        ),
        TableMode::ReadWrite,
    );
    let raw = std::fs::File::open(img.path()).unwrap();

    let mut g = c.benchmark_group("read");
    for len in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = Aligned::new(len);
        let mut next = offsets(len, IMAGE_SECTORS);
        g.bench_function(BenchmarkId::new("raw_pread", len), |b| {
            b.iter(|| raw.read_exact_at(buf.buf(len), next() * 512).unwrap())
        });
        // The live table alone beside the device: the device's own cost (suspend gate,
        // live-table lookup) is the difference, measured in the same run.
        let linear_mem_table = linear_mem.live_table().unwrap();
        let targets: [(&str, &dyn Volume); 6] = [
            ("linear_mem_table_only", &*linear_mem_table),
            ("linear_file", &*linear_file),
            ("striped_file", &*striped_file),
            ("linear_mmap", &*mapped),
            ("linear_mem", &*linear_mem),
            ("striped_mem", &*striped_mem),
        ];
        for (name, v) in targets {
            let mut next = offsets(len, IMAGE_SECTORS);
            g.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| v.read(Sector(next()), buf.buf(len)).unwrap())
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("write");
    for len in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = Aligned::new(len);
        let targets: [(&str, &dyn Volume); 4] = [
            ("linear_file", &*linear_file),
            ("striped_file", &*striped_file),
            ("linear_mem", &*linear_mem),
            ("striped_mem", &*striped_mem),
        ];
        let mut next = offsets(len, IMAGE_SECTORS);
        g.bench_function(BenchmarkId::new("raw_pwrite", len), |b| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(img.path())
                .unwrap();
            b.iter(|| f.write_all_at(buf.buf(len), next() * 512).unwrap())
        });
        for (name, v) in targets {
            let mut next = offsets(len, IMAGE_SECTORS);
            g.bench_function(BenchmarkId::new(name, len), |b| {
                b.iter(|| v.write(Sector(next()), buf.buf(len)).unwrap())
            });
        }
    }
    g.finish();
}

fn bench_lookup(c: &mut Criterion) {
    const LINES: u64 = 100_000;
    let mut text = String::new();
    for i in 0..LINES {
        text.push_str(&format!("{} 8 zero\n", i * 8));
    }
    let dev = device(&Registry::new(), &text, TableMode::ReadWrite);
    let table = dev.live_table().unwrap();
    // A fixed pseudo-random walk over the device (xorshift), so lookups miss the cache as a
    // real workload's would.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let sectors: Vec<Sector> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Sector(x % (LINES * 8))
        })
        .collect();
    let mut i = 0;
    c.bench_function("segment_lookup_100k_lines", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(table.segment_index(sectors[i]))
        })
    });
    let mut buf = Aligned::new(512);
    c.bench_function("read_512_through_100k_lines", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            dev.read(sectors[i], buf.buf(512)).unwrap()
        })
    });
}

/// load + resume of a linear table on a device while another thread issues 4 KiB random
/// reads to it without pause.
fn bench_swap(c: &mut Criterion) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let r = Registry::new();
    r.insert_volume(
        "m",
        Arc::new(MemVolume::new(SectorCount(IMAGE_SECTORS)).unwrap()),
    );
    let line = format!("0 {IMAGE_SECTORS} linear m 0");
    let dev = device(&r, &line, TableMode::ReadWrite);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = Aligned::new(4096);
            let mut next = offsets(4096, IMAGE_SECTORS);
            while !stop.load(Ordering::Relaxed) {
                dev.read(Sector(next()), buf.buf(4096)).unwrap();
            }
        });
        c.bench_function("table_swap_under_4k_random_reads", |b| {
            b.iter(|| {
                r.load("bench", Table::parse(&line).unwrap(), TableMode::ReadWrite)
                    .unwrap();
                r.resume("bench").unwrap();
            })
        });
        stop.store(true, Ordering::Relaxed);
    });
}

/// One `allocation` answer (the 1,024-extent cap) and the whole map (two answers) of a
/// 16 MiB file holding 4 KiB of data every 8 KiB.
fn bench_allocation(c: &mut Criterion) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(16 << 20).unwrap();
    for i in 0..1024u64 {
        f.as_file().write_all_at(&[0x5a; 4096], i * 8192).unwrap();
    }
    let v = FileVolume::open(f.path(), Access::ReadOnly).unwrap();
    c.bench_function("file_allocation_2048_extents", |b| {
        b.iter(|| {
            let mut at = 0;
            while at < v.size().0 {
                let answer = v
                    .allocation(Sector(at), SectorCount(v.size().0 - at))
                    .unwrap();
                at += answer.iter().map(|e| e.len.0).sum::<u64>();
            }
            black_box(at)
        })
    });
}

criterion_group!(
    benches,
    bench_reads,
    bench_lookup,
    bench_swap,
    bench_allocation
);
criterion_main!(benches);
