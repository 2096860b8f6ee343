//! Reed-Solomon RS(255, 255 - roots) over GF(2^8) with polynomial 0x11d, first consecutive
//! root α^0 and primitive element α = x: the code of `init_rs(8, 0x11d, 0, 1, roots)` that
//! dm-verity FEC and veritysetup use (disk-formats.md §3.3).
//!
//! Encoding is the systematic remainder `m(x)·x^roots mod g(x)`, message byte 0 the highest
//! coefficient. Decoding corrects `e` errors and `s` erasures when `2e + s <= roots`
//! (Berlekamp-Massey with erasures, Chien search, Forney), as lib/reed_solomon's
//! `decode_rs8` does; otherwise it reports failure (or miscorrects, which callers catch by
//! re-hashing, as the kernel does).

/// Codeword length.
pub const NN: usize = 255;

/// Log/antilog tables of GF(256) and the generator polynomial for one `roots`.
#[derive(Clone, Debug)]
pub struct Rs {
    exp: [u8; 512],
    log: [u16; 256],
    roots: usize,
    /// Generator coefficients, highest degree first: g[0] = 1, g[roots] = constant term.
    gen: Vec<u8>,
}

/// The decoder could not correct the codeword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uncorrectable;

impl Rs {
    /// Tables for `roots` parity bytes (2..=24 for dm-verity).
    #[must_use]
    pub fn new(roots: usize) -> Rs {
        let mut exp = [0u8; 512];
        let mut log = [0u16; 256];
        let mut x: u16 = 1;
        for (i, e) in (0u16..).zip(exp.iter_mut().take(255)) {
            *e = u8::try_from(x).unwrap_or(0);
            log[usize::from(x)] = i;
            x <<= 1;
            if x & 0x100 != 0 {
                x ^= 0x11d;
            }
        }
        for i in 255..512 {
            exp[i] = exp[i - 255];
        }
        let mut rs = Rs {
            exp,
            log,
            roots,
            gen: vec![1],
        };
        // g(x) = prod_{i < roots} (x - α^i), highest degree first.
        for i in 0..roots {
            let a = rs.exp[i];
            let mut next = vec![0u8; rs.gen.len() + 1];
            for (j, &c) in rs.gen.iter().enumerate() {
                next[j] ^= c;
                next[j + 1] ^= rs.mul(c, a);
            }
            rs.gen = next;
        }
        rs
    }

    fn mul(&self, a: u8, b: u8) -> u8 {
        if a == 0 || b == 0 {
            0
        } else {
            self.exp[usize::from(self.log[usize::from(a)] + self.log[usize::from(b)])]
        }
    }

    fn inv(&self, a: u8) -> u8 {
        self.exp[255 - usize::from(self.log[usize::from(a)])]
    }

    /// α^e.
    fn pow(&self, e: usize) -> u8 {
        self.exp[e % 255]
    }

    /// Parity bytes.
    #[must_use]
    pub fn roots(&self) -> usize {
        self.roots
    }

    /// Message bytes per codeword.
    #[must_use]
    pub fn rsn(&self) -> usize {
        NN - self.roots
    }

    /// Parity of a full `rsn`-byte message (the LFSR of `encode_rs`).
    pub fn encode(&self, msg: &[u8], parity: &mut [u8]) {
        parity.fill(0);
        let r = self.roots;
        for &m in msg {
            let fb = m ^ parity[0];
            parity.copy_within(1..r, 0);
            parity[r - 1] = 0;
            if fb != 0 {
                for (p, &g) in parity.iter_mut().zip(&self.gen[1..]) {
                    *p ^= self.mul(fb, g);
                }
            }
        }
    }

    /// Parity of `width` codewords at once, column-wise: `rows` holds `rsn` rows of `width`
    /// bytes (codeword `b` is byte `b` of every row); parity `j` of codeword `b` goes to
    /// `out[b * roots + j]`. Same result as [`Rs::encode`] per column, much faster.
    pub fn encode_columns(&self, rows: &[u8], width: usize, out: &mut [u8]) {
        let r = self.roots;
        let tabs: Vec<[u8; 256]> = self.gen[1..]
            .iter()
            .map(|&g| {
                let mut t = [0u8; 256];
                for (x, e) in (0u8..=255).zip(t.iter_mut()) {
                    *e = self.mul(x, g);
                }
                t
            })
            .collect();
        // r state rows in a ring: logical parity row j is physical (head + j) % r.
        let mut state = vec![0u8; r * width];
        let mut fb = vec![0u8; width];
        let mut head = 0usize;
        for row in rows.chunks_exact(width).take(self.rsn()) {
            let p0 = &mut state[head * width..(head + 1) * width];
            for ((f, &m), p) in fb.iter_mut().zip(row).zip(p0.iter_mut()) {
                *f = m ^ *p;
                *p = 0;
            }
            head = (head + 1) % r;
            for (j, tab) in tabs.iter().enumerate() {
                let at = (head + j) % r * width;
                for (p, &f) in state[at..at + width].iter_mut().zip(&fb) {
                    *p ^= tab[usize::from(f)];
                }
            }
        }
        for j in 0..r {
            let at = (head + j) % r * width;
            for (b, &p) in state[at..at + width].iter().enumerate() {
                out[b * r + j] = p;
            }
        }
    }

