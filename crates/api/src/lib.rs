//! The REST API's JSON shapes, as the E2B SDKs send and parse them (camelCase keys, except the
//! create body's `allow_internet_access`; required fields always present; `null` where the SDK
//! accepts null).

#![forbid(unsafe_code)]
// Values from guests and clients are bounded before use: no silent truncation or sign change.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_possible_wrap)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Create body of `POST /sandboxes` and `POST /v2/sandboxes`. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds; the server default applies when absent.
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub secure: Option<bool>,
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// On time-out: pause (true) or kill.
    #[serde(default)]
    pub auto_pause: Option<bool>,
    /// Whether a time-out pause keeps memory (true, the default) or only the filesystem.
    #[serde(default)]
    pub auto_pause_memory: Option<bool>,
    #[serde(default)]
    pub auto_resume: Option<AutoResume>,
    #[serde(default)]
    pub network: Option<NetworkConfig>,
}

/// `autoResume` of a create body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

/// `lifecycle` as `GET /sandboxes/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLifecycle {
    /// `kill` or `pause`.
    pub on_timeout: String,
    pub auto_resume: bool,
}

/// `network` of a create body, and as `GET /sandboxes/{id}` reports it (E2B's
/// `SandboxNetworkConfig`). `egressProxy`, `rules` and `httpsPorts` are E2B cloud features Ember
/// refuses when they are set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_out: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_out: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_public_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_request_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_ports: Option<Vec<u16>>,
}

/// Body of `PUT /sandboxes/{id}/network`: the whole egress configuration (an omitted field is
/// cleared).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkUpdate {
    #[serde(default)]
    pub allow_out: Option<Vec<String>>,
    #[serde(default)]
    pub deny_out: Option<Vec<String>>,
    #[serde(default)]
    pub dns_servers: Option<Vec<String>>,
    #[serde(default)]
    pub egress_proxy: Option<serde_json::Value>,
    #[serde(default)]
    pub rules: Option<serde_json::Value>,
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

/// Answer of create and connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub envd_version: String,
    pub envd_access_token: Option<String>,
    pub traffic_access_token: Option<String>,
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

/// `GET /sandboxes/{id}` (with the token) and list entries (without).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub started_at: String,
    pub end_at: String,
    pub envd_version: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    pub state: String,
    pub metadata: BTreeMap<String, String>,
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<SandboxLifecycle>,
    /// What the latest pause saved (`full`: memory and filesystem), while paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<String>,
}

/// `POST /sandboxes/{id}/pause` (fields optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseRequest {
    /// Keep memory (true, the default) or only the filesystem.
    #[serde(default)]
    pub memory: Option<bool>,
    /// E2B's: refuse to pause an unhealthy guest. Ember's pause does not need the guest.
    #[serde(default)]
    pub require_healthy_guest: Option<bool>,
}

/// `POST /sandboxes/{id}/fork` (fields optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ForkRequest {
    /// Seconds, for every copy.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// How many copies (1-20, 1 by default).
    #[serde(default)]
    pub count: Option<i64>,
}

/// One entry of a fork's answer: the copy, or why it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Deserialize)]
pub struct TimeoutRequest {
    pub timeout: i64,
}

/// `POST .../connect`, `.../resume`, `.../refreshes` (fields optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub duration: Option<i64>,
}

/// One entry of `GET /sandboxes/{id}/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    pub timestamp: String,
    pub timestamp_unix: i64,
    pub cpu_count: u64,
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// One point of `GET /teams/{teamID}/metrics`: the team's sandboxes running at that time and
/// how many it started per second in the step that begins there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TeamMetric {
    pub timestamp: String,
    pub timestamp_unix: i64,
    pub concurrent_sandboxes: u32,
    pub sandbox_start_rate: f64,
}

/// `GET /teams/{teamID}/metrics/max`: the largest value of a metric in the interval, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaxTeamMetric {
    pub timestamp: String,
    pub timestamp_unix: i64,
    pub value: f64,
}

