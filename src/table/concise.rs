//! Several devices in one string: `dmsetup create --concise` and the kernel's
//! `dm-mod.create=` boot parameter.
//!
//! Concise: `<name>,<uuid>,<minor>,<ro|rw|>,<line>[,<line>...][;<next device>...]`, where a
//! backslash escapes the next character (`\,` `\;` `\\`) and is removed
//! (lvm2 dmsetup.c `_create_concise`). Boot: the same fields without escapes, fields trimmed,
//! numbers in any base `kstrtoull(s, 0)` takes, only the targets dm-init.c allows, at most
//! 256 devices of 256 lines each in at most 4095 bytes (drivers/md/dm-init.c).

use std::fmt;

use crate::error::{Error, Result};
use crate::targets::Keys;
use crate::units::{Sector, SectorCount};

use super::{parse::parse_line_params, parse_table, Table, TableLine, TableMode};

/// One device of a multi-device spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Device name (what other lines may refer to, also as `/dev/mapper/<name>`).
    pub name: String,
    /// UUID, possibly empty.
    pub uuid: String,
    /// Requested minor number, if any.
    pub minor: Option<u64>,
    /// Read-only or read-write.
    pub mode: TableMode,
    /// The table.
    pub table: Table,
}

impl DeviceSpec {
    /// Make the device read-only as `dmemu --read-only` asks: the table mode becomes
    /// read-only, except that a table with thin-pool lines (a target the kernel allows only
    /// in writable tables) keeps its mode and each pool gets the `read_only` feature, so
    /// the pool loads without ever writing its metadata.
    pub fn make_read_only(&mut self) {
        let mut has_pool = false;
        for l in &mut self.table.lines {
            if let crate::targets::TargetSpec::ThinPool(a) = &mut l.spec {
                a.features.read_only = true;
                has_pool = true;
            }
        }
        if !has_pool {
            self.mode = TableMode::ReadOnly;
        }
    }

    /// A read-write device `name` (no uuid, any minor) with `table` (table text, lines
    /// separated by newlines) parsed: `DeviceSpec::new("top", "0 64 linear disk 0")?`.
    pub fn new(name: impl Into<String>, table: &str) -> Result<DeviceSpec> {
        Ok(DeviceSpec {
            name: name.into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: parse_table(table.as_bytes())?,
        })
    }

    /// The same device, loaded read-only.
    #[must_use]
    pub fn read_only(mut self) -> DeviceSpec {
        self.mode = TableMode::ReadOnly;
        self
    }

    /// The same device with a uuid.
    #[must_use]
    pub fn with_uuid(mut self, uuid: impl Into<String>) -> DeviceSpec {
        self.uuid = uuid.into();
        self
    }
}

/// One device in `dmsetup create --concise` form, `name,uuid,minor,flags,table` (tables
/// lines separated by `,`); several devices are [`parse_concise`]'s.
impl std::str::FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<DeviceSpec> {
        let mut specs = parse_concise(s)?;
        if specs.len() != 1 {
            return Err(Error::invalid(
                "device spec",
                format!(
                    "{} devices; one is parsed this way (parse_concise takes several)",
                    specs.len()
                ),
            ));
        }
        Ok(specs.remove(0))
    }
}

fn concise_error(device: usize, reason: impl Into<String>) -> Error {
    Error::Table {
        line: device,
        token: None,
        reason: format!("concise device {device}: {}", reason.into()),
    }
}

