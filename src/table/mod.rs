//! Device-mapper tables: text in dmsetup's line format, parsed into typed lines, validated
//! with the kernel's table rules, and printed back in `dmsetup table` form.

use std::fmt;

use crate::error::{Error, Result};
use crate::targets::{Keys, TargetSpec, IMMUTABLE_TYPES, SINGLETON_TYPES};
use crate::units::{Sector, SectorCount, SECTOR_SHIFT};

pub mod args;
pub mod concise;
pub mod lexer;
pub(crate) mod parse;

pub use concise::{parse_boot, parse_concise, DeviceSpec};
pub use parse::{parse_line_params, parse_table};

/// Whether a table is loaded read-only (`dmsetup create -r`, concise `ro`) or read-write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TableMode {
    /// Writes allowed (the dmsetup default).
    #[default]
    ReadWrite,
    /// Writes refused.
    ReadOnly,
}

/// One table line: `<start> <length> <type> <params>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableLine {
    /// First sector of the line on the mapped device.
    pub start: Sector,
    /// Length in sectors.
    pub len: SectorCount,
    /// The target and its arguments.
    pub spec: TargetSpec,
}

/// A whole table, lines in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// The lines.
    pub lines: Vec<TableLine>,
}

/// The largest device the kernel accepts: `LLONG_MAX >> 9` sectors ("too large device").
pub const MAX_DEVICE_SECTORS: u64 = (i64::MAX as u64) >> SECTOR_SHIFT;

impl Table {
    /// Parse dmsetup table text (see [`parse_table`]) and apply the kernel's table rules.
    pub fn parse(text: &str) -> Result<Table> {
        parse_table(text.as_bytes())
    }

    /// Total size in sectors.
    #[must_use]
    pub fn size(&self) -> SectorCount {
        self.lines
            .last()
            .map_or(SectorCount(0), |l| l.start.as_count() + l.len)
    }

    /// The kernel's table checks (`dm_table_add_target`, `dm_table_complete`): at least one
    /// line, first at 0, contiguous, no zero length, no overflow past `LLONG_MAX >> 9`,
    /// singleton and immutable targets alone. Errors name the 1-based line index.
    pub fn validate(&self) -> Result<()> {
        self.validate_lines(|i| i + 1)
    }

    pub(crate) fn validate_lines(&self, line_no: impl Fn(usize) -> usize) -> Result<()> {
        let err = |i: usize, token: Option<(usize, String)>, reason: &str| Error::Table {
            line: line_no(i),
            token,
            reason: reason.to_string(),
        };
        if self.lines.is_empty() {
            return Err(Error::Table {
                line: 0,
                token: None,
                reason: "no targets specified".into(),
            });
        }
        // In `dm_table_add_target`'s order, line by line.
        let mut next = 0u64;
        let mut singleton: Option<&str> = None;
        let mut immutable: Option<&str> = None;
        for (i, l) in self.lines.iter().enumerate() {
            let t = l.spec.target_type();
            if let Some(first) = singleton {
                let reason = format!("target type {first} must appear alone in table");
                return Err(err(i, Some((3, t.to_string())), &reason));
            }
            if l.len.0 == 0 {
                return Err(err(i, Some((2, "0".into())), "zero-length target"));
            }
            let end = match l.start.0.checked_add(l.len.0) {
                Some(end) if end <= MAX_DEVICE_SECTORS => end,
                _ => return Err(err(i, Some((2, l.len.0.to_string())), "too large device")),
            };
            if SINGLETON_TYPES.contains(&t) {
                if i > 0 {
                    let reason = format!("{t}: singleton target type must appear alone in table");
                    return Err(err(i, Some((3, t.to_string())), &reason));
                }
                singleton = Some(t);
            }
            let mixed = match immutable {
                Some(first) => first != t,
                None => IMMUTABLE_TYPES.contains(&t) && i > 0,
            };
            if mixed {
                let reason =
                    format!("{t}: immutable target type cannot be mixed with other target types");
                return Err(err(i, Some((3, t.to_string())), &reason));
            }
            if immutable.is_none() && IMMUTABLE_TYPES.contains(&t) {
                immutable = Some(t);
            }
            if l.start.0 != next {
                let reason = format!("{t}: Gap in table");
                return Err(err(i, Some((1, l.start.0.to_string())), &reason));
            }
            next = end;
        }
        Ok(())
    }

    /// The checks that depend on the table mode: verity needs a read-only table ("Device
    /// must be readonly"), thin-pool a writable one (always-writeable target).
    pub fn check_mode(&self, mode: TableMode) -> Result<()> {
        for (i, l) in self.lines.iter().enumerate() {
            let t = l.spec.target_type();
            let bad = match (t, mode) {
                ("verity", TableMode::ReadWrite) => {
                    Some("Device must be readonly (load the table read-only)")
                }
                ("thin-pool", TableMode::ReadOnly) => {
                    Some("target type may not be included in a read-only table")
                }
                _ => None,
            };
            if let Some(reason) = bad {
                return Err(Error::Table {
                    line: i + 1,
                    token: Some((3, t.to_string())),
                    reason: format!("{t}: {reason}"),
                });
            }
        }
        Ok(())
    }

    /// The canonical `dmsetup table` text, one line per target, each ending in `\n`.
    #[must_use]
    pub fn to_text(&self, keys: Keys) -> String {
        let mut s = String::new();
        for l in &self.lines {
            let _ = l.write(&mut s, keys);
            s.push('\n');
        }
        s
    }
}

impl TableLine {
    /// Write `<start> <len> <type> <params>` without a newline. As dmsetup does, a space
    /// always follows the type, even when the params are empty.
    pub fn write(&self, out: &mut impl fmt::Write, keys: Keys) -> fmt::Result {
        write!(
            out,
            "{} {} {} ",
            self.start,
            self.len,
            self.spec.target_type()
        )?;
        self.spec.write_params(out, keys)
    }

    /// The line as text.
    #[must_use]
    pub fn to_text(&self, keys: Keys) -> String {
        let mut s = String::new();
        let _ = self.write(&mut s, keys);
        s
    }
}

impl fmt::Display for Table {
    /// Canonical text with keys hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text(Keys::Hidden))
    }
}
