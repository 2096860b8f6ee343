//! Running the `dmemu` binary from integration tests.

#![allow(unreachable_pub, dead_code)] // each test binary uses a part

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Run `dmemu ARGS` with `stdin` on its standard input; its exit status and output.
pub fn dmemu(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmemu"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Decompress the fixture `tests/fixtures/<rel>.gz` into `dir`; the path written.
pub fn unpack_fixture(dir: &std::path::Path, rel: &str) -> std::path::PathBuf {
    use std::io::Read;
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{rel}.gz"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&src).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    let name = std::path::Path::new(rel).file_name().unwrap();
    let p = dir.join(name);
    std::fs::write(&p, out).unwrap();
    p
}
