//! Image locks between two real `dmemu` processes: while one holds a thin pool, a snapshot
//! COW store, a plain image or a LUKS image (a `dmemu shell` that has answered a command,
//! so its devices are built and its files open), a second process that would write it, or
//! read what the first writes, exits with EBUSY (16) naming the file, and the image's bytes
//! are unchanged; two readers share it; once the first exits the second succeeds.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Output};

use sha2::{Digest, Sha256};

mod cli_support;
use cli_support::{dmemu_in, spawn};

/// dmemu's exit status for EBUSY.
const EBUSY: i32 = 16;

/// A `dmemu shell` that keeps its devices (and so its image locks) until dropped.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    /// Start `dmemu shell ARGS` in `dir` and wait for its answer to `status`: the devices
    /// are built, so every image it uses is open and locked.
    fn start(dir: &Path, args: &[&str]) -> Holder {
        let mut child = spawn(dir, &[&["shell"], args].concat());
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Holder {
            child,
            stdin,
            stdout,
        };
        let reply = h.command("status");
        assert!(!reply.is_empty(), "shell {args:?} ended: {}", h.stderr());
        h
    }

    /// Send one shell command and return its first reply line.
    fn command(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        assert!(!reply.starts_with("error"), "{line}: {reply}");
        reply
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(e) = self.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Close the shell's input and wait for it to exit successfully.
    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "shell: {}", self.stderr());
    }
}

fn ok(o: &Output) -> Vec<u8> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout.clone()
}

/// `o` failed with EBUSY, and its message names `file` and says it is in use.
fn assert_busy(o: &Output, file: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(EBUSY), "{err}");
    assert!(err.contains(file), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
}

fn sha256_file(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// The hashes of `files` in `dir`.
fn hashes(dir: &Path, files: &[&str]) -> Vec<Vec<u8>> {
    files.iter().map(|f| sha256_file(&dir.join(f))).collect()
}

fn sparse(dir: &Path, name: &str, len: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    p
}

const POOL: &str = "pool,,,rw,0 131072 thin-pool meta.img data.img 128 0";

fn thin(id: u32) -> String {
    format!("{POOL};t{id},,,rw,0 8192 thin /dev/mapper/pool {id}")
}

/// A pool (4 MiB metadata, 64 MiB data) with thins 0 and 1.
fn pool(dir: &Path) {
    sparse(dir, "meta.img", 4 << 20);
    sparse(dir, "data.img", 64 << 20);
    for id in ["0", "1"] {
        ok(&dmemu_in(
            dir,
            &["message", "--concise", POOL, "0", "create_thin", id],
            b"",
        ));
    }
}

#[test]
fn second_process_writing_another_thin_of_a_held_pool_gets_ebusy_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    pool(d.path());
    let mut a = Holder::start(d.path(), &["--concise", &thin(0)]);
    a.command("write 0 2048 171");
    a.command("flush");
    let before = hashes(d.path(), &["meta.img", "data.img"]);
    let data1 = vec![0x5a; 1 << 20];
    let b = dmemu_in(d.path(), &["write", "--concise", &thin(1)], &data1);
    assert_busy(&b, "meta.img");
    // A reader of the pool's metadata is refused too: it would read what A is changing.
    assert_busy(
        &dmemu_in(d.path(), &["thin", "ls", "meta.img"], b""),
        "meta.img",
    );
    assert_eq!(hashes(d.path(), &["meta.img", "data.img"]), before);
    a.finish();
    ok(&dmemu_in(
        d.path(),
        &["write", "--concise", &thin(1)],
        &data1,
    ));
    let read = |id| ok(&dmemu_in(d.path(), &["read", "--concise", &thin(id)], b""));
    let t0 = read(0);
    assert_eq!(&t0[..1 << 20], &vec![171; 1 << 20][..]);
    assert_eq!(&read(1)[..1 << 20], &data1[..]);
    let ls = String::from_utf8(ok(&dmemu_in(d.path(), &["thin", "ls", "meta.img"], b""))).unwrap();
    assert!(ls.contains("data blocks 32/1024 used"), "{ls}");
}

