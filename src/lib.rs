//! dmemu: a userspace device-mapper.
//!
//! dmemu reads the Linux kernel's device-mapper table grammar (`start length type args`, as
//! `dmsetup table` prints it) and executes the targets over ordinary image files through the
//! sector-addressed [`Volume`] trait: no root, no kernel module.
//!
//! ```
//! use std::sync::Arc;
//! use dmemu::{Registry, Table, TableMode, MemVolume, Volume, Sector, SectorCount};
//! use dmemu::table::DeviceSpec;
//!
//! let registry = Registry::new();
//! registry.insert_volume("disk", Arc::new(MemVolume::new(SectorCount(64))?));
//! let table = Table::parse("0 32 linear disk 16\n32 32 zero")?;
//! let dev = registry.create(&DeviceSpec {
//!     name: "demo".into(), uuid: String::new(), minor: None,
//!     mode: TableMode::ReadWrite, table,
//! })?;
//! dev.write(Sector(0), &[0xab; 512])?;
//! let mut buf = [0u8; 1024];
//! dev.read(Sector(31), &mut buf)?; // spans the linear and zero lines
//! assert_eq!(buf[0], 0);          // sector 31 of the linear part was never written
//! assert_eq!(buf[512], 0);        // the zero line
//! # Ok::<(), dmemu::Error>(())
//! ```

mod block_map;
pub mod cli;
pub mod clock;
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

pub use error::{Error, Result};
pub use mapped_device::MappedDevice;
pub use registry::Registry;
pub use table::{Table, TableLine, TableMode};
pub use targets::{Keys, Target, TargetSpec};
pub use units::{Sector, SectorCount, SECTOR_SIZE};
pub use volume::{Access, FileVolume, MemVolume, MmapVolume, SharedVolume, Volume};
