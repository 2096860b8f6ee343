//! dm-crypt's authenticated modes (`integrity:<n>:aead`, `crypt_convert_block_aead`):
//! `gcm(aes)` (RustCrypto aes-gcm), `aegis128` (crypto/aegis128-core.c, written here over
//! the AES round function) and `authenc(hmac(<hash>),<skcipher>)` (crypto/authenc.c: the
//! skcipher encrypts, an HMAC over associated data ‖ ciphertext is the tag).
//!
//! Per crypt sector the kernel authenticates `le64(sector) ‖ IV` (the sector counted in
//! 512-byte units from the target start, the IV as generated, `cc->iv_size` bytes) and
//! encrypts the sector; the tag tuple on the integrity device below holds the auth tag and,
//! for `random` IVs, the IV after it.

use hmac::{Hmac, KeyInit, Mac};
use zeroize::{Zeroize, Zeroizing};

use super::cipher::Transform;
use super::iv::Iv;
use super::modes::{Tfm, TfmError};
use super::vaes_gcm;

/// The largest AEAD IV (aegis128 and authenc over xts: 16 bytes).
pub(crate) const MAX_AEAD_IV: usize = 16;

/// A keyed AEAD with its auth tag size.
pub(crate) struct Aead {
    imp: Imp,
    /// `crypto_aead_ivsize`.
    iv_size: usize,
    /// The auth tag bytes (`integrity_tag_size`, set with `crypto_aead_setauthsize`).
    auth_size: usize,
}

enum Imp {
    Gcm(Box<Gcm>),
    Aegis128(Box<Aegis128>),
    Authenc { mac: Box<MacKey>, tfm: Box<Tfm> },
}

/// The HMAC of authenc, keyed once and cloned per sector.
#[derive(Clone)]
enum MacKey {
    Sha1(Hmac<sha1::Sha1>),
    Sha256(Hmac<sha2::Sha256>),
    Sha512(Hmac<sha2::Sha512>),
}

impl MacKey {
    fn new(hash: &str, key: &[u8]) -> Option<MacKey> {
        Some(match hash {
            "sha1" => MacKey::Sha1(Hmac::new_from_slice(key).ok()?),
            "sha256" => MacKey::Sha256(Hmac::new_from_slice(key).ok()?),
            "sha512" => MacKey::Sha512(Hmac::new_from_slice(key).ok()?),
            _ => return None,
        })
    }

    /// The digest of `parts` concatenated, into `out` (truncated to its length).
    fn tag(&self, parts: &[&[u8]], out: &mut [u8]) {
        macro_rules! run {
            ($m:expr) => {{
                let mut m = $m.clone();
                for p in parts {
                    m.update(p);
                }
                let d = m.finalize().into_bytes();
                out.copy_from_slice(&d[..out.len()]);
            }};
        }
        match self {
            MacKey::Sha1(m) => run!(m),
            MacKey::Sha256(m) => run!(m),
            MacKey::Sha512(m) => run!(m),
        }
    }
}

/// Digest size of an authenc MAC hash this module implements.
pub(crate) fn mac_digest_size(hash: &str) -> Option<usize> {
    match hash {
        "sha1" => Some(20),
        "sha256" => Some(32),
        "sha512" => Some(64),
        _ => None,
    }
}

/// The AEAD families of a `capi:` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AeadName {
    /// `gcm(aes)`.
    Gcm,
    /// `aegis128`.
    Aegis128,
    /// `authenc(hmac(<hash>),<skcipher>)`.
    Authenc {
        /// The HMAC hash (`sha256`).
        hash: String,
        /// The skcipher's API name (`xts(aes)`), typed.
        inner: Transform,
    },
}

impl AeadName {
    /// The AEAD an opaque API name names, if dmemu implements it.
    pub(crate) fn parse(api: &str) -> Option<AeadName> {
        match api {
            "gcm(aes)" => return Some(AeadName::Gcm),
            "aegis128" => return Some(AeadName::Aegis128),
            _ => {}
        }
        let rest = api.strip_prefix("authenc(hmac(")?.strip_suffix(')')?;
        let (hash, inner) = rest.split_once("),")?;
        mac_digest_size(hash)?;
        let inner = super::cipher::parse_api(inner).ok()?;
        matches!(inner, Transform::Block { essiv: None, .. }).then(|| AeadName::Authenc {
            hash: hash.to_string(),
            inner,
        })
    }

