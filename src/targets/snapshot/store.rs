//! Exception stores: the persistent on-disk format of the COW device (kernel
//! dm-snap-persistent.c) and the in-memory transient store (dm-snap-transient.c).
//!
//! Persistent layout, in chunks of `chunk_size` sectors (`epa` = exceptions per area =
//! `chunk_size * 512 / 16`):
//!
//! ```text
//! chunk 0                 header: le32 magic "SnAp", valid, version (1), chunk_size; rest 0
//! chunk 1                 area 0: epa x { le64 old_chunk, le64 new_chunk }
//! chunks 2 .. epa+1       data chunks of area 0's exceptions
//! chunk epa+2             area 1, then its data chunks, ...   (area N at 1 + N*(epa+1))
//! ```
//!
//! An area's list ends at the first entry whose `new_chunk` is 0 (chunk 0 is the header, so
//! it can never hold data); areas are read until one is not full (`read_exceptions`).

use crate::error::{Error, Result};
use crate::units::Sector;
use crate::volume::Volume;

/// `SNAP_MAGIC`: "SnAp" little-endian.
pub const SNAP_MAGIC: u32 = 0x7041_6e53;
/// `SNAPSHOT_DISK_VERSION`.
pub const SNAPSHOT_DISK_VERSION: u32 = 1;
/// `DM_CHUNK_SIZE_DEFAULT_SECTORS`: the chunk size of a new store when the table gives 0.
pub const DEFAULT_CHUNK_SECTORS: u32 = 32;
/// `NUM_SNAPSHOT_HDR_CHUNKS`.
const HDR_CHUNKS: u64 = 1;
/// Bytes in a sector (the COW's logical block size is 512 for every dmemu volume).
const SECTOR_BYTES: u64 = 512;

/// `struct disk_header` (16 bytes at the start of chunk 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskHeader {
    /// `SNAP_MAGIC`, or 0 for a store that was never written.
    pub magic: u32,
    /// 1 while the snapshot is usable; 0 once invalidated.
    pub valid: u32,
    /// On-disk format version (1).
    pub version: u32,
    /// Chunk size in sectors.
    pub chunk_size: u32,
}

impl DiskHeader {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Decode the little-endian fields.
    #[must_use]
    pub fn decode(b: &[u8; Self::SIZE]) -> DiskHeader {
        let f = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        DiskHeader {
            magic: f(0),
            valid: f(4),
            version: f(8),
            chunk_size: f(12),
        }
    }

    /// Encode little-endian.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.valid.to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        b
    }
}

/// `struct disk_exception`: origin chunk `old_chunk` lives in COW chunk `new_chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskException {
    /// Chunk number on the origin.
    pub old_chunk: u64,
    /// Chunk number on the COW device.
    pub new_chunk: u64,
}

impl DiskException {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Decode the little-endian fields.
    #[must_use]
    pub fn decode(b: &[u8; Self::SIZE]) -> DiskException {
        let mut lo = [0; 8];
        let mut hi = [0; 8];
        lo.copy_from_slice(&b[..8]);
        hi.copy_from_slice(&b[8..]);
        DiskException {
            old_chunk: u64::from_le_bytes(lo),
            new_chunk: u64::from_le_bytes(hi),
        }
    }

    /// Encode little-endian.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[..8].copy_from_slice(&self.old_chunk.to_le_bytes());
        b[8..].copy_from_slice(&self.new_chunk.to_le_bytes());
        b
    }
}

/// The chunk size checks of `dm_exception_store_set_chunk_size` (512-byte logical blocks).
pub fn check_chunk_size(chunk: u32) -> std::result::Result<(), &'static str> {
    if !chunk.is_power_of_two() {
        return Err("Chunk size is not a power of 2");
    }
    if chunk > super::MAX_CHUNK_SECTORS {
        return Err("Chunk size is too high");
    }
    Ok(())
}

fn corrupt(what: &'static str, offset: u64, detail: impl Into<String>) -> Error {
    Error::Corrupt {
        what,
        offset,
        detail: detail.into(),
    }
}

/// How the store's header was found at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Magic 0: a new store; the header and area 0 were written (`new_snapshot`).
    New,
    /// A valid store; its exceptions were handed to the callback.
    Valid,
    /// `valid == 0`: the snapshot loads but is invalid; no exceptions were read.
    Invalid,
}

/// Usage as `dmsetup status` prints it: `<allocated>/<total> <metadata>` in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// `sectors_allocated`.
    pub allocated: u64,
    /// `total_sectors`: the COW device size.
    pub total: u64,
    /// `metadata_sectors`.
    pub metadata: u64,
}

