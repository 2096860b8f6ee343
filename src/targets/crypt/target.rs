//! The constructed crypt target (`crypt_ctr` + `crypt_map` + `kcryptd_crypt`): keys split
//! into transforms, IVs per crypt sector, read = read + decrypt in place, write = encrypt a
//! copy + write.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::targets::context::{device_area, BuildContext};
use crate::units::{Sector, SectorCount};
use crate::volume::{check_io, check_range, SharedVolume, TagProfile, Volume};

use super::aead::{Aead, AeadError, AeadName, MAX_AEAD_IV};
use super::cipher::{CipherSpec, IvMode, Transform};
use super::iv::{Direction, Iv, IvGen, IV_SIZE, UNSUPPORTED};
use super::key::{CryptKey, Keyring};
use super::modes::{Tfm, TfmError};
use super::{CryptArgs, CryptOptions};
use crate::targets::{Target, TargetSpec};

/// Extra IV material at the end of a tcw key besides the IV seed (`TCW_WHITENING_SIZE`).
const TCW_WHITENING_SIZE: usize = 16;
/// Largest key accepted (the kernel's kmalloc limit, KMALLOC_MAX_SIZE on x86-64).
const MAX_KEY_BYTES: usize = 4 << 20;
/// Largest keycount accepted (far above any real use; lmk uses 64).
const MAX_KEYCOUNT: usize = 1 << 16;
/// Crypt sectors whose XTS tweaks are encrypted in one batch.
const BATCH_UNITS: usize = 32;
/// Requests at least this large are split in two halves run on rayon's pool (persistent
/// threads: a fresh `std::thread::scope` thread per request never scaled here, the
/// scheduler kept it beside its parent). Handing work to a sleeping worker costs tens of
/// microseconds in this VM, so below ~4 MiB (≈ 280 µs of AES-XTS on one core) the split
/// did not pay: measured 1 MiB 0.85×, 2 MiB 0.9–1.7×, 4 MiB 1.8–1.9× when the second core
/// was free.
const PARALLEL_MIN_BYTES: usize = 4 * 1024 * 1024;
/// Writes are encrypted through a bounce buffer of at most this many bytes at a time (as
/// large as the split threshold, so big writes are split over two threads too).
const WRITE_CHUNK_BYTES: usize = PARALLEL_MIN_BYTES;

/// How the key splits into per-transform subkeys and IV material (`crypt_subkey_size`).
struct KeyLayout {
    tfms: usize,
    subkey: usize,
    extra: usize,
}

fn layout(cipher: &CipherSpec, key_size: usize) -> std::result::Result<KeyLayout, String> {
    // Bounds where the kernel's allocations would fail (kcalloc of the tfm array, kzalloc of
    // the key): untrusted tables must not make dmemu allocate without limit.
    if key_size > MAX_KEY_BYTES {
        return Err(format!(
            "Cannot allocate encryption context (a {key_size}-byte key)"
        ));
    }
    let tfms = usize::try_from(cipher.keycount)
        .ok()
        .filter(|&n| n <= MAX_KEYCOUNT)
        .ok_or_else(|| format!("Error allocating crypto tfm ({} keys)", cipher.keycount))?;
    let iv_size = if cipher.iv.is_some() { IV_SIZE } else { 0 };
    // crypt_ctr_ivmode's key_extra_size: IV material at the end of the key.
    let extra = match cipher.iv {
        // loop-AES v3 has one more equal-sized part, the IV seed.
        Some(IvMode::Lmk) if key_size % tfms != 0 => key_size / (tfms + 1),
        Some(IvMode::Tcw) => iv_size + TCW_WHITENING_SIZE,
        Some(IvMode::Elephant) => key_size / 2,
        _ => 0,
    };
    let subkey = key_size
        .checked_sub(extra)
        .map(|k| k >> tfms.trailing_zeros())
        .ok_or("Error decoding and setting key (key shorter than its IV material)")?;
    Ok(KeyLayout {
        tfms,
        subkey,
        extra,
    })
}