    /// The MAC key size authenc takes from the end of the key (the digest size unless
    /// `integrity_key_size` says otherwise); 0 for the others.
    pub(crate) fn mac_key_size(&self, integrity_key_size: Option<u32>) -> usize {
        match self {
            AeadName::Authenc { hash, .. } => integrity_key_size
                .map_or_else(|| mac_digest_size(hash).unwrap_or(0), |n| n as usize),
            _ => 0,
        }
    }
}

/// Why an AEAD could not be keyed.
#[derive(Debug)]
pub(crate) enum AeadError {
    /// The key does not fit (the kernel's setkey fails: "Error decoding and setting key").
    Key(String),
    /// The auth tag size is not one the AEAD takes (`crypto_aead_setauthsize`).
    AuthSize,
    /// dmemu does not implement the inner skcipher (or tag size).
    Unsupported,
}

impl Aead {
    /// Key `name` with `key` (the crypt key's subkey: for authenc the encryption key
    /// followed by `mac_key` MAC key bytes) for `auth_size`-byte tags.
    pub(crate) fn new(
        name: &AeadName,
        key: &[u8],
        mac_key: usize,
        auth_size: usize,
    ) -> Result<Aead, AeadError> {
        let bad_key = |what: &str| AeadError::Key(format!("{what} key of {} bytes", key.len()));
        let (imp, iv_size) = match name {
            AeadName::Gcm => {
                // crypto_gcm_setauthsize takes 4, 8 and 12..=16.
                if !matches!(auth_size, 4 | 8 | 12..=16) {
                    return Err(AeadError::AuthSize);
                }
                let imp = Imp::Gcm(Box::new(Gcm::new(key).ok_or_else(|| bad_key("gcm(aes)"))?));
                (imp, 12)
            }
            AeadName::Aegis128 => {
                // crypto_aegis128_setauthsize: 8..=16.
                if !(8..=16).contains(&auth_size) {
                    return Err(AeadError::AuthSize);
                }
                let k: [u8; 16] = key.try_into().map_err(|_| bad_key("aegis128"))?;
                (Imp::Aegis128(Box::new(Aegis128::new(&k))), 16)
            }
            AeadName::Authenc { hash, inner } => {
                if auth_size > mac_digest_size(hash).unwrap_or(0) {
                    return Err(AeadError::AuthSize);
                }
                let enc = key.len().checked_sub(mac_key).ok_or_else(|| {
                    AeadError::Key(format!(
                        "a {}-byte key is shorter than its {mac_key}-byte MAC key",
                        key.len()
                    ))
                })?;
                let mac = MacKey::new(hash, &key[enc..]).ok_or(AeadError::Unsupported)?;
                let tfm = Tfm::new(inner, &key[..enc]).map_err(|e| match e {
                    TfmError::KeyLength(w) => AeadError::Key(w),
                    TfmError::Unsupported(_) => AeadError::Unsupported,
                })?;
                let iv = tfm.iv_size();
                if iv > MAX_AEAD_IV {
                    return Err(AeadError::Unsupported);
                }
                (
                    Imp::Authenc {
                        mac: Box::new(mac),
                        tfm: Box::new(tfm),
                    },
                    iv,
                )
            }
        };
        Ok(Aead {
            imp,
            iv_size,
            auth_size,
        })
    }

    /// `crypto_aead_ivsize`.
    pub(crate) fn iv_size(&self) -> usize {
        self.iv_size
    }

    /// Encrypt `data` in place; the auth tag into `tag` (`auth_size` bytes).
    pub(crate) fn encrypt(&self, aad: &[u8], iv: &[u8], data: &mut [u8], tag: &mut [u8]) {
        match &self.imp {
            Imp::Gcm(g) => g.seal(aad, iv, data, tag),
            Imp::Aegis128(a) => a.seal(aad, iv, data, tag),
            Imp::Authenc { mac, tfm } => {
                tfm.encrypt(&iv_buf(iv), data);
                mac.tag(&[aad, data], tag);
            }
        }
    }

