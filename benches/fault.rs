//! Criterion bench: the cost of delay (0 ms) and flakey (in its up window) over linear for
//! 4 KiB reads from a `MemVolume` (target: at most 5% over linear). flakey on the system clock
//! reads a flag its timer keeps (`Clock::set_alarm`), on the manual clock the clock itself.

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmemu::clock::{ManualClock, SharedClock, SystemClock};
use dmemu::targets::flakey::FlakeyArgs;
use dmemu::targets::linear::Linear;
use dmemu::targets::{Delay, DeviceAt, DeviceRef, Flakey};
use dmemu::{MemVolume, Sector, SectorCount, SharedVolume, Volume};

use common::Aligned;

const SIZE: SectorCount = SectorCount(64 * 2048); // 64 MiB
const IO: usize = 4096;

/// 4 KiB reads scattered over the volume. The machine is shared, so each sample is the
/// fastest of many 32-read batches (preemption only ever adds time), scaled to the
/// iteration count criterion asks for: the same estimator for every variant.
fn reads(c: &mut Criterion, name: &str, v: &dyn Volume) {
    const BATCH: u64 = 32;
    let mut aligned = Aligned::new(IO);
    let buf = aligned.buf(IO);
    let steps = SIZE.0 / 8;
    let mut i = 0u64;
    let mut g = c.benchmark_group("fault_4k_read");
    g.throughput(Throughput::Bytes(IO as u64));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut best = Duration::MAX;
            for _ in 0..iters.div_ceil(BATCH) {
                let t = Instant::now();
                for _ in 0..BATCH {
                    // A stride that walks every 4 KiB block in a scattered order.
                    i = (i + 7919) % steps;
                    v.read(Sector(i * 8), black_box(&mut *buf)).unwrap();
                }
                best = best.min(t.elapsed());
            }
            best * u32::try_from(iters).unwrap() / u32::try_from(BATCH).unwrap()
        });
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    // Real pages (not the shared zero page), so reads cost what they would on a cold image.
    let bytes = vec![0x5au8; usize::try_from(SectorCount(SIZE.0 + 8).bytes()).unwrap()];
    let mem: SharedVolume = Arc::new(MemVolume::from_bytes(bytes).unwrap());
    let clock: SharedClock = Arc::new(ManualClock::new());
    let linear = Linear::over(Arc::clone(&mem), SectorCount(8), SIZE).unwrap();
    let flakey_args = FlakeyArgs {
        dest: DeviceAt {
            device: DeviceRef("mem".into()),
            offset: SectorCount(8),
        },
        up_secs: 60,
        down_secs: 1,
        error_reads: true,
        writes: Default::default(),
        corrupt: None,
        random_read_corrupt: 0,
        random_write_corrupt: 0,
    };
    let system: SharedClock = Arc::new(SystemClock::new());
    let flakey = Flakey::over(Arc::clone(&mem), &flakey_args, SIZE, system).unwrap();
    let flakey_manual =
        Flakey::over(Arc::clone(&mem), &flakey_args, SIZE, Arc::clone(&clock)).unwrap();
    let class = || (Arc::clone(&mem), SectorCount(8), 0);
    let delay = Delay::over([class(), class(), class()], SIZE, Arc::clone(&clock)).unwrap();
    reads(c, "linear", &linear);
    reads(c, "flakey_up", &flakey);
    reads(c, "flakey_up_manual_clock", &flakey_manual);
    reads(c, "delay_0ms", &delay);
    // Measured again last: drift over the run shows up as a difference between the two.
    reads(c, "linear_again", &linear);
}

/// What flakey pays per request to learn the time.
fn clocks(c: &mut Criterion) {
    let system: SharedClock = Arc::new(SystemClock::new());
    let manual: SharedClock = Arc::new(ManualClock::new());
    let mut g = c.benchmark_group("clock_now");
    g.bench_function("system", |b| b.iter(|| black_box(system.now())));
    g.bench_function("manual", |b| b.iter(|| black_box(manual.now())));
    g.finish();
}

criterion_group!(benches, bench, clocks);
criterion_main!(benches);
