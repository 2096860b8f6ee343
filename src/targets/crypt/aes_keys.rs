//! AES key expansion in plain Rust (FIPS-197 §5.2), for the VAES kernel, which needs the
//! round keys themselves (the `aes` crate keeps them private). Runs once per key.

use zeroize::Zeroize;

/// FIPS-197 S-box, computed at compile time: affine(x⁻¹) in GF(2⁸).
const SBOX: [u8; 256] = {
    let mut s = [0u8; 256];
    let mut x = 0usize;
    while x < 256 {
        // x^254 = x⁻¹ (0 maps to 0).
        let mut inv = 1u8;
        let mut k = 0;
        while k < 254 {
            inv = gmul(inv, x as u8);
            k += 1;
        }
        if x == 0 {
            inv = 0;
        }
        let b = inv;
        s[x] = b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63;
        x += 1;
    }
    s
};

/// Product in GF(2⁸) modulo x⁸ + x⁴ + x³ + x + 1.
const fn gmul(a: u8, b: u8) -> u8 {
    let mut a = a;
    let mut b = b;
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let hi = a & 0x80;
        a <<= 1;
        if hi != 0 {
            a ^= 0x1b;
        }
        b >>= 1;
    }
    p
}

/// Expanded AES round keys for encryption and for the equivalent inverse cipher
/// (`aesdec`), wiped on drop.
pub(crate) struct RoundKeys {
    /// Number of rounds: 10, 12 or 14.
    pub(crate) rounds: usize,
    /// Encryption round keys 0..=rounds.
    pub(crate) enc: [[u8; 16]; 15],
    /// Decryption round keys: enc[rounds], InvMixColumns(enc[rounds-1..1]), enc[0].
    pub(crate) dec: [[u8; 16]; 15],
}

impl Drop for RoundKeys {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.dec.zeroize();
    }
}

impl RoundKeys {
    /// Expand a 16-, 24- or 32-byte key.
    pub(crate) fn new(key: &[u8]) -> Option<RoundKeys> {
        let nk = match key.len() {
            16 | 24 | 32 => key.len() / 4,
            _ => return None,
        };
        let rounds = nk + 6;
        let mut w = [[0u8; 4]; 60];
        for (i, word) in w.iter_mut().take(nk).enumerate() {
            word.copy_from_slice(&key[4 * i..4 * i + 4]);
        }
        let mut rcon = 1u8;
        for i in nk..4 * (rounds + 1) {
            let mut t = w[i - 1];
            if i % nk == 0 {
                t = [
                    SBOX[usize::from(t[1])] ^ rcon,
                    SBOX[usize::from(t[2])],
                    SBOX[usize::from(t[3])],
                    SBOX[usize::from(t[0])],
                ];
                rcon = gmul(rcon, 2);
            } else if nk > 6 && i % nk == 4 {
                t = t.map(|b| SBOX[usize::from(b)]);
            }
            for j in 0..4 {
                w[i][j] = w[i - nk][j] ^ t[j];
            }
        }
        let mut rk = RoundKeys {
            rounds,
            enc: [[0u8; 16]; 15],
            dec: [[0u8; 16]; 15],
        };
        for r in 0..=rounds {
            for c in 0..4 {
                rk.enc[r][4 * c..4 * c + 4].copy_from_slice(&w[4 * r + c]);
            }
        }
        w.zeroize();
        rk.dec[0] = rk.enc[rounds];
        rk.dec[rounds] = rk.enc[0];
        for i in 1..rounds {
            rk.dec[i] = inv_mix_columns(&rk.enc[rounds - i]);
        }
        Some(rk)
    }
}

fn inv_mix_columns(s: &[u8; 16]) -> [u8; 16] {
    let mut o = [0u8; 16];
    for c in 0..4 {
        let a = &s[4 * c..4 * c + 4];
        for r in 0..4 {
            o[4 * c + r] = gmul(a[r], 14)
                ^ gmul(a[(r + 1) % 4], 11)
                ^ gmul(a[(r + 2) % 4], 13)
                ^ gmul(a[(r + 3) % 4], 9);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbox_matches_fips197_corners() {
        assert_eq!(
            (SBOX[0x00], SBOX[0x01], SBOX[0x53], SBOX[0xff]),
            (0x63, 0x7c, 0xed, 0x16)
        );
    }

    #[test]
    fn aes128_expansion_matches_fips197_appendix_a1() {
        let key = [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ];
        let rk = RoundKeys::new(&key).unwrap();
        assert_eq!(rk.rounds, 10);
        // w[40..44] = d014f9a8 c9ee2589 e13f0cc8 b6630ca6
        assert_eq!(
            rk.enc[10],
            [
                0xd0, 0x14, 0xf9, 0xa8, 0xc9, 0xee, 0x25, 0x89, 0xe1, 0x3f, 0x0c, 0xc8, 0xb6, 0x63,
                0x0c, 0xa6
            ]
        );
    }
}
