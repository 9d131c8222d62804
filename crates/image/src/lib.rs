//! Guest images: the guest kernel ([`kernel`]) and template root filesystems ([`rootfs`]),
//! built by the project on first use and cached outside the checkout ([`cache`]) under a hash of
//! everything that goes into them.

pub mod cache;
mod derive;
pub mod fit;
pub mod interpreter;
pub mod kernel;
pub mod oci;
pub mod private;
pub mod qcow2;
pub mod rootfs;
pub mod runtimes;
pub mod step;
pub mod template;
pub mod tools;

use std::path::PathBuf;

pub use cache::Cache;
pub use template::{GuestBinaries, Template, KNOWN_TEMPLATES};

/// Errors building or finding guest images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Programs the build needs are not installed.
    #[error("missing build tools: {}; install them with: apt-get install {}",
        .0.iter().map(|t| format!("{} (package {})", t.program, t.package)).collect::<Vec<_>>().join(", "),
        .0.iter().map(|t| t.package).collect::<Vec<_>>().join(" "))]
    MissingTools(Vec<tools::Tool>),
    /// A Debian package the build reads from is not installed.
    #[error("missing Debian package {0}; install it with: apt-get install {0}")]
    MissingPackage(&'static str),
    /// A build step failed; the tail of its log is included.
    #[error("{step} failed (full log: {}):\n{tail}", log.display())]
    StepFailed { step: String, log: PathBuf, tail: String },
    /// The kernel configuration did not take some options of the fragment.
    #[error("kernel config fragment options not applied (unmet dependencies?): {0}")]
    KernelConfig(String),
    /// The template name is not one Ember knows.
    #[error("unknown template '{name}'; known templates: {}", KNOWN_TEMPLATES.join(", "))]
    UnknownTemplate { name: String },
    /// The agent binary to install in the image is missing.
    #[error("guest agent binary not found at {0}; build it with `cargo build --release -p ember-agent` or set EMBER_AGENT_BIN")]
    AgentMissing(PathBuf),
    /// The code-interpreter server to install in the image is missing.
    #[error(
        "code-interpreter server binary not found at {0}; build it with scripts/build.sh or set EMBER_INTERPRETER_BIN"
    )]
    InterpreterMissing(PathBuf),
    /// Building images needs root (debootstrap, chroot, file ownership).
    #[error("building guest images needs root; run ember as root")]
    NotRoot,
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}
