//! NBD transmission phase: read a request, serve it against the export, reply; until
//! NBD_CMD_DISC, the end of the stream, or a request that breaks the framing. Requests are
//! served in order on the connection's thread; parallelism comes from several connections
//! (CAN_MULTI_CONN).

use std::io::{self, Read, Write};

use super::options::Session;
use super::reply::{self, errno, Failure, Last};
use super::{be_u16, be_u32, be_u64, protocol_error, skip, Stopping, MAX_REQUEST, REQUEST_MAGIC};
use crate::serve::export::{Durability, ZeroSpeed};
use crate::volume::{is_zero, Allocation, Unmap};

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_CACHE: u16 = 5;
const CMD_WRITE_ZEROES: u16 = 6;
const CMD_BLOCK_STATUS: u16 = 7;

const CMD_FLAG_FUA: u16 = 1 << 0;
const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
const CMD_FLAG_DF: u16 = 1 << 2;
const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// `base:allocation` flags.
const STATE_HOLE: u32 = 1;
const STATE_ZERO: u32 = 2;

/// Extents in one block-status reply (REQ_ONE asks for one).
const MAX_STATUS_EXTENTS: usize = 1024;

/// A write payload is read in steps of this many bytes, the buffer growing before each.
const PAYLOAD_STEP: usize = 1 << 20;

/// Page alignment of the data buffer: copies between buffers whose addresses differ by 16
/// (mod 4096), where a plain `Vec` of 128 KiB or more lands, run several times slower here.
const ALIGN: usize = 4096;

/// A byte buffer whose data starts on a 4096-byte boundary, grown on demand.
#[derive(Default)]
struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
}

impl AlignedBuf {
    /// The first `len` bytes, growing the buffer (keeping what it holds) if needed.
    fn get(&mut self, len: usize) -> &mut [u8] {
        let cap = self.raw.len().saturating_sub(self.offset + ALIGN);
        if cap < len {
            let new_cap = len
                .max(cap.saturating_mul(2))
                .min(MAX_REQUEST as usize)
                .max(len);
            let mut raw = vec![0u8; new_cap + 2 * ALIGN];
            let offset = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
            raw[offset..offset + cap].copy_from_slice(&self.raw[self.offset..self.offset + cap]);
            self.raw = raw;
            self.offset = offset;
        }
        &mut self.raw[self.offset..self.offset + len]
    }
}

