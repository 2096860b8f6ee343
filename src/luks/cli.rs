//! `dmemu luks dump|table|read|write`: the command-line face of [`Luks`], with
//! cryptsetup's ways of getting a passphrase: a terminal prompt without echo, one line of
//! stdin, or `--key-file` (`-` = stdin) cut by `--keyfile-offset` / `--keyfile-size`.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::kdf::{
    KdfLimits, DEFAULT_MAX_ARGON2_WORK, DEFAULT_MAX_ITERATIONS, DEFAULT_MAX_KDF_MEMORY_KIB,
    DEFAULT_MAX_TOTAL_WORK,
};
use super::unlock::VolumeKey;
use super::Luks;
use crate::cli::transfer::{read_out, write_in, ReadArgs, WriteArgs};
use crate::error::{Error, Result};
use crate::targets::Keys;
use crate::volume::Access;

/// cryptsetup's `DEFAULT_KEYFILE_SIZE_MAXKB`: 8 MiB.
const MAX_KEYFILE: u64 = 8 << 20;
/// cryptsetup's `DEFAULT_PASSPHRASE_SIZE_MAX`.
const MAX_PASSPHRASE: usize = 512;

/// LUKS subcommands.
#[derive(Debug, Subcommand)]
pub enum LuksCommand {
    /// Print the header as `cryptsetup luksDump` does (never the key).
    Dump {
        /// The LUKS image (or data file, with --header).
        image: PathBuf,
        /// Detached header file.
        #[arg(long)]
        header: Option<PathBuf>,
    },
    /// Unlock and print the crypt table line cryptsetup would load.
    Table {
        /// Image and unlock options.
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Print the key instead of zeros.
        #[arg(long)]
        showkeys: bool,
        /// Reference the key in the kernel keyring, as cryptsetup 2.6 loads LUKS2 keys.
        #[arg(long)]
        keyring: bool,
    },
    /// Unlock and write the decrypted volume (or `--start/--sectors` of it, in 512-byte
    /// sectors) to stdout or a file.
    Read {
        /// Image and unlock options.
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Range and output.
        #[command(flatten)]
        out: ReadArgs,
    },
    /// Unlock and encrypt data (whole crypt sectors) into the volume; an input larger than
    /// the volume is refused before anything is written.
    Write {
        /// Image and unlock options.
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Input and first 512-byte sector of the decrypted volume to write.
        #[command(flatten)]
        input: WriteArgs,
    },
    /// Unlock and serve the decrypted volume over NBD and/or as a FUSE file (the export is
    /// named after the image file), as `dmemu serve` does.
    Serve {
        /// Image and unlock options.
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Serve read-only (the image is opened read-only).
        #[arg(long)]
        read_only: bool,
        /// Listeners, mount point and captive command.
        #[command(flatten)]
        serve: crate::serve::cli::ServeOptions,
    },
}

/// How to open and unlock the image.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The LUKS image (or data file, with --header).
    image: PathBuf,
    /// Detached header file.
    #[arg(long)]
    header: Option<PathBuf>,
    /// Read the passphrase from this file (`-` = stdin), newlines included.
    #[arg(long, short = 'd')]
    key_file: Option<PathBuf>,
    /// Bytes to skip at the start of the key file.
    #[arg(long, default_value_t = 0, requires = "key_file")]
    keyfile_offset: u64,
    /// Bytes of the key file to use (default: all of it, at most 8 MiB).
    #[arg(long, short = 'l', requires = "key_file")]
    keyfile_size: Option<u64>,
    /// Use the volume key in this file instead of a passphrase.
    #[arg(long, conflicts_with = "key_file")]
    volume_key_file: Option<PathBuf>,
    /// Try only this key slot.
    #[arg(long, short = 'S')]
    key_slot: Option<u32>,
    /// Largest Argon2 memory to spend, in KiB (cryptsetup's unit); default 4 GiB.
    #[arg(long, default_value_t = DEFAULT_MAX_KDF_MEMORY_KIB)]
    max_kdf_memory: u64,
    /// Largest PBKDF2 iteration count to run (key slots and digests).
    #[arg(long, default_value_t = DEFAULT_MAX_ITERATIONS)]
    max_kdf_iterations: u32,
    /// Largest Argon2 work to run, in KiB × passes.
    #[arg(long, default_value_t = DEFAULT_MAX_ARGON2_WORK)]
    max_kdf_work: u64,
    /// Largest total key-derivation work of one unlock attempt, every key slot and digest
    /// together, in hash compressions (the default is about 8 s here).
    #[arg(long, default_value_t = DEFAULT_MAX_TOTAL_WORK)]
    max_kdf_total: u64,
}

fn read_limited(r: &mut dyn Read, limit: u64, name: &str) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    r.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(Error::io(&name))?;
    Ok(buf)
}

/// The key file's bytes as cryptsetup takes them (`crypt_keyfile_device_read`).
fn key_file_bytes(a: &UnlockArgs, path: &PathBuf) -> Result<Zeroizing<Vec<u8>>> {
    let name = path.display().to_string();
    let mut reader: Box<dyn Read> = if name == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(path).map_err(Error::io(&name))?)
    };
    // Skip by reading: stdin and pipes cannot seek.
    let skipped = io::copy(&mut (&mut reader).take(a.keyfile_offset), &mut io::sink())
        .map_err(Error::io(&name))?;
    if skipped < a.keyfile_offset {
        return Err(Error::invalid(
            "--keyfile-offset",
            format!("{name} has only {skipped} bytes"),
        ));
    }
    let limit = a.keyfile_size.unwrap_or(MAX_KEYFILE).min(MAX_KEYFILE);
    let mut key = read_limited(&mut reader, limit, &name)?;
    match a.keyfile_size {
        Some(n) if (key.len() as u64) < n => Err(Error::invalid(
            "--keyfile-size",
            format!("cannot read {n} bytes from {name}"),
        )),
        Some(n) => {
            key.truncate(usize::try_from(n).unwrap_or(usize::MAX));
            Ok(key)
        }
        None if key.len() as u64 > MAX_KEYFILE => Err(Error::invalid(
            "--key-file",
            format!("{name} is larger than the 8 MiB maximum key file size"),
        )),
        None => Ok(key),
    }
}

