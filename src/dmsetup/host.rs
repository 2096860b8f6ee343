//! The per-user device host: a background process (the same binary, `dmemu
//! __dmsetup-host DIR`) owning the `Registry`, so devices live between dmsetup commands.
//!
//! State dir: `$DMEMU_DIR`, else `$XDG_RUNTIME_DIR/dmemu`, else `/tmp/dmemu-UID`; mode 0700,
//! refused when another user owns it. In it:
//! - `host.lock`: the host holds an exclusive lock on it for its whole life (a second host
//!   on the same dir exits at once; a client that can take the lock knows no host runs);
//! - `host.sock`: the Unix socket; requests are a 4-byte big-endian length and JSON
//!   (`Request`), answered the same way (`Response`); a stale socket is replaced;
//! - `devices`: the names of the live devices, rewritten after every command and removed
//!   when the host exits cleanly; found non-empty by the next host or client, it is the list
//!   of devices a crashed host lost, reported once;
//! - `nbd.sock`: an NBD server (`serve`), one export per device with a live table, named
//!   as the device; a client holding an export open makes `remove` busy, as an opener does;
//! - `dev/mapper/` (or `$DM_DEV_DIR/mapper/` when the host's first client set it): a FUSE
//!   mount showing the same exports as files, `mapper/NAME` (the device nodes), unmounted
//!   when the host exits; where FUSE is unavailable the host runs without it and says why in
//!   `host.log`;
//! - `dmesg.log`: the reason behind each failed ioctl (what the kernel logs to dmesg);
//! - `host.log`: the host's own stderr; `host.pid`: its process id.
//!
//! Commands run one at a time under one lock, as dm-ioctl serialises them, except `wait`,
//! which blocks outside it. The host exits when a command leaves no device.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::args;
use super::verbs::{blocks, Env, Frontend, Output};
use crate::registry::Registry;
use crate::serve::{Exports, Listen, Server};

/// The largest request or response accepted (a table file or stdin rides along).
pub const MAX_MESSAGE: usize = 64 << 20;

/// One dmsetup command line, as the client got it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// The arguments after the program name.
    pub argv: Vec<String>,
    /// The client's working directory (relative table paths resolve against it).
    pub cwd: PathBuf,
    /// The rest of what the command sees.
    pub env: Env,
}

/// The host's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// The command ran.
    Done(Output),
    /// The host is exiting (its last device went away): start a new one and ask again.
    Retry,
}

/// Write one length-prefixed JSON message.
pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("message too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Read one length-prefixed JSON message (at most `MAX_MESSAGE` bytes).
pub fn read_msg<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes, more than the {MAX_MESSAGE} allowed"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The files of one state dir.
#[derive(Clone, Debug)]
pub struct StateDir {
    /// The directory.
    pub dir: PathBuf,
}

impl StateDir {
    /// The socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.dir.join("host.sock")
    }
    /// The lock file.
    #[must_use]
    pub fn lock(&self) -> PathBuf {
        self.dir.join("host.lock")
    }
    /// The live device list.
    #[must_use]
    pub fn devices(&self) -> PathBuf {
        self.dir.join("devices")
    }
    /// The ioctl failure reasons.
    #[must_use]
    pub fn dmesg(&self) -> PathBuf {
        self.dir.join("dmesg.log")
    }
    /// The NBD socket: every device with a live table is an export of its name.
    #[must_use]
    pub fn nbd(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    /// The default `DM_DEV_DIR` (device nodes appear in its `mapper/`).
    #[must_use]
    pub fn dev_dir(&self) -> PathBuf {
        self.dir.join("dev")
    }

    /// Open (creating) the lock file.
    pub fn open_lock(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.lock())
    }

    /// The devices a host that did not exit cleanly left behind (and forget them), as the
    /// line to print; `None` when there are none. Call with the lock held.
    pub fn take_lost(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.devices()).ok()?;
        let _ = std::fs::remove_file(self.devices());
        let names: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        if names.is_empty() {
            return None;
        }
        Some(format!(
            "dmemu: the device host in {} ended without removing its devices (it crashed or \
             was killed); lost: {}. Starting afresh.\n",
            self.dir.display(),
            names.join(", ")
        ))
    }
}

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The state dir: `$DMEMU_DIR`, else `$XDG_RUNTIME_DIR/dmemu`, else `/tmp/dmemu-UID`;
/// created with mode 0700; another user's dir is refused, an own dir with wider
/// permissions is narrowed to 0700.
pub fn state_dir() -> Result<StateDir, String> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let dir = if let Some(d) = var("DMEMU_DIR") {
        PathBuf::from(d)
    } else if let Some(x) = var("XDG_RUNTIME_DIR") {
        PathBuf::from(x).join("dmemu")
    } else {
        PathBuf::from(format!("/tmp/dmemu-{}", uid()))
    };
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(format!("state directory {}: {e}", dir.display()));
        }
    }
    let md = std::fs::symlink_metadata(&dir)
        .map_err(|e| format!("state directory {}: {e}", dir.display()))?;
    if !md.is_dir() {
        return Err(format!(
            "state directory {}: not a directory",
            dir.display()
        ));
    }
    if md.uid() != uid() {
        return Err(format!(
            "state directory {} is owned by uid {}, not by you (uid {}); set DMEMU_DIR to a \
             directory of your own",
            dir.display(),
            md.uid(),
            uid()
        ));
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("state directory {}: {e}", dir.display()))?;
    }
    Ok(StateDir { dir })
}

