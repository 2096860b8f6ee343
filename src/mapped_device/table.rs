//! `LoadedTable`: a table whose targets are constructed (the kernel's `struct dm_table`), as
//! one `Volume`. A request is routed to the line holding its first sector by binary search and
//! split where it crosses into the next line.

use std::fmt;
use std::sync::Arc;

use super::{MappedDevice, OpenGuard};
use crate::error::{Error, Result};
use crate::table::{Table, TableMode};
use crate::targets::context::{BuildContext, TableEvents};
use crate::targets::{Keys, Target, IMMUTABLE_TYPES};
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::{check_io, check_range, Extent, Extents, TagProfile, Unmap, Volume};

/// A constructed line: where it sits and the target serving it.
pub struct Segment {
    /// First sector on the mapped device.
    pub start: Sector,
    /// Length in sectors.
    pub len: SectorCount,
    /// The target, addressed from 0 within the segment.
    pub target: Arc<dyn Target>,
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A table with its constructed targets. What it holds open (the mapped devices its lines
/// name) stays open while it lives; dropping it is the kernel's `dm_table_destroy`.
pub struct LoadedTable {
    name: String,
    table: Table,
    mode: TableMode,
    /// Segment start sectors, kept apart from `segments` so the binary search touches one
    /// dense array.
    starts: Vec<u64>,
    segments: Vec<Segment>,
    size: SectorCount,
    /// Some line holds requests (delay): pieces of a request are served concurrently.
    concurrent: bool,
    /// The device's logical block size in sectors: the largest of its lines' (the queue
    /// limits `dm_calculate_queue_limits` stacks; ebs sets its own). The block layer
    /// refuses requests that are not whole blocks.
    block: u64,
    /// `block - 1` when `block` is a power of two, else all ones (see `check_block`).
    block_mask: u64,
    /// What the table keeps open (open-count guards of the mapped devices it uses).
    holds: Vec<OpenGuard>,
    /// The hook its targets raise events through.
    events: TableEvents,
    /// Why the table may not go live (a mapped range off its device), if it may not.
    unfit: Option<Error>,
}

impl fmt::Debug for LoadedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedTable")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

impl LoadedTable {
    /// Construct every target of `table` (the kernel's table load), resolving devices through
    /// `ctx`. `name` names the device in error messages.
    pub fn new(
        name: &str,
        table: Table,
        mode: TableMode,
        ctx: &dyn BuildContext,
    ) -> Result<LoadedTable> {
        table.validate()?;
        table.check_mode(mode)?;
        let mut segments = Vec::with_capacity(table.lines.len());
        let mut settled = Vec::new();
        for (i, line) in table.lines.iter().enumerate() {
            let target = line.spec.build(line.len, ctx).map_err(|e| match e {
                // A constructor's errno is the table load's (dm_table_add_target
                // returns it): an image in use elsewhere stays EBUSY, a missing device
                // ENOENT. Only EINVAL errors get the line added.
                e if e.errno() != crate::error::errno::EINVAL => Error::InLine {
                    line: i + 1,
                    target_type: line.spec.target_type().to_string(),
                    source: Box::new(e),
                },
                e => Error::Table {
                    line: i + 1,
                    token: None,
                    reason: format!("{} target: {e}", line.spec.target_type()),
                },
            })?;
            // A target may settle what the text left open (snapshot chunk size 0); the
            // table then prints what the kernel prints.
            if let Some(spec) = target.table_spec() {
                settled.push((i, spec));
            }
            segments.push(Segment {
                start: line.start,
                len: line.len,
                target,
            });
        }
        let mut table = table;
        for (i, spec) in settled {
            table.lines[i].spec = spec;
        }
        let mut loaded = LoadedTable::from_segments(name, table, mode, segments);
        loaded.events = ctx.events();
        Ok(loaded)
    }

    /// Assemble a device from already-built segments (they must tile `table`).
    #[must_use]
    pub fn from_segments(
        name: &str,
        table: Table,
        mode: TableMode,
        segments: Vec<Segment>,
    ) -> LoadedTable {
        let size = table.size();
        let block = segments
            .iter()
            .map(|s| u64::from(s.target.logical_block_size()) / 512)
            .max()
            .unwrap_or(1)
            .max(1);
        LoadedTable {
            holds: Vec::new(),
            events: TableEvents::new(),
            unfit: misaligned_table(&segments, block),
            name: name.to_string(),
            starts: segments.iter().map(|s| s.start.0).collect(),
            concurrent: segments.iter().any(|s| s.target.holds_requests()),
            block,
            block_mask: if block.is_power_of_two() {
                block - 1
            } else {
                u64::MAX
            },
            segments,
            table,
            mode,
            size,
        }
    }

    /// Keep the device of `guard` open as long as the table lives.
    pub fn hold(&mut self, guard: OpenGuard) {
        self.holds.push(guard);
    }

    /// The mapped devices the table uses (`dmsetup deps`), in the order first named.
    pub fn uses(&self) -> impl Iterator<Item = &Arc<MappedDevice>> {
        self.holds.iter().map(OpenGuard::device)
    }

    /// Refuse to make this table live, for `reason` (see `BuildContext::area_error`).
    pub fn refuse_resume(&mut self, reason: Error) {
        self.unfit = Some(reason);
    }

    /// Whether the table may go live (`dm_calculate_queue_limits` at `dm_swap_table`).
    pub fn check_fit(&self) -> Result<()> {
        match &self.unfit {
            None => Ok(()),
            Some(Error::InvalidArgument { what, reason }) => Err(Error::InvalidArgument {
                what,
                reason: reason.clone(),
            }),
            Some(e) => Err(Error::invalid("table", e.to_string())),
        }
    }

    /// The hook its targets raise events through.
    #[must_use]
    pub fn events(&self) -> &TableEvents {
        &self.events
    }

    /// The table's immutable target type (`dm_table_get_immutable_target_type`), if any.
    #[must_use]
    pub fn immutable_type(&self) -> Option<&str> {
        self.table
            .lines
            .iter()
            .map(|l| l.spec.target_type())
            .find(|t| IMMUTABLE_TYPES.contains(t))
    }

    /// The table mode it was loaded with.
    #[must_use]
    pub fn mode(&self) -> TableMode {
        self.mode
    }

    /// The table it was loaded with.
    #[must_use]
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The constructed segments, in order.
    #[must_use]
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Index of the segment holding `sector` (which must be below `size`).
    #[must_use]
    pub fn segment_index(&self, sector: Sector) -> usize {
        if self.starts.len() == 1 {
            return 0;
        }
        self.starts.partition_point(|&s| s <= sector.0) - 1
    }

    /// The table as the targets print it now (STATUSTYPE_TABLE asks each target): what a
    /// construction settled, and state messages changed since (crypt's `key set`).
    #[must_use]
    pub fn current_table(&self) -> Table {
        let mut table = self.table.clone();
        for (line, seg) in table.lines.iter_mut().zip(&self.segments) {
            if let Some(spec) = seg.target.table_spec() {
                line.spec = spec;
            }
        }
        table
    }

    /// `dmsetup table`: canonical lines.
    #[must_use]
    pub fn table_text(&self, keys: Keys) -> String {
        self.current_table().to_text(keys)
    }

    /// `dmsetup status`: `<start> <len> <type> <info>` per line.
    #[must_use]
    pub fn status_text(&self) -> String {
        let mut s = String::new();
        for (line, seg) in self.table.lines.iter().zip(&self.segments) {
            s.push_str(&format!(
                "{} {} {} {}\n",
                line.start,
                line.len,
                line.spec.target_type(),
                seg.target.status()
            ));
        }
        s
    }

    /// `dmsetup message <dev> <sector> <words>`: deliver to the target covering `sector`.
    pub fn message(&self, sector: Sector, argv: &[&str]) -> Result<String> {
        check_range(self.size, sector, SectorCount(1))?;
        let seg = &self.segments[self.segment_index(sector)];
        seg.target.message(argv)
    }

    /// `dm_table_presuspend_targets`.
    pub fn presuspend(&self) {
        for seg in &self.segments {
            seg.target.presuspend();
        }
    }

    /// `dm_table_postsuspend_targets`: every target, the first error reported.
    pub fn postsuspend(&self) -> Result<()> {
        let mut first = Ok(());
        for seg in &self.segments {
            let r = seg.target.postsuspend();
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// `dm_table_resume_targets`: preresume every target (the first error aborts the resume
    /// and is returned as the target gave it), then resume every target.
    pub fn resume(&self) -> Result<()> {
        for seg in &self.segments {
            seg.target.preresume()?;
        }
        for seg in &self.segments {
            seg.target.resume();
        }
        Ok(())
    }

    fn writable(&self) -> Result<()> {
        match self.mode {
            TableMode::ReadWrite => Ok(()),
            TableMode::ReadOnly => Err(Error::ReadOnly {
                target: self.name.clone(),
            }),
        }
    }

    /// Call `op(segment, sector within segment, byte range of the request)` for each piece
    /// of `[sector, sector + count)`.
    fn for_pieces<'a>(
        &'a self,
        sector: Sector,
        count: SectorCount,
        mut op: impl FnMut(&'a Segment, Sector, SectorCount, usize) -> Result<()>,
    ) -> Result<()> {
        let mut at = sector;
        let end = sector + count;
        let mut done = 0usize;
        let mut i = self.segment_index(sector);
        while at < end {
            let seg = &self.segments[i];
            let seg_end = seg.start + seg.len;
            let piece = SectorCount(end.0.min(seg_end.0) - at.0);
            op(seg, Sector(at.0 - seg.start.0), piece, done)?;
            done += piece.usize_bytes()?;
            at += piece;
            i += 1;
        }
        Ok(())
    }
}

impl LoadedTable {
    /// A read that spans lines: pieces served at once when a line holds requests (see
    /// `concurrent`), in order otherwise.
    #[cold]
    fn read_pieces(&self, sector: Sector, count: SectorCount, buf: &mut [u8]) -> Result<()> {
        if self.concurrent {
            let mut jobs: Vec<Box<dyn FnOnce() -> Result<()> + Send + '_>> = Vec::new();
            let mut rest = buf;
            self.for_pieces(sector, count, |seg, rel, len, _| {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(len.usize_bytes()?);
                rest = tail;
                jobs.push(Box::new(move || seg.target.read(rel, piece)));
                Ok(())
            })?;
            return run_all(jobs);
        }
        self.for_pieces(sector, count, |seg, rel, len, done| {
            let end = done + len.usize_bytes()?;
            seg.target.read(rel, &mut buf[done..end])
        })
    }

    /// Write `buf` at `sector` with `op` on each line's piece: pieces served at once when a
    /// line holds requests (see `concurrent`), in order otherwise.
    fn write_pieces(
        &self,
        sector: Sector,
        buf: &[u8],
        op: impl Fn(&dyn Target, Sector, &[u8]) -> Result<()> + Copy + Send,
    ) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.check_block(sector, count)?;
        self.writable()?;
        if count.0 == 0 {
            return Ok(());
        }
        if self.concurrent {
            let mut jobs: Vec<Box<dyn FnOnce() -> Result<()> + Send + '_>> = Vec::new();
            self.for_pieces(sector, count, |seg, rel, len, done| {
                let piece = &buf[done..done + len.usize_bytes()?];
                jobs.push(Box::new(move || op(&*seg.target, rel, piece)));
                Ok(())
            })?;
            return run_all(jobs);
        }
        self.for_pieces(sector, count, |seg, rel, len, done| {
            let end = done + len.usize_bytes()?;
            op(&*seg.target, rel, &buf[done..end])
        })
    }
}

/// Run every job on its own thread and wait for all of them: the first error wins, a panic
/// goes on to the caller. (The kernel's clones of a split bio proceed independently.)
fn run_all<'a>(jobs: Vec<Box<dyn FnOnce() -> Result<()> + Send + 'a>>) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|job| s.spawn(job)).collect();
        let mut first = Ok(());
        for h in handles {
            let r = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// `validate_hardware_logical_block_alignment` where it matters here: the table must end on
/// a whole logical block of the device (the largest of its lines'). The kernel then names
/// the last line with the number of lines as its index. (Its other refusal, a line whose
/// own devices' block size cannot take the sectors left over from the line before, needs
/// block sizes dmemu's plain volumes do not have.)
fn misaligned_table(segments: &[Segment], block: u64) -> Option<Error> {
    let last = segments.last()?;
    let end = last.start.0.checked_add(last.len.0)?;
    if block <= 1 || end % block == 0 {
        return None;
    }
    Some(Error::invalid(
        "table",
        format!(
            "table line {} (start sect {} len {}) not aligned to h/w logical block size {}",
            segments.len(),
            last.start.0,
            last.len.0,
            block * 512
        ),
    ))
}

impl LoadedTable {
    /// `read` in full: the range and block checks with their errors, then the segment's
    /// target, or the pieces of a request that spans segments.
    #[cold]
    #[inline(never)]
    fn read_checked(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.check_block(sector, count)?;
        if count.0 == 0 {
            return Ok(());
        }
        let seg = &self.segments[self.segment_index(sector)];
        let rel = Sector(sector.0 - seg.start.0);
        if rel.0 + count.0 <= seg.len.0 {
            return seg.target.read(rel, buf);
        }
        self.read_pieces(sector, count, buf)
    }

    /// The block layer's check for a device with logical blocks larger than a sector:
    /// a request must start and end on a block (EINVAL otherwise). `block_mask` makes the
    /// common case one test (block sizes are powers of two); what it flags is checked
    /// exactly, out of line.
    #[inline]
    fn check_block(&self, sector: Sector, count: SectorCount) -> Result<()> {
        if (sector.0 | count.0) & self.block_mask == 0 {
            return Ok(());
        }
        self.check_block_exactly(sector, count)
    }

    #[cold]
    #[inline(never)]
    fn check_block_exactly(&self, sector: Sector, count: SectorCount) -> Result<()> {
        if self.block > 1 && (sector.0 % self.block != 0 || count.0 % self.block != 0) {
            return Err(Error::invalid(
                "request",
                format!(
                    "sector {} count {} is not aligned to the logical block size {}",
                    sector.0,
                    count.0,
                    self.block * 512
                ),
            ));
        }
        Ok(())
    }
}

impl LoadedTable {
    /// The shared profile, with `tags` bytes matching `data` bytes of it.
    fn tagged_profile(&self, data: usize, tags: usize) -> Result<TagProfile> {
        let p = self.tag_profile().ok_or(Error::Unsupported {
            target: "device-mapper",
            op: "tagged I/O on a table without one integrity profile",
        })?;
        if data % p.interval as usize != 0 || p.tag_bytes(data) != tags {
            return Err(Error::invalid(
                "tagged request",
                format!(
                    "{data} data bytes and {tags} tag bytes do not fit the profile \
                     ({} tag bytes per {} bytes)",
                    p.tuple_size, p.interval
                ),
            ));
        }
        Ok(p)
    }
}

impl Volume for LoadedTable {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn logical_block_size(&self) -> u32 {
        u32::try_from(self.block * 512).unwrap_or(u32::MAX)
    }

    // The hot path (one aligned request inside one segment) is a few tests before the
    // target's read, small enough to inline into the device's read; anything else (errors,
    // requests that span segments) goes out of line to `read_checked`.
    #[inline]
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let count = (len / SECTOR_SIZE) as u64;
        if len % SECTOR_SIZE == 0 && count != 0 && (sector.0 | count) & self.block_mask == 0 {
            let seg = &self.segments[self.segment_index(sector)];
            let rel = sector.0.wrapping_sub(seg.start.0);
            if sector.0 < self.size.0 && rel < seg.len.0 && count <= seg.len.0 - rel {
                return seg.target.read(Sector(rel), buf);
            }
        }
        self.read_checked(sector, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write_pieces(sector, buf, |t, rel, piece| t.write(rel, piece))
    }

    /// Every line whose target takes flushes (`Target::takes_flushes`, the kernel's
    /// `num_flush_bios`), side by side when the table is concurrent.
    fn flush(&self) -> Result<()> {
        let mut lines = self
            .segments
            .iter()
            .filter(|seg| seg.target.takes_flushes());
        if self.concurrent && self.segments.len() > 1 {
            return run_all(
                lines
                    .map(|seg| -> Box<dyn FnOnce() -> Result<()> + Send + '_> {
                        Box::new(move || seg.target.flush())
                    })
                    .collect(),
            );
        }
        lines.try_for_each(|seg| seg.target.flush())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.check_block(sector, count)?;
        self.writable()?;
        if count.0 == 0 {
            return Ok(());
        }
        self.for_pieces(sector, count, |seg, rel, len, _| {
            seg.target.discard(rel, len)
        })
    }

    /// Split like `write`; each piece is a FUA write to its line.
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write_pieces(sector, buf, |t, rel, piece| t.write_fua(rel, piece))
    }