/// Parse `dmsetup create --concise` text.
pub fn parse_concise(text: &str) -> Result<Vec<DeviceSpec>> {
    let mut devices = Vec::new();
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = text.chars().peekable();
    let finish = |fields: &mut Vec<String>, devices: &mut Vec<DeviceSpec>| -> Result<()> {
        let n = devices.len() + 1;
        if fields.len() != 5 {
            return Err(concise_error(
                n,
                format!(
                    "five comma-separated fields are required for each device, found {}",
                    fields.len()
                ),
            ));
        }
        let table = std::mem::take(&mut fields[4]);
        let flags = fields[3].as_str();
        let mode = match flags {
            "ro" => TableMode::ReadOnly,
            "rw" | "" => TableMode::ReadWrite,
            other => {
                return Err(concise_error(
                    n,
                    format!("Invalid flags parameter '{other}' must be 'ro' or 'rw' or empty."),
                ))
            }
        };
        let minor = if fields[2].is_empty() {
            None
        } else {
            Some(
                fields[2]
                    .parse::<u64>()
                    .map_err(|_| concise_error(n, format!("invalid minor '{}'", fields[2])))?,
            )
        };
        let name = std::mem::take(&mut fields[0]);
        if name.is_empty() {
            return Err(concise_error(n, "empty device name"));
        }
        let table = parse_table(table.as_bytes()).map_err(|e| in_device(e, &name))?;
        devices.push(DeviceSpec {
            name,
            uuid: std::mem::take(&mut fields[1]),
            minor,
            mode,
            table,
        });
        *fields = vec![String::new()];
        Ok(())
    };
    while let Some(c) = chars.next() {
        let cur = fields.len() - 1;
        match c {
            '\\' => match chars.next() {
                Some(next) => fields[cur].push(next),
                None => {
                    return Err(concise_error(
                        devices.len() + 1,
                        "Backslash must be followed by another character at end of string.",
                    ))
                }
            },
            ',' if fields.len() < 5 => {
                fields.push(String::new());
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
            }
            ',' => fields[cur].push('\n'),
            ';' => {
                finish(&mut fields, &mut devices)?;
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
            }
            c => fields[cur].push(c),
        }
    }
    if fields.len() > 1 || !fields[0].is_empty() {
        finish(&mut fields, &mut devices)?;
    }
    if devices.is_empty() {
        return Err(concise_error(1, "no devices given"));
    }
    check_unique(&devices)?;
    Ok(devices)
}

fn in_device(e: Error, name: &str) -> Error {
    match e {
        Error::Table {
            line,
            token,
            reason,
        } => Error::Table {
            line,
            token,
            reason: format!("device {name}: {reason}"),
        },
        other => other,
    }
}

/// Refuse a name given twice, in one pass over a hash set (linear in the number of devices:
/// a text of 100,000 devices must not cost 5 × 10^9 comparisons).
fn check_unique(devices: &[DeviceSpec]) -> Result<()> {
    let mut seen = std::collections::HashMap::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        if let Some(first) = seen.insert(d.name.as_str(), i + 1) {
            return Err(concise_error(
                i + 1,
                format!(
                    "device name '{}' used twice (first by device {first})",
                    d.name
                ),
            ));
        }
    }
    Ok(())
}

/// Escape a concise field: backslash before `,` `;` and `\`, and before whitespace at the
/// start of the field (dmsetup skips whitespace after a separating comma or semicolon).
fn escape_concise(s: &str, out: &mut String) {
    let mut leading = true;
    for c in s.chars() {
        leading &= c.is_ascii_whitespace();
        if matches!(c, ',' | ';' | '\\') || leading {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Print devices in concise form (keys hidden unless `keys` is `Shown`).
#[must_use]
pub fn format_concise(devices: &[DeviceSpec], keys: Keys) -> String {
    let mut out = String::new();
    for (i, d) in devices.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        escape_concise(&d.name, &mut out);
        out.push(',');
        escape_concise(&d.uuid, &mut out);
        out.push(',');
        if let Some(m) = d.minor {
            out.push_str(&m.to_string());
        }
        out.push(',');
        out.push_str(match d.mode {
            TableMode::ReadOnly => "ro",
            TableMode::ReadWrite => "rw",
        });
        for l in &d.table.lines {
            out.push(',');
            escape_concise(&l.to_text(keys), &mut out);
        }
    }
    out
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_concise(std::slice::from_ref(self), Keys::Hidden))
    }
}

/// Targets `dm-mod.create=` may use (dm-init.c `dm_allowed_targets`).
pub const BOOT_TARGETS: &[&str] = &[
    "crypt",
    "delay",
    "linear",
    "snapshot-origin",
    "striped",
    "verity",
];
const BOOT_MAX_DEVICES: usize = 256;
const BOOT_MAX_TARGETS: usize = 256;
const BOOT_MAX_STR: usize = 4096;

