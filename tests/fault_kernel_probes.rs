//! delay and flakey behaviour against the real Linux 6.12 kernel: the probes of
//! tests/fixtures/fault/guest.sh (held requests per class, corrupted bytes, dropped and failed
//! writes, flushes and discards, the up/down schedule in real time) replayed on dmemu.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use dmemu::clock::ManualClock;
use dmemu::targets::Flakey;
use dmemu::{Sector, SectorCount, Volume};

mod fault_oracle;
use fault_oracle::*;

#[test]
fn delay_holds_concurrent_writes_in_the_write_class_like_the_kernel() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let dev = create(&reg, "d1", "0 1024 delay 254:0 0 0 254:16 0 3000 254:0 0 0");
    let writers: Vec<_> = (0..2u64)
        .map(|i| {
            let dev = Arc::clone(&dev);
            thread::spawn(move || dev.write(Sector(i * 8), &[0u8; 4096]))
        })
        .collect();
    assert!(clock.wait_for_sleepers(2, Duration::from_secs(10)));
    assert_eq!(
        dev.status_text(),
        format!("{}\n", probe("delay-two-writes-held"))
    );
    clock.advance(Duration::from_millis(3000));
    for w in writers {
        w.join().unwrap().unwrap();
    }
    assert_eq!(
        dev.status_text(),
        format!("{}\n", probe("delay-after-release"))
    );
}

#[test]
fn flakey_read_corruption_matches_kernel_bytes() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    for (name, flags) in [("read-corrupt-byte-10", 0), ("read-corrupt-flags-1", 1)] {
        let table = format!("0 1024 flakey 254:0 0 0 1 5 corrupt_bio_byte 10 r 119 {flags}");
        let dev = create(&reg, name, &table);
        let mut b = vec![0u8; 4096];
        dev.read(Sector(0), &mut b).unwrap();
        assert_eq!(hex16(&b), probe(name), "{table}");
    }
}

#[test]
fn flakey_write_corruption_drop_and_error_match_kernel() {
    let clock = ManualClock::shared();
    let (reg, vda) = registry(&clock);
    let dev = create(
        &reg,
        "w",
        "0 1024 flakey 254:0 8 0 1 5 corrupt_bio_byte 3 w 170 1",
    );
    dev.write(Sector(0), &[0x22; 4096]).unwrap();
    let disk = vda.to_vec();
    assert_eq!(
        format!("rc=0 dev={}", hex16(&disk[8 * 512..])),
        probe("write-corrupt-byte-3")
    );

    let dev = create(&reg, "drop", "0 1024 flakey 254:0 16 0 1 1 drop_writes");
    let rc = i32::from(dev.write(Sector(0), &[0x33; 4096]).is_err());
    let mut b = vec![0u8; 4096];
    dev.read(Sector(0), &mut b).unwrap();
    assert_eq!(format!("rc={rc} read={}", hex16(&b)), probe("drop-writes"));

    let dev = create(&reg, "down", "0 1024 flakey 254:0 24 0 1");
    let read_rc = i32::from(dev.read(Sector(0), &mut b).is_err());
    let write_rc = i32::from(dev.write(Sector(0), &b).is_err());
    assert_eq!(
        format!("read_rc={read_rc} write_rc={write_rc}"),
        probe("default-down")
    );
}

#[test]
fn flakey_random_read_corrupt_changes_at_most_one_byte_like_kernel() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let dev = create(
        &reg,
        "r",
        "0 1024 flakey 254:0 0 0 1 2 random_read_corrupt 1000000000",
    );
    let flakey = reg
        .target::<Flakey>(&dmemu::targets::DeviceRef("r".into()))
        .unwrap();
    flakey.reseed(1);
    let mut ok = 0;
    let mut changed_any = false;
    for _ in 0..8 {
        let mut b = vec![0u8; 4096];
        dev.read(Sector(0), &mut b).unwrap();
        let diff = b.iter().filter(|&&x| x != 0x11).count();
        changed_any |= diff == 1;
        ok += usize::from(diff <= 1);
    }
    assert_eq!(format!("{ok}/8"), probe("random-read-at-most-one-byte"));
    assert!(changed_any, "at 10^9 ppb every read draws a byte to change");
}

/// The kernel's flakey (up 2 s, down 1 s) read in real guest time: each sample is bracketed by
/// /proc/uptime (10 ms resolution) as is the table load, so it is known to have happened
/// between `lo` and `hi` seconds after load. Every sample whose window lies inside one whole
/// second is replayed on a manual clock at the window's middle and must pass or fail as it
/// did in the kernel.
#[test]
fn flakey_up_down_schedule_matches_the_kernel_in_real_time() {
    let times = |l: &str| -> Vec<f64> { l.split(' ').map(|t| t.parse().unwrap()).collect() };
    let created = times(probe("flakey-created"));
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let dev = create(&reg, "fs", "0 1024 flakey 254:0 32 2 1");
    let mut decisive = [0, 0];
    for l in FIXTURE.lines().filter_map(|l| l.strip_prefix("sample: ")) {
        let v = times(l);
        let (lo, hi, kernel_rc) = (v[0] - created[1] - 0.01, v[1] - created[0] + 0.01, v[2]);
        if lo.floor() != hi.floor() {
            continue;
        }
        let mid = Duration::from_secs_f64((lo + hi) / 2.0);
        clock.set(mid);
        let rc = i32::from(dev.read(Sector(0), &mut [0u8; 4096]).is_err());
        assert_eq!(f64::from(rc), kernel_rc, "sample {l} ({mid:?} after load)");
        decisive[usize::from(rc == 1)] += 1;
    }
    assert!(
        decisive[0] >= 4 && decisive[1] >= 2,
        "enough up and down samples away from second boundaries ({decisive:?})"
    );
}

