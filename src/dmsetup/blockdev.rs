//! The `blockdev` command (`argv[0]` dispatch) for image files and dmemu device nodes:
//! `--getsz`, `--getsize64`, `--getss`, `--getpbsz`, `--getiomin`, `--getioopt`, `--getbsz`,
//! `--getro`, `--getra`, `--getfra`, `--report`, `--flushbufs`, as util-linux prints them.
//! A device path that is not a file (`/dev/mapper/NAME`, `$DM_DEV_DIR/mapper/NAME` without a
//! node) is sized from the device host's table.

use std::os::unix::fs::FileTypeExt;

use super::host::{state_dir, Request};
use super::verbs::{Env, Output};

const SECTOR: u64 = 512;
const BLOCK: u64 = 4096;
const READ_AHEAD: u64 = 256;

struct Dev {
    size: u64,
    ro: bool,
}

fn host_size(path: &str) -> Option<u64> {
    let name = path.rsplit_once("/mapper/").map(|(_, n)| n)?;
    let state = state_dir().ok()?;
    let req = Request {
        argv: vec!["table".into(), name.to_string()],
        cwd: "/".into(),
        env: Env {
            prog: "dmsetup".into(),
            stdin: None,
            dev_dir: state.dev_dir().display().to_string(),
            utf8: false,
        },
    };
    let out = super::client::call(&state, &req, false, || Output {
        code: 1,
        ..Output::default()
    })
    .ok()?;
    if out.code != 0 {
        return None;
    }
    let mut sectors = 0u64;
    for l in out.stdout().lines() {
        sectors += l.split(' ').nth(1)?.parse::<u64>().ok()?;
    }
    Some(sectors * SECTOR)
}

fn open(path: &str) -> Result<Dev, String> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_file() => Ok(Dev {
            size: md.len(),
            ro: md.permissions().readonly(),
        }),
        Ok(md) if md.file_type().is_block_device() => {
            use std::io::{Seek, SeekFrom};
            let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
            let size = f.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
            Ok(Dev { size, ro: false })
        }
        Ok(_) => Err("Inappropriate ioctl for device".to_string()),
        Err(e) => match host_size(path) {
            Some(size) => Ok(Dev { size, ro: false }),
            None => Err(super::verbs::strerror(e.raw_os_error().unwrap_or(2))),
        },
    }
}

fn usage() -> String {
    "\nUsage:\n blockdev [-v|-q] commands devices\n blockdev --report [devices]\n blockdev -h|-V\n"
        .to_string()
}

/// `blockdev ARGS...` (without the program name). Returns the exit status.
pub fn main(argv: &[String]) -> i32 {
    let (out, code) = run(argv);
    out.print();
    code
}

fn run(argv: &[String]) -> (Output, i32) {
    let mut out = Output::default();
    let (cmds, devs): (Vec<&String>, Vec<&String>) = argv.iter().partition(|a| a.starts_with('-'));
    let cmds: Vec<&str> = cmds
        .into_iter()
        .map(String::as_str)
        .filter(|c| *c != "-q" && *c != "-v")
        .collect();
    if cmds == ["--report"] {
        out.out("RO    RA   SSZ   BSZ        StartSec            Size   Device\n");
        for d in &devs {
            match open(d) {
                Ok(dev) => out.out(&format!(
                    "{}  {:>4}  {:>4}  {:>4}  {:>14}  {:>14}   {}\n",
                    if dev.ro { "ro" } else { "rw" },
                    READ_AHEAD,
                    SECTOR,
                    BLOCK,
                    0,
                    dev.size,
                    d
                )),
                Err(e) => {
                    out.err(&format!("blockdev: cannot open {d}: {e}\n"));
                    return (out, 1);
                }
            }
        }
        return (out, 0);
    }
    if cmds.is_empty() || devs.is_empty() {
        out.err("blockdev: no device specified\n");
        out.err(&usage());
        return (out, 1);
    }
    for d in &devs {
        let dev = match open(d) {
            Ok(v) => v,
            Err(e) => {
                out.err(&format!("blockdev: cannot open {d}: {e}\n"));
                return (out, 1);
            }
        };
        for c in &cmds {
            let v = match *c {
                "--getsz" => dev.size / SECTOR,
                "--getsize64" => dev.size,
                "--getss" | "--getpbsz" | "--getiomin" => SECTOR,
                "--getioopt" | "--getalignoff" => 0,
                "--getbsz" => BLOCK,
                "--getro" => u64::from(dev.ro),
                "--getra" | "--getfra" => READ_AHEAD,
                "--flushbufs" => {
                    if let Ok(f) = std::fs::File::open(d) {
                        let _ = f.sync_all();
                    }
                    continue;
                }
                other => {
                    out.err(&format!("blockdev: Unknown command: {other}\n"));
                    out.err(&usage());
                    return (out, 1);
                }
            };
            out.out(&format!("{v}\n"));
        }
    }
    (out, 0)
}
