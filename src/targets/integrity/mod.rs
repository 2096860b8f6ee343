//! `integrity`: per-sector tags (checksums or MACs) interleaved with the data on one device
//! (kernel dm-integrity.c, Linux 6.12), so a read fails with EILSEQ when data and tag
//! disagree.
//!
//! Table args: `<dev> <offset> <tag_size|-> <mode J|B|D|R|I> <#opts> <opt>...`, options
//! `journal_sectors:<n>` `interleave_sectors:<n>` `buffer_sectors:<n>`
//! `journal_watermark:<pct>` `commit_time:<ms>` `meta_device:<dev>` `block_size:<bytes>`
//! `sectors_per_bit:<n>` `bitmap_flush_interval:<ms>` `internal_hash:<alg>[:<hexkey>]`
//! `journal_crypt:<alg>[:<hexkey>]` `journal_mac:<alg>[:<hexkey>]` recalculate
//! reset_recalculate allow_discards allow_discards_keyed fix_padding fix_hmac
//! legacy_recalculate (any order in; out in the order `dm_integrity_status` prints them).
//!
//! On-disk format in [`superblock`] and [`layout`]; the journal and its replay in
//! [`journal`]; tag hashes in [`hash`]; the target in `target.rs` ([`Integrity`]).

use std::fmt;

use zeroize::Zeroizing;

use crate::table::args::{scan_llu, scan_u32, ArgResult, Args};
use crate::units::SectorCount;

use super::{DeviceRef, Keys};

#[cfg(feature = "cli")]
pub mod cli;
pub mod dump;
pub mod format;
pub mod hash;
pub mod journal;
pub mod layout;
pub mod superblock;
mod target;

pub(crate) use target::build;
pub use target::Integrity;

/// Most tag bytes per block (kernel `MAX_TAG_SIZE`).
pub const MAX_TAG_SIZE: u32 = 255;
/// Most sectors in one block (kernel `MAX_SECTORS_PER_BLOCK`).
pub const MAX_SECTORS_PER_BLOCK: u32 = 8;
/// The kernel's `HZ` on Debian's amd64 kernels: `bitmap_flush_interval` is kept in jiffies
/// and printed back rounded up to whole jiffies.
const HZ: u64 = 250;

/// How writes reach the disk (the table's mode letter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// `J`: data and tags go through the journal first.
    Journal,
    /// `B`: a bitmap of dirty regions instead of a journal.
    Bitmap,
    /// `D`: data and tags written directly, no crash consistency between them.
    Direct,
    /// `R`: recovery, read-only, tags are not checked.
    Recovery,
    /// `I`: inline tags in the device's own integrity profile.
    Inline,
}

impl Mode {
    /// The table letter.
    #[must_use]
    pub fn letter(self) -> char {
        match self {
            Mode::Journal => 'J',
            Mode::Bitmap => 'B',
            Mode::Direct => 'D',
            Mode::Recovery => 'R',
            Mode::Inline => 'I',
        }
    }
}

/// A hex key from a table, zeroized on drop, shown only through [`IntegrityArgs::write`]
/// with `Keys::Shown`.
#[derive(Clone, PartialEq, Eq)]
pub struct HexKey(Zeroizing<String>);

impl HexKey {
    /// The key bytes (hex2bin of the text).
    #[must_use]
    pub fn bytes(&self) -> Zeroizing<Vec<u8>> {
        let b = self.0.as_bytes();
        Zeroizing::new(
            b.chunks(2)
                .map(|p| (hex_digit(p[0]).unwrap_or(0) << 4) | hex_digit(p[1]).unwrap_or(0))
                .collect(),
        )
    }

