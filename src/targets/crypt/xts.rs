//! XTS (IEEE 1619) over the `aes` crate, batched per data unit.
//!
//! Why by hand: the `xts-mode` crate encrypts one block at a time (0.4–1.0 GB/s here), while
//! `aes`'s `encrypt_blocks` pipelines 8 blocks through AES-NI. So for each data unit (one
//! crypt sector) all tweaks are computed first (8 independent multiply-by-x⁸ chains, so the
//! doubling does not serialise), the unit is XORed, encrypted with one `encrypt_blocks`
//! call, and XORed again. The tweak encryptions of all units of a request are batched the
//! same way. Data units are at most 4096 bytes (the largest dm-crypt sector size), whole
//! blocks only, so ciphertext stealing never happens (kernel crypto/xts.c).

use aes::cipher::consts::U16;
use aes::cipher::{Array, Block, BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser};

/// Largest data unit in 16-byte blocks (4096-byte sectors).
pub(crate) const MAX_UNIT_BLOCKS: usize = 256;

/// `RED[b]` = b·x¹²⁸ mod (x¹²⁸ + x⁷ + x² + x + 1), the feedback of a shift by 8 bits.
const RED: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        // Carry-less product of b and 0x87.
        let mut acc = 0u16;
        let mut i = 0;
        while i < 8 {
            if b & (1 << i) != 0 {
                acc ^= 0x87 << i;
            }
            i += 1;
        }
        t[b] = acc;
        b += 1;
    }
    t
};

/// t·x in GF(2¹²⁸) with XTS's little-endian convention.
#[inline(always)]
fn mul_x(t: u128) -> u128 {
    (t << 1) ^ (if t >> 127 == 1 { 0x87 } else { 0 })
}

/// t·x⁸.
#[inline(always)]
fn mul_x8(t: u128) -> u128 {
    (t << 8) ^ u128::from(RED[usize::from((t >> 120) as u8)])
}

/// Fill `tweaks` with T₀·xⁱ.
#[inline]
fn tweaks(t0: u128, tweaks: &mut [u128]) {
    let n = tweaks.len();
    let head = n.min(8);
    let mut t = t0;
    for slot in &mut tweaks[..head] {
        *slot = t;
        t = mul_x(t);
    }
    for i in head..n {
        tweaks[i] = mul_x8(tweaks[i - 8]);
    }
}

#[inline]
fn xor_tweaks(data: &mut [u8], tweaks: &[u128]) {
    for (chunk, t) in data.chunks_exact_mut(16).zip(tweaks) {
        let mut b = [0u8; 16];
        b.copy_from_slice(chunk);
        let v = u128::from_le_bytes(b) ^ t;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
}

fn blocks(data: &mut [u8]) -> &mut [Block<aes::Aes128>] {
    let (blocks, rest) = Array::<u8, U16>::slice_as_chunks_mut(data);
    debug_assert!(rest.is_empty());
    blocks
}

/// Encrypt the IV blocks into first tweaks (one batched call for all units of a request).
pub(crate) fn encrypt_ivs<C>(tweak_cipher: &C, ivs: &mut [[u8; 16]])
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    let flat = ivs.as_flattened_mut();
    tweak_cipher.encrypt_blocks(blocks(flat));
}

/// Encrypt one data unit (a whole number of blocks, at most [`MAX_UNIT_BLOCKS`]) whose
/// first tweak (the encrypted IV) is `t0`.
pub(crate) fn encrypt_unit<C>(data_cipher: &C, t0: &[u8; 16], data: &mut [u8])
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    let n = data.len() / 16;
    let mut t = [0u128; MAX_UNIT_BLOCKS];
    let t = &mut t[..n];
    tweaks(u128::from_le_bytes(*t0), t);
    xor_tweaks(data, t);
    data_cipher.encrypt_blocks(blocks(data));
    xor_tweaks(data, t);
}

/// Decrypt one data unit (see [`encrypt_unit`]).
pub(crate) fn decrypt_unit<C>(data_cipher: &C, t0: &[u8; 16], data: &mut [u8])
where
    C: BlockCipherDecrypt + BlockSizeUser<BlockSize = U16>,
{
    let n = data.len() / 16;
    let mut t = [0u128; MAX_UNIT_BLOCKS];
    let t = &mut t[..n];
    tweaks(u128::from_le_bytes(*t0), t);
    xor_tweaks(data, t);
    data_cipher.decrypt_blocks(blocks(data));
    xor_tweaks(data, t);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mul_x8_equals_eight_doublings() {
        let mut t: u128 = 0xfedc_ba98_7654_3210_0123_4567_89ab_cdef;
        for _ in 0..50 {
            let mut d = t;
            for _ in 0..8 {
                d = mul_x(d);
            }
            assert_eq!(mul_x8(t), d);
            t = mul_x(t) ^ (t >> 3);
        }
    }

    #[test]
    fn tweak_chains_equal_serial_doubling() {
        let t0 = 0x8000_0000_0000_0000_0000_0000_0000_0001u128;
        let mut fast = [0u128; 40];
        tweaks(t0, &mut fast);
        let mut t = t0;
        for f in fast {
            assert_eq!(f, t);
            t = mul_x(t);
        }
    }
}
