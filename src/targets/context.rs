//! `BuildContext`: what a target constructor (the kernel's ctr) may ask of the device layer
//! above it: resolve a device reference, the clock, the keyring, typed links to other
//! targets, the origin links of snapshots, and the table-event hook. The registry implements
//! it, so targets never import the registry and the dependency points one way.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::targets::crypt::Keyring;
use crate::targets::snapshot::OriginSnapshots;
use crate::targets::thin::PoolTable;
use crate::targets::{DeviceAt, DeviceRef, Target};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_range, SharedVolume};

/// The services a target constructor is given.
pub trait BuildContext {
    /// Resolve a device reference (a path, a mapped device's name, `/dev/mapper/NAME`,
    /// `major:minor`) to a volume, opening it for the table being built (`dm_get_device`).
    fn volume(&self, dev: &DeviceRef) -> Result<SharedVolume>;

    /// The single target of the mapped device `dev` (typed links: a thin device finds its
    /// pool). Fails unless `dev` is a mapped device with exactly one target.
    fn target(&self, dev: &DeviceRef) -> Result<Arc<dyn Target>>;

    /// The clock time-dependent targets (delay, flakey) read.
    fn clock(&self) -> SharedClock;

    /// The keys crypt tables name by keyring reference.
    fn keyring(&self) -> &Keyring;

    /// The snapshot list of `origin` (the kernel's `_origins` hash entry), shared by every
    /// snapshot and snapshot-origin target over that volume.
    fn origin_snapshots(&self, origin: &SharedVolume) -> Arc<OriginSnapshots>;

    /// The event hook of the table being built (`dm_table_event`).
    fn events(&self) -> TableEvents;

    /// The thin pools that exist (dm-thin.c's `dm_thin_pool_table`), shared by every table
    /// the device layer builds: a `thin-pool` line finds the pool it reloads there.
    fn thin_pools(&self) -> Arc<PoolTable>;

    /// The minor number of the mapped device the table is built for, if any (a pool is
    /// owned by the device whose table created it).
    fn device_minor(&self) -> Option<u32>;

    /// A mapped range does not lie on its device. The kernel finds this when the table
    /// goes live (`dm_calculate_queue_limits` at resume), not at load: a registry records
    /// `error` and refuses the resume; the default fails the construction at once.
    fn area_error(&self, error: Error) -> Result<()> {
        Err(error)
    }
}

/// Resolve `d` through `ctx` and check that `[offset, offset + len)` lies on it (the
/// kernel's `device_area_is_invalid`; see `BuildContext::area_error` for when it fails).
pub fn device_area(ctx: &dyn BuildContext, d: &DeviceAt, len: SectorCount) -> Result<SharedVolume> {
    let v = ctx.volume(&d.device)?;
    if check_range(v.size(), Sector(d.offset.0), len).is_err() {
        ctx.area_error(Error::invalid(
            "device",
            format!(
                "{} too small for target: start={}, len={}, dev_size={}",
                d.device,
                d.offset,
                len,
                v.size()
            ),
        ))?;
    }
    Ok(v)
}

/// The single target of the mapped device `dev`, if it is a `T`.
pub fn typed_target<T: Target + Send + Sync>(
    ctx: &dyn BuildContext,
    dev: &DeviceRef,
) -> Result<Arc<T>> {
    let target = ctx.target(dev)?;
    let any: Arc<dyn Any + Send + Sync> = target;
    any.downcast::<T>().map_err(|_| {
        Error::invalid(
            "device",
            format!("{} is not a {} device", dev.0, std::any::type_name::<T>()),
        )
    })
}

/// A mapped device's event counter (`md->event_nr`) with its wait queue (`md->eventq`).
#[derive(Debug, Default)]
pub struct EventCounter {
    nr: AtomicU32,
    lock: Mutex<()>,
    changed: Condvar,
}

impl EventCounter {
    /// The current event number.
    #[must_use]
    pub fn get(&self) -> u32 {
        self.nr.load(Ordering::SeqCst)
    }

    /// Count one event and wake every waiter (`event_callback` in dm.c).
    pub fn bump(&self) {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.nr.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Wait until the event number differs from `seen` (`DM_DEV_WAIT`), at most `timeout`
    /// (None: forever). Returns the event number then.
    #[must_use]
    pub fn wait_change(&self, seen: u32, timeout: Option<Duration>) -> u32 {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = self.get();
            if now != seen {
                return now;
            }
            match deadline {
                None => {
                    g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return now;
                    }
                    g = self
                        .changed
                        .wait_timeout(g, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

/// The hook a target calls where the kernel calls `dm_table_event(ti->table)`. The event
/// counts on the device whose live table holds the target: the hook is bound when the table
/// goes live (`__bind` sets `event_fn`) and unbound when it is swapped out, so events of an
/// inactive table are not counted, as in the kernel.
#[derive(Clone, Default)]
pub struct TableEvents(Arc<Mutex<Option<Arc<EventCounter>>>>);

impl TableEvents {
    /// A hook bound to nothing yet.
    #[must_use]
    pub fn new() -> TableEvents {
        TableEvents::default()
    }

    /// Signal one event (`dm_table_event`).
    pub fn raise(&self) {
        let bound = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(counter) = bound {
            counter.bump();
        }
    }

    /// Count events into `counter` from now on.
    pub fn bind(&self, counter: Arc<EventCounter>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(counter);
    }

    /// Stop counting events.
    pub fn unbind(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl fmt::Debug for TableEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TableEvents")
    }
}
