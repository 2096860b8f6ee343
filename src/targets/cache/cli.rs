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
    /// Check the metadata as the kernel loads it (superblock, mapping, hint, dirty and
    /// discard arrays): prints what it examined, or fails naming the damaged block and field.
    Check {
        /// Metadata image.
        metadata: PathBuf,
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

/// Run one `dmemu cache` subcommand.
pub fn run(cmd: CacheCommand) -> Result<()> {
    let text = match cmd {
        CacheCommand::Dump { metadata } => open(&metadata)?.dump_xml(),
        CacheCommand::Check { metadata } => {
            let md = open(&metadata)?;
            let mut s = String::from(
                "examining superblock\nexamining mapping array\nexamining hint array\n\
                 examining discard bitset\n",
            );
            if md.sb.needs_check() {
                s.push_str("the superblock has the needs_check flag set\n");
            }
            s
        }
        CacheCommand::Writeback {
            metadata,
            origin,
            fast,
            buffer_size_meg: _,
            list_failed_blocks,
            no_metadata_update,
        } => {
            return writeback(
                &metadata,
                &origin,
                &fast,
                list_failed_blocks,
                !no_metadata_update,
            )
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
        .map_err(Error::io(&"stdout"))
}
