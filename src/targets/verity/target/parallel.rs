//! Large aligned reads: the blocks of one request are independent, so they are verified on
//! all cores (DESIGN.md: large verity requests may fan out internally).

use super::Verity;
use crate::error::{Error, Result};

/// Reads at least this long (and block-aligned) are split across threads.
pub(super) const PARALLEL_BYTES: usize = 256 << 10;

impl Verity {
    /// Verify whole blocks from `first` into `buf` on `self.threads` threads; the error of
    /// the lowest failing block wins.
    pub(super) fn read_blocks_parallel(&self, first: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = buf.len() / self.dbs;
        let per = blocks.div_ceil(self.threads) * self.dbs;
        let (whole, tail) = buf.split_at_mut(blocks * self.dbs);
        std::thread::scope(|scope| {
            let jobs: Vec<_> = whole
                .chunks_mut(per)
                .enumerate()
                .map(|(t, part)| {
                    let b0 = first + (t * per / self.dbs) as u64;
                    scope.spawn(move || {
                        part.chunks_exact_mut(self.dbs)
                            .zip(b0..)
                            .try_for_each(|(blk, b)| self.read_block(b, blk))
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Err(Error::invalid("verity", "verification thread panicked"))
                    })
                })
                .collect::<Result<Vec<()>>>()
        })?;
        if !tail.is_empty() {
            let b = first + blocks as u64;
            let mut tmp = vec![0u8; self.dbs];
            self.read_block(b, &mut tmp)?;
            let n = tail.len();
            tail.copy_from_slice(&tmp[..n]);
        }
        Ok(())
    }
}
