//! `MappedDevice`: a device-mapper device as dm.c keeps one: a name, an optional uuid, a
//! device number, a live table slot and an inactive one, the suspended state, an open count
//! and an event counter. It is itself a `Volume`: I/O goes to the live table, waits while the
//! device is suspended, and fails once the device is removed. The operations on it that
//! dm-ioctl offers go through the `Registry`, which owns the names.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::table::{Table, TableMode};
use crate::targets::context::EventCounter;
use crate::targets::{Keys, Target};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, Extent, TagProfile, Unmap, Volume};

pub mod table;

pub use table::{LoadedTable, Segment};

/// The major number dmemu's mapped devices carry (the kernel's is dynamic; 253 is what most
/// distributions end up with and what `dmsetup` users expect to see).
pub const DM_MAJOR: u32 = 253;

/// How a suspend treats I/O (dm-ioctl's `DM_NOFLUSH_FLAG`, `DM_SKIP_LOCKFS_FLAG`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuspendFlags {
    /// `--noflush`: in the kernel, I/O a target would requeue stays queued instead of being
    /// completed. dmemu's I/O is synchronous, so in-flight requests still finish; the flag is
    /// accepted and recorded.
    pub noflush: bool,
    /// `--nolockfs`: do not freeze a file system on the device (dmemu has none to freeze).
    pub nolockfs: bool,
}

/// Whether a device takes I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// I/O flows (`ACTIVE`).
    Active,
    /// I/O waits for resume (`SUSPENDED`).
    Suspended,
}

/// What `DM_DEV_STATUS` reports (`dmsetup info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name.
    pub name: String,
    /// Device uuid, if set.
    pub uuid: Option<String>,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Active or suspended.
    pub state: DeviceState,
    /// The live table is read-only.
    pub read_only: bool,
    /// A live table is present.
    pub live_table: bool,
    /// An inactive table is loaded.
    pub inactive_table: bool,
    /// Opens: users plus tables that use the device.
    pub open_count: u32,
    /// The event counter.
    pub event_nr: u32,
    /// Lines in the live table (0 without one).
    pub target_count: usize,
    /// A deferred remove is pending.
    pub deferred_remove: bool,
}

/// A mapped device.
pub struct MappedDevice {
    minor: u32,
    name: RwLock<String>,
    uuid: RwLock<Option<String>>,
    /// The live table. I/O holds the read lock while in flight (the kernel's SRCU read
    /// section); suspend takes the write lock once to wait until in-flight I/O has drained,
    /// and resume swaps the table under it.
    live: RwLock<Option<Arc<LoadedTable>>>,
    inactive: Mutex<Option<Arc<LoadedTable>>>,
    /// Set while suspended (and once removed); read under `live`'s read lock.
    blocked: AtomicBool,
    /// Guards `blocked` changes so waiters cannot miss a wake-up.
    gate: Mutex<()>,
    unblocked: Condvar,
    /// Serialises suspend, resume and table swaps (`md->suspend_lock`).
    suspend_lock: Mutex<()>,
    suspended: AtomicBool,
    removed: AtomicBool,
    deferred_remove: AtomicBool,
    opens: AtomicU32,
    events: Arc<EventCounter>,
    /// The immutable target type of the live table (`md->immutable_target_type`).
    immutable_type: Mutex<Option<String>>,
    /// A table load has set the device up (`md->type` is no longer `DM_TYPE_NONE`): until
    /// then a load checks the table's device areas itself (`dm_setup_md_queue`).
    set_up: AtomicBool,
}

impl fmt::Debug for MappedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedDevice")
            .field("name", &self.name())
            .field("minor", &self.minor)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A hold on a device's open count, released on drop (a user's open, or a table that uses
/// the device).
#[derive(Debug)]
pub struct OpenGuard(Arc<MappedDevice>);

impl OpenGuard {
    /// The device held open.
    #[must_use]
    pub fn device(&self) -> &Arc<MappedDevice> {
        &self.0
    }
}

impl std::ops::Deref for OpenGuard {
    type Target = MappedDevice;
    fn deref(&self) -> &MappedDevice {
        &self.0
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.opens.fetch_sub(1, Ordering::AcqRel);
    }
}

