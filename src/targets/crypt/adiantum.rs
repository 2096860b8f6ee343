//! Adiantum (crypto/adiantum.c, crypto/nhpoly1305.c): the length-preserving mode of
//! `xchacha12,aes-adiantum-plain64` / `xchacha20,…` (low-end Android devices).
//!
//! Per sector P = P_L ‖ P_R (P_R the last 16 bytes), tweak T (the 32-byte IV):
//! P_M = P_R + H(T, P_L); C_M = AES-256(P_M); C_L = P_L ⊕ XChaCha(C_M ‖ 1 ‖ 0⁷);
//! C_R = C_M − H(T, C_L), with H(T, X) = Poly1305_KT(le64(|X|·8) ‖ 0⁸ ‖ T) +
//! NHPoly1305_KM(X), sums mod 2¹²⁸ little-endian. Keys: K_E ‖ K_T ‖ K_M = XChaCha(K_S,
//! nonce 1 ‖ 0²³) keystream.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use zeroize::{Zeroize, Zeroizing};

use super::modes::Cipher;

/// NH key length in 32-bit words (`NH_KEY_WORDS`).
const NH_KEY_WORDS: usize = 268;
/// NH processes the message in units of this many bytes (`NH_MESSAGE_BYTES`).
const NH_MESSAGE_BYTES: usize = 1024;

/// A clamped Poly1305 `r` (`poly1305_core_setkey`).
#[derive(Clone, Copy)]
struct PolyKey(u128);

impl PolyKey {
    fn new(key: &[u8]) -> PolyKey {
        let mut b = [0u8; 16];
        b.copy_from_slice(&key[..16]);
        PolyKey(u128::from_le_bytes(b) & 0x0fff_fffc_0fff_fffc_0fff_fffc_0fff_ffff)
    }
}

fn lo64(x: u128) -> u64 {
    u64::try_from(x & u128::from(u64::MAX)).unwrap_or(0)
}

/// Poly1305 accumulator h = lo + hi·2¹²⁸, kept below 2¹³¹ (`poly1305_core_*`).
#[derive(Default)]
struct Poly {
    lo: u128,
    hi: u64,
}

impl Poly {
    /// `poly1305_core_blocks` with hibit 1: h = (h + block + 2¹²⁸)·r mod (2¹³⁰ − 5).
    fn blocks(&mut self, key: PolyKey, data: &[u8], hibit: u64) {
        for block in data.chunks_exact(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(block);
            let (lo, carry) = self.lo.overflowing_add(u128::from_le_bytes(b));
            self.lo = lo;
            self.hi += u64::from(carry) + hibit;
            self.mul(key);
        }
    }

    fn mul(&mut self, key: PolyKey) {
        let (h0, h1, h2) = (
            u128::from(lo64(self.lo)),
            u128::from(lo64(self.lo >> 64)),
            u128::from(self.hi),
        );
        let (r0, r1) = (u128::from(lo64(key.0)), u128::from(lo64(key.0 >> 64)));
        // Schoolbook product in 64-bit limbs; r < 2¹²⁴ and h < 2¹³², so no term overflows.
        let p0 = h0 * r0;
        let p1 = h0 * r1 + h1 * r0;
        let p2 = h1 * r1 + h2 * r0;
        let p3 = h2 * r1;
        let w0 = lo64(p0);
        let t = p1 + (p0 >> 64);
        let w1 = lo64(t);
        let t = p2 + (t >> 64);
        let w2 = lo64(t);
        let w3 = lo64(p3 + (t >> 64));
        // x = low 130 bits + 2¹³⁰·high ≡ low + 5·high (mod 2¹³⁰ − 5).
        let low = u128::from(w0) | (u128::from(w1) << 64);
        let low_hi = w2 & 3;
        let high = u128::from((w2 >> 2) | (w3 << 62)) | (u128::from(w3 >> 2) << 64);
        let (s, c1) = low.overflowing_add(high);
        let (s, c2) = s.overflowing_add(high << 2);
        self.lo = s;
        self.hi = low_hi + u64::from(c1) + u64::from(c2) + lo64(high >> 126);
    }

