//! `read`, `write`, `luks read`, `luks write` moving data: sparse output, refused outputs
//! and inputs (nothing written), what a failure after writing began reports, and no
//! progress bar on a pipe.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Output;

mod cli_support;
use cli_support::{dmemu, unpack_fixture};

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An image of `len` bytes: zeros, with `mark` written at 1 MiB.
fn image(dir: &Path, name: &str, len: usize) -> String {
    let mut v = vec![0u8; len];
    v[1 << 20..(1 << 20) + 4096].fill(0x77);
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p.display().to_string()
}

/// Bytes the file occupies on disk.
fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn read_to_a_new_file_is_sparse_and_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = image(tmp.path(), "d.img", 4 << 20);
    let table = format!("0 8192 linear {disk} 0\n8192 8192 zero");
    let want = {
        let mut v = std::fs::read(&disk).unwrap();
        v.resize(8 << 20, 0);
        v
    };
    let new = tmp.path().join("new.img");
    let o = dmemu(
        &["read", "--table", &table, "-o", new.to_str().unwrap()],
        b"",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(std::fs::read(&new).unwrap(), want);
    // One 4 KiB block holds data; the file system may round up, never to the full 8 MiB.
    assert!(
        allocated(&new) < 1 << 20,
        "{} bytes allocated",
        allocated(&new)
    );

    // An existing file is written in full unless --sparse asks; --no-sparse for new files.
    let old = tmp.path().join("old.img");
    std::fs::write(&old, b"previous contents").unwrap();
    let o = dmemu(
        &["read", "--table", &table, "-o", old.to_str().unwrap()],
        b"",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(std::fs::read(&old).unwrap(), want);
    assert!(allocated(&old) >= 8 << 20, "{}", allocated(&old));
    let dense = tmp.path().join("dense.img");
    let o = dmemu(
        &[
            "read",
            "--table",
            &table,
            "--no-sparse",
            "-o",
            dense.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(allocated(&dense) >= 8 << 20);
    let o = dmemu(
        &[
            "read",
            "--table",
            &table,
            "--sparse",
            "-o",
            old.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(std::fs::read(&old).unwrap(), want);
    assert!(allocated(&old) < 1 << 20);
    // A trailing hole still gives the file its length.
    let tail = tmp.path().join("tail.img");
    let o = dmemu(
        &[
            "read",
            "--table",
            &table,
            "--start",
            "4096",
            "-o",
            tail.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(std::fs::read(&tail).unwrap(), want[2 << 20..]);
}

#[test]
fn refused_outputs_are_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let o = dmemu(&["read", "--table", "0 8 zero", "--sparse"], b"");
    assert_eq!(o.status.code(), Some(22));
    assert!(err(&o).contains("--sparse") && err(&o).lines().count() == 1);
    let o = dmemu(
        &[
            "read",
            "--table",
            "0 8 zero",
            "-o",
            tmp.path().to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(22), "{}", err(&o));
    assert_eq!(err(&o).lines().count(), 1);
    assert!(err(&o).contains("is a directory"), "{}", err(&o));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    // A block device node (made here: root may mknod; others skip this part).
    let node = tmp.path().join("blk");
    let made = std::process::Command::new("mknod")
        .args([node.to_str().unwrap(), "b", "7", "200"])
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let o = dmemu(
            &["read", "--table", "0 8 zero", "-o", node.to_str().unwrap()],
            b"",
        );
        assert_eq!(o.status.code(), Some(22), "{}", err(&o));
        assert!(err(&o).contains("is a block device"), "{}", err(&o));
        assert_eq!(err(&o).lines().count(), 1);
    } else {
        eprintln!("mknod not permitted: block device output not tested");
    }
}

#[test]
fn no_progress_bar_on_a_pipe() {
    // 16 MiB each way: above the bar's 8 MiB threshold, so only the pipe keeps it away.
    let tmp = tempfile::tempdir().unwrap();
    let disk = image(tmp.path(), "d.img", 16 << 20);
    let table = format!("0 32768 linear {disk} 0");
    let data: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 253) as u8).collect();
    let o = dmemu(&["write", "--table", &table], &data);
    assert!(o.status.success(), "{}", err(&o));
    assert!(o.stderr.is_empty(), "{}", err(&o));
    let o = dmemu(&["read", "--table", &table], b"");
    assert!(o.status.success());
    assert!(o.stderr.is_empty(), "{}", err(&o));
    assert!(o.stdout == data);
}

#[test]
fn input_larger_than_the_device_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 8 * 512]).unwrap();
    let table = format!("0 8 linear {} 0", disk.display());
    let input = tmp.path().join("in");
    std::fs::write(&input, vec![1u8; 6 * 512]).unwrap();
    let o = dmemu(
        &[
            "write",
            "--table",
            &table,
            "--start",
            "4",
            "-i",
            input.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(22));
    let e = err(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("6 sectors, more than the 4") && e.contains("nothing was written"),
        "{e}"
    );
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0u8; 8 * 512]);
    // The same from a pipe: the chunk that does not fit is refused before it is written.
    let o = dmemu(
        &["write", "--table", &table, "--start", "4"],
        &[1u8; 6 * 512],
    );
    assert_eq!(o.status.code(), Some(22));
    assert!(err(&o).contains("nothing was written"), "{}", err(&o));
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0u8; 8 * 512]);
}

