//! The NBD server: listeners on Unix and TCP sockets, one thread per connection, and an
//! orderly stop (refuse new work, let requests in flight finish, flush every export,
//! remove the sockets).

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

use super::nbd::{serve_client, Exports, Stopping};

/// Connections served at once; more are closed on arrival.
pub const MAX_CONNECTIONS: usize = 128;

/// A reply that cannot be written for this long (a client that stopped reading) ends the
/// connection, so a stop never waits on it for ever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Socket buffers between the connection and the protocol code.
const STREAM_BUFFER: usize = 256 << 10;
/// SO_SNDBUF asked for each connection (benches/nbd_vs_nbdkit.sh: 1 MiB beat the default
/// and 4 MiB).
const SEND_BUFFER: usize = 1 << 20;

/// Where to listen: `unix:PATH` or `tcp:HOST:PORT` (`tcp:PORT` or `tcp::PORT` bind
/// 127.0.0.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket at this path (created; removed on stop).
    Unix(PathBuf),
    /// A TCP `host:port`.
    Tcp(String),
}

impl FromStr for Listen {
    type Err = Error;
    fn from_str(s: &str) -> Result<Listen> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::invalid("--nbd", "unix: needs a socket path"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            let addr = match rest.rsplit_once(':') {
                None => format!("127.0.0.1:{rest}"),
                Some(("", port)) => format!("127.0.0.1:{port}"),
                Some(_) => rest.to_string(),
            };
            return Ok(Listen::Tcp(addr));
        }
        Err(Error::invalid(
            "--nbd",
            format!(
                "{} is neither unix:PATH nor tcp:HOST:PORT",
                crate::error::quote(s)
            ),
        ))
    }
}

/// A bound listener and how clients reach it.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address (the port is the real one when 0 was asked for).
    Tcp(SocketAddr),
}

impl Endpoint {
    /// The NBD URI of export `name` here: `nbd+unix:///NAME?socket=PATH` or
    /// `nbd://HOST:PORT/NAME`.
    #[must_use]
    pub fn uri(&self, name: &str) -> String {
        match self {
            Endpoint::Unix(path) => format!(
                "nbd+unix:///{}?socket={}",
                escape(name),
                escape(&path.display().to_string())
            ),
            Endpoint::Tcp(addr) => format!("nbd://{addr}/{}", escape(name)),
        }
    }
}

/// Percent-encode what is not unreserved in a URI (RFC 3986), keeping `/`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        };
    }
    /// A larger send buffer than the default (208 KiB): a whole 256 KiB read reply is
    /// queued at once, so the connection goes back to its next request instead of waiting
    /// for the client to drain the socket. Best effort (the kernel caps it at wmem_max).
    fn set_send_buffer(&self) {
        let fd: std::os::fd::BorrowedFd<'_> = match self {
            Stream::Unix(s) => std::os::fd::AsFd::as_fd(s),
            Stream::Tcp(s) => std::os::fd::AsFd::as_fd(s),
        };
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, SEND_BUFFER);
    }
    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(Some(t)),
            Stream::Tcp(s) => {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(t))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// State shared by the accept and connection threads.
#[derive(Default)]
struct Shared {
    stopping: Stopping,
    conns: Mutex<Conns>,
    closed: Condvar,
}

#[derive(Default)]
struct Conns {
    next: u64,
    /// Open connections, for shutting their read side at stop.
    open: HashMap<u64, Stream>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running NBD server.
pub struct Server {
    exports: Exports,
    shared: Arc<Shared>,
    endpoints: Vec<Endpoint>,
    /// Socket files this server made, removed on stop.
    bound: Vec<PathBuf>,
    accepting: Vec<JoinHandle<()>>,
    stopped: bool,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Bind every listener and start accepting clients for `exports`.
    pub fn start(exports: Exports, listens: &[Listen]) -> Result<Server> {
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        let undo = |bound: &[PathBuf]| bound.iter().for_each(|p| drop(std::fs::remove_file(p)));
        for l in listens {
            let made = match l {
                Listen::Unix(path) => UnixListener::bind(path)
                    .map(|s| {
                        bound.push(path.clone());
                        (Listener::Unix(s), Endpoint::Unix(path.clone()))
                    })
                    .map_err(Error::io(&path.display())),
                Listen::Tcp(addr) => bind_tcp(addr),
            };
            match made {
                Ok(pair) => listeners.push(pair),
                Err(e) => {
                    undo(&bound);
                    return Err(e);
                }
            }
        }
        Ok(Server::serve(exports, listeners, bound))
    }

