//! Snapshot records: a team's saved sandboxes, usable as templates by id or name. Their files
//! live in the data directory under `snapshots/ID`.

use rusqlite::{params, OptionalExtension};

use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: String,
    pub team: String,
    pub name: String,
    pub sandbox_id: String,
    pub created_ms: i64,
    /// The access token the saved agent holds (the source sandbox's), needed for its `/init`.
    pub agent_token: Option<String>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: r.get(0)?,
        team: r.get(1)?,
        name: r.get(2)?,
        sandbox_id: r.get(3)?,
        created_ms: r.get(4)?,
        agent_token: r.get(5)?,
    })
}

impl Store {
    pub fn insert_snapshot(&self, r: &SnapshotRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO snapshots (id, team, name, sandbox_id, created_ms, agent_token) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![r.id, r.team, r.name, r.sandbox_id, r.created_ms, r.agent_token],
        )?;
        Ok(())
    }

    /// The team's snapshot whose id or name is `key` (the newest, when names repeat).
    pub fn find_snapshot(&self, team: &str, key: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, team, name, sandbox_id, created_ms, agent_token FROM snapshots
                 WHERE team = ?1 AND (id = ?2 OR name = ?2) ORDER BY id = ?2 DESC, created_ms DESC LIMIT 1",
                params![team, key],
                row,
            )
            .optional()?)
    }

    /// The team's snapshots, oldest first.
    pub fn snapshots(&self, team: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, team, name, sandbox_id, created_ms, agent_token FROM snapshots WHERE team = ?1 ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map(params![team], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The ids of every team's snapshots.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM snapshots")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<(), StoreError> {
        self.conn().execute("DELETE FROM snapshots WHERE id = ?1", params![id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_found_by_id_or_name_within_a_team() {
        let store = Store::open_in_memory().unwrap();
        let rec = |id: &str, team: &str, name: &str, ms| SnapshotRecord {
            id: id.into(),
            team: team.into(),
            name: name.into(),
            sandbox_id: "sb".into(),
            created_ms: ms,
            agent_token: None,
        };
        store.insert_snapshot(&rec("s1", "a", "base-plus", 1)).unwrap();
        store.insert_snapshot(&rec("s2", "a", "base-plus", 2)).unwrap();
        store.insert_snapshot(&rec("s3", "b", "theirs", 3)).unwrap();
        assert_eq!(store.find_snapshot("a", "s1").unwrap().unwrap().id, "s1");
        assert_eq!(store.find_snapshot("a", "base-plus").unwrap().unwrap().id, "s2", "newest of a name");
        assert_eq!(store.find_snapshot("a", "s3").unwrap(), None, "another team's");
        assert_eq!(store.snapshots("a").unwrap().len(), 2);
        store.delete_snapshot("s1").unwrap();
        assert_eq!(store.snapshots("a").unwrap().len(), 1);
    }
}
