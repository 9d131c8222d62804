//! Built templates: a team's template (id and name, unique in the team) and its builds. A build
//! carries tags (`latest` unless others are given); `name:tag` means the newest ready build with
//! that tag. A ready build's files live in the data directory under `templates/BUILD_ID`.

use rusqlite::{params, OptionalExtension};

use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRecord {
    pub id: String,
    pub team: String,
    pub name: String,
    pub created_ms: i64,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The free disk space (MiB) its sandboxes get at least.
    pub min_free_mib: u32,
}

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    Waiting,
    Building,
    Ready,
    Error,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Waiting => "waiting",
            BuildStatus::Building => "building",
            BuildStatus::Ready => "ready",
            BuildStatus::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [BuildStatus::Waiting, BuildStatus::Building, BuildStatus::Ready, BuildStatus::Error]
            .into_iter()
            .find(|b| b.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    pub id: String,
    pub template_id: String,
    pub tags: Vec<String>,
    pub status: BuildStatus,
    /// Why it failed, and at which step (`base`, `finalize` or a number).
    pub reason: Option<String>,
    pub reason_step: Option<String>,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// The sandboxes' defaults (JSON: user, workdir, env), once ready.
    pub defaults: Option<String>,
    /// The token the saved agent holds, once ready.
    pub agent_token: Option<String>,
    /// The free disk space (MiB) its sandboxes start with, once ready.
    pub free_mib: Option<u32>,
}

fn template_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRecord> {
    Ok(TemplateRecord {
        id: r.get(0)?,
        team: r.get(1)?,
        name: r.get(2)?,
        created_ms: r.get(3)?,
        vcpus: r.get(4)?,
        memory_mib: r.get(5)?,
        min_free_mib: r.get(6)?,
    })
}

const TEMPLATE_COLUMNS: &str = "id, team, name, created_ms, vcpus, memory_mib, min_free_mib";
const BUILD_COLUMNS: &str =
    "id, template_id, tags, status, reason, reason_step, created_ms, finished_ms, defaults, agent_token, free_mib";

fn build_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRecord> {
    let tags: String = r.get(2)?;
    let status: String = r.get(3)?;
    let corrupt = |what: &str| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("bad {what}").into())
    };
    Ok(BuildRecord {
        id: r.get(0)?,
        template_id: r.get(1)?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags"))?,
        status: BuildStatus::parse(&status).ok_or_else(|| corrupt("status"))?,
        reason: r.get(4)?,
        reason_step: r.get(5)?,
        created_ms: r.get(6)?,
        finished_ms: r.get(7)?,
        defaults: r.get(8)?,
        agent_token: r.get(9)?,
        free_mib: r.get(10)?,
    })
}

