//! `thin delta` (thin_delta 0.9's XML, byte for byte) and `thin rmap` (thin_rmap 0.9):
//! two devices' mappings compared run by run, and the devices and virtual blocks that
//! map given data blocks.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::error::{Error, Result};

use super::super::metadata::block::le64;
use super::super::metadata::btree;
use super::super::metadata::{BlockTime, Metadata};

/// A run of consecutive virtual blocks mapped to consecutive data blocks (time is not
/// looked at: thin_delta's `mapping_recorder`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Run {
    /// First virtual block.
    pub vbegin: u64,
    /// First data block.
    pub dbegin: u64,
    /// Blocks.
    pub len: u64,
}

impl Run {
    fn consume(&mut self, n: u64) {
        let n = n.min(self.len);
        self.vbegin += n;
        self.dbegin += n;
        self.len -= n;
    }
}

/// A device's mappings as runs, in virtual block order.
pub fn runs(md: &Metadata, root: u64) -> Result<Vec<Run>> {
    let mut out: Vec<Run> = Vec::new();
    md.for_each_mapping(root, &mut |k, bt| {
        match out.last_mut() {
            Some(r) if r.vbegin + r.len == k && r.dbegin + r.len == bt.block => r.len += 1,
            _ => out.push(Run {
                vbegin: k,
                dbegin: bt.block,
                len: 1,
            }),
        }
        Ok(())
    })?;
    Ok(out)
}

/// How a stretch of virtual blocks compares between the left and right device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Mapped only on the left, to these data blocks.
    LeftOnly {
        /// First data block.
        dbegin: u64,
    },
    /// Mapped only on the right.
    RightOnly {
        /// First data block.
        dbegin: u64,
    },
    /// Mapped on both, to different data blocks.
    Differ {
        /// Left's first data block.
        left: u64,
        /// Right's first data block.
        right: u64,
    },
    /// Mapped on both to the same data blocks.
    Same {
        /// First data block.
        dbegin: u64,
    },
}

/// Walk both run lists in parallel (thin_delta's `dump_diff`), calling `emit(vbegin, len,
/// change)` for each stretch in virtual block order.
pub fn diff(left: &[Run], right: &[Run], emit: &mut dyn FnMut(u64, u64, Change)) {
    let (mut li, mut ri) = (left.iter(), right.iter());
    let (mut l, mut r) = (Run::default(), Run::default());
    loop {
        if l.len == 0 {
            match li.next() {
                Some(&m) => l = m,
                None => break,
            }
        }
        if r.len == 0 {
            match ri.next() {
                Some(&m) => r = m,
                None => break,
            }
        }
        if l.vbegin < r.vbegin {
            let n = l.len.min(r.vbegin - l.vbegin);
            emit(l.vbegin, n, Change::LeftOnly { dbegin: l.dbegin });
            l.consume(n);
        } else if l.vbegin > r.vbegin {
            let n = r.len.min(l.vbegin - r.vbegin);
            emit(r.vbegin, n, Change::RightOnly { dbegin: r.dbegin });
            r.consume(n);
        } else {
            let n = l.len.min(r.len);
            let c = if l.dbegin == r.dbegin {
                Change::Same { dbegin: l.dbegin }
            } else {
                Change::Differ {
                    left: l.dbegin,
                    right: r.dbegin,
                }
            };
            emit(l.vbegin, n, c);
            l.consume(n);
            r.consume(n);
        }
    }
    for m in std::iter::once(l).chain(li.copied()).filter(|m| m.len > 0) {
        emit(m.vbegin, m.len, Change::LeftOnly { dbegin: m.dbegin });
    }
    for m in std::iter::once(r).chain(ri.copied()).filter(|m| m.len > 0) {
        emit(m.vbegin, m.len, Change::RightOnly { dbegin: m.dbegin });
    }
}

fn tag(c: Change) -> &'static str {
    match c {
        Change::LeftOnly { .. } => "left_only",
        Change::RightOnly { .. } => "right_only",
        Change::Differ { .. } => "different",
        Change::Same { .. } => "same",
    }
}

