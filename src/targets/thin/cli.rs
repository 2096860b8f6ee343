//! `dmemu thin dump|ls|check`: pool metadata inspected without a pool (thin_dump's XML, a
//! device listing, thin_check's space map check), for pulling thin volumes out of
//! metadata + data images.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use super::metadata::{DeviceDetails, Metadata};
use crate::error::{Error, Result};
use crate::volume::MmapVolume;

/// `dmemu thin` subcommands.
#[derive(Debug, Subcommand)]
pub enum ThinCommand {
    /// Print the metadata as thin_dump's XML, byte for byte (thin-provisioning-tools 0.9):
    /// the superblock, then each device's mappings as ranges and single mappings.
    Dump {
        /// Metadata image.
        metadata: PathBuf,
        /// Dump the metadata snapshot (`reserve_metadata_snap`) instead.
        #[arg(short = 'm', long)]
        metadata_snap: bool,
    },
    /// Check every reference count in both space maps against the trees (thin_check's
    /// space map check). Prints `ok` and exits 0 when they agree; otherwise exits 22
    /// (EINVAL) with the mismatches, `data block B: space map count C, referenced R times`.
    Check {
        /// Metadata image.
        metadata: PathBuf,
    },
    /// List the pool and its thin devices. Prints a `pool:` summary (transaction, time,
    /// block size, data and metadata blocks used), the `pool table:` line, one row per
    /// device (id, mapped, exclusive and shared blocks, highest mapped block, transaction,
    /// creation and snapshot time), then per device a ready-to-paste `--concise` spec
    /// that reads it through a read-only pool. Warns on stderr when the metadata fails
    /// `thin check`. With `-o FIELDS` it prints thin_ls' table instead, byte for byte.
    Ls {
        /// Metadata image.
        metadata: PathBuf,
        /// Data image, named in the printed specs (default: the word DATA, to replace).
        data: Option<PathBuf>,
        /// List the devices of the metadata snapshot (`reserve_metadata_snap`) instead.
        #[arg(short = 'm', long)]
        metadata_snap: bool,
        /// Print thin_ls' table with these comma-separated fields: DEV, MAPPED_BLOCKS,
        /// EXCLUSIVE_BLOCKS, SHARED_BLOCKS, MAPPED_SECTORS, EXCLUSIVE_SECTORS,
        /// SHARED_SECTORS, MAPPED, EXCLUSIVE, SHARED, TRANSACTION, CREATE_TIME, SNAP_TIME
        /// (thin_ls' default: DEV,MAPPED,CREATE_TIME,SNAP_TIME).
        #[arg(short = 'o', long = "format", value_name = "FIELDS")]
        format: Option<String>,
        /// With --format: leave out the header row (thin_ls --no-headers).
        #[arg(long, requires = "format")]
        no_headers: bool,
    },
}

fn open(path: &PathBuf) -> Result<Metadata> {
    Metadata::open(Arc::new(MmapVolume::open(path)?))
}

/// One device as `thin_ls` counts it: mapped blocks from its details, exclusive blocks
/// (mapped by no other device of the same metadata) from the trees.
struct DeviceCounts {
    id: u64,
    details: DeviceDetails,
    exclusive: u64,
    highest: Option<u64>,
}

/// Every device of `md` in id order, counted as thin_ls counts (its two passes over the
/// mapping trees: how many devices map each data block, then each device's blocks that
/// only it maps). Memory grows with the mappings the trees hold, not with the pool size a
/// superblock claims.
fn count_devices(md: &Metadata) -> Result<Vec<DeviceCounts>> {
    let details = md.devices()?;
    let roots = md.device_roots()?;
    let root = |id: &u64| {
        roots.get(id).copied().ok_or_else(|| Error::Corrupt {
            what: "thin metadata",
            offset: 0,
            detail: format!("device {id} has details but no mapping tree root"),
        })
    };
    let mut users: HashMap<u64, u8> = HashMap::new();
    for id in details.keys() {
        md.for_each_mapping(root(id)?, &mut |_, bt| {
            let n = users.entry(bt.block).or_insert(0);
            *n = n.saturating_add(1);
            Ok(())
        })?;
    }
    let mut out = Vec::new();
    for (&id, &d) in &details {
        let (mut exclusive, mut highest) = (0, None);
        md.for_each_mapping(root(&id)?, &mut |k, bt| {
            if users.get(&bt.block) == Some(&1) {
                exclusive += 1;
            }
            highest = Some(k);
            Ok(())
        })?;
        out.push(DeviceCounts {
            id,
            details: d,
            exclusive,
            highest,
        });
    }
    Ok(out)
}

