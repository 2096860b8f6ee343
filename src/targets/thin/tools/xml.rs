//! thin_dump's XML read back (thin-provisioning-tools 0.9's `xml_format` parser, as
//! thin_restore reads it): a `superblock` holding `device`s holding `range_mapping` and
//! `single_mapping`s. Streamed through quick-xml; every error names the line and column
//! of the element at fault and what is wrong with it, in thin_restore's words where it has
//! them. Memory grows with the mappings the document holds, and the caller bounds those.
//!
//! thin_restore's rules, kept: `uuid`, `metadata_snap` and a device's `mapped_blocks` are
//! read but not used (the count is recomputed; the attribute must be there); `flags` and
//! `version` are optional (version 1 when absent); unknown attributes are ignored, unknown
//! elements refused; a later mapping of a virtual block replaces an earlier one; a data
//! block at or past `nr_data_blocks` and a second device with one id are refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::error::{Error, Result};

use super::super::metadata::writer::Devices;
use super::super::metadata::{BlockTime, DeviceDetails};

/// The superblock fields the XML carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XmlSuperblock {
    /// Pool time.
    pub time: u32,
    /// Transaction id.
    pub transaction: u64,
    /// Superblock flags (bit 0: needs_check).
    pub flags: u32,
    /// Metadata version (1 when the XML has none, as thin_restore writes).
    pub version: u32,
    /// Data block size in sectors.
    pub data_block_size: u32,
    /// Data blocks in the pool.
    pub nr_data_blocks: u64,
}

/// A parsed document: the superblock and every device with its mappings sorted by
/// virtual block (`mapped_blocks` recomputed from them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XmlPool {
    /// The superblock's fields.
    pub sb: XmlSuperblock,
    /// Devices by id.
    pub devices: Devices,
}

/// thin_dump's XML written (0.9's `xml_format` emitter): a device's consecutive virtual
/// blocks mapped to consecutive data blocks at one time become one `range_mapping`.
#[derive(Debug)]
pub struct XmlWriter {
    out: String,
    run: Option<(u64, BlockTime, u64)>,
}

impl XmlWriter {
    /// Start the document with the superblock line (0.9 prints no `metadata_snap`).
    #[must_use]
    pub fn new(sb: &XmlSuperblock) -> XmlWriter {
        let out = format!(
            "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" flags=\"{}\" version=\"{}\" \
             data_block_size=\"{}\" nr_data_blocks=\"{}\">\n",
            sb.time, sb.transaction, sb.flags, sb.version, sb.data_block_size, sb.nr_data_blocks
        );
        XmlWriter { out, run: None }
    }

    /// Open a device.
    pub fn device(&mut self, id: u64, d: &DeviceDetails) {
        let _ = writeln!(
            self.out,
            "  <device dev_id=\"{id}\" mapped_blocks=\"{}\" transaction=\"{}\" \
             creation_time=\"{}\" snap_time=\"{}\">",
            d.mapped_blocks, d.transaction_id, d.creation_time, d.snapshotted_time
        );
    }

    /// The next mapping of the open device, in virtual block order.
    pub fn mapping(&mut self, k: u64, bt: BlockTime) {
        match &mut self.run {
            Some((o, b, len))
                if k == *o + *len && bt.block == b.block + *len && bt.time == b.time =>
            {
                *len += 1;
            }
            _ => {
                self.emit();
                self.run = Some((k, bt, 1));
            }
        }
    }

    fn emit(&mut self) {
        let Some((origin, bt, len)) = self.run.take() else {
            return;
        };
        let _ = if len == 1 {
            writeln!(
                self.out,
                "    <single_mapping origin_block=\"{origin}\" data_block=\"{}\" time=\"{}\"/>",
                bt.block, bt.time
            )
        } else {
            writeln!(
                self.out,
                "    <range_mapping origin_begin=\"{origin}\" data_begin=\"{}\" length=\"{len}\" time=\"{}\"/>",
                bt.block, bt.time
            )
        };
    }

    /// Close the open device.
    pub fn end_device(&mut self) {
        self.emit();
        self.out.push_str("  </device>\n");
    }

    /// Close the document.
    #[must_use]
    pub fn finish(mut self) -> String {
        self.out.push_str("</superblock>\n");
        self.out
    }
}

