//! `dmemu serve --mount` against real programs that take a path: qemu-img, dd, cmp, python's
//! os.lseek, fallocate, mkfs.ext4, debugfs, e2fsck, cryptsetup and thin_dump. Each serve
//! runs in captive mode (`--run`) under `timeout`, so the mount never outlives its test.
//! Skipped, with a message, where /dev/fuse or fusermount3 is missing.

use std::path::Path;
use std::process::{Command, Output};

const LIMIT: &str = "120";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dmemu")
}

fn path_env() -> String {
    format!(
        "/usr/bin:/usr/sbin:/sbin:{}",
        std::env::var("PATH").unwrap_or_default()
    )
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .env("PATH", path_env())
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether FUSE can be mounted here; prints why not.
fn fuse_here() -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: /dev/fuse is missing");
        return false;
    }
    if !have("fusermount3") {
        eprintln!("skipped: fusermount3 is missing (apt-get install fuse3)");
        return false;
    }
    true
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", text(&o));
    o
}

/// `sh -c CMD` in `dir`.
fn sh(dir: &Path, cmd: &str) -> Output {
    Command::new("sh")
        .args(["-c", cmd])
        .current_dir(dir)
        .env("PATH", path_env())
        .output()
        .unwrap()
}

/// `dmemu serve ARGS --run CMD` in `dir`, under a time limit.
fn serve(dir: &Path, args: &[&str], run: &str) -> Output {
    Command::new("timeout")
        .args(["-k", "5", LIMIT, bin(), "serve"])
        .args(args)
        .args(["--run", run])
        .current_dir(dir)
        .env("PATH", path_env())
        .output()
        .unwrap()
}

fn write_random(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, data).unwrap();
}

/// The FUSE file of a striped device reads as `dmemu read` of it (qemu-img compare), the
/// directory lists every device of a concise spec, and unaligned dd writes through the
/// file land as the same dd writes on a copy (cmp), including one crossing the stripes'
/// chunk boundary and one at an odd offset of the 4096-byte-sector crypt device.
#[test]
fn qemu_img_compare_and_unaligned_dd_writes() {
    if !fuse_here() || !have("qemu-img") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write_random(&d.join("a.img"), 1 << 20, 1);
    write_random(&d.join("b.img"), 1 << 20, 2);
    write_random(&d.join("c.img"), 1 << 20, 3);
    std::fs::create_dir(d.join("m")).unwrap();
    let spec = "s,,,rw,0 4096 striped 2 16 a.img 0 b.img 0;\
                c,,,rw,0 2048 crypt aes-xts-plain64 \
                000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f 0 c.img 0 \
                1 sector_size:4096";
    for dev in ["s", "c"] {
        ok(Command::new(bin())
            .args(["read", "--concise", spec, "--device", dev, "-o"])
            .arg(d.join(format!("{dev}.want")))
            .current_dir(d)
            .output()
            .unwrap());
    }
    let run = "set -e; ls m > listing; \
        qemu-img compare -f raw -F raw m/s s.want; \
        qemu-img compare -f raw -F raw m/c c.want; \
        for f in s c; do \
          printf 'unaligned-1' | dd of=m/$f bs=1 seek=8190 conv=notrunc status=none; \
          printf 'unaligned-1' | dd of=$f.want bs=1 seek=8190 conv=notrunc status=none; \
          head -c 70001 /dev/urandom > blob; \
          dd if=blob of=m/$f bs=70001 seek=7 oflag=seek_bytes conv=notrunc status=none; \
          dd if=blob of=$f.want bs=70001 seek=7 oflag=seek_bytes conv=notrunc status=none; \
          cmp m/$f $f.want; \
        done";
    let o = serve(d, &["--concise", spec, "--mount", "m"], run);
    ok(o);
    assert_eq!(
        std::fs::read_to_string(d.join("listing")).unwrap(),
        "c\ns\n"
    );
    // What was written reached the images: a fresh read matches the model again.
    for dev in ["s", "c"] {
        let got = ok(Command::new(bin())
            .args(["read", "--concise", spec, "--device", dev])
            .current_dir(d)
            .output()
            .unwrap());
        assert!(
            got.stdout == std::fs::read(d.join(format!("{dev}.want"))).unwrap(),
            "{dev} after the serve differs from the model"
        );
    }
}