    /// `poly1305_core_emit` without a nonce: h mod (2¹³⁰ − 5), mod 2¹²⁸.
    fn emit(&self) -> u128 {
        const P_LO: u128 = u128::MAX - 4; // 2¹³⁰ − 5 = 3·2¹²⁸ + (2¹²⁸ − 5)
        const P_HI: u64 = 3;
        let (mut lo, mut hi) = (self.lo, self.hi);
        while hi > P_HI || (hi == P_HI && lo >= P_LO) {
            let (l, borrow) = lo.overflowing_sub(P_LO);
            lo = l;
            hi = hi - P_HI - u64::from(borrow);
        }
        lo
    }
}

/// crypto/nhpoly1305.c `nh_generic` over one unit of at most 1024 bytes.
fn nh(key: &[u32; NH_KEY_WORDS], msg: &[u8]) -> [u8; 32] {
    let mut sums = [0u64; 4];
    for (i, c) in msg.chunks_exact(16).enumerate() {
        let m = |j: usize| u32::from_le_bytes([c[4 * j], c[4 * j + 1], c[4 * j + 2], c[4 * j + 3]]);
        let k = &key[4 * i..4 * i + 16];
        for (p, sum) in sums.iter_mut().enumerate() {
            let a =
                u64::from(m(0).wrapping_add(k[4 * p])) * u64::from(m(2).wrapping_add(k[4 * p + 2]));
            let b = u64::from(m(1).wrapping_add(k[4 * p + 1]))
                * u64::from(m(3).wrapping_add(k[4 * p + 3]));
            *sum = sum.wrapping_add(a).wrapping_add(b);
        }
    }
    let mut out = [0u8; 32];
    for (o, s) in out.chunks_exact_mut(8).zip(sums) {
        o.copy_from_slice(&s.to_le_bytes());
    }
    out
}

/// A keyed Adiantum transform.
pub(crate) struct Adiantum {
    stream_key: Zeroizing<[u8; 32]>,
    xchacha20: bool,
    block: Cipher,
    header_key: PolyKey,
    message_key: PolyKey,
    nh_key: Box<[u32; NH_KEY_WORDS]>,
}

impl Drop for Adiantum {
    fn drop(&mut self) {
        self.header_key.0.zeroize();
        self.message_key.0.zeroize();
        self.nh_key.zeroize();
    }
}