/// `GET /sandboxes/{id}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLogs {
    pub logs: Vec<LogLine>,
    pub log_entries: Vec<LogEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub timestamp: String,
    pub line: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEntry {
    pub timestamp: String,
    pub message: String,
    pub level: String,
    pub fields: BTreeMap<String, String>,
}

/// Every error answer: `{code, message}`, `code` being the HTTP status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Error {
    pub code: u16,
    pub message: String,
}

/// The proxy's own answer for sandbox traffic it cannot deliver (the shape the SDKs match).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyError {
    pub sandbox_id: String,
    pub message: String,
    pub code: u16,
}

/// `POST /sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotRequest {
    #[serde(default)]
    pub name: Option<String>,
}

/// A snapshot in `POST /sandboxes/{id}/snapshots` and `GET /snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

/// A log entry's severity, as E2B names it (`debug`, `info`, `warn`, `error`; ordered by
/// severity): in template build logs and sandbox logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// The level of a `tracing` line's level word (`TRACE` counts as debug).
    pub fn from_tracing(word: &str) -> Option<Self> {
        match word {
            "TRACE" | "DEBUG" => Some(LogLevel::Debug),
            "INFO" => Some(LogLevel::Info),
            "WARN" => Some(LogLevel::Warn),
            "ERROR" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_accepts_both_sdk_generations() {
        let v2: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","metadata":{},"envVars":{"A":"1"},"allow_internet_access":false,"mcp":null}"#,
        )
        .unwrap();
        assert_eq!((v2.template_id.as_str(), v2.timeout, v2.allow_internet_access), ("base", None, Some(false)));
        assert_eq!(v2.env_vars.unwrap()["A"], "1");
        let v1: NewSandbox = serde_json::from_str(r#"{"templateID":"base","timeout":300,"secure":true}"#).unwrap();
        assert_eq!((v1.timeout, v1.secure), (Some(300), Some(true)));
        assert!(serde_json::from_str::<NewSandbox>(r#"{"timeout":300}"#).is_err());
    }

    #[test]
    fn sandbox_has_required_keys_and_nulls() {
        let s = Sandbox {
            template_id: "base".into(),
            sandbox_id: "abc".into(),
            client_id: "ember".into(),
            envd_version: "0.6.13".into(),
            envd_access_token: Some("t".into()),
            traffic_access_token: None,
            domain: None,
            alias: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        for key in ["templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(v["domain"].is_null());
    }
}

// --- template builds (E2B's v2/v3 build API; both ways: the daemon serves them, `ember template`
// sends and reads them) ---

/// Body of `POST /v3/templates`. Unknown fields are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildRequest {
    /// The template's name, possibly `name:tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Older SDKs' name for `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<i64>,
    #[serde(default, rename = "memoryMB", skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_disk_mb: Option<i64>,
}

/// Answer of `POST /v3/templates` (202).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildRequested {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub public: bool,
    pub names: Vec<String>,
    pub tags: Vec<String>,
    pub aliases: Vec<String>,
}

/// Answer of `GET /templates/{id}/files/{hash}` (201).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateFileUpload {
    pub present: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One step of a build body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStep {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
}

/// Body of `POST /v2/templates/{id}/builds/{buildID}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildStart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image_registry: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<TemplateStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

/// Why a build failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatusReason {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// Answer of `GET /templates/{id}/builds/{buildID}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuildInfo {
    /// Plain lines (older clients).
    pub logs: Vec<String>,
    pub log_entries: Vec<serde_json::Value>,
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<BuildStatusReason>,
}

/// A build as `GET /templates/{id}` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuild {
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
}

/// A template as `GET /templates` lists it (`builds` only in `GET /templates/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "buildID")]
    pub build_id: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub public: bool,
    pub aliases: Vec<String>,
    pub names: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    pub created_by: Option<serde_json::Value>,
    pub last_spawned_at: Option<String>,
    pub spawn_count: u64,
    pub build_count: u64,
    pub envd_version: String,
    pub build_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub builds: Option<Vec<TemplateBuild>>,
}

/// Answer of `GET /templates/aliases/{alias}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateAlias {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub public: bool,
}
