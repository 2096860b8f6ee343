//! Fuzz drivers: arbitrary input must never panic, and what parses must round-trip.
//! The cargo-fuzz targets in fuzz/ are one-line calls of these.

use crate::table::concise::format_concise;
use crate::table::{parse_boot, parse_concise, parse_table};
use crate::targets::Keys;

/// Table text: parse; if it parses, its canonical text parses to the same table and is a
/// fixed point of formatting.
pub fn table_text(data: &[u8]) {
    let Ok(table) = parse_table(data) else {
        return;
    };
    let text = table.to_text(Keys::Shown);
    let again = parse_table(text.as_bytes())
        .unwrap_or_else(|e| panic!("canonical text does not parse: {e}\n{text}"));
    assert_eq!(again, table, "parse(format(t)) != t for\n{text}");
    assert_eq!(again.to_text(Keys::Shown), text);
    let _ = table.to_text(Keys::Hidden);
}

/// `--concise` and `dm-mod.create=` text: never panic; concise round-trips.
pub fn concise_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(devices) = parse_concise(text) {
        let out = format_concise(&devices, Keys::Shown);
        let again = parse_concise(&out)
            .unwrap_or_else(|e| panic!("canonical concise text does not parse: {e}\n{out}"));
        assert_eq!(again, devices);
    }
    let _ = parse_boot(text);
}

/// A COW device image from untrusted bytes: the first byte picks the table's chunk size
/// (0 = from the header), the rest (zero-padded to whole sectors) is the COW. Loading it as
/// a persistent snapshot and as snapshot-merge over a 64-sector origin must return an error
/// or a working target; reads, a write, the status and a full merge must never panic.
pub fn snapshot_cow(data: &[u8]) {
    use std::sync::Arc;

    use crate::targets::snapshot::{OriginSnapshots, Snapshot, SnapshotDiscard, StoreType};
    use crate::targets::{DeviceRef, SnapshotArgs, SnapshotKind, Target};
    use crate::units::{Sector, SectorCount};
    use crate::volume::{MemVolume, SharedVolume, Volume};

    let Some((&pick, cow)) = data.split_first() else {
        return;
    };
    let chunk_size = [0, 1, 2, 8][usize::from(pick % 4)];
    let mut bytes = cow.to_vec();
    bytes.resize(bytes.len().div_ceil(512).max(1) * 512, 0);
    let origin: SharedVolume = Arc::new(MemVolume::new(SectorCount(64)).expect("origin"));
    for kind in [SnapshotKind::Snapshot, SnapshotKind::Merge] {
        let cow: SharedVolume = Arc::new(MemVolume::from_bytes(bytes.clone()).expect("cow"));
        let args = SnapshotArgs {
            origin: DeviceRef("origin".into()),
            cow: DeviceRef("cow".into()),
            store: if pick & 4 == 0 {
                StoreType::Persistent
            } else {
                StoreType::PersistentOverflow
            },
            chunk_size,
            discard: SnapshotDiscard::Off,
        };
        let links = Arc::new(OriginSnapshots::default());
        let Ok(snap) = Snapshot::over(
            &args,
            kind,
            Arc::clone(&origin),
            cow,
            SectorCount(64),
            &links,
        ) else {
            continue;
        };
        let mut buf = vec![0; 64 * 512];
        let _ = snap.read(Sector(0), &mut buf);
        let _ = snap.write(Sector(5), &[0xa5; 512]);
        let _ = snap.status();
        if kind == SnapshotKind::Merge {
            let _ = snap.merge();
        }
        let _ = snap.read(Sector(0), &mut buf);
        let _ = snap.status();
    }
}

