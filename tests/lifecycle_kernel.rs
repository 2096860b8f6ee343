//! The device lifecycle against the 6.12 kernel's answers (tests/fixtures/lifecycle, made by
//! the make-*.sh there on the oracle VM). Each scenario replays a fixture's dmsetup
//! sequence through the library and compares what the library reports (formatted as dmsetup
//! prints it) with what the kernel printed, step by step; errors compare by errno and the
//! kernel's words from dmesg.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dmemu::clock::ManualClock;
use dmemu::dmsetup::{deps_line, info_columns, info_text, ls_line, DepsForm};
use dmemu::mapped_device::{Slot, SuspendFlags};
use dmemu::registry::RemoveMode;
use dmemu::table::DeviceSpec;
use dmemu::{Keys, MemVolume, Registry, Sector, SectorCount, Table, TableMode, Volume};

const FIX: &str = "tests/fixtures/lifecycle";
const COLS: &str = "name,major,minor,attr,open,segments,events,uuid";

/// One `### id` step of a fixture: its output lines (without `$`/`rc=`/`dmesg:`), rc and
/// dmesg lines.
#[derive(Debug, Default, Clone)]
struct Step {
    out: String,
    rc: i32,
    dmesg: Vec<String>,
}

fn steps(file: &str) -> BTreeMap<String, Step> {
    let text = std::fs::read_to_string(format!("{FIX}/{file}")).unwrap();
    let mut map = BTreeMap::new();
    let mut cur: Option<(String, Step)> = None;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("### ") {
            if let Some((k, v)) = cur.take() {
                map.insert(k, v);
            }
            cur = Some((id.to_string(), Step::default()));
        } else if let Some((_, s)) = cur.as_mut() {
            if line.starts_with("$ ") {
                continue;
            } else if let Some(rc) = line.strip_prefix("rc=") {
                s.rc = rc.parse().unwrap();
            } else if let Some(d) = line.strip_prefix("dmesg: ") {
                s.dmesg.push(d.to_string());
            } else {
                s.out.push_str(line);
                s.out.push('\n');
            }
        }
    }
    if let Some((k, v)) = cur {
        map.insert(k, v);
    }
    map
}

struct Kernel {
    steps: BTreeMap<String, Step>,
}

impl Kernel {
    fn new(file: &str) -> Kernel {
        Kernel { steps: steps(file) }
    }

    fn step(&self, id: &str) -> &Step {
        self.steps
            .get(id)
            .unwrap_or_else(|| panic!("fixture has no step {id}"))
    }

    fn out(&self, id: &str) -> &str {
        &self.step(id).out
    }

    /// The step succeeded in the kernel, and `r` did here.
    fn ok<T: std::fmt::Debug>(&self, id: &str, r: dmemu::Result<T>) -> T {
        assert_eq!(self.step(id).rc, 0, "{id}: the kernel failed this step");
        r.unwrap_or_else(|e| panic!("{id}: kernel succeeded, dmemu failed: {e}"))
    }

    /// The step failed in the kernel with the strerror text `errstr`, and `r` failed here with
    /// the same errno; when `dmesg` is given, the kernel's words appear in our message.
    fn failed<T: std::fmt::Debug>(
        &self,
        id: &str,
        r: dmemu::Result<T>,
        errno: i32,
        words: Option<&str>,
    ) {
        let s = self.step(id);
        // A compound step may end in rc 0 after dmsetup's failure line.
        assert!(
            s.rc != 0 || s.out.contains("Command failed."),
            "{id}: the kernel succeeded"
        );
        let e = r.expect_err(id);
        assert_eq!(e.errno(), errno, "{id}: {e}");
        let errstr = match errno {
            16 => "Device or resource busy",
            22 => "Invalid argument",
            6 => "No such device or address",
            2 => "No such file or directory",
            11 => "Resource temporarily unavailable",
            _ => "",
        };
        assert!(s.out.contains(errstr), "{id}: kernel said {:?}", s.out);
        if let Some(w) = words {
            assert!(
                s.dmesg.iter().any(|d| d.contains(w)),
                "{id}: {w:?} not in dmesg {:?}",
                s.dmesg
            );
            assert!(e.to_string().contains(w), "{id}: {e} lacks {w:?}");
        }
    }
}

/// A registry with the oracle's disks as named volumes: `254:0` = /dev/vda (16 MiB), `254:16`
/// = /dev/vdb, ... so tables print devices as the kernel printed them.
fn registry(disks: &[(&str, u64)]) -> (Registry, Vec<Arc<MemVolume>>) {
    let r = Registry::new();
    let mut vols = Vec::new();
    for (name, sectors) in disks {
        let v = Arc::new(MemVolume::new(SectorCount(*sectors)).unwrap());
        r.insert_volume(name, v.clone());
        vols.push(v);
    }
    (r, vols)
}

fn spec(name: &str, uuid: &str, mode: TableMode, table: &str) -> DeviceSpec {
    DeviceSpec {
        name: name.into(),
        uuid: uuid.into(),
        minor: None,
        mode,
        table: Table::parse(table).unwrap(),
    }
}