impl MappedDevice {
    /// A new device with no table (`dm_create` + `dm_hash_insert`; the registry checks the
    /// name and uuid).
    #[must_use]
    pub fn new(name: &str, uuid: Option<String>, minor: u32) -> MappedDevice {
        MappedDevice {
            minor,
            name: RwLock::new(name.to_string()),
            uuid: RwLock::new(uuid),
            live: RwLock::new(None),
            inactive: Mutex::new(None),
            blocked: AtomicBool::new(false),
            gate: Mutex::new(()),
            unblocked: Condvar::new(),
            suspend_lock: Mutex::new(()),
            suspended: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            deferred_remove: AtomicBool::new(false),
            opens: AtomicU32::new(0),
            events: Arc::new(EventCounter::default()),
            immutable_type: Mutex::new(None),
            set_up: AtomicBool::new(false),
        }
    }

    /// The device name.
    #[must_use]
    pub fn name(&self) -> String {
        self.name
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_name(&self, name: &str) {
        *self.name.write().unwrap_or_else(PoisonError::into_inner) = name.to_string();
    }

    /// The device uuid, if set.
    #[must_use]
    pub fn uuid(&self) -> Option<String> {
        self.uuid
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_uuid(&self, uuid: &str) {
        *self.uuid.write().unwrap_or_else(PoisonError::into_inner) = Some(uuid.to_string());
    }

    /// `major:minor`.
    #[must_use]
    pub fn dev(&self) -> (u32, u32) {
        (DM_MAJOR, self.minor)
    }

    /// The event counter (`dm_get_event_nr`, `dm_wait_event`).
    #[must_use]
    pub fn events(&self) -> &Arc<EventCounter> {
        &self.events
    }

    /// Count one event and wake waiters (what `dm_table_event` on the live table does).
    pub fn raise_event(&self) {
        if self.live_table().is_some() {
            self.events.bump();
        }
    }

    /// Hold the device open (`dm_blk_open`); fails once it is removed (ENXIO).
    pub fn open(self: &Arc<Self>) -> Result<OpenGuard> {
        if self.removed.load(Ordering::Acquire) {
            return Err(Error::NoSuchDevice(self.name()));
        }
        self.opens.fetch_add(1, Ordering::AcqRel);
        Ok(OpenGuard(Arc::clone(self)))
    }

    /// Opens: users plus tables using the device.
    #[must_use]
    pub fn open_count(&self) -> u32 {
        self.opens.load(Ordering::Acquire)
    }

    /// Whether the device is suspended.
    #[must_use]
    pub fn is_suspended(&self) -> bool {
        self.suspended.load(Ordering::Acquire)
    }

    /// Whether the device has been removed.
    #[must_use]
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// The live table, if any.
    #[must_use]
    pub fn live_table(&self) -> Option<Arc<LoadedTable>> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The inactive table, if one is loaded.
    #[must_use]
    pub fn inactive_table(&self) -> Option<Arc<LoadedTable>> {
        lock(&self.inactive).clone()
    }

    /// Which table an operation reads.
    fn table_of(&self, which: Slot) -> Option<Arc<LoadedTable>> {
        match which {
            Slot::Live => self.live_table(),
            Slot::Inactive => self.inactive_table(),
        }
    }

    /// `DM_DEV_STATUS`.
    #[must_use]
    pub fn info(&self) -> DeviceInfo {
        let live = self.live_table();
        DeviceInfo {
            name: self.name(),
            uuid: self.uuid(),
            major: DM_MAJOR,
            minor: self.minor,
            state: if self.is_suspended() {
                DeviceState::Suspended
            } else {
                DeviceState::Active
            },
            read_only: live
                .as_ref()
                .is_some_and(|t| t.mode() == TableMode::ReadOnly),
            live_table: live.is_some(),
            inactive_table: self.inactive_table().is_some(),
            open_count: self.open_count(),
            event_nr: self.events.get(),
            target_count: live.as_ref().map_or(0, |t| t.segments().len()),
            deferred_remove: self.deferred_remove.load(Ordering::Acquire),
        }
    }

    /// The table text of the live or inactive table (`DM_TABLE_STATUS` with
    /// `STATUSTYPE_TABLE`); empty without one.
    #[must_use]
    pub fn table_text_of(&self, which: Slot, keys: Keys) -> String {
        self.table_of(which)
            .map(|t| t.table_text(keys))
            .unwrap_or_default()
    }

    /// The status lines of the live or inactive table (`STATUSTYPE_INFO`).
    #[must_use]
    pub fn status_text_of(&self, which: Slot) -> String {
        self.table_of(which)
            .map(|t| t.status_text())
            .unwrap_or_default()
    }

    /// `dmsetup table` of the live table.
    #[must_use]
    pub fn table_text(&self, keys: Keys) -> String {
        self.table_text_of(Slot::Live, keys)
    }

    /// `dmsetup status` of the live table.
    #[must_use]
    pub fn status_text(&self) -> String {
        self.status_text_of(Slot::Live)
    }

    /// The live table's text form (an empty table without one).
    #[must_use]
    pub fn table(&self) -> Table {
        self.live_table()
            .map(|t| t.current_table())
            .unwrap_or(Table { lines: Vec::new() })
    }

    /// The unit the live table must be addressed in, in bytes: the largest a line requires
    /// (a crypt sector size, a verity data block), 512 otherwise.
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.table()
            .lines
            .iter()
            .map(|l| match &l.spec {
                crate::targets::TargetSpec::Crypt(c) => c.options.sector_size,
                crate::targets::TargetSpec::Verity(v) => v.data_block_size,
                _ => 512,
            })
            .max()
            .unwrap_or(512)
    }

    /// `DM_TARGET_MSG`: messages starting with `@` are for dm core (`message_for_md`:
    /// `@cancel_deferred_remove`); the rest go to the live table's target covering `sector`.
    pub fn message(&self, sector: Sector, argv: &[&str]) -> Result<String> {
        if let Some(first) = argv.first().filter(|w| w.starts_with('@')) {
            if first.eq_ignore_ascii_case("@cancel_deferred_remove") {
                if argv.len() != 1 {
                    return Err(Error::invalid(
                        "message",
                        "Invalid arguments for @cancel_deferred_remove",
                    ));
                }
                self.set_deferred_remove(false);
                return Ok(String::new());
            }
            return Err(Error::invalid(
                "message",
                format!("Unsupported message sent to DM core: {first}"),
            ));
        }
        if argv.is_empty() {
            return Err(Error::invalid("message", "Empty message received."));
        }
        let t = self
            .live_table()
            .ok_or_else(|| Error::invalid("message", "The device has no table."))?;
        t.message(sector, argv)
    }

    /// Whether a deferred remove is pending.
    #[must_use]
    pub fn deferred_remove(&self) -> bool {
        self.deferred_remove.load(Ordering::Acquire)
    }

    /// The single target of a one-line live table.
    pub fn single_target(&self) -> Result<Arc<dyn Target>> {
        let name = self.name();
        let t = self
            .live_table()
            .ok_or_else(|| Error::invalid("device", format!("{name} has no live table")))?;
        match t.segments() {
            [seg] => Ok(Arc::clone(&seg.target)),
            _ => Err(Error::invalid(
                "device",
                format!("{name} must have exactly one target"),
            )),
        }
    }

    /// The live table's immutable target type, if it has one.
    #[must_use]
    pub fn immutable_type(&self) -> Option<String> {
        lock(&self.immutable_type).clone()
    }

    /// Whether a load has set the device up (`md->type` set by the first good load).
    pub(crate) fn is_set_up(&self) -> bool {
        self.set_up.load(Ordering::Acquire)
    }

    /// Record that a load set the device up; it stays so for the device's life.
    pub(crate) fn mark_set_up(&self) {
        self.set_up.store(true, Ordering::Release);
    }

    /// Put `table` in the inactive slot (`table_load`), returning the table it replaces
    /// (destroyed by the caller, outside every lock).
    pub(crate) fn set_inactive(&self, table: Arc<LoadedTable>) -> Option<Arc<LoadedTable>> {
        lock(&self.inactive).replace(table)
    }

    /// Drop the inactive table (`table_clear`), returning it.
    pub(crate) fn take_inactive(&self) -> Option<Arc<LoadedTable>> {
        lock(&self.inactive).take()
    }

    fn block_io(&self) {
        let _g = lock(&self.gate);
        self.blocked.store(true, Ordering::SeqCst);
    }

    fn unblock_io(&self) {
        let _g = lock(&self.gate);
        self.blocked.store(false, Ordering::SeqCst);
        self.unblocked.notify_all();
    }

    /// Wait until in-flight I/O (holders of `live`'s read lock) has finished.
    fn drain(&self) {
        drop(self.live.write().unwrap_or_else(PoisonError::into_inner));
    }

    /// `dm_suspend`: block new I/O, presuspend the targets (delay releases what it holds),
    /// wait for in-flight I/O, postsuspend the targets (thin-pool commits). Suspending a
    /// suspended device does nothing, as `do_suspend` does. A postsuspend error is returned;
    /// the device stays suspended.
    pub fn suspend(&self, flags: SuspendFlags) -> Result<()> {
        let _s = lock(&self.suspend_lock);
        self.suspend_locked(flags)
    }

    fn suspend_locked(&self, flags: SuspendFlags) -> Result<()> {
        let _ = flags;
        if self.is_suspended() {
            return Ok(());
        }
        self.block_io();
        let live = self.live_table();
        if let Some(t) = &live {
            t.presuspend();
        }
        self.drain();
        self.suspended.store(true, Ordering::Release);
        match &live {
            Some(t) => t.postsuspend(),
            None => Ok(()),
        }
    }

    /// `do_resume`: with an inactive table, suspend if needed, make it live (the old table is
    /// destroyed after the new one is live) and resume; without one, resume a suspended
    /// device. A preresume failure leaves the device suspended (with the new table live, as
    /// in the kernel). Returns whether a new table went live.
    pub fn resume(&self) -> Result<bool> {
        let _s = lock(&self.suspend_lock);
        let new = lock(&self.inactive).take();
        let swapped = new.is_some();
        let mut old = None;
        if let Some(new) = new {
            if let Err(e) = self.suspend_locked(SuspendFlags::default()) {
                // The suspend stands; keep the new table loaded for the next resume.
                lock(&self.inactive).get_or_insert(new);
                return Err(e);
            }
            // `dm_swap_table` refuses a table whose ranges do not fit their devices; the
            // inactive table is gone and the device stays suspended, as in the kernel.
            new.check_fit()?;
            old = self.swap_live(new);
        }
        if let Some(t) = &old {
            t.events().unbind();
        }
        let r = self.resume_locked();
        drop(old);
        r.map(|()| swapped)
    }

    /// `__bind`: make `new` the live table, returning the old one.
    fn swap_live(&self, new: Arc<LoadedTable>) -> Option<Arc<LoadedTable>> {
        new.events().bind(Arc::clone(&self.events));
        *lock(&self.immutable_type) = new.immutable_type().map(str::to_string);
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        live.replace(new)
    }

    fn resume_locked(&self) -> Result<()> {
        if !self.is_suspended() {
            return Ok(());
        }
        if let Some(t) = self.live_table() {
            t.resume()?;
        }
        self.suspended.store(false, Ordering::Release);
        self.unblock_io();
        Ok(())
    }

    /// `__dm_destroy` for a removed device: suspend the live table's targets if it was not
    /// suspended (thin-pool commits), drop both tables, and fail every waiting and later
    /// request with ENXIO. Returns the tables for the caller to drop outside its locks.
    pub(crate) fn destroy(&self) -> (Option<Arc<LoadedTable>>, Option<Arc<LoadedTable>>) {
        let _s = lock(&self.suspend_lock);
        let _ = self.suspend_locked(SuspendFlags::default());
        self.removed.store(true, Ordering::Release);
        let live = self
            .live
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = &live {
            t.events().unbind();
        }
        let inactive = lock(&self.inactive).take();
        // Wake requests waiting for a resume that will not come.
        self.unblock_io();
        (live, inactive)
    }

    pub(crate) fn set_deferred_remove(&self, on: bool) {
        self.deferred_remove.store(on, Ordering::Release);
    }

    /// Run `op` on the live table, waiting while the device is suspended. The read lock
    /// held across `op` is what `suspend` drains; one request sees one table. The fast path
    /// (not suspended, a table loaded) is the lock and two tests around `op`, inline;
    /// waiting and the no-table error are out of line.
    #[inline]
    fn with_live<R>(&self, op: impl FnOnce(&LoadedTable) -> Result<R>) -> Result<R> {
        let g = self.live.read().unwrap_or_else(PoisonError::into_inner);
        if let (false, Some(t)) = (self.blocked.load(Ordering::SeqCst), g.as_deref()) {
            return op(t);
        }
        drop(g);
        self.with_live_waiting(op)
    }

    #[cold]
    #[inline(never)]
    fn with_live_waiting<R>(&self, op: impl FnOnce(&LoadedTable) -> Result<R>) -> Result<R> {
        let g = self.enter_slow()?;
        match g.as_deref() {
            Some(t) => op(t),
            None => Err(self.no_table()),
        }
    }

    #[cold]
    #[inline(never)]
    fn read_waiting(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        self.with_live_waiting(|t| t.read(sector, buf))
    }

    #[cold]
    #[inline(never)]
    fn enter_slow(&self) -> Result<RwLockReadGuard<'_, Option<Arc<LoadedTable>>>> {
        loop {
            let g = self.live.read().unwrap_or_else(PoisonError::into_inner);
            if !self.blocked.load(Ordering::SeqCst) {
                return match *g {
                    Some(_) => Ok(g),
                    None => Err(self.no_table()),
                };
            }
            drop(g);
            self.wait_unblocked()?;
        }
    }

