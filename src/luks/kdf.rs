//! Key derivation for key slots: PBKDF2-HMAC (LUKS1 and LUKS2 `pbkdf2`) and Argon2i /
//! Argon2id (LUKS2), with a cap on Argon2's memory so a hostile header cannot make us
//! allocate gigabytes.
//!
//! cryptsetup's lib/crypto_backend/argon2_generic.c calls Argon2 version 0x13 with
//! `t = time`, `m = memory` (KiB), `p = cpus`, no secret and no associated data.

use std::fmt;

use zeroize::Zeroizing;

use super::hash::Hash;
use crate::error::{Error, Result};

/// Default Argon2 memory cap: 4 GiB, cryptsetup's own maximum (`--pbkdf-memory`).
pub const DEFAULT_MAX_KDF_MEMORY_KIB: u64 = 4 * 1024 * 1024;

/// The two Argon2 variants LUKS2 uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Type {
    /// `argon2i`.
    I,
    /// `argon2id`.
    Id,
}

/// A key slot's key derivation function and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The HMAC hash.
        hash: Hash,
        /// Iteration count (at least 1).
        iterations: u32,
    },
    /// Argon2, version 0x13.
    Argon2 {
        /// i or id.
        kind: Argon2Type,
        /// Passes over memory (`time`).
        time: u32,
        /// Memory in KiB (`memory`).
        memory_kib: u32,
        /// Lanes (`cpus`).
        cpus: u32,
    },
    /// A LUKS2 `kdf.type` dmemu does not know: kept for the dump (cryptsetup's
    /// validation accepts any type), refused when a key is derived with it.
    Unsupported {
        /// `kdf.type`.
        name: String,
        /// `time`, `memory`, `cpus` as cryptsetup's dump reads them (0 when absent).
        time: i64,
        /// `memory`.
        memory: i64,
        /// `cpus`.
        cpus: i64,
    },
}

impl fmt::Display for Kdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kdf::Pbkdf2 { .. } => f.write_str("pbkdf2"),
            Kdf::Argon2 {
                kind: Argon2Type::I,
                ..
            } => f.write_str("argon2i"),
            Kdf::Argon2 {
                kind: Argon2Type::Id,
                ..
            } => f.write_str("argon2id"),
            Kdf::Unsupported { name, .. } => f.write_str(name),
        }
    }
}

/// Default PBKDF2 iteration cap: 25 times what cryptsetup's 2-second benchmark picks for
/// sha256 on a fast CPU (~4 M), so a hostile header cannot keep us busy for hours.
pub const DEFAULT_MAX_ITERATIONS: u32 = 100_000_000;
/// Default Argon2 work cap, in KiB × passes: 64 GiB-passes (e.g. 4 GiB × 16).
pub const DEFAULT_MAX_ARGON2_WORK: u64 = 64 << 20;

/// Default total key-derivation work of one unlock attempt, in [`Kdf::cost`] units
/// (SHA-256 compressions): about 14 s measured on the 2-core reference machine under a
/// load of 12, well under 10 s unloaded (docs/design.md, "Hardening"), so a wrong
/// passphrase on any header costs at most that, however many key slots it has.
pub const DEFAULT_MAX_TOTAL_WORK: u64 = 20_000_000;

/// [`Kdf::cost`] units of one Argon2 block (1 KiB) pass: it measured the time of about ten
/// SHA-256 compressions here (argon2 0.6, one thread).
const ARGON2_BLOCK_COST: u64 = 10;

/// Resource limits applied before any key derivation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfLimits {
    /// Largest Argon2 memory a key slot may ask for, in KiB.
    pub max_memory_kib: u64,
    /// Largest PBKDF2 iteration count (key slots and digests).
    pub max_iterations: u32,
    /// Largest Argon2 `time × memory` (KiB × passes).
    pub max_argon2_work: u64,
    /// Largest total [`Kdf::cost`] of one unlock attempt: every key slot's KDF and every
    /// digest check together.
    pub max_total_work: u64,
}

impl Default for KdfLimits {
    fn default() -> Self {
        KdfLimits {
            max_memory_kib: DEFAULT_MAX_KDF_MEMORY_KIB,
            max_iterations: DEFAULT_MAX_ITERATIONS,
            max_argon2_work: DEFAULT_MAX_ARGON2_WORK,
            max_total_work: DEFAULT_MAX_TOTAL_WORK,
        }
    }
}

