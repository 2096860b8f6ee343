//! `dmemu serve SPEC [--nbd unix:PATH | --nbd tcp:HOST:PORT]... [--mount DIR|FILE] [--run CMD]
//! [--read-only]`: every device of the spec becomes an NBD export under its name (the last one
//! is also the default export) and, with `--mount`, a FUSE file; one line per export and
//! listener (its URI) and per file (its path) is printed once serving, and the server runs
//! until SIGINT/SIGTERM or, in captive mode, until CMD exits (nbdkit's `--run`). Without
//! `--nbd`, listeners passed by socket activation (`LISTEN_FDS`, `LISTEN_PID`) are used.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{mpsc, Arc};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::{Error, Result};
use crate::mapped_device::MappedDevice;
use crate::table::TableMode;
use crate::volume::SharedVolume;

use super::export::{Export, ExportAccess};
use super::nbd::Exports;
use super::server::{Endpoint, Listen, Server};

/// Arguments of `dmemu serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    spec: crate::cli::SpecArgs,
    #[command(flatten)]
    options: ServeOptions,
}

/// Where and how long to serve (`dmemu serve` and `dmemu luks serve`).
#[derive(Debug, clap::Args)]
pub struct ServeOptions {
    /// Listen on `unix:PATH` or `tcp:HOST:PORT` (`tcp:PORT` binds 127.0.0.1); repeatable.
    /// Default without `--mount`: a Unix socket `nbd.sock` in a new private temporary
    /// directory.
    #[arg(long = "nbd", value_name = "unix:PATH|tcp:HOST:PORT")]
    nbd: Vec<String>,
    /// Show the devices as files with FUSE: on a directory, one file `DIR/NAME` per device;
    /// on an existing regular file, the default device replaces that file. Unmounted on stop.
    #[arg(long, value_name = "DIR|FILE")]
    mount: Option<PathBuf>,
    /// Once serving, run CMD with `sh -c`, stop when it exits and exit with its status.
    /// CMD sees `$uri` and `$nbd` (the default export's URI), `$exportname`, `$unixsocket`
    /// or `$port` (the first listener), `$file` (the default export's FUSE file) and `$dir`
    /// (a private scratch directory).
    #[arg(long, value_name = "CMD")]
    run: Option<String>,
}

enum Event {
    Signal,
    Exited(std::io::Result<ExitStatus>),
}

/// Run the command; returns when the server has stopped and every device is flushed.
pub fn run(args: &ServeArgs) -> Result<()> {
    let opened = args.spec.open()?;
    let exports = Exports::new(
        opened
            .all
            .iter()
            .map(|(d, mode)| export_of(d, *mode, args.spec.read_only).map(Arc::new))
            .collect::<Result<_>>()?,
    )?;
    let served = serve(&exports, &args.options);
    drop(opened);
    served
}

/// Serve `exports` as `args` say until a signal or CMD's end; then stop NBD (drained,
/// flushed) and unmount the files. Exits the process with CMD's status when it failed.
pub fn serve(exports: &Exports, args: &ServeOptions) -> Result<()> {
    let activated_fds = std::env::var_os("LISTEN_FDS").is_some();
    let default_socket = args.nbd.is_empty() && !activated_fds && args.mount.is_none();
    let dir = if default_socket || args.run.is_some() {
        Some(TempDir::new()?)
    } else {
        None
    };
    let mut listens = args
        .nbd
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<Listen>>>()?;
    if let (true, Some(d)) = (default_socket, &dir) {
        listens.push(Listen::Unix(d.path.join("nbd.sock")));
    }
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(Error::io(&"signal handlers"))?;
    let signal_handle = signals.handle();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let _ = (sig, tx.send(Event::Signal));
            }
        });
    }
    let mut activated = listenfd::ListenFd::from_env();
    let server = if args.nbd.is_empty() && activated.len() > 0 {
        let (mut unix, mut tcp) = (Vec::new(), Vec::new());
        for i in 0..activated.len() {
            let bad = || {
                Error::invalid(
                    "LISTEN_FDS",
                    format!("descriptor {} is not a stream listener", i + 3),
                )
            };
            if let Ok(Some(l)) = activated.take_unix_listener(i) {
                unix.push(l);
            } else if let Ok(Some(l)) = activated.take_tcp_listener(i) {
                tcp.push(l);
            } else {
                return Err(bad());
            }
        }
        Some(Server::start_inherited(exports.clone(), unix, tcp)?)
    } else if listens.is_empty() {
        None
    } else {
        Some(Server::start(exports.clone(), &listens)?)
    };
    let mount = match &args.mount {
        Some(path) => Some(mount(exports, path)?),
        None => None,
    };
    announce(server.as_ref(), mount.as_ref(), exports)?;
    if let Some(cmd) = &args.run {
        let mut child = std::process::Command::new("sh");
        child.arg("-c").arg(cmd);
        captive_env(
            &mut child,
            server.as_ref(),
            mount.as_ref(),
            exports,
            dir.as_ref().map(|d| d.path.as_path()),
        );
        let mut child = child.spawn().map_err(Error::io(&"sh -c CMD"))?;
        std::thread::spawn(move || {
            let _ = tx.send(Event::Exited(child.wait()));
        });
    }
    let event = rx.recv().unwrap_or(Event::Signal);
    signal_handle.close();
    // NBD first (its clients are drained and every export flushed), then the files.
    let stopped = server.map_or(Ok(()), Server::stop);
    let unmounted = mount.map_or(Ok(()), unmount);
    drop(dir);
    stopped?;
    unmounted?;
    let status = match event {
        Event::Signal => 0,
        Event::Exited(Ok(s)) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Event::Exited(Err(e)) => return Err(Error::io(&"sh -c CMD")(e)),
    };
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}

