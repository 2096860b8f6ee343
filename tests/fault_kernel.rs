//! delay and flakey against the real Linux 6.12 kernel: every table the kernel accepted
//! prints back (table and status) exactly as `dmsetup` printed it, every table it refused is
//! refused with the kernel's `ti->error` words, and the behaviour probes (held requests,
//! corrupted bytes, dropped and failed I/O) come out the same.
//!
//! Fixtures: tests/fixtures/fault/kernel-6.12.txt, made by tests/fixtures/fault/make.sh
//! (guest.sh run by shared/oracle/run.sh; cases.txt holds the table lines, with /dev/vda =
//! 254:0 filled with 0x11 and /dev/vdb = 254:16), and kernel-6.12-dust.txt, made by
//! make-dust.sh (Debian does not build dm-dust: it builds dm-dust.ko from the 6.12.117 source
//! against the matching headers and runs dust.guest.sh: dust-cases.txt, then a script of
//! messages and I/O whose every step and result is recorded).

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use dmemu::clock::ManualClock;
use dmemu::table::DeviceSpec;
use dmemu::targets::Flakey;
use dmemu::{MappedDevice, MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};

const FIXTURE: &str = include_str!("fixtures/fault/kernel-6.12.txt");
const DUST_FIXTURE: &str = include_str!("fixtures/fault/kernel-6.12-dust.txt");

/// The registry the guest had: vda (8192 sectors of 0x11) as 254:0, vdb (zeros) as 254:16.
fn registry(clock: &Arc<ManualClock>) -> (Registry, Arc<MemVolume>) {
    let reg = Registry::new().with_clock(clock.clone());
    let vda = Arc::new(MemVolume::from_bytes(vec![0x11; 4 << 20]).unwrap());
    reg.insert_volume("254:0", vda.clone());
    reg.insert_volume(
        "254:16",
        Arc::new(MemVolume::new(SectorCount(8192)).unwrap()),
    );
    (reg, vda)
}

fn create(reg: &Registry, name: &str, table: &str) -> Arc<MappedDevice> {
    reg.create(&DeviceSpec {
        name: name.into(),
        uuid: String::new(),
        minor: None,
        mode: TableMode::ReadWrite,
        table: Table::parse(table).unwrap(),
    })
    .unwrap()
}

/// What the kernel did with a table: `Ok((table, status))` or `Err(its error words)`.
type Outcome = Result<(String, String), String>;

/// `(input, outcome)` for every table case in both fixtures.
fn cases() -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    let mut lines = FIXTURE.lines().chain(DUST_FIXTURE.lines());
    while let Some(line) = lines.next() {
        let Some(input) = line.strip_prefix("in: ") else {
            continue;
        };
        let next = lines.next().expect("a result after each input");
        let result = if let Some(e) = next.strip_prefix("error: ") {
            Err(e.to_string())
        } else {
            let table = next.strip_prefix("table: ").expect("table line");
            let status = lines.next().and_then(|l| l.strip_prefix("status: "));
            Ok((table.to_string(), status.expect("status line").to_string()))
        };
        out.push((input.to_string(), result));
    }
    out
}

fn probe(name: &str) -> &'static str {
    FIXTURE
        .lines()
        .find_map(|l| l.strip_prefix(&format!("probe: {name}: ")))
        .unwrap_or_else(|| panic!("probe {name} in fixture"))
}

#[test]
fn kernel_accepted_tables_print_back_and_report_status_like_dmsetup() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let mut n = 0;
    for (i, (input, result)) in cases().into_iter().enumerate() {
        let Ok((table, status)) = result else {
            continue;
        };
        let parsed = Table::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(
            parsed.to_text(Default::default()),
            format!("{table}\n"),
            "{input}"
        );
        let dev = create(&reg, &format!("d{i}"), &input);
        assert_eq!(dev.status_text(), format!("{status}\n"), "{input}");
        n += 1;
    }
    assert!(n >= 43, "fixtures hold the accepted cases ({n})");
}

#[test]
fn kernel_refused_tables_are_refused_with_the_kernel_words() {
    let mut n = 0;
    for (input, result) in cases() {
        let Err(kernel) = result else { continue };
        let err = Table::parse(&input).expect_err(&input).to_string();
        assert!(
            err.ends_with(&kernel),
            "{input}: ours {err:?}, kernel {kernel:?}"
        );
        n += 1;
    }
    assert!(n >= 52, "fixtures hold the refused cases ({n})");
}

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

fn hex16(b: &[u8]) -> String {
    b[..16].iter().map(|x| format!("{x:02x}")).collect()
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

/// Replays the dust script of the fixture step by step on dmemu and compares every reply,
/// failure and status line with the kernel's.
#[test]
fn dust_messages_and_io_replay_the_kernel_script_exactly() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let tables = [
        ("d1", "0 2048 dust 254:0 0 4096"),
        ("d2", "0 2048 dust 254:0 8 4096"),
        ("d3", "0 2048 dust 254:0 4 4096"),
        ("d4", "0 2048 dust 254:0 0 4096"),
    ];
    let devs: Vec<_> = tables
        .iter()
        .map(|(name, t)| (*name, create(&reg, name, t)))
        .collect();
    let mut steps = 0;
    for line in DUST_FIXTURE.lines() {
        let Some(step) = line.strip_prefix("step: ") else {
            continue;
        };
        let (cmd, kernel) = step.split_once(" => ").expect("step => result");
        let words: Vec<&str> = cmd.split(' ').collect();
        let dev = &devs.iter().find(|(n, _)| *n == words[0]).expect("device").1;
        let ours = match words[1] {
            "status" => dev.status_text().trim_end().to_string(),
            "flush" => format!("rc={}", i32::from(dev.flush().is_err())),
            "message" => match dev.message(Sector(0), &words[2..]) {
                Ok(reply) => format!("ok {}", reply.trim_end_matches('\n').replace('\n', "|")),
                Err(e) => {
                    assert_eq!(e.errno(), 22, "{cmd}: message errors are EINVAL");
                    let why = kernel.strip_prefix("fail ").expect("kernel failed too");
                    assert!(e.to_string().ends_with(why), "{cmd}: {e}");
                    kernel.to_string()
                }
            },
            io => {
                let block: u64 = words[2].parse().unwrap();
                let count: usize = words[3].parse().unwrap();
                let at = Sector(block * 8);
                let r = if io == "read" {
                    dev.read(at, &mut vec![0u8; 4096 * count])
                } else {
                    dev.write(at, &vec![0x22u8; 4096 * count])
                };
                format!("rc={}", i32::from(r.is_err()))
            }
        };
        assert_eq!(ours, kernel, "{cmd}");
        steps += 1;
    }
    assert!(steps >= 62, "fixture holds the dust script ({steps} steps)");
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
/// REQ_PREFLUSH bio to device-mapper): delay holds them in the flush class, flakey while down
/// fails them with error_writes and completes them with drop_writes.
#[test]
fn flushes_are_held_failed_or_dropped_like_the_kernel() {
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

    for (name, table) in [
        ("flush-down-error-writes", "0 1024 flakey 254:0 0 0 1"),
        (
            "flush-down-drop-writes",
            "0 1024 flakey 254:0 0 0 1 1 drop_writes",
        ),
    ] {
        let dev = create(&reg, name, table);
        assert_eq!(
            format!("rc={}", i32::from(dev.flush().is_err())),
            probe(name)
        );
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
