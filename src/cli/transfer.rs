//! Moving data between a device and a file or pipe, for `read`, `write`, `luks read` and
//! `luks write`: 4096-aligned buffers, a progress bar on a terminal, sparse output, and the
//! checks that keep a bad input or output from writing anything.
//!
//! - Reading decrypts or remaps on one thread and writes on another (the output's cost
//!   overlaps the device's), through an `O_DIRECT` handle where the file system allows it
//!   (a bulk copy then does not push gigabytes through the page cache).
//! - Sparse output leaves a hole for every 4 KiB block that reads as zeros (unmapped thin
//!   blocks, never-written images); the default when `-o` names a file that did not exist.
//! - Writing checks a regular file's (or redirected stdin's) size against the device before
//!   the first write; from a pipe the size is known only at its end, so each chunk is checked
//!   before it is written. A failure after writing began says which sectors were written.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::copy::{self, CopyOptions};
use crate::volume::{check_range, is_zero, ImageFile, Volume};

/// Transfers of at least this many bytes show a progress bar, when stderr is a terminal.
pub const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// The unit of sparse output (and of `O_DIRECT` writes).
const ALIGN: usize = 4096;

/// A progress bar for `total_bytes`: drawn on stderr when it is a terminal and the transfer
/// is at least [`PROGRESS_MIN_BYTES`], hidden otherwise (pipes and logs get nothing).
#[must_use]
pub fn progress(total_bytes: u64) -> ProgressBar {
    if total_bytes < PROGRESS_MIN_BYTES || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total_bytes);
    if let Ok(style) = ProgressStyle::with_template(
        "{binary_bytes}/{binary_total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// A volume whose reads advance a progress bar: commands that read a device through
/// library code (verity format and verify) pass this instead of the volume.
#[derive(Debug)]
pub struct Counted<'a> {
    inner: &'a dyn Volume,
    bar: ProgressBar,
}

impl<'a> Counted<'a> {
    /// Count the bytes read from `inner` on a bar over its whole size.
    #[must_use]
    pub fn new(inner: &'a dyn Volume) -> Counted<'a> {
        let bar = progress(inner.size().bytes());
        Counted { inner, bar }
    }

    /// Remove the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Volume for Counted<'_> {
    fn size(&self) -> SectorCount {
        self.inner.size()
    }
    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        self.inner.read(sector, buf)?;
        self.bar.inc(buf.len() as u64);
        Ok(())
    }
    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        self.inner.write(sector, buf)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        self.inner.discard(sector, count)
    }
}

/// What to read and where to put it (`read`, `luks read`).
#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// First sector to read.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Number of sectors (default: to the end of the device).
    #[arg(long)]
    pub sectors: Option<u64>,
    /// Output file (default stdout). An existing directory or block device is refused.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Leave holes in the output file where the device reads zeros or is unmapped
    /// (the default when -o names a file that does not exist yet).
    #[arg(long, conflicts_with = "no_sparse")]
    pub sparse: bool,
    /// Write every block of the output, zeros too.
    #[arg(long)]
    pub no_sparse: bool,
}

/// Where read data goes.
enum Sink {
    /// Stdout, a pipe or a character device: written in order.
    Stream(Box<dyn Write>),
    /// A regular file, written at offsets.
    File {
        /// Locked exclusive while it is written (an image in use elsewhere is refused).
        file: ImageFile,
        /// The same file opened with `O_DIRECT`, if the file system takes it.
        direct: Option<File>,
        sparse: bool,
    },
}

