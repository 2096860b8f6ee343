//! XTS (IEEE 1619) over the `aes` crate, fused per data unit.
//!
//! Why by hand: the `xts-mode` crate encrypts one block at a time (0.4–1.0 GB/s here), while
//! `aes`'s backends pipeline 8 blocks through AES-NI. The XTS loop runs as a closure
//! *inside* the backend (`encrypt_with_backend`), so it is compiled with AES-NI enabled and
//! each group of 8 blocks is XORed with its tweaks, encrypted and XORed again while in
//! registers (three passes over memory cost ~40 % here). The 8 tweaks of a group advance as
//! 8 independent multiply-by-x⁸ chains, so the doubling does not serialise. The tweak
//! encryptions (first tweaks) of all units of a request are batched in one call. Data units
//! are whole blocks (dm-crypt sectors), so ciphertext stealing never happens
//! (kernel crypto/xts.c).

use aes::cipher::consts::U16;

use super::aes_keys::RoundKeys;
use super::iv::Direction;
use super::modes::{with_cipher, Cipher};
use super::vaes;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, ParBlocks,
};

/// t·x in GF(2¹²⁸) with XTS's little-endian convention.
#[inline(always)]
fn mul_x(t: u128) -> u128 {
    (t << 1) ^ (if t >> 127 == 1 { 0x87 } else { 0 })
}

/// t·x⁸: shift by a byte and fold the byte shifted out back in as b·(x⁷ + x² + x + 1),
/// which has degree < 15 and needs no further reduction.
#[inline(always)]
fn mul_x8(t: u128) -> u128 {
    let b = t >> 120;
    (t << 8) ^ b ^ (b << 1) ^ (b << 2) ^ (b << 7)
}

#[inline(always)]
fn load(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    u128::from_le_bytes(a)
}

/// Fill `tweaks` with T₀·xⁱ (test helper mirroring the closures' tweak schedule).
#[cfg(test)]
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

/// The first `P` tweaks of a unit: T₀, T₀·x, …, T₀·x^(P−1).
#[inline(always)]
fn first_tweaks<const P: usize>(t0: u128) -> [u128; P] {
    let mut t = [0u128; P];
    let mut v = t0;
    for slot in &mut t {
        *slot = v;
        v = mul_x(v);
    }
    t
}

#[inline(always)]
fn xor16(a: &[u8], t: u128, out: &mut [u8]) {
    out.copy_from_slice(&(load(a) ^ t).to_le_bytes());
}

