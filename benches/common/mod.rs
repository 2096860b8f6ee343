//! Helpers shared by the criterion benches (included with `mod common;`; cargo does not
//! take `benches/common/mod.rs` for a bench target of its own).

/// A 4096-aligned buffer (DESIGN.md: copies into misaligned buffers run several times
/// slower and far noisier on this CPU, which would drown the targets' own cost).
pub(crate) struct Aligned {
    raw: Vec<u8>,
    off: usize,
}

impl Aligned {
    /// A zeroed buffer with room for `len` bytes from a 4096-aligned start.
    pub(crate) fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + 4096];
        let off = raw.as_ptr().align_offset(4096);
        Aligned { raw, off }
    }

    /// The first `len` bytes from the aligned start (`len` at most what `new` was given).
    pub(crate) fn buf(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.off..self.off + len]
    }
}

/// The criterion group `group`: each volume read in random whole 4 KiB blocks of its first
/// `len` sectors, one xorshift sequence per volume (so every volume reads the same blocks).
#[allow(dead_code)] // each bench includes this module; not every one has this group
pub(crate) fn random_4k_reads(
    c: &mut criterion::Criterion,
    group: &str,
    vols: &[(&str, &dyn dmemu::Volume)],
    len: dmemu::SectorCount,
) {
    let mut buf = Aligned::new(4096);
    let mut g = c.benchmark_group(group);
    g.throughput(criterion::Throughput::Bytes(4096));
    for (name, v) in vols {
        g.bench_function(*name, |b| {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.read(dmemu::Sector(x % (len.0 / 8) * 8), buf.buf(4096))
                    .unwrap();
                std::hint::black_box(&buf);
            })
        });
    }
    g.finish();
}
