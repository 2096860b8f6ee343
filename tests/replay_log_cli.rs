//! `dmemu replay-log` against xfstests' replay-log, the 6.12 kernel's logs and qemu's
//! blklogwrites driver.
//!
//! - replay-log-cases.json / replay-log-xfstests.json (tests/fixtures/log-writes, made by
//!   make-replay-log.sh with replay-log built from xfstests' source): for every case, dmemu
//!   prints the same stdout lines, succeeds or fails alike (its stderr holds replay-log's
//!   words), and leaves the replay image with the same sha256. The cases cover the kernel
//!   logs, damaged and truncated copies, --find/--num-entries/-v/-vv, and --fsck at every
//!   Nth entry, flush and FUA (the checker hashing the state it is given).
//! - The kernel's ext4 log replays to the data device's sha256 at each mark.
//! - qemu-io writing through blklogwrites (512 and 4096-byte log sectors): the log replays
//!   to the image qemu wrote.
//! - --check runs its command on a scratch image: a checker that writes to it changes
//!   neither the replay device nor the states later checks see; e2fsck -fn passes on every
//!   FUA state of the kernel's ext4 log.

mod cli_support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cli_support::dmemu;
use serde_json::Value;
use sha2::{Digest, Sha256};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/log-writes");

fn gunzip(name: &str) -> Vec<u8> {
    let f = std::fs::File::open(format!("{DIR}/{name}.img.gz")).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn json(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{DIR}/{name}")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn sha256_file(p: &Path) -> String {
    hex(&Sha256::digest(std::fs::read(p).unwrap()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn replay_log(args: &[String]) -> Output {
    let mut all = vec!["replay-log".to_string()];
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    dmemu(&refs, b"")
}

/// A temporary directory, in memory where /dev/shm is (replays end with fsync, which a
/// loaded disk makes slow).
fn tmp() -> tempfile::TempDir {
    match std::fs::metadata("/dev/shm") {
        Ok(m) if m.is_dir() => tempfile::tempdir_in("/dev/shm").unwrap(),
        _ => tempfile::tempdir().unwrap(),
    }
}

/// The fixture logs, decompressed once per test binary into one directory.
fn fixture_log(name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = DIR.get_or_init(tmp);
    let _held = LOCK.lock().unwrap();
    let p = dir.path().join(format!("{name}.img"));
    if !p.exists() {
        std::fs::write(&p, gunzip(name)).unwrap();
    }
    p
}

/// A case's log (damaged and truncated as it says: a copy in `dir`, else the shared
/// fixture) and replay image in `dir`.
fn setup_case(case: &Value, dir: &Path) -> (PathBuf, Option<PathBuf>) {
    let replay = case["size"].as_u64().map(|size| {
        let p = dir.join("replay.img");
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    });
    let name = case["log"].as_str().unwrap();
    if case["damage"].is_null() && case["truncate"].is_null() {
        return (fixture_log(name), replay);
    }
    let mut data = gunzip(name);
    for d in case["damage"].as_array().into_iter().flatten() {
        let off = d[0].as_u64().unwrap() as usize;
        let hexs = d[1].as_str().unwrap();
        for i in 0..hexs.len() / 2 {
            data[off + i] = u8::from_str_radix(&hexs[2 * i..2 * i + 2], 16).unwrap();
        }
    }
    if let Some(t) = case["truncate"].as_u64() {
        data.truncate(t as usize);
    }
    let log = dir.join("log.img");
    std::fs::write(&log, data).unwrap();
    (log, replay)
}

/// replay-log's error line without a trailing `: <errno>` (its errno is whatever was
/// left in errno, often stale).
fn words(stderr: &str) -> &str {
    let line = stderr.lines().next().unwrap_or("");
    match line.split_once(": ") {
        Some((head, tail)) if tail.trim().parse::<i32>().is_ok() => head,
        _ => line,
    }
}

#[test]
fn every_case_prints_fails_and_replays_as_xfstests_replay_log() {
    let cases = json("replay-log-cases.json");
    let want = json("replay-log-xfstests.json");
    assert_eq!(cases.len(), want.len());
    let e2fsck = have("e2fsck");
    let mut ran = 0;
    for (case, want) in cases.iter().zip(&want) {
        let name = case["name"].as_str().unwrap();
        assert_eq!(want["name"], case["name"]);
        let args: Vec<String> = case["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        if args.iter().any(|a| a.starts_with("e2fsck")) && !e2fsck {
            println!("{name}: skipped, e2fsck is not installed");
            continue;
        }
        let dir = tmp();
        let (log, replay) = setup_case(case, dir.path());
        let mut ours = vec!["--log".to_string(), log.display().to_string()];
        let mut prev = "";
        for a in &args {
            // {} is the replay image; inside --fsck it is dmemu's scratch image.
            if prev == "--fsck" {
                ours.push(a.clone());
            } else {
                let r = replay.as_ref().map(|p| p.display().to_string());
                ours.push(a.replace("{}", r.as_deref().unwrap_or("{}")));
            }
            prev = a;
        }
        let out = replay_log(&ours);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(
            stdout,
            want["stdout"].as_str().unwrap(),
            "{name}: stdout (stderr: {stderr})"
        );
        let rc = want["rc"].as_i64().unwrap();
        assert_eq!(
            out.status.success(),
            rc == 0,
            "{name}: exit {:?}, replay-log {rc}: {stderr}",
            out.status.code()
        );
        let w = words(want["stderr"].as_str().unwrap());
        assert!(stderr.contains(w), "{name}: {stderr:?} lacks {w:?}");
        if rc == 0 {
            assert!(stderr.is_empty(), "{name}: {stderr}");
        }
        if let Some(h) = want["sha256"].as_str() {
            assert_eq!(
                sha256_file(replay.as_ref().unwrap()),
                h,
                "{name}: replay image"
            );
        }
        ran += 1;
    }
    assert!(ran >= 40, "{ran} cases ran");
}

/// `kernel-6.12.txt`'s `@@hash MARK SHA` lines.
fn kernel_hashes() -> Vec<(String, String)> {
    std::fs::read_to_string(format!("{DIR}/kernel-6.12.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("@@hash "))
        .map(|r| {
            let (m, h) = r.split_once(' ').unwrap();
            (m.to_string(), h.to_string())
        })
        .collect()
}

#[test]
fn the_kernel_ext4_log_replays_to_the_kernel_device_at_each_mark() {
    let hashes = kernel_hashes();
    assert_eq!(hashes.len(), 4);
    let dir = tmp();
    let log = fixture_log("ext4-log");
    for (mark, hash) in &hashes {
        let rep = dir.path().join(format!("{mark}.img"));
        std::fs::File::create(&rep)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let out = replay_log(&[
            "--log".into(),
            log.display().to_string(),
            "--replay".into(),
            rep.display().to_string(),
            "--end-mark".into(),
            mark.clone(),
        ]);
        assert!(out.status.success(), "{mark}: {out:?}");
        assert_eq!(&sha256_file(&rep), hash, "state at mark {mark}");
    }
}

/// qemu-io COMMANDS on DATA through blklogwrites with log LOG.
fn qemu_io(data: &Path, log: &Path, sector_size: u32, cmds: &[&str]) {
    let spec = format!(
        "json:{{\"driver\":\"blklogwrites\",\"file\":{{\"driver\":\"file\",\"filename\":\"{}\"}},\
         \"log\":{{\"driver\":\"file\",\"filename\":\"{}\"}},\"log-sector-size\":{sector_size}}}",
        data.display(),
        log.display()
    );
    let mut c = Command::new("qemu-io");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(&spec).output().unwrap();
    assert!(out.status.success(), "qemu-io: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("invalid") && !text.contains("error"),
        "{text}"
    );
}

#[test]
fn qemu_blklogwrites_logs_replay_to_the_bytes_qemu_wrote() {
    if !have("qemu-io") {
        println!("skipped: qemu-io is not installed");
        return;
    }
    for ss in [512u32, 4096] {
        let dir = tmp();
        let (data, log, rep) = (
            dir.path().join("data.img"),
            dir.path().join("log.img"),
            dir.path().join("replay.img"),
        );
        std::fs::File::create(&data)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        std::fs::File::create(&log)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        std::fs::File::create(&rep)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        // Some of the data first, so that discards and zero writes change something.
        std::fs::write(&data, vec![0x5a; 1 << 20]).unwrap();
        std::fs::write(&rep, vec![0x5a; 1 << 20]).unwrap();
        qemu_io(
            &data,
            &log,
            ss,
            &[
                "write -P 0xab 0 64k",
                "flush",
                "write -f -P 0xcd 4096 8k",
                "discard 16k 4k",
                "write -z 128k 8k",
                "write -P 0x11 300k 12k",
                "flush",
                "write -P 0x22 1020k 4k",
            ],
        );
        let info = replay_log(&["--log".into(), log.display().to_string()]);
        let text = String::from_utf8(info.stdout).unwrap();
        assert!(
            text.starts_with(&format!("Log version=1, sectorsize={ss}, entries=")),
            "{text}"
        );
        let out = replay_log(&[
            "--log".into(),
            log.display().to_string(),
            "--replay".into(),
            rep.display().to_string(),
            "-v".into(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let v = String::from_utf8(out.stdout).unwrap();
        assert!(v.contains("flags 0x4(DISCARD)"), "{v}");
        assert_eq!(
            std::fs::read(&rep).unwrap(),
            std::fs::read(&data).unwrap(),
            "sector size {ss}: replayed image vs qemu's"
        );
        // Up to the first flush: only the first write.
        let find = replay_log(&[
            "--log".into(),
            log.display().to_string(),
            "--find".into(),
            "--next-flush".into(),
        ]);
        let per = 65536 / u64::from(ss);
        assert_eq!(
            String::from_utf8(find.stdout).unwrap(),
            format!("1@{}\n", 1 + (1 + per) + 1),
            "sector size {ss}"
        );
    }
}

fn case_output(name: &str) -> Value {
    json("replay-log-xfstests.json")
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

#[test]
fn a_checker_that_writes_changes_neither_the_replay_device_nor_later_states() {
    let want = case_output("check-fua-ext4");
    let dir = tmp();
    let scratch = dir.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    let log = fixture_log("ext4-log");
    let rep = dir.path().join("replay.img");
    std::fs::File::create(&rep)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    // Hash the state, then scribble on it at every other check point (the next check
    // must copy the whole image again; the ones after a clean check only what changed).
    let cmd = "sh -c 'sha256sum < \"$0\" | cut -c1-64; \
               if [ $((DMEMU_CHECK_ENTRY % 2)) = 0 ]; then \
               head -c 4096 /dev/urandom | dd of=\"$0\" bs=512 seek=$((DMEMU_CHECK_ENTRY * 8)) \
               conv=notrunc status=none; fi'";
    let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(["replay-log", "--log"])
        .arg(&log)
        .arg("--replay")
        .arg(&rep)
        .args(["--fsck", cmd, "--check", "fua"])
        .env("TMPDIR", &scratch)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        want["stdout"].as_str().unwrap()
    );
    assert_eq!(sha256_file(&rep), want["sha256"].as_str().unwrap());
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch image left behind"
    );
}

#[test]
fn e2fsck_passes_on_every_fua_state_of_the_kernel_ext4_log() {
    if !have("e2fsck") {
        println!("skipped: e2fsck is not installed");
        return;
    }
    let dir = tmp();
    let log = fixture_log("ext4-log");
    let rep = dir.path().join("replay.img");
    std::fs::File::create(&rep)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    // The scratch image is appended to CMD; the entry checked is in DMEMU_CHECK_ENTRY.
    let cmd = "e2fsck -fn";
    let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(["replay-log", "--log"])
        .arg(&log)
        .arg("--replay")
        .arg(&rep)
        .args(["--fsck", cmd, "--check", "fua"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // e2fsck ran once per FUA entry of the log (it prints one summary line per run).
    let fua = case_output("check-fua-ext4")["stdout"]
        .as_str()
        .unwrap()
        .lines()
        .count();
    assert!(fua > 5, "{fua}");
    assert_eq!(
        stdout.matches(" non-contiguous), ").count(),
        fua,
        "one e2fsck summary per FUA entry: {stdout}"
    );
    // A checker failing stops the replay there with its status.
    let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(["replay-log", "--log"])
        .arg(&log)
        .arg("--replay")
        .arg(&rep)
        .args(["--fsck", "exit 7; :", "--check", "fua"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let err = String::from_utf8_lossy(&out.stderr);
    let first_fua = case_output("find-fua")["stdout"]
        .as_str()
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&format!("Fsck errored out on entry {first_fua}")),
        "{err}"
    );
}

#[test]
fn damaged_logs_fail_naming_the_entry_and_the_entries_before_it_replay() {
    // (case, the entry the error names, what it says); replay-log left the same image
    // (the every-case test compares the sha256), so the entries before were replayed.
    let expect = [
        ("damaged-padding", 3, "Malformed entry @6"),
        ("damaged-zero-entry", 9, "Malformed entry @18"),
        ("super-claims-more", 29, "Malformed entry @134"),
        ("super-claims-more-past-end", 29, "past the log end"),
        ("truncated-data", 24, "Error reading data"),
        ("truncated-entry", 24, "Error reading entry"),
        ("bad-magic", 0, "Magic doesn't match"),
    ];
    let cases = json("replay-log-cases.json");
    for (name, entry, words) in expect {
        let case = cases.iter().find(|c| c["name"] == name).unwrap();
        let dir = tmp();
        let (log, replay) = setup_case(case, dir.path());
        let mut args = vec!["--log".to_string(), log.display().to_string()];
        if let Some(r) = &replay {
            args.extend(["--replay".to_string(), r.display().to_string()]);
        }
        let out = replay_log(&args);
        assert_eq!(out.status.code(), Some(22), "{name}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.contains(words), "{name}: {err}");
        if name != "bad-magic" {
            assert!(err.contains(&format!("entry {entry}: ")), "{name}: {err}");
        }
        if let Some(r) = &replay {
            // Entry `entry - 1` replayed: its data is on the image.
            let log_bytes = std::fs::read(&log).unwrap();
            let img = std::fs::read(r).unwrap();
            let mut at = 512usize;
            let mut last_write = None;
            for _ in 0..entry {
                let le = |i: usize| u64::from_le_bytes(log_bytes[i..i + 8].try_into().unwrap());
                let (sector, nr, flags) = (le(at), le(at + 8), le(at + 16));
                let data = if flags & 4 != 0 { 0 } else { nr as usize * 512 };
                if data > 0 {
                    last_write = Some((sector as usize * 512, at + 512, data));
                }
                at += 512 + data;
            }
            let (dst, src, len) = last_write.unwrap();
            assert_eq!(&img[dst..dst + len], &log_bytes[src..src + len], "{name}");
        }
    }
}

#[test]
fn the_docs_worked_example_finds_the_file_an_unsynced_write_loses() {
    if !have("e2fsck") || !have("debugfs") {
        println!("skipped: e2fsck or debugfs is not installed");
        return;
    }
    let dir = tmp();
    let log = fixture_log("ext4-log");
    let rep = dir.path().join("replay.img");
    std::fs::File::create(&rep)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ext4-crash-check.sh");
    let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(["replay-log", "--log"])
        .arg(&log)
        .arg("--replay")
        .arg(&rep)
        .args(["--fsck", &format!("sh {script}"), "--check", "fua"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // What docs/crash-testing.md shows.
    let head = "entry 100: /synced missing\nentry 100: /unsynced missing\n\
                entry 111: /synced missing\nentry 111: /unsynced missing\n\
                entry 112: /synced 1048576\nentry 112: /unsynced missing\n\
                entry 130: /synced 1048576\nentry 130: /unsynced missing\n\
                entry 131: /synced 1048576\nentry 131: /unsynced 16384\n";
    assert!(text.starts_with(head), "{text}");
    assert!(!text.contains("finds errors"), "{text}");
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/crash-testing.md"
    ))
    .unwrap();
    assert!(
        docs.contains(head),
        "docs/crash-testing.md shows other lines"
    );
    // Every later state has both files whole.
    for line in text.lines().skip(10) {
        assert!(
            line.ends_with(" 1048576") || line.ends_with(" 16384"),
            "{line}"
        );
    }
}
