//! Shared by the fault oracle tests: the kernel fixtures and the registry the guest had.
//! Each test crate uses a subset of these helpers.
#![allow(dead_code)]

use std::sync::Arc;

use dmemu::clock::ManualClock;
use dmemu::table::DeviceSpec;
use dmemu::{MappedDevice, MemVolume, Registry, SectorCount, Table, TableMode};

pub(crate) const FIXTURE: &str = include_str!("../fixtures/fault/kernel-6.12.txt");
pub(crate) const DUST_FIXTURE: &str = include_str!("../fixtures/fault/kernel-6.12-dust.txt");

/// The registry the guest had: vda (8192 sectors of 0x11) as 254:0, vdb (zeros) as 254:16.
pub(crate) fn registry(clock: &Arc<ManualClock>) -> (Registry, Arc<MemVolume>) {
    let reg = Registry::new().with_clock(clock.clone());
    let vda = Arc::new(MemVolume::from_bytes(vec![0x11; 4 << 20]).unwrap());
    reg.insert_volume("254:0", vda.clone());
    reg.insert_volume(
        "254:16",
        Arc::new(MemVolume::new(SectorCount(8192)).unwrap()),
    );
    (reg, vda)
}

pub(crate) fn create(reg: &Registry, name: &str, table: &str) -> Arc<MappedDevice> {
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
pub(crate) type Outcome = Result<(String, String), String>;

/// `(input, outcome)` for every table case in both fixtures.
pub(crate) fn cases() -> Vec<(String, Outcome)> {
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

pub(crate) fn probe(name: &str) -> &'static str {
    FIXTURE
        .lines()
        .find_map(|l| l.strip_prefix(&format!("probe: {name}: ")))
        .unwrap_or_else(|| panic!("probe {name} in fixture"))
}

/// The first 16 bytes as hex, as `xxd -p | head -c 32` prints them.
pub(crate) fn hex16(b: &[u8]) -> String {
    b[..16].iter().map(|x| format!("{x:02x}")).collect()
}
