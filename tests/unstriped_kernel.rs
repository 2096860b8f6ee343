//! unstriped against the real Linux 6.12 kernel: every case of
//! tests/fixtures/remap/kernel-6.12-unstriped.txt (made by make-unstriped.sh, which runs
//! unstriped.guest.sh on shared/oracle) replays on dmemu over the same disk bytes: the table and
//! status dmsetup printed, the device size, the sha256 of the device read 4 KiB at a time up to
//! the first failing block and how many blocks read, the disk's sha256 after a pattern written
//! 4 KiB at a time through the device (up to the first failing block), and discards refused with
//! EOPNOTSUPP. Tables the kernel refused are refused with the kernel's `ti->error` words.

use std::collections::BTreeMap;
use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};
use sha2::{Digest, Sha256};

const FIXTURE: &str = include_str!("fixtures/remap/kernel-6.12-unstriped.txt");
const DISK: usize = 8 << 20;

/// The first `len` bytes of what `seq FIRST STEP LAST` prints.
fn seq_text(first: i64, step: i64, last: i64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = first;
    while out.len() < len && (step > 0 && n <= last || step < 0 && n >= last) {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += step;
    }
    out.truncate(len);
    out
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One `### name` block of the fixture: key → the lines it holds, in order.
fn cases() -> Vec<(String, BTreeMap<String, Vec<String>>)> {
    let mut out: Vec<(String, BTreeMap<String, Vec<String>>)> = Vec::new();
    let mut last_key = String::new();
    for line in FIXTURE.lines() {
        if let Some(name) = line.strip_prefix("### ") {
            out.push((name.to_string(), BTreeMap::new()));
            continue;
        }
        let (_, case) = out.last_mut().expect("a case header first");
        // A table or status of two lines prints its second line bare: it continues the key.
        let (key, value) = match line.split_once(' ') {
            Some((k, v))
                if k.starts_with(|c: char| c.is_ascii_lowercase())
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
            {
                (k, v)
            }
            _ => (last_key.as_str(), line),
        };
        let key = key.to_string();
        case.entry(key.clone()).or_default().push(value.to_string());
        last_key = key;
    }
    out
}

fn one<'a>(case: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    &case.get(key).unwrap_or_else(|| panic!("{key} in case"))[0]
}

#[test]
fn unstriped_reads_writes_and_prints_as_the_kernel() {
    let mut accepted = 0;
    for (name, case) in cases() {
        if case.contains_key("create-rc") {
            continue;
        }
        let disk = Arc::new(MemVolume::from_bytes(seq_text(1, 1, 2_000_000, DISK)).unwrap());
        let reg = Registry::new();
        reg.insert_volume("254:0", disk.clone());
        let input = case["table-in"].join("\n").replace("/dev/vda", "254:0");
        let dev = reg
            .create(&DeviceSpec {
                name: name.clone(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadWrite,
                table: Table::parse(&input).unwrap_or_else(|e| panic!("{name}: {e}")),
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            dev.table_text(Default::default()).trim_end(),
            case["table"].join("\n"),
            "{name}"
        );
        assert_eq!(
            dev.status_text().trim_end_matches('\n'),
            case["status"].join("\n"),
            "{name}"
        );
        let size = dev.size().0 * 512;
        assert_eq!(size.to_string(), one(&case, "size"), "{name}");

        // dd bs=4096: blocks in order until the first failure; the sha256 of what it read.
        let mut h = Sha256::new();
        let mut blocks = 0u64;
        let mut buf = vec![0u8; 4096];
        while blocks * 4096 < size {
            if dev.read(Sector(blocks * 8), &mut buf).is_err() {
                break;
            }
            h.update(&buf);
            blocks += 1;
        }
        assert_eq!(hex(h.finalize()), one(&case, "read-sha256"), "{name}");
        assert_eq!(blocks.to_string(), one(&case, "read-blocks"), "{name}");

        let pattern = seq_text(3_000_000, -1, 1, usize::try_from(size).unwrap());
        let mut rc = 0;
        for (i, block) in pattern.chunks(4096).enumerate() {
            if dev.write(Sector(i as u64 * 8), block).is_err() {
                rc = 1;
                break;
            }
        }
        dev.flush().unwrap();
        assert_eq!(rc.to_string(), one(&case, "write-rc"), "{name}");
        let mut bytes = vec![0u8; DISK];
        disk.read(Sector(0), &mut bytes).unwrap();
        assert_eq!(
            hex(Sha256::digest(&bytes)),
            one(&case, "disk-sha256-after-write"),
            "{name}"
        );

        let discard = one(&case, "discard-rc");
        if discard.contains("Operation not supported") {
            let err = dev.discard(Sector(0), SectorCount(8)).unwrap_err();
            assert_eq!(err.errno(), 95, "{name}: {err}");
        }
        accepted += 1;
    }
    assert_eq!(accepted, 6, "the fixture's accepted cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let mut refused = 0;
    for (name, case) in cases() {
        if !case.contains_key("create-rc") {
            continue;
        }
        let reg = Registry::new();
        reg.insert_volume(
            "254:0",
            Arc::new(MemVolume::new(SectorCount((DISK / 512) as u64)).unwrap()),
        );
        let input = case["table-in"].join("\n").replace("/dev/vda", "254:0");
        let err = Table::parse(&input).and_then(|table| {
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
        // "device-mapper: table: 254:0: unstriped: WORDS" (dm_table_add_target), or the
        // device-area check's own line.
        let kernel = one(&case, "kernel-err");
        let words = match kernel.find("too small for target") {
            Some(at) => &kernel[at..],
            None => kernel
                .split_once("unstriped: ")
                .map_or(kernel, |(_, w)| w.split(" (-").next().unwrap()),
        };
        let ours = err.to_string();
        assert!(
            ours.contains(words.trim()),
            "{name}: ours {ours:?}, kernel {kernel:?}"
        );
        refused += 1;
    }
    assert_eq!(refused, 6, "the fixture's refused cases");
}
