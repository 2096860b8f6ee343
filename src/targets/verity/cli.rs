//! `dmemu verity format|verify|dump|table`: veritysetup's commands over image files, with
//! its option names and its output layout.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args as ClapArgs, Subcommand};

use super::fec::{encode, FecGeometry};
use super::format::{format, read_superblock, verify, FormatParams};
use super::hash::{from_hex, to_hex, HashAlg};
use super::superblock::{Superblock, Uuid};
use super::FecArgs;
use crate::cli::transfer::Counted;
use crate::error::{Error, Result};
use crate::targets::DeviceRef;
use crate::volume::{Access, FileVolume, ImageFile, Volume};

/// veritysetup's subcommands.
#[derive(Debug, Subcommand)]
pub enum VerityCommand {
    /// Build the hash tree of DATA into HASH and print the root hash (`veritysetup format`).
    #[command(disable_help_flag = true)]
    Format {
        /// Data image.
        data: PathBuf,
        /// Hash image (created if missing).
        hash: PathBuf,
        /// Tree options.
        #[command(flatten)]
        opts: TreeOpts,
    },
    /// Check DATA against the tree on HASH and ROOT (`veritysetup verify`).
    #[command(disable_help_flag = true)]
    Verify {
        /// Data image.
        data: PathBuf,
        /// Hash image.
        hash: PathBuf,
        /// Root hash, hex.
        root: String,
        /// Tree options.
        #[command(flatten)]
        opts: TreeOpts,
    },
    /// Print the superblock of HASH (`veritysetup dump`).
    Dump {
        /// Hash image.
        hash: PathBuf,
        /// Starting offset of the superblock on HASH, bytes.
        #[arg(long, default_value_t = 0)]
        hash_offset: u64,
    },
    /// Print the dm table line that opens DATA/HASH with ROOT (`veritysetup open` loads it).
    #[command(disable_help_flag = true)]
    Table {
        /// Data image (printed as given).
        data: PathBuf,
        /// Hash image (printed as given).
        hash: PathBuf,
        /// Root hash, hex.
        root: String,
        /// Tree options.
        #[command(flatten)]
        opts: TreeOpts,
    },
}

/// The tree options veritysetup takes.
#[derive(Debug, ClapArgs)]
pub struct TreeOpts {
    /// Hash algorithm (`-h`, as veritysetup's short option; help is `--help`).
    #[arg(short = 'h', long = "hash", default_value = "sha256")]
    hash_alg: String,
    /// Data block size, bytes.
    #[arg(long, default_value_t = 4096)]
    data_block_size: u32,
    /// Hash block size, bytes.
    #[arg(long, default_value_t = 4096)]
    hash_block_size: u32,
    /// Number of data blocks (default: the whole data image).
    #[arg(long)]
    data_blocks: Option<u64>,
    /// Salt, hex, or `-` for none (default: 32 random bytes).
    #[arg(short = 's', long)]
    salt: Option<String>,
    /// Format type: 1 normal, 0 Chrome OS.
    #[arg(long = "format", default_value_t = 1)]
    hash_type: u32,
    /// Starting offset on the hash device, bytes.
    #[arg(long, default_value_t = 0)]
    hash_offset: u64,
    /// Do not use (or write) the superblock.
    #[arg(long)]
    no_superblock: bool,
    /// UUID to store in the superblock (default: random).
    #[arg(long)]
    uuid: Option<String>,
    /// FEC device: `format` writes Reed-Solomon parity there, `table` names it.
    #[arg(long)]
    fec_device: Option<PathBuf>,
    /// Parity bytes per codeword (2..=24).
    #[arg(long, default_value_t = 2)]
    fec_roots: u32,
    /// Starting offset on the FEC device, bytes.
    #[arg(long, default_value_t = 0)]
    fec_offset: u64,
    /// Print help (`-h` is `--hash` here, as in veritysetup).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl TreeOpts {
    /// FEC layout over `hash` (the whole hash device from `hash_start`, as veritysetup).
    fn fec(&self, p: &FormatParams, hash: &dyn Volume) -> Result<Option<FecGeometry>> {
        if self.fec_device.is_none() {
            return Ok(None);
        }
        if p.data_block_size != p.hash_block_size {
            return Err(Error::invalid(
                "--fec-device",
                "Block sizes must match for FEC.",
            ));
        }
        if !(2..=24).contains(&self.fec_roots) {
            return Err(Error::invalid(
                "--fec-roots",
                "Invalid number of parity bytes",
            ));
        }
        let bs = u64::from(p.data_block_size);
        if self.fec_offset % bs != 0 {
            return Err(Error::invalid(
                "--fec-offset",
                "must be a multiple of the block size",
            ));
        }
        let geo = p.geometry()?;
        let hash_blocks = (hash.size().bytes() / bs).saturating_sub(geo.hash_start);
        FecGeometry::new(
            self.fec_roots,
            p.data_block_size,
            p.data_blocks + hash_blocks,
            self.fec_offset / bs,
            p.data_blocks,
            geo.hash_start,
            geo.hash_end,
        )
        .map(Some)
    }
}

