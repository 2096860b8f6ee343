//! writecache against the real Linux 6.12 kernel: every case of
//! tests/fixtures/writecache/cases.txt (made by make.sh there on shared/oracle over loop
//! devices). Every table the kernel loaded parses and prints as `dmsetup table` printed it
//! (case-folded mode and options, `%u` wrapping, options once each with their last value, in
//! `writecache_status`'s order); every table it refused is refused with its `ti->error`
//! words and errno (lookups, `start_sector` past the cache and `p` without DAX at build).

mod remap_support;

use dmemu::targets::TargetSpec;

use remap_support::{loaded_print_as_the_kernel, refused_as_the_kernel};

const FIXTURE: &str = include_str!("fixtures/writecache/cases.txt");

#[test]
fn tables_the_kernel_loaded_print_as_the_kernel() {
    let loaded = loaded_print_as_the_kernel(FIXTURE, |s| matches!(s, TargetSpec::Writecache(_)));
    assert_eq!(loaded, 7, "the fixture's loaded cases");
}

#[test]
fn tables_the_kernel_refuses_are_refused_with_its_words() {
    assert_eq!(
        refused_as_the_kernel(FIXTURE, "writecache", 2),
        26,
        "the fixture's refused cases"
    );
}

/// tests/fixtures/writecache/io (make.sh there): an SSD writecache the 6.12 kernel wrote
/// 4 KiB blocks into, committed, some written again after a commit, nothing written back.
mod io {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::path::PathBuf;

    use dmemu::registry::Registry;
    use dmemu::table::parse_concise;
    use dmemu::{Access, Sector, Volume};
    use sha2::{Digest, Sha256};

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/writecache/io")
    }

    fn kernel() -> BTreeMap<String, String> {
        std::fs::read_to_string(dir().join("kernel.txt"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sha256(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The kernel's table over the fixture's images (254:0 the origin, 254:16 the cache).
    fn device() -> (
        tempfile::TempDir,
        Registry,
        std::sync::Arc<dmemu::MappedDevice>,
    ) {
        let t = tempfile::tempdir().unwrap();
        let mut r = Registry::new().with_access(Access::ReadWrite);
        for (mm, f) in [("254:0", "origin"), ("254:16", "cache")] {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(
                std::fs::File::open(dir().join(format!("{f}.img.gz"))).unwrap(),
            )
            .read_to_end(&mut out)
            .unwrap();
            let p = t.path().join(format!("{f}.img"));
            std::fs::write(&p, out).unwrap();
            r.bind(mm, p).unwrap();
        }
        let table = kernel()["TABLE"].clone();
        let d = r
            .create_all(&parse_concise(&format!("wc,,,rw,{table}")).unwrap())
            .unwrap()
            .remove(0);
        (t, r, d)
    }

    #[test]
    fn an_ssd_writecache_reads_back_with_the_kernels_sha256_and_status() {
        let k = kernel();
        let (t, r, d) = device();
        // Before any I/O: the kernel's status of a fresh activation (254 blocks, 242 free).
        assert_eq!(d.status_text(), format!("{}\n", k["FRESH_STATUS"]));
        let mut all = vec![0u8; usize::try_from(d.size().0 * 512).unwrap()];
        for (i, chunk) in all.chunks_mut(1 << 16).enumerate() {
            d.read(Sector(i as u64 * 128), chunk).unwrap();
        }
        assert_eq!(sha256(&all), k["FRESH_SHA256"]);
        assert_eq!(k["FRESH_SHA256"], k["SHA256"]);
        // The origin alone is stale: the newest data is on the cache device.
        let origin = std::fs::read(t.path().join("origin.img")).unwrap();
        assert_eq!(sha256(&origin), k["ORIGIN_SHA256"]);
        assert_ne!(sha256(&origin), k["SHA256"]);
        // Writes are refused and nothing is written, not even on removal.
        let cache = std::fs::read(t.path().join("cache.img")).unwrap();
        let e = d.write(Sector(0), &[0; 4096]).unwrap_err();
        assert_eq!(e.errno(), 95, "{e}");
        d.flush().unwrap();
        drop(d);
        r.remove("wc", dmemu::registry::RemoveMode::Normal).unwrap();
        assert_eq!(std::fs::read(t.path().join("cache.img")).unwrap(), cache);
        assert_eq!(std::fs::read(t.path().join("origin.img")).unwrap(), origin);
    }

    #[test]
    fn a_damaged_superblock_is_refused_with_the_kernels_words() {
        for (off, byte, words) in [
            (0, 0x11, "Invalid magic in the superblock"),
            (4, 2, "Invalid version in the superblock"),
            (9, 0x20, "Block size does not match superblock"),
            (22, 1, "Memory area is too small"),
        ] {
            let (t, _r, d) = device();
            drop(d);
            let p = t.path().join("cache.img");
            let mut img = std::fs::read(&p).unwrap();
            img[off] = byte;
            std::fs::write(&p, img).unwrap();
            let mut r = Registry::new().with_access(Access::ReadOnly);
            r.bind("254:0", t.path().join("origin.img")).unwrap();
            r.bind("254:16", &p).unwrap();
            let table = kernel()["TABLE"].clone();
            let e = r
                .create_all(&parse_concise(&format!("wc,,,ro,{table}")).unwrap())
                .unwrap_err();
            assert!(e.to_string().contains(words), "{off}: {e}");
            assert_eq!(e.errno(), 22, "{off}: {e}");
        }
    }
}
