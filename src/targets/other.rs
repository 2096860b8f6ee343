//! Kernel targets dmemu parses but does not execute (cache, era, integrity, mirror,
//! multipath, raid, switch, unstriped, writecache, log-writes, vdo, zoned, ...): kept as
//! their type and parameter text so a table prints back unchanged.

use std::fmt;

/// A target kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherArgs {
    /// Kernel target type name.
    pub target_type: String,
    /// The parameter text exactly as written after the type (without a `#` comment).
    pub params: String,
}

impl OtherArgs {
    /// Keep `raw` for `target_type`. `tokens` are what the kernel would split `raw` into.
    #[must_use]
    pub fn new(target_type: &str, tokens: &[String], raw: &str) -> OtherArgs {
        let _ = tokens;
        OtherArgs {
            target_type: target_type.to_string(),
            params: raw.to_string(),
        }
    }

    /// The operation name used in the "not executed" error.
    #[must_use]
    pub fn unsupported_op(&self) -> &'static str {
        "I/O (this target type is parsed and printed, not executed)"
    }
}

/// Untyped targets whose STATUSTYPE_TABLE output always ends in a space, which dmsetup's
/// line reader strips on input: `multipath_status` emits `"%s "` after every word (seen in
/// the kernel table corpus, tests/fixtures/kernel-tables).
const TRAILING_SPACE_TYPES: &[&str] = &["multipath"];

impl fmt::Display for OtherArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.params)?;
        if TRAILING_SPACE_TYPES.contains(&self.target_type.as_str()) && !self.params.ends_with(' ')
        {
            f.write_str(" ")?;
        }
        Ok(())
    }
}
