//! `log-writes`: passes I/O to a device and records every write, flush, FUA, discard and
//! mark on a log device in the order it reached the device's disk (kernel
//! dm-log-writes.c, v1.1.0 in Linux 6.12), so the device can be rebuilt at every crash
//! point ([`replay`], `dmemu replay-log`).
//!
//! Table args: `<dev> <logdev>` (`log_writes_ctr`: fewer than two is "Invalid argument
//! count"; further tokens are ignored and do not print back).
//!
//! The log format is in [`format`](mod@format); the target in `target.rs` ([`LogWrites`]); replay and
//! crash states in [`replay`]; `dmemu replay-log` in `cli.rs`.

use std::fmt;

use crate::table::args::{ArgResult, Args};

use super::DeviceRef;

#[cfg(feature = "cli")]
pub mod cli;
pub mod format;
pub mod replay;
mod target;

pub use target::{LogWrites, END_MARK};

/// Parsed `log-writes` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogWritesArgs {
    /// The device written through.
    pub dev: DeviceRef,
    /// The device the log is written on.
    pub log_dev: DeviceRef,
}

impl LogWritesArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "log-writes";

    /// Parse like `log_writes_ctr`.
    pub fn parse(args: &mut Args<'_>) -> ArgResult<LogWritesArgs> {
        if args.len() < 2 {
            return Err(Args::error("Invalid argument count"));
        }
        let dev = DeviceRef::parse(args, "Invalid argument count")?;
        let log_dev = DeviceRef::parse(args, "Invalid argument count")?;
        Ok(LogWritesArgs { dev, log_dev })
    }
}

impl fmt::Display for LogWritesArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dev, self.log_dev)
    }
}

#[cfg(test)]
mod tests;
