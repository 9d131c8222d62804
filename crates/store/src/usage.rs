//! Metering and team quotas. Usage is kept as intervals, one per stretch of a sandbox in one
//! state (running or paused) with the shape it had: an interval opens when a sandbox is
//! recorded or changes state and closes when it changes again or ends, in the same
//! transaction as the record's change, so the two never disagree and nothing is counted
//! twice. An open interval counts up to "now" when usage is asked for: there is no work per
//! sandbox per second, and a daemon that crashes leaves open intervals that the next one
//! adopts (they simply go on) or closes (the sandbox died meanwhile).
//!
//! Team quotas are stored per team; a missing value means the daemon's default.

use rusqlite::{params, Connection, OptionalExtension};

use crate::{now_ms, SandboxState, Store, StoreError};

/// A team's limits; `None` is "no limit of its own" (the daemon's default applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Sandboxes running at once (paused ones have their own limit).
    pub max_sandboxes: Option<u64>,
    /// vCPUs of the team's running sandboxes, together.
    pub max_vcpus: Option<u64>,
    /// Memory of the team's running sandboxes, together, in MiB.
    pub max_memory_mib: Option<u64>,
    /// Running sandbox-minutes in a calendar month (UTC).
    pub max_minutes_month: Option<u64>,
}

impl Quota {
    /// This quota's values where it has them, `defaults`' elsewhere.
    pub fn over(&self, defaults: &Quota) -> Quota {
        Quota {
            max_sandboxes: self.max_sandboxes.or(defaults.max_sandboxes),
            max_vcpus: self.max_vcpus.or(defaults.max_vcpus),
            max_memory_mib: self.max_memory_mib.or(defaults.max_memory_mib),
            max_minutes_month: self.max_minutes_month.or(defaults.max_minutes_month),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Quota::default()
    }
}

/// A team's running intervals in a window, as (start, end) in Unix ms with open ones ending at
/// the window's end, and the first start of each sandbox first recorded in the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningSpans {
    pub spans: Vec<(i64, i64)>,
    pub starts: Vec<i64>,
    /// More than the limit asked for overlap the window: the lists are cut short.
    pub truncated: bool,
}

/// One sandbox's usage over a period, in milliseconds. vCPU and memory time count while it
/// runs (a paused sandbox holds no vCPU, and its memory is on disk).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub sandbox_id: String,
    pub team: String,
    pub running_ms: i64,
    pub paused_ms: i64,
    /// vCPUs × running milliseconds.
    pub vcpu_ms: i64,
    /// MiB × running milliseconds.
    pub mib_ms: i64,
    /// When it was first recorded (Unix ms), and when it ended (none while it exists).
    pub first_ms: i64,
    pub last_end_ms: Option<i64>,
}

impl Usage {
    /// Adds `other`'s amounts to this one's (team totals).
    pub fn add(&mut self, other: &Usage) {
        self.running_ms += other.running_ms;
        self.paused_ms += other.paused_ms;
        self.vcpu_ms += other.vcpu_ms;
        self.mib_ms += other.mib_ms;
    }
}

/// Closes `sandbox`'s open interval at `at_ms` (never before it opened); nothing if none is open.
pub(crate) fn close_interval(conn: &Connection, sandbox: &str, at_ms: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE usage_intervals SET end_ms = MAX(start_ms, ?2) WHERE sandbox_id = ?1 AND end_ms IS NULL",
        params![sandbox, at_ms],
    )?;
    Ok(())
}

/// Opens an interval for `sandbox` in `state` from `at_ms`, closing its open one there first.
pub(crate) fn open_interval(
    conn: &Connection,
    sandbox: &str,
    team: &str,
    state: SandboxState,
    (vcpus, memory_mib): (u32, u32),
    at_ms: i64,
) -> Result<(), StoreError> {
    close_interval(conn, sandbox, at_ms)?;
    conn.execute(
        "INSERT INTO usage_intervals (sandbox_id, team, state, vcpus, memory_mib, start_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![sandbox, team, state.as_str(), vcpus, memory_mib, at_ms],
    )?;
    Ok(())
}