/// Check the key size against the cipher and the IV mode's needs (the kernel's setkey and
/// IV constructor), without key bytes: what `crypt_ctr` refuses at table load.
pub(super) fn check_key(
    cipher: &CipherSpec,
    key: &CryptKey,
    options: &CryptOptions,
) -> std::result::Result<(), String> {
    let size = key.size();
    if size == 0 && !matches!(key, CryptKey::Empty) {
        return Err("Error decoding and setting key".into());
    }
    let l = layout(cipher, size)?;
    let zeros = Zeroizing::new(vec![0u8; l.subkey]);
    match Tfm::new(&cipher.transform, &zeros) {
        Ok(tfm) => {
            let sector_size = u64::from(options.sector_size);
            let extra = Zeroizing::new(vec![0u8; l.extra]);
            match IvGen::new(
                cipher.iv,
                tfm.block_size(),
                tfm.iv_size(),
                sector_size,
                &extra,
            ) {
                Err(e) if e != UNSUPPORTED => Err(e),
                _ => Ok(()),
            }
        }
        Err(TfmError::KeyLength(why)) => Err(format!("Error decoding and setting key ({why})")),
        // The kernel may know this transform; dmemu refuses it when building the target.
        Err(TfmError::Unsupported(_)) => Ok(()),
    }
}

/// What a key gives: the cipher transforms and the IV generator (with the IVs stored on
/// the device for `random`), or the AEAD.
struct Keyed {
    tfms: Vec<Tfm>,
    iv: IvGen,
    stored_iv: Option<StoredIv>,
    aead: Option<AeadCtx>,
}

/// A `random` IV without an AEAD (`integrity:<n>:none`, or no integrity option at all):
/// each crypt sector's IV lives in the first `iv_size` bytes of its tuple on the integrity
/// device below (`crypt_integrity_ctr` with `integrity_iv_size = iv_size` and no auth tag;
/// `crypt_convert_block_skcipher` takes it from there on reads and stores a fresh one on
/// writes).
struct StoredIv {
    /// `cc->iv_size` (the cipher's IV size, at least 8).
    iv_size: usize,
    /// `tuple_size`: the device's tag bytes per crypt sector.
    tuple: usize,
}

/// The IV generators an AEAD takes here (random, or one that depends only on the sector).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AeadIv {
    Random,
    Plain,
    Plain64,
    Plain64Be,
    Null,
}

/// `integrity:<n>:aead`: the keyed AEAD and the tag tuple's layout
/// (`crypt_integrity_ctr`).
struct AeadCtx {
    aead: Aead,
    iv: AeadIv,
    /// `cc->iv_size`: the AEAD's IV size, at least 8.
    iv_size: usize,
    /// `integrity_tag_size`: the auth tag bytes at the start of each tuple.
    auth: usize,
    /// `integrity_iv_size`: the IV stored after the auth tag (random IVs), 0 or iv_size.
    stored_iv: usize,
    /// `tuple_size`: the device's tag bytes per crypt sector.
    tuple: usize,
}

impl AeadCtx {
    /// The IV of target-relative `iv_sector` for sector-derived generators.
    fn sector_iv(&self, iv_sector: u64, out: &mut [u8]) {
        out.fill(0);
        let n = self.iv_size;
        match self.iv {
            AeadIv::Random | AeadIv::Null => {}
            AeadIv::Plain => {
                out[..4].copy_from_slice(&((iv_sector & 0xffff_ffff) as u32).to_le_bytes())
            }
            AeadIv::Plain64 => out[..8].copy_from_slice(&iv_sector.to_le_bytes()),
            AeadIv::Plain64Be => out[n - 8..n].copy_from_slice(&iv_sector.to_be_bytes()),
        }
    }
}

/// A constructed crypt target.
pub struct Crypt {
    device: SharedVolume,
    offset: SectorCount,
    size: SectorCount,
    iv_offset: u64,
    /// The transforms and IV generator; `None` after `key wipe` (`DM_CRYPT_KEY_VALID`
    /// clear). Replaced only while the device is suspended, so a request sees one key.
    keyed: RwLock<Option<Arc<Keyed>>>,
    /// The table's arguments, to key anew on `key set`.
    args: CryptArgs,
    /// The key `dmsetup table --showkeys` prints (`cc->key` / `cc->key_string`): the
    /// table's, the one `key set` gave, or zeros after `key wipe`.
    shown_key: Mutex<CryptKey>,
    /// `DM_CRYPT_SUSPENDED`: key messages are accepted only then.
    suspended: AtomicBool,
    sector_size: usize,
    /// log2(sector_size / 512).
    shift: u32,
    iv_large_sectors: bool,
    allow_discards: bool,
}

impl fmt::Debug for Crypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypt")
            .field("offset", &self.offset)
            .field("size", &self.size)
            .field("iv_offset", &self.iv_offset)
            .field("keyed", &self.keyed().is_ok())
            .field("sector_size", &self.sector_size)
            .finish_non_exhaustive()
    }
}

impl Crypt {
    /// Construct like `crypt_ctr`: resolve the device (which must hold `[offset, offset +
    /// len)`), key the transforms. Keyring keys come from `ctx.keyring()`.
    pub fn new(args: &CryptArgs, len: SectorCount, ctx: &dyn BuildContext) -> Result<Crypt> {
        let device = device_area(ctx, &args.dest, len)?;
        Crypt::over(device, args, len, ctx.keyring())
    }

