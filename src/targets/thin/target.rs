//! The constructed `thin-pool` and `thin` targets (dm-thin.c `pool_ctr`/`thin_ctr`, the
//! map functions and `pool_status`/`thin_status`).
//!
//! The pool owns the metadata; a thin device loads its mapping tree from the pool into an
//! in-memory index when it is built (the kernel walks the btree through dm-bufio per bio;
//! dmemu's index makes a mapped 4 KiB read one hash lookup). I/O to the pool device
//! itself goes to the data device, as `pool_map` remaps every bio there.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, chunks, SharedVolume, Volume};

use super::metadata::block::BLOCK_SECTORS;
use super::metadata::{BlockTime, DeviceDetails, Metadata};
use super::{ThinArgs, ThinPoolArgs};
use crate::targets::{DeviceAt, Target};

/// `THIN_METADATA_MAX_SECTORS` (= `DM_SM_METADATA_MAX_SECTORS`): metadata beyond this is
/// not used.
const METADATA_MAX_SECTORS: u64 = 255 * ((1 << 14) - 64) * BLOCK_SECTORS;

/// A constructed `thin-pool`.
#[derive(Debug)]
pub struct ThinPool {
    args: ThinPoolArgs,
    len: SectorCount,
    data: SharedVolume,
    meta: SharedVolume,
    md: RwLock<Metadata>,
}

impl ThinPool {
    /// `pool_ctr` + `pool_preresume` for metadata that already exists: open the metadata,
    /// refuse a block size other than the superblock's and a pool smaller than its data
    /// space map.
    pub fn new(args: &ThinPoolArgs, len: SectorCount, registry: &Registry) -> Result<ThinPool> {
        let meta = registry.volume(&args.metadata)?;
        let data = registry.device_area(
            &DeviceAt {
                device: args.data.clone(),
                offset: SectorCount(0),
            },
            len,
        )?;
        ThinPool::over(args, len, meta, data)
    }

    /// A pool over already-open volumes (library use, tests, benches).
    pub fn over(
        args: &ThinPoolArgs,
        len: SectorCount,
        meta: SharedVolume,
        data: SharedVolume,
    ) -> Result<ThinPool> {
        check_range(data.size(), Sector(0), len)?;
        let md = Metadata::open(Arc::clone(&meta))
            .map_err(|e| pool_error(format!("Error creating metadata object: {e}")))?;
        let sb = md.superblock();
        if u64::from(sb.data_block_size) != args.block_size {
            // __begin_transaction / dm_pool_metadata_open
            return Err(pool_error(format!(
                "Error creating metadata object: changing the data block size (from {} to {}) is not supported",
                sb.data_block_size, args.block_size
            )));
        }
        let blocks = len.0 / args.block_size;
        if blocks < sb.data_sm.nr_blocks {
            // maybe_resize_data_dev
            return Err(pool_error(format!(
                "pool target ({blocks} blocks) too small: expected {}",
                sb.data_sm.nr_blocks
            )));
        }
        // Opening the space maps checks their roots and indexes now rather than at the
        // first status.
        md.data_space_map()?;
        md.metadata_space_map()?;
        Ok(ThinPool {
            args: args.clone(),
            len,
            data,
            meta,
            md: RwLock::new(md),
        })
    }

    /// The pool's data block size in sectors.
    #[must_use]
    pub fn block_sectors(&self) -> u64 {
        self.args.block_size
    }

    /// The data device.
    #[must_use]
    pub fn data(&self) -> &SharedVolume {
        &self.data
    }

    /// A snapshot of the committed metadata.
    #[must_use]
    pub fn metadata(&self) -> Metadata {
        self.md
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the pool runs read-only (`read_only` feature or needs_check set).
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.args.features.read_only || self.metadata().superblock().needs_check()
    }

    /// `calc_metadata_threshold`: a quarter of the metadata device, at most 1024 blocks.
    fn metadata_threshold(&self) -> u64 {
        let blocks = self.meta.size().0.min(METADATA_MAX_SECTORS) / BLOCK_SECTORS;
        (blocks / 4).min(1024)
    }