/// Flushes (the fixture was made with the virtio write cache on, so an fsync sends a lone
/// REQ_PREFLUSH bio to device-mapper) and discards: delay holds them in the flush and write
/// classes, flakey while down fails them with error_writes and completes them with
/// drop_writes.
#[test]
fn flushes_and_discards_are_held_failed_or_dropped_like_the_kernel() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let dev = create(&reg, "d3", "0 1024 delay 254:0 0 0 254:0 0 0 254:0 0 3000");
    let d = Arc::clone(&dev);
    let flusher = thread::spawn(move || d.flush());
    assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
    assert_eq!(
        dev.status_text(),
        format!("{}\n", probe("delay-flush-held"))
    );
    clock.advance(Duration::from_millis(3000));
    flusher.join().unwrap().unwrap();

    let dev = create(&reg, "d4", "0 1024 delay 254:0 0 0 254:0 0 3000");
    let d = Arc::clone(&dev);
    let discarder = thread::spawn(move || d.discard(Sector(0), SectorCount(8)));
    assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
    assert_eq!(
        dev.status_text(),
        format!("{}\n", probe("delay-discard-held"))
    );
    clock.advance(Duration::from_millis(3000));
    discarder.join().unwrap().unwrap();

    for op in ["flush", "discard"] {
        for (writes, tail) in [("error-writes", ""), ("drop-writes", " 1 drop_writes")] {
            let name = format!("{op}-down-{writes}");
            let dev = create(&reg, &name, &format!("0 1024 flakey 254:0 0 0 1{tail}"));
            let r = if op == "flush" {
                dev.flush()
            } else {
                dev.discard(Sector(0), SectorCount(8))
            };
            assert_eq!(format!("rc={}", i32::from(r.is_err())), probe(&name));
        }
    }
}

/// Corruption edge cases: byte N past the end of the bio, byte N in the second page of an
/// 8 KiB bio, error_reads beside read corruption, drop_writes beside random write corruption,
/// and random write corruption changing exactly one byte of what reaches the device.
#[test]
fn flakey_corruption_edge_cases_match_kernel() {
    let clock = ManualClock::shared();
    let (reg, vda) = registry(&clock);
    // Earlier probes in guest.sh left 0x22 in vda sectors 8..16.
    vda.write(Sector(8), &[0x22; 4096]).unwrap();
    let dev = create(
        &reg,
        "c",
        "0 1024 flakey 254:0 0 0 1 5 corrupt_bio_byte 5000 r 119 0",
    );
    let mut b = vec![0u8; 8192];
    dev.read(Sector(0), &mut b[..4096]).unwrap();
    assert_eq!(hex16(&b), probe("read-corrupt-beyond-bio"));
    dev.read(Sector(0), &mut b).unwrap();
    assert_eq!(hex16(&b[4992..]), probe("read-corrupt-second-page"));

    let dev = create(
        &reg,
        "e",
        "0 1024 flakey 254:0 0 0 1 6 error_reads corrupt_bio_byte 1 r 0 0",
    );
    let rc = i32::from(dev.read(Sector(0), &mut b).is_err());
    assert_eq!(format!("rc={rc}"), probe("error-reads-with-corrupt-r"));

    let dev = create(
        &reg,
        "d",
        "0 1024 flakey 254:0 40 0 1 3 drop_writes random_write_corrupt 1000000000",
    );
    let rc = i32::from(dev.write(Sector(0), &[0x33; 4096]).is_err());
    let disk = vda.to_vec();
    assert_eq!(
        format!("rc={rc} dev={}", hex16(&disk[40 * 512..])),
        probe("drop-writes-with-random")
    );

    let dev = create(
        &reg,
        "r",
        "0 1024 flakey 254:0 48 0 1 2 random_write_corrupt 1000000000",
    );
    reg.target::<Flakey>(&dmemu::targets::DeviceRef("r".into()))
        .unwrap()
        .reseed(3);
    let rc = i32::from(dev.write(Sector(0), &[0x22; 4096]).is_err());
    let disk = vda.to_vec();
    let changed = disk[48 * 512..56 * 512]
        .iter()
        .filter(|&&x| x != 0x22)
        .count();
    assert_eq!(
        format!("rc={rc} {changed}"),
        probe("random-write-changed-bytes")
    );
}