/// The mapping tree root of device `id`, or thin_delta's words for `which` (snap1/snap2).
fn root_of(md: &Metadata, id: u64, which: &str) -> Result<u64> {
    md.device_root(id)?.ok_or_else(|| {
        Error::invalid(
            "thin delta",
            format!("Unable to find mapping tree for {which} ({id})"),
        )
    })
}

/// `thin_delta [--verbose] --snap1 A --snap2 B` over `md` (the live metadata or a metadata
/// snapshot), byte for byte.
pub fn delta_xml(md: &Metadata, snap1: u64, snap2: u64, verbose: bool) -> Result<String> {
    let r1 = root_of(md, snap1, "snap1")?;
    let r2 = root_of(md, snap2, "snap2")?;
    let (left, right) = (runs(md, r1)?, runs(md, r2)?);
    let sb = md.superblock();
    let mut out = String::new();
    let _ = write!(
        out,
        "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" data_block_size=\"{}\" nr_data_blocks=\"{}",
        sb.time, sb.transaction_id, sb.data_block_size, sb.data_sm.nr_blocks
    );
    if sb.held_root != 0 {
        let _ = write!(out, "\" metadata_snap=\"{}", sb.held_root);
    }
    out.push_str("\">\n");
    let _ = writeln!(out, "  <diff left=\"{snap1}\" right=\"{snap2}\">");
    if verbose {
        let mut open: Option<&'static str> = None;
        diff(&left, &right, &mut |v, n, c| {
            let t = tag(c);
            if open != Some(t) {
                if let Some(o) = open {
                    let _ = writeln!(out, "    </{o}>");
                }
                let _ = writeln!(out, "    <{t}>");
                open = Some(t);
            }
            let _ = match c {
                Change::Differ { left, right } => writeln!(
                    out,
                    "      <range begin=\"{v}\" left_data_begin=\"{left}\" right_data_begin=\"{right}\" length=\"{n}\"/>"
                ),
                Change::LeftOnly { dbegin } | Change::RightOnly { dbegin } | Change::Same { dbegin } => {
                    writeln!(
                        out,
                        "      <range begin=\"{v}\" data_begin=\"{dbegin}\" length=\"{n}\"/>"
                    )
                }
            };
        });
        if let Some(o) = open {
            let _ = writeln!(out, "    </{o}>");
        }
    } else {
        let mut cur: Option<(&'static str, u64, u64)> = None;
        let flush = |out: &mut String, cur: Option<(&'static str, u64, u64)>| {
            if let Some((t, b, e)) = cur {
                let _ = writeln!(out, "    <{t} begin=\"{b}\" length=\"{}\"/>", e - b);
            }
        };
        diff(&left, &right, &mut |v, n, c| {
            let t = tag(c);
            match &mut cur {
                Some((ct, _, end)) if *ct == t && *end == v => *end += n,
                _ => {
                    flush(&mut out, cur);
                    cur = Some((t, v, v + n));
                }
            }
        });
        flush(&mut out, cur);
    }
    out.push_str("  </diff>\n</superblock>\n");
    Ok(out)
}

/// A data block range `begin..end` (`thin_rmap --region`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First block.
    pub begin: u64,
    /// One past the last block.
    pub end: u64,
}

impl std::str::FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Region, String> {
        let (b, e) = s
            .split_once("..")
            .ok_or_else(|| "badly formed region (no dots)".to_string())?;
        let num = |t: &str| {
            t.parse::<u64>()
                .map_err(|_| "badly formed region (couldn't parse numbers)".to_string())
        };
        let (begin, end) = (num(b)?, num(e)?);
        if end <= begin {
            return Err("badly formed region (end <= begin)".into());
        }
        Ok(Region { begin, end })
    }
}

