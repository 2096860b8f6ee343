//! GCM over VAES + VPCLMULQDQ (AVX2 width), chosen at run time when the CPU has them.
//!
//! Why: the portable one-pass GCM (aead.rs: the `aes` crate's counter batch, then POLYVAL
//! over a byte-reversed copy) keeps LUKS2 `aes-gcm-random` reads at ~0.33× aes-xts. Here one
//! pass per crypt sector does both halves in registers: 8 counter blocks in flight as 4 ymm
//! registers (two blocks each), the keystream XORed in, and GHASH of the same 8 ciphertext
//! blocks folded in with precomputed powers H¹…H⁸ and one reduction per 8 blocks. GHASH runs
//! as POLYVAL (RFC 8452 appendix A: GHASH(H, X) = rev(POLYVAL(mulX(rev(H)), rev(X)))), the
//! byte reversal done by `vpshufb` on each loaded block, with the R/F multiplication of
//! polyval's CLMUL backend (4 carry-less products per block, 1 for the reduction).
//!
//! Every path is checked byte for byte against the portable path and RustCrypto's aes-gcm
//! (tests in aead.rs), and the kernel-written LUKS2 fixtures (tests/luks_integrity.rs) run
//! through whichever path the CPU selects.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m128i, __m256i, _mm256_add_epi32, _mm256_aesenc_epi128, _mm256_aesenclast_epi128,
    _mm256_broadcastsi128_si256, _mm256_castsi256_si128, _mm256_clmulepi64_epi128,
    _mm256_extracti128_si256, _mm256_inserti128_si256, _mm256_loadu_si256, _mm256_set_epi32,
    _mm256_setzero_si256, _mm256_shuffle_epi8, _mm256_storeu_si256, _mm256_xor_si256,
    _mm_aesenc_si128, _mm_aesenclast_si128, _mm_clmulepi64_si128, _mm_loadu_si128, _mm_set_epi64x,
    _mm_setzero_si128, _mm_shuffle_epi32, _mm_shuffle_epi8, _mm_slli_si128, _mm_srli_si128,
    _mm_storeu_si128, _mm_xor_si128,
};

use zeroize::Zeroize;

use super::aes_keys::RoundKeys;

/// Bytes per kernel iteration (8 blocks); data lengths must be a multiple of it.
pub(crate) const STRIDE: usize = 128;

/// Whether this CPU can run the kernel: the XTS kernel's VAES, AVX2 and AES-NI, and the
/// carry-less multiplies (cached by std).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::vaes::available()
            && std::is_x86_feature_detected!("vpclmulqdq")
            && std::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An AES key expanded for the kernel, with the POLYVAL powers of its hash key, wiped on
/// drop.
pub(crate) struct GcmKeys {
    rk: RoundKeys,
    /// POLYVAL key powers: `h[i]` = H^(i+1) (H = mulX(rev(E(0)))), `d[i]` the R/F companion
    /// (swap(H) ⊕ H₀·P1).
    h: [[u8; 16]; 8],
    d: [[u8; 16]; 8],
}

impl Drop for GcmKeys {
    fn drop(&mut self) {
        self.h.zeroize();
        self.d.zeroize();
    }
}

