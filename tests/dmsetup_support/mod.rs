//! Running dmsetup command lines recorded on the 6.12 oracle (tests/fixtures/dmsetup) against
//! dmemu's `dmsetup`: a temp dir with `dmsetup` and `blockdev` symlinks to the dmemu binary
//! first on PATH, a private state dir, and one image file per oracle disk. A command line
//! runs literally (bash), with `/dev/vdX` replaced by the image; the kernel's output is
//! compared after naming each disk the way dmemu prints it (the kernel prints a disk as its
//! `254:N` number, dmemu an image file as its path).

#![allow(unreachable_pub, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// One `### id` step of a fixture.
#[derive(Debug, Clone)]
pub struct Step {
    /// The step id.
    pub id: String,
    /// The command line.
    pub cmd: String,
    /// Its stdout and stderr, merged.
    pub out: String,
    /// Its exit status.
    pub rc: i32,
}

/// The steps of `tests/fixtures/dmsetup/FILE`, in order (dmesg lines dropped).
pub fn steps(file: &str) -> Vec<Step> {
    let text = std::fs::read_to_string(format!("tests/fixtures/dmsetup/{file}")).unwrap();
    let mut out: Vec<Step> = Vec::new();
    let mut in_cmd = false;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("### ") {
            out.push(Step {
                id: id.to_string(),
                cmd: String::new(),
                out: String::new(),
                rc: -1,
            });
            in_cmd = false;
            continue;
        }
        let s = out.last_mut().expect("a step header first");
        if let Some(c) = line.strip_prefix("$ ").filter(|_| s.cmd.is_empty()) {
            s.cmd = c.to_string();
            in_cmd = true;
            continue;
        }
        if let Some(rc) = line.strip_prefix("rc=") {
            s.rc = rc.parse().unwrap();
            in_cmd = false;
        } else if line.starts_with("dmesg: ") {
        } else if in_cmd && !cmd_complete(&s.cmd) {
            s.cmd.push('\n');
            s.cmd.push_str(line);
        } else {
            in_cmd = false;
            s.out.push_str(line);
            s.out.push('\n');
        }
    }
    out
}

/// Whether a command line's quotes are balanced (a multi-line `--table "..."`).
fn cmd_complete(cmd: &str) -> bool {
    let mut dq = false;
    let mut sq = false;
    for c in cmd.chars() {
        match c {
            '"' if !sq => dq = !dq,
            '\'' if !dq => sq = !sq,
            _ => {}
        }
    }
    !dq && !sq
}

/// The oracle's disks as the kernel numbered them (virtblk major 254, 16 minors each).
const DISKS: &[&str] = &["vda", "vdb", "vdc", "vdd", "vde"];

/// A temp dir with the dmsetup and blockdev entry points and image files.
pub struct Sandbox {
    /// The temp dir (cwd of every command).
    pub dir: tempfile::TempDir,
    /// `disks[i]` stands for `/dev/vd{a+i}`.
    pub disks: Vec<PathBuf>,
    /// Loop devices of the oracle's script: (`/dev/loopN`, `7:N`, the file in `dir` it
    /// showed), named by the file here.
    pub loops: Vec<(String, String, PathBuf)>,
}

