//! delay, flakey and dust tables against the real Linux 6.12 kernel: every table the kernel
//! accepted prints back (table and status) exactly as `dmsetup` printed it, every table it
//! refused is refused with the kernel's `ti->error` words, and dust's message/I/O script
//! replays step for step.
//!
//! Fixtures: tests/fixtures/fault/kernel-6.12.txt, made by tests/fixtures/fault/make.sh
//! (guest.sh run by shared/oracle/run.sh; cases.txt holds the table lines, with /dev/vda =
//! 254:0 filled with 0x11 and /dev/vdb = 254:16), and kernel-6.12-dust.txt, made by
//! make-dust.sh (Debian does not build dm-dust: it builds dm-dust.ko from the 6.12.117 source
//! against the matching headers and runs dust.guest.sh: dust-cases.txt, then a script of
//! messages and I/O whose every step and result is recorded).

use dmemu::clock::ManualClock;
use dmemu::{Sector, Table, Volume};

mod fault_oracle;
use fault_oracle::*;

#[test]
fn kernel_accepted_tables_print_back_and_report_status_like_dmsetup() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let mut n = 0;
    for (i, (input, result)) in cases().into_iter().enumerate() {
        let Ok((table, status)) = result else {
            continue;
        };
        let parsed = Table::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(
            parsed.to_text(Default::default()),
            format!("{table}\n"),
            "{input}"
        );
        let dev = create(&reg, &format!("d{i}"), &input);
        assert_eq!(dev.status_text(), format!("{status}\n"), "{input}");
        n += 1;
    }
    assert!(n >= 43, "fixtures hold the accepted cases ({n})");
}

#[test]
fn kernel_refused_tables_are_refused_with_the_kernel_words() {
    let mut n = 0;
    for (input, result) in cases() {
        let Err(kernel) = result else { continue };
        let err = Table::parse(&input).expect_err(&input).to_string();
        assert!(
            err.ends_with(&kernel),
            "{input}: ours {err:?}, kernel {kernel:?}"
        );
        n += 1;
    }
    assert!(n >= 52, "fixtures hold the refused cases ({n})");
}

/// Replays the dust script of the fixture step by step on dmemu and compares every reply,
/// failure and status line with the kernel's.
#[test]
fn dust_messages_and_io_replay_the_kernel_script_exactly() {
    let clock = ManualClock::shared();
    let (reg, _) = registry(&clock);
    let tables = [
        ("d1", "0 2048 dust 254:0 0 4096"),
        ("d2", "0 2048 dust 254:0 8 4096"),
        ("d3", "0 2048 dust 254:0 4 4096"),
        ("d4", "0 2048 dust 254:0 0 4096"),
    ];
    let devs: Vec<_> = tables
        .iter()
        .map(|(name, t)| (*name, create(&reg, name, t)))
        .collect();
    let mut steps = 0;
    for line in DUST_FIXTURE.lines() {
        let Some(step) = line.strip_prefix("step: ") else {
            continue;
        };
        let (cmd, kernel) = step.split_once(" => ").expect("step => result");
        let words: Vec<&str> = cmd.split(' ').collect();
        let dev = &devs.iter().find(|(n, _)| *n == words[0]).expect("device").1;
        let ours = match words[1] {
            "status" => dev.status_text().trim_end().to_string(),
            "flush" => format!("rc={}", i32::from(dev.flush().is_err())),
            "message" => match dev.message(Sector(0), &words[2..]) {
                Ok(reply) => format!("ok {}", reply.trim_end_matches('\n').replace('\n', "|")),
                Err(e) => {
                    assert_eq!(e.errno(), 22, "{cmd}: message errors are EINVAL");
                    let why = kernel.strip_prefix("fail ").expect("kernel failed too");
                    assert!(e.to_string().ends_with(why), "{cmd}: {e}");
                    kernel.to_string()
                }
            },
            io => {
                let block: u64 = words[2].parse().unwrap();
                let count: usize = words[3].parse().unwrap();
                let at = Sector(block * 8);
                let r = if io == "read" {
                    dev.read(at, &mut vec![0u8; 4096 * count])
                } else {
                    dev.write(at, &vec![0x22u8; 4096 * count])
                };
                format!("rc={}", i32::from(r.is_err()))
            }
        };
        assert_eq!(ours, kernel, "{cmd}");
        steps += 1;
    }
    assert!(steps >= 62, "fixture holds the dust script ({steps} steps)");
}
