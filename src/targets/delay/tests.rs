use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::registry::Registry;
use crate::volume::MemVolume;

fn parse(s: &str) -> ArgResult<DelayArgs> {
    let toks: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    DelayArgs::parse(&mut Args::new(&toks))
}

#[test]
fn delay_args_print_back_in_their_3_6_9_forms() {
    for s in [
        "8:16 0 500",
        "8:16 2048 0 8:32 0 100",
        "8:16 0 1 8:32 4 2 8:48 8 3",
    ] {
        assert_eq!(parse(s).unwrap().to_string(), s);
    }
}

#[test]
fn delay_six_form_sends_flushes_to_the_write_class() {
    let a = parse("r 0 1 w 0 2").unwrap();
    let [r, w, f] = a.classes();
    assert_eq!((r.delay_ms, w.delay_ms, f.delay_ms), (1, 2, 2));
}

#[test]
fn delay_bad_arguments_fail_with_kernel_words() {
    for (s, why, at) in [
        ("a 0", "Requires exactly 3, 6 or 9 arguments", None),
        ("a 0 1 b 0", "Requires exactly 3, 6 or 9 arguments", None),
        ("a x 1", "Invalid device sector", Some(1)),
        ("a 0 -1", "Invalid delay", Some(2)),
        ("a 0 1 b 0 1x", "Invalid delay", Some(5)),
        ("a 0 1 b 0 1 c +1 1", "Invalid device sector", Some(7)),
    ] {
        let e = parse(s).unwrap_err();
        assert_eq!((e.reason.as_str(), e.index), (why, at), "{s}");
    }
}

#[test]
fn delay_values_wrap_like_kernel_sscanf() {
    // sscanf("%u") keeps the low 32 bits: 4294967296 ms is a delay of 0.
    assert_eq!(parse("a 0 4294967296").unwrap().read.delay_ms, 0);
}

fn over(ms: [u32; 3], clock: &Arc<ManualClock>) -> (Arc<Delay>, Arc<MemVolume>) {
    let mem = Arc::new(MemVolume::new(SectorCount(64)).unwrap());
    let v: SharedVolume = mem.clone();
    let classes = ms.map(|m| (Arc::clone(&v), SectorCount(8), m));
    let clock: SharedClock = clock.clone();
    let d = Delay::over(classes, SectorCount(32), clock).unwrap();
    (Arc::new(d), mem)
}

#[test]
fn delayed_read_completes_exactly_when_clock_passes_deadline() {
    let clock = ManualClock::shared();
    let (d, mem) = over([100, 0, 0], &clock);
    mem.write(Sector(9), &[7u8; 512]).unwrap();
    clock.advance(Duration::from_millis(5));
    let d2 = Arc::clone(&d);
    let reader = thread::spawn(move || {
        let mut b = [0u8; 512];
        d2.read(Sector(1), &mut b).unwrap();
        b[0]
    });
    assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
    assert_eq!(d.status(), "1 0 0");
    clock.advance(Duration::from_millis(99));
    assert_eq!(
        clock.sleepers(),
        1,
        "at 104 ms the 105 ms deadline has not come"
    );
    assert!(!reader.is_finished());
    assert_eq!(d.status(), "1 0 0");
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        reader.join().unwrap(),
        7,
        "read mapped like linear at offset 8"
    );
    assert_eq!(d.status(), "0 0 0");
}

#[test]
fn concurrent_delayed_requests_overlap_instead_of_queueing() {
    let clock = ManualClock::shared();
    let (d, _mem) = over([50, 50, 50], &clock);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let d = Arc::clone(&d);
            thread::spawn(move || {
                if i % 2 == 0 {
                    d.read(Sector(0), &mut [0u8; 512])
                } else {
                    d.write(Sector(0), &[1u8; 512])
                }
            })
        })
        .collect();
    assert!(clock.wait_for_sleepers(4, Duration::from_secs(10)));
    assert_eq!(d.status(), "2 2 0");
    // One delay period releases all four: they were held side by side.
    clock.advance(Duration::from_millis(50));
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(d.status(), "0 0 0");
}

