//! `dmemu serve` against real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy and libnbd
//! (nbdsh's Python module) scripts in tests/nbd_clients/. Every client and server runs
//! under `timeout`, in captive mode (`--run`) or against an in-process `Server`, so no test
//! outlives its bound and every socket is removed. .ci/run installs the clients.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use dmemu::serve::{Endpoint, Export, Exports, Listen, Server};
use dmemu::{MemVolume, Registry, Sector, SectorCount, SharedVolume, TableMode};

/// Longest a served session or one client may run, in seconds.
const LIMIT: &str = "120";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dmemu")
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nbd_clients")
}

/// Distribution Python first: libnbd's module is installed for it (nbdsh runs `python3`).
fn path_env() -> String {
    format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default())
}

fn need(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .env("PATH", path_env())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} not found: apt-get install libnbd-bin python3-libnbd nbdkit qemu-utils"
    );
}

/// `dmemu serve ARGS --run CMD` under a time limit, from `dir`.
fn serve(dir: &Path, args: &[&str], run: &str, env: &[(&str, &str)]) -> Output {
    Command::new("timeout")
        .args(["-k", "5", LIMIT, bin(), "serve"])
        .args(args)
        .args(["--run", run])
        .current_dir(dir)
        .env("PATH", path_env())
        .env("SCRIPTS", scripts())
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `serve` with CMD = the libnbd script tests/nbd_clients/SCRIPT (env prefixed by
/// `env_prefix`, shell words that may use the captive variables); it must print `ok`.
fn serve_script(dir: &Path, args: &[&str], env_prefix: &str, script: &str, env: &[(&str, &str)]) {
    let run = format!("{env_prefix} nbdsh -c \"exec(open('$SCRIPTS/{script}').read())\"");
    let o = serve(dir, args, &run, env);
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ok"),
        "{}",
        text(&o)
    );
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", text(o));
}

/// `dmemu read` of the spec's default device.
fn dmemu_read(dir: &Path, args: &[&str]) -> Vec<u8> {
    let o = Command::new(bin())
        .arg("read")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert_ok(&o);
    o.stdout
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                   202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

/// Two exports, a linear device and a crypt device with 4096-byte sectors over another part
/// of the same file; both read by qemu-img exactly as `dmemu read` reads them.
#[test]
fn qemu_img_info_convert_compare_match_dmemu_read() {
    need("qemu-img");
    let d = tmp();
    std::fs::write(d.path().join("a.img"), random_bytes(8 << 20, 1)).unwrap();
    let concise = format!(
        "lin,,,rw,0 8192 linear a.img 0;cr,,,rw,0 8192 crypt aes-xts-plain64 {KEY} 0 a.img 8192 1 sector_size:4096"
    );
    let spec = ["--concise", concise.as_str()];
    let lin = dmemu_read(d.path(), &["--concise", &concise, "--device", "lin"]);
    let cr = dmemu_read(d.path(), &spec);
    std::fs::write(d.path().join("cr.ref"), &cr).unwrap();
    let run = r#"set -e
        qemu-img info --output=json "nbd+unix:///lin?socket=$unixsocket" > lin.json
        qemu-img convert -f raw -O raw "nbd+unix:///lin?socket=$unixsocket" lin.out
        qemu-img convert -f raw -O raw "$uri" cr.out
        qemu-img compare -f raw -F raw "$uri" cr.ref"#;
    let o = serve(d.path(), &spec, run, &[]);
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let uris: Vec<&str> = stdout.lines().filter(|l| l.starts_with("nbd")).collect();
    assert_eq!(uris.len(), 2, "{}", text(&o));
    assert!(
        uris[0].starts_with("nbd+unix:///lin?socket=")
            && uris[1].starts_with("nbd+unix:///cr?socket="),
        "{}",
        text(&o)
    );
    let info = std::fs::read_to_string(d.path().join("lin.json")).unwrap();
    assert!(info.contains("\"virtual-size\": 4194304"), "{info}");
    assert_eq!(std::fs::read(d.path().join("lin.out")).unwrap(), lin);
    assert_eq!(std::fs::read(d.path().join("cr.out")).unwrap(), cr);
    // Every socket and the scratch directory are gone.
    let socket = uris[0].rsplit_once("socket=").unwrap().1;
    assert!(!Path::new(socket).exists(), "{socket} left behind");
}

/// qemu-io pattern writes, zeroes and discards land in the image file as written.
#[test]
fn qemu_io_patterns_zeroes_and_discard_reach_the_file() {
    need("qemu-io");
    let d = tmp();
    let image = d.path().join("a.img");
    let orig = random_bytes(4 << 20, 2);
    std::fs::write(&image, &orig).unwrap();
    let run = r#"qemu-io -f raw "$uri" \
        -c 'write -P 0x5a 0 64k' -c 'read -P 0x5a 0 64k' \
        -c 'write -z 64k 64k' -c 'read -P 0 64k 64k' \
        -c 'discard 1M 128k' \
        -c 'write -P 0x11 131585 1000' -c 'read -P 0x11 131585 1000' \
        -c 'write -P 0x22 -f 3M 4k' -c 'flush'"#;
    std::fs::write(d.path().join("t"), "0 8192 linear a.img 0\n").unwrap();
    let o = serve(d.path(), &["--table", "t"], run, &[]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("failed"), "{}", text(&o));
    let file = std::fs::read(&image).unwrap();
    let mut want = orig;
    want[..64 << 10].fill(0x5a);
    want[64 << 10..128 << 10].fill(0);
    want[1 << 20..(1 << 20) + (128 << 10)].fill(0); // FileVolume punches a hole
    want[131_585..132_585].fill(0x11);
    want[3 << 20..(3 << 20) + 4096].fill(0x22);
    assert!(file == want, "image differs from the writes qemu-io made");
}

/// Unaligned reads and writes by a client that did not ask for block sizes, on a crypt
/// device with 4096-byte sectors: served by read-modify-write, checked by `dmemu read`.
#[test]
fn libnbd_unaligned_io_on_4k_crypt_matches_dmemu_read() {
    need("nbdsh");
    let d = tmp();
    std::fs::write(d.path().join("a.img"), random_bytes(1 << 20, 3)).unwrap();
    let table = format!("0 2048 crypt aes-xts-plain64 {KEY} 0 a.img 0 1 sector_size:4096\n");
    std::fs::write(d.path().join("t"), table).unwrap();
    let before = dmemu_read(d.path(), &["--table", "t"]);
    std::fs::write(d.path().join("ref"), &before).unwrap();
    serve_script(
        d.path(),
        &["--table", "t"],
        "",
        "unaligned.py",
        &[("REF", "ref"), ("OUT", "want")],
    );
    let want = std::fs::read(d.path().join("want")).unwrap();
    assert_ne!(want, before);
    assert!(
        dmemu_read(d.path(), &["--table", "t"]) == want,
        "device differs from the client's writes"
    );
}

/// A read crossing into a flakey line that is down reaches libnbd as data up to the line
/// and an EIO error chunk at its first byte; the connection serves the next read.
#[test]
fn libnbd_read_crossing_flakey_down_window_fails_at_its_offset() {
    need("nbdsh");
    let d = tmp();
    std::fs::write(d.path().join("a.img"), random_bytes(1 << 20, 4)).unwrap();
    let table = "0 1024 linear a.img 0\n1024 1024 flakey a.img 1024 0 600 1 error_reads\n";
    std::fs::write(d.path().join("t"), table).unwrap();
    serve_script(
        d.path(),
        &["--table", "t"],
        "",
        "flakey_read.py",
        &[("BOUNDARY", "524288"), ("IMAGE", "a.img")],
    );
}

/// Trim of 4 GiB − 512, past-the-end errors, refused fast zero, two connections flushing,
/// a read-only export refusing writes, listing and an option the server refuses.
#[test]
fn libnbd_corner_cases() {
    need("nbdsh");
    let d = tmp();
    let big = std::fs::File::create(d.path().join("big.img")).unwrap();
    big.set_len(5 << 30).unwrap();
    std::fs::write(d.path().join("small.img"), random_bytes(64 << 10, 5)).unwrap();
    let concise = format!(
        "ro,,,ro,0 128 linear small.img 0;big,,,rw,0 {} linear big.img 0",
        5u64 << 21
    );
    serve_script(
        d.path(),
        &["--concise", &concise],
        "ro_uri=\"nbd+unix:///ro?socket=$unixsocket\" IMAGE=big.img",
        "corner.py",
        &[],
    );
}

/// nbdcopy into the device and back out over TCP; nbdinfo sees the export as it is.
#[test]
fn nbdcopy_in_and_out_over_tcp() {
    need("nbdcopy");
    need("nbdinfo");
    let d = tmp();
    std::fs::write(d.path().join("a.img"), vec![0u8; 6 << 20]).unwrap();
    std::fs::write(d.path().join("src"), random_bytes(6 << 20, 6)).unwrap();
    std::fs::write(d.path().join("t"), "0 12288 linear a.img 0\n").unwrap();
    let run = r#"set -e
        nbdinfo --json "$uri" > info.json
        nbdcopy src "$uri"
        nbdcopy --connections=4 "$uri" out"#;
    let o = serve(
        d.path(),
        &["--table", "t", "--nbd", "tcp:127.0.0.1:0"],
        run,
        &[],
    );
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("nbd://127.0.0.1:"),
        "{}",
        text(&o)
    );
    let src = std::fs::read(d.path().join("src")).unwrap();
    assert!(std::fs::read(d.path().join("out")).unwrap() == src);
    assert!(std::fs::read(d.path().join("a.img")).unwrap() == src);
    let info = std::fs::read_to_string(d.path().join("info.json")).unwrap();
    assert!(info.contains("\"export-size\": 6291456"), "{info}");
    assert!(info.contains("\"can_multi_conn\": true"), "{info}");
}

/// nbdinfo --map of a sparse file through dmemu equals nbdkit's map of the same file.
#[test]
fn nbdinfo_map_of_sparse_file_matches_nbdkit_file() {
    need("nbdinfo");
    need("nbdkit");
    let d = tmp();
    let f = std::fs::File::create(d.path().join("s.img")).unwrap();
    f.set_len(16 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[1u8; 1 << 20], 2 << 20).unwrap();
    f.write_all_at(&[2u8; 64 << 10], 9 << 20).unwrap();
    f.sync_all().unwrap();
    std::fs::write(d.path().join("t"), "0 32768 linear s.img 0\n").unwrap();
    let o = serve(
        d.path(),
        &["--table", "t"],
        r#"nbdinfo --map "$uri" > ours"#,
        &[],
    );
    assert_ok(&o);
    let o = Command::new("timeout")
        .args([
            "-k",
            "5",
            LIMIT,
            "nbdkit",
            "-U",
            "-",
            "file",
            "s.img",
            "--run",
            "nbdinfo --map \"$uri\" > theirs",
        ])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_ok(&o);
    let ours = std::fs::read_to_string(d.path().join("ours")).unwrap();
    let theirs = std::fs::read_to_string(d.path().join("theirs")).unwrap();
    assert!(theirs.contains("hole"), "nbdkit saw no hole: {theirs}");
    assert_eq!(ours, theirs);
}

/// An in-process server over a dust device: a read covering a bad block fails with EIO in
/// qemu-io, the next read on the same connection succeeds, and writing the block clears it.
#[test]
fn qemu_io_gets_eio_at_dust_bad_block_without_disconnect() {
    need("qemu-io");
    let d = tmp();
    let registry = Registry::new();
    let mem: SharedVolume = Arc::new(MemVolume::new(SectorCount(2048)).unwrap());
    mem.write(Sector(0), &random_bytes(1 << 20, 7)).unwrap();
    registry.insert_volume("mem", mem);
    let table = dmemu::table::parse_table(b"0 2048 dust mem 0 512\n").unwrap();
    let dev = registry
        .create(&dmemu::table::DeviceSpec {
            name: "dusty".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table,
        })
        .unwrap();
    dev.message(Sector(0), &["addbadblock", "9"]).unwrap();
    dev.message(Sector(0), &["enable"]).unwrap();
    let export = Export::new("dusty", Arc::clone(&dev) as SharedVolume);
    let exports = Exports::new(vec![Arc::new(export)]).unwrap();
    let sock = d.path().join("s");
    let server = Server::start(exports, &[Listen::Unix(sock.clone())]).unwrap();
    let uri = server.endpoints()[0].uri("dusty");
    assert!(matches!(server.endpoints()[0], Endpoint::Unix(_)));
    let o = Command::new("timeout")
        .args(["-k", "5", LIMIT, "qemu-io", "-f", "raw", &uri])
        .args(["-c", "read 0 4k", "-c", "read 4k 4k", "-c", "read 8k 4k"])
        .args([
            "-c",
            "write -P 0x33 4608 512",
            "-c",
            "read -P 0x33 4608 512",
        ])
        .output()
        .unwrap();
    server.stop().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("read") || l.contains("failed"))
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("read 4096/4096 bytes at offset 0"),
        "{out}"
    );
    assert!(
        lines[1].contains("read failed: Input/output error"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("read 4096/4096 bytes at offset 8192"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("read 512/512 bytes at offset 4608"),
        "{out}"
    );
    assert!(out.contains("wrote 512/512 bytes at offset 4608"), "{out}");
    assert!(!sock.exists());
}

/// The fuzz driver over its seed corpus (fuzz/make_nbd_seeds.py), as CI's fuzz run starts.
#[test]
fn fuzz_seed_corpus_nbd_session_runs_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/nbd_session");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        dmemu::testing::fuzz::nbd_session(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n >= 6, "seed corpus missing");
}

