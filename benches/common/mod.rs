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
