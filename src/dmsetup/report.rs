//! libdm's report layout (`dm_report`) as dmsetup uses it for `info -c` and `splitname`:
//! aligned columns under headings, or separator-joined fields, or `DM_FIELD='value'`
//! pairs with `--nameprefixes`.

/// How a column aligns its values (`DM_REPORT_FIELD_ALIGN_*`: strings left, numbers right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Strings.
    Left,
    /// Numbers.
    Right,
}

/// One column: its id (for `--nameprefixes`), heading, default width and alignment.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    /// The field name (`-o name`).
    pub id: &'static str,
    /// The heading.
    pub heading: &'static str,
    /// The minimum width.
    pub width: usize,
    /// Alignment.
    pub align: Align,
}

/// How the report is laid out (dmsetup's `--noheadings`, `--separator`, `--nameprefixes`).
#[derive(Clone, Debug)]
pub struct Layout {
    /// Print the heading line.
    pub headings: bool,
    /// Pad columns to a common width.
    pub aligned: bool,
    /// Between fields.
    pub separator: String,
    /// `DM_FIELD='value'`.
    pub prefixes: bool,
}

impl Layout {
    /// The layout dmsetup derives from its switches: `--noheadings` turns alignment off and
    /// makes `:` the default separator; `--separator` and `--nameprefixes` turn alignment
    /// off.
    #[must_use]
    pub fn new(noheadings: bool, separator: Option<&str>, prefixes: bool) -> Layout {
        let sep = separator.map_or_else(
            || if noheadings { ":" } else { " " }.to_string(),
            str::to_string,
        );
        Layout {
            headings: !noheadings,
            aligned: !noheadings && separator.is_none() && !prefixes,
            separator: sep,
            prefixes,
        }
    }
}

/// Lay out `rows` (one value per column) under `columns`.
#[must_use]
pub fn render(columns: &[Column], rows: &[Vec<String>], layout: &Layout) -> String {
    let mut out = String::new();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .fold(c.width, usize::max)
        })
        .collect();
    let line = |cells: Vec<String>, out: &mut String| {
        out.push_str(&cells.join(&layout.separator));
        out.push('\n');
    };
    if layout.headings {
        let cells = columns
            .iter()
            .zip(&widths)
            .map(|(c, &w)| {
                if layout.aligned {
                    let h: String = c.heading.chars().take(w).collect();
                    format!("{h:<w$}")
                } else {
                    c.heading.to_string()
                }
            })
            .collect();
        line(cells, &mut out);
    }
    for r in rows {
        let cells = columns
            .iter()
            .zip(&widths)
            .zip(r)
            .map(|((c, &w), v)| {
                if layout.prefixes {
                    format!("DM_{}='{}'", c.id.to_ascii_uppercase(), v)
                } else if !layout.aligned {
                    v.clone()
                } else if c.align == Align::Right {
                    format!("{v:>w$}")
                } else {
                    format!("{v:<w$}")
                }
            })
            .collect();
        line(cells, &mut out);
    }
    out
}

/// `dm_split_lvm_name`: VG, LV and layer of an LVM device name (`-` separates, `--` is a
/// literal `-`).
#[must_use]
pub fn split_lvm_name(name: &str) -> [String; 3] {
    let mut parts = [String::new(), String::new(), String::new()];
    let mut k = 0;
    let b: Vec<char> = name.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '-' {
            if b.get(i + 1) == Some(&'-') {
                parts[k].push('-');
                i += 2;
                continue;
            }
            if k < 2 {
                k += 1;
                i += 1;
                continue;
            }
        }
        parts[k].push(b[i]);
        i += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvm_names_split_on_single_dashes() {
        assert_eq!(split_lvm_name("vg0-lv0"), ["vg0", "lv0", ""]);
        assert_eq!(split_lvm_name("vg--x-lv--y-z"), ["vg-x", "lv-y", "z"]);
        assert_eq!(split_lvm_name("nodash"), ["nodash", "", ""]);
    }
}
