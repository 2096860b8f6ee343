//! The copy engine: every long copy out of or into a volume (`dmemu read` / `write`, `luks
//! read` / `write`, thin extraction, large NBD reads) goes through these few functions, so the
//! overlap of reading, transforming and writing, and the exact error rules, live in one place.
//!
//! - **Out of a volume** ([`read_pieces`], [`read_range`]): worker threads (one per core)
//!   each take the next chunk, read it through the volume (which decrypts, remaps, looks up
//!   a thin mapping… on that worker) into a buffer of their own, and hand it on; the calling
//!   thread gives the chunks to the sink strictly in order. A chunk that finished early waits
//!   in a window bounded by the number of buffers.
//! - **Into a volume** ([`write_from`]): a reader thread fills buffers from the source ahead
//!   of the writes, and the calling thread writes them one after the other, in order. Writes
//!   are never issued side by side, so nothing after a failed write is ever written; a large
//!   write still uses both cores where the target splits it (crypt encrypts a 4 MiB request
//!   on two threads).
//! - **Into a buffer** ([`read_into`]): one large read (an NBD request) split over the
//!   workers, in place.
//!
//! Errors are exact: when a read fails, every chunk before it has reached the sink, the
//! failing chunk is read again in pieces to find its first failing block (of the caller's
//! block size), the blocks before that one are delivered too, and the reported sector is
//! that block's; nothing after it reaches the sink. A chunk that reads back whole the second
//! time (a fault window closed) is reported at its start, since its data is not known good.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::Volume;

/// Bytes each worker reads per call by default: below crypt's 4 MiB split threshold (the
/// workers already use every core) and large enough that the per-call cost vanishes.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Bytes per write by default: crypt encrypts a request this large on two threads.
pub const WRITE_CHUNK_BYTES: usize = 4 << 20;
/// Buffer alignment (copies into buffers at a page offset of 16 run several times slower on
/// this class of CPU; see docs/design.md).
pub const ALIGN: usize = 4096;
/// Most workers a copy starts, whatever the machine has.
const MAX_WORKERS: usize = 8;
/// A failing chunk is read again in pieces this large first, then block by block.
const LOCATE_PIECE: usize = 64 * 1024;

/// A zeroizing buffer whose data starts on a 4096-byte boundary. Zeroizing because it may
/// carry decrypted data.
pub struct AlignedBuf {
    raw: Zeroizing<Vec<u8>>,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    #[must_use]
    pub fn new(len: usize) -> AlignedBuf {
        let raw = Zeroizing::new(vec![0u8; len + ALIGN]);
        let offset = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, offset, len }
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `n` bytes (at most its length).
    #[must_use]
    pub fn get(&self, n: usize) -> &[u8] {
        &self.raw[self.offset..self.offset + n.min(self.len)]
    }

    /// The first `n` bytes (at most its length), to fill.
    pub fn get_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + n.min(self.len)]
    }
}

/// How a copy is cut up and where its errors are located.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOptions {
    /// Bytes per volume call (a whole number of `block` bytes).
    pub chunk: usize,
    /// Worker threads reading chunks (at least 1).
    pub workers: usize,
    /// The volume's block size in bytes (512, or a crypt sector size / verity block): the
    /// unit a failing chunk is searched in.
    pub block: usize,
}

impl Default for CopyOptions {
    /// 1 MiB chunks, one worker per core (at most 8), 512-byte blocks.
    fn default() -> CopyOptions {
        CopyOptions {
            chunk: CHUNK_BYTES,
            workers: std::thread::available_parallelism()
                .map_or(1, std::num::NonZero::get)
                .min(MAX_WORKERS),
            block: SECTOR_SIZE,
        }
    }
}

impl CopyOptions {
    /// These options with `block` as the block size (at least 512).
    #[must_use]
    pub fn with_block(self, block: usize) -> CopyOptions {
        CopyOptions {
            block: block.max(SECTOR_SIZE),
            ..self
        }
    }

    /// The chunk in sectors: at least one block, a whole number of blocks.
    fn chunk_sectors(&self) -> u64 {
        let block = self.block.max(SECTOR_SIZE);
        let chunk = (self.chunk / block).max(1) * block;
        (chunk / SECTOR_SIZE) as u64
    }
}

