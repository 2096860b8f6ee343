//! `delay`: holds each request for its class's delay, then maps it like linear
//! (kernel dm-delay.c, v1.4.0 in Linux 6.12).
//!
//! Table args: `<dev> <offset> <delay_ms> [<wdev> <woffset> <wdelay_ms> [<fdev> <foffset>
//! <fdelay_ms>]]`. Three classes: read, write and flush. With 3 args one triple serves all
//! three; with 6 the second triple serves writes and flushes; with 9 each class has its own.
//! Writes and discards use the write class (`bio_data_dir` is WRITE for both); `flush` uses the
//! flush class (the kernel sends a write with `REQ_PREFLUSH` there).
//!
//! Each request waits on the injected [`Clock`](crate::clock::Clock) until `now >= arrival +
//! delay` and is then passed down. Every request waits on its own thread, so concurrent
//! requests overlap in time rather than queueing. A class with delay 0 is not held and not
//! counted, as in `delay_bio`. Deadlines are exact milliseconds; the kernel rounds them up to
//! jiffies (4 ms at HZ=250). STATUS is `<read held> <write held> <flush held>`. Suspend
//! (which releases every held bio at once) has no counterpart: dmemu devices are not
//! suspended.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::clock::{SharedClock, Stop};
use crate::error::Result;
use crate::table::args::{ArgResult, Args};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, SharedVolume, Unmap, Volume};

use super::{DeviceAt, DeviceRef, Target};

/// One class: where its requests go and how long they are held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayClass {
    /// Device and offset the class maps to.
    pub dest: DeviceAt,
    /// Delay in milliseconds.
    pub delay_ms: u32,
}

impl DelayClass {
    /// `delay_class_ctr`'s parse half (the device is resolved in `Delay::new`).
    fn parse(args: &mut Args<'_>) -> ArgResult<DelayClass> {
        let device = DeviceRef::parse(args, "Requires exactly 3, 6 or 9 arguments")?;
        let offset = SectorCount(args.scan_llu("Invalid device sector")?);
        let delay_ms = args.scan_u32("Invalid delay")?;
        Ok(DelayClass {
            dest: DeviceAt { device, offset },
            delay_ms,
        })
    }
}

impl fmt::Display for DelayClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dest, self.delay_ms)
    }
}

/// Parsed `delay` arguments: the read triple, and the write and flush triples when the table
/// gave 6 or 9 arguments (the form prints back as given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayArgs {
    /// Reads (and everything, in the 3-argument form).
    pub read: DelayClass,
    /// Writes (and flushes, in the 6-argument form).
    pub write: Option<DelayClass>,
    /// Flushes (9-argument form only; needs `write`).
    pub flush: Option<DelayClass>,
}

impl DelayArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "delay";

    /// Parse like `delay_ctr`: the count first, then each triple in order.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<DelayArgs> {
        let n = args.len();
        if n != 3 && n != 6 && n != 9 {
            return Err(Args::error("Requires exactly 3, 6 or 9 arguments"));
        }
        let read = DelayClass::parse(args)?;
        let write = if n >= 6 {
            Some(DelayClass::parse(args)?)
        } else {
            None
        };
        let flush = if n == 9 {
            Some(DelayClass::parse(args)?)
        } else {
            None
        };
        Ok(DelayArgs { read, write, flush })
    }

    /// The classes serving reads, writes and flushes, in that order.
    #[must_use]
    pub fn classes(&self) -> [&DelayClass; 3] {
        let write = self.write.as_ref().unwrap_or(&self.read);
        [&self.read, write, self.flush.as_ref().unwrap_or(write)]
    }
}

impl fmt::Display for DelayArgs {
    /// `delay_status` STATUSTYPE_TABLE: one triple per class the table gave.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.read)?;
        let [_, write, flush] = self.classes();
        if self.write.is_some() || self.flush.is_some() {
            write!(f, " {write}")?;
        }
        if self.flush.is_some() {
            write!(f, " {flush}")?;
        }
        Ok(())
    }
}

/// Which class a request belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Read = 0,
    Write = 1,
    Flush = 2,
}

#[derive(Debug)]
struct LiveClass {
    device: SharedVolume,
    offset: SectorCount,
    delay: Duration,
    /// Requests currently held (`delay_class.ops`).
    held: AtomicU32,
}

