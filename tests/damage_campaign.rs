//! A damage campaign (issue 13): the shipped fixture images (LUKS1, LUKS2, verity hash
//! devices, thin and cache metadata, snapshot COWs) and the kernel-loaded tables, damaged
//! deterministically from a seed (bit flips, zeroed ranges, truncation, splices of another
//! fixture's bytes, one to three of them), each written to a file and given to dmemu's
//! parsers in-process: the LUKS header, dump and unlock (read-only, mapped), thin metadata
//! open, check and dump, cache metadata open and dump, the verity superblock, `verity
//! verify` and a verity target, persistent snapshot and snapshot-merge loads, table and
//! concise text, and the fuzz drivers of each format (which also build targets, read,
//! write and merge over in-memory copies).
//!
//! For every input: no panic (the parsers run on a thread whose panic is caught), no hang
//! (each input has 10 s, watched from the test thread), the input file has the same SHA-256
//! after as before, every error message the parsers returned has no raw control
//! character, and the process's peak resident memory (reset before each input through
//! /proc/self/clear_refs) grows by at most `MAX_INPUT_KIB`; the largest growth and its
//! input are printed.
//!
//! `DAMAGE_N` (default 150) inputs from `DAMAGE_SEED` (default 13); scripts/damage-campaign.sh
//! runs 20,000 by default.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use dmemu::luks::{KdfLimits, Luks};
use dmemu::testing::fuzz;
use dmemu::volume::{Access, FileVolume, SharedVolume};

/// What parses an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Luks,
    Thin,
    Cache,
    Verity,
    SnapshotCow,
    Table,
}

struct Fixture {
    name: String,
    kind: Kind,
    bytes: Vec<u8>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn gunzip(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(p).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn images(dir: &str, kind: Kind, keep: impl Fn(&str) -> bool) -> Vec<Fixture> {
    let mut v: Vec<Fixture> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".gz") && keep(&n)
        })
        .map(|p| Fixture {
            name: format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()),
            kind,
            bytes: gunzip(&p),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!v.is_empty(), "no fixtures in {dir}");
    v
}

/// The tables of the kernel corpus and grammar fixtures, one per case.
fn tables() -> Vec<Fixture> {
    let mut out = Vec::new();
    for f in ["corpus.txt", "grammar.txt"] {
        let text = std::fs::read_to_string(root().join("kernel-tables").join(f)).unwrap();
        let mut cur = String::new();
        for line in text.lines() {
            if let Some(l) = line.strip_prefix("@@input ") {
                cur.push_str(l);
                cur.push('\n');
            } else if !cur.is_empty() {
                out.push(Fixture {
                    name: format!("kernel-tables/{f}#{}", out.len()),
                    kind: Kind::Table,
                    bytes: std::mem::take(&mut cur).into_bytes(),
                });
            }
        }
    }
    out
}

fn fixtures() -> Vec<Fixture> {
    let mut v = Vec::new();
    v.extend(images("luks", Kind::Luks, |n| {
        n.starts_with("l1-") || n.starts_with("l2-")
    }));
    v.extend(images("luks/verdicts1", Kind::Luks, |_| true));
    v.extend(images("thin", Kind::Thin, |n| n.ends_with("-meta.img.gz")));
    v.extend(images("cache", Kind::Cache, |n| {
        n.ends_with("-meta.img.gz")
    }));
    v.extend(images("verity", Kind::Verity, |n| {
        n.starts_with("hash-") || n.starts_with("fec-")
    }));
    v.extend(images("snapshot", Kind::SnapshotCow, |n| n.contains("cow")));
    v.extend(tables());
    v
}

/// xorshift64*: the campaign's only source of choices, so a seed names the inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap()
    }
    /// A position in `len` bytes: half the time in the first 64 KiB (headers, superblocks,
    /// the first btree nodes), else anywhere.
    fn pos(&mut self, len: usize) -> usize {
        if self.next() & 1 == 0 {
            self.below(len.min(64 << 10))
        } else {
            self.below(len)
        }
    }
}

