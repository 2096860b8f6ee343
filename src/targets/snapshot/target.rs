//! The constructed `snapshot` and `snapshot-merge` targets (kernel dm-snap.c): the
//! exception table and copy-on-write on snapshot writes (origin.rs has snapshot-origin and
//! the copy-out on origin writes, merge.rs the merge).
//!
//! Locking (see docs/design.md, "snapshot"): the completed-exception table is behind an
//! `RwLock` looked up on every I/O and released before any data moves; the exception store
//! is behind a `Mutex` held while one chunk is copied and committed, so a chunk gets at most
//! one exception. An origin write takes each snapshot's store lock in turn before it writes
//! the origin, so it waits for a snapshot write that is copying the same chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::error::{Error, Result};
use crate::targets::context::{BuildContext, TableEvents};
use crate::units::{Sector, SectorCount};
use crate::volume::{
    check_io, check_range, chunks, Allocation, Extent, Extents, SharedVolume, Volume, MAX_WALK,
};

use super::origin::origin_area;
use super::store::{Loaded, PersistentStore, TransientStore, Usage};
use super::{MergeStep, OriginSnapshots, SnapshotArgs, SnapshotDiscard, SnapshotKind, StoreType};
use crate::targets::{Target, TargetSpec};

type ExceptionMap = crate::block_map::BlockMap<u64>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What running out of COW space does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OnFull {
    /// Invalidate the snapshot (P stores; origin writes for every store).
    Invalidate,
    /// Mark the snapshot overflowed (PO stores, snapshot writes).
    Overflow,
}

/// What `copy_out` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CopyOut {
    /// Made the exception (with the write applied, if any).
    Made,
    /// The chunk already had an exception, in this COW chunk.
    Exists(u64),
    /// The snapshot is (now) invalid or overflowed.
    Failed,
}

#[derive(Debug)]
pub(super) enum Store {
    Persistent(PersistentStore),
    Transient(TransientStore),
}

impl Store {
    fn prepare(&mut self) -> Option<u64> {
        match self {
            Store::Persistent(p) => p.prepare_exception(),
            Store::Transient(t) => t.prepare_exception(),
        }
    }
    fn commit(&mut self, cow: &dyn Volume, old: u64, new: u64) -> bool {
        match self {
            Store::Persistent(p) => p.commit_exception(cow, old, new),
            Store::Transient(_) => true,
        }
    }
    fn drop_snapshot(&mut self, cow: &dyn Volume) {
        if let Store::Persistent(p) = self {
            p.drop_snapshot(cow);
        }
    }
    fn usage(&self) -> Usage {
        match self {
            Store::Persistent(p) => p.usage(),
            Store::Transient(t) => t.usage(),
        }
    }
}

/// A constructed `snapshot` or `snapshot-merge`.
///
/// Devices of one [`Registry`](crate::Registry) that name the same origin are linked as in the kernel: a write
/// through a `snapshot-origin` first copies the old chunk into every snapshot of that origin.
/// Devices live as long as the registry holds them.
///
/// ```
/// # fn main() -> dmemu::Result<()> {
/// use std::sync::Arc;
/// use dmemu::table::DeviceSpec;
/// use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};
///
/// let registry = Registry::new();
/// registry.insert_volume("origin", Arc::new(MemVolume::new(SectorCount(64))?));
/// registry.insert_volume("cow", Arc::new(MemVolume::new(SectorCount(64))?));
/// let create = |name: &str, table: &str| -> dmemu::Result<_> {
///     registry.create(&DeviceSpec {
///         name: name.into(), uuid: String::new(), minor: None,
///         mode: TableMode::ReadWrite, table: Table::parse(table)?,
///     })
/// };
/// let snap = create("snap", "0 64 snapshot origin cow P 8")?;
/// let origin = create("orig", "0 64 snapshot-origin origin")?;
/// origin.write(Sector(0), &[0xab; 512])?;
/// let mut old = [0xffu8; 512];
/// snap.read(Sector(0), &mut old)?;
/// assert_eq!(old, [0; 512]); // the snapshot still shows the origin as it was
/// assert_eq!(snap.status_text(), "0 64 snapshot 24/64 16\n");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Snapshot {
    pub(super) args: SnapshotArgs,
    pub(super) kind: SnapshotKind,
    pub(super) origin: SharedVolume,
    pub(super) cow: SharedVolume,
    pub(super) size: SectorCount,
    /// Chunk size in sectors (a power of two) and its log2.
    pub(super) chunk: u64,
    pub(super) shift: u32,
    pub(super) exceptions: RwLock<ExceptionMap>,
    pub(super) store: Mutex<Store>,
    pub(super) valid: AtomicBool,
    pub(super) overflowed: AtomicBool,
    pub(super) merge_failed: AtomicBool,
    pub(super) links: Arc<OriginSnapshots>,
    /// Invalidation is a table event (`__invalidate_snapshot` → `dm_table_event`).
    events: Mutex<TableEvents>,
}

