//! `dmemu replay-log`: xfstests' `replay-log` over image files, with its options and its
//! output lines (src/log-writes/replay-log.c and log-writes.c), plus what it cannot do
//! without root: `--fsck CMD --check ...` runs CMD on a scratch image that holds the
//! replayed state, never on the replay device itself (a transient snapshot: the checker may
//! write, e2fsck may replay its journal, the replay goes on from the pristine state).
//!
//! The scratch image is kept equal to the replayed state by copying only the sectors the
//! replay changed since the last check; the whole image is copied again (its allocated
//! extents) only when the checker wrote to it. A write is seen by the scratch file's
//! modification time, which dmemu sets to a fixed value in 1970 after each copy: any write
//! through the file moves it to the present.

use std::fs::{File, FileTimes, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use clap::Args as ClapArgs;

use super::format::{flags_str, LogEntry, LogReader, DISCARD, FLUSH, FUA, MARK};
use super::replay::{apply_entry, entry_range, should_skip, Applied, CheckAt, ReplayOptions};
use super::replay::{DISCARD_CHUNK, MAX_ZERO_SIZE};
use crate::error::{Error, Result};
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::{Access, Allocation, FileVolume, Volume};

/// `dmemu replay-log` options: replay-log's, same names and meanings.
#[derive(Debug, ClapArgs)]
pub struct ReplayLogArgs {
    /// The log (a dm-log-writes log device image, or a qemu blklogwrites log).
    #[arg(long, value_name = "LOGFILE")]
    log: PathBuf,
    /// Replay onto this image (it must exist and hold every sector the log writes).
    /// Without it: print the log's version, sector size and entry count.
    #[arg(long, value_name = "DEVICE")]
    replay: Option<PathBuf>,
    /// Number of entries to replay (or to look at with --find).
    #[arg(long, value_name = "NUMBER", value_parser = entry_number)]
    limit: Option<u64>,
    /// Replay to / find the next flush.
    #[arg(long)]
    next_flush: bool,
    /// Replay to / find the next FUA write.
    #[arg(long)]
    next_fua: bool,
    /// Start at the given entry number (the entries before it are not replayed).
    #[arg(long, value_name = "ENTRY", value_parser = entry_number)]
    start_entry: Option<u64>,
    /// Start after the given mark (takes precedence over --start-entry).
    #[arg(long, value_name = "MARK")]
    start_mark: Option<String>,
    /// Replay to / find the given mark.
    #[arg(long, value_name = "MARK")]
    end_mark: Option<String>,
    /// Find mode: print `ENTRY@SECTOR` of the entry the other options stop at (SECTOR: where
    /// the next entry starts, in the log's sector size).
    #[arg(long)]
    find: bool,
    /// Print the number of entries the log's super counts.
    #[arg(long)]
    num_entries: bool,
    /// Do not replay discards.
    #[arg(long)]
    no_discard: bool,
    /// Command to run at each check point (with --check), through `sh -c`; the scratch
    /// image holding the replayed state is appended as its last argument, or put where
    /// CMD says `{}`. A nonzero exit stops the replay ("Fsck errored out on entry N").
    #[arg(long, value_name = "CMD", requires = "check")]
    fsck: Option<String>,
    /// When to run --fsck: after every NUMBERth entry replayed, or after every flush, FUA
    /// or discard entry.
    #[arg(long, value_name = "NUMBER|flush|fua|discard", requires = "fsck", value_parser = check_mode)]
    check: Option<CheckAt>,
    /// Only replay writes that reach this sector or beyond (log sector units).
    #[arg(long, value_name = "SECTOR", value_parser = sector_number)]
    start_sector: Option<u64>,
    /// Only replay writes that start at or before this sector (log sector units).
    #[arg(long, value_name = "SECTOR", value_parser = sector_number)]
    end_sector: Option<u64>,
    /// Print each replayed entry; twice: also skipped and seeked-over entries.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// `strtoull(s, &end, 0)` with nothing left over: decimal, `0x` hex or leading-`0` octal.
fn c_number(s: &str) -> Option<u64> {
    let t = s.trim_start();
    let t = t.strip_prefix('+').unwrap_or(t);
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
        (h, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        (&t[1..], 8)
    } else {
        (t, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn entry_number(s: &str) -> std::result::Result<u64, String> {
    c_number(s).ok_or_else(|| "Invalid entry number".to_string())
}

fn sector_number(s: &str) -> std::result::Result<u64, String> {
    c_number(s).ok_or_else(|| "Invalid sector number".to_string())
}

fn check_mode(s: &str) -> std::result::Result<CheckAt, String> {
    match s {
        "flush" => Ok(CheckAt::Flush),
        "fua" => Ok(CheckAt::Fua),
        "discard" => Ok(CheckAt::Discard),
        n => match c_number(n) {
            Some(k) if k != 0 => Ok(CheckAt::EveryNth(k)),
            _ => Err("Invalid entry number".to_string()),
        },
    }
}

/// replay-log's `should_stop`: a flag of `stop` is set; when `stop` holds MARK, only a mark
/// entry named `mark` stops.
fn should_stop(e: &LogEntry, stop: u64, mark: Option<&str>) -> bool {
    if e.flags & stop == 0 {
        return false;
    }
    if stop & MARK == 0 {
        return true;
    }
    e.has(MARK) && mark.is_some_and(|m| e.is_mark(m))
}

/// The `--check` scratch image: a file in the temporary directory that holds the replayed
/// state when the checker runs. Removed when dropped.
struct CheckImage {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Whether the file matched the replay device when the checker last ran (and had not
    /// been written since, as far as the modification time tells).
    synced: bool,
    /// Sector ranges the replay changed since the last sync.
    dirty: Vec<(u64, u64)>,
}

/// The modification time a synced scratch image carries; no write produces it.
fn sync_stamp() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1)
}

/// Largest piece copied into the scratch image at once.
const COPY_BYTES: usize = 1 << 20;

impl CheckImage {
    fn new(bytes: u64) -> Result<CheckImage> {
        let dir = std::env::temp_dir();
        let mut n = 0u32;
        loop {
            let path = dir.join(format!("dmemu-check-{}-{n}.img", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(CheckImage {
                        path,
                        file,
                        bytes,
                        synced: false,
                        dirty: Vec::new(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(Error::io(&path.display())(e)),
            }
        }
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> Error + '_ {
        Error::io(&"check image")
    }

    /// Whether the file is the one we synced, untouched since.
    fn untouched(&self) -> bool {
        let Ok(now) = std::fs::metadata(&self.path) else {
            return false;
        };
        let Ok(ours) = self.file.metadata() else {
            return false;
        };
        now.ino() == ours.ino()
            && now.dev() == ours.dev()
            && now.len() == self.bytes
            && now.modified().ok() == Some(sync_stamp())
    }

    /// Make the file hold `src`'s bytes: the dirty ranges, or everything when the checker
    /// wrote to it (or it was replaced).
    fn sync(&mut self, src: &FileVolume) -> Result<()> {
        if !(self.synced && self.untouched()) {
            if std::fs::metadata(&self.path).map(|m| m.ino()).ok()
                != self.file.metadata().map(|m| m.ino()).ok()
            {
                let _ = std::fs::remove_file(&self.path);
                self.file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&self.path)
                    .map_err(Error::io(&self.path.display()))?;
            }
            self.clear()?;
            self.copy_allocated(src)?;
        } else {
            let mut d = std::mem::take(&mut self.dirty);
            d.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::new();
            for (s, e) in d {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            for (s, e) in merged {
                self.copy(src, s, e)?;
            }
        }
        self.dirty.clear();
        self.file
            .set_times(FileTimes::new().set_modified(sync_stamp()))
            .map_err(self.io())?;
        self.synced = true;
        Ok(())
    }

    /// Make the file all holes of the device's size: a hole punched over it (truncating
    /// to 0 instead makes ext4 write the old data back first, its rename/truncate
    /// heuristic), or truncated where punching is not offered.
    fn clear(&self) -> Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        self.file.set_len(self.bytes).map_err(self.io())?;
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if self.bytes == 0 || fallocate(&self.file, punch, 0, self.bytes).is_ok() {
            return Ok(());
        }
        self.file.set_len(0).map_err(self.io())?;
        self.file.set_len(self.bytes).map_err(self.io())
    }

    fn copy_allocated(&self, src: &FileVolume) -> Result<()> {
        let size = src.size();
        let mut at = 0u64;
        while at < size.0 {
            let extents = src.allocation(Sector(at), SectorCount(size.0 - at))?;
            for x in extents {
                if x.state == Allocation::Data {
                    self.copy(src, at, at + x.len.0)?;
                }
                at += x.len.0;
            }
        }
        Ok(())
    }

    /// Copy sectors `[start, end)` of `src` into the file.
    fn copy(&self, src: &FileVolume, start: u64, end: u64) -> Result<()> {
        let mut buf = vec![0u8; COPY_BYTES.min(((end - start) * SECTOR_SIZE as u64) as usize)];
        let mut s = start;
        while s < end {
            let n = ((end - s) * SECTOR_SIZE as u64).min(buf.len() as u64) as usize;
            src.read(Sector(s), &mut buf[..n])?;
            self.file
                .write_all_at(&buf[..n], s * SECTOR_SIZE as u64)
                .map_err(self.io())?;
            s += (n / SECTOR_SIZE) as u64;
        }
        Ok(())
    }
}

impl Drop for CheckImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Run CMD on the scratch image; its exit status.
fn run_check(cmd: &str, image: &Path, entry: u64) -> Result<i32> {
    let script = if cmd.contains("{}") {
        cmd.replace("{}", "\"$1\"")
    } else {
        format!("{cmd} \"$1\"")
    };
    let status = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg("dmemu-check")
        .arg(image)
        .env("DMEMU_CHECK_ENTRY", entry.to_string())
        .status()
        .map_err(Error::io(&"sh"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// What `run` ended with besides an error: the checker's exit status when it failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Done,
    /// The checker failed at an entry: exit with its status.
    CheckFailed(i32),
}

fn out_err(e: std::io::Error) -> Error {
    Error::io(&"stdout")(e)
}

/// Run `dmemu replay-log`, printing what replay-log prints to `out`.
pub fn run(args: &ReplayLogArgs, out: &mut dyn Write) -> Result<Outcome> {
    let log_vol = FileVolume::open(&args.log, Access::ReadOnly)?;
    let replay = match &args.replay {
        Some(p) => Some(FileVolume::open(p, Access::ReadWrite)?),
        None => None,
    };
    let log = LogReader::open(&log_vol)?;
    let sup = log.super_block();
    let ss = u64::from(sup.sectorsize);
    let verbose = args.verbose;
    let opts = ReplayOptions {
        discard: !args.no_discard,
        start_sector: args.start_sector.unwrap_or(0),
        end_sector: args.end_sector.unwrap_or(u64::MAX),
    };
    let mut stop = 0;
    if args.next_flush {
        stop |= FLUSH;
    }
    if args.next_fua {
        stop |= FUA;
    }
    if args.end_mark.is_some() {
        stop |= MARK;
    }
    let end_mark = args.end_mark.as_deref();

    // Where to start: after --start-mark, or at --start-entry (log_seek_entry).
    let mut index = 0u64;
    let mut offset = log.first_offset();
    let seek_line = |out: &mut dyn Write, e: &LogEntry| -> Result<()> {
        if verbose > 1 {
            writeln!(
                out,
                "seek entry {}@{}: {}, size {}, flags 0x{:x}({})",
                e.index as i32,
                e.offset / ss + 1,
                e.sector,
                e.nr_sectors,
                e.flags,
                flags_str(e.flags)
            )
            .map_err(out_err)?;
        }
        Ok(())
    };
    if let Some(mark) = &args.start_mark {
        loop {
            if index >= sup.nr_entries {
                return Err(Error::invalid(
                    "--start-mark",
                    "Couldn't find starting mark",
                ));
            }
            let e = log.entry_at(index, offset)?;
            index += 1;
            offset = e.end_offset(sup.sectorsize);
            seek_line(out, &e)?;
            if should_stop(&e, MARK, Some(mark)) {
                break;
            }
        }
    } else {
        let start = args.start_entry.unwrap_or(0);
        if start >= sup.nr_entries {
            return Err(Error::invalid(
                "--start-entry",
                format!(
                    "Invalid entry number ({start}; the log's super counts {} entries)",
                    sup.nr_entries
                ),
            ));
        }
        while index < start {
            let e = log.entry_at(index, offset)?;
            if verbose > 1 {
                writeln!(
                    out,
                    "seek entry {}@{}: {}, size {}, flags 0x{:x}",
                    e.index as i32,
                    e.offset / ss,
                    e.sector,
                    e.nr_sectors,
                    e.flags
                )
                .map_err(out_err)?;
            }
            index += 1;
            offset = e.end_offset(sup.sectorsize);
        }
    }

    if args.find {
        let mut n = 0u64;
        while index < sup.nr_entries {
            let e = log.entry_at(index, offset)?;
            index += 1;
            offset = e.end_offset(sup.sectorsize);
            seek_line(out, &e)?;
            n += 1;
            if args.limit == Some(n) || should_stop(&e, stop, end_mark) {
                writeln!(out, "{}@{}", e.index, offset / ss).map_err(out_err)?;
                return Ok(Outcome::Done);
            }
        }
        return Err(Error::invalid("--find", "Couldn't find entry"));
    }
    if args.num_entries {
        writeln!(out, "{}", sup.nr_entries).map_err(out_err)?;
        return Ok(Outcome::Done);
    }
    let Some(replay) = replay else {
        writeln!(
            out,
            "Log version={}, sectorsize={}, entries={}",
            super::format::VERSION,
            sup.sectorsize,
            sup.nr_entries
        )
        .map_err(out_err)?;
        return Ok(Outcome::Done);
    };

    let mut check = match (&args.fsck, &args.check) {
        (Some(cmd), Some(at)) => Some((cmd.as_str(), at, CheckImage::new(replay.size().bytes())?)),
        _ => None,
    };
    // A regular file cannot BLKDISCARD: replay-log says so once and writes zeros.
    let is_file = args
        .replay
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .is_some_and(|m| m.is_file());
    let mut said_zeroing = false;
    let mut n = 0u64;
    while index < sup.nr_entries {
        let e = log.header_at(index, offset)?;
        index += 1;
        offset = e.end_offset(sup.sectorsize);
        n += 1;
        let skip = should_skip(&e, &opts);
        if verbose > 1 || (verbose > 0 && !skip) {
            writeln!(
                out,
                "{} {}@{}: sector {}, size {}, flags 0x{:x}({})",
                if skip { "skipping" } else { "replaying" },
                e.index as i32,
                e.offset / ss + 1,
                e.sector,
                e.nr_sectors.saturating_mul(ss),
                e.flags,
                flags_str(e.flags)
            )
            .map_err(out_err)?;
        }
        if e.has(DISCARD) && e.nr_sectors != 0 && opts.discard && verbose > 0 && is_file {
            if !said_zeroing {
                writeln!(
                    out,
                    "replay device doesn't support discard, switching to writing zeros"
                )
                .map_err(out_err)?;
                said_zeroing = true;
            }
            let mut left = e.nr_sectors * ss;
            while left > 0 {
                let len = left.min(DISCARD_CHUNK);
                if len > MAX_ZERO_SIZE {
                    writeln!(out, "discard len {len} larger than max {MAX_ZERO_SIZE}")
                        .map_err(out_err)?;
                }
                left -= len;
            }
        }
        log.check_data(&e)?;
        let applied = apply_entry(&log, &e, &replay, &opts)?;
        if let Some((cmd, at, image)) = check.as_mut() {
            if matches!(applied, Applied::Changed | Applied::DiscardTooLarge) {
                let (s, c) = entry_range(&e, sup.sectorsize);
                image.dirty.push((s.0, s.0 + c.0));
            }
            if at.stops_at(&e, n) {
                image.sync(&replay)?;
                out.flush().map_err(out_err)?;
                let status = run_check(cmd, &image.path, e.index)?;
                if status != 0 {
                    replay.flush()?;
                    eprintln!(
                        "Fsck errored out on entry {} ({} exited with status {status})",
                        e.index,
                        crate::error::quote(cmd)
                    );
                    return Ok(Outcome::CheckFailed(status));
                }
            }
        }
        if args.limit == Some(n) || should_stop(&e, stop, end_mark) {
            break;
        }
    }
    replay.flush()?;
    Ok(Outcome::Done)
}
