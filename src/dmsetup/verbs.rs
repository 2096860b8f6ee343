//! dmsetup's verbs over a `Registry`: what dmsetup 1.02.185 prints on stdout and stderr, and
//! its exit status, for each command line (checked against the 6.12 kernel's answers in
//! tests/fixtures/dmsetup). The device host runs these; without a host, the commands that
//! need no device run against an empty registry in the calling process.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::args::Invocation;
use super::paths::{self, Resolved};
use super::report::{render, split_lvm_name, Align, Column, Layout};
use super::{attr, deps_line, info_text_with, DepsForm, READ_AHEAD_SECTORS};
use crate::error::{Error, Result};
use crate::mapped_device::{DeviceInfo, MappedDevice, Slot, SuspendFlags, DM_MAJOR};
use crate::registry::{Dep, Registry, RemoveMode};
use crate::serve::{Export, ExportAccess, Exports};
use crate::table::{parse_concise, parse_table, DeviceSpec, Table, TableLine, TableMode};
use crate::targets::{Keys, TargetSpec};
use crate::units::{Sector, SectorCount};

/// dmsetup's usage text (`_usage`).
pub const USAGE: &str = include_str!("usage.txt");
/// The report field list (`help -c`, an unknown `-o` field).
pub const FIELDS: &str = include_str!("fields.txt");

/// `dmsetup stats` without a subcommand: dmstats's usage (dmsetup 1.02.185, from the oracle).
const STATS_USAGE: &str = include_str!("stats_usage.txt");
/// `dmsetup version`.
pub const VERSION: &str = "Library version:   1.02.185 (2022-05-18)\nDriver version:    4.48.0\n";

/// The targets dmemu executes, with the 6.12 kernel's versions (`dmsetup targets`).
pub const TARGETS: &[(&str, &str)] = &[
    ("log-writes", "1.1.0"),
    ("dust", "1.0.0"),
    ("flakey", "1.5.0"),
    ("delay", "1.4.0"),
    ("verity", "1.10.0"),
    ("crypt", "1.28.0"),
    ("thin", "1.23.0"),
    ("thin-pool", "1.23.0"),
    ("snapshot-merge", "1.5.0"),
    ("snapshot", "1.16.0"),
    ("snapshot-origin", "1.9.0"),
    ("zero", "1.2.0"),
    ("striped", "1.6.0"),
    ("linear", "1.4.0"),
    ("error", "1.7.0"),
];

/// What a command prints (in the order it printed it) and its exit status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// The text written, each piece with whether it went to stderr.
    pub parts: Vec<(bool, String)>,
    /// Exit status.
    pub code: i32,
    /// Commands the caller runs after printing, in order, each waited for and its status
    /// ignored (`ls --exec`: dmsetup forks them in the caller's context).
    #[serde(default)]
    pub exec: Vec<Vec<String>>,
}

impl Output {
    /// Write to stdout.
    pub fn out(&mut self, s: &str) {
        self.push(false, s);
    }

    /// Write to stderr.
    pub fn err(&mut self, s: &str) {
        self.push(true, s);
    }

    fn push(&mut self, err: bool, s: &str) {
        if s.is_empty() {
            return;
        }
        match self.parts.last_mut() {
            Some((e, t)) if *e == err => t.push_str(s),
            _ => self.parts.push((err, s.to_string())),
        }
    }

    /// Put `s` on stderr before everything else.
    pub fn err_first(&mut self, s: &str) {
        if !s.is_empty() {
            self.parts.insert(0, (true, s.to_string()));
        }
    }

    /// Everything written to stdout.
    #[must_use]
    pub fn stdout(&self) -> String {
        self.parts
            .iter()
            .filter(|p| !p.0)
            .map(|p| p.1.as_str())
            .collect()
    }

    /// Everything written to stderr.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.parts
            .iter()
            .filter(|p| p.0)
            .map(|p| p.1.as_str())
            .collect()
    }

    /// Write it out, in order, to the process's stdout and stderr.
    pub fn print(&self) -> i32 {
        use std::io::Write as _;
        for (err, t) in &self.parts {
            if *err {
                let _ = std::io::stdout().flush();
                let _ = std::io::stderr().write_all(t.as_bytes());
            } else {
                let _ = std::io::stdout().write_all(t.as_bytes());
            }
        }
        let _ = std::io::stdout().flush();
        for argv in &self.exec {
            if let Some((prog, args)) = argv.split_first() {
                // execvp in a child; one that cannot start is dmsetup's `_exit(127)`.
                let _ = std::process::Command::new(prog).args(args).status();
            }
        }
        self.code
    }
}

/// What a command sees of its caller besides the argv.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Env {
    /// The program name getopt's messages use.
    pub prog: String,
    /// Standard input, read by the caller when the command takes a table from it.
    pub stdin: Option<Vec<u8>>,
    /// `$DM_DEV_DIR` (default `/dev`): `$DM_DEV_DIR/mapper/NAME` names a device.
    pub dev_dir: String,
    /// The caller's locale is UTF-8 (`ls --tree` draws with line characters).
    pub utf8: bool,
}

/// Whether the command takes its table from stdin (the caller reads it and sends it).
#[must_use]
pub fn needs_stdin(inv: &Invocation) -> bool {
    match inv.command.as_deref() {
        Some("create") => {
            if inv.has("concise") {
                inv.args.is_empty()
            } else {
                !inv.has("table") && !inv.has("notable") && inv.args.len() < 2
            }
        }
        Some("load" | "reload") => !inv.has("table") && inv.args.len() < 2,
        _ => false,
    }
}

/// Whether the command may need a device host (creates a device); every other command
/// answers from an empty registry when no host runs.
#[must_use]
pub fn creates_devices(inv: &Invocation) -> bool {
    inv.command.as_deref() == Some("create") && !inv.has("help") && !inv.has("version")
}

/// Whether the command may block (it must not hold the host's command lock).
#[must_use]
pub fn blocks(inv: &Invocation) -> bool {
    inv.command.as_deref() == Some("wait") && !inv.has("help") && !inv.has("version")
}

/// The registry and the per-device state dmsetup keeps beside it (read-ahead).
#[derive(Debug, Default)]
pub struct Frontend {
    /// The devices.
    pub registry: Registry,
    read_ahead: Mutex<BTreeMap<String, u32>>,
    /// Where the kernel's reasons (dmesg lines) go, if anywhere.
    pub log: Option<PathBuf>,
    /// The device host's NBD exports: one per device with a live table, named as the
    /// device (`sync_exports` after each command); an NBD client holding one open counts
    /// as an opener.
    pub exports: Option<Exports>,
    /// The device host's own device nodes (its FUSE mount), if it mounted them.
    pub nodes: Option<NodeDir>,
}

/// Where the device host shows its devices as files (`DM_DEV_DIR/mapper`).
#[derive(Clone, Debug)]
pub struct NodeDir {
    /// The directory, canonical (taken before the mount: nothing in it is ever looked at).
    pub dir: PathBuf,
    /// The mount's device number (`st_dev`), which tells its files under any other path.
    pub dev: Option<u64>,
}

struct Cmd {
    name: &'static str,
    min: usize,
    max: Option<usize>,
    repeatable: bool,
    f: fn(&Frontend, &mut Cx, &[String]) -> bool,
}

/// One command's context.
struct Cx<'a> {
    inv: &'a Invocation,
    env: &'a Env,
    out: Output,
    multiple: bool,
    /// `info -c` rows, printed as one report after the last device.
    rows: Vec<(DeviceInfo, u32)>,
}

impl Cx<'_> {
    fn o(&mut self, s: &str) {
        self.out.out(s);
    }
    fn e(&mut self, s: &str) {
        self.out.err(s);
    }
}

