//! Criterion bench of LUKS2 with integrity (issue 17's target: LUKS2 aes-gcm reads >= 0.5 x
//! aes-xts reads): 64 KiB sequential reads of the decrypted volume, AES-256 in both, as
//! cryptsetup's defaults make them (`aes-gcm-random` with a 256-bit key over a J-mode
//! dm-integrity device with 28-byte tags; `aes-xts-plain64` with a 512-bit key over the
//! plain data). The authenticated modes also run with hmac(sha256) over aes-xts and
//! aegis128-random. Each device is 32 MiB in memory, fully written first so every tag is
//! valid.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::table::args::Args;
use dmemu::table::parse_line_params;
use dmemu::targets::crypt::{Crypt, Keyring};
use dmemu::targets::integrity::format::{format, FormatParams};
use dmemu::targets::{Integrity, IntegrityArgs, TargetSpec};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

use common::Aligned;

const DISK: SectorCount = SectorCount(32 << 11);

fn key(bytes: usize) -> String {
    (0..bytes)
        .map(|i| format!("{:02x}", (i * 7 + 1) & 0xff))
        .collect()
}

/// `cipher` with a `key_bytes` key over a fresh integrity device with `tag`-byte tags,
/// or over plain memory when `tag` is 0; every sector written once.
fn volume(cipher: &str, key_bytes: usize, tag: u32) -> Crypt {
    let mem: SharedVolume = Arc::new(MemVolume::new(DISK).unwrap());
    let (lower, len, opts): (SharedVolume, SectorCount, String) = if tag == 0 {
        (mem, DISK, String::new())
    } else {
        let sb = format(
            &*mem,
            &FormatParams {
                tag_size: Some(tag),
                wipe: false,
                salt: Some([3; 16]),
                ..FormatParams::default()
            },
        )
        .unwrap();
        let len = SectorCount(sb.provided_data_sectors);
        let tokens: Vec<String> = [
            "/dev/x".into(),
            "0".into(),
            tag.to_string(),
            "J".into(),
            "0".into(),
        ]
        .to_vec();
        let args = IntegrityArgs::parse(&mut Args::new(&tokens)).unwrap();
        let t: SharedVolume = Arc::new(Integrity::over(mem, &args, len).unwrap());
        (t, len, format!(" 1 integrity:{tag}:aead"))
    };
    let params = format!("{cipher} {} 0 /dev/x 0{opts}", key(key_bytes));
    let TargetSpec::Crypt(args) = parse_line_params("crypt", len, &params).unwrap() else {
        unreachable!()
    };
    let v = Crypt::over(lower, &args, len, &Keyring::default()).unwrap();
    let chunk = vec![0x6bu8; 1 << 20];
    let mut s = 0;
    while s < len.0 {
        let n = (len.0 - s).min(2048);
        v.write(Sector(s), &chunk[..n as usize * 512]).unwrap();
        s += n;
    }
    v
}

fn bench(c: &mut Criterion) {
    let vols = [
        ("aes-xts-plain64", volume("aes-xts-plain64", 64, 0)),
        ("aes-gcm-random", volume("capi:gcm(aes)-random", 32, 28)),
        (
            "hmac-sha256-aes-xts-plain64",
            volume("capi:authenc(hmac(sha256),xts(aes))-plain64", 96, 32),
        ),
        ("aegis128-random", volume("capi:aegis128-random", 16, 32)),
    ];
    let mut buf = Aligned::new(65536);
    let mut g = c.benchmark_group("luks_integrity_read_64k_sequential");
    g.throughput(Throughput::Bytes(65536));
    for (name, v) in &vols {
        let len = v.size().0;
        g.bench_function(*name, |b| {
            let mut s = 0u64;
            b.iter(|| {
                if s + 128 > len {
                    s = 0;
                }
                v.read(Sector(s), buf.buf(65536)).unwrap();
                s += 128;
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
