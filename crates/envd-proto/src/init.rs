//! `POST /init`: the body the host sends to give an agent its sandbox's identity.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `/init`'s body (envd's field names, plus Ember's `hostname`). Every field is optional: a
/// missing one leaves the agent's setting as it is. Unknown fields are ignored.
///
/// The first `/init` of an agent that holds no token is accepted without one; every later one
/// must carry the current token in `X-Access-Token`. An agent left without a token refuses every
/// call but `GET /health` and `/init`, so the host always sets `access_token`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InitRequest {
    /// The sandbox's env vars, replacing the previous ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// The token every later call must carry in `X-Access-Token`. An empty one never clears a
    /// token the agent holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// RFC 3339 host time, to set the guest clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// User for requests that name none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    /// Working directory of processes that name none (absolute; others are ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// Hex-encoded random bytes from the host (at most 512), to reseed a restored guest's RNG.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<String>,
    /// Ember's own field: the sandbox's hostname (a restored guest has the template's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Extra CA certificates (PEM `CERTIFICATE` blocks, at most 1 MiB) for the guest to trust,
    /// e.g. a TLS-inspecting proxy's; they replace those an earlier `/init` gave, and an empty
    /// string removes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// Leaves the token and the entropy out, so logging a request does not leak them, and shows only
/// the CA bundle's length.
impl fmt::Debug for InitRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("InitRequest")
            .field("env_vars", &self.env_vars.as_ref().map(|e| e.keys().collect::<Vec<_>>()))
            .field("access_token", &redacted(&self.access_token))
            .field("timestamp", &self.timestamp)
            .field("default_user", &self.default_user)
            .field("default_workdir", &self.default_workdir)
            .field("entropy", &redacted(&self.entropy))
            .field("hostname", &self.hostname)
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|b| format!("<{} bytes>", b.len())))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case_fields_unknown_ignored_none_skipped() {
        let json = r#"{"envVars":{"A":"1"},"accessToken":"t","defaultUser":"user","defaultWorkdir":"/w",
            "timestamp":"2024-01-01T00:00:00Z","entropy":"00","hostname":"h","caBundle":"-----BEGIN CERTIFICATE-----","somethingNew":1}"#;
        let req: InitRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.env_vars.as_ref().and_then(|e| e.get("A")).map(String::as_str), Some("1"));
        assert_eq!(req.access_token.as_deref(), Some("t"));
        assert_eq!(req.default_workdir.as_deref(), Some("/w"));
        assert_eq!(req.hostname.as_deref(), Some("h"));
        assert_eq!(req.ca_bundle.as_deref(), Some("-----BEGIN CERTIFICATE-----"));
        assert_eq!(serde_json::from_str::<InitRequest>("{}").unwrap(), InitRequest::default());
        assert_eq!(serde_json::to_string(&InitRequest::default()).unwrap(), "{}");
        let back: InitRequest = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let shown = format!("{req:?}");
        assert!(!shown.contains("\"t\"") && shown.contains("<redacted>"));
        assert!(shown.contains("<27 bytes>") && !shown.contains("BEGIN"));
    }
}
