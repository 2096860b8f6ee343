//! Device paths in tables and device arguments, resolved as realpath(3) resolves them
//! (symlinks followed, `.` and `..` folded) but without ever looking inside a device-node
//! directory: a path that reaches `DIR/NAME` for one of those directories names the mapped
//! device `NAME`. The device host mounts its own device nodes (FUSE) at one of them, and a
//! host that opened one of its own node files as an image file would serve its own I/O, so
//! even a `stat` in there is avoided.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// How many symlinks one resolution follows (the kernel's and glibc's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// What a path resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// `DIR/NAME` for a device-node directory `DIR`: the device `NAME`.
    Node(String),
    /// A device-node directory itself.
    NodeDir,
    /// Anything else: the resolved path (from a missing component on, taken as written).
    Path(PathBuf),
}

/// Resolve `path` (relative to the working directory) with `dirs` the device-node
/// directories, each canonical. Errors: more than 40 symlinks (ELOOP), a path going on
/// below a device node (ENOTDIR, as a node is no directory), a node name that is not UTF-8.
pub fn resolve(path: &Path, dirs: &[PathBuf]) -> io::Result<Resolved> {
    let mut cur = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir()?
    };
    let mut rest: VecDeque<OsString> = components(path);
    let mut hops = 0;
    while let Some(c) = rest.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        if dirs.contains(&cur) {
            if !rest.is_empty() {
                return Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::NOTDIR.raw_os_error(),
                ));
            }
            let name = c.into_string().map_err(|c| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a device name", Path::new(&c).display()),
                )
            })?;
            return Ok(Resolved::Node(name));
        }
        let next = cur.join(&c);
        if dirs.contains(&next) {
            cur = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(
                        rustix::io::Errno::LOOP.raw_os_error(),
                    ));
                }
                let target = std::fs::read_link(&next)?;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                for t in components(&target).into_iter().rev() {
                    rest.push_front(t);
                }
            }
            // A missing component: the rest is taken as written (`..` then goes up
            // lexically), so a node directory not made yet is still recognised.
            _ => cur = next,
        }
    }
    Ok(if dirs.contains(&cur) {
        Resolved::NodeDir
    } else {
        Resolved::Path(cur)
    })
}

/// The named components of `path` (`..` kept, `.` and the root dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        let nodes = root.join("dev/mapper");
        std::fs::create_dir_all(&nodes).unwrap();
        std::fs::write(root.join("img"), b"x").unwrap();
        (t, root)
    }

    #[test]
    fn symlinks_and_dotdot_into_the_node_dir_name_the_device() {
        let (_t, root) = setup();
        let dirs = [root.join("dev/mapper")];
        let node = |p: &Path| resolve(p, &dirs).unwrap();
        symlink(root.join("dev/mapper/a"), root.join("x")).unwrap();
        symlink("dev/mapper/b", root.join("rel")).unwrap();
        symlink("dev", root.join("d")).unwrap();
        symlink(root.join("x"), root.join("x2")).unwrap();
        symlink(root.join("dev/mapper"), root.join("m")).unwrap();
        assert_eq!(node(&root.join("x")), Resolved::Node("a".into()));
        assert_eq!(node(&root.join("x2")), Resolved::Node("a".into()));
        assert_eq!(node(&root.join("rel")), Resolved::Node("b".into()));
        assert_eq!(node(&root.join("d/mapper/c")), Resolved::Node("c".into()));
        assert_eq!(node(&root.join("m/e")), Resolved::Node("e".into()));
        assert_eq!(
            node(&root.join("d/./../dev/mapper/f")),
            Resolved::Node("f".into())
        );
        assert_eq!(node(&root.join("m")), Resolved::NodeDir);
        assert_eq!(
            resolve(&root.join("m/a/b"), &dirs)
                .unwrap_err()
                .raw_os_error(),
            Some(20)
        );
    }

    #[test]
    fn other_paths_resolve_as_realpath_does() {
        let (_t, root) = setup();
        let dirs = [root.join("dev/mapper")];
        symlink("img", root.join("l")).unwrap();
        symlink("dev/../l", root.join("l2")).unwrap();
        let real = |p: &Path| resolve(p, &dirs).unwrap();
        assert_eq!(real(&root.join("l2")), Resolved::Path(root.join("img")));
        assert_eq!(
            real(&root.join("dev/../img")),
            Resolved::Path(std::fs::canonicalize(root.join("img")).unwrap())
        );
        // A missing file: resolved as far as it exists, then as written.
        assert_eq!(
            real(&root.join("l/../nosuch/x/../y")),
            Resolved::Path(root.join("nosuch/y"))
        );
        assert_eq!(
            resolve(&root.join("nosuch/../dev/mapper/a"), &dirs).unwrap(),
            Resolved::Node("a".into())
        );
        let later = [root.join("run/mapper")];
        assert_eq!(
            resolve(&root.join("run/./mapper/a"), &later).unwrap(),
            Resolved::Node("a".into())
        );
        symlink("loop", root.join("loop")).unwrap();
        assert_eq!(
            resolve(&root.join("loop"), &dirs)
                .unwrap_err()
                .raw_os_error(),
            Some(40)
        );
    }
}
