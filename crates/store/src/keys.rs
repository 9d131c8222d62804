//! API keys: `e2b_` + 40 hex digits (the shape older SDKs insist on), stored as SHA-256 hashes
//! with the team they belong to.

use rand::Rng;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::{now_ms, Store, StoreError};

/// A key just created; the only time its plaintext is known.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub team: String,
}

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub prefix: String,
    pub team: String,
    pub name: String,
    pub created_ms: i64,
    pub revoked: bool,
}

/// The stored hash of a key.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill(&mut buf[..]);
    hex::encode(buf)
}

impl Store {
    /// Creates a key for `team`.
    pub fn create_key(&self, team: &str, name: &str) -> Result<NewKey, StoreError> {
        let key = format!("e2b_{}", random_hex(20));
        let id = format!("key_{}", random_hex(6));
        self.conn().execute(
            "INSERT INTO api_keys (id, hash, prefix, team, name, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, hash_key(&key), &key[..8], team, name, now_ms()],
        )?;
        Ok(NewKey { id, key, team: team.to_string() })
    }

    /// The team of a valid, unrevoked key.
    pub fn team_for_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT team FROM api_keys WHERE hash = ?1 AND revoked_ms IS NULL",
                params![hash_key(key)],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, prefix, team, name, created_ms, revoked_ms FROM api_keys ORDER BY created_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok(KeyInfo {
                id: r.get(0)?,
                prefix: r.get(1)?,
                team: r.get(2)?,
                name: r.get(3)?,
                created_ms: r.get(4)?,
                revoked: r.get::<_, Option<i64>>(5)?.is_some(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes key `id`; false if there is no such unrevoked key.
    pub fn revoke_key(&self, id: &str) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, now_ms()],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_scoped_to_teams_and_revocable() {
        let store = Store::open_in_memory().unwrap();
        let a = store.create_key("team-a", "ci").unwrap();
        let b = store.create_key("team-b", "dev").unwrap();
        assert!(a.key.starts_with("e2b_") && a.key.len() == 44);
        assert_eq!(store.team_for_key(&a.key).unwrap().as_deref(), Some("team-a"));
        assert_eq!(store.team_for_key(&b.key).unwrap().as_deref(), Some("team-b"));
        assert_eq!(store.team_for_key("e2b_nope").unwrap(), None);
        let raw: String = store.conn().query_row("SELECT group_concat(hash) FROM api_keys", [], |r| r.get(0)).unwrap();
        assert!(!raw.contains(&a.key[4..]), "plaintext never stored");
        assert!(store.revoke_key(&a.id).unwrap());
        assert!(!store.revoke_key(&a.id).unwrap());
        assert_eq!(store.team_for_key(&a.key).unwrap(), None);
        let listed = store.list_keys().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].revoked && !listed[1].revoked);
    }
}