/// Blocks (64 KiB, 128 sectors) thin_dump maps for device 0, as byte ranges, merged.
fn thin_dump_ranges(dir: &Path, meta: &str) -> Vec<(u64, u64)> {
    let o = ok(sh(dir, &format!("thin_dump {meta}")));
    let xml = String::from_utf8_lossy(&o.stdout).to_string();
    let attr = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!(" {name}=\""))? + name.len() + 3;
        line[at..].split('"').next()?.parse().ok()
    };
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for line in xml.lines() {
        let (start, len) = if line.contains("<single_mapping") {
            (attr(line, "origin_block").unwrap(), 1)
        } else if line.contains("<range_mapping") {
            (
                attr(line, "origin_begin").unwrap(),
                attr(line, "length").unwrap(),
            )
        } else {
            continue;
        };
        let (s, e) = (start * 65536, (start + len) * 65536);
        match ranges.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => ranges.push((s, e)),
        }
    }
    ranges
}

/// A thin volume in a pool dmemu made on sparse files: python's os.lseek SEEK_DATA /
/// SEEK_HOLE over the FUSE file finds exactly the blocks thin_dump maps; `fallocate
/// --punch-hole` of a mapped block unmaps it (thin_dump after stop) and it reads zeros;
/// thin_check accepts the metadata.
#[test]
fn seek_hole_matches_thin_mapping_and_punch_unmaps() {
    if !fuse_here() || !have("thin_dump") || !have("fallocate") || !have("python3") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(sh(
        d,
        "truncate -s 4M meta.img && truncate -s 64M data.img && mkdir m",
    ));
    let pool = "pool,,,rw,0 131072 thin-pool meta.img data.img 128 0 0";
    ok(Command::new(bin())
        .args(["message", "--concise", pool, "0", "create_thin", "0"])
        .current_dir(d)
        .output()
        .unwrap());
    let spec = format!("{pool};t0,,,rw,0 65536 thin pool 0");
    // Data at blocks 1, 2 (one write across both), 9 and 30.
    for (at, n) in [
        (100_352u64, 70_144u64),
        (9 * 65536 + 4096, 512),
        (30 * 65536 + 512, 512),
    ] {
        write_random(&d.join("piece"), n as usize, at);
        ok(Command::new(bin())
            .args(["write", "--concise", &spec, "--device", "t0", "-i", "piece"])
            .arg("--start")
            .arg((at / 512).to_string())
            .current_dir(d)
            .output()
            .unwrap());
    }
    let want = thin_dump_ranges(d, "meta.img");
    assert_eq!(
        want,
        vec![
            (65536, 3 * 65536),
            (9 * 65536, 10 * 65536),
            (30 * 65536, 31 * 65536)
        ]
    );
    let py = r#"
import os, sys
f = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(f).st_size
at, out = 0, []
while True:
    try:
        s = os.lseek(f, at, os.SEEK_DATA)
    except OSError:
        break
    e = os.lseek(f, s, os.SEEK_HOLE)
    out.append("%d %d" % (s, e))
    at = e
    if at >= size:
        break
print("\n".join(out))
"#;
    std::fs::write(d.join("seek.py"), py).unwrap();
    let run = "set -e; python3 seek.py m/t0 > before; \
        fallocate --punch-hole --keep-size -o $((9*65536)) -l 65536 m/t0; \
        python3 seek.py m/t0 > after; \
        dd if=m/t0 bs=65536 skip=9 count=1 status=none | cmp - /dev/zero -n 65536";
    ok(serve(
        d,
        &["--concise", &spec, "--device", "t0", "--mount", "m"],
        run,
    ));
    let lines =
        |v: &[(u64, u64)]| -> String { v.iter().map(|(s, e)| format!("{s} {e}\n")).collect() };
    assert_eq!(
        std::fs::read_to_string(d.join("before")).unwrap(),
        lines(&want)
    );
    let after = thin_dump_ranges(d, "meta.img");
    assert_eq!(after, vec![(65536, 3 * 65536), (30 * 65536, 31 * 65536)]);
    assert_eq!(
        std::fs::read_to_string(d.join("after")).unwrap(),
        lines(&after)
    );
    if have("thin_check") {
        ok(sh(d, "thin_check meta.img"));
    }
}