fn open(path: &Path) -> Result<FileVolume> {
    FileVolume::open(path, Access::ReadOnly)
}

impl TreeOpts {
    /// Parameters from the command line alone.
    fn params(&self, data: &dyn Volume) -> Result<FormatParams> {
        let algorithm = HashAlg::from_name(&self.hash_alg).ok_or_else(|| {
            Error::invalid(
                "--hash",
                format!(
                    "{} (known: {})",
                    crate::error::quote(&self.hash_alg),
                    HashAlg::names().join(", ")
                ),
            )
        })?;
        let salt = match self.salt.as_deref() {
            Some("-") => Vec::new(),
            Some(s) => from_hex(s).ok_or_else(|| Error::invalid("--salt", "not hex"))?,
            None => {
                let mut s = vec![0u8; 32];
                getrandom::fill(&mut s)
                    .map_err(|e| Error::invalid("--salt", format!("no randomness: {e}")))?;
                s
            }
        };
        let uuid = match &self.uuid {
            Some(u) => Uuid::parse(u)?,
            None => Uuid::random()?,
        };
        let data_blocks = match self.data_blocks {
            Some(n) => n,
            None if self.data_block_size == 0 => 0,
            None => data.size().bytes() / u64::from(self.data_block_size),
        };
        let p = FormatParams {
            hash_type: self.hash_type,
            algorithm,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks,
            salt,
            uuid,
            hash_offset: self.hash_offset,
            superblock: !self.no_superblock,
        };
        p.check()?;
        Ok(p)
    }

    /// Parameters of an existing tree: from its superblock unless `--no-superblock`.
    fn existing(&self, data: &dyn Volume, hash: &dyn Volume) -> Result<FormatParams> {
        if self.no_superblock {
            if self.salt.is_none() {
                return Err(Error::invalid(
                    "--salt",
                    "required with --no-superblock (`-` for none)",
                ));
            }
            return self.params(data);
        }
        let sb = read_superblock(hash, self.hash_offset)?;
        let mut p = FormatParams::from_superblock(&sb, self.hash_offset);
        if let Some(n) = self.data_blocks {
            p.data_blocks = n;
        }
        p.check()?;
        Ok(p)
    }
}

fn parse_root(root: &str, alg: HashAlg) -> Result<Vec<u8>> {
    let r = from_hex(root).ok_or_else(|| Error::invalid("root hash", "not hex"))?;
    if r.len() != alg.digest_size() {
        return Err(Error::invalid(
            "root hash",
            format!(
                "{} bytes; {alg} digests are {} bytes",
                r.len(),
                alg.digest_size()
            ),
        ));
    }
    Ok(r)
}

/// veritysetup's `VERITY header information` block.
fn header(
    name: &Path,
    p: &FormatParams,
    root: Option<&[u8]>,
    fec: Option<&FecGeometry>,
) -> Result<String> {
    let geo = p.geometry()?;
    let mut s = format!("VERITY header information for {}\n", name.display());
    if p.superblock {
        s += &format!("UUID:            \t{}\n", p.uuid);
    }
    s += &format!("Hash type:       \t{}\n", p.hash_type);
    s += &format!("Data blocks:     \t{}\n", p.data_blocks);
    s += &format!("Data block size: \t{}\n", p.data_block_size);
    s += &format!("Hash blocks:     \t{}\n", geo.tree_blocks());
    s += &format!("Hash block size: \t{}\n", p.hash_block_size);
    s += &format!("Hash algorithm:  \t{}\n", p.algorithm);
    if let Some(f) = fec {
        s += &format!("FEC RS roots:   \t{}\n", f.roots);
        s += &format!(
            "FEC blocks:     \t{}\n",
            f.area_bytes() / u64::from(f.block_size)
        );
    }
    let salt = if p.salt.is_empty() {
        "-".to_string()
    } else {
        to_hex(&p.salt)
    };
    s += &format!("Salt:            \t{salt}\n");
    if let Some(r) = root {
        s += &format!("Root hash:      \t{}\n", to_hex(r));
    }
    s += &format!(
        "Hash device size: \t{} [bytes]\n",
        geo.hash_end_bytes().unwrap_or(u64::MAX)
    );
    // veritysetup prints the FEC device size only for an area at offset 0.
    if let Some(f) = fec.filter(|f| f.start == 0) {
        s += &format!("FEC device size: \t{} [bytes]\n", f.area_bytes());
    }
    Ok(s)
}

fn print(s: &str) -> Result<()> {
    std::io::stdout()
        .lock()
        .write_all(s.as_bytes())
        .map_err(Error::io(&"stdout"))
}

