//! `thin metadata-pack` / `metadata-unpack`: thin-provisioning-tools 1.x's packed metadata
//! (src/pack/toplevel.rs and vm.rs, pack version 3), for sending a pool's metadata
//! somewhere small.
//!
//! The file: four little-endian u64s (magic `0xa537a0aa6309ef77`, version 3, block size
//! 4096, the number of blocks), then chunks, each a u64 length and a zlib stream of that
//! many bytes. A stream holds, per packed block, its block number (u64) and the block as a
//! program for a small byte-code machine that emits u64s and literal bytes until 4096
//! bytes are out. Only blocks whose checksum marks them as persistent-data metadata are
//! packed (superblocks of thin, cache and era, btree nodes, space-map bitmaps and index
//! blocks, array blocks); every other block unpacks as zeros, as with the reference tool.
//!
//! Unpacking runs every instruction of the machine, so packs made by thin_metadata_pack
//! read here. Packing writes each block as one literal (the machine's `LitW`), which
//! thin_metadata_unpack reads back byte for byte; zlib does the compressing. A pack is
//! untrusted input: every length is checked against what the header allows before it is
//! used, a block must come out at exactly 4096 bytes, and nothing is allocated by a size
//! the file gives.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;

use crate::error::{Error, Result};
use crate::targets::cache::metadata::SUPERBLOCK_CSUM_XOR as CACHE_SUPERBLOCK_CSUM_XOR;
use crate::targets::pdata::array::ARRAY_CSUM_XOR;
use crate::targets::pdata::block::{
    checksum, le32, BITMAP_CSUM_XOR, BLOCK_SIZE, BTREE_CSUM_XOR, INDEX_CSUM_XOR,
    SUPERBLOCK_CSUM_XOR,
};

/// The pack file's magic number.
const MAGIC: u64 = 0xa537_a0aa_6309_ef77;
/// The pack format version thin-provisioning-tools 1.x writes and reads.
const VERSION: u64 = 3;
/// `SUPERBLOCK_CSUM_XOR` of dm-era-target.c.
const ERA_SUPERBLOCK_CSUM_XOR: u32 = 146_538_381;
/// Blocks per zlib stream, as the reference packer groups them.
const BLOCKS_PER_CHUNK: usize = 1024;
/// Most blocks a pack may describe (4 TiB of metadata; a thin metadata device is at most
/// 16 GiB), so a hostile header cannot ask for an absurd output.
const MAX_BLOCKS: u64 = 1 << 30;

/// Whether `b` (one block) carries a persistent-data checksum of a known block type
/// (thin-provisioning-tools' `metadata_block_type` is not `UNKNOWN`).
fn is_metadata(b: &[u8]) -> bool {
    // One CRC for every type: `checksum(data, xor)` is the same CRC xored with the salt.
    let salt = le32(b, 0) ^ checksum(&b[4..], 0);
    [
        SUPERBLOCK_CSUM_XOR,
        CACHE_SUPERBLOCK_CSUM_XOR,
        ERA_SUPERBLOCK_CSUM_XOR,
        BTREE_CSUM_XOR,
        BITMAP_CSUM_XOR,
        INDEX_CSUM_XOR,
        ARRAY_CSUM_XOR,
    ]
    .contains(&salt)
}

fn io_err(what: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io(&what.display())(e)
}

fn bad(offset: u64, what: impl Into<String>) -> Error {
    Error::invalid("pack file", format!("offset {offset}: {}", what.into()))
}

