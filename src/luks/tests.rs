//! Unit tests of the LUKS module.