    /// Construct over an already-open device (library use, tests, benches).
    pub fn over(
        device: SharedVolume,
        args: &CryptArgs,
        len: SectorCount,
        keyring: &Keyring,
    ) -> Result<Crypt> {
        check_range(device.size(), Sector(args.dest.offset.0), len)?;
        let bad = |reason: String| Error::invalid("crypt table", reason);
        // `integrity:<n>:none` (the only other profile the parser takes) changes nothing but
        // the checks of a random IV's tag space (stored_iv_ctx).
        let aead_profile = match &args.options.integrity {
            Some(i) if i.profile.eq_ignore_ascii_case("aead") => Some(i.tag_size),
            _ => None,
        };
        let aead_name = match (&args.cipher.transform, aead_profile) {
            (Transform::Opaque(api), Some(_)) => {
                Some(AeadName::parse(api).ok_or_else(unsupported_transform)?)
            }
            (_, Some(_)) => {
                return Err(bad(
                    "Error allocating crypto tfm (integrity:<n>:aead needs an AEAD cipher)".into(),
                ))
            }
            (Transform::Opaque(_), None) => return Err(unsupported_transform()),
            _ => None,
        };
        let key: Zeroizing<Vec<u8>> = match &args.key {
            CryptKey::Empty => Zeroizing::new(Vec::new()),
            CryptKey::Hex(b) => b.clone(),
            CryptKey::Keyring(r) => {
                let k = keyring.get(r).ok_or_else(|| {
                    Error::invalid(
                        "crypt key",
                        format!(
                            "keyring key {} was not supplied (Keyring::insert)",
                            crate::error::quote(&format!("{}:{}", r.key_type, r.description))
                        ),
                    )
                })?;
                if k.len() != args.key.size() {
                    return Err(Error::invalid(
                        "crypt key",
                        format!(
                            "keyring key {} has {} bytes, the table says {}",
                            crate::error::quote(&format!("{}:{}", r.key_type, r.description)),
                            k.len(),
                            r.size
                        ),
                    ));
                }
                k
            }
        };
        let sector_size = args.options.sector_size;
        if let (Some(name), Some(used)) = (&aead_name, aead_profile) {
            let ctx = aead_ctx(&device, args, name, used, &key)?;
            return Crypt::finish(device, args, len, ctx, sector_size);
        }
        let l = layout(&args.cipher, key.len()).map_err(bad)?;
        let mut tfms = Vec::with_capacity(l.tfms);
        for i in 0..l.tfms {
            let sub = &key[i * l.subkey..(i + 1) * l.subkey];
            tfms.push(Tfm::new(&args.cipher.transform, sub).map_err(|e| match e {
                TfmError::KeyLength(w) => bad(format!("Error decoding and setting key ({w})")),
                TfmError::Unsupported(_) => unsupported_transform(),
            })?);
        }
        let extra = &key[key.len() - l.extra..];
        // crypt_ctr_ivmode: `random` keeps its IVs on the device when the cipher has IVs
        // (a cipher without them drops the IV mode, as the kernel).
        let random = args.cipher.iv == Some(IvMode::Random);
        let stored_iv = if random && tfms[0].iv_size() > 0 {
            Some(stored_iv_ctx(&device, args, tfms[0].iv_size().max(8))?)
        } else {
            None
        };
        let iv = IvGen::new(
            if random { None } else { args.cipher.iv },
            tfms[0].block_size(),
            tfms[0].iv_size(),
            u64::from(sector_size),
            extra,
        )
        .map_err(|e| {
            if e == UNSUPPORTED {
                Error::Unsupported {
                    target: "crypt",
                    op: "this IV mode with this cipher (lmk and tcw need a 16-byte IV)",
                }
            } else {
                bad(e)
            }
        })?;
        let keyed = Keyed {
            tfms,
            iv,
            stored_iv,
            aead: None,
        };
        Crypt::finish(device, args, len, keyed, sector_size)
    }

    fn finish(
        device: SharedVolume,
        args: &CryptArgs,
        len: SectorCount,
        keyed: Keyed,
        sector_size: u32,
    ) -> Result<Crypt> {
        let sector_size = usize::try_from(sector_size)
            .map_err(|_| Error::invalid("crypt table", "sector_size"))?;
        Ok(Crypt {
            device,
            offset: args.dest.offset,
            size: len,
            iv_offset: args.iv_offset.0,
            keyed: RwLock::new(Some(Arc::new(keyed))),
            args: args.clone(),
            shown_key: Mutex::new(args.key.clone()),
            suspended: AtomicBool::new(false),
            sector_size,
            shift: (sector_size / 512).trailing_zeros(),
            iv_large_sectors: args.options.iv_large_sectors,
            allow_discards: args.options.allow_discards,
        })
    }

