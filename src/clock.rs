//! Injected time: the `Clock` trait that delay and flakey read time through, the system clock
//! (default) and a manual clock that tests advance by hand so fault schedules are exact.
//!
//! The kernel's dm-flakey measures whole seconds of `jiffies` since the table was loaded and
//! dm-delay holds each bio until `jiffies` passes its deadline. Here both read a `Clock`
//! instead, so a test can say "now it is 4.999 s after load" and see the down window start one
//! millisecond later, without sleeping.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

/// A monotonic clock measured from its own epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since the clock's epoch. Never goes backwards.
    fn now(&self) -> Duration;

    /// Block the calling thread until `now() >= deadline`. Returns at once if it already is.
    fn sleep_until(&self, deadline: Duration);

    /// Have `alarm` rung at `deadline` (and then at each deadline it returns) for as long as
    /// it is alive: the system clock from a background timer thread, the manual clock inside
    /// `advance`/`set`. Returns `false` when the clock has no alarms (the default, for a
    /// user's own clock): callers then read `now()` on every request instead.
    ///
    /// flakey, which must know on every request whether it is in its down window, uses this
    /// to read a flag the alarm keeps instead of the clock: reading the system clock costs
    /// several nanoseconds per request, the flag one load.
    fn set_alarm(&self, alarm: Weak<dyn Alarm>, deadline: Duration) -> bool {
        let _ = (alarm, deadline);
        false
    }

    /// Like `sleep_until`, but return early once `stop` is raised (a suspend releasing
    /// delay's held requests). The raiser calls `stop.raise(clock)`. The default, for a
    /// user's own clock, cannot be interrupted and sleeps to the deadline.
    fn sleep_until_or(&self, deadline: Duration, stop: &Stop) {
        let _ = stop;
        self.sleep_until(deadline);
    }

    /// Wake threads blocked in `sleep_until_or` so they look at their `Stop` again.
    fn wake_sleepers(&self) {}
}

