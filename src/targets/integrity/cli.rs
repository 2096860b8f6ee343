//! `dmemu integrity dump|format`: integritysetup's commands over image files, with its
//! option names and its output.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Args as ClapArgs, Subcommand};

use super::dump::{dump_text, kernel_refusal, read_superblock};
use super::format::{format, kernel_alg_name, FormatParams};
use super::superblock::SALT_SIZE;
use crate::error::{Error, Result};
use crate::volume::{Access, FileVolume};

/// integritysetup's subcommands.
#[derive(Debug, Subcommand)]
pub enum IntegrityCommand {
    /// Print the superblock as `integritysetup dump` (2.6.1) does, byte for byte; what the
    /// kernel would refuse on open is reported on stderr.
    Dump {
        /// Image (printed as given).
        image: PathBuf,
    },
    /// Write the superblock, journal and (unless --no-wipe) zeroed data with its tags, as
    /// `integritysetup format` (2.6.1) leaves the device.
    Format(FormatOpts),
}

/// `integritysetup format` options.
#[derive(Debug, ClapArgs)]
pub struct FormatOpts {
    /// Image to format (its size is the device's).
    image: PathBuf,
    /// Tag bytes per block (default: the hash's digest size).
    #[arg(long, short = 't')]
    tag_size: Option<u32>,
    /// Internal hash (crc32c, crc32, sha1, sha256, hmac-sha256, ...).
    #[arg(long, short = 'I', default_value = "crc32c")]
    integrity: String,
    /// Bytes per block (512..4096).
    #[arg(long, short = 's', default_value_t = 512)]
    sector_size: u32,
    /// Journal size in bytes (default: the kernel's, 1/128 of the device up to 64 MiB).
    #[arg(long, short = 'j')]
    journal_size: Option<u64>,
    /// Data sectors between tag areas.
    #[arg(long)]
    interleave_sectors: Option<u32>,
    /// Metadata buffer sectors (a table option; changes nothing on disk).
    #[arg(long)]
    buffer_sectors: Option<u32>,
    /// Bitmap mode (integritysetup formats it as the journal mode: nothing differs on disk).
    #[arg(long, short = 'B')]
    integrity_bitmap_mode: bool,
    /// Leave data and tags as they are (unwritten blocks then fail their tag check).
    #[arg(long)]
    no_wipe: bool,
    /// File holding the key of a keyed hash (hmac-*).
    #[arg(long)]
    integrity_key_file: Option<PathBuf>,
    /// Key bytes to read from the key file (default: the hash's digest size).
    #[arg(long)]
    integrity_key_size: Option<usize>,
    /// Accepted for integritysetup compatibility (dmemu never asks).
    #[arg(long, short = 'q')]
    batch_mode: bool,
    /// The superblock salt, 32 hex digits, instead of a random one (reproducible images).
    #[arg(long, hide = true)]
    salt: Option<String>,
}

fn bad(reason: String) -> Error {
    Error::InvalidArgument {
        what: "integrity format",
        reason,
    }
}

fn parse_salt(hex: &str) -> Result<[u8; SALT_SIZE]> {
    let b = hex.as_bytes();
    if b.len() != SALT_SIZE * 2 {
        return Err(bad(format!("--salt wants {} hex digits", SALT_SIZE * 2)));
    }
    let mut s = [0u8; SALT_SIZE];
    for (i, pair) in b.chunks(2).enumerate() {
        let txt = std::str::from_utf8(pair).map_err(|_| bad("--salt is not hex".into()))?;
        s[i] = u8::from_str_radix(txt, 16).map_err(|_| bad("--salt is not hex".into()))?;
    }
    Ok(s)
}

/// Digest size of a keyed hash (integritysetup's default key size).
fn default_key_size(alg: &str) -> Option<usize> {
    match alg {
        "hmac(sha1)" => Some(20),
        "hmac(sha256)" => Some(32),
        "hmac(sha512)" => Some(64),
        _ => None,
    }
}

impl FormatOpts {
    /// The parameters these options give.
    pub fn params(&self) -> Result<FormatParams> {
        let integrity = kernel_alg_name(&self.integrity);
        let key = match &self.integrity_key_file {
            None => None,
            Some(path) => {
                let want = self
                    .integrity_key_size
                    .or_else(|| default_key_size(&integrity))
                    .ok_or_else(|| bad("--integrity-key-size is needed".into()))?;
                let mut k = Vec::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(want as u64).read_to_end(&mut k))
                    .map_err(Error::io(&path.display()))?;
                if k.len() != want {
                    return Err(bad(format!(
                        "Cannot read {want} bytes from keyfile {}",
                        path.display()
                    )));
                }
                Some(k)
            }
        };
        Ok(FormatParams {
            integrity,
            key,
            tag_size: self.tag_size,
            sector_size: self.sector_size,
            journal_bytes: self.journal_size,
            interleave_sectors: self.interleave_sectors,
            wipe: !self.no_wipe,
            salt: self.salt.as_deref().map(parse_salt).transpose()?,
        })
    }
}

/// Run one `dmemu integrity` subcommand.
pub fn run(cmd: IntegrityCommand) -> Result<()> {
    match cmd {
        IntegrityCommand::Dump { image } => {
            let shown = image.display();
            let f = std::fs::File::open(&image).map_err(Error::io(&shown))?;
            let len = f.metadata().map_err(Error::io(&shown))?.len();
            let mut head = Vec::new();
            f.take(512)
                .read_to_end(&mut head)
                .map_err(Error::io(&shown))?;
            let sb = read_superblock(&head)?;
            let text = dump_text(&shown.to_string(), &sb);
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(Error::io(&"stdout"))?;
            if let Some(e) = kernel_refusal(&sb, len) {
                eprintln!("dmemu: the kernel would refuse this superblock: {e}");
            }
            Ok(())
        }
        IntegrityCommand::Format(opts) => {
            let p = opts.params()?;
            if let Some(t) = p.tag_size {
                let digest = super::hash::TagHasher::new(&p.integrity, p.key.as_deref(), None)?
                    .digest_size();
                if usize::try_from(t).ok() != Some(digest) {
                    eprintln!(
                        "WARNING: Requested tag size {t} bytes differs from {} size output ({digest} bytes).",
                        opts.integrity
                    );
                }
            }
            let vol = FileVolume::open(&opts.image, Access::ReadWrite)?;
            format(&vol, &p)?;
            Ok(())
        }
    }
}