/// Pack the metadata image `input` into `output` (thin_metadata_pack). Returns the number
/// of blocks packed.
pub fn pack(input: &Path, output: &Path) -> Result<u64> {
    let src = File::open(input).map_err(io_err(input))?;
    let len = src.metadata().map_err(io_err(input))?.len();
    let nr_blocks = len / BLOCK_SIZE as u64;
    if nr_blocks == 0 {
        return Err(Error::invalid(
            "metadata",
            format!(
                "{} holds {len} bytes, less than one 4096-byte block",
                input.display()
            ),
        ));
    }
    let out = File::create(output).map_err(io_err(output))?;
    let mut w = BufWriter::new(out);
    for v in [MAGIC, VERSION, BLOCK_SIZE as u64, nr_blocks] {
        w.write_all(&v.to_le_bytes()).map_err(io_err(output))?;
    }
    let mut chunk = ZlibEncoder::new(Vec::new(), Compression::default());
    let mut in_chunk = 0;
    let mut packed = 0u64;
    let mut block = vec![0u8; BLOCK_SIZE];
    let literal_tag = [(TAG_LITW << 4) | 2];
    let literal_len = u16::try_from(BLOCK_SIZE).unwrap_or(u16::MAX).to_le_bytes();
    for b in 0..nr_blocks {
        src.read_exact_at(&mut block, b * BLOCK_SIZE as u64)
            .map_err(io_err(input))?;
        if !is_metadata(&block) {
            continue;
        }
        for piece in [
            &b.to_le_bytes()[..],
            &literal_tag[..],
            &literal_len[..],
            &block[..],
        ] {
            chunk.write_all(piece).map_err(io_err(output))?;
        }
        packed += 1;
        in_chunk += 1;
        if in_chunk == BLOCKS_PER_CHUNK {
            let bytes = chunk.reset(Vec::new()).map_err(io_err(output))?;
            write_chunk(&mut w, &bytes).map_err(io_err(output))?;
            in_chunk = 0;
        }
    }
    if in_chunk > 0 {
        let bytes = chunk.finish().map_err(io_err(output))?;
        write_chunk(&mut w, &bytes).map_err(io_err(output))?;
    }
    w.into_inner()
        .map_err(|e| io_err(output)(e.into_error()))?
        .sync_all()
        .map_err(io_err(output))?;
    Ok(packed)
}

fn write_chunk(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)
}

