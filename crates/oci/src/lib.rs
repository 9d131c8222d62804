//! Pulls an image from an OCI / Docker registry and unpacks it into a root filesystem
//! directory, for templates built `FROM` an image.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ember_oci::OciError> {
//! use ember_oci::{pull_and_unpack, PullConfig};
//! let image = pull_and_unpack(
//!     "python:3.12-slim",
//!     None,
//!     std::path::Path::new("/var/lib/ember/rootfs"),
//!     &PullConfig::default(),
//! )
//! .await?;
//! println!("{} env {:?} cmd {:?}", image.digest, image.config.env, image.config.cmd);
//! # Ok(()) }
//! ```
//!
//! The pieces:
//! - [`reference`](mod@reference): parses `python:3.12-slim`, `registry:5000/ns/img@sha256:...` the way Docker
//!   does (Docker Hub `docker.io` → `registry-1.docker.io`, `library/` for official images,
//!   `latest` by default).
//! - [`client`]: the registry API v2 — bearer-token challenges (`WWW-Authenticate`), optional
//!   basic credentials, manifests, indexes (the `linux/amd64` entry is picked), blobs verified
//!   against their sha256 digest and size. `http://` only for loopback registries and those in
//!   [`PullConfig::insecure_registries`].
//! - [`unpack`]: applies the layers in order (gzip or plain tar, OCI whiteouts), keeping modes,
//!   numeric owners, symlinks and hard links, and refusing any path that could leave the root.
//! - [`manifest`]: the JSON documents.
//!
//! The entry point is [`pull_and_unpack`]`(reference, creds, dest, config)`, which returns a
//! [`PulledImage`]: the image's run settings ([`ImageConfig`]: `Env`, `WorkingDir`, `User`,
//! `Cmd`, `Entrypoint`) with the normalised reference and the manifest digest (for caching a
//! template by what it was built from).
//!
//! Registry content is treated as hostile: everything is bounded by [`PullConfig`] (download
//! size, unpacked size, manifest and config size, layer count, entry count, time), and every
//! blob is verified before it is unpacked. All layers are downloaded and verified before the
//! first one is applied; a failure part-way through unpacking leaves `dest` half-written, so
//! callers unpack into a fresh directory and discard it on error. If the pull is dropped or times
//! out while unpacking, the unpacking thread stops before its next entry. `dest` must not be
//! writable by anyone else while the pull runs (its checks are made on a tree only it changes).
//!
//! Not supported: zstd-compressed layers (a clear error), Docker schema 1 manifests, device nodes
//! (skipped with a warning; a guest mounts devtmpfs), HTTPS with certificate checks disabled.

#![forbid(unsafe_code)]

pub mod client;
pub mod manifest;
mod pull;
pub mod reference;
pub mod unpack;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{ClientError, RegistryClient};
pub use pull::pull_and_unpack;
pub use reference::{Reference, ReferenceError};
pub use unpack::{UnpackError, Unpacker};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Limits and settings of a pull.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// The most all layers and the config together may be (compressed, as downloaded).
    pub max_download_bytes: u64,
    /// The most the regular files of the unpacked image may add up to.
    pub max_unpacked_bytes: u64,
    /// The most a manifest, index or image config may be.
    pub max_manifest_bytes: u64,
    /// The most layers an image may have.
    pub max_layers: usize,
    /// The most tar entries all layers together may have.
    pub max_entries: u64,
    /// Connect time-out, time-out of a whole small request (manifest, config, token), and the
    /// longest a blob download may go without receiving anything.
    pub timeout: Duration,
    /// The most a whole pull (downloads and unpacking) may take.
    pub pull_timeout: Duration,
    /// Registries (`host` or `host:port`) reached over plain HTTP. Loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// Where downloaded blobs are kept, by digest (`<dir>/sha256/<hex>`), for later pulls.
    /// `None` downloads into a temporary directory removed after the pull.
    pub blob_cache: Option<PathBuf>,
    /// Extra PEM CA certificates trusted besides the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// The platform picked from a multi-platform image.
    pub os: String,
    /// The architecture picked from a multi-platform image (`amd64`, `arm64`...).
    pub architecture: String,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            max_download_bytes: 4 * GIB,
            max_unpacked_bytes: 4 * GIB,
            max_manifest_bytes: 4 * MIB,
            max_layers: 128,
            max_entries: 1_000_000,
            timeout: Duration::from_secs(30),
            pull_timeout: Duration::from_secs(3600),
            insecure_registries: Vec::new(),
            blob_cache: None,
            ca_bundle: None,
            os: "linux".to_string(),
            architecture: "amd64".to_string(),
        }
    }
}

/// Registry credentials (used for basic auth and to get bearer tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// How the image says a container of it runs (from the image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
}

/// The result of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The normalised reference, e.g. `docker.io/library/python:3.12-slim`.
    pub reference: String,
    /// The digest of the platform's image manifest (`sha256:...`).
    pub digest: String,
    /// The run settings from the image config.
    pub config: ImageConfig,
}

/// Errors pulling and unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// No entry of the image index is for the wanted platform.
    #[error("image {reference} has no {os}/{architecture} variant (it has: {available})")]
    NoMatchingPlatform { reference: String, os: String, architecture: String, available: String },
    /// The index points at another index, or similar nonsense.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A layer's media type is not a (gzip) tar.
    #[error("unsupported layer media type '{0}'")]
    UnsupportedLayer(String),
    /// The image has more layers than allowed.
    #[error("image has {count} layers, more than the maximum of {max}")]
    TooManyLayers { count: usize, max: usize },
    /// The layers add up to more than allowed.
    #[error("image download of {size} bytes exceeds the maximum of {max} bytes")]
    DownloadTooLarge { size: u64, max: u64 },
    /// The whole pull took longer than allowed.
    #[error("pull of {0} timed out")]
    TimedOut(String),
    /// Local file system work failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}