/// `kstrtoull(s, 0)`: decimal, `0x` hex or leading-`0` octal, optional `+`, optional `\n`.
fn kstrtoull_auto(s: &str) -> Option<u64> {
    let s = s.strip_suffix('\n').unwrap_or(s);
    let s = s.strip_prefix('+').unwrap_or(s);
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parse a `dm-mod.create=` value.
pub fn parse_boot(text: &str) -> Result<Vec<DeviceSpec>> {
    if text.len() >= BOOT_MAX_STR {
        return Err(concise_error(
            1,
            format!("Argument is too big. Limit is {BOOT_MAX_STR}"),
        ));
    }
    let trim = |s: &str| {
        s.trim_matches(|c: char| c.is_ascii_whitespace())
            .to_string()
    };
    let mut devices = Vec::new();
    for (d, dev_text) in text.split(';').enumerate() {
        let n = d + 1;
        if n > BOOT_MAX_DEVICES {
            return Err(concise_error(
                n,
                format!("too many devices {n} > {BOOT_MAX_DEVICES}"),
            ));
        }
        let mut parts = dev_text.splitn(5, ',');
        let mut next = |what: &str| {
            parts
                .next()
                .map(trim)
                .ok_or_else(|| concise_error(n, format!("missing {what} field")))
        };
        let name = next("name")?;
        let uuid = next("uuid")?;
        let minor = next("minor")?;
        let flags = next("flags")?;
        let table_text = next("table")?;
        let minor = if minor.is_empty() {
            None
        } else {
            Some(kstrtoull_auto(&minor).ok_or_else(|| concise_error(n, "invalid minor"))?)
        };
        let mode = match flags.as_str() {
            "ro" => TableMode::ReadOnly,
            "rw" => TableMode::ReadWrite,
            _ => return Err(concise_error(n, format!("invalid flags '{flags}'"))),
        };
        let mut lines = Vec::new();
        for (i, entry) in table_text.split(',').enumerate() {
            if i >= BOOT_MAX_TARGETS {
                return Err(concise_error(
                    n,
                    format!("too many targets > {BOOT_MAX_TARGETS}"),
                ));
            }
            lines.push(parse_boot_line(entry, i + 1).map_err(|e| in_device(e, &name))?);
        }
        let table = Table { lines };
        table.validate().map_err(|e| in_device(e, &name))?;
        devices.push(DeviceSpec {
            name,
            uuid,
            minor,
            mode,
            table,
        });
    }
    check_unique(&devices)?;
    Ok(devices)
}

/// `<start> <len> <type> <args>` with single-space field delimiting, as
/// `dm_parse_table_entry` does.
fn parse_boot_line(entry: &str, line: usize) -> Result<TableLine> {
    let mut rest = entry;
    let mut field = |n: usize| -> Result<String> {
        let s = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let Some(i) = s.find(' ') else {
            return Err(Error::Table {
                line,
                token: None,
                reason: format!("expected <start> <length> <type> <args>, field {n} missing"),
            });
        };
        rest = &s[i + 1..];
        Ok(s[..i].trim().to_string())
    };
    let start = field(1)?;
    let len = field(2)?;
    let target_type = field(3)?;
    let bad = |n: usize, t: &str, r: &str| Error::Table {
        line,
        token: Some((n, t.to_string())),
        reason: r.to_string(),
    };
    let start_v = kstrtoull_auto(&start).ok_or_else(|| bad(1, &start, "invalid start sector"))?;
    let len_v = kstrtoull_auto(&len).ok_or_else(|| bad(2, &len, "invalid length"))?;
    if !BOOT_TARGETS.contains(&target_type.as_str()) {
        return Err(bad(
            3,
            &target_type,
            "invalid type (not allowed in dm-mod.create)",
        ));
    }
    let params = rest.trim_matches(|c: char| c.is_ascii_whitespace());
    let spec =
        parse_line_params(&target_type, SectorCount(len_v), params).map_err(|e| match e {
            Error::Table { token, reason, .. } => Error::Table {
                line,
                token,
                reason,
            },
            other => other,
        })?;
    Ok(TableLine {
        start: Sector(start_v),
        len: SectorCount(len_v),
        spec,
    })
}

/// `n` devices `d0..`, each one zero line.
#[cfg(test)]
fn many_devices(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(';');
        }
        fmt::Write::write_fmt(&mut s, format_args!("d{i},,,rw,0 {} zero", 8 + i % 7)).unwrap();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_from_a_line_or_a_table() {
        let d: DeviceSpec = "a,u-1,,ro,0 8 zero,8 8 error".parse().unwrap();
        assert_eq!((d.name.as_str(), d.uuid.as_str()), ("a", "u-1"));
        assert_eq!((d.mode, d.table.lines.len()), (TableMode::ReadOnly, 2));
        let e = "a,,,rw,0 8 zero;b,,,rw,0 8 zero".parse::<DeviceSpec>();
        assert!(e.unwrap_err().to_string().contains("2 devices"));
        let t = DeviceSpec::new("t", "0 8 zero\n8 8 error").unwrap();
        assert_eq!(t.mode, TableMode::ReadWrite);
        assert_eq!(t.clone().read_only().mode, TableMode::ReadOnly);
        assert_eq!(t.with_uuid("x").uuid, "x");
        assert!(DeviceSpec::new("t", "0 8 zer0").is_err());
    }

    #[test]
    fn concise_two_devices_with_escapes() {
        let d = parse_concise(
            "base,,,rw,0 100 linear /img\\,1 0,100 100 zero;top,uuid-1,7,ro,0 200 linear base 0",
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "base");
        assert_eq!(d[0].table.lines.len(), 2);
        assert_eq!(
            d[0].table.lines[0].to_text(Keys::Shown),
            "0 100 linear /img,1 0"
        );
        assert_eq!(d[1].minor, Some(7));
        assert_eq!(d[1].mode, TableMode::ReadOnly);
        let again = parse_concise(&format_concise(&d, Keys::Shown)).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn concise_with_100000_devices_parses_checks_and_formats_back() {
        // Every step is one pass over the text or the devices (the name check is a hash
        // set); benches/table_parse.rs measures this size with longer tables.
        let text = many_devices(100_000);
        let d = parse_concise(&text).unwrap();
        assert_eq!(d.len(), 100_000);
        for s in &d {
            s.table.check_mode(s.mode).unwrap();
        }
        let out = format_concise(&d, Keys::Shown);
        assert_eq!(out.matches(';').count(), 99_999);
        assert_eq!(parse_concise(&out).unwrap(), d);
        let dup = format!("{text};d7,,,rw,0 8 zero");
        let e = parse_concise(&dup).unwrap_err().to_string();
        assert!(
            e.contains("device 100001: device name 'd7' used twice (first by device 8)"),
            "{e}"
        );
    }

    #[test]
    fn concise_needs_five_fields() {
        let e = parse_concise("a,,rw,0 8 zero").unwrap_err().to_string();
        assert!(e.contains("five comma-separated fields"), "{e}");
    }

    #[test]
    fn concise_bad_flags() {
        let e = parse_concise("a,,,rx,0 8 zero").unwrap_err().to_string();
        assert!(e.contains("Invalid flags parameter 'rx'"), "{e}");
    }

    #[test]
    fn concise_trailing_backslash() {
        assert!(parse_concise("a,,,rw,0 8 zero\\").is_err());
    }

    #[test]
    fn boot_syntax_accepts_hex_and_trims() {
        let d = parse_boot("root, , 0x1 ,ro,0 0x10 linear /dev/sda 0, 16 16 linear /dev/sdb 8")
            .unwrap();
        assert_eq!(d[0].minor, Some(1));
        assert_eq!(d[0].table.size(), SectorCount(32));
    }

    #[test]
    fn boot_syntax_refuses_other_targets() {
        let e = parse_boot("a,,,rw,0 8 zero x").unwrap_err().to_string();
        assert!(e.contains("not allowed"), "{e}");
    }
}