    /// Evaluate a polynomial (lowest degree first) at `x`.
    fn eval_low(&self, p: &[u8], x: u8) -> u8 {
        p.iter().rev().fold(0u8, |acc, &c| self.mul(acc, x) ^ c)
    }

    /// Correct `cw` (message then parity, `NN` bytes) in place, given erasure positions.
    /// Returns the number of corrected bytes.
    pub fn decode(&self, cw: &mut [u8], erasures: &[usize]) -> Result<usize, Uncorrectable> {
        let r = self.roots;
        debug_assert_eq!(cw.len(), NN);
        if erasures.len() > r {
            return Err(Uncorrectable);
        }
        // Syndromes S_j = c(α^j), c(x) = Σ cw[k] x^(254-k).
        let mut s = vec![0u8; r];
        let mut any = false;
        for (j, sj) in s.iter_mut().enumerate() {
            let a = self.pow(j);
            *sj = cw.iter().fold(0u8, |acc, &c| self.mul(acc, a) ^ c);
            any |= *sj != 0;
        }
        if !any {
            return Ok(0);
        }
        // Erasure locator Λ(x) = prod (1 + X_i x), X_i = α^(254 - pos), lowest degree first.
        let mut lambda = vec![0u8; r + 1];
        lambda[0] = 1;
        for &pos in erasures {
            let x = self.pow(NN - 1 - pos);
            for k in (1..=r).rev() {
                lambda[k] ^= self.mul(lambda[k - 1], x);
            }
        }
        let ne = erasures.len();
        let mut b = lambda.clone();
        let mut el = ne;
        for step in (ne + 1)..=r {
            let mut discr = 0u8;
            for i in 0..step {
                discr ^= self.mul(lambda[i], s[step - i - 1]);
            }
            if discr == 0 {
                b.rotate_right(1);
                b[0] = 0;
                continue;
            }
            let mut t = lambda.clone();
            for i in 0..r {
                t[i + 1] ^= self.mul(discr, b[i]);
            }
            if 2 * el < step + ne {
                el = step + ne - el;
                let d = self.inv(discr);
                for (bi, &li) in b.iter_mut().zip(&lambda) {
                    *bi = self.mul(li, d);
                }
            } else {
                b.rotate_right(1);
                b[0] = 0;
            }
            lambda = t;
        }
        let deg = lambda.iter().rposition(|&c| c != 0).unwrap_or(0);
        // Chien search: Λ(α^i) = 0 means an error at position i - 1.
        let mut positions = Vec::with_capacity(deg);
        for i in 1..=NN {
            if self.eval_low(&lambda, self.pow(i)) == 0 {
                positions.push(i - 1);
            }
        }
        // More errors than the code can correct (2 × errors + erasures > roots) are
        // uncorrectable even when the locator happens to have all its roots (kernel
        // rslib: "Fix remaining decoder flaws").
        if positions.len() != deg || deg == 0 || 2 * deg > r + ne {
            return Err(Uncorrectable);
        }
        // Ω(x) = S(x) Λ(x) mod x^r.
        let mut omega = vec![0u8; r];
        for (i, o) in omega.iter_mut().enumerate() {
            for j in 0..=i.min(deg) {
                *o ^= self.mul(lambda[j], s[i - j]);
            }
        }
        // Λ'(x): odd-degree terms only (characteristic 2).
        let dlambda: Vec<u8> = (1..=deg)
            .map(|i| if i % 2 == 1 { lambda[i] } else { 0 })
            .collect();
        let mut fixes = Vec::with_capacity(positions.len());
        for &pos in &positions {
            let x = self.pow(NN - 1 - pos);
            let xinv = self.inv(x);
            let den = self.eval_low(&dlambda, xinv);
            if den == 0 {
                return Err(Uncorrectable);
            }
            // Forney with first root α^0: Y = X · Ω(X^-1) / Λ'(X^-1).
            let num = self.mul(x, self.eval_low(&omega, xinv));
            fixes.push((pos, self.mul(num, self.inv(den))));
        }
        for &(pos, e) in &fixes {
            cw[pos] ^= e;
        }
        // What is returned as corrected must be a codeword: a word beyond the code's
        // capacity can still yield a locator that passes the checks above.
        let clean = (0..r).all(|j| {
            let a = self.pow(j);
            cw.iter().fold(0u8, |acc, &c| self.mul(acc, a) ^ c) == 0
        });
        if !clean {
            for &(pos, e) in &fixes {
                cw[pos] ^= e;
            }
            return Err(Uncorrectable);
        }
        Ok(positions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codeword(rs: &Rs, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        let msg: Vec<u8> = (0..rs.rsn())
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let mut parity = vec![0u8; rs.roots()];
        rs.encode(&msg, &mut parity);
        [msg, parity].concat()
    }

    #[test]
    fn a_word_beyond_capacity_is_never_returned_as_corrected_unless_a_codeword() {
        // Found by the fec_decode fuzz target (fuzz/corpus/fec_decode/regress-not-a-codeword):
        // 4 roots, an arbitrary word; the decoder used to return Ok with a result whose
        // syndromes were not zero.
        let input = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/fec_decode/regress-not-a-codeword"
        ))
        .unwrap();
        let rs = Rs::new(usize::from(input[0]) % 23 + 2);
        let mut cw = [0u8; NN];
        let n = (input.len() - 1).min(NN);
        cw[..n].copy_from_slice(&input[1..=n]);
        let before = cw;
        match rs.decode(&mut cw, &[]) {
            Ok(_) => assert_eq!(rs.decode(&mut cw.clone(), &[]), Ok(0)),
            Err(Uncorrectable) => assert_eq!(cw, before, "a refused word was changed"),
        }
    }

