use std::sync::Arc;

use super::*;
use crate::targets::Target;
use crate::volume::MemVolume;

fn parse(s: &str, len: u64) -> ArgResult<DustArgs> {
    let toks: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    DustArgs::parse(&mut Args::new(&toks), SectorCount(len))
}

#[test]
fn dust_args_print_back() {
    assert_eq!(parse("8:16 0 512", 8).unwrap().to_string(), "8:16 0 512");
    assert_eq!(parse("d 64 +4096", 8).unwrap().to_string(), "d 64 4096");
}

#[test]
fn dust_bad_arguments_fail_with_kernel_words_in_kernel_order() {
    for (s, why) in [
        ("d 0", "Invalid argument count"),
        ("d 0 512 1", "Invalid argument count"),
        ("d 0 x", "Invalid block size parameter"),
        ("d 0 0", "Invalid block size parameter"),
        ("d 0 256", "Block size must be at least 512"),
        ("d 0 1536", "Block size must be a power of 2"),
        ("d 0 8192", "Block size is too large"),
        // The block size is checked before the offset.
        ("d x 1536", "Block size must be a power of 2"),
        ("d x 512", "Invalid device offset sector"),
    ] {
        assert_eq!(parse(s, 8).unwrap_err().reason, why, "{s}");
    }
    assert_eq!(
        parse("d 0 2147483648", 1 << 30).unwrap_err().reason,
        "Block size is too large"
    );
}

/// Dust over 64 sectors of memory at offset 8 with 1 KiB blocks (underlying blocks 4..).
fn rig() -> (Dust, Arc<MemVolume>) {
    let mem = Arc::new(MemVolume::new(SectorCount(64)).unwrap());
    let args = parse("m 8 1024", 32).unwrap();
    let v: SharedVolume = mem.clone();
    (Dust::over(v, &args, SectorCount(32)).unwrap(), mem)
}

fn msg(d: &Dust, words: &str) -> Result<String> {
    let argv: Vec<&str> = words.split(' ').collect();
    d.message(&argv)
}

#[test]
fn dust_messages_reply_in_kernel_words() {
    let (d, _) = rig();
    assert_eq!(
        msg(&d, "listbadblocks").unwrap(),
        "No blocks in badblocklist"
    );
    assert_eq!(msg(&d, "addbadblock 6").unwrap(), "");
    assert_eq!(msg(&d, "AddBadBlock 5 2").unwrap(), "");
    assert_eq!(msg(&d, "listbadblocks").unwrap(), "5\n6\n");
    assert_eq!(
        msg(&d, "countbadblocks").unwrap(),
        "countbadblocks: 2 badblock(s) found"
    );
    assert_eq!(
        msg(&d, "queryblock 5").unwrap(),
        "dust_query_block: block 5 found in badblocklist"
    );
    assert_eq!(
        msg(&d, "queryblock 7").unwrap(),
        "dust_query_block: block 7 not found in badblocklist"
    );
    assert_eq!(msg(&d, "removebadblock 6").unwrap(), "");
    assert_eq!(
        msg(&d, "clearbadblocks").unwrap(),
        "dust_clear_badblocks: badblocks cleared"
    );
    assert_eq!(
        msg(&d, "clearbadblocks").unwrap(),
        "dust_clear_badblocks: no badblocks found"
    );
    assert_eq!(d.status(), "m bypass verbose");
    msg(&d, "enable").unwrap();
    msg(&d, "quiet").unwrap();
    assert_eq!(d.status(), "m fail_read_on_bad_block quiet");
    msg(&d, "quiet").unwrap();
    msg(&d, "disable").unwrap();
    assert_eq!(d.status(), "m bypass verbose");
}

#[test]
fn dust_message_errors_are_einval_with_the_kernel_log_line() {
    let (d, _) = rig();
    msg(&d, "addbadblock 3").unwrap();
    for (words, why) in [
        (
            "addbadblock 3",
            "dust_add_block: block 3 already in badblocklist",
        ),
        (
            "removebadblock 9",
            "dust_remove_block: block 9 not found in badblocklist",
        ),
        ("addbadblock", "addbadblock requires an additional argument"),
        ("frob", "unrecognized message 'frob' received"),
        ("frob 1", "unrecognized message 'frob' received"),
        (
            "queryblock 1 2",
            "unrecognized message 'queryblock' received",
        ),
        // The device has 64 sectors = 32 blocks; block 32 itself is accepted (`>`).
        ("addbadblock 33", "selected block value out of range"),
        (
            "addbadblock 1 256",
            "selected write fail count out of range",
        ),
        ("addbadblock x", "Invalid argument"),
        ("a b c d", "invalid number of arguments '4'"),
    ] {
        let e = msg(&d, words).unwrap_err();
        assert_eq!(e.errno(), crate::error::errno::EINVAL, "{words}");
        assert!(e.to_string().ends_with(why), "{words}: {e}");
    }
    assert_eq!(msg(&d, "addbadblock 32").unwrap(), "");
}

#[test]
fn dust_fails_reads_of_bad_blocks_only_when_enabled() {
    let (d, mem) = rig();
    mem.write(Sector(10), &[4u8; 1024]).unwrap();
    // Target sector 2 = device sector 10 = block 5.
    msg(&d, "addbadblock 5").unwrap();
    let mut b = [0u8; 1024];
    d.read(Sector(2), &mut b).unwrap();
    assert_eq!(b[0], 4);
    msg(&d, "enable").unwrap();
    assert_eq!(d.read(Sector(2), &mut b).unwrap_err().errno(), 5);
    // A request that only touches block 5 in a later piece fails too.
    let mut big = [0u8; 4096];
    assert!(d.read(Sector(0), &mut big).is_err());
    d.read(Sector(4), &mut b).unwrap();
}

#[test]
fn dust_write_to_bad_block_fails_write_fail_count_times_then_clears_it() {
    let (d, mem) = rig();
    msg(&d, "enable").unwrap();
    msg(&d, "addbadblock 5 2").unwrap();
    for _ in 0..2 {
        assert!(d.write(Sector(2), &[1u8; 512]).is_err());
    }
    assert_eq!(mem.to_vec()[10 * 512], 0, "failed writes wrote nothing");
    d.write(Sector(2), &[1u8; 512]).unwrap();
    assert_eq!(mem.to_vec()[10 * 512], 1);
    assert_eq!(
        msg(&d, "listbadblocks").unwrap(),
        "No blocks in badblocklist"
    );
}

#[test]
fn dust_write_spanning_blocks_processes_every_piece() {
    let (d, mem) = rig();
    msg(&d, "enable").unwrap();
    msg(&d, "addbadblock 5 1").unwrap();
    // Blocks 4, 5, 6: the piece on 5 fails, the others are written.
    assert!(d.write(Sector(0), &[2u8; 3072]).is_err());
    let disk = mem.to_vec();
    assert_eq!((disk[8 * 512], disk[10 * 512], disk[12 * 512]), (2, 0, 2));
}

#[test]
fn dust_flush_is_a_write_to_the_first_block() {
    let (d, _) = rig();
    msg(&d, "enable").unwrap();
    msg(&d, "addbadblock 4 1").unwrap();
    assert!(d.flush().is_err());
    d.flush().unwrap();
    assert_eq!(d.bad_blocks(), vec![]);
}