/// `thin_rmap --region R...` over `md`: for each run of data blocks in the regions that
/// one device maps to consecutive virtual blocks, `data B..E -> thin(D) V..W`, ordered by
/// data block (devices in id order for one data block), byte for byte.
pub fn rmap(md: &Metadata, regions: &[Region]) -> Result<String> {
    if regions.is_empty() {
        return Err(Error::invalid("--region", "No regions provided."));
    }
    let inside = |b: u64| regions.iter().any(|r| (r.begin..r.end).contains(&b));
    // (data_begin, data_end, dev, thin_begin)
    let mut found: Vec<(u64, u64, u64, u64)> = Vec::new();
    // One walk over every device's tree that visits each node once, as thin_rmap 0.9's
    // damage visitor (and 1.x's walker with its space map) do: a subtree devices share is
    // reported under the first device, in id order, that reaches it.
    let mut seen = HashSet::new();
    for (dev, root) in md.device_roots()? {
        let mut stack = vec![(root, 0usize)];
        while let Some((b, depth)) = stack.pop() {
            if !seen.insert(b) {
                continue;
            }
            if depth >= btree::MAX_DEPTH {
                return Err(Error::Corrupt {
                    what: "thin mapping tree",
                    offset: b * 4096,
                    detail: format!("device {dev}: deeper than {} levels", btree::MAX_DEPTH),
                });
            }
            let node = btree::read_node(md.dev(), b, 8)?;
            if !node.leaf {
                stack.extend(
                    (0..node.keys.len())
                        .rev()
                        .map(|i| (node.child(i), depth + 1)),
                );
                continue;
            }
            for (i, &k) in node.keys.iter().enumerate() {
                let bt = BlockTime::unpack(le64(node.value(i), 0));
                if !inside(bt.block) {
                    continue;
                }
                match found.last_mut() {
                    Some((db, de, d, tb))
                        if *d == dev && bt.block == *de && k == *tb + (*de - *db) =>
                    {
                        *de += 1;
                    }
                    _ => found.push((bt.block, bt.block + 1, dev, k)),
                }
            }
        }
    }
    // thin_rmap 0.9 sorts with `std::sort` by data_begin only: runs of one data block in
    // different devices come out in the order libstdc++'s introsort leaves them.
    cxx_sort(&mut found, &|a, b| a.0 < b.0);
    let mut out = String::new();
    for (db, de, dev, tb) in found {
        let _ = writeln!(
            out,
            "data {db}..{de} -> thin({dev}) {tb}..{}",
            tb + (de - db)
        );
    }
    Ok(out)
}

