//! `dmemu shell`: a script of messages and I/O against one live device, for targets whose
//! state lives in memory (dust's bad-block list, flakey's schedule, delay's held requests).
//!
//! One command per input line; blank lines and lines starting with `#` are skipped. Each
//! command prints its reply; a failing command prints `error: <errno name>: <message>` and
//! the script goes on.
//!
//! | command | reply |
//! | --- | --- |
//! | `message <sector> <words..>` | the target's reply text (nothing when it has none) |
//! | `read <sector> <count>` | `ok <runs>`: the data as byte runs, e.g. `00*1024 ab*512` |
//! | `write <sector> <count> <byte>` | `ok`, after writing `count` sectors of `byte` |
//! | `flush` / `discard <sector> <count>` | `ok` |
//! | `status` / `table` | the `dmsetup status` / `dmsetup table` lines |
//! | `sleep <ms>` | nothing; waits on the system clock |
//! | `seed <n>` | `ok`; restarts the random generator of every flakey line |

use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{errno, Error, Result};
use crate::mapped_device::MappedDevice;
use crate::table::args::parse_llu;
use crate::targets::{Flakey, Keys, Target};
use crate::units::{Sector, SectorCount};
use crate::volume::Volume;

/// Longest read or write one command may do (64 MiB), so a script cannot make the shell
/// allocate without bound.
const MAX_IO_SECTORS: u64 = 131_072;
/// Byte runs printed for a read before the rest is summarised.
const MAX_RUNS: usize = 16;

/// Run the commands read from `input` against `dev`, writing replies to `out`.
pub fn run(dev: &MappedDevice, input: impl BufRead, out: impl Write) -> Result<()> {
    run_with_sleep(dev, input, out, std::thread::sleep)
}

