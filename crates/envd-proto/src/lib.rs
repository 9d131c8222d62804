//! E2B envd wire types: Connect protocol envelopes, error codes, the proto-JSON messages of the
//! `process` and `filesystem` services and the bodies of `/init` and `/metrics`, shared by
//! `ember-agent` (server) and the host (client).

#![forbid(unsafe_code)]
// Values from guests and clients are bounded before use: no silent truncation or sign change.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

pub mod b64;
pub mod code;
pub mod cors;
pub mod envelope;
pub mod filesystem;
pub mod init;
pub mod interpreter;
pub mod metrics;
pub mod process;
pub mod signature;
pub mod stream;
pub mod time;

pub use code::{Code, ConnectError};
pub use envelope::{Decoder, EnvelopeError, Frame, FLAG_END_STREAM, MAX_FRAME_LEN};

/// The envd version Ember's agent reports; SDKs gate features on it.
pub const ENVD_VERSION: &str = "0.6.13";
/// TCP port envd listens on inside the guest.
pub const ENVD_PORT: u16 = 49983;
/// Content type of Connect streaming requests and responses with the JSON codec.
pub const CONNECT_JSON: &str = "application/connect+json";
/// Response header of `GET /health`: `true` when the agent holds an access token, `false` when
/// it has none (never initialised, or restarted without its saved state) and refuses every call
/// but `/health` and `/init` until the host initialises it again.
pub const INITIALISED_HEADER: &str = "x-ember-initialised";

/// Longest env var name accepted where names must be usable in code (a kernel's, a build's).
pub const MAX_ENV_NAME: usize = 256;

/// A portable env var name: `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_ENV_NAME`] bytes.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= MAX_ENV_NAME
}