/// One stretch of a copy out of a volume: `len` sectors read from `sector`, delivered to the
/// sink with `dest` (the caller's position for it, e.g. a byte offset in the output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// First sector read.
    pub sector: Sector,
    /// Sectors read.
    pub len: SectorCount,
    /// Where the caller puts it (passed back unchanged, advanced by the bytes before it when
    /// the engine cuts a piece into chunks).
    pub dest: u64,
}

/// Why a copy stopped and how far it got.
#[derive(Debug)]
pub struct Stopped {
    /// Sectors that reached the sink (reads) or the volume (writes) before the failure,
    /// counted in copy order.
    pub done: SectorCount,
    /// The first sector of the volume that failed (a read: its first failing block; a
    /// write: the start of the failed request); `None` when the sink, the source or a
    /// caller's check failed instead.
    pub sector: Option<Sector>,
    /// Sectors of the failed block or write request (0 with no `sector`).
    pub count: SectorCount,
    /// What failed.
    pub error: Error,
}

impl Stopped {
    fn other(done: SectorCount, error: Error) -> Stopped {
        Stopped {
            done,
            sector: None,
            count: SectorCount(0),
            error,
        }
    }
}

/// The buffers and the list of chunks the workers share.
struct Work<I> {
    chunks: I,
    next: u64,
    free: Vec<AlignedBuf>,
    stop: bool,
}

struct Shared<I> {
    work: Mutex<Work<I>>,
    ready: Condvar,
}

impl<I> Shared<I> {
    fn lock(&self) -> MutexGuard<'_, Work<I>> {
        self.work.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn give_back(&self, buf: AlignedBuf) {
        self.lock().free.push(buf);
        self.ready.notify_one();
    }
    fn stop(&self) {
        self.lock().stop = true;
        self.ready.notify_all();
    }
}

/// A chunk a worker has read.
struct Read {
    index: u64,
    piece: Piece,
    buf: AlignedBuf,
    result: Result<()>,
}

/// `pieces` cut into chunks of at most `chunk` sectors.
fn chunked(pieces: impl Iterator<Item = Piece>, chunk: u64) -> impl Iterator<Item = Piece> {
    pieces.flat_map(move |p| {
        (0..p.len.0.div_ceil(chunk)).map(move |i| {
            let at = i * chunk;
            Piece {
                sector: Sector(p.sector.0 + at),
                len: SectorCount((p.len.0 - at).min(chunk)),
                dest: p.dest + at * SECTOR_SIZE as u64,
            }
        })
    })
}

fn bytes_of(len: SectorCount) -> usize {
    // Chunks are at most `CopyOptions::chunk` bytes, which is a usize.
    usize::try_from(len.bytes()).unwrap_or(usize::MAX)
}

/// Read every piece of `vol` in order and give each, cut into chunks, to `sink` with its
/// data, on the calling thread and strictly in order, while worker threads read ahead.
/// On a read error the data before the first failing block is delivered and the copy stops
/// there (see the module doc); a sink error stops it at once.
pub fn read_pieces<I>(
    vol: &dyn Volume,
    pieces: I,
    opts: &CopyOptions,
    sink: &mut dyn FnMut(Piece, &[u8]) -> Result<()>,
) -> std::result::Result<(), Stopped>
where
    I: Iterator<Item = Piece> + Send,
{
    let chunk = opts.chunk_sectors();
    let workers = opts.workers.max(1);
    // Two buffers per worker (one being read, one waiting) and one at the sink.
    let buffers = 2 * workers + 1;
    let buf_len = bytes_of(SectorCount(chunk));
    let shared = Shared {
        work: Mutex::new(Work {
            chunks: chunked(pieces, chunk),
            next: 0,
            free: (0..buffers).map(|_| AlignedBuf::new(buf_len)).collect(),
            stop: false,
        }),
        ready: Condvar::new(),
    };
    let (done_tx, done_rx) = mpsc::channel::<Read>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = done_tx.clone();
            let shared = &shared;
            s.spawn(move || worker(vol, shared, &tx));
        }
        drop(done_tx);
        let result = deliver(vol, opts, &shared, &done_rx, sink);
        // Whatever happened, the workers stop taking chunks; the scope waits for the
        // chunks they are reading.
        shared.stop();
        result
    })
}

