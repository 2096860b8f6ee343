//! `unstriped`: one stripe of a striped device (or of a RAID-0 set a controller striped) as a
//! device of its own (kernel dm-unstripe.c, v1.1.0).
//!
//! Table args: `<#stripes> <chunk_size> <stripe #> <dev> <offset>`. Target sector `s` lies
//! in row `s / chunk_size`; each row skips the other stripes' chunks, so it maps to
//! `s + row × (stripes − 1) × chunk_size + stripe × chunk_size + offset` on `dev`.
//!
//! As in 6.12: the stripe number is refused only when it is *greater* than the stripe count
//! (with more than one stripe), so `stripe == stripes` is accepted and maps past the last
//! stripe; the device area checked at load is `[offset, offset + len)` (what
//! `unstripe_iterate_devices` reports), not the span the mapping reaches, so a read past the
//! device's end fails at I/O time; requests are split at chunk boundaries
//! (`dm_set_target_max_io_len`); discards and write-zeroes are not passed down (the
//! constructor sets no `num_discard_bios` / `num_write_zeroes_bios`): discard is
//! unsupported, write-zeroes writes zero buffers as the block layer's fallback does; no
//! flush reaches the device (no `num_flush_bios`), while FUA writes pass down; the
//! table prints the stripe count and number with `%d`.

use std::fmt;

use crate::error::{Error, Result};
use crate::table::args::{ArgResult, Args};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{
    check_io, check_range, chunks, Extent, Extents, SharedVolume, Volume, MAX_WALK,
};

use super::{DeviceAt, DeviceRef, Target};

/// Parsed `unstriped` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnstripedArgs {
    /// Stripes in the striped device.
    pub stripes: u32,
    /// Sectors per chunk.
    pub chunk_size: u32,
    /// Which stripe this device shows (0-based).
    pub stripe: u32,
    /// The striped device and where the striped data starts on it.
    pub dest: DeviceAt,
}

impl UnstripedArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "unstriped";

    /// Parse like `unstripe_ctr`, which also checks the target length against the chunk.
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<UnstripedArgs> {
        if args.len() != 5 {
            return Err(Args::error("Invalid number of arguments"));
        }
        let stripes = args.kstrtouint("Invalid stripe count")?;
        if stripes == 0 {
            return Err(args.error_last("Invalid stripe count"));
        }
        let chunk_size = args.kstrtouint("Invalid chunk_size")?;
        if chunk_size == 0 {
            return Err(args.error_last("Invalid chunk_size"));
        }
        let stripe = args.kstrtouint("Invalid stripe number")?;
        if stripe > stripes && stripes > 1 {
            return Err(args.error_last("Please provide stripe between [0, # of stripes]"));
        }
        let device = DeviceRef::parse(args, "Couldn't get striped device")?;
        let offset = SectorCount(args.scan_llu("Invalid striped device offset")?);
        if len.0 % u64::from(chunk_size) != 0 {
            return Err(Args::error("Target length not divisible by chunk size"));
        }
        Ok(UnstripedArgs {
            stripes,
            chunk_size,
            stripe,
            dest: DeviceAt { device, offset },
        })
    }
}

impl fmt::Display for UnstripedArgs {
    /// `DMEMIT("%d %llu %d %s %llu", ...)`: the stripe count and number as signed ints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.stripes.cast_signed(),
            self.chunk_size,
            self.stripe.cast_signed(),
            self.dest
        )
    }
}

/// A constructed unstriped target.
#[derive(Debug)]
pub struct Unstriped {
    device: SharedVolume,
    physical_start: u64,
    chunk: SectorCount,
    /// `(stripes − 1) × chunk_size`: the other stripes' sectors in each row.
    width: u64,
    /// `stripe × chunk_size`: where this stripe's chunk starts in a row.
    stripe_offset: u64,
    size: SectorCount,
}

impl Unstriped {
    /// Resolve the device and check `[offset, offset + len)` lies on it, as the kernel does.
    pub fn new(
        args: &UnstripedArgs,
        len: SectorCount,
        ctx: &dyn BuildContext,
    ) -> Result<Unstriped> {
        let device = device_area(ctx, &args.dest, len)?;
        Ok(Unstriped::over(device, args, len))
    }

    /// An unstriped mapping over an already-open volume (library use). The device area is
    /// not checked, as the kernel's mapping does not check it either: requests past the
    /// device's end fail when they reach it.
    #[must_use]
    pub fn over(device: SharedVolume, args: &UnstripedArgs, len: SectorCount) -> Unstriped {
        let chunk = u64::from(args.chunk_size);
        Unstriped {
            device,
            physical_start: args.dest.offset.0,
            chunk: SectorCount(chunk),
            width: u64::from(args.stripes - 1) * chunk,
            stripe_offset: u64::from(args.stripe) * chunk,
            size: len,
        }
    }

    /// `map_to_core` + `physical_start`: where target sector `s` lies on the device.
    fn map(&self, s: Sector) -> Result<Sector> {
        let row = s.0 / self.chunk.0;
        self.width
            .checked_mul(row)
            .and_then(|skip| s.0.checked_add(skip))
            .and_then(|x| x.checked_add(self.stripe_offset))
            .and_then(|x| x.checked_add(self.physical_start))
            .map(Sector)
            .ok_or_else(|| {
                Error::invalid(
                    "unstriped",
                    format!("sector {} maps beyond the addressable range", s.0),
                )
            })
    }

    /// Run `op(device sector, sectors, byte offset in the request)` on each chunk piece.
    fn each_piece(
        &self,
        sector: Sector,
        count: SectorCount,
        mut op: impl FnMut(Sector, SectorCount, usize) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        for (at, len) in chunks(sector, count, self.chunk) {
            op(self.map(at)?, len, done)?;
            done += len.usize_bytes()?;
        }
        Ok(())
    }
}

impl Volume for Unstriped {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |at, len, done| {
            let end = done + len.usize_bytes()?;
            self.device.read(at, &mut buf[done..end])
        })
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |at, len, done| {
            let end = done + len.usize_bytes()?;
            self.device.write(at, &buf[done..end])
        })
    }

    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |at, len, done| {
            let end = done + len.usize_bytes()?;
            self.device.write_fua(at, &buf[done..end])
        })
    }

    /// The device's flush. A table never calls it: unstripe_ctr sets no `num_flush_bios`
    /// (`takes_flushes`), so the empty flush completes at once and the device never sees
    /// one (a FUA write still goes down as FUA). Kernel fixture:
    /// tests/fixtures/remap/kernel-6.12-flush.txt.
    fn flush(&self) -> Result<()> {
        self.device.flush()
    }

    /// unstripe_ctr sets no `num_discard_bios`: the device takes no discards.
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        Err(Error::Unsupported {
            target: "unstriped",
            op: "discard",
        })
    }

    /// Each chunk's answer from the device, merged; at most `MAX_WALK` chunks per answer.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        let mut out = Extents::new();
        for ((at, len), _) in chunks(sector, count, self.chunk).zip(0..MAX_WALK) {
            if !out.append_from(&*self.device, self.map(at)?, len)? {
                break;
            }
        }
        Ok(out.into_vec())
    }
}

/// STATUSTYPE_INFO prints nothing: the default status.
impl Target for Unstriped {
    fn takes_flushes(&self) -> bool {
        false
    }
}