/// Whether two paths are one file (cryptsetup's `device_is_identical`: same device and
/// inode).
fn same_file(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (
        std::fs::metadata(a).map_err(Error::io(&a.display()))?,
        std::fs::metadata(b).map_err(Error::io(&b.display()))?,
    );
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

/// `verity format`'s area checks, as cryptsetup's `_crypt_format_verity` makes them, in its
/// words. As there, the hash area taken to end `VERITY_hash_blocks` tree blocks after
/// `--hash-offset` (the superblock not counted), and those blocks are counted from the
/// `--data-blocks` given: none without it (cryptsetup reads `params->data_size`, still 0
/// then), so a FEC area after the hash offset always passes (tests/fixtures/verity/overlaps).
fn refuse_overlaps(
    p: &FormatParams,
    data_blocks_given: bool,
    data: &Path,
    hash: &Path,
    fec: Option<(&Path, u64)>,
) -> Result<()> {
    let refuse = |words: &str| Err(Error::invalid("verity format", words.to_string()));
    let data_end = p.data_blocks.saturating_mul(u64::from(p.data_block_size));
    if same_file(hash, data)? && data_end > p.hash_offset {
        return refuse("Data area overlaps with hash area.");
    }
    let Some((fec, fec_offset)) = fec else {
        return Ok(());
    };
    let tree_blocks = if data_blocks_given {
        p.geometry()?.tree_blocks()
    } else {
        0
    };
    let hash_end = tree_blocks
        .saturating_mul(u64::from(p.hash_block_size))
        .saturating_add(p.hash_offset);
    if same_file(hash, fec)? && hash_end > fec_offset {
        return refuse("Hash area overlaps with FEC area.");
    }
    if same_file(data, fec)? && data_end > fec_offset {
        return refuse("Data area overlaps with FEC area.");
    }
    Ok(())
}

/// Run one `dmemu verity` subcommand.
pub fn run(cmd: VerityCommand) -> Result<()> {
    match cmd {
        VerityCommand::Format { data, hash, opts } => {
            // The images written are opened (and locked exclusive) first: the data or hash
            // image may be the same file as one written (--hash-offset, --fec-offset), and
            // its read-only opens then share the read-write handle.
            let hash_file = ImageFile::create(&hash)?;
            let fec_file = opts
                .fec_device
                .as_ref()
                .map(ImageFile::create)
                .transpose()?;
            let dv = open(&data)?;
            let p = opts.params(&dv)?;
            let fec = opts.fec_device.as_deref().map(|f| (f, opts.fec_offset));
            refuse_overlaps(&p, opts.data_blocks.is_some(), &data, &hash, fec)?;
            // A progress bar (on a terminal) over the data read for the first level.
            let counted = Counted::new(&dv);
            let root = format(&p, &counted, hash_file.file())?;
            counted.finish();
            let fec = match (&opts.fec_device, &fec_file) {
                (Some(path), Some(f)) => {
                    let hv = open(&hash)?;
                    let g = opts.fec(&p, &hv)?;
                    if let Some(g) = &g {
                        encode(g, &dv, &hv, f.file(), opts.fec_offset)?;
                        f.file().sync_data().map_err(Error::io(&path.display()))?;
                    }
                    g
                }
                _ => None,
            };
            print(&header(&hash, &p, Some(&root), fec.as_ref())?)
        }
        VerityCommand::Verify {
            data,
            hash,
            root,
            opts,
        } => {
            let (dv, hv) = (open(&data)?, open(&hash)?);
            let p = opts.existing(&dv, &hv)?;
            let r = parse_root(&root, p.algorithm)?;
            let counted = Counted::new(&dv);
            let verified = verify(&p, &counted, &hv, &r);
            counted.finish();
            verified
        }
        VerityCommand::Dump { hash, hash_offset } => {
            let sb: Superblock = read_superblock(&open(&hash)?, hash_offset)?;
            let p = FormatParams::from_superblock(&sb, hash_offset);
            print(&header(&hash, &p, None, None)?)
        }
        VerityCommand::Table {
            data,
            hash,
            root,
            opts,
        } => {
            let (dv, hv) = (open(&data)?, open(&hash)?);
            let p = opts.existing(&dv, &hv)?;
            let r = parse_root(&root, p.algorithm)?;
            let mut args =
                p.table_args(&data.display().to_string(), &hash.display().to_string(), &r);
            if let (Some(g), Some(dev)) = (opts.fec(&p, &hv)?, &opts.fec_device) {
                args.fec = Some(FecArgs {
                    device: DeviceRef(dev.display().to_string()),
                    blocks: g.blocks,
                    start: g.start,
                    roots: u8::try_from(g.roots).unwrap_or(0),
                });
            }
            let sectors = p.data_blocks * u64::from(p.data_block_size) / 512;
            print(&format!("0 {sectors} verity {args}\n"))
        }
    }
}
