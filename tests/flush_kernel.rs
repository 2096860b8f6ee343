//! Flushes of unstriped and error against the real Linux 6.12 kernel: the records of
//! tests/fixtures/remap/kernel-6.12-flush.txt (made by make-flush.sh, which runs
//! flush.guest.sh on shared/oracle) are replayed in order on dmemu. Neither target sets
//! `num_flush_bios`, so dm core sends it no flush and an empty flush completes at once.
//!
//! unstriped sits on a log-writes device, whose log records whether a flush reached it: after
//! the guest's writes, fsync and O_DSYNC write, the log-writes status after each mark is the
//! kernel's and the log is the kernel's byte for byte (no flush entry; the O_DSYNC write is
//! logged as FUA). error: an fsync succeeds where every write fails (EIO), as the kernel's
//! `dd` exit codes say.

mod remap_support;

use std::sync::Arc;

use dmemu::registry::RemoveMode;
use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, Volume};

use remap_support::{gunzip, records, seq_text, spec};

const FIXTURE: &str = include_str!("fixtures/remap/kernel-6.12-flush.txt");

/// The guest's virtio disks vda, vdb, vdc.
const DISKS: [(&str, &str); 3] = [
    ("/dev/vda", "254:0"),
    ("/dev/vdb", "254:16"),
    ("/dev/vdc", "254:32"),
];

/// A guest table with its disks by their numbers and its dm devices by name.
fn local(table: &str) -> String {
    DISKS
        .iter()
        .fold(table.replace("/dev/mapper/", ""), |t, (path, num)| {
            t.replace(path, num)
        })
}

/// Whether dmemu's result matches the shell's exit status (`rc 0`: success; otherwise the
/// kernel failed the request, EIO for the error target).
fn check_rc(what: &str, rc: &str, got: dmemu::Result<()>) {
    match (rc, got) {
        ("0", Ok(())) => {}
        ("0", Err(e)) => panic!("{what}: the kernel succeeded, dmemu failed: {e}"),
        (_, Ok(())) => panic!("{what}: the kernel failed (rc {rc}), dmemu succeeded"),
        (_, Err(e)) => assert_eq!(e.errno(), 5, "{what}: {e}"),
    }
}

#[test]
fn unstriped_and_error_take_no_flush_as_the_kernel() {
    let recs = records(FIXTURE);
    let disks: Vec<Arc<MemVolume>> = (0..3)
        .map(|_| Arc::new(MemVolume::new(SectorCount(2048)).unwrap()))
        .collect();
    let reg = Registry::new();
    for (d, (_, num)) in disks.iter().zip(DISKS) {
        reg.insert_volume(num, d.clone());
    }
    let mut created = Vec::new();
    let (mut marks, mut writes, mut fsyncs) = (0, 0, 0);
    let mut it = recs.iter().map(|(t, r)| (t.as_str(), r.as_str()));
    while let Some((tag, rest)) = it.next() {
        match tag {
            "create" => {
                let (name, table) = rest.split_once(' ').expect("create NAME TABLE");
                let dev = reg
                    .create(&spec(name, Table::parse(&local(table)).unwrap()))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let (t, printed) = it.next().expect("the table after a create");
                assert_eq!(t, "table", "{name}");
                // The kernel's table of a device on `lw` names it 253:0.
                assert_eq!(
                    dev.table_text(Default::default())
                        .trim_end()
                        .replace(" lw ", " 253:0 "),
                    printed.trim_end(),
                    "{name}"
                );
                created.push(name.to_string());
            }
            "status" => {
                let (mark, status) = rest.split_once(' ').expect("status MARK TEXT");
                reg.message("lw", Sector(0), &["mark", mark]).unwrap();
                assert_eq!(
                    reg.status_text("lw", dmemu::mapped_device::Slot::Live)
                        .unwrap()
                        .trim_end(),
                    status,
                    "after mark {mark}"
                );
                marks += 1;
            }
            "write" => {
                // write DEV SECTOR COUNT plain|dsync rc RC
                let w: Vec<&str> = rest.split(' ').collect();
                let [dev, sector, count, how, "rc", rc] = w[..] else {
                    panic!("write record {rest:?}")
                };
                let dev = reg.device(dev).unwrap();
                let count: usize = count.parse().unwrap();
                let buf = seq_text(1, 1, 400_000, count * 512);
                let at = Sector(sector.parse().unwrap());
                let got = match how {
                    "plain" => dev.write(at, &buf),
                    // O_DIRECT | O_DSYNC: a FUA write, then the fsync's flush.
                    "dsync" => dev.write_fua(at, &buf).and_then(|()| dev.flush()),
                    other => panic!("write mode {other}"),
                };
                check_rc(rest, rc, got);
                writes += 1;
            }
            "fsync" => {
                let (dev, rc) = rest.split_once(" rc ").expect("fsync DEV rc RC");
                check_rc(rest, rc, reg.device(dev).unwrap().flush());
                fsyncs += 1;
            }
            "remove" => reg.remove(rest, RemoveMode::default()).unwrap(),
            "queue" | "end" => {}
            other => panic!("record {other} {rest}"),
        }
    }
    assert_eq!(created, ["lw", "us", "e0", "e1"]);
    assert_eq!((marks, writes, fsyncs), (5, 9, 5), "the fixture's steps");
    let kernel = gunzip("remap/flush-unstriped-log.img.gz");
    let ours = disks[1].to_vec();
    assert_eq!(ours.len(), kernel.len());
    if let Some(at) = ours.iter().zip(&kernel).position(|(a, b)| a != b) {
        panic!("log: first difference at byte {at} (sector {})", at / 512);
    }
}
