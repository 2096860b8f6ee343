//! Table swaps under concurrent I/O: every request sees one table, nothing acknowledged is
//! lost; and the stack-depth bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dmemu::registry::{RemoveMode, MAX_STACK_DEPTH};
use dmemu::table::DeviceSpec;
use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};

const SECTORS: u64 = 2048;
const SWAPS: usize = 300;

fn filled(byte: u8) -> Arc<MemVolume> {
    Arc::new(MemVolume::from_bytes(vec![byte; usize::try_from(SECTORS).unwrap() * 512]).unwrap())
}

fn create(r: &Registry, name: &str, table: &str) {
    r.create(&DeviceSpec {
        name: name.into(),
        uuid: String::new(),
        minor: None,
        mode: TableMode::ReadWrite,
        table: Table::parse(table).unwrap(),
    })
    .unwrap();
}

#[test]
fn reads_during_hundreds_of_swaps_each_see_one_table() {
    let r = Registry::new();
    r.insert_volume("a", filled(0xaa));
    r.insert_volume("b", filled(0xbb));
    create(&r, "swap", &format!("0 {SECTORS} linear a 0"));
    let dev = r.device("swap").unwrap();
    let stop = AtomicBool::new(false);
    let seen = [AtomicU64::new(0), AtomicU64::new(0)];
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (dev, stop, seen) = (&dev, &stop, &seen);
            s.spawn(move || {
                // 64 KiB reads, each crossing the line boundary of the two-line table.
                let mut buf = vec![0u8; 65536];
                let mut at = t * 8;
                while !stop.load(Ordering::Relaxed) {
                    at = (at + 97) % (SECTORS - 128);
                    dev.read(Sector(at), &mut buf).unwrap();
                    let first = buf[0];
                    assert!(
                        buf.iter().all(|&b| b == first),
                        "a read saw two tables at sector {at}"
                    );
                    seen[usize::from(first == 0xbb)].fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for i in 0..SWAPS {
            let v = if i % 2 == 0 { "b" } else { "a" };
            let half = SECTORS / 2;
            let text = format!("0 {half} linear {v} 0\n{half} {half} linear {v} {half}");
            r.load("swap", Table::parse(&text).unwrap(), TableMode::ReadWrite)
                .unwrap();
            r.resume("swap").unwrap();
            // Let the readers see this table before the next swap (bounded wait).
            let total = || seen[0].load(Ordering::Relaxed) + seen[1].load(Ordering::Relaxed);
            let before = total();
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while total() < before + 2 && std::time::Instant::now() < give_up {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(seen[0].load(Ordering::Relaxed) > 0 && seen[1].load(Ordering::Relaxed) > 0);
}

#[test]
fn writes_during_hundreds_of_swaps_are_never_lost() {
    let r = Registry::new();
    let m = filled(0);
    r.insert_volume("m", m.clone());
    create(&r, "w", &format!("0 {SECTORS} linear m 0"));
    let dev = r.device("w").unwrap();
    let stop = AtomicBool::new(false);
    let last: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (dev, stop, last) = (&dev, &stop, &last);
            s.spawn(move || {
                // Each writer owns 8 sectors and writes an increasing counter there.
                let sector = Sector(t * 512);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let buf: Vec<u8> = n.to_le_bytes().repeat(512);
                    dev.write(sector, &buf).unwrap();
                    last[usize::try_from(t).unwrap()].store(n, Ordering::Release);
                    let mut back = vec![0u8; 4096];
                    dev.read(sector, &mut back).unwrap();
                    assert_eq!(back, buf, "an acknowledged write was lost");
                }
            });
        }
        for i in 0..SWAPS {
            // Same mapping, different tables: one line or two.
            let text = if i % 2 == 0 {
                "0 1024 linear m 0\n1024 1024 linear m 1024".to_string()
            } else {
                format!("0 {SECTORS} linear m 0")
            };
            r.load("w", Table::parse(&text).unwrap(), TableMode::ReadWrite)
                .unwrap();
            r.resume("w").unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    for t in 0..4u64 {
        let mut back = vec![0u8; 4096];
        m.read(Sector(t * 512), &mut back).unwrap();
        let n = last[usize::try_from(t).unwrap()].load(Ordering::Acquire);
        assert_eq!(back, n.to_le_bytes().repeat(512));
    }
}

#[test]
fn stacks_deeper_than_the_bound_are_refused_and_the_deepest_allowed_works_on_a_small_stack() {
    let r = Registry::new();
    r.insert_volume("base", filled(0x5a));
    create(&r, "d1", &format!("0 {SECTORS} linear base 0"));
    for i in 2..=MAX_STACK_DEPTH {
        create(
            &r,
            &format!("d{i}"),
            &format!("0 {SECTORS} linear d{} 0", i - 1),
        );
    }
    let over = DeviceSpec {
        name: "over".into(),
        uuid: String::new(),
        minor: None,
        mode: TableMode::ReadWrite,
        table: Table::parse(&format!("0 {SECTORS} linear d{MAX_STACK_DEPTH} 0")).unwrap(),
    };
    let e = r.create(&over).unwrap_err();
    assert_eq!(e.errno(), 22, "{e}");
    assert!(r.device("over").is_err());
    // A reload that would deepen the stack under its users is refused too.
    create(&r, "extra", &format!("0 {SECTORS} linear base 0"));
    let e = r
        .load(
            "d1",
            Table::parse(&format!("0 {SECTORS} linear extra 0")).unwrap(),
            TableMode::ReadWrite,
        )
        .unwrap_err();
    assert_eq!(e.errno(), 22, "{e}");
    // Every path through the deepest allowed stack runs on a 2 MiB thread stack.
    let top = r.device(&format!("d{MAX_STACK_DEPTH}")).unwrap();
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let mut buf = vec![0u8; 4096];
            top.read(Sector(0), &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0x5a));
            top.write(Sector(8), &buf).unwrap();
            top.flush().unwrap();
            top.discard(Sector(16), SectorCount(8)).unwrap();
            let _ = top.status_text();
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(r.remove_all(RemoveMode::Normal), 0);
    assert!(r.list().is_empty());
}

#[test]
fn a_table_may_not_use_the_device_it_is_loaded_into() {
    let r = Registry::new();
    r.insert_volume("m", filled(0));
    create(&r, "x", &format!("0 {SECTORS} linear m 0"));
    create(&r, "y", &format!("0 {SECTORS} linear x 0"));
    for text in ["0 2048 linear x 0", "0 2048 linear y 0"] {
        let e = r
            .load("x", Table::parse(text).unwrap(), TableMode::ReadWrite)
            .unwrap_err();
        assert_eq!(e.errno(), 22, "{e}");
    }
}

/// dm-thin's `pool_presuspend` suspends every active thin device and `pool_resume`
/// resumes them: thin I/O issued while the pool is suspended waits, and a pool reload
/// (the same pool bound to the new line) lets it through with the data it wrote intact.
#[test]
fn thin_io_waits_while_its_pool_is_suspended_and_survives_a_pool_reload() {
    use dmemu::mapped_device::SuspendFlags;
    use std::time::Duration;
    let r = Registry::new();
    r.insert_volume("meta", Arc::new(MemVolume::new(SectorCount(8192)).unwrap()));
    r.insert_volume(
        "data",
        Arc::new(MemVolume::new(SectorCount(65536)).unwrap()),
    );
    create(&r, "pool", "0 32768 thin-pool meta data 128 0");
    r.message("pool", Sector(0), &["create_thin", "0"]).unwrap();
    create(&r, "t", "0 65536 thin pool 0");
    let t = r.device("t").unwrap();
    t.write(Sector(0), &[1u8; 4096]).unwrap();
    r.suspend("pool", SuspendFlags::default()).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| t.write(Sector(40000), &[2u8; 4096]));
        let rd = s.spawn(|| {
            let mut b = [0u8; 4096];
            t.read(Sector(0), &mut b).map(|()| b)
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!w.is_finished(), "a thin write waits for the pool's resume");
        assert!(!rd.is_finished(), "a thin read waits for the pool's resume");
        // Reload with a longer pool (growth): the thin device keeps its pool.
        r.load(
            "pool",
            Table::parse("0 65536 thin-pool meta data 128 0").unwrap(),
            TableMode::ReadWrite,
        )
        .unwrap();
        r.resume("pool").unwrap();
        w.join().unwrap().unwrap();
        assert_eq!(rd.join().unwrap().unwrap(), [1u8; 4096]);
    });
    let mut b = [0u8; 4096];
    t.read(Sector(40000), &mut b).unwrap();
    assert_eq!(b, [2u8; 4096]);
    let status = r
        .status_text("pool", dmemu::mapped_device::Slot::Live)
        .unwrap();
    assert!(
        status.contains("/512 "),
        "data space map grown to 512 blocks: {status}"
    );
    // A reload naming other devices is not the same pool (dm-thin's words and errno).
    r.insert_volume(
        "meta2",
        Arc::new(MemVolume::new(SectorCount(8192)).unwrap()),
    );
    let e = r
        .load(
            "pool",
            Table::parse("0 65536 thin-pool meta2 data 128 0").unwrap(),
            TableMode::ReadWrite,
        )
        .unwrap_err();
    assert_eq!(e.errno(), 22, "{e}");
    assert!(
        e.to_string()
            .contains("different pool cannot replace a pool"),
        "{e}"
    );
    let e = r
        .load(
            "pool",
            Table::parse("0 65536 thin-pool meta data 128 0 1 ignore_discard").unwrap(),
            TableMode::ReadWrite,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Discard support cannot be disabled once enabled"),
        "{e}"
    );
}

/// docker's devicemapper driver grows a pool on loopback files: truncate the data file
/// larger, refresh the loop device, reload the pool with the new length. Here a table load
/// reads an image's size again, so the same steps work on plain files.
#[test]
fn a_pool_on_files_grows_after_its_data_file_is_extended_and_the_pool_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta");
    let data = dir.path().join("data");
    std::fs::File::create(&meta)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    std::fs::File::create(&data)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let r = Registry::new();
    let pool = |sectors: u64| {
        format!(
            "0 {sectors} thin-pool {} {} 128 0",
            meta.display(),
            data.display()
        )
    };
    create(&r, "pool", &pool(16384));
    r.message("pool", Sector(0), &["create_thin", "0"]).unwrap();
    create(&r, "t", "0 65536 thin pool 0");
    let t = r.device("t").unwrap();
    t.write(Sector(0), &[9u8; 65536]).unwrap();
    // Longer than the file: refused at resume, as the kernel's device_area check does.
    r.load(
        "pool",
        Table::parse(&pool(32768)).unwrap(),
        TableMode::ReadWrite,
    )
    .unwrap();
    assert!(r.resume("pool").is_err());
    r.clear("pool").ok();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    r.load(
        "pool",
        Table::parse(&pool(32768)).unwrap(),
        TableMode::ReadWrite,
    )
    .unwrap();
    r.resume("pool").unwrap();
    let status = r
        .status_text("pool", dmemu::mapped_device::Slot::Live)
        .unwrap();
    assert!(status.contains(" 1/256 "), "grown to 256 blocks: {status}");
    let mut b = [0u8; 65536];
    t.read(Sector(0), &mut b).unwrap();
    assert_eq!(b, [9u8; 65536]);
    t.write(Sector(60000), &[3u8; 4096]).unwrap();
    r.remove("t", RemoveMode::Normal).unwrap();
    r.remove("pool", RemoveMode::Normal).unwrap();
    // thin_check accepts what the grown pool committed, where it is installed.
    match std::process::Command::new("thin_check").arg(&meta).output() {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("thin_check not installed: skipping the metadata check"),
    }
}