/// Thin-pool metadata from damaged bytes: never panic, hang or allocate without bound.
///
/// The input patches a pool dmemu laid out itself (3 devices, two of them snapshots
/// sharing blocks, multi-level btrees, ref counts in the ref-count btree, a held metadata
/// snapshot): 4-byte records
/// `block | offset lo | offset hi | byte`. A block whose record has the top bit of `block`
/// clear gets its checksum fixed afterwards, so the fuzzer reaches the structure checks
/// behind the checksums. Then the metadata is opened, dumped, its space maps counted, and a
/// pool and each thin built, read, written and committed.
pub fn thin_metadata(data: &[u8]) {
    use std::collections::BTreeSet;
    use std::sync::{Arc, OnceLock};

    use crate::targets::thin::metadata::block::{check, seal, Kind, MetaDev, BLOCK_SIZE};
    use crate::targets::thin::metadata::Metadata;
    use crate::targets::{Target, Thin, ThinPool, ThinPoolArgs};
    use crate::volume::{MemVolume, Volume};
    use crate::{Sector, SectorCount};

    const META_BLOCKS: usize = 256;
    const DATA_SECTORS: u64 = 64 * 128;
    let args = || {
        let tokens: Vec<String> = ["m", "d", "128", "0"].map(str::to_string).to_vec();
        ThinPoolArgs::parse(&mut crate::table::args::Args::new(&tokens))
    };
    static BASE: OnceLock<(Vec<u8>, Vec<Option<Kind>>)> = OnceLock::new();
    let (base, kinds) = BASE.get_or_init(|| {
        let meta = Arc::new(MemVolume::new(SectorCount(8 * 256)).unwrap());
        let data = Arc::new(MemVolume::new(SectorCount(DATA_SECTORS)).unwrap());
        let pool = Arc::new(
            ThinPool::over(
                &args().unwrap(),
                SectorCount(DATA_SECTORS),
                meta.clone(),
                data,
            )
            .unwrap(),
        );
        pool.message(&["create_thin", "1"]).unwrap();
        let t = Thin::over(pool.clone(), 1, SectorCount(1 << 20), None).unwrap();
        for i in 0..60u64 {
            t.write(Sector(i * 1000 % (1 << 20) / 8 * 8), &[1; 512])
                .unwrap();
        }
        pool.message(&["create_snap", "2", "1"]).unwrap();
        pool.message(&["create_snap", "3", "1"]).unwrap();
        t.write(Sector(0), &[2; 512]).unwrap();
        // A held metadata snapshot, so commits walk its trees too.
        pool.message(&["reserve_metadata_snap"]).unwrap();
        t.write(Sector(128 * 500), &[3; 512]).unwrap();
        drop(t);
        drop(pool);
        let img = meta.to_vec();
        let kinds = img
            .chunks(BLOCK_SIZE)
            .enumerate()
            .map(|(b, blk)| {
                let b = u64::try_from(b).unwrap_or(0);
                [Kind::Superblock, Kind::BtreeNode, Kind::Bitmap, Kind::Index]
                    .into_iter()
                    .find(|&k| check(blk, b, k).is_ok())
            })
            .collect();
        (img, kinds)
    });
    let mut img = base.clone();
    let mut touched = BTreeSet::new();
    for rec in data.chunks_exact(4) {
        let b = usize::from(rec[0] & 0x7f) % META_BLOCKS;
        let off = usize::from(u16::from_le_bytes([rec[1], rec[2]])) % BLOCK_SIZE;
        img[b * BLOCK_SIZE + off] = rec[3];
        if rec[0] & 0x80 == 0 {
            touched.insert(b);
        }
    }
    for b in touched {
        if let Some(k) = kinds[b] {
            seal(&mut img[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE], k.xor());
        }
    }
    let meta = Arc::new(MemVolume::from_bytes(img).unwrap());
    let Ok(md) = Metadata::open(meta.clone()) else {
        return;
    };
    let _ = md.dump_xml();
    let _ = md.check();
    for sm in [md.data_space_map(), md.metadata_space_map()]
        .into_iter()
        .flatten()
    {
        let _ = sm.for_each_nonzero(md.dev(), &mut |_, _| Ok(()));
        let _ = sm.ref_count(md.dev(), 3);
    }
    let _ = MetaDev::new(meta.clone()).read(1, Kind::BtreeNode);
    let data = Arc::new(MemVolume::new(SectorCount(DATA_SECTORS)).unwrap());
    let Ok(pool) = ThinPool::over(&args().unwrap(), SectorCount(DATA_SECTORS), meta, data) else {
        return;
    };
    let pool = Arc::new(pool);
    let _ = pool.status();
    for id in 0..4 {
        if let Ok(t) = Thin::over(pool.clone(), id, SectorCount(1 << 20), None) {
            let mut buf = vec![0; 4096];
            let _ = t.read(Sector(0), &mut buf);
            let _ = t.read(Sector(8000), &mut buf);
            let _ = t.status();
            // A write and the commit it leads to: the writer lays out what was read
            // (and walks the held snapshot's damaged trees).
            if t.write(Sector(8 * 128), &buf).is_ok() {
                let _ = t.flush();
            }
        }
    }
}

/// The smallest LUKS device the LUKS drivers build: the fixtures' 2 MiB payload offset
/// plus 64 KiB of payload, so the fixtures' headers, key slots and segments all fit.
const LUKS_DEVICE_BYTES: usize = (2 << 20) + (64 << 10);

/// KDF limits for the LUKS drivers: the fixtures' slots (PBKDF2 1000 iterations, Argon2
/// 32 KiB × 4 passes) run, anything costlier is refused before it runs.
fn fuzz_kdf_limits() -> crate::luks::KdfLimits {
    crate::luks::KdfLimits {
        max_memory_kib: 64,
        max_iterations: 2000,
        max_argon2_work: 256,
        max_total_work: 50_000,
    }
}

/// Open a LUKS device made of `img` (zero-padded to [`LUKS_DEVICE_BYTES`]), then dump it,
/// unlock it with the fixtures' passphrase `alpha` and a wrong one, check a zero volume
/// key, and read the start of the decrypted volume when a key opened it.
fn luks_image(mut img: Vec<u8>) {
    use std::sync::Arc;

    use crate::luks::Luks;
    use crate::volume::{MemVolume, SharedVolume, Volume};
    use crate::Sector;

    img.resize(img.len().max(LUKS_DEVICE_BYTES).div_ceil(512) * 512, 0);
    let dev: SharedVolume = Arc::new(MemVolume::from_bytes(img).expect("device"));
    let Ok(luks) = Luks::open(dev, None) else {
        return;
    };
    let _ = luks.dump("fuzz.img");
    let _ = luks.warnings();
    let limits = fuzz_kdf_limits();
    let _ = luks.unlock(b"wrong", None, &limits);
    let _ = luks.check_volume_key(&[0; 32]);
    if let Ok(key) = luks.unlock(b"alpha", None, &limits) {
        let _ = luks.table_line(&key, "fuzz.img", crate::Keys::Hidden, false);
        if let Ok(vol) = luks.volume(&key) {
            let mut buf = vec![0; 4096.min(vol.size().usize_bytes().unwrap_or(0))];
            let _ = vol.read(Sector(0), &mut buf);
        }
    }
}

