//! Properties of the parsers that read hostile bytes, one module per parser. Each property
//! runs `PROPTEST_CASES` cases (see the crate's `README.md`).

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

mod dns;
mod envelope;
mod proxy;
mod qmp;
mod range;
mod rest;
mod sniff;
mod time;
