//! `dmemu cache dump|check|ls`: cache metadata inspected without a cache device
//! (cache_dump's XML, a check with the kernel's refusals, a listing of the mappings).

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Subcommand;

use super::metadata::Metadata;
use crate::error::{Error, Result};
use crate::targets::pdata::block::MetaDev;
use crate::volume::{Access, FileVolume, MmapVolume};

/// `dmemu cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Print the metadata as cache_dump's XML, byte for byte (thin-provisioning-tools 0.9).
    Dump {
        /// Metadata image.
        metadata: PathBuf,
    },
    /// Check the metadata as cache_check 0.9 does: its verdict (exit status 1 on damage)
    /// and its messages on stderr, naming the damaged block and field; a line more when the
    /// kernel would still refuse to load what 0.9 passes.
    Check {
        /// Metadata image.
        metadata: PathBuf,
        /// Print nothing.
        #[arg(short, long)]
        quiet: bool,
        /// Check the superblock only.
        #[arg(long = "super-block-only")]
        super_block_only: bool,
        /// Do not walk the mapping array.
        #[arg(long = "skip-mappings")]
        skip_mappings: bool,
        /// Do not walk the hint array.
        #[arg(long = "skip-hints")]
        skip_hints: bool,
        /// Do not open the discard bitset.
        #[arg(long = "skip-discards")]
        skip_discards: bool,
        /// On success, clear the superblock's needs_check flag (in place, as 0.9 does).
        #[arg(long = "clear-needs-check-flag")]
        clear_needs_check_flag: bool,
    },
    /// Copy every dirty block from the fast device to the origin and clear it in the
    /// metadata, as cache_writeback does (the kernel's dirty view: format 2's dirty bitset).
    Writeback {
        /// Metadata image.
        #[arg(long = "metadata-device")]
        metadata: PathBuf,
        /// Origin (slow) device image.
        #[arg(long = "origin-device")]
        origin: PathBuf,
        /// Cache (fast) device image.
        #[arg(long = "fast-device")]
        fast: PathBuf,
        /// Copy buffer size in MiB (accepted for cache_writeback's sake; dmemu copies a
        /// megabyte at a time).
        #[arg(long = "buffer-size-meg")]
        buffer_size_meg: Option<u64>,
        /// Name each block whose copy failed, on stderr.
        #[arg(long = "list-failed-blocks")]
        list_failed_blocks: bool,
        /// Copy only: leave the metadata as it is.
        #[arg(long = "no-metadata-update")]
        no_metadata_update: bool,
    },
    /// List the valid mappings: cache block, origin block, and whether the kernel would
    /// load it dirty (format 2: the dirty bitset; not cleanly shut down: every block).
    Ls {
        /// Metadata image.
        metadata: PathBuf,
    },
}

/// `cache_writeback`: its report lines on stdout; failed copies fail the command.
fn writeback(meta: &Path, origin: &Path, fast: &Path, list: bool, update: bool) -> Result<()> {
    let meta = Arc::new(FileVolume::open(meta, Access::ReadWrite)?);
    let origin = FileVolume::open(origin, Access::ReadWrite)?;
    let fast = FileVolume::open(fast, Access::ReadOnly)?;
    let r = super::writeback::writeback(meta, &fast, &origin, update)?;
    let failed = r.failed.len() as u64;
    let mut s = format!(
        "{}/{} blocks successfully copied.\n",
        r.issued - failed,
        r.issued
    );
    if failed > 0 {
        let _ = writeln!(s, "{failed} blocks were not copied");
    }
    if r.updated {
        s.push_str("Updating metadata ... done\n");
    }
    std::io::stdout()
        .write_all(s.as_bytes())
        .map_err(Error::io(&"stdout"))?;
    if list {
        for (cb, e) in &r.failed {
            eprintln!("cache block {cb}: {e}");
        }
    }
    match r.failed.first() {
        None => Ok(()),
        Some((cb, e)) => Err(Error::TargetFailed {
            target: "cache writeback",
            reason: format!("{failed} blocks were not copied (first: cache block {cb}: {e})"),
        }),
    }
}

fn open(path: &PathBuf) -> Result<Metadata> {
    Metadata::open(&MetaDev::new(Arc::new(MmapVolume::open(path)?)))
}

/// Run one `dmemu cache` subcommand; the exit status (`check`: 1 on damage, as
/// cache_check).
pub fn run(cmd: CacheCommand) -> Result<i32> {
    let text = match cmd {
        CacheCommand::Dump { metadata } => open(&metadata)?.dump_xml(),
        CacheCommand::Check {
            metadata,
            quiet,
            super_block_only,
            skip_mappings,
            skip_hints,
            skip_discards,
            clear_needs_check_flag,
        } => {
            let skip = super::check::Skip {
                mappings: skip_mappings || super_block_only,
                hints: skip_hints || super_block_only,
                discards: skip_discards,
            };
            let access = if clear_needs_check_flag {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            };
            let dev = MetaDev::new(Arc::new(FileVolume::open(&metadata, access)?));
            let v = super::check::check(&dev, skip)?;
            if !quiet {
                eprint!("{}", v.text);
            }
            if v.ok && v.needs_check && clear_needs_check_flag {
                super::state::clear_needs_check(&dev)?;
            }
            return Ok(i32::from(!v.ok));
        }
        CacheCommand::Writeback {
            metadata,
            origin,
            fast,
            buffer_size_meg: _,
            list_failed_blocks,
            no_metadata_update,
        } => {
            writeback(
                &metadata,
                &origin,
                &fast,
                list_failed_blocks,
                !no_metadata_update,
            )?;
            return Ok(0);
        }
        CacheCommand::Ls { metadata } => {
            let md = open(&metadata)?;
            let mut s = String::from("CBLOCK OBLOCK DIRTY\n");
            for m in &md.mappings {
                let _ = writeln!(s, "{} {} {}", m.cblock, m.oblock, u8::from(m.dirty));
            }
            s
        }
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(Error::io(&"stdout"))?;
    Ok(0)
}