/// Makes `sandbox`'s open interval one of `state` from `at_ms` (the shape and team from its
/// record): nothing if it is in that state already, one opened if none is open.
pub(crate) fn follow_state(
    conn: &Connection,
    sandbox: &str,
    state: SandboxState,
    at_ms: i64,
) -> Result<(), StoreError> {
    let open: Option<String> = conn
        .query_row(
            "SELECT state FROM usage_intervals WHERE sandbox_id = ?1 AND end_ms IS NULL",
            params![sandbox],
            |r| r.get(0),
        )
        .optional()?;
    if open.as_deref() == Some(state.as_str()) {
        return Ok(());
    }
    let record: Option<(String, u32, u32)> = conn
        .query_row("SELECT team, vcpus, memory_mib FROM sandboxes WHERE id = ?1", params![sandbox], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    match record {
        Some((team, vcpus, memory_mib)) => open_interval(conn, sandbox, &team, state, (vcpus, memory_mib), at_ms),
        None => close_interval(conn, sandbox, at_ms),
    }
}

/// Milliseconds of `[start, end)` (end `None`: open, up to `now`) within `[since, now)`, as SQL.
const OVERLAP: &str = "MAX(0, MIN(COALESCE(end_ms, ?3), ?3) - MAX(start_ms, ?2))";

/// The first millisecond of the calendar month (UTC) that `at_ms` falls in.
pub fn month_start_ms(at_ms: i64) -> i64 {
    let days = at_ms.div_euclid(86_400_000);
    let (_, _, day) = ember_envd_proto::time::civil_from_days(days);
    (days - (day - 1)) * 86_400_000
}

impl Store {
    /// Usage per sandbox between `since_ms` and `now_ms`, of `team` or of every team, ordered
    /// by team and then by when each sandbox was first recorded. Ended sandboxes are included.
    pub fn usage(&self, team: Option<&str>, since_ms: i64, now_ms: i64) -> Result<Vec<Usage>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT sandbox_id, team,
                SUM(CASE state WHEN 'running' THEN {OVERLAP} ELSE 0 END),
                SUM(CASE state WHEN 'paused' THEN {OVERLAP} ELSE 0 END),
                SUM(CASE state WHEN 'running' THEN vcpus * {OVERLAP} ELSE 0 END),
                SUM(CASE state WHEN 'running' THEN memory_mib * {OVERLAP} ELSE 0 END),
                MIN(start_ms), MAX(COALESCE(end_ms, 9223372036854775807))
             FROM usage_intervals
             WHERE (?1 IS NULL OR team = ?1) AND start_ms < ?3 AND (end_ms IS NULL OR end_ms > ?2)
             GROUP BY sandbox_id, team ORDER BY team, MIN(start_ms), sandbox_id"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![team, since_ms, now_ms], |r| {
            let last: i64 = r.get(7)?;
            Ok(Usage {
                sandbox_id: r.get(0)?,
                team: r.get(1)?,
                running_ms: r.get(2)?,
                paused_ms: r.get(3)?,
                vcpu_ms: r.get(4)?,
                mib_ms: r.get(5)?,
                first_ms: r.get(6)?,
                last_end_ms: (last != i64::MAX).then_some(last),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Milliseconds `team`'s sandboxes ran, together, between `since_ms` and `now_ms`.
    pub fn running_ms(&self, team: &str, since_ms: i64, now_ms: i64) -> Result<i64, StoreError> {
        let sql = format!(
            "SELECT COALESCE(SUM({OVERLAP}), 0) FROM usage_intervals
             WHERE team = ?1 AND state = 'running' AND start_ms < ?3 AND (end_ms IS NULL OR end_ms > ?2)"
        );
        Ok(self.conn().query_row(&sql, params![team, since_ms, now_ms], |r| r.get(0))?)
    }

    /// Whole running sandbox-minutes `team` has used in the current calendar month (UTC).
    pub fn minutes_this_month(&self, team: &str, now_ms: i64) -> Result<u64, StoreError> {
        let ms = self.running_ms(team, month_start_ms(now_ms), now_ms)?;
        Ok(u64::try_from(ms / 60_000).unwrap_or(0))
    }

    /// `team`'s running intervals that overlap `[since_ms, until_ms)`, as (start, end) with
    /// open ones ending at `until_ms`, and the first start of each sandbox in that window
    /// (for series of concurrent sandboxes and start rates). At most `limit` of each.
    pub fn running_spans(
        &self,
        team: &str,
        since_ms: i64,
        until_ms: i64,
        limit: usize,
    ) -> Result<RunningSpans, StoreError> {
        let conn = self.conn();
        // One more than the limit, to know whether the lists were cut short.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        let mut stmt = conn.prepare(
            "SELECT start_ms, MIN(COALESCE(end_ms, ?3), ?3) FROM usage_intervals
             WHERE team = ?1 AND state = 'running' AND start_ms < ?3 AND (end_ms IS NULL OR end_ms > ?2)
             ORDER BY start_ms LIMIT ?4",
        )?;
        let mut spans = stmt
            .query_map(params![team, since_ms, until_ms, limit + 1], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        // A sandbox's first start is in the window when it has an interval starting there and
        // none before it (its intervals follow one another).
        let mut stmt = conn.prepare(
            "SELECT MIN(i.start_ms) AS first FROM usage_intervals i
             WHERE i.team = ?1 AND i.start_ms >= ?2 AND i.start_ms < ?3
               AND NOT EXISTS (SELECT 1 FROM usage_intervals p WHERE p.sandbox_id = i.sandbox_id AND p.start_ms < ?2)
             GROUP BY i.sandbox_id ORDER BY first LIMIT ?4",
        )?;
        let mut starts = stmt
            .query_map(params![team, since_ms, until_ms, limit + 1], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let cap = usize::try_from(limit).unwrap_or(usize::MAX);
        let truncated = spans.len() > cap || starts.len() > cap;
        spans.truncate(cap);
        starts.truncate(cap);
        Ok(RunningSpans { spans, starts, truncated })
    }

    /// Closes `sandbox`'s open interval at `at_ms` (it ended then, or was found dead).
    pub fn end_usage(&self, sandbox: &str, at_ms: i64) -> Result<(), StoreError> {
        close_interval(&self.conn(), sandbox, at_ms)
    }

    /// Makes sure a recorded sandbox has an open interval of `state` (one from an older Ember
    /// that did not meter, or one whose state changed without the database knowing): opened at
    /// `at_ms` if missing or of another state.
    pub fn follow_usage(&self, sandbox: &str, state: SandboxState, at_ms: i64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        follow_state(&tx, sandbox, state, at_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that a daemon is alive at `at_ms` (a sandbox found dead by the next daemon
    /// died after the last such time: had it died earlier, this daemon would have seen it).
    pub fn heartbeat(&self, at_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO daemon_heartbeat (id, ms) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET ms = ?1",
            params![at_ms],
        )?;
        Ok(())
    }

    /// The last time a daemon said it was alive, if one ever did.
    pub fn last_heartbeat(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row("SELECT ms FROM daemon_heartbeat WHERE id = 1", [], |r| r.get(0)).optional()?)
    }

    /// Sets `team`'s quota (an empty one removes it).
    pub fn set_quota(&self, team: &str, q: &Quota) -> Result<(), StoreError> {
        let conn = self.conn();
        if q.is_empty() {
            conn.execute("DELETE FROM team_quotas WHERE team = ?1", params![team])?;
            return Ok(());
        }
        let v = |x: Option<u64>| x.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        conn.execute(
            "INSERT INTO team_quotas (team, max_sandboxes, max_vcpus, max_memory_mib, max_minutes_month, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(team) DO UPDATE SET max_sandboxes = ?2, max_vcpus = ?3, max_memory_mib = ?4,
                max_minutes_month = ?5, updated_ms = ?6",
            params![team, v(q.max_sandboxes), v(q.max_vcpus), v(q.max_memory_mib), v(q.max_minutes_month), now_ms()],
        )?;
        Ok(())
    }

    /// `team`'s own quota (empty if it has none).
    pub fn quota(&self, team: &str) -> Result<Quota, StoreError> {
        Ok(self.quotas(Some(team))?.pop().map(|(_, q)| q).unwrap_or_default())
    }

    /// The teams with a quota of their own, by name.
    pub fn quotas(&self, team: Option<&str>) -> Result<Vec<(String, Quota)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT team, max_sandboxes, max_vcpus, max_memory_mib, max_minutes_month FROM team_quotas
             WHERE ?1 IS NULL OR team = ?1 ORDER BY team",
        )?;
        let v = |x: Option<i64>| x.and_then(|n| u64::try_from(n).ok());
        let rows = stmt.query_map(params![team], |r| {
            Ok((
                r.get(0)?,
                Quota {
                    max_sandboxes: v(r.get(1)?),
                    max_vcpus: v(r.get(2)?),
                    max_memory_mib: v(r.get(3)?),
                    max_minutes_month: v(r.get(4)?),
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SandboxRecord;

    fn record(id: &str, team: &str, started_ms: i64) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            team: team.into(),
            template: "base".into(),
            alias: None,
            metadata: Default::default(),
            env_vars: Default::default(),
            access_token: None,
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 1024,
            started_ms,
            end_ms: started_ms + 300_000,
            state: SandboxState::Running,
            allow_internet: true,
            network: "{}".into(),
            traffic_token: None,
            lifecycle: Default::default(),
        }
    }

    fn open_count(store: &Store, id: &str) -> i64 {
        store
            .conn()
            .query_row("SELECT COUNT(*) FROM usage_intervals WHERE sandbox_id = ?1 AND end_ms IS NULL", [id], |r| {
                r.get(0)
            })
            .unwrap()
    }

    #[test]
    fn intervals_follow_the_record_and_count_open_ones_up_to_now() {
        let store = Store::open_in_memory().unwrap();
        store.insert_sandbox(&record("a", "t", 1_000)).unwrap();
        store.set_sandbox_state_at("a", SandboxState::Paused, 11_000).unwrap();
        // The same state again (an adopt that agrees) opens nothing.
        store.set_sandbox_state_at("a", SandboxState::Paused, 12_000).unwrap();
        store.follow_usage("a", SandboxState::Paused, 13_000).unwrap();
        assert_eq!(open_count(&store, "a"), 1);
        store.set_sandbox_state_at("a", SandboxState::Running, 21_000).unwrap();
        let u = store.usage(Some("t"), 0, 26_000).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].running_ms, u[0].paused_ms), (15_000, 10_000));
        assert_eq!(u[0].vcpu_ms, 30_000);
        assert_eq!(u[0].mib_ms, 512 * 15_000);
        assert_eq!(u[0].last_end_ms, None);
        // Ended: closed once; a second close (the record's deletion) changes nothing.
        store.end_usage("a", 30_000).unwrap();
        store.delete_sandbox_at("a", 40_000).unwrap();
        let u = store.usage(None, 0, 100_000).unwrap();
        assert_eq!((u[0].running_ms, u[0].paused_ms, u[0].last_end_ms), (19_000, 10_000, Some(30_000)));
        // A window: only what falls in it.
        let u = store.usage(None, 5_000, 25_000).unwrap();
        assert_eq!((u[0].running_ms, u[0].paused_ms), (10_000, 10_000));
        assert!(store.usage(Some("other"), 0, 100_000).unwrap().is_empty());
    }

    #[test]
    fn reopening_never_double_counts() {
        let store = Store::open_in_memory().unwrap();
        store.insert_sandbox(&record("a", "t", 0)).unwrap();
        // Adopted twice by restarted daemons: still one open interval.
        store.follow_usage("a", SandboxState::Running, 5_000).unwrap();
        store.follow_usage("a", SandboxState::Running, 6_000).unwrap();
        assert_eq!(open_count(&store, "a"), 1);
        assert_eq!(store.running_ms("t", 0, 10_000).unwrap(), 10_000);
        // A close before the interval opened closes it empty, never negative.
        store.end_usage("a", -5).unwrap();
        assert_eq!(store.running_ms("t", 0, 10_000).unwrap(), 0);
    }

    #[test]
    fn minutes_are_of_the_calendar_month() {
        // 2026-03-01T00:00:00Z and an hour before it.
        let march = 1_772_323_200_000;
        assert_eq!(month_start_ms(march + 3_600_000 * 24 * 20), march);
        assert_eq!(month_start_ms(march), march);
        assert_eq!(month_start_ms(march - 1), 1_769_904_000_000, "2026-02-01");
        assert_eq!(month_start_ms(951_782_400_000 + 1), 949_363_200_000, "2000-02-29 is in February");
        let store = Store::open_in_memory().unwrap();
        store.insert_sandbox(&record("a", "t", march - 3_600_000)).unwrap();
        let now = march + 30 * 60_000 + 59_000;
        assert_eq!(store.minutes_this_month("t", now).unwrap(), 30);
        assert_eq!(store.running_ms("t", 0, now).unwrap(), 90 * 60_000 + 59_000);
    }

    #[test]
    fn heartbeats_keep_the_latest() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.last_heartbeat().unwrap(), None);
        store.heartbeat(5).unwrap();
        store.heartbeat(7).unwrap();
        assert_eq!(store.last_heartbeat().unwrap(), Some(7));
    }

    #[test]
    fn quotas_override_defaults_and_clear() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.quota("t").unwrap().is_empty());
        let q = Quota { max_sandboxes: Some(2), max_minutes_month: Some(100), ..Default::default() };
        store.set_quota("t", &q).unwrap();
        assert_eq!(store.quota("t").unwrap(), q);
        let defaults = Quota { max_sandboxes: Some(10), max_vcpus: Some(8), ..Default::default() };
        let eff = store.quota("t").unwrap().over(&defaults);
        assert_eq!((eff.max_sandboxes, eff.max_vcpus, eff.max_memory_mib), (Some(2), Some(8), None));
        assert_eq!(store.quotas(None).unwrap().len(), 1);
        store.set_quota("t", &Quota::default()).unwrap();
        assert!(store.quotas(None).unwrap().is_empty());
    }

    #[test]
    fn spans_and_starts_for_team_series() {
        let store = Store::open_in_memory().unwrap();
        store.insert_sandbox(&record("a", "t", 1_000)).unwrap();
        store.insert_sandbox(&record("b", "t", 3_000)).unwrap();
        store.set_sandbox_state_at("b", SandboxState::Paused, 4_000).unwrap();
        store.set_sandbox_state_at("b", SandboxState::Running, 6_000).unwrap();
        let got = store.running_spans("t", 0, 10_000, 100).unwrap();
        assert_eq!(got.spans, vec![(1_000, 10_000), (3_000, 4_000), (6_000, 10_000)]);
        assert_eq!(got.starts, vec![1_000, 3_000], "a resume is not a start");
        assert!(!got.truncated);
        // From 2 s on: a started before the window (not a start there), b started in it.
        let later = store.running_spans("t", 2_000, 10_000, 100).unwrap();
        assert_eq!(later.starts, vec![3_000]);
        assert_eq!(later.spans, vec![(1_000, 10_000), (3_000, 4_000), (6_000, 10_000)]);
        // A window after b's pause starts nothing and sees both running.
        assert!(store.running_spans("t", 7_000, 10_000, 100).unwrap().starts.is_empty());
        let cut = store.running_spans("t", 0, 10_000, 2).unwrap();
        assert!(cut.truncated && cut.spans.len() == 2);
    }

    /// The metering cost: computing usage for 100 open intervals (what `ember usage` and a
    /// quota check do; nothing runs per sandbox per second). Printed, not asserted.
    #[test]
    fn cost_of_usage_for_100_running_sandboxes() {
        let store = Store::open_in_memory().unwrap();
        for i in 0..100 {
            store.insert_sandbox(&record(&format!("s{i}"), "t", 1_000 + i)).unwrap();
        }
        let rounds = 200;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            assert_eq!(store.usage(Some("t"), 0, 1_000_000).unwrap().len(), 100);
        }
        let per = started.elapsed() / rounds;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            store.minutes_this_month("t", 1_000_000).unwrap();
        }
        let check = started.elapsed() / rounds;
        // The one periodic write (every 5 s, whatever the number of sandboxes), on a real file.
        let dir = tempfile::tempdir().unwrap();
        let on_disk = Store::open(&dir.path().join("ember.db")).unwrap();
        let started = std::time::Instant::now();
        for i in 0..20 {
            on_disk.heartbeat(i).unwrap();
        }
        let beat = started.elapsed() / 20;
        println!(
            "metering cost: usage of 100 open intervals in {per:?}; a quota's minutes check in {check:?}; \
             a heartbeat (every 5 s) in {beat:?}"
        );
    }
}
