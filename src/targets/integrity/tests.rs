use std::sync::Arc;

use super::journal::{build_section, commit_id, replay};
use super::layout::Layout;
use super::superblock::{Superblock, FLAG_FIXED_HMAC, FLAG_FIXED_PADDING, MAGIC};
use super::*;
use crate::table::args::Args;
use crate::volume::{MemVolume, Volume};
use crate::{Sector, SectorCount};

fn parse(line: &str) -> Result<IntegrityArgs, String> {
    let tokens: Vec<String> = line.split(' ').map(str::to_string).collect();
    IntegrityArgs::parse(&mut Args::new(&tokens)).map_err(|e| e.reason)
}

fn shown(a: &IntegrityArgs) -> String {
    let mut s = String::new();
    a.write(&mut s, Keys::Shown).unwrap();
    s
}

#[test]
fn integrity_kernel_table_lines_print_back_unchanged() {
    for line in [
        "254:0 0 4 D 6 journal_sectors:352 interleave_sectors:32768 buffer_sectors:128 fix_padding fix_hmac internal_hash:crc32c",
        "254:16 0 32 J 9 block_size:4096 journal_sectors:1848 interleave_sectors:32768 buffer_sectors:128 journal_watermark:99 commit_time:600000 fix_padding fix_hmac internal_hash:sha256",
        "254:48 0 4 B 8 journal_sectors:352 interleave_sectors:32768 buffer_sectors:128 sectors_per_bit:512 bitmap_flush_interval:600000 fix_padding fix_hmac internal_hash:crc32c",
        "7:0 8 16 R 1 meta_device:7:1",
    ] {
        assert_eq!(shown(&parse(line).unwrap()), line);
    }
}

#[test]
fn integrity_options_print_in_the_kernels_order_with_counts_recomputed() {
    let a = parse("/d 0 - J 4 internal_hash:sha256 allow_discards commit_time:5 block_size:512")
        .unwrap();
    assert_eq!(
        shown(&a),
        "/d 0 - J 3 allow_discards commit_time:5 internal_hash:sha256"
    );
    assert_eq!(a.tag_size, None);
}

#[test]
fn integrity_keys_are_hidden_unless_shown() {
    let a =
        parse("/d 0 32 J 2 journal_mac:hmac(sha256):abcd internal_hash:hmac(sha256):0123").unwrap();
    assert_eq!(
        a.to_string(),
        "/d 0 32 J 2 internal_hash:hmac(sha256):0000 journal_mac:hmac(sha256):0000"
    );
    assert!(shown(&a).ends_with("internal_hash:hmac(sha256):0123 journal_mac:hmac(sha256):abcd"));
    assert!(!format!("{a:?}").contains("0123"));
}

#[test]
fn integrity_bitmap_flush_interval_prints_in_whole_jiffies() {
    let a = parse("/d 0 4 B 2 internal_hash:crc32c bitmap_flush_interval:1001").unwrap();
    assert_eq!(a.bitmap_flush_interval_printed(), 1004);
}

#[test]
fn integrity_bad_lines_get_the_kernels_words() {
    for (line, err) in [
        ("/d 0 4 D", "Invalid argument count"),
        ("/d x 4 D 0", "Invalid starting offset"),
        ("/d 0 0 D 0", "Invalid tag size"),
        ("/d 0 4 X 0", "Invalid mode (expecting J, B, D, R, I)"),
        ("/d 0 4 D 19", "Invalid number of feature args"),
        (
            "/d 0 4 D 2 internal_hash:crc32c",
            "Invalid number of feature args",
        ),
        ("/d 0 4 D 1 block_size:1024x", "Invalid argument"),
        ("/d 0 4 D 1 block_size:8192", "Invalid block_size argument"),
        ("/d 0 4 D 1 journal_watermark:101", "Invalid argument"),
        (
            "/d 0 4 D 1 internal_hash:crc32c:abc",
            "Invalid internal_hash argument",
        ),
        ("/d 0 - D 0", "Unknown tag size"),
        ("/d 0 256 D 0", "Too big tag size"),
        (
            "/d 0 4 B 0",
            "Bitmap mode can be only used with internal hash",
        ),
        (
            "/d 0 4 D 1 allow_discards",
            "Discard can be only used with internal hash",
        ),
        (
            "/d 0 4 D 2 internal_hash:crc32c allow_discards_keyed",
            "Keyed discard can only be used with keyed internal hash",
        ),
    ] {
        assert_eq!(parse(line).unwrap_err(), err, "{line}");
    }
}

#[test]
fn integrity_journal_sectors_zero_is_one() {
    assert_eq!(
        parse("/d 0 4 D 1 journal_sectors:0")
            .unwrap()
            .journal_sectors,
        Some(1)
    );
}