impl Snapshot {
    /// `snapshot_ctr`: open the devices, read (or initialise) the exception store and join
    /// the origin's snapshot list.
    pub fn new(
        args: &SnapshotArgs,
        kind: SnapshotKind,
        len: SectorCount,
        ctx: &dyn BuildContext,
    ) -> Result<Arc<Snapshot>> {
        let origin = origin_area(ctx, &args.origin, len)?;
        let cow = ctx.volume(&args.cow)?;
        let links = ctx.origin_snapshots(&origin);
        let snap = Snapshot::over(args, kind, origin, cow, len, &links)?;
        // Still the only owner apart from the origin's weak link: set the event hook.
        *snap
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ctx.events();
        Ok(snap)
    }

    /// Build over already-open volumes (library use, tests, benches): `links` is the origin's
    /// snapshot list, shared with the `snapshot-origin` targets of the same origin.
    pub fn over(
        args: &SnapshotArgs,
        kind: SnapshotKind,
        origin: SharedVolume,
        cow: SharedVolume,
        len: SectorCount,
        links: &Arc<OriginSnapshots>,
    ) -> Result<Arc<Snapshot>> {
        check_range(origin.size(), Sector(0), len)?;
        if std::ptr::addr_eq(Arc::as_ptr(&origin), Arc::as_ptr(&cow)) {
            return Err(Error::invalid(
                "snapshot",
                "COW device cannot be the same as origin device",
            ));
        }
        // The parser enforces these; `over` is also reachable with hand-built args.
        if args.chunk_size != 0 {
            super::store::check_chunk_size(args.chunk_size)
                .map_err(|why| Error::invalid("snapshot chunk size", why))?;
        } else if args.store == StoreType::Transient {
            return Err(Error::invalid("snapshot", "Chunk size not set"));
        }
        // Two live targets on one COW would each keep their own store in memory. The kernel
        // allows it only to hand the store over on resume (`__find_snapshots_sharing_cow`),
        // which dmemu does not model.
        let shares_cow = links
            .live()
            .iter()
            .any(|s| std::ptr::addr_eq(Arc::as_ptr(&s.cow), Arc::as_ptr(&cow)));
        if shares_cow {
            return Err(Error::invalid(
                "snapshot",
                "another snapshot of this origin is using the COW device (store handover \
                 between snapshot and snapshot-merge is not supported; remove it first)",
            ));
        }
        let mut exceptions = ExceptionMap::default();
        let (store, valid, chunk) = match args.store {
            StoreType::Transient => {
                let chunk = u64::from(args.chunk_size);
                (
                    Store::Transient(TransientStore::new(chunk, cow.size().0)),
                    true,
                    chunk,
                )
            }
            StoreType::Persistent | StoreType::PersistentOverflow => {
                let (ps, loaded) =
                    PersistentStore::open(cow.as_ref(), args.chunk_size, |old, new, offset| {
                        // Two entries for one origin chunk: the kernel never writes that.
                        if exceptions.insert(old, new).is_some() {
                            return Err(Error::Corrupt {
                                what: "snapshot exception old_chunk",
                                offset,
                                detail: format!("origin chunk {old} has a second exception"),
                            });
                        }
                        Ok(())
                    })?;
                let chunk = ps.chunk_sectors();
                (Store::Persistent(ps), loaded != Loaded::Invalid, chunk)
            }
        };
        let mut printed = args.clone();
        printed.chunk_size = u32::try_from(chunk).unwrap_or(u32::MAX);
        let snap = Arc::new(Snapshot {
            args: printed,
            kind,
            origin,
            cow,
            size: len,
            chunk,
            shift: chunk.trailing_zeros(),
            exceptions: RwLock::new(exceptions),
            store: Mutex::new(store),
            valid: AtomicBool::new(valid),
            overflowed: AtomicBool::new(false),
            merge_failed: AtomicBool::new(false),
            links: Arc::clone(links),
            events: Mutex::new(TableEvents::new()),
        });
        links.register(&snap);
        Ok(snap)
    }

