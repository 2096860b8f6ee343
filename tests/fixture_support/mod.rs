//! Helpers shared by the tests over kernel-made fixtures: gzip'd images, the guest's
//! `### tag` sections, the seq(1) text the guest scripts write, sha256 as sha256sum prints.
#![allow(dead_code)]

use std::io::Read;

use sha2::{Digest, Sha256};

/// The bytes of the gzip'd file at `path`.
pub(crate) fn gunzip_path(path: &str) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The lines of `### tag`'s section in the guest output at `path`, each with its newline.
pub(crate) fn section(path: &str, tag: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines().skip_while(|l| *l != format!("### {tag}"));
    lines
        .next()
        .unwrap_or_else(|| panic!("no ### {tag} in {path}"));
    lines
        .take_while(|l| !l.starts_with("### "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// seq(1) text from `first`, `len` bytes (what the guest scripts write).
pub(crate) fn seq(first: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = first;
    while out.len() < len {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

/// sha256 in hex, as sha256sum prints it.
pub(crate) fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
