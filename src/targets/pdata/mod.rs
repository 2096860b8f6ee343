//! Persistent data (the kernel's drivers/md/persistent-data): checksummed 4096-byte metadata
//! blocks, btrees and space maps, shared by the thin and cache metadata readers and writers.

pub mod array;
pub mod block;
pub mod btree;
pub mod cache;
pub mod shadow;
pub mod space_map;
pub mod write;
