//! The journal: commit ids, entries and the replay on open (kernel `replay_journal` and
//! `do_journal_write(from_replay)`), and the sections dmemu writes in J mode.
//!
//! Every journal sector ends in a commit id: `commit_ids[seq] ^ ((section << 32) ^ sector)`
//! with the four fixed ids `0x1111…`, `0x2222…`, `0x3333…`, `0x4444…` (no journal_crypt).
//! The journal is a ring of sections; the one after the last section of the newest
//! sequence is the oldest, and replay runs from there for as long as every sector's id has
//! the expected sequence (a torn section ends it).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

use super::layout::{Layout, JOURNAL_BLOCK_SECTORS};

/// Commit sequences in use (`N_COMMIT_IDS`).
pub const N_COMMIT_IDS: u8 = 4;
const COMMIT_IDS: [u64; 4] = [
    0x1111_1111_1111_1111,
    0x2222_2222_2222_2222,
    0x3333_3333_3333_3333,
    0x4444_4444_4444_4444,
];
/// `sector_hi` of an unused entry.
const UNUSED_HI: u32 = u32::MAX;

/// `prev_commit_seq`.
#[must_use]
pub fn prev_seq(seq: u8) -> u8 {
    (seq + N_COMMIT_IDS - 1) % N_COMMIT_IDS
}

/// `next_commit_seq`.
#[must_use]
pub fn next_seq(seq: u8) -> u8 {
    (seq + 1) % N_COMMIT_IDS
}

/// `dm_integrity_commit_id`.
#[must_use]
pub fn commit_id(section: u32, sector: u32, seq: u8) -> u64 {
    COMMIT_IDS[usize::from(seq % N_COMMIT_IDS)] ^ ((u64::from(section) << 32) ^ u64::from(sector))
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// One block the journal holds for a data sector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalBlock {
    /// The block's data, with the last 8 bytes of each sector restored from the entry.
    pub data: Vec<u8>,
    /// The entry's tag.
    pub tag: Vec<u8>,
}

/// What the replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// The newest journal copy of each block, by data sector.
    pub blocks: BTreeMap<u64, JournalBlock>,
    /// Sections replayed.
    pub sections: u32,
    /// The kernel would latch the device failed with this errno (a misaligned sector in an
    /// entry: EIO; a tag that does not match its data: EILSEQ).
    pub failure: Option<(i32, String)>,
    /// The sequence the last replayed section was written with (what the ring continues
    /// from), and the next section to write.
    pub last_seq: u8,
    /// Section after the last used one (`write_start`).
    pub write_start: u32,
}

/// Reads journal sectors: `read(sector_in_journal, buf)`.
pub type ReadFn<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + 'a;

/// Computes the tag of a block at a data sector into the output.
pub type TagFn<'a> = dyn Fn(u64, &[u8], &mut [u8]) + 'a;

/// One section's bytes with accessors.
struct Section<'a> {
    bytes: &'a [u8],
    layout: &'a Layout,
}

impl Section<'_> {
    fn commit(&self, j: u32) -> u64 {
        let at = usize::try_from(j).unwrap_or(0) * 512 + 504;
        le64(&self.bytes[at..at + 8])
    }

    /// `access_journal_entry(section, n)`.
    fn entry(&self, n: u32) -> &[u8] {
        let rel = usize::try_from(n % JOURNAL_BLOCK_SECTORS).unwrap_or(0);
        let off = usize::try_from(n / JOURNAL_BLOCK_SECTORS).unwrap_or(0);
        let size = usize::try_from(self.layout.journal_entry_size).unwrap_or(0);
        let at = rel * 512 + off * size;
        &self.bytes[at..at + size]
    }

    fn entry_unused(&self, n: u32) -> bool {
        let e = self.entry(n);
        u32::from_le_bytes([e[4], e[5], e[6], e[7]]) == UNUSED_HI
    }

    /// The entry's block with `restore_last_bytes` applied.
    fn block(&self, n: u32) -> JournalBlock {
        let l = self.layout;
        let spb = usize::try_from(l.sectors_per_block()).unwrap_or(1);
        let first = (usize::try_from(n).unwrap_or(0) << l.log2_sectors_per_block) + 8;
        let mut data = self.bytes[first * 512..(first + spb) * 512].to_vec();
        let e = self.entry(n);
        for s in 0..spb {
            data[s * 512 + 504..s * 512 + 512].copy_from_slice(&e[8 + s * 8..16 + s * 8]);
        }
        let tag_at = 8 + spb * 8;
        let tag = e[tag_at..tag_at + usize::try_from(l.tag_size).unwrap_or(0)].to_vec();
        JournalBlock { data, tag }
    }
}

fn section_bytes(layout: &Layout) -> usize {
    usize::try_from(layout.journal_section_sectors).unwrap_or(0) * 512
}

/// Which commit sequence a sector's id belongs to (`find_commit_seq`).
fn find_seq(id: u64, section: u32, sector: u32) -> Option<u8> {
    (0..N_COMMIT_IDS).find(|&k| commit_id(section, sector, k) == id)
}