/// Without --run: the server prints its URI, serves until SIGTERM, then exits 0 with the
/// client's write in the image and its socket removed.
#[test]
fn sigterm_stops_the_server_cleanly() {
    use std::io::BufRead;
    need("qemu-io");
    let d = tmp();
    std::fs::write(d.path().join("a.img"), vec![0u8; 1 << 20]).unwrap();
    std::fs::write(d.path().join("t"), "0 2048 linear a.img 0\n").unwrap();
    let sock = d.path().join("s.sock");
    let listen = format!("unix:{}", sock.display());
    let mut server = Command::new("timeout")
        .args([
            "-k",
            "5",
            LIMIT,
            bin(),
            "serve",
            "--table",
            "t",
            "--nbd",
            &listen,
        ])
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let uri = line.trim_end();
    assert_eq!(uri, format!("nbd+unix:///dmemu?socket={}", sock.display()));
    let o = Command::new("timeout")
        .args([
            "-k",
            "5",
            LIMIT,
            "qemu-io",
            "-f",
            "raw",
            uri,
            "-c",
            "write -P 0x77 4096 8192",
        ])
        .output()
        .unwrap();
    assert_ok(&o);
    // `timeout` passes SIGTERM on to dmemu.
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket left behind");
    let img = std::fs::read(d.path().join("a.img")).unwrap();
    assert!(img[4096..12288].iter().all(|&b| b == 0x77) && img[..4096].iter().all(|&b| b == 0));
}

