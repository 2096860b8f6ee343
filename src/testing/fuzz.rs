//! Fuzz drivers: arbitrary input must never panic, and what parses must round-trip.
//! The cargo-fuzz targets in fuzz/ are one-line calls of these.

use crate::table::concise::format_concise;
use crate::table::{parse_boot, parse_concise, parse_table};
use crate::targets::Keys;

/// Table text: parse; if it parses, its canonical text parses to the same table and is a
/// fixed point of formatting.
pub fn table_text(data: &[u8]) {
    let Ok(table) = parse_table(data) else {
        return;
    };
    let text = table.to_text(Keys::Shown);
    let again = parse_table(text.as_bytes())
        .unwrap_or_else(|e| panic!("canonical text does not parse: {e}\n{text}"));
    assert_eq!(again, table, "parse(format(t)) != t for\n{text}");
    assert_eq!(again.to_text(Keys::Shown), text);
    let _ = table.to_text(Keys::Hidden);
}

/// `--concise` and `dm-mod.create=` text: never panic; concise round-trips.
pub fn concise_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(devices) = parse_concise(text) {
        let out = format_concise(&devices, Keys::Shown);
        let again = parse_concise(&out)
            .unwrap_or_else(|e| panic!("canonical concise text does not parse: {e}\n{out}"));
        assert_eq!(again, devices);
    }
    let _ = parse_boot(text);
}