/// Decrements a class's held count when the hold ends, even if the waiting thread unwinds.
struct Held<'a>(&'a AtomicU32);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A constructed delay target.
#[derive(Debug)]
pub struct Delay {
    classes: [LiveClass; 3],
    clock: SharedClock,
    size: SectorCount,
    /// Raised from presuspend to resume (`may_delay` false): held requests are released and
    /// new ones pass at once.
    stop: Stop,
}

impl Delay {
    /// Resolve the devices of each class (in the kernel's order: read, write, flush) and check
    /// that each mapped range lies on its device; time comes from the registry's clock.
    pub fn new(args: &DelayArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Delay> {
        let [r, w, f] = args.classes();
        let live = |c: &DelayClass| -> Result<LiveClass> {
            Ok(LiveClass {
                device: device_area(ctx, &c.dest, len)?,
                offset: c.dest.offset,
                delay: Duration::from_millis(u64::from(c.delay_ms)),
                held: AtomicU32::new(0),
            })
        };
        Ok(Delay {
            classes: [live(r)?, live(w)?, live(f)?],
            clock: ctx.clock(),
            size: len,
            stop: Stop::default(),
        })
    }

    /// A delay over already-open volumes: `(device, offset, delay_ms)` for read, write and
    /// flush (library use).
    pub fn over(
        classes: [(SharedVolume, SectorCount, u32); 3],
        len: SectorCount,
        clock: SharedClock,
    ) -> Result<Delay> {
        let live = |(device, offset, ms): (SharedVolume, SectorCount, u32)| -> Result<LiveClass> {
            check_range(device.size(), Sector(offset.0), len)?;
            Ok(LiveClass {
                device,
                offset,
                delay: Duration::from_millis(u64::from(ms)),
                held: AtomicU32::new(0),
            })
        };
        let [r, w, f] = classes;
        Ok(Delay {
            classes: [live(r)?, live(w)?, live(f)?],
            clock,
            size: len,
            stop: Stop::default(),
        })
    }

    /// Hold the calling request for its class's delay (`delay_bio`), then return the class.
    fn hold(&self, class: Class) -> &LiveClass {
        let c = &self.classes[class as usize];
        if c.delay.is_zero() || self.stop.is_raised() {
            return c;
        }
        let deadline = self.clock.now().saturating_add(c.delay);
        c.held.fetch_add(1, Ordering::AcqRel);
        let _held = Held(&c.held);
        self.clock.sleep_until_or(deadline, &self.stop);
        c
    }

    /// Requests currently held in the read, write and flush classes.
    #[must_use]
    pub fn held(&self) -> [u32; 3] {
        self.classes
            .each_ref()
            .map(|c| c.held.load(Ordering::Acquire))
    }
}

impl Volume for Delay {
    fn size(&self) -> SectorCount {
        self.size
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let c = self.hold(Class::Read);
        c.device.read(sector + c.offset, buf)
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let c = self.hold(Class::Write);
        c.device.write(sector + c.offset, buf)
    }
    fn flush(&self) -> Result<()> {
        let c = self.hold(Class::Flush);
        c.device.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        let c = self.hold(Class::Write);
        c.device.discard(sector + c.offset, count)
    }
    /// A REQ_FUA write without REQ_PREFLUSH is in the write class (`delay_map`), passed
    /// down with its FUA.
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let c = self.hold(Class::Write);
        c.device.write_fua(sector + c.offset, buf)
    }
    /// 6.12 dm-delay takes no REQ_OP_WRITE_ZEROES: the block layer sends zero writes, all
    /// in flight at once, each held in the write class. So the zeroing is held once, then
    /// handed to the write device.
    fn write_zeroes(&self, sector: Sector, count: SectorCount, unmap: Unmap) -> Result<()> {
        check_range(self.size, sector, count)?;
        let c = self.hold(Class::Write);
        c.device.write_zeroes(sector + c.offset, count, unmap)
    }
}

impl Target for Delay {
    /// `"%u %u %u"`: requests held per class.
    fn status(&self) -> String {
        let [r, w, f] = self.held();
        format!("{r} {w} {f}")
    }

    fn holds_requests(&self) -> bool {
        true
    }

    /// `delay_presuspend`: every held request goes on at once, and new ones are not held
    /// until resume (`may_delay = false`).
    fn presuspend(&self) {
        self.stop.raise(&*self.clock);
    }

    /// `delay_resume`: requests are held again.
    fn resume(&self) {
        self.stop.lower();
    }
}

#[cfg(test)]
mod tests;