const COMMANDS: &[Cmd] = &[
    Cmd {
        name: "help",
        min: 0,
        max: Some(0),
        repeatable: false,
        f: Frontend::help,
    },
    Cmd {
        name: "create",
        min: 0,
        max: Some(2),
        repeatable: false,
        f: Frontend::create,
    },
    Cmd {
        name: "remove",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::remove,
    },
    Cmd {
        name: "remove_all",
        min: 0,
        max: Some(0),
        repeatable: false,
        f: Frontend::remove_all,
    },
    Cmd {
        name: "suspend",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::suspend,
    },
    Cmd {
        name: "resume",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::resume,
    },
    Cmd {
        name: "load",
        min: 0,
        max: Some(2),
        repeatable: false,
        f: Frontend::load,
    },
    Cmd {
        name: "clear",
        min: 0,
        max: Some(1),
        repeatable: false,
        f: Frontend::clear,
    },
    Cmd {
        name: "reload",
        min: 0,
        max: Some(2),
        repeatable: false,
        f: Frontend::load,
    },
    Cmd {
        name: "wipe_table",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::wipe_table,
    },
    Cmd {
        name: "rename",
        min: 1,
        max: Some(2),
        repeatable: false,
        f: Frontend::rename,
    },
    Cmd {
        name: "measure",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::measure,
    },
    Cmd {
        name: "message",
        min: 2,
        max: None,
        repeatable: false,
        f: Frontend::message,
    },
    Cmd {
        name: "ls",
        min: 0,
        max: Some(0),
        repeatable: false,
        f: Frontend::ls,
    },
    Cmd {
        name: "info",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::info,
    },
    Cmd {
        name: "deps",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::deps,
    },
    Cmd {
        name: "stats",
        min: 0,
        max: None,
        repeatable: false,
        f: Frontend::stats,
    },
    Cmd {
        name: "status",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::status,
    },
    Cmd {
        name: "table",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::table,
    },
    Cmd {
        name: "wait",
        min: 0,
        max: Some(2),
        repeatable: false,
        f: Frontend::wait,
    },
    Cmd {
        name: "mknodes",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::noop,
    },
    Cmd {
        name: "mangle",
        min: 0,
        max: None,
        repeatable: true,
        f: Frontend::mangle,
    },
    Cmd {
        name: "udevcreatecookie",
        min: 0,
        max: Some(0),
        repeatable: false,
        f: Frontend::noop,
    },
    Cmd {
        name: "udevreleasecookie",
        min: 0,
        max: Some(1),
        repeatable: false,
        f: Frontend::noop,
    },
    Cmd {
        name: "udevflags",
        min: 1,
        max: Some(1),
        repeatable: false,
        f: Frontend::cookie,
    },
    Cmd {
        name: "udevcomplete",
        min: 1,
        max: Some(1),
        repeatable: false,
        f: Frontend::cookie,
    },
    Cmd {
        name: "udevcomplete_all",
        min: 0,
        max: Some(1),
        repeatable: false,
        f: Frontend::udevcomplete_all,
    },
    Cmd {
        name: "udevcookies",
        min: 0,
        max: Some(0),
        repeatable: false,
        f: Frontend::udevcookies,
    },
    Cmd {
        name: "target-version",
        min: 1,
        max: None,
        repeatable: true,
        f: Frontend::target_version,
    },
    Cmd {
        name: "targets",
        min: 0,
        max: Some(0),
        repeatable: false,
        f: Frontend::targets,
    },
    Cmd {
        name: "version",
        min: 0,
        max: Some(0),
        repeatable: false,
        f: Frontend::version,
    },
    Cmd {
        name: "setgeometry",
        min: 5,
        max: Some(5),
        repeatable: false,
        f: Frontend::noop_device,
    },
    Cmd {
        name: "splitname",
        min: 1,
        max: Some(2),
        repeatable: false,
        f: Frontend::splitname,
    },
];