impl KdfLimits {
    /// Refuse a PBKDF2 run (key slot or digest) of more than `max_iterations`.
    pub fn check_iterations(&self, iterations: u32, what: &str) -> Result<()> {
        if iterations > self.max_iterations {
            return Err(Error::invalid(
                "key slot kdf",
                format!(
                    "{what} asks for {iterations} PBKDF2 iterations, more than the limit of {} \
                     (raise it with --max-kdf-iterations)",
                    self.max_iterations
                ),
            ));
        }
        Ok(())
    }
}

/// What one unlock attempt has spent of [`KdfLimits::max_total_work`].
#[derive(Debug)]
pub struct KdfBudget {
    left: u64,
    total: u64,
    runs: u32,
}

impl KdfBudget {
    /// The whole budget of `limits`, nothing spent.
    #[must_use]
    pub fn new(limits: &KdfLimits) -> KdfBudget {
        KdfBudget {
            left: limits.max_total_work,
            total: limits.max_total_work,
            runs: 0,
        }
    }

    /// Take `cost` for the derivation `what` before running it, or refuse it when the
    /// attempt's budget would be exceeded.
    pub fn spend(&mut self, cost: u64, what: &str) -> Result<()> {
        if cost > self.left {
            return Err(Error::invalid(
                "key derivation budget",
                format!(
                    "{what} would cost {cost} units, more than the {} left of this unlock \
                     attempt's {} after {} key derivations (raise it with --max-kdf-total)",
                    self.left, self.total, self.runs
                ),
            ));
        }
        self.left -= cost;
        self.runs += 1;
        Ok(())
    }

    /// Key derivations and digest checks run so far.
    #[must_use]
    pub fn runs(&self) -> u32 {
        self.runs
    }
}

/// [`Kdf::cost`] of PBKDF2 with `hash` and `iterations` for `len` output bytes.
#[must_use]
pub fn pbkdf2_cost(hash: Hash, iterations: u32, len: usize) -> u64 {
    let blocks = len.div_ceil(hash.digest_len()).max(1) as u64;
    // HMAC = two compressions per iteration, weighted by their time measured against
    // SHA-256's here (RustCrypto sha1 0.11 and ripemd 0.2 have no SHA-NI path).
    let per = match hash {
        Hash::Sha224 | Hash::Sha256 => 2,
        Hash::Sha1 => 4,
        Hash::Sha384 | Hash::Sha512 => 6,
        Hash::Ripemd160 => 11,
        // RustCrypto whirlpool 0.11: PBKDF2 ran 13.5x slower than with SHA-256 here.
        Hash::Whirlpool => 27,
        // Refused before any work (Hash::supported).
        Hash::Unsupported(_) => 1,
    };
    u64::from(iterations)
        .saturating_mul(blocks)
        .saturating_mul(per)
}

fn unsupported(name: &str) -> Error {
    Error::invalid(
        "key slot kdf",
        format!(
            "unsupported KDF type {} (dmemu knows pbkdf2, argon2i, argon2id)",
            crate::error::quote(name)
        ),
    )
}

