//! The `dmemu` command line: clap structs and one function per subcommand. Library errors
//! become one stderr line (with the cause chain) and an exit status equal to their errno.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args as ClapArgs, Parser, Subcommand};

pub mod transfer;

use transfer::{read_out, write_in, ReadArgs, WriteArgs};

use crate::error::{Error, Result};
use crate::mapped_device::MappedDevice;
use crate::registry::Registry;
use crate::table::{concise::format_concise, parse_concise, parse_table, DeviceSpec, TableMode};
use crate::targets::Keys;
use crate::units::Sector;
use crate::volume::Access;

/// The exit status, as `--help` prints it (README's "Exit status" says the same).
const EXIT_STATUS: &str = "\
Exit status: 0 on success; otherwise the errno of the failure, as the kernel or the OS
reported it (the message names the cause, e.g. \"a.img: Permission denied\"):
   1 EPERM       wrong passphrase, key file or volume key
   2 ENOENT      no such file, or a device a table names that nothing satisfies
  13 EACCES      permission denied (any OS error keeps its errno)
   5 EIO         I/O error; a read the target fails (error, flakey, verity mismatch,
                 invalid snapshot); a request beyond the end of the device
   6 ENXIO       no mapped device of that name
  16 EBUSY       image locked, device in use, or name/uuid taken
  22 EINVAL      bad table, argument or input; corrupt header, metadata or verity tree
  28 ENOSPC      thin pool out of data space          30 EROFS   write to read-only
  95 EOPNOTSUPP  operation the target does not have
dmemu luks and dmemu verity keep this rule; cryptsetup and veritysetup use their own
codes instead (1 bad parameters or not LUKS, 2 wrong passphrase or verification failed,
4 missing device, 5 busy or exists).";

/// A userspace device-mapper: kernel dm tables executed over image files.
#[derive(Debug, Parser)]
#[command(name = "dmemu", version, about, after_help = EXIT_STATUS)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a table; exit 0, or print `line N: <reason>` and fail.
    Check {
        /// Table text (starts with a digit and holds a space), a table file, or `-` for stdin.
        #[arg(default_value = "-")]
        file: String,
        /// The input is `dmsetup create --concise` text.
        #[arg(long)]
        concise: bool,
        /// Check as a read-only table (needed for verity).
        #[arg(long)]
        read_only: bool,
    },
    /// Print the canonical `dmsetup table` form; opens no device.
    Fmt {
        /// Table text (starts with a digit and holds a space), a table file, or `-` for stdin.
        #[arg(default_value = "-")]
        file: String,
        /// The input is `dmsetup create --concise` text (printed back in concise form).
        #[arg(long)]
        concise: bool,
        /// Print crypt keys instead of zeros.
        #[arg(long)]
        showkeys: bool,
    },
    /// Read the device's contents to stdout or a file (sparse when the file is new). The
    /// spec is loaded read-only (images opened shared): nothing is written, and several
    /// readers of one image run at once.
    Read {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        out: ReadArgs,
    },
    /// Write data (whole sectors) into the device; an input larger than the device is
    /// refused before anything is written.
    Write {
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        input: WriteArgs,
    },
    /// Print `dmsetup status` lines.
    Status {
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Print `dmsetup table` lines of the constructed device.
    Table {
        #[command(flatten)]
        spec: SpecArgs,
        /// Print crypt keys instead of zeros.
        #[arg(long)]
        showkeys: bool,
    },
    /// LUKS1/LUKS2 images: dump the header, print the crypt table, read or write the data.
    Luks {
        #[command(subcommand)]
        cmd: crate::luks::cli::LuksCommand,
    },
    /// Send a message to the target covering SECTOR and print its reply.
    Message {
        #[command(flatten)]
        spec: SpecArgs,
        /// Sector selecting the target.
        sector: u64,
        /// Message words.
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
    },
    /// dm-verity trees: format, verify, dump, table (like veritysetup).
    Verity {
        #[command(subcommand)]
        cmd: crate::targets::verity::cli::VerityCommand,
    },
    /// dm-integrity images: dump and format (like integritysetup).
    Integrity {
        #[command(subcommand)]
        cmd: crate::targets::integrity::cli::IntegrityCommand,
    },
    /// dm-cache metadata: dump (cache_dump's XML), check, ls (mappings).
    Cache {
        #[command(subcommand)]
        cmd: crate::targets::cache::cli::CacheCommand,
    },
    /// dm-thin pool metadata: dump (thin_dump's XML), ls (devices), check (space maps).
    Thin {
        #[command(subcommand)]
        cmd: crate::targets::thin::cli::ThinCommand,
    },
    /// Replay a dm-log-writes log onto an image, as xfstests' replay-log (same options and
    /// output); `--fsck CMD --check ...` checks each crash point on a scratch copy.
    ReplayLog(crate::targets::log_writes::cli::ReplayLogArgs),
    /// Serve every device of the spec over NBD until SIGINT/SIGTERM (or until --run CMD exits).
    Serve(crate::serve::cli::ServeArgs),
    /// Run `message`, `read`, `write`, `status`, `sleep`... lines from stdin against one
    /// live device, printing each reply (see `dmemu::shell`).
    Shell {
        #[command(flatten)]
        spec: SpecArgs,
    },
}

/// Which devices to build and which one to act on.
#[derive(Debug, ClapArgs)]
pub struct SpecArgs {
    /// One device's table, as dmsetup's `--table` takes it: table text (anything that
    /// starts with a digit and holds a space, lines separated by newlines), else a table
    /// file, or `-` for stdin.
    #[arg(long, value_name = "TEXT|FILE|-", conflicts_with_all = ["concise", "concise_file"])]
    table: Option<String>,
    /// Several devices in `dmsetup create --concise` form.
    #[arg(long, conflicts_with = "concise_file")]
    concise: Option<String>,
    /// File holding concise text.
    #[arg(long)]
    concise_file: Option<PathBuf>,
    /// With several devices: the one to act on (default: the last).
    #[arg(long)]
    device: Option<String>,
    /// Bind a `major:minor` in tables to an image file: `--map 8:16=disk.img`.
    #[arg(long = "map", value_name = "MAJ:MIN=PATH")]
    maps: Vec<String>,
    /// Supply the key a crypt table names as `:<size>:<type>:<desc>` (kernel keyring):
    /// `--key-file logon:mydisk=key.bin` (the file holds the raw key bytes).
    #[arg(long = "key-file", value_name = "TYPE:DESC=PATH")]
    key_files: Vec<String>,
    /// Load the table read-only and open files read-only.
    #[arg(long)]
    pub(crate) read_only: bool,
}

fn read_input(file: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    if file == "-" {
        io::stdin()
            .read_to_end(&mut buf)
            .map_err(Error::io(&"stdin"))?;
    } else {
        buf = std::fs::read(file).map_err(Error::io(&file))?;
    }
    Ok(buf)
}

/// Whether a `--table` argument is table text rather than a path: it starts with a digit
/// (a table line's start sector) and holds a space. A path that looks like this cannot be
/// given directly; `./0 8` can.
#[must_use]
pub fn is_table_text(arg: &str) -> bool {
    arg.starts_with(|c: char| c.is_ascii_digit()) && arg.contains([' ', '\t'])
}

/// The table a `--table`-style argument gives: its text, stdin for `-`, else the file.
fn table_input(arg: &str) -> Result<Vec<u8>> {
    if is_table_text(arg) {
        return Ok(arg.as_bytes().to_vec());
    }
    if arg == "-" {
        return read_input(arg);
    }
    std::fs::read(arg).map_err(|source| Error::Io {
        device: format!(
            "table {arg:?} (not table text, which starts with a digit and holds a space; \
             so read as a file)"
        ),
        source,
    })
}

fn utf8(bytes: Vec<u8>, what: &'static str) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        Error::invalid(
            what,
            format!("not valid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
        )
    })
}

