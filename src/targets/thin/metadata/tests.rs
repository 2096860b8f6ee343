//! Metadata reading against metadata the real kernel (Linux 6.12 in the oracle VM) and
//! thin_restore 0.9.0 wrote: dmemu's dump must equal thin_dump's byte for byte; then
//! damaged copies of it must fail with errors that say where.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use super::block::{put32, put64, seal, BTREE_CSUM_XOR, SUPERBLOCK_CSUM_XOR};
use super::*;
use crate::error::Error;
use crate::volume::MemVolume;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/thin")
        .join(name);
    let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut out)
            .unwrap();
    } else {
        std::io::BufReader::new(f).read_to_end(&mut out).unwrap();
    }
    out
}

fn open(bytes: Vec<u8>) -> Result<Metadata> {
    Metadata::open(Arc::new(MemVolume::from_bytes(bytes).unwrap()))
}

fn kernel_meta() -> Vec<u8> {
    fixture("kernel-meta.img.gz")
}

#[test]
fn kernel_written_metadata_dumps_as_thin_dump_prints_it() {
    let md = open(kernel_meta()).unwrap();
    let want = String::from_utf8(fixture("kernel.xml")).unwrap();
    assert_eq!(md.dump_xml().unwrap(), want);
}

#[test]
fn thin_restore_metadata_with_deep_trees_dumps_as_thin_dump_prints_it() {
    let md = open(fixture("restore-big-meta.img.gz")).unwrap();
    let want = String::from_utf8(fixture("restore-big.dump.xml.gz")).unwrap();
    assert_eq!(md.dump_xml().unwrap(), want);
    // The per-device trees of ~2000 mappings need internal nodes.
    let root = md.device_root(1).unwrap().unwrap();
    let node = btree::read_node(md.dev(), root, 8).unwrap();
    assert!(!node.leaf);
}

#[test]
fn kernel_superblock_fields_decode() {
    let md = open(kernel_meta()).unwrap();
    let sb = md.superblock();
    assert_eq!(sb.version, 2);
    assert_eq!(sb.time, 1);
    assert_eq!(sb.transaction_id, 7);
    assert_eq!(sb.held_root, 0);
    assert_eq!(sb.data_block_size, 128);
    assert_eq!(sb.data_sm.nr_blocks, 512);
    assert_eq!(sb.metadata_sm.nr_blocks, 1024);
    assert!(!sb.needs_check());
}

/// The blocks `sm`'s bitmaps (and ref-count tree) count in use are as many as its root's
/// `nr_allocated` says.
fn assert_bitmaps_count_root(md: &Metadata, sm: &SpaceMap, what: &str) {
    let mut n = 0;
    sm.for_each_nonzero(md.dev(), &mut |_, _| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, sm.root.nr_allocated, "{what} {:?}", sm.kind());
}

#[test]
fn space_map_counts_agree_with_their_roots() {
    // thin_restore 0.9 records one more allocated metadata block in the root than its
    // bitmaps count (thin_check does not compare them), so only its data map is checked.
    for (name, both) in [
        ("kernel-meta.img.gz", true),
        ("restore-big-meta.img.gz", false),
    ] {
        let md = open(fixture(name)).unwrap();
        let mut maps = vec![md.data_space_map().unwrap()];
        if both {
            maps.push(md.metadata_space_map().unwrap());
        }
        for sm in maps {
            assert_bitmaps_count_root(&md, &sm, name);
        }
    }
}

#[test]
fn kernel_data_space_map_counts_shared_and_freed_blocks() {
    let md = open(kernel_meta()).unwrap();
    let sm = md.data_space_map().unwrap();
    // 27 blocks in use (kernel status "27/512"); thin 3's blocks 21-24 were freed.
    assert_eq!(sm.nr_blocks() - sm.nr_free(), 27);
    for b in 21..25 {
        assert_eq!(sm.ref_count(md.dev(), b).unwrap(), 0, "block {b}");
    }
    assert_eq!(sm.ref_count(md.dev(), 25).unwrap(), 1);
    assert!(sm.ref_count(md.dev(), 512).is_err());
}