/// A flag that ends `Clock::sleep_until_or` early: raised by `presuspend`, lowered by
/// `resume`.
#[derive(Debug, Default)]
pub struct Stop {
    raised: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    /// Whether the flag is up.
    #[must_use]
    pub fn is_raised(&self) -> bool {
        *self.raised.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Raise the flag and wake every sleeper on `clock`.
    pub fn raise(&self, clock: &dyn Clock) {
        *self.raised.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
        clock.wake_sleepers();
    }

    /// Lower the flag.
    pub fn lower(&self) {
        *self.raised.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Wait in real time until raised or `timeout` passes.
    fn wait_timeout(&self, timeout: Duration) {
        let g = self.raised.lock().unwrap_or_else(PoisonError::into_inner);
        if !*g {
            drop(
                self.changed
                    .wait_timeout(g, timeout)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }
}

/// Something a clock's timer calls at deadlines (see `Clock::set_alarm`).
pub trait Alarm: Send + Sync {
    /// Called at or after the deadline it asked for, with the clock's time. Returns when to
    /// be called next (a time not after `now` asks again at once), or `None` to stop.
    fn ring(&self, now: Duration) -> Option<Duration>;
}

/// A clock shared between a registry, its targets and a test.
pub type SharedClock = Arc<dyn Clock>;

/// Real time since the clock was made; sleeps with `thread::sleep`.
///
/// On Linux it reads `CLOCK_MONOTONIC_COARSE`, which advances once per kernel tick like the
/// `jiffies` dm-flakey and dm-delay count in, and costs a few nanoseconds from the vDSO
/// (flakey reads the clock on every request). Elsewhere it reads `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    epoch: Duration,
}

#[cfg(target_os = "linux")]
fn monotonic() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

#[cfg(not(target_os = "linux"))]
fn monotonic() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

impl SystemClock {
    /// A clock whose epoch is now.
    #[must_use]
    pub fn new() -> SystemClock {
        SystemClock { epoch: monotonic() }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        monotonic().saturating_sub(self.epoch)
    }

    fn sleep_until(&self, deadline: Duration) {
        // thread::sleep may wake early on some platforms; loop until the deadline holds.
        loop {
            let now = self.now();
            if now >= deadline {
                return;
            }
            std::thread::sleep(deadline - now);
        }
    }

    fn sleep_until_or(&self, deadline: Duration, stop: &Stop) {
        loop {
            let now = self.now();
            if now >= deadline || stop.is_raised() {
                return;
            }
            stop.wait_timeout(deadline - now);
        }
    }

    fn set_alarm(&self, alarm: Weak<dyn Alarm>, deadline: Duration) -> bool {
        timer().add(TimerEntry {
            at: self.epoch.saturating_add(deadline),
            epoch: self.epoch,
            alarm,
        })
    }
}

/// One alarm waiting in the system timer, at an absolute `monotonic()` time.
struct TimerEntry {
    at: Duration,
    /// The epoch of the `SystemClock` that set it: the alarm is rung with `at - epoch`.
    epoch: Duration,
    alarm: Weak<dyn Alarm>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &TimerEntry) -> bool {
        self.at == other.at
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &TimerEntry) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &TimerEntry) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// The process-wide timer behind `SystemClock::set_alarm`: one thread, started on first
/// use, that sleeps until the earliest alarm is due (and indefinitely when none is).
#[derive(Default)]
struct Timer {
    due: Mutex<BinaryHeap<Reverse<TimerEntry>>>,
    changed: Condvar,
    started: OnceLock<bool>,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<Timer> = OnceLock::new();
    TIMER.get_or_init(Timer::default)
}

impl Timer {
    /// Queue an alarm; `false` if the timer thread cannot be started.
    fn add(&'static self, entry: TimerEntry) -> bool {
        let running = *self.started.get_or_init(|| {
            std::thread::Builder::new()
                .name("dmemu-timer".into())
                .spawn(move || self.run())
                .is_ok()
        });
        if running {
            self.due
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Reverse(entry));
            self.changed.notify_one();
        }
        running
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let Some(Reverse(next)) = due.peek() else {
                due = self
                    .changed
                    .wait(due)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            let now = monotonic();
            if next.at > now {
                let wait = next.at - now;
                due = self
                    .changed
                    .wait_timeout(due, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            let Some(Reverse(entry)) = due.pop() else {
                continue;
            };
            // Ring without the lock: the alarm may be slow, and others may add meanwhile.
            drop(due);
            let again = entry.alarm.upgrade().and_then(|alarm| {
                let next = alarm.ring(monotonic().saturating_sub(entry.epoch))?;
                Some(TimerEntry {
                    at: entry.epoch.saturating_add(next),
                    ..entry
                })
            });
            due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = again {
                due.push(Reverse(entry));
            }
        }
    }
}

#[derive(Default)]
struct ManualState {
    now: Duration,
    /// Alarms set on this clock, rung by `advance`/`set` when the time reaches them.
    alarms: Vec<(Duration, Weak<dyn Alarm>)>,
    /// Deadlines of threads blocked in `sleep_until`, with how many threads wait on each.
    sleepers: BTreeMap<Duration, usize>,
}

impl fmt::Debug for ManualState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualState")
            .field("now", &self.now)
            .field("sleepers", &self.sleepers)
            .field("alarms", &self.alarms.len())
            .finish()
    }
}

impl ManualState {
    /// Threads whose deadline lies in the future (they cannot have woken yet).
    fn pending(&self) -> usize {
        self.sleepers
            .range((
                std::ops::Bound::Excluded(self.now),
                std::ops::Bound::Unbounded,
            ))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A clock that stands still until a test moves it. Threads blocked in `sleep_until` wake
/// when `advance`/`set` moves the time to or past their deadline.
///
/// ```
/// use std::time::Duration;
/// use dmemu::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// assert_eq!(clock.now(), Duration::ZERO);
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now().as_millis(), 1500);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    state: Mutex<ManualState>,
    changed: Condvar,
    /// `state.now` in nanoseconds, written under the lock and read without it, so `now()`
    /// on the I/O path takes no lock.
    now_ns: AtomicU64,
}

impl ManualClock {
    /// A manual clock at time zero.
    #[must_use]
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// A manual clock at time zero, shared.
    #[must_use]
    pub fn shared() -> Arc<ManualClock> {
        Arc::new(ManualClock::new())
    }

    fn lock(&self) -> MutexGuard<'_, ManualState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, s: &ManualState) {
        let ns = u64::try_from(s.now.as_nanos()).unwrap_or(u64::MAX);
        self.now_ns.store(ns, Ordering::Release);
    }