    /// Refuse requests not aligned to the crypt sector size (`crypt_map`: DM_MAPIO_KILL).
    fn check_aligned(&self, sector: Sector, len: usize) -> Result<()> {
        let step = 1u64 << self.shift;
        if sector.0 % step != 0 || len % self.sector_size != 0 {
            return Err(Error::TargetFailed {
                target: "crypt",
                reason: format!(
                    "request at sector {sector} of {len} bytes is not aligned to the \
                     {}-byte crypt sector size",
                    self.sector_size
                ),
            });
        }
        Ok(())
    }

    /// Encrypt or decrypt the request at target sector `sector`: from `src` into `dst`, or
    /// in place when `src` is `None`. Large requests are split over two threads.
    fn convert(
        &self,
        sector: Sector,
        src: Option<&[u8]>,
        dst: &mut [u8],
        dir: Direction,
    ) -> Result<()> {
        let k = self.keyed()?;
        let k = &*k;
        let cc_sector = sector.0.wrapping_add(self.iv_offset);
        if dst.len() >= PARALLEL_MIN_BYTES {
            let half = dst.len() / self.sector_size / 2;
            let (a, b) = dst.split_at_mut(half * self.sector_size);
            let (sa, sb) = match src {
                Some(s) => {
                    let (x, y) = s.split_at(half * self.sector_size);
                    (Some(x), Some(y))
                }
                None => (None, None),
            };
            let b_sector = cc_sector.wrapping_add(u64::try_from(half).unwrap_or(0) << self.shift);
            rayon::join(
                || self.convert_serial(k, cc_sector, sa, a, dir),
                || self.convert_serial(k, b_sector, sb, b, dir),
            );
        } else {
            self.convert_serial(k, cc_sector, src, dst, dir);
        }
        Ok(())
    }

    /// The current key's transforms; EIO after `key wipe` (the kernel never resumes such
    /// a device, so no request reaches it there).
    fn keyed(&self) -> Result<Arc<Keyed>> {
        self.keyed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| Error::TargetFailed {
                target: "crypt",
                reason: "crypt key is not set".into(),
            })
    }

    /// `crypt_message`'s `key set <key>` / `key wipe`, accepted only while suspended.
    fn key_message(&self, argv: &[&str]) -> Result<String> {
        if !self.suspended.load(Ordering::Acquire) {
            return Err(Error::invalid(
                "message",
                "not suspended during key manipulation.",
            ));
        }
        match argv {
            [_, w] if w.eq_ignore_ascii_case("wipe") => {
                // Dropping the transforms zeroizes their keys.
                *self.keyed.write().unwrap_or_else(PoisonError::into_inner) = None;
                // crypt_wipe_key: the key string is freed and the key bytes zeroed.
                let size = self.args.key.size();
                *self
                    .shown_key
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = if size == 0 {
                    CryptKey::Empty
                } else {
                    CryptKey::Hex(Zeroizing::new(vec![0u8; size]))
                };
                Ok(String::new())
            }
            [_, w, key] if w.eq_ignore_ascii_case("set") => {
                let bad = || Error::invalid("message", "Error decoding and setting key");
                let new_key = CryptKey::parse(key).map_err(|_| bad())?;
                if new_key.size() != self.args.key.size() || !matches!(new_key, CryptKey::Hex(_)) {
                    return Err(bad());
                }
                let mut args = self.args.clone();
                args.key = new_key.clone();
                let fresh = Crypt::over(
                    Arc::clone(&self.device),
                    &args,
                    self.size,
                    &Keyring::default(),
                )?;
                let keyed = fresh.keyed()?;
                *self.keyed.write().unwrap_or_else(PoisonError::into_inner) = Some(keyed);
                *self
                    .shown_key
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = new_key;
                Ok(String::new())
            }
            _ => Err(Error::invalid("message", "unrecognised message received.")),
        }
    }

    fn iv_sector(&self, cc_sector: u64) -> u64 {
        if self.iv_large_sectors {
            cc_sector >> self.shift
        } else {
            cc_sector
        }
    }

    /// `crypt_convert`: one crypt sector at a time, `cc_sector` counting 512-byte sectors
    /// from the target start plus iv_offset.
    fn convert_serial(
        &self,
        k: &Keyed,
        cc_sector: u64,
        src: Option<&[u8]>,
        data: &mut [u8],
        dir: Direction,
    ) {
        if let (1, false, Some(keys)) = (k.tfms.len(), k.iv.reads_data(), k.tfms[0].xts_keys()) {
            // Fast path: XTS with one key and an IV that depends only on the sector.
            let unit = self.sector_size;
            let mut s = cc_sector;
            for (b, batch) in data.chunks_mut(unit * BATCH_UNITS).enumerate() {
                let mut ivs = [[0u8; IV_SIZE]; BATCH_UNITS];
                let n = batch.len() / unit;
                let base = b * unit * BATCH_UNITS;
                for iv in &mut ivs[..n] {
                    let full = k.iv.sector_iv(self.iv_sector(s), &k.tfms[0]);
                    iv.copy_from_slice(&full[..IV_SIZE]);
                    s = s.wrapping_add(1 << self.shift);
                }
                keys.encrypt_ivs(&mut ivs[..n]);
                for (i, (t0, u)) in ivs[..n]
                    .iter()
                    .zip(batch.chunks_exact_mut(unit))
                    .enumerate()
                {
                    let from = src.map(|s| &s[base + i * unit..base + (i + 1) * unit]);
                    keys.unit(t0, from, u, dir);
                }
            }
            return;
        }
        if let Some(s) = src {
            data.copy_from_slice(s);
        }
        let mask = u64::try_from(k.tfms.len()).unwrap_or(1) - 1;
        let mut s = cc_sector;
        for unit in data.chunks_exact_mut(self.sector_size) {
            let tfm = &k.tfms[usize::try_from(s & mask).unwrap_or(0)];
            let iv_sector = self.iv_sector(s);
            let iv: Iv = k.iv.before(iv_sector, dir, unit, &k.tfms[0]);
            match dir {
                Direction::Encrypt => tfm.encrypt(&iv, unit),
                Direction::Decrypt => tfm.decrypt(&iv, unit),
            }
            k.iv.after(iv_sector, dir, unit);
            s = s.wrapping_add(1 << self.shift);
        }
    }
}

