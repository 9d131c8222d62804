//! What the daemon observes of each sandbox over its life: metrics sampled from its agent every
//! few seconds while it runs, and its lifecycle events (created, paused, resumed, timed out),
//! both bounded and kept in memory for the sandbox's lifetime (a restarted daemon starts them
//! anew; the guest's own log, its serial console, is on disk).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ember_api::SandboxMetric;
use ember_store::now_ms;

use super::{Live, Manager};

/// How often each running sandbox's agent is asked for its metrics.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long one sample may take.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Samples kept per sandbox (a day at one every 5 s; past that the oldest go).
const MAX_SAMPLES: usize = 17_280;
/// Lifecycle events kept per sandbox.
const MAX_EVENTS: usize = 1000;

/// One lifecycle event: when (Unix ms), its level (`info`, `warn`) and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub ms: i64,
    pub level: &'static str,
    pub message: String,
}

/// A sandbox's samples and events.
#[derive(Debug, Default)]
pub struct Observed {
    samples: Mutex<VecDeque<SandboxMetric>>,
    events: Mutex<VecDeque<Event>>,
}

impl Observed {
    pub fn event(&self, level: &'static str, message: impl Into<String>) {
        push_bounded(&self.events, Event { ms: now_ms(), level, message: message.into() }, MAX_EVENTS);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Keeps a sample: one per second at most (a sample taken on request in the same second
    /// as the sampler's replaces it), so the series' times are strictly increasing.
    pub fn sample(&self, metric: SandboxMetric) {
        {
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = samples.back_mut() {
                if last.timestamp_unix >= metric.timestamp_unix {
                    *last = SandboxMetric {
                        timestamp: last.timestamp.clone(),
                        timestamp_unix: last.timestamp_unix,
                        ..metric
                    };
                    return;
                }
            }
        }
        push_bounded(&self.samples, metric, MAX_SAMPLES);
    }

    /// The samples taken from `start` to `end` (Unix seconds, both included), oldest first.
    pub fn samples(&self, start: Option<i64>, end: Option<i64>) -> Vec<SandboxMetric> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .filter(|m| start.is_none_or(|s| m.timestamp_unix >= s) && end.is_none_or(|e| m.timestamp_unix <= e))
            .cloned()
            .collect()
    }

    pub fn latest(&self) -> Option<SandboxMetric> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).back().cloned()
    }
}

fn push_bounded<T>(queue: &Mutex<VecDeque<T>>, item: T, max: usize) {
    let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
    if queue.len() >= max {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// The guest's sample as the API reports it; its time is the host's (the guest clock may lag).
fn to_metric(raw: &ember_envd_proto::metrics::Metrics, ts: i64) -> SandboxMetric {
    SandboxMetric {
        timestamp: ember_envd_proto::time::rfc3339(
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0)),
        ),
        timestamp_unix: ts,
        cpu_count: u64::from(raw.cpu_count),
        cpu_used_pct: raw.cpu_used_pct,
        mem_used: raw.mem_used,
        mem_total: raw.mem_total,
        mem_cache: raw.mem_cache,
        disk_used: raw.disk_used,
        disk_total: raw.disk_total,
    }
}

impl Manager {
    /// Samples every running sandbox's metrics every [`SAMPLE_EVERY`], each on a task of its own
    /// with a deadline, so a stalled guest delays nothing.
    pub(super) async fn sample_metrics(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for live in self.all().into_iter().filter(|l| !l.is_paused()) {
                tokio::spawn(async move {
                    if let Err(e) = sample_now(&live).await {
                        tracing::debug!(sandbox = %live.id(), error = %e, "sampling metrics");
                    }
                });
            }
        }
    }
}

/// Takes one sample of `live`'s metrics and keeps it.
pub async fn sample_now(live: &Live) -> Result<SandboxMetric, String> {
    let token = live.record().access_token;
    let raw: ember_envd_proto::metrics::Metrics =
        tokio::time::timeout(SAMPLE_TIMEOUT, live.agent.get_json("/metrics", token.as_deref()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
    let metric = to_metric(&raw, ember_envd_proto::time::now_unix());
    live.observed.sample(metric.clone());
    Ok(metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(ts: i64) -> SandboxMetric {
        to_metric(&ember_envd_proto::metrics::Metrics { ts, cpu_count: 2, ..Default::default() }, ts)
    }

    #[test]
    fn samples_are_bounded_and_selected_by_time() {
        let o = Observed::default();
        let max = i64::try_from(MAX_SAMPLES).unwrap();
        for ts in 0..(max + 10) {
            o.sample(metric(ts));
        }
        let all = o.samples(None, None);
        assert_eq!(all.len(), MAX_SAMPLES);
        assert_eq!(all[0].timestamp_unix, 10, "the oldest go first");
        let some = o.samples(Some(100), Some(104));
        assert_eq!(some.iter().map(|m| m.timestamp_unix).collect::<Vec<_>>(), [100, 101, 102, 103, 104]);
        assert_eq!(o.latest().unwrap().timestamp_unix, max + 9);
        // Two samples in one second: the later replaces the earlier, keeping its time.
        let mut same = metric(max + 9);
        same.cpu_used_pct = 50.0;
        o.sample(same);
        let last = o.samples(Some(max + 9), None);
        assert_eq!((last.len(), last[0].cpu_used_pct), (1, 50.0));
        o.sample(metric(max + 5));
        assert_eq!(o.samples(Some(max), None).last().unwrap().timestamp_unix, max + 9, "times never go back");
        for i in 0..(MAX_EVENTS + 1) {
            o.event("info", format!("e{i}"));
        }
        assert_eq!(o.events().len(), MAX_EVENTS);
        assert_eq!(o.events()[0].message, "e1");
    }
}