/// A LUKS1 device's first bytes (header, key slots, key material): never panic, and an
/// unlock attempt costs at most the drivers' KDF limits.
pub fn luks1_header(data: &[u8]) {
    luks_image(data.to_vec());
}

/// A LUKS2 device's first bytes (binary header pair, JSON areas, key-slot areas). The first
/// byte's bits 0 and 1 re-seal the primary / secondary copy's checksum after the fuzzer's
/// changes (over the `hdr_size` each copy declares, when it fits), so the fuzzer reaches
/// the copy selection and the JSON behind the checksums.
pub fn luks2_header(data: &[u8]) {
    let Some((&flags, img)) = data.split_first() else {
        return;
    };
    let mut img = img.to_vec();
    img.resize(img.len().max(LUKS_DEVICE_BYTES).div_ceil(512) * 512, 0);
    if flags & 1 != 0 {
        seal_luks2_copy(&mut img, 0);
    }
    if flags & 2 != 0 {
        let hdr = read_be64(&img, 8);
        if let Ok(at) = usize::try_from(hdr) {
            seal_luks2_copy(&mut img, at);
        }
    }
    luks_image(img);
}

/// LUKS2 JSON metadata: the input's bytes up to its first NUL are the JSON text, the rest is
/// the key-slot area. The driver frames the text in a valid binary header pair (hdr_size
/// 16 KiB, or the smallest that holds the text), so every input reaches the JSON parser and
/// the header validation.
pub fn luks2_json(data: &[u8]) {
    use crate::luks::luks2::header::{BIN_SIZE, HDR_SIZES};

    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (json, rest) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let Some(&hdr) = HDR_SIZES
        .iter()
        .find(|&&h| usize::try_from(h).is_ok_and(|h| h - BIN_SIZE > json.len()))
    else {
        return;
    };
    let hdr = usize::try_from(hdr).expect("fits");
    let mut img = vec![0u8; 2 * hdr];
    for (copy, magic) in [(0, &b"LUKS\xba\xbe"[..]), (hdr, &b"SKUL\xba\xbe"[..])] {
        let b = &mut img[copy..copy + hdr];
        b[..6].copy_from_slice(magic);
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        b[8..16].copy_from_slice(&(hdr as u64).to_be_bytes());
        b[16..24].copy_from_slice(&1u64.to_be_bytes());
        b[72..78].copy_from_slice(b"sha256");
        b[168..204].copy_from_slice(b"1d3e5c5e-8a9e-4b5e-9d63-0b8a2b1f7c11");
        b[256..264].copy_from_slice(&(copy as u64).to_be_bytes());
        b[BIN_SIZE..BIN_SIZE + json.len()].copy_from_slice(json);
        seal_luks2_copy(&mut img, copy);
    }
    img.extend_from_slice(rest);
    luks_image(img);
}

fn read_be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |w| u64::from_be_bytes(w.try_into().expect("8 bytes")))
}

/// Recompute the checksum of the LUKS2 header copy at byte `at` of `img` as cryptsetup
/// writes it: the `checksum_alg` digest of the `hdr_size` bytes with the csum field zeroed.
/// Copies that do not fit or name an unknown algorithm are left alone.
fn seal_luks2_copy(img: &mut [u8], at: usize) {
    use crate::luks::hash::Hash;

    let hdr = read_be64(img, at + 8);
    let Some(end) = usize::try_from(hdr)
        .ok()
        .filter(|&h| h >= 4096)
        .and_then(|h| at.checked_add(h))
        .filter(|&e| e <= img.len())
    else {
        return;
    };
    let alg = &img[at + 72..at + 104];
    let alg = String::from_utf8_lossy(&alg[..alg.iter().position(|&c| c == 0).unwrap_or(32)]);
    let Some(hash) = Hash::from_name(&alg) else {
        return;
    };
    let copy = &mut img[at..end];
    copy[448..512].fill(0);
    let mut sum = [0u8; 64];
    hash.digest_into(&[copy], &mut sum[..hash.digest_len()]);
    copy[448..512].copy_from_slice(&sum);
}

/// The anti-forensic splitter and the digests: byte 0 picks the hash, bytes 1..3 the
/// stripe count (1..=4000), byte 3 the key length (1..=64); the rest is the key material.
/// Merging never panics, and splitting the merged key over the same material's first
/// stripes merges back to it (cryptsetup's AF_split / AF_merge are inverses).
pub fn af_digest(data: &[u8]) {
    use crate::luks::hash::{af_merge, af_split, Hash};

    const HASHES: [Hash; 7] = [
        Hash::Sha1,
        Hash::Sha224,
        Hash::Sha256,
        Hash::Sha384,
        Hash::Sha512,
        Hash::Ripemd160,
        Hash::Whirlpool,
    ];
    let [h, s0, s1, k, material @ ..] = data else {
        return;
    };
    let hash = HASHES[usize::from(*h) % HASHES.len()];
    let stripes = usize::from(u16::from_le_bytes([*s0, *s1])) % 4000 + 1;
    let key_len = usize::from(*k) % 64 + 1;
    let mut src = material.to_vec();
    src.resize(src.len().max(stripes * key_len), 0);
    let mut key = vec![0u8; key_len];
    af_merge(&src, stripes, hash, &mut key);
    let mut split = src.clone();
    af_split(&key, &mut split, stripes, hash);
    let mut back = vec![0u8; key_len];
    af_merge(&split, stripes, hash, &mut back);
    assert_eq!(
        back, key,
        "AF merge(split(k)) != k for {hash}, {stripes} stripes"
    );
    // The digests: PBKDF2 over the key (LUKS1 mkDigest, LUKS2 digests) and the plain one.
    let mut d = vec![0u8; hash.digest_len()];
    hash.pbkdf2(&key, material.get(..32).unwrap_or(material), 2, &mut d);
    hash.digest_into(&[&key, material], &mut d);
}

