//! What lvm2's dmsetup prints for the lifecycle verbs (libdm/dm-tools/dmsetup.c), from the
//! registry's answers: `info` (full and `-c` columns), `ls`, `deps`. The front end that
//! runs dmsetup command lines builds on this.

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::mapped_device::{DeviceInfo, DeviceState};
use crate::registry::Dep;

/// dmsetup's read-ahead for a device with a table (the block layer's default, 128 KiB).
pub const READ_AHEAD_SECTORS: u32 = 256;

pub mod args;
pub mod blockdev;
pub mod client;
pub mod host;
pub mod paths;
pub mod report;
pub mod verbs;

/// `dmsetup info NAME`: the multi-line form, ending in an empty line.
#[must_use]
pub fn info_text(i: &DeviceInfo) -> String {
    info_text_with(i, READ_AHEAD_SECTORS)
}

/// `dmsetup info NAME` for a device whose read-ahead is `read_ahead` sectors.
#[must_use]
pub fn info_text_with(i: &DeviceInfo, read_ahead: u32) -> String {
    let mut s = String::new();
    let state = match (i.state, i.read_only, i.deferred_remove) {
        (DeviceState::Suspended, ..) => "SUSPENDED",
        (DeviceState::Active, true, _) => "ACTIVE (READ-ONLY)",
        (DeviceState::Active, false, true) => "ACTIVE (DEFERRED REMOVE)",
        (DeviceState::Active, false, false) => "ACTIVE",
    };
    let tables = match (i.live_table, i.inactive_table) {
        (false, false) => "None",
        (true, false) => "LIVE",
        (false, true) => "INACTIVE",
        (true, true) => "LIVE & INACTIVE",
    };
    let _ = writeln!(s, "Name:              {}", i.name);
    let _ = writeln!(s, "State:             {state}");
    if i.live_table || i.inactive_table {
        let _ = writeln!(s, "Read Ahead:        {read_ahead}");
    }
    let _ = writeln!(s, "Tables present:    {tables}");
    let _ = writeln!(s, "Open count:        {}", i.open_count);
    let _ = writeln!(s, "Event number:      {}", i.event_nr);
    let _ = writeln!(s, "Major, minor:      {}, {}", i.major, i.minor);
    let _ = writeln!(s, "Number of targets: {}", i.target_count);
    if let Some(u) = &i.uuid {
        let _ = writeln!(s, "UUID: {u}");
    }
    s.push('\n');
    s
}

/// The `attr` column of `dmsetup info -c`: `[L-][I-][s-][rw]`.
#[must_use]
pub fn attr(i: &DeviceInfo) -> String {
    [
        if i.live_table { 'L' } else { '-' },
        if i.inactive_table { 'I' } else { '-' },
        if i.state == DeviceState::Suspended {
            's'
        } else {
            '-'
        },
        if i.read_only { 'r' } else { 'w' },
    ]
    .iter()
    .collect()
}

/// One row of `dmsetup info -c --noheadings -o FIELDS` (fields separated by `:`, as
/// `--separator` defaults to). Fields: name, major, minor, attr, open, segments, events,
/// uuid.
pub fn info_columns(i: &DeviceInfo, fields: &str) -> Result<String> {
    let cols: Result<Vec<String>> = fields
        .split(',')
        .map(|f| {
            Ok(match f {
                "name" => i.name.clone(),
                "major" => i.major.to_string(),
                "minor" => i.minor.to_string(),
                "attr" => attr(i),
                "open" => i.open_count.to_string(),
                "segments" => i.target_count.to_string(),
                "events" => i.event_nr.to_string(),
                "uuid" => i.uuid.clone().unwrap_or_default(),
                other => return Err(Error::invalid("-o", format!("Unrecognised field: {other}"))),
            })
        })
        .collect();
    Ok(cols?.join(":"))
}

/// One line of `dmsetup ls`: `NAME\t(MAJOR:MINOR)`.
#[must_use]
pub fn ls_line(name: &str, (major, minor): (u32, u32)) -> String {
    format!("{name}\t({major}:{minor})")
}

/// How `dmsetup deps` names each device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DepsForm {
    /// `(MAJOR, MINOR)` (the default `-o devno`); a file prints as written.
    DevNo,
    /// `(NAME)` (`-o devname`): a mapped device's name, a file's base name.
    DevName,
    /// `(dm-N)` (`-o blkdevname`): a mapped device's kernel name, a file's base name.
    BlkDevName,
}

/// `dmsetup deps NAME`: `N dependencies\t: (253, 0) ...`.
#[must_use]
pub fn deps_line(deps: &[Dep], form: DepsForm) -> String {
    let mut s = format!("{} dependencies\t:", deps.len());
    for d in deps {
        let shown = match (&d.mapped, form) {
            (Some((_, (maj, min))), DepsForm::DevNo) => format!("{maj}, {min}"),
            (Some((name, _)), DepsForm::DevName) => name.clone(),
            (Some((_, (_, min))), DepsForm::BlkDevName) => format!("dm-{min}"),
            (None, DepsForm::DevNo) => d.reference.clone(),
            (None, DepsForm::DevName | DepsForm::BlkDevName) => d
                .reference
                .rsplit('/')
                .next()
                .unwrap_or(&d.reference)
                .to_string(),
        };
        let _ = write!(s, " ({shown})");
    }
    s
}
