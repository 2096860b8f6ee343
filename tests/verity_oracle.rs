//! The real Linux 6.12 dm-verity as the judge: tests/fixtures/verity/oracle/make.sh read
//! corrupted images (corrupt.py's flips of the veritysetup fixtures) through the kernel,
//! block by block with O_DIRECT, under the tables in tables.txt, and saved which blocks
//! failed, the status and the table it printed (kernel-results.txt). dmemu must fail
//! exactly the same blocks and print the same status and table.

mod verity_support;

use std::collections::BTreeMap;
use std::sync::Arc;

use dmemu::table::DeviceSpec;
use dmemu::{Keys, MemVolume, Registry, Sector, Table, TableMode, Volume};
use verity_support::{dir, load};

fn oracle_file(name: &str) -> String {
    std::fs::read_to_string(dir().join("oracle").join(name)).unwrap()
}

/// `a * b + c` with decimal or 0x numbers.
fn eval(expr: &str) -> usize {
    expr.split('+')
        .map(|t| {
            t.split('*')
                .map(|n| {
                    let n = n.trim();
                    n.strip_prefix("0x").map_or_else(
                        || n.parse().unwrap(),
                        |h| usize::from_str_radix(h, 16).unwrap(),
                    )
                })
                .product::<usize>()
        })
        .sum()
}

/// corrupt.py's FLIPS: (image, offset, mask).
fn flips() -> Vec<(String, usize, u8)> {
    oracle_file("corrupt.py")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("(\""))
        .map(|l| {
            let l = l.split(')').next().unwrap();
            let (name, rest) = l.split_once("\",").unwrap();
            let (off, mask) = rest.rsplit_once(',').unwrap();
            (
                name.to_string(),
                eval(off),
                u8::try_from(eval(mask)).unwrap(),
            )
        })
        .collect()
}

fn corrupted_images() -> BTreeMap<String, Vec<u8>> {
    let mut imgs = BTreeMap::new();
    for (name, off, mask) in flips() {
        imgs.entry(name.clone()).or_insert_with(|| load(&name))[off] ^= mask;
    }
    assert_eq!(imgs.len(), 4);
    imgs
}

/// What the kernel printed for one table: failing blocks, status line, table line.
type KernelResult = (Vec<u64>, String, String);

/// The kernel's results in `file`, by table name.
fn kernel_results(file: &str) -> BTreeMap<String, KernelResult> {
    let mut out: BTreeMap<String, KernelResult> = BTreeMap::new();
    for line in oracle_file(file).lines() {
        let (kind, rest) = line.split_once(' ').unwrap();
        let (name, value) = rest.split_once(':').unwrap();
        let e = out.entry(name.to_string()).or_default();
        match kind {
            "FAILS" => {
                e.0 = value
                    .split_whitespace()
                    .map(|b| b.parse().unwrap())
                    .collect()
            }
            "STATUS" => e.1 = value.trim().to_string(),
            "TABLE" => e.2 = value.trim().to_string(),
            other => panic!("kernel result {other}"),
        }
    }
    out
}