impl GcmKeys {
    /// Expand `key` (16, 24 or 32 bytes) with `polyval_h` = mulX(rev(E_K(0))); `None` when
    /// the CPU cannot run the kernel or the key size is wrong.
    pub(crate) fn new(key: &[u8], polyval_h: &[u8; 16]) -> Option<GcmKeys> {
        if !available() {
            return None;
        }
        let rk = RoundKeys::new(key)?;
        let mut k = GcmKeys {
            rk,
            h: [[0; 16]; 8],
            d: [[0; 16]; 8],
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` confirmed PCLMULQDQ (and AVX2, so SSSE3/SSE4.1) on this CPU,
        // which is all `powers` is compiled for; it touches only the arrays it is given.
        unsafe {
            powers(polyval_h, &mut k.h, &mut k.d)
        };
        Some(k)
    }

    /// GCM over `data` in place with `iv` (12 bytes) and `aad`: encrypt, or decrypt when
    /// `decrypt`; returns the full 16-byte tag (over the ciphertext: the input when
    /// decrypting, the output when encrypting). `None`, and `data` untouched, when
    /// `data.len()` is not a multiple of [`STRIDE`] or `iv` is not 12 bytes.
    pub(crate) fn crypt(
        &self,
        aad: &[u8],
        iv: &[u8],
        data: &mut [u8],
        decrypt: bool,
    ) -> Option<[u8; 16]> {
        if data.len() % STRIDE != 0 || iv.len() != 12 {
            return None;
        }
        let mut tag = [0u8; 16];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `GcmKeys` exists only when `available()` confirmed VAES, VPCLMULQDQ,
        // PCLMULQDQ, AVX2 and AES-NI, which is all `kernel` is compiled for. `data` is valid
        // for reads and writes of `data.len()` bytes, a multiple of STRIDE (checked above);
        // `iv` holds 12 bytes; the kernel uses unaligned loads and stores inside those
        // slices and `aad` only.
        unsafe {
            kernel(
                self,
                aad,
                iv,
                data.as_mut_ptr(),
                data.len(),
                decrypt,
                &mut tag,
            )
        };
        Some(tag)
    }
}

/// Lane-wise byte reversal (GHASH's byte order to POLYVAL's, and counters).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn bswap_mask() -> __m256i {
    _mm256_set_epi32(
        0x0001_0203,
        0x0405_0607,
        0x0809_0a0b,
        0x0c0d_0e0f,
        0x0001_0203,
        0x0405_0607,
        0x0809_0a0b,
        0x0c0d_0e0f,
    )
}

/// P1 = x⁶³ + x⁶² + x⁵⁷, the reduction constant of POLYVAL's R/F multiplication.
const P1: u64 = 0xC200_0000_0000_0000;

/// The R/F companion of `h`: swap(H) ⊕ H₀·P1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse4.1")]
fn companion(h: __m128i) -> __m128i {
    let p = _mm_set_epi64x(P1 as i64, 0);
    _mm_xor_si128(
        _mm_shuffle_epi32::<0x4e>(h),
        _mm_clmulepi64_si128::<0x10>(h, p),
    )
}

/// The unreduced R/F product halves of `m`·H.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse4.1")]
fn rf_mul(m: __m128i, h: __m128i, d: __m128i) -> (__m128i, __m128i) {
    let r = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x10>(m, d),
        _mm_clmulepi64_si128::<0x11>(m, h),
    );
    let f = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x00>(m, d),
        _mm_clmulepi64_si128::<0x01>(m, h),
    );
    (r, f)
}

/// R ⊕ F₁ ⊕ x⁶⁴·F₀ ⊕ P1·F₀: the reduced POLYVAL product.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse4.1")]
fn reduce(r: __m128i, f: __m128i) -> __m128i {
    let p1 = _mm_set_epi64x(0, P1 as i64);
    let x = _mm_xor_si128(r, _mm_srli_si128::<8>(f));
    let x = _mm_xor_si128(x, _mm_slli_si128::<8>(f));
    _mm_xor_si128(x, _mm_clmulepi64_si128::<0x00>(f, p1))
}

/// POLYVAL's dot(m, H) = m·H·x⁻¹²⁸.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse4.1")]
fn dot(m: __m128i, h: __m128i, d: __m128i) -> __m128i {
    let (r, f) = rf_mul(m, h, d);
    reduce(r, f)
}

/// H¹…H⁸ and their companions from `h`.
///
/// # Safety
/// The CPU must have PCLMULQDQ and SSE4.1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse4.1")]
unsafe fn powers(h: &[u8; 16], hs: &mut [[u8; 16]; 8], ds: &mut [[u8; 16]; 8]) {
    // SAFETY: `h` is 16 bytes; unaligned load.
    let h1 = unsafe { _mm_loadu_si128(h.as_ptr().cast()) };
    let d1 = companion(h1);
    let mut p = h1;
    for (hi, di) in hs.iter_mut().zip(ds.iter_mut()) {
        let d = companion(p);
        // SAFETY: each destination is a 16-byte array; unaligned stores.
        unsafe {
            _mm_storeu_si128(hi.as_mut_ptr().cast(), p);
            _mm_storeu_si128(di.as_mut_ptr().cast(), d);
        }
        p = dot(p, h1, d1);
    }
}

/// One 16-byte GHASH block (in GHASH byte order, zero-padded) folded into `acc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse4.1,ssse3")]
fn absorb(acc: __m128i, block: __m128i, h: __m128i, d: __m128i, mask: __m128i) -> __m128i {
    dot(_mm_xor_si128(acc, _mm_shuffle_epi8(block, mask)), h, d)
}

/// A 16-byte array as a register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn load16(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is 16 bytes; unaligned load.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// Two 16-byte arrays as the low and high lanes of a register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pair(lo: &[u8; 16], hi: &[u8; 16]) -> __m256i {
    _mm256_inserti128_si256::<1>(_mm256_broadcastsi128_si256(load16(lo)), load16(hi))
}

/// The kernel: E(J0), GHASH of the AAD, then 8 blocks per iteration (counter mode and
/// GHASH of the ciphertext), then the length block; the tag into `tag`.
///
/// # Safety
/// The CPU must have VAES, VPCLMULQDQ, PCLMULQDQ, AVX2 and AES-NI; `data` must be valid
/// for reads and writes of `len` bytes, `len` a multiple of [`STRIDE`]; `iv` 12 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "aes,avx2,vaes,pclmulqdq,vpclmulqdq,sse4.1,ssse3")]
unsafe fn kernel(
    k: &GcmKeys,
    aad: &[u8],
    iv: &[u8],
    data: *mut u8,
    len: usize,
    decrypt: bool,
    tag: &mut [u8; 16],
) {
    let rounds = k.rk.rounds;
    let mut keys = [_mm256_setzero_si256(); 15];
    for (key, r) in keys.iter_mut().zip(k.rk.enc.iter()).take(rounds + 1) {
        // SAFETY: `r` is a 16-byte array; unaligned load.
        *key = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(r.as_ptr().cast()) });
    }
    let mask = bswap_mask();
    let mask128 = _mm256_castsi256_si128(mask);
    let (h1, d1) = (load16(&k.h[0]), load16(&k.d[0]));