    /// Move the clock forward by `by` and wake every thread whose deadline has come.
    pub fn advance(&self, by: Duration) {
        let mut s = self.lock();
        s.now = s.now.saturating_add(by);
        self.publish(&s);
        drop(s);
        self.ring_due();
        self.changed.notify_all();
    }

    /// Set the clock to `to`; a time before the current one is ignored (the clock is
    /// monotonic).
    pub fn set(&self, to: Duration) {
        let mut s = self.lock();
        s.now = s.now.max(to);
        self.publish(&s);
        drop(s);
        self.ring_due();
        self.changed.notify_all();
    }

    /// Alarms waiting on this clock (for tests).
    #[cfg(test)]
    pub(crate) fn state_alarms(&self) -> usize {
        self.lock().alarms.len()
    }

    /// Ring every live alarm whose deadline has come, before `advance`/`set` returns, so a
    /// test sees their effect (flakey's window) the moment it moves the clock. Alarms are
    /// rung without the lock held and may ask again; dead ones are dropped.
    fn ring_due(&self) {
        loop {
            let mut s = self.lock();
            let now = s.now;
            let Some(i) = s.alarms.iter().position(|(at, _)| *at <= now) else {
                s.alarms.retain(|(_, a)| a.strong_count() > 0);
                return;
            };
            let (_, alarm) = s.alarms.swap_remove(i);
            drop(s);
            if let Some(next) = alarm.upgrade().and_then(|a| a.ring(now)) {
                self.lock().alarms.push((next, alarm));
            }
        }
    }

    /// Threads blocked in `sleep_until` whose deadline has not come yet. After `advance`
    /// returns this is exact: a thread whose deadline passed is no longer counted even if it
    /// has not been scheduled yet.
    #[must_use]
    pub fn sleepers(&self) -> usize {
        self.lock().pending()
    }

    /// Wait (in real time, at most `timeout`) until at least `n` threads are blocked on a
    /// future deadline. Returns whether they are. Tests use this to know that requests are
    /// held before moving the clock.
    pub fn wait_for_sleepers(&self, n: usize, timeout: Duration) -> bool {
        let give_up = Instant::now() + timeout;
        let mut s = self.lock();
        while s.pending() < n {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns.load(Ordering::Acquire))
    }

    fn set_alarm(&self, alarm: Weak<dyn Alarm>, deadline: Duration) -> bool {
        self.lock().alarms.push((deadline, alarm));
        self.ring_due();
        true
    }

    fn sleep_until(&self, deadline: Duration) {
        self.sleep_until_or(deadline, &Stop::default());
    }

    fn wake_sleepers(&self) {
        // Take the lock so a sleeper between its check and its wait is not missed.
        drop(self.lock());
        self.changed.notify_all();
    }

    fn sleep_until_or(&self, deadline: Duration, stop: &Stop) {
        let mut s = self.lock();
        if s.now >= deadline || stop.is_raised() {
            return;
        }
        *s.sleepers.entry(deadline).or_insert(0) += 1;
        // Tell `wait_for_sleepers` a thread is now held.
        self.changed.notify_all();
        while s.now < deadline && !stop.is_raised() {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(n) = s.sleepers.get_mut(&deadline) {
            *n -= 1;
            if *n == 0 {
                s.sleepers.remove(&deadline);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_wakes_sleeper_exactly_at_deadline() {
        let clock = ManualClock::shared();
        let c = Arc::clone(&clock);
        let t = std::thread::spawn(move || {
            c.sleep_until(Duration::from_millis(100));
            c.now()
        });
        assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
        clock.advance(Duration::from_millis(99));
        assert_eq!(clock.sleepers(), 1, "deadline not reached: still held");
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.sleepers(), 0);
        assert_eq!(t.join().unwrap(), Duration::from_millis(100));
    }

    #[test]
    fn manual_clock_past_deadline_returns_at_once_and_set_is_monotonic() {
        let clock = ManualClock::new();
        clock.set(Duration::from_secs(5));
        clock.sleep_until(Duration::from_secs(1));
        clock.set(Duration::from_secs(2));
        assert_eq!(clock.now(), Duration::from_secs(5));
    }

    #[test]
    fn system_clock_sleep_until_reaches_deadline() {
        let clock = SystemClock::new();
        let d = clock.now() + Duration::from_millis(2);
        clock.sleep_until(d);
        assert!(clock.now() >= d);
    }
}
