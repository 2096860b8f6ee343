//! dm-verity forward error correction: the parity area veritysetup writes with
//! `--fec-device` (cryptsetup `lib/verity/verity_fec.c`, `FEC_encode_inputs`) and the
//! kernel's recovery of a block that failed its hash (dm-verity-fec.c `verity_fec_decode`).
//!
//! The message is `fec_blocks` blocks: the data blocks, then the hash device from
//! `hash_start`, zero padded to `rounds * rsn` blocks. Codeword `c` (0 ≤ c < rounds·bs)
//! takes byte `c mod bs` of message blocks `c / bs + j·rounds` for j < rsn; its `roots`
//! parity bytes sit at byte `c·roots` of the FEC area (disk-formats.md §3.3).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::rs::{Rs, NN};
use crate::error::{Error, Result};
use crate::units::Sector;
use crate::volume::{SharedVolume, Volume};

/// Layout of one FEC area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FecGeometry {
    /// Parity bytes per codeword (2..=24).
    pub roots: u32,
    /// Block size (data and hash block sizes must match).
    pub block_size: u32,
    /// Blocks covered (`fec_blocks`).
    pub blocks: u64,
    /// First block of the FEC area on the FEC device (`fec_start`).
    pub start: u64,
    /// Data blocks (the first part of the message).
    pub data_blocks: u64,
    /// Hash block where the message's hash part starts (`hash_start`).
    pub hash_start: u64,
}

/// What the caller knows about one message block of a codeword group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// Use the bytes as read.
    Plain,
    /// A data block that failed its hash or its read: an erasure in the second attempt.
    Erasure,
    /// A known zero block (`ignore_zero_blocks`): its bytes count as zeros.
    Zero,
}

impl FecGeometry {
    /// The kernel's `verity_fec_ctr` checks that need no device sizes.
    pub fn new(
        roots: u32,
        block_size: u32,
        blocks: u64,
        start: u64,
        data_blocks: u64,
        hash_start: u64,
        hash_end: u64,
    ) -> Result<FecGeometry> {
        let bad = |w: &str| Error::invalid("verity FEC", w.to_string());
        if !(2..=24).contains(&roots) {
            return Err(bad("Missing fec_roots"));
        }
        if blocks == 0 {
            return Err(bad("Missing fec_blocks"));
        }
        if blocks < data_blocks + (hash_end - hash_start) {
            return Err(bad("Invalid fec_blocks"));
        }
        Ok(FecGeometry {
            roots,
            block_size,
            blocks,
            start,
            data_blocks,
            hash_start,
        })
    }

    /// Message bytes per codeword.
    #[must_use]
    pub fn rsn(&self) -> u64 {
        u64::from(255 - self.roots)
    }

    /// `ceil(blocks / rsn)`.
    #[must_use]
    pub fn rounds(&self) -> u64 {
        self.blocks.div_ceil(self.rsn())
    }

    /// Size of the parity area in bytes (`rounds * roots` blocks).
    #[must_use]
    pub fn area_bytes(&self) -> u64 {
        self.rounds() * u64::from(self.roots) * u64::from(self.block_size)
    }

    /// Blocks of the hash device in the message (kernel `fec->hash_blocks`).
    #[must_use]
    pub fn hash_blocks(&self) -> u64 {
        self.blocks - self.data_blocks
    }

    /// Read message block `k` (zeros past the covered area).
    fn read_msg(&self, k: u64, data: &dyn Volume, hash: &dyn Volume, buf: &mut [u8]) -> Result<()> {
        let spb = u64::from(self.block_size / 512);
        if k < self.data_blocks {
            data.read(Sector(k * spb), buf)
        } else if k - self.data_blocks < self.hash_blocks() {
            hash.read(Sector((self.hash_start + k - self.data_blocks) * spb), buf)
        } else {
            buf.fill(0);
            Ok(())
        }
    }
}

