//! Persistent arrays and bitsets (persistent-data/dm-array.c, dm-bitset.c): a btree keyed
//! by array block index whose values are the locations of array blocks, each holding up to
//! `(4096 - 24) / value_size` fixed-size values. A bitset is an array of little-endian u64
//! words, bit `i` in word `i / 64`, bit `i % 64`.
//!
//! ```text
//!  btree (key: array block index, value: __le64 block) ──> array block
//!    array block: csum(4) max_entries(4) nr_entries(4) value_size(4) blocknr(8) values...
//! ```

use crate::error::Result;

use super::block::{checksum, corrupt, le32, le64, MetaDev, BLOCK_SIZE};
use super::btree;

/// `CSUM_XOR` of dm-array.c.
pub const ARRAY_CSUM_XOR: u32 = 595_846_735;
/// `sizeof(struct array_block)`.
pub const ARRAY_HEADER: usize = 24;
/// Name of an array block in errors.
const WHAT: &str = "array block";

/// `calc_max_entries`: values an array block of `value_size`-byte values holds.
#[must_use]
pub fn max_entries(value_size: usize) -> usize {
    (BLOCK_SIZE - ARRAY_HEADER) / value_size.max(1)
}

/// Read array block `b` with `array_block_check` (blocknr, checksum, value_size, max and
/// nr entries) plus the value size the array's owner expects.
pub fn read_block(dev: &MetaDev, b: u64, value_size: usize) -> Result<Vec<u8>> {
    let buf = dev.read_raw(b, WHAT)?;
    let stored = le64(&buf, 16);
    if stored != b {
        return Err(corrupt(
            WHAT,
            b,
            16,
            format_args!("blocknr field says {stored}"),
        ));
    }
    let want = checksum(&buf[4..], ARRAY_CSUM_XOR);
    let got = le32(&buf, 0);
    if got != want {
        return Err(corrupt(
            WHAT,
            b,
            0,
            format_args!("checksum {got:#010x}, computed {want:#010x}"),
        ));
    }
    let vs = le32(&buf, 12);
    if vs == 0 {
        return Err(corrupt(WHAT, b, 12, "value_size is zero"));
    }
    if usize::try_from(vs).ok() != Some(value_size) {
        return Err(corrupt(
            WHAT,
            b,
            12,
            format_args!("value_size {vs}, the array holds {value_size}-byte values"),
        ));
    }
    let max = le32(&buf, 4);
    if usize::try_from(max).ok() != Some(max_entries(value_size)) {
        return Err(corrupt(
            WHAT,
            b,
            4,
            format_args!("max_entries {max} invalid for value_size {vs}"),
        ));
    }
    let nr = le32(&buf, 8);
    if nr > max {
        return Err(corrupt(
            WHAT,
            b,
            8,
            format_args!("nr_entries {nr} above max_entries {max}"),
        ));
    }
    Ok(buf)
}

/// Visit every value of the array at `root` that must hold `nr_entries` values of
/// `value_size` bytes, in index order: `visit(index, value)`. Every array block but the
/// last must be full and the last must hold the rest (as `dm_array_resize` leaves them);
/// the btree keys must run 0, 1, 2, ... Memory stays at one block.
pub fn walk(
    dev: &MetaDev,
    root: u64,
    nr_entries: u64,
    value_size: usize,
    visit: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let per = max_entries(value_size) as u64;
    let nr_blocks = nr_entries.div_ceil(per);
    let mut next = 0u64;
    btree::walk_located(dev, root, 8, &mut |key, v, at| {
        if key != next || key >= nr_blocks {
            return Err(corrupt(
                "array btree key",
                at.block,
                at.offset,
                format_args!(
                    "array block index {key} where {next} was due ({nr_blocks} blocks for \
                     {nr_entries} entries)"
                ),
            ));
        }
        let b = le64(v, 0);
        let buf = read_block(dev, b, value_size)?;
        let want = if key + 1 == nr_blocks {
            nr_entries - key * per
        } else {
            per
        };
        let nr = u64::from(le32(&buf, 8));
        if nr != want {
            return Err(corrupt(
                WHAT,
                b,
                8,
                format_args!("nr_entries {nr}, array block {key} must hold {want}"),
            ));
        }
        for i in 0..nr {
            let off = ARRAY_HEADER + usize::try_from(i).unwrap_or(0) * value_size;
            visit(key * per + i, &buf[off..off + value_size])?;
        }
        next = key + 1;
        Ok(())
    })?;
    if next != nr_blocks {
        return Err(corrupt(
            "array btree",
            root,
            0,
            format_args!("{next} array blocks, {nr_entries} entries need {nr_blocks}"),
        ));
    }
    Ok(())
}

/// Visit the bits of the bitset at `root` holding `nr_bits` bits: `visit(bit)` for each set
/// bit, in order. Bits past `nr_bits` in the last word are ignored, as the kernel does.
pub fn walk_bitset(
    dev: &MetaDev,
    root: u64,
    nr_bits: u64,
    visit: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<()> {
    walk(dev, root, nr_bits.div_ceil(64), 8, &mut |w, v| {
        let mut word = le64(v, 0);
        while word != 0 {
            let bit = w * 64 + u64::from(word.trailing_zeros());
            word &= word - 1;
            if bit < nr_bits {
                visit(bit)?;
            }
        }
        Ok(())
    })
}
