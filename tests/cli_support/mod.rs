//! Running the `dmemu` binary from integration tests.

#![allow(unreachable_pub)]

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
