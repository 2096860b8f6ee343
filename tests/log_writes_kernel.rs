//! log-writes against the real Linux 6.12 dm-log-writes and qemu's blklogwrites driver.
//!
//! Fixtures: tests/fixtures/log-writes, made by make.sh (guest.sh on the oracle VM) and
//! make-qemu.sh (qemu-io, no root). dmemu runs the same scripted writes, flushes, FUA
//! writes, discards and marks as guest.sh did and must leave the kernel's log byte for byte,
//! its data device, and its status line after every step; the kernel's ext4 log replays to
//! the data device's exact bytes at each mark; qemu's log replays to qemu's image.

use std::io::Read;
use std::sync::Arc;

use dmemu::targets::log_writes::format::{LogReader, DISCARD, FLUSH, FUA, MARK, METADATA};
use dmemu::targets::log_writes::replay::{crash_states, CheckAt, Replay, ReplayOptions};
use dmemu::targets::{LogWrites, Target};
use dmemu::volume::MemVolume;
use dmemu::{Sector, SectorCount, Table, Volume};
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/log-writes");

fn gunzip(name: &str) -> Vec<u8> {
    let f = std::fs::File::open(format!("{DIR}/{name}")).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// `kernel-6.12.txt` records of one phase: (tag, rest).
fn records(phase: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{DIR}/kernel-6.12.txt")).unwrap();
    let mut on = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rec) = line.strip_prefix("@@") else {
            continue;
        };
        let (tag, rest) = rec.split_once(' ').unwrap_or((rec, ""));
        if tag == "phase" {
            on = rest == phase;
            continue;
        }
        if on {
            out.push((tag.to_string(), rest.to_string()));
        }
    }
    out
}

/// The kernel's status lines of one phase, without `<dev> 0 <len> log-writes `.
fn statuses(phase: &str) -> Vec<String> {
    records(phase)
        .into_iter()
        .filter(|(t, _)| t == "status")
        .map(|(_, r)| r.split_once(" log-writes ").unwrap().1.to_string())
        .collect()
}

/// data.bin of make.sh: sector k is "data.bin sector <k:06>\n" repeated to 512 bytes.
fn data_sector(k: u64) -> Vec<u8> {
    let line = format!("data.bin sector {k:06}\n");
    line.repeat(512 / line.len() + 1).into_bytes()[..512].to_vec()
}

fn data(sector: u64, count: u64) -> Vec<u8> {
    (sector..sector + count).flat_map(data_sector).collect()
}

/// Compare two images, naming the first differing byte (never printing them whole).
fn same_bytes(ours: &[u8], kernel: &[u8], what: &str) {
    assert_eq!(ours.len(), kernel.len(), "{what}: size");
    if let Some(i) = ours.iter().zip(kernel).position(|(a, b)| a != b) {
        let end = (i + 32).min(ours.len());
        panic!(
            "{what}: first difference at byte {i} (sector {}): ours {:?}, kernel {:?}",
            i / 512,
            &ours[i..end],
            &kernel[i..end]
        );
    }
}

fn mem(sectors: u64) -> Arc<MemVolume> {
    Arc::new(MemVolume::new(SectorCount(sectors)).unwrap())
}

/// guest.sh's `w DEV SECTOR COUNT BS [dsync]`: O_DIRECT writes of BS sectors from
/// `(SECTOR / BS) * BS` (dd's seek and skip count blocks); with dsync each is a FUA write
/// followed by a flush (what the kernel's log shows O_DSYNC does).
fn w(t: &LogWrites, sector: u64, count: u64, bs: u64, dsync: bool) {
    let first = sector / bs * bs;
    for s in (first..first + count).step_by(bs as usize) {
        let buf = data(s, bs);
        if dsync {
            t.write_fua(Sector(s), &buf).unwrap();
            t.flush().unwrap();
        } else {
            t.write(Sector(s), &buf).unwrap();
        }
    }
}

struct Statuses {
    want: std::vec::IntoIter<String>,
    step: usize,
}

impl Statuses {
    fn new(phase: &str) -> Statuses {
        Statuses {
            want: statuses(phase).into_iter(),
            step: 0,
        }
    }
    fn check(&mut self, t: &LogWrites) {
        self.step += 1;
        let want = self.want.next().expect("fixture has this status");
        assert_eq!(t.status(), want, "status {}", self.step);
    }
}