struct Request {
    flags: u16,
    kind: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

/// Serve requests until the client disconnects.
pub(super) fn serve(
    r: &mut impl Read,
    w: &mut impl Write,
    session: &Session,
    stopping: &Stopping,
) -> io::Result<()> {
    // One buffer for payloads and reads, grown to the largest request seen (≤ MAX_REQUEST).
    let mut buf = AlignedBuf::default();
    loop {
        let mut head = [0u8; 28];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        if be_u32(&head, 0) != REQUEST_MAGIC {
            return Err(protocol_error("request without NBD_REQUEST_MAGIC"));
        }
        let req = Request {
            flags: be_u16(&head, 4),
            kind: be_u16(&head, 6),
            handle: be_u64(&head, 8),
            offset: be_u64(&head, 16),
            len: be_u32(&head, 24),
        };
        if req.kind == CMD_DISC {
            return Ok(());
        }
        if req.kind == CMD_WRITE {
            if req.len > MAX_REQUEST {
                // Keep the stream in step without holding the payload.
                skip(r, u64::from(req.len))?;
                let f = Failure::new(errno::ENOMEM, "write larger than 32 MiB");
                fail(w, session, &req, &f, None)?;
                w.flush()?;
                continue;
            }
            // The buffer grows with the bytes that arrive, not with the length claimed.
            let len = req.len as usize;
            let mut have = 0;
            while have < len {
                let want = len.min(have + PAYLOAD_STEP);
                r.read_exact(&mut buf.get(want)[have..])?;
                have = want;
            }
        }
        if stopping.get() {
            fail(
                w,
                session,
                &req,
                &Failure::new(errno::ESHUTDOWN, "server is shutting down"),
                None,
            )?;
        } else {
            serve_one(w, session, &req, &mut buf)?;
        }
        w.flush()?;
    }
}

fn allowed_flags(kind: u16, structured: bool) -> Option<u16> {
    Some(match kind {
        CMD_READ if structured => CMD_FLAG_DF,
        CMD_READ | CMD_FLUSH | CMD_CACHE => 0,
        CMD_WRITE | CMD_TRIM => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
        _ => return None,
    })
}

fn serve_one(
    w: &mut impl Write,
    s: &Session,
    req: &Request,
    buf: &mut AlignedBuf,
) -> io::Result<()> {
    let Some(allowed) = allowed_flags(req.kind, s.structured) else {
        return fail(
            w,
            s,
            req,
            &Failure::new(errno::EINVAL, format!("unknown command {}", req.kind)),
            None,
        );
    };
    if req.flags & !allowed != 0 {
        let f = Failure::new(
            errno::EINVAL,
            format!("flags {:#x} not valid for command {}", req.flags, req.kind),
        );
        return fail(w, s, req, &f, None);
    }
    let e = &s.export;
    let len = u64::from(req.len);
    let past_end = req.offset.checked_add(len).is_none_or(|end| end > e.size());
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && e.access() == crate::serve::export::ExportAccess::ReadOnly {
        return fail(
            w,
            s,
            req,
            &Failure::new(errno::EPERM, "export is read-only"),
            None,
        );
    }
    if past_end && req.kind != CMD_FLUSH {
        let code = if matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            errno::ENOSPC
        } else {
            errno::EINVAL
        };
        let f = Failure::new(
            code,
            format!(
                "[{}, +{}) is past the end ({} bytes)",
                req.offset,
                req.len,
                e.size()
            ),
        );
        return fail(w, s, req, &f, None);
    }
    let fua = if req.flags & CMD_FLAG_FUA != 0 {
        Durability::Fua
    } else {
        Durability::Cached
    };
    let done = match req.kind {
        CMD_READ => return read(w, s, req, buf),
        CMD_WRITE => e.write(req.offset, buf.get(req.len as usize), fua),
        CMD_FLUSH => e.flush(),
        CMD_TRIM => e.trim(req.offset, len, fua),
        CMD_CACHE => Ok(()),
        CMD_WRITE_ZEROES => {
            let unmap = if req.flags & CMD_FLAG_NO_HOLE != 0 {
                Unmap::Forbidden
            } else {
                Unmap::Allowed
            };
            let speed = if req.flags & CMD_FLAG_FAST_ZERO != 0 {
                ZeroSpeed::Fast
            } else {
                ZeroSpeed::Any
            };
            match e.write_zeroes(req.offset, len, unmap, speed, fua) {
                Err(crate::Error::Unsupported { .. }) if speed == ZeroSpeed::Fast => {
                    let f = Failure::new(errno::ENOTSUP, "the range is not already zero");
                    return fail(w, s, req, &f, None);
                }
                other => other,
            }
        }
        _ => return block_status(w, s, req),
    };
    match done {
        Ok(()) => reply::simple(w, req.handle, 0),
        Err(err) => fail(w, s, req, &Failure::from_error(&err), None),
    }
}

/// Reply with an error: a simple reply, or for reads under structured replies an error
/// chunk (at `offset` when known).
fn fail(
    w: &mut impl Write,
    s: &Session,
    req: &Request,
    f: &Failure,
    offset: Option<u64>,
) -> io::Result<()> {
    if s.structured && matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS) {
        reply::error_chunk(w, req.handle, f, offset)
    } else {
        reply::simple(w, req.handle, f.errno)
    }
}

