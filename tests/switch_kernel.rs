//! switch against the real Linux 6.12 kernel: every case of
//! tests/fixtures/remap/kernel-6.12-switch.txt (made by make-switch.sh, which runs
//! switch.guest.sh on shared/oracle over three loop devices) replays on dmemu over the same
//! path bytes: the table and status dmsetup printed, the device size; then, as loaded and
//! after each `set_region_mappings` message in turn (accepted, or refused with the kernel's
//! DMWARN words and the arguments before the bad one staying applied), the sha256 of the
//! device read 4 KiB at a time and of each path after a pattern written through the device;
//! discards, sent whole down the path of their first sector, with each path's sha256 after.
//! Tables the kernel refused are refused with the kernel's `ti->error` words.

mod remap_support;

use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};
use sha2::{Digest, Sha256};

use remap_support::{cases, get, gunzip, hex, input, one, records, seq_text};

const FIXTURE: &str = include_str!("fixtures/remap/kernel-6.12-switch.txt");
const PATH_BYTES: usize = 2 << 20;

/// What the guest's `fill` puts on path `i`.
fn path_pattern(i: i64) -> Vec<u8> {
    seq_text(i * 1_000_000 + 1, 1, 3_000_000, PATH_BYTES)
}

fn path_shas(paths: &[Arc<MemVolume>]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            let mut bytes = vec![0u8; PATH_BYTES];
            p.read(Sector(0), &mut bytes).unwrap();
            hex(Sha256::digest(&bytes))
        })
        .collect()
}

fn fill(paths: &[Arc<MemVolume>]) {
    for (i, p) in paths.iter().enumerate() {
        p.write(Sector(0), &path_pattern(i as i64)).unwrap();
    }
}

fn check_paths(step: &[(String, String)], paths: &[Arc<MemVolume>], what: &str) {
    for (i, sha) in path_shas(paths).iter().enumerate() {
        assert_eq!(
            sha,
            one(step, &format!("path{i}-sha256"), what),
            "{what}: path {i}"
        );
    }
}

#[test]
fn switch_maps_messages_and_prints_as_the_kernel() {
    let mut accepted = 0;
    let mut messages = (0, 0);
    let mut discards = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_some() {
            continue;
        }
        let paths: Vec<Arc<MemVolume>> = (0..3)
            .map(|i| Arc::new(MemVolume::from_bytes(path_pattern(i)).unwrap()))
            .collect();
        let reg = Registry::new();
        for (i, p) in paths.iter().enumerate() {
            reg.insert_volume(&format!("7:{i}"), p.clone());
        }
        let dev = reg
            .create(&DeviceSpec {
                name: name.clone(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadWrite,
                table: Table::parse(&input(&lines, &name))
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            dev.table_text(Default::default()).trim_end(),
            one(&lines, "table", &name),
            "{name}"
        );
        assert_eq!(
            dev.status_text().trim_end_matches('\n'),
            one(&lines, "status", &name),
            "{name}"
        );
        let size = dev.size().0 * 512;
        assert_eq!(size.to_string(), one(&lines, "size", &name), "{name}");

        // The steps: each `step` line and the lines up to the next.
        let starts: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| k == "step")
            .map(|(i, _)| i)
            .collect();
        assert!(!starts.is_empty(), "{name}: steps");
        for (n, &at) in starts.iter().enumerate() {
            let end = starts.get(n + 1).copied().unwrap_or(lines.len());
            let step = &lines[at + 1..end];
            let words: Vec<&str> = lines[at].1.split(' ').collect();
            let what = format!("{name}: step {}", lines[at].1);
            match words[0] {
                "discard" => {
                    let off: u64 = words[1].parse().unwrap();
                    let len: u64 = words[2].parse().unwrap();
                    assert_eq!(one(step, "discard-rc", &what), "0", "{what}");
                    dev.discard(Sector(off / 512), SectorCount(len / 512))
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    check_paths(step, &paths, &what);
                    fill(&paths);
                    discards += 1;
                    continue;
                }
                "msg" => {
                    let sector: u64 = words[1].parse().unwrap();
                    let r = dev.message(Sector(sector), &words[2..]);
                    match one(step, "message-rc", &what) {
                        "0" => {
                            r.unwrap_or_else(|e| panic!("{what}: {e}"));
                            messages.0 += 1;
                        }
                        _ => {
                            let err = r.expect_err(&what);
                            assert_eq!(err.errno(), 22, "{what}: {err}");
                            let kernel = one(step, "kernel-warn", &what);
                            let words = kernel
                                .strip_prefix("device-mapper: switch: ")
                                .unwrap_or(kernel);
                            assert!(
                                err.to_string().contains(words),
                                "{what}: ours {err}, kernel {kernel:?}"
                            );
                            messages.1 += 1;
                        }
                    }
                }
                "loaded" => {}
                other => panic!("{what}: unknown step {other}"),
            }
            // The device read 4 KiB at a time, then the pattern written through it.
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 4096];
            for b in 0..size / 4096 {
                dev.read(Sector(b * 8), &mut buf)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                h.update(&buf);
            }
            assert_eq!(hex(h.finalize()), one(step, "read-sha256", &what), "{what}");
            let pattern = seq_text(9_000_000, -1, 1, usize::try_from(size).unwrap());
            for (i, block) in pattern.chunks(4096).enumerate() {
                dev.write(Sector(i as u64 * 8), block)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            dev.flush().unwrap();
            assert_eq!(one(step, "write-rc", &what), "0", "{what}");
            check_paths(step, &paths, &what);
            fill(&paths);
        }
        accepted += 1;
    }
    assert_eq!(accepted, 4, "the fixture's accepted cases");
    assert!(
        messages.0 >= 10 && messages.1 >= 20,
        "messages {messages:?}"
    );
    assert!(discards >= 5, "discards {discards}");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let mut refused = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_none() {
            continue;
        }
        let reg = Registry::new();
        for i in 0..3 {
            reg.insert_volume(
                &format!("7:{i}"),
                Arc::new(MemVolume::new(SectorCount((PATH_BYTES / 512) as u64)).unwrap()),
            );
        }
        let err = Table::parse(&input(&lines, &name)).and_then(|table| {
            reg.create(&DeviceSpec {
                name: name.clone(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadWrite,
                table,
            })
        });
        let err = err.expect_err(&name);
        assert_eq!(err.errno(), 22, "{name}: {err}");
        // "device-mapper: table: 254:0: switch: WORDS (-22)" (dm_table_add_target), or the
        // device-area check's own line.
        let kernel = one(&lines, "kernel-err", &name);
        let words = match kernel.find("too small for target") {
            Some(at) => &kernel[at..],
            None => kernel
                .split_once("switch: ")
                .map_or(kernel, |(_, w)| w.split(" (-").next().unwrap()),
        };
        let ours = err.to_string();
        assert!(
            ours.contains(words.trim()),
            "{name}: ours {ours:?}, kernel {kernel:?}"
        );
        refused += 1;
    }
    assert!(refused >= 12, "the fixture's refused cases: {refused}");
}

