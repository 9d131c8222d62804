//! Ember's guest agent: PID 1 duties inside the microVM ([`init`]) and the envd-compatible
//! server ([`server`]) that the host and the E2B SDKs talk to on port 49983: processes
//! ([`process`]), filesystem RPCs and watches ([`fs`]), file transfer ([`files`]) and the
//! system endpoints ([`system`]), with extra CA certificates from `/init` ([`ca`]) and the files
//! naming the sandbox under `/run/e2b` ([`runinfo`]). What `/init`
//! sets is saved ([`statefile`]) so a restarted server keeps its token; a server without one
//! refuses every call but `/health` and `/init`. In a guest it also makes servers that listen on
//! the guest's loopback only reachable on its address ([`forward`]), and init keeps a template's
//! services running ([`services`]).

// Values from guests and clients are bounded before use: no silent truncation or sign change.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

pub mod atomic;
pub mod auth;
pub mod ca;
pub mod connect;
pub mod creds;
pub mod disk;
pub mod files;
pub mod forward;
pub mod fs;
pub mod init;
pub mod netconf;
pub mod process;
pub mod runinfo;
pub mod server;
pub mod services;
pub mod state;
pub mod statefile;
pub mod system;
pub mod time;
pub mod users;
