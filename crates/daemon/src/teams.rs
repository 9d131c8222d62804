//! A team's metrics over time (`GET /teams/{teamID}/metrics` and `.../metrics/max`), derived
//! from the usage intervals the store keeps: how many of its sandboxes ran at each point, and
//! how many it started per second. Only the caller's own team (another is "not found").

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use ember_api::{MaxTeamMetric, TeamMetric};
use ember_store::RunningSpans;
use serde::Deserialize;

use crate::auth::Team;
use crate::error::ApiError;
use crate::manager::Manager;
use crate::sandboxes::rfc3339;

/// The interval asked for when none is: the last hour.
const DEFAULT_SPAN_SECS: i64 = 3600;
/// The longest interval one answer covers.
const MAX_SPAN_SECS: i64 = 31 * 86_400;
/// Most points in a series, and the shortest step between them.
const MAX_POINTS: i64 = 100;
const MIN_STEP_SECS: i64 = 5;
/// Most intervals (and starts) read for one answer.
const MAX_SPANS: usize = 100_000;

#[derive(Debug, Default, Deserialize)]
pub struct MetricsQuery {
    /// Unix seconds.
    start: Option<i64>,
    end: Option<i64>,
    /// For `/max`: `concurrent_sandboxes` or `sandbox_start_rate`.
    metric: Option<String>,
}

/// The window and its step, in Unix seconds, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: i64,
    end: i64,
    step: i64,
}

impl Window {
    fn of(q: &MetricsQuery, now: i64) -> Result<Self, ApiError> {
        let end = q.end.unwrap_or(now);
        let start = q.start.unwrap_or(end.saturating_sub(DEFAULT_SPAN_SECS));
        // Up to the year 9999, so that milliseconds never overflow.
        if start < 0 || end <= start || end > 253_402_300_799 || end - start > MAX_SPAN_SECS {
            return Err(ApiError::BadRequest(format!(
                "start and end are Unix seconds with start before end, at most {MAX_SPAN_SECS} s apart"
            )));
        }
        let step = ((end - start + MAX_POINTS - 1) / MAX_POINTS).max(MIN_STEP_SECS);
        Ok(Window { start, end, step })
    }

    /// The points' times: from the start, one per step, before the end.
    fn points(&self) -> impl Iterator<Item = i64> + '_ {
        (0..).map(|k| self.start + k * self.step).take_while(|t| *t < self.end)
    }
}

/// The caller's own team is the only one it may ask about (another is "not found").
fn own(team: &Team, team_id: &str) -> Result<(), ApiError> {
    match team_id == team.0 {
        true => Ok(()),
        false => Err(ApiError::NotFound(format!("team \"{team_id}\" not found"))),
    }
}

fn spans(m: &Manager, team: &Team, w: &Window) -> Result<RunningSpans, ApiError> {
    let until = (w.end * 1000).min(ember_store::now_ms());
    let spans =
        m.store().running_spans(&team.0, w.start * 1000, until.max(w.start * 1000), MAX_SPANS).map_err(|e| {
            tracing::error!(error = %e, "reading usage");
            ApiError::Internal("reading the team's usage failed".into())
        })?;
    if spans.truncated {
        return Err(ApiError::BadRequest(format!(
            "more than {MAX_SPANS} sandbox runs in this window; ask for a shorter one"
        )));
    }
    Ok(spans)
}

/// The series of `w`: at each point, the sandboxes running then and the start rate of its step.
fn series(RunningSpans { spans, starts, .. }: &RunningSpans, w: &Window) -> Vec<TeamMetric> {
    w.points()
        .map(|t| {
            let ms = t * 1000;
            let running = spans.iter().filter(|(s, e)| *s <= ms && ms < *e).count();
            let started = starts.iter().filter(|s| **s >= ms && **s < ms + w.step * 1000).count();
            TeamMetric {
                timestamp: rfc3339(ms),
                timestamp_unix: t,
                concurrent_sandboxes: u32::try_from(running).unwrap_or(u32::MAX),
                sandbox_start_rate: started as f64 / w.step as f64,
            }
        })
        .collect()
}

