//! The NBD protocol (NetworkBlockDevice/nbd doc/proto.md), server side, one module per
//! phase: `handshake` (greeting and client flags), `options` (fixed-newstyle option
//! haggling), `transmission` (the request loop) and `reply` (option replies, simple and
//! structured replies, the errno mapping). Blocking I/O on one thread per connection.

pub use super::exports::Exports;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

mod handshake;
mod options;
mod reply;
mod transmission;

/// Largest request payload or read length a client may ask for (nbdkit's limit), 32 MiB.
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option payload read into memory; longer options are skipped and refused.
pub const MAX_OPTION: u32 = 64 << 10;

/// "NBDMAGIC".
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT".
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// The metadata context this server offers, and the id it is given.
const BASE_ALLOCATION: &str = "base:allocation";
const BASE_ALLOCATION_ID: u32 = 1;

/// Whether the server is stopping: options then fail with NBD_REP_ERR_SHUTDOWN and
/// requests with ESHUTDOWN, so clients disconnect softly.
#[derive(Debug, Default)]
pub struct Stopping(AtomicBool);

impl Stopping {
    /// Start stopping.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Has stopping begun?
    #[must_use]
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serve one client from greeting to disconnect. Returns when the client leaves, breaks
/// the protocol (the connection is then dropped), or its stream ends.
pub fn serve_client(
    reader: &mut impl Read,
    writer: &mut impl Write,
    exports: &Exports,
    stopping: &Stopping,
) -> io::Result<()> {
    let flags = handshake::greet(reader, writer)?;
    let Some(session) = options::haggle(reader, writer, exports, flags, stopping)? else {
        return Ok(());
    };
    transmission::serve(reader, writer, &session, stopping)
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Read and drop `len` bytes through a small buffer (bounded memory whatever `len` is).
fn skip(reader: &mut impl Read, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut reader.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