    /// The key text as written.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexKey({} hex digits)", self.0.len())
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `<alg>[:<hexkey>]` of `internal_hash:`, `journal_crypt:` and `journal_mac:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlgSpec {
    /// Kernel crypto API name, e.g. `crc32c`, `sha256`, `hmac(sha256)`.
    pub alg: String,
    /// The key, if one was given.
    pub key: Option<HexKey>,
}

impl AlgSpec {
    /// `get_alg_and_key`: everything after the option's `:`, split at the next `:`; the key
    /// must be an even number of hex digits.
    fn parse(value: &str) -> Option<AlgSpec> {
        let (alg, key) = match value.split_once(':') {
            Some((alg, key)) => {
                if key.len() % 2 != 0 || !key.bytes().all(|b| hex_digit(b).is_some()) {
                    return None;
                }
                (alg, Some(HexKey(Zeroizing::new(key.to_string()))))
            }
            None => (value, None),
        };
        Some(AlgSpec {
            alg: alg.to_string(),
            key,
        })
    }

    fn write(&self, f: &mut impl fmt::Write, name: &str, keys: Keys) -> fmt::Result {
        write!(f, " {name}:{}", self.alg)?;
        if let Some(k) = &self.key {
            match keys {
                Keys::Shown => write!(f, ":{}", k.text())?,
                // dmsetup's hide_key: every key character becomes '0'.
                Keys::Hidden => write!(f, ":{}", "0".repeat(k.text().len()))?,
            }
        }
        Ok(())
    }
}

/// Parsed `integrity` arguments. Options not given are `None`/false; the kernel prints
/// the values it settled on ([`Integrity`] gives them back through `table_spec`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityArgs {
    /// The data (and, without `meta_device`, metadata) device.
    pub dev: DeviceRef,
    /// Where on `dev` the superblock is.
    pub offset: SectorCount,
    /// Tag bytes per block; `None` for `-` (the internal hash's digest size).
    pub tag_size: Option<u32>,
    /// The mode letter.
    pub mode: Mode,
    /// `journal_sectors:` (0 is taken as 1, as the kernel does).
    pub journal_sectors: Option<u32>,
    /// `interleave_sectors:`.
    pub interleave_sectors: Option<u32>,
    /// `buffer_sectors:`.
    pub buffer_sectors: Option<u32>,
    /// `journal_watermark:` (0..=100).
    pub journal_watermark: Option<u32>,
    /// `commit_time:` in milliseconds.
    pub commit_time: Option<u32>,
    /// `meta_device:` (metadata on a separate device).
    pub meta_device: Option<DeviceRef>,
    /// `block_size:` in bytes (512..=4096, a power of two).
    pub block_size: Option<u32>,
    /// `sectors_per_bit:` as given.
    pub sectors_per_bit: Option<u64>,
    /// `bitmap_flush_interval:` in milliseconds.
    pub bitmap_flush_interval: Option<u32>,
    /// `internal_hash:`.
    pub internal_hash: Option<AlgSpec>,
    /// `journal_crypt:`.
    pub journal_crypt: Option<AlgSpec>,
    /// `journal_mac:`.
    pub journal_mac: Option<AlgSpec>,
    /// The flag options.
    pub flags: IntegrityFlags,
}

/// The word options of an integrity line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntegrityFlags {
    /// `recalculate`.
    pub recalculate: bool,
    /// `reset_recalculate` (implies recalculate).
    pub reset_recalculate: bool,
    /// `allow_discards`.
    pub allow_discards: bool,
    /// `allow_discards_keyed` (implies allow_discards).
    pub allow_discards_keyed: bool,
    /// `fix_padding`.
    pub fix_padding: bool,
    /// `fix_hmac`.
    pub fix_hmac: bool,
    /// `legacy_recalculate`.
    pub legacy_recalculate: bool,
}

/// Kernel `DIRECT_ARGUMENTS`.
const DIRECT_ARGUMENTS: usize = 4;

/// `sscanf(opt, "<name>:%u%c") == 1`.
fn opt_u32(opt: &str, name: &str) -> Option<u32> {
    opt.strip_prefix(name)?.strip_prefix(':').and_then(scan_u32)
}

impl IntegrityArgs {
    /// Kernel target type name.
    pub const TYPE: &'static str = "integrity";

    /// Parse like `dm_integrity_ctr`'s argument checks (device checks come at build).
    pub fn parse(args: &mut Args<'_>) -> ArgResult<IntegrityArgs> {
        if args.len() <= DIRECT_ARGUMENTS {
            return Err(Args::error("Invalid argument count"));
        }
        let dev = DeviceRef::parse(args, "Invalid argument count")?;
        let offset = SectorCount(args.scan_llu("Invalid starting offset")?);
        let at = args.position();
        let tag_token = args.next("Invalid argument count")?;
        let tag_size = if tag_token == "-" {
            None
        } else {
            match scan_u32(tag_token) {
                Some(v) if v != 0 => Some(v),
                _ => return Err(args.error_at(at, "Invalid tag size")),
            }
        };
        let at = args.position();
        let mode = match args.next("Invalid argument count")? {
            "J" => Mode::Journal,
            "B" => Mode::Bitmap,
            "D" => Mode::Direct,
            "R" => Mode::Recovery,
            "I" => Mode::Inline,
            _ => return Err(args.error_at(at, "Invalid mode (expecting J, B, D, R, I)")),
        };
        let mut a = IntegrityArgs {
            dev,
            offset,
            tag_size,
            mode,
            journal_sectors: None,
            interleave_sectors: None,
            buffer_sectors: None,
            journal_watermark: None,
            commit_time: None,
            meta_device: None,
            block_size: None,
            sectors_per_bit: None,
            bitmap_flush_interval: None,
            internal_hash: None,
            journal_crypt: None,
            journal_mac: None,
            flags: IntegrityFlags::default(),
        };
        let mut opts = args.group(0..=18, "Invalid number of feature args")?;
        while opts.remaining() > 0 {
            let at = opts.position();
            let opt = opts.next("Not enough feature arguments")?;
            a.parse_option(opt)
                .map_err(|reason| opts.error_at(at, reason))?;
        }
        // Tokens after the option group are ignored by the kernel's ctr.
        a.check_combinations()?;
        Ok(a)
    }

    /// One option word, in the order of the kernel's `else if` chain.
    fn parse_option(&mut self, opt: &str) -> Result<(), &'static str> {
        if let Some(v) = opt_u32(opt, "journal_sectors") {
            self.journal_sectors = Some(v.max(1));
        } else if let Some(v) = opt_u32(opt, "interleave_sectors") {
            self.interleave_sectors = Some(v);
        } else if let Some(v) = opt_u32(opt, "buffer_sectors") {
            self.buffer_sectors = Some(v);
        } else if let Some(v) = opt_u32(opt, "journal_watermark").filter(|v| *v <= 100) {
            self.journal_watermark = Some(v);
        } else if let Some(v) = opt_u32(opt, "commit_time") {
            self.commit_time = Some(v);
        } else if let Some(dev) = opt.strip_prefix("meta_device:") {
            // dm_get_device, as for every device token: `007:01` is the device 7:1.
            self.meta_device = Some(DeviceRef::from_token(dev).map_err(|_| {
                "a device path ending in whitespace cannot be written as table text"
            })?);
        } else if let Some(v) = opt_u32(opt, "block_size") {
            if !(512..=MAX_SECTORS_PER_BLOCK * 512).contains(&v) || !v.is_power_of_two() {
                return Err("Invalid block_size argument");
            }
            self.block_size = Some(v);
        } else if let Some(v) = opt.strip_prefix("sectors_per_bit:").and_then(scan_llu) {
            self.sectors_per_bit = Some(v);
        } else if let Some(v) = opt_u32(opt, "bitmap_flush_interval") {
            // `val >= UINT_MAX * 1000 / HZ` cannot hold for a u32 with HZ <= 1000.
            self.bitmap_flush_interval = Some(v);
        } else if let Some(v) = opt.strip_prefix("internal_hash:") {
            self.internal_hash = Some(AlgSpec::parse(v).ok_or("Invalid internal_hash argument")?);
        } else if let Some(v) = opt.strip_prefix("journal_crypt:") {
            self.journal_crypt = Some(AlgSpec::parse(v).ok_or("Invalid journal_crypt argument")?);
        } else if let Some(v) = opt.strip_prefix("journal_mac:") {
            self.journal_mac = Some(AlgSpec::parse(v).ok_or("Invalid journal_mac argument")?);
        } else {
            let f = &mut self.flags;
            match opt {
                "recalculate" => f.recalculate = true,
                "reset_recalculate" => {
                    f.recalculate = true;
                    f.reset_recalculate = true;
                }
                "allow_discards" => f.allow_discards = true,
                "allow_discards_keyed" => {
                    f.allow_discards = true;
                    f.allow_discards_keyed = true;
                }
                "fix_padding" => f.fix_padding = true,
                "fix_hmac" => f.fix_hmac = true,
                "legacy_recalculate" => f.legacy_recalculate = true,
                _ => return Err("Invalid argument"),
            }
        }
        Ok(())
    }

    /// The ctr's checks that need no device and no hash implementation.
    fn check_combinations(&self) -> ArgResult<()> {
        let internal = self.internal_hash.is_some();
        if self.tag_size.is_none() && !internal {
            return Err(Args::error("Unknown tag size"));
        }
        if self.tag_size.is_some_and(|t| t > MAX_TAG_SIZE) {
            return Err(Args::error("Too big tag size"));
        }
        if self.mode == Mode::Inline {
            if self.meta_device.is_some() {
                return Err(Args::error("Metadata device not supported in inline mode"));
            }
            if !internal {
                return Err(Args::error("Internal hash not set in inline mode"));
            }
            if self.journal_crypt.is_some() || self.journal_mac.is_some() {
                return Err(Args::error("Journal crypt not supported in inline mode"));
            }
            if self.flags.allow_discards {
                return Err(Args::error("Discards not supported in inline mode"));
            }
        }
        if self.mode == Mode::Bitmap && !internal {
            return Err(Args::error(
                "Bitmap mode can be only used with internal hash",
            ));
        }
        if self.flags.allow_discards && !internal {
            return Err(Args::error("Discard can be only used with internal hash"));
        }
        if self.flags.allow_discards_keyed
            && self.internal_hash.as_ref().is_none_or(|h| h.key.is_none())
        {
            return Err(Args::error(
                "Keyed discard can only be used with keyed internal hash",
            ));
        }
        Ok(())
    }

    /// Sectors per block (`block_size:` / 512, 1 by default).
    #[must_use]
    pub fn sectors_per_block(&self) -> u32 {
        self.block_size.map_or(1, |b| b >> 9)
    }

    /// `bitmap_flush_interval` as the kernel prints it back: `jiffies_to_msecs(
    /// msecs_to_jiffies(ms))`, rounded up to whole jiffies (10 s by default).
    #[must_use]
    pub fn bitmap_flush_interval_printed(&self) -> u64 {
        let per_jiffy = 1000 / HZ;
        self.bitmap_flush_interval.map_or(10 * 1000, |ms| {
            u64::from(ms).div_ceil(per_jiffy) * per_jiffy
        })
    }

    /// Write the arguments as `dm_integrity_status` (STATUSTYPE_TABLE) does, from what was
    /// given (a built target prints the values it settled on instead); keys hidden unless
    /// `keys` is `Shown`.
    pub fn write(&self, f: &mut impl fmt::Write, keys: Keys) -> fmt::Result {
        let fl = &self.flags;
        let mut words: Vec<String> = Vec::new();
        if let Some(m) = &self.meta_device {
            words.push(format!("meta_device:{m}"));
        }
        if let Some(b) = self.block_size.filter(|b| *b != 512) {
            words.push(format!("block_size:{b}"));
        }
        if fl.recalculate {
            words.push("recalculate".into());
        }
        if fl.reset_recalculate {
            words.push("reset_recalculate".into());
        }
        if fl.allow_discards && !fl.allow_discards_keyed {
            words.push("allow_discards".into());
        }
        if fl.allow_discards_keyed {
            words.push("allow_discards_keyed".into());
        }
        if let Some(v) = self.journal_sectors {
            words.push(format!("journal_sectors:{v}"));
        }
        if let Some(v) = self.interleave_sectors {
            words.push(format!("interleave_sectors:{v}"));
        }
        if let Some(v) = self.buffer_sectors {
            words.push(format!("buffer_sectors:{v}"));
        }
        if self.mode == Mode::Journal {
            if let Some(v) = self.journal_watermark {
                words.push(format!("journal_watermark:{v}"));
            }
            if let Some(v) = self.commit_time {
                words.push(format!("commit_time:{v}"));
            }
        }
        if self.mode == Mode::Bitmap {
            if let Some(v) = self.sectors_per_bit {
                words.push(format!("sectors_per_bit:{v}"));
            }
            if self.bitmap_flush_interval.is_some() {
                words.push(format!(
                    "bitmap_flush_interval:{}",
                    self.bitmap_flush_interval_printed()
                ));
            }
        }
        if fl.fix_padding {
            words.push("fix_padding".into());
        }
        if fl.fix_hmac {
            words.push("fix_hmac".into());
        }
        if fl.legacy_recalculate {
            words.push("legacy_recalculate".into());
        }
        let algs = [
            (&self.internal_hash, "internal_hash"),
            (&self.journal_crypt, "journal_crypt"),
            (&self.journal_mac, "journal_mac"),
        ];
        let n_algs = algs.iter().filter(|(a, _)| a.is_some()).count();
        write!(
            f,
            "{} {} {} {} {}",
            self.dev,
            self.offset,
            self.tag_size
                .map_or_else(|| "-".to_string(), |t| t.to_string()),
            self.mode.letter(),
            words.len() + n_algs
        )?;
        for w in &words {
            write!(f, " {w}")?;
        }
        for (a, name) in algs {
            if let Some(a) = a {
                a.write(f, name, keys)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for IntegrityArgs {
    /// The arguments with keys hidden (see [`IntegrityArgs::write`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, Keys::Hidden)
    }
}

#[cfg(test)]
mod tests;
