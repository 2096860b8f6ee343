//! dmsetup's command line grammar (libdm/dm-tools/dmsetup.c `_process_switches`): GNU
//! `getopt_long` with argument permutation, so options may come before or after the verb;
//! long options may be abbreviated to a unique prefix and take `--opt=VALUE` or `--opt
//! VALUE`; short options cluster (`-cv`) and take `-uX` or `-u X`; `--` ends the options.
//! The errors are getopt's words followed by dmsetup's `Couldn't process command line.`

use std::collections::BTreeMap;

/// Whether a long option takes an argument.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arg {
    None,
    Required,
}

/// dmsetup 1.02.185's long options (the name is also the key under which a switch is
/// counted). Options dmemu has no use for are accepted and ignored, as they are on a
/// system without the matching feature.
const LONG: &[(&str, Arg)] = &[
    ("addnodeoncreate", Arg::None),
    ("addnodeonresume", Arg::None),
    ("alias", Arg::Required),
    ("alldevices", Arg::None),
    ("allprograms", Arg::None),
    ("allregions", Arg::None),
    ("area", Arg::None),
    ("areas", Arg::Required),
    ("areasize", Arg::Required),
    ("bounds", Arg::Required),
    ("checks", Arg::None),
    ("clear", Arg::None),
    ("columns", Arg::None),
    ("concise", Arg::None),
    ("count", Arg::Required),
    ("deferred", Arg::None),
    ("exec", Arg::Required),
    ("filemap", Arg::None),
    ("follow", Arg::Required),
    ("force", Arg::None),
    ("foreground", Arg::None),
    ("gid", Arg::Required),
    ("group", Arg::None),
    ("groupid", Arg::Required),
    ("headings", Arg::Required),
    ("help", Arg::None),
    ("histogram", Arg::None),
    ("inactive", Arg::None),
    ("interval", Arg::Required),
    ("length", Arg::Required),
    ("major", Arg::Required),
    ("manglename", Arg::Required),
    ("minor", Arg::Required),
    ("mode", Arg::Required),
    ("nameprefixes", Arg::None),
    ("noflush", Arg::None),
    ("nogroup", Arg::None),
    ("noheadings", Arg::None),
    ("nolockfs", Arg::None),
    ("nomonitor", Arg::None),
    ("noopencount", Arg::None),
    ("nosuffix", Arg::None),
    ("notable", Arg::None),
    ("notimesuffix", Arg::None),
    ("noudevrules", Arg::None),
    ("noudevsync", Arg::None),
    ("options", Arg::Required),
    ("precise", Arg::None),
    ("programid", Arg::Required),
    ("raw", Arg::None),
    ("readahead", Arg::Required),
    ("readonly", Arg::None),
    ("region", Arg::None),
    ("regionid", Arg::Required),
    ("regions", Arg::Required),
    ("relative", Arg::None),
    ("retry", Arg::None),
    ("rows", Arg::None),
    ("segments", Arg::None),
    ("select", Arg::Required),
    ("separator", Arg::Required),
    ("setuuid", Arg::None),
    ("showkeys", Arg::None),
    ("sort", Arg::Required),
    ("start", Arg::Required),
    ("table", Arg::Required),
    ("target", Arg::Required),
    ("tree", Arg::None),
    ("udevcookie", Arg::Required),
    ("uid", Arg::Required),
    ("unbuffered", Arg::None),
    ("units", Arg::Required),
    ("unquoted", Arg::None),
    ("userdata", Arg::Required),
    ("uuid", Arg::Required),
    ("verbose", Arg::None),
    ("verifyudev", Arg::None),
    ("version", Arg::None),
    ("yes", Arg::None),
];

/// The short options (`cCfG:hj:m:M:no:O:rS:u:U:vy`) and the long switch each counts as.
fn short(c: char) -> Option<(&'static str, Arg)> {
    Some(match c {
        'c' | 'C' => ("columns", Arg::None),
        'f' => ("force", Arg::None),
        'G' => ("gid", Arg::Required),
        'h' => ("help", Arg::None),
        'j' => ("major", Arg::Required),
        'm' => ("minor", Arg::Required),
        'M' => ("mode", Arg::Required),
        'n' => ("notable", Arg::None),
        'o' => ("options", Arg::Required),
        'O' => ("sort", Arg::Required),
        'r' => ("readonly", Arg::None),
        'S' => ("select", Arg::Required),
        'u' => ("uuid", Arg::Required),
        'U' => ("uid", Arg::Required),
        'v' => ("verbose", Arg::None),
        'y' => ("yes", Arg::None),
        _ => return None,
    })
}

/// A parsed dmsetup command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// How often each switch was given (long names).
    pub switches: BTreeMap<String, u32>,
    /// The last value given to each option that takes one.
    pub values: BTreeMap<String, String>,
    /// The verb (`None` when only options were given).
    pub command: Option<String>,
    /// The verb's arguments.
    pub args: Vec<String>,
}

