//! Shared helpers for the thin tests: the fixtures in tests/fixtures/thin (made by make.sh
//! and the make-*.sh scripts there in the 6.12 oracle VM) and sha256 of a volume as
//! `sha256sum` prints it.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use dmemu::{Sector, Volume};
use sha2::{Digest, Sha256};

/// The fixture directory.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/thin")
}

/// A gunzipped fixture file.
pub fn gunzip(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixtures().join(name)).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The `KIND NAME REST` lines of a fixture text file, as NAME -> REST.
pub fn lines(file: &str, kind: &str) -> BTreeMap<String, String> {
    std::fs::read_to_string(fixtures().join(file))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, v) = l.strip_prefix(kind)?.strip_prefix(' ')?.split_once(' ')?;
            Some((name.to_string(), v.to_string()))
        })
        .collect()
}

/// kernel.txt (what the kernel printed in kernel.guest.sh): `KIND NAME REST` lines.
pub fn kernel(kind: &str) -> BTreeMap<String, String> {
    lines("kernel.txt", kind)
}

/// sha256 of the whole of `v`, in hex.
pub fn sha256_of(v: &dyn Volume) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    let total = v.size().0;
    let mut at = 0;
    while at < total {
        let n = (total - at).min(2048);
        let b = &mut buf[..usize::try_from(n * 512).unwrap()];
        v.read(Sector(at), b).unwrap();
        h.update(&*b);
        at += n;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