    /// Check `tag` and decrypt `data` in place; `false` (EBADMSG) when the tag does not
    /// match, `data` then left as it was.
    pub(crate) fn decrypt(&self, aad: &[u8], iv: &[u8], data: &mut [u8], tag: &[u8]) -> bool {
        debug_assert_eq!(tag.len(), self.auth_size);
        match &self.imp {
            Imp::Gcm(g) => g.open(aad, iv, data, tag),
            Imp::Aegis128(a) => a.open(aad, iv, data, tag),
            Imp::Authenc { mac, tfm } => {
                let mut want = [0u8; 64];
                let want = &mut want[..tag.len()];
                mac.tag(&[aad, data], want);
                if !ct_eq(want, tag) {
                    return false;
                }
                tfm.decrypt(&iv_buf(iv), data);
                true
            }
        }
    }
}

/// `data ^= ks` (ks at least as long), 16 bytes at a time.
fn xor_into(data: &mut [u8], ks: &[u8]) {
    let ks = &ks[..data.len()];
    let mut d = data.chunks_exact_mut(16);
    let mut k = ks.chunks_exact(16);
    for (a, b) in (&mut d).zip(&mut k) {
        let x = u128::from_le_bytes(a.try_into().unwrap_or_default())
            ^ u128::from_le_bytes(b.try_into().unwrap_or_default());
        a.copy_from_slice(&x.to_le_bytes());
    }
    for (a, b) in d.into_remainder().iter_mut().zip(k.remainder()) {
        *a ^= b;
    }
}

fn iv_buf(iv: &[u8]) -> Iv {
    let mut b = [0u8; 32];
    b[..iv.len()].copy_from_slice(iv);
    b
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// GCM over AES (NIST SP 800-38D, the kernel's `gcm(aes)`) in one pass per crypt sector:
/// the counter blocks and J0 encrypted in one batch (the aes crate's parallel backend),
/// GHASH as POLYVAL over byte-reversed blocks (RFC 8452 appendix A) with the whole
/// sector's blocks reversed at once. RustCrypto's aes-gcm (two passes, one block reversal
/// call per block) is the reference it is tested against.
pub(crate) struct Gcm {
    cipher: super::modes::Cipher,
    /// POLYVAL keyed with mulX(reverse(H)).
    polyval: polyval::Polyval,
    /// The VAES + VPCLMULQDQ kernel's keys, when the CPU has them (vaes_gcm.rs); it runs
    /// sectors whose length is a multiple of its stride, the portable path the rest.
    fast: Option<vaes_gcm::GcmKeys>,
}

/// Most 16-byte blocks one crypt sector has (4096 bytes).
const GCM_MAX_BLOCKS: usize = 4096 / 16;

thread_local! {
    /// Per-thread scratch for the keystream and the reversed GHASH input (not zeroed per
    /// sector: a 512-byte sector would pay for 4 KiB of zeroing twice).
    static GCM_SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; 16 * (2 * GCM_MAX_BLOCKS + 5)]);
}