fn worker<I: Iterator<Item = Piece>>(
    vol: &dyn Volume,
    shared: &Shared<I>,
    tx: &mpsc::Sender<Read>,
) {
    loop {
        let (index, piece, mut buf) = {
            let mut w = shared.lock();
            let buf = loop {
                if w.stop {
                    return;
                }
                if let Some(b) = w.free.pop() {
                    break b;
                }
                w = shared.ready.wait(w).unwrap_or_else(PoisonError::into_inner);
            };
            let Some(piece) = w.chunks.next() else {
                w.free.push(buf);
                w.stop = true;
                drop(w);
                shared.ready.notify_all();
                return;
            };
            let index = w.next;
            w.next += 1;
            (index, piece, buf)
        };
        let result = vol.read(piece.sector, buf.get_mut(bytes_of(piece.len)));
        let failed = result.is_err();
        if tx
            .send(Read {
                index,
                piece,
                buf,
                result,
            })
            .is_err()
        {
            return;
        }
        if failed {
            // Nothing after a failure is needed; the chunks taken before it finish.
            shared.stop();
            return;
        }
    }
}

/// The sink side of [`read_pieces`]: chunks in index order, the failing one located.
fn deliver<I>(
    vol: &dyn Volume,
    opts: &CopyOptions,
    shared: &Shared<I>,
    done_rx: &mpsc::Receiver<Read>,
    sink: &mut dyn FnMut(Piece, &[u8]) -> Result<()>,
) -> std::result::Result<(), Stopped> {
    let mut waiting: BTreeMap<u64, Read> = BTreeMap::new();
    let mut want = 0u64;
    let mut done = SectorCount(0);
    for r in done_rx {
        waiting.insert(r.index, r);
        while let Some(mut r) = waiting.remove(&want) {
            if let Err(first) = r.result {
                let bytes = bytes_of(r.piece.len);
                let found = locate(vol, r.piece.sector, r.buf.get_mut(bytes), opts.block, first);
                if found.good > 0 {
                    let head = Piece {
                        len: SectorCount::floor_bytes(found.good as u64),
                        ..r.piece
                    };
                    sink(head, r.buf.get(found.good)).map_err(|e| Stopped::other(done, e))?;
                }
                return Err(found.stopped(r.piece.sector, done));
            }
            sink(r.piece, r.buf.get(bytes_of(r.piece.len))).map_err(|e| Stopped::other(done, e))?;
            done += r.piece.len;
            shared.give_back(r.buf);
            want += 1;
        }
    }
    if waiting.is_empty() {
        Ok(())
    } else {
        // A worker died (a panic, which the scope passes on) before its chunk was read.
        Err(Stopped::other(
            done,
            Error::invalid("copy", "a reading thread stopped before its chunk was read"),
        ))
    }
}

/// Where a failed read failed: `good` bytes from its start read correctly, then the block
/// of `failed` bytes did not.
#[derive(Debug)]
pub struct Located {
    /// Bytes before the failing block (valid in the buffer).
    pub good: usize,
    /// Bytes of the failing block (the whole buffer if nothing failed the second time).
    pub failed: usize,
    /// The failing block's error (or the first one).
    pub error: Error,
}

impl Located {
    /// The [`Stopped`] of a read from `start` after `done` sectors went to the sink before it.
    fn stopped(self, start: Sector, done: SectorCount) -> Stopped {
        let good = SectorCount::floor_bytes(self.good as u64);
        Stopped {
            done: done + good,
            sector: Some(start + good),
            count: SectorCount::floor_bytes(self.failed as u64),
            error: self.error,
        }
    }
}

/// After `vol.read(start, buf)` failed with `first`: read `buf` again in pieces, then blocks
/// of `block` bytes, to find the first failing block. If nothing fails the second time (a
/// fault window closed), the whole buffer is reported with `first`, since the data read
/// then is not known good.
pub fn locate(
    vol: &dyn Volume,
    start: Sector,
    buf: &mut [u8],
    block: usize,
    first: Error,
) -> Located {
    let block = block.max(SECTOR_SIZE);
    let piece_len = LOCATE_PIECE.max(block) / block * block;
    let sector_of = |at: usize| start + SectorCount((at / SECTOR_SIZE) as u64);
    let mut at = 0;
    for piece in buf.chunks_mut(piece_len) {
        if vol.read(sector_of(at), piece).is_ok() {
            at += piece.len();
            continue;
        }
        for blk in piece.chunks_mut(block) {
            if let Err(error) = vol.read(sector_of(at), blk) {
                return Located {
                    good: at,
                    failed: blk.len(),
                    error,
                };
            }
            at += blk.len();
        }
    }
    Located {
        good: 0,
        failed: buf.len(),
        error: first,
    }
}