    /// Chunk size in sectors (from the COW header when the table said 0).
    #[must_use]
    pub fn chunk_sectors(&self) -> u64 {
        self.chunk
    }

    /// Whether the snapshot is valid.
    #[must_use]
    pub fn valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    /// Number of origin chunks with an exception.
    #[must_use]
    pub fn exception_count(&self) -> usize {
        self.exceptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(super) fn lookup(&self, chunk: u64) -> Option<u64> {
        self.exceptions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&chunk)
            .copied()
    }

    fn failed(&self) -> Error {
        Error::TargetFailed {
            target: "snapshot",
            reason: if self.valid() {
                "snapshot overflowed: unable to allocate exception".into()
            } else {
                "snapshot is invalid".into()
            },
        }
    }

    /// `__invalidate_snapshot`: drop the store (header valid = 0) and fail all later I/O.
    pub(super) fn invalidate(&self, store: &mut Store) {
        if self.valid.swap(false, Ordering::AcqRel) {
            store.drop_snapshot(self.cow.as_ref());
            self.events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .raise();
        }
    }

    /// Sectors of origin chunk `chunk` that lie on the origin (the last chunk may be short:
    /// `start_copy` copies `min(chunk_size, dev_size - sector)`).
    pub(super) fn chunk_span(&self, chunk: u64) -> (Sector, usize) {
        let start = chunk << self.shift;
        let n = self.chunk.min(self.origin.size().0.saturating_sub(start));
        (
            Sector(start),
            usize::try_from(n * 512).unwrap_or(usize::MAX),
        )
    }