fn create(r: &Registry, name: &str, table: &str) {
    r.create(&spec(name, "", TableMode::ReadWrite, table))
        .unwrap();
}

fn info(r: &Registry, name: &str) -> String {
    info_text(&r.info(name).unwrap())
}

fn cols(r: &Registry, name: &str, fields: &str) -> String {
    info_columns(&r.info(name).unwrap(), fields).unwrap() + "\n"
}

fn all_cols(r: &Registry) -> String {
    r.list().iter().map(|(n, _)| cols(r, n, COLS)).collect()
}

fn ls(r: &Registry) -> String {
    r.list()
        .iter()
        .map(|(n, d)| ls_line(n, *d) + "\n")
        .collect()
}

fn table(r: &Registry, name: &str, which: Slot) -> String {
    let t = r.table_text(name, which, Keys::Hidden).unwrap();
    if t.is_empty() {
        "\n".into()
    } else {
        t
    }
}

fn load(r: &Registry, name: &str, text: &str) -> dmemu::Result<()> {
    r.load(name, Table::parse(text)?, TableMode::ReadWrite)
}

const VDA: (&str, u64) = ("254:0", 32768);

#[test]
fn create_minors_uuid_read_only_match_the_kernel() {
    let k = Kernel::new("kernel-6.12-basic.txt");
    let (r, _) = registry(&[VDA]);
    create(&r, "a", "0 2048 linear 254:0 0");
    assert_eq!(info(&r, "a"), k.out("info-a"));
    assert_eq!(cols(&r, "a", COLS), k.out("info-c-a"));
    assert_eq!(table(&r, "a", Slot::Live), k.out("table-a"));
    assert_eq!(table(&r, "a", Slot::Inactive), k.out("table-inactive-a"));
    assert_eq!(r.status_text("a", Slot::Live).unwrap(), k.out("status-a"));
    k.ok("create-b-notable", r.create_device("b", None, None));
    // dmsetup first complains that the node it would open does not exist.
    let kernel_b = k.out("info-b").split_once('\n').unwrap().1;
    assert_eq!(info(&r, "b"), kernel_b);
    assert_eq!(cols(&r, "b", COLS), k.out("info-c-b"));
    create(&r, "c", "0 2048 linear 254:0 2048");
    assert_eq!(ls(&r), k.out("ls-1"));
    k.ok("remove-b", r.remove("b", RemoveMode::Normal));
    create(&r, "d", "0 2048 linear 254:0 4096");
    r.create(&spec(
        "e",
        "LIFECYCLE-E-0001",
        TableMode::ReadWrite,
        "0 2048 linear 254:0 6144",
    ))
    .unwrap();
    r.create(&spec(
        "f",
        "",
        TableMode::ReadOnly,
        "0 2048 linear 254:0 8192",
    ))
    .unwrap();
    assert_eq!(info(&r, "e"), k.out("info-e"));
    assert_eq!(info(&r, "f"), k.out("info-f"));
    assert_eq!(all_cols(&r), k.out("info-c-all"));
    // A read-only device refuses writes (EPERM in the kernel's block layer; EROFS here),
    // reads work.
    let f = r.device("f").unwrap();
    assert!(f.write(Sector(0), &[0u8; 4096]).is_err());
    assert_eq!(k.step("write-readonly-f").rc, 1);
    f.read(Sector(0), &mut [0u8; 4096]).unwrap();
    r.remove("a", RemoveMode::Normal).unwrap();
    r.remove("c", RemoveMode::Normal).unwrap();
    create(&r, "g", "0 2048 linear 254:0 0");
    create(&r, "h", "0 2048 linear 254:0 2048");
    create(&r, "i", "0 2048 linear 254:0 2048");
    assert_eq!(ls(&r), k.out("ls-2"));
    assert_eq!(all_cols(&r), k.out("info-c-all-2"));
    for n in ["d", "e", "f", "h", "i"] {
        r.remove(n, RemoveMode::Normal).unwrap();
    }
    let mut pm = spec("pm", "", TableMode::ReadWrite, "0 2048 linear 254:0 0");
    pm.minor = Some(7);
    r.create(&pm).unwrap();
    assert_eq!(info(&r, "pm"), k.out("create-pm-minor-7"));
    create(&r, "pn", "0 2048 linear 254:0 0");
    assert_eq!(ls(&r), k.out("create-after-minor-7"));
    let mut po = spec("po", "", TableMode::ReadWrite, "0 2048 linear 254:0 0");
    po.minor = Some(7);
    k.failed("create-minor-in-use", r.create(&po), 6, None);
    r.remove("pm", RemoveMode::Normal).unwrap();
    r.remove("pn", RemoveMode::Normal).unwrap();
    assert_eq!(ls(&r), k.out("remove-pm-pn"));
}