/// [`read_pieces`] over `[start, start + count)`: the sink gets each chunk's byte offset from
/// `start`.
pub fn read_range(
    vol: &dyn Volume,
    start: Sector,
    count: SectorCount,
    opts: &CopyOptions,
    sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> std::result::Result<(), Stopped> {
    let whole = Piece {
        sector: start,
        len: count,
        dest: 0,
    };
    read_pieces(vol, std::iter::once(whole), opts, &mut |p, data| {
        sink(p.dest, data)
    })
}

/// Fill `buf` from `start` with the chunks read side by side by the workers. On failure,
/// the bytes before the returned sector are valid and it is the first failing block's.
pub fn read_into(
    vol: &dyn Volume,
    start: Sector,
    buf: &mut [u8],
    opts: &CopyOptions,
) -> std::result::Result<(), Stopped> {
    let chunk = bytes_of(SectorCount(opts.chunk_sectors()));
    let workers = opts.workers.max(1);
    if buf.len() <= chunk || workers == 1 {
        return match vol.read(start, buf) {
            Ok(()) => Ok(()),
            Err(first) => {
                Err(locate(vol, start, buf, opts.block, first).stopped(start, SectorCount(0)))
            }
        };
    }
    let sector_of = |i: usize| start + SectorCount((i * chunk / SECTOR_SIZE) as u64);
    let pieces = Mutex::new(buf.chunks_mut(chunk).enumerate());
    let failures: Mutex<Vec<(usize, Error)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = pieces.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some((i, piece)) = next else { return };
                if let Err(e) = vol.read(sector_of(i), piece) {
                    failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((i, e));
                    return;
                }
            });
        }
    });
    let failures = failures
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let Some((i, first)) = failures.into_iter().min_by_key(|(i, _)| *i) else {
        return Ok(());
    };
    let from = i * chunk;
    let to = (from + chunk).min(buf.len());
    let done = SectorCount::floor_bytes(from as u64);
    Err(
        locate(vol, sector_of(i), &mut buf[from..to], opts.block, first)
            .stopped(sector_of(i), done),
    )
}

/// Write into `vol` from `start` what `fill` produces, in order: `fill` runs on a reader
/// thread and fills each buffer (returning the bytes it put there, fewer only at the end of
/// its input, 0 when it is done); `check(sectors written so far, bytes)` runs on the calling
/// thread before each write and may refuse it. Writes go out one at a time, each after the
/// one before succeeded. Returns the sectors written.
pub fn write_from(
    vol: &dyn Volume,
    start: Sector,
    chunk: usize,
    fill: &mut (dyn FnMut(&mut [u8]) -> Result<usize> + Send),
    check: &mut dyn FnMut(SectorCount, usize) -> Result<()>,
) -> std::result::Result<SectorCount, Stopped> {
    const IN_FLIGHT: usize = 3;
    let chunk = (chunk / SECTOR_SIZE).max(1) * SECTOR_SIZE;
    let (full_tx, full_rx) = mpsc::sync_channel::<(usize, AlignedBuf)>(IN_FLIGHT);
    let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
    for _ in 0..IN_FLIGHT {
        let _ = free_tx.send(AlignedBuf::new(chunk));
    }
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            while let Ok(mut buf) = free_rx.recv() {
                let n = fill(buf.get_mut(chunk))?;
                if n == 0 || full_tx.send((n, buf)).is_err() {
                    return Ok(());
                }
            }
            Ok(()) // the writer stopped; its error is reported
        });
        let mut done = SectorCount(0);
        let mut result = Ok(());
        for (n, buf) in full_rx.iter() {
            let step = (|| {
                check(done, n)?;
                let count = SectorCount::from_bytes(n)?;
                Ok(count)
            })();
            let count = match step {
                Ok(c) => c,
                Err(e) => {
                    result = Err(Stopped::other(done, e));
                    break;
                }
            };
            if let Err(error) = vol.write(start + done, buf.get(n)) {
                result = Err(Stopped {
                    done,
                    sector: Some(start + done),
                    count,
                    error,
                });
                break;
            }
            done += count;
            let _ = free_tx.send(buf);
        }
        drop(free_tx);
        drop(full_rx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("copy", "the input thread panicked")));
        result?;
        read.map_err(|e| Stopped::other(done, e))?;
        Ok(done)
    })
}

#[cfg(test)]
mod tests;