    /// Make an exception for origin `chunk` (pending exception + copy + commit). With
    /// `write = Some((offset, data))` the snapshot write is laid over the origin copy (or
    /// replaces it when it covers the whole chunk, `start_full_bio`), so the data chunk is
    /// complete on the COW before the area that points at it is written. Returns what
    /// happened; `Exists` means another writer made the exception first and `write` was not
    /// applied.
    pub(super) fn copy_out(
        &self,
        chunk: u64,
        write: Option<(usize, &[u8])>,
        on_full: OnFull,
    ) -> CopyOut {
        let mut store = lock(&self.store);
        if let Some(new) = self.lookup(chunk) {
            return CopyOut::Exists(new);
        }
        if !self.valid() {
            return CopyOut::Failed;
        }
        let Some(new) = store.prepare() else {
            match on_full {
                OnFull::Overflow => self.overflowed.store(true, Ordering::Release),
                OnFull::Invalidate => self.invalidate(&mut store),
            }
            return CopyOut::Failed;
        };
        let (origin_at, n) = self.chunk_span(chunk);
        let mut data = vec![0; n];
        let chunk_bytes = usize::try_from(self.chunk * 512).unwrap_or(usize::MAX);
        let full_write = matches!(write, Some((0, w)) if w.len() == chunk_bytes);
        let copied = if full_write {
            Ok(())
        } else {
            self.origin.read(origin_at, &mut data)
        };
        let copied = copied.and_then(|()| {
            let buf = match write {
                Some((_, w)) if full_write => w,
                Some((off, w)) => {
                    data[off..off + w.len()].copy_from_slice(w);
                    &data
                }
                None => &data,
            };
            self.cow.write(Sector(new << self.shift), buf)
        });
        if copied.is_err() || !store.commit(self.cow.as_ref(), chunk, new) {
            self.invalidate(&mut store);
            return CopyOut::Failed;
        }
        self.exceptions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chunk, new);
        CopyOut::Made
    }

    /// COW sector of `sector` in `chunk`'s exception `new`.
    ///
    /// A damaged store may map a chunk beyond the COW (the kernel loads it and fails the
    /// I/O with EIO); the error names the field and where the data would be.
    pub(super) fn remap(&self, new: u64, sector: Sector) -> Result<Sector> {
        let start = new.checked_mul(self.chunk).filter(|s| {
            s.checked_add(self.chunk)
                .is_some_and(|e| e <= self.cow.size().0)
        });
        let Some(start) = start else {
            return Err(Error::TargetFailed {
                target: "snapshot",
                reason: format!(
                    "origin chunk {} is mapped to COW chunk {new} (exception new_chunk), \
                     beyond the end of the COW device ({} sectors); byte offset {}",
                    sector.0 >> self.shift,
                    self.cow.size().0,
                    new.saturating_mul(self.chunk).saturating_mul(512)
                ),
            });
        };
        Ok(Sector(start | (sector.0 & (self.chunk - 1))))
    }

    fn read_piece(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let chunk = sector.0 >> self.shift;
        if let Some(new) = self.lookup(chunk) {
            return self.cow.read(self.remap(new, sector)?, buf);
        }
        self.origin.read(sector, buf)?;
        // An origin write adds the exception before it writes the origin; if one appeared
        // meanwhile, the origin may already hold new data and the COW holds ours.
        if let Some(new) = self.lookup(chunk) {
            return self.cow.read(self.remap(new, sector)?, buf);
        }
        Ok(())
    }

    fn write_piece(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let chunk = sector.0 >> self.shift;
        if let Some(new) = self.lookup(chunk) {
            return self.cow.write(self.remap(new, sector)?, buf);
        }
        let on_full = match self.args.store {
            StoreType::PersistentOverflow => OnFull::Overflow,
            _ => OnFull::Invalidate,
        };
        let off = usize::try_from((sector.0 & (self.chunk - 1)) * 512).unwrap_or(usize::MAX);
        match self.copy_out(chunk, Some((off, buf)), on_full) {
            CopyOut::Made => Ok(()),
            CopyOut::Exists(new) => self.cow.write(self.remap(new, sector)?, buf),
            CopyOut::Failed => Err(self.failed()),
        }
    }

    /// `snapshot_merge_map` for writes: chunks still in the COW are written there, the
    /// others go to the origin (copying out to the origin's other snapshots first).
    fn merge_write_piece(&self, sector: Sector, count: SectorCount, buf: &[u8]) -> Result<()> {
        let chunk = sector.0 >> self.shift;
        if self.valid() {
            // The store lock orders this write against a merge batch copying the chunk.
            let _store = lock(&self.store);
            if let Some(new) = self.lookup(chunk) {
                return self.cow.write(self.remap(new, sector)?, buf);
            }
        }
        self.links.before_origin_write(sector, count);
        self.origin.write(sector, buf)
    }

    fn discard_piece(&self, sector: Sector, count: SectorCount) -> Result<()> {
        let Some(new) = self.lookup(sector.0 >> self.shift) else {
            // No exception: complete at once (it would otherwise trigger a copy).
            return Ok(());
        };
        let at = self.remap(new, sector)?;
        if count.0 == self.chunk {
            // zero_exception: the whole chunk is zeroed on the COW.
            let zeros = vec![0; usize::try_from(self.chunk * 512).unwrap_or(usize::MAX)];
            self.cow.write(at, &zeros)
        } else {
            self.cow.discard(at, count)
        }
    }
}

