//! Where data, tags and journal sit on the device: the kernel's
//! `calculate_journal_section_size`, `calculate_device_limits`, `get_area_and_offset`,
//! `get_metadata_sector_and_offset` and `get_data_sector`, for one device (no meta_device).
//!
//! ```text
//!  start: superblock (8 sectors) | journal or bitmap (journal_sections sections) |
//!         area 0: tags (metadata_run sectors) data (interleave sectors) | area 1 ...
//! ```
//! A journal section is 8 sectors of entries (each: le64 sector, the last 8 bytes of every
//! sector of the block, the tag; rounded up to 8 bytes) followed by the entries' data blocks;
//! the last 8 bytes of every journal sector hold its commit id.

use crate::error::{Error, Result};

use super::superblock::{Superblock, FLAG_FIXED_PADDING, FLAG_HAVE_JOURNAL_MAC, SB_SECTORS};

/// Sectors of entries at the start of each journal section (`JOURNAL_BLOCK_SECTORS`).
pub const JOURNAL_BLOCK_SECTORS: u32 = 8;
/// Usable bytes of a journal sector (`JOURNAL_SECTOR_DATA`: 512 less the commit id).
pub const JOURNAL_SECTOR_DATA: u32 = 504;
/// MAC bytes per journal sector with a journal_mac (`JOURNAL_MAC_PER_SECTOR`).
pub const JOURNAL_MAC_PER_SECTOR: u32 = 8;
/// `METADATA_PADDING_SECTORS`.
const METADATA_PADDING_SECTORS: u64 = 8;
/// Journal entries are rounded up to this many bytes (`JOURNAL_ENTRY_ROUNDUP`).
const JOURNAL_ENTRY_ROUNDUP: u32 = 8;

/// The geometry the kernel derives from the superblock and the device size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Tag bytes per block.
    pub tag_size: u32,
    /// log2 of the sectors in one block.
    pub log2_sectors_per_block: u32,
    /// log2 of the data sectors per area.
    pub log2_interleave_sectors: u32,
    /// Journal sections.
    pub journal_sections: u32,
    /// Bytes of one journal entry.
    pub journal_entry_size: u32,
    /// Entries per journal sector.
    pub journal_entries_per_sector: u32,
    /// Entries per section.
    pub journal_section_entries: u32,
    /// Sectors per section.
    pub journal_section_sectors: u32,
    /// Superblock + journal sectors (`initial_sectors`).
    pub initial_sectors: u64,
    /// Tag sectors before each area's data.
    pub metadata_run: u64,
    /// Sectors the device provides.
    pub provided_data_sectors: u64,
    /// Sectors of the device (from the table's offset on, as the kernel counts from 0).
    pub device_sectors: u64,
    /// The table's offset.
    pub start: u64,
    /// log2 of the metadata buffer size in sectors (`log2_buffer_sectors`, printed as
    /// `buffer_sectors:`).
    pub log2_buffer_sectors: u32,
}

impl Layout {
    /// Sectors per block.
    #[must_use]
    pub fn sectors_per_block(&self) -> u64 {
        1 << self.log2_sectors_per_block
    }

    /// Bytes per block.
    #[must_use]
    pub fn block_bytes(&self) -> usize {
        512 << self.log2_sectors_per_block
    }

    /// `calculate_journal_section_size` for `sb`.
    fn journal_geometry(sb: &Superblock, tag_size: u32) -> Result<(u32, u32, u32, u32)> {
        let spb = 1u32 << sb.log2_sectors_per_block;
        let entry =
            (8 + 8 * spb + tag_size).div_ceil(JOURNAL_ENTRY_ROUNDUP) * JOURNAL_ENTRY_ROUNDUP;
        let mut space = JOURNAL_SECTOR_DATA;
        if sb.has(FLAG_HAVE_JOURNAL_MAC) {
            space -= JOURNAL_MAC_PER_SECTOR;
        }
        let per_sector = space / entry;
        if per_sector == 0 {
            // The kernel's u8 arithmetic would make an empty journal; no tool makes this.
            return Err(Error::Corrupt {
                what: "integrity superblock",
                offset: 10,
                detail: format!("a journal entry of {entry} bytes does not fit in a sector"),
            });
        }
        let section_entries = per_sector * JOURNAL_BLOCK_SECTORS;
        let section_sectors =
            (section_entries << sb.log2_sectors_per_block) + JOURNAL_BLOCK_SECTORS;
        Ok((entry, per_sector, section_entries, section_sectors))
    }

    /// Sectors of one journal section for `sb` with `tag_size` (`journal_section_sectors`).
    pub fn journal_section_sectors(sb: &Superblock, tag_size: u32) -> Result<u32> {
        Ok(Self::journal_geometry(sb, tag_size)?.3)
    }

