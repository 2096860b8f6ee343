//! multipath against the real Linux 6.12 kernel: every case of
//! tests/fixtures/multipath/cases.txt (made by make.sh there, which runs guest.sh on
//! shared/oracle over loop devices). Every table the kernel loaded parses and prints as
//! `dmsetup table` printed it (feature order and count, dropped selector and handler
//! arguments, repeat counts, trailing space); every table it refused is refused with its
//! `ti->error` words and errno (a missing path device at build, as the kernel's lookup).

mod remap_support;

use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::targets::TargetSpec;
use dmemu::{MemVolume, Registry, SectorCount, Table, TableMode};

use remap_support::{assert_refused_like_kernel, cases, get, input, one};

const FIXTURE: &str = include_str!("fixtures/multipath/cases.txt");

#[test]
fn tables_the_kernel_loaded_print_as_the_kernel() {
    let mut loaded = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_some() {
            continue;
        }
        let table = Table::parse(&input(&lines, &name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            matches!(table.lines[0].spec, TargetSpec::Multipath(_)),
            "{name}: typed"
        );
        // dmsetup's line keeps the kernel's trailing space.
        assert_eq!(
            table.to_text(Default::default()).trim_end_matches('\n'),
            one(&lines, "table", &name),
            "{name}"
        );
        loaded += 1;
    }
    assert_eq!(loaded, 17, "the fixture's loaded cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    let mut refused = 0;
    for (name, lines) in cases(FIXTURE) {
        if get(&lines, "create-rc").is_none() {
            continue;
        }
        let reg = Registry::new();
        for i in 0..4 {
            reg.insert_volume(
                &format!("7:{i}"),
                Arc::new(MemVolume::new(SectorCount(2048)).unwrap()),
            );
        }
        let err = Table::parse(&input(&lines, &name))
            .and_then(|table| {
                reg.create(&DeviceSpec {
                    name: name.clone(),
                    uuid: String::new(),
                    minor: None,
                    mode: TableMode::ReadWrite,
                    table,
                })
            })
            .expect_err(&name);
        assert_refused_like_kernel(&name, &lines, "multipath", &err);
        refused += 1;
    }
    assert_eq!(refused, 30, "the fixture's refused cases");
}
