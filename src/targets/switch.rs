//! `switch`: fixed-size regions of the device, each mapped to one of several paths by a
//! region table that `dmsetup message` rewrites (kernel dm-switch.c, v1.1.0).
//!
//! Table args: `<num_paths> <region_size> <#optional args> (<dev> <offset>){num_paths}`; the
//! optional-argument count must be 0. Target sector `s` lies in region `s / region_size`;
//! the region table names its path, and the request goes to that path's device at
//! `offset + s` (the offset is the path's start, the sector is the target's own, not the
//! sector within the region).
//!
//! As in 6.12: the region table starts round robin (region `r` → path `r mod num_paths`);
//! requests are split at region boundaries (`dm_set_target_max_io_len(region_size)`);
//! a discard is sent whole down the path of its first sector (`num_discard_bios = 1` and no
//! `max_discard_granularity`, so dm core does not split it at regions); write-zeroes is not
//! passed down (the block layer's fallback writes zero buffers); each path's area checked at
//! load is `[offset, offset + len)`. The `set_region_mappings` message takes `index:path`
//! (hex), `:path` (the region after the last one set) and `Rcycle,count` (repeat: each of
//! the next `count` regions copies the region `cycle` before it), applies its arguments in
//! order and stops at the first bad one, the ones before it staying applied, with the
//! kernel's DMWARN words. The table prints `%u %u 0` then each path's device and start.
//!
//! Kept as a packed table like the kernel's (`region_table_entry_bits` per region in
//! 64-bit slots), read with relaxed atomic loads as the kernel's `READ_ONCE`. A table larger
//! than [`MAX_REGION_TABLE_BYTES`] is refused with the kernel's words for a failed vmalloc.
//! A flush reaches no path: the kernel's switch sets no `num_flush_bios`, so dm core sends it
//! no flush clone (`__send_empty_flush`) and the flush completes at once, while a FUA write
//! goes down its path as FUA (the device inherits its paths' write cache and FUA). Shown with
//! log-writes paths in tests/switch_kernel.rs (fixture made by make-switch-flush.sh).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::table::args::{ArgResult, Args};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{
    check_io, check_range, chunks, Extent, Extents, SharedVolume, Volume, MAX_WALK,
};

use super::{DeviceAt, DeviceRef, Target};

/// `(KMALLOC_MAX_SIZE − sizeof(struct switch_ctx)) / sizeof(struct switch_path)` on x86-64:
/// `(4 MiB − 40) / 16`.
pub const MAX_PATHS: u32 = 262_141;

/// The largest region table dmemu allocates (bytes); the kernel's limit is what vmalloc
/// finds.
pub const MAX_REGION_TABLE_BYTES: u64 = 256 << 20;

/// Parsed `switch` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchArgs {
    /// Sectors per region.
    pub region_size: u32,
    /// The paths, each a device and the sector on it where target sector 0 would lie.
    pub paths: Vec<DeviceAt>,
}

impl SwitchArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "switch";

    /// Parse like `switch_ctr` (the device lookups happen at build).
    pub fn parse(args: &mut Args<'_>) -> ArgResult<SwitchArgs> {
        let nr_paths = args.scan_arg_in(1..=MAX_PATHS, "Invalid number of paths")?;
        let region_size = args.scan_arg_in(1..=u32::MAX, "Invalid region size")?;
        // dm_read_arg_group with {0, 0}: the count must be 0, so it never exceeds what is
        // left.
        args.scan_arg_in(0..=0, "Invalid number of optional args")?;
        if args.remaining() as u64 != u64::from(nr_paths) * 2 {
            return Err(Args::error("Incorrect number of path arguments"));
        }
        let mut paths = Vec::with_capacity(args.remaining() / 2);
        while args.remaining() > 0 {
            let device = DeviceRef::parse(args, "Device lookup failed")?;
            let offset = SectorCount(args.kstrtoull("Invalid device starting offset")?);
            paths.push(DeviceAt { device, offset });
        }
        Ok(SwitchArgs { region_size, paths })
    }
}

