//! `dmemu thin dump|ls|check`: pool metadata inspected without a pool (thin_dump's XML, a
//! device listing, thin_check's space map check), for pulling thin volumes out of
//! metadata + data images.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use super::metadata::Metadata;
use crate::error::{Error, Result};
use crate::volume::MmapVolume;

/// `dmemu thin` subcommands.
#[derive(Debug, Subcommand)]
pub enum ThinCommand {
    /// Print the metadata as thin_dump's XML (thin-provisioning-tools 0.9 layout).
    Dump {
        /// Metadata image.
        metadata: PathBuf,
        /// Dump the metadata snapshot (`reserve_metadata_snap`) instead.
        #[arg(short = 'm', long)]
        metadata_snap: bool,
    },
    /// Check every reference count in both space maps against the trees (thin_check's
    /// space map check); exit 0 when they agree.
    Check {
        /// Metadata image.
        metadata: PathBuf,
    },
    /// List the pool and its thin devices, with a table line to read each one.
    Ls {
        /// Metadata image.
        metadata: PathBuf,
    },
}

fn open(path: &PathBuf) -> Result<Metadata> {
    Metadata::open(Arc::new(MmapVolume::open(path)?))
}

/// The `ls` listing of `md`.
pub fn listing(md: &Metadata) -> Result<String> {
    let sb = md.superblock();
    let dsm = md.data_space_map()?;
    let msm = md.metadata_space_map()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "pool: transaction {} time {} data_block_size {} data blocks {}/{} used, metadata blocks {}/{} used{}{}",
        sb.transaction_id,
        sb.time,
        sb.data_block_size,
        dsm.nr_blocks() - dsm.nr_free(),
        dsm.nr_blocks(),
        msm.nr_blocks() - msm.nr_free(),
        msm.nr_blocks(),
        if sb.held_root != 0 {
            format!(", metadata snapshot at block {}", sb.held_root)
        } else {
            String::new()
        },
        if sb.needs_check() { ", needs_check" } else { "" },
    );
    let _ = writeln!(
        s,
        "pool table: 0 {} thin-pool <metadata> <data> {} 0 0",
        dsm.nr_blocks() * u64::from(sb.data_block_size),
        sb.data_block_size
    );
    let _ = writeln!(
        s,
        "{:>8} {:>13} {:>13} {:>11} {:>13} {:>9}",
        "dev_id", "mapped_blocks", "highest_block", "transaction", "creation_time", "snap_time"
    );
    let details = md.devices()?;
    for (id, root) in md.device_roots()? {
        let d = details.get(&id).copied().unwrap_or_default();
        let mut highest = None;
        md.for_each_mapping(root, &mut |k, _| {
            highest = Some(k);
            Ok(())
        })?;
        let _ = writeln!(
            s,
            "{id:>8} {:>13} {:>13} {:>11} {:>13} {:>9}",
            d.mapped_blocks,
            highest.map_or_else(|| "-".to_string(), |h| h.to_string()),
            d.transaction_id,
            d.creation_time,
            d.snapshotted_time
        );
    }
    Ok(s)
}

/// Run a `dmemu thin` subcommand.
pub fn run(cmd: ThinCommand) -> Result<()> {
    let text = match cmd {
        ThinCommand::Dump {
            metadata,
            metadata_snap,
        } => {
            let md = open(&metadata)?;
            if metadata_snap {
                md.metadata_snap()?
                    .ok_or_else(|| {
                        Error::invalid("--metadata-snap", "the metadata holds no snapshot")
                    })?
                    .dump_xml()?
            } else {
                md.dump_xml()?
            }
        }
        ThinCommand::Ls { metadata } => listing(&open(&metadata)?)?,
        ThinCommand::Check { metadata } => {
            let problems = open(&metadata)?.check()?;
            if !problems.is_empty() {
                let shown: Vec<&str> = problems.iter().take(20).map(String::as_str).collect();
                return Err(Error::Corrupt {
                    what: "thin metadata space maps",
                    offset: 0,
                    detail: format!("{} count mismatches: {}", problems.len(), shown.join("; ")),
                });
            }
            "ok\n".to_string()
        }
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(Error::io(&"stdout"))
}
