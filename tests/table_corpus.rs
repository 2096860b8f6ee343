//! The kernel table corpus: tables of every device-mapper target type, loaded into the real
//! Linux 6.12 kernel by tests/fixtures/kernel-tables/make.sh, with what `dmsetup table`,
//! `dmsetup table --showkeys` and `dmsetup status` printed, and the kernel's refusal words
//! for bad snapshot and thin tables.
//!
//! What must hold:
//! * every table the kernel printed parses and prints back byte for byte (`Keys::Hidden` for
//!   dmsetup's zeroed keys, `Keys::Shown` for `--showkeys`);
//! * for every line dmemu types (not kept as `Other`), the table as loaded prints exactly as
//!   the kernel printed it (canonical order, counts, case, trailing spaces);
//! * every table the kernel refused, dmemu refuses with the kernel's words.

use std::collections::BTreeSet;

use dmemu::error::Error;
use dmemu::registry::is_major_minor;
use dmemu::table::{Table, TableMode};
use dmemu::targets::{Keys, TargetSpec, KERNEL_TARGET_TYPES};

const CORPUS: &str = include_str!("fixtures/kernel-tables/corpus.txt");

/// Targets whose modules load but whose devices need an on-disk format made by tools the
/// oracle VM lacks (vdoformat, dmzadm): the corpus holds a refused attempt, not a table.
const NEEDS_FORMAT_TOOL: &[&str] = &["vdo", "zoned"];

/// One device loaded from a table.
#[derive(Debug, Default)]
struct Case {
    name: String,
    input: Vec<String>,
    table: Vec<String>,
    showkeys: Vec<String>,
    status: Vec<String>,
    read_only: bool,
    fail: Option<String>,
}

/// One table the kernel was expected to refuse.
#[derive(Debug, Default)]
struct Refusal {
    name: String,
    input: Vec<String>,
    read_only: bool,
    dmesg: Vec<String>,
    accepted: bool,
}

#[derive(Debug, Default)]
struct Corpus {
    kernel: String,
    cases: Vec<Case>,
    refusals: Vec<Refusal>,
    skipped: Vec<String>,
    registered: Vec<String>,
}

fn corpus() -> Corpus {
    let mut c = Corpus::default();
    let mut in_refusal = false;
    for line in CORPUS.lines().filter(|l| !l.starts_with('#')) {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        match tag {
            "@@kernel" => c.kernel = rest.to_string(),
            "@@case" => {
                in_refusal = false;
                c.cases.push(Case {
                    name: rest.to_string(),
                    ..Case::default()
                });
            }
            "@@errcase" => {
                in_refusal = true;
                c.refusals.push(Refusal {
                    name: rest.to_string(),
                    ..Refusal::default()
                });
            }
            "@@input" if in_refusal => c.refusals.last_mut().unwrap().input.push(rest.to_string()),
            "@@readonly" if in_refusal => c.refusals.last_mut().unwrap().read_only = true,
            "@@readonly" => c.cases.last_mut().unwrap().read_only = true,
            "@@input" => c.cases.last_mut().unwrap().input.push(rest.to_string()),
            "@@table" => c.cases.last_mut().unwrap().table.push(rest.to_string()),
            "@@showkeys" => c.cases.last_mut().unwrap().showkeys.push(rest.to_string()),
            "@@status" => c.cases.last_mut().unwrap().status.push(rest.to_string()),
            "@@fail" => c.cases.last_mut().unwrap().fail = Some(rest.to_string()),
            "@@dmesg" => c.refusals.last_mut().unwrap().dmesg.push(rest.to_string()),
            "@@accepted" => c.refusals.last_mut().unwrap().accepted = true,
            "@@target" => c
                .registered
                .push(rest.split(' ').next().unwrap().to_string()),
            "@@skip" => c.skipped.push(rest.split(' ').next().unwrap().to_string()),
            _ => {}
        }
    }
    c
}

