//! NBD handshake, second part: fixed-newstyle option haggling until the client picks an
//! export (NBD_OPT_GO / NBD_OPT_EXPORT_NAME) or leaves. Options this server does not know
//! get NBD_REP_ERR_UNSUP and the connection stays up (qemu-img sends
//! NBD_OPT_EXTENDED_HEADERS first and falls back).

use std::io::{self, Read, Write};
use std::sync::Arc;

use super::handshake::ClientFlags;
use super::reply::{
    self, REP_ACK, REP_ERR_INVALID, REP_ERR_SHUTDOWN, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN,
    REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
};
use super::{
    be_u16, be_u32, be_u64, protocol_error, skip, Exports, Stopping, BASE_ALLOCATION,
    BASE_ALLOCATION_ID, IHAVEOPT, MAX_OPTION, MAX_REQUEST,
};
use crate::serve::export::{Export, ExportAccess};
use crate::serve::exports::OpenExport;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;

const INFO_EXPORT: u16 = 0;
const INFO_NAME: u16 = 1;
const INFO_DESCRIPTION: u16 = 2;
const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
const FLAG_HAS_FLAGS: u16 = 1 << 0;
const FLAG_READ_ONLY: u16 = 1 << 1;
const FLAG_SEND_FLUSH: u16 = 1 << 2;
const FLAG_SEND_FUA: u16 = 1 << 3;
const FLAG_SEND_TRIM: u16 = 1 << 5;
const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
const FLAG_SEND_DF: u16 = 1 << 7;
const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
const FLAG_SEND_CACHE: u16 = 1 << 10;
const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// What haggling settled: the export and how replies are framed.
#[derive(Debug)]
pub(super) struct Session {
    /// Open for the whole session, so the export cannot be removed under the client.
    pub(super) export: OpenExport,
    /// NBD_OPT_STRUCTURED_REPLY was negotiated.
    pub(super) structured: bool,
    /// `base:allocation` was selected for this export (its context id).
    pub(super) base_allocation: Option<u32>,
}

/// What the client has negotiated so far.
struct State {
    structured: bool,
    /// The export (by address) and whether `base:allocation` is selected for it.
    meta: Option<(Arc<Export>, bool)>,
}

/// Haggle; `None` when the client aborted or the stream ended cleanly.
pub(super) fn haggle(
    r: &mut impl Read,
    w: &mut impl Write,
    exports: &Exports,
    flags: ClientFlags,
    stopping: &Stopping,
) -> io::Result<Option<Session>> {
    let mut state = State {
        structured: false,
        meta: None,
    };
    loop {
        let mut head = [0u8; 16];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        if be_u64(&head, 0) != IHAVEOPT {
            return Err(protocol_error("option without IHAVEOPT magic"));
        }
        let opt = be_u32(&head, 8);
        let len = be_u32(&head, 12);
        if len > MAX_OPTION {
            if opt == OPT_EXPORT_NAME {
                return Err(protocol_error("NBD_OPT_EXPORT_NAME longer than any name"));
            }
            skip(r, u64::from(len))?;
            reply::option_error(w, opt, REP_ERR_TOO_BIG, "option data too long")?;
            w.flush()?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        if stopping.get() && opt != OPT_ABORT {
            if opt == OPT_EXPORT_NAME {
                return Ok(None);
            }
            reply::option_error(w, opt, REP_ERR_SHUTDOWN, "server is shutting down")?;
            w.flush()?;
            continue;
        }
        let done = match opt {
            OPT_EXPORT_NAME => Some(export_name(w, exports, &data, flags, &state)?),
            OPT_ABORT => {
                reply::option(w, opt, REP_ACK, &[])?;
                w.flush()?;
                return Ok(None);
            }
            OPT_LIST => {
                list(w, exports, &data)?;
                None
            }
            OPT_INFO | OPT_GO => info(w, opt, exports, &data, &state)?,
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    state.structured = true;
                    reply::option(w, opt, REP_ACK, &[])?;
                } else {
                    reply::option_error(w, opt, REP_ERR_INVALID, "option takes no data")?;
                }
                None
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(w, opt, exports, &data, &mut state)?;
                None
            }
            _ => {
                reply::option_error(w, opt, REP_ERR_UNSUP, "option not supported")?;
                None
            }
        };
        w.flush()?;
        if let Some(session) = done {
            return Ok(Some(session));
        }
    }
}

/// The transmission flags an export is offered with.
fn transmission_flags(export: &Export, structured: bool) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_CACHE | FLAG_CAN_MULTI_CONN;
    match export.access() {
        ExportAccess::ReadOnly => f |= FLAG_READ_ONLY,
        ExportAccess::ReadWrite => {
            f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
        }
    }
    if structured {
        // A read flagged "don't fragment" is answered with one data chunk.
        f |= FLAG_SEND_DF;
    }
    f
}

fn session(export: OpenExport, state: &State) -> Session {
    let base_allocation = match &state.meta {
        Some((e, true)) if Arc::ptr_eq(e, export.export()) && state.structured => {
            Some(BASE_ALLOCATION_ID)
        }
        _ => None,
    };
    Session {
        export,
        structured: state.structured,
        base_allocation,
    }
}

fn export_name(
    w: &mut impl Write,
    exports: &Exports,
    name: &[u8],
    flags: ClientFlags,
    state: &State,
) -> io::Result<Session> {
    // No way to refuse here but to hang up.
    let export = exports
        .open(name)
        .ok_or_else(|| protocol_error("NBD_OPT_EXPORT_NAME names no export"))?;
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&export.size().to_be_bytes());
    out.extend_from_slice(&transmission_flags(&export, state.structured).to_be_bytes());
    if !flags.no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    w.write_all(&out)?;
    Ok(session(export, state))
}