impl Crypt {
    /// `crypt_convert_block_skcipher` with a stored random IV, for reads: data and tuples
    /// from the device, each crypt sector decrypted with the IV at the start of its tuple.
    fn read_stored_iv(
        &self,
        k: &Keyed,
        st: &StoredIv,
        sector: Sector,
        buf: &mut [u8],
    ) -> Result<()> {
        let mut tags = vec![0u8; buf.len() / self.sector_size * st.tuple];
        self.device
            .read_tagged(sector + self.offset, buf, &mut tags)?;
        self.stored_iv_convert(k, st, sector.0, buf, &tags, Direction::Decrypt);
        Ok(())
    }

    /// Writes: a fresh random IV per crypt sector into its tuple (the rest of the tuple
    /// zero), the sector encrypted with it, data and tuples written together.
    fn write_stored_iv(&self, k: &Keyed, st: &StoredIv, sector: Sector, buf: &[u8]) -> Result<()> {
        self.bounced(sector, buf, |at, piece, out| {
            out.copy_from_slice(piece);
            let mut tags = vec![0u8; piece.len() / self.sector_size * st.tuple];
            fill_random_ivs(&mut tags, st.tuple, 0, st.iv_size)?;
            self.stored_iv_convert(k, st, at.0, out, &tags, Direction::Encrypt);
            self.device.write_tagged(at + self.offset, out, &tags)
        })
    }

    /// Each crypt sector of `data` (target sectors from `first`) through the key its
    /// cc_sector selects (`crypt_alloc_req_skcipher`), with the IV from its tuple.
    fn stored_iv_convert(
        &self,
        k: &Keyed,
        st: &StoredIv,
        first: u64,
        data: &mut [u8],
        tags: &[u8],
        dir: Direction,
    ) {
        let mask = u64::try_from(k.tfms.len()).unwrap_or(1) - 1;
        let mut s = first.wrapping_add(self.iv_offset);
        for (unit, tuple) in data
            .chunks_exact_mut(self.sector_size)
            .zip(tags.chunks_exact(st.tuple))
        {
            let tfm = &k.tfms[usize::try_from(s & mask).unwrap_or(0)];
            let mut iv: Iv = [0u8; 32];
            iv[..st.iv_size].copy_from_slice(&tuple[..st.iv_size]);
            match dir {
                Direction::Encrypt => tfm.encrypt(&iv, unit),
                Direction::Decrypt => tfm.decrypt(&iv, unit),
            }
            s = s.wrapping_add(1 << self.shift);
        }
    }

