//! `ebs`: an emulated logical block size over a device's own (kernel dm-ebs-target.c,
//! v1.0.1), e.g. 512-byte sectors over a 4 KiB-native disk.
//!
//! Table args: `<dev> <offset> <ebs> [<ubs>]`, sizes in 512-byte sectors. Target sector `s`
//! lies at `offset + s` on `dev`. The device's logical block size is `ebs` (its physical
//! block size `ubs`): requests not aligned to `ebs` are refused, as the block layer refuses
//! them. A request that starts or ends inside an underlying block (`ubs`) is served as
//! dm-bufio does: the whole block is read and, for a write, the block written back with
//! the request's bytes in it (read-modify-write); whole blocks go straight to the device.
//!
//! As in 6.12: `<ebs>` and `<ubs>` are read with `%hu` (taken modulo 65536, so `65537`
//! is 1), `ebs` is a power of two of at most a page (8 sectors), `ubs` any power of two
//! that fits; without `<ubs>` it is the device's logical block size (and then not printed:
//! the table prints `<ubs>` only when the line gave it); the offset must be a multiple of
//! `ubs`; the area checked at load is `[offset, offset + len)`, with the offset and the
//! length multiples of `ebs` (`device_area_is_invalid` against the limits `io_hints`
//! sets). A discard is passed down only for the whole underlying blocks inside it
//! (`__ebs_discard_bio`): the partial blocks at its ends are left as they are.
//! Write-zeroes is not passed down (`num_write_zeroes_bios = 0`): zero buffers are
//! written, as the block layer's fallback does.
//!
//! Not modelled: dm-bufio's cache of clean blocks (the kernel can serve a read from a
//! block cached before someone else wrote the device under it; dmemu always reads the
//! device), and a failing block in the middle of a buffered request (the kernel carries on
//! with the next blocks and fails the request; dmemu stops at the first failure).

use std::fmt;

use crate::error::{Error, Result};
use crate::table::args::{ArgResult, Args};
use crate::targets::context::BuildContext;
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, Extent, SharedVolume, Volume};

use super::{DeviceAt, DeviceRef, Target};

/// Sectors in a page (x86-64): the largest emulated block size.
const PAGE_SECTORS: u16 = 8;

/// Parsed `ebs` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbsArgs {
    /// The device and the sector on it where the emulated device starts.
    pub dest: DeviceAt,
    /// Emulated block size in sectors.
    pub ebs: u16,
    /// Underlying block size in sectors, when the line gives it.
    pub ubs: Option<u16>,
}

/// `sscanf("%hu%c")`: digits only, the value modulo 65536.
fn scan_hu(args: &mut Args<'_>, reason: &str) -> ArgResult<u16> {
    let v = args.scan_llu(reason)?;
    Ok(u16::try_from(v & 0xffff).unwrap_or(0))
}

fn check_bs(bs: u16) -> bool {
    bs != 0 && bs.is_power_of_two()
}

impl EbsArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "ebs";

    /// Parse like `ebs_ctr` (the device lookup and the checks that need it happen at build).
    pub fn parse(args: &mut Args<'_>) -> ArgResult<EbsArgs> {
        if args.len() < 3 || args.len() > 4 {
            return Err(Args::error("Invalid argument count"));
        }
        let device = DeviceRef::parse(args, "Device lookup failed")?;
        let offset = SectorCount(args.scan_llu("Invalid device offset sector")?);
        let ebs = scan_hu(args, "Invalid emulated block size")?;
        if !check_bs(ebs) || ebs > PAGE_SECTORS {
            return Err(args.error_last("Invalid emulated block size"));
        }
        let ubs = if args.remaining() > 0 {
            let ubs = scan_hu(args, "Invalid underlying block size")?;
            if !check_bs(ubs) {
                return Err(args.error_last("Invalid underlying block size"));
            }
            Some(ubs)
        } else {
            None
        };
        Ok(EbsArgs {
            dest: DeviceAt { device, offset },
            ebs,
            ubs,
        })
    }
}

impl fmt::Display for EbsArgs {
    /// `"%s %llu %u %u"` when `<ubs>` was given, else `"%s %llu %u"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dest, self.ebs)?;
        if let Some(ubs) = self.ubs {
            write!(f, " {ubs}")?;
        }
        Ok(())
    }
}

