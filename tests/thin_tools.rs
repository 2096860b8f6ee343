//! The thin metadata toolbox against thin-provisioning-tools 0.9, run in the test: restore,
//! dump, delta, rmap, ls, metadata-size and repair print and write what the 0.9 tools do on
//! pools made from generated XML (several devices, a snapshot chain sharing most mappings,
//! thousands of mappings); extract, `delta --data` and trim are checked against
//! `dmemu read` of the thin volumes, thin_delta's own answer, and SEEK_HOLE.
//!
//! Each test needs the 0.9 tools it compares with; where one is missing the test prints
//! what it skips and returns.
//!
//! Where dmemu does not follow 0.9, and why (docs/design.md, "The thin toolbox"):
//! - errors go to stderr as `dmemu: ...` with dmemu's exit codes (22, EINVAL) and the 0.9
//!   message inside; `thin metadata-size -V` prints dmemu's version;
//! - repair scans the device for btree nodes when the superblock's roots are gone, as
//!   thin-provisioning-tools 1.x does (0.9's thin_repair gives up), so it keeps mappings
//!   0.9 loses;
//! - thin_trim 0.9 refuses anything but a block device; dmemu punches holes in an image.

mod cli_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cli_support::dmemu;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether the 0.9 tool `name` runs here; says so when it does not.
fn have(name: &str) -> bool {
    let ok = Command::new(name).arg("-V").output().is_ok();
    if !ok {
        println!("skipped: {name} (thin-provisioning-tools 0.9) is not installed");
    }
    ok
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(name).args(args).output().unwrap()
}