    /// `crypt_convert_block_aead` for reads: data and tags from the device, each crypt
    /// sector authenticated and decrypted; a mismatch fails the request with EILSEQ
    /// (BLK_STS_PROTECTION) naming the target sector, as the kernel's "INTEGRITY AEAD
    /// ERROR, sector N".
    fn read_aead(&self, a: &AeadCtx, sector: Sector, buf: &mut [u8]) -> Result<()> {
        let mut tags = vec![0u8; buf.len() / self.sector_size * a.tuple];
        self.device
            .read_tagged(sector + self.offset, buf, &mut tags)?;
        self.aead_convert(a, sector.0, buf, &mut tags, Direction::Decrypt)
    }

    /// Writes: each crypt sector encrypted with a fresh IV (random IVs from the OS) and
    /// its tuple (auth tag, stored IV, zeros) written with it, through a bounce buffer.
    fn write_aead(&self, a: &AeadCtx, sector: Sector, buf: &[u8]) -> Result<()> {
        self.bounced(sector, buf, |at, piece, out| {
            out.copy_from_slice(piece);
            let mut tags = vec![0u8; piece.len() / self.sector_size * a.tuple];
            if a.iv == AeadIv::Random {
                // crypt_iv_random_gen: get_random_bytes into the stored IV's place.
                fill_random_ivs(&mut tags, a.tuple, a.auth, a.stored_iv)?;
            }
            self.aead_convert(a, at.0, out, &mut tags, Direction::Encrypt)?;
            self.device.write_tagged(at + self.offset, out, &tags)
        })
    }