    fn status_line(&self) -> Result<String> {
        let md = self.metadata();
        let sb = md.superblock();
        let msm = md.metadata_space_map()?;
        let dsm = md.data_space_map()?;
        let f = &self.args.features;
        // dm_pool_get_free_metadata_block_count hides `metadata_reserve` (a tenth of the
        // metadata, at most 4096 blocks: __set_metadata_reserve) from the free count.
        let reserve = (msm.nr_blocks() / 10).min(4096);
        let meta_free = msm.nr_free().saturating_sub(reserve);
        let mut s = format!(
            "{} {}/{} {}/{} ",
            sb.transaction_id,
            msm.nr_blocks() - meta_free,
            msm.nr_blocks(),
            dsm.nr_blocks() - dsm.nr_free(),
            dsm.nr_blocks()
        );
        if sb.held_root != 0 {
            s += &format!("{} ", sb.held_root);
        } else {
            s += "- ";
        }
        s += if self.read_only() { "ro " } else { "rw " };
        s += if f.ignore_discard {
            "ignore_discard "
        } else if f.no_discard_passdown {
            "no_discard_passdown "
        } else {
            "discard_passdown "
        };
        s += if f.error_if_no_space {
            "error_if_no_space "
        } else {
            "queue_if_no_space "
        };
        s += if sb.needs_check() {
            "needs_check "
        } else {
            "- "
        };
        s += &format!("{} ", self.metadata_threshold());
        Ok(s)
    }
}

fn pool_error(reason: String) -> Error {
    Error::invalid("thin-pool", reason)
}

impl Volume for ThinPool {
    fn size(&self) -> SectorCount {
        self.len
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.len, sector, buf.len())?;
        self.data.read(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.len, sector, buf.len())?;
        self.data.write(sector, buf)
    }
    fn flush(&self) -> Result<()> {
        self.data.flush()?;
        self.meta.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.len, sector, count)?;
        self.data.discard(sector, count)
    }
}

impl Target for ThinPool {
    /// `pool_status(STATUSTYPE_INFO)` as 6.12 prints it (the kernel commits first; dmemu's
    /// metadata is always committed).
    fn status(&self) -> String {
        self.status_line().unwrap_or_else(|_| "Fail".to_string())
    }

    fn message(&self, argv: &[&str]) -> Result<String> {
        let _ = argv;
        // pool_message in PM_READ_ONLY: "unable to service pool target messages in
        // READ_ONLY or FAIL mode" (-EOPNOTSUPP). dmemu pools are read-only until the
        // write path lands.
        Err(Error::Unsupported {
            target: "thin-pool",
            op: "messages (the pool is read-only in dmemu)",
        })
    }
}

/// A multiplicative (Fibonacci) hash for block numbers: the index sits on the 4 KiB read
/// path, where SipHash would cost more than the lookup (keys are virtual block numbers of
/// one device, not attacker-chosen collisions against a hash table of bounded size).
#[derive(Clone, Copy, Debug, Default)]
struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type BlockMap = HashMap<u64, BlockTime, BuildHasherDefault<BlockHasher>>;

/// A thin device's mappings (the in-memory index of its btree) and details.
#[derive(Debug)]
struct ThinState {
    map: BlockMap,
    highest: Option<u64>,
    details: DeviceDetails,
}

/// A constructed `thin`.
#[derive(Debug)]
pub struct Thin {
    pool: Arc<ThinPool>,
    dev_id: u64,
    len: SectorCount,
    block: u64,
    shift: Option<u32>,
    origin: Option<SharedVolume>,
    state: RwLock<ThinState>,
}

impl Thin {
    /// `thin_ctr`: find the pool through the registry, open the thin device in its
    /// metadata, open the external origin.
    pub fn new(args: &ThinArgs, len: SectorCount, registry: &Registry) -> Result<Thin> {
        let pool = registry
            .target::<ThinPool>(&args.pool)
            .map_err(|e| Error::invalid("thin", format!("Couldn't get pool mapped device: {e}")))?;
        let origin = match &args.external_origin {
            Some(o) => Some(registry.volume(o).map_err(|e| {
                Error::invalid("thin", format!("Error opening origin device: {e}"))
            })?),
            None => None,
        };
        Thin::over(pool, u64::from(args.dev_id), len, origin)
    }

