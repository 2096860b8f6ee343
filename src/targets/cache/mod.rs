//! `cache`: an origin device fronted by a faster cache device (kernel dm-cache-target.c,
//! 2.2.0, with dm-cache-metadata.c formats 1 and 2).
//!
//! Table args: `<metadata dev> <cache dev> <origin dev> <block size> <#features>
//! <feature>* <policy> <#policy args> <policy arg>*`; features `writeback` (default),
//! `writethrough`, `passthrough`, `metadata2`, `no_discard_passdown`; policy args are
//! `<key> <value>` pairs (`migration_threshold`, and the mq policy's retired tunables).
//!
//! The mapping is kept stable (no promotion, demotion or writeback): a read of a mapped
//! block comes from the cache device (the origin in passthrough mode), any other from the
//! origin; a write goes to the origin and, when the block is mapped, to its cache block as
//! well, so no block ever turns dirty and the metadata is never rewritten. A block the
//! metadata already holds dirty keeps its newest data on the cache device, which every read
//! serves.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::table::args::{ArgResult, Args};
use crate::targets::context::BuildContext;
use crate::targets::pdata::block::MetaDev;
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, SharedVolume, Volume};

use super::{DeviceRef, Target};

pub mod check;
#[cfg(feature = "cli")]
pub mod cli;
pub mod metadata;
mod state;
#[cfg(test)]
mod tests;
pub mod writeback;

use metadata::Metadata;
use state::State;

/// `DATA_DEV_BLOCK_SIZE_MIN_SECTORS` (32 KiB).
pub const MIN_BLOCK_SECTORS: u64 = 64;
/// `DATA_DEV_BLOCK_SIZE_MAX_SECTORS` (1 GiB).
pub const MAX_BLOCK_SECTORS: u64 = 1 << 21;
/// `DEFAULT_MIGRATION_THRESHOLD`.
pub const DEFAULT_MIGRATION_THRESHOLD: u64 = 2048;
/// `DM_CACHE_METADATA_BLOCK_SIZE` in sectors.
const METADATA_BLOCK_SECTORS: u32 = 8;

/// How writes reach the devices (`enum cache_io_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// `writeback`.
    Writeback,
    /// `writethrough`.
    Writethrough,
    /// `passthrough`.
    Passthrough,
}

impl IoMode {
    fn word(self) -> &'static str {
        match self {
            IoMode::Writeback => "writeback",
            IoMode::Writethrough => "writethrough",
            IoMode::Passthrough => "passthrough",
        }
    }
}

/// Parsed `cache` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheArgs {
    /// Metadata device.
    pub metadata: DeviceRef,
    /// Cache (fast) device.
    pub cache: DeviceRef,
    /// Origin (slow) device.
    pub origin: DeviceRef,
    /// Sectors per cache block.
    pub block_size: u64,
    /// The io mode the features select.
    pub io_mode: IoMode,
    /// 2 with `metadata2`, else 1 (the format new metadata gets).
    pub metadata_version: u32,
    /// Without `no_discard_passdown`.
    pub discard_passdown: bool,
    /// Policy name.
    pub policy: String,
    /// Policy arguments, as given.
    pub policy_args: Vec<String>,
    /// Every token after the three devices, as given: the kernel copies them
    /// (`copy_ctr_args`) and prints them back unchanged.
    pub ctr_args: Vec<String>,
}