#[test]
fn scripted_ops_leave_the_kernel_log_data_and_status_byte_for_byte() {
    let dev = mem(2048);
    let log = mem(8192);
    let t = LogWrites::over(dev.clone(), log.clone(), SectorCount(2048));
    let mut st = Statuses::new("ops");
    let msgs: Vec<String> = records("ops")
        .into_iter()
        .filter(|(tag, _)| tag == "dmesg")
        .map(|(_, r)| {
            r.strip_prefix("device-mapper: log-writes: ")
                .unwrap()
                .to_string()
        })
        .collect();
    st.check(&t);
    w(&t, 0, 8, 1, false);
    w(&t, 64, 16, 8, false);
    st.check(&t);
    t.message(&["mark", "one"]).unwrap();
    st.check(&t);
    t.flush().unwrap();
    st.check(&t);
    w(&t, 128, 16, 8, true);
    st.check(&t);
    t.discard(Sector(256), SectorCount(32)).unwrap();
    st.check(&t);
    w(&t, 16, 8, 2, false);
    t.message(&["MARK", "two"]).unwrap();
    let bad: [&[&str]; 3] = [&["mark", "a", "b"], &["foo", "x"], &["mark"]];
    for (argv, want) in bad.iter().zip(&msgs) {
        let err = t.message(argv).unwrap_err();
        assert_eq!(err.errno(), 22);
        assert!(err.to_string().ends_with(want.as_str()), "{err} vs {want}");
    }
    t.flush().unwrap();
    st.check(&t);
    t.message(&["mark", &"x".repeat(600)]).unwrap();
    w(&t, 300, 8, 8, false);
    w(&t, 1000, 48, 16, false);
    st.check(&t);
    drop(t);
    same_bytes(&log.to_vec(), &gunzip("ops-log.img.gz"), "log device");
    same_bytes(&dev.to_vec(), &gunzip("ops-data.img.gz"), "data device");
}

#[test]
fn a_full_log_device_disables_logging_as_the_kernel_does() {
    let dev = mem(2048);
    let log = mem(32);
    let t = LogWrites::over(dev.clone(), log.clone(), SectorCount(2048));
    let mut st = Statuses::new("full");
    st.check(&t);
    w(&t, 0, 24, 1, false);
    t.flush().unwrap();
    st.check(&t);
    w(&t, 24, 8, 8, false);
    t.flush().unwrap();
    st.check(&t);
    w(&t, 32, 8, 8, false);
    t.flush().unwrap();
    st.check(&t);
    t.message(&["mark", "after"]).unwrap();
    st.check(&t);
    assert!(!t.logging_enabled());
    drop(t);
    same_bytes(&log.to_vec(), &gunzip("full-log.img.gz"), "log device");
    same_bytes(&dev.to_vec(), &gunzip("full-data.img.gz"), "data device");
    // The kernel never wrote a super (no FUA, the mark came after logging stopped).
    assert!(LogReader::open(&*log).is_err());
}

#[test]
fn tables_parse_and_print_as_the_kernel_takes_them() {
    let recs = records("tables");
    let mut n = 0;
    let mut i = 0;
    while i < recs.len() {
        let (tag, input) = &recs[i];
        assert_eq!(tag, "input");
        let (next, rest) = &recs[i + 1];
        if next == "refused" {
            let kernel = &recs[i + 2].1;
            let words = kernel
                .split_once("log-writes: ")
                .unwrap()
                .1
                .trim_end_matches(|c: char| c != '(')
                .trim_end_matches('(')
                .trim();
            match Table::parse(input) {
                Err(e) => assert!(e.to_string().ends_with(words), "{input}: {e} vs {words}"),
                // Device lookups fail when the table is built, not parsed.
                Ok(_) => assert!(words.contains("lookup failed"), "{input}: {words}"),
            }
        } else {
            assert_eq!(next, "table");
            let ours = Table::parse(input).unwrap().to_text(Default::default());
            // The kernel prints the two devices as numbers and drops further words.
            assert_eq!(rest.split(' ').count(), 5, "{rest}");
            let devs: Vec<&str> = input.split(' ').skip(3).take(2).collect();
            assert_eq!(ours, format!("0 2048 log-writes {}\n", devs.join(" ")));
        }
        n += 1;
        while i + 1 < recs.len() && recs[i + 1].0 != "input" {
            i += 1;
        }
        i += 1;
    }
    assert_eq!(n, 5);
}

