//! E2B envd wire types: Connect protocol envelopes, error codes and the proto-JSON messages of
//! the `process` service, shared by `ember-agent` (server) and the host (client).

pub mod b64;
pub mod code;
pub mod envelope;
pub mod filesystem;
pub mod process;
pub mod signature;
pub mod time;

pub use code::{Code, ConnectError};
pub use envelope::{Decoder, EnvelopeError, Frame, FLAG_END_STREAM, MAX_FRAME_LEN};

/// The envd version Ember's agent reports; SDKs gate features on it.
pub const ENVD_VERSION: &str = "0.6.13";
/// TCP port envd listens on inside the guest.
pub const ENVD_PORT: u16 = 49983;
/// Content type of Connect streaming requests and responses with the JSON codec.
pub const CONNECT_JSON: &str = "application/connect+json";