/// `struct pstore`: the persistent store's in-memory state.
#[derive(Debug)]
pub struct PersistentStore {
    chunk: u64,
    epa: u64,
    cow_sectors: u64,
    valid: bool,
    /// The current area as on disk plus entries added since; entries past
    /// `current_committed` keep whatever the disk held (the kernel copies the whole chunk).
    area: Vec<u8>,
    current_area: u64,
    current_committed: u64,
    next_free: u64,
}

impl PersistentStore {
    /// `persistent_read_metadata`: read (or initialise) the store on `cow`, calling
    /// `exception(old, new, byte_offset)` for every exception in on-disk order. `table_chunk`
    /// is the table's chunk size (0 = from the header, or the default for a new store).
    pub fn open(
        cow: &dyn Volume,
        table_chunk: u32,
        mut exception: impl FnMut(u64, u64, u64) -> Result<()>,
    ) -> Result<(PersistentStore, Loaded)> {
        let cow_sectors = cow.size().0;
        // read_header: a table chunk size of 0 means the default (the COW's logical block
        // size is 512 here, so max(32, 1) = 32).
        let mut chunk = if table_chunk == 0 {
            DEFAULT_CHUNK_SECTORS
        } else {
            table_chunk
        };
        let whole = |chunk: u32, what: &'static str| -> Result<usize> {
            let bytes = u64::from(chunk) * SECTOR_BYTES;
            if u64::from(chunk) > cow_sectors {
                return Err(corrupt(
                    what,
                    0,
                    format!(
                        "chunk of {chunk} sectors does not fit on a COW device of \
                         {cow_sectors} sectors (reading chunk 0 fails: EIO)"
                    ),
                ));
            }
            usize::try_from(bytes).map_err(|_| corrupt(what, 0, "chunk too large"))
        };
        // chunk_io(header_area, 0): the kernel reads the whole chunk 0.
        whole(chunk, "snapshot COW header")?;
        let header = read_header_bytes(cow)?;

