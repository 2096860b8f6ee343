//! Tokeniser identical to the kernel's `dm_split_args` (drivers/md/dm-table.c), and the
//! escaping that makes any token survive it.
//!
//! Tokens are separated by runs of kernel `isspace` bytes (space, `\t`, `\n`, `\v`, `\f`, `\r`
//! and, as in the kernel's Latin-1 ctype table, `0xa0`). A backslash followed by any byte
//! yields that byte; a backslash at the very end is kept literally, as the kernel does.

/// Kernel `isspace` (lib/ctype.c): the C whitespace set plus 0xa0 (Latin-1 NBSP).
#[must_use]
pub fn is_kernel_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

/// Split `input` exactly as `dm_split_args` does. Tokens are returned as bytes because the
/// kernel may split inside a multi-byte UTF-8 sequence (at 0xa0).
#[must_use]
pub fn split_args(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        while i < input.len() && is_kernel_space(input[i]) {
            i += 1;
        }
        if i >= input.len() {
            break;
        }
        let mut token = Vec::new();
        while i < input.len() {
            let b = input[i];
            if b == b'\\' && i + 1 < input.len() {
                token.push(input[i + 1]);
                i += 2;
                continue;
            }
            if is_kernel_space(b) {
                break;
            }
            token.push(b);
            i += 1;
        }
        out.push(token);
    }
    out
}

/// Escape a token so that `split_args` gives it back unchanged: backslash-escape ASCII
/// whitespace and backslashes. Tokens holding a character whose UTF-8 form contains 0xa0
/// cannot be written as table text at all (the kernel splits inside the character); the
/// parser rejects such input, so generators avoid those characters.
#[must_use]
pub fn escape(token: &str) -> std::borrow::Cow<'_, str> {
    let needs = |b: u8| b == b'\\' || (b.is_ascii() && is_kernel_space(b));
    if !token.bytes().any(needs) {
        return std::borrow::Cow::Borrowed(token);
    }
    let mut s = String::with_capacity(token.len() + 4);
    for c in token.chars() {
        if c.is_ascii() && needs(c as u8) {
            s.push('\\');
        }
        s.push(c);
    }
    std::borrow::Cow::Owned(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_args(s.as_bytes())
            .into_iter()
            .map(|t| String::from_utf8(t).unwrap())
            .collect()
    }

    #[test]
    fn whitespace_runs_separate_tokens() {
        assert_eq!(split("  a \t b\n\nc  "), vec!["a", "b", "c"]);
    }

    #[test]
    fn backslash_escapes_next_byte() {
        assert_eq!(split(r"a\ b c\\d"), vec!["a b", r"c\d"]);
    }

    #[test]
    fn trailing_backslash_is_literal_like_the_kernel() {
        assert_eq!(split("ab\\"), vec!["ab\\"]);
    }

    #[test]
    fn nbsp_byte_splits_like_kernel_ctype() {
        assert_eq!(split_args(b"a\xa0b"), vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn escape_round_trips() {
        for t in [
            "plain",
            "with space",
            r"back\slash",
            "tab\there",
            "",
            "nl\nx",
        ] {
            if t.is_empty() {
                continue;
            }
            assert_eq!(split(&escape(t)), vec![t.to_string()]);
        }
    }
}