impl fmt::Display for SwitchArgs {
    /// `DMEMIT("%u %u 0", ...)` then ` %s %llu` per path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} 0", self.paths.len(), self.region_size)?;
        for p in &self.paths {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

/// One path: its device and start.
#[derive(Debug)]
struct Path {
    device: SharedVolume,
    start: u64,
}

/// The packed region table (`switch_ctx.region_table`).
#[derive(Debug)]
struct RegionTable {
    slots: Vec<AtomicU64>,
    nr_regions: u64,
    entry_bits: u32,
    per_slot: u64,
}

impl RegionTable {
    /// `alloc_region_table` + `initialise_region_table`.
    fn new(len: SectorCount, region_size: u32, nr_paths: u32) -> Result<RegionTable> {
        let mut entry_bits = 1u32;
        while entry_bits < 64 && (1u64 << entry_bits) < u64::from(nr_paths) {
            entry_bits += 1;
        }
        let per_slot = u64::from(64 / entry_bits);
        let nr_regions = len.0.div_ceil(u64::from(region_size));
        if nr_regions == u64::MAX {
            return Err(Error::invalid("switch", "Region table too large"));
        }
        let nr_slots = nr_regions.div_ceil(per_slot);
        if nr_slots.saturating_mul(8) > MAX_REGION_TABLE_BYTES {
            return Err(Error::invalid(
                "switch",
                format!(
                    "Cannot allocate region table ({nr_regions} regions need {} bytes, \
                     dmemu's limit is {MAX_REGION_TABLE_BYTES})",
                    nr_slots.saturating_mul(8)
                ),
            ));
        }
        let slots = usize::try_from(nr_slots)
            .map_err(|_| Error::invalid("switch", "Cannot allocate region table"))?;
        let table = RegionTable {
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            nr_regions,
            entry_bits,
            per_slot,
        };
        let n = u64::from(nr_paths);
        for r in 0..nr_regions {
            table.write(r, r % n);
        }
        Ok(table)
    }

    fn position(&self, region: u64) -> (usize, u32) {
        // region < nr_regions, so the slot index fits the allocated vector.
        let slot = usize::try_from(region / self.per_slot).unwrap_or(usize::MAX);
        let bit = u32::try_from(region % self.per_slot).unwrap_or(0) * self.entry_bits;
        (slot, bit)
    }

    fn mask(&self) -> u64 {
        if self.entry_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.entry_bits) - 1
        }
    }

    /// `switch_region_table_read`.
    fn read(&self, region: u64) -> u64 {
        let (slot, bit) = self.position(region);
        self.slots
            .get(slot)
            .map_or(0, |s| (s.load(Ordering::Relaxed) >> bit) & self.mask())
    }

    /// `switch_region_table_write` (callers hold the message lock).
    fn write(&self, region: u64, value: u64) {
        let (slot, bit) = self.position(region);
        if let Some(s) = self.slots.get(slot) {
            let mut pte = s.load(Ordering::Relaxed);
            pte &= !(self.mask() << bit);
            pte |= (value & self.mask()) << bit;
            s.store(pte, Ordering::Relaxed);
        }
    }
}

/// A constructed switch target.
#[derive(Debug)]
pub struct Switch {
    args: SwitchArgs,
    paths: Vec<Path>,
    region: SectorCount,
    table: RegionTable,
    messages: Mutex<()>,
    size: SectorCount,
}

