//! `dmemu cache dump|check|ls`: cache metadata inspected without a cache device
//! (cache_dump's XML, a check with the kernel's refusals, a listing of the mappings).

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use super::metadata::Metadata;
use crate::error::{Error, Result};
use crate::targets::pdata::block::MetaDev;
use crate::volume::MmapVolume;

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
    /// List the valid mappings: cache block, origin block, and whether the kernel would
    /// load it dirty (format 2: the dirty bitset; not cleanly shut down: every block).
    Ls {
        /// Metadata image.
        metadata: PathBuf,
    },
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