struct Host {
    fe: Frontend,
    state: StateDir,
    /// The command lock; `true` once the host is exiting.
    exiting: Mutex<bool>,
    lost: Mutex<Option<String>>,
    /// The device nodes' FUSE mount.
    #[cfg(feature = "fuse")]
    nodes: Mutex<Option<crate::serve::fuse::FuseMount>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Host {
    /// Unmount the device nodes (once; later calls do nothing).
    fn unmount_nodes(&self) {
        #[cfg(feature = "fuse")]
        if let Some(m) = lock(&self.nodes).take() {
            if let Err(e) = m.unmount() {
                eprintln!("dmemu host: unmounting the device nodes: {}", e.chain());
            }
        }
    }

    /// Unmount the device nodes and end the process.
    fn exit(&self) -> ! {
        self.unmount_nodes();
        std::process::exit(0);
    }

    fn record_devices(&self) {
        let names: Vec<String> = self
            .fe
            .registry
            .list()
            .into_iter()
            .map(|(n, _)| n + "\n")
            .collect();
        let tmp = self.state.dir.join("devices.tmp");
        if std::fs::write(&tmp, names.concat()).is_ok() {
            let _ = std::fs::rename(&tmp, self.state.devices());
        }
    }

    fn handle(self: &Arc<Self>, mut stream: UnixStream) {
        let req: Request = match read_msg(&mut stream) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("dmemu host: bad request: {e}");
                return;
            }
        };
        let inv = match args::parse(&req.env.prog, &req.argv) {
            Ok(i) => i,
            Err(msg) => {
                let mut out = Output::default();
                out.err(&(msg + "Couldn't process command line.\n"));
                out.code = 1;
                let _ = write_msg(&mut stream, &Response::Done(out));
                return;
            }
        };
        if blocks(&inv) {
            let out = self.fe.run(&inv, &req.env);
            let _ = write_msg(&mut stream, &Response::Done(out));
            return;
        }
        let mut exiting = lock(&self.exiting);
        if *exiting {
            let _ = write_msg(&mut stream, &Response::Retry);
            return;
        }
        let _ = std::env::set_current_dir(&req.cwd);
        let mut out = self.fe.run(&inv, &req.env);
        self.fe.sync_exports();
        if let Some(l) = lock(&self.lost).take() {
            out.err_first(&l);
        }
        if self.fe.registry.list().is_empty() {
            *exiting = true;
            let _ = std::fs::remove_file(self.state.socket());
            let _ = std::fs::remove_file(self.state.nbd());
            let _ = std::fs::remove_file(self.state.devices());
            // The nodes go before the answer: a harness that checks the node dir right after
            // its last `remove` finds no mount left behind.
            self.unmount_nodes();
            let _ = write_msg(&mut stream, &Response::Done(out));
            drop(stream);
            self.exit();
        }
        self.record_devices();
        let _ = write_msg(&mut stream, &Response::Done(out));
    }
}