/// Write the parity of `data` + `hash` into `fec` at byte `fec_offset`, byte-identical to
/// `veritysetup format --fec-device`.
pub fn encode(
    g: &FecGeometry,
    data: &dyn Volume,
    hash: &dyn Volume,
    fec: &File,
    fec_offset: u64,
) -> Result<()> {
    let rs = Rs::new(g.roots as usize);
    let bs = g.block_size as usize;
    let roots = rs.roots();
    let rounds = g.rounds();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per = rounds.div_ceil(threads);
    // Rounds are independent: each thread encodes a contiguous run of them.
    let work = |first: u64, last: u64| -> Result<()> {
        let mut buf = vec![0u8; rs.rsn() * bs];
        let mut out = vec![0u8; bs * roots];
        for n in first..last {
            for (i, blk) in buf.chunks_exact_mut(bs).enumerate() {
                g.read_msg(n + i as u64 * rounds, data, hash, blk)?;
            }
            rs.encode_columns(&buf, bs, &mut out);
            fec.write_all_at(&out, fec_offset + n * (bs * roots) as u64)
                .map_err(Error::io(&"FEC device"))?;
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let jobs: Vec<_> = (0..threads)
            .map(|t| {
                let (first, last) = ((t * per).min(rounds), ((t + 1) * per).min(rounds));
                scope.spawn(move || work(first, last))
            })
            .collect();
        jobs.into_iter()
            .map(|j| {
                j.join().unwrap_or_else(|_| {
                    Err(Error::invalid("verity FEC", "encoder thread panicked"))
                })
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

/// The kernel side: recover blocks from the parity on a FEC device.
#[derive(Debug)]
pub struct FecReader {
    geo: FecGeometry,
    rs: Rs,
    dev: SharedVolume,
}

impl FecReader {
    /// Check the FEC device size (kernel "FEC device is too small").
    pub fn new(geo: FecGeometry, dev: SharedVolume) -> Result<FecReader> {
        let need = geo.start * u64::from(geo.block_size) + geo.area_bytes();
        if dev.size().bytes() < need {
            return Err(Error::invalid(
                "verity FEC",
                format!(
                    "FEC device is too small: {} bytes, {need} needed",
                    dev.size().bytes()
                ),
            ));
        }
        let rs = Rs::new(geo.roots as usize);
        Ok(FecReader { geo, rs, dev })
    }

    /// The layout.
    #[must_use]
    pub fn geometry(&self) -> &FecGeometry {
        &self.geo
    }

    /// Try to recover message block `target` into `out` (kernel `verity_fec_decode`): read
    /// the codeword group, classify each data block with `classify(k, bytes)`, decode
    /// without erasures and, if that fails or the result does not pass `check` (the block's
    /// hash), again with the erasures (kernel `fec_decode_rsb(.., false)` then `(.., true)`).
    pub fn correct(
        &self,
        target: u64,
        data: &dyn Volume,
        hash: &dyn Volume,
        classify: &dyn Fn(u64, &[u8]) -> Row,
        check: &dyn Fn(&[u8]) -> bool,
        out: &mut [u8],
    ) -> Result<bool> {
        let g = &self.geo;
        let bs = g.block_size as usize;
        let rounds = g.rounds();
        let rsn = self.rs.rsn();
        let roots = self.rs.roots();
        let first = target % rounds; // message block of row 0
        let res = usize::try_from(target / rounds).unwrap_or(usize::MAX);
        if res >= rsn {
            return Ok(false);
        }
        let mut rows = vec![0u8; rsn * bs];
        let mut erasures = Vec::new();
        for (j, blk) in rows.chunks_exact_mut(bs).enumerate() {
            let k = first + j as u64 * rounds;
            match g.read_msg(k, data, hash, blk) {
                Err(_) => {
                    blk.fill(0);
                    erasures.push(j);
                }
                Ok(()) if k < g.data_blocks => match classify(k, blk) {
                    Row::Plain => {}
                    Row::Zero => blk.fill(0),
                    Row::Erasure => erasures.push(j),
                },
                Ok(()) => {}
            }
        }
        let mut parity = vec![0u8; bs * roots];
        let par_off = g.start * bs as u64 + first * (bs * roots) as u64;
        self.dev.read(Sector(par_off / 512), &mut parity)?;
        let mut cw = vec![0u8; NN];
        for eras in [&[][..], &erasures[..]] {
            if eras.len() > roots {
                return Ok(false);
            }
            let mut ok = true;
            for b in 0..bs {
                for j in 0..rsn {
                    cw[j] = rows[j * bs + b];
                }
                cw[rsn..].copy_from_slice(&parity[b * roots..(b + 1) * roots]);
                if self.rs.decode(&mut cw, eras).is_err() {
                    ok = false;
                    break;
                }
                out[b] = cw[res];
            }
            if ok && check(out) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