/// Lines as `Table::to_text` writes them: each ends in a newline.
fn text(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn parse(lines: &[String], what: &str) -> Table {
    Table::parse(&text(lines)).unwrap_or_else(|e| panic!("{what}: {e}\n{}", text(lines)))
}

fn loaded(c: &Corpus) -> impl Iterator<Item = &Case> {
    c.cases.iter().filter(|k| k.fail.is_none())
}

/// dmsetup hides an empty crypt key `-` as `0`, which no kernel would load again
/// ("Error decoding and setting key"); such hidden lines are output only.
fn hidden_is_loadable(k: &Case) -> bool {
    !k.showkeys.iter().any(|l| {
        let t: Vec<&str> = l.split(' ').collect();
        t.get(2) == Some(&"crypt") && t.get(4) == Some(&"-")
    })
}

#[test]
fn corpus_comes_from_a_6_12_kernel_and_holds_both_loads_and_refusals() {
    let c = corpus();
    assert!(c.kernel.starts_with("6.12."), "kernel {:?}", c.kernel);
    assert!(
        loaded(&c).count() > 120,
        "{} loaded cases",
        loaded(&c).count()
    );
    assert!(c.refusals.len() >= 30);
    for k in loaded(&c) {
        assert_eq!(
            k.table.len(),
            k.input.len(),
            "{}: one output line per input line",
            k.name
        );
        assert_eq!(k.showkeys.len(), k.table.len(), "{}", k.name);
        assert_eq!(k.status.len(), k.table.len(), "{}", k.name);
    }
}

fn mode(read_only: bool) -> TableMode {
    if read_only {
        TableMode::ReadOnly
    } else {
        TableMode::ReadWrite
    }
}

#[test]
fn tables_the_kernel_loaded_are_accepted_in_the_same_mode() {
    for k in loaded(&corpus()) {
        for lines in [&k.input, &k.table, &k.showkeys] {
            if std::ptr::eq(lines, &k.table) && !hidden_is_loadable(k) {
                continue;
            }
            let t = parse(lines, &k.name);
            if let Err(e) = t.check_mode(mode(k.read_only)) {
                panic!("{}: {e}", k.name);
            }
        }
    }
}

#[test]
fn kernel_printed_tables_print_back_unchanged_with_keys_hidden() {
    for k in loaded(&corpus()).filter(|k| hidden_is_loadable(k)) {
        let t = parse(&k.table, &k.name);
        assert_eq!(t.to_text(Keys::Hidden), text(&k.table), "{}", k.name);
    }
}

#[test]
fn kernel_printed_tables_with_showkeys_print_back_unchanged_with_keys_shown() {
    for k in loaded(&corpus()) {
        let t = parse(&k.showkeys, &k.name);
        assert_eq!(t.to_text(Keys::Shown), text(&k.showkeys), "{}", k.name);
    }
}

#[test]
fn keys_shown_by_the_kernel_are_hidden_exactly_as_dmsetup_hides_them() {
    let mut hidden = 0;
    for k in loaded(&corpus()) {
        let t = parse(&k.showkeys, &k.name);
        assert_eq!(t.to_text(Keys::Hidden), text(&k.table), "{}", k.name);
        hidden += usize::from(k.showkeys != k.table);
    }
    // Every crypt case with a hex key and the integrity HMAC key.
    assert!(hidden >= 25, "{hidden} cases with keys");
}

/// Cases whose kernel output depends on the devices, not the table: a snapshot with chunk 0
/// prints the chunk size the kernel settled on (COW header or default).
fn device_dependent(k: &Case) -> bool {
    k.name.starts_with("devdep-")
}

#[test]
fn typed_tables_as_loaded_print_exactly_as_the_kernel_printed_them() {
    let mut checked = BTreeSet::new();
    for k in loaded(&corpus()).filter(|k| !device_dependent(k)) {
        let t = parse(&k.input, &k.name);
        // integrity prints what its construction settled from the device's superblock
        // (journal_sectors, interleave_sectors, ...): the built target's table_spec gives
        // that, the parse alone cannot (tests/integrity_kernel.rs checks the built table).
        if t.lines
            .iter()
            .any(|l| matches!(l.spec, TargetSpec::Other(_)) || l.spec.target_type() == "integrity")
        {
            continue;
        }
        assert_eq!(t.to_text(Keys::Hidden), text(&k.table), "{}", k.name);
        assert_eq!(t.to_text(Keys::Shown), text(&k.showkeys), "{}", k.name);
        checked.extend(t.lines.iter().map(|l| l.spec.target_type().to_string()));
    }
    for typed in [
        "linear",
        "striped",
        "zero",
        "error",
        "snapshot",
        "snapshot-origin",
        "snapshot-merge",
        "thin-pool",
        "thin",
    ] {
        assert!(checked.contains(typed), "no checked case for {typed}");
    }
}

#[test]
fn snapshot_chunk_zero_prints_zero_where_the_kernel_prints_the_size_it_chose() {
    let c = corpus();
    let cases: Vec<&Case> = loaded(&c).filter(|k| device_dependent(k)).collect();
    assert_eq!(cases.len(), 2);
    for k in cases {
        let ours = parse(&k.input, &k.name).to_text(Keys::Hidden);
        assert!(ours.ends_with(" P 0\n"), "{}: {ours}", k.name);
        let want = if k.name.ends_with("header") { 16 } else { 32 };
        assert_eq!(
            ours.replace(" P 0\n", &format!(" P {want}\n")),
            text(&k.table),
            "{}",
            k.name
        );
    }
}

#[test]
fn corpus_covers_every_kernel_target_type() {
    let c = corpus();
    let printed: BTreeSet<String> = loaded(&c)
        .flat_map(|k| k.table.iter())
        .map(|l| l.split(' ').nth(2).unwrap().to_string())
        .collect();
    let attempted: BTreeSet<String> = c
        .cases
        .iter()
        .flat_map(|k| k.input.iter())
        .map(|l| l.split(' ').nth(2).unwrap().to_string())
        .collect();
    for t in KERNEL_TARGET_TYPES {
        let covered = printed.contains(*t)
            || c.skipped.iter().any(|s| s == t)
            || (NEEDS_FORMAT_TOOL.contains(t) && attempted.contains(*t));
        assert!(covered, "no kernel table for {t}");
    }
    for t in &printed {
        assert!(
            KERNEL_TARGET_TYPES.contains(&t.as_str()),
            "{t} not known to dmemu"
        );
    }
    // `dmsetup targets` with every module loaded: dmemu knows each, and every type dmemu
    // knows is either registered or was skipped because this kernel does not build it.
    assert!(c.registered.len() >= 25, "{:?}", c.registered);
    for t in &c.registered {
        assert!(
            KERNEL_TARGET_TYPES.contains(&t.as_str()),
            "{t} not known to dmemu"
        );
    }
    for t in KERNEL_TARGET_TYPES {
        assert!(
            c.registered.iter().chain(&c.skipped).any(|r| r == t),
            "{t} neither registered nor skipped"
        );
    }
}

#[test]
fn status_lines_name_the_same_segments_as_the_table() {
    for k in loaded(&corpus()) {
        for (s, t) in k.status.iter().zip(&k.table) {
            let head = |l: &str| l.splitn(4, ' ').take(3).collect::<Vec<_>>().join(" ");
            assert_eq!(head(s), head(t), "{}", k.name);
        }
    }
}

/// The message in a kernel line `device-mapper: table: <dev>: <message>`, without the
/// ` (-<ERRNO>)` that `dm_table_add_target` appends to a target's `ti->error`. For target
/// errors the message is `<type>: <ti->error>`, which is how dmemu words them too.
fn kernel_message(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("device-mapper: table: ")?;
    let (_dev, message) = rest.split_once(": ")?;
    Some(
        match message.strip_suffix(')').and_then(|m| m.rsplit_once(" (-")) {
            Some((m, errno)) if errno.bytes().all(|b| b.is_ascii_uppercase()) => m,
            _ => message,
        },
    )
}

/// Families whose refusals dmemu must already match (the others are checked once typed).
const TYPED_FAMILIES: &[&str] = &["snapshot", "thin", "linear", "striped", "zero", "error"];

#[test]
fn tables_the_kernel_refuses_are_refused_with_the_kernel_words() {
    let c = corpus();
    let mut checked = 0;
    for r in &c.refusals {
        assert!(!r.accepted, "{}: the kernel accepted it", r.name);
        // A target's refusal ends in ` (-EINVAL)`; table-level ones have no errno. Other
        // lines (a kernel warning about the device list) come around them.
        let want = r
            .dmesg
            .iter()
            .filter(|l| l.ends_with(')'))
            .chain(&r.dmesg)
            .find_map(|l| kernel_message(l))
            .unwrap_or_else(|| panic!("{}: no kernel message in {:?}", r.name, r.dmesg));
        let parsed =
            Table::parse(&text(&r.input)).and_then(|t| t.check_mode(mode(r.read_only)).map(|()| t));
        match parsed {
            Ok(t)
                if t.lines
                    .iter()
                    .any(|l| matches!(l.spec, TargetSpec::Other(_))) =>
            {
                let family = r.name.split('-').next().unwrap();
                assert!(!TYPED_FAMILIES.contains(&family), "{}: untyped", r.name);
            }
            Ok(_) => panic!("{}: dmemu accepted {:?}", r.name, r.input),
            Err(Error::Table { reason: ours, .. }) => {
                checked += 1;
                assert!(
                    ours == want
                        || ours.starts_with(&format!("{want}: "))
                        || ours.starts_with(&format!("{want} (")),
                    "{}: kernel said {want:?}, dmemu said {ours:?}",
                    r.name
                );
            }
            Err(e) => panic!("{}: not a table error: {e}", r.name),
        }
    }
    let typed = c
        .refusals
        .iter()
        .filter(|r| TYPED_FAMILIES.contains(&r.name.split('-').next().unwrap()))
        .count();
    assert!(
        checked >= typed && typed >= 50,
        "{checked} checked, {typed} typed"
    );
}

const GRAMMAR: &str = include_str!("fixtures/kernel-tables/grammar.txt");

/// One case of grammar.txt (grammar.guest.sh): a table given to `dmsetup create`, and what
/// `dmsetup table` printed or how dmsetup or the kernel refused it.
#[derive(Debug, Default)]
struct Gram {
    name: String,
    read_only: bool,
    input: Vec<String>,
    table: Vec<String>,
    refused: bool,
    stderr: Vec<String>,
    dmesg: Vec<String>,
}

fn grammar() -> (String, Vec<Gram>) {
    let mut kernel = String::new();
    let mut cases: Vec<Gram> = Vec::new();
    for line in GRAMMAR.lines().filter(|l| !l.starts_with('#')) {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        let last = cases.last_mut();
        match (tag, last) {
            ("@@kernel", _) => kernel = rest.to_string(),
            ("@@gram", _) => cases.push(Gram {
                name: rest.to_string(),
                ..Gram::default()
            }),
            ("@@readonly", Some(c)) => c.read_only = true,
            ("@@input", Some(c)) => c.input.push(rest.to_string()),
            ("@@table", Some(c)) => c.table.push(rest.to_string()),
            ("@@refused", Some(c)) => c.refused = true,
            ("@@stderr", Some(c)) => c.stderr.push(rest.to_string()),
            ("@@dmesg", Some(c)) => c.dmesg.push(rest.to_string()),
            _ => {}
        }
    }
    (kernel, cases)
}

/// dmsetup's own refusal of a line it cannot split ("Invalid format on line N of table").
fn dmsetup_words(g: &Gram) -> Option<&str> {
    g.stderr
        .iter()
        .find(|l| l.starts_with("Invalid format on line"))
        .map(|_| "Invalid format")
}

#[test]
fn grammar_cases_replay_as_dmsetup_and_the_6_12_kernel_answered() {
    let (kernel, cases) = grammar();
    assert!(kernel.starts_with("6.12."), "{kernel}");
    assert!(cases.len() >= 50, "{}", cases.len());
    let mut failures = Vec::new();
    let (mut printed, mut refused, mut lookups) = (0, 0, 0);
    for g in &cases {
        let parsed =
            Table::parse(&text(&g.input)).and_then(|t| t.check_mode(mode(g.read_only)).map(|()| t));
        if !g.refused {
            match parsed {
                Ok(t) if t.to_text(Keys::Hidden) == text(&g.table) => printed += 1,
                Ok(t) => failures.push(format!(
                    "{}: the kernel printed {:?}, dmemu {:?}",
                    g.name,
                    text(&g.table),
                    t.to_text(Keys::Hidden)
                )),
                Err(e) => failures.push(format!("{}: the kernel loaded it, dmemu: {e}", g.name)),
            }
            continue;
        }
        let want = g
            .dmesg
            .iter()
            .find_map(|l| kernel_message(l))
            .or_else(|| dmsetup_words(g))
            .unwrap_or_else(|| panic!("{}: no refusal words in {g:?}", g.name));
        // A token the kernel took for a path (not "%u:%u") fails its lookup with ENOENT: that
        // is a device dmemu looks up when it builds the table; the parse keeps the token as
        // a path, unchanged.
        if want.ends_with("Device lookup failed")
            && g.dmesg.iter().any(|l| l.ends_with("(-ENOENT)"))
        {
            match parsed {
                Ok(t) => {
                    let token = g.input[0].split(' ').nth(3).unwrap();
                    let out = t.to_text(Keys::Hidden);
                    if out.split(' ').nth(3) == Some(token) && !is_major_minor(token) {
                        lookups += 1;
                    } else {
                        failures.push(format!("{}: {token} printed as {out:?}", g.name));
                    }
                }
                Err(e) => failures.push(format!("{}: a path, dmemu refused: {e}", g.name)),
            }
            continue;
        }
        // A device number past a dev_t parses as the number (the kernel's sscanf) and
        // fails its lookup with EOVERFLOW when the table is built, as dm_devt_from_path.
        if want.ends_with("Device lookup failed")
            && g.dmesg.iter().any(|l| l.ends_with("(-EOVERFLOW)"))
        {
            let e = parsed
                .map_err(|e| format!("parse refused: {e}"))
                .and_then(|t| {
                    dmemu::Registry::new()
                        .create(&dmemu::table::DeviceSpec {
                            name: "g".into(),
                            uuid: String::new(),
                            minor: None,
                            mode: TableMode::ReadWrite,
                            table: t,
                        })
                        .map(|_| ())
                        .map_err(|e| e.to_string() + &format!(" [errno {}]", e.errno()))
                })
                .err()
                .unwrap_or_else(|| "built".into());
            // dmsetup's words for the ioctl's errno: strerror(EOVERFLOW).
            let strerror = "Value too large for defined data type";
            assert!(g.stderr.iter().any(|l| l.ends_with(strerror)), "{g:?}");
            if e.contains(strerror) && e.ends_with("[errno 75]") {
                lookups += 1;
            } else {
                failures.push(format!(
                    "{}: the kernel's lookup gave EOVERFLOW, dmemu: {e}",
                    g.name
                ));
            }
            continue;
        }
        match parsed {
            Err(Error::Table { reason: ours, .. })
                if ours == want
                    || ours.starts_with(&format!("{want}: "))
                    || ours.starts_with(&format!("{want} (")) =>
            {
                refused += 1;
            }
            Err(e) => failures.push(format!("{}: the kernel said {want:?}, dmemu: {e}", g.name)),
            Ok(t) => failures.push(format!(
                "{}: the kernel said {want:?}, dmemu accepted {:?}",
                g.name,
                t.to_text(Keys::Hidden)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        printed >= 20 && refused >= 23 && lookups >= 6,
        "{printed} {refused} {lookups}"
    );
}