impl SpecArgs {
    fn specs(&self) -> Result<Vec<DeviceSpec>> {
        if let Some(t) = &self.table {
            let table = parse_table(&table_input(t)?)?;
            // `--read-only` is applied by `make_read_only`: a read-only table, or a pool
            // line with the `read_only` feature (the kernel takes no pool in a read-only
            // table).
            let mut spec = DeviceSpec {
                name: "dmemu".into(),
                uuid: String::new(),
                minor: None,
                mode: TableMode::ReadWrite,
                table,
            };
            if self.read_only {
                spec.make_read_only();
            }
            return Ok(vec![spec]);
        }
        let text = match (&self.concise, &self.concise_file) {
            (Some(c), _) => c.clone(),
            (None, Some(f)) => utf8(
                std::fs::read(f).map_err(Error::io(&f.display()))?,
                "concise file",
            )?,
            (None, None) => {
                return Err(Error::invalid(
                    "device spec",
                    "give --table FILE, --concise TEXT or --concise-file FILE",
                ))
            }
        };
        let mut specs = parse_concise(text.trim_end_matches('\n'))?;
        if self.read_only {
            specs.iter_mut().for_each(DeviceSpec::make_read_only);
        }
        Ok(specs)
    }

    /// Build every device and return the one to act on.
    pub(crate) fn open(&self) -> Result<Opened> {
        let specs = self.specs()?;
        let mut registry = Registry::new();
        if self.read_only {
            registry = registry.with_access(Access::ReadOnly);
        }
        for m in &self.maps {
            let (dev, path) = m.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "--map",
                    format!("{} is not MAJ:MIN=PATH", crate::error::quote(m)),
                )
            })?;
            registry.bind(dev, path)?;
        }
        for k in &self.key_files {
            let bad = || {
                Error::invalid(
                    "--key-file",
                    format!("{} is not TYPE:DESC=PATH", crate::error::quote(k)),
                )
            };
            let (name, path) = k.split_once('=').ok_or_else(bad)?;
            let (key_type, desc) = name.split_once(':').ok_or_else(bad)?;
            let key = zeroize::Zeroizing::new(std::fs::read(path).map_err(Error::io(&path))?);
            registry.keyring().insert(key_type, desc, &key);
        }
        let devices = registry.create_all(&specs)?;
        let device = match &self.device {
            None => devices
                .last()
                .cloned()
                .ok_or_else(|| Error::invalid("device spec", "no devices")),
            Some(name) => registry
                .mapped(name)
                .ok_or_else(|| Error::NoDevice(format!("{name} (not defined in the spec)"))),
        }?;
        Ok(Opened {
            _registry: registry,
            all: devices
                .iter()
                .cloned()
                .zip(specs.iter().map(|s| s.mode))
                .collect(),
            device,
        })
    }
}