macro_rules! xts_closure {
    ($name:ident, $closure:ident, $backend:ident, $par:ident, $one:ident) => {
        /// Fused XTS over one data unit, run inside the AES backend (with its CPU features
        /// enabled): per group of parallel blocks, XOR with the tweaks, cipher, XOR again.
        /// Reads `src` (or `dst` itself when `src` is `None`) and writes `dst`.
        struct $name<'a> {
            src: Option<&'a [u8]>,
            dst: &'a mut [u8],
            t0: u128,
        }

        impl BlockSizeUser for $name<'_> {
            type BlockSize = U16;
        }

        impl $closure for $name<'_> {
            #[inline(always)]
            fn call<B: $backend<BlockSize = U16>>(self, backend: &B) {
                // Groups of 8 blocks whose tweaks advance as 8 independent x⁸ chains.
                const P: usize = 8;
                let par = <B::ParBlocksSize as Unsigned>::USIZE;
                let len = self.dst.len();
                let whole = if par == P {
                    len / (16 * P) * (16 * P)
                } else {
                    0
                };
                let mut t = first_tweaks::<P>(self.t0);
                let mut t2 = t.map(mul_x8);
                let mut blocks = ParBlocks::<B>::default();
                let mut blocks2 = ParBlocks::<B>::default();
                let mut at = 0;
                // Two groups per step give the out-of-order core independent AES work
                // while one group's XORs are in flight.
                while at + 32 * P <= whole {
                    let r = at..at + 32 * P;
                    let input: &[u8] = match self.src {
                        Some(s) => &s[r.clone()],
                        None => &self.dst[r.clone()],
                    };
                    let (i1, i2) = input.split_at(16 * P);
                    for ((b, c), tw) in blocks.iter_mut().zip(i1.chunks_exact(16)).zip(t) {
                        xor16(c, tw, b);
                    }
                    for ((b, c), tw) in blocks2.iter_mut().zip(i2.chunks_exact(16)).zip(t2) {
                        xor16(c, tw, b);
                    }
                    backend.$par((&mut blocks).into());
                    backend.$par((&mut blocks2).into());
                    let (o1, o2) = self.dst[r].split_at_mut(16 * P);
                    for ((b, c), tw) in blocks.iter().zip(o1.chunks_exact_mut(16)).zip(t) {
                        xor16(b, tw, c);
                    }
                    for ((b, c), tw) in blocks2.iter().zip(o2.chunks_exact_mut(16)).zip(t2) {
                        xor16(b, tw, c);
                    }
                    for (v, w) in t.iter_mut().zip(t2.iter_mut()) {
                        *v = mul_x8(*w);
                        *w = mul_x8(*v);
                    }
                    at += 32 * P;
                }
                while at < whole {
                    let r = at..at + 16 * P;
                    let input: &[u8] = match self.src {
                        Some(s) => &s[r.clone()],
                        None => &self.dst[r.clone()],
                    };
                    for ((b, c), tw) in blocks.iter_mut().zip(input.chunks_exact(16)).zip(t) {
                        xor16(c, tw, b);
                    }
                    backend.$par((&mut blocks).into());
                    for ((b, c), tw) in blocks.iter().zip(self.dst[r].chunks_exact_mut(16)).zip(t) {
                        xor16(b, tw, c);
                    }
                    for v in &mut t {
                        *v = mul_x8(*v);
                    }
                    at += 16 * P;
                }
                // Blocks not covered by whole parallel groups, one at a time.
                let mut tw = t[0];
                while at < len {
                    let r = at..at + 16;
                    let input: &[u8] = match self.src {
                        Some(s) => &s[r.clone()],
                        None => &self.dst[r.clone()],
                    };
                    let b = &mut blocks[0];
                    xor16(input, tw, b);
                    backend.$one(b.into());
                    xor16(b, tw, &mut self.dst[r]);
                    tw = mul_x(tw);
                    at += 16;
                }
            }
        }
    };
}

xts_closure!(
    EncUnit,
    BlockCipherEncClosure,
    BlockCipherEncBackend,
    encrypt_par_blocks,
    encrypt_block
);
xts_closure!(
    DecUnit,
    BlockCipherDecClosure,
    BlockCipherDecBackend,
    decrypt_par_blocks,
    decrypt_block
);

/// The keys of one `xts(aes)` transform: data key, tweak key, and the data key's round
/// keys for the VAES kernel when the CPU has VAES.
pub(crate) struct XtsKeys {
    data: Cipher,
    tweak: Cipher,
    vaes: Option<RoundKeys>,
}

impl XtsKeys {
    /// Key with the two halves of an XTS key.
    pub(crate) fn new(data: Cipher, tweak: Cipher, data_key: &[u8]) -> XtsKeys {
        let vaes = if data.is_aes() && vaes::available() {
            RoundKeys::new(data_key)
        } else {
            None
        };
        XtsKeys { data, tweak, vaes }
    }

    /// Turn IVs into first tweaks (one batched call for many units).
    pub(crate) fn encrypt_ivs(&self, ivs: &mut [[u8; 16]]) {
        with_cipher!(&self.tweak, c => encrypt_ivs(c, ivs));
    }

