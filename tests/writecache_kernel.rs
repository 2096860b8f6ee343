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

/// tests/fixtures/writecache/`name`.
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/writecache")
        .join(name)
}

/// A fixture's kernel.txt: `KEY value` lines.
fn kernel_lines(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("kernel.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sha256(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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
/// 4 KiB blocks into, committed by its autocommit timer, nothing written back.
mod io {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::path::PathBuf;

    use super::sha256;
    use dmemu::registry::Registry;
    use dmemu::table::parse_concise;
    use dmemu::{Access, Sector, Volume};

    fn dir() -> PathBuf {
        super::fixture("io")
    }

    fn kernel() -> BTreeMap<String, String> {
        super::kernel_lines(&dir())
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
        // Only read (and flushed with nothing uncommitted): nothing is written, not even
        // on removal. The logical block is the cache block, as writecache_io_hints sets it.
        let cache = std::fs::read(t.path().join("cache.img")).unwrap();
        assert_eq!(d.logical_block_size(), 4096);
        assert_eq!(d.write(Sector(1), &[0; 4096]).unwrap_err().errno(), 22);
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

/// tests/fixtures/writecache/writes (make.sh there): the kernel's write sequence replayed in
/// dmemu from the same zero cache and origin pattern gives the kernel's status after each
/// round, its cache device byte for byte at the crash point, its view, its writeback (the
/// `flush` message) and its recovery of the crash image.
mod writes {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::sha256;
    use dmemu::table::args::Args;
    use dmemu::targets::{Target, Writecache, WritecacheArgs};
    use dmemu::volume::MemVolume;
    use dmemu::{Result, Sector, SectorCount, Volume};

    fn dir() -> PathBuf {
        super::fixture("writes")
    }

    fn kernel() -> BTreeMap<String, String> {
        super::kernel_lines(&dir())
    }

    /// The guest's awk: `printf "%-511s\n", text " " i` for each sector.
    fn text(prefix: &str, sectors: u64) -> Vec<u8> {
        (0..sectors)
            .flat_map(|i| format!("{:<511}\n", format!("{prefix} {i}")).into_bytes())
            .collect()
    }

    /// The origin as the guest's qemu disk: discards are ignored (qemu's `discard=ignore`,
    /// the kernel run left the origin's sha256 unchanged by the discard).
    #[derive(Debug)]
    struct Disk(MemVolume);

    impl Volume for Disk {
        fn size(&self) -> SectorCount {
            self.0.size()
        }
        fn read(&self, s: Sector, b: &mut [u8]) -> Result<()> {
            self.0.read(s, b)
        }
        fn write(&self, s: Sector, b: &[u8]) -> Result<()> {
            self.0.write(s, b)
        }
        fn flush(&self) -> Result<()> {
            self.0.flush()
        }
        fn discard(&self, _: Sector, _: SectorCount) -> Result<()> {
            Ok(())
        }
    }

    fn raw(v: &dyn Volume) -> Vec<u8> {
        let mut b = vec![0u8; usize::try_from(v.size().0 * 512).unwrap()];
        v.read(Sector(0), &mut b).unwrap();
        b
    }

    fn status(w: &Writecache) -> String {
        format!("0 16384 writecache {}", w.status())
    }

    fn open(origin: Arc<Disk>, cache: Arc<MemVolume>) -> Writecache {
        let table = kernel()["TABLE"].clone();
        let words: Vec<String> = table.split(' ').skip(3).map(str::to_string).collect();
        let args = WritecacheArgs::parse(&mut Args::new(&words)).unwrap();
        Writecache::over(&args, SectorCount(16384), origin, cache).unwrap()
    }

    fn view(w: &Writecache) -> String {
        let mut all = vec![0u8; 16384 * 512];
        for (i, chunk) in all.chunks_mut(1 << 16).enumerate() {
            w.read(Sector(i as u64 * 128), chunk).unwrap();
        }
        sha256(&all)
    }

    fn crash_image() -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(dir().join("crash-cache.img.gz")).unwrap(),
        )
        .read_to_end(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn the_kernels_writes_replayed_give_its_cache_bytes_status_view_and_writeback() {
        let k = kernel();
        let origin = Arc::new(Disk(
            MemVolume::from_bytes(text("origin sector", 16384)).unwrap(),
        ));
        assert_eq!(sha256(&raw(&*origin)), k["ORIGIN_SHA256_CRASH"]);
        let cache = Arc::new(MemVolume::new(SectorCount(2048)).unwrap());
        let w = open(origin.clone(), cache.clone());
        assert_eq!(status(&w), k["STATUS_FRESH"]);
        let wr = |block: u64, count: u64, t: &str| {
            w.write(Sector(block * 8), &text(t, count * 8)).unwrap();
        };
        wr(0, 1, "A");
        wr(5, 3, "B");
        wr(100, 1, "C");
        wr(2047, 1, "D");
        w.flush().unwrap();
        wr(5, 1, "E");
        wr(100, 2, "F");
        wr(300, 4, "G");
        wr(300, 1, "H");
        w.flush().unwrap();
        wr(6, 1, "I");
        wr(1000, 1, "J");
        w.flush().unwrap();
        assert_eq!(status(&w), k["STATUS_COMMITTED"]);
        // O_DSYNC: a REQ_FUA write, then generic_write_sync's flush.
        w.write_fua(Sector(1500 * 8), &text("S", 8)).unwrap();
        w.flush().unwrap();
        assert_eq!(status(&w), k["STATUS_FUA"]);
        wr(7, 2, "K");
        wr(1000, 1, "L");
        wr(400, 3, "M");
        wr(401, 1, "N");
        assert_eq!(status(&w), k["STATUS_UNCOMMITTED"]);
        w.discard(Sector(800), SectorCount(16)).unwrap();
        assert_eq!(status(&w), k["STATUS_CRASH"]);
        // The cache device at the crash point: the kernel's bytes, every one.
        let crash = raw(&*cache);
        assert_eq!(sha256(&crash), k["CACHE_SHA256_CRASH"]);
        assert!(
            crash == crash_image(),
            "the cache device differs from the kernel's"
        );
        assert_eq!(sha256(&raw(&*origin)), k["ORIGIN_SHA256_CRASH"]);
        assert_eq!(view(&w), k["SHA256_CRASH"]);
        assert_eq!(status(&w), k["STATUS_READ"]);
        // `dmsetup message wc 0 flush`: everything written back; the origin alone is the view.
        assert_eq!(w.message(&["flush"]).unwrap(), "");
        assert_eq!(status(&w), k["STATUS_FLUSHED"]);
        assert_eq!(sha256(&raw(&*cache)), k["CACHE_SHA256_FLUSHED"]);
        assert_eq!(sha256(&raw(&*origin)), k["ORIGIN_SHA256_FLUSHED"]);
        assert_eq!(k["ORIGIN_SHA256_FLUSHED"], k["SHA256_CRASH"]);
        drop(w);
        assert_eq!(sha256(&raw(&*cache)), k["CACHE_SHA256_REMOVED"]);
    }

    #[test]
    fn the_kernels_crash_image_recovers_as_the_kernel_recovers_it() {
        let k = kernel();
        let origin = Arc::new(Disk(
            MemVolume::from_bytes(text("origin sector", 16384)).unwrap(),
        ));
        let image = crash_image();
        assert_eq!(sha256(&image), k["CACHE_SHA256_CRASH"]);
        let cache = Arc::new(MemVolume::from_bytes(image.clone()).unwrap());
        let w = open(origin.clone(), cache.clone());
        // The uncommitted entries (seq_count = the superblock's) are not served: the
        // kernel's view and free count.
        assert_eq!(status(&w), k["RECOVERED_STATUS"]);
        assert_eq!(view(&w), k["RECOVERED_SHA256"]);
        assert_ne!(k["RECOVERED_SHA256"], k["SHA256_CRASH"]);
        // Only read: nothing written yet; at teardown the erased entries are written as the
        // kernel wrote them at activation.
        assert!(raw(&*cache) == image);
        drop(w);
        assert_eq!(sha256(&raw(&*cache)), k["RECOVERED_CACHE_SHA256_REMOVED"]);
        assert_eq!(
            k["RECOVERED_CACHE_SHA256_REMOVED"],
            k["RECOVERED_CACHE_SHA256"]
        );
        assert_eq!(sha256(&raw(&*origin)), k["ORIGIN_SHA256_CRASH"]);
    }
}

/// tests/fixtures/writecache/dmemu (make.sh there): what dmemu writes, the 6.12 kernel
/// loads. dmemu.cmds replayed here (through `dmemu shell`'s interpreter, the images copied
/// at its sleep as make.sh copies them) gives the images the kernel was given (their
/// sha256 as the guest read them), and dmemu's view, writeback and crash recovery of them
/// are the kernel's.
mod dmemu_writes {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::sha256;
    use dmemu::registry::{Registry, RemoveMode};
    use dmemu::table::parse_concise;
    use dmemu::{Access, MappedDevice, Sector, Volume};

    const OPTS: &str = "4096 4 high_watermark 90 low_watermark 80";

    fn dir() -> PathBuf {
        super::fixture("dmemu")
    }

    fn kernel() -> BTreeMap<String, String> {
        super::kernel_lines(&dir())
    }

    fn file_sha(p: &Path) -> String {
        sha256(&std::fs::read(p).unwrap())
    }

    /// A writecache over `origin` and `cache` (files), as make.sh's table.
    fn open(origin: &Path, cache: &Path) -> (Registry, Arc<MappedDevice>) {
        let mut r = Registry::new().with_access(Access::ReadWrite);
        r.bind("254:0", origin).unwrap();
        r.bind("254:16", cache).unwrap();
        let line = format!("wc,,,rw,0 16384 writecache s 254:0 254:16 {OPTS}");
        let d = r
            .create_all(&parse_concise(&line).unwrap())
            .unwrap()
            .remove(0);
        (r, d)
    }

    fn close(r: Registry, d: Arc<MappedDevice>) {
        drop(d);
        r.remove("wc", RemoveMode::Normal).unwrap();
    }

    fn view(d: &MappedDevice) -> String {
        let mut all = vec![0u8; 16384 * 512];
        for (i, chunk) in all.chunks_mut(1 << 16).enumerate() {
            d.read(Sector(i as u64 * 128), chunk).unwrap();
        }
        sha256(&all)
    }

    fn status(d: &MappedDevice) -> String {
        d.status_text().trim_end().to_string()
    }

    #[test]
    fn what_dmemu_writes_the_kernel_loads_reads_and_writes_back() {
        let k = kernel();
        let t = tempfile::tempdir().unwrap();
        let p = |f: &str| t.path().join(f);
        let pattern: Vec<u8> = (0..16384)
            .flat_map(|i| format!("{:<511}\n", format!("origin sector {i}")).into_bytes())
            .collect();
        std::fs::write(p("origin.img"), &pattern).unwrap();
        std::fs::write(p("cache.img"), vec![0u8; 1 << 20]).unwrap();
        let (r, d) = open(&p("origin.img"), &p("cache.img"));
        let cmds = std::fs::read_to_string(dir().join("dmemu.cmds")).unwrap();
        let mut out = Vec::new();
        dmemu::shell::run_with_sleep(&d, cmds.as_bytes(), &mut out, |_| {
            std::fs::copy(p("origin.img"), p("crash-origin.img")).unwrap();
            std::fs::copy(p("cache.img"), p("crash-cache.img")).unwrap();
        })
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("error"), "{out}");
        close(r, d);
        // The images the kernel was given.
        assert_eq!(file_sha(&p("origin.img")), k["INPUT_SHA256_vda"]);
        assert_eq!(file_sha(&p("cache.img")), k["INPUT_SHA256_vdb"]);
        assert_eq!(file_sha(&p("crash-origin.img")), k["INPUT_SHA256_vdc"]);
        assert_eq!(file_sha(&p("crash-cache.img")), k["INPUT_SHA256_vdd"]);
        // The watermark wrote blocks back: the origin is no longer the pattern.
        assert_ne!(sha256(&pattern), k["INPUT_SHA256_vda"]);
        // Loaded again: the kernel's status and view; the flush message writes back as the
        // kernel did, after which the origin alone holds the view.
        let (r, d) = open(&p("origin.img"), &p("cache.img"));
        assert_eq!(status(&d), k["STATUS"]);
        assert_eq!(view(&d), k["SHA256"]);
        d.message(Sector(0), &["flush"]).unwrap();
        assert_eq!(status(&d), k["STATUS_FLUSHED"]);
        close(r, d);
        assert_eq!(file_sha(&p("origin.img")), k["ORIGIN_SHA256_FLUSHED"]);
        assert_eq!(k["ORIGIN_SHA256_FLUSHED"], k["SHA256"]);
        assert_eq!(file_sha(&p("cache.img")), k["CACHE_SHA256_FLUSHED"]);
        // dmemu's crash image (writes after the last flush): recovered as the kernel does.
        let (r, d) = open(&p("crash-origin.img"), &p("crash-cache.img"));
        assert_eq!(status(&d), k["RECOVERED_STATUS"]);
        assert_eq!(view(&d), k["RECOVERED_SHA256"]);
        close(r, d);
        assert_eq!(file_sha(&p("crash-cache.img")), k["RECOVERED_CACHE_SHA256"]);
    }
}