/// The device a command works on, and the registry that holds every device of the spec:
/// the others stay loaded while it runs (a snapshot of the spec must see writes to its
/// origin through a snapshot-origin, as in the kernel).
pub(crate) struct Opened {
    _registry: Registry,
    device: Arc<MappedDevice>,
    /// Every device of the spec and the mode it was loaded in, in spec order.
    pub(crate) all: Vec<(Arc<MappedDevice>, TableMode)>,
}

impl std::ops::Deref for Opened {
    type Target = MappedDevice;
    fn deref(&self) -> &MappedDevice {
        &self.device
    }
}

fn run_command(cli: Cli) -> Result<()> {
    let mut stdout = io::stdout().lock();
    let out = |s: &str, stdout: &mut io::StdoutLock<'_>| {
        stdout.write_all(s.as_bytes()).map_err(Error::io(&"stdout"))
    };
    match cli.command {
        Command::Verity { cmd } => crate::targets::verity::cli::run(cmd),
        Command::Cache { cmd } => match crate::targets::cache::cli::run(cmd)? {
            0 => Ok(()),
            status => {
                drop(stdout);
                std::process::exit(status)
            }
        },
        Command::Integrity { cmd } => crate::targets::integrity::cli::run(cmd),
        Command::Thin { cmd } => crate::targets::thin::cli::run(cmd),
        Command::Check {
            file,
            concise,
            read_only,
        } => {
            let text = if concise {
                read_input(&file)?
            } else {
                table_input(&file)?
            };
            if concise {
                let specs = parse_concise(utf8(text, "input")?.trim_end_matches('\n'))?;
                for s in &specs {
                    let mode = if read_only {
                        TableMode::ReadOnly
                    } else {
                        s.mode
                    };
                    s.table.check_mode(mode)?;
                }
            } else {
                let t = parse_table(&text)?;
                t.check_mode(if read_only {
                    TableMode::ReadOnly
                } else {
                    TableMode::ReadWrite
                })?;
            }
            Ok(())
        }
        Command::Fmt {
            file,
            concise,
            showkeys,
        } => {
            let keys = if showkeys { Keys::Shown } else { Keys::Hidden };
            let text = if concise {
                read_input(&file)?
            } else {
                table_input(&file)?
            };
            if concise {
                let specs = parse_concise(utf8(text, "input")?.trim_end_matches('\n'))?;
                out(&format!("{}\n", format_concise(&specs, keys)), &mut stdout)
            } else {
                out(&parse_table(&text)?.to_text(keys), &mut stdout)
            }
        }
        Command::Read { mut spec, out } => {
            drop(stdout);
            // A read never writes: tables load read-only (a thin pool with `read_only`)
            // and image files open shared, so readers run side by side.
            spec.read_only = true;
            let dev = spec.open()?;
            read_out(&*dev, &out, dev.block_size() as usize)
        }
        Command::Write { spec, input } => {
            let dev = spec.open()?;
            write_in(&*dev, &input, dev.block_size() as usize)
        }
        Command::Status { spec } => out(&spec.open()?.status_text(), &mut stdout),
        Command::Table { spec, showkeys } => {
            let keys = if showkeys { Keys::Shown } else { Keys::Hidden };
            out(&spec.open()?.table_text(keys), &mut stdout)
        }
        Command::Luks { cmd } => {
            drop(stdout);
            crate::luks::cli::run(cmd)
        }
        Command::Message {
            spec,
            sector,
            words,
        } => {
            let dev = spec.open()?;
            let argv: Vec<&str> = words.iter().map(String::as_str).collect();
            let reply = dev.message(Sector(sector), &argv)?;
            if reply.is_empty() || reply.ends_with('\n') {
                out(&reply, &mut stdout)
            } else {
                out(&format!("{reply}\n"), &mut stdout)
            }
        }
        Command::Serve(args) => crate::serve::cli::run(&args),
        Command::ReplayLog(args) => {
            use crate::targets::log_writes::cli::{run, Outcome};
            match run(&args, &mut stdout)? {
                Outcome::Done => Ok(()),
                Outcome::CheckFailed(status) => {
                    drop(stdout);
                    std::process::exit(status)
                }
            }
        }
        Command::Shell { spec } => {
            drop(stdout);
            crate::shell::run(&*spec.open()?, io::stdin().lock(), io::stdout().lock())
        }
    }
}

/// Parse the command line, run, and return the process exit status.
#[must_use]
pub fn run() -> i32 {
    let cli = Cli::parse();
    match run_command(cli) {
        Ok(()) => 0,
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("dmemu: {}", e.chain());
            e.errno()
        }
    }
}