#[test]
fn load_resume_clear_and_refused_loads_match_the_kernel() {
    let k = Kernel::new("kernel-6.12-basic.txt");
    let (r, _) = registry(&[VDA]);
    create(&r, "g", "0 2048 linear 254:0 0");
    k.ok("load-g", load(&r, "g", "0 4096 linear 254:0 0"));
    assert_eq!(info(&r, "g"), k.out("info-g-loaded"));
    assert_eq!(cols(&r, "g", COLS), k.out("info-c-g-loaded"));
    assert_eq!(table(&r, "g", Slot::Live), k.out("table-g-loaded"));
    assert_eq!(
        table(&r, "g", Slot::Inactive),
        k.out("table-inactive-g-loaded")
    );
    assert_eq!(
        r.status_text("g", Slot::Inactive).unwrap(),
        k.out("status-inactive-g-loaded")
    );
    let g = r.device("g").unwrap();
    assert_eq!(format!("{}\n", g.size()), k.out("size-g-before-resume"));
    k.ok("resume-g", r.resume("g"));
    assert_eq!(info(&r, "g"), k.out("info-g-resumed"));
    assert_eq!(table(&r, "g", Slot::Live), k.out("table-g-resumed"));
    assert_eq!(
        table(&r, "g", Slot::Inactive),
        k.out("table-inactive-g-resumed")
    );
    assert_eq!(format!("{}\n", g.size()), k.out("size-g-after-resume"));
    k.ok("load-g-zero", load(&r, "g", "0 1024 zero"));
    assert_eq!(info(&r, "g"), k.out("info-g-zero-loaded"));
    k.ok("clear-g", r.clear("g"));
    assert_eq!(info(&r, "g"), k.out("info-g-cleared"));
    k.ok("clear-g-again", r.clear("g"));
    k.ok("resume-g-no-inactive", r.resume("g"));
    assert_eq!(cols(&r, "g", COLS), k.out("info-c-g-after-noop-resume"));
    // Refused loads: the kernel's errno and words, nothing changed.
    k.failed(
        "load-g-bad-argcount",
        load(&r, "g", "0 1024 linear 254:0"),
        22,
        Some("Invalid argument count"),
    );
    k.failed(
        "load-g-bad-device",
        load(&r, "g", "0 1024 linear /dev/vdz 0"),
        2,
        None,
    );
    // Too big for its device: the load is fine (the resume will refuse it).
    k.ok("load-g-too-big", load(&r, "g", "0 99999999 linear 254:0 0"));
    k.failed(
        "load-g-unknown-target",
        load(&r, "g", "0 1024 nosuchtarget"),
        22,
        Some("unknown target type"),
    );
    k.failed(
        "load-g-gap",
        load(&r, "g", "0 1024 linear 254:0 0\n2048 1024 linear 254:0 0"),
        22,
        Some("Gap in table"),
    );
    k.failed(
        "load-g-bad-offset",
        load(&r, "g", "0 1024 linear 254:0 x"),
        22,
        Some("Invalid device sector"),
    );
    assert_eq!(info(&r, "g"), k.out("info-g-after-refused"));
    assert_eq!(
        table(&r, "g", Slot::Live) + &table(&r, "g", Slot::Inactive),
        k.out("table-g-after-refused")
    );
    // A refused load keeps an inactive table that was there.
    load(&r, "g", "0 512 zero").unwrap();
    assert!(load(&r, "g", "0 1024 linear 254:0").is_err());
    assert_eq!(
        table(&r, "g", Slot::Inactive),
        k.out("table-inactive-g-kept")
    );
    r.clear("g").unwrap();
    // A range off its device loads, and the resume refuses it: the device stays suspended
    // with its old live table and no inactive one.
    k.ok(
        "load-g-too-big-2",
        load(&r, "g", "0 99999999 linear 254:0 0"),
    );
    k.failed(
        "resume-g-too-big",
        r.resume("g"),
        22,
        Some("too small for target"),
    );
    assert_eq!(info(&r, "g"), k.out("info-g-after-too-big-resume"));
    let g = r.device("g").unwrap();
    assert_eq!(
        table(&r, "g", Slot::Live) + &table(&r, "g", Slot::Inactive) + &format!("{}\n", g.size()),
        k.out("table-g-after-too-big-resume")
    );
}

