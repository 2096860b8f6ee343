//! The read-path probe `benches/read_path_vs_baseline.sh` builds twice, against this tree and
//! against the commit before live devices (9507403^), and runs under callgrind: N random
//! 4 KiB reads through a linear device over a memory or a file volume. It uses only the API
//! both trees have (Registry::create with a DeviceSpec, Volume::read), so the two builds run
//! the same loop and the difference in instructions is the cost of the device layer.
use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::{Access, MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};

const SECTORS: u64 = 64 * 2048;

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().expect("mem|FILE");
    let n: u64 = args.next().expect("N").parse().expect("N");
    let r = Registry::new().with_access(Access::ReadWrite);
    let backing = if kind == "mem" {
        r.insert_volume("m", Arc::new(MemVolume::new(SectorCount(SECTORS)).unwrap()));
        "m".to_string()
    } else {
        kind
    };
    let dev = r
        .create(&DeviceSpec {
            name: "probe".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse(&format!("0 {SECTORS} linear {backing} 0")).unwrap(),
        })
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut sum = 0u64;
    let t0 = cpu_ns();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        dev.read(Sector((x % (SECTORS / 8)) * 8), &mut buf).unwrap();
        sum = sum.wrapping_add(u64::from(buf[17]));
    }
    let ns = cpu_ns() - t0;
    println!("{sum}");
    // The thread's CPU time per read: steadier than wall time on a loaded machine.
    eprintln!("cpu_ns_per_read {:.1}", ns as f64 / n as f64);
}

fn cpu_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}
