//! The `ember` crate's library part: what the binary, its tests and its benchmarks share.

#![forbid(unsafe_code)]

pub mod settings;