impl XmlPool {
    /// The pool as thin_dump prints it.
    #[must_use]
    pub fn dump_xml(&self) -> String {
        let mut w = XmlWriter::new(&self.sb);
        for (&id, (d, maps)) in &self.devices {
            w.device(id, d);
            for &(k, bt) in maps {
                w.mapping(k, bt);
            }
            w.end_device();
        }
        w.finish()
    }
}

/// Line and column (both from 1) of byte `pos` of the document `src` reads (read again
/// from its start, so a document streamed from a file needs no copy for its errors).
pub fn line_col(src: impl std::io::Read, pos: u64) -> (u64, u64) {
    use std::io::Read as _;
    let (mut line, mut col) = (1, 1);
    let mut src = src.take(pos);
    let mut buf = [0u8; 1 << 16];
    while let Ok(n) = src.read(&mut buf) {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                line += 1;
                col = 1;
            } else {
                col += 1;
            }
        }
    }
    (line, col)
}

/// An element's attributes, by name (unescaped).
struct Attrs {
    tag: String,
    map: BTreeMap<String, String>,
}

impl Attrs {
    fn read(e: &BytesStart<'_>) -> std::result::Result<Attrs, String> {
        let tag = e.name().into_inner().to_string();
        let mut map = BTreeMap::new();
        for a in e.attributes() {
            let a = a.map_err(|e| e.to_string())?;
            let k = a.key.into_inner().to_string();
            let v = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?
                .into_owned();
            map.insert(k, v);
        }
        Ok(Attrs { tag, map })
    }

    fn opt<T: std::str::FromStr>(&self, name: &str) -> std::result::Result<Option<T>, String> {
        let Some(v) = self.map.get(name) else {
            return Ok(None);
        };
        // Decimal digits only (boost's lexical_cast also takes a sign; a negative count
        // is never meant).
        let ok = !v.is_empty() && v.len() <= 40 && v.bytes().all(|b| b.is_ascii_digit());
        match v.parse::<T>() {
            Ok(n) if ok => Ok(Some(n)),
            _ => Err(format!(
                "attribute {name}=\"{}\" of <{}> is not a number in range ({})",
                v.chars().take(64).collect::<String>(),
                self.tag,
                std::any::type_name::<T>()
            )),
        }
    }

    fn req<T: std::str::FromStr>(&self, name: &str) -> std::result::Result<T, String> {
        self.opt(name)?
            .ok_or_else(|| format!("could not find attribute: {name} (in <{}>)", self.tag))
    }
}

/// What [`read`] hands on, element by element in document order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// The superblock's fields.
    Superblock(XmlSuperblock),
    /// A device opens (its `mapped_blocks` left 0: the count is recomputed).
    Device(u64, DeviceDetails),
    /// A run of mappings of the open device.
    Mapping(Run),
    /// The open device closes.
    EndDevice,
}

/// `len` virtual blocks from `origin` mapped to data blocks from `data` at `time` (as
/// read: within `nr_data_blocks`, origins below 2^64, `len` at least 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First virtual block.
    pub origin: u64,
    /// First data block.
    pub data: u64,
    /// Blocks (a `single_mapping` is 1).
    pub len: u64,
    /// Time (24 bits).
    pub time: u32,
}

impl Run {
    /// The mappings, block by block.
    pub fn blocks(self) -> impl Iterator<Item = (u64, BlockTime)> {
        (0..self.len).map(move |i| {
            (
                self.origin + i,
                BlockTime {
                    block: self.data + i,
                    time: self.time,
                },
            )
        })
    }
}

/// Why [`read`] stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The document is wrong at this byte offset, for this reason.
    At(u64, String),
    /// The sink refused an item.
    Sink(Error),
}

impl ReadError {
    /// The error, its offset named as line and column of the document `src` reads.
    pub fn locate(self, src: impl std::io::Read) -> Error {
        match self {
            ReadError::At(pos, what) => {
                let (line, col) = line_col(src, pos);
                Error::invalid("thin XML", format!("line {line}, column {col}: {what}"))
            }
            ReadError::Sink(e) => e,
        }
    }
}

