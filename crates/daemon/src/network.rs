//! The `network` resource: a sandbox's network settings as E2B's API shapes them. Create's
//! `network` and `allow_internet_access` and `PUT /sandboxes/{id}/network` are checked here and
//! turned into an [`EgressPolicy`] (which `ember-net` enforces) plus the ingress settings the
//! proxy reads (`allowPublicTraffic`, `maskRequestHost`). The settings are stored as the API
//! reports them, and the policy is read back from them on resume and adoption.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use ember_api::{NetworkConfig, NetworkUpdate};
use ember_runtime::EgressPolicy;
use ember_store::SandboxRecord;

use crate::auth::Team;
use crate::error::ApiError;
use crate::manager::Manager;

/// Longest `maskRequestHost`.
const MAX_MASK: usize = 253;

/// Checked network settings: the policy to enforce and what to store and report.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub policy: EgressPolicy,
    /// `network` as stored and reported (the cloud-only fields never set).
    pub config: NetworkConfig,
    pub allow_internet: bool,
}

impl Checked {
    /// E2B's defaults: internet on, no rules, public traffic.
    pub fn open() -> Self {
        Self { policy: EgressPolicy::allow_all(), config: NetworkConfig::default(), allow_internet: true }
    }

    /// Whether requests to exposed ports need the traffic access token.
    pub fn private_traffic(&self) -> bool {
        self.config.allow_public_traffic == Some(false)
    }
}

fn refuse_cloud_only(
    egress_proxy: &Option<serde_json::Value>,
    rules: &Option<serde_json::Value>,
) -> Result<(), ApiError> {
    if egress_proxy.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::BadRequest("network.egressProxy is an E2B cloud feature Ember does not offer".into()));
    }
    if rules.as_ref().is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty())) {
        return Err(ApiError::BadRequest(
            "network.rules (request transforms) is an E2B cloud feature Ember does not offer".into(),
        ));
    }
    Ok(())
}

fn policy(config: &NetworkConfig, allow_internet: bool) -> Result<EgressPolicy, ApiError> {
    let list = |v: &Option<Vec<String>>| v.clone().unwrap_or_default();
    EgressPolicy::from_rules(
        &list(&config.allow_out),
        &list(&config.deny_out),
        &list(&config.dns_servers),
        allow_internet,
    )
    .map_err(|e| ApiError::BadRequest(format!("network: {e}")))
}

/// `maskRequestHost`: a host name, optionally with a port, where `${PORT}` stands for the port.
fn check_mask(mask: &str) -> Result<(), ApiError> {
    let sample = mask.replace("${PORT}", "8080");
    let ok = !mask.is_empty()
        && mask.len() <= MAX_MASK
        && sample.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        && axum::http::uri::Authority::try_from(sample.as_str()).is_ok();
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "network.maskRequestHost must be a host name (with ${{PORT}} for the port), at most {MAX_MASK} characters"
        )))
    }
}

/// Checks a create's `network` and `allow_internet_access`.
pub fn check_create(network: Option<NetworkConfig>, allow_internet: Option<bool>) -> Result<Checked, ApiError> {
    let network = network.unwrap_or_default();
    refuse_cloud_only(&network.egress_proxy, &network.rules)?;
    if network.https_ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(ApiError::BadRequest("network.httpsPorts is an E2B cloud feature Ember does not offer".into()));
    }
    if let Some(mask) = &network.mask_request_host {
        check_mask(mask)?;
    }
    let allow_internet = allow_internet.unwrap_or(true);
    let policy = policy(&network, allow_internet)?;
    let config = NetworkConfig { egress_proxy: None, rules: None, https_ports: None, ..network };
    Ok(Checked { policy, config, allow_internet })
}

/// Checks a `PUT .../network` body against the sandbox's current settings: the egress fields
/// are replaced whole (an omitted one is cleared), the ingress ones kept.
pub fn check_update(update: NetworkUpdate, current: &NetworkConfig) -> Result<Checked, ApiError> {
    refuse_cloud_only(&update.egress_proxy, &update.rules)?;
    let config = NetworkConfig {
        allow_out: update.allow_out,
        deny_out: update.deny_out,
        dns_servers: update.dns_servers,
        allow_public_traffic: current.allow_public_traffic,
        mask_request_host: current.mask_request_host.clone(),
        ..NetworkConfig::default()
    };
    let allow_internet = update.allow_internet_access.unwrap_or(true);
    Ok(Checked { policy: policy(&config, allow_internet)?, config, allow_internet })
}

/// The `network` a record stores, if it reads.
fn stored_config(record: &SandboxRecord) -> Option<NetworkConfig> {
    serde_json::from_str(&record.network).ok()
}

/// The Host exposed-port requests to the sandbox carry (`maskRequestHost`), if it set one.
pub fn request_host_mask(record: &SandboxRecord) -> Option<String> {
    stored_config(record)?.mask_request_host
}

