//! `dmemu thin dump|ls|check`: pool metadata inspected without a pool (thin_dump's XML, a
//! device listing, thin_check's space map check), for pulling thin volumes out of
//! metadata + data images.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use super::metadata::block::MetaDev;
use super::metadata::{DeviceDetails, Metadata};
use super::tools::{self, Overrides};
use crate::error::{Error, Result};
use crate::volume::{Access, FileVolume, MmapVolume, Volume};

/// thin_restore's and thin_repair's superblock overrides.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OverrideArgs {
    /// Transaction id to write.
    #[arg(long)]
    transaction_id: Option<u64>,
    /// Data block size (sectors) to write.
    #[arg(long)]
    data_block_size: Option<u32>,
    /// Data blocks to write.
    #[arg(long)]
    nr_data_blocks: Option<u64>,
}

impl OverrideArgs {
    fn get(self) -> Overrides {
        Overrides {
            transaction_id: self.transaction_id,
            data_block_size: self.data_block_size,
            nr_data_blocks: self.nr_data_blocks,
        }
    }
}

/// `dmemu thin` subcommands.
#[derive(Debug, Subcommand)]
pub enum ThinCommand {
    /// Print the metadata as thin_dump's XML, byte for byte (thin-provisioning-tools 0.9):
    /// the superblock, then each device's mappings as ranges and single mappings.
    Dump {
        /// Metadata image.
        metadata: PathBuf,
        /// Dump the metadata snapshot (`reserve_metadata_snap`) instead; `-mBLOCK` or
        /// `--metadata-snap=BLOCK` names the superblock copy's block.
        #[arg(short = 'm', long, num_args = 0..=1, require_equals = true, value_name = "BLOCK")]
        metadata_snap: Option<Option<u64>>,
        /// Salvage what damaged metadata still holds (as `thin repair` does) and dump that.
        #[arg(short = 'r', long)]
        repair: bool,
        /// Superblock fields to write instead of the input's.
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Write metadata from thin_dump's XML (thin_restore 0.9): the output (an existing file
    /// or block device, its size the metadata's size) passes thin_check and dumps as the
    /// input, with `mapped_blocks` recounted. The whole input is checked before anything
    /// is written; errors name the line and column.
    Restore {
        /// The XML.
        #[arg(short = 'i', long)]
        input: PathBuf,
        /// The metadata file or device to write (must exist).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// No progress bar.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Superblock fields to write instead of the input's.
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Salvage damaged metadata into new metadata (thin_repair): every readable device and
    /// mapping; the roots are searched for when the superblock or a root is gone. The
    /// damage found goes to stderr.
    Repair {
        /// The damaged metadata.
        #[arg(short = 'i', long)]
        input: PathBuf,
        /// The metadata file or device to write (must exist).
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Superblock fields to write instead of the input's.
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Compare two thin devices' mappings (thin_delta 0.9's XML, byte for byte): ranges
    /// only in the first (`left_only`), only in the second, mapped to different or the
    /// same data blocks. With `--data`, also write the second device's changed extents
    /// (right_only and different) from the data image as a sparse image (`-o`): an
    /// incremental backup from the first to the second.
    Delta {
        /// Metadata image.
        metadata: PathBuf,
        /// The first (older) device.
        #[arg(long = "snap1", visible_alias = "thin1", value_name = "ID")]
        snap1: u64,
        /// The second device.
        #[arg(long = "snap2", visible_alias = "thin2", value_name = "ID")]
        snap2: u64,
        /// Compare in the metadata snapshot (`-mBLOCK`: the copy at that block).
        #[arg(short = 'm', long, num_args = 0..=1, require_equals = true, value_name = "BLOCK")]
        metadata_snap: Option<Option<u64>>,
        /// Give each range's data blocks.
        #[arg(long)]
        verbose: bool,
        /// The pool's data image: write the changed extents (needs `-o`).
        #[arg(long, requires = "output")]
        data: Option<PathBuf>,
        /// The sparse image `--data` writes, as long as the second device's mapped extent.
        #[arg(short = 'o', long, requires = "data")]
        output: Option<PathBuf>,
    },
    /// Which devices and virtual blocks map the given data blocks (thin_rmap 0.9):
    /// `data B..E -> thin(D) V..W` per run.
    Rmap {
        /// Metadata image.
        metadata: PathBuf,
        /// Data blocks `BEGIN..END` (END excluded); repeatable.
        #[arg(long = "region", value_name = "BEGIN..END")]
        regions: Vec<super::tools::delta::Region>,
    },
    /// Discard the data blocks the pool does not use (thin_trim): punched out of an image
    /// file, discarded on a block device. Refused when the space maps disagree with the
    /// trees (`thin check` fails).
    Trim {
        /// Metadata image.
        #[arg(long = "metadata-dev")]
        metadata_dev: PathBuf,
        /// Data image or device.
        #[arg(long = "data-dev")]
        data_dev: PathBuf,
    },
    /// thin_metadata_pack (thin-provisioning-tools 1.x): the metadata blocks of an image,
    /// zlib-compressed, in pack format version 3.
    #[command(name = "metadata-pack")]
    MetadataPack {
        /// Metadata image.
        #[arg(short = 'i', long)]
        input: PathBuf,
        /// Pack file to write.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Accepted for thin_metadata_pack's command line (the output is always replaced).
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// thin_metadata_unpack: a pack back into a metadata image (blocks that were not
    /// packed read as zeros).
    #[command(name = "metadata-unpack")]
    MetadataUnpack {
        /// Pack file.
        #[arg(short = 'i', long)]
        input: PathBuf,
        /// Metadata image to write.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Accepted for thin_metadata_unpack's command line (the output is always replaced).
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// thin_metadata_size: the metadata a pool needs, with its options (`-b BLOCKSIZE -s
    /// POOLSIZE -m MAXTHINS [-u UNIT] [-n[short|long]]`) and output, byte for byte.
    #[command(name = "metadata-size", disable_help_flag = true)]
    MetadataSize {
        /// thin_metadata_size's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write one thin volume as a sparse image: its mapped blocks from the data image,
    /// holes where it is unmapped, with a progress bar on a terminal.
    Extract {
        /// Metadata image.
        metadata: PathBuf,
        /// Data image.
        data: PathBuf,
        /// The thin device.
        #[arg(long = "dev-id")]
        dev_id: u64,
        /// The image to write.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// Image length in sectors (default: through the highest mapped block).
        #[arg(long)]
        sectors: Option<u64>,
        /// Read the device from the metadata snapshot.
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
        /// (thin_ls' default: DEV,MAPPED,CREATE_TIME,SNAP_TIME), MAPPED_BYTES,
        /// EXCLUSIVE_BYTES, SHARED_BYTES.
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

/// Metadata read block by block with pread (no memory map, whose touched pages would all
/// count as resident): for the tools that walk the trees once (delta, rmap, ls).
fn open_pread(path: &PathBuf) -> Result<Metadata> {
    Metadata::open(Arc::new(FileVolume::open(path, Access::ReadOnly)?))
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
    // How many devices map each data block: one byte per data block up to a few times
    // what the metadata's leaves could map (bounded by the metadata device's size, not by
    // what the superblock claims), a map past it.
    let nr_data = md.superblock().data_sm.nr_blocks;
    let dense_limit = md.dev().nr_blocks().saturating_mul(4 * 252);
    let mut users = tools::restore::BlockCounts::new(nr_data, dense_limit);
    for id in details.keys() {
        md.for_each_mapping(root(id)?, &mut |_, bt| {
            users.add(bt.block);
            Ok(())
        })?;
    }
    let mut out = Vec::new();
    for (&id, &d) in &details {
        let (mut exclusive, mut highest) = (0, None);
        md.for_each_mapping(root(&id)?, &mut |k, bt| {
            if users.get(bt.block) == 1 {
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
const FIELDS: [&str; 16] = [
    "DEV",
    "MAPPED_BLOCKS",
    "EXCLUSIVE_BLOCKS",
    "SHARED_BLOCKS",
    "MAPPED_SECTORS",
    "EXCLUSIVE_SECTORS",
    "SHARED_SECTORS",
    "MAPPED_BYTES",
    "EXCLUSIVE_BYTES",
    "SHARED_BYTES",
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
        "MAPPED_BYTES" => (mapped * block_size * 512).to_string(),
        "EXCLUSIVE_BYTES" => (d.exclusive * block_size * 512).to_string(),
        "SHARED_BYTES" => (shared * block_size * 512).to_string(),
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
            format!(
                "unknown field {} (known: {})",
                crate::error::quote(bad),
                FIELDS.join(",")
            ),
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

/// The live metadata, or with `-m` its metadata snapshot (the held one, or the copy at
/// the block given).
fn snap_or_live(md: Metadata, snap: Option<Option<u64>>) -> Result<Metadata> {
    match snap {
        None => Ok(md),
        Some(Some(block)) => md.metadata_snap_at(block),
        Some(None) => md.metadata_snap()?.ok_or_else(|| {
            Error::invalid(
                "--metadata-snap",
                "no current metadata snap: the metadata holds no snapshot",
            )
        }),
    }
}

/// An existing metadata file or device opened for writing (thin_restore's rule: its size
/// is the metadata's size, so it is not created).
fn open_output(path: &PathBuf) -> Result<MetaDev> {
    if !path.exists() {
        return Err(Error::invalid(
            "-o",
            format!(
                "{}: Output file does not exist. The output file should either be a block \
                 device, or an existing file large enough to hold the metadata.",
                path.display()
            ),
        ));
    }
    Ok(MetaDev::new(Arc::new(FileVolume::open(
        path,
        Access::ReadWrite,
    )?)))
}

fn report_damage(damage: &[String]) {
    for d in damage {
        eprintln!("dmemu: repair: {d}");
    }
}

/// Write `extents` of `data` into a new sparse image `out` of `sectors` sectors (extents
/// past its end are cut), with a progress bar.
fn write_extents(
    data: &PathBuf,
    out: &PathBuf,
    extents: &[tools::Extent],
    sectors: u64,
) -> Result<()> {
    let data = MmapVolume::open(data)?;
    let cut: Vec<tools::Extent> = extents
        .iter()
        .filter(|e| e.virt.0 < sectors)
        .map(|e| tools::Extent {
            len: crate::units::SectorCount(e.len.0.min(sectors - e.virt.0)),
            ..*e
        })
        .collect();
    for e in &cut {
        if e.data.0 + e.len.0 > data.size().0 {
            return Err(Error::invalid(
                "data image",
                format!(
                    "{} sectors; the metadata maps data sectors up to {}",
                    data.size().0,
                    e.data.0 + e.len.0
                ),
            ));
        }
    }
    let image = crate::volume::ImageFile::create_output(out)?;
    let file = image.file();
    file.set_len(sectors * 512)
        .map_err(Error::io(&out.display()))?;
    let total: u64 = cut.iter().map(|e| e.len.bytes()).sum();
    let bar = crate::cli::transfer::progress(total);
    tools::copy_extents(&data, file, &cut, &mut |n| bar.set_position(n))?;
    bar.finish_and_clear();
    file.sync_all().map_err(Error::io(&out.display()))
}

/// `thin delta --data`: the second device's extents that differ from the first's
/// (right_only and different), as a sparse image as long as the second's mapped extent.
fn write_delta(md: &Metadata, snap1: u64, snap2: u64, data: &PathBuf, out: &PathBuf) -> Result<()> {
    use tools::delta::{diff, runs, Change};
    let root = |id: u64| {
        md.device_root(id)?
            .ok_or_else(|| Error::invalid("thin delta", format!("no thin device {id}")))
    };
    let (left, right) = (runs(md, root(snap1)?)?, runs(md, root(snap2)?)?);
    let bs = u64::from(md.superblock().data_block_size);
    let mut extents = Vec::new();
    diff(&left, &right, &mut |v, n, c| {
        let d = match c {
            Change::RightOnly { dbegin } | Change::Differ { right: dbegin, .. } => dbegin,
            _ => return,
        };
        extents.push(tools::Extent {
            virt: crate::units::Sector(v * bs),
            data: crate::units::Sector(d * bs),
            len: crate::units::SectorCount(n * bs),
        });
    });
    let end = right.last().map_or(0, |r| (r.vbegin + r.len) * bs);
    write_extents(data, out, &extents, end)
}

/// Run a `dmemu thin` subcommand.
pub fn run(cmd: ThinCommand) -> Result<()> {
    let text = match cmd {
        ThinCommand::Dump {
            metadata,
            metadata_snap,
            repair,
            overrides,
        } => {
            if repair {
                let vol = Arc::new(MmapVolume::open(&metadata)?);
                let s = tools::repair::salvage(&MetaDev::new(vol), overrides.get())?;
                report_damage(&s.damage);
                s.pool.dump_xml()
            } else {
                let md = Metadata::open_for_dump(Arc::new(MmapVolume::open(&metadata)?))?;
                snap_or_live(md, metadata_snap)?.dump_xml()?
            }
        }
        ThinCommand::Restore {
            input,
            output,
            quiet,
            overrides,
        } => {
            let meta = std::fs::metadata(&input).map_err(Error::io(&input.display()))?;
            let dev = open_output(&output)?;
            if !meta.is_file() {
                // A pipe (`-i <(zcat ...)`) cannot be read twice: held whole instead.
                let text = std::fs::read(&input).map_err(Error::io(&input.display()))?;
                let pool = tools::xml::parse(&text, tools::max_mappings(&dev)?, &mut |_| {})?;
                drop(text);
                tools::restore(&pool, &dev, overrides.get())?;
                return Ok(());
            }
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                // Two passes over the document: the check and count, then the build.
                crate::cli::transfer::progress(meta.len().saturating_mul(2))
            };
            let done = tools::restore_file(&input, &dev, overrides.get(), &mut |n| {
                bar.set_position(n);
            });
            bar.finish_and_clear();
            done?;
            String::new()
        }
        ThinCommand::Repair {
            input,
            output,
            overrides,
        } => {
            let vol = Arc::new(MmapVolume::open(&input)?);
            let s = tools::repair::salvage(&MetaDev::new(vol), overrides.get())?;
            report_damage(&s.damage);
            let dev = open_output(&output)?;
            tools::restore(&s.pool, &dev, Overrides::default())?;
            String::new()
        }
        ThinCommand::Delta {
            metadata,
            snap1,
            snap2,
            metadata_snap,
            verbose,
            data,
            output,
        } => {
            let md = snap_or_live(open_pread(&metadata)?, metadata_snap)?;
            let xml = tools::delta::delta_xml(&md, snap1, snap2, verbose)?;
            if let (Some(data), Some(out)) = (data, output) {
                write_delta(&md, snap1, snap2, &data, &out)?;
            }
            xml
        }
        ThinCommand::Rmap { metadata, regions } => {
            tools::delta::rmap(&open_pread(&metadata)?, &regions)?
        }
        ThinCommand::Trim {
            metadata_dev,
            data_dev,
        } => {
            let md = open(&metadata_dev)?;
            let data = FileVolume::open(&data_dev, Access::ReadWrite)?;
            tools::trim(&md, &data)?;
            String::new()
        }
        ThinCommand::MetadataSize { args } => tools::size::metadata_size(&args)?,
        ThinCommand::MetadataPack { input, output, .. } => {
            tools::pack::pack(&input, &output)?;
            String::new()
        }
        ThinCommand::MetadataUnpack { input, output, .. } => {
            tools::pack::unpack(&input, &output)?;
            String::new()
        }
        ThinCommand::Extract {
            metadata,
            data,
            dev_id,
            output,
            sectors,
            metadata_snap,
        } => {
            let md = snap_or_live(open(&metadata)?, metadata_snap.then_some(None))?;
            let extents = tools::device_extents(&md, dev_id)?;
            let end = extents.last().map_or(0, |e| e.virt.0 + e.len.0);
            write_extents(&data, &output, &extents, sectors.unwrap_or(end))?;
            String::new()
        }
        ThinCommand::Ls {
            metadata,
            data,
            metadata_snap,
            format,
            no_headers,
        } => {
            let top = open_pread(&metadata)?;
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