    /// Write `buf` from `sector` through this thread's bounce buffer, at most
    /// `WRITE_CHUNK_BYTES` at a time: `each(at, plaintext, out)` fills `out` (as large as
    /// the piece) with what goes to the device and writes it.
    fn bounced(
        &self,
        sector: Sector,
        buf: &[u8],
        mut each: impl FnMut(Sector, &[u8], &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        BOUNCE.with(|cell| {
            let mut bounce = cell.borrow_mut();
            let chunk = buf.len().min(WRITE_CHUNK_BYTES);
            if bounce.len() < chunk + 4096 {
                *bounce = vec![0u8; chunk + 4096];
            }
            let off = bounce.as_ptr().align_offset(4096).min(4096);
            let mut at = sector;
            for piece in buf.chunks(WRITE_CHUNK_BYTES) {
                each(at, piece, &mut bounce[off..off + piece.len()])?;
                at += SectorCount::from_bytes(piece.len())?;
            }
            Ok(())
        })
    }

    /// Run the AEAD over `data` (target sectors from `first`) and its `tags`; large
    /// requests split over two threads, the first failing sector reported.
    fn aead_convert(
        &self,
        a: &AeadCtx,
        first: u64,
        data: &mut [u8],
        tags: &mut [u8],
        dir: Direction,
    ) -> Result<()> {
        if data.len() >= PARALLEL_MIN_BYTES {
            let half = data.len() / self.sector_size / 2;
            let (d0, d1) = data.split_at_mut(half * self.sector_size);
            let (t0, t1) = tags.split_at_mut(half * a.tuple);
            let second = first + ((half as u64) << self.shift);
            let (r0, r1) = rayon::join(
                || self.aead_serial(a, first, d0, t0, dir),
                || self.aead_serial(a, second, d1, t1, dir),
            );
            return r0.and(r1);
        }
        self.aead_serial(a, first, data, tags, dir)
    }

    fn aead_serial(
        &self,
        a: &AeadCtx,
        first: u64,
        data: &mut [u8],
        tags: &mut [u8],
        dir: Direction,
    ) -> Result<()> {
        // AAD: le64(sector) ‖ IV (cc->iv_size bytes).
        let mut aad = [0u8; 8 + MAX_AEAD_IV];
        let aad_len = 8 + a.iv_size;
        let aead_iv = a.aead.iv_size();
        for (i, (unit, tuple)) in data
            .chunks_exact_mut(self.sector_size)
            .zip(tags.chunks_exact_mut(a.tuple))
            .enumerate()
        {
            let s = first + ((i as u64) << self.shift);
            aad[..8].copy_from_slice(&s.to_le_bytes());
            let (tag, rest) = tuple.split_at_mut(a.auth);
            if a.stored_iv > 0 {
                // Reads take the stored IV; writes stored a random one above.
                aad[8..aad_len].copy_from_slice(&rest[..a.stored_iv]);
            } else {
                let iv_sector = self.iv_sector(s.wrapping_add(self.iv_offset));
                a.sector_iv(iv_sector, &mut aad[8..aad_len]);
            }
            let (ad, iv) = (&aad[..aad_len], &aad[8..8 + aead_iv]);
            match dir {
                Direction::Encrypt => {
                    a.aead.encrypt(ad, iv, unit, tag);
                    rest[a.stored_iv..].fill(0);
                }
                Direction::Decrypt => {
                    if !a.aead.decrypt(ad, iv, unit, tag) {
                        return Err(Error::ChecksumMismatch {
                            target: "crypt (INTEGRITY AEAD ERROR)",
                            sector: Sector(s),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Key the AEAD of an `integrity:<used>:aead` line over `device` (`crypt_ctr_cipher_new`,
/// `crypt_ctr_ivmode`, `crypt_integrity_ctr`, `crypt_setkey`), with the kernel's errors.
fn aead_ctx(
    device: &SharedVolume,
    args: &CryptArgs,
    name: &AeadName,
    used: u32,
    key: &[u8],
) -> Result<Keyed> {
    let bad = |reason: &str| Error::invalid("crypt table", reason.to_string());
    let mac_key = name.mac_key_size(args.options.integrity_key_size);
    let iv_mode = match args.cipher.iv {
        Some(IvMode::Random) => AeadIv::Random,
        Some(IvMode::Plain) => AeadIv::Plain,
        Some(IvMode::Plain64) => AeadIv::Plain64,
        Some(IvMode::Plain64Be) => AeadIv::Plain64Be,
        Some(IvMode::Null) | None => AeadIv::Null,
        Some(_) => return Err(Error::Unsupported {
            target: "crypt",
            op: "this IV mode with an AEAD (dmemu takes random, plain, plain64, plain64be, null)",
        }),
    };
    let profile = integrity_profile(device, args, used)?;
    // The IV size comes from the AEAD itself; key it with a provisional tag size first.
    let probe = |auth: usize| Aead::new(name, key, mac_key, auth);
    let iv_of = |name: &AeadName| match name {
        AeadName::Gcm => 12,
        AeadName::Aegis128 => 16,
        AeadName::Authenc { inner, .. } => match inner {
            Transform::Block {
                mode: super::cipher::ChainMode::Ecb,
                ..
            } => 0,
            _ => 16,
        },
    };
    let raw_iv: usize = iv_of(name);
    let iv_size = if raw_iv == 0 { 0 } else { raw_iv.max(8) };
    let stored_iv = if iv_mode == AeadIv::Random {
        iv_size
    } else {
        0
    };
    let auth = (used as usize)
        .checked_sub(stored_iv)
        .filter(|&n| n > 0)
        .ok_or_else(|| bad("Integrity AEAD auth tag size is not supported."))?;
    let aead = probe(auth).map_err(|e| match e {
        AeadError::AuthSize => bad("Integrity AEAD auth tag size is not supported."),
        AeadError::Key(why) => bad(&format!("Error decoding and setting key ({why})")),
        AeadError::Unsupported => unsupported_transform(),
    })?;
    if aead.iv_size() != raw_iv {
        return Err(unsupported_transform());
    }
    Ok(Keyed {
        tfms: Vec::new(),
        iv: IvGen::None,
        stored_iv: None,
        aead: Some(AeadCtx {
            aead,
            iv: iv_mode,
            iv_size,
            auth,
            stored_iv,
            tuple: profile.tuple_size as usize,
        }),
    })
}

/// `crypt_integrity_ctr`'s checks of the device below: a tag profile, tuples of at least
/// `used` bytes, one tuple per crypt sector.
fn integrity_profile(device: &SharedVolume, args: &CryptArgs, used: u32) -> Result<TagProfile> {
    let bad = |reason: &str| Error::invalid("crypt table", reason.to_string());
    let Some(profile) = device.tag_profile() else {
        return Err(bad("Integrity profile not supported."));
    };
    if profile.tuple_size < used {
        return Err(bad("Integrity profile tag size mismatch."));
    }
    if profile.interval != args.options.sector_size {
        return Err(bad("Integrity profile sector size mismatch."));
    }
    Ok(profile)
}

/// A random IV's place on the device below (`crypt_integrity_ctr` without an AEAD: the
/// tuple must hold the `iv_size`-byte IV; `used` is `integrity:<n>:none`'s n, or 0).
fn stored_iv_ctx(device: &SharedVolume, args: &CryptArgs, iv_size: usize) -> Result<StoredIv> {
    let used = args.options.integrity.as_ref().map_or(0, |i| i.tag_size);
    let profile = integrity_profile(device, args, used)?;
    let tuple = profile.tuple_size as usize;
    if iv_size > tuple {
        return Err(Error::invalid(
            "crypt table",
            "Not enough space for integrity tag in the profile.",
        ));
    }
    Ok(StoredIv { iv_size, tuple })
}

/// `crypt_iv_random_gen`: fresh IVs from the OS into bytes `at..at + len` of each tuple.
fn fill_random_ivs(tags: &mut [u8], tuple: usize, at: usize, len: usize) -> Result<()> {
    for t in tags.chunks_exact_mut(tuple) {
        getrandom::fill(&mut t[at..at + len]).map_err(|e| Error::TargetFailed {
            target: "crypt",
            reason: format!("no random IV from the OS: {e}"),
        })?;
    }
    Ok(())
}

fn unsupported_transform() -> Error {
    Error::Unsupported {
        target: "crypt",
        op: "this cipher (dmemu implements aes, serpent, twofish, camellia and cipher_null in \
             ecb, cbc, ctr, xts, lrw, and adiantum)",
    }
}

thread_local! {
    /// Per-thread bounce buffer for writes, used from a 4096-byte boundary (copies between
    /// buffers whose addresses differ by 16 mod 4096 run at a fifth of the speed here). It
    /// only ever holds ciphertext once a write returns: encryption writes into it directly.
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Volume for Crypt {
    fn size(&self) -> SectorCount {
        self.size
    }

    fn read(&self, sector: Sector, buf: &mut [u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.check_aligned(sector, buf.len())?;
        let k = self.keyed()?;
        if let Some(a) = &k.aead {
            return self.read_aead(a, sector, buf);
        }
        if let Some(st) = &k.stored_iv {
            return self.read_stored_iv(&k, st, sector, buf);
        }
        drop(k);
        // Over a memory map (a read-only image file) decryption reads the mapping directly:
        // one pass over the data instead of a copy and a pass.
        let count = SectorCount::from_bytes(buf.len())?;
        if let Some(src) = self.device.mapped(sector + self.offset, count) {
            return self.convert(sector, Some(src), buf, Direction::Decrypt);
        }
        self.device.read(sector + self.offset, buf)?;
        self.convert(sector, None, buf, Direction::Decrypt)
    }

    fn write(&self, sector: Sector, buf: &[u8]) -> Result<()> {
        check_io(self.size, sector, buf.len())?;
        self.check_aligned(sector, buf.len())?;
        let k = self.keyed()?;
        if let Some(a) = &k.aead {
            return self.write_aead(a, sector, buf);
        }
        if let Some(st) = &k.stored_iv {
            return self.write_stored_iv(&k, st, sector, buf);
        }
        drop(k);
        self.bounced(sector, buf, |at, piece, out| {
            self.convert(at, Some(piece), out, Direction::Encrypt)?;
            self.device.write(at + self.offset, out)
        })
    }

    fn flush(&self) -> Result<()> {
        self.device.flush()
    }

    fn discard(&self, sector: Sector, count: SectorCount) -> Result<()> {
        check_range(self.size, sector, count)?;
        if !self.allow_discards {
            return Err(Error::Unsupported {
                target: "crypt",
                op: "discard without allow_discards",
            });
        }
        self.device.discard(sector + self.offset, count)
    }
}

impl Target for Crypt {
    /// `crypt_message`: `key set <key>` and `key wipe`, only while the device is suspended
    /// (EINVAL otherwise, as the kernel); anything else is unrecognised (EINVAL).
    fn message(&self, argv: &[&str]) -> Result<String> {
        if argv.len() >= 2 && argv[0].eq_ignore_ascii_case("key") {
            return self.key_message(argv);
        }
        Err(Error::invalid("message", "unrecognised message received."))
    }

    /// `crypt_postsuspend`: key messages are accepted from now on.
    fn postsuspend(&self) -> Result<()> {
        self.suspended.store(true, Ordering::Release);
        Ok(())
    }

    /// `crypt_preresume`: a wiped key aborts the resume (EAGAIN).
    fn preresume(&self) -> Result<()> {
        if self.keyed().is_err() {
            return Err(Error::TryAgain {
                what: "crypt",
                reason: "aborting resume - crypt key is not set.".into(),
            });
        }
        Ok(())
    }

    /// `crypt_resume`.
    fn resume(&self) {
        self.suspended.store(false, Ordering::Release);
    }

    /// The table with the current key (`crypt_status(STATUSTYPE_TABLE)` prints `cc->key`).
    fn table_spec(&self) -> Option<TargetSpec> {
        let key = self
            .shown_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if key == self.args.key {
            return None;
        }
        let mut args = self.args.clone();
        args.key = key;
        Some(TargetSpec::Crypt(args))
    }
}