fn superblock(tag: u16, log2_spb: u8, sections: u32) -> Superblock {
    Superblock {
        version: 5,
        log2_interleave_sectors: 15,
        integrity_tag_size: tag,
        journal_sections: sections,
        provided_data_sectors: 0,
        flags: FLAG_FIXED_PADDING | FLAG_FIXED_HMAC,
        log2_sectors_per_block: log2_spb,
        log2_blocks_per_bitmap_bit: 15,
        recalc_sector: 0,
        salt: [7; 16],
    }
}

#[test]
fn integrity_superblock_round_trips_and_refuses_unknown_versions() {
    let sb = superblock(4, 0, 2);
    let b = sb.encode();
    assert_eq!(&b[..8], MAGIC);
    assert_eq!(Superblock::decode(&b).unwrap(), Some(sb));
    let mut v8 = b;
    v8[8] = 8;
    let e = Superblock::decode(&v8).unwrap_err();
    assert!(e.to_string().contains("offset 8"), "{e}");
    assert_eq!(Superblock::decode(&[0; 64]).unwrap(), None);
}

#[test]
fn integrity_layout_matches_the_kernels_numbers_for_the_fixtures() {
    // d-crc32c: 8 MiB, tag 4, 2 sections -> journal_sectors:352, 15768 sectors provided.
    let l = Layout::new(&superblock(4, 0, 2), 0, 16384, 128).unwrap();
    assert_eq!(l.initial_sectors - 8, 352);
    assert_eq!(l.provided_data_sectors, 15768);
    assert_eq!(l.log2_buffer_sectors, 7);
    // j-crc32-4k: tag 4, 4 KiB blocks -> buffer_sectors:32.
    let sb = superblock(4, 3, 1);
    let l = Layout::new(&sb, 0, 16384, 128).unwrap();
    assert_eq!(l.log2_buffer_sectors, 5);
}

#[test]
fn integrity_layout_refuses_a_journal_larger_than_the_device() {
    let e = Layout::new(&superblock(4, 0, 1000), 0, 16384, 128).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
    let e = Layout::new(&superblock(4, 0, 0), 0, 16384, 128).unwrap_err();
    assert!(e.to_string().contains("journal_sections is 0"), "{e}");
}

#[test]
fn integrity_section_dmemu_builds_replays_with_the_newest_copy_winning() {
    let mut sb = superblock(4, 0, 3);
    sb.flags = 0;
    let l = Layout::new(&sb, 0, 16384, 128).unwrap();
    let a = vec![0xaa; 512];
    let b = vec![0xbb; 512];
    let tag = [1u8, 2, 3, 4];
    let mut journal = Vec::new();
    // Section 0 newest (seq 1) holding sector 5 = b; sections 1, 2 older (seq 0), 1 with a.
    journal.extend(build_section(&l, 0, 1, &[(5, &b, &tag)]).unwrap());
    journal.extend(build_section(&l, 1, 0, &[(5, &a, &tag), (6, &a, &tag)]).unwrap());
    journal.extend(build_section(&l, 2, 0, &[]).unwrap());
    let read = |at: u64, buf: &mut [u8]| {
        let at = usize::try_from(at * 512).unwrap();
        buf.copy_from_slice(&journal[at..at + buf.len()]);
        Ok(())
    };
    let r = replay(&l, &read, None).unwrap();
    assert_eq!(r.sections, 3);
    assert_eq!(r.blocks[&5].data, b);
    assert_eq!(r.blocks[&6].data, a);
    assert_eq!(r.blocks[&6].tag, tag);
}

#[test]
fn integrity_torn_section_is_not_replayed() {
    let mut sb = superblock(4, 0, 2);
    sb.flags = 0;
    let l = Layout::new(&sb, 0, 16384, 128).unwrap();
    let a = vec![0xaa; 512];
    let mut journal = build_section(&l, 0, 1, &[(5, &a, &[0; 4])]).unwrap();
    journal.extend(build_section(&l, 1, 0, &[]).unwrap());
    // Sector 3 of section 0 still has the old sequence's id: the write was torn.
    journal[3 * 512 + 504..3 * 512 + 512].copy_from_slice(&commit_id(0, 3, 0).to_le_bytes());
    let read = |at: u64, buf: &mut [u8]| {
        let at = usize::try_from(at * 512).unwrap();
        buf.copy_from_slice(&journal[at..at + buf.len()]);
        Ok(())
    };
    let r = replay(&l, &read, None).unwrap();
    assert!(r.blocks.is_empty());
}