impl CacheArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "cache";

    /// Parse like `parse_cache_args` (device opening and size checks happen in `new`).
    pub fn parse(args: &mut Args<'_>) -> ArgResult<CacheArgs> {
        const INSUFFICIENT: &str = "Insufficient args";
        let metadata = DeviceRef::parse(args, INSUFFICIENT)?;
        let cache = DeviceRef::parse(args, INSUFFICIENT)?;
        let origin = DeviceRef::parse(args, INSUFFICIENT)?;
        let mut rest = args.clone();
        let mut ctr_args = Vec::new();
        while rest.remaining() > 0 {
            ctr_args.push(rest.next("")?.to_string());
        }
        if args.remaining() == 0 {
            return Err(Args::error(INSUFFICIENT));
        }
        let block_size = args.kstrtoull("Invalid data block size")?;
        if !(MIN_BLOCK_SECTORS..=MAX_BLOCK_SECTORS).contains(&block_size)
            || block_size % MIN_BLOCK_SECTORS != 0
        {
            return Err(args.error_last("Invalid data block size"));
        }
        let mut feats = args.group(0..=3, "Invalid number of cache feature arguments")?;
        let (mut io_mode, mut metadata_version, mut discard_passdown) =
            (IoMode::Writeback, 1, true);
        let mut modes = 0;
        while feats.remaining() > 0 {
            let f = feats.next("")?;
            match f.to_ascii_lowercase().as_str() {
                "writeback" => (io_mode, modes) = (IoMode::Writeback, modes + 1),
                "writethrough" => (io_mode, modes) = (IoMode::Writethrough, modes + 1),
                "passthrough" => (io_mode, modes) = (IoMode::Passthrough, modes + 1),
                "metadata2" => metadata_version = 2,
                "no_discard_passdown" => discard_passdown = false,
                _ => return Err(feats.error_last("Unrecognised cache feature requested")),
            }
        }
        if modes > 1 {
            return Err(Args::error("Duplicate cache io_mode features requested"));
        }
        let policy = args.next(INSUFFICIENT)?.to_string();
        let mut pargs = args.group(0..=1024, "Invalid number of policy arguments")?;
        let mut policy_args = Vec::new();
        while pargs.remaining() > 0 {
            policy_args.push(pargs.next("")?.to_string());
        }
        // parse_cache_args stops here: tokens left over are not refused (ctr_args has them).
        Ok(CacheArgs {
            metadata,
            cache,
            origin,
            block_size,
            io_mode,
            metadata_version,
            discard_passdown,
            policy,
            policy_args,
            ctr_args,
        })
    }

    /// `set_config_values` on the core and policy options: the migration threshold.
    fn migration_threshold(&self) -> Result<u64> {
        let bad = || {
            Error::invalid(
                "cache",
                "Error setting cache policy's config values".to_string(),
            )
        };
        if self.policy_args.len() % 2 != 0 {
            return Err(bad());
        }
        let mut threshold = DEFAULT_MIGRATION_THRESHOLD;
        for kv in self.policy_args.chunks(2) {
            let (k, v) = (kv[0].to_ascii_lowercase(), &kv[1]);
            let n = crate::table::args::parse_kstrtoull(v).ok_or_else(bad)?;
            match k.as_str() {
                "migration_threshold" => threshold = n,
                "random_threshold"
                | "sequential_threshold"
                | "discard_promote_adjustment"
                | "read_promote_adjustment"
                | "write_promote_adjustment"
                    if self.policy == "mq" => {}
                _ => return Err(bad()),
            }
        }
        Ok(threshold)
    }
}

impl fmt::Display for CacheArgs {
    /// `STATUSTYPE_TABLE`: the devices, then the other tokens as given.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metadata, self.cache, self.origin)?;
        for a in &self.ctr_args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// The policy a name selects: what `dm_cache_policy_get_name` and its
/// `emit_config_values` print.
fn policy_status(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "smq" | "default" => Some(("smq", "0")),
        "cleaner" => Some(("cleaner", "0")),
        "mq" => Some((
            "mq",
            "10 random_threshold 0 sequential_threshold 0 discard_promote_adjustment 0 \
             read_promote_adjustment 0 write_promote_adjustment 0",
        )),
        _ => None,
    }
}

/// I/O counters as `dmsetup status` shows them (loaded from the superblock).
#[derive(Debug, Default)]
struct Stats {
    read_hit: AtomicU32,
    read_miss: AtomicU32,
    write_hit: AtomicU32,
    write_miss: AtomicU32,
    demotions: AtomicU32,
}

