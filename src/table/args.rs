//! `Args`: a cursor over a target's argument tokens with typed readers, the analogue of the
//! kernel's `dm_arg_set` / `dm_read_arg` / `dm_read_arg_group`.
//!
//! Errors carry the index of the offending token so the table parser can name line and token.

use std::fmt;
use std::ops::RangeInclusive;

/// An argument error: the token at fault (index into the target's arguments, `None` when the
/// arguments ran out) and the reason, in the kernel's `ti->error` words where it has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError {
    /// Index of the offending token among the target's arguments.
    pub index: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Result of argument parsing.
pub type ArgResult<T> = Result<T, ArgError>;

/// A cursor over argument tokens.
#[derive(Clone, Debug)]
pub struct Args<'a> {
    tokens: &'a [String],
    pos: usize,
    /// Index of `tokens[0]` among the target's arguments (non-zero for groups).
    base: usize,
}

impl<'a> Args<'a> {
    /// A cursor over all of `tokens`.
    #[must_use]
    pub fn new(tokens: &'a [String]) -> Args<'a> {
        Args {
            tokens,
            pos: 0,
            base: 0,
        }
    }

    /// Tokens not yet read.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.pos
    }

    /// Total number of tokens (the kernel's `argc`).
    #[must_use]
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The next token without consuming it.
    #[must_use]
    pub fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.pos).map(String::as_str)
    }

    /// Index (among the target's arguments) of the next token.
    #[must_use]
    pub fn position(&self) -> usize {
        self.base + self.pos
    }

    /// All tokens, read or not.
    #[must_use]
    pub fn all(&self) -> &'a [String] {
        self.tokens
    }

    /// An error about the token at `index` (an absolute argument index from `position`).
    #[must_use]
    pub fn error_at(&self, index: usize, reason: impl Into<String>) -> ArgError {
        ArgError {
            index: Some(index),
            reason: reason.into(),
        }
    }

    /// An error about the most recently read token (or the whole list if none was read).
    #[must_use]
    pub fn error_last(&self, reason: impl Into<String>) -> ArgError {
        ArgError {
            index: self.pos.checked_sub(1).map(|p| self.base + p),
            reason: reason.into(),
        }
    }

    /// An error that is about no single token (argument count, combination rules).
    #[must_use]
    pub fn error(reason: impl Into<String>) -> ArgError {
        ArgError {
            index: None,
            reason: reason.into(),
        }
    }

    /// The next token; `reason` is the error if there is none.
    pub fn next(&mut self, reason: &str) -> ArgResult<&'a str> {
        match self.tokens.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t)
            }
            None => Err(ArgError {
                index: None,
                reason: reason.to_string(),
            }),
        }
    }

    /// Read with `parse`, turning a `None` into `reason` at this token.
    fn read_with<T>(&mut self, reason: &str, parse: impl Fn(&str) -> Option<T>) -> ArgResult<T> {
        let at = self.position();
        let token = self.next(reason)?;
        parse(token).ok_or_else(|| self.error_at(at, reason))
    }

    /// A `sscanf("%llu%c")` number: decimal digits only, no sign, must fit in `u64`.
    pub fn llu(&mut self, reason: &str) -> ArgResult<u64> {
        self.read_with(reason, parse_llu)
    }

    /// A `sscanf("%u%c")` number: decimal digits only, must fit in `u32`.
    pub fn u32(&mut self, reason: &str) -> ArgResult<u32> {
        self.read_with(reason, |t| parse_llu(t).and_then(|v| u32::try_from(v).ok()))
    }

    /// The kernel's `sscanf(s, "%llu%c")` exactly: digits only, but a value beyond `u64`
    /// wraps silently (lib/kstrtox.c `_parse_integer_limit` ignores its overflow flag for
    /// `simple_strntoull`), so `18446744073709551617` reads as 1.
    pub fn scan_llu(&mut self, reason: &str) -> ArgResult<u64> {
        self.read_with(reason, scan_llu)
    }

    /// The kernel's `sscanf(s, "%u%c")` exactly: [`scan_llu`] truncated to 32 bits, so
    /// `4294967297` reads as 1.
    pub fn scan_u32(&mut self, reason: &str) -> ArgResult<u32> {
        self.read_with(reason, scan_u32)
    }

    /// The kernel's `dm_read_arg` exactly: [`scan_u32`] (wrapping), then the range check.
    pub fn scan_arg_in(&mut self, range: RangeInclusive<u32>, reason: &str) -> ArgResult<u32> {
        self.read_with(reason, |t| scan_u32(t).filter(|v| range.contains(v)))
    }

    /// A `kstrtoull(s, 10)` number: optional leading `+`, decimal, optional trailing newline.
    pub fn kstrtoull(&mut self, reason: &str) -> ArgResult<u64> {
        self.read_with(reason, parse_kstrtoull)
    }

    /// A `kstrtouint(s, 10)` number.
    pub fn kstrtouint(&mut self, reason: &str) -> ArgResult<u32> {
        self.read_with(reason, |t| {
            parse_kstrtoull(t).and_then(|v| u32::try_from(v).ok())
        })
    }

    /// The kernel's `dm_read_arg`: `"%u%c"` within `range`.
    pub fn arg_in(&mut self, range: RangeInclusive<u32>, reason: &str) -> ArgResult<u32> {
        self.read_with(reason, |t| {
            parse_llu(t)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| range.contains(v))
        })
    }

    /// The kernel's `dm_read_arg_group`: a count in `range` that must not exceed the tokens
    /// left, returning a cursor over exactly that many tokens.
    pub fn group(&mut self, range: RangeInclusive<u32>, reason: &str) -> ArgResult<Args<'a>> {
        let at = self.position();
        let n = self.arg_in(range, reason)?;
        let n = usize::try_from(n).map_err(|_| self.error_at(at, reason))?;
        if n > self.remaining() {
            return Err(self.error_at(at, reason));
        }
        let group = Args {
            tokens: &self.tokens[self.pos..self.pos + n],
            pos: 0,
            base: self.position(),
        };
        self.pos += n;
        Ok(group)
    }

    /// A cursor over the next `n` tokens (at most what is left), which this one skips: a
    /// group whose count was read some other way.
    pub fn take(&mut self, n: usize) -> Args<'a> {
        let n = n.min(self.remaining());
        let group = Args {
            tokens: &self.tokens[self.pos..self.pos + n],
            pos: 0,
            base: self.position(),
        };
        self.pos += n;
        group
    }

    /// Fail if tokens are left over.
    pub fn finish(&self, reason: &str) -> ArgResult<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.error_at(self.position(), reason))
        }
    }
}

