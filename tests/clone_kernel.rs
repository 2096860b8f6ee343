//! clone against the real Linux 6.12 kernel: every case of tests/fixtures/clone/cases.txt
//! (made by make.sh there, which builds dm-clone.ko from the 6.12 source and runs guest.sh on
//! shared/oracle over loop devices). Every table the kernel loaded parses and prints as
//! `dmsetup table` printed it (the arguments after the devices as given); every table it
//! refused is refused with its `ti->error` words and errno over the same devices (a 64 KiB
//! one, one with 4096-byte logical blocks, and the metadata superblock the case found,
//! whose `clone metadata:` complaint dmemu repeats word for word).

mod remap_support;

use std::sync::Arc;

use dmemu::targets::TargetSpec;
use dmemu::{MemVolume, Registry, SectorCount};

use remap_support::{all, get, loaded_print_as_the_kernel, refusals, Loop};

const FIXTURE: &str = include_str!("fixtures/clone/cases.txt");

#[test]
fn tables_the_kernel_loaded_print_as_the_kernel() {
    let loaded = loaded_print_as_the_kernel(FIXTURE, |s| matches!(s, TargetSpec::Clone(_)));
    assert_eq!(loaded, 21, "the fixture's loaded cases");
}

/// The case's first 4 KiB of loop0 (`meta-in hex` and xxd -p lines), or zeros.
fn metadata(name: &str, lines: &[(String, String)]) -> Vec<u8> {
    let mut bytes = vec![0u8; 1 << 20];
    if let Some(dump) = get(lines, "meta-in") {
        let hex: String = dump
            .strip_prefix("hex")
            .expect("meta-in hex")
            .split_whitespace()
            .collect();
        assert_eq!(hex.len(), 8192, "{name}: 4 KiB of metadata");
        for (i, b) in bytes.iter_mut().take(4096).enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
    }
    bytes
}

/// The guest's loop devices for case `name`: 7:0 the metadata as the case found it, 7:1 and
/// 7:2 of 1 MiB, 7:3 of 64 KiB, 7:4 of 1 MiB with 4096-byte logical blocks.
fn loops(name: &str, lines: &[(String, String)]) -> Registry {
    let reg = Registry::new();
    let mem = |sectors| Arc::new(MemVolume::new(SectorCount(sectors)).unwrap());
    reg.insert_volume(
        "7:0",
        Arc::new(MemVolume::from_bytes(metadata(name, lines)).unwrap()),
    );
    reg.insert_volume("7:1", mem(2048));
    reg.insert_volume("7:2", mem(2048));
    reg.insert_volume("7:3", mem(128));
    reg.insert_volume(
        "7:4",
        Arc::new(Loop {
            mem: mem(2048),
            lbs: 4096,
        }),
    );
    reg
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let refused = refusals(FIXTURE, "clone", loops);
    assert_eq!(refused.len(), 33, "the fixture's refused cases");
    let mut superblocks = 0;
    for (name, lines, err) in &refused {
        for words in all(lines, "kernel-err")
            .iter()
            .filter_map(|l| l.strip_prefix("device-mapper: clone metadata: "))
            .filter(|w| !w.starts_with("Failed to read_lock"))
        {
            assert!(
                err.to_string().contains(words),
                "{name}: {err}, kernel {words:?}"
            );
            superblocks += 1;
        }
    }
    assert_eq!(superblocks, 5, "the fixture's metadata refusals");
}