impl Volume for Snapshot {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        if !self.valid() {
            // Merging snapshots that are invalid redirect to the origin.
            return match self.kind {
                SnapshotKind::Merge => self.origin.read(sector, buf),
                SnapshotKind::Snapshot => Err(self.failed()),
            };
        }
        let mut rest = buf;
        for (s, n) in chunks(sector, count, SectorCount(self.chunk)) {
            let (piece, tail) = rest.split_at_mut(usize::try_from(n.bytes()).unwrap_or(0));
            self.read_piece(s, piece)?;
            rest = tail;
        }
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        if self.kind == SnapshotKind::Snapshot
            && (!self.valid() || self.overflowed.load(Ordering::Acquire))
        {
            return Err(self.failed());
        }
        let mut rest = buf;
        for (s, n) in chunks(sector, count, SectorCount(self.chunk)) {
            let (piece, tail) = rest.split_at(usize::try_from(n.bytes()).unwrap_or(0));
            match self.kind {
                SnapshotKind::Snapshot => self.write_piece(s, piece)?,
                SnapshotKind::Merge => self.merge_write_piece(s, n, piece)?,
            }
            rest = tail;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.kind == SnapshotKind::Merge {
            self.origin.flush()?;
        }
        self.cow.flush()
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        if self.args.discard == SnapshotDiscard::Off {
            return Err(Error::Unsupported {
                target: "snapshot",
                op: "discard without discard_zeroes_cow",
            });
        }
        if self.kind == SnapshotKind::Merge {
            // Once merging, discards no longer effect change.
            return Ok(());
        }
        if !self.valid() {
            return Err(self.failed());
        }
        for (s, n) in chunks(sector, count, SectorCount(self.chunk)) {
            self.discard_piece(s, n)?;
        }
        if self.args.discard == SnapshotDiscard::ZeroesCowPassdownOrigin {
            // The second discard bio goes to the origin without triggering exceptions.
            self.origin.discard(sector, count)?;
        }
        Ok(())
    }

    /// A chunk with an exception is data (it lives in the COW); one without reads the
    /// origin, so the origin's answer stands for it. At most `MAX_WALK` chunks per answer.
    /// (`write_zeroes` is the default: dm-snap takes no REQ_OP_WRITE_ZEROES, so zero writes
    /// make exceptions like any write.)
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        if !self.valid() {
            return match self.kind {
                SnapshotKind::Merge => self.origin.allocation(sector, count),
                SnapshotKind::Snapshot => Err(self.failed()),
            };
        }
        let mut out = Extents::new();
        // Chunks without exceptions, not yet asked of the origin: [start, start + len).
        let mut run: Option<(Sector, SectorCount)> = None;
        for ((s, n), _) in chunks(sector, count, SectorCount(self.chunk)).zip(0..MAX_WALK) {
            if self.lookup(s.0 >> self.shift).is_none() {
                let (start, len) = run.get_or_insert((s, SectorCount(0)));
                *len = SectorCount(s.0 + n.0 - start.0);
                continue;
            }
            if let Some((start, len)) = run.take() {
                if !out.append_from(&*self.origin, start, len)? {
                    return Ok(out.into_vec());
                }
            }
            if !out.push(n, Allocation::Data) {
                return Ok(out.into_vec());
            }
        }
        if let Some((start, len)) = run {
            out.append_from(&*self.origin, start, len)?;
        }
        Ok(out.into_vec())
    }
}

impl Target for Snapshot {
    /// `snapshot_status(STATUSTYPE_INFO)`.
    fn status(&self) -> String {
        if !self.valid() {
            return "Invalid".into();
        }
        if self.merge_failed.load(Ordering::Acquire) {
            return "Merge failed".into();
        }
        if self.overflowed.load(Ordering::Acquire) {
            return "Overflow".into();
        }
        let u = lock(&self.store).usage();
        format!("{}/{} {}", u.allocated, u.total, u.metadata)
    }

    /// dmemu extension (the kernel merges in the background from resume): `merge` runs a
    /// `snapshot-merge` to completion and replies with the number of batches copied;
    /// `merge <n>` copies at most n batches.
    fn message(&self, argv: &[&str]) -> Result<String> {
        match argv {
            ["merge"] => Ok(self.merge()?.to_string()),
            ["merge", n] => {
                let max: u64 = n.parse().map_err(|_| {
                    Error::invalid(
                        "message",
                        format!("bad batch count {}", crate::error::quote(n)),
                    )
                })?;
                let mut batches = 0;
                while batches < max {
                    if self.merge_step()? == MergeStep::Done {
                        break;
                    }
                    batches += 1;
                }
                Ok(batches.to_string())
            }
            _ => Err(Error::Unsupported {
                target: "snapshot",
                op: "this message",
            }),
        }
    }

    fn table_spec(&self) -> Option<TargetSpec> {
        Some(match self.kind {
            SnapshotKind::Snapshot => TargetSpec::Snapshot(self.args.clone()),
            SnapshotKind::Merge => TargetSpec::SnapshotMerge(self.args.clone()),
        })
    }
}