/// Run the host on `dir` (the hidden `__dmsetup-host` subcommand). Returns when another
/// host holds the dir (status 0) or on a setup error; otherwise exits the process when its
/// last device is removed.
pub fn serve(dir: &Path) -> i32 {
    let state = StateDir {
        dir: dir.to_path_buf(),
    };
    let lockf = match state.open_lock() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dmemu host: {}: {e}", state.lock().display());
            return 1;
        }
    };
    if lockf.try_lock().is_err() {
        return 0; // another host owns this dir
    }
    let lost = state.take_lost();
    let _ = std::fs::write(
        state.dir.join("host.pid"),
        format!("{}\n", std::process::id()),
    );
    let _ = std::fs::remove_file(state.socket());
    let listener = match UnixListener::bind(state.socket()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dmemu host: {}: {e}", state.socket().display());
            return 1;
        }
    };
    let ino = std::fs::metadata(state.socket()).map(|m| m.ino()).ok();
    let mut fe = Frontend::new(Registry::new());
    fe.log = Some(state.dmesg());
    let exports = Exports::empty();
    let _ = std::fs::remove_file(state.nbd());
    let server = match Server::start(exports.clone(), &[Listen::Unix(state.nbd())]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dmemu host: {}: {}", state.nbd().display(), e.chain());
            return 1;
        }
    };
    #[cfg(feature = "fuse")]
    let nodes = mount_nodes(&state, &exports).map(|(m, dir)| {
        // The mount's root answers from the FUSE threads; nothing else is looked at.
        let dev = std::fs::metadata(m.path()).ok().map(|md| md.dev());
        fe.nodes = Some(super::verbs::NodeDir { dir, dev });
        m
    });
    fe.exports = Some(exports);
    let host = Arc::new(Host {
        fe,
        state: state.clone(),
        exiting: Mutex::new(false),
        lost: Mutex::new(lost),
        #[cfg(feature = "fuse")]
        nodes: Mutex::new(nodes),
    });
    // The socket is how clients find the host: if it goes (the dir was deleted), nobody
    // can reach the devices any more, so the host ends.
    let sock = state.socket();
    let watch = Arc::clone(&host);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = std::fs::metadata(&sock).map(|m| m.ino()).ok();
        if now.is_none() || now != ino {
            watch.exit();
        }
    });
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let h = Arc::clone(&host);
                std::thread::spawn(move || h.handle(s));
            }
            Err(e) => eprintln!("dmemu host: accept: {e}"),
        }
    }
    drop(server);
    drop(lockf);
    0
}

/// The host's `DM_DEV_DIR`: its environment's (inherited from the client that started
/// it), else `dev` in the state dir.
#[must_use]
pub fn host_dev_dir(state: &StateDir) -> PathBuf {
    std::env::var_os("DM_DEV_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| state.dev_dir(), PathBuf::from)
}

/// Mount the exports as the device nodes `DM_DEV_DIR/mapper/NAME`, with the directory's
/// canonical path (taken before the mount); `None` (with the reason in host.log) where
/// FUSE is unavailable, or the directory cannot be made or is not empty.
#[cfg(feature = "fuse")]
fn mount_nodes(
    state: &StateDir,
    exports: &Exports,
) -> Option<(crate::serve::fuse::FuseMount, PathBuf)> {
    use crate::serve::fuse::{unmount_stale, FuseMount};
    let dir = host_dev_dir(state).join("mapper");
    if !Path::new("/dev/fuse").exists() {
        eprintln!(
            "dmemu host: /dev/fuse is missing: no device nodes in {}",
            dir.display()
        );
        return None;
    }
    if let Err(e) = unmount_stale(&dir) {
        eprintln!(
            "dmemu host: {}: a dead FUSE mount is left there: {e}",
            dir.display()
        );
    }
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        eprintln!("dmemu host: no device nodes: {}: {e}", dir.display());
        return None;
    }
    // Never hide files (a real /dev/mapper when DM_DEV_DIR=/dev, run as root).
    if std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_some()) {
        eprintln!(
            "dmemu host: no device nodes: {} is not an empty directory",
            dir.display()
        );
        return None;
    }
    let canonical = match std::fs::canonicalize(&dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmemu host: no device nodes: {}: {e}", dir.display());
            return None;
        }
    };
    match FuseMount::mount(exports.clone(), &dir) {
        Ok(m) => Some((m, canonical)),
        Err(e) => {
            eprintln!("dmemu host: no device nodes: {}", e.chain());
            None
        }
    }
}
