//! Criterion bench of the crypt target: aes-xts-plain64, AES-128 and AES-256, 512-byte and
//! 4 KiB crypt sectors, reads and writes of 64 KiB requests (one thread) over a MemVolume
//! and over a sink (a volume whose reads and writes move no data, which isolates the
//! cipher: read = decrypt in place, write = copy to the bounce buffer + encrypt), plus
//! 4 MiB requests that fan out over two threads. benches/crypt_vs_openssl.sh runs this next
//! to `openssl speed -evp aes-{128,256}-xts -bytes 4096`.

#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::table::parse_line_params;
use dmemu::targets::crypt::{Crypt, Keyring};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, TargetSpec, Volume};

const DISK: SectorCount = SectorCount(16 * 1024); // 8 MiB

/// A lower device that keeps no data: reads leave the buffer as it is, writes go nowhere.
#[derive(Debug)]
struct Sink(SectorCount);

impl Volume for Sink {
    fn size(&self) -> SectorCount {
        self.0
    }
    fn read(&self, _: Sector, _: &mut [u8]) -> dmemu::Result<()> {
        Ok(())
    }
    fn write(&self, _: Sector, _: &[u8]) -> dmemu::Result<()> {
        Ok(())
    }
    fn flush(&self) -> dmemu::Result<()> {
        Ok(())
    }
    fn discard(&self, _: Sector, _: SectorCount) -> dmemu::Result<()> {
        Ok(())
    }
}

fn crypt(key_bytes: usize, sector_size: u32, lower: SharedVolume) -> Crypt {
    let key: String = (0..key_bytes)
        .map(|i| format!("{:02x}", (i * 7 + 1) & 0xff))
        .collect();
    let params = format!("aes-xts-plain64 {key} 0 d 0 1 sector_size:{sector_size}");
    let TargetSpec::Crypt(args) = parse_line_params("crypt", DISK, &params).unwrap() else {
        unreachable!()
    };
    Crypt::over(lower, &args, DISK, &Keyring::default()).unwrap()
}

/// A page-aligned buffer (see DESIGN.md: misaligned copies are 5x slower here).
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let v = vec![0x5au8; len + 4096];
    let off = v.as_ptr().align_offset(4096);
    (v, off)
}

fn bench_lower(c: &mut Criterion, lower_name: &str, lower: &dyn Fn() -> SharedVolume) {
    for (bits, key_bytes) in [(128, 32), (256, 64)] {
        for sector_size in [512u32, 4096] {
            let dev = crypt(key_bytes, sector_size, lower());
            for (req, label) in [(64 * 1024, "64KiB"), (4 << 20, "4MiB-2threads")] {
                let mut g = c.benchmark_group(format!(
                    "crypt/{lower_name}/aes{bits}-xts-plain64/ss{sector_size}/{label}"
                ));
                g.throughput(Throughput::Bytes(req as u64));
                let (mut v, off) = aligned(req);
                let sectors = (DISK.0 * 512 / req as u64).max(1);
                let mut i = 0u64;
                g.bench_function("write", |b| {
                    b.iter(|| {
                        i = (i + 1) % sectors;
                        let at = Sector(i * req as u64 / 512);
                        dev.write(at, black_box(&v[off..off + req])).unwrap();
                    })
                });
                g.bench_function("read", |b| {
                    b.iter(|| {
                        i = (i + 1) % sectors;
                        let at = Sector(i * req as u64 / 512);
                        dev.read(at, black_box(&mut v[off..off + req])).unwrap();
                    })
                });
                g.finish();
            }
        }
    }
}

fn benches(c: &mut Criterion) {
    bench_lower(c, "mem", &|| Arc::new(MemVolume::new(DISK).unwrap()));
    bench_lower(c, "sink", &|| Arc::new(Sink(DISK)));
}

criterion_group! {
    name = crypt_benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(crypt_benches);