fn read(w: &mut impl Write, s: &Session, req: &Request, buf: &mut AlignedBuf) -> io::Result<()> {
    if req.len > MAX_REQUEST {
        return fail(
            w,
            s,
            req,
            &Failure::new(errno::ENOMEM, "read larger than 32 MiB"),
            None,
        );
    }
    let len = req.len as usize;
    let data = buf.get(len);
    match s.export.read(req.offset, data) {
        Ok(()) if s.structured && len == 0 => reply::done(w, req.handle),
        Ok(()) if s.structured && req.flags & CMD_FLAG_DF == 0 => read_chunks(w, s, req, data),
        Ok(()) if s.structured => reply::offset_data(w, req.handle, req.offset, data, Last::Yes),
        Ok(()) => {
            reply::simple(w, req.handle, 0)?;
            w.write_all(data)
        }
        Err(failure) if s.structured => {
            let good = usize::try_from(failure.offset - req.offset)
                .unwrap_or(0)
                .min(len);
            if good > 0 {
                reply::offset_data(w, req.handle, req.offset, &data[..good], Last::No)?;
            }
            fail(
                w,
                s,
                req,
                &Failure::from_error(&failure.error),
                Some(failure.offset),
            )
        }
        Err(failure) => reply::simple(w, req.handle, Failure::from_error(&failure.error).errno),
    }
}

/// Holes shorter than this go out as data: a chunk header costs more than the zeros.
const MIN_HOLE: u64 = 4096;

/// A structured read the client let fragment: the ranges the allocation query calls holes
/// (and that did read as zeros) as OFFSET_HOLE chunks, the rest as OFFSET_DATA, in order.
fn read_chunks(w: &mut impl Write, s: &Session, req: &Request, data: &[u8]) -> io::Result<()> {
    let len = data.len() as u64;
    // (start within the request, length, hole?)
    let mut pieces: Vec<(u64, u64, bool)> = Vec::new();
    let mut push = |at: u64, n: u64, hole: bool| match pieces.last_mut() {
        Some(last) if last.2 == hole && last.0 + last.1 == at => last.1 += n,
        _ => pieces.push((at, n, hole)),
    };
    let mut at = 0u64;
    if let Ok(runs) = s.export.allocation(req.offset, len, MAX_STATUS_EXTENTS) {
        for (n, state) in runs {
            let n = n.min(len - at);
            let range = usize::try_from(at).unwrap_or(0)..usize::try_from(at + n).unwrap_or(0);
            let hole = state == Allocation::Hole && n >= MIN_HOLE && is_zero(&data[range]);
            push(at, n, hole);
            at += n;
        }
    }
    if at < len {
        push(at, len - at, false);
    }
    let count = pieces.len();
    for (i, (at, n, hole)) in pieces.into_iter().enumerate() {
        let last = if i + 1 == count { Last::Yes } else { Last::No };
        let offset = req.offset + at;
        if hole {
            let n = u32::try_from(n).map_err(|_| io::Error::other("hole longer than a read"))?;
            reply::offset_hole(w, req.handle, offset, n, last)?;
        } else {
            let range = usize::try_from(at).unwrap_or(0)..usize::try_from(at + n).unwrap_or(0);
            reply::offset_data(w, req.handle, offset, &data[range], last)?;
        }
    }
    Ok(())
}

fn block_status(w: &mut impl Write, s: &Session, req: &Request) -> io::Result<()> {
    let Some(context) = s.base_allocation else {
        return fail(
            w,
            s,
            req,
            &Failure::new(errno::EINVAL, "no metadata context was selected"),
            None,
        );
    };
    if req.len == 0 {
        let f = Failure::new(errno::EINVAL, "block status of an empty range");
        return fail(w, s, req, &f, None);
    }
    let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        MAX_STATUS_EXTENTS
    };
    match s.export.allocation(req.offset, u64::from(req.len), max) {
        Ok(runs) => {
            let extents: Vec<(u32, u32)> = runs
                .iter()
                .map(|&(n, state)| {
                    let flags = match state {
                        Allocation::Data => 0,
                        Allocation::Zero => STATE_ZERO,
                        Allocation::Hole => STATE_HOLE | STATE_ZERO,
                    };
                    // Runs are clipped to the request, whose length is a u32.
                    (u32::try_from(n).unwrap_or(u32::MAX), flags)
                })
                .collect();
            if extents.is_empty() {
                let f = Failure::new(errno::EIO, "the volume reported no allocation");
                return fail(w, s, req, &f, None);
            }
            reply::block_status(w, req.handle, context, &extents)
        }
        Err(err) => fail(w, s, req, &Failure::from_error(&err), None),
    }
}