/// Build `table` as device `name`, read each block alone, and compare with the kernel.
fn check_against_kernel(
    registry: &Registry,
    name: &str,
    table: &str,
    dbs: u64,
    blocks: u64,
    kernel: &KernelResult,
    majmin: &[(String, String)],
) {
    let dev = registry
        .create(&DeviceSpec {
            name: name.into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadOnly,
            table: Table::parse(table).unwrap(),
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut buf = vec![0u8; usize::try_from(dbs).unwrap()];
    let fails: Vec<u64> = (0..blocks)
        .filter(|b| dev.read(Sector(b * dbs / 512), &mut buf).is_err())
        .collect();
    let (k_fails, k_status, k_table) = kernel;
    assert_eq!(&fails, k_fails, "{name}: failing blocks");
    assert_eq!(dev.status_text().trim_end(), k_status, "{name}: status");
    let mut kt = format!("{k_table} ");
    for (mm, dev) in majmin {
        kt = kt.replace(&format!(" {mm} "), &format!(" {dev} "));
    }
    assert_eq!(
        dev.table_text(Keys::Hidden).trim_end(),
        kt.trim_end(),
        "{name}: table"
    );
}

#[test]
fn dmemu_fails_exactly_the_blocks_the_kernel_failed_with_the_same_status_and_table() {
    let imgs = corrupted_images();
    let disks = [
        ("/dev/vda", "254:0", "data-b.img"),
        ("/dev/vdb", "254:16", "hash-v1-sha256-512.img"),
        ("/dev/vdc", "254:32", "data-a.img"),
        ("/dev/vdd", "254:48", "hash-v0-sha1-4k-nosb.img"),
    ];
    let results = kernel_results("kernel-results.txt");
    let tables = oracle_file("tables.txt");
    assert_eq!(tables.lines().count(), results.len());
    for line in tables.lines() {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let (name, dbs, blocks, table) = (
            f[0],
            f[1].parse::<u64>().unwrap(),
            f[2].parse::<u64>().unwrap(),
            f[3],
        );
        let registry = Registry::new();
        for (dev, _, img) in disks {
            registry.insert_volume(
                dev,
                Arc::new(MemVolume::from_bytes(imgs[img].clone()).unwrap()),
            );
        }
        let majmin: Vec<(String, String)> = disks
            .iter()
            .map(|(d, m, _)| (m.to_string(), d.to_string()))
            .collect();
        check_against_kernel(&registry, name, table, dbs, blocks, &results[name], &majmin);
    }
}

/// A byte flip: image kind (`data`/`hash`), offset, xor mask.
type Flip = (String, usize, u8);

/// fec-scenarios.txt: (scenario, case, flips).
fn fec_scenarios() -> Vec<(String, String, Vec<Flip>)> {
    let mut out: Vec<(String, String, Vec<Flip>)> = Vec::new();
    for l in oracle_file("fec-scenarios.txt").lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.first() {
            Some(&"scen") => out.push((f[1].into(), f[2].into(), Vec::new())),
            Some(&"flip") => {
                let s = out.iter_mut().find(|s| s.0 == f[1]).unwrap();
                let mask = u8::from_str_radix(f[4].trim_start_matches("0x"), 16).unwrap();
                s.2.push((f[2].into(), f[3].parse().unwrap(), mask));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn fec_recovers_exactly_the_blocks_the_kernel_recovered() {
    let fec_cases = std::fs::read_to_string(dir().join("fec-cases.txt")).unwrap();
    let tables = oracle_file("fec-tables.txt");
    let results = kernel_results("kernel-fec-results.txt");
    let scen = fec_scenarios();
    assert_eq!(scen.len(), results.len());
    for (i, (name, case_name, flips)) in scen.iter().enumerate() {
        let c = verity_support::case(case_name);
        let fec_img = fec_cases
            .lines()
            .find(|l| l.starts_with(&format!("{case_name} ")))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let mut imgs = [load(&c.data), load(&c.hash), load(&fec_img)];
        for (kind, off, mask) in flips {
            imgs[usize::from(kind == "hash")][*off] ^= mask;
        }
        let registry = Registry::new();
        let mut majmin = Vec::new();
        for (j, img) in imgs.into_iter().enumerate() {
            let n = 3 * i + j;
            let dev = format!("/dev/vd{}", char::from(b'a' + u8::try_from(n).unwrap()));
            majmin.push((format!("254:{}", n * 16), dev.clone()));
            registry.insert_volume(&dev, Arc::new(MemVolume::from_bytes(img).unwrap()));
        }
        let line = tables
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        let table = line.splitn(4, ' ').nth(3).unwrap();
        check_against_kernel(
            &registry,
            name,
            table,
            c.dbs.into(),
            c.blocks,
            &results[name],
            &majmin,
        );
    }
}

/// Lines of parse-tables.txt where dmemu knowingly differs: the kernel knows more hash
/// names (md4 here: 16-byte digests, so it fails later on the root length), and it looks the
/// signature key up in its keyring, which dmemu does not have.
const PARSE_DEVIATIONS: &[(usize, &str)] = &[
    (16, "Cannot initialize hash function"),
    (20, "root_hash_sig_key_desc"),
];

#[test]
fn table_grammar_matches_the_kernel_accepts_rejects_and_prints() {
    let tables = oracle_file("parse-tables.txt");
    let results = oracle_file("kernel-parse-results.txt");
    assert_eq!(tables.lines().count(), results.lines().count());
    for (i, (table, result)) in tables.lines().zip(results.lines()).enumerate() {
        let n = i + 1;
        let registry = Registry::new();
        registry.insert_volume(
            "/dev/vda",
            Arc::new(MemVolume::from_bytes(load("data-a.img")).unwrap()),
        );
        registry.insert_volume(
            "/dev/vdb",
            Arc::new(MemVolume::from_bytes(load("hash-v1-sha256-4k.img")).unwrap()),
        );
        let ours = Table::parse(table).and_then(|t| {
            registry.create(&DeviceSpec {
                name: format!("p{n}"),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadOnly,
                table: t,
            })
        });
        let rest = result.strip_prefix(&format!("RESULT {n} ")).unwrap();
        if let Some(k_table) = rest.strip_prefix("OK ") {
            let dev = ours.unwrap_or_else(|e| panic!("line {n}: kernel accepts, dmemu: {e}"));
            let kt = k_table
                .replace(" 254:0 ", " /dev/vda ")
                .replace(" 254:16 ", " /dev/vdb ");
            assert_eq!(dev.table_text(Keys::Hidden).trim_end(), kt, "line {n}");
            continue;
        }
        let k_err = rest.strip_prefix("ERR verity: ").unwrap();
        let k_err = k_err.rsplit_once(" (").map_or(k_err, |(w, _)| w);
        let e = ours
            .err()
            .unwrap_or_else(|| panic!("line {n}: kernel refused ({k_err}), dmemu accepts"));
        let want = PARSE_DEVIATIONS
            .iter()
            .find(|(l, _)| *l == n)
            .map_or(k_err, |(_, w)| w);
        assert!(
            e.to_string().contains(want),
            "line {n}: kernel {k_err:?}, dmemu {e}"
        );
    }
}