impl Switch {
    /// Resolve every path and check `[offset, offset + len)` lies on it, as the kernel does.
    pub fn new(args: &SwitchArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Switch> {
        let devices = args
            .paths
            .iter()
            .map(|p| device_area(ctx, p, len))
            .collect::<Result<Vec<_>>>()?;
        Switch::over(devices, args, len)
    }

    /// A switch over already-open volumes, one per path in order (library use). The device
    /// areas are not checked.
    pub fn over(devices: Vec<SharedVolume>, args: &SwitchArgs, len: SectorCount) -> Result<Switch> {
        if devices.len() != args.paths.len() || args.paths.is_empty() || args.region_size == 0 {
            return Err(Error::invalid(
                "switch",
                "one device per path and a region size are needed",
            ));
        }
        let nr_paths = u32::try_from(args.paths.len())
            .map_err(|_| Error::invalid("switch", "Invalid number of paths"))?;
        let table = RegionTable::new(len, args.region_size, nr_paths)?;
        let paths = devices
            .into_iter()
            .zip(&args.paths)
            .map(|(device, p)| Path {
                device,
                start: p.offset.0,
            })
            .collect();
        Ok(Switch {
            args: args.clone(),
            paths,
            region: SectorCount(u64::from(args.region_size)),
            table,
            messages: Mutex::new(()),
            size: len,
        })
    }

    /// The path each region maps to, in region order (what `set_region_mappings` set).
    #[must_use]
    pub fn region_paths(&self) -> Vec<u32> {
        (0..self.table.nr_regions)
            .map(|r| u32::try_from(self.path_nr(r)).unwrap_or(0))
            .collect()
    }

    /// `switch_get_path_nr` for a region: a value past the paths (impossible here) reads 0.
    fn path_nr(&self, region: u64) -> u64 {
        let p = self.table.read(region);
        if p >= self.paths.len() as u64 {
            0
        } else {
            p
        }
    }

    /// `switch_map`: the path of sector `s` and the sector on its device.
    fn map(&self, s: Sector) -> Result<(&Path, Sector)> {
        let path = &self.paths[usize::try_from(self.path_nr(s.0 / self.region.0)).unwrap_or(0)];
        let at = path.start.checked_add(s.0).ok_or_else(|| {
            Error::invalid(
                "switch",
                format!("sector {} maps beyond the addressable range", s.0),
            )
        })?;
        Ok((path, Sector(at)))
    }

    /// Run `op(path, device sector, sectors, byte offset in the request)` on each region
    /// piece.
    fn each_piece(
        &self,
        sector: Sector,
        count: SectorCount,
        mut op: impl FnMut(&Path, Sector, SectorCount, usize) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        for (at, len) in chunks(sector, count, self.region) {
            let (path, dev_at) = self.map(at)?;
            op(path, dev_at, len, done)?;
            done += len.usize_bytes()?;
        }
        Ok(())
    }

    /// `process_set_region_mappings`: `argv[1..]` in order; the first bad one ends it.
    fn set_region_mappings(&self, argv: &[&str]) -> Result<()> {
        let _guard = self
            .messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let nr_regions = self.table.nr_regions;
        let nr_paths = self.paths.len() as u64;
        let mut region_index = 0u64;
        for arg in argv.iter().skip(1) {
            let s = arg.as_bytes();
            let bad = || msg_error(format!("invalid set_region_mappings argument: '{arg}'"));
            let at = |i: usize| s.get(i).copied().unwrap_or(0);
            let mut i = 0usize;
            if at(0) & 0xdf == b'R' {
                i += 1;
                if at(i) == b',' {
                    return Err(bad());
                }
                let cycle_length = parse_hex(s, &mut i);
                if at(i) != b',' {
                    return Err(bad());
                }
                i += 1;
                if at(i) == 0 {
                    return Err(bad());
                }
                let num_write = parse_hex(s, &mut i);
                if at(i) != 0 {
                    return Err(bad());
                }
                if cycle_length == 0 || cycle_length - 1 > region_index {
                    return Err(msg_error(format!(
                        "invalid set_region_mappings cycle length: {} > {region_index}",
                        cycle_length.wrapping_sub(1)
                    )));
                }
                match region_index.checked_add(num_write) {
                    Some(end) if end < nr_regions => {}
                    _ => {
                        return Err(msg_error(format!(
                            "invalid set_region_mappings region number: \
                             {region_index} + {num_write} >= {nr_regions}"
                        )))
                    }
                }
                for _ in 0..num_write {
                    region_index += 1;
                    let path_nr = self.table.read(region_index - cycle_length);
                    self.table.write(region_index, path_nr);
                }
                continue;
            }
            if at(0) == b':' {
                region_index = region_index.wrapping_add(1);
            } else {
                region_index = parse_hex(s, &mut i);
                if at(i) != b':' {
                    return Err(bad());
                }
            }
            i += 1;
            if at(i) == 0 {
                return Err(bad());
            }
            let path_nr = parse_hex(s, &mut i);
            if at(i) != 0 {
                return Err(bad());
            }
            if region_index >= nr_regions {
                return Err(msg_error(format!(
                    "invalid set_region_mappings region number: {region_index} >= {nr_regions}"
                )));
            }
            if path_nr >= nr_paths {
                return Err(msg_error(format!(
                    "invalid set_region_mappings device: {path_nr} >= {nr_paths}"
                )));
            }
            self.table.write(region_index, path_nr);
        }
        Ok(())
    }
}

/// The kernel's `parse_hex`: hex digits from `*i` on, shifted into 64 bits (the high ones
/// fall off), stopping at the first other byte.
fn parse_hex(s: &[u8], i: &mut usize) -> u64 {
    let mut r = 0u64;
    while let Some(d) = s.get(*i).and_then(|b| char::from(*b).to_digit(16)) {
        r = (r << 4) | u64::from(d);
        *i += 1;
    }
    r
}

fn msg_error(reason: impl Into<String>) -> Error {
    Error::invalid("switch message", reason)
}

impl Volume for Switch {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |path, at, len, done| {
            let end = done + len.usize_bytes()?;
            path.device.read(at, &mut buf[done..end])
        })
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |path, at, len, done| {
            let end = done + len.usize_bytes()?;
            path.device.write(at, &buf[done..end])
        })
    }

    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |path, at, len, done| {
            let end = done + len.usize_bytes()?;
            path.device.write_fua(at, &buf[done..end])
        })
    }

    /// Every path. A table never calls it: switch sets no `num_flush_bios`
    /// (`takes_flushes`), so dm core completes the flush without sending it to any path.
    fn flush(&self) -> Result<()> {
        self.paths.iter().try_for_each(|path| path.device.flush())
    }

    /// The whole range down the path of its first sector, as dm core sends it.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        if count.0 == 0 {
            return Ok(());
        }
        let (path, at) = self.map(sector)?;
        path.device.discard(at, count)
    }

    /// Each region's answer from its path, merged; at most `MAX_WALK` regions per answer.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        let mut out = Extents::new();
        for ((at, len), _) in chunks(sector, count, self.region).zip(0..MAX_WALK) {
            let (path, dev_at) = self.map(at)?;
            if !out.append_from(&*path.device, dev_at, len)? {
                break;
            }
        }
        Ok(out.into_vec())
    }
}

