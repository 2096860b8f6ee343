//! The `dmemu` command line: clap structs and one function per subcommand. Library errors
//! become one stderr line (with the cause chain) and an exit status equal to their errno.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args as ClapArgs, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::mapped_device::MappedDevice;
use crate::registry::Registry;
use crate::table::{concise::format_concise, parse_concise, parse_table, DeviceSpec, TableMode};
use crate::targets::Keys;
use crate::units::{Sector, SectorCount, SECTOR_SIZE};
use crate::volume::{Access, Volume};

/// A userspace device-mapper: kernel dm tables executed over image files.
#[derive(Debug, Parser)]
#[command(name = "dmemu", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a table file; exit 0, or print `line N: <reason>` and fail.
    Check {
        /// Table file, or `-` for stdin.
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
        /// Table file, or `-` for stdin.
        #[arg(default_value = "-")]
        file: String,
        /// The input is `dmsetup create --concise` text (printed back in concise form).
        #[arg(long)]
        concise: bool,
        /// Print crypt keys instead of zeros.
        #[arg(long)]
        showkeys: bool,
    },
    /// Read the device's contents to stdout or a file.
    Read {
        #[command(flatten)]
        spec: SpecArgs,
        /// First sector to read.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Number of sectors (default: to the end of the device).
        #[arg(long)]
        sectors: Option<u64>,
        /// Output file (default stdout).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Write data (whole sectors) into the device.
    Write {
        #[command(flatten)]
        spec: SpecArgs,
        /// First sector to write.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Input file (default stdin).
        #[arg(short = 'i', long)]
        input: Option<PathBuf>,
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
    /// dm-thin pool metadata: dump (thin_dump's XML), ls (devices), check (space maps).
    Thin {
        #[command(subcommand)]
        cmd: crate::targets::thin::cli::ThinCommand,
    },
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
    /// Table file for one device (`-` for stdin).
    #[arg(long, conflicts_with_all = ["concise", "concise_file"])]
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
        let mode = if self.read_only {
            TableMode::ReadOnly
        } else {
            TableMode::ReadWrite
        };
        if let Some(t) = &self.table {
            let table = parse_table(&read_input(t)?)?;
            return Ok(vec![DeviceSpec {
                name: "dmemu".into(),
                uuid: String::new(),
                minor: None,
                mode,
                table,
            }]);
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
            for s in &mut specs {
                s.mode = TableMode::ReadOnly;
            }
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
            let (dev, path) = m
                .split_once('=')
                .ok_or_else(|| Error::invalid("--map", format!("{m:?} is not MAJ:MIN=PATH")))?;
            registry.bind(dev, path)?;
        }
        for k in &self.key_files {
            let bad = || Error::invalid("--key-file", format!("{k:?} is not TYPE:DESC=PATH"));
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

/// A buffer whose data starts on a 4096-byte boundary (copies into and out of misaligned
/// large buffers run several times slower on this class of CPU).
struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
    len: usize,
}

const ALIGN: usize = 4096;

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let offset = raw.as_ptr().align_offset(ALIGN).min(ALIGN);
        AlignedBuf { raw, offset, len }
    }
    fn get(&mut self, n: usize) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + n.min(self.len)]
    }
}

const IO_CHUNK: usize = 1 << 20;