impl Gcm {
    fn new(key: &[u8]) -> Option<Gcm> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return None;
        }
        let cipher = super::modes::Cipher::new("aes", key)?;
        let mut h = [0u8; 16];
        cipher.encrypt(&mut h);
        let hp = polyval::hazmat::FieldElement::from(h).reverse().mulx();
        h.zeroize();
        let hk: [u8; 16] = hp.into();
        let hk = Zeroizing::new(hk);
        Some(Gcm {
            cipher,
            polyval: polyval::Polyval::new(&(*hk).into()),
            fast: vaes_gcm::GcmKeys::new(key, &hk),
        })
    }

    /// E(J0) and the keystream for `len` bytes (counter from J0 + 1), into `ks`.
    fn keystream(&self, iv: &[u8], len: usize, ks: &mut [u8]) -> B {
        let blocks = len.div_ceil(16);
        let mut j = [0u8; 16];
        j[..12].copy_from_slice(&iv[..12]);
        let base = u128::from_be_bytes(j);
        for (i, b) in ks[..(blocks + 1) * 16].chunks_exact_mut(16).enumerate() {
            // inc32: the low 32 bits count from 1 and wrap.
            let ctr = (1u32.wrapping_add(i as u32)) as u128;
            b.copy_from_slice(&(base | ctr).to_be_bytes());
        }
        self.cipher.encrypt(&mut ks[..(blocks + 1) * 16]);
        let mut ek0 = [0u8; 16];
        ek0.copy_from_slice(&ks[..16]);
        ek0
    }

    /// GHASH(aad, ct) XOR E(J0); `buf` holds at least ct + aad + 3 blocks.
    fn tag(&self, aad: &[u8], ct: &[u8], ek0: &B, buf: &mut [u8]) -> B {
        use polyval::universal_hash::UniversalHash as _;
        let mut p = self.polyval.clone();
        // aad and ct padded to blocks, then the length block, each block byte-reversed
        // (reversing while copying: the ciphertext is read once).
        let a = aad.len().div_ceil(16) * 16;
        let c = ct.len().div_ceil(16) * 16;
        let rev = |src: &[u8], dst: &mut [u8]| {
            let mut s = src.chunks_exact(16);
            let mut d = dst.chunks_exact_mut(16);
            for (a, b) in (&mut s).zip(&mut d) {
                let v = u128::from_be_bytes(a.try_into().unwrap_or_default());
                b.copy_from_slice(&v.to_le_bytes());
            }
            let r = s.remainder();
            if let (false, Some(b)) = (r.is_empty(), d.next()) {
                let mut t = [0u8; 16];
                t[..r.len()].copy_from_slice(r);
                b.copy_from_slice(&u128::from_be_bytes(t).to_le_bytes());
            }
        };
        rev(aad, &mut buf[..a]);
        rev(ct, &mut buf[a..a + c]);
        let mut lens = [0u8; 16];
        lens[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        lens[8..].copy_from_slice(&(ct.len() as u64 * 8).to_be_bytes());
        rev(&lens, &mut buf[a + c..a + c + 16]);
        p.update_padded(&buf[..a + c + 16]);
        let mut t: [u8; 16] = p.finalize().into();
        t.reverse();
        xor(&mut t, ek0);
        t
    }

    /// Run `f(keystream, ghash scratch)` on this thread's scratch (large enough for a
    /// 4096-byte sector and 48 bytes of AAD). The keystream is not wiped: it reveals no
    /// more than the plaintext of the sector it was used for, which the caller holds.
    fn scratch<R>(&self, f: impl FnOnce(&mut [u8], &mut [u8]) -> R) -> R {
        GCM_SCRATCH.with(|cell| {
            let mut v = cell.borrow_mut();
            let (ks, rest) = v.split_at_mut(16 * (GCM_MAX_BLOCKS + 1));
            f(ks, rest)
        })
    }

    fn seal(&self, aad: &[u8], iv: &[u8], data: &mut [u8], tag: &mut [u8]) {
        if let Some(t) = self
            .fast
            .as_ref()
            .and_then(|f| f.crypt(aad, iv, data, false))
        {
            tag.copy_from_slice(&t[..tag.len()]);
            return;
        }
        self.scratch(|ks, buf| {
            let ek0 = self.keystream(iv, data.len(), ks);
            xor_into(data, &ks[16..]);
            let t = self.tag(aad, data, &ek0, buf);
            tag.copy_from_slice(&t[..tag.len()]);
        });
    }

    fn open(&self, aad: &[u8], iv: &[u8], data: &mut [u8], tag: &[u8]) -> bool {
        if let Some(f) = &self.fast {
            // One pass decrypts while it hashes; a wrong tag re-encrypts (the same
            // keystream) so `data` is left as it was.
            if let Some(t) = f.crypt(aad, iv, data, true) {
                if ct_eq(&t[..tag.len()], tag) {
                    return true;
                }
                f.crypt(aad, iv, data, false);
                return false;
            }
        }
        self.scratch(|ks, buf| {
            let ek0 = self.keystream(iv, data.len(), ks);
            let t = self.tag(aad, data, &ek0, buf);
            let ok = ct_eq(&t[..tag.len()], tag);
            if ok {
                xor_into(data, &ks[16..]);
            }
            ok
        })
    }
}

type B = [u8; 16];

/// `crypto_aegis_const`.
const AEGIS_CONST: [B; 2] = [
    [
        0x00, 0x01, 0x01, 0x02, 0x03, 0x05, 0x08, 0x0d, 0x15, 0x22, 0x37, 0x59, 0x90, 0xe9, 0x79,
        0x62,
    ],
    [
        0xdb, 0x3d, 0x18, 0x55, 0x6d, 0xc2, 0x2f, 0xf1, 0x20, 0x11, 0x31, 0x42, 0x73, 0xb5, 0x28,
        0xdd,
    ],
];

