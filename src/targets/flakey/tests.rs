use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::{ManualClock, SharedClock};
use crate::error::Error;
use crate::units::Sector;
use crate::volume::{MemVolume, SharedVolume, Volume};

fn parse(s: &str) -> ArgResult<FlakeyArgs> {
    let toks: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    FlakeyArgs::parse(&mut Args::new(&toks))
}

fn canon(s: &str) -> String {
    parse(s).unwrap().to_string()
}

#[test]
fn flakey_without_features_prints_implicit_error_reads_and_error_writes() {
    assert_eq!(canon("8:16 0 1 1"), "8:16 0 1 1 2 error_reads error_writes");
    assert_eq!(
        canon("8:16 0 1 1 0"),
        "8:16 0 1 1 2 error_reads error_writes"
    );
    // A feature that enables nothing also falls back to the defaults.
    assert_eq!(
        canon("8:16 0 1 1 2 random_read_corrupt 0"),
        "8:16 0 1 1 2 error_reads error_writes"
    );
}

#[test]
fn flakey_features_print_in_kernel_order_with_recomputed_count() {
    assert_eq!(
        canon("d 5 2 3 8 random_write_corrupt 9 corrupt_bio_byte 32 R 1 0 ERROR_READS"),
        "d 5 2 3 8 error_reads corrupt_bio_byte 32 r 1 0 random_write_corrupt 9"
    );
    assert_eq!(canon("d 0 1 0 1 drop_writes"), "d 0 1 0 1 drop_writes");
    assert_eq!(
        canon("d 0 0 1 4 random_read_corrupt 5 random_write_corrupt 6"),
        "d 0 0 1 4 random_read_corrupt 5 random_write_corrupt 6"
    );
}

#[test]
fn flakey_repeated_corrupt_options_keep_the_last_and_extra_tokens_are_ignored() {
    assert_eq!(
        canon("d 0 1 1 10 corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 2 w 3 4"),
        "d 0 1 1 5 corrupt_bio_byte 2 w 3 4"
    );
    assert_eq!(
        canon("d 0 1 1 4 random_read_corrupt 1 random_read_corrupt 2"),
        "d 0 1 1 2 random_read_corrupt 2"
    );
    assert_eq!(
        canon("d 0 1 1 1 error_writes junk"),
        "d 0 1 1 1 error_writes"
    );
}

