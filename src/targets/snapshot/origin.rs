//! `snapshot-origin` (kernel dm-snap.c `origin_*`) and the per-origin snapshot list that
//! origin writes copy out through (the kernel's `struct origin` in its `_origins` hash).

use std::sync::{Arc, PoisonError, RwLock, Weak};

use crate::error::{Error, Result};
use crate::targets::context::{device_area, BuildContext};
use crate::targets::{DeviceAt, DeviceRef, Target};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, chunks, Extent, SharedVolume, Unmap, Volume};

use super::target::{OnFull, Snapshot};
use super::{OriginArgs, SnapshotKind};

/// The snapshots of one origin device: the kernel's `struct origin` in `_origins`, found
/// through the registry by the origin volume.
#[derive(Debug, Default)]
pub struct OriginSnapshots {
    snapshots: RwLock<Vec<Weak<Snapshot>>>,
}

impl OriginSnapshots {
    pub(super) fn register(&self, s: &Arc<Snapshot>) {
        let mut list = self
            .snapshots
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(s));
    }

    pub(super) fn live(&self) -> Vec<Arc<Snapshot>> {
        self.snapshots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// `__origin_write` for `[sector, sector + count)`: every valid, non-merging snapshot
    /// that lacks an exception for a chunk in the range gets a copy of the origin chunk
    /// first. A snapshot that cannot (COW full, I/O error) is invalidated, even a `PO` one;
    /// the origin write itself goes on.
    pub fn before_origin_write(&self, sector: Sector, count: SectorCount) {
        for snap in self.live() {
            if snap.kind == SnapshotKind::Merge || sector.0 >= snap.size.0 {
                continue;
            }
            let end = sector.0.saturating_add(count.0).min(snap.size.0);
            for (s, _) in chunks(sector, SectorCount(end - sector.0), SectorCount(snap.chunk)) {
                if !snap.valid() {
                    break;
                }
                let chunk = s.0 >> snap.shift;
                if snap.lookup(chunk).is_none() {
                    snap.copy_out(chunk, None, OnFull::Invalidate);
                }
            }
        }
    }
}

/// The first `len` sectors of the origin device: how both `origin_ctr` and `snapshot_ctr`
/// open it (`dm_get_device` of the whole origin; the target maps it from sector 0).
pub(super) fn origin_area(
    ctx: &dyn BuildContext,
    device: &DeviceRef,
    len: SectorCount,
) -> Result<SharedVolume> {
    device_area(
        ctx,
        &DeviceAt {
            device: device.clone(),
            offset: SectorCount(0),
        },
        len,
    )
}

/// A constructed `snapshot-origin`.
#[derive(Debug)]
pub struct Origin {
    origin: SharedVolume,
    size: SectorCount,
    links: Arc<OriginSnapshots>,
}

impl Origin {
    /// `origin_ctr`.
    pub fn new(args: &OriginArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Origin> {
        let origin = origin_area(ctx, &args.origin, len)?;
        let links = ctx.origin_snapshots(&origin);
        Ok(Origin::over(origin, len, links))
    }

    /// Build over an open volume and its snapshot list.
    #[must_use]
    pub fn over(origin: SharedVolume, len: SectorCount, links: Arc<OriginSnapshots>) -> Origin {
        Origin {
            origin,
            size: len,
            links,
        }
    }
}

impl Volume for Origin {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.origin.read(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.links.before_origin_write(sector, count);
        self.origin.write(sector, buf)
    }
    fn flush(&self) -> Result<()> {
        self.origin.flush()
    }
    fn discard(&self, _sector: Sector, _count: SectorCount) -> Result<()> {
        // origin_ctr sets no num_discard_bios.
        Err(Error::Unsupported {
            target: "snapshot-origin",
            op: "discard",
        })
    }
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.links.before_origin_write(sector, count);
        self.origin.write_fua(sector, buf)
    }
    /// origin_ctr takes no REQ_OP_WRITE_ZEROES: the block layer sends zero writes, which
    /// copy out to the snapshots first. The same order here, then the origin zeroes its
    /// own way.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.links.before_origin_write(sector, count);
        self.origin.write_zeroes(sector, count, unmap)
    }
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        self.origin.allocation(sector, count)
    }
}

impl Target for Origin {}
