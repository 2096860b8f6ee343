//! The verity target's reads: every data block is checked up the tree to the root digest
//! (kernel `verity_verify_io`, `verity_hash_for_block`, `verity_verify_level`).
//!
//! Hash blocks that verified are kept in a bounded cache (the kernel keeps them in dm-bufio
//! with a `hash_verified` flag); `check_at_most_once` keeps a bitmap of data blocks that
//! verified, which are then read without hashing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::fec::FecReader;
use super::hash::{BlockHasher, MAX_DIGEST};
use super::hash_tree::Geometry;
use super::{CorruptionMode, ErrorMode, VerityArgs};
use crate::error::{Error, HaltAction, Result};
use crate::targets::context::{device_area, BuildContext};
use crate::targets::{DeviceAt, Target};
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::{check_io, SharedVolume, Volume};

/// Default bound of the verified-hash-block cache, in bytes.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// Which kind of block failed (kernel `enum verity_block_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockType {
    Data,
    Metadata,
}

/// A constructed verity target.
#[derive(Debug)]
pub struct Verity {
    args: VerityArgs,
    geo: Geometry,
    data: SharedVolume,
    hash: SharedVolume,
    hasher: BlockHasher,
    size: SectorCount,
    dbs: usize,
    hbs: usize,
    zero_digest: Option<Vec<u8>>,
    verified: Option<AtomicBitmap>,
    cache: HashCache,
    hash_failed: AtomicBool,
    corrupted: AtomicU64,
    fec: Option<FecReader>,
    fec_corrected: AtomicU64,
    threads: usize,
}

mod cache;
mod fec_glue;
mod parallel;

use cache::{AtomicBitmap, HashCache};