/// A stored record's settings. A record that cannot be read gets no egress (fail closed).
pub fn stored(record: &SandboxRecord) -> Checked {
    let checked = stored_config(record).and_then(|config| {
        let policy = policy(&config, record.allow_internet).ok()?;
        Some(Checked { policy, config, allow_internet: record.allow_internet })
    });
    checked.unwrap_or_else(|| {
        tracing::error!(sandbox = %record.id, "unreadable network settings: the sandbox gets no egress");
        Checked { policy: EgressPolicy::deny_all(), config: NetworkConfig::default(), allow_internet: false }
    })
}

/// `PUT /sandboxes/{id}/network`: replaces the egress rules of a running (or paused) sandbox;
/// they hold for new connections at once. 204.
pub async fn update(
    State(m): State<Arc<Manager>>,
    Extension(team): Extension<Team>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = crate::sandboxes::body_bytes(body)?;
    let live = m.get(&team.0, &id)?;
    let req: NetworkUpdate =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let checked = check_update(req, &stored(&live.record()).config)?;
    m.set_network(&live, checked).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn creates_default_to_open_internet_and_public_traffic() {
        let c = check_create(None, None).unwrap();
        assert_eq!(c.policy, EgressPolicy::allow_all());
        assert!(c.allow_internet && !c.private_traffic());
        let off = check_create(None, Some(false)).unwrap();
        assert_eq!(off.policy, EgressPolicy::deny_all());
    }

    #[test]
    fn bad_settings_are_400s_with_the_reason() {
        let msg = |n: NetworkConfig| match check_create(Some(n), None) {
            Err(ApiError::BadRequest(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(msg(NetworkConfig { allow_out: strings(&["1.2.3.4/40"]), ..Default::default() }).contains("1.2.3.4/40"));
        assert!(msg(NetworkConfig { allow_out: strings(&[""]), ..Default::default() }).contains("empty"));
        assert!(msg(NetworkConfig { deny_out: strings(&["a.com"]), ..Default::default() }).contains("denyOut"));
        let many: Vec<String> = (0..1001).map(|i| format!("1.1.{}.{}", i / 256, i % 256)).collect();
        assert!(msg(NetworkConfig { deny_out: Some(many), ..Default::default() }).contains("1000"));
        let proxy = serde_json::json!({"address": "p:1080"});
        assert!(msg(NetworkConfig { egress_proxy: Some(proxy), ..Default::default() }).contains("egressProxy"));
        assert!(msg(NetworkConfig { https_ports: Some(vec![3000]), ..Default::default() }).contains("httpsPorts"));
        assert!(msg(NetworkConfig { mask_request_host: Some("a b".into()), ..Default::default() }).contains("mask"));
        let ok = NetworkConfig { mask_request_host: Some("${PORT}-app.example.com".into()), ..Default::default() };
        assert!(check_create(Some(ok), None).is_ok());
    }

    #[test]
    fn updates_replace_egress_and_keep_ingress() {
        let created = check_create(
            Some(NetworkConfig {
                allow_out: strings(&["198.51.100.7"]),
                allow_public_traffic: Some(false),
                mask_request_host: Some("x.test".into()),
                ..Default::default()
            }),
            None,
        )
        .unwrap();
        let update = NetworkUpdate { deny_out: strings(&["0.0.0.0/0"]), ..Default::default() };
        let next = check_update(update, &created.config).unwrap();
        assert_eq!(next.config.allow_out, None, "omitted: cleared");
        assert_eq!(next.config.allow_public_traffic, Some(false));
        assert_eq!(next.config.mask_request_host.as_deref(), Some("x.test"));
        assert!(next.policy.denies_everything());
        let off =
            check_update(NetworkUpdate { allow_internet_access: Some(false), ..Default::default() }, &created.config)
                .unwrap();
        assert_eq!(off.policy, EgressPolicy::deny_all());
    }

    #[test]
    fn an_unreadable_record_fails_closed() {
        let record = SandboxRecord {
            id: "x".into(),
            team: "t".into(),
            template: "base".into(),
            alias: None,
            metadata: Default::default(),
            env_vars: Default::default(),
            access_token: None,
            vcpus: 1,
            memory_mib: 256,
            disk_mib: 1,
            started_ms: 0,
            end_ms: 0,
            state: ember_store::SandboxState::Running,
            allow_internet: true,
            network: "{not json".into(),
            traffic_token: None,
            lifecycle: Default::default(),
        };
        assert_eq!(stored(&record).policy, EgressPolicy::deny_all());
        let good = SandboxRecord { network: r#"{"denyOut":["198.51.100.0/24"]}"#.into(), ..record };
        assert!(!stored(&good).policy.allows_ip("198.51.100.1".parse().unwrap()));
    }
}