/// libstdc++'s `std::sort` (introsort: median-of-three quicksort down to runs of 16,
/// heapsort past `2 * log2(n)` levels, then one insertion sort), step for step, so that
/// elements `less` calls equal end in the order thin_rmap 0.9 prints them.
fn cxx_sort<T: Copy>(v: &mut [T], less: &dyn Fn(&T, &T) -> bool) {
    const THRESHOLD: usize = 16;
    fn introsort<T: Copy>(v: &mut [T], mut depth: u32, less: &dyn Fn(&T, &T) -> bool) {
        let mut last = v.len();
        while last > THRESHOLD {
            if depth == 0 {
                heapsort(&mut v[..last], less);
                return;
            }
            depth -= 1;
            let cut = partition_pivot(&mut v[..last], less);
            introsort(&mut v[cut..last], depth, less);
            last = cut;
        }
    }
    fn partition_pivot<T: Copy>(v: &mut [T], less: &dyn Fn(&T, &T) -> bool) -> usize {
        let (a, b, c) = (1, v.len() / 2, v.len() - 1);
        let m = if less(&v[a], &v[b]) {
            if less(&v[b], &v[c]) {
                b
            } else if less(&v[a], &v[c]) {
                c
            } else {
                a
            }
        } else if less(&v[a], &v[c]) {
            a
        } else if less(&v[b], &v[c]) {
            c
        } else {
            b
        };
        v.swap(0, m);
        // __unguarded_partition(first + 1, last, pivot = first)
        let (mut f, mut l) = (1, v.len());
        loop {
            while less(&v[f], &v[0]) {
                f += 1;
            }
            l -= 1;
            while less(&v[0], &v[l]) {
                l -= 1;
            }
            if f >= l {
                return f;
            }
            v.swap(f, l);
            f += 1;
        }
    }
    fn adjust_heap<T: Copy>(
        v: &mut [T],
        mut hole: usize,
        len: usize,
        value: T,
        less: &dyn Fn(&T, &T) -> bool,
    ) {
        let top = hole;
        let mut child = hole;
        while child < (len - 1) / 2 {
            child = 2 * (child + 1);
            if less(&v[child], &v[child - 1]) {
                child -= 1;
            }
            v[hole] = v[child];
            hole = child;
        }
        if len % 2 == 0 && child == (len - 2) / 2 {
            child = 2 * (child + 1);
            v[hole] = v[child - 1];
            hole = child - 1;
        }
        // __push_heap
        while hole > top {
            let parent = (hole - 1) / 2;
            if !less(&v[parent], &value) {
                break;
            }
            v[hole] = v[parent];
            hole = parent;
        }
        v[hole] = value;
    }
    fn heapsort<T: Copy>(v: &mut [T], less: &dyn Fn(&T, &T) -> bool) {
        let len = v.len();
        if len >= 2 {
            let mut parent = (len - 2) / 2;
            loop {
                adjust_heap(v, parent, len, v[parent], less);
                if parent == 0 {
                    break;
                }
                parent -= 1;
            }
        }
        let mut last = len;
        while last > 1 {
            last -= 1;
            let value = v[last];
            v[last] = v[0];
            adjust_heap(v, 0, last, value, less);
        }
    }
    fn linear_insert<T: Copy>(v: &mut [T], mut i: usize, less: &dyn Fn(&T, &T) -> bool) {
        let val = v[i];
        while less(&val, &v[i - 1]) {
            v[i] = v[i - 1];
            i -= 1;
        }
        v[i] = val;
    }
    fn insertion_sort<T: Copy>(v: &mut [T], less: &dyn Fn(&T, &T) -> bool) {
        for i in 1..v.len() {
            if less(&v[i], &v[0]) {
                let val = v[i];
                v.copy_within(0..i, 1);
                v[0] = val;
            } else {
                linear_insert(v, i, less);
            }
        }
    }
    let n = v.len();
    if n == 0 {
        return;
    }
    introsort(v, 2 * n.ilog2(), less);
    if n > THRESHOLD {
        insertion_sort(&mut v[..THRESHOLD], less);
        for i in THRESHOLD..n {
            linear_insert(v, i, less);
        }
    } else {
        insertion_sort(v, less);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(vbegin: u64, dbegin: u64, len: u64) -> Run {
        Run {
            vbegin,
            dbegin,
            len,
        }
    }

    #[test]
    fn a_longer_left_run_is_reported_to_its_end() {
        let mut got = Vec::new();
        diff(&[r(0, 0, 10)], &[r(0, 0, 5)], &mut |v, n, c| {
            got.push((v, n, c))
        });
        assert_eq!(
            got,
            vec![
                (0, 5, Change::Same { dbegin: 0 }),
                (5, 5, Change::LeftOnly { dbegin: 5 })
            ]
        );
    }

    #[test]
    fn cxx_sort_sorts() {
        let mut seed = 7u64;
        for n in [0, 1, 2, 15, 16, 17, 100, 1000] {
            let mut v: Vec<(u64, usize)> = (0..n)
                .map(|i| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((seed >> 60) % 7, i)
                })
                .collect();
            cxx_sort(&mut v, &|a, b| a.0 < b.0);
            assert!(v.windows(2).all(|w| w[0].0 <= w[1].0), "{n}");
            let mut ids: Vec<usize> = v.iter().map(|x| x.1).collect();
            ids.sort_unstable();
            assert_eq!(ids, (0..n).collect::<Vec<_>>());
        }
        // Past the depth limit (all equal keys never are; a sawtooth is): heapsort.
        let mut v: Vec<u64> = (0..5000).map(|i| (i * 7919) % 5000).collect();
        cxx_sort(&mut v, &|a, b| a < b);
        assert_eq!(v, (0..5000).collect::<Vec<_>>());
    }

    #[test]
    fn regions_parse_as_thin_rmap_does() {
        assert_eq!("5..45".parse(), Ok(Region { begin: 5, end: 45 }));
        assert!("5".parse::<Region>().unwrap_err().contains("no dots"));
        assert!("5..5"
            .parse::<Region>()
            .unwrap_err()
            .contains("end <= begin"));
        assert!("a..5"
            .parse::<Region>()
            .unwrap_err()
            .contains("parse numbers"));
    }
}