#[test]
fn delay_flush_is_held_in_the_flush_class_and_zero_delay_is_not_held() {
    let clock = ManualClock::shared();
    let (d, _mem) = over([0, 0, 30], &clock);
    d.read(Sector(0), &mut [0u8; 512]).unwrap();
    d.write(Sector(0), &[0u8; 512]).unwrap();
    assert_eq!(d.status(), "0 0 0");
    let d2 = Arc::clone(&d);
    let t = thread::spawn(move || d2.flush());
    assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
    assert_eq!(d.status(), "0 0 1");
    clock.advance(Duration::from_millis(30));
    t.join().unwrap().unwrap();
}

#[test]
fn delay_through_registry_uses_registry_clock_and_checks_device_area() {
    let clock = ManualClock::shared();
    let reg = Registry::new().with_clock(clock.clone());
    reg.insert_volume("disk", Arc::new(MemVolume::new(SectorCount(16)).unwrap()));
    let args = parse("disk 0 20").unwrap();
    let d = Arc::new(Delay::new(&args, SectorCount(16), &reg.context()).unwrap());
    let d2 = Arc::clone(&d);
    let t = thread::spawn(move || d2.write(Sector(0), &[3u8; 512]));
    assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
    assert_eq!(d.status(), "0 1 0");
    clock.advance(Duration::from_millis(20));
    t.join().unwrap().unwrap();
    let too_long = parse("disk 1 20").unwrap();
    assert!(Delay::new(&too_long, SectorCount(16), &reg.context()).is_err());
}

/// `dmsetup status` of the 6.12 kernel while one 4 KiB `op` from sector 4 was held by the
/// same two-line table (tests/fixtures/fault/make-delay-split.sh).
fn kernel_held(op: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fault/kernel-6.12-delay-split.txt"
    );
    let prefix = format!("held-{op}: ");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn request_across_two_delay_lines_is_held_once_with_both_pieces_side_by_side() {
    use crate::table::{DeviceSpec, Table, TableMode};
    let clock = ManualClock::shared();
    let reg = Registry::new().with_clock(clock.clone());
    let disk = Arc::new(MemVolume::new(SectorCount(32)).unwrap());
    reg.insert_volume("disk", disk.clone());
    let dev = reg
        .create(&DeviceSpec {
            name: "slow".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse("0 8 delay disk 0 40\n8 8 delay disk 8 40").unwrap(),
        })
        .unwrap();
    // A write from sector 4 to 12 is cut at sector 8 into one piece per line: the kernel
    // holds both clones at once (its status shows one held on each line, and the request
    // took one delay), so both wait the same 40 ms, not one after the other.
    let d = Arc::clone(&dev);
    let t = thread::spawn(move || d.write(Sector(4), &[7u8; 8 * 512]));
    assert!(clock.wait_for_sleepers(2, Duration::from_secs(10)));
    assert_eq!(dev.status_text(), kernel_held("write"));
    clock.advance(Duration::from_millis(40));
    t.join().unwrap().unwrap();
    assert!(disk.to_vec()[4 * 512..12 * 512].iter().all(|&b| b == 7));
    // Reads are split the same way and land in the right halves of the buffer.
    disk.write(Sector(8), &[9u8; 512]).unwrap();
    let d = Arc::clone(&dev);
    let t = thread::spawn(move || {
        let mut b = vec![0u8; 8 * 512];
        d.read(Sector(4), &mut b).map(|()| b)
    });
    assert!(clock.wait_for_sleepers(2, Duration::from_secs(10)));
    assert_eq!(dev.status_text(), kernel_held("read"));
    clock.advance(Duration::from_millis(40));
    let b = t.join().unwrap().unwrap();
    let runs: Vec<(u8, usize)> = b.chunk_by(|x, y| x == y).map(|r| (r[0], r.len())).collect();
    assert_eq!(runs, [(7, 4 * 512), (9, 512), (7, 3 * 512)]);
}