impl Stats {
    fn get(&self) -> [u32; 4] {
        [
            &self.read_hit,
            &self.read_miss,
            &self.write_hit,
            &self.write_miss,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }
}

/// A constructed cache target.
#[derive(Debug)]
pub struct Cache {
    args: CacheArgs,
    origin: SharedVolume,
    cache: SharedVolume,
    size: SectorCount,
    block: u64,
    /// Origin block -> cache block.
    map: RwLock<HashMap<u64, u64>>,
    md: Metadata,
    cache_blocks: u64,
    /// Discard blocks marked discarded, and the discard block size in sectors.
    discarded: (std::collections::HashSet<u64>, u64),
    migration_threshold: u64,
    stats: Stats,
    read_only: bool,
    /// What writes change, and the metadata transaction (one writer at a time).
    state: Mutex<State>,
}

impl Cache {
    /// `cache_ctr` + `cache_preresume` over existing metadata: resolve the devices, check
    /// the geometry and load the mappings.
    pub fn new(args: &CacheArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Cache> {
        let meta = ctx.volume(&args.metadata)?;
        let cache = ctx.volume(&args.cache)?;
        let origin = ctx.volume(&args.origin)?;
        Cache::over(args, len, meta, cache, origin)
    }

    /// [`Cache::new`] over volumes already open.
    pub fn over(
        args: &CacheArgs,
        len: SectorCount,
        meta: SharedVolume,
        cache: SharedVolume,
        origin: SharedVolume,
    ) -> Result<Cache> {
        if len.0 > origin.size().0 {
            return Err(Error::invalid(
                "cache",
                "Device size larger than cached device",
            ));
        }
        if args.block_size > cache.size().0 {
            return Err(Error::invalid(
                "cache",
                "Data block size is larger than the cache device",
            ));
        }
        let migration_threshold = args.migration_threshold()?;
        if policy_status(&args.policy).is_none() {
            return Err(Error::invalid("cache", "Error creating cache's policy"));
        }
        let dev = MetaDev::new(meta);
        let md = Metadata::open(&dev)?;
        if u64::from(md.sb.data_block_size) != args.block_size {
            return Err(Error::invalid(
                "cache",
                format!(
                    "changing the data block size (from {} to {}) is not supported",
                    md.sb.data_block_size, args.block_size
                ),
            ));
        }
        let cache_blocks = cache.size().0 / args.block_size;
        if u64::from(md.sb.cache_blocks) != cache_blocks {
            return Err(Error::Unsupported {
                target: "cache",
                op: "resizing the cache (the metadata's cache_blocks differ from the cache \
                     device's size)",
            });
        }
        let origin_blocks = len.0.div_ceil(args.block_size);
        let mut map = HashMap::with_capacity(md.mappings.len());
        for m in &md.mappings {
            if m.oblock >= origin_blocks || map.insert(m.oblock, m.cblock).is_some() {
                return Err(Error::Corrupt {
                    what: "cache mapping",
                    offset: 0,
                    detail: format!(
                        "cache block {} maps origin block {}, {}",
                        m.cblock,
                        m.oblock,
                        if m.oblock >= origin_blocks {
                            format!("beyond the origin's {origin_blocks} blocks")
                        } else {
                            "which another cache block maps too".into()
                        }
                    ),
                });
            }
        }
        if args.io_mode == IoMode::Passthrough && md.nr_dirty() > 0 {
            return Err(Error::invalid(
                "cache",
                "unable to switch cache to passthrough mode: dirty blocks (write them back \
                 first)",
            ));
        }
        let s = md.sb.stats;
        let stats = Stats {
            read_hit: AtomicU32::new(s[0]),
            read_miss: AtomicU32::new(s[1]),
            write_hit: AtomicU32::new(s[2]),
            write_miss: AtomicU32::new(s[3]),
            demotions: AtomicU32::new(0),
        };
        let discarded = (
            md.discarded.iter().copied().collect(),
            md.sb.discard_block_size.max(1),
        );
        let read_only = md.sb.needs_check();
        let state = Mutex::new(State::new(dev, &md)?);
        Ok(Cache {
            args: args.clone(),
            origin,
            cache,
            size: len,
            block: args.block_size,
            map: RwLock::new(map),
            cache_blocks,
            discarded,
            migration_threshold,
            stats,
            read_only,
            md,
            state,
        })
    }

    /// The metadata as loaded.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.md
    }

    /// Visit the pieces of `[sector, sector + bytes)` split at cache block edges:
    /// (sector, byte range in the buffer, cache block if mapped).
    fn pieces(
        &self,
        sector: Sector,
        bytes: usize,
        each: &mut dyn FnMut(Sector, std::ops::Range<usize>, Option<u64>) -> Result<()>,
    ) -> Result<()> {
        let mut at = 0usize;
        let mut s = sector.0;
        while at < bytes {
            let in_block = self.block - s % self.block;
            let n = usize::try_from(in_block * 512)
                .unwrap_or(usize::MAX)
                .min(bytes - at);
            let cb = read_lock(&self.map).get(&(s / self.block)).copied();
            each(Sector(s), at..at + n, cb)?;
            at += n;
            s += (n / 512) as u64;
        }
        Ok(())
    }

    fn cache_sector(&self, s: Sector, cb: u64) -> Sector {
        Sector(cb * self.block + s.0 % self.block)
    }

    /// `sync_metadata` (postsuspend, teardown) after writes: the dirty bits, the stats and
    /// the clean-shutdown flag committed. A cache that took no write leaves its metadata
    /// as it found it.
    fn sync(&self) -> Result<()> {
        let mut st = lock(&self.state);
        if !st.written || self.read_only {
            return Ok(());
        }
        st.sync(self.stats.get())
    }