/// End to end on LUKS2: cryptsetup formats the image, dmemu serves its decrypted device
/// as a file, mkfs.ext4 makes a file system on it and debugfs -w copies files in; served
/// again read-only, e2fsck -fn finds it clean and debugfs reads the files back; the
/// read-only file refuses to open for writing.
#[test]
fn luks2_ext4_made_and_checked_through_the_fuse_file() {
    let tools = ["cryptsetup", "mkfs.ext4", "debugfs", "e2fsck"];
    if !fuse_here() || tools.iter().any(|t| !have(t)) {
        eprintln!("skipped unless {tools:?} are installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(sh(
        d,
        "truncate -s 40M l.img && printf secret > key && mkdir m && \
         cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
           --key-file key l.img && \
         head -c 300000 /dev/urandom > big && printf 'hello fuse\\n' > small",
    ));
    let table = ok(Command::new(bin())
        .args(["luks", "table", "l.img", "--key-file", "key", "--showkeys"])
        .current_dir(d)
        .output()
        .unwrap());
    std::fs::write(d.join("t.table"), &table.stdout).unwrap();
    let run = "set -e; mkfs.ext4 -q -F $file; \
        debugfs -w -R 'write big big' $file; debugfs -w -R 'write small small' $file; \
        debugfs -w -R 'mkdir dir' $file";
    ok(serve(d, &["--table", "t.table", "--mount", "m"], run));
    // The image is encrypted: the plain text is nowhere in it.
    let image = std::fs::read(d.join("l.img")).unwrap();
    assert!(!image.windows(10).any(|w| w == b"hello fuse"));
    let run = "set -e; e2fsck -fn $file; \
        debugfs -R 'dump big big.out' $file; debugfs -R 'cat small' $file > small.out; \
        if sh -c 'printf x >> m/dmemu' 2>/dev/null; then echo 'write opened'; exit 1; fi";
    ok(serve(
        d,
        &["--table", "t.table", "--read-only", "--mount", "m"],
        run,
    ));
    assert_eq!(
        std::fs::read(d.join("big.out")).unwrap(),
        std::fs::read(d.join("big")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(d.join("small.out")).unwrap(),
        "hello fuse\n"
    );
}

/// End to end on a thin volume of a pool dmemu made on sparse files: mkfs.ext4 and a first
/// file through the FUSE file; a snapshot (create_snap); a second file; then both volumes
/// served read-only: e2fsck -fn finds both clean, the origin has both files, the snapshot
/// only the first; thin_check accepts the metadata after every stop.
#[test]
fn thin_snapshot_between_two_writes_both_check_clean() {
    let tools = ["mkfs.ext4", "debugfs", "e2fsck", "thin_check"];
    if !fuse_here() || tools.iter().any(|t| !have(t)) {
        eprintln!("skipped unless {tools:?} are installed");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(sh(
        d,
        "truncate -s 4M meta.img && truncate -s 256M data.img && mkdir m && \
         printf 'first file\\n' > one && printf 'second file\\n' > two",
    ));
    let pool = "pool,,,rw,0 524288 thin-pool meta.img data.img 128 0 0";
    let message = |words: &[&str]| {
        ok(Command::new(bin())
            .args(["message", "--concise", pool, "0"])
            .args(words)
            .current_dir(d)
            .output()
            .unwrap());
    };
    message(&["create_thin", "0"]);
    let t0 = format!("{pool};t0,,,rw,0 131072 thin pool 0");
    ok(serve(
        d,
        &["--concise", &t0, "--device", "t0", "--mount", "m"],
        "set -e; mkfs.ext4 -q -F m/t0; debugfs -w -R 'write one one' m/t0",
    ));
    ok(sh(d, "thin_check meta.img"));
    message(&["create_snap", "1", "0"]);
    ok(serve(
        d,
        &["--concise", &t0, "--device", "t0", "--mount", "m"],
        "set -e; debugfs -w -R 'write two two' m/t0",
    ));
    ok(sh(d, "thin_check meta.img"));
    let both = format!("{t0};t1,,,ro,0 131072 thin pool 1");
    let run = "set -e; e2fsck -fn m/t0; e2fsck -fn m/t1; \
        debugfs -R 'cat one' m/t0 > t0.one; debugfs -R 'cat two' m/t0 > t0.two; \
        debugfs -R 'cat one' m/t1 > t1.one; debugfs -R 'stat two' m/t1 > t1.two 2>&1 || true";
    ok(serve(
        d,
        &["--concise", &both, "--read-only", "--mount", "m"],
        run,
    ));
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read("t0.one"), "first file\n");
    assert_eq!(read("t0.two"), "second file\n");
    assert_eq!(read("t1.one"), "first file\n");
    assert!(
        read("t1.two").contains("File not found"),
        "the snapshot has the second file: {}",
        read("t1.two")
    );
    ok(sh(d, "thin_check meta.img"));
}