impl Verity {
    /// The kernel's ctr: resolve both devices and check that they are large enough.
    pub fn new(args: &VerityArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Verity> {
        let data = device_area(
            ctx,
            &DeviceAt {
                device: args.data_dev.clone(),
                offset: SectorCount(0),
            },
            len,
        )?;
        let hash = ctx.volume(&args.hash_dev)?;
        let fec = match &args.fec {
            Some(f) => Some(ctx.volume(&f.device)?),
            None => None,
        };
        Verity::over_with_fec(args, len, data, hash, fec)
    }

    /// A verity target over already-open volumes (library use; no FEC device).
    pub fn over(
        args: &VerityArgs,
        len: SectorCount,
        data: SharedVolume,
        hash: SharedVolume,
    ) -> Result<Verity> {
        Verity::over_with_fec(args, len, data, hash, None)
    }

    /// A verity target over already-open volumes, with the FEC device when the table names
    /// one.
    pub fn over_with_fec(
        args: &VerityArgs,
        len: SectorCount,
        data: SharedVolume,
        hash: SharedVolume,
        fec_dev: Option<SharedVolume>,
    ) -> Result<Verity> {
        let geo = args.geometry()?;
        // VerityArgs is public: a library caller (or a fuzzer) can build one whose root
        // digest does not fit the algorithm; refuse it here as the table parser does.
        let ds = args.algorithm.digest_size();
        if args.root_digest.len() != ds {
            return Err(Error::invalid(
                "verity",
                format!(
                    "Invalid root digest: {} bytes, {} needs {ds}",
                    args.root_digest.len(),
                    args.algorithm.name()
                ),
            ));
        }
        let hbs = u64::from(args.hash_block_size);
        if data.size().bytes() < len.bytes() {
            return Err(Error::invalid("verity", "Data device is too small"));
        }
        if hash.size().bytes() / hbs < geo.hash_end {
            return Err(Error::invalid(
                "verity",
                format!(
                    "Hash device is too small: {} holds {} blocks of {hbs} bytes, the tree ends at block {}",
                    args.hash_dev,
                    hash.size().bytes() / hbs,
                    geo.hash_end
                ),
            ));
        }
        let fec = fec_glue::fec_reader(args, &geo, &*hash, fec_dev)?;
        if args.root_hash_sig_key_desc.is_some() {
            return Err(Error::Unsupported {
                target: "verity",
                op: "root_hash_sig_key_desc (kernel keyring)",
            });
        }
        let hasher = BlockHasher::new(args.algorithm, args.version, &args.salt);
        let dbs = usize::try_from(args.data_block_size).map_err(|_| Error::invalid("dbs", ""))?;
        let hbs_usize = usize::try_from(hbs).map_err(|_| Error::invalid("hbs", ""))?;
        let zero_digest = args.ignore_zero_blocks.then(|| {
            let mut d = vec![0u8; args.algorithm.digest_size()];
            hasher.hash(&vec![0u8; dbs], &mut d);
            d
        });
        let verified = if args.check_at_most_once {
            Some(AtomicBitmap::new(args.data_blocks)?)
        } else {
            None
        };
        Ok(Verity {
            args: args.clone(),
            geo,
            data,
            hash,
            hasher,
            size: len,
            dbs,
            hbs: hbs_usize,
            zero_digest,
            verified,
            cache: HashCache::new(DEFAULT_CACHE_BYTES / hbs_usize),
            hash_failed: AtomicBool::new(false),
            corrupted: AtomicU64::new(0),
            fec,
            fec_corrected: AtomicU64::new(0),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// Bound the verified-hash-block cache to `blocks` hash blocks.
    #[must_use]
    pub fn with_cache_blocks(mut self, blocks: usize) -> Verity {
        self.cache = HashCache::new(blocks);
        self
    }

    /// Whether any corruption has been seen (status `C`).
    #[must_use]
    pub fn is_corrupted(&self) -> bool {
        self.hash_failed.load(Ordering::Relaxed)
    }

    /// How many corrupted blocks were met (each failed check counts once).
    #[must_use]
    pub fn corruption_count(&self) -> u64 {
        self.corrupted.load(Ordering::Relaxed)
    }

    /// Blocks recovered with FEC so far.
    #[must_use]
    pub fn fec_corrected(&self) -> u64 {
        self.fec_corrected.load(Ordering::Relaxed)
    }

    /// The tree layout.
    #[must_use]
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// A lower device failed: pass the error up, or halt under `*_on_error`.
    fn io_error(&self, e: Error) -> Error {
        let action = match self.args.error_mode {
            ErrorMode::Eio => return e,
            ErrorMode::Restart => HaltAction::Restart,
            ErrorMode::Panic => HaltAction::Panic,
        };
        Error::Halt {
            target: "verity",
            action,
            reason: format!("dm-verity device has I/O error: {e}"),
        }
    }

    /// Kernel `verity_handle_err`: mark the device corrupted, then go on (ignore mode) or fail.
    fn handle_err(&self, kind: BlockType, block: u64) -> Result<()> {
        self.hash_failed.store(true, Ordering::Relaxed);
        self.corrupted.fetch_add(1, Ordering::Relaxed);
        let what = match kind {
            BlockType::Data => "data",
            BlockType::Metadata => "metadata",
        };
        let reason = format!("{}: {what} block {block} is corrupted", self.args.data_dev);
        let action = match self.args.corruption {
            CorruptionMode::Ignore => return Ok(()),
            CorruptionMode::Eio => {
                return Err(Error::TargetFailed {
                    target: "verity",
                    reason,
                })
            }
            CorruptionMode::Restart => HaltAction::Restart,
            CorruptionMode::Panic => HaltAction::Panic,
        };
        Err(Error::Halt {
            target: "verity",
            action,
            reason,
        })
    }

    /// Read hash block `hb`, verified against `want`, from the cache or the hash device.
    fn hash_block(&self, hb: u64, want: &[u8]) -> Result<Arc<[u8]>> {
        if let Some(b) = self.cache.get(hb) {
            return Ok(b);
        }
        let mut buf = vec![0u8; self.hbs];
        let sector = hb
            .checked_mul(u64::try_from(self.hbs / SECTOR_SIZE).unwrap_or(1))
            .ok_or_else(|| Error::invalid("verity", "hash block beyond addressable range"))?;
        self.hash
            .read(Sector(sector), &mut buf)
            .map_err(|e| self.io_error(e))?;
        let mut real = [0u8; MAX_DIGEST];
        let ds = want.len();
        self.hasher.hash(&buf, &mut real[..ds]);
        let block: Arc<[u8]> = Arc::from(buf);
        if real[..ds] == *want {
            self.cache.insert(hb, Arc::clone(&block));
        } else if let Some(fixed) = self.fec_hash_block(hb, want) {
            self.cache.insert(hb, Arc::clone(&fixed));
            return Ok(fixed);
        } else {
            // Ignore mode goes on with the unverified block, as the kernel does.
            self.handle_err(BlockType::Metadata, hb)?;
        }
        Ok(block)
    }

    /// Kernel `verity_hash_for_block`: the digest data block `b` must have.
    fn want_digest(&self, b: u64, out: &mut [u8]) -> Result<()> {
        let ds = out.len();
        let levels = self.geo.levels();
        out.copy_from_slice(&self.args.root_digest);
        if levels == 0 {
            return Ok(());
        }
        let (hb, off) = self.geo.hash_at(b, 0);
        if let Some(blk) = self.cache.get(hb) {
            out.copy_from_slice(&blk[off..off + ds]);
            return Ok(());
        }
        for level in (0..levels).rev() {
            let (hb, off) = self.geo.hash_at(b, level);
            let blk = self.hash_block(hb, out)?;
            out.copy_from_slice(&blk[off..off + ds]);
        }
        Ok(())
    }

    /// Read and verify data block `b` into `out` (one data block long).
    fn read_block(&self, b: u64, out: &mut [u8]) -> Result<()> {
        let sector = Sector(b * u64::try_from(self.dbs / SECTOR_SIZE).unwrap_or(1));
        if self.verified.as_ref().is_some_and(|v| v.test(b)) {
            return self.data.read(sector, out).map_err(|e| self.io_error(e));
        }
        let ds = self.args.algorithm.digest_size();
        let mut want = [0u8; MAX_DIGEST];
        self.want_digest(b, &mut want[..ds])?;
        if self.zero_digest.as_deref() == Some(&want[..ds]) {
            out.fill(0);
            return Ok(());
        }
        if let Err(e) = self.data.read(sector, out) {
            // With FEC the kernel verifies even a failed read (verity_end_io) and lets FEC
            // rebuild the block, its unreadable copy counting as an erasure.
            if self.fec_data_block(b, &want[..ds], out) {
                return Ok(());
            }
            return Err(self.io_error(e));
        }
        let mut real = [0u8; MAX_DIGEST];
        self.hasher.hash(out, &mut real[..ds]);
        if real[..ds] == want[..ds] {
            if let Some(v) = &self.verified {
                v.set(b);
            }
            return Ok(());
        }
        if self.fec_data_block(b, &want[..ds], out) {
            return Ok(());
        }
        self.handle_err(BlockType::Data, b)
    }
}

impl Volume for Verity {
    fn size(&self) -> SectorCount {
        self.size
    }

    /// Reads need not be block-aligned (the kernel's queue limits make every bio aligned;
    /// here a partial block is verified whole and the asked-for part copied).
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let dbs = self.dbs as u64;
        let start = sector.byte_offset();
        let end = start + buf.len() as u64;
        // Large aligned reads are verified on all cores (each block is independent).
        if start % dbs == 0 && buf.len() >= parallel::PARALLEL_BYTES && self.threads > 1 {
            return self.read_blocks_parallel(start / dbs, buf);
        }
        let mut tmp = Vec::new();
        let mut at = start;
        while at < end {
            let b = at / dbs;
            let block_start = b * dbs;
            let piece_end = (block_start + dbs).min(end);
            let lo = usize::try_from(at - start).unwrap_or(0);
            let hi = usize::try_from(piece_end - start).unwrap_or(0);
            if at == block_start && piece_end - at == dbs {
                self.read_block(b, &mut buf[lo..hi])?;
            } else {
                tmp.resize(self.dbs, 0);
                self.read_block(b, &mut tmp)?;
                let from = usize::try_from(at - block_start).unwrap_or(0);
                buf[lo..hi].copy_from_slice(&tmp[from..from + (hi - lo)]);
            }
            at = piece_end;
        }
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        Err(Error::ReadOnly {
            target: "verity".into(),
        })
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, _sector: Sector, _count: SectorCount) -> Result<()> {
        Err(Error::Unsupported {
            target: "verity",
            op: "discard",
        })
    }
}

impl Target for Verity {
    /// verity_ctr sets no `num_flush_bios`: a table's flush never reaches the data or
    /// hash device.
    fn takes_flushes(&self) -> bool {
        false
    }

    /// STATUSTYPE_INFO in 6.12: `V`, or `C` once a corruption has been seen.
    fn status(&self) -> String {
        if self.is_corrupted() { "C" } else { "V" }.to_string()
    }
}