/// A constructed ebs target.
#[derive(Debug)]
pub struct Ebs {
    device: SharedVolume,
    start: u64,
    ebs: u64,
    ubs: u64,
    size: SectorCount,
}

fn ebs_error(reason: impl Into<String>) -> Error {
    Error::invalid("ebs", reason)
}

impl Ebs {
    /// `ebs_ctr` with the device, then the load-time area check.
    pub fn new(args: &EbsArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Ebs> {
        let device = ctx.volume(&args.dest.device)?;
        let ebs = Ebs::over(device, args, len)?;
        let area = |reason: String| ctx.area_error(Error::invalid("device", reason));
        let dev = &args.dest.device;
        if check_range(ebs.device.size(), Sector(ebs.start), len).is_err() {
            area(format!(
                "{dev} too small for target: start={}, len={len}, dev_size={}",
                ebs.start,
                ebs.device.size()
            ))?;
        }
        // device_area_is_invalid against the target's limits after io_hints (logical
        // block size = ebs).
        let lbs = ebs.ebs * 512;
        if ebs.ebs > 1 && ebs.start % ebs.ebs != 0 {
            area(format!(
                "start={} not aligned to h/w logical block size {lbs} of {dev}",
                ebs.start
            ))?;
        } else if ebs.ebs > 1 && len.0 % ebs.ebs != 0 {
            area(format!(
                "len={len} not aligned to h/w logical block size {lbs} of {dev}"
            ))?;
        }
        Ok(ebs)
    }

    /// An ebs mapping over an already-open volume (library use): the constructor's checks
    /// (the underlying block size, the offset a multiple of it), not the area check.
    pub fn over(device: SharedVolume, args: &EbsArgs, len: SectorCount) -> Result<Ebs> {
        let ubs = match args.ubs {
            Some(u) => u64::from(u),
            None => {
                let u = u64::from(device.logical_block_size()) / 512;
                if u == 0 || !u.is_power_of_two() || u > u64::from(u16::MAX) {
                    return Err(ebs_error("Invalid retrieved underlying block size"));
                }
                u
            }
        };
        if args.dest.offset.0 % ubs != 0 {
            return Err(ebs_error(
                "Device offset must be multiple of underlying block size",
            ));
        }
        Ok(Ebs {
            device,
            start: args.dest.offset.0,
            ebs: u64::from(args.ebs),
            ubs,
            size: len,
        })
    }

    /// The underlying block size in sectors (given or the device's).
    #[must_use]
    pub fn underlying_block_size(&self) -> u64 {
        self.ubs
    }

    /// Check the request is whole emulated blocks and map its start to the device.
    fn map(&self, sector: Sector, count: SectorCount) -> Result<u64> {
        if sector.0 % self.ebs != 0 || count.0 % self.ebs != 0 {
            return Err(ebs_error(format!(
                "request at sector {} of {} sectors is not aligned to the logical block \
                 size {}",
                sector.0,
                count.0,
                self.ebs * 512
            )));
        }
        self.start
            .checked_add(sector.0)
            .filter(|at| at.checked_add(count.0).is_some())
            .ok_or_else(|| ebs_error("sector beyond the addressable range"))
    }

    /// Whether a request at device sector `at` of `count` sectors goes through dm-bufio
    /// (`ebs_map`): partial underlying blocks, or emulation with ebs == ubs.
    fn buffered(&self, at: u64, count: u64) -> bool {
        at % self.ubs != 0 || (at + count) % self.ubs != 0 || self.ebs == self.ubs
    }

    /// Split device range `[at, at + count)` into pieces `(sector, sectors, whole block)`:
    /// a partial head block, the whole blocks between (one piece), a partial tail block.
    fn pieces(&self, at: u64, count: u64) -> Vec<(u64, u64, bool)> {
        let end = at + count;
        let mut out = Vec::with_capacity(3);
        let mut s = at;
        if s % self.ubs != 0 {
            let block_end = (s / self.ubs + 1) * self.ubs;
            let e = end.min(block_end);
            out.push((s, e - s, false));
            s = e;
        }
        let whole_end = end / self.ubs * self.ubs;
        if whole_end > s {
            out.push((s, whole_end - s, true));
            s = whole_end;
        }
        if s < end {
            out.push((s, end - s, false));
        }
        out
    }

    fn block_bytes(&self) -> Result<usize> {
        SectorCount(self.ubs).usize_bytes()
    }

    /// Read the underlying block holding device sector `s` whole (`dm_bufio_read`).
    fn read_block(&self, s: u64) -> Result<(u64, Vec<u8>)> {
        let first = s / self.ubs * self.ubs;
        let mut block = vec![0u8; self.block_bytes()?];
        self.device.read(Sector(first), &mut block)?;
        Ok((first, block))
    }

    fn write_buffered(&self, at: u64, buf: &[u8], fua: bool) -> Result<()> {
        let mut done = 0usize;
        for (s, n, whole) in self.pieces(at, buf.len() as u64 / 512) {
            let bytes = SectorCount(n).usize_bytes()?;
            let part = &buf[done..done + bytes];
            if whole {
                self.device.write(Sector(s), part)?;
            } else {
                let (first, mut block) = self.read_block(s)?;
                let off = SectorCount(s - first).usize_bytes()?;
                block[off..off + bytes].copy_from_slice(part);
                self.device.write(Sector(first), &block)?;
            }
            done += bytes;
        }
        if fua {
            self.device.flush()?;
        }
        Ok(())
    }
}

impl Volume for Ebs {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn logical_block_size(&self) -> u32 {
        u32::try_from(self.ebs * 512).unwrap_or(u32::MAX)
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        let at = self.map(sector, count)?;
        if !self.buffered(at, count.0) {
            return self.device.read(Sector(at), buf);
        }
        let mut done = 0usize;
        for (s, n, whole) in self.pieces(at, count.0) {
            let bytes = SectorCount(n).usize_bytes()?;
            let part = &mut buf[done..done + bytes];
            if whole {
                self.device.read(Sector(s), part)?;
            } else {
                let (first, block) = self.read_block(s)?;
                let off = SectorCount(s - first).usize_bytes()?;
                part.copy_from_slice(&block[off..off + bytes]);
            }
            done += bytes;
        }
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        let at = self.map(sector, count)?;
        if !self.buffered(at, count.0) {
            return self.device.write(Sector(at), buf);
        }
        self.write_buffered(at, buf, false)
    }

    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        let at = self.map(sector, count)?;
        if !self.buffered(at, count.0) {
            return self.device.write_fua(Sector(at), buf);
        }
        self.write_buffered(at, buf, true)
    }

