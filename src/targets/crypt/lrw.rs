//! LRW (Liskov–Rivest–Wagner) over AES, as crypto/lrw.c computes it: block i of a sector
//! is `E(P ⊕ Tᵢ) ⊕ Tᵢ` with `Tᵢ = K₂ ⊗ (IV + i)`, the IV a big-endian 128-bit block index
//! and ⊗ the GF(2¹²⁸) product in the kernel's "bbe" convention (big-endian value, bit i =
//! coefficient of xⁱ, modulus x¹²⁸ + x⁷ + x² + x + 1).

use zeroize::Zeroize;

use super::modes::Cipher;

/// A keyed LRW transform.
pub(crate) struct Lrw {
    cipher: Cipher,
    /// `mulinc[k] = K₂ ⊗ (2^(k+1) − 1)`: the tweak change when the index gains a carry
    /// through its k low one-bits (the kernel's optimisation, the same values).
    mulinc: Box<[u128; 128]>,
    key2: u128,
}

impl Drop for Lrw {
    fn drop(&mut self) {
        self.mulinc.zeroize();
        self.key2.zeroize();
    }
}

fn gf_mul(a: u128, b: u128) -> u128 {
    let mut acc = 0u128;
    let mut a = a;
    let mut b = b;
    while b != 0 {
        if b & 1 == 1 {
            acc ^= a;
        }
        a = (a << 1) ^ (if a >> 127 == 1 { 0x87 } else { 0 });
        b >>= 1;
    }
    acc
}

impl Lrw {
    /// Key with the cipher and the 16-byte tweak key.
    pub(crate) fn new(cipher: Cipher, tweak_key: &[u8; 16]) -> Lrw {
        let key2 = u128::from_be_bytes(*tweak_key);
        let mut mulinc = Box::new([0u128; 128]);
        for (k, slot) in mulinc.iter_mut().enumerate() {
            let ones = if k == 127 {
                u128::MAX
            } else {
                (1u128 << (k + 1)) - 1
            };
            *slot = gf_mul(key2, ones);
        }
        Lrw {
            cipher,
            mulinc,
            key2,
        }
    }

    /// XOR each block of `data` with its tweak.
    fn xor_tweaks(&self, iv: &[u8; 16], data: &mut [u8]) {
        let mut index = u128::from_be_bytes(*iv);
        let mut t = gf_mul(self.key2, index);
        for block in data.chunks_exact_mut(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(block);
            block.copy_from_slice(&(u128::from_be_bytes(b) ^ t).to_be_bytes());
            let k = usize::try_from(index.trailing_ones())
                .unwrap_or(127)
                .min(127);
            t ^= self.mulinc[k];
            index = index.wrapping_add(1);
        }
    }

    pub(crate) fn encrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        self.xor_tweaks(iv, data);
        self.cipher.encrypt(data);
        self.xor_tweaks(iv, data);
    }

    pub(crate) fn decrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        self.xor_tweaks(iv, data);
        self.cipher.decrypt(data);
        self.xor_tweaks(iv, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_tweaks_equal_direct_products() {
        let key2 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let lrw = Lrw::new(Cipher::aes(&[7u8; 16]).unwrap(), &key2.to_be_bytes());
        let start = u128::MAX - 2; // crosses the 128-bit wrap
        let mut data = [0u8; 16 * 6];
        lrw.xor_tweaks(&start.to_be_bytes(), &mut data);
        for (i, block) in data.chunks_exact(16).enumerate() {
            let index = start.wrapping_add(u128::try_from(i).unwrap());
            assert_eq!(block, gf_mul(key2, index).to_be_bytes());
        }
    }
}