/// `%llu%c`: one or more ASCII digits, nothing else, within `u64`.
#[must_use]
pub fn parse_llu(t: &str) -> Option<u64> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// The kernel's `sscanf("%llu%c")`: one or more ASCII digits and nothing else; the value is
/// taken modulo 2^64, as the kernel's `simple_strntoull` does.
#[must_use]
pub fn scan_llu(t: &str) -> Option<u64> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(t.bytes().fold(0u64, |acc, b| {
        acc.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
    }))
}

/// The kernel's `sscanf("%u%c")`: [`scan_llu`] keeping the low 32 bits.
#[must_use]
pub fn scan_u32(t: &str) -> Option<u32> {
    scan_llu(t).map(|v| u32::try_from(v & u64::from(u32::MAX)).unwrap_or(u32::MAX))
}

/// `kstrtoull(s, 10)`: optional `+`, digits, optional single trailing `\n`.
#[must_use]
pub fn parse_kstrtoull(t: &str) -> Option<u64> {
    let t = t.strip_suffix('\n').unwrap_or(t);
    let t = t.strip_prefix('+').unwrap_or(t);
    parse_llu(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn llu_rejects_sign_hex_and_junk() {
        assert_eq!(parse_llu("123"), Some(123));
        assert_eq!(parse_llu("+1"), None);
        assert_eq!(parse_llu("-1"), None);
        assert_eq!(parse_llu("0x10"), None);
        assert_eq!(parse_llu("12a"), None);
        assert_eq!(parse_llu("18446744073709551616"), None);
        assert_eq!(parse_kstrtoull("+7"), Some(7));
    }

    #[test]
    fn scan_wraps_like_the_kernel_sscanf() {
        assert_eq!(scan_llu("18446744073709551617"), Some(1));
        assert_eq!(scan_u32("4294967297"), Some(1));
        assert_eq!(scan_u32("4294967295"), Some(u32::MAX));
        assert_eq!(scan_u32("+1"), None);
        assert_eq!(scan_u32(""), None);
        assert_eq!(scan_u32("1x"), None);
    }

    #[test]
    fn group_larger_than_remaining_is_refused() {
        let t = toks("3 a b");
        let mut a = Args::new(&t);
        let e = a
            .group(0..=10, "Invalid number of feature args")
            .unwrap_err();
        assert_eq!(e.index, Some(0));
    }

    #[test]
    fn group_reports_absolute_positions() {
        let t = toks("x 2 a b c");
        let mut a = Args::new(&t);
        a.next("x").unwrap();
        let g = a.group(0..=10, "count").unwrap();
        assert_eq!(g.position(), 2);
        assert_eq!(a.position(), 4);
        assert_eq!(a.finish("extra").unwrap_err().index, Some(4));
    }
}
