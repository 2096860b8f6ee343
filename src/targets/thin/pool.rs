//! The constructed `thin-pool` (dm-thin.c `pool_ctr`, `pool_map`, `pool_status`,
//! `pool_message`) and the pool's in-memory state (dm-thin-metadata.c's role).
//!
//! Opening a pool reads the superblock, the device details and the top level of the
//! mapping tree, nothing more: reads look their block up in the btree through a bounded
//! cache of checked metadata blocks (`pdata::cache`, the kernel's dm-bufio), so opening
//! costs the same for any pool size and a damaged node fails the request that reaches it.
//! The first change (a write that provisions or breaks sharing, a discard, a message, a
//! growth) begins a transaction (`metadata::tx`): the paths it changes are shadowed, the
//! space maps count the blocks it touches, and the commit writes just those blocks, then
//! the superblock (new blocks, flush, superblock last, flush). I/O to the pool device
//! itself goes to the data device, as `pool_map` remaps every bio there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use crate::clock::{SharedClock, Stop, SystemClock};
use crate::error::{Error, Result};
use crate::table::args::parse_kstrtoull;
use crate::targets::context::{device_area, BuildContext, TableEvents};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, SharedVolume, Volume};

use super::metadata::block::{le64, MetaDev, BLOCK_SECTORS};
use super::metadata::btree::{highest_key_cached, lookup_cached, At};
use super::metadata::cache::{BlockCache, DEFAULT_CACHE_BLOCKS};
use super::metadata::superblock::Superblock;
use super::metadata::tx::Tx;
use super::metadata::writer::format;
use super::metadata::{BlockTime, DeviceDetails, Metadata};
use super::{ThinPoolArgs, MAX_DEV_ID};
use crate::targets::{DeviceAt, Target, TargetSpec};

/// `THIN_METADATA_MAX_SECTORS` (= `DM_SM_METADATA_MAX_SECTORS`): metadata beyond this is
/// not used.
const METADATA_MAX_SECTORS: u64 = 255 * ((1 << 14) - 64) * BLOCK_SECTORS;

/// One thin device's details (its mappings live in the pool's btree); shared by the pool
/// and the thin targets open on it.
#[derive(Debug, Default)]
pub(super) struct DevState {
    pub(super) details: DeviceDetails,
    /// The details the last commit wrote (none: a device created since).
    committed: Option<DeviceDetails>,
}

pub(super) type Dev = Arc<RwLock<DevState>>;

pub(super) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pool's mode (`enum pool_mode`). PM_FAIL and PM_OUT_OF_METADATA_SPACE are not
/// reached here: a failed metadata write is returned to the request that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// PM_WRITE.
    Write,
    /// PM_OUT_OF_DATA_SPACE: no free data block; writes that need one fail.
    OutOfDataSpace,
    /// PM_READ_ONLY: the `read_only` feature, or metadata that needs checking.
    ReadOnly,
}

/// What the pool's control target (the `thin-pool` line of the pool device's live table)
/// sets when it binds (`bind_control_target` at preresume): the data area, the features,
/// the low water mark and the table whose events the pool raises.
#[derive(Clone, Debug)]
struct Control {
    data: SharedVolume,
    len: SectorCount,
    features: super::PoolFeatures,
    low_water_blocks: u64,
    events: TableEvents,
    /// The target's `adjusted_pf.mode`: what it asks for when it binds, kept in step with
    /// the pool's mode while it is bound.
    adjusted: Arc<Mutex<Mode>>,
}

/// What a lookup needs of the committed metadata, read without the pool state's lock:
/// while no transaction is open, lookups of many threads descend the committed trees
/// together; beginning a transaction takes the write lock (waiting out such lookups) and
/// sends later ones through the state, so no commit writes under a reader of the old trees.
#[derive(Debug, Default)]
struct View {
    /// A transaction is open: look up through the pool's state.
    open: bool,
    /// The committed mapping tree root of each device.
    roots: BTreeMap<u64, u64>,
    /// Data blocks of the committed data space map.
    nr_data: u64,
}

/// What the pool knows beyond the committed metadata.
#[derive(Debug)]
struct PoolState {
    /// The last committed metadata.
    committed: Metadata,
    /// What lookups read without this state's lock (shared with the pool).
    view: Arc<RwLock<View>>,
    /// The transaction being built, from the first change to its commit.
    tx: Option<Tx>,
    /// The superblock of the transaction being built (time, transaction id).
    sb: Superblock,
    devices: BTreeMap<u64, Dev>,
    /// Where the next data block search starts (`smd->begin`; a commit keeps it).
    begin: u64,
    dirty: bool,
    mode: Mode,
    /// The low water mark event was sent (cleared when the pool resumes).
    low_water_triggered: bool,
    /// `pool->pf.error_if_no_space`: the bound line's feature, set when a full pool has
    /// queued writes for `no_space_timeout`.
    error_if_no_space: bool,
    /// When the pool last ran out of data space (on the pool's clock).
    out_of_space_since: Duration,
}

impl PoolState {
    /// Free data blocks now (`dm_pool_get_free_block_count`).
    fn nr_free(&self) -> u64 {
        match &self.tx {
            Some(tx) => tx.data_free(),
            None => {
                let sm = &self.committed.superblock().data_sm;
                sm.nr_blocks.saturating_sub(sm.nr_allocated)
            }
        }
    }

    /// The open transaction, begun on the committed metadata if there is none.
    fn tx(&mut self, cache: &Arc<BlockCache>) -> Result<&mut Tx> {
        if self.tx.is_none() {
            let mut tx = Tx::begin(Arc::clone(cache), self.committed.superblock(), self.begin)?;
            tx.sb.held_root = self.sb.held_root;
            write(&self.view).open = true;
            self.tx = Some(tx);
        }
        self.tx
            .as_mut()
            .ok_or_else(|| pool_error("no transaction".to_string()))
    }
}