impl Kdf {
    /// The work of deriving `len` bytes, in hash compressions (the unit of
    /// [`KdfLimits::max_total_work`]).
    #[must_use]
    pub fn cost(&self, len: usize) -> u64 {
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => pbkdf2_cost(hash, iterations, len),
            Kdf::Argon2 {
                time, memory_kib, ..
            } => u64::from(time)
                .saturating_mul(u64::from(memory_kib))
                .saturating_mul(ARGON2_BLOCK_COST),
            Kdf::Unsupported { .. } => 0,
        }
    }

    /// Check the parameters against `limits` and against what the algorithm accepts,
    /// without running it.
    pub fn check(&self, limits: &KdfLimits) -> Result<()> {
        match *self {
            Kdf::Unsupported { ref name, .. } => Err(unsupported(name)),
            Kdf::Pbkdf2 { iterations: 0, .. } => Err(Error::invalid(
                "key slot kdf",
                "pbkdf2 iterations must be at least 1",
            )),
            Kdf::Pbkdf2 { iterations, .. } => limits.check_iterations(iterations, "pbkdf2"),
            Kdf::Argon2 {
                time,
                memory_kib,
                cpus,
                ..
            } => {
                if u64::from(memory_kib) > limits.max_memory_kib {
                    return Err(Error::invalid(
                        "key slot kdf",
                        format!(
                            "{self} asks for {memory_kib} KiB of memory, more than the limit of \
                             {} KiB (raise it with --max-kdf-memory)",
                            limits.max_memory_kib
                        ),
                    ));
                }
                let work = u64::from(time) * u64::from(memory_kib);
                if work > limits.max_argon2_work {
                    return Err(Error::invalid(
                        "key slot kdf",
                        format!(
                            "{self} asks for {time} passes over {memory_kib} KiB, more work than \
                             the limit of {} KiB-passes (raise it with --max-kdf-work)",
                            limits.max_argon2_work
                        ),
                    ));
                }
                argon2::Params::new(memory_kib, time, cpus, None)
                    .map(drop)
                    .map_err(|e| {
                        Error::invalid(
                            "key slot kdf",
                            format!(
                                "{self} parameters time={time} memory={memory_kib} \
                                 cpus={cpus}: {e}"
                            ),
                        )
                    })
            }
        }
    }

    /// Derive `len` bytes from `passphrase` and `salt`.
    pub fn derive(
        &self,
        passphrase: &[u8],
        salt: &[u8],
        len: usize,
        limits: &KdfLimits,
        budget: &mut KdfBudget,
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.check(limits)?;
        if let Kdf::Pbkdf2 { hash, .. } = self {
            hash.supported("key slot PBKDF2 hash")?;
        }
        budget.spend(self.cost(len), &format!("{self}"))?;
        let mut out = Zeroizing::new(vec![0u8; len]);
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => hash.pbkdf2(passphrase, salt, iterations, &mut out),
            Kdf::Argon2 {
                kind,
                time,
                memory_kib,
                cpus,
            } => {
                let algorithm = match kind {
                    Argon2Type::I => argon2::Algorithm::Argon2i,
                    Argon2Type::Id => argon2::Algorithm::Argon2id,
                };
                let params = argon2::Params::new(memory_kib, time, cpus, Some(len))
                    .map_err(|e| Error::invalid("key slot kdf", format!("{self}: {e}")))?;
                argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
                    .hash_password_into(passphrase, salt, &mut out)
                    .map_err(|e| Error::invalid("key slot kdf", format!("{self}: {e}")))?;
            }
            Kdf::Unsupported { ref name, .. } => return Err(unsupported(name)),
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_above_memory_cap_is_refused_before_allocating() {
        let kdf = Kdf::Argon2 {
            kind: Argon2Type::Id,
            time: 1,
            memory_kib: u32::MAX,
            cpus: 1,
        };
        let e = kdf
            .derive(
                b"x",
                &[0; 32],
                32,
                &KdfLimits::default(),
                &mut KdfBudget::new(&KdfLimits::default()),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than the limit"), "{e}");
    }

    #[test]
    fn argon2id_matches_python_cryptography_output() {
        // python3 cryptography 48 (OpenSSL's Argon2id): Argon2id(salt=b"somesalt", length=32,
        // iterations=2, lanes=1, memory_cost=64).derive(b"password")
        let kdf = Kdf::Argon2 {
            kind: Argon2Type::Id,
            time: 2,
            memory_kib: 64,
            cpus: 1,
        };
        let out = kdf
            .derive(
                b"password",
                b"somesalt",
                32,
                &KdfLimits::default(),
                &mut KdfBudget::new(&KdfLimits::default()),
            )
            .unwrap();
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "16a1a498734609dd01456da406de9f3d9da93e6c86c300a12fc1465214ce4922"
        );
    }

    #[test]
    fn argon2_with_fewer_than_8_kib_per_lane_is_refused_with_parameters_named() {
        let kdf = Kdf::Argon2 {
            kind: Argon2Type::I,
            time: 1,
            memory_kib: 16,
            cpus: 4,
        };
        let e = kdf.check(&KdfLimits::default()).unwrap_err().to_string();
        assert!(e.contains("memory=16") && e.contains("cpus=4"), "{e}");
    }
}
