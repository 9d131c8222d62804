//! Ember's state in embedded SQLite (one file in the data directory, WAL mode): API keys,
//! stored only as SHA-256 hashes, each belonging to a team; and the sandboxes the daemon runs,
//! so that a restarted daemon knows what to adopt. Schema changes are numbered migrations.

mod keys;
mod sandboxes;
mod snapshots;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use keys::{KeyInfo, NewKey};
pub use sandboxes::SandboxRecord;
pub use snapshots::SnapshotRecord;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database row {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("the database has schema version {0}, newer than this ember understands ({1})")]
    TooNew(i64, i64),
}

/// Schema migrations, applied in order; index + 1 is the version they bring.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        team TEXT NOT NULL,
        name TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        template TEXT NOT NULL,
        alias TEXT,
        metadata TEXT NOT NULL,
        env_vars TEXT NOT NULL,
        access_token TEXT,
        vcpus INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        disk_mib INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        allow_internet INTEGER NOT NULL
    );
    CREATE INDEX sandboxes_team ON sandboxes(team);
",
    "
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        name TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        agent_token TEXT
    );
    CREATE INDEX snapshots_team ON snapshots(team);
",
];

/// The open database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        Self::setup(conn)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let latest = MIGRATIONS.len() as i64;
        if version > latest {
            return Err(StoreError::TooNew(version, latest));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ember.db");
        drop(Store::open(&path).unwrap());
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew(99, _))));
    }
}
