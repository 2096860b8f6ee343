//! The crate's one error type and the errno each kind maps to.

use std::fmt;
use std::io;

use crate::units::{Sector, SectorCount};

/// Errors from parsing tables, building targets and doing I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Malformed table text or target arguments (kernel: ctr fails with EINVAL, `ti->error` set).
    /// `line` counts from 1 in the input text; `token` counts whitespace-separated words from 1
    /// on that line (1 = start, 2 = length, 3 = type, 4.. = target arguments).
    #[error("{}", TableErrorDisplay(self))]
    Table {
        /// 1-based line in the input.
        line: usize,
        /// 1-based token on that line and its text, when one token is at fault.
        token: Option<(usize, String)>,
        /// What is wrong, in the kernel's words where it has them.
        reason: String,
    },
    /// A bad argument outside table text (CLI values, library calls).
    #[error("invalid {what}: {}", Escaped(.reason))]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// I/O outside the volume (kernel: bio beyond capacity, EIO).
    #[error("sectors [{sector}, +{count}) outside a volume of {size} sectors")]
    OutOfRange {
        /// First sector of the request.
        sector: Sector,
        /// Length of the request.
        count: SectorCount,
        /// Size of the volume.
        size: SectorCount,
    },
    /// Buffer not a whole number of sectors, or of the target's block size (EINVAL).
    #[error("buffer of {len} bytes is not a whole number of 512-byte sectors")]
    Misaligned {
        /// The offending length in bytes.
        len: usize,
    },
    /// A file or lower device failed; the OS error is kept (also as the `source`), shown
    /// after the name (as in `a.img: No such file or directory (os error 2)`), and is the
    /// errno (EIO when it has none).
    #[error("{}: {source}", Escaped(.device))]
    Io {
        /// The device or file.
        device: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The target fails this I/O by design: the error target, flakey's down phase, a verity
    /// mismatch, an invalidated snapshot (EIO).
    #[error("{target}: {}", Escaped(.reason))]
    TargetFailed {
        /// Target type name.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// No free data blocks (ENOSPC).
    #[error("{target}: out of data space")]
    NoSpace {
        /// Target type name.
        target: &'static str,
    },
    /// Write refused because the device or table is read-only (EROFS at load, EIO for I/O).
    #[error("{} is read-only", Escaped(.target))]
    ReadOnly {
        /// Device or target name.
        target: String,
    },
    /// On-disk data is damaged or not what it claims to be (bad magic, checksum, structure).
    #[error("corrupt {what} at offset {offset}: {}", Escaped(.detail))]
    Corrupt {
        /// Which structure or field.
        what: &'static str,
        /// Byte offset in the image where it was found.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// Operation the target does not implement (EOPNOTSUPP).
    #[error("{op} is not supported by {target}")]
    Unsupported {
        /// Target type or volume kind.
        target: &'static str,
        /// The operation.
        op: &'static str,
    },
    /// A device reference that no file, mapping or defined device satisfies (ENOENT).
    #[error("unknown device {}", quote(.0))]
    NoDevice(String),
    /// The device or image is in use: opened by another process or device, or held by a
    /// live table (EBUSY, as the kernel answers a remove of an open device).
    #[error("{}: {}", Escaped(.what), Escaped(.reason))]
    Busy {
        /// The device name or image path.
        what: String,
        /// Why it is busy, in the kernel's words where it has them.
        reason: String,
    },
    /// The operation would write what the user marked read-only (EPERM, as the kernel
    /// refuses a read_only thin-pool over blank metadata it would have to format).
    #[error("{what}: {}", Escaped(.reason))]
    NotPermitted {
        /// Target type or device.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// No mapped device with that name, uuid or number (ENXIO, dm-ioctl's `find_device`).
    #[error("{}: no such device", Escaped(.0))]
    NoSuchDevice(String),
    /// The operation cannot go ahead now; try again after fixing the state (EAGAIN: crypt's
    /// resume without a key).
    #[error("{what}: {}", Escaped(.reason))]
    TryAgain {
        /// Target type or subsystem.
        what: &'static str,
        /// Why, in the kernel's words.
        reason: String,
    },
    /// A target constructor failed with an error of its own errno (not EINVAL): the line
    /// and target type are added, the errno stays the constructor's, as
    /// `dm_table_add_target` returns it.
    #[error("line {line}: {} target: {source}", Escaped(.target_type))]
    InLine {
        /// 1-based table line.
        line: usize,
        /// The line's target type.
        target_type: String,
        /// What the constructor said.
        #[source]
        source: Box<Error>,
    },
    /// A passphrase, key file or volume key that opens no key slot (EPERM, as cryptsetup's
    /// "No key available with this passphrase").
    #[error("{}", Escaped(.0))]
    KeyRejected(String),
    /// Data and its integrity tag disagree (dm-integrity's "Checksum failed", EILSEQ).
    #[error("{target}: checksum failed at sector {sector}")]
    ChecksumMismatch {
        /// Target type name.
        target: &'static str,
        /// First sector of the block whose tag does not match.
        sector: Sector,
    },
    /// Here the kernel would restart or panic the machine (dm-verity's `restart_on_*` /
    /// `panic_on_*`). dmemu never does; the I/O fails with this error (EIO) so the caller can
    /// tell it apart from an ordinary failure and decide.
    #[error("{target}: the kernel would {action} here: {}", Escaped(.reason))]
    Halt {
        /// Target type name.
        target: &'static str,
        /// What the kernel would do.
        action: HaltAction,
        /// Why.
        reason: String,
    },
}

/// The machine-wide action a kernel target would take (see [`Error::Halt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaltAction {
    /// `kernel_restart()`.
    Restart,
    /// `panic()`.
    Panic,
}

impl fmt::Display for HaltAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HaltAction::Restart => "restart",
            HaltAction::Panic => "panic",
        })
    }
}