/// A tool's stdout, asserting it succeeded.
fn ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// dmemu's stdout, asserting it succeeded.
fn ours(args: &[&str]) -> String {
    let out = dmemu(args, b"");
    assert!(
        out.status.success(),
        "dmemu {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `got == want`, showing the first line that differs when not.
#[track_caller]
fn same(got: &str, want: &str, what: &str) {
    if got != want {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let i = g
            .iter()
            .zip(&w)
            .position(|(a, b)| a != b)
            .unwrap_or(g.len().min(w.len()));
        panic!(
            "{what}: line {}: got {:?}, want {:?} ({} vs {} lines)",
            i + 1,
            g.get(i),
            w.get(i),
            g.len(),
            w.len()
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- generated pools ----

/// xorshift64*: the same pools on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A device: transaction, creation and snapshot time, mappings virtual -> (data, time).
#[derive(Clone, Default)]
struct Dev {
    transaction: u64,
    ctime: u32,
    stime: u32,
    maps: BTreeMap<u64, (u64, u32)>,
}

struct Pool {
    time: u32,
    transaction: u64,
    block_size: u32,
    nr_data: u64,
    devs: BTreeMap<u64, Dev>,
}

impl Pool {
    /// Device 1 with `base` mappings in runs and gaps; a chain of `snaps` snapshots, each of
    /// the one before, remapping some blocks and adding some; a device of single mappings
    /// (every other block); an empty device. `slack` free data blocks are left at the end.
    fn generate(seed: u64, base: u64, snaps: u64, slack: u64) -> Pool {
        let mut rng = Rng(seed | 1);
        let (mut v, mut d) = (0, 0);
        let mut dev = Dev::default();
        while (dev.maps.len() as u64) < base {
            let n = 1 + rng.below(40);
            for i in 0..n {
                dev.maps.insert(v + i, (d + i, 0));
            }
            v += n + rng.below(30);
            d += n + rng.below(4);
        }
        let mut devs = BTreeMap::new();
        devs.insert(1, dev.clone());
        for s in 1..=snaps {
            let t = u32::try_from(s).unwrap();
            let mut next = dev.clone();
            next.transaction = s;
            next.ctime = t;
            next.stime = t;
            let keys: Vec<u64> = next.maps.keys().copied().collect();
            for _ in 0..base / 20 {
                let k = keys[usize::try_from(rng.below(keys.len() as u64)).unwrap()];
                next.maps.insert(k, (d, t));
                d += 1;
            }
            for i in 0..base / 50 {
                next.maps.insert(v + i, (d, t));
                d += 1;
            }
            v += base / 50 + 3;
            devs.insert(1 + s, next.clone());
            dev = next;
        }
        let t = u32::try_from(snaps).unwrap();
        let singles = Dev {
            transaction: 7,
            ctime: t,
            stime: t,
            maps: (0..base / 10).map(|i| (2 * i, (d + 2 * i, t))).collect(),
        };
        d += 2 * (base / 10);
        devs.insert(40, singles);
        devs.insert(
            41,
            Dev {
                transaction: 8,
                ..Dev::default()
            },
        );
        Pool {
            time: t,
            transaction: 9,
            block_size: 128,
            nr_data: d + slack,
            devs,
        }
    }

    /// The pool as thin_dump 0.9 prints it.
    fn xml(&self) -> String {
        let mut out = format!(
            "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" flags=\"0\" version=\"2\" \
             data_block_size=\"{}\" nr_data_blocks=\"{}\">\n",
            self.time, self.transaction, self.block_size, self.nr_data
        );
        for (id, dev) in &self.devs {
            let _ = writeln!(
                out,
                "  <device dev_id=\"{id}\" mapped_blocks=\"{}\" transaction=\"{}\" \
                 creation_time=\"{}\" snap_time=\"{}\">",
                dev.maps.len(),
                dev.transaction,
                dev.ctime,
                dev.stime
            );
            let mut run: Option<(u64, u64, u32, u64)> = None;
            let emit = |out: &mut String, r: Option<(u64, u64, u32, u64)>| match r {
                Some((o, b, t, 1)) => {
                    let _ = writeln!(
                        out,
                        "    <single_mapping origin_block=\"{o}\" data_block=\"{b}\" time=\"{t}\"/>"
                    );
                }
                Some((o, b, t, n)) => {
                    let _ = writeln!(
                        out,
                        "    <range_mapping origin_begin=\"{o}\" data_begin=\"{b}\" length=\"{n}\" time=\"{t}\"/>"
                    );
                }
                None => {}
            };
            for (&k, &(b, t)) in &dev.maps {
                match &mut run {
                    Some((o, rb, rt, n)) if k == *o + *n && b == *rb + *n && t == *rt => *n += 1,
                    _ => {
                        emit(&mut out, run);
                        run = Some((k, b, t, 1));
                    }
                }
            }
            emit(&mut out, run);
            out.push_str("  </device>\n");
        }
        out.push_str("</superblock>\n");
        out
    }

    /// Data blocks some device maps.
    fn used(&self) -> BTreeSet<u64> {
        self.devs
            .values()
            .flat_map(|d| d.maps.values().map(|&(b, _)| b))
            .collect()
    }
}

/// Every (device, virtual block, data block, time) an XML dump holds.
fn mappings(xml: &str) -> BTreeSet<(u64, u64, u64, u64)> {
    let attr = |l: &str, name: &str| -> u64 {
        let at = l.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
        l[at..].split('"').next().unwrap().parse().unwrap()
    };
    let mut out = BTreeSet::new();
    let mut dev = 0;
    for l in xml.lines() {
        if l.contains("<device ") {
            dev = attr(l, "dev_id");
        } else if l.contains("<single_mapping ") {
            out.insert((
                dev,
                attr(l, "origin_block"),
                attr(l, "data_block"),
                attr(l, "time"),
            ));
        } else if l.contains("<range_mapping ") {
            let (o, b, n, t) = (
                attr(l, "origin_begin"),
                attr(l, "data_begin"),
                attr(l, "length"),
                attr(l, "time"),
            );
            out.extend((0..n).map(|i| (dev, o + i, b + i, t)));
        }
    }
    out
}

/// A fresh file of `bytes` (zeros, sparse).
fn blank(path: &Path, bytes: u64) -> PathBuf {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
    path.to_path_buf()
}

/// `xml` restored by thin_restore 0.9 into a new 8 MiB metadata file `name`.
fn restored_by_thin_restore(dir: &Path, name: &str, xml: &str) -> PathBuf {
    let x = dir.join(format!("{name}.xml"));
    std::fs::write(&x, xml).unwrap();
    let m = blank(&dir.join(name), 8 << 20);
    ok("thin_restore", &["-q", "-i", s(&x), "-o", s(&m)]);
    m
}

/// thin_check passes `meta`; its stdout (TRANSACTION_ID, METADATA_FREE_BLOCKS).
fn thin_check(meta: &Path) -> String {
    let out = run("thin_check", &[s(meta)]);
    assert!(
        out.status.success(),
        "thin_check {}: {}{}",
        meta.display(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn tools_here(names: &[&str]) -> bool {
    names.iter().all(|n| have(n))
}

// ---- restore and dump ----

#[test]
fn restore_and_dump_match_thin_restore_and_thin_dump() {
    if !tools_here(&["thin_restore", "thin_dump", "thin_check"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (seed, base, snaps) in [(1, 3000, 5), (2, 300, 12), (3, 1, 1)] {
        let xml = Pool::generate(seed, base, snaps, 100).xml();
        let x = tmp.path().join("in.xml");
        std::fs::write(&x, &xml).unwrap();
        // dmemu's restore: thin_check clean, thin_dump gives the input back.
        let mine = blank(&tmp.path().join("mine"), 8 << 20);
        assert_eq!(
            ours(&["thin", "restore", "-q", "-i", s(&x), "-o", s(&mine)]),
            ""
        );
        let checked = thin_check(&mine);
        // From a pipe (held whole: it cannot be read twice): the same bytes.
        let piped = blank(&tmp.path().join("piped"), 8 << 20);
        let args = ["thin", "restore", "-q", "-i", "/dev/stdin", "-o", s(&piped)];
        let got = dmemu(&args, xml.as_bytes());
        assert!(got.status.success(), "{}", text(&got.stderr));
        assert!(
            std::fs::read(&piped).unwrap() == std::fs::read(&mine).unwrap(),
            "seed {seed}: restore from a pipe"
        );
        same(&ok("thin_dump", &[s(&mine)]), &xml, &format!("seed {seed}"));
        // thin_restore's: dmemu's dump is thin_dump's, which is the input.
        let theirs = restored_by_thin_restore(tmp.path(), "theirs", &xml);
        assert_eq!(
            thin_check(&theirs),
            checked,
            "thin_check's counts, seed {seed}"
        );
        same(
            &ours(&["thin", "dump", s(&theirs)]),
            &xml,
            &format!("seed {seed}"),
        );
    }
}

#[test]
fn restore_overrides_are_thin_restores() {
    if !tools_here(&["thin_restore", "thin_dump"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let xml = Pool::generate(4, 500, 2, 1000).xml();
    let x = tmp.path().join("in.xml");
    std::fs::write(&x, &xml).unwrap();
    let opts = [
        "--transaction-id",
        "77",
        "--data-block-size",
        "256",
        "--nr-data-blocks",
        "99999",
    ];
    let (a, b) = (
        blank(&tmp.path().join("a"), 8 << 20),
        blank(&tmp.path().join("b"), 8 << 20),
    );
    let mut args = vec!["thin", "restore", "-q", "-i", s(&x), "-o", s(&a)];
    args.extend(opts);
    ours(&args);
    let mut args = vec!["-q", "-i", s(&x), "-o", s(&b)];
    args.extend(opts);
    ok("thin_restore", &args);
    let want = ok("thin_dump", &[s(&b)]);
    assert!(want.contains("transaction=\"77\"") && want.contains("nr_data_blocks=\"99999\""));
    same(&ok("thin_dump", &[s(&a)]), &want, "overrides");
}

// ---- delta, rmap, ls ----

/// A pool restored by thin_restore and, on a copy, a metadata snapshot held by dmemu's
/// pool (`reserve_metadata_snap`) before more snapshots and writes.
fn pools(dir: &Path) -> (Pool, PathBuf, PathBuf) {
    use std::sync::Arc;

    use dmemu::table::args::Args;
    use dmemu::targets::{Target, Thin, ThinPool, ThinPoolArgs};
    use dmemu::{Access, FileVolume, Sector, SectorCount, SharedVolume, Volume};

    let pool = Pool::generate(5, 2500, 4, 4000);
    let live = restored_by_thin_restore(dir, "live", &pool.xml());
    let held = dir.join("held");
    std::fs::copy(&live, &held).unwrap();
    let data_len = SectorCount(pool.nr_data * u64::from(pool.block_size));
    let data = blank(&dir.join("held-data"), data_len.bytes());
    let tokens: Vec<String> = ["m", "d", "128", "0"].map(str::to_string).to_vec();
    let args = ThinPoolArgs::parse(&mut Args::new(&tokens)).unwrap();
    let meta: SharedVolume = Arc::new(FileVolume::open(&held, Access::ReadWrite).unwrap());
    let data: SharedVolume = Arc::new(FileVolume::open(&data, Access::ReadWrite).unwrap());
    let p = Arc::new(ThinPool::over(&args, data_len, meta, data).unwrap());
    p.message(&["reserve_metadata_snap"]).unwrap();
    p.message(&["create_snap", "50", "5"]).unwrap();
    let t = Thin::over(p.clone(), 5, SectorCount(1 << 24), None).unwrap();
    for i in 0..300u64 {
        t.write(Sector(i * 7 * 128), &[9; 512]).unwrap();
    }
    p.message(&["delete", "2"]).unwrap();
    drop(t);
    p.commit().unwrap();
    drop(p);
    (pool, live, held)
}

#[test]
fn delta_rmap_and_ls_print_what_the_09_tools_print() {
    if !tools_here(&[
        "thin_restore",
        "thin_delta",
        "thin_rmap",
        "thin_ls",
        "thin_dump",
    ]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pool, live, held) = pools(tmp.path());
    if let Ok(d) = std::env::var("THIN_TOOLS_KEEP") {
        std::fs::copy(&held, Path::new(&d).join("held")).unwrap();
        std::fs::copy(&live, Path::new(&d).join("live")).unwrap();
    }
    assert!(ok("thin_dump", &["-m", s(&held)]).contains("dev_id=\"2\""));
    let fields = "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,\
                  EXCLUSIVE_SECTORS,SHARED_SECTORS,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,\
                  MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME";
    let ids: Vec<String> = pool.devs.keys().map(u64::to_string).collect();
    let mut compared = 0;
    for (meta, snap) in [(&live, None), (&held, Some("-m")), (&held, None)] {
        let m = s(meta);
        // delta: every ordered pair of a few devices, terse and verbose.
        for a in ["1", "3", "5", "40", "41"] {
            for b in &ids {
                if snap.is_none() && meta == &held && b == "2" {
                    continue; // deleted after the metadata snapshot
                }
                for verbose in [false, true] {
                    let mut args: Vec<&str> = snap.into_iter().collect();
                    if verbose {
                        args.push("--verbose");
                    }
                    args.extend(["--snap1", a, "--snap2", b, m]);
                    let want = ok("thin_delta", &args);
                    let mut mine = vec!["thin", "delta"];
                    mine.extend(&args);
                    same(&ours(&mine), &want, &format!("thin_delta {args:?}"));
                    compared += 1;
                }
            }
        }
        // ls: every field, headers or not.
        for extra in [
            vec!["-o", fields],
            vec!["--no-headers", "-o", fields],
            vec!["-o", "DEV,MAPPED"],
        ] {
            let mut args: Vec<&str> = snap.into_iter().collect();
            args.extend(extra);
            args.push(m);
            let want = ok("thin_ls", &args);
            let mut mine = vec!["thin", "ls"];
            mine.extend(&args);
            same(&ours(&mine), &want, &format!("thin_ls {args:?}"));
        }
    }
    // The metadata snapshot named by its block.
    let sb = ok("thin_delta", &["--snap1", "1", "--snap2", "3", s(&held)]);
    let at = sb
        .split("metadata_snap=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let opt = format!("--metadata-snap={at}");
    let args = [
        opt.as_str(),
        "--verbose",
        "--snap1",
        "1",
        "--snap2",
        "2",
        s(&held),
    ];
    let mut mine = vec!["thin", "delta"];
    mine.extend(args);
    same(
        &ours(&mine),
        &ok("thin_delta", &args),
        "--metadata-snap=BLOCK",
    );
    assert!(compared > 100);
    // rmap: regions over shared, exclusive, free and past-the-end blocks, and several.
    let n = pool.nr_data;
    let regions: Vec<Vec<String>> = vec![
        vec![format!("0..{n}")],
        vec!["0..1".into()],
        vec!["100..900".into(), "5000..5600".into(), "3..7".into()],
        vec![format!("{}..{}", n - 10, n + 10)],
        vec![format!("{}..{}", n / 2, n / 2 + 1)],
    ];
    for meta in [&live, &held] {
        for r in &regions {
            let mut args = Vec::new();
            for x in r {
                args.extend(["--region", x.as_str()]);
            }
            args.push(s(meta));
            let want = ok("thin_rmap", &args);
            let mut mine = vec!["thin", "rmap"];
            mine.extend(&args);
            same(&ours(&mine), &want, &format!("thin_rmap {args:?}"));
        }
    }
}

#[test]
fn delta_and_rmap_refuse_what_the_09_tools_refuse() {
    if !tools_here(&["thin_restore", "thin_delta", "thin_rmap"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let meta = restored_by_thin_restore(tmp.path(), "m", &Pool::generate(6, 50, 1, 0).xml());
    let m = s(&meta);
    let cases: [(&str, Vec<&str>); 5] = [
        ("thin_delta", vec!["--snap1", "1", "--snap2", "9", m]),
        ("thin_delta", vec!["--snap1", "9", "--snap2", "1", m]),
        ("thin_delta", vec!["-m", "--snap1", "1", "--snap2", "2", m]),
        ("thin_rmap", vec!["--region", "5..5", m]),
        ("thin_rmap", vec!["--region", "12", m]),
    ];
    for (tool, args) in cases {
        let want = run(tool, &args);
        assert!(!want.status.success(), "{tool} {args:?}");
        let first = text(&want.stderr).lines().next().unwrap_or("").to_string();
        let mut mine = vec!["thin", &tool[5..]];
        mine.extend(&args);
        let got = dmemu(&mine, b"");
        // A badly formed --region is an argument error (exit 2, as for every option).
        let code = if tool == "thin_rmap" { 2 } else { 22 };
        assert_eq!(got.status.code(), Some(code), "{tool} {args:?}");
        let err = text(&got.stderr);
        // 0.9 words: "Unable to find mapping tree for snap2 (9)", "no current metadata
        // snap" (dmemu: "no current metadata snap: ..."), "badly formed region ...".
        let key = first.split(" (").next().unwrap().trim_end_matches('.');
        assert!(
            err.contains(key),
            "{tool} {args:?}: want {first:?}, got {err:?}"
        );
    }
}

// ---- metadata-size ----

#[test]
fn metadata_size_prints_what_thin_metadata_size_prints() {
    if !have("thin_metadata_size") {
        return;
    }
    let cases = [
        "-b64k -s1t -m1000",
        "-b 64k -s 1t -m 1000 -u m",
        "-b 64k -s 1t -m 1000 -u M",
        "-b128 -s1g -m10 -ns",
        "-b128 -s1g -m10 -nlong",
        "-b128 -s1g -m10 -n",
        "-b 1m -s 10T -m 100 -u g -n",
        "--block-size=64k --pool-size=2t --max-thins=5 --unit=kilo",
        "--b=64k --p 3t --max 5 --u=gibi --numeric-only=short",
        "-b 512b -s 1000000 -m 77k -u s",
        "-u k -b 128 -s 1000000 -m 3",
        "-b 64k -s 1p -m 1 -u t",
        "-b 2m -s 100g -m 10000 -u b",
        "-b 1g -s 1e -m 1 -u y",
        "-b 64k -s 1t -m 1 extra words",
        "-b 3 -s 1g -m 1",
        "-b 64k -s 32k -m 1",
        "-s 1g -m 1",
        "-b 64k -s 1t",
        "-b 64k -s 1y -m 1",
        "-b 64k -s 1q -m 1",
        "-u x",
        "-b 64k -b 128k -s1t -m1",
        "-b64k -s1t -m1000 -uk -nshort -n",
        "-b64k -s1t -m1 -nq",
        "--bogus",
        "-b",
        "-x",
        "--block",
        "--help=3",
        "-h",
        "--help",
    ];
    for case in cases {
        let args: Vec<&str> = case.split(' ').collect();
        let want = run("thin_metadata_size", &args);
        let mut mine = vec!["thin", "metadata-size"];
        mine.extend(&args);
        let got = dmemu(&mine, b"");
        if want.status.success() {
            assert!(got.status.success(), "{case}: {}", text(&got.stderr));
            assert_eq!(text(&got.stdout), text(&want.stdout), "{case}");
        } else {
            // 0.9 prints its complaint on stderr and exits 1; dmemu says the same after
            // its own prefix and exits 22 (EINVAL).
            assert_eq!(got.status.code(), Some(22), "{case}");
            let theirs = text(&want.stderr);
            let line = theirs.lines().next().unwrap();
            assert_eq!(
                text(&got.stderr).trim_end(),
                format!("dmemu: invalid thin metadata-size: {line}"),
                "{case}"
            );
        }
    }
}

// ---- repair ----

/// Superblock byte offsets of the two tree roots (dm-thin-metadata.c's layout).
const DATA_MAPPING_ROOT: usize = 320;
const DEVICE_DETAILS_ROOT: usize = 328;

fn reseal_superblock(img: &mut [u8]) {
    dmemu::targets::thin::metadata::block::seal(
        &mut img[..4096],
        dmemu::targets::thin::metadata::block::SUPERBLOCK_CSUM_XOR,
    );
}

/// The leaf blocks of device `id`'s mapping tree, in key order.
fn leaves(meta: &[u8], id: u64) -> Vec<u64> {
    use dmemu::targets::thin::metadata::btree::walk_located;
    use dmemu::targets::thin::metadata::Metadata;
    let md = Metadata::open(std::sync::Arc::new(
        dmemu::MemVolume::from_bytes(meta.to_vec()).unwrap(),
    ))
    .unwrap();
    let root = md.device_root(id).unwrap().unwrap();
    let mut out = Vec::new();
    walk_located(md.dev(), root, 8, &mut |_, _, at| {
        if out.last() != Some(&at.block) {
            out.push(at.block);
        }
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn repair_keeps_every_mapping_thin_repair_keeps_and_passes_thin_check() {
    if !tools_here(&["thin_restore", "thin_repair", "thin_check", "thin_dump"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pool = Pool::generate(7, 2000, 4, 50);
    let xml = pool.xml();
    let all = mappings(&xml);
    let good = std::fs::read(restored_by_thin_restore(tmp.path(), "good", &xml)).unwrap();
    let leaf = leaves(&good, 3);
    let top = usize::try_from(u64::from_le_bytes(
        good[DATA_MAPPING_ROOT..DATA_MAPPING_ROOT + 8]
            .try_into()
            .unwrap(),
    ))
    .unwrap();
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<(&str, Damage, bool)> = vec![
        (
            "zeroed superblock roots",
            Box::new(|m: &mut Vec<u8>| {
                m[DATA_MAPPING_ROOT..DEVICE_DETAILS_ROOT + 8].fill(0);
                reseal_superblock(m);
            }),
            true,
        ),
        (
            "smashed leaf of device 3",
            Box::new(move |m: &mut Vec<u8>| {
                let b = usize::try_from(leaf[leaf.len() / 2]).unwrap() * 4096;
                for (i, x) in m[b..b + 4096].iter_mut().enumerate() {
                    *x = u8::try_from(i * 37 % 251).unwrap();
                }
            }),
            false,
        ),
        (
            "smashed top level of the mapping tree",
            Box::new(move |m: &mut Vec<u8>| m[top * 4096 + 100..top * 4096 + 200].fill(0xff)),
            true,
        ),
    ];
    for (what, damage, all_kept) in damages {
        let mut img = good.clone();
        damage(&mut img);
        let bad = tmp.path().join("bad");
        std::fs::write(&bad, &img).unwrap();
        let mine = blank(&tmp.path().join("mine"), 8 << 20);
        let out = dmemu(&["thin", "repair", "-i", s(&bad), "-o", s(&mine)], b"");
        assert!(out.status.success(), "{what}: {}", text(&out.stderr));
        thin_check(&mine);
        let dumped = ok("thin_dump", &[s(&mine)]);
        let kept = mappings(&dumped);
        assert!(kept.is_subset(&all), "{what}: mappings nobody made");
        // `thin dump --repair` prints what repair writes.
        same(&ours(&["thin", "dump", "--repair", s(&bad)]), &dumped, what);
        let theirs = blank(&tmp.path().join("theirs"), 8 << 20);
        let t = run("thin_repair", &["-i", s(&bad), "-o", s(&theirs)]);
        let reference = if t.status.success() {
            mappings(&ok("thin_dump", &[s(&theirs)]))
        } else {
            // 0.9 cannot find the trees without the superblock's roots (1.x scans).
            BTreeSet::new()
        };
        let lost: Vec<_> = reference.difference(&kept).take(5).collect();
        assert!(
            lost.is_empty(),
            "{what}: thin_repair keeps {lost:?}, dmemu does not"
        );
        if all_kept {
            // Only the roots are gone: the scan finds every tree, every device and mapping.
            same(&dumped, &xml, what);
        } else {
            // One leaf of one device is gone: its 100-odd mappings, nothing else.
            let missing: BTreeSet<u64> = all.difference(&kept).map(|m| m.0).collect();
            assert_eq!(missing, BTreeSet::from([3]), "{what}");
            assert!(all.len() - kept.len() < 253, "{what}");
        }
    }
}

// ---- extract, delta --data, trim: the data too ----

/// Data block `b`'s contents: a pattern naming it, except every 13th block, all zeros.
fn data_block(b: u64, bytes: usize) -> Vec<u8> {
    if b % 13 == 12 {
        return vec![0; bytes];
    }
    let mut v = vec![0u8; bytes];
    for (i, c) in v.chunks_mut(16).enumerate() {
        c.copy_from_slice(format!("d{b:07}o{i:07}").as_bytes());
    }
    v
}

/// A small pool (64 KiB blocks) with its data image written block by block.
fn small_pool(dir: &Path) -> (Pool, PathBuf, PathBuf) {
    let pool = Pool::generate(8, 120, 3, 30);
    let meta = restored_by_thin_restore(dir, "small", &pool.xml());
    let bs = usize::try_from(pool.block_size).unwrap() * 512;
    let data = blank(&dir.join("small-data"), pool.nr_data * bs as u64);
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    for b in 0..pool.nr_data {
        f.write_all_at(&data_block(b, bs), b * bs as u64).unwrap();
    }
    (pool, meta, data)
}

/// `dmemu read` of thin `id` over a read-only pool, `sectors` long.
fn read_thin(pool: &Pool, meta: &Path, data: &Path, id: u64, sectors: u64) -> Vec<u8> {
    let len = pool.nr_data * u64::from(pool.block_size);
    let spec = format!(
        "pool,,,rw,0 {len} thin-pool {} {} {} 0 1 read_only;t,,,ro,0 {sectors} thin pool {id}",
        s(meta),
        s(data),
        pool.block_size
    );
    let out = dmemu(&["read", "--concise", &spec, "--device", "t"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    out.stdout
}

/// The byte ranges of `path` that are holes (SEEK_HOLE/SEEK_DATA).
fn holes(path: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let f = std::fs::File::open(path).unwrap();
    let end = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut at = 0;
    while at < end {
        let h = seek(&f, SeekFrom::Hole(at)).unwrap();
        if h >= end {
            break;
        }
        let d = seek(&f, SeekFrom::Data(h)).unwrap_or(end).min(end);
        out.push((h, d));
        at = d;
    }
    out
}

/// Whether byte range `r` lies inside one of `holes`.
fn in_hole(holes: &[(u64, u64)], r: (u64, u64)) -> bool {
    holes.iter().any(|&(a, b)| a <= r.0 && r.1 <= b)
}

/// The virtual block ranges thin_delta --verbose puts under `tag`.
fn delta_ranges(xml: &str, tag: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in xml.lines() {
        let l = l.trim();
        if l == format!("<{tag}>") {
            inside = true;
        } else if l == format!("</{tag}>") {
            inside = false;
        } else if inside && l.starts_with("<range ") {
            let attr = |n: &str| -> u64 {
                l.split(&format!("{n}=\""))
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            out.push((attr("begin"), attr("length")));
        }
    }
    out
}

#[test]
fn extract_writes_the_thin_volume_sparse() {
    if !tools_here(&["thin_restore"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pool, meta, data) = small_pool(tmp.path());
    let bs = u64::from(pool.block_size);
    for (&id, dev) in &pool.devs {
        let out = tmp.path().join(format!("t{id}.img"));
        ours(&[
            "thin",
            "extract",
            s(&meta),
            s(&data),
            "--dev-id",
            &id.to_string(),
            "-o",
            s(&out),
        ]);
        let img = std::fs::read(&out).unwrap();
        let blocks = dev.maps.keys().last().map_or(0, |k| k + 1);
        assert_eq!(
            img.len() as u64,
            blocks * bs * 512,
            "t{id}: through its last mapped block"
        );
        if blocks > 0 {
            assert!(
                img == read_thin(&pool, &meta, &data, id, blocks * bs),
                "t{id} differs from dmemu read"
            );
        }
        let h = holes(&out);
        for v in (0..blocks).filter(|v| !dev.maps.contains_key(v)) {
            let r = (v * bs * 512, (v + 1) * bs * 512);
            assert!(in_hole(&h, r), "t{id}: unmapped block {v} is not a hole");
        }
        for (v, &(b, _)) in &dev.maps {
            let r = (v * bs * 512, (v + 1) * bs * 512);
            assert_eq!(
                in_hole(&h, r),
                b % 13 == 12,
                "t{id} block {v}: a hole only where zero"
            );
        }
    }
    // A given length cuts or extends the image.
    let out = tmp.path().join("cut.img");
    ours(&[
        "thin",
        "extract",
        s(&meta),
        s(&data),
        "--dev-id",
        "2",
        "-o",
        s(&out),
        "--sectors",
        "1000",
    ]);
    let img = std::fs::read(&out).unwrap();
    assert!(img == read_thin(&pool, &meta, &data, 2, 1000));
}

#[test]
fn delta_data_writes_the_extents_thin_delta_says_changed() {
    if !tools_here(&["thin_restore", "thin_delta"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pool, meta, data) = small_pool(tmp.path());
    let bs = u64::from(pool.block_size);
    for (a, b) in [(1, 2), (2, 4), (4, 1), (1, 40), (40, 41), (3, 3)] {
        let (sa, sb) = (a.to_string(), b.to_string());
        let out = tmp.path().join("delta.img");
        let xml = ours(&[
            "thin",
            "delta",
            "--verbose",
            "--snap1",
            &sa,
            "--snap2",
            &sb,
            s(&meta),
            "--data",
            s(&data),
            "-o",
            s(&out),
        ]);
        let want = ok(
            "thin_delta",
            &["--verbose", "--snap1", &sa, "--snap2", &sb, s(&meta)],
        );
        assert_eq!(xml, want, "--data prints the same XML");
        let blocks = pool.devs[&b].maps.keys().last().map_or(0, |k| k + 1);
        let img = std::fs::read(&out).unwrap();
        assert_eq!(img.len() as u64, blocks * bs * 512, "{a}->{b}");
        let full = if blocks > 0 {
            read_thin(&pool, &meta, &data, b, blocks * bs)
        } else {
            Vec::new()
        };
        let mut changed = vec![false; usize::try_from(blocks).unwrap()];
        for (v, n) in delta_ranges(&want, "right_only")
            .into_iter()
            .chain(delta_ranges(&want, "different"))
        {
            for k in v..v + n {
                changed[usize::try_from(k).unwrap()] = true;
            }
        }
        let h = holes(&out);
        let block = usize::try_from(bs * 512).unwrap();
        for (k, &c) in changed.iter().enumerate() {
            let r = k * block..(k + 1) * block;
            let span = (r.start as u64, r.end as u64);
            if c {
                assert!(
                    img[r.clone()] == full[r],
                    "{a}->{b}: changed block {k} is snap2's"
                );
            } else {
                assert!(in_hole(&h, span), "{a}->{b}: unchanged block {k} is a hole");
            }
        }
    }
}

#[test]
fn trim_punches_holes_at_the_unmapped_data_blocks_only() {
    if !tools_here(&["thin_restore", "thin_trim"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (pool, meta, data) = small_pool(tmp.path());
    // thin_trim 0.9 discards on block devices only.
    let t = run(
        "thin_trim",
        &["--metadata-dev", s(&meta), "--data-dev", s(&data)],
    );
    assert!(!t.status.success() && text(&t.stderr).contains("not a block device"));
    let before = std::fs::read(&data).unwrap();
    assert!(holes(&data).is_empty());
    ours(&[
        "thin",
        "trim",
        "--metadata-dev",
        s(&meta),
        "--data-dev",
        s(&data),
    ]);
    let after = std::fs::read(&data).unwrap();
    let h = holes(&data);
    let used = pool.used();
    let bs = usize::try_from(pool.block_size).unwrap() * 512;
    for b in 0..pool.nr_data {
        let r = usize::try_from(b).unwrap() * bs..usize::try_from(b + 1).unwrap() * bs;
        let span = (r.start as u64, r.end as u64);
        if used.contains(&b) {
            assert!(
                after[r.clone()] == before[r],
                "data block {b} is mapped and kept"
            );
            if b % 13 != 12 {
                assert!(!in_hole(&h, span), "mapped data block {b} punched");
            }
        } else {
            assert!(in_hole(&h, span), "free data block {b} is not a hole");
        }
    }
}

// ---- malformed XML ----

#[test]
fn malformed_xml_gets_thin_restores_verdict_with_line_and_column() {
    const H: &str = "<superblock uuid=\"\" time=\"0\" transaction=\"1\" flags=\"0\" version=\"2\" \
                     data_block_size=\"128\" nr_data_blocks=\"100\">\n";
    const DEV: &str = "  <device dev_id=\"1\" mapped_blocks=\"1\" transaction=\"0\" \
                       creation_time=\"0\" snap_time=\"0\">\n";
    const END: &str = "  </device>\n</superblock>\n";
    let single = |o: &str, d: &str| {
        format!("    <single_mapping origin_block=\"{o}\" data_block=\"{d}\" time=\"0\"/>\n")
    };
    let range = |o: &str, d: &str, n: &str| {
        format!(
            "    <range_mapping origin_begin=\"{o}\" data_begin=\"{d}\" length=\"{n}\" time=\"0\"/>\n"
        )
    };
    let huge = "18446744073709551615";
    let big_sb = H.replace("\"100\"", &format!("\"{huge}\""));
    // (case, document, dmemu's error (None: restored), whether thin_restore 0.9 agrees)
    let cases: Vec<(&str, String, Option<&str>, bool)> = vec![
        ("unclosed device", format!("{H}{DEV}{}", single("0", "5")), Some("line 4, column 1: no element found"), true),
        ("unclosed superblock", format!("{H}{DEV}{}  </device>\n", single("0", "5")), Some("line 5, column 1: no element found"), true),
        ("mismatched close", format!("{H}{DEV}  </dev>\n</superblock>\n"), Some("line 3, column 3: parse error"), true),
        ("unclosed tag", H.trim_end().trim_end_matches('>').to_string(), Some("line 1, column 1: parse error"), true),
        ("empty", String::new(), Some("line 1, column 1: no element found"), true),
        ("junk after", format!("{H}{DEV}{END}<superblock/>\n"), Some("line 5, column 1: junk after document element"), true),
        ("no superblock", format!("{DEV}  </device>\n"), Some("line 1, column 3: missing superblock"), true),
        ("unknown element", format!("{H}{DEV}    <bogus/>\n{END}"), Some("line 3, column 5: unknown tag type <bogus>"), true),
        ("missing attribute", format!("{H}{DEV}    <single_mapping data_block=\"5\" time=\"0\"/>\n{END}"), Some("line 3, column 5: could not find attribute: origin_block"), true),
        ("huge number", format!("{H}{DEV}{}{END}", single("99999999999999999999999", "5")), Some("line 3, column 5: attribute origin_block=\"99999999999999999999999\" of <single_mapping> is not a number in range"), true),
        ("huge time", format!("{H}{DEV}    <single_mapping origin_block=\"0\" data_block=\"5\" time=\"99999999999\"/>\n{END}"), Some("line 3, column 5: attribute time"), true),
        ("32-bit device id", format!("{H}  <device dev_id=\"4294967296\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n{END}"), Some("line 2, column 3: attribute dev_id"), true),
        ("hex", format!("{H}{DEV}{}{END}", single("0x10", "5")), Some("line 3, column 5: attribute origin_block=\"0x10\""), true),
        ("huge length", format!("{big_sb}{DEV}{}{END}", range("0", "5", huge)), Some("line 3, column 5: mapping beyond end of data device"), true),
        ("huge length in range", format!("{big_sb}{DEV}{}{END}", range("0", "0", "18446744073709551614")), Some("line 3, column 5: more than"), true),
        ("duplicate device", format!("{H}{DEV}  </device>\n{DEV}{END}"), Some("line 4, column 3: Device already exists (dev_id 1)"), true),
        ("beyond nr_data_blocks", format!("{H}{DEV}{}{END}", range("0", "95", "10")), Some("line 3, column 5: mapping beyond end of data device (100 >= 100)"), true),
        ("at nr_data_blocks", format!("{H}{DEV}{}{END}", single("0", "100")), Some("line 3, column 5: mapping beyond end of data device (100 >= 100)"), true),
        // 0.9 aborts on an assertion (exit 134) here.
        ("nested device", format!("{H}{DEV}{DEV}  </device>\n{END}"), Some("line 3, column 3: <device> inside a <device>"), true),
        // 0.9's lexical_cast takes "-1" as 2^64 - 1 and wraps origin ranges past 2^64;
        // dmemu refuses both.
        ("negative", format!("{H}{DEV}{}{END}", single("-1", "5")), Some("line 3, column 5: attribute origin_block=\"-1\""), false),
        ("origin past 2^64", format!("{H}{DEV}{}{END}", range("18446744073709551610", "5", "10")), Some("line 3, column 5: origin blocks past 2^64"), false),
        // Accepted by both: a later mapping replaces an earlier one; any version; block size 0.
        ("overlapping mappings", format!("{H}{DEV}{}{}{END}", range("0", "5", "10"), single("3", "50")), None, true),
        ("version 7", format!("{}{DEV}{}{END}", H.replace("version=\"2\"", "version=\"7\""), single("0", "5")), None, true),
    ];
    let reference = have("thin_restore") && have("thin_dump");
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("in.xml");
    for (case, doc, err, agrees) in cases {
        std::fs::write(&x, &doc).unwrap();
        let mine = blank(&tmp.path().join("mine"), 4 << 20);
        let got = dmemu(&["thin", "restore", "-q", "-i", s(&x), "-o", s(&mine)], b"");
        let stderr = text(&got.stderr);
        match err {
            Some(e) => {
                assert_eq!(got.status.code(), Some(22), "{case}: {stderr}");
                assert!(stderr.contains(e), "{case}: want {e:?}, got {stderr:?}");
                assert!(
                    std::fs::read(&mine).unwrap().iter().all(|&b| b == 0),
                    "{case}: nothing written before the whole input is checked"
                );
            }
            None => assert!(got.status.success(), "{case}: {stderr}"),
        }
        if !reference {
            continue;
        }
        let theirs = blank(&tmp.path().join("theirs"), 4 << 20);
        let t = run("thin_restore", &["-q", "-i", s(&x), "-o", s(&theirs)]);
        assert_eq!(
            t.status.success() == err.is_none(),
            agrees,
            "{case}: thin_restore's verdict"
        );
        if err.is_none() {
            same(
                &ok("thin_dump", &[s(&mine)]),
                &ok("thin_dump", &[s(&theirs)]),
                case,
            );
        }
    }
}