/// AEGIS-128 as crypto/aegis128-core.c (the CAESAR final version): five 16-byte state
/// blocks, one AES round per block per update.
pub(crate) struct Aegis128 {
    key: Zeroizing<B>,
}

struct AegisState([B; 5]);

impl Drop for AegisState {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

fn xor(a: &mut B, b: &B) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// `crypto_aegis_aesenc`: one AES round of `src` with round key `key`.
fn aesenc(src: &B, key: &B) -> B {
    let mut b = aes::Block::from(*src);
    aes::hazmat::cipher_round(&mut b, &aes::Block::from(*key));
    b.into()
}

impl AegisState {
    /// `crypto_aegis128_update_a`.
    fn update(&mut self, msg: &B) {
        let s = &mut self.0;
        let last = s[4];
        for i in (1..5).rev() {
            s[i] = aesenc(&s[i - 1], &s[i]);
        }
        s[0] = aesenc(&last, &s[0]);
        xor(&mut s[0], msg);
    }

    /// The keystream block for the next message block.
    fn stream(&self) -> B {
        let s = &self.0;
        let mut t = [0u8; 16];
        for (i, o) in t.iter_mut().enumerate() {
            *o = (s[2][i] & s[3][i]) ^ s[4][i] ^ s[1][i];
        }
        t
    }
}

impl Aegis128 {
    fn new(key: &B) -> Aegis128 {
        Aegis128 {
            key: Zeroizing::new(*key),
        }
    }

    /// `crypto_aegis128_init` + `crypto_aegis128_process_ad`.
    fn start(&self, iv: &[u8], aad: &[u8]) -> AegisState {
        let key = &*self.key;
        let mut key_iv = *key;
        let mut ivb = [0u8; 16];
        ivb.copy_from_slice(&iv[..16]);
        xor(&mut key_iv, &ivb);
        let mut k0 = *key;
        xor(&mut k0, &AEGIS_CONST[0]);
        let mut k1 = *key;
        xor(&mut k1, &AEGIS_CONST[1]);
        let mut st = AegisState([key_iv, AEGIS_CONST[1], AEGIS_CONST[0], k0, k1]);
        k0.zeroize();
        k1.zeroize();
        for _ in 0..5 {
            st.update(key);
            st.update(&key_iv);
        }
        key_iv.zeroize();
        for chunk in aad.chunks(16) {
            let mut b = [0u8; 16];
            b[..chunk.len()].copy_from_slice(chunk);
            st.update(&b);
        }
        st
    }

    /// `crypto_aegis128_final`: the tag (XOR of the state) after seven updates with the
    /// bit lengths.
    fn finish(mut st: AegisState, aad_len: usize, len: usize) -> B {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&(aad_len as u64 * 8).to_le_bytes());
        t[8..].copy_from_slice(&(len as u64 * 8).to_le_bytes());
        xor(&mut t, &st.0[3]);
        for _ in 0..7 {
            st.update(&t);
        }
        let mut tag = [0u8; 16];
        for b in &st.0 {
            xor(&mut tag, b);
        }
        tag
    }

    fn seal(&self, aad: &[u8], iv: &[u8], data: &mut [u8], tag: &mut [u8]) {
        let mut st = self.start(iv, aad);
        for chunk in data.chunks_mut(16) {
            let mut m = [0u8; 16];
            m[..chunk.len()].copy_from_slice(chunk);
            let ks = st.stream();
            st.update(&m);
            for (c, k) in chunk.iter_mut().zip(ks) {
                *c ^= k;
            }
        }
        let t = Self::finish(st, aad.len(), data.len());
        tag.copy_from_slice(&t[..tag.len()]);
    }