/// thin_ls' human-readable size (`base::format_disk_unit`, 0.9): bytes divided by 1024
/// while above 1 MiB, then once more, rounded, if still above 8 KiB; unit appended.
fn disk_unit(sectors: u64) -> String {
    let mut n = sectors.saturating_mul(512);
    let mut i = 0;
    while n > 1024 * 1024 {
        n /= 1024;
        i += 1;
    }
    if n > 8 * 1024 {
        n = (n + 512) / 1024; // round(n / 1024.0), halves away from zero
        i += 1;
    }
    let unit = ["", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    format!("{n}{}", unit[i.min(unit.len() - 1)])
}

/// thin_ls' fields, in its order.
const FIELDS: [&str; 13] = [
    "DEV",
    "MAPPED_BLOCKS",
    "EXCLUSIVE_BLOCKS",
    "SHARED_BLOCKS",
    "MAPPED_SECTORS",
    "EXCLUSIVE_SECTORS",
    "SHARED_SECTORS",
    "MAPPED",
    "EXCLUSIVE",
    "SHARED",
    "TRANSACTION",
    "CREATE_TIME",
    "SNAP_TIME",
];

fn field(name: &str, d: &DeviceCounts, block_size: u64) -> String {
    let mapped = d.details.mapped_blocks;
    let shared = mapped.saturating_sub(d.exclusive);
    match name {
        "DEV" => d.id.to_string(),
        "MAPPED_BLOCKS" => mapped.to_string(),
        "EXCLUSIVE_BLOCKS" => d.exclusive.to_string(),
        "SHARED_BLOCKS" => shared.to_string(),
        "MAPPED_SECTORS" => (mapped * block_size).to_string(),
        "EXCLUSIVE_SECTORS" => (d.exclusive * block_size).to_string(),
        "SHARED_SECTORS" => (shared * block_size).to_string(),
        "MAPPED" => disk_unit(mapped * block_size),
        "EXCLUSIVE" => disk_unit(d.exclusive * block_size),
        "SHARED" => disk_unit(shared * block_size),
        "TRANSACTION" => d.details.transaction_id.to_string(),
        "CREATE_TIME" => d.details.creation_time.to_string(),
        _ => d.details.snapshotted_time.to_string(),
    }
}

/// Rows of cells, each column right-aligned to its widest cell, every cell followed by
/// one space (thin_ls' `grid_layout`).
fn grid(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut s = String::new();
    for r in rows {
        for (c, w) in r.iter().zip(&widths) {
            let _ = write!(s, "{c:>w$} ");
        }
        s.push('\n');
    }
    s
}

/// `thin_ls -o FIELDS [--no-headers]` over `md`, byte for byte.
pub fn thin_ls(md: &Metadata, fields: &str, headers: bool) -> Result<String> {
    let names: Vec<&str> = fields.split(',').collect();
    if let Some(bad) = names.iter().find(|n| !FIELDS.contains(n)) {
        return Err(Error::invalid(
            "--format",
            format!("unknown field {bad:?} (known: {})", FIELDS.join(",")),
        ));
    }
    let bs = u64::from(md.superblock().data_block_size);
    let mut rows = Vec::new();
    if headers {
        rows.push(names.iter().map(|n| (*n).to_string()).collect());
    }
    for d in count_devices(md)? {
        rows.push(names.iter().map(|n| field(n, &d, bs)).collect());
    }
    Ok(grid(&rows))
}

/// The `ls` listing of `md` (see [`ThinCommand::Ls`]); `meta` and `data` are the paths
/// the printed specs name, `None` for no specs (a metadata snapshot, which no table reads).
pub fn listing(md: &Metadata, specs: Option<(&str, &str)>) -> Result<String> {
    let sb = md.superblock();
    let dsm = md.data_space_map()?;
    let msm = md.metadata_space_map()?;
    let bs = u64::from(sb.data_block_size);
    let pool_len = dsm.nr_blocks() * bs;
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
        "pool table: 0 {pool_len} thin-pool <metadata> <data> {} 0 0",
        sb.data_block_size
    );
    let devices = count_devices(md)?;
    let mut rows = vec![[
        "dev_id",
        "mapped_blocks",
        "exclusive",
        "shared",
        "highest_block",
        "transaction",
        "creation_time",
        "snap_time",
    ]
    .map(String::from)
    .to_vec()];
    for d in &devices {
        rows.push(vec![
            d.id.to_string(),
            d.details.mapped_blocks.to_string(),
            d.exclusive.to_string(),
            d.details
                .mapped_blocks
                .saturating_sub(d.exclusive)
                .to_string(),
            d.highest.map_or_else(|| "-".to_string(), |h| h.to_string()),
            d.details.transaction_id.to_string(),
            d.details.creation_time.to_string(),
            d.details.snapshotted_time.to_string(),
        ]);
    }
    s += &grid(&rows);
    let Some((meta, data)) = specs else {
        return Ok(s);
    };
    s += "\nspecs, for `dmemu read --concise SPEC --device tN` (the pool is read-only; a \
          thin's length and external origin are not in the metadata: the length reaches its \
          highest mapped block, and an origin image goes after the id if it had one):\n";
    let (meta, data) = (quote(meta), quote(data));
    for d in &devices {
        let len = (d.highest.map_or(0, |h| h + 1)).max(1) * bs;
        let _ = writeln!(
            s,
            "{}: pool,,,rw,0 {pool_len} thin-pool {meta} {data} {bs} 0 1 read_only;t{},,,ro,0 {len} thin pool {}",
            d.id, d.id, d.id
        );
    }
    Ok(s)
}

