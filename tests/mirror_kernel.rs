//! mirror against the real Linux 6.12 kernel: every case of tests/fixtures/mirror/cases.txt
//! (made by make.sh there, which runs guest.sh on shared/oracle over loop devices) replays on
//! dmemu over the same leg bytes: the table and the in-sync status dmsetup printed, the
//! device size, the sha256 of the device read 4 KiB at a time (the first leg's bytes), of
//! each leg after a pattern is written through the device (every leg written), and after the
//! first 64 KiB are discarded (every leg discarded). Tables the kernel refused are refused
//! with the kernel's `ti->error` words, the dirty log's DMWARN words and errno.

mod remap_support;

use std::sync::Arc;

use dmemu::{MemVolume, Registry, Sector, SectorCount, Table, Volume};

use remap_support::{
    cases, create_read_and_write_as_the_kernel, get, input, one, patterned, registry_of, spec,
    volume_shas,
};

const FIXTURE: &str = include_str!("fixtures/mirror/cases.txt");
const LEG_BYTES: usize = 1 << 20;

/// The guest's loop devices: three legs with their `fill` patterns, a zeroed 1 MiB log and
/// a 1 KiB one.
fn registry() -> (Registry, Vec<Arc<MemVolume>>) {
    let mut vols = patterned(3, LEG_BYTES);
    vols.push(Arc::new(MemVolume::new(SectorCount(2048)).unwrap()));
    vols.push(Arc::new(MemVolume::new(SectorCount(2)).unwrap()));
    (registry_of(&vols), vols)
}

fn leg_shas(vols: &[Arc<MemVolume>]) -> Vec<String> {
    volume_shas(&vols[..3], LEG_BYTES)
}

#[test]
fn mirrors_the_kernel_loaded_print_read_and_write_as_the_kernel() {
    let mut accepted = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_some() {
            continue;
        }
        let (reg, vols) = registry();
        let (dev, size) = create_read_and_write_as_the_kernel(&reg, &name, &lines);
        let want: Vec<&str> = lines
            .iter()
            .filter(|(k, _)| k.starts_with("leg"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(want.len(), 6, "{name}: leg shas");
        assert_eq!(leg_shas(&vols), want[..3], "{name}: after the write");
        // blkdiscard cuts the range at the device's end.
        assert_eq!(one(&lines, "discard-rc", &name), "0", "{name}");
        dev.discard(Sector(0), SectorCount((size / 512).min(128)))
            .unwrap();
        assert_eq!(leg_shas(&vols), want[3..], "{name}: after the discard");
        accepted += 1;
    }
    assert_eq!(accepted, 11, "the fixture's accepted cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let mut refused = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_none() {
            continue;
        }
        let (reg, _vols) = registry();
        let err = Table::parse(&input(&lines, &name))
            .and_then(|table| reg.create(&spec(&name, table)))
            .expect_err(&name);
        let ours = err.to_string();
        let kernel: Vec<&str> = lines
            .iter()
            .filter(|(k, _)| k == "kernel-err")
            .map(|(_, v)| v.as_str())
            .collect();
        // "device-mapper: table: 253:0: mirror: WORDS (-EINVAL)", or the area check's line.
        let errno = if kernel.iter().any(|l| l.contains("(-ENOENT)")) {
            2
        } else {
            22
        };
        assert_eq!(err.errno(), errno, "{name}: {err}");
        if errno == 2 {
            // dmemu's lookup failure names the device in its own words (ENOENT as the
            // kernel's dm_get_device).
            assert!(ours.contains("/dev/nonexistent"), "{name}: {ours}");
            refused += 1;
            continue;
        }
        for line in &kernel {
            let words = if let Some(at) = line.find("too small for target") {
                &line[at..]
            } else if let Some((_, w)) = line.split_once("mirror: ") {
                w.rsplit_once(" (-").map_or(w, |(w, _)| w)
            } else if let Some((_, w)) = line.split_once("dirty region log: ") {
                w
            } else {
                continue;
            };
            assert!(
                ours.contains(words),
                "{name}: ours {ours:?}, kernel {line:?}"
            );
        }
        refused += 1;
    }
    assert_eq!(refused, 30, "the fixture's refused cases");
}