    fn open(&self, aad: &[u8], iv: &[u8], data: &mut [u8], tag: &[u8]) -> bool {
        let mut st = self.start(iv, aad);
        let mut plain = Zeroizing::new(data.to_vec());
        for chunk in plain.chunks_mut(16) {
            let ks = st.stream();
            let mut m = [0u8; 16];
            for (i, c) in chunk.iter_mut().enumerate() {
                *c ^= ks[i];
                m[i] = *c;
            }
            st.update(&m);
        }
        let t = Self::finish(st, aad.len(), data.len());
        if !ct_eq(&t[..tag.len()], tag) {
            return false;
        }
        data.copy_from_slice(&plain);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The kernel's own AEGIS-128 test vectors (crypto/testmgr.h `aegis128_tv_template`,
    /// extracted by tests/fixtures/luks-integrity/aegis128-testmgr.py): seal gives the
    /// ciphertext and tag, open gives the plaintext back and refuses a changed tag.
    #[test]
    fn aegis128_matches_the_kernels_test_vectors() {
        let text = include_str!("../../../tests/fixtures/luks-integrity/aegis128-testmgr.txt");
        let mut n = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<Vec<u8>> = line
                .split(' ')
                .map(|w| if w == "-" { Vec::new() } else { hex(w) })
                .collect();
            let (key, iv, aad, plain, want) = (&f[0], &f[1], &f[2], &f[3], &f[4]);
            let a = Aegis128::new(key.as_slice().try_into().unwrap());
            let mut data = plain.clone();
            // clen - plen is the auth tag size (some vectors truncate it).
            let mut tag = vec![0u8; want.len() - plain.len()];
            a.seal(aad, iv, &mut data, &mut tag);
            assert_eq!([data.clone(), tag.clone()].concat(), *want, "{line}");
            assert!(a.open(aad, iv, &mut data, &tag), "{line}");
            assert_eq!(data, *plain, "{line}");
            tag[0] ^= 1;
            let mut again = want[..plain.len()].to_vec();
            assert!(!a.open(aad, iv, &mut again, &tag), "{line}");
            assert_eq!(again, want[..plain.len()], "unchanged on failure");
            n += 1;
        }
        assert!(n >= 20, "{n} vectors");
    }

    /// RustCrypto aes-gcm's ciphertext and tag of `plain` (the reference).
    fn reference_gcm(key: &[u8], iv: &[u8], aad: &[u8], plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
        use aes_gcm::aead::inout::InOutBuf;
        use aes_gcm::aead::AeadInOut;
        let mut theirs = plain.to_vec();
        let nonce = aes::cipher::Array::try_from(iv).unwrap();
        let buf = InOutBuf::from(&mut theirs[..]);
        let t = match key.len() {
            16 => aes_gcm::Aes128Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_inout_detached(&nonce, aad, buf),
            24 => aes_gcm::AesGcm::<aes::Aes192, aes::cipher::consts::U12>::new_from_slice(key)
                .unwrap()
                .encrypt_inout_detached(&nonce, aad, buf),
            _ => aes_gcm::Aes256Gcm::new_from_slice(key)
                .unwrap()
                .encrypt_inout_detached(&nonce, aad, buf),
        }
        .unwrap();
        (theirs, t.to_vec())
    }

