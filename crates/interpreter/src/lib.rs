//! Ember's code-interpreter server: E2B's code-interpreter protocol (`/execute`, `/contexts`,
//! port 49999) served over Jupyter kernels that it starts and talks to itself (ZeroMQ, signed
//! messages), with no Jupyter server in between.

// Sizes from kernels and clients are bounded before use: no silent truncation or sign change.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

pub mod context;
pub mod envd;
pub mod execute;
pub mod kernel;
pub mod kernelspec;
pub mod lang;
pub mod server;
pub mod users;
pub mod wire;