impl Sink {
    fn open(args: &ReadArgs, name: &str) -> Result<Sink> {
        let Some(path) = &args.output else {
            if args.sparse {
                return Err(Error::invalid(
                    "--sparse",
                    "needs -o FILE (stdout cannot hold holes)",
                ));
            }
            return Ok(Sink::Stream(Box::new(io::stdout().lock())));
        };
        let existed = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(Error::invalid(
                    "-o",
                    format!("{name} is a directory; name a file in it"),
                ))
            }
            Ok(m) if m.file_type().is_block_device() => {
                return Err(Error::invalid(
                    "-o",
                    format!(
                        "{name} is a block device; dmemu writes image files and pipes \
                         (copy onto a device with dd)"
                    ),
                ))
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(&name)(e)),
        };
        // Locked first, truncated only then (ImageFile::create_output).
        let file = ImageFile::create_output(path)?;
        if !file.file().metadata().map_err(Error::io(&name))?.is_file() {
            if args.sparse {
                return Err(Error::invalid(
                    "--sparse",
                    format!("{name} is not a regular file and cannot hold holes"),
                ));
            }
            let stream = file.file().try_clone().map_err(Error::io(&name))?;
            return Ok(Sink::Stream(Box::new(stream)));
        }
        let sparse = !args.no_sparse && (args.sparse || !existed);
        let direct = open_direct(path);
        Ok(Sink::File {
            file,
            direct,
            sparse,
        })
    }

    /// Write `b` at byte `pos` of the output (a stream: in order, so `pos` is implied).
    fn put(&mut self, pos: u64, b: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stream(out) => out.write_all(b),
            Sink::File {
                file,
                direct,
                sparse: false,
            } => write_at(file.file(), direct.as_ref(), b, pos),
            Sink::File {
                file,
                direct,
                sparse: true,
            } => {
                // Runs of blocks holding a non-zero byte are written; zero blocks stay holes.
                let mut i = 0;
                while i < b.len() {
                    if is_zero(&b[i..(i + ALIGN).min(b.len())]) {
                        i += ALIGN;
                        continue;
                    }
                    let from = i;
                    while i < b.len() && !is_zero(&b[i..(i + ALIGN).min(b.len())]) {
                        i += ALIGN;
                    }
                    let to = i.min(b.len());
                    write_at(
                        file.file(),
                        direct.as_ref(),
                        &b[from..to],
                        pos + from as u64,
                    )?;
                }
                Ok(())
            }
        }
    }

    /// Push what a stream holds to its output.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stream(out) => out.flush(),
            Sink::File { .. } => Ok(()),
        }
    }

    /// Give the output its full length (a trailing hole) and flush a stream.
    fn finish(&mut self, len: u64) -> io::Result<()> {
        match self {
            Sink::Stream(out) => out.flush(),
            Sink::File { file, .. } => file.file().set_len(len),
        }
    }
}

fn write_at(file: &File, direct: Option<&File>, b: &[u8], pos: u64) -> io::Result<()> {
    match direct {
        Some(d) if b.len() % ALIGN == 0 && pos % ALIGN as u64 == 0 => d.write_all_at(b, pos),
        _ => file.write_all_at(b, pos),
    }
}

/// `path` opened again for writing with `O_DIRECT`, if the file system supports it.
fn open_direct(path: &Path) -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC;
    rustix::fs::open(path, flags, Mode::empty())
        .ok()
        .map(File::from)
}

/// `read`: copy sectors `[start, start + sectors)` of `vol` to the output, through the copy
/// engine (chunks read and decrypted on every core, written out in order). `block` is the
/// unit the device is addressed in (a crypt sector size): a failing read is located to it.
pub fn read_out(vol: &dyn Volume, args: &ReadArgs, block: usize) -> Result<()> {
    let size = vol.size();
    let start = args.start;
    let count = match args.sectors {
        Some(n) => n,
        None => size.0.checked_sub(start).ok_or(Error::OutOfRange {
            sector: Sector(start),
            count: SectorCount(0),
            size,
        })?,
    };
    check_range(size, Sector(start), SectorCount(count))?;
    let name = args
        .output
        .as_ref()
        .map_or_else(|| "stdout".into(), |p| p.display().to_string());
    let mut sink = Sink::open(args, &name)?;
    let total = SectorCount(count).bytes();
    let bar = progress(total);
    let opts = CopyOptions::default().with_block(block);
    let copied = copy::read_range(
        vol,
        Sector(start),
        SectorCount(count),
        &opts,
        &mut |at, b| {
            sink.put(at, b).map_err(Error::io(&name))?;
            bar.inc(b.len() as u64);
            Ok(())
        },
    );
    bar.finish_and_clear();
    if let Err(stopped) = copied {
        // What was read before the failure is in the output (a stream flushed).
        let _ = sink.flush();
        if let Some(sector) = stopped.sector {
            eprintln!(
                "dmemu: reading sectors [{sector}, +{}) failed; sectors [{start}, +{}) \
                 before them were copied to {name}",
                stopped.count.0, stopped.done.0
            );
        }
        return Err(stopped.error);
    }
    sink.finish(total).map_err(Error::io(&name))
}