/// [`run`] with `sleep <ms>` handed to `sleep` (a manual clock's advance in tests and the
/// fuzz driver, so a script never waits on the system clock).
pub fn run_with_sleep(
    dev: &MappedDevice,
    input: impl BufRead,
    mut out: impl Write,
    mut sleep: impl FnMut(Duration),
) -> Result<()> {
    for (i, line) in input.lines().enumerate() {
        let line = line.map_err(Error::io(&"stdin"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        let reply = match command(dev, &words, &mut sleep) {
            Ok(r) => r,
            Err(e) => format!(
                "error: {}: line {}: {}\n",
                errno_name(e.errno()),
                i + 1,
                e.chain()
            ),
        };
        out.write_all(reply.as_bytes())
            .and_then(|()| out.flush())
            .map_err(Error::io(&"stdout"))?;
    }
    Ok(())
}

fn errno_name(e: i32) -> &'static str {
    match e {
        errno::EIO => "EIO",
        errno::ENODEV => "ENODEV",
        errno::EINVAL => "EINVAL",
        errno::ENOSPC => "ENOSPC",
        errno::EROFS => "EROFS",
        errno::EOPNOTSUPP => "EOPNOTSUPP",
        _ => "error",
    }
}

fn number(words: &[&str], i: usize, what: &'static str) -> Result<u64> {
    let w = words
        .get(i)
        .ok_or_else(|| Error::invalid(what, "missing"))?;
    parse_llu(w)
        .ok_or_else(|| Error::invalid(what, format!("{} is not a number", crate::error::quote(w))))
}

fn arity(words: &[&str], n: usize, usage: &str) -> Result<()> {
    if words.len() == n {
        Ok(())
    } else {
        Err(Error::invalid("command", format!("usage: {usage}")))
    }
}

fn io_len(count: u64) -> Result<usize> {
    if count > MAX_IO_SECTORS {
        return Err(Error::invalid(
            "count",
            format!("{count} sectors is more than the shell's {MAX_IO_SECTORS} per command"),
        ));
    }
    SectorCount(count).usize_bytes()
}

fn command(dev: &MappedDevice, words: &[&str], sleep: &mut dyn FnMut(Duration)) -> Result<String> {
    match words[0] {
        "message" => {
            if words.len() < 3 {
                return Err(Error::invalid(
                    "command",
                    "usage: message <sector> <words..>",
                ));
            }
            let reply = dev.message(Sector(number(words, 1, "sector")?), &words[2..])?;
            Ok(if reply.is_empty() || reply.ends_with('\n') {
                reply
            } else {
                format!("{reply}\n")
            })
        }
        "read" => {
            arity(words, 3, "read <sector> <count>")?;
            let mut buf = vec![0u8; io_len(number(words, 2, "count")?)?];
            dev.read(Sector(number(words, 1, "sector")?), &mut buf)?;
            Ok(format!("ok {}\n", runs(&buf)))
        }
        "write" => {
            arity(words, 4, "write <sector> <count> <byte>")?;
            let byte = u8::try_from(number(words, 3, "byte")?)
                .map_err(|_| Error::invalid("byte", "must be 0..255"))?;
            let buf = vec![byte; io_len(number(words, 2, "count")?)?];
            dev.write(Sector(number(words, 1, "sector")?), &buf)?;
            Ok("ok\n".into())
        }
        "flush" => {
            arity(words, 1, "flush")?;
            dev.flush()?;
            Ok("ok\n".into())
        }
        "discard" => {
            arity(words, 3, "discard <sector> <count>")?;
            let count = SectorCount(number(words, 2, "count")?);
            dev.discard(Sector(number(words, 1, "sector")?), count)?;
            Ok("ok\n".into())
        }
        "status" => Ok(dev.status_text()),
        "table" => Ok(dev.table_text(Keys::Hidden)),
        "sleep" => {
            arity(words, 2, "sleep <ms>")?;
            sleep(Duration::from_millis(number(words, 1, "ms")?));
            Ok(String::new())
        }
        "seed" => {
            arity(words, 2, "seed <n>")?;
            let seed = number(words, 1, "seed")?;
            let live = dev.live_table();
            for seg in live.iter().flat_map(|t| t.segments()) {
                let any: Arc<dyn std::any::Any + Send + Sync> =
                    Arc::clone(&seg.target) as Arc<dyn Target>;
                if let Ok(f) = any.downcast::<Flakey>() {
                    f.reseed(seed);
                }
            }
            Ok("ok\n".into())
        }
        other => Err(Error::invalid(
            "command",
            format!(
                "unknown {} (message, read, write, flush, discard, status, table, \
                 sleep, seed)",
                crate::error::quote(other)
            ),
        )),
    }
}

/// `00*1024 ab*512`: the data as runs of equal bytes, at most `MAX_RUNS` of them.
#[must_use]
pub fn runs(data: &[u8]) -> String {
    let mut out = String::new();
    let mut n = 0;
    let mut rest = data;
    while let Some(&b) = rest.first() {
        let len = rest.iter().take_while(|&&x| x == b).count();
        if n == MAX_RUNS {
            let _ = write!(out, " ...{} more bytes", rest.len());
            break;
        }
        if n > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{b:02x}*{len}");
        n += 1;
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::table::{DeviceSpec, Table, TableMode};
    use crate::volume::MemVolume;

    fn device(table: &str) -> Arc<MappedDevice> {
        let reg = Registry::new();
        reg.insert_volume("disk", Arc::new(MemVolume::new(SectorCount(64)).unwrap()));
        reg.create(&DeviceSpec {
            name: "t".into(),
            uuid: String::new(),
            minor: None,
            mode: TableMode::ReadWrite,
            table: Table::parse(table).unwrap(),
        })
        .unwrap()
    }

    fn script(dev: &MappedDevice, text: &str) -> String {
        let mut out = Vec::new();
        run(dev, text.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn shell_runs_dust_script_with_kernel_replies_and_keeps_going_after_errors() {
        let dev = device("0 64 dust disk 0 512");
        let out = script(
            &dev,
            "write 0 2 171\n# comment\n\nmessage 0 addbadblock 1\nmessage 0 enable\n\
             read 0 2\nread 0 1\nmessage 0 countbadblocks\nwrite 1 1 7\nread 0 2\n\
             message 0 removebadblock 1\nstatus\nbogus\n",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ok");
        assert!(lines[1].starts_with("error: EIO: line 6: "), "{}", lines[1]);
        assert_eq!(lines[2], "ok ab*512");
        assert_eq!(lines[3], "countbadblocks: 1 badblock(s) found");
        assert_eq!(lines[4], "ok");
        assert_eq!(lines[5], "ok ab*512 07*512");
        assert!(
            lines[6].starts_with("error: EINVAL: line 11: "),
            "{}",
            lines[6]
        );
        assert!(lines[6].ends_with("block 1 not found in badblocklist"));
        assert_eq!(lines[7], "0 64 dust disk fail_read_on_bad_block verbose");
        assert!(lines[8].starts_with("error: EINVAL: line 13: "));
        assert_eq!(lines.len(), 9);
    }

    #[test]
    fn shell_refuses_oversized_io_and_bad_numbers() {
        let dev = device("0 64 zero");
        let out = script(&dev, "read 0 999999999\nwrite 0 1 256\nread x 1\n");
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("error: EINVAL"))
                .count(),
            3
        );
    }

    #[test]
    fn runs_summarise_long_data() {
        assert_eq!(runs(&[0, 0, 1]), "00*2 01*1");
        let alternating: Vec<u8> = (0..40).map(|i| u8::from(i % 2 == 0)).collect();
        assert!(runs(&alternating).ends_with(" ...24 more bytes"));
    }
}
