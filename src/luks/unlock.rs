//! Unlocking: passphrase → key slot key (KDF) → decrypt the slot's key material → AF merge
//! → volume key, accepted only when the header's digest of it matches.
//!
//! LUKS1: lib/luks1/keymanage.c `LUKS_open_key` (digest = PBKDF2(vk, mkDigestSalt,
//! mkDigestIterations, 20)). LUKS2: lib/luks2/luks2_keyslot_luks2.c and
//! luks2_digest_pbkdf2.c. Key slots are tried as `LUKS2_keyslot_open` does: preferred
//! ones first, then normal ones; `ignored` ones only when named.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::hash::{af_merge, Hash};
use super::kdf::{pbkdf2_cost, Kdf, KdfBudget, KdfLimits};
use super::luks2::json::{Digest, DigestKind, Keyslot, Luks2Keyslot, Metadata};
use super::{read_at, Header, Luks};
use crate::error::{Error, Result};
use crate::targets::crypt::{CipherSpec, Crypt, CryptArgs, CryptKey, CryptOptions, Keyring};
use crate::targets::{DeviceAt, DeviceRef};
use crate::units::{Sector, SectorCount};
use crate::volume::{MemVolume, Volume};

/// An unlocked volume key. Wiped on drop; `Debug` never shows it.
pub struct VolumeKey {
    /// The key bytes.
    pub bytes: Zeroizing<Vec<u8>>,
    /// The key slot that opened it (`None` when the key was given directly).
    pub keyslot: Option<u32>,
    /// The LUKS2 digest that verified it.
    pub digest: Option<u32>,
}

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeKey")
            .field("len", &self.bytes.len())
            .field("keyslot", &self.keyslot)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// Why a passphrase did not open the image (cryptsetup: "No key available with this
/// passphrase.").
fn no_key(extra: &str) -> Error {
    Error::KeyRejected(format!("no key available with this passphrase{extra}"))
}

/// Whether `e` is the attempt's budget running out (which ends the attempt; other slot
/// errors let the next slot be tried).
fn is_budget(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument { what, .. } if *what == "key derivation budget")
}

/// A key slot that could not be opened (its KDF, cipher or area unusable): the error
/// names the slot, so it is never mistaken for a wrong passphrase.
fn in_slot(id: u32, e: Error) -> Error {
    match e {
        Error::InvalidArgument { what, reason } if what != "key derivation budget" => {
            Error::invalid(what, format!("key slot {id}: {reason}"))
        }
        e => e,
    }
}

/// Decrypt `material` (ciphertext, a whole number of sectors) with `cipher` keyed by
/// `key`, 512-byte sectors numbered from 0, through the crypt target itself.
fn decrypt_area(cipher: &str, key: &[u8], material: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
    let spec = CipherSpec::parse(cipher, false).map_err(|e| {
        Error::invalid(
            "key slot cipher",
            format!("{}: {e}", crate::error::quote(cipher)),
        )
    })?;
    let args = CryptArgs {
        cipher: spec,
        key: CryptKey::Hex(Zeroizing::new(key.to_vec())),
        iv_offset: SectorCount(0),
        dest: DeviceAt {
            device: DeviceRef("keyslot".into()),
            offset: SectorCount(0),
        },
        options: CryptOptions::default(),
    };
    let len = material.len();
    let dev = Arc::new(MemVolume::from_bytes(material)?);
    let crypt = Crypt::over(
        dev,
        &args,
        SectorCount::from_bytes(len)?,
        &Keyring::default(),
    )?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    crypt.read(Sector(0), &mut out)?;
    Ok(out)
}

/// KDF, read + decrypt the key material, AF merge: the candidate volume key.
#[allow(clippy::too_many_arguments)]
fn open_slot(
    luks: &Luks,
    pass: &[u8],
    kdf: &Kdf,
    salt: &[u8],
    cipher: &str,
    slot_key_len: usize,
    vk_len: usize,
    stripes: u32,
    af_hash: Hash,
    offset: u64,
    limits: &KdfLimits,
    budget: &mut KdfBudget,
) -> Result<Zeroizing<Vec<u8>>> {
    af_hash.supported("key slot AF hash")?;
    let dk = kdf.derive(pass, salt, slot_key_len, limits, budget)?;
    let stripes = usize::try_from(stripes).map_err(|_| Error::invalid("stripes", "too many"))?;
    let n = vk_len * stripes;
    let material = read_at(&*luks.header_dev, offset, n.div_ceil(512) * 512)?;
    let plain = decrypt_area(cipher, &dk, material)?;
    let mut vk = Zeroizing::new(vec![0u8; vk_len]);
    af_merge(&plain[..n], stripes, af_hash, &mut vk);
    Ok(vk)
}

