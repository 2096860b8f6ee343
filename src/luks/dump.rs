//! `dmemu luks dump`: the header as `cryptsetup luksDump` (2.6) prints it, never the key.
//! Formats: lib/setup.c `_luks_dump` (LUKS1) and lib/luks2/luks2_json_metadata.c
//! `LUKS2_hdr_dump` with the keyslot/digest dumpers of luks2_keyslot_luks2.c and
//! luks2_digest_pbkdf2.c.

use std::fmt::Write as _;

use super::kdf::Kdf;
use super::luks2::json::{DigestKind, Keyslot, Metadata, ReencryptKeyslot};
use super::luks2::Luks2Header;
use super::{Header, Luks, Luks1Header};

/// `crypt_log_hex(.., " ", 0, NULL)`: each byte as `xx ` .
fn hex(out: &mut String, b: &[u8]) {
    for x in b {
        let _ = write!(out, "{x:02x} ");
    }
}

/// `hexprint_base64(.., " ", "            ")`: 16 bytes a line, continuation lines
/// prefixed with a tab and 12 spaces; nothing at all (not even the newline) for a value
/// that is not base64, as cryptsetup's returns early.
fn hex_lines(out: &mut String, b: Option<&[u8]>) {
    let Some(b) = b else { return };
    for (i, chunk) in b.chunks(16).enumerate() {
        if i > 0 {
            out.push_str("\n\t            ");
        }
        hex(out, chunk);
    }
    out.push('\n');
}

fn dump1(out: &mut String, h: &Luks1Header, name: &str) {
    let _ = writeln!(out, "LUKS header information for {name}\n");
    let _ = writeln!(out, "Version:       \t1");
    let _ = writeln!(out, "Cipher name:   \t{}", h.cipher_name);
    let _ = writeln!(out, "Cipher mode:   \t{}", h.cipher_mode);
    let _ = writeln!(out, "Hash spec:     \t{}", h.hash_spec);
    let _ = writeln!(out, "Payload offset:\t{}", h.payload_offset);
    let _ = writeln!(out, "MK bits:       \t{}", u64::from(h.key_bytes) * 8);
    out.push_str("MK digest:     \t");
    hex(out, &h.mk_digest);
    out.push_str("\nMK salt:       \t");
    hex(out, &h.mk_digest_salt[..16]);
    out.push_str("\n               \t");
    hex(out, &h.mk_digest_salt[16..]);
    let _ = writeln!(out, "\nMK iterations: \t{}", h.mk_digest_iterations);
    let _ = writeln!(out, "UUID:          \t{}\n", h.uuid);
    for (i, s) in h.slots.iter().enumerate() {
        if !s.active {
            let _ = writeln!(out, "Key Slot {i}: DISABLED");
            continue;
        }
        let _ = writeln!(out, "Key Slot {i}: ENABLED");
        let _ = writeln!(out, "\tIterations:         \t{}", s.iterations);
        out.push_str("\tSalt:               \t");
        hex(out, &s.salt[..16]);
        out.push_str("\n\t                      \t");
        hex(out, &s.salt[16..]);
        let _ = writeln!(out, "\n\tKey material offset:\t{}", s.material_offset);
        let _ = writeln!(out, "\tAF stripes:            \t{}", s.stripes);
    }
}

fn digest_ids(out: &mut String, m: &Metadata, id: u32) {
    for (did, d) in &m.digests {
        if d.keyslots.contains(&id) {
            let _ = writeln!(out, "\tDigest ID:  {did}");
        }
    }
}

/// `reenc_keyslot_dump` (luks2_keyslot_reenc.c).
fn reencrypt_lines(out: &mut String, r: &ReencryptKeyslot) {
    let _ = writeln!(out, "\t{:<12}{}", "Mode:", r.mode);
    let _ = writeln!(out, "\t{:<12}{}", "Direction:", r.direction);
    let _ = writeln!(out, "\t{:<12}{}", "Resilience:", r.resilience);
    if r.resilience == "checksum" {
        let _ = writeln!(out, "\t{:<12}{}", "Hash:", r.hash.as_deref().unwrap_or(""));
        let _ = writeln!(
            out,
            "\t{:<12}{} [bytes]",
            "Hash data:",
            r.hash_block.unwrap_or(0)
        );
    } else if r.resilience == "datashift" {
        let _ = writeln!(
            out,
            "\t{:<12}{}[bytes]",
            "Shift size:",
            r.shift_size.unwrap_or(0)
        );
    }
    let _ = writeln!(out, "\tArea offset:{} [bytes]", r.area_offset);
    let _ = writeln!(out, "\tArea length:{} [bytes]", r.area_size);
}