    #[cold]
    fn no_table(&self) -> Error {
        Error::TargetFailed {
            target: "device-mapper",
            reason: format!("{}: no table loaded", self.name()),
        }
    }

    fn wait_unblocked(&self) -> Result<()> {
        let mut g = lock(&self.gate);
        loop {
            if self.removed.load(Ordering::Acquire) {
                return Err(Error::NoSuchDevice(self.name()));
            }
            if !self.blocked.load(Ordering::SeqCst) {
                return Ok(());
            }
            g = self
                .unblocked
                .wait(g)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn writable(&self, t: &LoadedTable) -> Result<()> {
        match t.mode() {
            TableMode::ReadWrite => Ok(()),
            TableMode::ReadOnly => Err(Error::ReadOnly {
                target: self.name(),
            }),
        }
    }
}

/// The live or the inactive table slot (`dmsetup table --inactive`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// The live table.
    Live,
    /// The inactive table.
    Inactive,
}

impl Volume for MappedDevice {
    /// The live table's size (0 without one), as the kernel's capacity.
    fn size(&self) -> SectorCount {
        self.live_table().map_or(SectorCount(0), |t| t.size())
    }

    /// `with_live`'s gate spelled out for the hottest request: the slow path then takes
    /// the arguments in registers instead of a closure built before the lock (measured:
    /// 20 instructions a read, benches/read_path_vs_baseline.sh).
    #[inline]
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let g = self.live.read().unwrap_or_else(PoisonError::into_inner);
        if let (false, Some(t)) = (self.blocked.load(Ordering::SeqCst), g.as_deref()) {
            return t.read(sector, buf);
        }
        drop(g);
        self.read_waiting(sector, buf)
    }