impl Store {
    /// The team's template named `name`, made (with `id`, `vcpus`, `memory_mib`,
    /// `min_free_mib`) if it has none; an existing one keeps its id and takes the new shape.
    pub fn upsert_template(&self, new: &TemplateRecord) -> Result<TemplateRecord, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO templates (id, team, name, created_ms, vcpus, memory_mib, min_free_mib)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(team, name) DO UPDATE SET vcpus = excluded.vcpus, memory_mib = excluded.memory_mib,
             min_free_mib = excluded.min_free_mib",
            params![new.id, new.team, new.name, new.created_ms, new.vcpus, new.memory_mib, new.min_free_mib],
        )?;
        Ok(conn.query_row(
            &format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE team = ?1 AND name = ?2"),
            params![new.team, new.name],
            template_row,
        )?)
    }

    /// The team's template whose id or name is `key`.
    pub fn find_template(&self, team: &str, key: &str) -> Result<Option<TemplateRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE team = ?1 AND (id = ?2 OR name = ?2)"),
                params![team, key],
                template_row,
            )
            .optional()?)
    }

    /// The team's templates, oldest first.
    pub fn templates(&self, team: &str) -> Result<Vec<TemplateRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare(&format!("SELECT {TEMPLATE_COLUMNS} FROM templates WHERE team = ?1 ORDER BY created_ms, id"))?;
        let rows = stmt.query_map(params![team], template_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a template and its build records.
    pub fn delete_template(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute("DELETE FROM template_builds WHERE template_id = ?1", params![id])?;
        conn.execute("DELETE FROM templates WHERE id = ?1", params![id])?;
        Ok(())
    }

    pub fn insert_build(&self, b: &BuildRecord) -> Result<(), StoreError> {
        self.conn().execute(
            &format!(
                "INSERT INTO template_builds ({BUILD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            params![
                b.id,
                b.template_id,
                serde_json::to_string(&b.tags).unwrap_or_else(|_| "[]".into()),
                b.status.as_str(),
                b.reason,
                b.reason_step,
                b.created_ms,
                b.finished_ms,
                b.defaults,
                b.agent_token,
                b.free_mib
            ],
        )?;
        Ok(())
    }

    /// Records a build's new status (and, when it ends, why, its defaults, token and free space).
    pub fn update_build(&self, b: &BuildRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE template_builds SET status = ?2, reason = ?3, reason_step = ?4, finished_ms = ?5, defaults = ?6,
             agent_token = ?7, free_mib = ?8 WHERE id = ?1",
            params![
                b.id,
                b.status.as_str(),
                b.reason,
                b.reason_step,
                b.finished_ms,
                b.defaults,
                b.agent_token,
                b.free_mib
            ],
        )?;
        Ok(())
    }

    pub fn find_build(&self, template_id: &str, build_id: &str) -> Result<Option<BuildRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {BUILD_COLUMNS} FROM template_builds WHERE template_id = ?1 AND id = ?2"),
                params![template_id, build_id],
                build_row,
            )
            .optional()?)
    }

    /// The template's builds, newest first.
    pub fn builds(&self, template_id: &str) -> Result<Vec<BuildRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {BUILD_COLUMNS} FROM template_builds WHERE template_id = ?1 ORDER BY created_ms DESC, id DESC"
        ))?;
        let rows = stmt.query_map(params![template_id], build_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest ready build of the template that carries `tag`.
    pub fn ready_build(&self, template_id: &str, tag: &str) -> Result<Option<BuildRecord>, StoreError> {
        Ok(self
            .builds(template_id)?
            .into_iter()
            .find(|b| b.status == BuildStatus::Ready && b.tags.iter().any(|t| t == tag)))
    }

    /// Marks builds left waiting or building (by a daemon that stopped) as failed; returns them.
    pub fn fail_unfinished_builds(&self, reason: &str, now_ms: i64) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM template_builds WHERE status IN ('waiting', 'building')")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        conn.execute(
            "UPDATE template_builds SET status = 'error', reason = ?1, reason_step = 'base', finished_ms = ?2
             WHERE status IN ('waiting', 'building')",
            params![reason, now_ms],
        )?;
        Ok(ids)
    }

    /// The ids of every build (of every team).
    pub fn build_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id FROM template_builds")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(id: &str, team: &str, name: &str) -> TemplateRecord {
        TemplateRecord {
            id: id.into(),
            team: team.into(),
            name: name.into(),
            created_ms: 1,
            vcpus: 2,
            memory_mib: 512,
            min_free_mib: 1024,
        }
    }

    fn build(id: &str, tpl: &str, tags: &[&str], ms: i64) -> BuildRecord {
        BuildRecord {
            id: id.into(),
            template_id: tpl.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            status: BuildStatus::Waiting,
            reason: None,
            reason_step: None,
            created_ms: ms,
            finished_ms: None,
            defaults: None,
            agent_token: None,
            free_mib: None,
        }
    }

    #[test]
    fn templates_are_per_team_and_names_are_unique_in_a_team() {
        let store = Store::open_in_memory().unwrap();
        let a = store.upsert_template(&template("t1", "a", "web")).unwrap();
        assert_eq!(a.id, "t1");
        let again = store.upsert_template(&TemplateRecord { vcpus: 4, ..template("t2", "a", "web") }).unwrap();
        assert_eq!((again.id.as_str(), again.vcpus), ("t1", 4), "the same name keeps its id");
        store.upsert_template(&template("t3", "b", "web")).unwrap();
        assert_eq!(store.find_template("a", "web").unwrap().unwrap().id, "t1");
        assert_eq!(store.find_template("a", "t3").unwrap(), None, "another team's");
        assert_eq!(store.templates("b").unwrap().len(), 1);
    }

    #[test]
    fn tags_pick_the_newest_ready_build_and_unfinished_builds_fail_at_start() {
        let store = Store::open_in_memory().unwrap();
        store.upsert_template(&template("t1", "a", "web")).unwrap();
        store.insert_build(&build("b1", "t1", &["latest", "v1"], 1)).unwrap();
        store.insert_build(&build("b2", "t1", &["latest"], 2)).unwrap();
        store.insert_build(&build("b3", "t1", &["latest"], 3)).unwrap();
        for id in ["b1", "b2"] {
            let mut b = store.find_build("t1", id).unwrap().unwrap();
            b.status = BuildStatus::Ready;
            b.defaults = Some("{}".into());
            store.update_build(&b).unwrap();
        }
        assert_eq!(store.ready_build("t1", "latest").unwrap().unwrap().id, "b2");
        assert_eq!(store.ready_build("t1", "v1").unwrap().unwrap().id, "b1");
        assert_eq!(store.ready_build("t1", "v2").unwrap(), None);
        assert_eq!(store.fail_unfinished_builds("restarted", 9).unwrap(), vec!["b3".to_string()]);
        let b3 = store.find_build("t1", "b3").unwrap().unwrap();
        assert_eq!((b3.status, b3.reason.as_deref()), (BuildStatus::Error, Some("restarted")));
        store.delete_template("t1").unwrap();
        assert!(store.builds("t1").unwrap().is_empty());
    }
}