/// Read the document `src` streams, handing each element to `sink` as it is read and
/// holding nothing of it beyond the device ids seen (a second device with one id is
/// refused). `max_mappings` bounds the mappings the document may hold (those a metadata
/// device of the output's size can hold); `progress` is told the bytes read so far now
/// and then.
pub fn read<R: std::io::BufRead>(
    src: R,
    max_mappings: u64,
    progress: &mut dyn FnMut(u64),
    sink: &mut dyn FnMut(Item) -> Result<()>,
) -> std::result::Result<(), ReadError> {
    let mut reader = Reader::from_reader(src);
    reader.config_mut().check_end_names = true;
    let mut buf = Vec::new();
    let mut sb: Option<XmlSuperblock> = None;
    let mut sb_closed = false;
    let mut dev_open = false;
    let mut ids = std::collections::BTreeSet::new();
    let mut total: u64 = 0;
    let mut events: u64 = 0;
    let feed = |sink: &mut dyn FnMut(Item) -> Result<()>, item| sink(item).map_err(ReadError::Sink);
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| ReadError::At(reader.error_position(), format!("parse error: {e}")))?;
        events += 1;
        if events % 65_536 == 0 {
            progress(reader.buffer_position());
        }
        let (start, empty) = match &ev {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                match e.name().into_inner() {
                    "device" if dev_open => {
                        dev_open = false;
                        feed(sink, Item::EndDevice)?;
                    }
                    "superblock" => sb_closed = true,
                    _ => {}
                }
                buf.clear();
                continue;
            }
            Event::Eof => break,
            Event::Text(t) => {
                if sb_closed && t.as_ref().chars().any(|c| !c.is_ascii_whitespace()) {
                    return Err(ReadError::At(pos, "junk after document element".into()));
                }
                buf.clear();
                continue;
            }
            // Declarations, comments, processing instructions: nothing to restore.
            _ => {
                buf.clear();
                continue;
            }
        };
        let bad = |e: String| ReadError::At(pos, e);
        let a = Attrs::read(start).map_err(bad)?;
        if sb_closed {
            return Err(bad("junk after document element".into()));
        }
        match a.tag.as_str() {
            "superblock" => {
                if sb.is_some() {
                    return Err(bad("a second <superblock> inside the first".into()));
                }
                let _ = a.opt::<u64>("metadata_snap").map_err(bad)?;
                let s = XmlSuperblock {
                    time: a.opt("time").map_err(bad)?.unwrap_or(0),
                    transaction: a.req("transaction").map_err(bad)?,
                    flags: a.opt("flags").map_err(bad)?.unwrap_or(0),
                    version: a.opt("version").map_err(bad)?.unwrap_or(1),
                    data_block_size: a.req("data_block_size").map_err(bad)?,
                    nr_data_blocks: a.req("nr_data_blocks").map_err(bad)?,
                };
                sb = Some(s);
                feed(sink, Item::Superblock(s))?;
                if empty {
                    sb_closed = true;
                }
            }
            "device" => {
                if sb.is_none() {
                    return Err(bad("missing superblock".into()));
                }
                if dev_open {
                    return Err(bad("<device> inside a <device>".into()));
                }
                // thin_restore reads a device id as 32 bits.
                let id = u64::from(a.req::<u32>("dev_id").map_err(bad)?);
                let _: u64 = a.req("mapped_blocks").map_err(bad)?;
                let d = DeviceDetails {
                    mapped_blocks: 0,
                    transaction_id: a.req("transaction").map_err(bad)?,
                    creation_time: a.req("creation_time").map_err(bad)?,
                    snapshotted_time: a.req("snap_time").map_err(bad)?,
                };
                if !ids.insert(id) {
                    return Err(bad(format!("Device already exists (dev_id {id})")));
                }
                feed(sink, Item::Device(id, d))?;
                if empty {
                    feed(sink, Item::EndDevice)?;
                } else {
                    dev_open = true;
                }
            }
            "range_mapping" | "single_mapping" => {
                let Some(s) = sb else {
                    return Err(bad("missing superblock".into()));
                };
                if !dev_open {
                    return Err(bad(format!("<{}> not in device", a.tag)));
                }
                let (origin, data, len) = if a.tag == "range_mapping" {
                    (
                        a.req::<u64>("origin_begin").map_err(bad)?,
                        a.req::<u64>("data_begin").map_err(bad)?,
                        a.req::<u64>("length").map_err(bad)?,
                    )
                } else {
                    (
                        a.req::<u64>("origin_block").map_err(bad)?,
                        a.req::<u64>("data_block").map_err(bad)?,
                        1,
                    )
                };
                let time: u32 = a.req("time").map_err(bad)?;
                if len > 0 {
                    let last = data.checked_add(len - 1);
                    if last.is_none_or(|l| l >= s.nr_data_blocks) {
                        let first_bad = data.max(s.nr_data_blocks);
                        return Err(bad(format!(
                            "mapping beyond end of data device ({first_bad} >= {})",
                            s.nr_data_blocks
                        )));
                    }
                    if origin.checked_add(len - 1).is_none() {
                        return Err(bad("origin blocks past 2^64".into()));
                    }
                }
                total = total.saturating_add(len);
                if total > max_mappings {
                    return Err(bad(format!(
                        "more than {max_mappings} mappings: they do not fit the output \
                         metadata device"
                    )));
                }
                if len > 0 {
                    feed(
                        sink,
                        Item::Mapping(Run {
                            origin,
                            data,
                            len,
                            time: time & 0xff_ffff,
                        }),
                    )?;
                }
            }
            other => {
                return Err(bad(format!(
                    "unknown tag type <{}>",
                    other.chars().take(64).collect::<String>()
                )))
            }
        }
        buf.clear();
    }
    let end = reader.buffer_position();
    if dev_open || (sb.is_some() && !sb_closed) {
        return Err(ReadError::At(
            end,
            "no element found (an element is not closed)".into(),
        ));
    }
    if sb.is_none() {
        return Err(ReadError::At(
            end,
            "no element found (no <superblock>)".into(),
        ));
    }
    Ok(())
}

