//! Sandbox records: what the daemon needs to answer the API and to adopt a sandbox after a
//! restart. Live resources (VM, namespace) are found from the id by the runtime.

use std::collections::BTreeMap;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::{now_ms, usage, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub team: String,
    pub template: String,
    pub alias: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub access_token: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u64,
    pub started_ms: i64,
    pub end_ms: i64,
    pub state: SandboxState,
    pub allow_internet: bool,
    /// The sandbox's network settings as the API reports them (JSON; the daemon's to read).
    pub network: String,
    /// The token requests to its exposed ports need when public traffic is off.
    pub traffic_token: Option<String>,
    /// What happens when its time is up, and whether traffic wakes it when paused.
    pub lifecycle: Lifecycle,
}

/// A sandbox's lifecycle (E2B's `autoPause` and `autoResume`), kept as JSON in its record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// On time-out: pause with its memory (true) or end (false).
    #[serde(default)]
    pub auto_pause: bool,
    /// A time-out pause keeps only the filesystem (a resume boots from it).
    #[serde(default)]
    pub filesystem_only: bool,
    /// Traffic to it while paused (an envd call or a request to an exposed port) resumes it.
    #[serde(default)]
    pub auto_resume: bool,
    /// The time-out, in seconds, it was created with: an automatic resume gives it this again.
    #[serde(default)]
    pub timeout_secs: i64,
}

/// Whether a sandbox has a VM (running) or only its saved state (paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Running,
    Paused,
}

impl SandboxState {
    /// The name the database and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(SandboxState::Running),
            "paused" => Some(SandboxState::Paused),
            _ => None,
        }
    }
}

const COLUMNS: &str = "id, team, template, alias, metadata, env_vars, access_token, vcpus, memory_mib, disk_mib, \
                       started_ms, end_ms, state, allow_internet, network, traffic_token, lifecycle";

fn json_map(id: &str, text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))
}

impl Store {
    /// Records a sandbox, and opens its usage interval from its start (same transaction).
    pub fn insert_sandbox(&self, r: &SandboxRecord) -> Result<(), StoreError> {
        let to_json = |m: &BTreeMap<String, String>| serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
            params![
                r.id,
                r.team,
                r.template,
                r.alias,
                to_json(&r.metadata),
                to_json(&r.env_vars),
                r.access_token,
                r.vcpus,
                r.memory_mib,
                r.disk_mib as i64,
                r.started_ms,
                r.end_ms,
                r.state.as_str(),
                r.allow_internet,
                r.network,
                r.traffic_token,
                serde_json::to_string(&r.lifecycle).unwrap_or_else(|_| "{}".into())
            ],
        )?;
        usage::open_interval(&tx, &r.id, &r.team, r.state, (r.vcpus, r.memory_mib), r.started_ms)?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_sandbox_end(&self, id: &str, end_ms: i64) -> Result<(), StoreError> {
        self.conn().execute("UPDATE sandboxes SET end_ms = ?2 WHERE id = ?1", params![id, end_ms])?;
        Ok(())
    }

    /// Replaces the sandbox's network settings (JSON) and whether it has internet access.
    pub fn set_sandbox_network(&self, id: &str, network: &str, allow_internet: bool) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sandboxes SET network = ?2, allow_internet = ?3 WHERE id = ?1",
            params![id, network, allow_internet],
        )?;
        Ok(())
    }

    /// Sets the sandbox's state now; its usage interval follows in the same transaction.
    pub fn set_sandbox_state(&self, id: &str, state: SandboxState) -> Result<(), StoreError> {
        self.set_sandbox_state_at(id, state, now_ms())
    }

    /// [`Store::set_sandbox_state`], the change having happened at `at_ms`.
    pub fn set_sandbox_state_at(&self, id: &str, state: SandboxState, at_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("UPDATE sandboxes SET state = ?2 WHERE id = ?1", params![id, state.as_str()])?;
        usage::follow_state(&tx, id, state, at_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes the sandbox's record; its usage interval, if still open, closes now.
    pub fn delete_sandbox(&self, id: &str) -> Result<(), StoreError> {
        self.delete_sandbox_at(id, now_ms())
    }

    /// [`Store::delete_sandbox`], the sandbox having ended at `at_ms`.
    pub fn delete_sandbox_at(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        usage::close_interval(&tx, id, at_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Every sandbox record.
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM sandboxes ORDER BY started_ms, id"))?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, u32>(7)?,
                r.get::<_, u32>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, i64>(10)?,
                r.get::<_, i64>(11)?,
                r.get::<_, String>(12)?,
                r.get::<_, bool>(13)?,
                r.get::<_, String>(14)?,
                r.get::<_, Option<String>>(15)?,
                r.get::<_, String>(16)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                team,
                template,
                alias,
                metadata,
                env_vars,
                access_token,
                vcpus,
                memory_mib,
                disk,
                started,
                end,
                state,
                net,
                network,
                traffic_token,
                lifecycle,
            ) = row?;
            let state = SandboxState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(id.clone(), format!("unknown state '{state}'")))?;
            let lifecycle =
                serde_json::from_str(&lifecycle).map_err(|e| StoreError::Corrupt(id.clone(), e.to_string()))?;
            out.push(SandboxRecord {
                metadata: json_map(&id, &metadata)?,
                env_vars: json_map(&id, &env_vars)?,
                id,
                team,
                template,
                alias,
                access_token,
                vcpus,
                memory_mib,
                disk_mib: disk as u64,
                started_ms: started,
                end_ms: end,
                state,
                allow_internet: net,
                network,
                traffic_token,
                lifecycle,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            team: "t".into(),
            template: "base".into(),
            alias: None,
            metadata: [("k".to_string(), "v".to_string())].into(),
            env_vars: BTreeMap::new(),
            access_token: Some("tok".into()),
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 4096,
            started_ms: 1,
            end_ms: 2,
            state: SandboxState::Running,
            allow_internet: true,
            network: r#"{"allowOut":["198.51.100.0/24"]}"#.into(),
            traffic_token: Some("traffic".into()),
            lifecycle: Lifecycle { auto_pause: true, filesystem_only: false, auto_resume: true, timeout_secs: 60 },
        }
    }

    #[test]
    fn sandboxes_round_trip_and_update() {
        let store = Store::open_in_memory().unwrap();
        store.insert_sandbox(&record("a")).unwrap();
        store.insert_sandbox(&record("b")).unwrap();
        assert!(store.insert_sandbox(&record("a")).is_err(), "ids are unique");
        store.set_sandbox_end("a", 99).unwrap();
        store.set_sandbox_state("b", SandboxState::Paused).unwrap();
        store.set_sandbox_network("b", "{}", false).unwrap();
        store.delete_sandbox("c").unwrap();
        let all = store.sandboxes().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], SandboxRecord { end_ms: 99, ..record("a") });
        assert_eq!(all[1].state, SandboxState::Paused);
        assert_eq!((all[1].network.as_str(), all[1].allow_internet), ("{}", false));
        assert_eq!(all[0].traffic_token.as_deref(), Some("traffic"));
        store.delete_sandbox("a").unwrap();
        assert_eq!(store.sandboxes().unwrap().len(), 1);
    }
}