struct TableErrorDisplay<'a>(&'a Error);

impl fmt::Display for TableErrorDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Error::Table {
            line,
            token,
            reason,
        } = self.0
        else {
            return Ok(());
        };
        write!(f, "line {line}: ")?;
        if let Some((n, text)) = token {
            write!(f, "token {n} {}: ", quote(text))?;
        }
        Escaped(reason).fmt(f)
    }
}

/// Longest part of a user-given token an error message quotes, in bytes.
pub const MAX_QUOTED_BYTES: usize = 64;

/// Text shown in an error message with every control character escaped (`\n`, `\t`, `\r`,
/// `\x1b`, `\u{85}`), so a message printed to a terminal or a log is always one line of
/// visible text, whatever bytes the input held.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(char::is_control) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                c if u32::from(c) < 0x80 => write!(f, "\\x{:02x}", u32::from(c))?,
                c => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// A user-given token as an error message quotes it: in double quotes, `"` and `\` and
/// control characters escaped, and when it is longer than [`MAX_QUOTED_BYTES`] only its
/// start, followed by `...` and its length (`"aaaa"... (5000 bytes)`).
#[must_use]
pub fn quote(s: &str) -> String {
    let head = head(s);
    let end = head.len();
    let mut out = String::with_capacity(end + 24);
    out.push('"');
    for c in head.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&Escaped(c.encode_utf8(&mut [0; 4])).to_string()),
            c => out.push(c),
        }
    }
    out.push('"');
    if end < s.len() {
        out.push_str(&format!("... ({} bytes)", s.len()));
    }
    out
}