    /// The live table's (512 without one).
    fn logical_block_size(&self) -> u32 {
        self.live_table().map_or(512, |t| t.logical_block_size())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.with_live(|t| {
            check_io(t.size(), sector, buf.len())?;
            self.writable(t)?;
            t.write(sector, buf)
        })
    }

    fn flush(&self) -> Result<()> {
        self.with_live(Volume::flush)
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        self.with_live(|t| {
            check_range(t.size(), sector, count)?;
            self.writable(t)?;
            t.discard(sector, count)
        })
    }

    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.with_live(|t| {
            check_io(t.size(), sector, buf.len())?;
            self.writable(t)?;
            t.write_fua(sector, buf)
        })
    }

    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        self.with_live(|t| {
            check_range(t.size(), sector, count)?;
            self.writable(t)?;
            t.write_zeroes(sector, count, unmap)
        })
    }

    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        self.with_live(|t| t.allocation(sector, count))
    }

    fn tag_profile(&self) -> Option<TagProfile> {
        self.live_table().and_then(|t| t.tag_profile())
    }

    fn read_tagged(&self, sector: Sector, buf: &mut [u8], tags: &mut [u8]) -> Result<()> {
        self.with_live(|t| t.read_tagged(sector, buf, tags))
    }

    fn write_tagged(&self, sector: Sector, buf: &[u8], tags: &[u8]) -> Result<()> {
        self.with_live(|t| {
            check_io(t.size(), sector, buf.len())?;
            self.writable(t)?;
            t.write_tagged(sector, buf, tags)
        })
    }
}
