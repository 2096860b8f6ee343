//! What the server sends: option replies during haggling, and simple replies or structured
//! reply chunks during transmission; and the mapping of dmemu errors onto NBD's closed errno
//! set.

use std::io::{self, Write};

use crate::error::Error;

use super::{OPTION_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC};

// Option reply types.
pub(super) const REP_ACK: u32 = 1;
pub(super) const REP_SERVER: u32 = 2;
pub(super) const REP_INFO: u32 = 3;
pub(super) const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub(super) const REP_ERR_UNSUP: u32 = REP_ERR | 1;
pub(super) const REP_ERR_INVALID: u32 = REP_ERR | 3;
pub(super) const REP_ERR_UNKNOWN: u32 = REP_ERR | 6;
pub(super) const REP_ERR_SHUTDOWN: u32 = REP_ERR | 7;
pub(super) const REP_ERR_TOO_BIG: u32 = REP_ERR | 9;

// Structured reply chunk types and flags.
const FLAG_DONE: u16 = 1;
const CHUNK_NONE: u16 = 0;
const CHUNK_OFFSET_DATA: u16 = 1;
const CHUNK_OFFSET_HOLE: u16 = 2;
const CHUNK_BLOCK_STATUS: u16 = 5;
const CHUNK_ERROR: u16 = (1 << 15) | 1;
const CHUNK_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// NBD errno values (the protocol's closed set).
pub(super) mod errno {
    pub(crate) const EPERM: u32 = 1;
    pub(crate) const EIO: u32 = 5;
    pub(crate) const ENOMEM: u32 = 12;
    pub(crate) const EINVAL: u32 = 22;
    pub(crate) const ENOSPC: u32 = 28;
    pub(crate) const ENOTSUP: u32 = 95;
    pub(crate) const ESHUTDOWN: u32 = 108;
}

/// A failed request: the errno the client sees and a message for structured replies.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) errno: u32,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(errno: u32, message: impl Into<String>) -> Failure {
        Failure {
            errno,
            message: message.into(),
        }
    }

    /// Map a dmemu error. Requests past the end were refused before they got here, so an
    /// `OutOfRange` from below is a lower device's range failing: EIO, as the kernel says.
    /// ENOTSUP is kept for NBD_CMD_FLAG_FAST_ZERO (the protocol says so), where the export
    /// answers `Unsupported`; elsewhere an unsupported operation is EINVAL. NBD_EOVERFLOW
    /// is never sent: reads are always answered in one data chunk.
    pub(super) fn from_error(e: &Error) -> Failure {
        let errno = match e {
            Error::ReadOnly { .. } => errno::EPERM,
            Error::NoSpace { .. } => errno::ENOSPC,
            Error::Misaligned { .. }
            | Error::InvalidArgument { .. }
            | Error::Unsupported { .. } => errno::EINVAL,
            _ => errno::EIO,
        };
        Failure::new(errno, e.chain())
    }
}

/// Write one option reply.
pub(super) fn option(
    w: &mut impl Write,
    option: u32,
    reply: u32,
    data: &[&[u8]],
) -> io::Result<()> {
    let len: usize = data.iter().map(|d| d.len()).sum();
    let mut head = Vec::with_capacity(20 + len);
    head.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    head.extend_from_slice(&option.to_be_bytes());
    head.extend_from_slice(&reply.to_be_bytes());
    head.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    for d in data {
        head.extend_from_slice(d);
    }
    w.write_all(&head)
}

/// An option error reply with a human-readable message.
pub(super) fn option_error(
    w: &mut impl Write,
    option: u32,
    reply: u32,
    message: &str,
) -> io::Result<()> {
    self::option(w, option, reply, &[message.as_bytes()])
}