/// Socket activation: systemd-socket-activate listens, starts `dmemu serve` (no `--nbd`) on
/// the first connection with the socket as fd 3 (LISTEN_FDS), and qemu-img reads the device
/// through it. The socket file is the activator's and stays.
#[test]
fn socket_activated_server_serves_the_inherited_socket() {
    need("systemd-socket-activate");
    need("qemu-img");
    let d = tmp();
    std::fs::write(d.path().join("a.img"), random_bytes(1 << 20, 8)).unwrap();
    std::fs::write(d.path().join("t"), "0 2048 linear a.img 0\n").unwrap();
    let sock = d.path().join("act.sock");
    let mut server = Command::new("timeout")
        .args(["-k", "5", LIMIT, "systemd-socket-activate", "-l"])
        .arg(&sock)
        .args([bin(), "serve", "--table", "t"])
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !sock.exists() {
        assert!(server.try_wait().unwrap().is_none(), "activator exited");
        std::thread::yield_now();
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let o = Command::new("timeout")
        .args([
            "-k", "5", LIMIT, "qemu-img", "compare", "-f", "raw", "-F", "raw", &uri, "a.img",
        ])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_ok(&o);
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim_end(),
        format!("nbd+unix:///dmemu?socket={}", sock.display())
    );
    assert!(sock.exists(), "the activator's socket was removed");
}

