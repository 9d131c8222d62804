//! The `ember` crate's library part: what the binary, its tests and its benchmarks share.

pub mod settings;
