//! `flakey`: passes I/O through while "up", injects failures while "down"
//! (kernel dm-flakey.c, v1.5.0 in Linux 6.12).
//!
//! Table args: `<dev> <offset> <up_secs> <down_secs> [<#feature_args> <feature args>...]`,
//! features `error_reads`, `drop_writes`, `error_writes`,
//! `corrupt_bio_byte <Nth_byte> <r|w> <value> <flags>`, `random_read_corrupt <ppb>`,
//! `random_write_corrupt <ppb>` (parts per 10^9).
//!
//! The parse follows `parse_features` of 6.12 token by token, quirks included:
//! - no feature group, a count of 0, or features that enable nothing (`random_read_corrupt
//!   0`) mean `error_reads error_writes`, and the table prints them;
//! - a repeated `corrupt_bio_byte`, `random_read_corrupt` or `random_write_corrupt`
//!   overwrites the earlier one; a repeated `error_reads`/`drop_writes`/`error_writes` is an
//!   error;
//! - the four parameters of `corrupt_bio_byte` are read past the end of the counted group
//!   when the count leaves fewer than four (the count then wraps, and whatever tokens follow
//!   are read as features until none is left, so such a table is always refused);
//! - tokens after the feature group are ignored and do not print back.
//!
//! Behaviour (see [`Flakey`]) is in `target.rs`.

use std::fmt;

use crate::table::args::{ArgResult, Args};
use crate::units::SectorCount;

use super::{DeviceAt, DeviceRef};

mod target;

pub use target::Flakey;

/// Parts per 10^9 of `random_*_corrupt` (the kernel's `PROBABILITY_BASE`).
pub const PROBABILITY_BASE: u32 = 1_000_000_000;

/// What a write does while the device is down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DownWrites {
    /// Writes go through (possibly corrupted by `corrupt_bio_byte ... w` or
    /// `random_write_corrupt`).
    #[default]
    PassThrough,
    /// `drop_writes`: writes report success but are not written.
    Drop,
    /// `error_writes`: writes fail with EIO.
    Error,
}

/// Which requests `corrupt_bio_byte` corrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `r`: the data of successful reads is changed before it is returned.
    Read,
    /// `w`: a copy of the data is changed and written.
    Write,
}

/// `corrupt_bio_byte <Nth_byte> <r|w> <value> <flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorruptBioByte {
    /// 1-based byte of the request's data to overwrite (a request shorter than this is left
    /// alone).
    pub nth_byte: u32,
    /// Reads or writes.
    pub direction: Direction,
    /// The value written there.
    pub value: u8,
    /// A `bi_opf` mask: a request matches when all these bits are set in its `bi_opf`.
    /// dmemu's requests carry `REQ_OP_READ` (0) or `REQ_OP_WRITE` (1) and no flag bits, so 0
    /// matches every request, 1 matches writes only, and any other bit matches nothing.
    pub flags: u32,
}

/// Parsed `flakey` arguments, with the kernel's implicit defaults applied (so the struct is
/// what the kernel's table output describes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlakeyArgs {
    /// The device and where the mapping starts on it.
    pub dest: DeviceAt,
    /// Seconds up at the start of each period.
    pub up_secs: u32,
    /// Seconds down after them.
    pub down_secs: u32,
    /// `error_reads`: reads fail while down.
    pub error_reads: bool,
    /// `drop_writes` / `error_writes`.
    pub writes: DownWrites,
    /// `corrupt_bio_byte`.
    pub corrupt: Option<CorruptBioByte>,
    /// `random_read_corrupt` in parts per 10^9 (0 = off).
    pub random_read_corrupt: u32,
    /// `random_write_corrupt` in parts per 10^9 (0 = off).
    pub random_write_corrupt: u32,
}

/// Feature bits as `parse_features` builds them, before the defaults.
#[derive(Default)]
struct Features {
    error_reads: bool,
    drop_writes: bool,
    error_writes: bool,
    corrupt: Option<CorruptBioByte>,
    random_read: u32,
    random_write: u32,
}

impl FlakeyArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "flakey";

    /// Parse like `flakey_ctr` + `parse_features`.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<FlakeyArgs> {
        if args.len() < 4 {
            return Err(Args::error("Invalid argument count"));
        }
        let device = DeviceRef::parse(args, "Invalid argument count")?;
        let offset = SectorCount(args.scan_llu("Invalid device sector")?);
        let up_secs = args.scan_arg_in(0..=u32::MAX, "Invalid up interval")?;
        // 6.12 reads the down interval with the up interval's dm_arg, so a bad down
        // interval is reported as "Invalid up interval" (checked against the kernel).
        let down_secs = args.scan_arg_in(0..=u32::MAX, "Invalid up interval")?;
        // `up + down` is an unsigned int sum in the kernel: test the wrapped sum first.
        if up_secs.wrapping_add(down_secs) == 0 {
            return Err(Args::error("Total (up + down) interval is zero"));
        }
        if up_secs.checked_add(down_secs).is_none() {
            return Err(Args::error("Interval overflow"));
        }
        let f = parse_features(args)?;
        let enables_nothing = f.corrupt.is_none()
            && !f.error_reads
            && !f.drop_writes
            && !f.error_writes
            && f.random_read == 0
            && f.random_write == 0;
        let (error_reads, error_writes) = if enables_nothing {
            (true, true)
        } else {
            (f.error_reads, f.error_writes)
        };
        let writes = if f.drop_writes {
            DownWrites::Drop
        } else if error_writes {
            DownWrites::Error
        } else {
            DownWrites::PassThrough
        };
        Ok(FlakeyArgs {
            dest: DeviceAt { device, offset },
            up_secs,
            down_secs,
            error_reads,
            writes,
            corrupt: f.corrupt,
            random_read_corrupt: f.random_read,
            random_write_corrupt: f.random_write,
        })
    }
}