/// switch-flush.guest.sh's workload over two log-writes paths: the paths' logs must be the
/// kernel's byte for byte. dm-switch sets no `num_flush_bios`, so a flush of the switch
/// reaches no path (their writes stay held until teardown), while a FUA write goes down as
/// FUA (the device inherits its paths' write cache, `write back` / `fua 1`).
#[test]
fn flushes_reach_no_path_and_fua_writes_pass_down_as_the_kernel_does() {
    use dmemu::targets::{LogWrites, Switch, SwitchArgs, Target};
    use dmemu::volume::SharedVolume;

    let recs = records(include_str!("fixtures/remap/kernel-6.12-switch-flush.txt"));
    let rec = |tag: &str| -> Vec<&str> {
        recs.iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    assert_eq!(rec("write_cache"), ["write back"]);
    assert_eq!(rec("fua"), ["1"]);
    let mut statuses = rec("status").into_iter();
    let table = rec("table")[0]
        .replace("253:0", "lw0")
        .replace("253:1", "lw1");
    let Ok(t) = Table::parse(&table) else {
        panic!("{table}")
    };
    let dmemu::targets::TargetSpec::Switch(args) = &t.lines[0].spec else {
        panic!("{table}: not a switch")
    };
    let args: SwitchArgs = args.clone();

    let logs: Vec<Arc<MemVolume>> = (0..2)
        .map(|_| Arc::new(MemVolume::new(SectorCount(2048)).unwrap()))
        .collect();
    let paths: Vec<Arc<LogWrites>> = logs
        .iter()
        .map(|log| {
            let data: SharedVolume = Arc::new(MemVolume::new(SectorCount(2048)).unwrap());
            Arc::new(LogWrites::over(data, log.clone(), SectorCount(2048)))
        })
        .collect();
    let switch = Switch::over(
        paths.iter().map(|p| p.clone() as SharedVolume).collect(),
        &args,
        SectorCount(2048),
    )
    .unwrap();
    // Through a table, as dm core sends it: the table's flush asks the target whether it
    // takes flushes at all.
    let sw = dmemu::mapped_device::LoadedTable::from_segments(
        "sw",
        t.clone(),
        TableMode::ReadWrite,
        vec![dmemu::mapped_device::Segment {
            start: Sector(0),
            len: SectorCount(2048),
            target: Arc::new(switch),
        }],
    );
    let both = |mark: &str, statuses: &mut std::vec::IntoIter<&str>| {
        for (i, p) in paths.iter().enumerate() {
            p.message(&["mark", mark]).unwrap();
            let want = statuses.next().expect("a status in the fixture");
            assert_eq!(
                format!("lw{i} 0 2048 log-writes {}", p.status()),
                want,
                "after {mark}"
            );
        }
    };
    // The guest's `w SECTOR COUNT`: the first COUNT sectors of `seq 1 400000`.
    let w = |sector: u64, count: usize, fua: bool| {
        let buf = seq_text(1, 1, 400_000, count * 512);
        if fua {
            sw.write_fua(Sector(sector), &buf).unwrap();
        } else {
            sw.write(Sector(sector), &buf).unwrap();
        }
    };
    both("start", &mut statuses);
    w(0, 8, false);
    w(8, 8, false);
    w(64, 16, false);
    both("written", &mut statuses);
    sw.flush().unwrap();
    both("fsynced", &mut statuses);
    // O_DSYNC: a FUA write, then the fsync's flush.
    w(128, 8, true);
    sw.flush().unwrap();
    both("dsynced", &mut statuses);
    w(200, 8, false);
    both("last", &mut statuses);
    drop(sw);
    drop(paths);
    for (i, log) in logs.iter().enumerate() {
        let kernel = gunzip(&format!("remap/switch-flush-log{i}.img.gz"));
        let ours = log.to_vec();
        assert_eq!(ours.len(), kernel.len());
        if let Some(at) = ours.iter().zip(&kernel).position(|(a, b)| a != b) {
            panic!(
                "log {i}: first difference at byte {at} (sector {})",
                at / 512
            );
        }
    }
}
