//! `dmemu serve`: hand devices to other programs. [`nbd`] speaks the NBD protocol over
//! Unix and TCP sockets; [`export`] addresses a `Volume` in bytes for it;
//! [`exports`] is the set served, which can grow and shrink while serving; `fuse` (feature
//! `fuse`) shows the exports as files; [`server`] owns
//! listeners and connection threads; [`cli`] is the command.

#[cfg(feature = "cli")]
pub mod cli;
pub mod export;
pub mod exports;
#[cfg(feature = "fuse")]
pub mod fuse;
pub mod nbd;
pub mod server;

pub use export::{Durability, Export, ExportAccess, ZeroSpeed};
pub use exports::{Exports, OpenExport};
pub use server::{Endpoint, Listen, Server};