    /// En- or decrypt one data unit whose first tweak is `t0`: from `src` into `dst`, or in
    /// place. Uses the VAES kernel when it can, else the portable fused loop.
    pub(crate) fn unit(&self, t0: &[u8; 16], src: Option<&[u8]>, dst: &mut [u8], dir: Direction) {
        if let Some(rk) = &self.vaes {
            if vaes::crypt_unit(rk, t0, src, dst, dir) {
                return;
            }
        }
        match dir {
            Direction::Encrypt => with_cipher!(&self.data, c => encrypt_unit(c, t0, src, dst)),
            Direction::Decrypt => {
                if let Some(s) = src {
                    dst.copy_from_slice(s);
                }
                with_cipher!(&self.data, c => decrypt_unit(c, t0, dst));
            }
        }
    }

    /// The portable path only (for tests comparing it with the VAES kernel).
    #[cfg(test)]
    pub(crate) fn portable(&self) -> XtsKeys {
        XtsKeys {
            data: self.data.clone(),
            tweak: self.tweak.clone(),
            vaes: None,
        }
    }
}

/// Encrypt the IV blocks into first tweaks (one batched call for all units of a request).
pub(crate) fn encrypt_ivs<C>(tweak_cipher: &C, ivs: &mut [[u8; 16]])
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    let (blocks, _) = Array::<u8, U16>::slice_as_chunks_mut(ivs.as_flattened_mut());
    tweak_cipher.encrypt_blocks(blocks);
}

/// Encrypt one data unit (a whole number of 16-byte blocks) whose first tweak (the
/// encrypted IV) is `t0`: from `src` into `dst`, or in place when `src` is `None`.
pub(crate) fn encrypt_unit<C>(data_cipher: &C, t0: &[u8; 16], src: Option<&[u8]>, dst: &mut [u8])
where
    C: BlockCipherEncrypt + BlockSizeUser<BlockSize = U16>,
{
    data_cipher.encrypt_with_backend(EncUnit {
        src,
        dst,
        t0: u128::from_le_bytes(*t0),
    });
}

/// Decrypt one data unit in place (see [`encrypt_unit`]).
pub(crate) fn decrypt_unit<C>(data_cipher: &C, t0: &[u8; 16], data: &mut [u8])
where
    C: BlockCipherDecrypt + BlockSizeUser<BlockSize = U16>,
{
    data_cipher.decrypt_with_backend(DecUnit {
        src: None,
        dst: data,
        t0: u128::from_le_bytes(*t0),
    });
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

    fn keys(key: &[u8]) -> XtsKeys {
        let (k1, k2) = key.split_at(key.len() / 2);
        XtsKeys::new(Cipher::aes(k1).unwrap(), Cipher::aes(k2).unwrap(), k1)
    }

    #[test]
    fn vaes_kernel_equals_portable_path_byte_for_byte() {
        assert!(
            !vaes::available() || keys(&[1u8; 64]).vaes.is_some(),
            "VAES detected but not used"
        );
        for key_len in [32, 48, 64] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 37 + 11) as u8).collect();
            let fast = keys(&key);
            let slow = fast.portable();
            for unit in [256, 512, 1024, 4096, 16 * 3] {
                let plain: Vec<u8> = (0..unit).map(|i| (i * 7 + unit) as u8).collect();
                let t0: [u8; 16] = core::array::from_fn(|i| (i * 13 + key_len) as u8);
                for dir in [Direction::Encrypt, Direction::Decrypt] {
                    let mut a = vec![0u8; unit];
                    let mut b = plain.clone();
                    fast.unit(&t0, Some(&plain), &mut a, dir);
                    slow.unit(&t0, None, &mut b, dir);
                    assert_eq!(a, b, "key {key_len} unit {unit} {dir:?}");
                    let mut c = plain.clone();
                    fast.unit(&t0, None, &mut c, dir);
                    assert_eq!(c, b, "in place: key {key_len} unit {unit} {dir:?}");
                    if let Some(rk) = &fast.vaes {
                        let ran = vaes::crypt_unit(rk, &t0, Some(&plain), &mut c, dir);
                        assert_eq!(ran, unit % vaes::STRIDE == 0);
                    }
                }
            }
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