#[test]
fn rename_uuid_duplicates_and_missing_devices_match_the_kernel() {
    let k = Kernel::new("kernel-6.12-basic.txt");
    let (r, _) = registry(&[VDA]);
    create(&r, "m", "0 2048 linear 254:0 0");
    k.ok("rename-m", r.rename("m", "r"));
    assert_eq!(info(&r, "r"), k.out("info-r"));
    assert_eq!(cols(&r, "r", COLS), k.out("info-c-r-after-rename"));
    k.ok("setuuid-r", r.set_uuid("r", "LIFECYCLE-R-0001"));
    assert_eq!(cols(&r, "r", COLS), k.out("info-c-r-setuuid"));
    k.failed(
        "setuuid-r-again",
        r.set_uuid("r", "LIFECYCLE-R-0002"),
        22,
        Some("because uuid is already set to LIFECYCLE-R-0001"),
    );
    let by_uuid = r.device_by_uuid("LIFECYCLE-R-0001").unwrap();
    assert_eq!(info_text(&by_uuid.info()), k.out("info-by-uuid"));
    r.create(&spec(
        "u",
        "LIFECYCLE-U-0001",
        TableMode::ReadWrite,
        "0 2048 linear 254:0 0",
    ))
    .unwrap();
    k.failed(
        "setuuid-u-has-uuid",
        r.set_uuid("u", "LIFECYCLE-U-0002"),
        22,
        None,
    );
    k.failed(
        "rename-to-existing",
        r.rename("r", "u"),
        16,
        Some("Unable to change name on mapped device r to one that already exists: u"),
    );
    k.failed(
        "rename-missing",
        r.rename("nosuch", "x"),
        6,
        Some("Unable to rename non-existent device, nosuch to x"),
    );
    k.failed("rename-same-name", r.rename("r", "r"), 16, None);
    k.failed(
        "create-dup-name",
        r.create(&spec(
            "r",
            "",
            TableMode::ReadWrite,
            "0 2048 linear 254:0 0",
        )),
        16,
        None,
    );
    k.failed(
        "create-dup-name-notable",
        r.create_device("r", None, None),
        16,
        None,
    );
    k.failed(
        "create-dup-uuid",
        r.create(&spec(
            "w",
            "LIFECYCLE-R-0001",
            TableMode::ReadWrite,
            "0 2048 linear 254:0 0",
        )),
        16,
        None,
    );
    assert_eq!(ls(&r), k.out("ls-after-dups"));
    assert_eq!(all_cols(&r), k.out("info-c-after-dups"));
    for (id, res) in [
        (
            "table-missing",
            r.table_text("nosuch", Slot::Live, Keys::Hidden).map(|_| ()),
        ),
        ("deps-missing", r.deps("nosuch", Slot::Live).map(|_| ())),
        ("remove-missing", r.remove("nosuch", RemoveMode::Normal)),
        (
            "suspend-missing",
            r.suspend("nosuch", SuspendFlags::default()),
        ),
        ("resume-missing", r.resume("nosuch")),
        ("load-missing", load(&r, "nosuch", "0 2048 linear 254:0 0")),
        ("clear-missing", r.clear("nosuch")),
        (
            "message-missing",
            r.message("nosuch", Sector(0), &["x"]).map(|_| ()),
        ),
        ("wait-missing", r.wait_event("nosuch", 0, None).map(|_| ())),
    ] {
        k.failed(id, res, 6, None);
    }
    k.failed(
        "message-linear",
        r.message("r", Sector(0), &["hello"]),
        22,
        None,
    );
}

#[test]
fn busy_forced_and_deferred_removes_match_the_kernel() {
    let k = Kernel::new("kernel-6.12-remove.txt");
    let (r, _) = registry(&[VDA]);
    create(&r, "x", "0 2048 linear 254:0 0");
    let x = r.device("x").unwrap();
    let open = x.open().unwrap();
    assert_eq!(info(&r, "x"), k.out("info-x-open"));
    k.failed("remove-x-open", r.remove("x", RemoveMode::Normal), 16, None);
    assert_eq!(cols(&r, "x", COLS), k.out("info-c-x-after-busy"));
    drop(open);
    assert_eq!(cols(&r, "x", COLS), k.out("info-c-x-closed"));
    create(&r, "y", "0 1024 linear /dev/mapper/x 512");
    assert_eq!(
        table(&r, "y", Slot::Live),
        k.out("table-y").replace("253:0", "/dev/mapper/x")
    );
    let deps = r.deps("y", Slot::Live).unwrap();
    assert_eq!(deps_line(&deps, DepsForm::DevNo) + "\n", k.out("deps-y"));
    assert_eq!(
        deps_line(&deps, DepsForm::DevName) + "\n",
        k.out("deps-devname-y")
    );
    assert_eq!(cols(&r, "x", COLS), k.out("info-c-x-used"));
    k.failed("remove-x-used", r.remove("x", RemoveMode::Normal), 16, None);
    // Used by another device's inactive table only: still busy.
    load(&r, "y", "0 1024 zero").unwrap();
    r.resume("y").unwrap();
    load(&r, "y", "0 1024 linear /dev/mapper/x 0").unwrap();
    k.failed(
        "remove-x-used-by-inactive",
        r.remove("x", RemoveMode::Normal),
        16,
        None,
    );
    r.remove("y", RemoveMode::Normal).unwrap();
    // Tables may name the device by number.
    create(&r, "y", "0 1024 linear 253:0 0");
    assert_eq!(r.info("x").unwrap().open_count, 1);
    r.remove("y", RemoveMode::Normal).unwrap();
    r.remove("x", RemoveMode::Normal).unwrap();

    // --force of an open device: an error table goes live, the remove is still busy.
    create(&r, "fx", "0 2048 linear 254:0 0");
    let fx = r.device("fx").unwrap().open().unwrap();
    k.failed(
        "remove-force-fx",
        r.remove("fx", RemoveMode::Force),
        16,
        None,
    );
    assert_eq!(info(&r, "fx"), k.out("info-fx-after-force"));
    let shown = table(&r, "fx", Slot::Live)
        + &table(&r, "fx", Slot::Inactive)
        + &r.status_text("fx", Slot::Live).unwrap();
    assert_eq!(shown, k.out("table-fx-after-force"));
    assert!(k.out("ls-after-force").starts_with(&ls(&r)));
    assert_eq!(fx.read(Sector(0), &mut [0u8; 4096]).unwrap_err().errno(), 5);
    drop(fx);
    k.ok("remove-fx", r.remove("fx", RemoveMode::Normal));

    // --deferred: stays until the last close; @cancel_deferred_remove cancels it.
    create(&r, "dx", "0 2048 linear 254:0 0");
    let dx = r.device("dx").unwrap().open().unwrap();
    k.ok("remove-deferred-dx", r.remove("dx", RemoveMode::Deferred));
    assert_eq!(info(&r, "dx"), k.out("info-dx-deferred"));
    assert_eq!(cols(&r, "dx", COLS), k.out("info-c-dx-deferred"));
    dx.read(Sector(0), &mut [0u8; 4096]).unwrap();
    k.ok(
        "cancel-deferred-dx",
        r.message("dx", Sector(0), &["@cancel_deferred_remove"]),
    );
    k.ok("remove-deferred-dx-2", r.remove("dx", RemoveMode::Deferred));
    drop(dx);
    assert!(k.out("ls-after-deferred").starts_with(&ls(&r)));

    // A suspended device with a waiting read: busy; --force errors the read.
    create(&r, "sx", "0 2048 linear 254:0 0");
    r.suspend("sx", SuspendFlags::default()).unwrap();
    let sx = r.device("sx").unwrap().open().unwrap();
    std::thread::scope(|s| {
        let reader = s.spawn(|| sx.read(Sector(0), &mut [0u8; 4096]));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished());
        k.failed(
            "remove-suspended-sx",
            r.remove("sx", RemoveMode::Normal),
            16,
            None,
        );
        k.failed(
            "remove-force-suspended-sx",
            r.remove("sx", RemoveMode::Force),
            16,
            None,
        );
        assert_eq!(reader.join().unwrap().unwrap_err().errno(), 5);
    });
    assert_eq!(
        info(&r, "sx") + &table(&r, "sx", Slot::Live),
        k.out("info-sx-after-force")
    );
    drop(sx);
    r.remove("sx", RemoveMode::Normal).unwrap();
    assert!(r.list().is_empty());
}