#[test]
fn flakey_bad_arguments_fail_with_kernel_words() {
    for (s, why) in [
        ("d 0 1", "Invalid argument count"),
        ("d x 1 1", "Invalid device sector"),
        ("d 0 -1 1", "Invalid up interval"),
        ("d 0 1 y", "Invalid up interval"),
        ("d 0 0 0", "Total (up + down) interval is zero"),
        ("d 0 1 4294967295", "Total (up + down) interval is zero"),
        ("d 0 2 4294967295", "Interval overflow"),
        ("d 0 1 1 12", "Invalid number of feature args"),
        ("d 0 1 1 2 error_reads", "Invalid number of feature args"),
        ("d 0 1 1 1 bogus", "Unrecognised flakey feature requested"),
        (
            "d 0 1 1 2 error_reads error_reads",
            "Feature error_reads duplicated",
        ),
        (
            "d 0 1 1 2 drop_writes drop_writes",
            "Feature drop_writes duplicated",
        ),
        (
            "d 0 1 1 2 error_writes error_writes",
            "Feature error_writes duplicated",
        ),
        (
            "d 0 1 1 2 error_writes drop_writes",
            "Feature drop_writes conflicts with feature error_writes",
        ),
        (
            "d 0 1 1 2 drop_writes error_writes",
            "Feature error_writes conflicts with feature drop_writes",
        ),
        (
            "d 0 1 1 1 corrupt_bio_byte",
            "Feature corrupt_bio_byte requires parameters",
        ),
        (
            "d 0 1 1 5 corrupt_bio_byte 0 r 1 0",
            "Invalid corrupt bio byte",
        ),
        (
            "d 0 1 1 5 corrupt_bio_byte 1 x 1 0",
            "Invalid corrupt bio direction (r or w)",
        ),
        (
            "d 0 1 1 5 corrupt_bio_byte 1 r 256 0",
            "Invalid corrupt value to write into bio byte (0-255)",
        ),
        (
            "d 0 1 1 5 corrupt_bio_byte 1 r 1 -1",
            "Invalid corrupt bio flags mask",
        ),
        (
            "d 0 1 1 2 corrupt_bio_byte 1 r 1 0",
            "Insufficient feature arguments",
        ),
        (
            "d 0 1 1 1 random_read_corrupt",
            "Feature random_read_corrupt requires a parameter",
        ),
        (
            "d 0 1 1 2 random_write_corrupt 1000000001",
            "Invalid random corrupt argument",
        ),
        (
            "d 0 1 1 6 drop_writes corrupt_bio_byte 1 w 1 0",
            "drop_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ),
        (
            "d 0 1 1 6 corrupt_bio_byte 1 w 1 0 error_writes",
            "error_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ),
    ] {
        assert_eq!(parse(s).unwrap_err().reason, why, "{s}");
    }
}

#[test]
fn flakey_error_names_the_offending_token() {
    let e = parse("d 0 1 1 3 error_reads bogus x").unwrap_err();
    assert_eq!(e.index, Some(6));
    let e = parse("d 0 1 1 5 corrupt_bio_byte 1 q 1 0").unwrap_err();
    assert_eq!(e.index, Some(7));
}

struct Rig {
    clock: Arc<ManualClock>,
    mem: Arc<MemVolume>,
    f: Flakey,
}

/// Flakey over 64 sectors of memory at offset 8, loaded at clock time 0.
fn rig(table_args: &str) -> Rig {
    let clock = ManualClock::shared();
    let mem = Arc::new(MemVolume::new(SectorCount(64)).unwrap());
    let args = parse(table_args).unwrap();
    let shared: SharedClock = clock.clone();
    let dev: SharedVolume = mem.clone();
    let f = Flakey::over(dev, &args, SectorCount(32), shared).unwrap();
    Rig { clock, mem, f }
}

fn is_eio(r: crate::error::Result<()>) -> bool {
    matches!(r, Err(ref e @ Error::TargetFailed { .. }) if e.errno() == 5)
}

#[test]
fn flakey_is_down_from_up_secs_to_period_end_in_whole_seconds() {
    let r = rig("m 8 2 3");
    let at = |ms: u64| {
        r.clock.set(Duration::from_millis(ms));
        r.f.is_down()
    };
    assert!(!at(0));
    assert!(!at(1999));
    assert!(at(2000));
    assert!(at(4999));
    assert!(!at(5000), "a new period starts at up + down");
    assert!(at(7000));
}

#[test]
fn flakey_default_features_fail_reads_writes_and_flushes_while_down_only() {
    let r = rig("m 8 1 1");
    r.mem.write(Sector(8), &[9u8; 512]).unwrap();
    let mut b = [0u8; 512];
    r.f.read(Sector(0), &mut b).unwrap();
    assert_eq!(b[0], 9);
    r.clock.set(Duration::from_secs(1));
    assert!(is_eio(r.f.read(Sector(0), &mut b)));
    assert!(is_eio(r.f.write(Sector(0), &[1u8; 512])));
    assert!(is_eio(r.f.flush()));
    assert!(is_eio(r.f.discard(Sector(0), SectorCount(1))));
    r.clock.set(Duration::from_secs(2));
    r.f.write(Sector(0), &[1u8; 512]).unwrap();
    assert_eq!(r.mem.to_vec()[8 * 512], 1);
}

#[test]
fn flakey_drop_writes_reports_success_without_writing_and_reads_pass() {
    let r = rig("m 8 0 1 1 drop_writes");
    r.f.write(Sector(0), &[5u8; 512]).unwrap();
    r.f.flush().unwrap();
    assert!(r.mem.to_vec().iter().all(|&b| b == 0));
    let mut b = [1u8; 512];
    r.f.read(Sector(0), &mut b).unwrap();
    assert_eq!(b, [0u8; 512]);
}

#[test]
fn flakey_corrupt_bio_byte_read_changes_nth_byte_of_matching_reads() {
    let r = rig("m 8 0 1 5 corrupt_bio_byte 600 r 171 0");
    let mut b = [0u8; 1024];
    r.f.read(Sector(0), &mut b).unwrap();
    assert_eq!(b[599], 171);
    assert_eq!(b.iter().filter(|&&x| x != 0).count(), 1);
    // A request shorter than Nth is left alone.
    let mut short = [0u8; 512];
    r.f.read(Sector(0), &mut short).unwrap();
    assert_eq!(short, [0u8; 512]);
    // Flags that our reads (bi_opf = REQ_OP_READ = 0) do not carry never match.
    let r = rig("m 8 0 1 5 corrupt_bio_byte 1 r 171 1");
    r.f.read(Sector(0), &mut short).unwrap();
    assert_eq!(short[0], 0);
}

#[test]
fn flakey_corrupt_bio_byte_write_corrupts_a_copy_not_the_callers_buffer() {
    let r = rig("m 8 0 1 5 corrupt_bio_byte 2 w 255 1");
    let data = [3u8; 512];
    r.f.write(Sector(1), &data).unwrap();
    assert_eq!(data, [3u8; 512]);
    let disk = r.mem.to_vec();
    assert_eq!(&disk[9 * 512..9 * 512 + 3], &[3, 255, 3]);
}

#[test]
fn flakey_random_corruption_repeats_with_the_same_seed() {
    let run = |seed: u64| {
        let r = rig("m 8 0 1 2 random_read_corrupt 500000000");
        r.f.reseed(seed);
        (0..32)
            .map(|_| {
                let mut b = [0u8; 512];
                r.f.read(Sector(0), &mut b).unwrap();
                b.iter().position(|&x| x != 0)
            })
            .collect::<Vec<_>>()
    };
    let a = run(42);
    assert_eq!(a, run(42));
    let hits = a.iter().filter(|p| p.is_some()).count();
    assert!(
        (4..=28).contains(&hits),
        "about half of 32 reads corrupted: {hits}"
    );
    assert_ne!(a, run(43));
}

#[test]
fn flakey_random_write_corrupt_at_full_probability_changes_at_most_one_byte() {
    let r = rig("m 8 0 1 2 random_write_corrupt 1000000000");
    r.f.reseed(7);
    r.f.write(Sector(0), &[0u8; 4096]).unwrap();
    let changed = r.mem.to_vec().iter().filter(|&&b| b != 0).count();
    assert!(
        changed <= 1,
        "one random byte set to a random value (may be 0)"
    );
}

#[test]
fn flakey_corrupted_write_over_4_mib_is_split_into_clones_each_corrupted() {
    // The kernel clones at most UIO_MAXIOV pages (4 MiB) and maps the rest again, so byte
    // 1 of every 4 MiB piece is corrupted.
    let clock: SharedClock = ManualClock::shared();
    let sectors = SectorCount(2 * 8192 + 8);
    let mem = Arc::new(MemVolume::new(sectors).unwrap());
    let args = parse("m 0 0 1 5 corrupt_bio_byte 1 w 7 0").unwrap();
    let dev: SharedVolume = mem.clone();
    let f = Flakey::over(dev, &args, sectors, clock).unwrap();
    f.write(Sector(0), &vec![1u8; (2 * 8192 + 8) * 512])
        .unwrap();
    let disk = mem.to_vec();
    let corrupted: Vec<usize> = (0..disk.len()).filter(|&i| disk[i] == 7).collect();
    assert_eq!(corrupted, vec![0, 4 << 20, 8 << 20]);
}

#[test]
fn flakey_short_corrupt_group_reads_past_the_count_and_is_always_refused() {
    // Count 2 covers "corrupt_bio_byte 1"; the kernel still reads "r 9 0", its counter
    // wraps, and the following tokens are taken as features until none is left.
    assert_eq!(
        parse("d 0 1 1 2 corrupt_bio_byte 1 r 9 0 error_reads")
            .unwrap_err()
            .reason,
        "Insufficient feature arguments"
    );
    assert_eq!(
        parse("d 0 1 1 2 corrupt_bio_byte 1 r 9 0 bogus")
            .unwrap_err()
            .reason,
        "Unrecognised flakey feature requested"
    );
}