/// PBKDF2(vk) == the header's digest; the iteration count is checked against `limits`
/// first (a header may ask for billions).
fn digest_ok(
    hash: Hash,
    vk: &[u8],
    salt: &[u8],
    iterations: u32,
    want: &[u8],
    limits: &KdfLimits,
    budget: &mut KdfBudget,
) -> Result<bool> {
    hash.supported("LUKS digest hash")?;
    if iterations == 0 {
        return Err(Error::invalid(
            "LUKS digest",
            "0 PBKDF2 iterations, the volume key cannot be checked",
        ));
    }
    limits.check_iterations(iterations, "the volume key digest")?;
    budget.spend(
        pbkdf2_cost(hash, iterations, want.len()),
        "the volume key digest",
    )?;
    let mut got = Zeroizing::new(vec![0u8; want.len()]);
    hash.pbkdf2(vk, salt, iterations, &mut got);
    // Timing need not be constant: the digest is public in the header.
    Ok(got.as_slice() == want)
}

/// A LUKS2 digest's PBKDF2 check (hash, salt, iterations, digest), or why digest `id`
/// cannot verify a key (an unknown type, a field that is not base64, 0 iterations, an
/// empty or over-long digest): cryptsetup keeps such digests and fails the verification.
fn pbkdf2_check(id: u32, d: &Digest) -> Result<(Hash, &[u8], u32, &[u8])> {
    let bad = |why: String| Error::invalid("LUKS2 digest", format!("digest {id}: {why}"));
    let (hash, iterations, salt, digest) = match &d.kind {
        DigestKind::Other(kind) => {
            return Err(bad(format!(
                "unsupported type {} (dmemu knows pbkdf2)",
                crate::error::quote(kind)
            )))
        }
        DigestKind::Pbkdf2 {
            hash,
            iterations,
            salt,
            digest,
        } => (hash, iterations, salt, digest),
    };
    let hash = hash.supported("LUKS digest hash")?;
    let salt = salt
        .as_deref()
        .ok_or_else(|| bad("salt is not base64".into()))?;
    let digest = digest
        .as_deref()
        .ok_or_else(|| bad("digest is not base64".into()))?;
    if *iterations == 0 {
        return Err(bad(
            "iterations is 0, the volume key cannot be checked".into()
        ));
    }
    if digest.is_empty() || digest.len() > hash.digest_len() {
        return Err(bad(format!(
            "digest is {} bytes, must be 1..={} for {hash}",
            digest.len(),
            hash.digest_len()
        )));
    }
    Ok((hash, salt, *iterations, digest))
}

/// The digest that ties key slot `id` to segment 0 (`LUKS2_keyslot_for_segment`): the
/// digest naming the slot must be the one naming segment 0.
fn segment0_digest(m: &Metadata, id: u32) -> Option<(u32, &Digest)> {
    let (did, d) = m.digests.iter().find(|(_, d)| d.keyslots.contains(&id))?;
    d.segments.contains(&0).then_some((*did, d))
}

impl Luks {
    /// Unlock with `passphrase`: the key slot `slot`, or every usable one in
    /// cryptsetup's order until one opens. All key derivations and digest checks of the
    /// attempt together cost at most `limits.max_total_work`; past it the attempt stops
    /// with an error naming the budget.
    pub fn unlock(
        &self,
        passphrase: &[u8],
        slot: Option<u32>,
        limits: &KdfLimits,
    ) -> Result<VolumeKey> {
        self.unlock_counted(passphrase, slot, limits).0
    }

    /// [`Luks::unlock`], also returning how many key derivations and digest checks ran.
    pub fn unlock_counted(
        &self,
        passphrase: &[u8],
        slot: Option<u32>,
        limits: &KdfLimits,
    ) -> (Result<VolumeKey>, u32) {
        let mut budget = KdfBudget::new(limits);
        let r = self.unlock_within(passphrase, slot, limits, &mut budget);
        (r, budget.runs())
    }