    // J0 = IV ‖ be32(1), and E(J0) for the tag.
    let mut j0 = [0u8; 16];
    j0[..12].copy_from_slice(&iv[..12]);
    j0[15] = 1;
    let j0v = load16(&j0);
    let mut e0 = _mm_xor_si128(j0v, _mm256_castsi256_si128(keys[0]));
    for key in &keys[1..rounds] {
        e0 = _mm_aesenc_si128(e0, _mm256_castsi256_si128(*key));
    }
    e0 = _mm_aesenclast_si128(e0, _mm256_castsi256_si128(keys[rounds]));

    // GHASH of the AAD, zero-padded.
    let mut acc = _mm_setzero_si128();
    for chunk in aad.chunks(16) {
        let mut b = [0u8; 16];
        b[..chunk.len()].copy_from_slice(chunk);
        acc = absorb(acc, load16(&b), h1, d1, mask128);
    }

    // Powers for the 4 registers of one iteration: register j holds blocks 2j (low lane)
    // and 2j + 1 (high lane), which take H^(8-2j) and H^(7-2j).
    let mut hp = [_mm256_setzero_si256(); 4];
    let mut dp = [_mm256_setzero_si256(); 4];
    for j in 0..4 {
        hp[j] = pair(&k.h[7 - 2 * j], &k.h[6 - 2 * j]);
        dp[j] = pair(&k.d[7 - 2 * j], &k.d[6 - 2 * j]);
    }

    // Counters in byte-reversed form (the block counter is the low 32-bit lane of each
    // 128-bit lane); data block n takes counter n + 2. A crypt sector has at most 256
    // blocks, so the 32-bit counter never wraps.
    let rev_j0 = _mm256_broadcastsi128_si256(_mm_shuffle_epi8(j0v, mask128));
    let mut ctr = [_mm256_setzero_si256(); 4];
    for (j, c) in ctr.iter_mut().enumerate() {
        let n = 2 * j as i32 + 1; // J0 has counter 1
        *c = _mm256_add_epi32(rev_j0, _mm256_set_epi32(0, 0, 0, n + 1, 0, 0, 0, n));
    }
    let step = _mm256_set_epi32(0, 0, 0, 8, 0, 0, 0, 8);

    let mut at = 0;
    while at < len {
        let mut x = [_mm256_setzero_si256(); 4];
        for j in 0..4 {
            x[j] = _mm256_xor_si256(_mm256_shuffle_epi8(ctr[j], mask), keys[0]);
            ctr[j] = _mm256_add_epi32(ctr[j], step);
        }
        for key in &keys[1..rounds] {
            for v in &mut x {
                *v = _mm256_aesenc_epi128(*v, *key);
            }
        }
        let mut r = _mm256_setzero_si256();
        let mut f = _mm256_setzero_si256();
        for j in 0..4 {
            // SAFETY: at + 32j + 32 <= len (len is a multiple of 128 and at < len).
            let input = unsafe { _mm256_loadu_si256(data.add(at + 32 * j).cast()) };
            let out = _mm256_xor_si256(input, _mm256_aesenclast_epi128(x[j], keys[rounds]));
            // SAFETY: as for the load; the chunk was loaded before it is stored.
            unsafe { _mm256_storeu_si256(data.add(at + 32 * j).cast(), out) };
            let mut g = _mm256_shuffle_epi8(if decrypt { input } else { out }, mask);
            if j == 0 {
                // The running hash joins the first block (low lane).
                g = _mm256_xor_si256(g, _mm256_inserti128_si256::<0>(_mm256_setzero_si256(), acc));
            }
            r = _mm256_xor_si256(r, _mm256_clmulepi64_epi128::<0x10>(g, dp[j]));
            r = _mm256_xor_si256(r, _mm256_clmulepi64_epi128::<0x11>(g, hp[j]));
            f = _mm256_xor_si256(f, _mm256_clmulepi64_epi128::<0x00>(g, dp[j]));
            f = _mm256_xor_si256(f, _mm256_clmulepi64_epi128::<0x01>(g, hp[j]));
        }
        let r = _mm_xor_si128(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
        let f = _mm_xor_si128(_mm256_castsi256_si128(f), _mm256_extracti128_si256::<1>(f));
        acc = reduce(r, f);
        at += STRIDE;
    }

    // The length block: be64(aad bits) ‖ be64(data bits), reversed.
    let lens = _mm_set_epi64x((aad.len() as u64 * 8) as i64, (len as u64 * 8) as i64);
    acc = dot(_mm_xor_si128(acc, lens), h1, d1);
    let t = _mm_xor_si128(_mm_shuffle_epi8(acc, mask128), e0);
    // SAFETY: `tag` is a 16-byte array; unaligned store.
    unsafe { _mm_storeu_si128(tag.as_mut_ptr().cast(), t) };
}
