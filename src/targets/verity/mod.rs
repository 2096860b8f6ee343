//! `verity`: read-only block integrity checking against a hash tree (kernel
//! dm-verity-target.c, v1.10.0 in Linux 6.12; table-grammar.md §8).
//!
//! Table args: `<version> <data_dev> <hash_dev> <data_block_size> <hash_block_size>
//! <num_data_blocks> <hash_start_block> <algorithm> <root_digest> <salt> [<#opt> <opt>...]`.
//!
//! Submodules: `hash` (algorithms, salted block hash), `hash_tree` (level layout),
//! `superblock` (veritysetup's header), `target` (verified reads), `format` (build and check
//! trees like veritysetup), `cli` (`dmemu verity ...`).

use std::fmt;

use crate::table::args::{parse_llu, ArgResult, Args};
use crate::units::SectorCount;

use super::DeviceRef;

#[cfg(feature = "cli")]
pub mod cli;
pub mod fec;
pub mod format;
pub mod hash;
pub mod hash_tree;
pub mod rs;
pub mod superblock;
pub mod target;
mod tree_io;

pub use hash::{BlockHasher, HashAlg};
pub use hash_tree::Geometry;
pub use superblock::{Superblock, Uuid};
pub use target::Verity;

/// What happens when a block does not match its digest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CorruptionMode {
    /// The read fails with EIO (the default, `DM_VERITY_MODE_EIO`).
    #[default]
    Eio,
    /// `ignore_corruption`: log, count, and return the data anyway.
    Ignore,
    /// `restart_on_corruption`: the kernel reboots; dmemu returns [`crate::Error::Halt`].
    Restart,
    /// `panic_on_corruption`: the kernel panics; dmemu returns [`crate::Error::Halt`].
    Panic,
}

/// What happens when the data or hash device fails a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorMode {
    /// The I/O error is passed up (the default).
    #[default]
    Eio,
    /// `restart_on_error`.
    Restart,
    /// `panic_on_error`.
    Panic,
}

/// Forward error correction options (`use_fec_from_device` and its companions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FecArgs {
    /// The device holding the parity.
    pub device: DeviceRef,
    /// Blocks covered by FEC (`fec_blocks`, 0 = not given).
    pub blocks: u64,
    /// First parity block on the FEC device (`fec_start`).
    pub start: u64,
    /// Parity bytes per codeword (`fec_roots`, 0 = not given).
    pub roots: u8,
}

/// Parsed `verity` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityArgs {
    /// Format version: 0 = Chrome OS (salt appended), 1 = normal (salt prepended).
    pub version: u32,
    /// Device holding the data blocks.
    pub data_dev: DeviceRef,
    /// Device holding the hash tree.
    pub hash_dev: DeviceRef,
    /// Data block size in bytes.
    pub data_block_size: u32,
    /// Hash block size in bytes.
    pub hash_block_size: u32,
    /// Data blocks covered by the tree.
    pub data_blocks: u64,
    /// Hash block (in hash-block units) where the top level of the tree sits.
    pub hash_start: u64,
    /// Digest algorithm.
    pub algorithm: HashAlg,
    /// The root digest (exactly the algorithm's digest size).
    pub root_digest: Vec<u8>,
    /// The salt; empty prints as `-`.
    pub salt: Vec<u8>,
    /// Corruption handling.
    pub corruption: CorruptionMode,
    /// I/O error handling.
    pub error_mode: ErrorMode,
    /// `ignore_zero_blocks`.
    pub ignore_zero_blocks: bool,
    /// `check_at_most_once`.
    pub check_at_most_once: bool,
    /// `try_verify_in_tasklet` (no effect in user space; kept for the table).
    pub try_verify_in_tasklet: bool,
    /// FEC, when `use_fec_from_device` was given (other FEC words alone are dropped, as
    /// the kernel drops them).
    pub fec: Option<FecArgs>,
    /// `root_hash_sig_key_desc`.
    pub root_hash_sig_key_desc: Option<String>,
}

/// The kernel's `DM_VERITY_OPTS_MAX` in 6.12: 5 flags/modes + 8 FEC + 2 signature words.
pub const OPTS_MAX: u32 = 15;
/// x86 `PAGE_SIZE`: the largest data block size the kernel accepts.
pub const PAGE_SIZE: u32 = 4096;
/// Logical block size of every dmemu volume (files have 512-byte sectors).
const LOGICAL_BLOCK: u32 = 512;
const INT_MAX: u64 = i32::MAX as u64;

const FEC_WORDS: [&str; 4] = [
    "use_fec_from_device",
    "fec_blocks",
    "fec_start",
    "fec_roots",
];
const SIG_ERR: &str = "DM Verity Sig Verification";

fn is(word: &str, name: &str) -> bool {
    word.eq_ignore_ascii_case(name)
}

/// `"%llu%c"` whose value, shifted to sectors by `block_bits - 9`, does not overflow.
fn blocks_fit(t: &str, block_size: u32) -> Option<u64> {
    let n = parse_llu(t)?;
    let shift = block_size.trailing_zeros() - 9;
    (n.checked_shl(shift).is_some_and(|s| s >> shift == n)).then_some(n)
}

