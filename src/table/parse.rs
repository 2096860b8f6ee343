//! Table text → `Table`, following dmsetup's `_parse_line` for the line format and the
//! kernel's `dm_split_args` for the parameters. Errors name the line and token.

use crate::error::{Error, Result};
use crate::targets::TargetSpec;
use crate::units::{Sector, SectorCount};

use super::args::{parse_llu, Args};
use super::lexer::split_args;
use super::{Table, TableLine};

/// The kernel's type-name field is 16 bytes (`DM_MAX_TYPE_NAME`), NUL included.
const MAX_TYPE_NAME: usize = 15;

/// glibc `isspace` in the C locale, which dmsetup uses to trim lines and split the first
/// three fields.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Parse table text: one target per line; blank lines and lines starting with `#` are
/// skipped; a `#` anywhere in the parameters starts a comment. The result is validated with
/// the kernel's table rules (contiguity, lengths, singletons).
pub fn parse_table(text: &[u8]) -> Result<Table> {
    let mut lines = Vec::new();
    let mut line_numbers = Vec::new();
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        if let Some(line) = parse_one(raw, line_no)? {
            lines.push(line);
            line_numbers.push(line_no);
        }
    }
    let table = Table { lines };
    table.validate_lines(|i| line_numbers.get(i).copied().unwrap_or(0))?;
    Ok(table)
}

fn table_error(line: usize, token: Option<(usize, &str)>, reason: impl Into<String>) -> Error {
    Error::Table {
        line,
        token: token.map(|(n, t)| (n, t.to_string())),
        reason: reason.into(),
    }
}

/// Parse one line; `None` for blank and comment lines.
fn parse_one(raw: &[u8], line_no: usize) -> Result<Option<TableLine>> {
    let line = std::str::from_utf8(raw).map_err(|e| {
        table_error(
            line_no,
            None,
            format!("not valid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let line = line.trim_end_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    let line = line.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    // dmsetup and the ioctl pass the line as a C string: a NUL would silently cut it.
    if let Some(col) = raw.iter().position(|&b| b == 0) {
        return Err(table_error(
            line_no,
            None,
            format!(
                "column {}: a NUL byte (dmsetup and the kernel would cut the line there)",
                col + 1
            ),
        ));
    }
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let s = rest.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
        let end = s.bytes().position(is_c_space).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        let (tok, after) = s.split_at(end);
        rest = after;
        Some(tok)
    };
    let (Some(start), Some(len), Some(target_type)) = (field(), field(), field()) else {
        return Err(table_error(
            line_no,
            None,
            "Invalid format: expected <start> <length> <target_type> [<params>]",
        ));
    };
    let start = parse_llu(start)
        .map(Sector)
        .ok_or_else(|| table_error(line_no, Some((1, start)), "invalid start sector"))?;
    let len = parse_llu(len)
        .map(SectorCount)
        .ok_or_else(|| table_error(line_no, Some((2, len)), "invalid length"))?;
    if target_type.len() > MAX_TYPE_NAME {
        return Err(table_error(
            line_no,
            Some((3, target_type)),
            "target type name longer than 15 characters",
        ));
    }
    // `%s %n`: the whitespace after the type belongs to the format, not the params.
    let params = rest.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    // A `#` comment ends the params; the whitespace before it goes too, so the line prints
    // back as a fixed point (dmsetup trims the end of every line it reads).
    let params = params.find('#').map_or(params, |i| {
        params[..i].trim_end_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
    });
    let spec = parse_line_params(target_type, len, params).map_err(|e| match e {
        Error::Table { token, reason, .. } => Error::Table {
            line: line_no,
            token,
            reason,
        },
        other => other,
    })?;
    Ok(Some(TableLine { start, len, spec }))
}

/// Tokenise `params` like the kernel and parse them for `target_type`. Errors are
/// `Error::Table` with line 0 and the token numbered as on a table line (first param = 4).
pub fn parse_line_params(target_type: &str, len: SectorCount, params: &str) -> Result<TargetSpec> {
    let trailing = params.bytes().rev().take_while(|&b| b == b'\\').count();
    let split = split_args(params.as_bytes());
    let mut tokens = Vec::with_capacity(split.len());
    for (i, t) in split.into_iter().enumerate() {
        let t = String::from_utf8(t).map_err(|_| {
            table_error(
                0,
                Some((i + 4, "")),
                "token splits inside a UTF-8 character (byte 0xa0 is kernel whitespace)",
            )
        })?;
        tokens.push(t);
    }
    if trailing % 2 == 1 {
        let last = tokens.last().map_or("", String::as_str);
        return Err(table_error(
            0,
            Some((tokens.len() + 3, last)),
            "backslash escape at end of line",
        ));
    }
    let mut args = Args::new(&tokens);
    TargetSpec::parse(target_type, len, &mut args, params).map_err(|e| {
        let token = e
            .index
            .and_then(|i| tokens.get(i).map(|t| (i + 4, t.as_str())));
        let reason = format!("{target_type}: {}", e.reason);
        table_error(0, token, reason)
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod nul_tests {
    #[test]
    fn a_nul_in_a_table_line_is_refused_with_its_line_and_column() {
        let e = super::parse_table(b"0 8 zero\n8 8 li\0near x 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "line 2: column 7: a NUL byte (dmsetup and the kernel would cut the line there)"
        );
    }
}
