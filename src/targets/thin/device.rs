//! The constructed `thin` target (dm-thin.c `thin_ctr`, `thin_map`/`process_bio`,
//! `thin_status`): reads of mapped blocks from the pool's data device, of unmapped ones
//! from the external origin or as zeros; writes in place, or provisioning a block (zeroed
//! or copied as the kernel does) and remapping it in the pool.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::targets::context::{typed_target, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{
    check_io, check_range, chunks, write_zero_buffers, Allocation, Extent, Extents, SharedVolume,
    Unmap, Volume, MAX_WALK,
};

use super::metadata::BlockTime;
use super::pool::{read, Dev, Pool, ThinPool};
use super::ThinArgs;
use crate::targets::Target;

/// Bytes moved per step when zeroing or copying a data block (blocks reach 1 GiB).
const COPY_CHUNK: usize = 1 << 20;

/// A constructed `thin`.
#[derive(Debug)]
pub struct Thin {
    pool: Arc<Pool>,
    dev_id: u64,
    len: SectorCount,
    block: u64,
    shift: Option<u32>,
    origin: Option<SharedVolume>,
    dev: Dev,
}

impl Thin {
    /// `thin_ctr`: find the pool through the registry, open the thin device in its
    /// metadata, open the external origin.
    pub fn new(args: &ThinArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Thin> {
        let pool = typed_target::<ThinPool>(ctx, &args.pool)
            .map_err(|e| Error::invalid("thin", format!("Couldn't get pool mapped device: {e}")))?;
        let origin = match &args.external_origin {
            Some(o) => Some(ctx.volume(o).map_err(|e| {
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
        let pool = Arc::clone(pool.pool());
        let dev = pool.open_device(dev_id)?;
        let block = pool.block_sectors();
        Ok(Thin {
            pool,
            dev_id,
            len,
            block,
            shift: block.is_power_of_two().then(|| block.trailing_zeros()),
            origin,
            dev,
        })
    }

    /// The device id in the pool.
    #[must_use]
    pub fn dev_id(&self) -> u64 {
        self.dev_id
    }

    /// Virtual block and sector within it. Power-of-two block sizes shift, as the kernel
    /// does with `sectors_per_block_shift` (a 64-bit division costs ~40 cycles).
    fn split(&self, sector: u64) -> (u64, u64) {
        match self.shift {
            Some(s) => (sector >> s, sector & (self.block - 1)),
            None => (sector / self.block, sector % self.block),
        }
    }

    /// The mapping of `vblock`: from the pool's index, or its committed tree (a damaged
    /// node on the way fails the request with the error naming it).
    fn lookup(&self, vblock: u64) -> Result<Option<BlockTime>> {
        self.pool.lookup(self.dev_id, vblock)
    }

    /// `__snapshotted_since`: a mapping older than the device's last snapshot is shared.
    fn shared(&self, bt: BlockTime) -> bool {
        bt.time < read(&self.dev).details.snapshotted_time
    }

    /// Read `buf` from `within` sectors into virtual block `vblock`.
    fn read_block(&self, vblock: u64, within: u64, buf: &mut [u8]) -> Result<()> {
        match self.lookup(vblock)? {
            Some(bt) => {
                let data_sector = bt.block * self.block + within;
                self.pool.data().read(Sector(data_sector), buf)
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

    /// Fill data block `to` from `from` (another data block, or this device's unmapped
    /// view of `vblock`: external origin or zeros), `COPY_CHUNK` bytes at a time.
    fn fill_block(&self, to: u64, from: Option<u64>, vblock: u64) -> Result<()> {
        let total = usize::try_from(SectorCount(self.block).bytes()).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; COPY_CHUNK.min(total)];
        let mut done = 0;
        while done < total {
            let n = buf.len().min(total - done);
            let piece = &mut buf[..n];
            let off = u64::try_from(done / 512).unwrap_or(u64::MAX);
            match from {
                Some(b) => self.pool.data().read(Sector(b * self.block + off), piece)?,
                None => self.read_unmapped(Sector(vblock * self.block + off), piece)?,
            }
            self.pool
                .data()
                .write(Sector(to * self.block + off), piece)?;
            done += n;
        }
        Ok(())
    }

    /// Write `buf` at `within` sectors into virtual block `vblock` (`process_bio`).
    fn write_block(&self, vblock: u64, within: u64, buf: &[u8]) -> Result<()> {
        if let Some(bt) = self.lookup(vblock)? {
            if !self.shared(bt) {
                return self
                    .pool
                    .data()
                    .write(Sector(bt.block * self.block + within), buf);
            }
        }
        let _cell = self.pool.provisioning();
        let old = self.lookup(vblock)?;
        if let Some(bt) = old {
            if !self.shared(bt) {
                return self
                    .pool
                    .data()
                    .write(Sector(bt.block * self.block + within), buf);
            }
        }
        if self.pool.read_only() {
            // PM_READ_ONLY: writes needing a new block fail.
            return Err(Error::ReadOnly {
                target: "thin-pool (read_only)".to_string(),
            });
        }
        let whole = within == 0 && SectorCount::from_bytes(buf.len())?.0 == self.block;
        let new = self.pool.alloc_data_block()?;
        let filled = (|| {
            if !whole {
                match old {
                    // break_sharing: copy the shared block, then overwrite.
                    Some(bt) => self.fill_block(new, Some(bt.block), vblock)?,
                    // provision_block: copy from the external origin (zero past it) or
                    // zero the block, unless skip_block_zeroing.
                    None if self.origin.is_some() || self.pool.zeroing() => {
                        self.fill_block(new, None, vblock)?
                    }
                    None => {}
                }
            }
            self.pool
                .data()
                .write(Sector(new * self.block + within), buf)
        })();
        if let Err(e) = filled {
            self.pool.release_data_block(new);
            return Err(e);
        }
        self.pool
            .remap(self.dev_id, &self.dev, vblock, new, self.pool.time())
    }
}

impl Thin {
    /// Append the unmapped view of `[start, start + len)`: the external origin's answer
    /// where it has sectors, holes past its end (or everywhere without one).
    fn unmapped_allocation(
        &self,
        out: &mut Extents,
        start: Sector,
        len: SectorCount,
    ) -> Result<bool> {
        let inside = match &self.origin {
            Some(origin) => {
                let inside = SectorCount(origin.size().0.saturating_sub(start.0).min(len.0));
                if inside.0 > 0 && !out.append_from(&**origin, start, inside)? {
                    return Ok(false);
                }
                inside
            }
            None => SectorCount(0),
        };
        Ok(out.push(SectorCount(len.0 - inside.0), Allocation::Hole))
    }
}

impl Volume for Thin {
    fn size(&self) -> SectorCount {
        self.len
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.len, sector, buf.len())?;
        let _in_flight = self.pool.enter();
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
    /// A piece that needs a new block while the pool is out of data space in
    /// `queue_if_no_space` mode waits outside the pool's gate (a pool suspend and reload
    /// can grow it meanwhile) and is retried, or fails ENOSPC after `no_space_timeout`.
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.len, sector, buf.len())?;
        let mut in_flight = Some(self.pool.enter());
        let mut rest = buf;
        for (at, n) in chunks(sector, count, SectorCount(self.block)) {
            let (piece, tail) = rest.split_at(usize::try_from(n.bytes()).unwrap_or(0));
            rest = tail;
            let (vblock, within) = self.split(at.0);
            loop {
                if in_flight.is_none() {
                    in_flight = Some(self.pool.enter());
                }
                match self.write_block(vblock, within, piece) {
                    Err(Error::NoSpace { .. }) if self.pool.queues_when_full() => {
                        in_flight = None;
                        self.pool.wait_for_space()?;
                    }
                    r => {
                        r?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }
    /// A flush commits the pool (REQ_PREFLUSH through a thin commits in the kernel too).
    fn flush(&self) -> Result<()> {
        let _in_flight = self.pool.enter();
        self.pool.flush()
    }
    /// `process_discard_bio`: every whole block in the range is unmapped (reads then give
    /// zeros or the external origin); a data block no mapping names any more is discarded
    /// on the data device unless `no_discard_passdown`. Partial blocks are left alone, as
    /// the kernel ends such a discard without effect.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.len, sector, count)?;
        let _in_flight = self.pool.enter();
        let (enabled, passdown) = self.pool.discards();
        if !enabled {
            return Err(Error::Unsupported {
                target: "thin",
                op: "discard (pool has ignore_discard)",
            });
        }
        let first = sector.0.div_ceil(self.block);
        let end = (sector.0 + count.0) / self.block;
        if self.pool.read_only() && first < end {
            return Err(Error::ReadOnly {
                target: "thin-pool (read_only)".to_string(),
            });
        }
        let _cell = self.pool.provisioning();
        for vblock in first..end {
            if let Some(freed) = self.pool.unmap(self.dev_id, &self.dev, vblock)? {
                if passdown {
                    // disable_passdown_if_not_supported: a data device without discard
                    // support just keeps the bytes.
                    match self
                        .pool
                        .data()
                        .discard(Sector(freed * self.block), SectorCount(self.block))
                    {
                        Ok(()) | Err(Error::Unsupported { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// From the mapping index: a mapped block is data; an unmapped one is a hole, or with
    /// an external origin, the origin's answer for those sectors (holes past its end). At
    /// most `MAX_WALK` blocks per answer.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.len, sector, count)?;
        let mut out = Extents::new();
        let mut run: Option<(Sector, SectorCount)> = None;
        for ((s, n), _) in chunks(sector, count, SectorCount(self.block)).zip(0..MAX_WALK) {
            if self.lookup(self.split(s.0).0)?.is_none() {
                let (start, len) = run.get_or_insert((s, SectorCount(0)));
                *len = SectorCount(s.0 + n.0 - start.0);
                continue;
            }
            if let Some((start, len)) = run.take() {
                if !self.unmapped_allocation(&mut out, start, len)? {
                    return Ok(out.into_vec());
                }
            }
            if !out.push(n, Allocation::Data) {
                return Ok(out.into_vec());
            }
        }
        if let Some((start, len)) = run {
            self.unmapped_allocation(&mut out, start, len)?;
        }
        Ok(out.into_vec())
    }

    /// 6.12 dm-thin sets no `num_write_zeroes_bios`, so the block layer sends zero writes,
    /// which provision blocks: that is what `Unmap::Forbidden` does. With `Unmap::Allowed`
    /// and no external origin, whole blocks are unmapped as a discard unmaps them (they
    /// then read zeros; passdown as configured) when the pool takes discards and is
    /// writable, and partial blocks get zeros written unless they are unmapped already.
    /// With an external origin an unmapped block reads the origin, so zeros are written.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        check_range(self.len, sector, count)?;
        let (discards, _) = self.pool.discards();
        if unmap == Unmap::Forbidden || self.origin.is_some() || !discards || self.pool.read_only()
        {
            return write_zero_buffers(self, sector, count);
        }
        self.discard(sector, count)?;
        let first = sector.0.div_ceil(self.block) * self.block;
        let end = sector.0 + count.0;
        let last = (end / self.block * self.block).max(first);
        for (at, n) in [(sector.0, first.min(end)), (last.max(sector.0), end)] {
            if n > at && self.lookup(self.split(at).0)?.is_some() {
                write_zero_buffers(self, Sector(at), SectorCount(n - at))?;
            }
        }
        Ok(())
    }
}

impl Target for Thin {
    /// `thin_status(STATUSTYPE_INFO)`: mapped sectors, then the last sector of the highest
    /// mapped block or `-`.
    fn status(&self) -> String {
        // The details are copied out first: the pool's state is never locked under a
        // device's (the pool locks state, then device).
        let details = read(&self.dev).details;
        // The kernel's u64 arithmetic, wrapping on damaged counts as C does.
        let mapped = details.mapped_blocks.wrapping_mul(self.block);
        // dm_thin_get_highest_mapped_block failing prints "Error" (thin_status).
        let Ok(highest) = self.pool.highest(self.dev_id) else {
            return "Error".to_string();
        };
        match highest {
            Some(h) => format!(
                "{mapped} {}",
                h.wrapping_add(1).wrapping_mul(self.block).wrapping_sub(1)
            ),
            None => format!("{mapped} -"),
        }
    }
}