    /// Serve on listeners handed over by the caller (socket activation: systemd's
    /// `LISTEN_FDS`). Their socket files belong to whoever made them and are not removed.
    pub fn start_inherited(
        exports: Exports,
        unix: Vec<UnixListener>,
        tcp: Vec<TcpListener>,
    ) -> Result<Server> {
        let mut listeners = Vec::new();
        for l in unix {
            let addr = l.local_addr().map_err(Error::io(&"inherited socket"))?;
            let path = addr.as_pathname().map(PathBuf::from).ok_or_else(|| {
                Error::invalid("inherited socket", "a Unix socket without a path")
            })?;
            listeners.push((Listener::Unix(l), Endpoint::Unix(path)));
        }
        for l in tcp {
            let addr = l.local_addr().map_err(Error::io(&"inherited socket"))?;
            listeners.push((Listener::Tcp(l), Endpoint::Tcp(addr)));
        }
        Ok(Server::serve(exports, listeners, Vec::new()))
    }

    fn serve(
        exports: Exports,
        listeners: Vec<(Listener, Endpoint)>,
        bound: Vec<PathBuf>,
    ) -> Server {
        let shared = Arc::new(Shared::default());
        let mut endpoints = Vec::new();
        let mut accepting = Vec::new();
        for (l, ep) in listeners {
            endpoints.push(ep);
            let shared = Arc::clone(&shared);
            let exports = exports.clone();
            accepting.push(std::thread::spawn(move || {
                accept_loop(&l, &shared, &exports)
            }));
        }
        Server {
            exports,
            shared,
            endpoints,
            bound,
            accepting,
            stopped: false,
        }
    }

    /// Where clients connect, in the order the listeners were given.
    #[must_use]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// What is served.
    #[must_use]
    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    /// Stop: accept no more clients, let each connection finish the request it is serving
    /// (later ones are not read), flush every export and remove the Unix sockets.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.shared.stopping.set();
        for ep in &self.endpoints {
            // Wake the accept loop, which then sees `stopping`.
            let _ = match ep {
                Endpoint::Unix(p) => UnixStream::connect(p).map(drop),
                Endpoint::Tcp(a) => TcpStream::connect(a).map(drop),
            };
        }
        for t in self.accepting.drain(..) {
            let _ = t.join();
        }
        for p in &self.bound {
            let _ = std::fs::remove_file(p);
        }
        let mut conns = lock(&self.shared.conns);
        for s in conns.open.values() {
            s.shutdown(Shutdown::Read);
        }
        while !conns.open.is_empty() {
            conns = self
                .shared
                .closed
                .wait(conns)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(conns);
        let mut first = Ok(());
        for e in self.exports.list() {
            if let Err(err) = e.flush() {
                if first.is_ok() {
                    first = Err(err);
                }
            }
        }
        first
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn bind_tcp(addr: &str) -> Result<(Listener, Endpoint)> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(Error::io(&addr))?.collect();
    let listener = TcpListener::bind(&addrs[..]).map_err(Error::io(&addr))?;
    let local = listener.local_addr().map_err(Error::io(&addr))?;
    Ok((Listener::Tcp(listener), Endpoint::Tcp(local)))
}

fn accept_loop(listener: &Listener, shared: &Arc<Shared>, exports: &Exports) {
    loop {
        let stream = match listener {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        };
        if shared.stopping.get() {
            return;
        }
        match stream {
            Ok(s) => spawn_connection(s, shared, exports),
            // Out of descriptors or a connection reset before accept: try again shortly.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn spawn_connection(stream: Stream, shared: &Arc<Shared>, exports: &Exports) {
    let Ok(handle) = stream.try_clone() else {
        return;
    };
    let id = {
        let mut conns = lock(&shared.conns);
        if conns.open.len() >= MAX_CONNECTIONS {
            return;
        }
        conns.next += 1;
        let id = conns.next;
        conns.open.insert(id, handle);
        id
    };
    let shared = Arc::clone(shared);
    let exports = exports.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("nbd-{id}"))
        .spawn({
            let shared = Arc::clone(&shared);
            move || {
                if let Err(e) = connection(stream, &exports, &shared.stopping) {
                    if e.kind() == io::ErrorKind::InvalidData {
                        eprintln!("dmemu serve: client {id} dropped: {e}");
                    }
                }
                lock(&shared.conns).open.remove(&id);
                shared.closed.notify_all();
            }
        });
    if spawned.is_err() {
        lock(&shared.conns).open.remove(&id);
        shared.closed.notify_all();
    }
}

fn connection(stream: Stream, exports: &Exports, stopping: &Stopping) -> io::Result<()> {
    stream.set_write_timeout(WRITE_TIMEOUT)?;
    stream.set_send_buffer();
    let mut reader = BufReader::with_capacity(STREAM_BUFFER, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(STREAM_BUFFER, stream);
    let result = serve_client(&mut reader, &mut writer, exports, stopping);
    let _ = writer.flush();
    result
}