    /// The kernel's ctr checks on `sb` and the geometry for a device of `device_sectors`
    /// (its whole size) with the superblock at `start` and the table's `buffer_sectors`.
    pub fn new(
        sb: &Superblock,
        start: u64,
        device_sectors: u64,
        buffer_sectors: u32,
    ) -> Result<Layout> {
        let bad = |offset: u64, detail: String| Error::Corrupt {
            what: "integrity superblock",
            offset,
            detail,
        };
        if sb.journal_sections == 0 {
            return Err(bad(
                12,
                "Corrupted superblock, journal_sections is 0".into(),
            ));
        }
        if !(3..=31).contains(&sb.log2_interleave_sectors) {
            return Err(bad(
                9,
                format!(
                    "Invalid interleave_sectors in the superblock (log2 {})",
                    sb.log2_interleave_sectors
                ),
            ));
        }
        if sb.log2_sectors_per_block > 3 {
            return Err(bad(
                28,
                format!(
                    "log2_sectors_per_block {} above 3",
                    sb.log2_sectors_per_block
                ),
            ));
        }
        let tag_size = u32::from(sb.integrity_tag_size);
        if tag_size == 0 || tag_size > super::MAX_TAG_SIZE {
            return Err(bad(10, format!("integrity_tag_size {tag_size}")));
        }
        let (entry, per_sector, section_entries, section_sectors) =
            Self::journal_geometry(sb, tag_size)?;
        let initial = SB_SECTORS + u64::from(section_sectors) * u64::from(sb.journal_sections);
        if initial + METADATA_PADDING_SECTORS >= device_sectors || initial > u64::from(u32::MAX) {
            return Err(bad(
                12,
                format!(
                    "The device is too small: journal_sections {} need {initial} sectors of {device_sectors}",
                    sb.journal_sections
                ),
            ));
        }
        let padding: u64 = if sb.has(FLAG_FIXED_PADDING) {
            METADATA_PADDING_SECTORS << 9
        } else {
            512 << METADATA_PADDING_SECTORS
        };
        let log2_il = u32::from(sb.log2_interleave_sectors);
        let run_bytes = (u64::from(tag_size) << (log2_il - u32::from(sb.log2_sectors_per_block)))
            .div_ceil(padding)
            * padding;
        let mut layout = Layout {
            tag_size,
            log2_sectors_per_block: u32::from(sb.log2_sectors_per_block),
            log2_interleave_sectors: log2_il,
            journal_sections: sb.journal_sections,
            journal_entry_size: entry,
            journal_entries_per_sector: per_sector,
            journal_section_entries: section_entries,
            journal_section_sectors: section_sectors,
            initial_sectors: initial,
            metadata_run: run_bytes >> 9,
            provided_data_sectors: 0,
            device_sectors,
            start,
            log2_buffer_sectors: 0,
        };
        let metadata_run = layout.metadata_run;
        if metadata_run == 0 {
            return Err(bad(10, "metadata_run of 0 sectors".into()));
        }
        // `min(__fls(buffer_sectors), 31 - SECTOR_SHIFT)`, then no larger than the run's
        // alignment (`__ffs(metadata_run)`).
        let lbs = (31 - buffer_sectors.max(1).leading_zeros()).min(22);
        layout.log2_buffer_sectors = lbs.min(metadata_run.trailing_zeros());
        // get_provided_data_sectors: the largest multiple of 8 sectors whose last sector
        // still lies on the device, found bit by bit from the top as the kernel does.
        let mut provided = 0u64;
        let top = 63 - device_sectors.max(1).leading_zeros();
        for bit in (3..=top).rev() {
            let test = provided | (1u64 << bit);
            if layout.fits(test) {
                provided = test;
            }
        }
        if provided == 0 {
            return Err(bad(16, "The device is too small".into()));
        }
        layout.provided_data_sectors = provided;
        Ok(layout)
    }

    /// Whether `provided` data sectors fit (the last one's data sector is on the device).
    fn fits(&self, provided: u64) -> bool {
        let (area, offset) = self.area_and_offset(provided - 1);
        self.data_sector_checked(area, offset)
            .and_then(|s| s.checked_add(self.start))
            .is_some_and(|s| s < self.device_sectors)
    }

    /// `get_area_and_offset`.
    #[must_use]
    pub fn area_and_offset(&self, data_sector: u64) -> (u64, u64) {
        (
            data_sector >> self.log2_interleave_sectors,
            data_sector & ((1 << self.log2_interleave_sectors) - 1),
        )
    }

    fn data_sector_checked(&self, area: u64, offset: u64) -> Option<u64> {
        let base = area.checked_shl(self.log2_interleave_sectors)?;
        let runs = (area + 1).checked_mul(self.metadata_run)?;
        base.checked_add(runs)?
            .checked_add(self.initial_sectors)?
            .checked_add(offset)
    }

    /// `get_data_sector` less the table offset: where a data sector lives, counted from the
    /// superblock.
    #[must_use]
    pub fn data_sector(&self, data_sector: u64) -> u64 {
        let (area, offset) = self.area_and_offset(data_sector);
        (area << self.log2_interleave_sectors)
            + (area + 1) * self.metadata_run
            + self.initial_sectors
            + offset
    }

    /// Byte position (from the superblock) of the tag of the block holding `data_sector`:
    /// `get_metadata_sector_and_offset` (buffer number and offset in it, with the kernel's
    /// truncation of the area start to whole buffers), as a byte offset. The tags of one
    /// area's blocks follow each other from there.
    #[must_use]
    pub fn tag_position(&self, data_sector: u64) -> u64 {
        let (area, offset) = self.area_and_offset(data_sector);
        let lbs = self.log2_buffer_sectors;
        let mut ms = ((area << self.log2_interleave_sectors) + area * self.metadata_run) >> lbs;
        let tag_bytes = (offset >> self.log2_sectors_per_block) * u64::from(self.tag_size);
        ms += tag_bytes >> (9 + lbs);
        let mo = tag_bytes & ((512 << lbs) - 1);
        ((self.initial_sectors + (ms << lbs)) << 9) + mo
    }

    /// Blocks in one area (the tags of an area are contiguous).
    #[must_use]
    pub fn blocks_per_area(&self) -> u64 {
        1 << (self.log2_interleave_sectors - self.log2_sectors_per_block)
    }

    /// Sectors of the journal area (the bitmap in B mode lives at its start).
    #[must_use]
    pub fn journal_area_sectors(&self) -> u64 {
        u64::from(self.journal_section_sectors) * u64::from(self.journal_sections)
    }

    /// Journal entries in all sections.
    #[must_use]
    pub fn journal_entries(&self) -> u64 {
        u64::from(self.journal_section_entries) * u64::from(self.journal_sections)
    }
}
