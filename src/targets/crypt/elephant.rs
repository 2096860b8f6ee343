//! BitLocker's Elephant diffuser (dm-crypt.c `crypt_iv_elephant`, `diffuser_{a,b}_*`),
//! used by the `elephant` IV mode on top of CBC with `eboiv` IVs.
//!
//! Write: XOR the sector with the 32-byte sector key Ks, diffuser A then B ("encrypt"),
//! then CBC. Read: CBC, diffuser B then A ("decrypt"), XOR Ks. Ks = E(le64(s·sector_size) ‖
//! 0⁸) ‖ E(same with byte 15 = 0x80), E = AES-ECB with the second half of the key.

use super::modes::Cipher;

/// The sector key Ks of sector `s` (iv_sector).
fn sector_key(key: &Cipher, s: u64, sector_size: u64) -> [u8; 32] {
    let mut ks = [0u8; 32];
    ks[..8].copy_from_slice(&s.wrapping_mul(sector_size).to_le_bytes());
    ks[16..24].copy_from_slice(&s.wrapping_mul(sector_size).to_le_bytes());
    ks[31] = 0x80;
    key.encrypt(&mut ks);
    ks
}

fn words(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn store(data: &mut [u8], d: &[u32]) {
    for (c, w) in data.chunks_exact_mut(4).zip(d) {
        c.copy_from_slice(&w.to_le_bytes());
    }
}

fn xor_key(data: &mut [u8], ks: &[u8; 32]) {
    for chunk in data.chunks_exact_mut(32) {
        for (d, k) in chunk.iter_mut().zip(ks) {
            *d ^= k;
        }
    }
}

/// Apply Ks and the diffusers before encryption (a write).
pub(crate) fn encrypt(key: &Cipher, s: u64, sector_size: u64, data: &mut [u8]) {
    xor_key(data, &sector_key(key, s, sector_size));
    let mut d = words(data);
    diffuser_a_encrypt(&mut d);
    diffuser_b_encrypt(&mut d);
    store(data, &d);
}

/// Undo the diffusers and Ks after decryption (a read).
pub(crate) fn decrypt(key: &Cipher, s: u64, sector_size: u64, data: &mut [u8]) {
    let mut d = words(data);
    diffuser_b_decrypt(&mut d);
    diffuser_a_decrypt(&mut d);
    store(data, &d);
    xor_key(data, &sector_key(key, s, sector_size));
}

// The four loops below are the kernel's, index for index. `n` is a multiple of 4 and at
// least 128 (512-byte sectors), so every index stays in [0, n) after the wraps shown.

fn diffuser_a_decrypt(d: &mut [u32]) {
    let n = d.len();
    for _ in 0..5 {
        let (mut i1, mut i2, mut i3) = (0, n - 2, n - 5);
        while i1 < n - 1 {
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3].rotate_left(9));
            i1 += 1;
            i2 += 1;
            i3 += 1;
            if i3 >= n {
                i3 -= n;
            }
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3]);
            i1 += 1;
            i2 += 1;
            i3 += 1;
            if i2 >= n {
                i2 -= n;
            }
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3].rotate_left(13));
            i1 += 1;
            i2 += 1;
            i3 += 1;
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3]);
            i1 += 1;
            i2 += 1;
            i3 += 1;
        }
    }
}

fn diffuser_a_encrypt(d: &mut [u32]) {
    let n = isize::try_from(d.len()).unwrap_or(0);
    let at = |i: isize| usize::try_from(i).unwrap_or(0);
    for _ in 0..5 {
        let (mut i1, mut i2, mut i3) = (n - 1, n - 2 - 1, n - 5 - 1);
        while i1 > 0 {
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)]);
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)].rotate_left(13));
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
            if i2 < 0 {
                i2 += n;
            }
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)]);
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
            if i3 < 0 {
                i3 += n;
            }
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)].rotate_left(9));
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
        }
    }
}

fn diffuser_b_decrypt(d: &mut [u32]) {
    let n = d.len();
    for _ in 0..3 {
        let (mut i1, mut i2, mut i3) = (0, 2, 5);
        while i1 < n - 1 {
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3]);
            i1 += 1;
            i2 += 1;
            i3 += 1;
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3].rotate_left(10));
            i1 += 1;
            i2 += 1;
            i3 += 1;
            if i2 >= n {
                i2 -= n;
            }
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3]);
            i1 += 1;
            i2 += 1;
            i3 += 1;
            if i3 >= n {
                i3 -= n;
            }
            d[i1] = d[i1].wrapping_add(d[i2] ^ d[i3].rotate_left(25));
            i1 += 1;
            i2 += 1;
            i3 += 1;
        }
    }
}

fn diffuser_b_encrypt(d: &mut [u32]) {
    let n = isize::try_from(d.len()).unwrap_or(0);
    let at = |i: isize| usize::try_from(i).unwrap_or(0);
    for _ in 0..3 {
        let (mut i1, mut i2, mut i3) = (n - 1, 2 - 1, 5 - 1);
        while i1 > 0 {
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)].rotate_left(25));
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
            if i3 < 0 {
                i3 += n;
            }
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)]);
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
            if i2 < 0 {
                i2 += n;
            }
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)].rotate_left(10));
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
            d[at(i1)] = d[at(i1)].wrapping_sub(d[at(i2)] ^ d[at(i3)]);
            i1 -= 1;
            i2 -= 1;
            i3 -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_decrypt_undoes_encrypt() {
        for n in [128usize, 1024] {
            let orig: Vec<u32> = (0..n)
                .map(|i| (i as u32).wrapping_mul(0x9e37_79b9))
                .collect();
            let mut d = orig.clone();
            diffuser_a_encrypt(&mut d);
            diffuser_b_encrypt(&mut d);
            assert_ne!(d, orig);
            diffuser_b_decrypt(&mut d);
            diffuser_a_decrypt(&mut d);
            assert_eq!(d, orig);
        }
    }
}