impl Invocation {
    /// How often `name` was given.
    #[must_use]
    pub fn count(&self, name: &str) -> u32 {
        self.switches.get(name).copied().unwrap_or(0)
    }

    /// Whether `name` was given.
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        self.count(name) > 0
    }

    /// The value of option `name`.
    #[must_use]
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Parse `argv` (without the program name) as dmsetup does. `prog` is the name getopt's
/// messages start with. On error, the stderr text to print (exit status 1).
pub fn parse(prog: &str, argv: &[String]) -> Result<Invocation, String> {
    let mut inv = Invocation::default();
    let mut operands = Vec::new();
    let mut i = 0;
    let add = |inv: &mut Invocation, name: &str, value: Option<String>| {
        *inv.switches.entry(name.to_string()).or_insert(0) += 1;
        if let Some(v) = value {
            inv.values.insert(name.to_string(), v);
        }
    };
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if a == "--" {
            operands.extend(argv[i..].iter().cloned());
            break;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let exact = LONG.iter().find(|(n, _)| *n == name);
            let matches: Vec<&(&str, Arg)> = match exact {
                Some(e) => vec![e],
                None => LONG.iter().filter(|(n, _)| n.starts_with(name)).collect(),
            };
            let (long, kind) = match matches.as_slice() {
                [] => return Err(format!("{prog}: unrecognized option '--{name}'\n")),
                [one] => **one,
                many => {
                    let list: Vec<String> = many.iter().map(|(n, _)| format!("'--{n}'")).collect();
                    return Err(format!(
                        "{prog}: option '--{name}' is ambiguous; possibilities: {}\n",
                        list.join(" ")
                    ));
                }
            };
            match (kind, inline) {
                (Arg::None, Some(_)) => {
                    return Err(format!(
                        "{prog}: option '--{long}' doesn't allow an argument\n"
                    ))
                }
                (Arg::None, None) => add(&mut inv, long, None),
                (Arg::Required, Some(v)) => add(&mut inv, long, Some(v)),
                (Arg::Required, None) => {
                    let Some(v) = argv.get(i) else {
                        return Err(format!("{prog}: option '--{long}' requires an argument\n"));
                    };
                    i += 1;
                    add(&mut inv, long, Some(v.clone()));
                }
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                let Some((long, kind)) = short(c) else {
                    return Err(format!("{prog}: invalid option -- '{c}'\n"));
                };
                if kind == Arg::None {
                    add(&mut inv, long, None);
                    continue;
                }
                let rest: String = chars[k..].iter().collect();
                let v = if !rest.is_empty() {
                    rest
                } else if let Some(v) = argv.get(i) {
                    i += 1;
                    v.clone()
                } else {
                    return Err(format!("{prog}: option requires an argument -- '{c}'\n"));
                };
                add(&mut inv, long, Some(v));
                break;
            }
            continue;
        }
        operands.push(a.clone());
    }
    if inv.has("major") != inv.has("minor") {
        return Err("Please specify both major number and minor number.\n".to_string());
    }
    if inv.has("table") && inv.has("notable") {
        return Err("--table and --notable are incompatible.\n".to_string());
    }
    if inv.has("addnodeonresume") && inv.has("addnodeoncreate") {
        return Err("--addnodeonresume and --addnodeoncreate are incompatible.\n".to_string());
    }
    let mut operands = operands.into_iter();
    inv.command = operands.next();
    inv.args = operands.collect();
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<Invocation, String> {
        parse(
            "dmsetup",
            &s.iter().map(|x| (*x).to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn options_before_and_after_the_verb() {
        let a = p(&["create", "x", "--table", "0 1 zero", "-r"]).unwrap();
        let b = p(&["-r", "--table=0 1 zero", "create", "x"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.command.as_deref(), Some("create"));
        assert_eq!(a.args, ["x"]);
        assert_eq!(a.value("table"), Some("0 1 zero"));
    }

    #[test]
    fn short_clusters_prefixes_and_errors() {
        let a = p(&["info", "-cuX", "--noh", "--sep", ":"]).unwrap();
        assert!(a.has("columns") && a.has("noheadings"));
        assert_eq!(a.value("uuid"), Some("X"));
        assert_eq!(a.value("separator"), Some(":"));
        assert_eq!(
            p(&["--frob", "ls"]).unwrap_err(),
            "dmsetup: unrecognized option '--frob'\n"
        );
        assert_eq!(
            p(&["ls", "-x"]).unwrap_err(),
            "dmsetup: invalid option -- 'x'\n"
        );
        assert_eq!(
            p(&["ls", "--target"]).unwrap_err(),
            "dmsetup: option '--target' requires an argument\n"
        );
        assert!(p(&["--no", "ls"]).unwrap_err().contains("is ambiguous"));
        assert_eq!(p(&["--", "-x"]).unwrap().command.as_deref(), Some("-x"));
    }
}