/// A path as a token of a table inside concise text: a backslash before whitespace and
/// backslashes (dm_split_args), then before `,` `;` and backslashes (the concise layer).
fn quote(path: &str) -> String {
    let mut token = String::new();
    for c in path.chars() {
        if c.is_whitespace() || c == '\\' {
            token.push('\\');
        }
        token.push(c);
    }
    let mut s = String::new();
    for c in token.chars() {
        if matches!(c, ',' | ';' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Say on stderr when the metadata fails `thin check` (the listing is still printed).
fn warn_unless_checked(md: &Metadata, meta: &str) {
    match md.check() {
        Ok(p) if p.is_empty() => {}
        Ok(p) => eprintln!(
            "dmemu: warning: {meta} fails thin_check's space map check ({} count mismatches, \
             first: {}); `dmemu thin check` lists them",
            p.len(),
            p[0]
        ),
        Err(e) => eprintln!("dmemu: warning: {meta} fails the metadata check: {e}"),
    }
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
        ThinCommand::Ls {
            metadata,
            data,
            metadata_snap,
            format,
            no_headers,
        } => {
            let top = open(&metadata)?;
            let meta = metadata.display().to_string();
            if format.is_none() {
                warn_unless_checked(&top, &meta);
            }
            let md = if metadata_snap {
                top.metadata_snap()?.ok_or_else(|| {
                    Error::invalid("--metadata-snap", "the metadata holds no snapshot")
                })?
            } else {
                top
            };
            match format {
                Some(f) => thin_ls(&md, &f, !no_headers)?,
                None => {
                    let data = data.map_or_else(|| "DATA".into(), |d| d.display().to_string());
                    listing(&md, (!metadata_snap).then_some((&meta, &data)))?
                }
            }
        }
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