    /// A thin device of `pool` (library use, tests, benches).
    pub fn over(
        pool: Arc<ThinPool>,
        dev_id: u64,
        len: SectorCount,
        origin: Option<SharedVolume>,
    ) -> Result<Thin> {
        let md = pool.metadata();
        let not_found = || {
            Error::invalid(
                "thin",
                format!("Couldn't open thin internal device: device {dev_id} does not exist"),
            )
        };
        let details = md.device(dev_id)?.ok_or_else(not_found)?;
        let root = md.device_root(dev_id)?.ok_or_else(not_found)?;
        let mut map = BlockMap::default();
        let mut highest = None;
        md.for_each_mapping(root, &mut |k, bt| {
            map.insert(k, bt);
            highest = Some(k);
            Ok(())
        })?;
        let block = pool.block_sectors();
        Ok(Thin {
            pool,
            dev_id,
            len,
            block,
            shift: block.is_power_of_two().then(|| block.trailing_zeros()),
            origin,
            state: RwLock::new(ThinState {
                map,
                highest,
                details,
            }),
        })
    }

    /// The device id in the pool.
    #[must_use]
    pub fn dev_id(&self) -> u64 {
        self.dev_id
    }

    fn lookup(&self, vblock: u64) -> Option<BlockTime> {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(&vblock)
            .copied()
    }

    /// Virtual block and sector within it. Power-of-two block sizes shift, as the kernel
    /// does with `sectors_per_block_shift` (a 64-bit division costs ~40 cycles).
    fn split(&self, sector: u64) -> (u64, u64) {
        match self.shift {
            Some(s) => (sector >> s, sector & (self.block - 1)),
            None => (sector / self.block, sector % self.block),
        }
    }

    /// Read `buf` from `within` sectors into virtual block `vblock`.
    fn read_block(&self, vblock: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        match self.lookup(vblock) {
            Some(bt) => {
                let data_sector = bt.block * self.block + within;
                self.pool.data.read(Sector(data_sector), buf)
            }
            None => self.read_unmapped(Sector(vblock * self.block + within), buf),
        }
    }

    /// Unprovisioned sectors: from the external origin where it has them, zeros elsewhere
    /// (thin_map remaps to the origin; bios past its end are zero-filled).
    fn read_unmapped(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let Some(origin) = &self.origin else {
            buf.fill(0);
            return Ok(());
        };
        let osize = origin.size().0;
        let inside = usize::try_from(osize.saturating_sub(sector.0).saturating_mul(512))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(inside);
        if !head.is_empty() {
            origin.read(sector, head)?;
        }
        tail.fill(0);
        Ok(())
    }
}

impl Volume for Thin {
    fn size(&self) -> SectorCount {
        self.len
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.len, sector, buf.len())?;
        let (vblock, within) = self.split(sector.0);
        if within + count.0 <= self.block {
            // One block (the common case): no splitting.
            return self.read_block(vblock, within, buf);
        }
        let mut rest = buf;
        for (at, n) in chunks(sector, count, SectorCount(self.block)) {
            let (piece, tail) = rest.split_at_mut(usize::try_from(n.bytes()).unwrap_or(0));
            rest = tail;
            let (vblock, within) = self.split(at.0);
            self.read_block(vblock, within, piece)?;
        }
        Ok(())
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.len, sector, buf.len())?;
        Err(Error::ReadOnly {
            target: format!(
                "thin {} (dmemu's thin write path is not there yet)",
                self.dev_id
            ),
        })
    }
    fn flush(&self) -> Result<()> {
        self.pool.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.len, sector, count)?;
        Err(Error::Unsupported {
            target: "thin",
            op: "discard (read-only in dmemu)",
        })
    }
}

impl Target for Thin {
    /// `thin_status(STATUSTYPE_INFO)`: mapped sectors, then the last sector of the highest
    /// mapped block or `-`.
    fn status(&self) -> String {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let mapped = st.details.mapped_blocks * self.block;
        match st.highest {
            Some(highest) => format!("{mapped} {}", (highest + 1) * self.block - 1),
            None => format!("{mapped} -"),
        }
    }
}
