//! `dmemu integrity format`: the layout `integritysetup format` (cryptsetup 2.6.1) leaves on
//! a device, written without a kernel.
//!
//! integritysetup zeroes the first 4 KiB, loads a temporary dm-integrity table (J mode,
//! `fix_padding fix_hmac`, the options given) so the kernel's `initialize_superblock` +
//! `init_journal` write the superblock and an empty journal (every sector's commit id of
//! sequence 0, every entry unused), then, unless `--no-wipe`, opens the device in D mode and
//! writes zeros over all of it, so every block has the tag of a zero block. What is random
//! in all that is the superblock's salt (`get_random_bytes` when `fix_hmac` is set, and
//! integritysetup always sets it for an internal hash); the salt enters every tag, so the
//! tags differ between two formats too, but follow from the salt.
//! `--integrity-bitmap-mode` changes nothing on disk (the fixtures show a bitmap-mode format
//! is a journal-mode one), nor does `--buffer-sectors` (with fix_padding every tag run is a
//! whole number of 4 KiB, so buffers never change where a tag lives).

use crate::error::{Error, Result};
use crate::units::Sector;
use crate::volume::Volume;

use super::hash::TagHasher;
use super::journal::build_section;
use super::layout::Layout;
use super::superblock::{Superblock, FLAG_FIXED_HMAC, FLAG_FIXED_PADDING, SALT_SIZE, SB_SECTORS};

/// `DEFAULT_INTERLEAVE_SECTORS`.
pub const DEFAULT_INTERLEAVE_SECTORS: u32 = 32768;
/// `DEFAULT_MAX_JOURNAL_SECTORS` (64-bit kernels).
const DEFAULT_MAX_JOURNAL_SECTORS: u64 = 131_072;
/// `DEFAULT_JOURNAL_SIZE_FACTOR`.
const DEFAULT_JOURNAL_SIZE_FACTOR: u32 = 7;
/// log2 of `DEFAULT_SECTORS_PER_BITMAP_BIT`.
const DEFAULT_LOG2_SECTORS_PER_BITMAP_BIT: u32 = 15;
/// Bytes written per wipe request.
const WIPE_CHUNK: usize = 1 << 20;
/// Blocks whose tags one wipe request writes (bounded memory whatever the interleave).
const WIPE_TAG_BLOCKS: u64 = 1 << 16;

/// What `integritysetup format` is told.
#[derive(Clone, Debug)]
pub struct FormatParams {
    /// Kernel name of the internal hash (`crc32c`, `sha256`, `hmac(sha256)`...).
    pub integrity: String,
    /// Key of a keyed internal hash.
    pub key: Option<Vec<u8>>,
    /// Tag bytes (default: the digest size).
    pub tag_size: Option<u32>,
    /// Bytes per block (512 to 4096, a power of two).
    pub sector_size: u32,
    /// Journal bytes (default: the kernel's 1/128 of the device, at most 64 MiB).
    pub journal_bytes: Option<u64>,
    /// Data sectors per tag area (default 32768).
    pub interleave_sectors: Option<u32>,
    /// Whether the data and tags are wiped (zeros with their tags), as without --no-wipe.
    pub wipe: bool,
    /// The salt; `None` draws a random one as the kernel does.
    pub salt: Option<[u8; SALT_SIZE]>,
}