/// Unpack `input` (a pack from thin_metadata_pack or `pack`) into the metadata image
/// `output` (thin_metadata_unpack): the image has the header's number of blocks, the
/// packed ones as they were, zeros elsewhere. Returns the number of blocks unpacked.
pub fn unpack(input: &Path, output: &Path) -> Result<u64> {
    let file = File::open(input).map_err(io_err(input))?;
    let file_len = file.metadata().map_err(io_err(input))?.len();
    let mut r = BufReader::new(file);
    let mut header = [0u64; 4];
    for (i, v) in header.iter_mut().enumerate() {
        *v = read_u64(&mut r).map_err(|_| bad(8 * i as u64, "the header is cut short"))?;
    }
    let [magic, version, block_size, nr_blocks] = header;
    if magic != MAGIC {
        return Err(bad(0, format!("magic {magic:#018x} is not a pack file's")));
    }
    if version != VERSION {
        return Err(bad(8, format!("unsupported pack file version {version}")));
    }
    if block_size != BLOCK_SIZE as u64 {
        return Err(bad(16, format!("block size {block_size} is not 4096")));
    }
    if nr_blocks == 0 || nr_blocks > MAX_BLOCKS {
        return Err(bad(
            24,
            format!("{nr_blocks} blocks (a pack holds 1 to {MAX_BLOCKS})"),
        ));
    }
    let out = File::create(output).map_err(io_err(output))?;
    out.set_len(nr_blocks * BLOCK_SIZE as u64)
        .map_err(io_err(output))?;
    let mut at = 32u64;
    let mut unpacked = 0u64;
    let mut block = Vec::with_capacity(BLOCK_SIZE);
    while at < file_len {
        let len = read_u64(&mut r).map_err(|_| bad(at, "a chunk length is cut short"))?;
        if len > file_len - at - 8 {
            return Err(bad(
                at,
                format!("chunk of {len} bytes runs past the file's end"),
            ));
        }
        let chunk_at = at;
        let mut z = ZlibDecoder::new((&mut r).take(len));
        loop {
            let mut nr = [0u8; 8];
            match read_some(&mut z, &mut nr) {
                Ok(0) => break,
                Ok(8) => {}
                Ok(_) => return Err(bad(chunk_at, "a block number is cut short")),
                Err(e) => return Err(bad(chunk_at, format!("zlib: {e}"))),
            }
            let b = u64::from_le_bytes(nr);
            if b >= nr_blocks {
                return Err(bad(
                    chunk_at,
                    format!("block {b} is past the header's {nr_blocks} blocks"),
                ));
            }
            block.clear();
            Vm::default()
                .exec(&mut z, &mut block, BLOCK_SIZE, BLOCK_SIZE)
                .map_err(|e| bad(chunk_at, format!("block {b}: {e}")))?;
            if block.len() != BLOCK_SIZE {
                return Err(bad(
                    chunk_at,
                    format!("block {b} unpacks to {} bytes, not 4096", block.len()),
                ));
            }
            out.write_all_at(&block, b * BLOCK_SIZE as u64)
                .map_err(io_err(output))?;
            unpacked += 1;
        }
        // What zlib did not read of the chunk (bytes after its stream) is skipped.
        let mut rest = z.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(io_err(input))?;
        at += 8 + len;
    }
    out.sync_all().map_err(io_err(output))?;
    Ok(unpacked)
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Fill `buf` as far as the stream goes: the bytes read (0 at a clean end).
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// The machine's instructions: a tag in the high nibble, an operand in the low one.
const TAG_SET: u8 = 0;
const TAG_POS: u8 = 1;
const TAG_POSW: u8 = 2;
const TAG_NEG: u8 = 3;
const TAG_NEGW: u8 = 4;
const TAG_CONST: u8 = 5;
const TAG_CONST8: u8 = 6;
const TAG_COUNT: u8 = 7;
const TAG_COUNT8: u8 = 8;
const TAG_LIT: u8 = 9;
const TAG_LITW: u8 = 10;
const TAG_SHIFTED_RUN: u8 = 11;

/// The unpacking machine (vm.rs's `VM`): a base value that instructions set, move and
/// emit as little-endian u64s, and literal bytes.
#[derive(Default)]
struct Vm {
    base: u64,
    /// Instructions run for this block (bounded by `MAX_STEPS`).
    steps: usize,
}

/// Most instructions one block may take (the reference encoder uses at most one per
/// emitted u64), so a stream of instructions that emit nothing cannot run on.
const MAX_STEPS: usize = 1 << 16;
/// Deepest nesting of counts and shifted runs (the reference encoder nests at most 3).
const MAX_DEPTH: usize = 8;

type VmResult<T> = std::result::Result<T, String>;

fn byte(r: &mut impl Read) -> VmResult<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)
        .map_err(|e| format!("cut short: {e}"))?;
    Ok(b[0])
}

