//! The `dmsetup` command (also `dmemu dmsetup`): parse the command line as dmsetup does,
//! send it to the device host (starting one for a command that creates a device), print
//! the answer. Without a host, commands that create nothing run against an empty registry
//! here, which answers exactly as a host with no devices would.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::args;
use super::host::{read_msg, state_dir, write_msg, Request, Response, StateDir};
use super::verbs::{creates_devices, needs_stdin, Env, Frontend, Output};
use crate::registry::Registry;

/// How long a client waits for a host it started to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn utf8_locale() -> bool {
    for k in ["LC_ALL", "LC_CTYPE", "LANG"] {
        if let Ok(v) = std::env::var(k) {
            if !v.is_empty() {
                let v = v.to_ascii_lowercase();
                return v.contains("utf-8") || v.contains("utf8");
            }
        }
    }
    false
}

/// `dmsetup ARGS...` (`argv` without the program name). Returns the exit status.
pub fn main(prog: &str, argv: Vec<String>) -> i32 {
    let inv = match args::parse(prog, &argv) {
        Ok(i) => i,
        Err(msg) => {
            eprintln!("{msg}Couldn't process command line.");
            return 1;
        }
    };
    let state = match state_dir() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 1;
        }
    };
    let dev_dir = std::env::var("DM_DEV_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| state.dev_dir().display().to_string());
    let mut stdin = None;
    if needs_stdin(&inv) {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin()
            .take(super::host::MAX_MESSAGE as u64)
            .read_to_end(&mut buf)
        {
            eprintln!("{prog}: reading the table from stdin: {e}");
            return 1;
        }
        stdin = Some(buf);
    }
    let env = Env {
        prog: prog.to_string(),
        stdin,
        dev_dir,
        utf8: utf8_locale(),
    };
    let req = Request {
        argv,
        cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
        env,
    };
    match call(&state, &req, creates_devices(&inv), || {
        Frontend::new(Registry::new()).run(&inv, &req.env)
    }) {
        Ok(out) => out.print(),
        Err(e) => {
            eprintln!("{prog}: {e}");
            1
        }
    }
}

/// Send `req` to the host of `state`. With no host running: start one when `start`, else
/// answer with `local` (no devices exist).
pub fn call(
    state: &StateDir,
    req: &Request,
    start: bool,
    local: impl FnOnce() -> Output,
) -> Result<Output, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut local = Some(local);
    let mut lost = String::new();
    loop {
        if let Ok(mut s) = UnixStream::connect(state.socket()) {
            match exchange(&mut s, req) {
                Ok(Response::Done(mut out)) => {
                    out.err_first(&lost);
                    return Ok(out);
                }
                Ok(Response::Retry) => {}
                // The host went away mid-request (exiting, or killed): ask again.
                Err(_) => {}
            }
        } else {
            // Nobody listens. If no host holds the lock, none runs.
            let lockf = state
                .open_lock()
                .map_err(|e| format!("{}: {e}", state.lock().display()))?;
            if lockf.try_lock().is_ok() {
                if let Some(l) = state.take_lost() {
                    lost.push_str(&l);
                }
                if !start {
                    let mut out = (local.take().expect("local runs once"))();
                    out.err_first(&lost);
                    return Ok(out);
                }
                let _ = std::fs::remove_file(state.socket());
                drop(lockf);
                spawn_host(state)?;
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the device host in {} did not answer within {} s (see {}/host.log)",
                state.dir.display(),
                START_TIMEOUT.as_secs(),
                state.dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn exchange(s: &mut UnixStream, req: &Request) -> std::io::Result<Response> {
    write_msg(s, req)?;
    read_msg(s)
}

fn spawn_host(state: &StateDir) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the dmemu binary: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.dir.join("host.log"))
        .map_err(|e| format!("{}/host.log: {e}", state.dir.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg0("dmemu")
        .arg("__dmsetup-host")
        .arg(&state.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    cmd.spawn()
        .map(drop)
        .map_err(|e| format!("starting the device host: {e}"))
}