/// `parse_features` of 6.12, including its counter arithmetic (an `unsigned int` that the
/// parameters of a feature decrement without a bound check).
fn parse_features(args: &mut Args<'_>) -> ArgResult<Features> {
    let mut f = Features::default();
    let mut argc: u32 = 0;
    if args.remaining() > 0 {
        let at = args.position();
        argc = args.scan_arg_in(0..=11, "Invalid number of feature args")?;
        if usize::try_from(argc).map_or(true, |n| n > args.remaining()) {
            return Err(args.error_at(at, "Invalid number of feature args"));
        }
    }
    while argc != 0 {
        let at = args.position();
        let name = args.next("Insufficient feature arguments")?;
        argc = argc.wrapping_sub(1);
        let is = |s: &str| name.eq_ignore_ascii_case(s);
        if is("error_reads") {
            if std::mem::replace(&mut f.error_reads, true) {
                return Err(args.error_at(at, "Feature error_reads duplicated"));
            }
        } else if is("drop_writes") {
            if std::mem::replace(&mut f.drop_writes, true) {
                return Err(args.error_at(at, "Feature drop_writes duplicated"));
            } else if f.error_writes {
                return Err(args.error_at(
                    at,
                    "Feature drop_writes conflicts with feature error_writes",
                ));
            }
        } else if is("error_writes") {
            if std::mem::replace(&mut f.error_writes, true) {
                return Err(args.error_at(at, "Feature error_writes duplicated"));
            } else if f.drop_writes {
                return Err(args.error_at(
                    at,
                    "Feature error_writes conflicts with feature drop_writes",
                ));
            }
        } else if is("corrupt_bio_byte") {
            if argc == 0 {
                return Err(args.error_at(at, "Feature corrupt_bio_byte requires parameters"));
            }
            let nth_byte = args.scan_arg_in(1..=u32::MAX, "Invalid corrupt bio byte")?;
            argc = argc.wrapping_sub(1);
            let dir_at = args.position();
            let direction = match args.next("Invalid corrupt bio direction (r or w)")? {
                d if d.eq_ignore_ascii_case("w") => Direction::Write,
                d if d.eq_ignore_ascii_case("r") => Direction::Read,
                _ => return Err(args.error_at(dir_at, "Invalid corrupt bio direction (r or w)")),
            };
            argc = argc.wrapping_sub(1);
            let value = args.scan_arg_in(
                0..=255,
                "Invalid corrupt value to write into bio byte (0-255)",
            )?;
            argc = argc.wrapping_sub(1);
            let flags = args.scan_arg_in(0..=u32::MAX, "Invalid corrupt bio flags mask")?;
            argc = argc.wrapping_sub(1);
            f.corrupt = Some(CorruptBioByte {
                nth_byte,
                direction,
                value: u8::try_from(value).unwrap_or(u8::MAX),
                flags,
            });
        } else if is("random_read_corrupt") || is("random_write_corrupt") {
            let read = is("random_read_corrupt");
            if argc == 0 {
                let which = if read { "read" } else { "write" };
                return Err(args.error_at(
                    at,
                    format!("Feature random_{which}_corrupt requires a parameter"),
                ));
            }
            let p = args.scan_arg_in(0..=PROBABILITY_BASE, "Invalid random corrupt argument")?;
            argc = argc.wrapping_sub(1);
            if read {
                f.random_read = p;
            } else {
                f.random_write = p;
            }
        } else {
            return Err(args.error_at(at, "Unrecognised flakey feature requested"));
        }
    }
    let corrupts_writes = f.corrupt.is_some_and(|c| c.direction == Direction::Write);
    if f.drop_writes && corrupts_writes {
        return Err(Args::error(
            "drop_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ));
    }
    if f.error_writes && corrupts_writes {
        return Err(Args::error(
            "error_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ));
    }
    Ok(f)
}

impl fmt::Display for FlakeyArgs {
    /// `flakey_status` STATUSTYPE_TABLE: the recomputed count, then the features in the
    /// kernel's fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.dest, self.up_secs, self.down_secs)?;
        let count = u32::from(self.error_reads)
            + u32::from(self.writes != DownWrites::PassThrough)
            + if self.corrupt.is_some() { 5 } else { 0 }
            + if self.random_read_corrupt > 0 { 2 } else { 0 }
            + if self.random_write_corrupt > 0 { 2 } else { 0 };
        write!(f, " {count}")?;
        if self.error_reads {
            f.write_str(" error_reads")?;
        }
        match self.writes {
            DownWrites::Drop => f.write_str(" drop_writes")?,
            DownWrites::Error => f.write_str(" error_writes")?,
            DownWrites::PassThrough => {}
        }
        if let Some(c) = &self.corrupt {
            let dir = match c.direction {
                Direction::Read => 'r',
                Direction::Write => 'w',
            };
            write!(
                f,
                " corrupt_bio_byte {} {dir} {} {}",
                c.nth_byte, c.value, c.flags
            )?;
        }
        if self.random_read_corrupt > 0 {
            write!(f, " random_read_corrupt {}", self.random_read_corrupt)?;
        }
        if self.random_write_corrupt > 0 {
            write!(f, " random_write_corrupt {}", self.random_write_corrupt)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
