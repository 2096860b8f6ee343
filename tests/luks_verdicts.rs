//! dmemu's `luks dump` verdict (accept or refuse) on damaged LUKS2 headers equals
//! cryptsetup 2.6.1's `luksDump` verdict, recorded by tests/fixtures/luks/verdicts/make.py
//! in verdicts.tsv next to each damaged image.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use dmemu::luks::Luks;
use dmemu::{MemVolume, SharedVolume};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luks/verdicts")
}

fn image(name: &str) -> SharedVolume {
    let f = std::fs::File::open(dir().join(format!("{name}.img.gz"))).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    Arc::new(MemVolume::from_bytes(out).unwrap())
}

/// (case, cryptsetup accepted, cryptsetup's first error line and its --debug reason).
fn verdicts() -> Vec<(String, bool, String)> {
    std::fs::read_to_string(dir().join("verdicts.tsv"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let name = f.next().unwrap().to_string();
            let status: i32 = f.next().unwrap().parse().unwrap();
            let first = f.next().unwrap_or("");
            let debug = f.next().unwrap_or("");
            (name, status == 0, format!("{first} ({debug})"))
        })
        .collect()
}

#[test]
fn dump_accepts_exactly_where_cryptsetup_accepts() {
    let cases = verdicts();
    assert!(cases.len() >= 25, "{}", cases.len());
    assert!(cases.iter().any(|c| c.1) && cases.iter().any(|c| !c.1));
    let mut differ = Vec::new();
    for (name, accepted, why) in &cases {
        let got = Luks::open(image(name), None).map(|l| l.dump("IMAGE"));
        match (&got, accepted) {
            (Ok(_), true) | (Err(_), false) => {}
            (Ok(_), false) => differ.push(format!("{name}: dmemu accepts, cryptsetup: {why}")),
            (Err(e), true) => differ.push(format!("{name}: cryptsetup accepts, dmemu: {e}")),
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