/// A simple reply header (data, if any, follows).
pub(super) fn simple(w: &mut impl Write, handle: u64, error: u32) -> io::Result<()> {
    let mut head = [0u8; 16];
    head[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    head[4..8].copy_from_slice(&error.to_be_bytes());
    head[8..].copy_from_slice(&handle.to_be_bytes());
    w.write_all(&head)
}

/// Whether a structured chunk ends the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Last {
    /// More chunks follow.
    No,
    /// NBD_REPLY_FLAG_DONE.
    Yes,
}

fn chunk_header(
    w: &mut impl Write,
    handle: u64,
    kind: u16,
    last: Last,
    len: usize,
) -> io::Result<()> {
    let mut head = [0u8; 20];
    head[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    let flags = if last == Last::Yes { FLAG_DONE } else { 0 };
    head[4..6].copy_from_slice(&flags.to_be_bytes());
    head[6..8].copy_from_slice(&kind.to_be_bytes());
    head[8..16].copy_from_slice(&handle.to_be_bytes());
    let len = u32::try_from(len).map_err(|_| io::Error::other("structured chunk too long"))?;
    head[16..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head)
}

/// NBD_REPLY_TYPE_NONE with DONE: a successful reply with no payload.
pub(super) fn done(w: &mut impl Write, handle: u64) -> io::Result<()> {
    chunk_header(w, handle, CHUNK_NONE, Last::Yes, 0)
}

/// NBD_REPLY_TYPE_OFFSET_DATA.
pub(super) fn offset_data(
    w: &mut impl Write,
    handle: u64,
    offset: u64,
    data: &[u8],
    last: Last,
) -> io::Result<()> {
    chunk_header(w, handle, CHUNK_OFFSET_DATA, last, 8 + data.len())?;
    w.write_all(&offset.to_be_bytes())?;
    w.write_all(data)
}

/// NBD_REPLY_TYPE_OFFSET_HOLE: `len` bytes at `offset` read as zeros.
pub(super) fn offset_hole(
    w: &mut impl Write,
    handle: u64,
    offset: u64,
    len: u32,
    last: Last,
) -> io::Result<()> {
    chunk_header(w, handle, CHUNK_OFFSET_HOLE, last, 12)?;
    w.write_all(&offset.to_be_bytes())?;
    w.write_all(&len.to_be_bytes())
}

/// Longest error message sent (the protocol's string limit is 4096 bytes).
const MAX_MESSAGE: usize = 4096;

fn message_bytes(message: &str) -> &[u8] {
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message.as_bytes()[..end]
}

/// NBD_REPLY_TYPE_ERROR, or NBD_REPLY_TYPE_ERROR_OFFSET when `offset` is given; ends the
/// reply.
pub(super) fn error_chunk(
    w: &mut impl Write,
    handle: u64,
    failure: &Failure,
    offset: Option<u64>,
) -> io::Result<()> {
    let msg = message_bytes(&failure.message);
    let (kind, extra) = match offset {
        Some(_) => (CHUNK_ERROR_OFFSET, 8),
        None => (CHUNK_ERROR, 0),
    };
    chunk_header(w, handle, kind, Last::Yes, 6 + msg.len() + extra)?;
    w.write_all(&failure.errno.to_be_bytes())?;
    w.write_all(&u16::try_from(msg.len()).unwrap_or(0).to_be_bytes())?;
    w.write_all(msg)?;
    if let Some(off) = offset {
        w.write_all(&off.to_be_bytes())?;
    }
    Ok(())
}

/// NBD_REPLY_TYPE_BLOCK_STATUS for one context; ends the reply.
pub(super) fn block_status(
    w: &mut impl Write,
    handle: u64,
    context: u32,
    extents: &[(u32, u32)],
) -> io::Result<()> {
    let mut body = Vec::with_capacity(4 + 8 * extents.len());
    body.extend_from_slice(&context.to_be_bytes());
    for &(len, flags) in extents {
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&flags.to_be_bytes());
    }
    chunk_header(w, handle, CHUNK_BLOCK_STATUS, Last::Yes, body.len())?;
    w.write_all(&body)
}