        if header.magic == 0 {
            let epa = u64::from(chunk) * SECTOR_BYTES / 16;
            let ps = PersistentStore {
                chunk: u64::from(chunk),
                epa,
                cow_sectors,
                valid: true,
                area: vec![0; whole(chunk, "snapshot COW header")?],
                current_area: 0,
                current_committed: 0,
                next_free: HDR_CHUNKS + 1,
            };
            ps.write_header(cow)?;
            ps.zero_disk_area(cow, 0)?;
            return Ok((ps, Loaded::New));
        }
        if header.magic != SNAP_MAGIC {
            return Err(corrupt(
                "snapshot COW header magic",
                0,
                format!(
                    "{:#010x} is not {SNAP_MAGIC:#010x} (kernel: Invalid or corrupt snapshot, ENXIO)",
                    header.magic
                ),
            ));
        }
        if header.chunk_size != chunk {
            check_chunk_size(header.chunk_size).map_err(|why| {
                corrupt(
                    "snapshot COW header chunk_size",
                    12,
                    format!("invalid on-disk chunk size {}: {why}.", header.chunk_size),
                )
            })?;
            chunk = header.chunk_size;
        }
        let epa = u64::from(chunk) * SECTOR_BYTES / 16;
        let mut ps = PersistentStore {
            chunk: u64::from(chunk),
            epa,
            cow_sectors,
            valid: header.valid != 0,
            area: Vec::new(),
            current_area: 0,
            current_committed: 0,
            next_free: HDR_CHUNKS + 1,
        };
        if header.version != SNAPSHOT_DISK_VERSION {
            return Err(corrupt(
                "snapshot COW header version",
                8,
                format!("unable to handle snapshot disk version {}", header.version),
            ));
        }
        if !ps.valid {
            return Ok((ps, Loaded::Invalid));
        }
        ps.area = vec![0; whole(chunk, "snapshot exception area")?];
        ps.read_exceptions(cow, &mut exception)?;
        Ok((ps, Loaded::Valid))
    }

    /// `read_exceptions` + `insert_exceptions`: areas 0, 1, ... until one is not full.
    /// Bounded: every area read lies on the COW device, and each holds `epa` entries.
    fn read_exceptions(
        &mut self,
        cow: &dyn Volume,
        exception: &mut impl FnMut(u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let cow_chunks = self.cow_sectors / self.chunk;
        let mut buf = vec![0; self.area.len()];
        let mut area = 0u64;
        loop {
            let loc = self.area_location(area).filter(|&c| c < cow_chunks);
            let Some(loc) = loc else {
                return Err(corrupt(
                    "snapshot exception area",
                    self.chunk_offset(self.area_location(area).unwrap_or(u64::MAX)),
                    format!(
                        "area {area} lies beyond the end of the COW device ({cow_chunks} \
                         chunks of {} sectors): every earlier area is full (kernel: \
                         Failed to read snapshot metadata, EIO)",
                        self.chunk
                    ),
                ));
            };
            cow.read(Sector(loc * self.chunk), &mut buf)?;
            let base = self.chunk_offset(loc);
            let mut full = true;
            for (i, entry) in (0u64..).zip(buf.chunks_exact(DiskException::SIZE)) {
                let mut b = [0; DiskException::SIZE];
                b.copy_from_slice(entry);
                let e = DiskException::decode(&b);
                if e.new_chunk == 0 {
                    self.current_committed = i;
                    full = false;
                    break;
                }
                let offset = base + i * 16;
                // A new_chunk beyond the COW loads, as in the kernel; I/O to that chunk
                // fails (Snapshot::remap). Kernel arithmetic is modulo 2^64.
                if self.next_free <= e.new_chunk {
                    self.next_free = e.new_chunk.wrapping_add(1);
                }
                exception(e.old_chunk, e.new_chunk, offset)?;
            }
            if !full {
                self.area.copy_from_slice(&buf);
                self.current_area = area;
                break;
            }
            area += 1;
        }
        self.skip_metadata();
        Ok(())
    }

    /// Byte offset of chunk `c` on the COW (saturating: only used in error messages).
    fn chunk_offset(&self, c: u64) -> u64 {
        c.saturating_mul(self.chunk).saturating_mul(SECTOR_BYTES)
    }

    /// `area_location`: `1 + area * (epa + 1)`; None when that overflows.
    fn area_location(&self, area: u64) -> Option<u64> {
        area.checked_mul(self.epa + 1)?.checked_add(HDR_CHUNKS)
    }

    /// `skip_metadata`: never hand out an area's chunk as a data chunk.
    fn skip_metadata(&mut self) {
        if self.next_free % (self.epa + 1) == HDR_CHUNKS {
            self.next_free = self.next_free.wrapping_add(1);
        }
    }

    /// Chunk size in sectors (the header's when it overrode the table's).
    #[must_use]
    pub fn chunk_sectors(&self) -> u64 {
        self.chunk
    }

    /// Whether the store is still valid (header `valid`, cleared by failed commits).
    #[must_use]
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// `write_header`: the header followed by zeros, one chunk.
    fn write_header(&self, cow: &dyn Volume) -> Result<()> {
        let mut chunk0 = vec![0; self.area_len()];
        let h = DiskHeader {
            magic: SNAP_MAGIC,
            valid: u32::from(self.valid),
            version: SNAPSHOT_DISK_VERSION,
            chunk_size: u32::try_from(self.chunk).unwrap_or(u32::MAX),
        };
        chunk0[..DiskHeader::SIZE].copy_from_slice(&h.encode());
        cow.write(Sector(0), &chunk0)?;
        cow.flush()
    }

    fn area_len(&self) -> usize {
        // Checked against the COW size in `open`, so the area fits in memory.
        usize::try_from(self.chunk * SECTOR_BYTES).unwrap_or(usize::MAX)
    }

    fn area_sector(&self, area: u64) -> Result<Sector> {
        self.area_location(area)
            .and_then(|c| c.checked_mul(self.chunk))
            .map(Sector)
            .ok_or_else(|| corrupt("snapshot exception area", u64::MAX, "area number overflows"))
    }

    /// `zero_disk_area`.
    fn zero_disk_area(&self, cow: &dyn Volume, area: u64) -> Result<()> {
        let zeros = vec![0; self.area_len()];
        cow.write(self.area_sector(area)?, &zeros)
    }

    /// `area_io(WRITE | PREFLUSH | FUA)`: the data written before is durable before the
    /// area that points at it, and the area is durable when this returns.
    fn write_area(&self, cow: &dyn Volume) -> Result<()> {
        cow.flush()?;
        cow.write(self.area_sector(self.current_area)?, &self.area)?;
        cow.flush()
    }

    /// `persistent_prepare_exception`: the next free data chunk, or None when the COW is
    /// full (ENOSPC).
    pub fn prepare_exception(&mut self) -> Option<u64> {
        // sector_t arithmetic, as in the kernel (only a damaged store gets near 2^64).
        let need = self.next_free.wrapping_add(1).wrapping_mul(self.chunk);
        if self.cow_sectors < need {
            return None;
        }
        let new = self.next_free;
        self.next_free = self.next_free.wrapping_add(1);
        self.skip_metadata();
        Some(new)
    }

    /// `persistent_commit_exception` for one exception whose data is on the COW: add it to
    /// the current area and write the area (zeroing the next area first when this one is
    /// now full). Returns whether the store is still valid (false: the snapshot must be
    /// invalidated).
    pub fn commit_exception(&mut self, cow: &dyn Volume, old: u64, new: u64) -> bool {
        let e = DiskException {
            old_chunk: old,
            new_chunk: new,
        };
        let at = usize::try_from(self.current_committed).unwrap_or(usize::MAX) * 16;
        self.area[at..at + 16].copy_from_slice(&e.encode());
        self.current_committed += 1;
        let full = self.current_committed == self.epa;
        if full && self.zero_disk_area(cow, self.current_area + 1).is_err() {
            self.valid = false;
        }
        if self.valid && self.write_area(cow).is_err() {
            self.valid = false;
        }
        if full {
            self.current_committed = 0;
            self.current_area += 1;
            self.area.fill(0);
        }
        self.valid
    }

    /// `persistent_drop_snapshot`: mark invalid on disk (a failed header write is only
    /// warned about by the kernel).
    pub fn drop_snapshot(&mut self, cow: &dyn Volume) {
        self.valid = false;
        let _ = self.write_header(cow);
    }

    /// `persistent_prepare_merge`: the last exception `(old, new)` and how many entries
    /// before it are consecutive with it in both chunks; None when nothing is left.
    pub fn prepare_merge(&mut self, cow: &dyn Volume) -> Result<Option<(u64, u64, u64)>> {
        if self.current_committed == 0 {
            if self.current_area == 0 {
                return Ok(None);
            }
            self.current_area -= 1;
            let sector = self.area_sector(self.current_area)?;
            cow.read(sector, &mut self.area)?;
            self.current_committed = self.epa;
        }
        let last = self.entry(self.current_committed - 1);
        let mut n = 1;
        while n < self.current_committed {
            let e = self.entry(self.current_committed - 1 - n);
            if Some(e.old_chunk) != last.old_chunk.checked_sub(n)
                || Some(e.new_chunk) != last.new_chunk.checked_sub(n)
            {
                break;
            }
            n += 1;
        }
        Ok(Some((last.old_chunk, last.new_chunk, n)))
    }

    /// `persistent_commit_merge`: clear the last `n` entries and write the area.
    pub fn commit_merge(&mut self, cow: &dyn Volume, n: u64) -> Result<()> {
        for i in 0..n.min(self.current_committed) {
            let at = self.entry_at(self.current_committed - 1 - i);
            self.area[at..at + 16].fill(0);
        }
        self.write_area(cow)?;
        self.current_committed -= n.min(self.current_committed);
        // The kernel frees the merged chunks by pointing next_free just past the area's
        // remaining entries.
        self.next_free = self
            .area_location(self.current_area)
            .unwrap_or(u64::MAX)
            .saturating_add(self.current_committed + 1);
        Ok(())
    }

    fn entry_at(&self, i: u64) -> usize {
        usize::try_from(i).unwrap_or(usize::MAX) * 16
    }

    fn entry(&self, i: u64) -> DiskException {
        let at = self.entry_at(i);
        let mut b = [0; 16];
        b.copy_from_slice(&self.area[at..at + 16]);
        DiskException::decode(&b)
    }

    /// `persistent_usage`.
    #[must_use]
    pub fn usage(&self) -> Usage {
        Usage {
            allocated: self.next_free.wrapping_mul(self.chunk),
            total: self.cow_sectors,
            metadata: (self.current_area + 1 + HDR_CHUNKS) * self.chunk,
        }
    }
}