/// Verity's superblock and hash tree: byte 0 is the root hash's length n, bytes 1..=n the
/// root hash, the rest the hash device (superblock at 0, then the tree). The data device is
/// the fixtures' data image (data-b for 512-byte data blocks, data-a otherwise), so the
/// seeds verify. Reading the superblock, `verity verify` and a verity target over it
/// (reads of every block, status) never panic, and the target never returns bytes that
/// differ from the data device's.
pub fn verity_tree(data: &[u8]) {
    use std::sync::Arc;

    use crate::targets::verity::format::{read_superblock, verify, FormatParams};
    use crate::targets::verity::Verity;
    use crate::targets::Target;
    use crate::volume::{MemVolume, SharedVolume, Volume};
    use crate::{Sector, SectorCount};

    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(64).min(rest.len());
    let (root, hash) = rest.split_at(n);
    let mut hash = hash.to_vec();
    hash.resize(hash.len().div_ceil(512).max(1) * 512, 0);
    let hash: SharedVolume = Arc::new(MemVolume::from_bytes(hash).expect("hash"));
    let Ok(sb) = read_superblock(&*hash, 0) else {
        return;
    };
    let p = FormatParams::from_superblock(&sb, 0);
    if p.check().is_err() {
        return;
    }
    let bytes = verity_data(p.data_block_size);
    let data: SharedVolume = Arc::new(MemVolume::from_bytes(bytes.to_vec()).expect("data"));
    let _ = verify(&p, &*data, &*hash, root);
    let args = p.table_args("data", "hash", root);
    let Some(len) = p
        .data_blocks
        .checked_mul(u64::from(p.data_block_size) / 512)
        .filter(|&s| s <= data.size().0)
    else {
        return;
    };
    let Ok(v) = Verity::over(&args, SectorCount(len), data.clone(), hash) else {
        return;
    };
    let v = v.with_cache_blocks(4);
    let step = (u64::from(p.data_block_size) / 512).max(1);
    let mut buf = vec![0u8; usize::try_from(step * 512).expect("block")];
    let mut want = buf.clone();
    let mut s = 0;
    while s < len {
        if v.read(Sector(s), &mut buf).is_ok() {
            data.read(Sector(s), &mut want).expect("data");
            assert_eq!(
                buf, want,
                "verity returned other bytes than the data at sector {s}"
            );
        }
        s += step;
    }
    let _ = v.status();
}

/// The verity data images of the fixtures (tests/fixtures/verity/make.sh): block i =
/// sha256("block i") repeated, the listed blocks zero; 10 KiB of 512-byte blocks (data-b)
/// for 512-byte data blocks, else 1 MiB of 4 KiB pattern blocks (data-a).
fn verity_data(block_size: u32) -> &'static [u8] {
    use std::sync::OnceLock;
    fn pattern(size: usize, bs: usize, zeros: &[usize]) -> Vec<u8> {
        use sha2::Digest;
        let mut out = Vec::with_capacity(size);
        for i in 0..size / bs {
            if zeros.contains(&i) {
                out.resize(out.len() + bs, 0);
            } else {
                let d = sha2::Sha256::digest(format!("block {i}").as_bytes());
                for _ in 0..bs / 32 {
                    out.extend_from_slice(&d);
                }
            }
        }
        out
    }
    static DATA: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (a, b) =
        DATA.get_or_init(|| (pattern(1 << 20, 4096, &[5, 200]), pattern(10240, 512, &[3])));
    if block_size == 512 {
        b
    } else {
        a
    }
}

/// Little-endian u32 length, then that many bytes (bounded by what is there).
fn take_sized<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len))
        .ok()?
        .min(rest.len());
    let (part, rest) = rest.split_at(len);
    *data = rest;
    Some(part)
}