/// What to write where (`write`, `luks write`).
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// First sector to write.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Input file (default stdin).
    #[arg(short = 'i', long)]
    pub input: Option<PathBuf>,
}

/// The size of a regular file behind `f`, if it is one.
fn regular_size(f: &impl AsFd) -> Option<u64> {
    let owned = f.as_fd().try_clone_to_owned().ok()?;
    let m = File::from(owned).metadata().ok()?;
    m.is_file().then_some(m.len())
}

/// `write`: copy the input into `vol` from sector `args.start`, in whole `granularity`-byte
/// blocks (512, or a crypt target's sector size).
pub fn write_in(vol: &dyn Volume, args: &WriteArgs, granularity: usize) -> Result<()> {
    let name = args
        .input
        .as_ref()
        .map_or_else(|| "stdin".into(), |p| p.display().to_string());
    let (mut reader, len): (Box<dyn Read + Send>, Option<u64>) = match &args.input {
        Some(p) => {
            let f = File::open(p).map_err(Error::io(&name))?;
            if f.metadata().map_err(Error::io(&name))?.is_dir() {
                return Err(Error::invalid("-i", format!("{name} is a directory")));
            }
            let len = regular_size(&f);
            (Box::new(f), len)
        }
        None => (Box::new(io::stdin()), regular_size(&io::stdin())),
    };
    let size = vol.size();
    let start = args.start;
    let room = size.0.saturating_sub(start);
    let unit = granularity.max(SECTOR_SIZE) as u64;
    if let Some(len) = len {
        if len % unit != 0 {
            return Err(Error::invalid(
                "input",
                format!(
                    "{name} is {len} bytes, not a whole number of {unit}-byte blocks; \
                     nothing was written"
                ),
            ));
        }
        if len / SECTOR_SIZE as u64 > room {
            return Err(too_big(&name, len / SECTOR_SIZE as u64, start, size, 0));
        }
    }
    let bar = progress(len.unwrap_or(0));
    let mut input = |b: &mut [u8]| fill(&mut reader, b).map_err(Error::io(&name));
    let mut check = |done: SectorCount, n: usize| -> Result<()> {
        if n as u64 % unit != 0 {
            return Err(Error::invalid(
                "input",
                format!(
                    "{name} ends with a partial {unit}-byte block ({} bytes left over)",
                    n as u64 % unit
                ),
            ));
        }
        let sectors = done.0 + (n / SECTOR_SIZE) as u64;
        if sectors > room {
            return Err(too_big(&name, sectors, start, size, done.0));
        }
        bar.inc(n as u64);
        Ok(())
    };
    let result = copy::write_from(
        vol,
        Sector(start),
        copy::WRITE_CHUNK_BYTES,
        &mut input,
        &mut check,
    );
    bar.finish_and_clear();
    match result {
        Ok(_) => vol.flush(),
        Err(stopped) => {
            if stopped.done.0 > 0 {
                eprintln!(
                    "dmemu: sectors [{start}, +{}) were written before the error below",
                    stopped.done.0
                );
            }
            if let Some(sector) = stopped.sector {
                eprintln!(
                    "dmemu: the write of sectors [{sector}, +{}) failed (its sectors before the \
                     failing one may have been written); nothing after it was written",
                    stopped.count.0
                );
            }
            Err(stopped.error)
        }
    }
}

fn too_big(name: &str, sectors: u64, start: u64, size: SectorCount, written: u64) -> Error {
    let done = if written == 0 {
        "nothing was written"
    } else {
        "the rest was not written"
    };
    Error::invalid(
        "input",
        format!(
            "{name} holds at least {sectors} sectors, more than the {} from sector {start} \
             to the end of the {}-sector device; {done}",
            size.0.saturating_sub(start),
            size.0
        ),
    )
}

/// Fill `buf` from `input`; fewer bytes only at end of input.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
