//! snapshot-merge's merge (kernel dm-snap.c `snapshot_merge_next_chunks`, `merge_callback`;
//! dm-snap-persistent.c `persistent_prepare_merge` / `persistent_commit_merge`).

use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount};

use super::target::{lock, Snapshot, Store};
use super::SnapshotKind;

/// One step of a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeStep {
    /// `chunks` consecutive chunks from origin chunk `old_chunk` on were copied back.
    Merged {
        /// First origin chunk of the batch.
        old_chunk: u64,
        /// Number of chunks.
        chunks: u64,
    },
    /// Nothing is left to merge.
    Done,
}

impl Snapshot {
    /// Copy the last batch of consecutive exceptions back to the origin and clear them from
    /// the store (`snapshot_merge_next_chunks` + `merge_callback`). A crash between batches
    /// leaves a store that merges on from where it stopped.
    pub fn merge_step(&self) -> Result<MergeStep> {
        if self.kind != SnapshotKind::Merge {
            return Err(Error::Unsupported {
                target: "snapshot",
                op: "merge (load the COW as snapshot-merge)",
            });
        }
        if self.merge_failed.load(Ordering::Acquire) {
            return Err(self.merge_error("merge failed earlier"));
        }
        if !self.valid() {
            return Err(self.merge_error("Snapshot is invalid: can't merge"));
        }
        let mut guard = lock(&self.store);
        let Store::Persistent(ps) = &mut *guard else {
            return Err(self.merge_error("transient store"));
        };
        let Some((last_old, last_new, n)) = ps
            .prepare_merge(self.cow.as_ref())
            .map_err(|e| self.fail_merge(e))?
        else {
            return Ok(MergeStep::Done);
        };
        // prepare_merge counted only entries at or above 0, so these do not wrap.
        let old = last_old - (n - 1);
        let new = last_new - (n - 1);
        let dest = old
            .checked_mul(self.chunk)
            .filter(|&d| d < self.origin.size().0);
        let src = new
            .checked_add(n)
            .and_then(|end| end.checked_mul(self.chunk))
            .filter(|&end| end <= self.cow.size().0);
        let (Some(dest), Some(_)) = (dest, src) else {
            self.merge_failed.store(true, Ordering::Release);
            return Err(
                self.merge_error("exception for a chunk beyond the origin or the COW device")
            );
        };
        let io = (n * self.chunk).min(self.origin.size().0 - dest);
        // origin_write_extent: the origin's other snapshots keep their view. The kernel
        // steps through the extent by the origin's minimum chunk size (max_io_len, set by
        // snapshot_merge_resume), so every chunk of every snapshot in it is copied out.
        self.links
            .before_origin_write(Sector(dest), SectorCount(n * self.chunk));
        let mut buf = vec![0; usize::try_from(self.chunk * 512).unwrap_or(usize::MAX)];
        let mut done = 0;
        while done < io {
            let len = (io - done).min(self.chunk);
            let b = &mut buf[..usize::try_from(len * 512).unwrap_or(usize::MAX)];
            let copied = self
                .cow
                .read(Sector((new << self.shift) + done), b)
                .and_then(|()| self.origin.write(Sector(dest + done), b));
            copied.map_err(|e| self.fail_merge(e))?;
            done += len;
        }
        self.origin.flush().map_err(|e| self.fail_merge(e))?;
        ps.commit_merge(self.cow.as_ref(), n)
            .map_err(|e| self.fail_merge(e))?;
        let mut table = self
            .exceptions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for c in old..old + n {
            if table.remove(&c).is_none() {
                self.merge_failed.store(true, Ordering::Release);
                return Err(
                    self.merge_error("Corruption detected: exception is on disk but not in memory")
                );
            }
        }
        Ok(MergeStep::Merged {
            old_chunk: old,
            chunks: n,
        })
    }

    /// Run the merge to completion; returns the number of batches copied.
    pub fn merge(&self) -> Result<u64> {
        let mut batches = 0;
        while let MergeStep::Merged { .. } = self.merge_step()? {
            batches += 1;
        }
        Ok(batches)
    }

    fn fail_merge(&self, e: Error) -> Error {
        self.merge_failed.store(true, Ordering::Release);
        e
    }

    fn merge_error(&self, why: &str) -> Error {
        Error::TargetFailed {
            target: "snapshot-merge",
            reason: why.to_string(),
        }
    }
}