#[test]
fn suspend_holds_io_and_events_count_what_the_kernel_counts() {
    let k = Kernel::new("kernel-6.12-suspend.txt");
    let (r, _) = registry(&[VDA]);
    create(&r, "s", "0 2048 linear 254:0 0");
    let ev = |r: &Registry| r.info("s").unwrap().event_nr;
    r.suspend("s", SuspendFlags::default()).unwrap();
    assert_eq!(info(&r, "s"), k.out("info-s-suspended"));
    assert_eq!(cols(&r, "s", COLS), k.out("info-c-s-suspended"));
    // Suspending twice is fine; table and status still answer.
    r.suspend("s", SuspendFlags::default()).unwrap();
    assert!(!r
        .table_text("s", Slot::Live, Keys::Hidden)
        .unwrap()
        .is_empty());
    let s = r.device("s").unwrap();
    std::thread::scope(|sc| {
        let w = sc.spawn(|| s.write(Sector(0), &[7u8; 4096]));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!w.is_finished(), "I/O waits while suspended");
        r.resume("s").unwrap();
        w.join().unwrap().unwrap();
    });
    let mut b = [0u8; 4096];
    s.read(Sector(0), &mut b).unwrap();
    assert_eq!(b, [7u8; 4096]);
    // Nothing but rename and setuuid bumps the counter.
    assert_eq!(ev(&r), 0);
    load(&r, "s", "0 2048 linear 254:0 0").unwrap();
    r.resume("s").unwrap();
    r.suspend(
        "s",
        SuspendFlags {
            noflush: true,
            nolockfs: true,
        },
    )
    .unwrap();
    r.resume("s").unwrap();
    assert_eq!(ev(&r), 0);
    let before = ev(&r);
    r.rename("s", "s2").unwrap();
    r.rename("s2", "s").unwrap();
    assert_eq!(ev(&r), before + 2);
    // A waiter returns at once for a past number, and wakes on a rename.
    assert_eq!(r.wait_event("s", 0, Some(Duration::ZERO)).unwrap(), 2);
    std::thread::scope(|sc| {
        let waiter = sc.spawn(|| r.wait_event("s", 2, Some(Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(50));
        r.set_uuid("s", "U").unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), 3);
    });
}

