//! `dmemu serve SPEC [--nbd unix:PATH | --nbd tcp:HOST:PORT]... [--run CMD] [--read-only]`:
//! every device of the spec becomes an NBD export under its name (the last one is also the
//! default export), one URI line per export is printed once listening, and the server runs
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
use crate::targets::TargetSpec;
use crate::volume::SharedVolume;

use super::export::{Export, ExportAccess};
use super::nbd::Exports;
use super::server::{Endpoint, Listen, Server};

/// Arguments of `dmemu serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    spec: crate::cli::SpecArgs,
    /// Listen on `unix:PATH` or `tcp:HOST:PORT` (`tcp:PORT` binds 127.0.0.1); repeatable.
    /// Default: a Unix socket `nbd.sock` in a new private temporary directory.
    #[arg(long = "nbd", value_name = "unix:PATH|tcp:HOST:PORT")]
    nbd: Vec<String>,
    /// Once listening, run CMD with `sh -c`, stop when it exits and exit with its status.
    /// CMD sees `$uri` and `$nbd` (the default export's URI), `$exportname`, `$unixsocket`
    /// or `$port` (the first listener) and `$dir` (a private scratch directory).
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
    let activated_fds = std::env::var_os("LISTEN_FDS").is_some();
    let dir = if (args.nbd.is_empty() && !activated_fds) || args.run.is_some() {
        Some(TempDir::new()?)
    } else {
        None
    };
    let mut listens = args
        .nbd
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<Listen>>>()?;
    if let (true, false, Some(d)) = (listens.is_empty(), activated_fds, &dir) {
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
        Server::start_inherited(exports, unix, tcp)?
    } else {
        Server::start(exports, &listens)?
    };
    announce(&server)?;
    if let Some(cmd) = &args.run {
        let mut child = std::process::Command::new("sh");
        child.arg("-c").arg(cmd);
        captive_env(&mut child, &server, dir.as_ref().map(|d| d.path.as_path()));
        let mut child = child.spawn().map_err(Error::io(&"sh -c CMD"))?;
        std::thread::spawn(move || {
            let _ = tx.send(Event::Exited(child.wait()));
        });
    }
    let event = rx.recv().unwrap_or(Event::Signal);
    signal_handle.close();
    let stopped = server.stop();
    drop(opened);
    drop(dir);
    stopped?;
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

/// One URI per export and listener, so a script can wait for the first line.
fn announce(server: &Server) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for ep in server.endpoints() {
        for e in server.exports().list() {
            writeln!(out, "{}", ep.uri(e.name())).map_err(Error::io(&"stdout"))?;
        }
    }
    out.flush().map_err(Error::io(&"stdout"))
}

fn captive_env(cmd: &mut std::process::Command, server: &Server, dir: Option<&Path>) {
    let default = server
        .exports()
        .find(b"")
        .map_or_else(String::new, |e| e.name().to_string());
    if let Some(ep) = server.endpoints().first() {
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
    let block = table
        .lines
        .iter()
        .map(|l| match &l.spec {
            TargetSpec::Crypt(c) => c.options.sector_size,
            TargetSpec::Verity(v) => v.data_block_size,
            _ => 512,
        })
        .max()
        .unwrap_or(512);
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