/// At most the first [`MAX_QUOTED_BYTES`] of `s`, cut at a character boundary.
fn head(s: &str) -> &str {
    let mut end = s.len().min(MAX_QUOTED_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A user-given token inside words that quote it their own way (the kernel's
/// `'%s'`): as [`quote`] bounds it, without the double quotes and their escapes: the token,
/// or its first 64 bytes followed by `... (N bytes)`. Control characters are left to the
/// message's [`Escaped`] display.
#[must_use]
pub fn clip(s: &str) -> String {
    let h = head(s);
    if h.len() < s.len() {
        format!("{h}... ({} bytes)", s.len())
    } else {
        s.to_string()
    }
}

/// errno values used by [`Error::errno`].
pub mod errno {
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// I/O error.
    pub const EIO: i32 = 5;
    /// No such device.
    pub const ENODEV: i32 = 19;
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// No space left on device.
    pub const ENOSPC: i32 = 28;
    /// Read-only file system.
    pub const EROFS: i32 = 30;
    /// Operation not supported.
    pub const EOPNOTSUPP: i32 = 95;
    /// Device or resource busy.
    pub const EBUSY: i32 = 16;
    /// No such device or address.
    pub const ENXIO: i32 = 6;
    /// Resource temporarily unavailable.
    pub const EAGAIN: i32 = 11;
    /// Value too large for defined data type (a device number past a `dev_t`).
    pub const EOVERFLOW: i32 = 75;
    /// Illegal byte sequence (dm-integrity's tag mismatch).
    pub const EILSEQ: i32 = 84;
}

impl Error {
    /// The errno the kernel would complete this request or ioctl with; for a file the OS
    /// refused, the OS's errno. This is also the `dmemu` command's exit status.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(errno::EIO),
            Error::KeyRejected(_) => errno::EPERM,
            Error::Table { .. }
            | Error::InvalidArgument { .. }
            | Error::Misaligned { .. }
            | Error::Corrupt { .. } => errno::EINVAL,
            Error::OutOfRange { .. } | Error::TargetFailed { .. } | Error::Halt { .. } => {
                errno::EIO
            }
            Error::NoSpace { .. } => errno::ENOSPC,
            Error::ReadOnly { .. } => errno::EROFS,
            Error::Unsupported { .. } => errno::EOPNOTSUPP,
            // dm_get_device: the path lookup fails (ENOENT), as the 6.12 kernel answers a
            // table naming a missing device.
            Error::NoDevice(_) => errno::ENOENT,
            Error::Busy { .. } => errno::EBUSY,
            Error::NoSuchDevice(_) => errno::ENXIO,
            Error::InLine { source, .. } => source.errno(),
            Error::TryAgain { .. } => errno::EAGAIN,
            Error::NotPermitted { .. } => errno::EPERM,
            Error::ChecksumMismatch { .. } => errno::EILSEQ,
        }
    }

    /// One line: the message and its causes, `: `-separated (a cause the message already
    /// ends with, as an I/O error's OS error, is not repeated). What `dmemu` prints.
    #[must_use]
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(c) = src {
            let c_text = c.to_string();
            if !s.ends_with(&c_text) {
                s.push_str(": ");
                s.push_str(&c_text);
            }
            src = c.source();
        }
        s
    }

    /// `map_err` helper that names the device: `.map_err(Error::io(&path))`.
    pub fn io(device: &impl fmt::Display) -> impl FnOnce(io::Error) -> Error + '_ {
        move |source| Error::Io {
            device: device.to_string(),
            source,
        }
    }

    /// An `InvalidArgument` error.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            what,
            reason: reason.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod quoting_tests {
    use super::*;

    #[test]
    fn a_long_token_is_quoted_by_its_start_and_length_and_control_bytes_are_escaped() {
        let token = format!("\x1b[2J{}", "a".repeat(5000));
        let line = format!("0 8 {token} x\n");
        let e = crate::table::parse_table(line.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("\"\\x1b[2J{}\"... (5004 bytes)", "a".repeat(60),)),
            "{e}"
        );
        assert!(e.len() < 300, "{} bytes: {e}", e.len());
        assert!(!e.chars().any(char::is_control), "{e:?}");
    }

    #[test]
    fn every_message_field_escapes_control_characters() {
        let nasty = "a\nb\r\x07\u{85}\u{9b}c";
        let errors = [
            Error::invalid("x", nasty),
            Error::Corrupt {
                what: "x",
                offset: 0,
                detail: nasty.into(),
            },
            Error::TargetFailed {
                target: "x",
                reason: nasty.into(),
            },
            Error::ReadOnly {
                target: nasty.into(),
            },
            Error::NoDevice(nasty.into()),
            Error::Busy {
                what: nasty.into(),
                reason: nasty.into(),
            },
            Error::NoSuchDevice(nasty.into()),
            Error::Io {
                device: nasty.into(),
                source: io::Error::other("x"),
            },
            Error::Table {
                line: 1,
                token: Some((3, nasty.into())),
                reason: nasty.into(),
            },
        ];
        for e in errors {
            let m = e.to_string();
            assert!(!m.chars().any(char::is_control), "{m:?}");
            assert!(m.contains("a\\nb\\r\\x07\\u{85}\\u{9b}c"), "{m}");
        }
        assert_eq!(quote("a\"b\\"), "\"a\\\"b\\\\\"");
        let multibyte = "é".repeat(40);
        assert!(quote(&multibyte).ends_with("\"... (80 bytes)"));
        assert_eq!(clip("frob"), "frob");
        assert_eq!(
            clip(&"b".repeat(100)),
            format!("{}... (100 bytes)", "b".repeat(64))
        );
        assert_eq!(quote("\x7f"), "\"\\x7f\"");
    }
}
