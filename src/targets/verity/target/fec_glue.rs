//! FEC in the read path: the kernel's `verity_fec_ctr` checks, and recovery of a data or
//! hash block that failed its hash (`verity_fec_decode`), re-hashed before use.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Verity;
use crate::error::{Error, Result};
use crate::targets::verity::fec::{FecGeometry, FecReader, Row};
use crate::targets::verity::hash::MAX_DIGEST;
use crate::targets::verity::{Geometry, VerityArgs};
use crate::units::Sector;
use crate::volume::{SharedVolume, Volume};

/// Build the FEC reader a table asks for, with `verity_fec_ctr`'s checks in its order.
pub(super) fn fec_reader(
    args: &VerityArgs,
    geo: &Geometry,
    hash: &dyn Volume,
    dev: Option<SharedVolume>,
) -> Result<Option<FecReader>> {
    let Some(f) = &args.fec else {
        return Ok(None);
    };
    let dev = dev.ok_or_else(|| Error::invalid("verity", "FEC device lookup failed"))?;
    if args.data_block_size != args.hash_block_size {
        return Err(Error::invalid(
            "verity",
            "Block sizes must match to use FEC",
        ));
    }
    let g = FecGeometry::new(
        u32::from(f.roots),
        args.data_block_size,
        f.blocks,
        f.start,
        args.data_blocks,
        geo.hash_start,
        geo.hash_end,
    )?;
    // The kernel compares the whole hash device (in blocks) with fec_blocks - data_blocks.
    if hash.size().bytes() / u64::from(args.hash_block_size) < g.hash_blocks() {
        return Err(Error::invalid(
            "verity",
            "Hash device is too small for fec_blocks",
        ));
    }
    Ok(Some(FecReader::new(g, dev)?))
}

impl Verity {
    /// The digest data block `b` must have, if the tree verifies without help; no side
    /// effects (used to classify the blocks of a codeword group).
    fn peek_digest(&self, b: u64, out: &mut [u8]) -> bool {
        let ds = out.len();
        out.copy_from_slice(&self.args.root_digest);
        let mut buf = vec![0u8; self.hbs];
        let mut real = [0u8; MAX_DIGEST];
        for level in (0..self.geo.levels()).rev() {
            let (hb, off) = self.geo.hash_at(b, level);
            if let Some(blk) = self.cache.get(hb) {
                out.copy_from_slice(&blk[off..off + ds]);
                continue;
            }
            let spb = u64::try_from(self.hbs / 512).unwrap_or(1);
            if self.hash.read(Sector(hb * spb), &mut buf).is_err() {
                return false;
            }
            self.hasher.hash(&buf, &mut real[..ds]);
            if real[..ds] != *out {
                return false;
            }
            out.copy_from_slice(&buf[off..off + ds]);
        }
        true
    }

    fn fec_correct(&self, target: u64, want: &[u8], out: &mut [u8]) -> bool {
        let Some(fec) = &self.fec else {
            return false;
        };
        let ds = want.len();
        let classify = |k: u64, bytes: &[u8]| {
            let mut d = [0u8; MAX_DIGEST];
            if !self.peek_digest(k, &mut d[..ds]) {
                return Row::Plain;
            }
            if self.zero_digest.as_deref() == Some(&d[..ds]) {
                return Row::Zero;
            }
            let mut real = [0u8; MAX_DIGEST];
            self.hasher.hash(bytes, &mut real[..ds]);
            if real[..ds] == d[..ds] {
                Row::Plain
            } else {
                Row::Erasure
            }
        };
        let check = |block: &[u8]| {
            let mut real = [0u8; MAX_DIGEST];
            self.hasher.hash(block, &mut real[..ds]);
            real[..ds] == *want
        };
        let ok = fec
            .correct(target, &*self.data, &*self.hash, &classify, &check, out)
            .unwrap_or(false);
        if ok {
            self.fec_corrected.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Recover data block `b` into `out` (which holds the bad data on failure).
    pub(super) fn fec_data_block(&self, b: u64, want: &[u8], out: &mut [u8]) -> bool {
        let mut fixed = vec![0u8; out.len()];
        if self.fec_correct(b, want, &mut fixed) {
            out.copy_from_slice(&fixed);
            return true;
        }
        false
    }

    /// Recover hash block `hb`.
    pub(super) fn fec_hash_block(&self, hb: u64, want: &[u8]) -> Option<Arc<[u8]>> {
        let fec = self.fec.as_ref()?;
        let target = fec.geometry().data_blocks + (hb - self.geo.hash_start);
        let mut fixed = vec![0u8; self.hbs];
        self.fec_correct(target, want, &mut fixed)
            .then(|| Arc::from(fixed))
    }
}