#[test]
fn second_process_on_a_held_snapshot_cow_store_gets_ebusy_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    sparse(d.path(), "origin.img", 1 << 20);
    sparse(d.path(), "cow.img", 1 << 20);
    std::fs::write(
        d.path().join("s.table"),
        "0 2048 snapshot origin.img cow.img P 8\n",
    )
    .unwrap();
    let mut a = Holder::start(d.path(), &["--table", "s.table"]);
    a.command("write 8 8 66");
    a.command("flush");
    let files = ["origin.img", "cow.img"];
    let before = hashes(d.path(), &files);
    let b = dmemu_in(d.path(), &["write", "--table", "s.table"], &[1; 4096]);
    assert_busy(&b, "origin.img");
    // The COW store alone, read-only: refused while A writes it.
    std::fs::write(d.path().join("cow.table"), "0 2048 linear cow.img 0\n").unwrap();
    let b = dmemu_in(
        d.path(),
        &["read", "--read-only", "--table", "cow.table"],
        b"",
    );
    assert_busy(&b, "cow.img");
    assert_eq!(hashes(d.path(), &files), before);
    a.finish();
    let b = ok(&dmemu_in(
        d.path(),
        &["write", "--table", "s.table"],
        &[1; 4096],
    ));
    assert!(b.is_empty());
    let snap = ok(&dmemu_in(d.path(), &["read", "--table", "s.table"], b""));
    let mut want = vec![0u8; 1 << 20];
    want[..4096].fill(1);
    want[4096..8192].fill(66);
    assert_eq!(snap, want);
}

#[test]
fn plain_image_one_writer_or_many_readers() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("disk.img"), vec![9u8; 1 << 20]).unwrap();
    std::fs::write(d.path().join("t"), "0 2048 linear disk.img 0\n").unwrap();
    let before = hashes(d.path(), &["disk.img"]);

    // A reader: other readers share the image, a writer is refused.
    let reader = Holder::start(d.path(), &["--read-only", "--table", "t"]);
    let r = ok(&dmemu_in(
        d.path(),
        &["read", "--read-only", "--table", "t"],
        b"",
    ));
    assert_eq!(r, vec![9u8; 1 << 20]);
    // `read` opens read-only without being told: it never writes.
    let r = ok(&dmemu_in(d.path(), &["read", "--table", "t"], b""));
    assert_eq!(r, vec![9u8; 1 << 20]);
    assert_busy(
        &dmemu_in(d.path(), &["write", "--table", "t"], &[1; 512]),
        "disk.img",
    );
    assert_eq!(hashes(d.path(), &["disk.img"]), before);
    reader.finish();

    // A writer: readers and writers are refused.
    let writer = Holder::start(d.path(), &["--table", "t"]);
    assert_busy(
        &dmemu_in(d.path(), &["read", "--read-only", "--table", "t"], b""),
        "disk.img",
    );
    assert_busy(
        &dmemu_in(d.path(), &["write", "--table", "t"], &[1; 512]),
        "disk.img",
    );
    assert_eq!(hashes(d.path(), &["disk.img"]), before);
    writer.finish();

    ok(&dmemu_in(d.path(), &["write", "--table", "t"], &[1; 512]));
    let mut want = vec![9u8; 1 << 20];
    want[..512].fill(1);
    assert_eq!(std::fs::read(d.path().join("disk.img")).unwrap(), want);
}

fn luks_image(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luks/l1-xts256.img.gz");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    let p = dir.join("l1.img");
    std::fs::write(&p, out).unwrap();
    p
}

#[test]
fn luks_commands_respect_the_lock_of_another_process() {
    let d = tempfile::tempdir().unwrap();
    let img = luks_image(d.path());
    let path = img.to_str().unwrap();
    // The image's sectors through a linear table: 2162688 bytes.
    std::fs::write(d.path().join("t"), format!("0 4224 linear {path} 0\n")).unwrap();
    let before = sha256_file(&img);
    let plain = ok(&dmemu_in(d.path(), &["luks", "read", path], b"alpha\n"));

    let reader = Holder::start(d.path(), &["--read-only", "--table", "t"]);
    assert_eq!(
        ok(&dmemu_in(d.path(), &["luks", "read", path], b"alpha\n")),
        plain
    );
    assert_busy(
        &dmemu_in(
            d.path(),
            &["luks", "write", path, "-i", "/dev/null"],
            b"alpha\n",
        ),
        path,
    );
    reader.finish();

    let writer = Holder::start(d.path(), &["--table", "t"]);
    assert_busy(
        &dmemu_in(d.path(), &["luks", "read", path], b"alpha\n"),
        path,
    );
    assert_busy(&dmemu_in(d.path(), &["luks", "dump", path], b""), path);
    let data = d.path().join("data");
    std::fs::write(&data, vec![0xee; 4096]).unwrap();
    let w = ["luks", "write", path, "-i", data.to_str().unwrap()];
    assert_busy(&dmemu_in(d.path(), &w, b"alpha\n"), path);
    assert_eq!(sha256_file(&img), before);
    writer.finish();

    ok(&dmemu_in(d.path(), &w, b"alpha\n"));
    let after = ok(&dmemu_in(d.path(), &["luks", "read", path], b"alpha\n"));
    assert_eq!(&after[..4096], &vec![0xee; 4096][..]);
    assert_eq!(&after[4096..], &plain[4096..]);
}