#[test]
fn crypt_key_messages_need_a_suspended_device() {
    let k = Kernel::new("kernel-6.12-suspend.txt");
    let (r, _) = registry(&[VDA]);
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    create(
        &r,
        "cr",
        &format!("0 2048 crypt aes-xts-plain64 {key} 0 254:0 0"),
    );
    k.failed(
        "key-wipe-active",
        r.message("cr", Sector(0), &["key", "wipe"]),
        22,
        Some("not suspended during key manipulation."),
    );
    k.failed(
        "key-set-active",
        r.message("cr", Sector(0), &["key", "set", key]),
        22,
        None,
    );
    let cr = r.device("cr").unwrap();
    cr.write(Sector(0), &[0x42u8; 4096]).unwrap();
    r.suspend("cr", SuspendFlags::default()).unwrap();
    k.ok(
        "key-wipe-suspended",
        r.message("cr", Sector(0), &["key", "wipe"]),
    );
    k.failed(
        "resume-crypt-wiped",
        r.resume("cr"),
        11,
        Some("aborting resume - crypt key is not set."),
    );
    assert_eq!(info(&r, "cr"), k.out("info-crypt-after-failed-resume"));
    k.failed(
        "key-set-bad-suspended",
        r.message("cr", Sector(0), &["key", "set", "00"]),
        22,
        None,
    );
    k.ok(
        "key-set-suspended",
        r.message("cr", Sector(0), &["key", "set", key]),
    );
    k.ok("resume-crypt", r.resume("cr"));
    let mut back = [0u8; 4096];
    cr.read(Sector(0), &mut back).unwrap();
    assert_eq!(
        back, [0x42u8; 4096],
        "the data reads back under the key set again"
    );
}

#[test]
fn delay_releases_held_requests_at_suspend_and_swap() {
    let k = Kernel::new("kernel-6.12-delay.txt");
    let clock = ManualClock::shared();
    let r = Registry::new().with_clock(clock.clone());
    r.insert_volume(
        "254:0",
        Arc::new(MemVolume::new(SectorCount(32768)).unwrap()),
    );
    create(&r, "d", "0 2048 delay 254:0 0 20000");
    let d = r.device("d").unwrap();
    std::thread::scope(|s| {
        let held = s.spawn(|| d.read(Sector(0), &mut [0u8; 4096]));
        assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
        let first = |id: &str| k.out(id).lines().next().unwrap().to_string() + "\n";
        assert_eq!(
            r.status_text("d", Slot::Live).unwrap(),
            first("status-dl-held")
        );
        // The clock never moves: only the suspend can release the read.
        r.suspend("d", SuspendFlags::default()).unwrap();
        held.join().unwrap().unwrap();
        assert_eq!(
            r.status_text("d", Slot::Live).unwrap(),
            first("status-dl-suspended")
        );
        r.resume("d").unwrap();
        // A table swap releases the old table's held request the same way.
        let held = s.spawn(|| d.read(Sector(0), &mut [0u8; 4096]));
        assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
        load(&r, "d", "0 2048 delay 254:0 0 20000").unwrap();
        r.resume("d").unwrap();
        held.join().unwrap().unwrap();
    });
}

/// The thin_dump output after `### mode-MODE`'s run, from kernel-6.12-thin-commit.txt.
fn thin_commit_dump(mode: &str) -> String {
    let text = std::fs::read_to_string(format!("{FIX}/kernel-6.12-thin-commit.txt")).unwrap();
    let run = text
        .split("### mode-")
        .find(|r| r.starts_with(&format!("{mode}\n")))
        .unwrap();
    let dump = run.split("$ thin_dump metadata.img\n").nth(1).unwrap();
    dump.split("rc=").next().unwrap().to_string()
}

#[test]
fn pool_suspend_commits_what_the_kernel_committed_and_nothing_earlier() {
    use dmemu::targets::thin::metadata::Metadata;
    let (r, vols) = registry(&[("254:0", 8192), ("254:16", 32768)]);
    let meta = vols[0].clone();
    create(&r, "pool", "0 32768 thin-pool 254:0 254:16 128 0");
    r.message("pool", Sector(0), &["create_thin", "0"]).unwrap();
    create(&r, "t0", "0 16384 thin /dev/mapper/pool 0");
    let t0 = r.device("t0").unwrap();
    t0.write(Sector(0), &vec![0x11u8; 4 * 65536]).unwrap();
    let dump = || Metadata::open(meta.clone()).unwrap().dump_xml().unwrap();
    // Before the suspend nothing of the writes is committed (the kernel's crash run kept
    // fewer than 4 blocks too: only what its one-second commit caught).
    let crash = thin_commit_dump("none");
    assert!(!crash.contains("mapped_blocks=\"4\""), "{crash}");
    assert!(dump().contains("mapped_blocks=\"0\""), "{}", dump());
    r.suspend("pool", SuspendFlags::default()).unwrap();
    assert_eq!(dump(), thin_commit_dump("suspend"));
}