/// Structured reads send OFFSET_HOLE chunks for a sparse image's holes (as the file system's
/// SEEK_HOLE finds them) and one data chunk when the client says "don't fragment".
#[test]
fn libnbd_structured_reads_get_hole_chunks_where_the_image_has_holes() {
    need("nbdsh");
    let d = tmp();
    let image = d.path().join("sparse.img");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&random_bytes(8192, 5), 0).unwrap();
        f.write_all_at(&random_bytes(4096, 6), 2 << 20).unwrap();
    }
    std::fs::write(d.path().join("t"), "0 8192 linear sparse.img 0\n").unwrap();
    let image = image.display().to_string();
    serve_script(
        d.path(),
        &["--table", "t"],
        "",
        "holes.py",
        &[("IMAGE", &image)],
    );
}

/// `dmemu luks serve`: a LUKS2 image cryptsetup made, unlocked and served; nbdinfo sees the
/// decrypted size and qemu-img compare finds the export equal to `dmemu luks read`; a write
/// through qemu-io lands in the decrypted volume.
#[test]
fn luks_serve_matches_luks_read() {
    need("nbdinfo");
    let found = Command::new("sh")
        .args(["-c", "command -v cryptsetup"])
        .env("PATH", format!("/usr/sbin:/sbin:{}", path_env()))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: cryptsetup is missing (apt-get install cryptsetup-bin)");
        return;
    }
    let d = tmp();
    let dir = d.path();
    let setup = Command::new("sh")
        .args([
            "-c",
            "truncate -s 24M l.img && printf secret > key && \
             cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
               --key-file key l.img",
        ])
        .current_dir(dir)
        .env("PATH", format!("/usr/sbin:/sbin:{}", path_env()))
        .output()
        .unwrap();
    assert_ok(&setup);
    std::fs::write(dir.join("data"), random_bytes(1 << 20, 9)).unwrap();
    let luks = |args: &[&str]| {
        let o = Command::new(bin())
            .arg("luks")
            .args(args)
            .args(["--key-file", "key"])
            .current_dir(dir)
            .output()
            .unwrap();
        assert_ok(&o);
        o
    };
    luks(&["write", "l.img", "-i", "data"]);
    let want = luks(&["read", "l.img"]).stdout;
    std::fs::write(dir.join("want"), &want).unwrap();
    let run = "set -e; nbdinfo --size \"$uri\" > size; \
        qemu-img compare -f raw -F raw \"$uri\" want; \
        qemu-io -f raw -c 'write -P 0x5a 4096 8192' \"$uri\" > /dev/null";
    let o = Command::new("timeout")
        .args([
            "-k",
            "5",
            LIMIT,
            bin(),
            "luks",
            "serve",
            "l.img",
            "--key-file",
            "key",
        ])
        .args(["--run", run])
        .current_dir(dir)
        .env("PATH", path_env())
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nbd+unix:///l.img?socket="),
        "{}",
        text(&o)
    );
    let size: usize = std::fs::read_to_string(dir.join("size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(size, want.len());
    let after = luks(&["read", "l.img"]).stdout;
    let mut model = want;
    model[4096..12288].fill(0x5a);
    assert!(after == model, "the qemu-io write did not land as written");
}
