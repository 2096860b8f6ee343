//! What writes change in a cache and how it reaches the metadata (dm-cache-metadata.c):
//! the in-core dirty bitset, the valid mappings, the superblock's clean-shutdown flag and
//! the copy-on-write transaction.
//!
//! The kernel's order: opening clears `CLEAN_SHUTDOWN` in place (`__begin_transaction_flags`;
//! dmemu does it before the first write that turns a block dirty, so a cache only read
//! stays as it was), dirty bits live in core while the cache runs (after a crash every
//! mapping loads dirty), a removed mapping is committed before the write that caused it
//! proceeds, and `sync_metadata` writes the dirty bits (format 1: each mapping's `M_DIRTY`;
//! format 2: the dirty bitset's words), the stats, and commits with `CLEAN_SHUTDOWN` set.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Result;
use crate::targets::pdata::array;
use crate::targets::pdata::block::{le64, put32, put64, seal, MetaDev};
use crate::targets::pdata::shadow::Tm;
use crate::targets::pdata::space_map::SmRoot;

use super::metadata::{Metadata, CLEAN_SHUTDOWN, M_DIRTY, M_VALID, SUPERBLOCK_CSUM_XOR};

/// Offsets in `struct cache_disk_superblock`.
const FLAGS: usize = 4;
const SM_ROOT: usize = 64;
const MAPPING_ROOT: usize = 192;
const STATS: usize = 256;
const DIRTY_ROOT: usize = 284;

/// A cache's write state.
#[derive(Debug)]
pub(super) struct State {
    dev: MetaDev,
    version: u32,
    cache_blocks: u64,
    /// The superblock as the next commit will write it (roots of this transaction).
    sb: Vec<u8>,
    /// The superblock as it is on the device (what an in-place flag change rewrites).
    disk_sb: Vec<u8>,
    /// Valid mappings: cache block -> origin block.
    mappings: BTreeMap<u64, u64>,
    /// Dirty cache blocks as the kernel holds them in core (`cache->dirty_bitset`).
    pub(super) dirty: BTreeSet<u64>,
    /// Format 1: the mappings whose committed value carries `M_DIRTY`.
    disk_flags: BTreeSet<u64>,
    /// Format 2: the committed dirty bitset's non-zero words (read at the first sync).
    disk_words: Option<BTreeMap<u64, u64>>,
    tm: Option<Tm>,
    /// A mapping changed since the last commit (`cmd->changed`).
    pub(super) changed: bool,
    /// A write came since the last sync.
    pub(super) written: bool,
}

impl State {
    pub(super) fn new(dev: MetaDev, md: &Metadata) -> Result<State> {
        let sb = dev.read_raw(0, "cache superblock")?;
        Ok(State {
            dev,
            version: md.sb.version,
            cache_blocks: u64::from(md.sb.cache_blocks),
            disk_sb: sb.clone(),
            sb,
            mappings: md.mappings.iter().map(|m| (m.cblock, m.oblock)).collect(),
            dirty: md
                .mappings
                .iter()
                .filter(|m| m.dirty)
                .map(|m| m.cblock)
                .collect(),
            disk_flags: md
                .mappings
                .iter()
                .filter(|m| m.flag_dirty)
                .map(|m| m.cblock)
                .collect(),
            disk_words: None,
            tm: None,
            changed: false,
            written: false,
        })
    }

    /// The metadata space map as last committed.
    pub(super) fn sm_root(&self) -> SmRoot {
        self.tm
            .as_ref()
            .map_or_else(|| SmRoot::parse(&self.disk_sb, SM_ROOT), Tm::sm_root)
    }

    fn root(&self, off: usize) -> u64 {
        le64(&self.sb, off)
    }

    fn tm(&mut self) -> Result<&mut Tm> {
        if self.tm.is_none() {
            let sm = SmRoot::parse(&self.disk_sb, SM_ROOT);
            self.tm = Some(Tm::open(self.dev.clone(), sm)?);
        }
        Ok(self.tm.as_mut().expect("opened above"))
    }

    /// `set_dirty`: before the first block turns dirty the superblock stops saying the
    /// cache was shut down cleanly, so a crash loads every mapping dirty. The committed
    /// superblock is rewritten in place with only that flag changed.
    pub(super) fn set_dirty(&mut self, cb: u64) -> Result<()> {
        let flags = crate::targets::pdata::block::le32(&self.disk_sb, FLAGS);
        if flags & CLEAN_SHUTDOWN != 0 {
            let mut b = self.disk_sb.clone();
            put32(&mut b, FLAGS, flags & !CLEAN_SHUTDOWN);
            seal(&mut b, SUPERBLOCK_CSUM_XOR);
            self.dev.write(0, &b)?;
            self.dev.volume().flush()?;
            self.disk_sb = b;
            put32(&mut self.sb, FLAGS, flags & !CLEAN_SHUTDOWN);
        }
        self.dirty.insert(cb);
        Ok(())
    }