    fn flush(&self) -> Result<()> {
        self.device.flush()
    }

    /// Only the whole underlying blocks inside the range reach the device.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        let at = self.map(sector, count)?;
        let first = at.div_ceil(self.ubs) * self.ubs;
        let end = (at + count.0) / self.ubs * self.ubs;
        if end > first {
            self.device
                .discard(Sector(first), SectorCount(end - first))?;
        }
        Ok(())
    }

    /// The device's answer for the remapped range.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        let at = self
            .start
            .checked_add(sector.0)
            .ok_or_else(|| ebs_error("sector beyond the addressable range"))?;
        self.device.allocation(Sector(at), count)
    }
}

/// STATUSTYPE_INFO prints nothing: the default status.
impl Target for Ebs {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::volume::MemVolume;

    proptest! {
        /// The pieces tile the range in order; a partial piece lies inside one underlying
        /// block, a whole one starts and ends on blocks.
        #[test]
        fn pieces_tile_the_range(at in 0u64..100_000, count in 1u64..5_000, shift in 0u32..8) {
            let ubs = 1u64 << shift;
            let ebs = Ebs {
                device: Arc::new(MemVolume::new(SectorCount(8)).unwrap()),
                start: 0,
                ebs: 1,
                ubs,
                size: SectorCount(200_000),
            };
            let mut next = at;
            for (s, n, whole) in ebs.pieces(at, count) {
                prop_assert_eq!(s, next);
                prop_assert!(n > 0);
                if whole {
                    prop_assert!(s % ubs == 0 && (s + n) % ubs == 0);
                } else {
                    prop_assert_eq!(s / ubs, (s + n - 1) / ubs);
                }
                next = s + n;
            }
            prop_assert_eq!(next, at + count);
        }
    }
}
