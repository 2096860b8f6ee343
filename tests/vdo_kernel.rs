//! vdo against the real Linux 6.12 kernel: every case of tests/fixtures/vdo/cases.txt (made
//! by make.sh there on shared/oracle over a zeroed loop device; the guest has no vdoformat,
//! so no VDO volume exists and no vdo table loads). Every table it refused is refused with
//! its `ti->error` words and errno: the argument checks of `parse_device_config` (EINVAL,
//! with vdo's own log words after the general one where it logs them), the storage lookup
//! (EINVAL) and the geometry block of an unformatted device (EIO). Each line's arguments,
//! which the kernel logs as `table line:`, are what dmemu prints for it.

mod remap_support;

use dmemu::targets::TargetSpec;

use remap_support::{all, cases, input, refusals};

const FIXTURE: &str = include_str!("fixtures/vdo/cases.txt");

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    assert!(
        FIXTURE.starts_with("vdoformat none\n"),
        "the guest had no vdoformat"
    );
    let refused = refusals(FIXTURE, "vdo", |_, _| {
        let reg = dmemu::Registry::new();
        reg.insert_volume(
            "7:0",
            std::sync::Arc::new(dmemu::MemVolume::new(dmemu::SectorCount(8192)).unwrap()),
        );
        reg
    });
    assert_eq!(
        refused.len(),
        cases(FIXTURE).len(),
        "the kernel loaded no vdo line"
    );
    assert_eq!(refused.len(), 25);
    let mut detailed = 0;
    for (name, lines, err) in &refused {
        // vdo's own complaint about an option (`thread config string error: ...`).
        for words in all(lines, "kernel-err").iter().filter_map(|l| {
            l.split_once("dmsetup: ")
                .map(|(_, w)| w)
                .filter(|w| w.contains(" error: ") && !w.starts_with("couldn't open"))
        }) {
            assert!(
                err.to_string().contains(words),
                "{name}: {err}, kernel {words:?}"
            );
            detailed += 1;
        }
    }
    assert_eq!(detailed, 6, "the fixture's option complaints");
}

/// The kernel logs each line's arguments (`table line: ...`) as it saves them; dmemu's
/// print of every V4 line that parses is that text.
#[test]
fn a_v4_line_prints_as_the_kernel_saved_it() {
    let mut printed = 0;
    for (name, lines) in cases(FIXTURE) {
        let Some(logged) = all(&lines, "kernel-err")
            .iter()
            .find_map(|l| l.split_once(": table line: ").map(|(_, t)| t.to_string()))
        else {
            continue;
        };
        let Ok(table) = dmemu::Table::parse(&input(&lines, &name)) else {
            continue;
        };
        let TargetSpec::Vdo(args) = &table.lines[0].spec else {
            panic!("{name}: a V4 line is typed")
        };
        assert_eq!(
            args.to_string(),
            logged.replace("/dev/loop0", "7:0"),
            "{name}"
        );
        printed += 1;
    }
    assert_eq!(printed, 5, "the fixture's V4 lines that parse");
}
