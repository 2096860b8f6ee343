//! The constructed flakey target: `flakey_map` and `flakey_end_io` of Linux 6.12 over a
//! `Volume`.
//!
//! One `Volume` call is one bio. While down:
//! - a read fails (EIO) with `error_reads`; otherwise it is read and then, if it matches,
//!   byte `Nth` is set (`corrupt_bio_byte ... r`) and, with probability `ppb / 10^9`, one
//!   random byte gets a random value (`random_read_corrupt`);
//! - a write, flush or discard (all WRITE-direction bios) succeeds without reaching the
//!   device with `drop_writes` and fails with `error_writes`; otherwise a write whose
//!   corruption fires is written from a corrupted copy (the caller's buffer is untouched, as
//!   the kernel clones the pages) in pieces of at most 4 MiB (`UIO_MAXIOV` pages: the kernel
//!   accepts that much of the bio and maps the rest again, with a fresh decision).
//!
//! Random draws come from a SplitMix64 generator, seeded from the OS by default; `reseed`
//! makes a run repeat. The draws follow the kernel's order: one 64-bit draw for the decision
//! (`get_random_u64() % 10^9 < ppb`), then one for the byte index (`get_random_u32() % size`)
//! and one for the value (`get_random_u8()`).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Alarm, SharedClock};
use crate::error::{Error, Result};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, SharedVolume, Volume};

use super::super::Target;
use super::{CorruptBioByte, Direction, DownWrites, FlakeyArgs, PROBABILITY_BASE};

/// `bi_opf` of dmemu's read and write requests (`REQ_OP_READ`, `REQ_OP_WRITE`, no flags).
const READ_OPF: u32 = 0;
const WRITE_OPF: u32 = 1;
/// `REQ_FUA` (bit `__REQ_FUA` = 17 in 6.12's blk_types.h), set on `write_fua` requests so
/// `corrupt_bio_byte`'s flag mask can select them.
const REQ_FUA: u32 = 1 << 17;

/// The largest write the kernel corrupts as one clone: `UIO_MAXIOV << PAGE_SHIFT`.
const MAX_CLONE_BYTES: usize = 1024 * 4096;

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A constructed flakey target.
///
/// Testing how an application survives a disk that drops out, with no root and no sleeping:
/// wrap its image file in flakey on a manual clock and move the clock.
///
/// ```
/// use std::time::Duration;
/// use dmemu::clock::ManualClock;
/// use dmemu::table::DeviceSpec;
/// use dmemu::{MappedDevice, Registry, Sector, Table, TableMode, Volume};
///
/// // The application under test: reads its header block.
/// fn read_header(disk: &MappedDevice) -> dmemu::Result<u8> {
///     let mut block = [0u8; 4096];
///     disk.read(Sector(0), &mut block)?;
///     Ok(block[0])
/// }
///
/// let dir = tempfile::tempdir()?;
/// let image = dir.path().join("app.img");
/// std::fs::write(&image, vec![0x5a; 1 << 20])?;
///
/// let clock = ManualClock::shared();
/// let registry = Registry::new().with_clock(clock.clone());
/// // Up for 5 s, then down for 2 s, repeating; no features = error_reads + error_writes.
/// let table = Table::parse(&format!("0 2048 flakey {} 0 5 2", image.display()))?;
/// let disk = registry.create(&DeviceSpec {
///     name: "flaky".into(),
///     uuid: String::new(),
///     minor: None,
///     mode: TableMode::ReadWrite,
///     table,
/// })?;
///
/// assert_eq!(read_header(&disk)?, 0x5a); // t = 0 s: up
/// clock.advance(Duration::from_millis(4999));
/// assert_eq!(read_header(&disk)?, 0x5a); // t = 4.999 s: still up
/// clock.advance(Duration::from_millis(1));
/// let err = read_header(&disk).unwrap_err(); // t = 5 s: down
/// assert_eq!(err.errno(), 5); // EIO, as from the kernel's flakey
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(read_header(&disk)?, 0x5a); // t = 7 s: up again
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Flakey {
    args: FlakeyArgs,
    device: SharedVolume,
    size: SectorCount,
    window: Arc<Window>,
    /// SplitMix64 state; `fetch_add` keeps draws lock-free and each draw distinct.
    rng: AtomicU64,
}

