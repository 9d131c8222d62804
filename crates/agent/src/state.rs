//! The agent's shared state: settings, the sandbox identity set by `/init` (env vars, access
//! token, default user and workdir, saved in the state file so a restarted server keeps them),
//! the process table and the watchers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::RwLock;

use crate::fs::watch::Watchers;
use crate::process::table::ProcessTable;
use crate::server::AgentConfig;
use crate::statefile::{self, StateError};
use crate::users::UserDb;

pub struct Agent {
    pub config: AgentConfig,
    pub users: UserDb,
    identity: RwLock<Identity>,
    /// Serialises `/init`s, so that the token check, the saved state and the one in memory
    /// agree.
    pub init_lock: tokio::sync::Mutex<()>,
    /// The CA bundle this process last installed (PEM), so an `/init` that repeats it (every
    /// create of a pooled sandbox does) skips reading and comparing the guest's bundle files.
    pub installed_ca: std::sync::Mutex<Option<String>>,
    pub processes: std::sync::Arc<ProcessTable>,
    pub watchers: Watchers,
}

/// What `/init` sets. Without an access token the agent refuses every call but `GET /health`
/// and `/init`.
#[derive(Clone, Default)]
pub struct Identity {
    /// The caller's env vars (`envVars`).
    pub env: BTreeMap<String, String>,
    /// Env vars the agent adds for what `/init` installed ([`crate::ca::NODE_ENV`] while extra
    /// CA certificates are), kept apart from `env` so a later `envVars` does not drop them.
    pub agent_env: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub default_user: String,
    pub default_workdir: Option<PathBuf>,
}

/// Leaves the token out.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("agent_env", &self.agent_env)
            .field("access_token", &self.access_token.as_ref().map(|_| "<redacted>"))
            .field("default_user", &self.default_user)
            .field("default_workdir", &self.default_workdir)
            .finish()
    }
}

impl Identity {
    /// The sandbox env vars every process gets: [`Self::agent_env`] overridden by
    /// [`Self::env`], so the caller's value wins.
    pub fn process_env(&self) -> BTreeMap<String, String> {
        let mut all = self.agent_env.clone();
        all.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }
}

impl Agent {
    /// The agent with the state saved in `config.state_file`, if any. A state file that cannot
    /// be read or trusted is logged and ignored: the agent then holds no token and refuses every
    /// call until `/init`.
    pub fn new(config: AgentConfig) -> Self {
        let fresh = Identity { default_user: config.default_user.clone(), ..Default::default() };
        let identity = match config.state_file.as_deref().map(statefile::load) {
            None | Some(Ok(None)) => fresh,
            Some(Ok(Some(saved))) => {
                tracing::info!(initialised = saved.access_token.is_some(), "restored the state /init set");
                saved
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "ignoring the saved state; refusing every call until /init");
                fresh
            }
        };
        Self {
            users: UserDb::new(&config.users_root),
            config,
            identity: RwLock::new(identity),
            init_lock: tokio::sync::Mutex::new(()),
            installed_ca: std::sync::Mutex::new(None),
            processes: std::sync::Arc::default(),
            watchers: Watchers::default(),
        }
    }

    pub fn identity(&self) -> Identity {
        self.identity.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn access_token(&self) -> Option<String> {
        self.identity.read().unwrap_or_else(|e| e.into_inner()).access_token.clone()
    }

    /// Whether the agent holds an access token (and so serves calls that carry it).
    pub fn initialised(&self) -> bool {
        self.identity.read().unwrap_or_else(|e| e.into_inner()).access_token.is_some()
    }

    /// Saves `next` in the state file, then makes it the agent's identity. If saving fails the
    /// identity stays as it was, so memory never holds what a restart would lose.
    pub async fn set_identity(&self, next: Identity) -> Result<(), StateError> {
        if let Some(path) = self.config.state_file.clone() {
            let copy = next.clone();
            tokio::task::spawn_blocking(move || statefile::save(&path, &copy)).await.map_err(|e| {
                StateError::Io {
                    path: self.config.state_file.clone().unwrap_or_default(),
                    source: std::io::Error::other(e),
                }
            })??;
        }
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}