/// An operand of `width` bytes (1, 2, 4 or 8).
fn operand(r: &mut impl Read, width: u8) -> VmResult<u64> {
    let n = match width {
        1 | 2 | 4 | 8 => usize::from(width),
        w => return Err(format!("operand width {w}")),
    };
    let mut b = [0u8; 8];
    r.read_exact(&mut b[..n])
        .map_err(|e| format!("cut short: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

impl Vm {
    fn emit(out: &mut Vec<u8>, limit: usize, bytes: &[u8]) -> VmResult<()> {
        if out.len() + bytes.len() > limit {
            return Err(format!("emits more than {limit} bytes"));
        }
        out.extend_from_slice(bytes);
        Ok(())
    }

    fn emit_base(&self, out: &mut Vec<u8>, limit: usize, times: usize) -> VmResult<()> {
        for _ in 0..times {
            Vm::emit(out, limit, &self.base.to_le_bytes())?;
        }
        Ok(())
    }

    /// Run instructions until at least `want` bytes are out (vm.rs's `exec`); `limit`
    /// bounds what they may emit in all.
    fn exec(
        &mut self,
        r: &mut impl Read,
        out: &mut Vec<u8>,
        want: usize,
        limit: usize,
    ) -> VmResult<()> {
        self.exec_at(r, out, want, limit, 0)
    }

    fn exec_at(
        &mut self,
        r: &mut impl Read,
        out: &mut Vec<u8>,
        want: usize,
        limit: usize,
        depth: usize,
    ) -> VmResult<()> {
        let start = out.len();
        while out.len() - start < want {
            self.instr(r, out, 1, start + limit, depth)?;
        }
        Ok(())
    }

    /// One instruction, applied `count` times where it repeats (`Count` prefixes).
    fn instr(
        &mut self,
        r: &mut impl Read,
        out: &mut Vec<u8>,
        count: usize,
        limit: usize,
        depth: usize,
    ) -> VmResult<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(format!("more than {MAX_STEPS} instructions"));
        }
        if depth > MAX_DEPTH {
            return Err(format!("counts and runs nested deeper than {MAX_DEPTH}"));
        }
        let b = byte(r)?;
        let (tag, nibble) = (b >> 4, b & 0xf);
        let once = |what: &str| {
            if count == 1 {
                Ok(())
            } else {
                Err(format!("{what} under a count of {count}"))
            }
        };
        match tag {
            TAG_SET => {
                self.base = operand(r, nibble)?;
                self.emit_base(out, limit, count)
            }
            TAG_POS | TAG_POSW | TAG_NEG | TAG_NEGW => {
                let delta = if tag == TAG_POS || tag == TAG_NEG {
                    u64::from(nibble)
                } else {
                    operand(r, nibble)?
                };
                for _ in 0..count {
                    self.base = if tag == TAG_POS || tag == TAG_POSW {
                        self.base.wrapping_add(delta)
                    } else {
                        self.base.wrapping_sub(delta)
                    };
                    self.emit_base(out, limit, 1)?;
                }
                Ok(())
            }
            TAG_CONST => {
                once("const")?;
                self.emit_base(out, limit, usize::from(nibble))
            }
            TAG_CONST8 => {
                once("const")?;
                let n = (usize::from(nibble) << 8) | usize::from(byte(r)?);
                self.emit_base(out, limit, n)
            }
            TAG_COUNT => self.instr(r, out, usize::from(nibble), limit, depth + 1),
            TAG_COUNT8 => {
                let n = (usize::from(nibble) << 8) | usize::from(byte(r)?);
                self.instr(r, out, n, limit, depth + 1)
            }
            TAG_LIT | TAG_LITW => {
                once("literal")?;
                let len = if tag == TAG_LIT {
                    u64::from(nibble)
                } else {
                    operand(r, nibble)?
                };
                let room = limit.saturating_sub(out.len());
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&n| n <= room)
                    .ok_or_else(|| format!("literal of {len} bytes emits more than {limit}"))?;
                let at = out.len();
                out.resize(at + len, 0);
                r.read_exact(&mut out[at..])
                    .map_err(|e| format!("literal cut short: {e}"))
            }
            TAG_SHIFTED_RUN => {
                let len = (usize::from(nibble) << 8) | usize::from(byte(r)?);
                let bytes = len * 8;
                // Two runs of u64s, the high parts then the low 24 bits, each emitted
                // aside (an instruction may overshoot; only the first `len` count).
                let mut high = Vec::new();
                self.exec_at(r, &mut high, bytes, bytes + 8 * 4096, depth + 1)?;
                let mut low = Vec::new();
                self.exec_at(r, &mut low, bytes, bytes + 8 * 4096, depth + 1)?;
                for i in 0..len {
                    let at = |v: &[u8]| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&v[i * 8..i * 8 + 8]);
                        u64::from_le_bytes(a)
                    };
                    let v = (at(&high) << 24) | (at(&low) & ((1 << 24) - 1));
                    Vm::emit(out, limit, &v.to_le_bytes())?;
                }
                Ok(())
            }
            t => Err(format!("unknown instruction {t:#x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &[u8], want: usize) -> VmResult<Vec<u8>> {
        let mut out = Vec::new();
        Vm::default().exec(&mut &program[..], &mut out, want, want)?;
        Ok(out)
    }

    fn u64s(v: &[u64]) -> Vec<u8> {
        v.iter().flat_map(|n| n.to_le_bytes()).collect()
    }

    // Programs written by hand from vm.rs's encoder (pack_delta, pack_count,
    // pack_shifted_u64s), so every instruction is run.
    #[test]
    fn every_instruction_emits_what_the_reference_encoder_meant() {
        // Set 1 byte 5; Pos 3 (8); Count 2 + Pos 1 (9, 10); PosW 2 bytes 0x100 (266);
        // Neg 6 (260); NegW 1 byte 200 (60); Const 2 (60, 60).
        let p = [
            0x01, 5, 0x13, 0x72, 0x11, 0x22, 0x00, 0x01, 0x36, 0x41, 200, 0x52,
        ];
        assert_eq!(
            run(&p, 72).unwrap(),
            u64s(&[5, 8, 9, 10, 266, 260, 60, 60, 60])
        );
        // Set 1 byte 7 then Const8 (0 << 8 | 3): 7 four times.
        assert_eq!(run(&[0x01, 7, 0x60, 3], 32).unwrap(), u64s(&[7; 4]));
        // Count8 (0 << 8 | 2) applied to Set: the value twice.
        assert_eq!(run(&[0x80, 2, 0x01, 9], 16).unwrap(), u64s(&[9, 9]));
        // Lit 3 and LitW 1-byte length 5.
        assert_eq!(
            run(&[0x93, b'a', b'b', b'c', 0xa1, 5, 1, 2, 3, 4, 5], 8).unwrap(),
            b"abc\x01\x02\x03\x04\x05".to_vec()
        );
        // ShiftedRun of 2: high parts (Set 1, Pos 1 → 1, 2), low parts (Set 4, Pos 2 → 4, 6).
        let p = [0xb0, 2, 0x01, 1, 0x11, 0x01, 4, 0x12];
        assert_eq!(run(&p, 16).unwrap(), u64s(&[(1 << 24) | 4, (2 << 24) | 6]));
    }

    #[test]
    fn hostile_programs_fail_without_allocating_what_they_ask() {
        // A literal of 2^64-1 bytes, a const of 4095 u64s past the limit, a bad tag,
        // a bad width, a literal under a count, a cut stream.
        for p in [
            &[0xa8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x01, 1, 0x6f, 0xff],
            &[0xc0],
            &[0x03, 0],
            &[0x72, 0x91, 0],
            &[0x01],
            // Counts of counts, deeper than any encoder nests them.
            &[0x72; 64],
        ] {
            assert!(run(p, 4096).is_err(), "{p:?}");
        }
    }

    #[test]
    fn a_literal_block_packs_and_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, packed, back) = (
            dir.path().join("m"),
            dir.path().join("p"),
            dir.path().join("b"),
        );
        // Block 0: a btree node (valid checksum); block 1: garbage; block 2: zeros.
        let mut img = vec![0u8; 3 * BLOCK_SIZE];
        img[100] = 7;
        let sum = checksum(&img[4..BLOCK_SIZE], BTREE_CSUM_XOR);
        img[..4].copy_from_slice(&sum.to_le_bytes());
        img[BLOCK_SIZE..2 * BLOCK_SIZE].fill(0x5a);
        std::fs::write(&meta, &img).unwrap();
        assert_eq!(pack(&meta, &packed).unwrap(), 1);
        assert_eq!(unpack(&packed, &back).unwrap(), 1);
        let got = std::fs::read(&back).unwrap();
        assert_eq!(got.len(), img.len());
        assert_eq!(got[..BLOCK_SIZE], img[..BLOCK_SIZE]);
        assert!(got[BLOCK_SIZE..].iter().all(|&b| b == 0));
    }
}
