//! LUKS2 states made by the host's cryptsetup 2.6.1 (tests/fixtures/luks/make-states.sh):
//! a label, a key slot with priority "ignore" bound to a systemd-tpm2 token, and an image
//! with an online re-encryption initialised (`cryptsetup reencrypt --init-only`).

use std::io::Read;
use std::sync::Arc;

use dmemu::luks::{KdfLimits, Luks};
use dmemu::{Keys, MemVolume};

fn open(name: &str) -> Luks {
    let path = format!(
        "{}/tests/fixtures/luks/{name}.img.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut b = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut b)
        .unwrap();
    Luks::open(Arc::new(MemVolume::from_bytes(b).unwrap()), None).unwrap()
}

fn luksdump(name: &str) -> String {
    let p = format!(
        "{}/tests/fixtures/luks/dump/{name}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(p).unwrap()
}

/// The text between `from` and `to` (exclusive).
fn section<'a>(s: &'a str, from: &str, to: &str) -> &'a str {
    let a = s.find(from).unwrap();
    let b = s.find(to).unwrap();
    &s[a..b]
}

#[test]
fn token_image_dump_matches_luksdump_outside_the_plugin_lines() {
    let ours = open("l2-token").dump("IMAGE");
    let theirs = luksdump("l2-token");
    // Header (label, subsystem), segments and key slots (priority "ignored").
    assert_eq!(
        section(&ours, "LUKS", "Tokens:"),
        section(&theirs, "LUKS", "Tokens:")
    );
    assert!(ours.contains("Label:         \tdmemu-label\n"));
    assert!(
        ours.contains("Tokens:\n  0: systemd-tpm2\n\tKeyslot:    1\n"),
        "{ours}"
    );
    let digests = |s: &str| s[s.find("Digests:").unwrap()..].to_string();
    assert_eq!(digests(&ours), digests(&theirs));
}

#[test]
fn ignored_key_slot_opens_only_when_named_and_hardware_token_is_reported() {
    let luks = open("l2-token");
    let lim = KdfLimits::default();
    let e = luks.unlock(b"bravo", None, &lim).unwrap_err().to_string();
    assert!(
        e.contains("no key available") && e.contains("token 0 (systemd-tpm2)"),
        "{e}"
    );
    assert_eq!(
        luks.unlock(b"bravo", Some(1), &lim).unwrap().keyslot,
        Some(1)
    );
    let key = luks.unlock(b"alpha", None, &lim).unwrap();
    assert_eq!(key.keyslot, Some(0));
    assert!(luks.table_line(&key, "d", Keys::Hidden, false).is_ok());
}

#[test]
fn reencryption_in_progress_is_parsed_then_refused_by_name() {
    let luks = open("l2-reencrypt");
    let ours = luks.dump("IMAGE");
    let theirs = luksdump("l2-reencrypt");
    // Requirements line and the three segments with their backup flags.
    assert_eq!(
        section(&ours, "LUKS", "Keyslots:"),
        section(&theirs, "LUKS", "Keyslots:")
    );
    let key = luks
        .unlock(b"alpha", Some(0), &KdfLimits::default())
        .unwrap();
    let e = luks.volume(&key).unwrap_err().to_string();
    assert!(
        e.contains("online re-encryption") && e.contains("online-reencrypt-v2"),
        "{e}"
    );
    assert!(luks.table_line(&key, "d", Keys::Hidden, false).is_err());
}