impl Default for FormatParams {
    fn default() -> FormatParams {
        FormatParams {
            integrity: "crc32c".into(),
            key: None,
            tag_size: None,
            sector_size: 512,
            journal_bytes: None,
            interleave_sectors: None,
            wipe: true,
            salt: None,
        }
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidArgument {
        what: "integrity format",
        reason,
    }
}

/// integritysetup's `--integrity` spelling (`hmac-sha256`) as the kernel's (`hmac(sha256)`).
#[must_use]
pub fn kernel_alg_name(name: &str) -> String {
    match name.strip_prefix("hmac-") {
        Some(inner) => format!("hmac({inner})"),
        None => name.to_string(),
    }
}

/// The superblock `initialize_superblock` makes for `p` on a device of `device_sectors`,
/// and its geometry.
pub fn superblock_for(p: &FormatParams, device_sectors: u64) -> Result<(Superblock, Layout)> {
    let hasher = TagHasher::new(&p.integrity, p.key.as_deref(), None)?;
    let tag_size = p
        .tag_size
        .unwrap_or(u32::try_from(hasher.digest_size()).unwrap_or(0));
    if tag_size == 0 || tag_size > super::MAX_TAG_SIZE {
        return Err(invalid(format!("Invalid tag size {tag_size}")));
    }
    let ss = p.sector_size;
    if !(512..=4096).contains(&ss) || !ss.is_power_of_two() {
        return Err(invalid(format!("Unsupported sector size {ss}")));
    }
    let journal_sectors = match p.journal_bytes {
        Some(b) => b / 512,
        None => DEFAULT_MAX_JOURNAL_SECTORS.min(device_sectors >> DEFAULT_JOURNAL_SIZE_FACTOR),
    };
    let il = p
        .interleave_sectors
        .filter(|&v| v != 0)
        .unwrap_or(DEFAULT_INTERLEAVE_SECTORS);
    let salt = match p.salt {
        Some(s) => s,
        None => {
            let mut s = [0u8; SALT_SIZE];
            getrandom::fill(&mut s).map_err(|e| invalid(format!("no random salt: {e}")))?;
            s
        }
    };
    let mut sb = Superblock {
        version: 0,
        // __fls, then clamped to [MIN_LOG2_INTERLEAVE_SECTORS, MAX_LOG2_INTERLEAVE_SECTORS].
        log2_interleave_sectors: u8::try_from((31 - il.leading_zeros()).clamp(3, 31)).unwrap_or(31),
        integrity_tag_size: u16::try_from(tag_size).unwrap_or(0),
        journal_sections: 1,
        provided_data_sectors: 0,
        flags: FLAG_FIXED_PADDING | FLAG_FIXED_HMAC,
        log2_sectors_per_block: u8::try_from((ss / 512).trailing_zeros()).unwrap_or(0),
        log2_blocks_per_bitmap_bit: 0,
        recalc_sector: 0,
        salt,
    };
    let section_sectors = u64::from(Layout::journal_section_sectors(&sb, tag_size)?);
    sb.journal_sections = u32::try_from((journal_sectors / section_sectors).max(1))
        .map_err(|_| invalid(format!("journal of {journal_sectors} sectors")))?;
    let layout = Layout::new(&sb, 0, device_sectors, 128).map_err(|e| match e {
        Error::Corrupt { detail, .. } => {
            invalid(format!("Could not initialize superblock: {detail}"))
        }
        e => e,
    })?;
    sb.provided_data_sectors = layout.provided_data_sectors;
    // The ctr's bitmap granularity, stored when it writes the superblock.
    let mut log2_bit =
        DEFAULT_LOG2_SECTORS_PER_BITMAP_BIT.max(u32::from(sb.log2_sectors_per_block));
    let bits_in_journal = (layout.journal_area_sectors() << 12).min(u64::from(u32::MAX));
    while log2_bit < 63 && bits_in_journal < layout.provided_data_sectors.div_ceil(1u64 << log2_bit)
    {
        log2_bit += 1;
    }
    sb.log2_blocks_per_bitmap_bit =
        u8::try_from(log2_bit - u32::from(sb.log2_sectors_per_block)).unwrap_or(u8::MAX);
    sb.set_version(false, false);
    Ok((sb, layout))
}

/// Format `dev` as integritysetup does for `p`; returns the superblock written.
pub fn format(dev: &dyn Volume, p: &FormatParams) -> Result<Superblock> {
    let (sb, layout) = superblock_for(p, dev.size().0)?;
    let mut area = vec![0u8; usize::try_from(SB_SECTORS * 512).unwrap_or(4096)];
    area[..Superblock::SIZE].copy_from_slice(&sb.encode());
    dev.write(Sector(0), &area)?;
    for s in 0..layout.journal_sections {
        let sec = build_section(&layout, s, 0, &[])?;
        dev.write(
            Sector(SB_SECTORS + u64::from(s) * u64::from(layout.journal_section_sectors)),
            &sec,
        )?;
    }
    if p.wipe {
        wipe(dev, p, &sb, &layout)?;
    }
    dev.flush()?;
    Ok(sb)
}

/// The D-mode wipe: zeros over every provided sector, each block's tag that of zeros.
fn wipe(dev: &dyn Volume, p: &FormatParams, sb: &Superblock, layout: &Layout) -> Result<()> {
    let hasher = TagHasher::new(&p.integrity, p.key.as_deref(), Some(sb.salt))?;
    let ts = usize::try_from(layout.tag_size).unwrap_or(0);
    let bb = layout.block_bytes();
    let zero_block = vec![0u8; bb];
    let zeros = vec![0u8; WIPE_CHUNK];
    let il = 1u64 << layout.log2_interleave_sectors;
    let spb = layout.sectors_per_block();
    let mut at = 0u64;
    while at < layout.provided_data_sectors {
        let end = (at + il).min(layout.provided_data_sectors);
        // Data of this area.
        let mut s = at;
        while s < end {
            let n = (end - s).min((WIPE_CHUNK / 512) as u64);
            dev.write(
                Sector(layout.data_sector(s)),
                &zeros[..usize::try_from(n * 512).unwrap_or(0)],
            )?;
            s += n;
        }
        // Tags of this area, contiguous from the first block's, a bounded run at a time.
        let mut b = at;
        while b < end {
            let stop = (b + WIPE_TAG_BLOCKS * spb).min(end);
            let blocks = usize::try_from((stop - b) / spb).unwrap_or(0);
            let mut tags = vec![0u8; blocks * ts];
            for (i, t) in tags.chunks_mut(ts).enumerate() {
                hasher.tag(b + i as u64 * spb, &zero_block, t);
            }
            let pos = layout.tag_position(b);
            let first = pos / 512;
            let skip = usize::try_from(pos % 512).unwrap_or(0);
            let mut buf = vec![0u8; (skip + tags.len()).div_ceil(512) * 512];
            dev.read(Sector(first), &mut buf)?;
            buf[skip..skip + tags.len()].copy_from_slice(&tags);
            dev.write(Sector(first), &buf)?;
            b = stop;
        }
        at = end;
    }
    Ok(())
}