/// Replay the journal as `replay_journal` does, without writing: the blocks to apply are
/// returned. `check` computes the tag of a block (internal hash) to compare with the
/// entry's, as the kernel does on replay.
pub fn replay(layout: &Layout, read: &ReadFn<'_>, check: Option<&TagFn<'_>>) -> Result<Replay> {
    let n = layout.journal_sections;
    let sectors = layout.journal_section_sectors;
    let mut buf = vec![0u8; section_bytes(layout)];
    let mut used = [false; 4];
    let mut max_section = [0u32; 4];
    let mut journal_empty = true;
    let mut out = Replay::default();
    for i in 0..n {
        read(u64::from(i) * u64::from(sectors), &mut buf)?;
        let s = Section {
            bytes: &buf,
            layout,
        };
        for j in 0..sectors {
            let Some(k) = find_seq(s.commit(j), i, j) else {
                // "journal commit id": the kernel latches EIO and clears the journal.
                out.failure = Some((
                    crate::error::errno::EIO,
                    format!("journal commit id of section {i} sector {j} matches no sequence"),
                ));
                return Ok(out);
            };
            used[usize::from(k)] = true;
            max_section[usize::from(k)] = i;
        }
        if journal_empty && (0..layout.journal_section_entries).any(|e| !s.entry_unused(e)) {
            journal_empty = false;
        }
    }
    let unused = if used[3] {
        match (0..4u8).find(|&u| !used[usize::from(u)]) {
            Some(u) => u,
            None => {
                out.failure = Some((
                    crate::error::errno::EIO,
                    "journal commit ids: all four sequences in use".into(),
                ));
                return Ok(out);
            }
        }
    } else {
        let mut u = 3u8;
        while u > 0 && !used[usize::from(u - 1)] {
            u -= 1;
        }
        u
    };
    let last_used = prev_seq(unused);
    let mut want = prev_seq(last_used);
    if !used[usize::from(want)] && used[usize::from(prev_seq(want))] {
        journal_empty = true;
    }
    let mut write_start = max_section[usize::from(last_used)] + 1;
    if write_start >= n {
        want = next_seq(want);
        write_start -= n;
    }
    out.last_seq = last_used;
    out.write_start = write_start;
    let mut i = write_start;
    let mut order = Vec::new();
    'sections: for _ in 0..n {
        read(u64::from(i) * u64::from(sectors), &mut buf)?;
        let s = Section {
            bytes: &buf,
            layout,
        };
        for j in 0..sectors {
            if s.commit(j) != commit_id(i, j, want) {
                break 'sections;
            }
        }
        if !journal_empty {
            for e in 0..layout.journal_section_entries {
                if s.entry_unused(e) {
                    continue;
                }
                let mut sec = le64(s.entry(e));
                let spb = layout.sectors_per_block();
                if sec & (spb - 1) != 0 {
                    out.failure.get_or_insert((
                        crate::error::errno::EIO,
                        format!("invalid sector {sec} in journal section {i} entry {e}"),
                    ));
                    sec &= !(spb - 1);
                }
                if sec >= layout.provided_data_sectors {
                    continue;
                }
                order.push((sec, s.block(e)));
            }
        }
        out.sections += 1;
        i += 1;
        if i >= n {
            want = next_seq(want);
            i = 0;
        }
    }
    for (sec, block) in order {
        if let Some(check) = check {
            let mut t = vec![0u8; block.tag.len()];
            check(sec, &block.data, &mut t);
            if t != block.tag {
                out.failure.get_or_insert((
                    crate::error::errno::EILSEQ,
                    format!("tag mismatch when replaying journal (sector {sec})"),
                ));
            }
        }
        out.blocks.insert(sec, block);
    }
    Ok(out)
}

/// A section as dmemu writes it: `blocks` (data sector, block data, tag) in entry order,
/// the rest of the entries unused, every sector's id of `seq`.
pub fn build_section(
    layout: &Layout,
    section: u32,
    seq: u8,
    blocks: &[(u64, &[u8], &[u8])],
) -> Result<Vec<u8>> {
    if blocks.len() > usize::try_from(layout.journal_section_entries).unwrap_or(0) {
        return Err(Error::InvalidArgument {
            what: "journal section",
            reason: "more blocks than entries".into(),
        });
    }
    let mut b = vec![0u8; section_bytes(layout)];
    let size = usize::try_from(layout.journal_entry_size).unwrap_or(0);
    let spb = usize::try_from(layout.sectors_per_block()).unwrap_or(1);
    for n in 0..layout.journal_section_entries {
        let rel = usize::try_from(n % JOURNAL_BLOCK_SECTORS).unwrap_or(0);
        let off = usize::try_from(n / JOURNAL_BLOCK_SECTORS).unwrap_or(0);
        let at = rel * 512 + off * size;
        let idx = usize::try_from(n).unwrap_or(usize::MAX);
        match blocks.get(idx) {
            None => b[at + 4..at + 8].copy_from_slice(&UNUSED_HI.to_le_bytes()),
            Some((sector, data, tag)) => {
                b[at..at + 8].copy_from_slice(&sector.to_le_bytes());
                let first = (idx << layout.log2_sectors_per_block) + 8;
                for s in 0..spb {
                    let src = &data[s * 512..(s + 1) * 512];
                    // The data sector keeps all but its last 8 bytes; those go in the entry.
                    b[at + 8 + s * 8..at + 16 + s * 8].copy_from_slice(&src[504..]);
                    let d = (first + s) * 512;
                    b[d..d + 504].copy_from_slice(&src[..504]);
                }
                let t = at + 8 + spb * 8;
                b[t..t + tag.len()].copy_from_slice(tag);
            }
        }
    }
    for j in 0..layout.journal_section_sectors {
        let at = usize::try_from(j).unwrap_or(0) * 512 + 504;
        b[at..at + 8].copy_from_slice(&commit_id(section, j, seq).to_le_bytes());
    }
    Ok(b)
}