/// dm-verity with forward error correction over damaged devices. The input: root digest
/// length and root digest; `fec_roots` (byte % 23 + 2), `fec_start` (blocks), extra
/// `fec_blocks` beyond what data and hash need; a sized hash image (superblock at 0); a
/// sized FEC image; then damage to the fixture data, as (u32 LE offset, xor byte) pairs.
/// Construction refuses or succeeds without panicking; every read that succeeds (of the
/// first and last blocks and those the damage hit, at most 8) returns the undamaged data
/// (what FEC repairs is verified against the tree again), whatever the hash and FEC images
/// hold; the status never panics. Returns, for a target that was built, the blocks read
/// successfully and the blocks FEC corrected.
pub fn verity_fec(data: &[u8]) -> Option<(u64, u64)> {
    use std::sync::Arc;

    use crate::targets::verity::format::{read_superblock, FormatParams};
    use crate::targets::verity::{FecArgs, Verity};
    use crate::targets::{DeviceRef, Target};
    use crate::volume::{MemVolume, SharedVolume, Volume};
    use crate::{Sector, SectorCount};

    let mut rest = data;
    let (&n, r) = rest.split_first()?;
    let n = usize::from(n).min(64).min(r.len());
    let (root, r) = r.split_at(n);
    let (&[roots, start, extra], r) = r.split_first_chunk::<3>()?;
    rest = r;
    let (hash, fec) = (take_sized(&mut rest)?, take_sized(&mut rest)?);
    let padded = |b: &[u8]| -> SharedVolume {
        let mut v = b.to_vec();
        v.resize(v.len().div_ceil(512).max(1) * 512, 0);
        Arc::new(MemVolume::from_bytes(v).expect("padded to sectors"))
    };
    let hash = padded(hash);
    let fec = padded(fec);
    let Ok(sb) = read_superblock(&*hash, 0) else {
        return None;
    };
    let p = FormatParams::from_superblock(&sb, 0);
    if p.check().is_err() {
        return None;
    }
    let good = verity_data(p.data_block_size);
    let Ok(geo) = p.geometry() else {
        return None;
    };
    let bs = u64::from(p.data_block_size);
    let len = p
        .data_blocks
        .checked_mul(bs / 512)
        .filter(|&s| s <= good.len() as u64 / 512)?;
    let mut damaged = good.to_vec();
    // The blocks read: the first, the last and those the damage hit, at most 8. A read that
    // FEC cannot repair costs two decodes of its whole codeword group (up to 253 blocks read
    // and hashed), as in the kernel, so reading every block of a hostile image would take
    // seconds per input.
    let blocks = len / (bs / 512);
    let mut reads = vec![0, blocks.saturating_sub(1)];
    for pair in rest.chunks_exact(5).take(64) {
        let off = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize % good.len();
        damaged[off] ^= pair[4].max(1);
        let b = off as u64 / bs;
        if b < blocks && !reads.contains(&b) && reads.len() < 8 {
            reads.push(b);
        }
    }
    let mut args = p.table_args("data", "hash", root);
    args.fec = Some(FecArgs {
        device: DeviceRef("fec".into()),
        blocks: p.data_blocks + (geo.hash_end - geo.hash_start) + u64::from(extra % 4),
        start: u64::from(start % 8),
        roots: roots % 23 + 2,
    });
    let data_vol: SharedVolume = Arc::new(MemVolume::from_bytes(damaged).expect("data"));
    let Ok(v) = Verity::over_with_fec(&args, SectorCount(len), data_vol, hash, Some(fec)) else {
        return None;
    };
    let v = v.with_cache_blocks(4);
    let mut buf = vec![0u8; usize::try_from(bs).expect("block size")];
    let mut good_reads = 0;
    for b in reads {
        if v.read(Sector(b * (bs / 512)), &mut buf).is_ok() {
            good_reads += 1;
            let at = usize::try_from(b * bs).expect("offset");
            assert!(
                buf == good[at..at + buf.len()],
                "verity with FEC returned other bytes than the data at block {b}"
            );
        }
    }
    let _ = v.status();
    Some((good_reads, v.fec_corrected()))
}

/// Reed-Solomon decoding (dm-verity FEC, RS(255, 255 - roots) over GF(2^8)): byte 0 picks
/// roots (2..=24). First, the next 255 bytes as a codeword and the rest as erasure
/// positions: decoding never panics, and what it returns as corrected is a codeword
/// (decoding it again changes nothing). Then the same bytes as a message, encoded, with
/// errors at positions taken from the input within the code's capacity (2 × errors +
/// erasures ≤ roots): decoding must give the message back.
pub fn fec_decode(data: &[u8]) {
    use crate::targets::verity::rs::Rs;

    let Some((&r, rest)) = data.split_first() else {
        return;
    };
    let roots = usize::from(r) % 23 + 2;
    let rs = Rs::new(roots);
    let rsn = rs.rsn();
    let mut cw = [0u8; 255];
    let n = rest.len().min(255);
    cw[..n].copy_from_slice(&rest[..n]);
    let tail = rest.get(255..).unwrap_or(&[]);
    let mut erasures: Vec<usize> = tail.iter().map(|&b| usize::from(b) % 255).collect();
    erasures.sort_unstable();
    erasures.dedup();
    erasures.truncate(roots + 1);
    let mut arbitrary = cw;
    if rs.decode(&mut arbitrary, &erasures).is_ok() {
        let mut again = arbitrary;
        assert_eq!(
            rs.decode(&mut again, &[]),
            Ok(0),
            "a decoded word is not a codeword"
        );
        assert_eq!(again, arbitrary);
    }
    // Within capacity: a message, its parity, damage the decoder must undo.
    let mut word = [0u8; 255];
    word[..rsn].copy_from_slice(&cw[..rsn]);
    let (msg, parity) = word.split_at_mut(rsn);
    rs.encode(msg, parity);
    let good = word;
    let mut eras = erasures.clone();
    eras.truncate(roots);
    let errors = (roots - eras.len()) / 2;
    let mut positions: Vec<usize> = cw[rsn..]
        .iter()
        .map(|&b| usize::from(b) % 255)
        .filter(|p| !eras.contains(p))
        .collect();
    positions.sort_unstable();
    positions.dedup();
    positions.truncate(errors);
    for (i, &p) in eras.iter().chain(&positions).enumerate() {
        word[p] ^= u8::try_from(i % 255 + 1).expect("byte");
    }
    assert!(
        rs.decode(&mut word, &eras).is_ok(),
        "{} errors and {} erasures with {roots} roots were not corrected",
        positions.len(),
        eras.len()
    );
    assert_eq!(
        word, good,
        "decoding within capacity did not restore the codeword"
    );
}