fn or<'a>(s: &'a str, none: &'a str) -> &'a str {
    if s.is_empty() {
        none
    } else {
        s
    }
}

fn dump2(out: &mut String, h: &Luks2Header) {
    let m = &h.meta;
    let b = &h.bin;
    out.push_str("LUKS header information\n");
    let _ = writeln!(out, "Version:       \t2");
    let _ = writeln!(out, "Epoch:         \t{}", b.seqid);
    let _ = writeln!(out, "Metadata area: \t{} [bytes]", b.hdr_size);
    let _ = writeln!(out, "Keyslots area: \t{} [bytes]", m.config.keyslots_size);
    let _ = writeln!(out, "UUID:          \t{}", or(&b.uuid, "(no UUID)"));
    let _ = writeln!(out, "Label:         \t{}", or(&b.label, "(no label)"));
    let _ = writeln!(
        out,
        "Subsystem:     \t{}",
        or(&b.subsystem, "(no subsystem)")
    );
    out.push_str("Flags:       \t");
    for f in &m.config.flags {
        let _ = write!(out, "{f} ");
    }
    if m.config.flags.is_empty() {
        out.push_str("(no flags)");
    }
    out.push('\n');
    if m.config.requirements.is_empty() {
        out.push('\n');
    } else {
        out.push_str("Requirements:\t");
        for r in &m.config.requirements {
            let _ = write!(out, "{r} ");
        }
        out.push_str("\n\n");
    }
    out.push_str("Data segments:\n");
    for (id, s) in &m.segments {
        let _ = writeln!(out, "  {id}: {}", s.kind);
        let _ = writeln!(out, "\toffset: {} [bytes]", s.offset);
        match s.size {
            None => out.push_str("\tlength: (whole device)\n"),
            Some(n) => {
                let _ = writeln!(out, "\tlength: {n} [bytes]");
            }
        }
        // hdr_dump_segments prints whichever of the two the object holds.
        match &s.encryption {
            Some(e) => {
                let _ = writeln!(out, "\tcipher: {e}");
            }
            None => out.push_str("\tcipher: (no SW encryption)\n"),
        }
        if s.has_sector_size {
            let _ = writeln!(out, "\tsector: {} [bytes]", s.sector_size);
        }
        if let Some(i) = &s.integrity {
            let _ = writeln!(out, "\tintegrity: {i}");
        }
        if !s.flags.is_empty() {
            let _ = writeln!(out, "\tflags : {}", s.flags.join(", "));
        }
        out.push('\n');
    }
    out.push_str("Keyslots:\n");
    // LUKS2_hdr_dump walks ids 0..LUKS2_KEYSLOTS_MAX: a higher id is kept, not shown.
    for (id, ks) in m.keyslots.range(..32) {
        // LUKS2_keyslot_for_segment(.., CRYPT_ONE_SEGMENT): a digest ties it to segment 0.
        let bound = m
            .digests
            .values()
            .any(|d| d.keyslots.contains(id) && d.segments.contains(&0));
        let unbound = if bound { "" } else { " (unbound)" };
        // hdr_dump_keyslots: type, key size (when present) and priority for every type,
        // then the type's own lines (none without a handler), then the digest ids.
        let (kind, key_size, priority) = match ks {
            Keyslot::Luks2(k) => ("luks2", Some(i64::from(k.key_size)), k.priority),
            Keyslot::Reencrypt(r) => ("reencrypt", Some(i64::from(r.key_size)), r.priority),
            Keyslot::Other {
                kind,
                key_size,
                priority,
            } => (kind.as_str(), *key_size, *priority),
        };
        let _ = writeln!(out, "  {id}: {kind}{unbound}");
        if let Some(n) = key_size {
            // crypt_jobj_get_uint32(..) * 8 in 32 bits.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bits = (n as u32).wrapping_mul(8);
            let _ = writeln!(out, "\tKey:        {bits} bits");
        }
        let prio = match priority.unwrap_or(1) {
            0 => "ignored",
            1 => "normal",
            2 => "preferred",
            _ => "invalid",
        };
        let _ = writeln!(out, "\tPriority:   {prio}");
        let k = match ks {
            Keyslot::Luks2(k) => k,
            Keyslot::Reencrypt(r) => {
                reencrypt_lines(out, r);
                digest_ids(out, m, *id);
                continue;
            }
            Keyslot::Other { .. } => {
                digest_ids(out, m, *id);
                continue;
            }
        };
        let _ = writeln!(out, "\tCipher:     {}", k.area_encryption);
        let _ = writeln!(out, "\tCipher key: {} bits", u64::from(k.area_key_size) * 8);
        let _ = writeln!(out, "\tPBKDF:      {}", k.kdf);
        match &k.kdf {
            Kdf::Pbkdf2 { hash, iterations } => {
                let _ = writeln!(out, "\tHash:       {hash}");
                let _ = writeln!(out, "\tIterations: {iterations}");
            }
            Kdf::Argon2 {
                time,
                memory_kib,
                cpus,
                ..
            } => {
                let _ = writeln!(out, "\tTime cost:  {time}");
                let _ = writeln!(out, "\tMemory:     {memory_kib}");
                let _ = writeln!(out, "\tThreads:    {cpus}");
            }
            // `%PRIu64` of json_object_get_int64: a negative value prints as unsigned.
            Kdf::Unsupported {
                time, memory, cpus, ..
            } => {
                let u = |v: i64| u64::from_le_bytes(v.to_le_bytes());
                let _ = writeln!(out, "\tTime cost:  {}", u(*time));
                let _ = writeln!(out, "\tMemory:     {}", u(*memory));
                let _ = writeln!(out, "\tThreads:    {}", u(*cpus));
            }
        }
        out.push_str("\tSalt:       ");
        hex_lines(out, k.salt.as_deref());
        let _ = writeln!(out, "\tAF stripes: {}", k.stripes);
        let _ = writeln!(out, "\tAF hash:    {}", k.af_hash);
        let _ = writeln!(out, "\tArea offset:{} [bytes]", k.area_offset);
        let _ = writeln!(out, "\tArea length:{} [bytes]", k.area_size);
        digest_ids(out, m, *id);
    }
    out.push_str("Tokens:\n");
    for (id, t) in &m.tokens {
        let _ = writeln!(out, "  {id}: {}", t.kind);
        if let Some(d) = &t.key_description {
            let _ = writeln!(out, "\tKey description: {d}");
        }
        for k in &t.keyslots {
            let _ = writeln!(out, "\tKeyslot:    {k}");
        }
    }
    out.push_str("Digests:\n");
    for (id, d) in &m.digests {
        match &d.kind {
            // LUKS2_digest_dump: the type, then the handler's lines (none for unknown).
            DigestKind::Other(kind) => {
                let _ = writeln!(out, "  {id}: {kind}");
            }
            DigestKind::Pbkdf2 {
                hash,
                iterations,
                salt,
                digest,
            } => {
                let _ = writeln!(out, "  {id}: pbkdf2");
                let _ = writeln!(out, "\tHash:       {hash}");
                let _ = writeln!(out, "\tIterations: {iterations}");
                out.push_str("\tSalt:       ");
                hex_lines(out, salt.as_deref());
                out.push_str("\tDigest:     ");
                hex_lines(out, digest.as_deref());
            }
        }
    }
}

impl Luks {
    /// The `cryptsetup luksDump` text; `name` is the device path LUKS1's first line shows.
    #[must_use]
    pub fn dump(&self, name: &str) -> String {
        let mut out = String::new();
        match &self.header {
            Header::V1(h) => dump1(&mut out, h, name),
            Header::V2(h) => dump2(&mut out, h),
        }
        out
    }
}