/// Thin I/O waits while the pool device is suspended (`pool_presuspend` suspends every
/// active thin device, `pool_resume` resumes them), and the suspend waits for the thin I/O
/// in flight. The request path is one atomic add and one subtract: the count of requests in
/// flight with a `SUSPENDED` bit above it; the mutex and condvar are only for waiting.
#[derive(Debug, Default)]
struct Gate {
    state: AtomicU64,
    lock: Mutex<()>,
    changed: Condvar,
}

const SUSPENDED: u64 = 1 << 63;

/// One thin request in flight through the pool.
pub(super) struct Passage<'a>(&'a Gate);

impl Drop for Passage<'_> {
    fn drop(&mut self) {
        let g = self.0;
        let before = g.state.fetch_sub(1, AtomicOrdering::AcqRel);
        if before & SUSPENDED != 0 && before & !SUSPENDED == 1 {
            // The last request a suspend waits for: wake it (under the lock, so the
            // suspender is either before its check or already waiting).
            let _l = lock(&g.lock);
            g.changed.notify_all();
        }
    }
}

impl Gate {
    fn enter(&self) -> Passage<'_> {
        loop {
            let v = self.state.load(AtomicOrdering::Acquire);
            if v & SUSPENDED != 0 {
                let mut l = lock(&self.lock);
                while self.state.load(AtomicOrdering::Acquire) & SUSPENDED != 0 {
                    l = self.changed.wait(l).unwrap_or_else(PoisonError::into_inner);
                }
                continue;
            }
            if self
                .state
                .compare_exchange_weak(v, v + 1, AtomicOrdering::AcqRel, AtomicOrdering::Acquire)
                .is_ok()
            {
                return Passage(self);
            }
        }
    }

    fn close(&self) {
        let mut l = lock(&self.lock);
        self.state.fetch_or(SUSPENDED, AtomicOrdering::AcqRel);
        while self.state.load(AtomicOrdering::Acquire) & !SUSPENDED != 0 {
            l = self.changed.wait(l).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn open(&self) {
        let _l = lock(&self.lock);
        self.state.fetch_and(!SUSPENDED, AtomicOrdering::AcqRel);
        self.changed.notify_all();
    }
}

/// The pool object (dm-thin.c's `struct pool`): the metadata and data devices, the
/// in-memory state, and whatever control target is bound. One exists per metadata device;
/// reloading the pool device's table binds the new `thin-pool` line to the same pool, so
/// thin devices keep working across the reload (pool growth).
#[derive(Debug)]
pub(super) struct Pool {
    meta: SharedVolume,
    /// The data device as its table names it (`pool->data_dev`: a reload must name it).
    data_dev: SharedVolume,
    /// Data block size in sectors (`sectors_per_block`), fixed when the pool is created.
    block: u64,
    control: RwLock<Control>,
    state: Mutex<PoolState>,
    /// Serialises provisioning (allocate, zero or copy, write, remap) so two writes never
    /// provision one virtual block twice (the kernel's bio prison cells).
    provision: Mutex<()>,
    gate: Gate,
    clock: SharedClock,
    /// The `no_space_timeout` module parameter when the pool was created (0: queue for
    /// ever).
    no_space_timeout: Duration,
    /// Whether writes queue on a full pool in `queue_if_no_space` mode: only where a device
    /// layer can reload the pool to grow it (not for `ThinPool::over`, where nothing could
    /// and a write would wait out the timeout).
    queues: bool,
    /// Raised when writes queued on a full pool should look again (space came back, or
    /// the timeout turned the pool to erroring).
    space: Stop,
    /// Checked metadata blocks of the committed trees, for lookups and the transaction
    /// (cleared by each commit).
    cache: Arc<BlockCache>,
    /// The committed roots lookups read while no transaction is open.
    view: Arc<RwLock<View>>,
}

/// Metadata blocks a pool's cache holds (16 MiB).
pub(super) const POOL_CACHE_BLOCKS: usize = DEFAULT_CACHE_BLOCKS;

/// A constructed `thin-pool` line (dm-thin.c's `struct pool_c`): its arguments, its data
/// area, and the pool it binds to when its table goes live.
#[derive(Debug)]
pub struct ThinPool {
    args: ThinPoolArgs,
    len: SectorCount,
    data: SharedVolume,
    pool: Arc<Pool>,
    events: TableEvents,
    adjusted: Arc<Mutex<Mode>>,
}

/// The pools that exist (dm-thin.c's `dm_thin_pool_table`), each with the mapped device
/// whose table created it. A device layer keeps one and hands it to every table it builds.
#[derive(Debug, Default)]
pub struct PoolTable {
    pools: Mutex<Vec<(Option<u32>, Weak<Pool>)>>,
    /// dm-thin's `no_space_timeout` parameter; `None`: the kernel's default.
    no_space_timeout: Mutex<Option<Duration>>,
}

/// `NO_SPACE_TIMEOUT_SECS`: how long a full pool in queue mode holds writes.
pub const NO_SPACE_TIMEOUT: Duration = Duration::from_secs(60);

fn same(a: &SharedVolume, b: &SharedVolume) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl PoolTable {
    /// Set how long full pools created from now on queue writes that need a block before
    /// failing them (the `no_space_timeout` module parameter; zero: for ever).
    pub fn set_no_space_timeout(&self, timeout: Duration) {
        *lock(&self.no_space_timeout) = Some(timeout);
    }

    fn no_space_timeout(&self) -> Duration {
        lock(&self.no_space_timeout).unwrap_or(NO_SPACE_TIMEOUT)
    }

    /// `__pool_find`: the pool on `meta`, which must belong to `owner` and use `data_dev`;
    /// else the pool `owner` has, which must be on the same devices; else a new one.
    /// Returns the pool and whether it was created.
    fn find_or_create(
        &self,
        owner: Option<u32>,
        meta: &SharedVolume,
        data_dev: &SharedVolume,
        create: impl FnOnce() -> Result<Pool>,
    ) -> Result<(Arc<Pool>, bool)> {
        let mut pools = lock(&self.pools);
        pools.retain(|(_, p)| p.strong_count() > 0);
        let live: Vec<(Option<u32>, Arc<Pool>)> = pools
            .iter()
            .filter_map(|(o, p)| p.upgrade().map(|p| (*o, p)))
            .collect();
        let busy = |reason: &str| Error::Busy {
            what: "thin-pool".to_string(),
            reason: reason.to_string(),
        };
        if let Some((o, p)) = live.iter().find(|(_, p)| same(&p.meta, meta)) {
            if owner.is_none() || *o != owner {
                return Err(busy("metadata device already in use by a pool"));
            }
            if !same(&p.data_dev, data_dev) {
                return Err(busy("data device already in use by a pool"));
            }
            return Ok((Arc::clone(p), false));
        }
        if owner.is_some() && live.iter().any(|(o, _)| *o == owner) {
            return Err(pool_error(
                "different pool cannot replace a pool".to_string(),
            ));
        }
        let pool = Arc::new(create()?);
        pools.push((owner, Arc::downgrade(&pool)));
        Ok((pool, true))
    }
}

/// A mapping naming a data block past the data space map (found at `at` in a leaf).
fn beyond(vblock: u64, bt: BlockTime, nr_data: u64, at: Option<At>) -> Error {
    let (block, offset) = at.map_or((0, 0), |a| (a.block, a.offset));
    super::metadata::block::corrupt(
        "mapping data block",
        block,
        offset,
        format_args!(
            "virtual block {vblock} maps to data block {}, the pool has {nr_data}",
            bt.block
        ),
    )
}

fn pool_error(reason: String) -> Error {
    Error::invalid("thin-pool", reason)
}

/// A message that fails with the kernel's errno (EEXIST, ENODATA from the metadata's
/// btree lookups) rather than EINVAL.
fn pool_errno(reason: String, errno: i32) -> Error {
    Error::Io {
        device: format!("thin-pool: {reason}"),
        source: std::io::Error::from_raw_os_error(errno),
    }
}

/// `File exists`: `__create_thin` / `__create_snap` on an id in use.
const EEXIST: i32 = 17;
/// `No data available`: `__open_device` of an origin id that is not there.
const ENODATA: i32 = 61;

fn requested_mode(args: &ThinPoolArgs) -> Mode {
    if args.features.read_only {
        Mode::ReadOnly
    } else {
        Mode::Write
    }
}

impl ThinPool {
    /// `pool_ctr`: open the metadata and data devices, then find the pool on them (a
    /// reload of the pool device's table) or create it, opening (or formatting) the
    /// metadata. The pool takes this line's data area, features and low water mark when
    /// the table resumes (`pool_preresume`).
    pub fn new(args: &ThinPoolArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<ThinPool> {
        let meta = ctx.volume(&args.metadata)?;
        let data_dev = ctx.volume(&args.data)?;
        let data = device_area(
            ctx,
            &DeviceAt {
                device: args.data.clone(),
                offset: SectorCount(0),
            },
            len,
        )?;
        let events = ctx.events();
        let table = ctx.thin_pools();
        let (pool, created) = table.find_or_create(ctx.device_minor(), &meta, &data_dev, || {
            Pool::open(
                args,
                len,
                (Arc::clone(&meta), Arc::clone(&data_dev), Arc::clone(&data)),
                ctx.clock(),
                table.no_space_timeout(),
            )
        })?;
        if !created {
            let bound = read(&pool.control).features;
            if bound.ignore_discard != args.features.ignore_discard {
                return Err(pool_error(
                    "Discard support cannot be disabled once enabled".to_string(),
                ));
            }
        }
        let mut args = args.clone();
        // pool_status prints the pool's block size, which a reload cannot change.
        args.block_size = pool.block;
        Ok(ThinPool {
            adjusted: Arc::new(Mutex::new(requested_mode(&args))),
            args,
            len,
            data,
            pool,
            events,
        })
    }

    /// A pool over already-open volumes, bound as if its table had resumed (library use,
    /// tests, benches). Nothing can reload it, so when it is full a write that needs a block
    /// fails ENOSPC at once even in `queue_if_no_space` mode.
    pub fn over(
        args: &ThinPoolArgs,
        len: SectorCount,
        meta: SharedVolume,
        data: SharedVolume,
    ) -> Result<ThinPool> {
        ThinPool::over_cached(args, len, meta, data, POOL_CACHE_BLOCKS)
    }

    /// `over` with a metadata block cache of `cache_blocks` blocks.
    pub fn over_cached(
        args: &ThinPoolArgs,
        len: SectorCount,
        meta: SharedVolume,
        data: SharedVolume,
        cache_blocks: usize,
    ) -> Result<ThinPool> {
        let mut pool = Pool::open(
            args,
            len,
            (meta, Arc::clone(&data), Arc::clone(&data)),
            Arc::new(SystemClock::new()),
            NO_SPACE_TIMEOUT,
        )?;
        pool.cache = Arc::new(BlockCache::new(
            MetaDev::new(Arc::clone(&pool.meta)),
            cache_blocks,
        ));
        pool.queues = false;
        let tp = ThinPool {
            args: args.clone(),
            len,
            data,
            pool: Arc::new(pool),
            events: TableEvents::new(),
            adjusted: Arc::new(Mutex::new(requested_mode(args))),
        };
        tp.pool.bind(tp.control())?;
        Ok(tp)
    }

    fn control(&self) -> Control {
        Control {
            data: Arc::clone(&self.data),
            len: self.len,
            features: self.args.features,
            low_water_blocks: self.args.low_water_blocks,
            events: self.events.clone(),
            adjusted: Arc::clone(&self.adjusted),
        }
    }

    /// The pool object this line binds to.
    pub(super) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The pool's data block size in sectors.
    #[must_use]
    pub fn block_sectors(&self) -> u64 {
        self.pool.block
    }

    /// The data device.
    #[must_use]
    pub fn data(&self) -> &SharedVolume {
        &self.data
    }

    /// The metadata device.
    #[must_use]
    pub fn metadata_volume(&self) -> &SharedVolume {
        &self.pool.meta
    }

    /// The last committed metadata.
    #[must_use]
    pub fn metadata(&self) -> Metadata {
        self.pool.metadata()
    }

    /// Whether the pool runs read-only (`read_only` feature or needs_check set).
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.pool.read_only()
    }

    /// Commit the current transaction if anything changed.
    pub fn commit(&self) -> Result<()> {
        self.pool.commit()
    }

    /// The cache of checked metadata blocks lookups go through until the pool changes.
    #[must_use]
    pub fn metadata_cache(&self) -> &BlockCache {
        &self.pool.cache
    }

    /// Whether a transaction holds changes not yet committed (from the pool's first change
    /// to the next commit); reads look mappings up in the btree either way, and nothing
    /// loads every mapping.
    #[must_use]
    pub fn mappings_loaded(&self) -> bool {
        lock(&self.pool.state).tx.is_some()
    }
}

impl Pool {
    /// `pool_create`: open the metadata (formatting an all-zero superblock), refusing a
    /// block size other than the superblock's.
    fn open(
        args: &ThinPoolArgs,
        len: SectorCount,
        (meta, data_dev, data): (SharedVolume, SharedVolume, SharedVolume),
        clock: SharedClock,
        no_space_timeout: Duration,
    ) -> Result<Pool> {
        check_range(data.size(), Sector(0), len)?;
        let mdev = MetaDev::new(Arc::clone(&meta));
        if crate::volume::is_zero(&mdev.read_raw(0, "thin superblock")?) {
            // __open_or_format_metadata: an all-zero superblock means a new pool, which
            // only a writable pool may format (-EPERM otherwise).
            if args.features.read_only {
                return Err(Error::NotPermitted {
                    what: "thin-pool",
                    reason: "Error creating metadata object: the metadata superblock is all \
                             zeros and a read_only pool does not format it"
                        .into(),
                });
            }
            let block_size = u32::try_from(args.block_size)
                .map_err(|_| pool_error("Invalid block size".to_string()))?;
            format(
                &mdev,
                block_size,
                len.0 / args.block_size,
                METADATA_MAX_SECTORS / BLOCK_SECTORS,
            )
            .map_err(|e| pool_error(format!("Error creating metadata object: {e}")))?;
        }
        let md = Metadata::open(Arc::clone(&meta))
            .map_err(|e| pool_error(format!("Error creating metadata object: {e}")))?;
        let sb = md.superblock().clone();
        if u64::from(sb.data_block_size) != args.block_size {
            // __begin_transaction / dm_pool_metadata_open
            return Err(pool_error(format!(
                "Error creating metadata object: changing the data block size (from {} to {}) is not supported",
                sb.data_block_size, args.block_size
            )));
        }
        md.data_space_map()?;
        md.metadata_space_map()?;
        let details = md.devices()?;
        let mut devices = BTreeMap::new();
        let roots = md.device_roots()?;
        for &id in roots.keys() {
            let d = details.get(&id).copied().ok_or_else(|| {
                pool_error(format!("device {id} has a mapping tree but no details"))
            })?;
            let st = DevState {
                details: d,
                committed: Some(d),
            };
            devices.insert(id, Arc::new(RwLock::new(st)));
        }
        let cache = Arc::new(BlockCache::new(md.dev().clone(), POOL_CACHE_BLOCKS));
        let view = Arc::new(RwLock::new(View {
            open: false,
            roots,
            nr_data: sb.data_sm.nr_blocks,
        }));
        let state = PoolState {
            committed: md,
            view: Arc::clone(&view),
            tx: None,
            sb,
            devices,
            begin: 0,
            dirty: false,
            // pool_features_init: a new pool is in write mode until its control target
            // binds.
            mode: Mode::Write,
            low_water_triggered: false,
            error_if_no_space: args.features.error_if_no_space,
            out_of_space_since: Duration::ZERO,
        };
        Ok(Pool {
            meta,
            data_dev,
            block: args.block_size,
            control: RwLock::new(Control {
                data,
                len,
                features: args.features,
                low_water_blocks: args.low_water_blocks,
                events: TableEvents::new(),
                adjusted: Arc::new(Mutex::new(requested_mode(args))),
            }),
            state: Mutex::new(state),
            view,
            provision: Mutex::new(()),
            gate: Gate::default(),
            clock,
            no_space_timeout,
            queues: true,
            space: Stop::default(),
            cache,
        })
    }

    /// `pool_preresume`: take `ctl` as the control target (`bind_control_target`: its
    /// features, low water mark and mode), then `maybe_resize_data_dev`: a pool shorter
    /// than its data space map is refused, a longer one grows it and commits (unless the
    /// metadata needs checking or the pool is read-only).
    fn bind(&self, ctl: Control) -> Result<()> {
        let wanted = *lock(&ctl.adjusted);
        let blocks = ctl.len.0 / self.block;
        let error_if_no_space = ctl.features.error_if_no_space;
        *write(&self.control) = ctl;
        let _p = self.provisioning();
        {
            let mut st = lock(&self.state);
            st.error_if_no_space = error_if_no_space;
            self.set_mode(&mut st, wanted);
            let nr = st.sb.data_sm.nr_blocks;
            if blocks < nr {
                return Err(pool_error(format!(
                    "pool target ({blocks} blocks) too small: expected {nr}"
                )));
            }
            if blocks > nr && st.mode != Mode::ReadOnly && !st.sb.needs_check() {
                st.tx(&self.cache)?.extend_data(blocks);
                st.sb.data_sm.nr_blocks = blocks;
                st.dirty = true;
            }
        }
        // The kernel commits the resize at once; on metadata dmemu cannot write (a
        // read-only image) the pool works on and the commit is retried later.
        let _ = self.commit_unlocked();
        Ok(())
    }

    /// `set_pool_mode`: metadata that needs checking never returns to write mode; a change
    /// is a table event (`notify_of_pool_mode_change`) and the bound target's adjusted mode
    /// follows.
    fn set_mode(&self, st: &mut PoolState, wanted: Mode) {
        let old = st.mode;
        let mut new = wanted;
        if new == Mode::Write && st.sb.needs_check() {
            new = if old == Mode::Write {
                Mode::ReadOnly
            } else {
                old
            };
        }
        st.mode = new;
        let ctl = read(&self.control);
        *lock(&ctl.adjusted) = new;
        match new {
            Mode::OutOfDataSpace if old != new => {
                st.out_of_space_since = self.clock.now();
                self.space.lower();
            }
            Mode::OutOfDataSpace => {}
            Mode::Write => {
                st.error_if_no_space = ctl.features.error_if_no_space;
                self.space.raise(&*self.clock);
            }
            Mode::ReadOnly => self.space.raise(&*self.clock),
        }
        if old != new {
            ctl.events.raise();
        }
    }

    /// Whether a write that found no free block waits for space (`queue_if_no_space`)
    /// rather than failing.
    pub(super) fn queues_when_full(&self) -> bool {
        if !self.queues {
            return false;
        }
        let mut st = lock(&self.state);
        self.check_no_space_timeout(&mut st);
        st.mode == Mode::OutOfDataSpace && !st.error_if_no_space
    }

    /// `do_no_space_timeout`: a pool that has been out of data space for
    /// `no_space_timeout` in queue mode starts failing the writes (an event).
    fn check_no_space_timeout(&self, st: &mut PoolState) {
        if st.mode != Mode::OutOfDataSpace
            || st.error_if_no_space
            || self.no_space_timeout.is_zero()
            || self.clock.now() < st.out_of_space_since.saturating_add(self.no_space_timeout)
        {
            return;
        }
        st.error_if_no_space = true;
        read(&self.control).events.raise();
        self.space.raise(&*self.clock);
    }

    /// Wait (outside the pool's gate and locks) until a full pool has space again (the
    /// write is then retried) or its `no_space_timeout` passes (ENOSPC).
    pub(super) fn wait_for_space(&self) -> Result<()> {
        loop {
            let deadline = {
                let mut st = lock(&self.state);
                self.check_no_space_timeout(&mut st);
                if st.mode != Mode::OutOfDataSpace {
                    return Ok(());
                }
                if st.error_if_no_space {
                    return Err(Error::NoSpace {
                        target: "thin-pool",
                    });
                }
                if self.no_space_timeout.is_zero() {
                    Duration::MAX
                } else {
                    st.out_of_space_since.saturating_add(self.no_space_timeout)
                }
            };
            self.clock.sleep_until_or(deadline, &self.space);
        }
    }

    /// The data area of the bound control target (`pool_map` remaps there).
    pub(super) fn data(&self) -> SharedVolume {
        Arc::clone(&read(&self.control).data)
    }

    /// The data block size in sectors.
    pub(super) fn block_sectors(&self) -> u64 {
        self.block
    }

    /// Wait while the pool device is suspended; the request counts as in flight until
    /// the returned value drops.
    pub(super) fn enter(&self) -> Passage<'_> {
        self.gate.enter()
    }

    /// The last committed metadata.
    fn metadata(&self) -> Metadata {
        lock(&self.state).committed.clone()
    }

    /// Whether new blocks are zeroed before a partial write (no `skip_block_zeroing`).
    pub(super) fn zeroing(&self) -> bool {
        !read(&self.control).features.skip_block_zeroing
    }

    /// Whether the pool runs read-only (the `read_only` feature, or metadata that needs
    /// checking).
    pub(super) fn read_only(&self) -> bool {
        lock(&self.state).mode == Mode::ReadOnly
    }

    /// The pool's current time (mappings written now carry it).
    pub(super) fn time(&self) -> u32 {
        lock(&self.state).sb.time
    }

    /// A device's shared state (`dm_pool_open_thin_device`).
    pub(super) fn open_device(&self, dev_id: u64) -> Result<Dev> {
        lock(&self.state)
            .devices
            .get(&dev_id)
            .cloned()
            .ok_or_else(|| {
                Error::invalid(
                    "thin",
                    format!("Couldn't open thin internal device: device {dev_id} does not exist"),
                )
            })
    }

    /// The mapping of `vblock` in device `id` (`dm_thin_find_block`): from the open
    /// transaction's tree, else the committed tree, through the block cache with the checks
    /// a walk makes. The pool's state is held across the lookup, so no commit replaces the
    /// tree under it.
    pub(super) fn lookup(&self, id: u64, vblock: u64) -> Result<Option<BlockTime>> {
        {
            let v = read(&self.view);
            if !v.open {
                return self.lookup_committed(&v, id, vblock);
            }
        }
        let st = lock(&self.state);
        let Some(tx) = &st.tx else {
            // Committed since: the new trees, still under the state's lock.
            return self.lookup_committed(&read(&st.view), id, vblock);
        };
        let nr_data = tx.data_blocks();
        match tx.find_block(id, vblock)? {
            Some(bt) if bt.block >= nr_data => Err(beyond(vblock, bt, nr_data, None)),
            found => Ok(found),
        }
    }

    /// `lookup` in the committed trees `v` names.
    fn lookup_committed(&self, v: &View, id: u64, vblock: u64) -> Result<Option<BlockTime>> {
        let Some(&root) = v.roots.get(&id) else {
            return Ok(None);
        };
        let Some(f) = lookup_cached(&self.cache, root, vblock, 8)? else {
            return Ok(None);
        };
        let bt = BlockTime::unpack(le64(f.value(8), 0));
        if bt.block >= v.nr_data {
            return Err(beyond(vblock, bt, v.nr_data, Some(f.at())));
        }
        Ok(Some(bt))
    }

    /// The highest mapped virtual block of device `id` (`dm_thin_get_highest_mapped_block`).
    pub(super) fn highest(&self, id: u64) -> Result<Option<u64>> {
        let st = lock(&self.state);
        match &st.tx {
            Some(tx) => tx.highest_block(id),
            None => match read(&st.view).roots.get(&id) {
                Some(&root) => highest_key_cached(&self.cache, root, 8),
                None => Ok(None),
            },
        }
    }

    /// Serialise provisioning.
    pub(super) fn provisioning(&self) -> MutexGuard<'_, ()> {
        lock(&self.provision)
    }

    /// Allocate a data block (`alloc_data_block` → `sm_disk_new_block`): the first block
    /// from `begin` on, then from 0, that neither the committed metadata nor the current
    /// mappings use. Callers hold `provisioning()`. The low water mark is checked first
    /// (one event when the free count is at or below it). When nothing is free the pool
    /// commits (blocks freed in this transaction become usable) and otherwise enters
    /// out-of-data-space mode (ENOSPC).
    pub(super) fn alloc_data_block(&self) -> Result<u64> {
        self.check_low_water_mark();
        if let Some(b) = self.try_alloc()? {
            return Ok(b);
        }
        self.commit_unlocked()?;
        if let Some(b) = self.try_alloc()? {
            return Ok(b);
        }
        let mut st = lock(&self.state);
        self.set_mode(&mut st, Mode::OutOfDataSpace);
        Err(Error::NoSpace {
            target: "thin-pool",
        })
    }

    /// `check_low_water_mark`: the first allocation that finds no more free blocks than
    /// the low water mark raises one event; the next resume re-arms it.
    fn check_low_water_mark(&self) {
        let mut st = lock(&self.state);
        if st.low_water_triggered {
            return;
        }
        let ctl = read(&self.control);
        if st.nr_free() <= ctl.low_water_blocks {
            st.low_water_triggered = true;
            ctl.events.raise();
        }
    }

    /// `check_for_data_space`, after a commit: a pool out of data space that has free
    /// blocks again returns to write mode.
    fn check_for_data_space(&self, st: &mut PoolState) {
        if st.mode == Mode::OutOfDataSpace && st.nr_free() > 0 {
            self.set_mode(st, Mode::Write);
        }
    }

    fn try_alloc(&self) -> Result<Option<u64>> {
        let mut st = lock(&self.state);
        let b = st.tx(&self.cache)?.alloc_data()?;
        if b.is_some() {
            st.dirty = true;
        }
        Ok(b)
    }

    /// Map `vblock` of `dev` (device `id`) to the freshly allocated `block` (its count
    /// already taken); a block it mapped before loses this device's reference.
    pub(super) fn remap(
        &self,
        id: u64,
        dev: &Dev,
        vblock: u64,
        block: u64,
        time: u32,
    ) -> Result<()> {
        let mut st = lock(&self.state);
        let old = st
            .tx(&self.cache)?
            .insert_block(id, vblock, BlockTime { block, time })?;
        st.dirty = true;
        if old.is_none() {
            let mut d = write(dev);
            d.details.mapped_blocks = d.details.mapped_blocks.wrapping_add(1);
        }
        Ok(())
    }

    /// Unmap `vblock` of `dev` (device `id`; `dm_thin_remove_range` for one block): the
    /// data block it named when nothing references it any more (to pass the discard down),
    /// else `None`.
    pub(super) fn unmap(&self, id: u64, dev: &Dev, vblock: u64) -> Result<Option<u64>> {
        // Nothing to unmap changes nothing: no transaction begins for it.
        if self.lookup(id, vblock)?.is_none() {
            return Ok(None);
        }
        let mut st = lock(&self.state);
        let tx = st.tx(&self.cache)?;
        let Some(old) = tx.remove_block(id, vblock)? else {
            return Ok(None);
        };
        let freed = tx.data_count(old.block)? == 0;
        st.dirty = true;
        let mut d = write(dev);
        d.details.mapped_blocks = d.details.mapped_blocks.saturating_sub(1);
        Ok(freed.then_some(old.block))
    }

    /// Whether discards reach the pool (`ignore_discard` turns them off) and are passed
    /// down to the data device (`no_discard_passdown`).
    pub(super) fn discards(&self) -> (bool, bool) {
        let f = read(&self.control).features;
        (
            !f.ignore_discard,
            !f.ignore_discard && !f.no_discard_passdown,
        )
    }

    /// Give back a block `alloc_data_block` handed out when the write then failed.
    pub(super) fn release_data_block(&self, block: u64) {
        if let Some(tx) = lock(&self.state).tx.as_mut() {
            let _ = tx.dec_data(block);
        }
    }

    /// Commit the current transaction if anything changed (`commit` →
    /// `dm_pool_commit_metadata`): data device flushed first, then the new metadata blocks,
    /// flush, superblock, flush.
    pub(super) fn commit(&self) -> Result<()> {
        let _p = self.provisioning();
        self.commit_unlocked()
    }

    /// `commit` for callers already holding `provisioning()`. The transaction is
    /// committed from a copy, so a failed write leaves it whole for the next try.
    fn commit_unlocked(&self) -> Result<()> {
        let mut st = lock(&self.state);
        if !st.dirty {
            return Ok(());
        }
        self.data().flush()?;
        // A change of the superblock's fields alone (set_transaction_id) commits too.
        let mut tx = st.tx(&self.cache)?.clone();
        // __write_changed_details.
        for (&id, dev) in &st.devices {
            let d = read(dev);
            if d.committed != Some(d.details) {
                tx.set_details(id, &d.details)?;
            }
        }
        tx.sb.time = st.sb.time;
        tx.sb.transaction_id = st.sb.transaction_id;
        tx.sb.held_root = st.sb.held_root;
        // smd->begin is not reset by a commit: allocation goes on after the last block
        // (the kernel fixture shows blocks freed by a delete skipped until the search wraps).
        let begin = tx.data_cursor();
        let (_, _written) = tx.commit()?;
        let md = Metadata::open(Arc::clone(&self.meta))?;
        let roots = md.device_roots()?;
        *write(&st.view) = View {
            open: false,
            roots,
            nr_data: md.superblock().data_sm.nr_blocks,
        };
        for dev in st.devices.values() {
            let mut d = write(dev);
            d.committed = Some(d.details);
        }
        st.sb = md.superblock().clone();
        st.committed = md;
        st.tx = None;
        st.begin = begin;
        st.dirty = false;
        self.check_for_data_space(&mut st);
        Ok(())
    }

    /// `calc_metadata_threshold`: a quarter of the metadata device, at most 1024 blocks.
    fn metadata_threshold(&self) -> u64 {
        let blocks = self.meta.size().0.min(METADATA_MAX_SECTORS) / BLOCK_SECTORS;
        (blocks / 4).min(1024)
    }

    fn error_if_no_space(&self) -> bool {
        let mut st = lock(&self.state);
        self.check_no_space_timeout(&mut st);
        st.error_if_no_space
    }

    fn status_line(&self) -> Result<String> {
        // pool_status commits first unless the device is suspended or noflush is asked,
        // and ignores a failed commit (`(void) commit(pool)`).
        let _ = self.commit();
        let md = self.metadata();
        let sb = md.superblock();
        let msm = md.metadata_space_map()?;
        let dsm = md.data_space_map()?;
        let f = read(&self.control).features;
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
        s += match lock(&self.state).mode {
            Mode::OutOfDataSpace => "out_of_data_space ",
            Mode::ReadOnly => "ro ",
            Mode::Write => "rw ",
        };
        s += if f.ignore_discard {
            "ignore_discard "
        } else if f.no_discard_passdown {
            "no_discard_passdown "
        } else {
            "discard_passdown "
        };
        s += if self.error_if_no_space() {
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

    fn process_message(&self, argv: &[&str]) -> Result<()> {
        let count = |n: usize| {
            if argv.len() == n {
                Ok(())
            } else {
                Err(pool_error(format!(
                    "Message received with {} arguments instead of {n}.",
                    argv.len()
                )))
            }
        };
        let dev_id = |t: &str| {
            parse_kstrtoull(t)
                .filter(|&id| id <= MAX_DEV_ID)
                .ok_or_else(|| pool_error(format!("Message received with invalid device id: {t}")))
        };
        let given = argv.first().copied().unwrap_or("");
        let word = given.to_ascii_lowercase();
        let mut st = lock(&self.state);
        let cache = Arc::clone(&self.cache);
        match word.as_str() {
            "create_thin" => {
                count(2)?;
                let id = dev_id(argv[1])?;
                if st.devices.contains_key(&id) {
                    return Err(pool_errno(
                        format!(
                            "Creation of new thinly-provisioned device with id {} failed.",
                            argv[1]
                        ),
                        EEXIST,
                    ));
                }
                let details = DeviceDetails {
                    mapped_blocks: 0,
                    transaction_id: st.sb.transaction_id,
                    creation_time: st.sb.time,
                    snapshotted_time: st.sb.time,
                };
                st.tx(&cache)?.create_thin(id)?;
                st.devices.insert(
                    id,
                    Arc::new(RwLock::new(DevState {
                        details,
                        committed: None,
                    })),
                );
            }
            "create_snap" => {
                count(3)?;
                let id = dev_id(argv[1])?;
                let origin_id = dev_id(argv[2])?;
                let failed = |errno| {
                    pool_errno(
                        format!(
                            "Creation of new snapshot {} of device {} failed.",
                            argv[1], argv[2]
                        ),
                        errno,
                    )
                };
                if st.devices.contains_key(&id) {
                    return Err(failed(EEXIST));
                }
                let origin = st
                    .devices
                    .get(&origin_id)
                    .cloned()
                    .ok_or_else(|| failed(ENODATA))?;
                // __create_snap: time++, then the snapshot and its origin both record it;
                // the snapshot shares the origin's mapping tree.
                st.tx(&cache)?.create_snap(id, origin_id)?;
                st.sb.time = st.sb.time.wrapping_add(1);
                let time = st.sb.time;
                let mut o = write(&origin);
                o.details.snapshotted_time = time;
                let snap = DevState {
                    details: DeviceDetails {
                        mapped_blocks: o.details.mapped_blocks,
                        transaction_id: st.sb.transaction_id,
                        creation_time: time,
                        snapshotted_time: time,
                    },
                    committed: None,
                };
                drop(o);
                st.devices.insert(id, Arc::new(RwLock::new(snap)));
            }
            "delete" => {
                count(2)?;
                let id = dev_id(argv[1])?;
                let what = format!("Deletion of thin device {} failed.", argv[1]);
                // __delete_device's errno reaches dmsetup: -ENODATA for a device the pool
                // does not have (__open_device), -EBUSY while a thin target has it open
                // (the pool's map and `dev` are the two expected holders); 6.12 fixture
                // tests/fixtures/dmsetup/kernel-6.12-workflows.txt.
                let dev = st.devices.get(&id).cloned().ok_or_else(|| Error::Io {
                    device: what.clone(),
                    source: std::io::Error::from_raw_os_error(61), // ENODATA
                })?;
                if Arc::strong_count(&dev) > 2 {
                    return Err(Error::Busy {
                        what,
                        reason: "the thin device is open".to_string(),
                    });
                }
                st.tx(&cache)?.delete_device(id)?;
                st.devices.remove(&id);
            }
            "set_transaction_id" => {
                count(3)?;
                let old = parse_kstrtoull(argv[1]).ok_or_else(|| {
                    pool_error(format!(
                        "set_transaction_id message: Unrecognised id {}.",
                        argv[1]
                    ))
                })?;
                let new = parse_kstrtoull(argv[2]).ok_or_else(|| {
                    pool_error(format!(
                        "set_transaction_id message: Unrecognised new id {}.",
                        argv[2]
                    ))
                })?;
                if st.sb.transaction_id != old {
                    return Err(pool_error(format!(
                        "set_transaction_id message: mismatched transaction id: current {}, given {old}",
                        st.sb.transaction_id
                    )));
                }
                st.sb.transaction_id = new;
            }
            "release_metadata_snap" => {
                count(1)?;
                // __release_metadata_snap: the held copy's trees lose their reference.
                if st.sb.held_root == 0 {
                    return Err(pool_error(
                        "No pool metadata snapshot found: nothing to release.".to_string(),
                    ));
                }
                st.tx(&cache)?.release_metadata_snap()?;
                st.sb.held_root = 0;
            }
            "reserve_metadata_snap" => {
                count(1)?;
                // __reserve_metadata_snap, on metadata just committed (pool_message's
                // process_reserve_metadata_snap_mesg commits first): a copy of the
                // superblock with its space map roots wiped, in a free block; the next
                // commit keeps what it reaches.
                if st.sb.held_root != 0 {
                    return Err(pool_error(
                        "Pool metadata snapshot already exists: release this before taking another."
                            .to_string(),
                    ));
                }
                let committed = st.committed.superblock().clone();
                let block = st.tx(&cache)?.reserve_metadata_snap(&committed)?;
                st.sb.held_root = block;
            }
            _ => {
                return Err(pool_error(format!(
                    "Unrecognised thin pool target message received: {given}"
                )))
            }
        }
        st.dirty = true;
        Ok(())
    }
}

impl Pool {
    /// A REQ_PREFLUSH to the pool or a thin device commits, as the kernel does.
    pub(super) fn flush(&self) -> Result<()> {
        self.commit()?;
        self.data().flush()?;
        self.meta.flush()
    }
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
        self.pool.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.len, sector, count)?;
        self.data.discard(sector, count)
    }
}