#[test]
fn a_failure_after_writing_began_says_what_was_written() {
    // From a pipe, 4 MiB (one chunk) is written before the partial sector after it shows.
    let tmp = tempfile::tempdir().unwrap();
    let disk = image(tmp.path(), "d.img", 8 << 20);
    let table = format!("0 16384 linear {disk} 0");
    let mut data = vec![9u8; (4 << 20) + 700];
    data[..4].copy_from_slice(b"head");
    let o = dmemu(&["write", "--table", &table, "--start", "16"], &data);
    assert_eq!(o.status.code(), Some(22));
    let e = err(&o);
    assert!(
        e.starts_with("dmemu: sectors [16, +8192) were written before the error below\n"),
        "{e}"
    );
    assert!(
        e.contains("partial 512-byte block (188 bytes left over)"),
        "{e}"
    );
    let back = std::fs::read(&disk).unwrap();
    assert_eq!(&back[16 * 512..16 * 512 + (4 << 20)], &data[..4 << 20]);
}

fn pattern() -> Vec<u8> {
    (0..65536).map(|i| ((i % 251) ^ (i / 4096)) as u8).collect()
}

#[test]
fn luks_read_takes_a_range_and_luks_write_checks_the_size_first() {
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack_fixture(tmp.path(), "luks/l1-xts256.img");
    let path = img.to_str().unwrap();
    let o = dmemu(
        &["luks", "read", path, "--start", "24", "--sectors", "16"],
        b"alpha\n",
    );
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(o.stdout, pattern()[24 * 512..40 * 512]);
    let o = dmemu(
        &["luks", "read", path, "--start", "120", "--sectors", "16"],
        b"alpha\n",
    );
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    assert!(
        err(&o).contains("outside a volume of 128 sectors"),
        "{}",
        err(&o)
    );

    // 64 KiB volume: 33 sectors from sector 96 do not fit, so nothing is written.
    let before = std::fs::read(&img).unwrap();
    let input = tmp.path().join("in");
    std::fs::write(&input, vec![0xee; 33 * 512]).unwrap();
    let o = dmemu(
        &[
            "luks",
            "write",
            path,
            "--start",
            "96",
            "-i",
            input.to_str().unwrap(),
        ],
        b"alpha\n",
    );
    assert_eq!(o.status.code(), Some(22));
    assert!(err(&o).contains("nothing was written"), "{}", err(&o));
    assert_eq!(err(&o).lines().count(), 1, "{}", err(&o));
    assert!(std::fs::read(&img).unwrap() == before);
}