/// `dmemu shell` scripts: byte 0 picks the device's table (dust, flakey, linear + zero +
/// error, striped, delay), the rest are the script's lines (invalid UTF-8 replaced). The
/// device's clock is a manual clock that `sleep` advances, so no line waits. Never panics.
pub fn shell_lines(data: &[u8]) {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::clock::ManualClock;
    use crate::registry::Registry;
    use crate::table::{DeviceSpec, Table, TableMode};
    use crate::volume::MemVolume;
    use crate::SectorCount;

    const TABLES: [&str; 5] = [
        "0 64 dust disk 0 512",
        "0 64 flakey disk 0 1 1 1 drop_writes",
        "0 32 linear disk 0\n32 16 zero\n48 16 error",
        "0 64 striped 2 8 disk 0 disk2 0",
        "0 64 delay disk 0 0",
    ];
    let Some((&pick, script)) = data.split_first() else {
        return;
    };
    let clock = ManualClock::shared();
    let reg = Registry::new().with_clock(clock.clone());
    for name in ["disk", "disk2"] {
        reg.insert_volume(
            name,
            Arc::new(MemVolume::new(SectorCount(64)).expect("disk")),
        );
    }
    let dev = reg
        .create(&DeviceSpec {
            name: "fuzz".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse(TABLES[usize::from(pick) % TABLES.len()]).expect("table"),
        })
        .expect("device");
    let text = String::from_utf8_lossy(script);
    let mut out = Vec::new();
    crate::shell::run_with_sleep(&dev, text.as_bytes(), &mut out, |d: Duration| {
        clock.advance(d);
    })
    .expect("in-memory script");
}

/// One NBD client session from arbitrary bytes (everything the client sends: flags,
/// options, requests, payloads) against a read-write export `a` (512-byte blocks, the
/// default) and a read-only export `b` (4096-byte blocks). The server must answer or drop
/// the client, never panic or hang; and `b` must be unchanged afterwards.
pub fn nbd_session(data: &[u8]) {
    use std::sync::Arc;

    use crate::serve::nbd::{serve_client, Exports, Stopping};
    use crate::serve::{Export, ExportAccess};
    use crate::units::SectorCount;
    use crate::volume::{MemVolume, SharedVolume};

    let b_bytes: Vec<u8> = (0..16 * 512).map(|i| (i % 251) as u8).collect();
    let b_mem = Arc::new(MemVolume::from_bytes(b_bytes.clone()).expect("b"));
    let a: SharedVolume = Arc::new(MemVolume::new(SectorCount(64)).expect("a"));
    let b = Export::new("b", Arc::clone(&b_mem) as SharedVolume)
        .with_access(ExportAccess::ReadOnly)
        .with_block_size(4096)
        .expect("block size");
    let exports = Exports::new(vec![Arc::new(b), Arc::new(Export::new("a", a))]).expect("exports");
    let mut input = data;
    let _ = serve_client(
        &mut input,
        &mut std::io::sink(),
        &exports,
        &Stopping::default(),
    );
    assert!(b_mem.to_vec() == b_bytes, "a read-only export changed");
}

/// thin_dump XML as `thin restore` reads it: the parse either fails with an error naming a
/// line and column or gives a pool that restores onto 1 MiB of metadata (or is refused as
/// too big for it) and dumps back as the document's canonical form.
pub fn thin_xml(data: &[u8]) {
    use std::sync::Arc;

    use crate::targets::thin::metadata::block::MetaDev;
    use crate::targets::thin::metadata::Metadata;
    use crate::targets::thin::tools::{self, xml, Overrides};
    use crate::volume::MemVolume;
    use crate::SectorCount;

    let vol = Arc::new(MemVolume::new(SectorCount(2048)).expect("volume"));
    let dev = MetaDev::new(vol.clone());
    let bound = tools::max_mappings(&dev).expect("bound");
    let pool = match xml::parse(data, bound, &mut |_| {}) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("line ") && msg.contains(", column "), "{msg}");
            return;
        }
    };
    if tools::restore(&pool, &dev, Overrides::default()).is_err() {
        return; // more than the metadata holds, or mappings past the data device
    }
    let md = Metadata::open(vol).expect("restored metadata opens");
    let dumped = md.dump_xml().expect("restored metadata dumps");
    assert_eq!(
        dumped,
        pool.dump_xml(),
        "restore then dump is not the canonical form"
    );
    let again = xml::parse(dumped.as_bytes(), bound, &mut |_| {}).expect("a dump parses");
    assert_eq!(again.devices, pool.devices);
}

