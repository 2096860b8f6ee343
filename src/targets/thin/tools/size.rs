//! `thin metadata-size`: thin_metadata_size 0.9 (thin_metadata_size.cc) — its getopt
//! options, its estimate (`1 + 2 * pool / block / 252 + max_thins` 4 KiB blocks: two
//! mapping leaves of 252 entries per block mapped, one block per thin) and its output, byte
//! for byte, including the program name it prints.
//!
//! Hand-written option parsing, because the output depends on the order of the options (a
//! size without a unit is named in the output unit given before it) and on getopt's rules
//! (`-n` takes its argument only attached, long options may be abbreviated), which clap
//! does not reproduce.

use crate::error::{Error, Result};

const PRG: &str = "thin_metadata_size";
const UNIT_CHARS: &[u8] = b"bskKmMgGtTpPeEzZyY";
const UNIT_STRINGS: [&str; 18] = [
    "bytes",
    "sectors",
    "kibibytes",
    "kilobytes",
    "mebibytes",
    "megabytes",
    "gibibytes",
    "gigabytes",
    "tebibytes",
    "terabytes",
    "pebibytes",
    "petabytes",
    "ebibytes",
    "exabytes",
    "zebibytes",
    "zetabytes",
    "yobibytes",
    "yottabytes",
];
/// `mappings_per_block`: (4096 - 64) / 16.
const MAPPINGS_PER_BLOCK: u64 = 252;
const SECTORS: usize = 1;

/// The unit factors, wrapping in 64 bits as the C++ `unsigned long long`s do.
fn factors() -> [u64; 18] {
    let mut f = [0u64; 18];
    f[..4].copy_from_slice(&[1, 512, 1024, 1000]);
    let mut u = 4;
    while u < 18 {
        f[u] = f[u - 2].wrapping_mul(f[2]);
        f[u + 1] = f[u - 1].wrapping_mul(f[3]);
        u += 2;
    }
    f
}

/// `unit_index`: one character from the unit letters, or a prefix of a unit name.
fn unit_index(s: &str) -> Option<usize> {
    if s.len() == 1 {
        return UNIT_CHARS.iter().position(|&c| c == s.as_bytes()[0]);
    }
    if s.is_empty() {
        return None;
    }
    UNIT_STRINGS.iter().position(|u| u.starts_with(s))
}

fn abort(msg: &str) -> Error {
    Error::invalid("thin metadata-size", format!("{PRG} - {msg}"))
}