    /// Split like `discard`; each line zeroes its piece its own way.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.check_block(sector, count)?;
        self.writable()?;
        if count.0 == 0 {
            return Ok(());
        }
        self.for_pieces(sector, count, |seg, rel, len, _| {
            seg.target.write_zeroes(rel, len, unmap)
        })
    }

    /// The profile every line shares (dm core stacks an integrity profile only when all
    /// devices of the table have the same one).
    fn tag_profile(&self) -> Option<TagProfile> {
        let first = self.segments.first()?.target.tag_profile()?;
        self.segments[1..]
            .iter()
            .all(|s| s.target.tag_profile() == Some(first))
            .then_some(first)
    }

    /// Split like `read`, the tags with the data.
    fn read_tagged(&self, sector: Sector, buf: &mut [u8], tags: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.check_block(sector, count)?;
        let p = self.tagged_profile(buf.len(), tags.len())?;
        self.for_pieces(sector, count, |seg, rel, len, done| {
            let end = done + len.usize_bytes()?;
            let t = p.tag_bytes(done)..p.tag_bytes(end);
            seg.target
                .read_tagged(rel, &mut buf[done..end], &mut tags[t])
        })
    }

    /// Split like `write`, the tags with the data.
    fn write_tagged(&self, sector: Sector, buf: &[u8], tags: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.check_block(sector, count)?;
        self.writable()?;
        let p = self.tagged_profile(buf.len(), tags.len())?;
        self.for_pieces(sector, count, |seg, rel, len, done| {
            let end = done + len.usize_bytes()?;
            let t = p.tag_bytes(done)..p.tag_bytes(end);
            seg.target.write_tagged(rel, &buf[done..end], &tags[t])
        })
    }

    /// Each line's answer for its piece, merged across line edges; stops where one line's
    /// answer stops early or fills the list.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        let mut out = Extents::new();
        if count.0 == 0 {
            return Ok(Vec::new());
        }
        let mut stopped = false;
        self.for_pieces(sector, count, |seg, rel, len, _| {
            if !stopped {
                stopped = !out.append_from(&*seg.target, rel, len)?;
            }
            Ok(())
        })?;
        Ok(out.into_vec())
    }
}