#[cfg(feature = "fuse")]
type Mount = super::fuse::FuseMount;
#[cfg(not(feature = "fuse"))]
type Mount = std::convert::Infallible;

#[cfg(feature = "fuse")]
fn mount(exports: &Exports, path: &Path) -> Result<Mount> {
    super::fuse::FuseMount::mount(exports.clone(), path)
}

#[cfg(not(feature = "fuse"))]
fn mount(_: &Exports, _: &Path) -> Result<Mount> {
    Err(Error::Unsupported {
        target: "dmemu serve",
        op: "--mount (built without the fuse feature)",
    })
}

#[cfg(feature = "fuse")]
fn unmount(m: Mount) -> Result<()> {
    let path = m.path().to_path_buf();
    if m.unmount()? == super::fuse::Unmounted::Detached {
        eprintln!(
            "dmemu serve: {} was still open: detached; it goes away when closed",
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(feature = "fuse"))]
fn unmount(m: Mount) -> Result<()> {
    match m {}
}

#[cfg(feature = "fuse")]
fn file_of(m: &Mount, name: &str) -> Option<PathBuf> {
    m.file_of(name)
}

#[cfg(not(feature = "fuse"))]
fn file_of(m: &Mount, _: &str) -> Option<PathBuf> {
    match *m {}
}

/// One URI per export and listener, then one path per FUSE file, so a script can wait
/// for the first line.
fn announce(server: Option<&Server>, mount: Option<&Mount>, exports: &Exports) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for ep in server.map_or(&[][..], Server::endpoints) {
        for e in exports.list() {
            writeln!(out, "{}", ep.uri(e.name())).map_err(Error::io(&"stdout"))?;
        }
    }
    if let Some(m) = mount {
        for e in exports.list() {
            if let Some(f) = file_of(m, e.name()) {
                writeln!(out, "{}", f.display()).map_err(Error::io(&"stdout"))?;
            }
        }
    }
    out.flush().map_err(Error::io(&"stdout"))
}

fn captive_env(
    cmd: &mut std::process::Command,
    server: Option<&Server>,
    mount: Option<&Mount>,
    exports: &Exports,
    dir: Option<&Path>,
) {
    let default = exports
        .find(b"")
        .map_or_else(String::new, |e| e.name().to_string());
    if let Some(f) = mount.and_then(|m| file_of(m, &default)) {
        cmd.env("file", f);
    }
    if let Some(ep) = server.and_then(|s| s.endpoints().first()) {
        let uri = ep.uri(&default);
        cmd.env("uri", &uri).env("nbd", &uri);
        match ep {
            Endpoint::Unix(p) => cmd.env("unixsocket", p),
            Endpoint::Tcp(a) => cmd.env("port", a.port().to_string()),
        };
    }
    cmd.env("exportname", &default);
    if let Some(d) = dir {
        cmd.env("dir", d);
    }
}

/// The export of one mapped device: read-only when `--read-only` was given, when the device
/// was loaded read-only, or when its table can only be (verity); its block size the largest
/// unit a line requires (crypt sector size, verity data block).
fn export_of(dev: &Arc<MappedDevice>, mode: TableMode, read_only: bool) -> Result<Export> {
    let table = dev.table();
    let access = if read_only
        || mode == TableMode::ReadOnly
        || table.check_mode(TableMode::ReadWrite).is_err()
    {
        ExportAccess::ReadOnly
    } else {
        ExportAccess::ReadWrite
    };
    let block = dev.block_size();
    let volume: SharedVolume = Arc::clone(dev) as SharedVolume;
    Export::new(dev.name(), volume)
        .with_access(access)
        .with_description(format!("dmemu device {}", dev.name()))
        .with_block_size(block)
}

/// A private directory removed with everything in it when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir> {
        let base = std::env::temp_dir();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut last = None;
        for i in 0..100u32 {
            let path = base.join(format!("dmemu-serve-{}-{stamp:x}-{i}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::io(&base.display())(last.unwrap_or_else(|| {
            std::io::Error::other("no temporary directory name was free")
        })))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