    /// A write hit in passthrough mode (`invalidate_start`): the mapping is removed and
    /// committed before the write goes to the origin.
    fn invalidate(&self, st: &mut State, oblock: u64, cb: u64) -> Result<()> {
        st.remove_mapping(cb)?;
        write_lock(&self.map).remove(&oblock);
        self.stats.demotions.fetch_add(1, Ordering::Relaxed);
        st.commit(false, self.stats.get())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Volume for Cache {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let len = buf.len();
        self.pieces(sector, len, &mut |s, r, cb| match cb {
            Some(cb) => {
                self.stats.read_hit.fetch_add(1, Ordering::Relaxed);
                if self.args.io_mode == IoMode::Passthrough {
                    self.origin.read(s, &mut buf[r])
                } else {
                    self.cache.read(self.cache_sector(s, cb), &mut buf[r])
                }
            }
            None => {
                self.stats.read_miss.fetch_add(1, Ordering::Relaxed);
                self.origin.read(s, &mut buf[r])
            }
        })
    }

    /// `map_bio` for writes: a miss goes to the origin; a hit in writeback mode (or on a
    /// dirty block) only to the cache block, which turns dirty; in writethrough mode to
    /// both; in passthrough mode it invalidates the mapping, then goes to the origin.
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        if self.read_only {
            return Err(Error::TargetFailed {
                target: "cache",
                reason: "the metadata has needs_check set: the cache is read-only".into(),
            });
        }
        let (ref discarded, dbs) = self.discarded;
        let first = sector.0 / dbs;
        let last = (sector.0 + (buf.len() as u64).div_ceil(512)).saturating_sub(1) / dbs;
        if !discarded.is_empty() && (first..=last).any(|d| discarded.contains(&d)) {
            return Err(Error::Unsupported {
                target: "cache",
                op: "writing a block the discard bitset marks discarded",
            });
        }
        let mut st = lock(&self.state);
        st.written = true;
        self.pieces(sector, buf.len(), &mut |s, r, cb| {
            let Some(cb) = cb else {
                self.stats.write_miss.fetch_add(1, Ordering::Relaxed);
                return self.origin.write(s, &buf[r]);
            };
            self.stats.write_hit.fetch_add(1, Ordering::Relaxed);
            match self.args.io_mode {
                IoMode::Passthrough => {
                    self.invalidate(&mut st, s.0 / self.block, cb)?;
                    self.origin.write(s, &buf[r])
                }
                IoMode::Writethrough if !st.dirty.contains(&cb) => {
                    self.origin.write(s, &buf[r.clone()])?;
                    self.cache.write(self.cache_sector(s, cb), &buf[r])
                }
                _ => {
                    if !st.dirty.contains(&cb) {
                        st.set_dirty(cb)?;
                    }
                    self.cache.write(self.cache_sector(s, cb), &buf[r])
                }
            }
        })
    }

    /// A flush reaches both devices, then commits what changed (`commit_op`).
    fn flush(&self) -> Result<()> {
        self.origin.flush()?;
        self.cache.flush()?;
        let mut st = lock(&self.state);
        if st.changed {
            st.commit(false, self.stats.get())?;
        }
        Ok(())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        Err(Error::Unsupported {
            target: "cache",
            op: "discard (it rewrites the discard bitset)",
        })
    }
}

impl Drop for Cache {
    /// The kernel syncs the metadata when the cache is suspended or destroyed; errors
    /// cannot be reported from here.
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

impl Target for Cache {
    /// `cache_status` STATUSTYPE_INFO.
    fn status(&self) -> String {
        let (sm, nr_dirty) = {
            let st = lock(&self.state);
            (st.sm_root(), st.dirty.len())
        };
        let (name, config) = policy_status(&self.args.policy).unwrap_or(("smq", "0"));
        let mut feats = vec![];
        if self.md.sb.version == 2 {
            feats.push("metadata2");
        }
        feats.push(self.args.io_mode.word());
        if !self.args.discard_passdown {
            feats.push("no_discard_passdown");
        }
        let [rh, rm, wh, wm] = self.stats.get();
        format!(
            "{METADATA_BLOCK_SECTORS} {}/{} {} {}/{} {rh} {rm} {wh} {wm} {} 0 {nr_dirty} {} {} 2 \
             migration_threshold {} {name} {config} {} {} ",
            sm.nr_allocated,
            sm.nr_blocks,
            self.block,
            read_lock(&self.map).len(),
            self.cache_blocks,
            self.stats.demotions.load(Ordering::Relaxed),
            feats.len(),
            feats.join(" "),
            self.migration_threshold,
            if self.read_only { "ro" } else { "rw" },
            if self.md.sb.needs_check() {
                "needs_check"
            } else {
                "-"
            },
        )
    }

    /// `cache_postsuspend`: `sync_metadata` once no I/O is in flight.
    fn postsuspend(&self) -> Result<()> {
        self.sync()
    }
}
