//! dmemu: a userspace device-mapper.
//!
//! dmemu reads the Linux kernel's device-mapper table grammar (`start length type args`, as
//! `dmsetup table` prints it) and executes the targets over ordinary image files through the
//! sector-addressed [`Volume`] trait: no root, no kernel module. Linux only.
//!
//! A [`Registry`] plays the kernel's dm-ioctl: it resolves the devices a table names
//! (image paths, volumes you insert, other devices) and creates [`MappedDevice`]s, each a
//! [`Volume`] you read and write by sector. A device comes from one line of text, a table
//! ([`DeviceSpec::new`](table::DeviceSpec::new)) or a `dmsetup create --concise` device
//! (`"name,uuid,minor,ro|rw,table".parse()`):
//!
//! ```
//! use std::sync::Arc;
//! use dmemu::{MemVolume, Registry, Sector, SectorCount, Volume};
//! use dmemu::table::DeviceSpec;
//!
//! let registry = Registry::new();
//! registry.insert_volume("disk", Arc::new(MemVolume::new(SectorCount(64))?));
//! let dev = registry.create(&DeviceSpec::new("demo", "0 32 linear disk 16\n32 32 zero")?)?;
//! dev.write(Sector(0), &[0xab; 512])?;
//! let mut buf = [0u8; 1024];
//! dev.read(Sector(31), &mut buf)?; // spans the linear and zero lines
//! assert_eq!(buf[0], 0);          // sector 31 of the linear part was never written
//! assert_eq!(buf[512], 0);        // the zero line
//! // The same device in concise form, read-only:
//! let ro = registry.create(&"demo-ro,,,ro,0 32 linear disk 16".parse()?)?;
//! assert!(ro.write(Sector(0), &[0; 512]).is_err());
//! # Ok::<(), dmemu::Error>(())
//! ```
//!
//! # Guide
//!
//! ## Open a LUKS image
//!
//! [`luks::Luks`] reads LUKS1 and LUKS2 headers as cryptsetup writes them, unlocks a key
//! slot with a passphrase (PBKDF2, Argon2i/id, with limits on the work a header may ask
//! for) and gives the decrypted data as a `crypt` target. Here an image `cryptsetup
//! luksFormat` made, whose data the 6.12 kernel wrote:
//!
//! ```
//! # use std::io::Read;
//! # fn unpack(rel: &str, dir: &std::path::Path) -> std::path::PathBuf {
//! #     let gz = std::fs::File::open(format!("tests/fixtures/{rel}.gz")).unwrap();
//! #     let mut v = Vec::new();
//! #     flate2::read::GzDecoder::new(gz).read_to_end(&mut v).unwrap();
//! #     let p = dir.join(std::path::Path::new(rel).file_name().unwrap());
//! #     std::fs::write(&p, v).unwrap();
//! #     p
//! # }
//! # let dir = tempfile::tempdir().unwrap();
//! # let image = unpack("luks/l2-argon2id.img", dir.path());
//! use dmemu::luks::{KdfLimits, Luks};
//! use dmemu::{Access, Sector, Volume};
//!
//! let luks = Luks::open_path(&image, None, Access::ReadOnly)?;
//! let key = luks.unlock(b"alpha", None, &KdfLimits::default())?;
//! assert!(luks.unlock(b"wrong", None, &KdfLimits::default()).is_err());
//! let plain = luks.volume(&key)?;
//! // This image has 4096-byte crypt sectors: I/O goes in whole ones.
//! let mut block = [0u8; 4096];
//! plain.read(Sector(8), &mut block)?;
//! // The kernel wrote byte i = (i mod 251) xor (i / 4096); sector 8 starts at byte 4096.
//! let want: Vec<u8> = (4096..8192u32).map(|i| ((i % 251) ^ (i / 4096)) as u8).collect();
//! assert_eq!(block[..], want[..]);
//! # Ok::<(), dmemu::Error>(())
//! ```
//!
//! ## Verify a verity image
//!
//! A `verity` table checks every read against the hash tree up to the root hash, as the
//! kernel does; a block that does not match fails with EIO. Here a tree `veritysetup
//! format` made:
//!
//! ```
//! # use std::io::Read;
//! # fn unpack(rel: &str, dir: &std::path::Path) -> std::path::PathBuf {
//! #     let gz = std::fs::File::open(format!("tests/fixtures/{rel}.gz")).unwrap();
//! #     let mut v = Vec::new();
//! #     flate2::read::GzDecoder::new(gz).read_to_end(&mut v).unwrap();
//! #     let p = dir.join(std::path::Path::new(rel).file_name().unwrap());
//! #     std::fs::write(&p, v).unwrap();
//! #     p
//! # }
//! # let dir = tempfile::tempdir().unwrap();
//! # let data = unpack("verity/data-a.img", dir.path());
//! # let hash = unpack("verity/hash-v1-sha256-4k.img", dir.path());
//! use dmemu::table::DeviceSpec;
//! use dmemu::{Access, Registry, Sector, Volume};
//!
//! let root = "20a8659eb54ff3e277d675bf53e84124b5abad6b84881415b796a9a0977d4512";
//! let salt = "5c0f5e1dd8a5b3a1a2f2d44c1cbd0f0e3b1e2a9c8d7f6e5d4c3b2a1908172635";
//! let table = format!(
//!     "0 2048 verity 1 {} {} 4096 4096 256 1 sha256 {root} {salt}",
//!     data.display(),
//!     hash.display()
//! );
//! let registry = Registry::new().with_access(Access::ReadOnly);
//! let dev = registry.create(&DeviceSpec::new("v", &table)?.read_only())?;
//! let mut all = vec![0u8; 1 << 20];
//! dev.read(Sector(0), &mut all)?; // every block verified
//!
//! // One flipped byte in data block 9: that block fails, the others still read.
//! let mut bytes = std::fs::read(&data).unwrap();
//! bytes[9 * 4096 + 100] ^= 1;
//! std::fs::write(&data, bytes).unwrap();
//! let dev = Registry::new()
//!     .with_access(Access::ReadOnly)
//!     .create(&DeviceSpec::new("v", &table)?.read_only())?;
//! let mut block = [0u8; 4096];
//! assert_eq!(dev.read(Sector(9 * 8), &mut block).unwrap_err().errno(), 5);
//! dev.read(Sector(10 * 8), &mut block)?;
//! # Ok::<(), dmemu::Error>(())
//! ```
//!
//! ## Flakey in a test
//!
//! Wrap the image your code uses in `flakey` on a [`clock::ManualClock`] and move the clock:
//! the device fails I/O exactly in its down windows, with no sleeping and no root.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use dmemu::clock::ManualClock;
//! use dmemu::table::DeviceSpec;
//! use dmemu::{MemVolume, Registry, Sector, SectorCount, Volume};
//!
//! let clock = ManualClock::shared();
//! let registry = Registry::new().with_clock(clock.clone());
//! registry.insert_volume("app", Arc::new(MemVolume::new(SectorCount(2048))?));
//! // Up 5 s, down 2 s, repeating (no features: reads and writes fail while down).
//! let disk = registry.create(&DeviceSpec::new("flaky", "0 2048 flakey app 0 5 2")?)?;
//! let mut buf = [0u8; 4096];
//! disk.read(Sector(0), &mut buf)?;
//! clock.advance(Duration::from_secs(5));
//! assert_eq!(disk.read(Sector(0), &mut buf).unwrap_err().errno(), 5); // down: EIO
//! clock.advance(Duration::from_secs(2));
//! disk.read(Sector(0), &mut buf)?; // up again
//! # Ok::<(), dmemu::Error>(())
//! ```
//!
//! ## A thin volume out of pool files
//!
//! A `thin-pool` line over a metadata and a data image (all-zero metadata is formatted),
//! messages as `dmsetup message` sends them, and a `thin` line per volume. Pool files the
//! kernel made open the same way (`dmemu thin ls META DATA` prints a spec for each thin).
//!
//! ```
//! use std::sync::Arc;
//! use dmemu::{MemVolume, Registry, Sector, SectorCount, Volume};
//!
//! let registry = Registry::new();
//! registry.insert_volume("meta", Arc::new(MemVolume::new(SectorCount(8192))?));
//! registry.insert_volume("data", Arc::new(MemVolume::new(SectorCount(65536))?));
//! let pool = registry.create(&"pool,,,rw,0 65536 thin-pool meta data 128 0 0".parse()?)?;
//! pool.message(Sector(0), &["create_thin", "7"])?;
//! let thin = registry.create(&"t7,,,rw,0 1048576 thin pool 7".parse()?)?;
//! thin.write(Sector(4096), &[0x42; 4096])?; // provisions one 64 KiB block
//! let mut back = [0u8; 4096];
//! thin.read(Sector(4096), &mut back)?;
//! assert_eq!(back, [0x42; 4096]);
//! assert!(pool.status_text().contains(" 1/512 ")); // one data block used
//! # Ok::<(), dmemu::Error>(())
//! ```
//!
//! # Features
//!
//! - `cli` (default): the `dmemu` command and its modules (`cli`, `luks::cli`,
//!   `targets::verity::cli`, `targets::thin::cli`) with clap, indicatif and rpassword.
//!   Library users turn it off: `dmemu = { version = "0.1", default-features = false }`.
//! - `testing`: proptest strategies, the `Volume` conformance checks and the fuzz drivers
//!   (`dmemu::testing`).

mod block_map;
#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
pub mod dmsetup;
pub mod error;
pub mod luks;
pub mod mapped_device;
pub mod registry;
pub mod serve;
pub mod shell;
pub mod table;
pub mod targets;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod units;
pub mod volume;

/// README.md's Rust example, compiled and run by `cargo test --doc` so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use error::{Error, Result};
pub use mapped_device::MappedDevice;
pub use registry::Registry;
pub use table::{Table, TableLine, TableMode};
pub use targets::{Keys, Target, TargetSpec};
pub use units::{Sector, SectorCount, SECTOR_SIZE};
pub use volume::{
    Access, Allocation, Extent, FileVolume, MemVolume, MmapVolume, SharedVolume, TagProfile, Unmap,
    Volume, VolumeIo,
};