fn sha256(v: &dyn Volume) -> String {
    let mut buf = vec![0u8; v.size().bytes() as usize];
    v.read(Sector(0), &mut buf).unwrap();
    Sha256::digest(&buf)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_kernel_ext4_log_replays_to_the_device_bytes_at_every_mark() {
    let hashes: Vec<(String, String)> = records("ext4")
        .into_iter()
        .filter(|(t, _)| t == "hash")
        .map(|(_, r)| {
            let (m, h) = r.split_once(' ').unwrap();
            (m.to_string(), h.to_string())
        })
        .collect();
    assert_eq!(hashes.len(), 4);
    let log = MemVolume::from_bytes(gunzip("ext4-log.img.gz")).unwrap();
    let dev = MemVolume::new(SectorCount(65536)).unwrap();
    let mut seen = Vec::new();
    crash_states(
        &log,
        &dev,
        ReplayOptions::default(),
        &CheckAt::Mark,
        |e, view| {
            let name = String::from_utf8(e.mark.clone().unwrap()).unwrap();
            if let Some((_, h)) = hashes.iter().find(|(m, _)| *m == name) {
                assert_eq!(&sha256(view), h, "state at mark {name}");
                seen.push(name);
            }
            Ok(true)
        },
    )
    .unwrap();
    assert_eq!(seen, ["start", "mkfs", "fsync", "umount"]);
    // The log holds the kernel's flags: flushes, FUA and REQ_META writes, discards.
    let r = LogReader::open(&log).unwrap();
    let entries: Vec<_> = r.entries().collect::<Result<_, _>>().unwrap();
    for flag in [FLUSH, FUA, METADATA, DISCARD] {
        assert!(entries.iter().any(|e| e.has(flag)), "flag {flag:#x}");
    }
    assert!(entries.last().unwrap().has(MARK));
}

#[test]
fn replay_stops_at_the_first_damaged_entry_and_keeps_the_ones_before() {
    let mut bytes = gunzip("ops-log.img.gz");
    let r = LogReader::open(&MemVolume::from_bytes(bytes.clone()).unwrap())
        .unwrap()
        .super_block();
    assert_eq!(r.nr_entries, 29);
    // Entry 3 (at sector 6 of the log: mark, then writes of one sector) gets a stray byte
    // after its header.
    bytes[6 * 512 + 32] = 1;
    let log = MemVolume::from_bytes(bytes).unwrap();
    let dev = MemVolume::new(SectorCount(2048)).unwrap();
    let mut replay = Replay::new(&log, &dev, ReplayOptions::default()).unwrap();
    for _ in 0..3 {
        replay.apply_next().unwrap().unwrap();
    }
    let err = replay.apply_next().unwrap().unwrap_err().to_string();
    assert!(err.contains("entry 3: Malformed entry @6"), "{err}");
    let mut got = vec![0u8; 1024];
    dev.read(Sector(0), &mut got).unwrap();
    assert_eq!(got, data(0, 2));
}

#[test]
fn flush_epoch_states_lose_exactly_the_chosen_writes_of_the_kernel_log() {
    use dmemu::targets::log_writes::replay::epoch_states;
    let log = MemVolume::from_bytes(gunzip("ops-log.img.gz")).unwrap();
    let dev = MemVolume::new(SectorCount(2048)).unwrap();
    // The first epoch: entries 1..=10 (eight 1-sector writes at 0..8, two 8-sector writes
    // at 64 and 72), closed by the flush at entry 11. States lose one or two of them.
    let r = LogReader::open(&log).unwrap();
    let entries: Vec<_> = r.entries().collect::<Result<_, _>>().unwrap();
    assert!(entries[11].has(FLUSH));
    let mut states = Vec::new();
    epoch_states(&log, &dev, ReplayOptions::default(), 2, 100, |st, view| {
        if st.flush != 11 {
            return Ok(false);
        }
        for e in &entries[1..=10] {
            let mut got = vec![0u8; e.nr_sectors as usize * 512];
            view.read(Sector(e.sector), &mut got).unwrap();
            let want = if st.lost.contains(&e.index) {
                vec![0u8; got.len()]
            } else {
                data(e.sector, e.nr_sectors)
            };
            assert!(got == want, "state {st:?}: entry {}", e.index);
        }
        states.push(st.lost.clone());
        Ok(true)
    })
    .unwrap();
    // Every single loss, then every pair: 10 + 45, smallest first.
    assert_eq!(states.len(), 55);
    assert_eq!(states[0], vec![1]);
    assert_eq!(states[10], vec![1, 2]);
    assert!(states.iter().all(|l| !l.is_empty() && l.len() <= 2));
    // The bound on states per epoch holds.
    let dev = MemVolume::new(SectorCount(2048)).unwrap();
    let mut n = 0;
    epoch_states(&log, &dev, ReplayOptions::default(), 3, 7, |st, _| {
        if st.flush == 11 {
            n += 1;
        }
        Ok(true)
    })
    .unwrap();
    assert_eq!(n, 7);
    // After the walk the device holds the whole log's state (the kernel's data device).
    same_bytes(
        &dev.to_vec(),
        &gunzip("ops-data.img.gz"),
        "after epoch states",
    );
}
