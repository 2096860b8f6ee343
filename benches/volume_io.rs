//! Criterion bench (filled in by the bench work).
fn main() {}