/// A dm-log-writes log from untrusted bytes: the first byte picks the replay options
/// (bit 0: discards off, bit 1: a sector range, bit 2: crash states at every entry, bit 3:
/// flush-epoch states), the rest, zero-padded to whole sectors, is the log. Opening it,
/// walking its entries and replaying them onto a 1 MiB device must return errors, never
/// panic, hang or allocate beyond the log's own size; an error names the entry it stopped
/// at, and every entry before it replays.
pub fn log_writes_log(data: &[u8]) {
    use crate::targets::log_writes::format::LogReader;
    use crate::targets::log_writes::replay::{
        crash_states, epoch_states, CheckAt, Replay, ReplayOptions,
    };
    use crate::units::{Sector, SectorCount};
    use crate::volume::{MemVolume, Volume};

    let Some((&pick, log)) = data.split_first() else {
        return;
    };
    let mut bytes = log.to_vec();
    bytes.resize(bytes.len().div_ceil(512).max(1) * 512, 0);
    let log = MemVolume::from_bytes(bytes).expect("log");
    let opts = ReplayOptions {
        discard: pick & 1 == 0,
        start_sector: if pick & 2 != 0 { 8 } else { 0 },
        end_sector: if pick & 2 != 0 { 1000 } else { u64::MAX },
    };
    let Ok(reader) = LogReader::open(&log) else {
        return;
    };
    let mut good = 0u64;
    for e in reader.entries() {
        match e {
            Ok(e) => {
                assert_eq!(e.index, good);
                assert!(e.end_offset(reader.super_block().sectorsize) <= log.size().bytes());
                good += 1;
            }
            Err(err) => {
                let text = err.to_string();
                assert!(text.contains(&format!("entry {good}")), "{text}");
            }
        }
    }
    let dev = MemVolume::new(SectorCount(2048)).expect("dev");
    let Ok(mut replay) = Replay::new(&log, &dev, opts) else {
        return;
    };
    let mut applied = 0u64;
    while let Some(step) = replay.apply_next() {
        if step.is_err() {
            break;
        }
        applied += 1;
    }
    assert!(applied <= good);
    let mut buf = vec![0u8; 4096];
    if pick & 4 != 0 {
        let fresh = MemVolume::new(SectorCount(2048)).expect("dev");
        let _ = crash_states(&log, &fresh, opts, &CheckAt::Every, |_, view| {
            view.read(Sector(0), &mut buf)?;
            Ok(true)
        });
    }
    if pick & 8 != 0 {
        let fresh = MemVolume::new(SectorCount(2048)).expect("dev");
        let _ = epoch_states(&log, &fresh, opts, 2, 8, |_, view| {
            view.read(Sector(0), &mut buf)?;
            Ok(true)
        });
    }
}

/// dm-cache metadata from untrusted bytes: the first byte's bit 0 asks for every block's
/// checksum to be fixed first (block 0 as the cache superblock, blocks whose offset-16
/// `blocknr` names them as array blocks, the rest as btree nodes), so the fuzzer reaches
/// the checks behind the checksums; the rest, zero-padded to whole 4 KiB blocks and cut at
/// 64 blocks, is the metadata device. It is opened, dumped, and a cache built over it is
/// read, written and asked for its status: errors, never a panic, hang or unbounded
/// allocation.
pub fn cache_metadata(data: &[u8]) {
    use std::sync::Arc;

    use crate::targets::cache::metadata::{Metadata, SUPERBLOCK_CSUM_XOR};
    use crate::targets::pdata::array::ARRAY_CSUM_XOR;
    use crate::targets::pdata::block::BTREE_CSUM_XOR;
    use crate::targets::pdata::block::{checksum, le64, put32, seal, MetaDev, BLOCK_SIZE};
    use crate::targets::{Cache, CacheArgs, Target};
    use crate::volume::{MemVolume, Volume};
    use crate::{Sector, SectorCount};

    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut img = rest[..rest.len().min(64 * BLOCK_SIZE)].to_vec();
    img.resize(img.len().div_ceil(BLOCK_SIZE).max(1) * BLOCK_SIZE, 0);
    if flags & 1 != 0 {
        for (b, blk) in img.chunks_mut(BLOCK_SIZE).enumerate() {
            let b = u64::try_from(b).unwrap_or(0);
            if b == 0 {
                seal(blk, SUPERBLOCK_CSUM_XOR);
            } else if le64(blk, 16) == b {
                let c = checksum(&blk[4..], ARRAY_CSUM_XOR);
                put32(blk, 0, c);
            } else {
                seal(blk, BTREE_CSUM_XOR);
            }
        }
    }
    let meta = Arc::new(MemVolume::from_bytes(img).expect("metadata volume"));
    let Ok(md) = Metadata::open(&MetaDev::new(meta.clone())) else {
        return;
    };
    let _ = md.dump_xml();
    let _ = md.nr_dirty();
    let block = u64::from(md.sb.data_block_size);
    let cache_sectors = u64::from(md.sb.cache_blocks).saturating_mul(block);
    if block == 0 || cache_sectors > 16384 {
        return;
    }
    let tokens: Vec<String> = ["m", "c", "o", &block.to_string(), "0", "smq", "0"]
        .map(str::to_string)
        .to_vec();
    let Ok(args) = CacheArgs::parse(&mut crate::table::args::Args::new(&tokens)) else {
        return;
    };
    let origin_len = SectorCount(16384);
    let cache = Arc::new(MemVolume::new(SectorCount(cache_sectors)).expect("cache volume"));
    let origin = Arc::new(MemVolume::new(origin_len).expect("origin volume"));
    let Ok(c) = Cache::over(&args, origin_len, meta, cache, origin) else {
        return;
    };
    let _ = c.status();
    let mut buf = vec![0; 8192];
    for s in [0, 120, 8000, 16368] {
        let _ = c.read(Sector(s), &mut buf);
        let _ = c.write(Sector(s), &buf);
    }
}

