//! `striped`: spreads sectors round-robin over N devices in fixed-size chunks
//! (kernel dm-stripe.c, v1.6.0).
//!
//! Table args: `<#stripes> <chunk_sectors> (<dev> <offset>){#stripes}`. Any non-zero chunk
//! size is accepted (6.12 handles non-powers of two), as is any stripe count dividing the
//! target length.

use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Result;
use crate::table::args::{ArgResult, Args};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{
    check_io, check_range, chunks, Extent, Extents, SharedVolume, Unmap, Volume, MAX_WALK,
};

use super::{DeviceAt, DeviceRef, Target};

/// Parsed `striped` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripedArgs {
    /// Sectors per chunk.
    pub chunk_size: SectorCount,
    /// One destination per stripe, in order.
    pub stripes: Vec<DeviceAt>,
}

impl StripedArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "striped";

    /// Parse like `stripe_ctr`, which also checks the geometry against the target length.
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<StripedArgs> {
        if args.len() < 2 {
            return Err(Args::error("Not enough arguments"));
        }
        let stripes = args.kstrtouint("Invalid stripe count")?;
        if stripes == 0 {
            return Err(args.error_last("Invalid stripe count"));
        }
        let chunk = args.kstrtouint("Invalid chunk_size")?;
        if chunk == 0 {
            return Err(args.error_last("Invalid chunk_size"));
        }
        let stripes = u64::from(stripes);
        if len.0 % stripes != 0 {
            return Err(Args::error(
                "Target length not divisible by number of stripes",
            ));
        }
        if (len.0 / stripes) % u64::from(chunk) != 0 {
            return Err(Args::error("Target length not divisible by chunk size"));
        }
        if u64::try_from(args.len()).ok() != Some(2 + 2 * stripes) {
            return Err(Args::error("Not enough destinations specified"));
        }
        let mut dests = Vec::with_capacity(args.remaining() / 2);
        while args.remaining() > 0 {
            let device = DeviceRef::parse(args, "Not enough destinations specified")?;
            let offset = SectorCount(args.llu("Couldn't parse stripe destination")?);
            dests.push(DeviceAt { device, offset });
        }
        Ok(StripedArgs {
            chunk_size: SectorCount(u64::from(chunk)),
            stripes: dests,
        })
    }
}

impl fmt::Display for StripedArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.stripes.len(), self.chunk_size)?;
        for s in &self.stripes {
            write!(f, " {s}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Stripe {
    device: SharedVolume,
    offset: SectorCount,
    label: String,
    failed: AtomicBool,
}

/// A constructed striped target.
#[derive(Debug)]
pub struct Striped {
    stripes: Vec<Stripe>,
    chunk: SectorCount,
    size: SectorCount,
}

impl Striped {
    /// Resolve every stripe's device and check each holds `len / stripes` sectors.
    pub fn new(args: &StripedArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Striped> {
        let n = args.stripes.len() as u64;
        let width = SectorCount(len.0 / n);
        let stripes = args
            .stripes
            .iter()
            .map(|d| {
                Ok(Stripe {
                    device: device_area(ctx, d, width)?,
                    offset: d.offset,
                    label: d.device.to_string(),
                    failed: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Striped {
            stripes,
            chunk: args.chunk_size,
            size: len,
        })
    }

    /// Stripe index and device sector for target sector `sector` (`stripe_map_sector`).
    fn map(&self, sector: Sector) -> (usize, Sector) {
        let n = self.stripes.len() as u64;
        let chunk = sector.0 / self.chunk.0;
        let within = sector.0 % self.chunk.0;
        let stripe = chunk % n;
        let row = chunk / n;
        // `stripe < n`, and `n` came from a Vec length.
        let index = usize::try_from(stripe).unwrap_or(usize::MAX);
        (index, Sector(row * self.chunk.0 + within))
    }

    /// Run `op` on each chunk-sized piece of `[sector, sector + count)`, marking a stripe
    /// dead (`D` in status) when its device fails.
    fn each_piece(
        &self,
        sector: Sector,
        count: SectorCount,
        mut op: impl FnMut(&Stripe, Sector, SectorCount, usize) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        for (at, len) in chunks(sector, count, self.chunk) {
            let (i, dev_sector) = self.map(at);
            let stripe = &self.stripes[i];
            let bytes = len.usize_bytes()?;
            if let Err(e) = op(stripe, dev_sector + stripe.offset, len, done) {
                stripe.failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            done += bytes;
        }
        Ok(())
    }
}

impl Volume for Striped {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |s, at, len, done| {
            let end = done + len.usize_bytes()?;
            s.device.read(at, &mut buf[done..end])
        })
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |s, at, len, done| {
            let end = done + len.usize_bytes()?;
            s.device.write(at, &buf[done..end])
        })
    }

    fn flush(&self) -> Result<()> {
        for s in &self.stripes {
            s.device.flush()?;
        }
        Ok(())
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.each_piece(sector, count, |s, at, len, _| s.device.discard(at, len))
    }

    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        let count = check_io(self.size, sector, buf.len())?;
        self.each_piece(sector, count, |s, at, len, done| {
            let end = done + len.usize_bytes()?;
            s.device.write_fua(at, &buf[done..end])
        })
    }

    /// stripe_ctr sets `num_write_zeroes_bios = stripes`: each stripe gets its part.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        check_range(self.size, sector, count)?;
        self.each_piece(sector, count, |s, at, len, _| {
            s.device.write_zeroes(at, len, unmap)
        })
    }

    /// Each chunk's answer from its stripe, merged; at most `MAX_WALK` chunks per answer.
    fn allocation(&self, sector: Sector, count: SectorCount) -> Result<Vec<Extent>> {
        check_range(self.size, sector, count)?;
        let mut out = Extents::new();
        for ((at, len), _) in chunks(sector, count, self.chunk).zip(0..MAX_WALK) {
            let (i, dev_sector) = self.map(at);
            let stripe = &self.stripes[i];
            if !out.append_from(&*stripe.device, dev_sector + stripe.offset, len)? {
                break;
            }
        }
        Ok(out.into_vec())
    }
}

impl Target for Striped {
    /// `<n> <dev>... 1 <A|D per stripe>`
    fn status(&self) -> String {
        let mut s = format!("{} ", self.stripes.len());
        for st in &self.stripes {
            let _ = write!(s, "{} ", st.label);
        }
        s.push_str("1 ");
        for st in &self.stripes {
            s.push(if st.failed.load(Ordering::Relaxed) {
                'D'
            } else {
                'A'
            });
        }
        s
    }
}