/// STATUSTYPE_INFO prints nothing; `set_region_mappings` is the one message.
impl Target for Switch {
    fn takes_flushes(&self) -> bool {
        false
    }

    fn message(&self, argv: &[&str]) -> Result<String> {
        match argv.first() {
            Some(w) if w.eq_ignore_ascii_case("set_region_mappings") => {
                self.set_region_mappings(argv)?;
                Ok(String::new())
            }
            _ => Err(msg_error("Unrecognised message received.")),
        }
    }
}

impl Switch {
    /// The parsed arguments the target was built from.
    #[must_use]
    pub fn args(&self) -> &SwitchArgs {
        &self.args
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::volume::MemVolume;

    /// A switch of `paths` paths, all on one memory volume.
    fn switch(paths: usize, region: u32, len: u64) -> Switch {
        let mem: SharedVolume = Arc::new(MemVolume::new(SectorCount(len)).unwrap());
        let args = SwitchArgs {
            region_size: region,
            paths: (0..paths)
                .map(|i| DeviceAt {
                    device: DeviceRef(format!("d{i}")),
                    offset: SectorCount(0),
                })
                .collect(),
        };
        Switch::over(vec![mem; paths], &args, SectorCount(len)).unwrap()
    }

    #[test]
    fn the_table_starts_round_robin_for_every_entry_width() {
        for paths in [1usize, 2, 3, 4, 5, 16, 17, 255, 256, 257, 65_537] {
            let s = switch(paths, 1, 300);
            let want: Vec<u32> = (0..300u32).map(|r| r % paths as u32).collect();
            assert_eq!(s.region_paths(), want, "{paths} paths");
        }
    }

    #[test]
    fn a_table_past_the_limit_is_refused_without_allocating_it() {
        let mem: SharedVolume = Arc::new(MemVolume::new(SectorCount(8)).unwrap());
        let args = SwitchArgs {
            region_size: 1,
            paths: vec![DeviceAt {
                device: DeviceRef("d".into()),
                offset: SectorCount(0),
            }],
        };
        let err = Switch::over(vec![mem], &args, SectorCount(1 << 40)).unwrap_err();
        assert!(
            err.to_string().contains("Cannot allocate region table"),
            "{err}"
        );
    }

    proptest! {
        /// Any message words: no panic, and every region still names an existing path.
        #[test]
        fn messages_never_panic_and_keep_paths_in_range(
            words in prop::collection::vec("[0-9a-fA-FrR:,x]{0,20}", 0..8),
            paths in 1usize..6,
            len in 1u64..200,
        ) {
            let s = switch(paths, 4, len);
            let mut argv = vec!["set_region_mappings"];
            argv.extend(words.iter().map(String::as_str));
            let _ = s.message(&argv);
            for p in s.region_paths() {
                prop_assert!((p as usize) < paths);
            }
        }
    }
}