    #[test]
    fn column_encoding_equals_one_codeword_at_a_time() {
        for roots in [2usize, 5, 24] {
            let rs = Rs::new(roots);
            let width = 7;
            let rows: Vec<u8> = (0..rs.rsn() * width)
                .map(|i| (i * 131 % 251) as u8)
                .collect();
            let mut out = vec![0u8; width * roots];
            rs.encode_columns(&rows, width, &mut out);
            for b in 0..width {
                let msg: Vec<u8> = (0..rs.rsn()).map(|i| rows[i * width + b]).collect();
                let mut par = vec![0u8; roots];
                rs.encode(&msg, &mut par);
                assert_eq!(
                    par,
                    out[b * roots..(b + 1) * roots],
                    "roots {roots} col {b}"
                );
            }
        }
    }

    #[test]
    fn codewords_have_zero_syndromes() {
        let rs = Rs::new(8);
        let mut cw = codeword(&rs, 1);
        assert_eq!(rs.decode(&mut cw, &[]), Ok(0));
    }

    #[test]
    fn corrects_up_to_half_roots_errors_and_roots_erasures() {
        for roots in [2usize, 3, 8, 24] {
            let rs = Rs::new(roots);
            for seed in 0..20u32 {
                let good = codeword(&rs, seed);
                // errors only
                let mut cw = good.clone();
                for k in 0..roots / 2 {
                    cw[(seed as usize * 37 + k * 101) % NN] ^= 0x5a + k as u8;
                }
                assert_eq!(rs.decode(&mut cw, &[]).map(|_| ()), Ok(()), "roots {roots}");
                assert_eq!(cw, good);
                // erasures only
                let mut cw = good.clone();
                let eras: Vec<usize> = (0..roots).map(|k| (seed as usize + k * 7) % NN).collect();
                for &p in &eras {
                    cw[p] ^= 0xa5;
                }
                assert!(rs.decode(&mut cw, &eras).is_ok(), "roots {roots} erasures");
                assert_eq!(cw, good);
                // mixed: 2e + s = roots
                if roots >= 4 {
                    let mut cw = good.clone();
                    let eras: Vec<usize> = (0..roots - 2).map(|k| k * 3).collect();
                    for &p in &eras {
                        cw[p] ^= 1;
                    }
                    cw[200] ^= 0x33;
                    assert!(rs.decode(&mut cw, &eras).is_ok());
                    assert_eq!(cw, good);
                }
            }
        }
    }

    #[test]
    fn too_many_errors_are_not_silently_accepted_as_the_original() {
        let rs = Rs::new(2);
        let good = codeword(&rs, 9);
        let mut cw = good.clone();
        cw[3] ^= 1;
        cw[90] ^= 2;
        let r = rs.decode(&mut cw, &[]);
        assert!(r.is_err() || cw != good);
    }
}