    /// `__remove`: cache block `cb`'s mapping becomes 0 (invalid).
    pub(super) fn remove_mapping(&mut self, cb: u64) -> Result<()> {
        let root = self.root(MAPPING_ROOT);
        let new = self.tm()?.array_set(root, cb, &0u64.to_le_bytes())?;
        put64(&mut self.sb, MAPPING_ROOT, new);
        self.mappings.remove(&cb);
        self.dirty.remove(&cb);
        self.disk_flags.remove(&cb);
        self.changed = true;
        Ok(())
    }

    /// `dm_cache_set_dirty_bits`: the committed dirty state made the in-core one.
    fn write_dirty_bits(&mut self) -> Result<()> {
        if self.version == 1 {
            let flips: Vec<u64> = self
                .mappings
                .keys()
                .copied()
                .filter(|cb| self.dirty.contains(cb) != self.disk_flags.contains(cb))
                .collect();
            let mut root = self.root(MAPPING_ROOT);
            for cb in flips {
                let dirty = self.dirty.contains(&cb);
                let tm = self.tm()?;
                let v = le64(&tm.array_get(root, cb, 8)?, 0);
                let want = if dirty { v | M_DIRTY } else { v & !M_DIRTY };
                root = tm.array_set(root, cb, &want.to_le_bytes())?;
                if want & M_DIRTY != 0 {
                    self.disk_flags.insert(cb);
                } else {
                    self.disk_flags.remove(&cb);
                }
                debug_assert!(v & M_VALID != 0);
            }
            put64(&mut self.sb, MAPPING_ROOT, root);
            return Ok(());
        }
        let mut root = self.root(DIRTY_ROOT);
        let disk = match self.disk_words.take() {
            Some(w) => w,
            None => {
                let mut words = BTreeMap::new();
                array::walk_bitset(&self.dev, root, self.cache_blocks, &mut |b| {
                    *words.entry(b / 64).or_insert(0u64) |= 1 << (b % 64);
                    Ok(())
                })?;
                words
            }
        };
        let mut want: BTreeMap<u64, u64> = BTreeMap::new();
        for &cb in &self.dirty {
            *want.entry(cb / 64).or_insert(0) |= 1 << (cb % 64);
        }
        let words: BTreeSet<u64> = disk.keys().chain(want.keys()).copied().collect();
        for w in words {
            let v = want.get(&w).copied().unwrap_or(0);
            if disk.get(&w).copied().unwrap_or(0) != v {
                root = self.tm()?.array_set(root, w, &v.to_le_bytes())?;
            }
        }
        want.retain(|_, v| *v != 0);
        self.disk_words = Some(want);
        put64(&mut self.sb, DIRTY_ROOT, root);
        Ok(())
    }

    /// `__commit_transaction` + `dm_tm_commit`: the superblock (flags, roots, stats, the
    /// metadata space map) goes last.
    pub(super) fn commit(&mut self, clean_shutdown: bool, stats: [u32; 4]) -> Result<()> {
        let mut b = self.sb.clone();
        let flags = crate::targets::pdata::block::le32(&b, FLAGS);
        put32(
            &mut b,
            FLAGS,
            if clean_shutdown {
                flags | CLEAN_SHUTDOWN
            } else {
                flags & !CLEAN_SHUTDOWN
            },
        );
        for (i, s) in stats.iter().enumerate() {
            put32(&mut b, STATS + 4 * i, *s);
        }
        let make = |sm: SmRoot| {
            let mut b = b.clone();
            sm.store(&mut b, SM_ROOT);
            seal(&mut b, SUPERBLOCK_CSUM_XOR);
            b
        };
        let tm = self.tm()?;
        tm.commit(&make)?;
        self.sb = make(tm.sm_root());
        self.disk_sb.clone_from(&self.sb);
        self.changed = false;
        Ok(())
    }

    /// `sync_metadata`: dirty bits, stats, commit with the clean-shutdown flag.
    pub(super) fn sync(&mut self, stats: [u32; 4]) -> Result<()> {
        self.write_dirty_bits()?;
        self.commit(true, stats)?;
        self.written = false;
        Ok(())
    }
}

/// cache_check's `--clear-needs-check-flag`: the flag cleared in the superblock, in place.
pub(super) fn clear_needs_check(dev: &MetaDev) -> Result<()> {
    let mut b = dev.read_raw(0, "cache superblock")?;
    let flags = crate::targets::pdata::block::le32(&b, FLAGS);
    put32(&mut b, FLAGS, flags & !super::metadata::NEEDS_CHECK);
    seal(&mut b, SUPERBLOCK_CSUM_XOR);
    dev.write(0, &b)?;
    dev.volume().flush()
}
