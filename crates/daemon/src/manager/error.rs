//! What can go wrong in a sandbox's lifecycle, as the lifecycle code sees it. The HTTP layer
//! maps each to a status in one place (`crate::error`); internal detail (database text, paths,
//! what the guest said) is logged there and never sent to clients.

use ember_runtime::RuntimeError;
use ember_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No such sandbox for this team.
    #[error("sandbox \"{0}\" not found")]
    NotFound(String),
    /// No such thing (a template, a build) for this team: the message says what.
    #[error("{0} not found")]
    Missing(String),
    /// A request outside the bounds (time-out, maps, names).
    #[error("{0}")]
    Invalid(String),
    #[error("unknown template '{0}'")]
    UnknownTemplate(String),
    /// The daemon's limit on running sandboxes.
    #[error("{0}")]
    TooMany(String),
    /// A team's or the host's quota (paused sandboxes, snapshots).
    #[error("{0}")]
    Quota(String),
    /// The sandbox is not in a state that allows the operation.
    #[error("{0}")]
    Conflict(String),
    /// The sandbox was ended while the operation was in flight.
    #[error("sandbox \"{0}\" was killed")]
    Ended(String),
    /// The VM, the guest or the host failed.
    #[error("sandbox runtime: {0}")]
    Guest(#[from] Box<RuntimeError>),
    #[error("state database: {0}")]
    Store(#[from] StoreError),
    /// A lifecycle task panicked or was cancelled.
    #[error("lifecycle task: {0}")]
    Task(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl From<RuntimeError> for LifecycleError {
    fn from(e: RuntimeError) -> Self {
        LifecycleError::Guest(Box::new(e))
    }
}