    /// The VAES + VPCLMULQDQ kernel (when this CPU has it) gives, byte for byte, what the
    /// portable path and RustCrypto's aes-gcm give, for random keys of each size, random
    /// IVs, AAD of 0..=48 bytes and data of 0..=4096 bytes (the kernel runs multiples of its
    /// 128-byte stride, the portable path the rest); open undoes seal, and refuses a changed
    /// byte anywhere with the data left as it was.
    #[test]
    fn vaes_gcm_equals_portable_and_rustcrypto() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let rnd = |n: usize, next: &mut dyn FnMut() -> u64| -> Vec<u8> {
            (0..n).map(|_| next() as u8).collect()
        };
        let mut fast_runs = 0;
        for case in 0..300 {
            let klen = [16, 24, 32][case % 3];
            let key = rnd(klen, &mut next);
            let iv = rnd(12, &mut next);
            let aad = rnd((next() % 49) as usize, &mut next);
            let dlen = match case % 4 {
                0 => 512,
                1 => 4096,
                2 => 128 * (next() % 33) as usize,
                _ => (next() % 4097) as usize,
            };
            let plain = rnd(dlen, &mut next);
            let fast = Gcm::new(&key).unwrap();
            let mut slow = Gcm::new(&key).unwrap();
            slow.fast = None;
            if let Some(f) = &fast.fast {
                let mut c = plain.clone();
                if f.crypt(&aad, &iv, &mut c, false).is_some() {
                    fast_runs += 1;
                } else {
                    assert_ne!(dlen % vaes_gcm::STRIDE, 0);
                    assert_eq!(c, plain, "untouched when the kernel cannot run");
                }
            }
            let (want, want_tag) = reference_gcm(&key, &iv, &aad, &plain);
            for g in [&fast, &slow] {
                let mut c = plain.clone();
                let mut tag = [0u8; 16];
                g.seal(&aad, &iv, &mut c, &mut tag);
                assert_eq!(c, want, "case {case}: {klen} {dlen} {}", aad.len());
                assert_eq!(tag[..], want_tag[..], "case {case}");
                let mut back = c.clone();
                assert!(g.open(&aad, &iv, &mut back, &tag), "case {case}");
                assert_eq!(back, plain);
                // One flipped bit in the ciphertext, the AAD or the tag: refused, unchanged.
                let at = (next() as usize) % (dlen + aad.len() + 16);
                let bit = 1u8 << (next() % 8);
                let (mut c2, mut a2, mut t2) = (c.clone(), aad.clone(), tag);
                if at < dlen {
                    c2[at] ^= bit;
                } else if at < dlen + aad.len() {
                    a2[at - dlen] ^= bit;
                } else {
                    t2[at - dlen - aad.len()] ^= bit;
                }
                let before = c2.clone();
                assert!(!g.open(&a2, &iv, &mut c2, &t2), "case {case}: flip at {at}");
                assert_eq!(c2, before, "case {case}: data left as it was");
            }
        }
        assert!(
            !vaes_gcm::available() || fast_runs > 100,
            "{fast_runs} kernel runs"
        );
    }

    /// The one-pass GCM gives what RustCrypto's aes-gcm gives (key sizes 16, 24, 32;
    /// sector sizes 512 and 4096; the kernel's 24-byte AAD and other lengths), and refuses
    /// a changed ciphertext, AAD or tag.
    #[test]
    fn gcm_matches_rustcrypto_aes_gcm() {
        use aes_gcm::aead::inout::InOutBuf;
        use aes_gcm::aead::AeadInOut;
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut rnd = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        for (klen, dlen, alen) in [
            (16, 512, 20),
            (32, 512, 20),
            (24, 4096, 20),
            (32, 4096, 0),
            (16, 100, 33),
            (32, 0, 48),
        ] {
            let key = rnd(klen);
            let iv = rnd(12);
            let aad = rnd(alen);
            let plain = rnd(dlen);
            let g = Gcm::new(&key).unwrap();
            let mut mine = plain.clone();
            let mut tag = [0u8; 16];
            g.seal(&aad, &iv, &mut mine, &mut tag);
            let mut theirs = plain.clone();
            let nonce = aes::cipher::Array::try_from(&iv[..]).unwrap();
            let t = match klen {
                16 => aes_gcm::Aes128Gcm::new_from_slice(&key)
                    .unwrap()
                    .encrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut theirs[..])),
                24 => {
                    aes_gcm::AesGcm::<aes::Aes192, aes::cipher::consts::U12>::new_from_slice(&key)
                        .unwrap()
                        .encrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut theirs[..]))
                }
                _ => aes_gcm::Aes256Gcm::new_from_slice(&key)
                    .unwrap()
                    .encrypt_inout_detached(&nonce, &aad, InOutBuf::from(&mut theirs[..])),
            }
            .unwrap();
            assert_eq!(mine, theirs, "{klen} {dlen} {alen}");
            assert_eq!(tag[..], t[..], "{klen} {dlen} {alen}");
            let mut back = mine.clone();
            assert!(g.open(&aad, &iv, &mut back, &tag));
            assert_eq!(back, plain);
            if dlen > 0 {
                let mut bad = mine.clone();
                bad[dlen / 2] ^= 1;
                assert!(!g.open(&aad, &iv, &mut bad, &tag));
            }
            let mut bad_tag = tag;
            bad_tag[15] ^= 0x80;
            assert!(!g.open(&aad, &iv, &mut mine.clone(), &bad_tag));
            // A truncated tag (crypto_gcm_setauthsize 12) is the full tag's prefix.
            let mut short = [0u8; 12];
            let mut again = plain.clone();
            g.seal(&aad, &iv, &mut again, &mut short);
            assert_eq!(short[..], tag[..12]);
        }
    }
}
