//! dmemu's `luks dump` verdict (accept or refuse) on damaged LUKS2 headers equals
//! cryptsetup 2.6.1's `luksDump` verdict, recorded by tests/fixtures/luks/verdicts/make.py
//! in verdicts.tsv next to each damaged image, a dump prints luksDump's bytes
//! (dumps.json.gz) and an unlock fails as `cryptsetup open --test-passphrase` does; and on damaged LUKS1 headers
//! (tests/fixtures/luks/verdicts1/make.py) dmemu's dump and unlock verdicts equal
//! `cryptsetup luksDump`'s and `cryptsetup open --test-passphrase`'s, a dump prints the same
//! bytes, and a refusal names the slot cryptsetup names and the field.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use dmemu::luks::Luks;
use dmemu::{MemVolume, SharedVolume};
use sha2::Digest;

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

/// One LUKS2 case of verdicts.tsv: cryptsetup luksDump's exit status, first error line
/// and --debug reason; for the cases it dumps, `open --test-passphrase`'s exit status and
/// first line.
struct Luks2Case {
    name: String,
    accepted: bool,
    why: String,
    open_rc: Option<i32>,
    open_err: String,
}

fn verdicts() -> Vec<Luks2Case> {
    std::fs::read_to_string(dir().join("verdicts.tsv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or("");
            let status: i32 = f[1].parse().unwrap();
            Luks2Case {
                name: f[0].to_string(),
                accepted: status == 0,
                why: format!("{} ({})", field(2), field(3)),
                open_rc: f.get(4).map(|s| s.parse().unwrap()),
                open_err: field(5).to_string(),
            }
        })
        .collect()
}

/// cryptsetup luksDump's output for each case it accepts (make.py's dumps.json.gz).
fn dumps() -> std::collections::BTreeMap<String, String> {
    let f = std::fs::File::open(dir().join("dumps.json.gz")).unwrap();
    serde_json::from_reader(flate2::read::GzDecoder::new(f)).unwrap()
}

/// cryptsetup's exit status for an unlock: 0 opened, 2 no key (EPERM), another code for
/// any other failure (1 EINVAL, 3 ENOMEM...).
fn unlock_class(r: &dmemu::Result<dmemu::luks::VolumeKey>) -> &'static str {
    match r {
        Ok(_) => "opened",
        Err(dmemu::Error::KeyRejected(_)) => "no key",
        Err(_) => "other error",
    }
}

fn rc_class(rc: i32) -> &'static str {
    match rc {
        0 => "opened",
        2 => "no key",
        _ => "other error",
    }
}