/// A passphrase from the terminal (no echo) or one line of stdin, newline removed.
fn passphrase(image: &str) -> Result<Zeroizing<Vec<u8>>> {
    if io::stdin().is_terminal() {
        let p = Zeroizing::new(
            rpassword::prompt_password(format!("Enter passphrase for {image}: "))
                .map_err(Error::io(&"terminal"))?,
        );
        return Ok(Zeroizing::new(p.as_bytes().to_vec()));
    }
    let mut buf = read_limited(&mut io::stdin().lock(), MAX_PASSPHRASE as u64, "stdin")?;
    if let Some(n) = buf.iter().position(|&c| c == b'\n') {
        buf.truncate(n);
    } else if buf.len() > MAX_PASSPHRASE {
        return Err(Error::invalid(
            "passphrase",
            format!("longer than {MAX_PASSPHRASE} bytes"),
        ));
    }
    Ok(buf)
}

impl UnlockArgs {
    fn open(&self, access: Access) -> Result<(Luks, VolumeKey)> {
        let luks = Luks::open_path(&self.image, self.header.as_deref(), access)?;
        for w in luks.warnings() {
            eprintln!("dmemu: warning: {w}");
        }
        if let Some(p) = &self.volume_key_file {
            let name = p.display().to_string();
            let mut f = File::open(p).map_err(Error::io(&name))?;
            let key = read_limited(&mut f, 4096, &name)?;
            let vk = luks.check_volume_key(&key)?;
            return Ok((luks, vk));
        }
        let pass = match &self.key_file {
            Some(p) => key_file_bytes(self, p)?,
            None => passphrase(&self.image.display().to_string())?,
        };
        let limits = KdfLimits {
            max_memory_kib: self.max_kdf_memory,
            max_iterations: self.max_kdf_iterations,
            max_argon2_work: self.max_kdf_work,
            max_total_work: self.max_kdf_total,
        };
        let vk = luks.unlock(&pass, self.key_slot, &limits)?;
        Ok((luks, vk))
    }
}

/// Run a `dmemu luks` subcommand.
pub fn run(cmd: LuksCommand) -> Result<()> {
    match cmd {
        LuksCommand::Dump { image, header } => {
            let luks = Luks::open_path(&image, header.as_deref(), Access::ReadOnly)?;
            for w in luks.warnings() {
                eprintln!("dmemu: warning: {w}");
            }
            let shown = header.as_ref().unwrap_or(&image).display().to_string();
            io::stdout()
                .write_all(luks.dump(&shown).as_bytes())
                .map_err(Error::io(&"stdout"))
        }
        LuksCommand::Table {
            unlock,
            showkeys,
            keyring,
        } => {
            let (luks, vk) = unlock.open(Access::ReadOnly)?;
            let keys = if showkeys { Keys::Shown } else { Keys::Hidden };
            let dev = unlock.image.display().to_string();
            // With integrity, cryptsetup loads two devices: the integrity layer over the
            // image (`<name>_dif`), then the crypt device over it. Both lines are printed,
            // the crypt line naming the first device `<image>_dif`.
            let line = match luks.integrity_table_line(&dev)? {
                Some(dif) => {
                    println!("{dif}");
                    luks.table_line(&vk, &format!("{dev}_dif"), keys, keyring)?
                }
                None => luks.table_line(&vk, &dev, keys, keyring)?,
            };
            println!("{line}");
            Ok(())
        }
        LuksCommand::Read { unlock, out } => {
            let (luks, vk) = unlock.open(Access::ReadOnly)?;
            let sector_size = luks
                .crypt_args(&vk, "luks-data", false)?
                .1
                .options
                .sector_size;
            read_out(&luks.volume(&vk)?, &out, sector_size as usize)
        }
        LuksCommand::Write { unlock, input } => {
            let (luks, vk) = unlock.open(Access::ReadWrite)?;
            let sector_size = luks
                .crypt_args(&vk, "luks-data", false)?
                .1
                .options
                .sector_size;
            write_in(&luks.volume(&vk)?, &input, sector_size as usize)
        }
        LuksCommand::Serve {
            unlock,
            read_only,
            serve,
        } => {
            use crate::serve::{Export, ExportAccess, Exports};
            let (access, export_access) = if read_only {
                (Access::ReadOnly, ExportAccess::ReadOnly)
            } else {
                (Access::ReadWrite, ExportAccess::ReadWrite)
            };
            let (luks, vk) = unlock.open(access)?;
            let sector_size = luks
                .crypt_args(&vk, "luks-data", false)?
                .1
                .options
                .sector_size;
            let volume: crate::volume::SharedVolume = std::sync::Arc::new(luks.volume(&vk)?);
            drop(vk);
            let name = unlock
                .image
                .file_name()
                .map_or_else(|| "luks".into(), |n| n.to_string_lossy().into_owned());
            let export = Export::new(name.clone(), volume)
                .with_access(export_access)
                .with_description(format!("dmemu luks {name}"))
                .with_block_size(sector_size)?;
            let exports = Exports::new(vec![std::sync::Arc::new(export)])?;
            crate::serve::cli::serve(&exports, &serve)
        }
    }
}