/// A dm-integrity device from untrusted bytes: the first byte picks the table (bits 0-1:
/// mode D, J, B, R; bits 2-3: internal hash crc32c, sha256, crc32, hmac(sha256)), the rest
/// (at most 2 MiB, zero-padded to a 2 MiB device) is the device from its superblock on.
/// integritysetup's dump of it, the kernel's refusal check, the superblock, geometry and
/// journal replay of a target built over it, and reads and a write must give errors or
/// answers, never a panic, hang or unbounded allocation.
pub fn integrity_superblock(data: &[u8]) {
    use std::sync::Arc;

    use crate::table::args::Args;
    use crate::targets::integrity::dump::{dump_text, kernel_refusal, read_superblock};
    use crate::targets::integrity::layout::Layout;
    use crate::targets::integrity::superblock::Superblock;
    use crate::targets::{Integrity, IntegrityArgs};
    use crate::volume::{MemVolume, Volume};
    use crate::{Sector, SectorCount};

    const DEVICE: usize = 2 << 20;
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let img = &rest[..rest.len().min(DEVICE)];
    if let Ok(sb) = read_superblock(img) {
        let _ = dump_text("fuzz.img", &sb);
        let _ = kernel_refusal(&sb, DEVICE as u64);
    }
    let mut dev = img.to_vec();
    dev.resize(DEVICE, 0);
    let mut raw = [0u8; Superblock::SIZE];
    raw.copy_from_slice(&dev[..Superblock::SIZE]);
    let Ok(Some(sb)) = Superblock::decode(&raw) else {
        return;
    };
    let Ok(layout) = Layout::new(&sb, 0, (DEVICE / 512) as u64, 128) else {
        return;
    };
    let mode = ["D", "J", "B", "R"][usize::from(flags & 3)];
    let hash = [
        "internal_hash:crc32c".to_string(),
        "internal_hash:sha256".to_string(),
        "internal_hash:crc32".to_string(),
        format!("internal_hash:hmac(sha256):{}", "5a".repeat(32)),
    ][usize::from((flags >> 2) & 3)]
    .clone();
    let block = 512u32 << sb.log2_sectors_per_block.min(3);
    let tokens: Vec<String> = [
        "/dev/fuzz".to_string(),
        "0".into(),
        sb.integrity_tag_size.to_string(),
        mode.into(),
        "2".into(),
        format!("block_size:{block}"),
        hash,
    ]
    .into();
    let Ok(args) = IntegrityArgs::parse(&mut Args::new(&tokens)) else {
        return;
    };
    let vol = Arc::new(MemVolume::from_bytes(dev).expect("device volume"));
    let len = SectorCount(layout.provided_data_sectors.min(1024));
    let Ok(t) = Integrity::over(vol, &args, len) else {
        return;
    };
    let bb = layout.block_bytes();
    let mut buf = vec![0u8; bb * 4];
    let mut at = 0u64;
    while at + (buf.len() as u64 / 512) <= len.0 {
        let _ = t.read(Sector(at), &mut buf);
        at += 128;
    }
    let _ = t.write(Sector(0), &buf[..bb]);
    let _ = t.read(Sector(0), &mut buf[..bb]);
    let _ = t.flush();
}

/// An SSD-mode dm-writecache cache device from untrusted bytes: the first byte picks the
/// block size (512 << (byte % 4)), the rest, zero-padded to 1 MiB, is the cache device from
/// its superblock on. A writecache built over it and an 8 MiB origin is asked for its status
/// read across blocks, written, flushed, discarded and written back: errors, never a panic,
/// hang or unbounded allocation.
pub fn writecache_ssd(data: &[u8]) {
    use std::sync::Arc;

    use crate::table::args::Args;
    use crate::targets::{Target, Writecache, WritecacheArgs};
    use crate::volume::{MemVolume, Volume};
    use crate::{Sector, SectorCount};

    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let bs = 512u32 << (sel % 4);
    let mut img = rest[..rest.len().min(1 << 20)].to_vec();
    img.resize(1 << 20, 0);
    let tokens: Vec<String> = ["s", "o", "c", &bs.to_string(), "0"]
        .map(str::to_string)
        .to_vec();
    let Ok(args) = WritecacheArgs::parse(&mut Args::new(&tokens)) else {
        return;
    };
    let cache = Arc::new(MemVolume::from_bytes(img).expect("cache volume"));
    let origin = Arc::new(MemVolume::new(SectorCount(16384)).expect("origin volume"));
    let Ok(w) = Writecache::over(&args, SectorCount(16384), origin, cache) else {
        return;
    };
    let _ = w.status();
    let mut buf = vec![0; 12288];
    for s in [0, 7, 4000, 16360] {
        let n = if s == 16360 { 4096 } else { 12288 };
        let _ = w.read(Sector(s), &mut buf[..n]);
    }
    // Writes over what was loaded: new entries, rewrites, a commit, a discard, writeback.
    let block = usize::try_from(bs).unwrap_or(512);
    for (i, s) in [0u64, 8, 4000, 16360, 0].into_iter().enumerate() {
        let _ = w.write(Sector(s), &vec![i as u8; block]);
    }
    let _ = w.flush();
    let _ = w.write_fua(Sector(64), &vec![9; block * 2]);
    let _ = w.discard(Sector(0), SectorCount(16));
    let _ = w.message(&["flush"]);
    let _ = w.message(&["cleaner"]);
    let _ = w.read(Sector(0), &mut buf);
    let _ = w.status();
}
