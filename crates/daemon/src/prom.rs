//! Operator metrics in Prometheus's text format (0.0.4), served on `--metrics-listen`, an
//! address of the operator's own: never on the API's port, so no client or guest reaches them.
//! Counters and histograms are process-wide atomics bumped where things happen (creates,
//! pauses, resumes, error answers); gauges (sandboxes by state and team, pool depth) are read
//! from the manager at each scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::manager::Manager;

/// Upper bounds (seconds) of the duration histograms' buckets.
const BOUNDS: [f64; 12] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// A histogram of durations with [`BOUNDS`] (plus `+Inf`), its sum in microseconds.
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self { buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1], sum_us: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS.iter().position(|b| secs <= *b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = BOUNDS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = Duration::from_micros(self.sum_us.load(Relaxed)).as_secs_f64();
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// What error answers are counted by.
pub const ERROR_KINDS: [&str; 8] =
    ["bad_request", "unauthorized", "not_found", "conflict", "too_many", "too_large", "not_implemented", "internal"];

/// The process's counters and histograms.
pub struct Telemetry {
    pub creates: AtomicU64,
    pub create_failures: AtomicU64,
    pub create_seconds: Histogram,
    pub pause_seconds: Histogram,
    pub resume_seconds: Histogram,
    errors: [AtomicU64; ERROR_KINDS.len()],
}

pub static TELEMETRY: Telemetry = Telemetry::new();

impl Telemetry {
    const fn new() -> Self {
        Self {
            creates: AtomicU64::new(0),
            create_failures: AtomicU64::new(0),
            create_seconds: Histogram::new(),
            pause_seconds: Histogram::new(),
            resume_seconds: Histogram::new(),
            errors: [const { AtomicU64::new(0) }; ERROR_KINDS.len()],
        }
    }

    /// Counts one error answer of `kind` (one of [`ERROR_KINDS`]; others are not counted).
    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    fn render(&self, out: &mut String) {
        counter(out, "ember_sandbox_creates_total", "Sandboxes created.", self.creates.load(Relaxed));
        counter(out, "ember_sandbox_create_failures_total", "Creates that failed.", self.create_failures.load(Relaxed));
        self.create_seconds.render(
            out,
            "ember_sandbox_create_seconds",
            "Time from a create request to a usable sandbox.",
        );
        self.pause_seconds.render(out, "ember_sandbox_pause_seconds", "Time a pause took.");
        self.resume_seconds.render(out, "ember_sandbox_resume_seconds", "Time a resume (a restore or a boot) took.");
        let _ = writeln!(out, "# HELP ember_api_errors_total Error answers of the API by kind.");
        let _ = writeln!(out, "# TYPE ember_api_errors_total counter");
        for (kind, n) in ERROR_KINDS.iter().zip(&self.errors) {
            let _ = writeln!(out, "ember_api_errors_total{{kind=\"{kind}\"}} {}", n.load(Relaxed));
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Everything, as one scrape's text.
pub async fn render(manager: &Manager) -> String {
    let mut out = String::new();
    let mut by_team: std::collections::BTreeMap<(String, &'static str), (u64, u64, u64)> = Default::default();
    let (mut running, mut paused) = (0u64, 0u64);
    for live in manager.all() {
        let r = live.record();
        let state = r.state.as_str();
        if state == "running" {
            running += 1;
        } else {
            paused += 1;
        }
        let e = by_team.entry((r.team.clone(), state)).or_default();
        e.0 += 1;
        e.1 += u64::from(r.vcpus);
        e.2 += u64::from(r.memory_mib);
    }
    let _ = writeln!(out, "# HELP ember_sandboxes Sandboxes by state.\n# TYPE ember_sandboxes gauge");
    let _ =
        writeln!(out, "ember_sandboxes{{state=\"running\"}} {running}\nember_sandboxes{{state=\"paused\"}} {paused}");
    for (metric, help, pick) in [
        ("ember_team_sandboxes", "Sandboxes by team and state.", 0),
        ("ember_team_vcpus", "vCPUs of the team's sandboxes by state.", 1),
        ("ember_team_memory_mib", "Memory (MiB) of the team's sandboxes by state.", 2),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} gauge");
        for ((team, state), values) in &by_team {
            let v = [values.0, values.1, values.2][pick];
            let _ = writeln!(out, "{metric}{{team=\"{}\",state=\"{state}\"}} {v}", label(team));
        }
    }
    let _ = writeln!(
        out,
        "# HELP ember_pool_ready Sandboxes restored ahead of time, by template.\n# TYPE ember_pool_ready gauge"
    );
    for (template, ready) in manager.pool_depths().await {
        let _ = writeln!(out, "ember_pool_ready{{template=\"{}\"}} {ready}", label(template));
    }
    TELEMETRY.render(&mut out);
    out
}

/// `GET /metrics` on the operator's address.
pub async fn metrics(State(manager): State<Arc<Manager>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&manager).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_errors_counted_by_kind() {
        let h = Histogram::new();
        for ms in [10, 150, 150, 4000, 120_000] {
            h.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.2\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"5\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 5\nx_seconds_sum 124.31\nx_seconds_count 5\n"), "{out}");
        let t = Telemetry::new();
        t.error("not_found");
        t.error("not_found");
        t.error("no such kind");
        let mut out = String::new();
        t.render(&mut out);
        assert!(out.contains("ember_api_errors_total{kind=\"not_found\"} 2\n"), "{out}");
        assert!(out.contains("ember_api_errors_total{kind=\"internal\"} 0\n"), "{out}");
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
