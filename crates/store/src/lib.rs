//! Ember's state in embedded SQLite (one file in the data directory, WAL mode): API keys,
//! stored only as SHA-256 hashes, each belonging to a team; and the sandboxes the daemon runs,
//! so that a restarted daemon knows what to adopt; snapshots; built templates and their builds;
//! usage intervals and team quotas ([`usage`]). Schema changes are numbered migrations.
//! The database holds sandboxes' access tokens: its files are root's alone (0600).

#![forbid(unsafe_code)]

mod keys;
mod sandboxes;
mod snapshots;
mod templates;
mod usage;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

pub use keys::{KeyInfo, NewKey};
pub use sandboxes::{Lifecycle, SandboxRecord, SandboxState};
pub use snapshots::SnapshotRecord;
pub use templates::{BuildRecord, BuildStatus, TemplateRecord};
pub use usage::{month_start_ms, Quota, RunningSpans, Usage};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database row {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("the database has schema version {0}, newer than this ember understands ({1})")]
    TooNew(i64, i64),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
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
    "
    ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE sandboxes ADD COLUMN traffic_token TEXT;
",
    "
    CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        name TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        vcpus INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        UNIQUE (team, name)
    );
    CREATE TABLE template_builds (
        id TEXT PRIMARY KEY,
        template_id TEXT NOT NULL,
        tags TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        reason_step TEXT,
        created_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        defaults TEXT,
        agent_token TEXT
    );
    CREATE INDEX template_builds_template ON template_builds(template_id);
",
    "
    ALTER TABLE sandboxes ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '{}';
",
    "
    CREATE TABLE usage_intervals (
        id INTEGER PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        team TEXT NOT NULL,
        state TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER
    );
    CREATE INDEX usage_intervals_team ON usage_intervals(team, start_ms);
    CREATE INDEX usage_intervals_open ON usage_intervals(sandbox_id) WHERE end_ms IS NULL;
    CREATE TABLE team_quotas (
        team TEXT PRIMARY KEY,
        max_sandboxes INTEGER,
        max_vcpus INTEGER,
        max_memory_mib INTEGER,
        max_minutes_month INTEGER,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE daemon_heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), ms INTEGER NOT NULL);
    INSERT INTO usage_intervals (sandbox_id, team, state, vcpus, memory_mib, start_ms)
        SELECT id, team, state, vcpus, memory_mib, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM sandboxes;
",
    // Usage windows read only what overlaps them: by end (and open ones), and a sandbox's
    // earlier intervals by sandbox.
    "
    CREATE INDEX usage_intervals_team_end ON usage_intervals(team, end_ms);
    CREATE INDEX usage_intervals_sandbox ON usage_intervals(sandbox_id, start_ms);
",
    // A template's minimum free disk space (E2B's `minFreeDiskMb`) and the free space its
    // ready build gives sandboxes.
    "
    ALTER TABLE templates ADD COLUMN min_free_mib INTEGER NOT NULL DEFAULT 1024;
    ALTER TABLE template_builds ADD COLUMN free_mib INTEGER;
",
];

/// The open database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date. The
    /// database and its `-wal` and `-shm` files are made 0600, existing ones included.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Before SQLite opens the others: it creates `-wal` and `-shm` with the database's mode.
        make_private(path)?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        make_private(path)?;
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

/// The files of the database at `path`: itself, its write-ahead log and its shared memory.
pub fn database_files(path: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::path::PathBuf::from(p)
    };
    [path.to_path_buf(), with("-wal"), with("-shm")]
}

/// Makes the database files that exist readable and writable by their owner alone.
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    for file in database_files(path) {
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o777 == 0o600 => {}
            Ok(_) => std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| StoreError::Io { context: format!("chmod {}", file.display()), source })?,
            Err(_) => {}
        }
    }
    Ok(())
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

    #[test]
    fn the_database_files_are_private_even_if_they_were_not() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ember.db");
        let store = Store::open(&path).unwrap();
        store.create_key("default", "k").unwrap();
        let files = database_files(&path);
        assert!(files.iter().all(|f| f.exists()), "WAL mode makes -wal and -shm");
        assert!(files.iter().all(|f| mode(f) == 0o600), "{:?}", files.iter().map(|f| mode(f)).collect::<Vec<_>>());
        // As an older ember left them (while another connection keeps the WAL files).
        for f in &files {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let _again = Store::open(&path).unwrap();
        assert!(files.iter().all(|f| mode(f) == 0o600));
        drop(store);
    }
}