#[test]
fn luks2_verdicts_dumps_and_unlocks_equal_cryptsetups() {
    let cases = verdicts();
    let dumps = dumps();
    assert!(cases.len() >= 60, "{}", cases.len());
    assert!(cases.iter().any(|c| c.accepted) && cases.iter().any(|c| !c.accepted));
    assert_eq!(
        dumps.len(),
        cases.iter().filter(|c| c.accepted).count(),
        "one dump per accepted case"
    );
    let mut differ = Vec::new();
    for c in &cases {
        let got = Luks::open(image(&c.name), None);
        match (&got, c.accepted) {
            (Ok(l), true) => {
                let dump = l.dump("IMAGE");
                if dump != dumps[&c.name] {
                    differ.push(format!(
                        "{}: the dump differs from luksDump's:\n{dump}\n--- cryptsetup:\n{}",
                        c.name, dumps[&c.name]
                    ));
                }
                // Key material is zeroed: "no key" is the best a usable slot gives.
                let opened = l.unlock(b"alpha", None, &dmemu::luks::KdfLimits::default());
                let want = rc_class(c.open_rc.unwrap());
                if unlock_class(&opened) != want {
                    differ.push(format!(
                        "{}: cryptsetup open --test-passphrase: {want} ({}), dmemu: {:?}",
                        c.name,
                        c.open_err,
                        opened.map(|_| "opened").map_err(|e| e.to_string())
                    ));
                }
            }
            (Err(_), false) => {}
            (Ok(_), false) => {
                differ.push(format!("{}: dmemu accepts, cryptsetup: {}", c.name, c.why))
            }
            (Err(e), true) => differ.push(format!("{}: cryptsetup accepts, dmemu: {e}", c.name)),
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// One LUKS1 case of tests/fixtures/luks/verdicts1/verdicts.tsv (written by make.py there).
struct Luks1Case {
    name: String,
    size: usize,
    patches: String,
    field: String,
    dump_rc: i32,
    dump_err: String,
    dump_why: String,
    open_rc: i32,
    open_err: String,
    /// SHA-256 of cryptsetup luksDump's output (image path IMAGE), when it printed one.
    dump_sha256: String,
}

fn luks1_cases() -> Vec<Luks1Case> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luks/verdicts1");
    std::fs::read_to_string(d.join("verdicts.tsv"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 10, "{l}");
            Luks1Case {
                name: f[0].into(),
                size: f[1].parse().unwrap(),
                patches: f[2].into(),
                field: f[3].into(),
                dump_rc: f[4].parse().unwrap(),
                dump_err: f[5].into(),
                dump_why: f[6].into(),
                open_rc: f[7].parse().unwrap(),
                open_err: f[8].into(),
                dump_sha256: f[9].into(),
            }
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The case's device: base.img.gz with the case's patches, cut or zero-extended to its size.
fn luks1_image(c: &Luks1Case) -> SharedVolume {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/luks/verdicts1");
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(d.join("base.img.gz")).unwrap())
        .read_to_end(&mut data)
        .unwrap();
    if c.patches != "-" {
        for p in c.patches.split(',') {
            let (at, bytes) = p.split_once('=').unwrap();
            let (at, bytes) = match at.split_once('*') {
                Some((at, n)) => (at, vec![hex(bytes)[0]; n.parse().unwrap()]),
                None => (at, hex(bytes)),
            };
            let at: usize = at.parse().unwrap();
            data[at..at + bytes.len()].copy_from_slice(&bytes);
        }
    }
    data.resize(c.size, 0);
    Arc::new(MemVolume::from_bytes(data).unwrap())
}

/// cryptsetup's "LUKS keyslot N is invalid." names slot N.
fn named_slot(err: &str) -> Option<&str> {
    err.strip_prefix("LUKS keyslot ")?
        .strip_suffix(" is invalid.")
}

#[test]
fn luks1_dump_and_unlock_verdicts_equal_cryptsetups() {
    let cases = luks1_cases();
    assert!(cases.len() >= 25, "{}", cases.len());
    assert!(cases.iter().any(|c| c.dump_rc == 0) && cases.iter().any(|c| c.dump_rc != 0));
    assert!(cases.iter().any(|c| c.open_rc == 2));
    let mut differ = Vec::new();
    for c in &cases {
        let why = format!("{} ({})", c.dump_err, c.dump_why);
        let got = Luks::open(luks1_image(c), None);
        match (&got, c.dump_rc == 0) {
            (Ok(l), true) => {
                assert_eq!(l.version(), 1, "{}", c.name);
                let dump = l.dump("IMAGE");
                let got = sha2::Sha256::digest(dump.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>();
                if got != c.dump_sha256 {
                    differ.push(format!(
                        "{}: the dump differs from luksDump's:\n{dump}",
                        c.name
                    ));
                }
            }
            (Err(e), false) => {
                let e = e.to_string();
                if let Some(n) = named_slot(&c.dump_err) {
                    if !e.contains(&format!("key slot {n}:")) {
                        differ.push(format!(
                            "{}: cryptsetup names slot {n} ({why}), dmemu: {e}",
                            c.name
                        ));
                    }
                }
                if !e.contains(&c.field) {
                    differ.push(format!(
                        "{}: the error does not name {}: {e}",
                        c.name, c.field
                    ));
                }
                if c.open_rc == 0 {
                    differ.push(format!("{}: inconsistent fixture", c.name));
                }
            }
            (Ok(_), false) => differ.push(format!("{}: dmemu accepts, cryptsetup: {why}", c.name)),
            (Err(e), true) => differ.push(format!("{}: cryptsetup accepts, dmemu: {e}", c.name)),
        }
        let Ok(l) = got else { continue };
        // cryptsetup open --test-passphrase: 0 opened, 2 no key (EPERM), 1 anything else.
        let opened = l.unlock(b"alpha", None, &dmemu::luks::KdfLimits::default());
        let class = match &opened {
            Ok(_) => 0,
            Err(dmemu::Error::KeyRejected(_)) => 2,
            Err(_) => 1,
        };
        if class != c.open_rc {
            differ.push(format!(
                "{}: cryptsetup open exits {} ({}), dmemu: {:?}",
                c.name,
                c.open_rc,
                c.open_err,
                opened.map(|_| "opened").map_err(|e| e.to_string())
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