/// Damage `b` one to three times; returns what was done.
fn damage(rng: &mut Rng, b: &mut Vec<u8>, donors: &[Fixture]) -> String {
    let mut done = Vec::new();
    for _ in 0..1 + rng.below(3) {
        if b.is_empty() {
            break;
        }
        match rng.below(4) {
            0 => {
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    let at = rng.pos(b.len());
                    b[at] ^= 1 << rng.below(8);
                }
                done.push(format!("flip{n}"));
            }
            1 => {
                let at = rng.pos(b.len());
                let n = (1 + rng.below(4096)).min(b.len() - at);
                b[at..at + n].fill(0);
                done.push(format!("zero@{at}+{n}"));
            }
            2 => {
                let at = rng.pos(b.len());
                b.truncate(at);
                done.push(format!("cut@{at}"));
            }
            _ => {
                let d = &donors[rng.below(donors.len())].bytes;
                if d.is_empty() {
                    continue;
                }
                let from = rng.pos(d.len());
                let at = rng.pos(b.len());
                let n = (1 + rng.below(8192)).min(d.len() - from).min(b.len() - at);
                b[at..at + n].copy_from_slice(&d[from..from + n]);
                done.push(format!("splice@{at}+{n}"));
            }
        }
    }
    done.join(",")
}

fn limits() -> KdfLimits {
    // The fuzz drivers' limits: the fixtures' slots run, anything costlier is refused.
    KdfLimits {
        max_memory_kib: 64,
        max_iterations: 2000,
        max_argon2_work: 256,
        max_total_work: 50_000,
    }
}

fn note<T>(errors: &mut Vec<String>, r: dmemu::Result<T>) -> Option<T> {
    r.map_err(|e| errors.push(e.chain())).ok()
}

/// Run the parsers of `kind` on the file `path` (holding `bytes`); the errors they returned.
fn parse(kind: Kind, path: &Path, bytes: &[u8]) -> Vec<String> {
    let mut errors = Vec::new();
    let ro = || -> dmemu::Result<SharedVolume> {
        Ok(Arc::new(FileVolume::open(path, Access::ReadOnly)?) as SharedVolume)
    };
    match kind {
        Kind::Luks => {
            if let Some(l) = note(&mut errors, Luks::open_path(path, None, Access::ReadOnly)) {
                let _ = l.dump("IMAGE");
                note(&mut errors, l.unlock(b"wrong", None, &limits()));
                if let Some(k) = note(&mut errors, l.unlock(b"alpha", None, &limits())) {
                    note(
                        &mut errors,
                        l.table_line(&k, "IMAGE", dmemu::Keys::Hidden, false),
                    );
                }
            }
            fuzz::luks1_header(bytes);
            let mut two = vec![3u8];
            two.extend_from_slice(&bytes[..bytes.len().min(1 << 20)]);
            fuzz::luks2_header(&two);
        }
        Kind::Thin => {
            if let Some(v) = note(&mut errors, ro()) {
                use dmemu::targets::thin::metadata::Metadata;
                if let Some(md) = note(&mut errors, Metadata::open(v)) {
                    note(&mut errors, md.check());
                    note(&mut errors, md.dump_xml());
                }
            }
        }
        Kind::Cache => {
            if let Some(v) = note(&mut errors, ro()) {
                use dmemu::targets::cache::metadata::Metadata;
                use dmemu::targets::pdata::block::MetaDev;
                if let Some(md) = note(&mut errors, Metadata::open(&MetaDev::new(v))) {
                    let _ = md.dump_xml();
                }
            }
            let mut with_flags = vec![0u8];
            with_flags.extend_from_slice(bytes);
            fuzz::cache_metadata(&with_flags);
        }
        Kind::Verity => {
            if let Some(v) = note(&mut errors, ro()) {
                use dmemu::targets::verity::format::read_superblock;
                note(&mut errors, read_superblock(&*v, 0));
            }
            // The driver: a 32-byte root (not the image's: verification fails, the walk
            // and the reads still run), the image as the hash device.
            let mut input = vec![32u8];
            input.extend_from_slice(&[0x5a; 32]);
            input.extend_from_slice(bytes);
            fuzz::verity_tree(&input);
        }
        Kind::SnapshotCow => {
            for pick in [0u8, 3, 4] {
                let mut input = vec![pick];
                input.extend_from_slice(&bytes[..bytes.len().min(4 << 20)]);
                fuzz::snapshot_cow(&input);
            }
        }
        Kind::Table => {
            note(&mut errors, dmemu::table::parse_table(bytes));
            if let Ok(text) = std::str::from_utf8(bytes) {
                note(&mut errors, dmemu::table::parse_concise(text));
            }
            fuzz::table_text(bytes);
            fuzz::concise_text(bytes);
        }
    }
    errors
}