#[test]
fn restore_metadata_ref_counts_above_two_come_from_the_ref_count_tree() {
    // Devices 1-4 share most blocks: thin_restore builds four trees sharing their
    // data blocks, so counts reach 4 and live in the ref-count btree.
    let md = open(fixture("restore-big-meta.img.gz")).unwrap();
    let sm = md.data_space_map().unwrap();
    let mut max = 0;
    sm.for_each_nonzero(md.dev(), &mut |_, c| {
        max = max.max(c);
        Ok(())
    })
    .unwrap();
    assert_eq!(max, 4);
}

#[test]
fn block_time_packs_forty_bit_block_and_24_bit_time() {
    let bt = BlockTime::unpack((0xab_cdef_0123 << 24) | 0x45_6789);
    assert_eq!(bt.block, 0xab_cdef_0123);
    assert_eq!(bt.time, 0x45_6789);
    assert_eq!(BlockTime::unpack(bt.pack()), bt);
}

// ---- damaged metadata ----

fn err_text(r: Result<impl std::fmt::Debug>) -> String {
    match r {
        Ok(v) => panic!("accepted: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn superblock_checksum_mismatch_names_block_zero_offset_zero() {
    let mut m = kernel_meta();
    m[100] ^= 1;
    let e = open(m).unwrap_err();
    assert!(matches!(e, Error::Corrupt { offset: 0, .. }), "{e}");
    assert!(
        e.to_string().contains("metadata block 0, byte 0: checksum"),
        "{e}"
    );
}

#[test]
fn wrong_magic_is_refused_even_with_a_good_checksum() {
    let mut m = kernel_meta();
    put64(&mut m, 32, 1234);
    seal(&mut m[..4096], SUPERBLOCK_CSUM_XOR);
    let e = err_text(open(m));
    assert!(
        e.contains("magic") && e.contains("byte 32") && e.contains("1234"),
        "{e}"
    );
}

#[test]
fn unformatted_or_truncated_metadata_is_refused() {
    assert!(err_text(open(vec![0; 1 << 20])).contains("unformatted"));
    assert!(err_text(open(vec![0; 512])).contains("beyond the metadata device"));
    // Truncated after the superblock: the trees point past the end.
    let m = kernel_meta();
    let md = open(m[..8192].to_vec()).unwrap();
    assert!(err_text(md.dump_xml()).contains("beyond the metadata device"));
}

#[test]
fn unsupported_incompat_feature_is_refused() {
    let mut m = kernel_meta();
    put32(&mut m, 360, 4);
    seal(&mut m[..4096], SUPERBLOCK_CSUM_XOR);
    assert!(err_text(open(m)).contains("unsupported optional features (4)"));
}

/// Overwrite node `b` of `m` with a leaf or internal node and fix its checksum.
fn write_node(m: &mut [u8], b: u64, internal: bool, entries: &[(u64, u64)]) {
    let off = usize::try_from(b).unwrap() * 4096;
    let blk = &mut m[off..off + 4096];
    blk.fill(0);
    put32(blk, 4, if internal { 1 } else { 2 });
    put64(blk, 8, b);
    put32(blk, 16, u32::try_from(entries.len()).unwrap());
    put32(blk, 20, 252);
    put32(blk, 24, 8);
    for (i, &(k, v)) in entries.iter().enumerate() {
        put64(blk, 32 + 8 * i, k);
        put64(blk, 32 + 8 * 252 + 8 * i, v);
    }
    seal(blk, BTREE_CSUM_XOR);
}

#[test]
fn btree_cycle_is_detected() {
    let mut m = kernel_meta();
    let md = open(m.clone()).unwrap();
    let root = md.device_root(0).unwrap().unwrap();
    // The device's root becomes an internal node whose children are itself.
    write_node(&mut m, root, true, &[(0, root), (100, root)]);
    let md = open(m).unwrap();
    let e = err_text(md.mappings(root));
    assert!(
        e.contains("cycle") && e.contains(&format!("block {root}")),
        "{e}"
    );
}

#[test]
fn a_bad_child_pointer_names_the_parent_node_and_the_pointer_field() {
    let mut m = kernel_meta();
    let md = open(m.clone()).unwrap();
    let root = md.device_root(0).unwrap().unwrap();
    // The root becomes an internal node whose second child points past the device.
    let blocks = u64::try_from(m.len() / 4096).unwrap();
    write_node(&mut m, root, true, &[(0, root + 1), (100, blocks + 5)]);
    write_node(&mut m, root + 1, false, &[(0, 1 << 24)]);
    let md = open(m).unwrap();
    let e = err_text(md.mappings(root));
    let field = 32 + 8 * 252 + 8;
    assert!(
        e.contains(&format!(
            "block {} is beyond the metadata device",
            blocks + 5
        )) && e.contains(&format!(
            "child pointer 1 of btree node {root}, byte {field}"
        )),
        "{e}"
    );
}

#[test]
fn btree_deeper_than_the_bound_is_refused() {
    let mut m = vec![0; 64 * 4096];
    m[..4096].copy_from_slice(&kernel_meta()[..4096]);
    // A chain of internal nodes 10 -> 11 -> ... -> 40 (no cycle, just too deep).
    for b in 10..40 {
        write_node(&mut m, b, true, &[(0, b + 1)]);
    }
    write_node(&mut m, 40, false, &[(0, 1 << 24)]);
    let md = open(m).unwrap();
    assert!(err_text(md.mappings(10)).contains("deeper than 16"));
}

#[test]
fn btree_node_field_errors_name_the_field() {
    let mut m = kernel_meta();
    let md = open(m.clone()).unwrap();
    let root = md.device_root(0).unwrap().unwrap();
    let off = usize::try_from(root).unwrap() * 4096;
    let cases: [(usize, u32, &str); 4] = [
        (4, 3, "both INTERNAL and LEAF"),
        (16, 253, "nr_entries"),
        (20, 1000, "max_entries"),
        (24, 16, "value_size"),
    ];
    for (field, v, want) in cases {
        let mut c = m.clone();
        put32(&mut c[off..], field, v);
        seal(&mut c[off..off + 4096], BTREE_CSUM_XOR);
        let e = err_text(open(c).unwrap().mappings(root));
        assert!(
            e.contains(want) && e.contains(&format!("metadata block {root}, byte {field}")),
            "{e}"
        );
    }
    // Wrong blocknr: the node claims to live elsewhere.
    put64(&mut m[off..], 8, root + 1);
    let e = err_text(open(m).unwrap().mappings(root));
    assert!(e.contains("blocknr"), "{e}");
}

#[test]
fn unsorted_keys_and_out_of_range_data_blocks_are_refused() {
    let mut m = kernel_meta();
    let md = open(m.clone()).unwrap();
    let root = md.device_root(2).unwrap().unwrap();
    write_node(&mut m, root, false, &[(5, 1 << 24), (3, 2 << 24)]);
    assert!(err_text(open(m.clone()).unwrap().mappings(root)).contains("strictly ascending"));
    write_node(&mut m, root, false, &[(5, 512 << 24)]);
    let e = err_text(open(m).unwrap().mappings(root));
    assert!(e.contains("data block 512, the pool has 512"), "{e}");
    // The value's place: the leaf, after its 252 keys.
    assert!(
        e.contains(&format!("metadata block {root}, byte {}", 32 + 8 * 252)),
        "{e}"
    );
}

// ---- writing ----

/// Every device of `md` with its details and sorted mappings, and each data block's count
/// (the number of mappings naming it).
fn model(md: &Metadata) -> (writer::Devices, BTreeMap<u64, u32>) {
    let details = md.devices().unwrap();
    let mut devs = BTreeMap::new();
    let mut refs = BTreeMap::new();
    for (id, root) in md.device_roots().unwrap() {
        let maps: Vec<_> = md.mappings(root).unwrap().into_iter().collect();
        for (_, bt) in &maps {
            *refs.entry(bt.block).or_insert(0) += 1;
        }
        devs.insert(id, (details[&id], maps));
    }
    (devs, refs)
}

/// Rewrite `image`'s metadata as one dmemu transaction; the new image.
fn rewrite(image: Vec<u8>) -> Vec<u8> {
    let vol = Arc::new(MemVolume::from_bytes(image).unwrap());
    let md = Metadata::open(vol.clone()).unwrap();
    let (devs, _) = model(&md);
    // Laid out afresh (no device names a committed base); a held snapshot is kept.
    let free: Vec<u64> = writer::free_metadata_blocks(&md).unwrap();
    let tx = writer::Transaction::build(md.superblock(), free, &devs, &BTreeMap::new(), Some(&md))
        .unwrap();
    tx.commit(md.dev()).unwrap();
    vol.to_vec()
}

#[test]
fn rewritten_metadata_dumps_the_same_and_its_space_maps_add_up() {
    for (meta, xml) in [
        ("kernel-meta.img.gz", "kernel.xml"),
        ("restore-big-meta.img.gz", "restore-big.dump.xml.gz"),
    ] {
        let new = rewrite(fixture(meta));
        if let Ok(dir) = std::env::var("DMEMU_THIN_WRITE_OUT") {
            std::fs::write(format!("{dir}/rewritten-{meta}.img"), &new).unwrap();
        }
        let md = open(new).unwrap();
        assert_eq!(
            md.dump_xml().unwrap(),
            String::from_utf8(fixture(xml)).unwrap(),
            "{meta}"
        );
        for sm in [
            md.data_space_map().unwrap(),
            md.metadata_space_map().unwrap(),
        ] {
            assert_bitmaps_count_root(&md, &sm, meta);
        }
    }
}

#[test]
fn a_transaction_never_writes_a_block_the_committed_metadata_uses() {
    let old = kernel_meta();
    let md = open(old.clone()).unwrap();
    let mut used = std::collections::HashSet::new();
    md.metadata_space_map()
        .unwrap()
        .for_each_nonzero(md.dev(), &mut |b, _| {
            used.insert(b);
            Ok(())
        })
        .unwrap();
    let new = rewrite(old.clone());
    for b in used.into_iter().filter(|&b| b != 0) {
        let r = usize::try_from(b).unwrap() * 4096..usize::try_from(b + 1).unwrap() * 4096;
        assert_eq!(
            old[r.clone()],
            new[r],
            "committed block {b} was overwritten"
        );
    }
}

#[test]
fn kernel_thin_restore_and_rewritten_metadata_pass_the_space_map_check() {
    for name in [
        "kernel-meta.img.gz",
        "restore-big-meta.img.gz",
        "dmemu-meta.img.gz",
        "snap-meta.img.gz",
    ] {
        assert_eq!(
            open(fixture(name)).unwrap().check().unwrap(),
            Vec::<String>::new(),
            "{name}"
        );
        let again = rewrite(fixture(name));
        assert_eq!(
            open(again).unwrap().check().unwrap(),
            Vec::<String>::new(),
            "rewritten {name}"
        );
    }
}

#[test]
fn a_wrong_bitmap_count_is_found_by_the_space_map_check() {
    let mut m = kernel_meta();
    let md = open(m.clone()).unwrap();
    let sm = md.data_space_map().unwrap();
    let bm = usize::try_from(sm.index[0].blocknr).unwrap() * 4096;
    // Data block 21 (freed by the kernel's delete): count 0 -> 1 (entry 21: word 0, bits
    // 42 and 43; the low position holds the high bit).
    m[bm + 16 + 5] |= 1 << 3;
    seal(&mut m[bm..bm + 4096], super::block::BITMAP_CSUM_XOR);
    let problems = open(m).unwrap().check().unwrap();
    assert_eq!(
        problems,
        ["data block 21: space map count 1, referenced 0 times"]
    );
}
