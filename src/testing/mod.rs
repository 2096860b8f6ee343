//! Test support, public under the `testing` feature so projects that build dm tables can
//! property-test and fuzz their own table logic against dmemu:
//!
//! - [`conformance`]: the `Volume` contract checks every backing and target must pass;
//! - [`strategies`]: proptest strategies generating valid tables of every typed target;
//! - [`fuzz`]: the drivers the cargo-fuzz targets call (also run over the seed corpus in
//!   ordinary `cargo test`).

pub mod conformance;
pub mod fuzz;
pub mod strategies;