/// `strerror(errno)`.
#[must_use]
pub fn strerror(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A table line's (`START LEN TYPE ARGS...`) IMA string, as its 6.12 target emits it for
/// `STATUSTYPE_IMA`; `None` for a target dmemu has no string for.
fn ima_string(t: &[&str]) -> Option<String> {
    let ty = *t.get(2)?;
    let args = &t[3..];
    let head = |name: &str| {
        let v = TARGETS.iter().find(|(n, _)| *n == name).map_or("", |x| x.1);
        format!("target_name={name},target_version={v}")
    };
    match ty {
        "zero" | "error" | "delay" | "flakey" | "dust" | "log-writes" => Some(String::new()),
        "linear" => Some(format!(
            "{},device_name={},start={};",
            head("linear"),
            args.first()?,
            args.get(1)?
        )),
        "striped" => {
            let n: usize = args.first()?.parse().ok()?;
            let mut s = format!(
                "{},stripes={n},chunk_size={}",
                head("striped"),
                args.get(1)?
            );
            for i in 0..n {
                let dev = args.get(2 + 2 * i)?;
                let start = args.get(3 + 2 * i)?;
                let _ = write!(
                    s,
                    ",stripe_{i}_device_name={dev},stripe_{i}_physical_start={start},stripe_{i}_status=A"
                );
            }
            s.push(';');
            Some(s)
        }
        _ => None,
    }
}

/// The info columns dmsetup knows that dmemu reports.
fn info_column(id: &str) -> Option<Column> {
    let c = |id, heading, width, align| Column {
        id,
        heading,
        width,
        align,
    };
    Some(match id {
        "name" => c("name", "Name", 16, Align::Left),
        "uuid" => c("uuid", "UUID", 32, Align::Left),
        "read_ahead" => c("read_ahead", "RAhead", 6, Align::Right),
        "blkdevname" => c("blkdevname", "BlkDevName", 16, Align::Left),
        "attr" => c("attr", "Stat", 4, Align::Left),
        "major" => c("major", "Maj", 3, Align::Right),
        "minor" => c("minor", "Min", 3, Align::Right),
        "open" => c("open", "Open", 4, Align::Right),
        "segments" => c("segments", "Targ", 4, Align::Right),
        "events" => c("events", "Event", 6, Align::Right),
        "devno" => c("devno", "DevNo", 5, Align::Left),
        "tables_loaded" => c("tables_loaded", "Tables", 6, Align::Left),
        "suspended" => c("suspended", "Suspended", 9, Align::Left),
        "readonly" => c("readonly", "Read-only", 9, Align::Left),
        _ => return None,
    })
}

fn info_value(id: &str, i: &DeviceInfo, read_ahead: u32) -> String {
    match id {
        "name" => i.name.clone(),
        "uuid" => i.uuid.clone().unwrap_or_default(),
        "read_ahead" => read_ahead.to_string(),
        "blkdevname" => format!("dm-{}", i.minor),
        "attr" => attr(i),
        "major" => i.major.to_string(),
        "minor" => i.minor.to_string(),
        "open" => i.open_count.to_string(),
        "segments" => i.target_count.to_string(),
        "events" => i.event_nr.to_string(),
        "devno" => format!("{}:{}", i.major, i.minor),
        "tables_loaded" => match (i.live_table, i.inactive_table) {
            (true, true) => "Both",
            (true, false) => "Live",
            (false, true) => "Inactive",
            (false, false) => "None",
        }
        .to_string(),
        "suspended" => if i.state == crate::mapped_device::DeviceState::Suspended {
            "Suspended"
        } else {
            "Active"
        }
        .to_string(),
        "readonly" => if i.read_only {
            "Read-only"
        } else {
            "Writeable"
        }
        .to_string(),
        _ => String::new(),
    }
}

/// Block device required (a path that is no device node).
const ENOTBLK: i32 = 15;

const DEFAULT_INFO_FIELDS: &str = "name,major,minor,attr,open,segments,events,uuid";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Frontend {
    /// A front end over `registry`.
    #[must_use]
    pub fn new(registry: Registry) -> Frontend {
        Frontend {
            registry,
            read_ahead: Mutex::new(BTreeMap::new()),
            log: None,
            exports: None,
            nodes: None,
        }
    }

    /// Opens of `name` by NBD clients.
    fn export_users(&self, name: &str) -> u32 {
        self.exports
            .as_ref()
            .and_then(|e| e.open_count(name))
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// `DM_DEV_STATUS` with NBD clients counted as openers.
    fn info_of(&self, name: &str) -> Result<DeviceInfo> {
        let mut i = self.registry.info(name)?;
        i.open_count += self.export_users(&i.name);
        Ok(i)
    }

    /// Make the exports match the devices: every device with a live table is exported under
    /// its name (read-only when its table is); an export whose device went away, was
    /// renamed or changed size goes, unless a client still has it open.
    pub fn sync_exports(&self) {
        let Some(ex) = &self.exports else { return };
        let mut live: BTreeMap<String, (Arc<MappedDevice>, bool)> = BTreeMap::new();
        for (n, _) in self.registry.list() {
            if let Ok(d) = self.registry.device(&n) {
                if d.live_table().is_some() {
                    let ro = d.info().read_only;
                    live.insert(n, (d, ro));
                }
            }
        }
        for e in ex.list() {
            let keep = live.get(e.name()).is_some_and(|(d, _)| {
                std::ptr::addr_eq(Arc::as_ptr(e.volume()), Arc::as_ptr(d))
                    && e.size() == crate::volume::Volume::size(d.as_ref()).bytes()
            });
            if !keep {
                let _ = ex.remove(e.name());
            }
        }
        for (n, (d, ro)) in live {
            if ex.find(n.as_bytes()).is_none() {
                let access = if ro {
                    ExportAccess::ReadOnly
                } else {
                    ExportAccess::ReadWrite
                };
                let vol: crate::volume::SharedVolume = d;
                let _ = ex.add(Arc::new(Export::new(n, vol).with_access(access)));
            }
        }
    }

    /// Run one parsed command line.
    pub fn run(&self, inv: &Invocation, env: &Env) -> Output {
        let mut cx = Cx {
            inv,
            env,
            out: Output::default(),
            multiple: false,
            rows: Vec::new(),
        };
        let name = if inv.has("help") {
            Some("help")
        } else if inv.has("version") {
            Some("version")
        } else {
            inv.command.as_deref()
        };
        let Some(name) = name else {
            cx.e(USAGE);
            cx.out.code = 1;
            return cx.out;
        };
        let Some(cmd) = COMMANDS.iter().find(|c| c.name == name) else {
            cx.e("Unknown command.\n");
            cx.e(USAGE);
            cx.out.code = 1;
            return cx.out;
        };
        let args: &[String] = if inv.has("help") || inv.has("version") {
            &[]
        } else {
            &inv.args
        };
        if args.len() < cmd.min || cmd.max.is_some_and(|m| args.len() > m) {
            cx.e("Incorrect number of arguments.\n");
            cx.e(USAGE);
            cx.out.code = 1;
            return cx.out;
        }
        if cmd.name != "help"
            && cmd.name != "splitname"
            && inv.has("columns")
            && !self.check_fields(&mut cx)
        {
            cx.out.code = 1;
            return cx.out;
        }
        if let Some(msg) = option_error(inv) {
            cx.e(&msg);
            cx.e("Couldn't process command line.\n");
            cx.out.code = 1;
            return cx.out;
        }
        cx.multiple = cmd.repeatable
            && args.len() != 1
            && (!args.is_empty() || (!inv.has("uuid") && !inv.has("major")));
        let mut rest = args;
        loop {
            if !(cmd.f)(self, &mut cx, rest) {
                cx.e("Command failed.\n");
                cx.out.code = 1;
                break;
            }
            if !cmd.repeatable || rest.len() <= 1 {
                break;
            }
            rest = &rest[1..];
        }
        if !cx.rows.is_empty() {
            let rows = std::mem::take(&mut cx.rows);
            self.info_report(&mut cx, &rows);
        }
        cx.out
    }

    fn log(&self, line: &str) {
        if let Some(p) = &self.log {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    /// `device-mapper: IOCTL ioctl on NAME DEVNO failed: STRERROR`, the reason logged.
    fn ioctl_error(
        &self,
        cx: &mut Cx,
        ioctl: &str,
        name: &str,
        devno: Option<(u32, u32)>,
        e: &Error,
    ) {
        let devno = devno.map_or(String::new(), |(a, b)| format!("({a}:{b})"));
        cx.e(&format!(
            "device-mapper: {ioctl} ioctl on {name} {devno} failed: {}\n",
            strerror(e.errno())
        ));
        self.log(&format!("device-mapper: {ioctl} {name}: {}", e.chain()));
    }

    /// The name a device argument gives: `/dev/mapper/NAME`, `$DM_DEV_DIR/mapper/NAME` and
    /// any other path resolving into a device-node directory (relative to the working
    /// directory, through `..` or symlinks: [`paths::resolve`]) name NAME; anything else
    /// is itself.
    fn strip(&self, env: &Env, name: &str) -> String {
        if !name.contains('/') {
            return name.to_string();
        }
        match self.node_of(env, name) {
            Ok(Some(n)) => n,
            _ => name.to_string(),
        }
    }

    /// The device-node directories a path may reach: the host's own (its mount),
    /// `$DM_DEV_DIR/mapper` and `/dev/mapper`, each canonical.
    fn node_dirs(&self, env: &Env) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.nodes.iter().map(|n| n.dir.clone()).collect();
        let mut add = |dev: &str| {
            if dev.is_empty() {
                return;
            }
            if let Ok(Resolved::Path(p)) = paths::resolve(std::path::Path::new(dev), &dirs) {
                let m = p.join("mapper");
                if !dirs.contains(&m) {
                    dirs.push(m);
                }
            }
        };
        add(&env.dev_dir);
        add("/dev");
        dirs
    }

    /// The device NAME a device path names (`None`: the path is no device node: an image
    /// file, or nothing). A bare word is a path relative to the working directory here. A path into the host's own mount under some other name (a bind mount)
    /// names the device its file shows; a node-directory itself is no device (ENOTBLK).
    fn node_of(&self, env: &Env, name: &str) -> Result<Option<String>> {
        let own = format!("{}/mapper/", env.dev_dir.trim_end_matches('/'));
        if let Some(n) = name
            .strip_prefix(own.as_str())
            .or_else(|| name.strip_prefix("/dev/mapper/"))
        {
            return Ok(Some(n.to_string()));
        }
        let io = |e: std::io::Error| Error::Io {
            device: name.to_string(),
            source: e,
        };
        match paths::resolve(std::path::Path::new(name), &self.node_dirs(env)).map_err(io)? {
            Resolved::Node(n) => Ok(Some(n)),
            Resolved::NodeDir => Err(io(std::io::Error::from_raw_os_error(ENOTBLK))),
            Resolved::Path(p) => {
                let own_dev = self.nodes.as_ref().and_then(|n| n.dev);
                let dev = std::fs::metadata(&p).ok().map(|m| m.dev());
                if own_dev.is_none() || dev != own_dev {
                    return Ok(None);
                }
                match p.file_name().and_then(|f| f.to_str()) {
                    Some(f) => Ok(Some(f.to_string())),
                    None => Err(io(std::io::Error::from_raw_os_error(ENOTBLK))),
                }
            }
        }
    }

    /// The device a command names: its argument, or `-u UUID`, or `-j MAJ -m MIN`. `None`
    /// when none is named.
    fn target_name(&self, cx: &Cx, arg: Option<&String>) -> Option<String> {
        if let Some(a) = arg {
            return Some(self.strip(cx.env, a));
        }
        if let Some(u) = cx.inv.value("uuid") {
            return Some(
                self.registry
                    .device_by_uuid(u)
                    .map_or_else(|_| u.to_string(), |d| d.name()),
            );
        }
        if let (Some(_), Some(mi)) = (cx.inv.value("major"), cx.inv.value("minor")) {
            let m: u32 = mi.trim().parse().unwrap_or(u32::MAX);
            return Some(
                self.registry
                    .mapped(&format!("{DM_MAJOR}:{m}"))
                    .map_or_else(|| format!("{DM_MAJOR}:{m}"), |d| d.name()),
            );
        }
        None
    }

    fn ra(&self, name: &str) -> u32 {
        lock(&self.read_ahead)
            .get(name)
            .copied()
            .unwrap_or(READ_AHEAD_SECTORS)
    }

    fn set_read_ahead(&self, cx: &Cx, name: &str) {
        if let Some(v) = cx.inv.value("readahead") {
            let v = v.trim();
            let n = match v {
                // libdm's DM_READ_AHEAD_AUTO: the kernel's value stays.
                "auto" => return,
                "none" => 0,
                _ => {
                    let num: u32 = v.trim_start_matches('+').parse().unwrap_or(0);
                    if v.starts_with('+') {
                        num.max(READ_AHEAD_SECTORS)
                    } else {
                        num
                    }
                }
            };
            lock(&self.read_ahead).insert(name.to_string(), n);
        }
    }

    // ----- tables -----

    /// The table text a create/load takes: `--table`, a file argument, or stdin.
    fn table_text(cx: &mut Cx, file: Option<&String>) -> Option<Vec<u8>> {
        if let Some(t) = cx.inv.value("table") {
            return Some(t.as_bytes().to_vec());
        }
        if let Some(f) = file {
            return match std::fs::read(f) {
                Ok(b) => Some(b),
                Err(_) => {
                    cx.e(&format!("Couldn't open '{f}' for reading.\n"));
                    None
                }
            };
        }
        Some(cx.env.stdin.clone().unwrap_or_default())
    }

    /// libdm's own check of each line (`_parse_line`): `start length type` at least.
    fn check_format(cx: &mut Cx, text: &[u8], file: &str) -> bool {
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = String::from_utf8_lossy(raw);
            if !crate::table::parse::dmsetup_splits(&line) {
                cx.e(&format!(
                    "Invalid format on line {} of table {file}.\n",
                    i + 1
                ));
                return false;
            }
        }
        true
    }

    /// Parse a table, naming mapped devices the way the kernel prints them (`253:N`): a
    /// device reference that is `NAME`, `/dev/mapper/NAME` or `$DM_DEV_DIR/mapper/NAME` of an
    /// existing device becomes its number.
    fn parse(&self, env: &Env, text: &[u8]) -> Result<Table> {
        let table = parse_table(text)?;
        self.canonical(env, &table)
    }

    fn canonical(&self, env: &Env, table: &Table) -> Result<Table> {
        let mut changed = false;
        let mut lines = Vec::new();
        for line in &table.lines {
            let refs = line.spec.device_refs();
            let text = line.to_text(Keys::Shown);
            let mut toks: Vec<String> = text.split(' ').map(str::to_string).collect();
            for t in toks.iter_mut().skip(3) {
                if !refs.iter().any(|r| r == t) || crate::registry::is_major_minor(t) {
                    continue;
                }
                // A bare word names a device before it names a file.
                let d = match self.registry.mapped(t) {
                    Some(d) if !t.contains('/') => d,
                    _ => {
                        let Some(name) = self.node_of(env, t)? else {
                            continue;
                        };
                        // A device node of no device is never opened as a file.
                        self.registry.mapped(&name).ok_or_else(|| {
                            Error::NoDevice(format!("{t} (no device of that name is defined)"))
                        })?
                    }
                };
                let (ma, mi) = d.dev();
                *t = format!("{ma}:{mi}");
                changed = true;
            }
            lines.push(toks.join(" "));
        }
        if !changed {
            return Ok(table.clone());
        }
        parse_table(lines.join("\n").as_bytes())
    }

    // ----- verbs -----

    fn help(&self, cx: &mut Cx, _: &[String]) -> bool {
        cx.e(USAGE);
        if cx.inv.has("columns") {
            cx.e(FIELDS);
        }
        true
    }

    fn version(&self, cx: &mut Cx, _: &[String]) -> bool {
        cx.o(VERSION);
        true
    }

    fn targets(&self, cx: &mut Cx, _: &[String]) -> bool {
        for (n, v) in TARGETS {
            cx.o(&format!("{n:<16} v{v}\n"));
        }
        true
    }

    fn target_version(&self, cx: &mut Cx, args: &[String]) -> bool {
        let name = &args[0];
        match TARGETS.iter().find(|(n, _)| n == name) {
            Some((n, v)) => {
                cx.o(&format!("{n:<16} v{v}\n"));
                true
            }
            None => {
                self.ioctl_error(
                    cx,
                    "target-version",
                    "",
                    None,
                    &Error::invalid("target", format!("{name}: unknown target type")),
                );
                false
            }
        }
    }

    fn noop(&self, _: &mut Cx, _: &[String]) -> bool {
        true
    }

    fn noop_device(&self, cx: &mut Cx, args: &[String]) -> bool {
        match self.target_name(cx, args.first()) {
            Some(n) if self.registry.device(&n).is_err() => {
                cx.e("Device does not exist.\n");
                false
            }
            _ => true,
        }
    }

    /// `measure`: each live table line as `START LEN TYPE IMA`, the string the 6.12 target
    /// gives dm-ima (`STATUSTYPE_IMA`): linear's and striped's; empty for zero, error,
    /// delay, flakey, dust and log-writes, as theirs are. Other targets are refused with
    /// one line rather than given a made-up string.
    fn measure(&self, cx: &mut Cx, args: &[String]) -> bool {
        self.each(cx, args, |me, cx, n| {
            let text = match me.registry.device(n) {
                Ok(d) => d.table_text_of(Slot::Live, Keys::Hidden),
                Err(_) => {
                    cx.e("Device does not exist.\n");
                    return false;
                }
            };
            let mut lines = String::new();
            for l in text.lines() {
                let t: Vec<&str> = l.split(' ').collect();
                let Some(ima) = ima_string(&t) else {
                    cx.e(&format!(
                        "dmsetup measure: dmemu does not compute the IMA string of a {} target.\n",
                        t.get(2).unwrap_or(&"")
                    ));
                    return false;
                };
                let _ = writeln!(lines, "{} {} {} {ima}", t[0], t[1], t[2]);
            }
            me.lines(cx, n, &lines);
            true
        })
    }

    /// `stats` (dmstats) as dmsetup answers with no regions, which is always so here:
    /// `list`, `report`, and `print`/`delete`/`clear` with `--allregions` or
    /// `--regionid` print nothing for devices that exist. Creating regions is refused.
    fn stats(&self, cx: &mut Cx, args: &[String]) -> bool {
        let Some((sub, devs)) = args.split_first() else {
            // dmstats's own usage error: status 1 without libdm's `Command failed.`.
            cx.e("Incorrect number of arguments.\n");
            cx.e(STATS_USAGE);
            cx.out.code = 1;
            return true;
        };
        match sub.as_str() {
            "list" | "report" | "print" | "delete" | "clear" => {}
            _ => {
                cx.e(&format!(
                    "dmsetup stats {sub}: not available in dmemu (no I/O statistics are kept).\n"
                ));
                return false;
            }
        }
        let needs_region = matches!(sub.as_str(), "print" | "delete" | "clear");
        if needs_region && !cx.inv.has("allregions") && !cx.inv.has("regionid") {
            cx.e("Please specify a --regionid or use --allregions.\n");
            return false;
        }
        for d in devs {
            if self.registry.device(&self.strip(cx.env, d)).is_err() {
                cx.e("Device does not exist.\n");
                return false;
            }
        }
        true
    }

    /// `udevflags`/`udevcomplete COOKIE`: no udev here, so any valid cookie is done.
    fn cookie(&self, cx: &mut Cx, args: &[String]) -> bool {
        let c = &args[0];
        let v = match c.strip_prefix("0x").or_else(|| c.strip_prefix("0X")) {
            Some(h) => u32::from_str_radix(h, 16).ok(),
            None => c.parse::<u32>().ok(),
        };
        if v.is_none_or(|v| v == 0) {
            cx.e("Incorrect cookie value.\n");
            return false;
        }
        true
    }

    fn mangle(&self, cx: &mut Cx, args: &[String]) -> bool {
        self.each(cx, args, |me, cx, n| match me.registry.device(n) {
            Ok(d) => {
                let (u, and) = d
                    .uuid()
                    .map_or(("[no UUID]".to_string(), ""), |u| (u, "and UUID "));
                cx.o(&format!("{n}: {u}: name {and}already in correct form\n"));
                true
            }
            Err(_) => {
                cx.e("Device does not exist.\n");
                false
            }
        })
    }

    fn udevcomplete_all(&self, cx: &mut Cx, args: &[String]) -> bool {
        // `udevcomplete_all AGE`: only cookies older than AGE minutes.
        let older = args
            .first()
            .map_or(String::new(), |a| format!("older than {a} minutes "));
        if cx.inv.has("yes") {
            cx.o("0 semaphores with keys prefixed by 3405 (0xd4d) destroyed. 0 skipped.\n");
        } else {
            // dmsetup asks on the terminal; the host has none, which answers no.
            cx.e(&format!("WARNING: This operation will destroy all semaphores {older}with keys that have a prefix 3405 (0xd4d).\n"));
            cx.o("Do you really want to continue? [y/n]: \nSemaphores with keys prefixed by 3405 (0xd4d) NOT destroyed.\n");
        }
        true
    }

    fn udevcookies(&self, cx: &mut Cx, _: &[String]) -> bool {
        cx.o("Cookie       Semid      Value      Last semop time           Last change time\n");
        true
    }

    fn splitname(&self, cx: &mut Cx, args: &[String]) -> bool {
        let parts = match args.get(1).map(String::as_str) {
            None | Some("LVM") => split_lvm_name(&args[0]),
            Some(_) => [args[0].clone(), String::new(), String::new()],
        };
        let cols = [
            Column {
                id: "vg_name",
                heading: "VG",
                width: 4,
                align: Align::Left,
            },
            Column {
                id: "lv_name",
                heading: "LV",
                width: 4,
                align: Align::Left,
            },
            Column {
                id: "lv_layer",
                heading: "LVLayer",
                width: 7,
                align: Align::Left,
            },
        ];
        let layout = Layout::new(
            cx.inv.has("noheadings"),
            cx.inv.value("separator"),
            cx.inv.has("nameprefixes"),
        );
        cx.o(&render(&cols, &[parts.to_vec()], &layout));
        true
    }

    /// `-c -o FIELDS`: every field must be known; otherwise the field list, status 1.
    fn check_fields(&self, cx: &mut Cx) -> bool {
        let fields = cx.inv.value("options").unwrap_or(DEFAULT_INFO_FIELDS);
        match fields
            .split(',')
            .find(|f| !f.is_empty() && info_column(f).is_none())
        {
            None => true,
            Some(f) => {
                cx.e(FIELDS);
                if f != "help" && f != "?" {
                    cx.e(&format!("Unrecognised field: {f}\n"));
                }
                false
            }
        }
    }

    fn create(&self, cx: &mut Cx, args: &[String]) -> bool {
        if cx.inv.has("concise") {
            return self.create_concise(cx, args);
        }
        let Some(name) = args.first().cloned() else {
            cx.e("Please provide a name for the new device.\n");
            return false;
        };
        let uuid = cx.inv.value("uuid").map(str::to_string);
        let minor = cx
            .inv
            .value("minor")
            .map(|m| m.trim().parse::<u32>().unwrap_or(0));
        let text = if cx.inv.has("notable") {
            None
        } else {
            let file = cx.inv.args.get(1);
            match Self::table_text(cx, file) {
                Some(t) => Some(t),
                None => return false,
            }
        };
        if let Some(t) = &text {
            let what = cx.inv.args.get(1).cloned().unwrap_or_default();
            if !Self::check_format(cx, t, &what) {
                return false;
            }
        }
        let mode = if cx.inv.has("readonly") {
            TableMode::ReadOnly
        } else {
            TableMode::ReadWrite
        };
        let text = text.filter(|t| t.iter().any(|b| !b.is_ascii_whitespace()));
        self.create_one(cx, &name, uuid.as_deref(), minor, mode, text.map(Err))
    }

    /// Create `name`, then (given a table) load and resume it; a failed load or resume
    /// removes the device again, as libdm does. `table` is raw text (`Err`) or parsed.
    fn create_one(
        &self,
        cx: &mut Cx,
        name: &str,
        uuid: Option<&str>,
        minor: Option<u32>,
        mode: TableMode,
        table: Option<std::result::Result<Table, Vec<u8>>>,
    ) -> bool {
        let shown = minor.map(|m| (DM_MAJOR, m));
        let dev = match self.registry.create_device(name, uuid, minor) {
            Ok(d) => d,
            Err(e) => {
                self.ioctl_error(cx, "create", name, shown, &e);
                return false;
            }
        };
        lock(&self.read_ahead).remove(name);
        self.set_read_ahead(cx, name);
        let devno = Some(dev.dev());
        let Some(table) = table else {
            return true;
        };
        let parsed = match table {
            Ok(t) => self.canonical(cx.env, &t),
            Err(text) => self.parse(cx.env, &text),
        };
        let loaded = parsed.and_then(|t| self.registry.load(name, t, mode));
        if let Err(e) = loaded {
            self.ioctl_error(cx, "reload", name, devno, &e);
            let _ = self.registry.remove(name, RemoveMode::Normal);
            return false;
        }
        if let Err(e) = self.registry.resume(name) {
            self.ioctl_error(cx, "resume", name, devno, &e);
            let _ = self.registry.remove(name, RemoveMode::Normal);
            return false;
        }
        true
    }

    fn create_concise(&self, cx: &mut Cx, args: &[String]) -> bool {
        let text = match args.first() {
            Some(t) => t.clone(),
            None => {
                String::from_utf8_lossy(cx.env.stdin.as_deref().unwrap_or_default()).into_owned()
            }
        };
        let specs: Vec<DeviceSpec> = match parse_concise(text.trim_end_matches('\n')) {
            Ok(s) => s,
            Err(e) => {
                cx.e(&format!(
                    "Invalid concise device specification: {}\n",
                    e.chain()
                ));
                return false;
            }
        };
        for s in specs {
            let mode = if cx.inv.has("readonly") {
                TableMode::ReadOnly
            } else {
                s.mode
            };
            let minor = s.minor.and_then(|m| u32::try_from(m).ok());
            let uuid = Some(s.uuid.as_str()).filter(|u| !u.is_empty());
            if !self.create_one(cx, &s.name, uuid, minor, mode, Some(Ok(s.table.clone()))) {
                return false;
            }
        }
        true
    }

    fn load(&self, cx: &mut Cx, args: &[String]) -> bool {
        let Some(name) = self.target_name(cx, args.first()) else {
            cx.e("Please specify device.\n");
            return false;
        };
        let Some(text) = Self::table_text(cx, args.get(1)) else {
            return false;
        };
        let what = args.get(1).cloned().unwrap_or_default();
        if !Self::check_format(cx, &text, &what) {
            return false;
        }
        let mode = if cx.inv.has("readonly") {
            TableMode::ReadOnly
        } else {
            TableMode::ReadWrite
        };
        let r = self
            .registry
            .device(&name)
            .and_then(|_| self.parse(cx.env, &text))
            .and_then(|t| self.registry.load(&name, t, mode));
        if let Err(e) = r {
            self.ioctl_error(cx, "reload", &name, None, &e);
            return false;
        }
        true
    }

    fn simple(
        &self,
        cx: &mut Cx,
        args: &[String],
        ioctl: &str,
        f: impl FnOnce(&Registry, &str) -> Result<()>,
    ) -> bool {
        let Some(name) = self.target_name(cx, args.first()) else {
            cx.e("No device specified.\n");
            return false;
        };
        match f(&self.registry, &name) {
            Ok(()) => true,
            Err(e) => {
                self.ioctl_error(cx, ioctl, &name, None, &e);
                false
            }
        }
    }

    fn suspend(&self, cx: &mut Cx, args: &[String]) -> bool {
        let flags = SuspendFlags {
            noflush: cx.inv.has("noflush"),
            nolockfs: cx.inv.has("nolockfs"),
        };
        self.simple(cx, args, "suspend", |r, n| r.suspend(n, flags))
    }

    fn resume(&self, cx: &mut Cx, args: &[String]) -> bool {
        let ok = self.simple(cx, args, "resume", Registry::resume);
        if ok {
            if let Some(n) = self.target_name(cx, args.first()) {
                self.set_read_ahead(cx, &n);
            }
        }
        ok
    }

    fn clear(&self, cx: &mut Cx, args: &[String]) -> bool {
        self.simple(cx, args, "clear", Registry::clear)
    }

    fn wipe_table(&self, cx: &mut Cx, args: &[String]) -> bool {
        let Some(name) = self.target_name(cx, args.first()) else {
            cx.e("No device specified.\n");
            return false;
        };
        let dev = match self.registry.device(&name) {
            Ok(d) => d,
            Err(e) => {
                self.ioctl_error(cx, "table", &name, None, &e);
                self.ioctl_error(cx, "reload", &name, None, &e);
                return false;
            }
        };
        let size = dev.live_table().map_or(SectorCount(0), |t| {
            use crate::volume::Volume;
            t.size()
        });
        let table = Table {
            lines: vec![TableLine {
                start: Sector(0),
                len: size,
                spec: TargetSpec::Error,
            }],
        };
        if let Err(e) = self.registry.load(&name, table, TableMode::ReadWrite) {
            self.ioctl_error(cx, "reload", &name, None, &e);
            return false;
        }
        if let Err(e) = self.registry.resume(&name) {
            self.ioctl_error(cx, "resume", &name, None, &e);
            return false;
        }
        true
    }

    fn remove(&self, cx: &mut Cx, args: &[String]) -> bool {
        let Some(name) = self.target_name(cx, args.first()) else {
            cx.e("No device specified.\n");
            return false;
        };
        let mode = if cx.inv.has("deferred") {
            RemoveMode::Deferred
        } else if cx.inv.has("force") {
            RemoveMode::Force
        } else {
            RemoveMode::Normal
        };
        if mode == RemoveMode::Force && !args.is_empty() {
            self.error_table_of_no_table(cx, &name);
        }
        // libdm's --retry: up to 25 tries, 200 ms apart, while the device is busy.
        let tries = if cx.inv.has("retry") { 25 } else { 1 };
        for n in 1..=tries {
            let users = self.export_users(&name);
            let r = if users > 0 && mode != RemoveMode::Deferred {
                Err(Error::Busy {
                    what: name.clone(),
                    reason: format!("open by {users} NBD client(s)"),
                })
            } else {
                self.registry.remove(&name, mode)
            };
            match r {
                Ok(()) => {
                    lock(&self.read_ahead).remove(&name);
                    return true;
                }
                Err(e) => {
                    self.ioctl_error(cx, "remove", &name, None, &e);
                    if e.errno() != crate::error::errno::EBUSY || n == tries {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        false
    }

    /// `remove --force`'s first step (dmsetup's `_error_device`) loads an `error` table as
    /// long as the live one; for a device without a live table that is a zero-length
    /// target, which the kernel refuses: libdm prints the failed reload and goes on.
    fn error_table_of_no_table(&self, cx: &mut Cx, name: &str) {
        if self.registry.info(name).is_ok_and(|i| !i.live_table) {
            let e = Error::invalid("table", "zero-length target");
            self.ioctl_error(cx, "reload", name, None, &e);
        }
    }

    fn remove_all(&self, cx: &mut Cx, _: &[String]) -> bool {
        let mode = if cx.inv.has("force") {
            RemoveMode::Force
        } else {
            RemoveMode::Normal
        };
        if mode == RemoveMode::Force {
            for (n, _) in self.registry.list() {
                self.error_table_of_no_table(cx, &n);
            }
        }
        self.registry.remove_all(mode);
        let left: BTreeSet<String> = self.registry.list().into_iter().map(|(n, _)| n).collect();
        lock(&self.read_ahead).retain(|n, _| left.contains(n));
        true
    }

    fn rename(&self, cx: &mut Cx, args: &[String]) -> bool {
        let (old, new) = match args {
            [new] => match self.target_name(cx, None) {
                Some(o) if cx.inv.has("uuid") || cx.inv.has("major") => (o, new.clone()),
                _ => {
                    cx.e("No device specified.\n");
                    return false;
                }
            },
            [old, new, ..] => (self.strip(cx.env, old), new.clone()),
            [] => {
                cx.e("No device specified.\n");
                return false;
            }
        };
        let r = if cx.inv.has("setuuid") {
            self.registry.set_uuid(&old, &new)
        } else {
            self.registry.rename(&old, &new)
        };
        match r {
            Ok(()) => {
                if !cx.inv.has("setuuid") {
                    let mut ra = lock(&self.read_ahead);
                    if let Some(v) = ra.remove(&old) {
                        ra.insert(new, v);
                    }
                }
                true
            }
            Err(e) => {
                self.ioctl_error(cx, "rename", &old, None, &e);
                false
            }
        }
    }

    fn message(&self, cx: &mut Cx, args: &[String]) -> bool {
        let (name, rest) = if cx.inv.has("uuid") || cx.inv.has("major") {
            (self.target_name(cx, None).unwrap_or_default(), args)
        } else {
            (self.strip(cx.env, &args[0]), &args[1..])
        };
        let Some((sector, words)) = rest.split_first() else {
            cx.e("Incorrect number of arguments.\n");
            return false;
        };
        let sector = match sector.parse::<u64>() {
            Ok(s) => Sector(s),
            Err(_) => {
                cx.e(&format!("Invalid sector: {sector}\n"));
                return false;
            }
        };
        if words.is_empty() {
            cx.e("Incorrect number of arguments.\n");
            return false;
        }
        // dmsetup joins the words with spaces; the kernel splits them again.
        let joined = words.join(" ");
        let argv: Vec<&str> = joined.split_whitespace().collect();
        match self.registry.message(&name, sector, &argv) {
            Ok(resp) => {
                if !resp.is_empty() {
                    cx.o(&resp);
                    if !resp.ends_with('\n') {
                        cx.o("\n");
                    }
                }
                true
            }
            Err(e) => {
                self.ioctl_error(cx, "message", &name, None, &e);
                false
            }
        }
    }

    /// The devices a listing verb covers: the named one, or every device (`No devices
    /// found` when there is none, which is success).
    fn each(
        &self,
        cx: &mut Cx,
        args: &[String],
        mut f: impl FnMut(&Frontend, &mut Cx, &str) -> bool,
    ) -> bool {
        if cx.multiple && args.is_empty() {
            let all = self.registry.list();
            if all.is_empty() {
                cx.o("No devices found\n");
                return true;
            }
            for (n, _) in all {
                if !f(self, cx, &n) {
                    return false;
                }
            }
            return true;
        }
        let Some(name) = self.target_name(cx, args.first()) else {
            cx.e("No device specified.\n");
            return false;
        };
        f(self, cx, &name)
    }

    fn info(&self, cx: &mut Cx, args: &[String]) -> bool {
        if cx.inv.has("columns") {
            return self.each(cx, args, |me, cx, n| match me.info_of(n) {
                Ok(i) => {
                    cx.rows.push((i, me.ra(n)));
                    true
                }
                Err(_) => {
                    cx.e("Device does not exist.\n");
                    false
                }
            });
        }
        self.each(cx, args, |me, cx, n| match me.info_of(n) {
            Ok(i) => {
                if !i.live_table && !i.inactive_table {
                    let dir = cx.env.dev_dir.trim_end_matches('/').to_string();
                    cx.e(&format!(
                        "{dir}/mapper/{n}: open failed: No such file or directory\n"
                    ));
                }
                cx.o(&info_text_with(&i, me.ra(n)));
                true
            }
            Err(_) => {
                cx.e("Device does not exist.\n");
                false
            }
        })
    }

    fn info_report(&self, cx: &mut Cx, rows: &[(DeviceInfo, u32)]) {
        let fields = cx.inv.value("options").unwrap_or(DEFAULT_INFO_FIELDS);
        let cols: Vec<Column> = fields.split(',').filter_map(info_column).collect();
        let values: Vec<Vec<String>> = rows
            .iter()
            .map(|(i, ra)| cols.iter().map(|c| info_value(c.id, i, *ra)).collect())
            .collect();
        let layout = Layout::new(
            cx.inv.has("noheadings"),
            cx.inv.value("separator"),
            cx.inv.has("nameprefixes"),
        );
        cx.o(&render(&cols, &values, &layout));
    }

    fn deps_form(cx: &mut Cx) -> Option<DepsForm> {
        match cx.inv.value("options") {
            None | Some("devno") => Some(DepsForm::DevNo),
            Some("devname" | "blkdevname") => Some(DepsForm::DevName),
            Some(_) => None,
        }
    }

    fn deps(&self, cx: &mut Cx, args: &[String]) -> bool {
        let Some(form) = Self::deps_form(cx) else {
            return false;
        };
        let blk = cx.inv.value("options") == Some("blkdevname");
        self.each(cx, args, |me, cx, n| {
            match me.registry.deps(n, Slot::Live) {
                Ok(deps) => {
                    if cx.multiple {
                        cx.o(&format!("{n}: "));
                    }
                    let mut line = deps_line(&deps, form);
                    if blk {
                        line = deps_line(&deps, DepsForm::BlkDevName);
                    }
                    cx.o(&line);
                    cx.o("\n");
                    true
                }
                Err(e) => {
                    me.ioctl_error(cx, "deps", n, None, &e);
                    false
                }
            }
        })
    }

    fn table(&self, cx: &mut Cx, args: &[String]) -> bool {
        let which = if cx.inv.has("inactive") {
            Slot::Inactive
        } else {
            Slot::Live
        };
        let keys = if cx.inv.has("showkeys") {
            Keys::Shown
        } else {
            Keys::Hidden
        };
        if cx.inv.has("concise") {
            let mut specs = Vec::new();
            let ok = self.each(cx, args, |me, cx, n| match me.registry.device(n) {
                Ok(d) => {
                    specs.push(concise_spec(&d, which));
                    true
                }
                Err(e) => {
                    me.ioctl_error(cx, "table", n, None, &e);
                    false
                }
            });
            if !specs.is_empty() {
                cx.o(&crate::table::concise::format_concise(&specs, keys));
                cx.o("\n");
            }
            return ok;
        }
        self.each(cx, args, |me, cx, n| {
            let text = match me.registry.device(n) {
                Ok(d) => d.table_text_of(which, keys),
                Err(e) => {
                    me.ioctl_error(cx, "table", n, None, &e);
                    return false;
                }
            };
            me.lines(cx, n, &text);
            true
        })
    }

    /// Print a table's or status's lines as dmsetup does: `NAME: ` before each when no
    /// device is named (all of them), only the lines of `--target`'s type, one empty line
    /// for a device without a table.
    fn lines(&self, cx: &mut Cx, name: &str, text: &str) {
        let target = cx.inv.value("target").map(str::to_string);
        let prefix = if cx.multiple {
            format!("{name}: ")
        } else {
            String::new()
        };
        if cx.inv.has("verbose") && !cx.multiple {
            if let Ok(i) = self.info_of(name) {
                cx.o(&info_text_with(&i, self.ra(name)));
            }
        }
        if text.is_empty() {
            if target.is_none() {
                cx.o(&format!("{prefix}\n"));
            }
            return;
        }
        for l in text.lines() {
            let ty = l.split(' ').nth(2).unwrap_or("");
            if target.as_deref().is_some_and(|t| t != ty) {
                continue;
            }
            cx.o(&format!("{prefix}{l}\n"));
        }
    }

    fn status(&self, cx: &mut Cx, args: &[String]) -> bool {
        let which = if cx.inv.has("inactive") {
            Slot::Inactive
        } else {
            Slot::Live
        };
        self.each(cx, args, |me, cx, n| {
            let Ok(text) = me.registry.status_text(n, which) else {
                cx.e("Device does not exist.\n");
                return false;
            };
            me.lines(cx, n, &text);
            true
        })
    }

    fn ls(&self, cx: &mut Cx, _: &[String]) -> bool {
        let all = self.registry.list();
        if all.is_empty() {
            cx.o("No devices found\n");
            return true;
        }
        if let Some(cmd) = cx.inv.value("exec") {
            // `_exec_command`: the words of the command, then the device's node path.
            let dir = format!("{}/mapper", cx.env.dev_dir.trim_end_matches('/'));
            let words: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
            let target = cx.inv.value("target");
            for (n, _) in &all {
                if target.is_some_and(|t| !self.has_target(n, t)) || words.is_empty() {
                    continue;
                }
                let mut argv = words.clone();
                argv.push(format!("{dir}/{n}"));
                cx.out.exec.push(argv);
            }
            return true;
        }
        if let Some(t) = cx.inv.value("target") {
            for (n, (ma, mi)) in &all {
                if self.has_target(n, t) {
                    cx.o(&format!("{n}\t({ma}, {mi})\n"));
                }
            }
            return true;
        }
        if cx.inv.has("tree") {
            return self.tree(cx, &all);
        }
        let opt = cx.inv.value("options").unwrap_or("devno");
        for (n, (ma, mi)) in &all {
            // 6.12 adds a device's disk (dm-N in sysfs) at its first table load: before,
            // dmsetup can name it only by number.
            let disk = self
                .registry
                .info(n)
                .is_ok_and(|i| i.live_table || i.inactive_table);
            let shown = match opt {
                "devname" | "blkdevname" if !disk => format!("{ma}:{mi}"),
                "devname" => n.clone(),
                "blkdevname" => format!("dm-{mi}"),
                "devno" => format!("{ma}:{mi}"),
                o => {
                    cx.e(&format!("Option not recognised: {o}.\n"));
                    return false;
                }
            };
            cx.o(&format!("{n}\t({shown})\n"));
        }
        true
    }

    /// Whether `name`'s live table has a target of type `t`.
    fn has_target(&self, name: &str, t: &str) -> bool {
        self.registry
            .device(name)
            .ok()
            .and_then(|d| d.live_table())
            .is_some_and(|tb| tb.table().lines.iter().any(|l| l.spec.target_type() == t))
    }

    /// `ls --tree`: libdm's dependency tree (`-o inverted` turns it upside down).
    fn tree(&self, cx: &mut Cx, all: &[(String, (u32, u32))]) -> bool {
        let opts = cx.inv.value("options").unwrap_or("");
        let mut ascii = !cx.env.utf8;
        let mut inverted = false;
        let mut uuid = false;
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ascii" => ascii = true,
                "utf" | "vt100" => ascii = false,
                "inverted" => inverted = true,
                "uuid" => uuid = true,
                _ => {}
            }
        }
        // Nodes in dm_tree insertion order: each device in name order, then its deps
        // (depth first); a node is a mapped device or a file.
        let mut order: Vec<String> = Vec::new();
        let mut label: BTreeMap<String, String> = BTreeMap::new();
        let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        #[allow(clippy::too_many_arguments)]
        fn add(
            me: &Frontend,
            name: &str,
            order: &mut Vec<String>,
            label: &mut BTreeMap<String, String>,
            deps: &mut BTreeMap<String, Vec<String>>,
            users: &mut BTreeMap<String, Vec<String>>,
            depth: usize,
            uuid: bool,
        ) {
            if label.contains_key(name) || depth > crate::registry::MAX_STACK_DEPTH {
                return;
            }
            let Ok(d) = me.registry.device(name) else {
                return;
            };
            let (ma, mi) = d.dev();
            // `-o uuid`: `[UUID]` after each mapped device (`[]` without one).
            let u = if uuid {
                format!(" [{}]", d.uuid().unwrap_or_default())
            } else {
                String::new()
            };
            label.insert(name.to_string(), format!("{name} ({ma}:{mi}){u}"));
            order.push(name.to_string());
            let list: Vec<Dep> = me.registry.deps(name, Slot::Live).unwrap_or_default();
            let mut mine = Vec::new();
            for dep in list {
                let key = match &dep.mapped {
                    Some((n, _)) => n.clone(),
                    None => format!("\0{}", dep.reference),
                };
                if dep.mapped.is_some() {
                    add(me, &key, order, label, deps, users, depth + 1, uuid);
                } else if !label.contains_key(&key) {
                    label.insert(key.clone(), format!(" ({})", dep.reference));
                    order.push(key.clone());
                }
                users.entry(key.clone()).or_default().push(name.to_string());
                mine.push(key);
            }
            deps.insert(name.to_string(), mine);
        }
        for (n, _) in all {
            add(
                self, n, &mut order, &mut label, &mut deps, &mut users, 0, uuid,
            );
        }
        #[allow(clippy::type_complexity)]
        let (down, is_root): (
            &BTreeMap<String, Vec<String>>,
            Box<dyn Fn(&String) -> bool>,
        ) = if inverted {
            let d = deps.clone();
            (
                &users,
                Box::new(move |n: &String| d.get(n).is_none_or(Vec::is_empty)),
            )
        } else {
            let u = users.clone();
            (
                &deps,
                Box::new(move |n: &String| u.get(n).is_none_or(Vec::is_empty)),
            )
        };
        let (tee, end, vert) = if ascii {
            ("|-", "`-", "|  ")
        } else {
            ("\u{251c}\u{2500}", "\u{2514}\u{2500}", "\u{2502}  ")
        };
        fn walk(
            out: &mut String,
            node: &str,
            prefix: &str,
            down: &BTreeMap<String, Vec<String>>,
            label: &BTreeMap<String, String>,
            sym: (&str, &str, &str),
            depth: usize,
        ) {
            let kids = down.get(node).cloned().unwrap_or_default();
            if depth > crate::registry::MAX_STACK_DEPTH {
                return;
            }
            for (i, k) in kids.iter().enumerate() {
                let last = i + 1 == kids.len();
                let l = label.get(k).map_or("", String::as_str);
                let _ = writeln!(out, "{prefix}{}{l}", if last { sym.1 } else { sym.0 });
                let next = format!("{prefix}{}", if last { "   " } else { sym.2 });
                walk(out, k, &next, down, label, sym, depth + 1);
            }
        }
        let mut out = String::new();
        for n in &order {
            if !is_root(n) {
                continue;
            }
            let _ = writeln!(out, "{}", label[n]);
            walk(&mut out, n, " ", down, &label, (tee, end, vert), 0);
        }
        cx.o(&out);
        true
    }

    fn wait(&self, cx: &mut Cx, args: &[String]) -> bool {
        let Some(name) = self.target_name(cx, args.first()) else {
            cx.e("No device specified.\n");
            return false;
        };
        let nr: u32 = args
            .get(if cx.inv.has("uuid") || cx.inv.has("major") {
                0
            } else {
                1
            })
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        match self.registry.wait_event(&name, nr, None) {
            Ok(_) => {
                if cx.inv.has("verbose") {
                    if let Ok(i) = self.info_of(&name) {
                        cx.o(&info_text_with(&i, self.ra(&name)));
                    }
                }
                true
            }
            Err(e) => {
                self.ioctl_error(cx, "waitevent", &name, None, &e);
                false
            }
        }
    }
}

/// dmsetup's `_process_options`: `-o` without `-c` is a tree option list with `--tree`,
/// else one of devno, devname, blkdevname (matched by prefix, as `strncmp` does).
fn option_error(inv: &Invocation) -> Option<String> {
    if inv.has("columns") {
        return None;
    }
    let opts = inv.value("options")?;
    let tree: &[&str] = &[
        "ascii",
        "utf",
        "vt100",
        "compact",
        "inverted",
        "notrunc",
        "blkdevname",
        "device",
        "nodevice",
        "active",
        "open",
        "rw",
        "uuid",
    ];
    let plain: &[&str] = &["devno", "blkdevname", "devname"];
    let (known, what) = if inv.has("tree") {
        (tree, "Tree options")
    } else {
        (plain, "Option")
    };
    let mut rest = opts;
    loop {
        let (o, next) = rest.split_once(',').unwrap_or((rest, ""));
        if !known.iter().any(|k| k.starts_with(o)) {
            return Some(format!("{what} not recognised: {rest}.\n"));
        }
        if next.is_empty() {
            return None;
        }
        rest = next;
    }
}

/// A device as `table --concise` prints it.
fn concise_spec(d: &Arc<MappedDevice>, which: Slot) -> DeviceSpec {
    let t = match which {
        Slot::Live => d.live_table(),
        Slot::Inactive => d.inactive_table(),
    };
    DeviceSpec {
        name: d.name(),
        uuid: d.uuid().unwrap_or_default(),
        minor: Some(u64::from(d.dev().1)),
        mode: t.as_ref().map_or(TableMode::ReadWrite, |t| t.mode()),
        table: t.map_or(Table { lines: Vec::new() }, |t| t.table().clone()),
    }
}