#[test]
fn immutable_types_and_a_second_pool_on_one_metadata_are_refused_as_the_kernel_does() {
    let k = Kernel::new("kernel-6.12-basic.txt");
    let (r, _) = registry(&[VDA, ("254:16", 8192), ("254:32", 32768)]);
    create(&r, "pool", "0 32768 thin-pool 254:16 254:32 128 0");
    assert_eq!(table(&r, "pool", Slot::Live), k.out("table-pool"));
    k.failed(
        "load-pool-linear",
        load(&r, "pool", "0 32768 linear 254:32 0"),
        22,
        Some("can't replace immutable target type thin-pool"),
    );
    assert_eq!(info(&r, "pool"), k.out("info-pool-after-refused"));
    k.failed(
        "create-pool2-second-pool-same-metadata",
        r.create(&spec(
            "pool2",
            "",
            TableMode::ReadWrite,
            "0 32768 thin-pool 254:16 254:32 128 0",
        )),
        16,
        Some("metadata device already in use by a pool"),
    );
    assert!(
        r.device("pool2").is_err(),
        "the half-made device is removed"
    );
    // An error table may replace any type (the wildcard target).
    load(&r, "pool", "0 32768 error").unwrap();
}

/// The line of a step's output that starts with `prefix`.
fn line_of<'a>(k: &'a Kernel, id: &str, prefix: &str) -> &'a str {
    k.out(id)
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{id}: no line starting {prefix:?} in {:?}", k.out(id)))
}

fn status_line(r: &Registry, name: &str) -> String {
    r.status_text(name, Slot::Live)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

fn ev_line(r: &Registry, name: &str) -> String {
    format!("{name}:{}", r.info(name).unwrap().event_nr)
}

/// Write `count` 64 KiB blocks from block `seek`, one request each (dd bs=64k
/// oflag=direct): how many were written, and the error that stopped it.
fn dd(dev: &dyn Volume, seek: u64, count: u64) -> (u64, Option<dmemu::Error>) {
    let buf = vec![0x5au8; 65536];
    for i in 0..count {
        if let Err(e) = dev.write(Sector((seek + i) * 128), &buf) {
            return (i, Some(e));
        }
    }
    (count, None)
}

#[test]
fn thin_pool_low_water_mark_and_out_of_space_events_match_the_kernel() {
    let k = Kernel::new("kernel-6.12-events.txt");
    let (r, _) = registry(&[("254:0", 8192), ("254:16", 8192)]);
    create(
        &r,
        "pool",
        "0 8192 thin-pool 254:0 254:16 128 32 1 error_if_no_space",
    );
    assert_eq!(
        status_line(&r, "pool"),
        line_of(&k, "status-pool-0", "0 8192 thin-pool 0")
    );
    assert_eq!(ev_line(&r, "pool"), line_of(&k, "status-pool-0", "pool:"));
    r.message("pool", Sector(0), &["create_thin", "0"]).unwrap();
    create(&r, "t0", "0 32768 thin /dev/mapper/pool 0");
    let t0 = r.device("t0").unwrap();
    assert_eq!(dd(&*t0, 0, 16).0, 16);
    assert_eq!(status_line(&r, "pool"), line_of(&k, "after-16", "0 8192"));
    assert_eq!(ev_line(&r, "pool"), line_of(&k, "after-16", "pool:"));
    assert_eq!(dd(&*t0, 16, 16).0, 16);
    assert_eq!(status_line(&r, "pool"), line_of(&k, "after-32", "0 8192"));
    assert_eq!(ev_line(&r, "pool"), line_of(&k, "after-32", "pool:"));
    // The 33rd block is allocated with 32 free (= the low water mark): one event, which
    // wakes a waiter.
    std::thread::scope(|sc| {
        let waiter = sc.spawn(|| r.wait_event("pool", 0, Some(Duration::from_secs(20))));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished());
        assert_eq!(dd(&*t0, 32, 1).0, 1);
        assert_eq!(waiter.join().unwrap().unwrap(), 1);
    });
    assert_eq!(status_line(&r, "pool"), line_of(&k, "after-33", "0 8192"));
    assert_eq!(ev_line(&r, "pool"), line_of(&k, "after-33", "pool:"));
    assert_eq!(dd(&*t0, 33, 4).0, 4);
    assert_eq!(
        ev_line(&r, "pool"),
        line_of(&k, "write-more-below-lwm", "pool:")
    );
    // error_if_no_space: the write that finds no block fails ENOSPC (27 of 40 written, as
    // dd reported), and the mode change is the second event.
    let (written, err) = dd(&*t0, 37, 40);
    assert!(k
        .out("fill-pool")
        .contains(&format!("{written}+0 records out")));
    assert_eq!(err.unwrap().errno(), 28);
    assert_eq!(
        status_line(&r, "pool"),
        line_of(&k, "status-pool-full", "0 8192 thin-pool")
    );
    assert_eq!(
        status_line(&r, "t0"),
        line_of(&k, "status-pool-full", "0 32768 thin")
    );
    assert_eq!(
        ev_line(&r, "pool"),
        line_of(&k, "status-pool-full", "pool:")
    );
    assert_eq!(ev_line(&r, "t0"), line_of(&k, "status-pool-full", "t0:"));
    let (_, err) = dd(&*t0, 200, 1);
    assert_eq!(err.unwrap().errno(), 28);
    assert_eq!(ev_line(&r, "pool"), line_of(&k, "write-when-full", "pool:"));
    // Mapped blocks are still written and read, unmapped ones read.
    assert_eq!(dd(&*t0, 0, 1).0, 1);
    let mut b = vec![0u8; 65536];
    t0.read(Sector(0), &mut b).unwrap();
    t0.read(Sector(200 * 128), &mut b).unwrap();
}

