//! Table text → `Table`, following dmsetup's `_parse_line` for the line format and the
//! kernel's `dm_split_args` for the parameters. Errors name the line and token.

use crate::error::{Error, Result};
use crate::targets::TargetSpec;
use crate::units::{Sector, SectorCount};

use super::args::Args;
use super::lexer::split_args;
use super::{Table, TableLine};

/// The kernel's type-name field is 16 bytes (`DM_MAX_TYPE_NAME`), NUL included.
const MAX_TYPE_NAME: usize = 15;

/// glibc `isspace` in the C locale, which dmsetup uses to trim lines and split the first
/// three fields.
pub(crate) fn is_c_space(b: u8) -> bool {
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

/// Whether dmsetup's `_parse_line` splits `line` (`sscanf("%llu %llu %s %n") == 3`, after
/// trimming; blank and `#` lines count as fine): its "Invalid format on line N" test.
pub(crate) fn dmsetup_splits(line: &str) -> bool {
    let t = line.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    if t.is_empty() || t.starts_with('#') {
        return true;
    }
    scan_llu_glibc(t)
        .and_then(|(_, _, r)| scan_llu_glibc(r))
        .is_some_and(|(_, _, r)| !first_word(r).is_empty())
}

/// The first whitespace-separated word of `s` (for an error's token).
fn first_word(s: &str) -> &str {
    let s = s.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    &s[..s.bytes().position(is_c_space).unwrap_or(s.len())]
}

/// glibc `sscanf("%llu")` at the start of `s`: leading C whitespace, an optional `+` or
/// `-`, one or more decimal digits (strtoull: past 2^64 - 1 the value saturates; a `-`
/// negates modulo 2^64). Returns the value, the text it read and what follows.
fn scan_llu_glibc(s: &str) -> Option<(u64, &str, &str)> {
    let t = s.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    let b = t.as_bytes();
    let sign = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = b[sign..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let end = sign + digits;
    let v = match t[sign..end].parse::<u64>() {
        Err(_) => u64::MAX,
        Ok(v) if b[0] == b'-' => v.wrapping_neg(),
        Ok(v) => v,
    };
    Some((v, &t[..end], &t[end..]))
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
    // dmsetup's `sscanf(ptr, "%llu %llu %s %n", ...)`: glibc's %llu skips whitespace, takes
    // an optional sign and decimal digits (so `+8`, `-0` and `08` are numbers, `-8` wraps to
    // 2^64 - 8, an overflow saturates), stops at the first non-digit; %s takes the next
    // non-whitespace run. So `0 8linear` is length 8 of type `linear`, `0 0x8 linear` is
    // length 0 of type `x8`.
    let invalid = |token: Option<(usize, &str)>| {
        table_error(
            line_no,
            token,
            "Invalid format: expected <start> <length> <target_type> [<params>] (dmsetup: \
             Invalid format on line)",
        )
    };
    let (start, start_text, rest) =
        scan_llu_glibc(line).ok_or_else(|| invalid(Some((1, first_word(line)))))?;
    let (len, len_text, rest) =
        scan_llu_glibc(rest).ok_or_else(|| invalid(Some((2, first_word(rest)))))?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
    let type_end = rest.bytes().position(is_c_space).unwrap_or(rest.len());
    if type_end == 0 {
        return Err(invalid(None));
    }
    let (target_type, rest) = rest.split_at(type_end);
    let start = Sector(start);
    let len = SectorCount(len);
    // dm_table_add_target checks these before it looks the type up.
    if len.0 == 0 {
        return Err(table_error(
            line_no,
            Some((2, len_text)),
            "zero-length target",
        ));
    }
    if start
        .0
        .checked_add(len.0)
        .is_none_or(|end| end > super::MAX_DEVICE_SECTORS)
    {
        let token = if start.0 > super::MAX_DEVICE_SECTORS {
            (1, start_text)
        } else {
            (2, len_text)
        };
        return Err(table_error(line_no, Some(token), "too large device"));
    }
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
