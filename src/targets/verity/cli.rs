//! `dmemu verity format|verify|dump|table`.