impl Adiantum {
    /// Key with the 32-byte XChaCha key K_S (`adiantum_setkey`); `None` for another length.
    pub(crate) fn new(xchacha20: bool, block: &str, key: &[u8]) -> Option<Adiantum> {
        let stream_key: Zeroizing<[u8; 32]> = Zeroizing::new(key.try_into().ok()?);
        let mut derived = Zeroizing::new(vec![0u8; 32 + 16 + 16 + 4 * NH_KEY_WORDS]);
        let mut nonce = [0u8; 24];
        nonce[0] = 1;
        xchacha(xchacha20, &stream_key, &nonce, &mut derived);
        let block = Cipher::new(block, &derived[..32])?;
        let mut nh_key = Box::new([0u32; NH_KEY_WORDS]);
        for (w, c) in nh_key.iter_mut().zip(derived[64..].chunks_exact(4)) {
            *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Some(Adiantum {
            stream_key,
            xchacha20,
            block,
            header_key: PolyKey::new(&derived[32..48]),
            message_key: PolyKey::new(&derived[48..64]),
            nh_key,
        })
    }

    /// H(T, X) = Poly1305_KT(header ‖ T) + NHPoly1305_KM(X).
    fn hash(&self, tweak: &[u8; 32], bulk: &[u8]) -> u128 {
        let mut header = [0u8; 16];
        let bits = u64::try_from(bulk.len()).unwrap_or(0).wrapping_mul(8);
        header[..8].copy_from_slice(&bits.to_le_bytes());
        let mut h = Poly::default();
        h.blocks(self.header_key, &header, 1);
        h.blocks(self.header_key, tweak, 1);
        let mut m = Poly::default();
        for unit in bulk.chunks(NH_MESSAGE_BYTES) {
            m.blocks(self.message_key, &nh(&self.nh_key, unit), 1);
        }
        h.emit().wrapping_add(m.emit())
    }

    /// Encrypt one sector (at least 16 bytes, a multiple of 16) in place.
    pub(crate) fn encrypt(&self, tweak: &[u8; 32], data: &mut [u8]) {
        let split = data.len() - 16;
        let p_m = load(&data[split..]).wrapping_add(self.hash(tweak, &data[..split]));
        let mut c_m = p_m.to_le_bytes();
        self.block.encrypt(&mut c_m);
        self.stream(&c_m, &mut data[..split]);
        let c_r = load(&c_m).wrapping_sub(self.hash(tweak, &data[..split]));
        data[split..].copy_from_slice(&c_r.to_le_bytes());
    }

    /// Decrypt one sector in place.
    pub(crate) fn decrypt(&self, tweak: &[u8; 32], data: &mut [u8]) {
        let split = data.len() - 16;
        let c_m = load(&data[split..])
            .wrapping_add(self.hash(tweak, &data[..split]))
            .to_le_bytes();
        self.stream(&c_m, &mut data[..split]);
        let mut p_m = c_m;
        self.block.decrypt(&mut p_m);
        let p_r = load(&p_m).wrapping_sub(self.hash(tweak, &data[..split]));
        data[split..].copy_from_slice(&p_r.to_le_bytes());
    }

    /// XOR with XChaCha keystream, nonce C_M ‖ le32(1) ‖ le32(0), from block 0.
    fn stream(&self, c_m: &[u8; 16], data: &mut [u8]) {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(c_m);
        nonce[16] = 1;
        xchacha(self.xchacha20, &self.stream_key, &nonce, data);
    }
}

fn load(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    u128::from_le_bytes(a)
}

fn xchacha(twenty: bool, key: &[u8; 32], nonce: &[u8; 24], data: &mut [u8]) {
    if twenty {
        chacha20::XChaCha20::new(key.into(), nonce.into()).apply_keystream(data);
    } else {
        chacha20::XChaCha12::new(key.into(), nonce.into()).apply_keystream(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly1305_core_plus_s_matches_rfc8439_2_5_2() {
        let key: Vec<u8> = (0..32)
            .map(|i| {
                let h = "85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b";
                u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()
            })
            .collect();
        let msg = b"Cryptographic Forum Research Group";
        let r = PolyKey::new(&key[..16]);
        let mut p = Poly::default();
        p.blocks(r, &msg[..32], 1);
        let mut last = [0u8; 16];
        last[..2].copy_from_slice(&msg[32..]);
        last[2] = 1;
        p.blocks(r, &last, 0);
        let tag = p.emit().wrapping_add(load(&key[16..]));
        assert_eq!(
            tag.to_le_bytes(),
            [
                0xa8, 0x06, 0x1d, 0xc1, 0x30, 0x51, 0x36, 0xc6, 0xc2, 0x2b, 0x8b, 0xaf, 0x0c, 0x01,
                0x27, 0xa9
            ]
        );
    }

    #[test]
    fn adiantum_decrypt_undoes_encrypt() {
        let a = Adiantum::new(false, "aes", &[7u8; 32]).unwrap();
        let plain: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut d = plain.clone();
        let t = [3u8; 32];
        a.encrypt(&t, &mut d);
        assert_ne!(d, plain);
        a.decrypt(&t, &mut d);
        assert_eq!(d, plain);
    }
}
