//! Ember's guest agent: PID 1 duties inside the microVM ([`init`]) and the envd-compatible
//! server ([`server`]) that the host and the E2B SDKs talk to on port 49983.

pub mod init;
pub mod process;
pub mod server;
pub mod users;