impl Sandbox {
    /// Image files of `sizes` bytes (sparse, zero).
    pub fn new(sizes: &[u64]) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for name in ["dmsetup", "blockdev"] {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dmemu"), bin.join(name)).unwrap();
        }
        let disks = sizes
            .iter()
            .zip(DISKS)
            .map(|(&size, name)| {
                let p = dir.path().join(format!("{name}.img"));
                std::fs::File::create(&p).unwrap().set_len(size).unwrap();
                p
            })
            .collect();
        Sandbox {
            dir,
            disks,
            loops: Vec::new(),
        }
    }

    /// The oracle's `/dev/loopN` over `file` (relative to the guest's and the sandbox's
    /// working directory) is the file itself here.
    #[must_use]
    pub fn with_loop(mut self, n: u32, file: &str) -> Sandbox {
        let path = self.dir.path().join(file);
        self.loops
            .push((format!("/dev/loop{n}"), format!("7:{n}"), path));
        self
    }

    /// The state dir.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Whether device nodes can be mounted here (the host mounts them with FUSE).
    pub fn nodes() -> bool {
        std::path::Path::new("/dev/fuse").exists()
    }

    /// `cmd` with the oracle's disk paths replaced by the images, and `/dev/mapper/NAME`
    /// by dmemu's device node `$DM_DEV_DIR/mapper/NAME` (where FUSE is available).
    pub fn local_cmd(&self, cmd: &str) -> String {
        let mut c = cmd.to_string();
        if Self::nodes() {
            c = c.replace(
                "/dev/mapper/",
                &format!("{}/dev/mapper/", self.state().display()),
            );
        }
        for (i, p) in self.disks.iter().enumerate() {
            c = c.replace(&format!("/dev/{}", DISKS[i]), &p.display().to_string());
        }
        for (dev, _, p) in &self.loops {
            c = c.replace(dev.as_str(), &p.display().to_string());
        }
        c
    }

    /// Run a command line with bash (stdout and stderr merged, stdin /dev/null).
    pub fn run(&self, cmd: &str) -> (String, i32) {
        let bin = self.dir.path().join("bin");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 2>&1; {}", self.local_cmd(cmd)))
            .current_dir(self.dir.path())
            .env("PATH", path)
            .env("DMEMU_DIR", self.state())
            .env("LC_ALL", "C")
            .env_remove("DM_DEV_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        // dmemu's default DM_DEV_DIR is inside the state dir; the kernel's is /dev.
        text = text.replace(&format!("{}/dev/", self.state().display()), "/dev/");
        (text, out.status.code().unwrap_or(-1))
    }

    /// The kernel's output with each disk named as dmemu prints an image file.
    pub fn expected(&self, kernel: &str) -> String {
        let mut k = kernel.to_string();
        for (i, p) in self.disks.iter().enumerate().rev() {
            let p = p.display().to_string();
            k = k.replace(&format!("254:{}", i * 16), &p);
            k = k.replace(&format!("(254, {})", i * 16), &format!("({p})"));
            k = k.replace(&format!("/dev/{}", DISKS[i]), &p);
            // A disk's block device name (deps/ls `-o blkdevname`) is the file's name.
            k = k.replace(&format!("({})", DISKS[i]), &format!("({}.img)", DISKS[i]));
        }
        for (dev, devno, p) in &self.loops {
            let p = p.display().to_string();
            k = replace_devno(&k, devno, &p);
            let (ma, mi) = devno.split_once(':').unwrap();
            k = k.replace(&format!("({ma}, {mi})"), &format!("({p})"));
            k = k.replace(dev.as_str(), &p);
        }
        k
    }

    /// Run every step of `steps` not in `skip`, in order; the steps whose output or exit
    /// status differs from the kernel's, as a report (empty when all match).
    pub fn replay(&self, steps: &[Step], skip: &[(&str, &str)]) -> String {
        let mut report = String::new();
        for s in steps {
            if let Some((_, why)) = skip.iter().find(|(id, _)| *id == s.id) {
                eprintln!("skipping step {}: {why}", s.id);
                continue;
            }
            let (out, rc) = self.run(&s.cmd);
            let want = self.expected(&s.out);
            if out != want || rc != s.rc {
                report.push_str(&format!(
                    "### {}\n$ {}\n--- kernel (rc={}):\n{}--- dmemu (rc={rc}):\n{out}\n",
                    s.id, s.cmd, s.rc, want
                ));
            }
        }
        report
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Leave no host behind: removing the last device ends it.
        let _ = self.run("dmsetup remove_all --force");
    }
}

/// `text` with each `devno` (`MAJ:MIN`) that is a whole number pair (no digit before or
/// after) replaced by `with`.
fn replace_devno(text: &str, devno: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(devno) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + devno.len()..].chars().next();
        let whole = !before.is_some_and(|c| c.is_ascii_digit() || c == ':')
            && !after.is_some_and(|c| c.is_ascii_digit() || c == ':');
        out.push_str(&rest[..i]);
        out.push_str(if whole { with } else { devno });
        rest = &rest[i + devno.len()..];
    }
    out.push_str(rest);
    out
}

/// Whether `path` holds an executable named `tool` on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
}