impl Target for ThinPool {
    /// `pool_status(STATUSTYPE_INFO)` as 6.12 prints it, after a commit as the kernel does.
    fn status(&self) -> String {
        self.pool
            .status_line()
            .unwrap_or_else(|_| "Fail".to_string())
    }

    /// `pool_message`: create_thin, create_snap, delete, set_transaction_id; commits after
    /// each one that succeeds.
    fn message(&self, argv: &[&str]) -> Result<String> {
        let pool = &self.pool;
        if pool.read_only() {
            return Err(Error::Unsupported {
                target: "thin-pool",
                op: "messages in READ_ONLY or FAIL mode",
            });
        }
        if argv
            .first()
            .is_some_and(|w| w.eq_ignore_ascii_case("reserve_metadata_snap"))
        {
            pool.commit()?;
        }
        pool.process_message(argv)?;
        pool.commit()?;
        Ok(String::new())
    }

    /// `pool_presuspend`: thin I/O waits from now on, and what is in flight finishes.
    fn presuspend(&self) {
        self.pool.gate.close();
    }

    /// `pool_postsuspend`: the metadata is committed once no I/O is in flight.
    fn postsuspend(&self) -> Result<()> {
        if self.pool.read_only() {
            return Ok(());
        }
        self.pool.commit()
    }

    /// `pool_preresume`: this line becomes the pool's control target; the data space map
    /// grows to the line's length (or a shorter line is refused).
    fn preresume(&self) -> Result<()> {
        self.pool.bind(self.control())
    }

    /// `pool_resume`: the low water mark is re-armed and thin I/O flows again.
    fn resume(&self) {
        lock(&self.pool.state).low_water_triggered = false;
        self.pool.gate.open();
    }

    fn table_spec(&self) -> Option<TargetSpec> {
        Some(TargetSpec::ThinPool(self.args.clone()))
    }
}

impl Drop for Pool {
    /// The kernel commits when the pool is suspended or destroyed (`pool_postsuspend`,
    /// `__pool_destroy`); errors cannot be reported from here.
    fn drop(&mut self) {
        let _ = self.commit();
    }
}