/// Read the 16-byte header from the first sector of `cow`.
fn read_header_bytes(cow: &dyn Volume) -> Result<DiskHeader> {
    let mut sector = [0; 512];
    cow.read(Sector(0), &mut sector)?;
    let mut b = [0; DiskHeader::SIZE];
    b.copy_from_slice(&sector[..DiskHeader::SIZE]);
    Ok(DiskHeader::decode(&b))
}

/// The transient store (`struct transient_c`): chunks from COW sector 0 upward.
#[derive(Debug)]
pub struct TransientStore {
    chunk: u64,
    cow_sectors: u64,
    /// In sectors.
    next_free: u64,
}

impl TransientStore {
    /// `transient_ctr` for a COW of `cow_sectors`.
    #[must_use]
    pub fn new(chunk: u64, cow_sectors: u64) -> TransientStore {
        TransientStore {
            chunk,
            cow_sectors,
            next_free: 0,
        }
    }

    /// `transient_prepare_exception`.
    pub fn prepare_exception(&mut self) -> Option<u64> {
        if self.cow_sectors < self.next_free.checked_add(self.chunk)? {
            return None;
        }
        let new = self.next_free / self.chunk;
        self.next_free += self.chunk;
        Some(new)
    }

    /// `transient_usage`.
    #[must_use]
    pub fn usage(&self) -> Usage {
        Usage {
            allocated: self.next_free,
            total: self.cow_sectors,
            metadata: 0,
        }
    }
}