#[test]
fn luks_write_in_whole_crypt_sectors() {
    // l2-argon2id has 4096-byte crypt sectors: 512 bytes more is refused up front.
    let tmp = tempfile::tempdir().unwrap();
    let img = unpack_fixture(tmp.path(), "luks/l2-argon2id.img");
    let before = std::fs::read(&img).unwrap();
    let input = tmp.path().join("in");
    std::fs::write(&input, vec![0xee; 4096 + 512]).unwrap();
    let o = dmemu(
        &[
            "luks",
            "write",
            img.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
        ],
        b"alpha\n",
    );
    assert_eq!(o.status.code(), Some(22));
    assert!(
        err(&o).contains("not a whole number of 4096-byte blocks; nothing was written"),
        "{}",
        err(&o)
    );
    assert!(std::fs::read(&img).unwrap() == before);
}

/// An image of `sectors` sectors of a pattern that differs in every sector.
fn patterned(dir: &Path, name: &str, sectors: usize) -> (String, Vec<u8>) {
    let v: Vec<u8> = (0..sectors * 512)
        .map(|i| ((i % 253) ^ (i / 512)) as u8)
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, &v).unwrap();
    (p.display().to_string(), v)
}

#[test]
fn read_stops_at_the_first_failing_sector_with_everything_before_it_copied() {
    // Error lines at sectors 5000 and 12000 (in the 3rd and 6th 1 MiB chunk): the chunks
    // are read on several threads, yet the output holds exactly the sectors before 5000,
    // and sector 5000 is the one reported.
    let tmp = tempfile::tempdir().unwrap();
    let (disk, data) = patterned(tmp.path(), "d.img", 16384);
    let table = format!(
        "0 5000 linear {disk} 0\n5000 8 error\n5008 6992 linear {disk} 5008\n\
         12000 8 error\n12008 4376 linear {disk} 12008"
    );
    let o = dmemu(&["read", "--table", &table], b"");
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    assert!(
        err(&o).starts_with(
            "dmemu: reading sectors [5000, +1) failed; sectors [0, +5000) before them were \
             copied to stdout\n"
        ),
        "{}",
        err(&o)
    );
    assert_eq!(o.stdout.len(), 5000 * 512);
    assert!(o.stdout == data[..5000 * 512]);

    // From sector 100 into a file: the same prefix, at the same offsets.
    let out = tmp.path().join("out.img");
    let o = dmemu(
        &[
            "read",
            "--table",
            &table,
            "--start",
            "100",
            "-o",
            out.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    assert!(
        err(&o).contains("sectors [100, +4900) before them were copied"),
        "{}",
        err(&o)
    );
    let got = std::fs::read(&out).unwrap();
    assert!(got == data[100 * 512..5000 * 512], "{} bytes", got.len());
}

#[test]
fn nothing_after_a_failed_write_is_written() {
    // 4 MiB writes: the second, [8192, +8192), meets the error line at 10000; its linear
    // part before the error is written, nothing from the third write on.
    let tmp = tempfile::tempdir().unwrap();
    let (disk, before) = patterned(tmp.path(), "d.img", 32768);
    let table = format!("0 10000 linear {disk} 0\n10000 8 error\n10008 22760 linear {disk} 10008");
    let input = tmp.path().join("in");
    let new = vec![0xa5u8; 24576 * 512];
    std::fs::write(&input, &new).unwrap();
    let o = dmemu(
        &["write", "--table", &table, "-i", input.to_str().unwrap()],
        b"",
    );
    assert_eq!(o.status.code(), Some(5), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.starts_with(
            "dmemu: sectors [0, +8192) were written before the error below\n\
             dmemu: the write of sectors [8192, +8192) failed"
        ),
        "{e}"
    );
    let after = std::fs::read(&disk).unwrap();
    assert!(after[..10000 * 512] == new[..10000 * 512]);
    assert!(after[10000 * 512..] == before[10000 * 512..]);
}