#[test]
fn a_full_pool_queues_writes_times_out_and_grows_by_reload_as_the_kernel_does() {
    let k = Kernel::new("kernel-6.12-events.txt");
    let clock = ManualClock::shared();
    let r = Registry::new().with_clock(clock.clone());
    for (name, sectors) in [("254:32", 8192), ("254:48", 16384)] {
        r.insert_volume(
            name,
            Arc::new(MemVolume::new(SectorCount(sectors)).unwrap()),
        );
    }
    // The fixture set /sys/module/dm_thin_pool/parameters/no_space_timeout to 8.
    assert!(k.out("no-space-timeout").starts_with("60\n"));
    r.set_thin_no_space_timeout(Duration::from_secs(8));
    create(&r, "pd2", "0 4096 linear 254:48 0");
    create(&r, "pool2", "0 4096 thin-pool 254:32 /dev/mapper/pd2 128 0");
    r.message("pool2", Sector(0), &["create_thin", "0"])
        .unwrap();
    create(&r, "t2", "0 32768 thin /dev/mapper/pool2 0");
    assert_eq!(
        status_line(&r, "pool2"),
        line_of(&k, "create-pool2", "0 4096 thin-pool")
    );
    let t2 = r.device("t2").unwrap();
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| dd(&*t2, 0, 40));
        // The 33rd write finds no block and waits (queue_if_no_space).
        assert!(clock.wait_for_sleepers(1, Duration::from_secs(20)));
        assert!(!writer.is_finished());
        assert_eq!(
            status_line(&r, "pool2"),
            line_of(&k, "pool2-queueing", "0 4096 thin-pool")
        );
        assert_eq!(
            ev_line(&r, "pool2"),
            line_of(&k, "pool2-queueing", "pool2:")
        );
        // no_space_timeout: the pool turns to error_if_no_space (an event) and the
        // queued write fails ENOSPC.
        clock.advance(Duration::from_secs(8));
        let (written, err) = writer.join().unwrap();
        assert!(k
            .out("pool2-timeout")
            .contains(&format!("{written}+0 records out")));
        assert_eq!(err.unwrap().errno(), 28);
    });
    assert_eq!(
        status_line(&r, "pool2"),
        line_of(&k, "pool2-timeout", "0 4096 thin-pool")
    );
    assert_eq!(ev_line(&r, "pool2"), line_of(&k, "pool2-timeout", "pool2:"));
    // Grow the data device, reload the pool with the new length: the same pool (thin t2
    // keeps working), back to write mode (an event), the data space map grown.
    load(&r, "pd2", "0 16384 linear 254:48 0").unwrap();
    r.resume("pd2").unwrap();
    load(
        &r,
        "pool2",
        "0 16384 thin-pool 254:32 /dev/mapper/pd2 128 0",
    )
    .unwrap();
    r.resume("pool2").unwrap();
    assert_eq!(
        status_line(&r, "pool2"),
        line_of(&k, "grow-pool2", "0 16384 thin-pool")
    );
    assert_eq!(ev_line(&r, "pool2"), line_of(&k, "grow-pool2", "pool2:"));
    assert_eq!(dd(&*t2, 100, 4).0, 4);
    assert_eq!(
        status_line(&r, "pool2"),
        line_of(&k, "write-after-grow", "0 16384 thin-pool")
    );
    assert_eq!(
        ev_line(&r, "pool2"),
        line_of(&k, "write-after-grow", "pool2:")
    );
}

#[test]
fn showkeys_prints_the_key_that_key_wipe_and_key_set_left() {
    let k = Kernel::new("kernel-6.12-crypt-keys.txt");
    let (r, _) = registry(&[("254:0", 8192)]);
    let k1 = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let k2 = "f0e0d0c0b0a090807060504030201000ffeeddccbbaa99887766554433221100";
    create(
        &r,
        "cr",
        &format!("0 2048 crypt aes-xts-plain64 {k1} 0 254:0 0"),
    );
    let both = |r: &Registry| {
        r.table_text("cr", Slot::Live, Keys::Shown).unwrap()
            + &r.table_text("cr", Slot::Live, Keys::Hidden).unwrap()
    };
    assert_eq!(both(&r), k.out("showkeys-initial"));
    r.suspend("cr", SuspendFlags::default()).unwrap();
    k.ok("wipe", r.message("cr", Sector(0), &["key", "wipe"]));
    assert_eq!(both(&r), k.out("showkeys-wiped"));
    k.ok("set", r.message("cr", Sector(0), &["key", "set", k2]));
    assert_eq!(both(&r), k.out("showkeys-set"));
    k.ok("resume", r.resume("cr"));
    assert_eq!(
        r.table_text("cr", Slot::Live, Keys::Shown).unwrap(),
        k.out("showkeys-resumed")
            .lines()
            .next()
            .unwrap()
            .to_string()
            + "\n"
    );
}
