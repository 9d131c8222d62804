//! The agent's shared state: settings, the sandbox identity set by `/init` (env vars, access
//! token, default user and workdir), the process table and the watchers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

use crate::fs::watch::Watchers;
use crate::process::table::ProcessTable;
use crate::server::AgentConfig;
use crate::users::UserDb;

pub struct Agent {
    pub config: AgentConfig,
    pub users: UserDb,
    pub identity: RwLock<Identity>,
    pub processes: std::sync::Arc<ProcessTable>,
    pub watchers: Watchers,
}

/// What `/init` sets.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub env: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub default_user: String,
    pub default_workdir: Option<PathBuf>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Self {
        let identity = Identity { default_user: config.default_user.clone(), ..Default::default() };
        Self {
            users: UserDb::new(&config.users_root),
            config,
            identity: RwLock::new(identity),
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
}