fn sha256(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

/// Peak resident memory since the last reset, and the resident memory now, in KiB
/// (`/proc/self/status` VmHWM and VmRSS); writing 5 to `/proc/self/clear_refs` resets the
/// peak to the current size. `None` where the kernel offers neither.
fn resident_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What one damaged input may add to the resident memory: far above what any parser needs
/// for these fixtures (the largest is a few MiB), far below what a size read from a
/// damaged field could ask for.
const MAX_INPUT_KIB: u64 = 256 << 10;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn damaged_fixtures_never_panic_hang_modify_their_input_or_print_control_bytes() {
    let n = env_or("DAMAGE_N", 150);
    let seed = env_or("DAMAGE_SEED", 13);
    let fx = Arc::new(fixtures());
    let kinds: std::collections::BTreeSet<Kind> = fx.iter().map(|f| f.kind).collect();
    assert_eq!(kinds.len(), 6, "{kinds:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut per_kind = std::collections::BTreeMap::<Kind, (u64, u64)>::new();
    // The largest growth of resident memory one input caused, and which input.
    let mut most = (0u64, String::new());
    for i in 0..n {
        // Every kind in turn, then a fixture of that kind.
        let kind = *kinds
            .iter()
            .nth(usize::try_from(i).unwrap() % kinds.len())
            .unwrap();
        let of_kind: Vec<&Fixture> = fx.iter().filter(|f| f.kind == kind).collect();
        let f = of_kind[rng.below(of_kind.len())];
        let mut bytes = f.bytes.clone();
        let what = damage(&mut rng, &mut bytes, &fx);
        let path = dir.path().join(format!("input-{i}"));
        std::fs::write(&path, &bytes).unwrap();
        let before = sha256(&path);
        let base = reset_peak().then(resident_kib).flatten();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let bytes = Arc::new(bytes);
        let b = Arc::clone(&bytes);
        std::thread::Builder::new()
            .name(format!("input-{i}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(|| parse(kind, &p, &b));
                let _ = tx.send(r.map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                }));
            })
            .unwrap();
        let label = format!("#{i} {} [{what}]", f.name);
        match rx.recv_timeout(Duration::from_secs(10)) {
            Err(_) => {
                // The thread cannot be stopped: report and end the campaign here.
                failures.push(format!("{label}: no answer within 10 s (hang)"));
                break;
            }
            Ok(Err(panic)) => failures.push(format!("{label}: panicked: {panic}")),
            Ok(Ok(errors)) => {
                if let (Some((_, rss)), Some((peak, _))) = (base, resident_kib()) {
                    let grew = peak.saturating_sub(rss);
                    if grew > most.0 {
                        most = (grew, label.clone());
                    }
                    if grew > MAX_INPUT_KIB {
                        failures.push(format!("{label}: resident memory grew by {grew} KiB"));
                    }
                }
                let e = per_kind.entry(kind).or_default();
                e.0 += 1;
                e.1 += u64::from(!errors.is_empty());
                for m in errors {
                    if m.chars().any(char::is_control) {
                        failures.push(format!("{label}: raw control character in {m:?}"));
                    }
                }
            }
        }
        if sha256(&path) != before {
            failures.push(format!("{label}: the input file changed"));
        }
        std::fs::remove_file(&path).unwrap();
    }
    println!(
        "damage campaign: {n} inputs, seed {seed}, {:.1} s, {} failures; per kind (inputs, \
         with errors): {per_kind:?}; most resident memory one input added: {} KiB ({})",
        started.elapsed().as_secs_f64(),
        failures.len(),
        most.0,
        most.1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
