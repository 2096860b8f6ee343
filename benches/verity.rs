//! dm-verity speed: verified random 4 KiB reads with the hash blocks cached (compare with
//! SHA-256 of 4 KiB, the physical limit, measured here too), and tree build throughput
//! (`format`, all cores).

use std::sync::Arc;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use dmemu::targets::verity::fec::{encode, FecGeometry};
use dmemu::targets::verity::format::{format, FormatParams};
use dmemu::targets::verity::{BlockHasher, HashAlg, Uuid, Verity};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

const DATA_MIB: u64 = 64;

fn data_bytes() -> Vec<u8> {
    let mut bytes = vec![0u8; usize::try_from(DATA_MIB << 20).unwrap()];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in bytes.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    bytes
}

fn params() -> FormatParams {
    FormatParams {
        hash_type: 1,
        algorithm: HashAlg::Sha256,
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: (DATA_MIB << 20) / 4096,
        salt: vec![0x5a; 32],
        uuid: Uuid::default(),
        hash_offset: 0,
        superblock: true,
    }
}

fn bench(c: &mut Criterion) {
    let raw = data_bytes();
    let data: SharedVolume = Arc::new(MemVolume::from_bytes(raw.clone()).unwrap());
    let p = params();
    let file = tempfile::tempfile().unwrap();
    let root = format(&p, &*data, &file).unwrap();

    let mut g = c.benchmark_group("verity_tree_build");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(DATA_MIB << 20));
    g.bench_function(
        BenchmarkId::new("format_sha256_4k", format!("{DATA_MIB}MiB")),
        |b| {
            b.iter(|| format(&p, &*data, &file).unwrap());
        },
    );
    g.finish();

    let mut hash_bytes = vec![0u8; usize::try_from(file.metadata().unwrap().len()).unwrap()];
    let hash_len = hash_bytes.len() as u64;
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut hash_bytes, 0).unwrap();
    let hash: SharedVolume = Arc::new(MemVolume::from_bytes(hash_bytes).unwrap());

    let geo = p.geometry().unwrap();
    let fg = FecGeometry::new(
        2,
        4096,
        p.data_blocks + hash_len / 4096 - geo.hash_start,
        0,
        p.data_blocks,
        geo.hash_start,
        geo.hash_end,
    )
    .unwrap();
    let fec_file = tempfile::tempfile().unwrap();
    let mut g = c.benchmark_group("verity_fec_encode");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(DATA_MIB << 20));
    g.bench_function(
        BenchmarkId::new("roots2_4k", format!("{DATA_MIB}MiB")),
        |b| {
            b.iter(|| encode(&fg, &*data, &*hash, &fec_file, 0).unwrap());
        },
    );
    g.finish();
    let args = p.table_args("data", "hash", &root);
    let v = Verity::over(&args, SectorCount(DATA_MIB << 11), Arc::clone(&data), hash).unwrap();
    let mut buf = vec![0u8; 4096];
    // Warm the cache: every hash block verified once.
    for blk in 0..p.data_blocks {
        v.read(Sector(blk * 8), &mut buf).unwrap();
    }
    let mut g = c.benchmark_group("verity_read");
    g.throughput(Throughput::Bytes(4096));
    let mut x = 12345u64;
    g.bench_function("random_4k_verified_cached", |b| {
        b.iter(|| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let blk = (x >> 33) % p.data_blocks;
            v.read(Sector(blk * 8), &mut buf).unwrap();
        });
    });
    let h = BlockHasher::new(HashAlg::Sha256, 1, &[0x5a; 32]);
    let block = vec![7u8; 4096];
    let mut out = [0u8; 32];
    g.bench_function("sha256_4k_limit", |b| b.iter(|| h.hash(&block, &mut out)));
    // The same random blocks hashed in place: the limit including the fetch from memory.
    g.bench_function("sha256_random_4k_in_place", |b| {
        b.iter(|| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let blk = usize::try_from((x >> 33) % p.data_blocks).unwrap();
            h.hash(&raw[blk * 4096..(blk + 1) * 4096], &mut out);
        });
    });
    g.finish();
}

mod group {
    #![allow(missing_docs)]
    use super::bench;
    criterion::criterion_group!(benches, bench);
}
criterion_main!(group::benches);