impl VerityArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "verity";

    /// Parse like `verity_ctr` for a line of `len` sectors, with its checks in its order.
    pub fn parse(args: &mut Args<'_>, len: SectorCount) -> ArgResult<VerityArgs> {
        if args.len() < 10 {
            return Err(Args::error("Not enough arguments"));
        }
        // First pass ("only_modifier_opts"): the group count is checked and every word in
        // it is looked at as an option name, so try_verify_in_tasklet counts wherever it is.
        let mut try_verify_in_tasklet = false;
        if args.len() > 10 {
            let mut rest = args.clone();
            for _ in 0..10 {
                rest.next("")?;
            }
            let group = rest.group(0..=OPTS_MAX, "Invalid number of feature args")?;
            try_verify_in_tasklet = group.all().iter().any(|w| is(w, "try_verify_in_tasklet"));
        }
        let version = args.arg_in(0..=1, "Invalid version")?;
        let data_dev = DeviceRef::parse(args, "Not enough arguments")?;
        let hash_dev = DeviceRef::parse(args, "Not enough arguments")?;
        let dbs = args.u32("Invalid data device block size")?;
        if !dbs.is_power_of_two() || !(LOGICAL_BLOCK..=PAGE_SIZE).contains(&dbs) {
            return Err(args.error_last("Invalid data device block size"));
        }
        let hbs = args.u32("Invalid hash device block size")?;
        if !hbs.is_power_of_two() || hbs < LOGICAL_BLOCK || u64::from(hbs) > INT_MAX {
            return Err(args.error_last("Invalid hash device block size"));
        }
        let at = args.position();
        let data_blocks = blocks_fit(args.next("Invalid data blocks")?, dbs)
            .ok_or_else(|| args.error_at(at, "Invalid data blocks"))?;
        let shift = dbs.trailing_zeros() - 9;
        if len.0 > data_blocks << shift {
            return Err(args.error_at(at, "Data device is too small"));
        }
        let at = args.position();
        let hash_start = blocks_fit(args.next("Invalid hash start")?, hbs)
            .ok_or_else(|| args.error_at(at, "Invalid hash start"))?;
        let algorithm = HashAlg::from_name(args.next("Not enough arguments")?)
            .ok_or_else(|| args.error_last("Cannot initialize hash function"))?;
        let ds = algorithm.digest_size();
        if (hbs as usize) < ds * 2 {
            return Err(args.error_last("Digest size too big"));
        }
        let root = args.next("Not enough arguments")?;
        let root_digest = hash::from_hex(root)
            .filter(|d| d.len() == ds)
            .ok_or_else(|| args.error_last("Invalid root digest"))?;
        let salt_text = args.next("Not enough arguments")?;
        let salt = if salt_text == "-" {
            Vec::new()
        } else {
            hash::from_hex(salt_text).ok_or_else(|| args.error_last("Invalid salt"))?
        };
        let mut v = VerityArgs {
            version,
            data_dev,
            hash_dev,
            data_block_size: dbs,
            hash_block_size: hbs,
            data_blocks,
            hash_start,
            algorithm,
            root_digest,
            salt,
            corruption: CorruptionMode::Eio,
            error_mode: ErrorMode::Eio,
            ignore_zero_blocks: false,
            check_at_most_once: false,
            try_verify_in_tasklet,
            fec: None,
            root_hash_sig_key_desc: None,
        };
        if args.remaining() > 0 {
            let mut opts = args.group(0..=OPTS_MAX, "Invalid number of feature args")?;
            v.parse_opts(&mut opts)?;
            // Words after the group are ignored by the kernel (it reads only argc of them).
            while args.remaining() > 0 {
                args.next("")?;
            }
        }
        let geo =
            Geometry::new(version, dbs, hbs, ds, data_blocks, hash_start).map_err(Args::error)?;
        if let Some(f) = &v.fec {
            // verity_fec_ctr's checks that need no device, in its order and words (the
            // hash device's size is checked when the target is built).
            if dbs != hbs {
                return Err(Args::error("Block sizes must match to use FEC"));
            }
            if f.roots == 0 {
                return Err(Args::error("Missing fec_roots"));
            }
            if f.blocks == 0 {
                return Err(Args::error("Missing fec_blocks"));
            }
            if f.blocks < data_blocks.saturating_add(geo.hash_end - geo.hash_start) {
                return Err(Args::error("Invalid fec_blocks"));
            }
        }
        Ok(v)
    }

    /// The second pass of `verity_parse_opt_args`.
    fn parse_opts(&mut self, opts: &mut Args<'_>) -> ArgResult<()> {
        let mut fec_dev: Option<DeviceRef> = None;
        let (mut fec_blocks, mut fec_start, mut fec_roots) = (0u64, 0u64, 0u8);
        let conflict = "Conflicting error handling parameters";
        while opts.remaining() > 0 {
            let w = opts.next("")?;
            let mode = [
                ("ignore_corruption", CorruptionMode::Ignore),
                ("restart_on_corruption", CorruptionMode::Restart),
                ("panic_on_corruption", CorruptionMode::Panic),
            ]
            .into_iter()
            .find(|(n, _)| is(w, n));
            let emode = [
                ("restart_on_error", ErrorMode::Restart),
                ("panic_on_error", ErrorMode::Panic),
            ]
            .into_iter()
            .find(|(n, _)| is(w, n));
            if let Some((_, m)) = mode {
                if self.corruption != CorruptionMode::Eio {
                    return Err(opts.error_last(conflict));
                }
                self.corruption = m;
            } else if let Some((_, m)) = emode {
                if self.error_mode != ErrorMode::Eio {
                    return Err(opts.error_last(conflict));
                }
                self.error_mode = m;
            } else if is(w, "ignore_zero_blocks") {
                self.ignore_zero_blocks = true;
            } else if is(w, "check_at_most_once") {
                if self.data_blocks > INT_MAX {
                    return Err(opts.error_last("device too large to use check_at_most_once"));
                }
                self.check_at_most_once = true;
            } else if is(w, "try_verify_in_tasklet") {
                self.try_verify_in_tasklet = true;
            } else if let Some(fw) = FEC_WORDS.iter().find(|n| is(w, n)) {
                // verity_fec_parse_opt_args
                let at = opts.position();
                let val = opts.next("FEC feature arguments require a value")?;
                let invalid = || opts.error_at(at, format!("Invalid {fw}"));
                match *fw {
                    "use_fec_from_device" => {
                        if fec_dev.is_some() {
                            return Err(opts.error_at(at, "FEC device already specified"));
                        }
                        fec_dev =
                            Some(DeviceRef::from_token(val).map_err(|e| opts.error_at(at, e))?);
                    }
                    "fec_blocks" => {
                        fec_blocks = blocks_fit(val, self.data_block_size).ok_or_else(invalid)?;
                    }
                    "fec_start" => {
                        fec_start = blocks_fit(val, self.data_block_size).ok_or_else(invalid)?;
                    }
                    _ => {
                        // "%hhu%c" keeps the low 8 bits; roots must then be in 2..=24.
                        let r = parse_llu(val)
                            .and_then(|n| u8::try_from(n & 0xff).ok())
                            .filter(|r| (2..=24).contains(r))
                            .ok_or_else(invalid)?;
                        fec_roots = r;
                    }
                }
            } else if is(w, "root_hash_sig_key_desc") {
                let desc = opts.next(&format!("{SIG_ERR} Signature key not specified"))?;
                self.root_hash_sig_key_desc = Some(desc.to_string());
            } else {
                return Err(opts.error_last("Unrecognized verity feature request"));
            }
        }
        self.fec = fec_dev.map(|device| FecArgs {
            device,
            blocks: fec_blocks,
            start: fec_start,
            roots: fec_roots,
        });
        Ok(())
    }

    /// The tree layout these arguments describe (checked by `parse`).
    pub fn geometry(&self) -> crate::Result<Geometry> {
        Geometry::new(
            self.version,
            self.data_block_size,
            self.hash_block_size,
            self.algorithm.digest_size(),
            self.data_blocks,
            self.hash_start,
        )
        .map_err(|e| crate::Error::invalid("verity geometry", e))
    }

    /// The optional words in the kernel's STATUSTYPE_TABLE order, and their count.
    fn opt_words(&self) -> (usize, String) {
        let mut n = 0;
        let mut s = String::new();
        let mut word = |w: &str, count: usize| {
            s.push(' ');
            s.push_str(w);
            n += count;
        };
        match self.corruption {
            CorruptionMode::Eio => {}
            CorruptionMode::Ignore => word("ignore_corruption", 1),
            CorruptionMode::Restart => word("restart_on_corruption", 1),
            CorruptionMode::Panic => word("panic_on_corruption", 1),
        }
        match self.error_mode {
            ErrorMode::Eio => {}
            ErrorMode::Restart => word("restart_on_error", 1),
            ErrorMode::Panic => word("panic_on_error", 1),
        }
        if self.ignore_zero_blocks {
            word("ignore_zero_blocks", 1);
        }
        if self.check_at_most_once {
            word("check_at_most_once", 1);
        }
        if self.try_verify_in_tasklet {
            word("try_verify_in_tasklet", 1);
        }
        if let Some(f) = &self.fec {
            word(
                &format!(
                    "use_fec_from_device {} fec_blocks {} fec_start {} fec_roots {}",
                    f.device, f.blocks, f.start, f.roots
                ),
                8,
            );
        }
        if let Some(d) = &self.root_hash_sig_key_desc {
            word(
                &format!("root_hash_sig_key_desc {}", crate::table::lexer::escape(d)),
                2,
            );
        }
        (n, s)
    }
}

impl fmt::Display for VerityArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {} {} {} ",
            self.version,
            self.data_dev,
            self.hash_dev,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_start,
            self.algorithm,
            hash::to_hex(&self.root_digest)
        )?;
        if self.salt.is_empty() {
            f.write_str("-")?;
        } else {
            f.write_str(&hash::to_hex(&self.salt))?;
        }
        let (n, words) = self.opt_words();
        if n > 0 {
            write!(f, " {n}{words}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