fn progress(total_bytes: u64) -> indicatif::ProgressBar {
    if total_bytes < 64 << 20 || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total_bytes);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn cmd_read(
    dev: &MappedDevice,
    start: u64,
    sectors: Option<u64>,
    output: Option<PathBuf>,
) -> Result<()> {
    let size = dev.size();
    let count = match sectors {
        Some(n) => n,
        None => size.0.checked_sub(start).ok_or(Error::OutOfRange {
            sector: Sector(start),
            count: SectorCount(0),
            size,
        })?,
    };
    crate::volume::check_range(size, Sector(start), SectorCount(count))?;
    let mut out: Box<dyn Write> = match &output {
        Some(p) => Box::new(File::create(p).map_err(Error::io(&p.display()))?),
        None => Box::new(io::stdout().lock()),
    };
    let out_name = output
        .as_ref()
        .map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let bar = progress(SectorCount(count).bytes());
    let mut buf = AlignedBuf::new(IO_CHUNK);
    let chunk_sectors = (IO_CHUNK / SECTOR_SIZE) as u64;
    let mut at = start;
    let end = start + count;
    while at < end {
        let n = (end - at).min(chunk_sectors);
        let bytes = SectorCount(n).usize_bytes()?;
        let b = buf.get(bytes);
        dev.read(Sector(at), b)?;
        out.write_all(b).map_err(Error::io(&out_name))?;
        bar.inc(bytes as u64);
        at += n;
    }
    out.flush().map_err(Error::io(&out_name))?;
    bar.finish_and_clear();
    Ok(())
}

fn fill(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn cmd_write(dev: &MappedDevice, start: u64, input: Option<PathBuf>) -> Result<()> {
    let in_name = input
        .as_ref()
        .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
    let mut reader: Box<dyn Read> = match &input {
        Some(p) => {
            let f = File::open(p).map_err(Error::io(&p.display()))?;
            let len = f.metadata().map_err(Error::io(&p.display()))?.len();
            // Check a regular file up front so a bad input writes nothing.
            if f.metadata().is_ok_and(|m| m.is_file()) {
                let bytes = usize::try_from(len).unwrap_or(usize::MAX);
                let count = SectorCount::from_bytes(bytes)?;
                crate::volume::check_range(dev.size(), Sector(start), count)?;
            }
            Box::new(f)
        }
        None => Box::new(io::stdin().lock()),
    };
    let mut buf = AlignedBuf::new(IO_CHUNK);
    let mut at = start;
    loop {
        let b = buf.get(IO_CHUNK);
        let n = fill(&mut reader, b).map_err(Error::io(&in_name))?;
        if n == 0 {
            break;
        }
        if n % SECTOR_SIZE != 0 {
            return Err(Error::invalid(
                "input",
                format!(
                    "{in_name} ends with a partial sector ({} bytes); {} whole sectors were written",
                    n % SECTOR_SIZE,
                    at - start
                ),
            ));
        }
        dev.write(Sector(at), &b[..n])?;
        at += (n / SECTOR_SIZE) as u64;
    }
    dev.flush()
}

fn run_command(cli: Cli) -> Result<()> {
    let mut stdout = io::stdout().lock();
    let out = |s: &str, stdout: &mut io::StdoutLock<'_>| {
        stdout.write_all(s.as_bytes()).map_err(Error::io(&"stdout"))
    };
    match cli.command {
        Command::Verity { cmd } => crate::targets::verity::cli::run(cmd),
        Command::Thin { cmd } => crate::targets::thin::cli::run(cmd),
        Command::Check {
            file,
            concise,
            read_only,
        } => {
            let text = read_input(&file)?;
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
            let text = read_input(&file)?;
            if concise {
                let specs = parse_concise(utf8(text, "input")?.trim_end_matches('\n'))?;
                out(&format!("{}\n", format_concise(&specs, keys)), &mut stdout)
            } else {
                out(&parse_table(&text)?.to_text(keys), &mut stdout)
            }
        }
        Command::Read {
            spec,
            start,
            sectors,
            output,
        } => {
            drop(stdout);
            cmd_read(&*spec.open()?, start, sectors, output)
        }
        Command::Write { spec, start, input } => cmd_write(&*spec.open()?, start, input),
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
        Command::Shell { spec } => {
            drop(stdout);
            crate::shell::run(&*spec.open()?, io::stdin().lock(), io::stdout().lock())
        }
    }
}

/// One line: the error and its causes, `: `-separated.
#[must_use]
pub fn error_chain(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Parse the command line, run, and return the process exit status.
#[must_use]
pub fn run() -> i32 {
    let cli = Cli::parse();
    match run_command(cli) {
        Ok(()) => 0,
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("dmemu: {}", error_chain(&e));
            e.errno()
        }
    }
}