/// A formatted blank device: superblock + cleared journal, tags of zero blocks written.
fn formatted(mode: char, hash: &str) -> (Arc<MemVolume>, IntegrityArgs, SectorCount) {
    let vol = Arc::new(MemVolume::new(SectorCount(16384)).unwrap());
    let mut sb = superblock(4, 0, 2);
    sb.salt = [9; 16];
    let mut s0 = [0u8; 512];
    s0[..64].copy_from_slice(&sb.encode());
    vol.write(Sector(0), &s0).unwrap();
    let l = Layout::new(&sb, 0, 16384, 128).unwrap();
    for i in 0..2 {
        let s = build_section(&l, i, 0, &[]).unwrap();
        vol.write(
            Sector(8 + u64::from(i) * u64::from(l.journal_section_sectors)),
            &s,
        )
        .unwrap();
    }
    let args = parse(&format!("/d 0 4 {mode} 1 internal_hash:{hash}")).unwrap();
    let len = SectorCount(l.provided_data_sectors);
    // Tags for the zero data: written once in D mode, as integritysetup's wipe does.
    let d = parse(&format!("/d 0 4 D 1 internal_hash:{hash}")).unwrap();
    let t = Integrity::over(vol.clone(), &d, len).unwrap();
    t.write(Sector(0), &vec![0u8; usize::try_from(len.bytes()).unwrap()])
        .unwrap();
    (vol, args, len)
}

#[test]
fn integrity_writes_read_back_after_reopen_in_every_writable_mode() {
    for mode in ['J', 'B', 'D'] {
        let (vol, args, len) = formatted(mode, "crc32c");
        let t = Integrity::over(vol.clone(), &args, len).unwrap();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let data = &data[..68 * 1024];
        t.write(Sector(100), data).unwrap();
        t.flush().unwrap();
        drop(t);
        let t = Integrity::over(vol, &args, len).unwrap();
        let mut back = vec![0u8; data.len()];
        t.read(Sector(100), &mut back).unwrap();
        assert!(back == data, "mode {mode}");
        t.read(Sector(0), &mut [0u8; 51200]).unwrap();
    }
}

#[test]
fn integrity_recovery_mode_reads_without_checking_and_refuses_writes() {
    let (vol, _, len) = formatted('D', "crc32c");
    let mut s = [0u8; 512];
    let l = Layout::new(&superblock(4, 0, 2), 0, 16384, 128).unwrap();
    s[0] = 1;
    vol.write(Sector(l.data_sector(3)), &s).unwrap();
    let r = parse("/d 0 4 R 1 internal_hash:crc32c").unwrap();
    let t = Integrity::over(vol, &r, len).unwrap();
    let mut b = [0u8; 512];
    t.read(Sector(3), &mut b).unwrap();
    assert_eq!(b[0], 1);
    assert!(t.write(Sector(3), &b).is_err());
}

#[test]
fn integrity_refuses_a_blank_device_a_wrong_tag_size_and_misaligned_io() {
    let blank = Arc::new(MemVolume::new(SectorCount(16384)).unwrap());
    let a = parse("/d 0 4 D 1 internal_hash:crc32c").unwrap();
    let e = Integrity::over(blank, &a, SectorCount(8)).unwrap_err();
    assert!(e.to_string().contains("not initialized"), "{e}");
    let (vol, _, len) = formatted('D', "crc32c");
    let e = Integrity::over(vol.clone(), &parse("/d 0 8 D 0").unwrap(), len).unwrap_err();
    assert!(e.to_string().contains("Tag size doesn't match"), "{e}");
    let e = Integrity::over(
        vol,
        &parse("/d 0 4 D 2 block_size:4096 internal_hash:crc32c").unwrap(),
        len,
    )
    .unwrap_err();
    assert!(e.to_string().contains("Block size"), "{e}");
}

#[test]
fn crc32c_run_check_agrees_with_per_block_tags_and_catches_any_one_bad_block() {
    use super::hash::{Crc32cRun, TagHasher};
    for (salt, bb, spb) in [
        (Some([0x5au8; 16]), 512usize, 1u64),
        (None, 512, 1),
        (Some([1u8; 16]), 4096, 8),
        (Some([9u8; 16]), 1024, 2),
    ] {
        let h = TagHasher::new("crc32c", None, salt).unwrap();
        let run = Crc32cRun::new(salt, bb);
        let blocks = 37usize;
        let data: Vec<u8> = (0..blocks * bb)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        // A run inside one 256-sector stretch, and runs that carry into bytes 1 and 4 of
        // the sector number (the prefix's high part is recomputed there).
        for first in [4096 + 3 * spb, 0xff00 - 5 * spb, (1 << 32) - 5 * spb] {
            let mut tags = vec![0u8; blocks * 4];
            for (i, t) in tags.chunks_mut(4).enumerate() {
                h.tag(first + i as u64 * spb, &data[i * bb..(i + 1) * bb], t);
            }
            assert!(run.run_ok(first, spb, &data, &tags));
            assert!(!run.run_ok(first + spb, spb, &data, &tags));
            for i in [0, 17, blocks - 1] {
                let mut d = data.clone();
                d[i * bb + 100] ^= 0x40;
                assert!(!run.run_ok(first, spb, &d, &tags), "data of block {i}");
                let mut t = tags.clone();
                t[i * 4 + 2] ^= 1;
                assert!(!run.run_ok(first, spb, &data, &t), "tag of block {i}");
            }
        }
        assert!(h.crc32c_run(4, bb).is_some());
        assert!(h.crc32c_run(8, bb).is_none());
    }
}