#[test]
fn read_output_onto_an_image_in_use_is_refused_before_truncating_it() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("disk.img"), vec![3u8; 1 << 20]).unwrap();
    std::fs::write(d.path().join("other.img"), vec![4u8; 4096]).unwrap();
    std::fs::write(d.path().join("t"), "0 2048 linear disk.img 0\n").unwrap();
    std::fs::write(d.path().join("o"), "0 8 linear other.img 0\n").unwrap();
    let before = hashes(d.path(), &["disk.img"]);
    let a = Holder::start(d.path(), &["--table", "t"]);
    let b = dmemu_in(
        d.path(),
        &["read", "--read-only", "--table", "o", "-o", "disk.img"],
        b"",
    );
    assert_busy(&b, "disk.img");
    assert_eq!(hashes(d.path(), &["disk.img"]), before);
    a.finish();
}

/// The `Root hash:` line of `verity format` output.
fn root_hash(out: &[u8]) -> String {
    let text = String::from_utf8(out.to_vec()).unwrap();
    let line = text.lines().find(|l| l.starts_with("Root hash:")).unwrap();
    line.split_whitespace().last().unwrap().to_string()
}

#[test]
fn verity_format_with_the_tree_on_the_data_image_opens_it_once() {
    let d = tempfile::tempdir().unwrap();
    let mut img = vec![0u8; 2 << 20];
    img[..1 << 20].fill(0x42);
    std::fs::write(d.path().join("v.img"), img).unwrap();
    let opts = [
        "--hash-offset",
        "1048576",
        "--data-blocks",
        "256",
        "--salt",
        "-",
    ];
    let args = [&["verity", "format", "v.img", "v.img"][..], &opts].concat();
    let root = root_hash(&ok(&dmemu_in(d.path(), &args, b"")));
    let args = [&["verity", "verify", "v.img", "v.img", &root][..], &opts].concat();
    ok(&dmemu_in(d.path(), &args, b""));
}

#[test]
fn verity_format_into_a_hash_image_in_use_is_refused_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("data.img"), vec![0x42; 1 << 20]).unwrap();
    std::fs::write(d.path().join("hash.img"), vec![7; 1 << 16]).unwrap();
    std::fs::write(d.path().join("t"), "0 128 linear hash.img 0\n").unwrap();
    let before = hashes(d.path(), &["hash.img"]);
    let a = Holder::start(d.path(), &["--read-only", "--table", "t"]);
    let b = dmemu_in(d.path(), &["verity", "format", "data.img", "hash.img"], b"");
    assert_busy(&b, "hash.img");
    assert_eq!(hashes(d.path(), &["hash.img"]), before);
    a.finish();
}

/// In one process, the same image opened by two registries (and as a read-only mapping) is
/// one handle: no EBUSY, and a write through one device is what the others read.
#[test]
fn one_process_opening_an_image_twice_shares_it() {
    use dmemu::table::parse_concise;
    use dmemu::{MmapVolume, Registry, Sector, Volume};
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let spec = parse_concise(&format!("a,,,rw,0 2048 linear {} 0", img.display())).unwrap();
    let (r1, r2) = (Registry::new(), Registry::new());
    let a = r1.create(&spec[0]).unwrap();
    let b = r2.create(&spec[0]).unwrap();
    let map = MmapVolume::open(&img).unwrap();
    a.write(Sector(8), &[0xab; 512]).unwrap();
    let mut back = [0u8; 512];
    b.read(Sector(8), &mut back).unwrap();
    assert_eq!(back, [0xab; 512]);
    map.read(Sector(8), &mut back).unwrap();
    assert_eq!(back, [0xab; 512]);
    // Another process is refused while this one holds it, and let in once all are dropped.
    std::fs::write(d.path().join("t"), "0 2048 linear disk.img 0\n").unwrap();
    let read = ["read", "--read-only", "--table", "t", "--sectors", "1"];
    assert_busy(&dmemu_in(d.path(), &read, b""), "disk.img");
    drop((a, b, map, r1, r2));
    assert_eq!(ok(&dmemu_in(d.path(), &read, b"")), vec![0u8; 512]);
}
