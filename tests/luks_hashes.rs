//! Every hash cryptsetup 2.6.1 can format with and dmemu implements dumps and unlocks;
//! one dmemu lacks (cryptsetup's OpenSSL backend has sm3) dumps and says "unsupported
//! hash" on unlock. Images are made here by the host `cryptsetup luksFormat` (PBKDF2 with
//! 1000 iterations, so the test takes well under a second of KDF work).

use std::path::Path;
use std::process::Command;

use dmemu::luks::{KdfLimits, Luks};
use dmemu::Access;

fn cryptsetup() -> bool {
    let ok = Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: cryptsetup not installed");
    }
    ok
}

/// `cryptsetup luksFormat --type TYPE --hash HASH` on a fresh 4 MiB file, passphrase
/// "alpha"; None when cryptsetup refuses the hash.
fn format(dir: &Path, kind: &str, hash: &str) -> Option<std::path::PathBuf> {
    let img = dir.join(format!("{kind}-{hash}.img"));
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, b"alpha").unwrap();
    let mut c = Command::new("cryptsetup");
    c.args(["luksFormat", "-q", "--type", kind, "--hash", hash]);
    c.args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
    c.args(["--cipher", "aes-xts-plain64", "--key-size", "256"]);
    if kind == "luks2" {
        c.args([
            "--luks2-metadata-size",
            "16k",
            "--luks2-keyslots-size",
            "256k",
        ]);
    }
    c.arg("--key-file").arg(&pw).arg(&img);
    let o = c.output().unwrap();
    o.status.success().then_some(img)
}

fn luks_dump(img: &Path) -> String {
    let o = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn whirlpool_images_dump_as_cryptsetup_and_unlock() {
    if !cryptsetup() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for kind in ["luks1", "luks2"] {
        let Some(img) = format(dir.path(), kind, "whirlpool") else {
            eprintln!("skipped: this cryptsetup's crypto backend has no whirlpool");
            return;
        };
        let luks = Luks::open_path(&img, None, Access::ReadOnly).unwrap();
        let want = luks_dump(&img);
        let got = luks.dump(img.to_str().unwrap());
        assert_eq!(got, want, "{kind}");
        assert!(got.contains("whirlpool"), "{got}");
        let limits = KdfLimits::default();
        let vk = luks.unlock(b"alpha", None, &limits).unwrap();
        assert_eq!(vk.keyslot, Some(0), "{kind}");
        let e = luks.unlock(b"beta", None, &limits).unwrap_err().to_string();
        assert!(e.contains("no key available with this passphrase"), "{e}");
    }
}

#[test]
fn a_hash_dmemu_lacks_dumps_and_unlock_says_unsupported() {
    if !cryptsetup() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(img) = format(dir.path(), "luks2", "sm3") else {
        eprintln!("skipped: this cryptsetup's crypto backend has no sm3");
        return;
    };
    let luks = Luks::open_path(&img, None, Access::ReadOnly).unwrap();
    assert_eq!(luks.dump("x"), luks_dump(&img));
    let e = luks
        .unlock(b"alpha", None, &KdfLimits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported hash \"sm3\""), "{e}");
    // LUKS1: cryptsetup itself refuses to load it ("Requested LUKS hash sm3 is not
    // supported." when its backend lacks it); dmemu says the same of a hash it lacks.
    if let Some(img) = format(dir.path(), "luks1", "sm3") {
        let e = Luks::open_path(&img, None, Access::ReadOnly)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported hash \"sm3\""), "{e}");
        assert!(!e.contains("corrupt"), "{e}");
    }
}