/// Sort a device's mappings by virtual block, a later mapping of a block replacing an
/// earlier one, and count them.
pub fn finish(
    mut maps: Vec<(u64, BlockTime)>,
    mut d: DeviceDetails,
) -> (DeviceDetails, Vec<(u64, BlockTime)>) {
    maps.reverse();
    maps.sort_by_key(|&(k, _)| k); // stable: the last in the document comes first
    maps.dedup_by_key(|&mut (k, _)| k);
    maps.shrink_to_fit(); // growth by doubling left up to half of it unused
    d.mapped_blocks = maps.len() as u64;
    (d, maps)
}

/// A device being read whole: id, details, mappings in document order.
type Open = (u64, DeviceDetails, Vec<(u64, BlockTime)>);

/// Parse `text` whole: every device with its mappings sorted. `max_mappings` bounds the
/// mappings held (those a metadata device of the output's size can hold); `progress` is
/// told the bytes read so far now and then.
pub fn parse(text: &[u8], max_mappings: u64, progress: &mut dyn FnMut(u64)) -> Result<XmlPool> {
    let mut pool = XmlPool::default();
    let mut open: Option<Open> = None;
    read(text, max_mappings, progress, &mut |item| {
        match item {
            Item::Superblock(s) => pool.sb = s,
            Item::Device(id, d) => open = Some((id, d, Vec::new())),
            Item::Mapping(run) => {
                if let Some((_, _, maps)) = open.as_mut() {
                    maps.extend(run.blocks());
                }
            }
            Item::EndDevice => {
                if let Some((id, d, maps)) = open.take() {
                    pool.devices.insert(id, finish(maps, d));
                }
            }
        }
        Ok(())
    })
    .map_err(|e| e.locate(text))?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<XmlPool> {
        parse(s.as_bytes(), 1 << 20, &mut |_| {})
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = p("<superblock transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"10\">\n  <bogus/>\n</superblock>\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2, column 3") && e.contains("unknown tag type"),
            "{e}"
        );
        let e = p("<superblock transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"10\">\n<device dev_id=\"1\" mapped_blocks=\"0\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n<single_mapping origin_block=\"0\" data_block=\"10\" time=\"0\"/>")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3, column 1") && e.contains("(10 >= 10)"),
            "{e}"
        );
    }

    #[test]
    fn later_mappings_replace_earlier_ones() {
        let x = p("<superblock transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"100\"><device dev_id=\"1\" mapped_blocks=\"9\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\"><range_mapping origin_begin=\"0\" data_begin=\"5\" length=\"3\" time=\"0\"/><single_mapping origin_block=\"1\" data_block=\"50\" time=\"1\"/></device></superblock>").unwrap();
        let (d, maps) = &x.devices[&1];
        assert_eq!(d.mapped_blocks, 3);
        assert_eq!(maps[1], (1, BlockTime { block: 50, time: 1 }));
    }

    #[test]
    fn huge_ranges_are_bounded() {
        let e = parse(
            b"<superblock transaction=\"0\" data_block_size=\"128\" nr_data_blocks=\"18446744073709551615\"><device dev_id=\"1\" mapped_blocks=\"9\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\"><range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"18446744073709551614\" time=\"0\"/></device></superblock>",
            1000,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more than 1000 mappings"), "{e}");
    }
}