/// The most sandboxes running at once in the window (exact, not sampled), and when first.
fn max_concurrent(RunningSpans { spans, .. }: &RunningSpans, w: &Window) -> (i64, u32) {
    let since = w.start * 1000;
    let mut events: Vec<(i64, i32)> =
        spans.iter().flat_map(|&(s, e)| [(s.max(since), 1), (e, -1)]).filter(|(t, _)| *t >= since).collect();
    // Ends before starts at the same time: a sandbox replaced in that millisecond is not two.
    events.sort_unstable();
    let (mut now, mut best) = (0i64, (since, 0i64));
    for (t, d) in events {
        now += i64::from(d);
        if now > best.1 {
            best = (t, now);
        }
    }
    (best.0, u32::try_from(best.1).unwrap_or(0))
}

/// `GET /teams/{teamID}/metrics?start=&end=`: one point per step (at most 100).
pub async fn metrics(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(team_id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<Vec<TeamMetric>>, ApiError> {
    own(&team, &team_id)?;
    let w = Window::of(&q, ember_envd_proto::time::now_unix())?;
    Ok(Json(series(&spans(&m, &team, &w)?, &w)))
}

/// `GET /teams/{teamID}/metrics/max?metric=&start=&end=`.
pub async fn max(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(team_id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<MaxTeamMetric>, ApiError> {
    own(&team, &team_id)?;
    let w = Window::of(&q, ember_envd_proto::time::now_unix())?;
    let metric = q.metric.as_deref().unwrap_or_default();
    if !matches!(metric, "concurrent_sandboxes" | "sandbox_start_rate") {
        return Err(ApiError::BadRequest("metric must be concurrent_sandboxes or sandbox_start_rate".into()));
    }
    let spans = spans(&m, &team, &w)?;
    let (ms, value) = match metric {
        "concurrent_sandboxes" => {
            let (ms, n) = max_concurrent(&spans, &w);
            (ms, f64::from(n))
        }
        _ => {
            series(&spans, &w).into_iter().fold((w.start * 1000, 0.0), |best, p| match p.sandbox_start_rate > best.1 {
                true => (p.timestamp_unix * 1000, p.sandbox_start_rate),
                false => best,
            })
        }
    };
    Ok(Json(MaxTeamMetric { timestamp: rfc3339(ms), timestamp_unix: ms.div_euclid(1000), value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_bounded_and_stepped() {
        let q = |start, end| MetricsQuery { start, end, metric: None };
        let w = Window::of(&q(None, None), 10_000).unwrap();
        assert_eq!((w.start, w.end, w.step), (6_400, 10_000, 36));
        assert_eq!(w.points().count(), 100);
        assert_eq!(Window::of(&q(Some(0), Some(60)), 0).unwrap().step, MIN_STEP_SECS);
        assert!(Window::of(&q(Some(10), Some(10)), 0).is_err());
        assert!(Window::of(&q(Some(-1), Some(10)), 0).is_err());
        assert!(Window::of(&q(Some(0), Some(MAX_SPAN_SECS + 1)), 0).is_err());
        // Hostile values are refused, never overflowed.
        assert!(Window::of(&q(None, Some(i64::MIN)), 0).is_err());
        assert!(Window::of(&q(Some(i64::MAX - 10), Some(i64::MAX)), 0).is_err());
    }

    #[test]
    fn series_and_maximum_follow_the_intervals() {
        let w = Window { start: 0, end: 30, step: 10 };
        // Two sandboxes from 1 s and 5 s; the first ends at 12 s, the second runs on.
        let spans = RunningSpans {
            spans: vec![(1_000, 12_000), (5_000, 30_000)],
            starts: vec![1_000, 5_000],
            truncated: false,
        };
        let s = series(&spans, &w);
        let got: Vec<(i64, u32, f64)> =
            s.iter().map(|p| (p.timestamp_unix, p.concurrent_sandboxes, p.sandbox_start_rate)).collect();
        assert_eq!(got, vec![(0, 0, 0.2), (10, 2, 0.0), (20, 1, 0.0)]);
        assert_eq!(max_concurrent(&spans, &w), (5_000, 2));
        // Back to back (one ends as another starts): never two at once.
        let spans = RunningSpans { spans: vec![(1_000, 5_000), (5_000, 9_000)], starts: vec![], truncated: false };
        assert_eq!(max_concurrent(&spans, &w).1, 1);
    }
}