/// The up/down schedule. On a clock with alarms (the system clock's timer thread, the manual
/// clock's `advance`) the alarm flips `down` at each window boundary and requests read only
/// the flag; on a clock without, each request reads the clock.
#[derive(Debug)]
struct Window {
    clock: SharedClock,
    /// Clock reading at construction (`fc->start_time = jiffies`).
    start: Duration,
    up: u64,
    period: u64,
    /// Whether the clock's timer keeps `down`.
    timed: AtomicBool,
    down: AtomicBool,
}

impl Window {
    fn start(clock: SharedClock, up: u32, down: u32) -> Arc<Window> {
        let start = clock.now();
        let window = Arc::new(Window {
            clock: Arc::clone(&clock),
            start,
            up: u64::from(up),
            period: u64::from(up) + u64::from(down),
            timed: AtomicBool::new(false),
            down: AtomicBool::new(false),
        });
        // Set the flag before the timer may touch it, then hand it over.
        if let Some(at) = window.ring(start) {
            let alarm = Arc::downgrade(&window);
            let timed = clock.set_alarm(alarm, at);
            window.timed.store(timed, Ordering::Release);
        }
        window
    }

    /// `flakey_map`: whole seconds since construction, as an `unsigned int`, modulo
    /// `up + down`, at or past `up`.
    fn down_at(&self, now: Duration) -> bool {
        let elapsed = now.saturating_sub(self.start).as_secs() & u64::from(u32::MAX);
        // First up window: no division.
        elapsed >= self.up && elapsed % self.period >= self.up
    }

    fn is_down(&self) -> bool {
        if self.timed.load(Ordering::Acquire) {
            self.down.load(Ordering::Acquire)
        } else {
            self.down_at(self.clock.now())
        }
    }
}

impl Alarm for Window {
    /// Set the flag for `now` and ask to be rung at the next boundary: the end of this up or
    /// down window, or where the `unsigned int` count of seconds wraps, whichever is first.
    fn ring(&self, now: Duration) -> Option<Duration> {
        let down = self.down_at(now);
        self.down.store(down, Ordering::Release);
        let secs = now.saturating_sub(self.start).as_secs();
        let elapsed = secs & u64::from(u32::MAX);
        let in_period = elapsed % self.period;
        let boundary = if in_period < self.up {
            self.up
        } else {
            self.period
        };
        let until_wrap = (1u64 << 32) - elapsed;
        let step = (boundary - in_period).min(until_wrap);
        let next = secs.checked_add(step)?;
        self.start.checked_add(Duration::from_secs(next))
    }
}

fn failed(reason: &str) -> Error {
    Error::TargetFailed {
        target: "flakey",
        reason: reason.to_string(),
    }
}

