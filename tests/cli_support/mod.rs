//! Running the `dmemu` binary from integration tests.

#![allow(unreachable_pub, dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Start `dmemu ARGS` in `dir` with its standard streams piped.
pub fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Run `dmemu ARGS` in `dir` with `stdin` on its standard input; its exit status and
/// output. A run that exits before reading all of `stdin` (a refused command) is fine.
pub fn dmemu_in(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = spawn(dir, args);
    match child.stdin.take().unwrap().write_all(stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    child.wait_with_output().unwrap()
}

/// Run `dmemu ARGS` in the current directory with `stdin` on its standard input.
pub fn dmemu(args: &[&str], stdin: &[u8]) -> Output {
    dmemu_in(Path::new("."), args, stdin)
}

/// The bytes of the fixture `tests/fixtures/<rel>.gz`, decompressed.
pub fn fixture_bytes(rel: &str) -> Vec<u8> {
    use std::io::Read;
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{rel}.gz"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&src).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Decompress the fixture `tests/fixtures/<rel>.gz` into `dir`; the path written.
pub fn unpack_fixture(dir: &std::path::Path, rel: &str) -> std::path::PathBuf {
    let out = fixture_bytes(rel);
    let name = std::path::Path::new(rel).file_name().unwrap();
    let p = dir.join(name);
    std::fs::write(&p, out).unwrap();
    p
}