fn list(w: &mut impl Write, exports: &Exports, data: &[u8]) -> io::Result<()> {
    if !data.is_empty() {
        return reply::option_error(w, OPT_LIST, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    }
    for e in exports.list() {
        let name = e.name().as_bytes();
        let len = u32::try_from(name.len()).unwrap_or(0).to_be_bytes();
        reply::option(
            w,
            OPT_LIST,
            REP_SERVER,
            &[&len, name, e.description().as_bytes()],
        )?;
    }
    reply::option(w, OPT_LIST, REP_ACK, &[])
}

/// Split `u32 length, bytes` off the front of `data`.
fn take_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    if data.len() < 4 {
        return None;
    }
    let n = usize::try_from(be_u32(data, 0)).ok()?;
    let rest = &data[4..];
    (n <= rest.len()).then(|| rest.split_at(n))
}

/// NBD_OPT_INFO / NBD_OPT_GO: `u32 name length, name, u16 count, count × u16 info type`.
fn info(
    w: &mut impl Write,
    opt: u32,
    exports: &Exports,
    data: &[u8],
    state: &State,
) -> io::Result<Option<Session>> {
    let parsed = take_string(data).and_then(|(name, rest)| {
        if rest.len() < 2 {
            return None;
        }
        let n = usize::from(be_u16(rest, 0));
        let reqs = &rest[2..];
        (reqs.len() == 2 * n).then(|| (name, (0..n).map(|i| be_u16(reqs, 2 * i)).collect()))
    });
    let Some((name, requests)) = parsed else {
        reply::option_error(w, opt, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO data")?;
        return Ok(None);
    };
    let requests: Vec<u16> = requests;
    let Some(export) = exports.open(name) else {
        reply::option_error(w, opt, REP_ERR_UNKNOWN, "no such export")?;
        return Ok(None);
    };
    let mut ex = Vec::with_capacity(12);
    ex.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    ex.extend_from_slice(&export.size().to_be_bytes());
    ex.extend_from_slice(&transmission_flags(&export, state.structured).to_be_bytes());
    reply::option(w, opt, REP_INFO, &[&ex])?;
    if requests.contains(&INFO_NAME) {
        reply::option(
            w,
            opt,
            REP_INFO,
            &[&INFO_NAME.to_be_bytes(), export.name().as_bytes()],
        )?;
    }
    if requests.contains(&INFO_DESCRIPTION) && !export.description().is_empty() {
        reply::option(
            w,
            opt,
            REP_INFO,
            &[
                &INFO_DESCRIPTION.to_be_bytes(),
                export.description().as_bytes(),
            ],
        )?;
    }
    // Sent even when not asked for: a client that honours it avoids read-modify-write.
    let min = export.block_size();
    let mut bs = Vec::with_capacity(14);
    bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    bs.extend_from_slice(&min.to_be_bytes());
    bs.extend_from_slice(&min.max(4096).to_be_bytes());
    bs.extend_from_slice(&MAX_REQUEST.to_be_bytes());
    reply::option(w, opt, REP_INFO, &[&bs])?;
    reply::option(w, opt, REP_ACK, &[])?;
    Ok((opt == OPT_GO).then(|| session(export, state)))
}

/// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT:
/// `u32 name length, name, u32 query count, count × (u32 length, query)`.
fn meta_context(
    w: &mut impl Write,
    opt: u32,
    exports: &Exports,
    data: &[u8],
    state: &mut State,
) -> io::Result<()> {
    if opt == OPT_SET_META_CONTEXT && !state.structured {
        return reply::option_error(
            w,
            opt,
            REP_ERR_INVALID,
            "NBD_OPT_SET_META_CONTEXT needs structured replies",
        );
    }
    let parsed = take_string(data).and_then(|(name, rest)| {
        if rest.len() < 4 {
            return None;
        }
        let n = be_u32(rest, 0);
        let mut rest = &rest[4..];
        let mut queries = Vec::new();
        for _ in 0..n {
            let (q, tail) = take_string(rest)?;
            queries.push(q);
            rest = tail;
        }
        rest.is_empty().then_some((name, queries))
    });
    let Some((name, queries)) = parsed else {
        return reply::option_error(w, opt, REP_ERR_INVALID, "malformed meta context data");
    };
    let Some(export) = exports.find(name) else {
        return reply::option_error(w, opt, REP_ERR_UNKNOWN, "no such export");
    };
    let matches = |q: &[u8]| match opt {
        OPT_LIST_META_CONTEXT => q == b"base:" || q == BASE_ALLOCATION.as_bytes(),
        _ => q == BASE_ALLOCATION.as_bytes(),
    };
    let selected = if opt == OPT_LIST_META_CONTEXT && queries.is_empty() {
        true
    } else {
        queries.iter().any(|q| matches(q))
    };
    if selected {
        reply::option(
            w,
            opt,
            REP_META_CONTEXT,
            &[
                &BASE_ALLOCATION_ID.to_be_bytes(),
                BASE_ALLOCATION.as_bytes(),
            ],
        )?;
    }
    if opt == OPT_SET_META_CONTEXT {
        state.meta = Some((export, selected));
    }
    reply::option(w, opt, REP_ACK, &[])
}
