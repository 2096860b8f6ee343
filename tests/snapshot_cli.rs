//! `dmemu status` / `table` / `read` / `message ... merge` on kernel-made snapshot images
//! (tests/fixtures/snapshot, see its make.sh): the command line gives the kernel's answers.

use std::io::Read;
use std::path::Path;
use std::process::Command;

fn fixture(name: &str, to: &Path) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshot");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(dir.join(name)).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    std::fs::write(to, out).unwrap();
}

fn dmemu(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_reads_kernel_snapshot_and_merges_it_into_the_origin() {
    let d = tempfile::tempdir().unwrap();
    fixture("k1-origin.img.gz", &d.path().join("origin.img"));
    fixture("k1-cowA.img.gz", &d.path().join("cow.img"));
    std::fs::write(
        d.path().join("s.table"),
        "0 8192 snapshot origin.img cow.img P 0\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("m.table"),
        "0 8192 snapshot-merge origin.img cow.img P 8\n",
    )
    .unwrap();
    // kernel-writes.out, "after phase 2" and "chunk 0".
    assert_eq!(
        dmemu(d.path(), &["status", "--table", "s.table"]),
        "0 8192 snapshot 2856/8192 24\n"
    );
    assert_eq!(
        dmemu(d.path(), &["table", "--table", "s.table"]),
        "0 8192 snapshot origin.img cow.img P 8\n"
    );
    let snap_view = dmemu_bytes(d.path(), &["read", "--table", "s.table"]);
    assert_eq!(
        dmemu(d.path(), &["message", "--table", "m.table", "0", "merge"]).trim(),
        "336"
    );
    // kernel-merge.out: "status merge done".
    assert_eq!(
        dmemu(d.path(), &["status", "--table", "m.table"]),
        "0 8192 snapshot-merge 16/8192 16\n"
    );
    assert!(std::fs::read(d.path().join("origin.img")).unwrap() == snap_view);
}

fn dmemu_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn cli_origin_write_in_a_concise_spec_copies_out_to_the_specs_snapshot() {
    let d = tempfile::tempdir().unwrap();
    fixture("origin.img.gz", &d.path().join("o.img"));
    let before = std::fs::read(d.path().join("o.img")).unwrap();
    std::fs::File::create(d.path().join("c.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    std::fs::write(d.path().join("w.bin"), [0xab; 4096]).unwrap();
    let spec = "snap,,,rw,0 8192 snapshot o.img c.img P 8;\
                orig,,,rw,0 8192 snapshot-origin o.img";
    let c = ["--concise", spec];
    dmemu(
        d.path(),
        &[
            &["write"][..],
            &c,
            &["--device", "orig", "--start", "16", "-i", "w.bin"],
        ]
        .concat(),
    );
    // One chunk (16..24) copied out: allocated = 3 chunks of 8.
    assert_eq!(
        dmemu(
            d.path(),
            &[&["status"][..], &c, &["--device", "snap"]].concat()
        ),
        "0 8192 snapshot 24/2048 16\n"
    );
    let view = dmemu_bytes(
        d.path(),
        &[&["read"][..], &c, &["--device", "snap"]].concat(),
    );
    assert!(view == before, "the snapshot shows the origin as it was");
    let origin = std::fs::read(d.path().join("o.img")).unwrap();
    assert_eq!(&origin[16 * 512..24 * 512], &[0xab; 4096][..]);
}

/// A blank COW is formatted (header written) only when the user allows writes: with
/// `--read-only` the snapshot is refused and the COW stays all zeros.
#[test]
fn read_only_snapshot_over_a_blank_cow_is_refused_without_writing_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("origin.img"), vec![7u8; 8192 * 512]).unwrap();
    std::fs::write(d.path().join("cow.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(
        d.path().join("s.table"),
        "0 8192 snapshot origin.img cow.img P 8\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .current_dir(d.path())
        .args(["status", "--read-only", "--table", "s.table"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshot") && err.contains("read-only"),
        "{err}"
    );
    let cow = std::fs::read(d.path().join("cow.img")).unwrap();
    assert!(
        cow.iter().all(|&b| b == 0),
        "the read-only snapshot wrote its COW"
    );
    // Writable, the same table formats the store (magic "SnAp" at the start, as the kernel).
    dmemu(d.path(), &["status", "--table", "s.table"]);
    let cow = std::fs::read(d.path().join("cow.img")).unwrap();
    assert_eq!(&cow[..4], &0x7041_6e53u32.to_le_bytes());
}