impl Flakey {
    /// The kernel's ctr: resolve the device, check the range, start the up/down schedule on
    /// the registry's clock.
    pub fn new(args: &FlakeyArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Flakey> {
        let device = device_area(ctx, &args.dest, len)?;
        Flakey::over(device, args, len, ctx.clock())
    }

    /// A flakey mapping over an already-open volume (library use); `args.dest.device` is only
    /// printed, the I/O goes to `device`.
    pub fn over(
        device: SharedVolume,
        args: &FlakeyArgs,
        len: SectorCount,
        clock: SharedClock,
    ) -> Result<Flakey> {
        check_range(device.size(), Sector(args.dest.offset.0), len)?;
        if args.up_secs.checked_add(args.down_secs).unwrap_or(0) == 0 {
            return Err(Error::invalid(
                "flakey interval",
                "up + down must be between 1 and 4294967295 seconds",
            ));
        }
        let seed = RandomState::new().hash_one(std::ptr::addr_of!(device));
        Ok(Flakey {
            args: args.clone(),
            device,
            size: len,
            window: Window::start(clock, args.up_secs, args.down_secs),
            rng: AtomicU64::new(seed),
        })
    }

    /// The arguments it was built with.
    #[must_use]
    pub fn args(&self) -> &FlakeyArgs {
        &self.args
    }

    /// Restart the random generator from `seed`, so random corruption repeats run to run.
    pub fn reseed(&self, seed: u64) {
        self.rng.store(seed, Ordering::Release);
    }

    /// Whether the device is in its down window now: whole seconds since construction,
    /// modulo `up + down`, at or past `up` (`flakey_map`; `elapsed` is an `unsigned int`).
    #[must_use]
    pub fn is_down(&self) -> bool {
        self.window.is_down()
    }

    fn next_u64(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(GOLDEN_GAMMA, Ordering::AcqRel)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `get_random_u64() % PROBABILITY_BASE < ppb`.
    fn fires(&self, ppb: u32) -> bool {
        ppb > 0 && self.next_u64() % u64::from(PROBABILITY_BASE) < u64::from(ppb)
    }

    /// `corrupt_bio_random`: a random byte of `data` gets a random value.
    fn corrupt_random(&self, data: &mut [u8]) {
        let Ok(len) = u32::try_from(data.len()) else {
            return;
        };
        if len == 0 {
            return;
        }
        let index = (self.next_u64() & u64::from(u32::MAX)) % u64::from(len);
        let value = self.next_u64().to_le_bytes()[0];
        if let Some(b) = usize::try_from(index).ok().and_then(|i| data.get_mut(i)) {
            *b = value;
        }
    }

    /// The `corrupt_bio_byte` setting if it applies to a request of this direction.
    fn fixed(&self, direction: Direction, opf: u32) -> Option<CorruptBioByte> {
        self.args
            .corrupt
            .filter(|c| c.direction == direction && opf & c.flags == c.flags)
    }

    /// What a WRITE-direction bio does while down before any corruption: `Some(result)` when
    /// it ends here (dropped or failed).
    fn down_write_verdict(&self) -> Option<Result<()>> {
        match self.args.writes {
            DownWrites::Drop => Some(Ok(())),
            DownWrites::Error => Some(Err(failed("write failed: device is down (error_writes)"))),
            DownWrites::PassThrough => None,
        }
    }
}

/// `corrupt_bio_data`: set the 1-based `nth` byte if the request is that long (byte 0, which
/// the parser refuses, means off, as `fc->corrupt_bio_byte == 0` does in the kernel).
fn corrupt_nth(data: &mut [u8], c: CorruptBioByte) {
    let Some(index) = c.nth_byte.checked_sub(1) else {
        return;
    };
    let index = usize::try_from(index).unwrap_or(usize::MAX);
    if let Some(b) = data.get_mut(index) {
        *b = c.value;
    }
}

impl Volume for Flakey {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        if !self.is_down() {
            return self.device.read(sector + self.args.dest.offset, buf);
        }
        if self.args.error_reads {
            return Err(failed("read failed: device is down (error_reads)"));
        }
        self.device.read(sector + self.args.dest.offset, buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        // flakey_end_io: fixed corruption first, then the random one.
        if let Some(c) = self.fixed(Direction::Read, READ_OPF) {
            corrupt_nth(buf, c);
        }
        if self.fires(self.args.random_read_corrupt) {
            self.corrupt_random(buf);
        }
        Ok(())
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write_op(sector, buf, WRITE_OPF)
    }

    /// A write with REQ_FUA in its `bi_opf`: dropped, failed or corrupted while down like any
    /// write (`flakey_map` looks at the direction), passed down as a FUA write.
    fn write_fua(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.write_op(sector, buf, WRITE_OPF | REQ_FUA)
    }

    fn flush(&self) -> Result<()> {
        if self.is_down() {
            if let Some(verdict) = self.down_write_verdict() {
                return verdict;
            }
        }
        self.device.flush()
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        if self.is_down() {
            if let Some(verdict) = self.down_write_verdict() {
                return verdict;
            }
        }
        self.device.discard(sector + self.args.dest.offset, count)
    }
    // `write_zeroes` is the default: 6.12 dm-flakey takes no REQ_OP_WRITE_ZEROES, so the
    // block layer sends zero writes, which flakey drops, fails or corrupts as writes.
    // `allocation` is the default (data): reads while down may be corrupted.
}

impl Flakey {
    /// `flakey_map` for a write whose `bi_opf` is `opf`.
    fn write_op(&self, sector: Sector, buf: &[u8], opf: u32) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        let lower = |at: Sector, data: &[u8]| {
            if opf & REQ_FUA != 0 {
                self.device.write_fua(at, data)
            } else {
                self.device.write(at, data)
            }
        };
        let mut at = sector + self.args.dest.offset;
        let mut rest = buf;
        // Each pass is one flakey_map call: the whole bio, or what is left of it after a
        // 4 MiB corrupted clone was accepted.
        loop {
            if !self.is_down() {
                return lower(at, rest);
            }
            if let Some(verdict) = self.down_write_verdict() {
                return verdict;
            }
            if rest.is_empty() {
                return lower(at, rest);
            }
            let fixed = self.fixed(Direction::Write, opf);
            let random = self.fires(self.args.random_write_corrupt);
            if fixed.is_none() && !random {
                return lower(at, rest);
            }
            let (piece, after) = rest.split_at(rest.len().min(MAX_CLONE_BYTES));
            let mut clone = piece.to_vec();
            if let Some(c) = fixed {
                corrupt_nth(&mut clone, c);
            }
            if random {
                self.corrupt_random(&mut clone);
            }
            lower(at, &clone)?;
            at += SectorCount::from_bytes(piece.len())?;
            rest = after;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

/// Flakey has no status text and no messages (STATUSTYPE_INFO is empty).
impl Target for Flakey {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock, SystemClock};

    #[test]
    fn flakey_window_asks_to_be_rung_at_each_boundary_and_where_seconds_wrap() {
        let clock: SharedClock = ManualClock::shared();
        let w = Window::start(clock, 2, 3);
        let ring = |ms: u64| w.ring(Duration::from_millis(ms)).map(|d| d.as_millis());
        assert_eq!(ring(0), Some(2000));
        assert_eq!(ring(1999), Some(2000));
        assert_eq!(ring(2000), Some(5000));
        assert!(w.down.load(Ordering::Acquire));
        assert_eq!(ring(4999), Some(5000));
        assert_eq!(ring(5000), Some(7000));
        assert!(!w.down.load(Ordering::Acquire));
        // The kernel's `unsigned int` seconds wrap to 0 at 2^32: a new up window starts there.
        let near_wrap = (1u64 << 32) - 1;
        assert_eq!(
            ring(near_wrap * 1000),
            Some(u128::from(near_wrap + 1) * 1000)
        );
        let always_down = Window::start(ManualClock::shared(), 0, 4);
        assert!(always_down.is_down());
        assert_eq!(
            always_down.ring(Duration::from_secs(1)),
            Some(Duration::from_secs(4))
        );
    }

    #[test]
    fn flakey_on_system_clock_goes_down_and_up_again_on_its_timer_never_early() {
        let clock = Arc::new(SystemClock::new());
        let shared: SharedClock = clock.clone();
        let args = FlakeyArgs::parse(&mut crate::table::args::Args::new(
            &["m", "0", "1", "1"].map(String::from),
        ))
        .unwrap();
        let mem: SharedVolume = Arc::new(crate::volume::MemVolume::new(SectorCount(8)).unwrap());
        let f = Flakey::over(mem, &args, SectorCount(8), shared).unwrap();
        assert!(
            f.window.timed.load(Ordering::Acquire),
            "system clock keeps the flag"
        );
        // Each state change is seen no earlier than its boundary (the flag only moves when the
        // timer has read a time at or past it), and within a generous bound after it.
        let wait_for = |down: bool| {
            let give_up = std::time::Instant::now() + Duration::from_secs(20);
            while f.is_down() != down {
                assert!(
                    std::time::Instant::now() < give_up,
                    "flag never became {down}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            clock.now()
        };
        assert!(wait_for(true) >= Duration::from_secs(1));
        assert!(wait_for(false) >= Duration::from_secs(2));
    }

    /// A user's own clock: no alarms, so flakey reads it on every request.
    #[derive(Debug)]
    struct Plain(Arc<ManualClock>);
    impl Clock for Plain {
        fn now(&self) -> Duration {
            self.0.now()
        }
        fn sleep_until(&self, deadline: Duration) {
            self.0.sleep_until(deadline);
        }
    }

    #[test]
    fn flakey_window_follows_the_manual_clocks_alarms_and_a_plain_clocks_reading_alike() {
        let manual = ManualClock::shared();
        let plain = ManualClock::shared();
        let with_alarms = Window::start(manual.clone(), 2, 3);
        let without = Window::start(Arc::new(Plain(plain.clone())), 2, 3);
        assert!(with_alarms.timed.load(Ordering::Acquire));
        assert!(!without.timed.load(Ordering::Acquire));
        for ms in [0, 1999, 2000, 4999, 5000, 6999, 7000, 123_456] {
            manual.set(Duration::from_millis(ms));
            plain.set(Duration::from_millis(ms));
            let expect = ms >= 2000 && (ms / 1000) % 5 >= 2;
            assert_eq!(with_alarms.is_down(), expect, "manual clock at {ms} ms");
            assert_eq!(without.is_down(), expect, "plain clock at {ms} ms");
        }
        // A dropped window's alarm is forgotten on the next move of the clock.
        drop(with_alarms);
        manual.advance(Duration::from_secs(10));
        assert_eq!(manual.state_alarms(), 0);
    }
}