    fn unlock_within(
        &self,
        passphrase: &[u8],
        slot: Option<u32>,
        limits: &KdfLimits,
        budget: &mut KdfBudget,
    ) -> Result<VolumeKey> {
        match &self.header {
            Header::V1(h) => {
                let slots: Vec<u32> = match slot {
                    Some(s) => {
                        let i = usize::try_from(s).ok().filter(|&i| i < h.slots.len());
                        match i.map(|i| &h.slots[i]) {
                            None => {
                                return Err(Error::invalid(
                                    "--key-slot",
                                    format!("{s}: LUKS1 has slots 0..7"),
                                ))
                            }
                            Some(k) if !k.active => {
                                return Err(Error::invalid(
                                    "--key-slot",
                                    format!("key slot {s} is not active"),
                                ))
                            }
                            Some(_) => vec![s],
                        }
                    }
                    None => (0u32..8).filter(|&i| h.slots[i as usize].active).collect(),
                };
                if slots.is_empty() {
                    // LUKS_open_key_with_hdr: every slot ENOENT (cryptsetup exits 1).
                    return Err(Error::invalid(
                        "LUKS1 key slots",
                        "no usable key slot is available (none is ENABLED)",
                    ));
                }
                let mut first_err = None;
                for s in slots {
                    let k = &h.slots[s as usize];
                    if k.iterations == 0 {
                        // crypt_pbkdf fails: cryptsetup stops with "Cannot open keyslot".
                        return Err(Error::invalid(
                            "LUKS1 passwordIterations",
                            format!("key slot {s}: 0 PBKDF2 iterations, the slot cannot be opened"),
                        ));
                    }
                    let kdf = Kdf::Pbkdf2 {
                        hash: h.hash,
                        iterations: k.iterations,
                    };
                    let len = h.key_bytes as usize;
                    let vk = match open_slot(
                        self,
                        passphrase,
                        &kdf,
                        &k.salt,
                        &h.cipher_spec(),
                        len,
                        len,
                        k.stripes,
                        h.hash,
                        u64::from(k.material_offset) * 512,
                        limits,
                        budget,
                    ) {
                        Ok(vk) => vk,
                        Err(e) if is_budget(&e) => return Err(e),
                        Err(e) => {
                            first_err.get_or_insert(in_slot(s, e));
                            continue;
                        }
                    };
                    if digest_ok(
                        h.hash,
                        &vk,
                        &h.mk_digest_salt,
                        h.mk_digest_iterations,
                        &h.mk_digest,
                        limits,
                        budget,
                    )? {
                        return Ok(VolumeKey {
                            bytes: vk,
                            keyslot: Some(s),
                            digest: None,
                        });
                    }
                }
                Err(first_err.unwrap_or_else(|| no_key("")))
            }
            Header::V2(h) => {
                let m = &h.meta;
                let order: Vec<u32> = match slot {
                    Some(s) => match m.keyslots.get(&s) {
                        None => {
                            return Err(Error::invalid(
                                "--key-slot",
                                format!("key slot {s} is not active"),
                            ))
                        }
                        Some(Keyslot::Luks2(_)) => vec![s],
                        Some(other) => {
                            let kind = match other {
                                Keyslot::Other { kind, .. } => kind.as_str(),
                                _ => "reencrypt",
                            };
                            return Err(Error::invalid(
                                "--key-slot",
                                format!(
                                    "key slot {s} has type {}, which holds no passphrase key",
                                    crate::error::quote(kind)
                                ),
                            ));
                        }
                    },
                    None => {
                        // LUKS2_keyslot_open: the preferred (2), then the normal (1, or
                        // absent) slots; any other priority is never tried. A slot of
                        // another type (no handler) or not tied to segment 0 is skipped
                        // (-ENOENT) without deriving anything.
                        let mut skipped = Vec::new();
                        let mut v: Vec<(i64, u32)> = Vec::new();
                        for (&id, k) in &m.keyslots {
                            let prio = match k {
                                Keyslot::Luks2(k) => k.priority.unwrap_or(1),
                                Keyslot::Reencrypt(_) => continue,
                                Keyslot::Other { kind, .. } => {
                                    skipped.push(format!(
                                        "key slot {id} has type {}",
                                        crate::error::quote(kind)
                                    ));
                                    continue;
                                }
                            };
                            if prio != 1 && prio != 2 {
                                skipped.push(format!(
                                    "key slot {id} has priority {prio}{}",
                                    if prio == 0 {
                                        " (ignored)"
                                    } else {
                                        ", never tried"
                                    }
                                ));
                            } else if segment0_digest(m, id).is_none() {
                                skipped.push(format!("key slot {id} is not bound to segment 0"));
                            } else {
                                v.push((-prio, id));
                            }
                        }
                        if v.is_empty() && !skipped.is_empty() {
                            // Every slot -ENOENT: "No usable keyslot is available."
                            return Err(Error::invalid(
                                "LUKS2 key slots",
                                format!("no usable key slot is available: {}", skipped.join(", ")),
                            ));
                        }
                        v.sort_unstable();
                        v.into_iter().map(|(_, id)| id).collect()
                    }
                };
                let mut first_err = None;
                for id in order {
                    let Some(Keyslot::Luks2(k)) = m.keyslots.get(&id) else {
                        continue;
                    };
                    match self.try_luks2_slot(id, k, passphrase, limits, budget) {
                        Ok(Some(vk)) => return Ok(vk),
                        Ok(None) => {}
                        Err(e) if is_budget(&e) => return Err(e),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
                let hw: Vec<String> = m
                    .tokens
                    .iter()
                    .filter(|(_, t)| {
                        t.kind.starts_with("systemd-")
                            || t.kind.contains("fido")
                            || t.kind.contains("tpm")
                    })
                    .map(|(id, t)| {
                        format!("token {id} ({}) for key slots {:?}", t.kind, t.keyslots)
                    })
                    .collect();
                if hw.is_empty() {
                    Err(no_key(""))
                } else {
                    Err(no_key(&format!(
                        "; {} need hardware or a token plugin dmemu does not run",
                        hw.join(", ")
                    )))
                }
            }
        }
    }

    fn try_luks2_slot(
        &self,
        id: u32,
        k: &Luks2Keyslot,
        pass: &[u8],
        limits: &KdfLimits,
        budget: &mut KdfBudget,
    ) -> Result<Option<VolumeKey>> {
        let Header::V2(h) = &self.header else {
            return Ok(None);
        };
        // Whatever makes the slot unusable, before its KDF runs: a key size of 0
        // (cryptsetup: "Not enough available memory to open a keyslot."), a salt that is
        // not base64, a digest that cannot verify.
        if k.key_size == 0 {
            return Err(Error::invalid(
                "LUKS2 key slot",
                format!("key slot {id}: key_size is 0, it holds no volume key"),
            ));
        }
        let salt = k.salt.as_deref().ok_or_else(|| {
            Error::invalid(
                "LUKS2 key slot",
                format!("key slot {id}: kdf.salt is not base64"),
            )
        })?;
        // Only a digest that also covers segment 0 makes the key a data key: a key slot
        // bound to no segment (cryptsetup's "unbound" keys) cannot open the volume.
        let Some((did, d)) = segment0_digest(&h.meta, id) else {
            return Ok(None);
        };
        let (hash, dsalt, iterations, want) = pbkdf2_check(did, d)?;
        let vk = open_slot(
            self,
            pass,
            &k.kdf,
            salt,
            &k.area_encryption,
            k.area_key_size as usize,
            k.key_size as usize,
            k.stripes,
            k.af_hash,
            k.area_offset,
            limits,
            budget,
        )
        .map_err(|e| in_slot(id, e))?;
        if digest_ok(hash, &vk, dsalt, iterations, want, limits, budget)? {
            return Ok(Some(VolumeKey {
                bytes: vk,
                keyslot: Some(id),
                digest: Some(did),
            }));
        }
        Ok(None)
    }

    /// Accept a volume key given directly (cryptsetup `--volume-key-file`) if the header's
    /// digest confirms it.
    pub fn check_volume_key(&self, key: &[u8]) -> Result<VolumeKey> {
        let limits = KdfLimits::default();
        let budget = &mut KdfBudget::new(&limits);
        let wrong = || Error::KeyRejected("volume key does not match the header's digest".into());
        match &self.header {
            Header::V1(h) => {
                if key.len() != h.key_bytes as usize
                    || !digest_ok(
                        h.hash,
                        key,
                        &h.mk_digest_salt,
                        h.mk_digest_iterations,
                        &h.mk_digest,
                        &limits,
                        budget,
                    )?
                {
                    return Err(wrong());
                }
                Ok(VolumeKey {
                    bytes: Zeroizing::new(key.to_vec()),
                    keyslot: None,
                    digest: None,
                })
            }
            Header::V2(h) => {
                for (&did, d) in &h.meta.digests {
                    if !d.segments.contains(&0) {
                        continue;
                    }
                    let (hash, salt, iterations, want) = pbkdf2_check(did, d)?;
                    if digest_ok(hash, key, salt, iterations, want, &limits, budget)? {
                        return Ok(VolumeKey {
                            bytes: Zeroizing::new(key.to_vec()),
                            keyslot: None,
                            digest: Some(did),
                        });
                    }
                }
                Err(wrong())
            }
        }
    }
}