/// getopt's own complaints, which it prints as `PROGRAM: message`.
fn getopt(msg: &str) -> Error {
    Error::invalid("thin metadata-size", format!("{PRG}: {msg}"))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Numeric {
    No,
    Number,
    Short,
    Long,
}

#[derive(Default)]
struct Opts {
    unit: usize,
    n: [u64; 3],
    s: [String; 3],
    numeric: Option<Numeric>,
}

/// `atoll` of the leading digits (wrapping, as the product that follows does).
fn atoll(d: &str) -> u64 {
    d.bytes().fold(0u64, |n, b| {
        n.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
    })
}

impl Opts {
    /// `check_size` for option `o` (0 block size, 1 pool size, 2 max thins).
    fn size(&mut self, o: usize, arg: &str) -> Result<()> {
        if self.n[o] != 0 {
            return Err(abort("option already given!"));
        }
        let f = factors();
        let digits = arg.bytes().take_while(u8::is_ascii_digit).count();
        let (num, us) = arg.split_at(digits);
        let idx = if us.is_empty() {
            None
        } else {
            Some(unit_index(us).ok_or_else(|| abort("Invalid unit specifier!"))?)
        };
        let r = atoll(num).wrapping_mul(f[idx.unwrap_or(SECTORS)]);
        self.n[o] = if idx.is_none() || o != 2 {
            r / f[SECTORS]
        } else {
            r
        };
        let mut s = num.to_string();
        if o != 2 || idx.is_some() {
            s += UNIT_STRINGS[idx.unwrap_or(self.unit)];
        }
        self.s[o] = s;
        Ok(())
    }
}

/// The long options: name, takes an argument (2: optional, attached only), short letter.
const LONG: [(&str, u8, char); 7] = [
    ("block-size", 1, 'b'),
    ("pool-size", 1, 's'),
    ("max-thins", 1, 'm'),
    ("unit", 1, 'u'),
    ("numeric-only", 2, 'n'),
    ("help", 0, 'h'),
    ("version", 0, 'V'),
];

/// A double converted to `unsigned long long` as gcc does on x86-64 (`cvttsd2si`, with
/// 2^63 subtracted and its bit put back at and above 2^63): past 2^64 and for infinity,
/// where the unit's factor wrapped to 0, that is 0.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
fn cxx_u64(r: f64) -> u64 {
    const TWO63: f64 = 9_223_372_036_854_775_808.0;
    let cvt = |x: f64| {
        if x.is_finite() && x.abs() < TWO63 {
            x as i64 as u64
        } else {
            1 << 63 // the "integer indefinite" value
        }
    };
    if r < TWO63 {
        cvt(r)
    } else {
        cvt(r - TWO63) ^ (1 << 63)
    }
}

/// C's `%0.2e`: two decimals, an exponent of at least two digits with its sign.
fn c_exp(r: f64) -> String {
    let s = format!("{r:.2e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// The help text thin_metadata_size prints for `-h`.
fn help() -> String {
    let chars = std::str::from_utf8(UNIT_CHARS).unwrap_or("");
    let line = |a: &str, b: &str, c: &str, units: Option<bool>| {
        let mut buf = b.to_string();
        if let Some(mandatory) = units {
            let (o, e) = if mandatory { ("{", "}") } else { ("[", "]") };
            buf = format!("{buf}{o}{chars}{e}");
        }
        format!("\t{a:<4}{buf:<44}{c}\n")
    };
    let mut s =
        format!("Thin Provisioning Metadata Device Size Calculator.\nUsage: {PRG} [options]\n");
    s += &line(
        "-b",
        "--block-size BLOCKSIZE",
        "Block size of thin provisioned devices.",
        Some(false),
    );
    s += &line(
        "-s",
        "--pool-size SIZE",
        "Size of pool device.",
        Some(false),
    );
    s += &line(
        "-m",
        "--max-thins #MAXTHINS",
        "Maximum sum of all thin devices and snapshots.",
        Some(false),
    );
    s += &line("-u", "--unit ", "Output unit specifier.", Some(true));
    s += &line(
        "-n",
        "--numeric-only [short|long]",
        "Output numeric value only (optionally with short/long unit identifier).",
        None,
    );
    s += &line("-h", "--help", "This help.", None);
    s += &line(
        "-V",
        "--version",
        "Print thin provisioning tools version.",
        None,
    );
    s
}

/// Run thin_metadata_size with `args` (its argv without the program name); the text it
/// prints on stdout.
pub fn metadata_size(args: &[String]) -> Result<String> {
    let mut o = Opts {
        unit: SECTORS,
        ..Opts::default()
    };
    let mut i = 0;
    // (letter, argument): getopt's view of argv.
    let mut opts: Vec<(char, Option<String>)> = Vec::new();
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let hits: Vec<_> = LONG.iter().filter(|l| l.0.starts_with(name)).collect();
            let exact = LONG.iter().find(|l| l.0 == name);
            let &(full, has, c) = match (exact, hits.as_slice()) {
                (Some(e), _) => e,
                (None, [one]) => *one,
                (None, []) => return Err(getopt(&format!("unrecognized option '--{name}'"))),
                _ => return Err(getopt(&format!("option '--{name}' is ambiguous"))),
            };
            let v = match (has, val) {
                (0, Some(_)) => {
                    return Err(getopt(&format!(
                        "option '--{full}' doesn't allow an argument"
                    )))
                }
                (1, None) => {
                    let v = args.get(i).cloned().ok_or_else(|| {
                        getopt(&format!("option '--{full}' requires an argument"))
                    })?;
                    i += 1;
                    Some(v)
                }
                (_, v) => v,
            };
            opts.push((c, v));
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (at, c) in short.char_indices() {
                let rest = &short[at + c.len_utf8()..];
                match c {
                    'b' | 's' | 'm' | 'u' => {
                        let v = if rest.is_empty() {
                            let v = args.get(i).cloned().ok_or_else(|| {
                                getopt(&format!("option requires an argument -- '{c}'"))
                            })?;
                            i += 1;
                            v
                        } else {
                            rest.to_string()
                        };
                        opts.push((c, Some(v)));
                        break;
                    }
                    'n' => {
                        opts.push(('n', (!rest.is_empty()).then(|| rest.to_string())));
                        break;
                    }
                    'h' | 'V' => opts.push((c, None)),
                    _ => return Err(getopt(&format!("invalid option -- '{c}'"))),
                }
            }
        }
        // Other words: getopt moves them to the end and nothing reads them.
    }
    for (c, v) in opts {
        let v = v.unwrap_or_default();
        match c {
            'b' => o.size(0, &v)?,
            's' => o.size(1, &v)?,
            'm' => o.size(2, &v)?,
            'u' => {
                o.unit = unit_index(&v).ok_or_else(|| abort("output unit specifier invalid!"))?;
            }
            'n' => {
                if o.numeric.is_some() {
                    return Err(abort("-n already given!"));
                }
                o.numeric = Some(if v.is_empty() {
                    Numeric::Number
                } else if "long".starts_with(v.as_str()) {
                    Numeric::Long
                } else if "short".starts_with(v.as_str()) {
                    Numeric::Short
                } else {
                    return Err(abort("-n invalid option argument"));
                });
            }
            'h' => return Ok(help()),
            _ => return Ok(format!("{}\n", env!("CARGO_PKG_VERSION"))),
        }
    }
    let [bs, pool, thins] = o.n;
    if bs == 0 {
        return Err(abort("block size required!"));
    } else if pool == 0 {
        return Err(abort("pool size required!"));
    } else if thins == 0 {
        return Err(abort("max thins required!"));
    } else if bs & (bs - 1) != 0 {
        return Err(abort("block size must be 2^^N"));
    } else if pool <= bs {
        return Err(abort("pool size must be larger than block size"));
    }
    let f = factors();
    #[allow(clippy::cast_precision_loss)]
    let mut r =
        1.0 + (2u64.wrapping_mul(pool) / bs / MAPPINGS_PER_BLOCK).wrapping_add(thins) as f64;
    #[allow(clippy::cast_precision_loss)]
    {
        r *= (8 * f[SECTORS]) as f64;
        r /= f[o.unit] as f64;
    }
    let numeric = o.numeric.unwrap_or(Numeric::No);
    let full = numeric == Numeric::No;
    let mut s = String::new();
    if full {
        s += &format!("{PRG} - ");
    }
    let t = r.floor();
    if r == t {
        s += &format!("{}", cxx_u64(r));
    } else if r - t < 1e-2 {
        s += &c_exp(r);
    } else {
        s += &format!("{r:.2}");
    }
    match numeric {
        Numeric::No => s += &format!(" {}", UNIT_STRINGS[o.unit]),
        Numeric::Short => s.push(char::from(UNIT_CHARS[o.unit])),
        Numeric::Long => s += UNIT_STRINGS[o.unit],
        Numeric::Number => {}
    }
    if full {
        s += &format!(
            " estimated metadata area size for \"--block-size={} --pool-size={} --max-thins={}\"",
            o.s[0], o.s[1], o.s[2]
        );
    }
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_exponent_format() {
        assert_eq!(c_exp(123_456.0), "1.23e+05");
        assert_eq!(c_exp(0.005), "5.00e-03");
    }
}
