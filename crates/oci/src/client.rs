//! A client for the registry HTTP API v2 (the OCI distribution spec): the bearer-token
//! challenge flow, optional basic credentials, manifests and blobs with digest verification.
//!
//! Plain `http://` is used only for registries on the loopback interface (`localhost`,
//! `127.0.0.1`, `[::1]`) and those named in [`PullConfig::insecure_registries`]; everything
//! else is `https://` with the system's CA roots (plus [`PullConfig::ca_bundle`]), and an
//! HTTPS request is never redirected to plain HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::manifest::{Descriptor, ManifestDoc, ManifestError, MANIFEST_ACCEPT};
use crate::reference::{validate_digest, Reference};
use crate::{Credentials, PullConfig};

/// The most a token endpoint's answer may be.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// Debian's CA bundle (update-ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Redirects followed for one request (blob downloads are usually redirected once).
const MAX_REDIRECTS: usize = 5;

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Building the HTTP client failed (e.g. an unreadable CA bundle).
    #[error("setting up the HTTP client: {0}")]
    Setup(String),
    /// The request failed (connection, TLS, time-out, redirect refused...).
    #[error("request to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The registry has no such tag or manifest.
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// The registry has no such repository.
    #[error("repository unknown: {0}")]
    NameUnknown(String),
    /// The registry has no such blob.
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    /// Authentication failed or is required and no credentials were given.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The credentials are valid but not allowed to pull.
    #[error("denied: {0}")]
    Denied(String),
    /// Another unexpected HTTP status.
    #[error("registry answered {status} for {url}: {message}")]
    Status { status: StatusCode, url: String, message: String },
    /// The content does not hash to the digest it was asked for.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    /// The content is not the size its descriptor says.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    /// A document or blob is larger than allowed.
    #[error("{what} exceeds the maximum of {max} bytes")]
    TooLarge { what: String, max: u64 },
    /// The `WWW-Authenticate` challenge or token answer cannot be used.
    #[error("bad authentication challenge: {0}")]
    BadChallenge(String),
    /// A digest in a document is malformed or not sha256.
    #[error("invalid digest '{0}'")]
    InvalidDigest(String),
    /// A manifest cannot be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Writing a downloaded blob failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`: send the credentials with every request.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`: get a token from the realm.
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses a `WWW-Authenticate` header value (one challenge; quoted strings with escapes).
pub fn parse_challenge(header: &str) -> Result<Challenge, ClientError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params: Vec<(String, String)> = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        params.push((key, value));
    }
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Ok(Challenge::Basic),
        "bearer" => Ok(Challenge::Bearer {
            realm: get("realm")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| ClientError::BadChallenge(format!("no realm in '{header}'")))?,
            service: get("service"),
            scope: get("scope"),
        }),
        other => Err(ClientError::BadChallenge(format!("unsupported scheme '{other}'"))),
    }
}

/// Whether `registry` (host with optional port) is reached over plain HTTP.
pub fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = crate::reference::host_without_port(registry);
    matches!(host, "localhost" | "127.0.0.1" | "::1") || insecure.iter().any(|i| i == registry || i == host)
}

/// A client for one repository of one registry.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    repository: String,
    plain_http: bool,
    credentials: Option<Credentials>,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    max_manifest_bytes: u64,
}

impl RegistryClient {
    /// A client for the repository of `reference`.
    pub fn new(
        reference: &Reference,
        credentials: Option<&Credentials>,
        config: &PullConfig,
    ) -> Result<RegistryClient, ClientError> {
        let plain_http = is_plain_http(&reference.registry, &config.insecure_registries);
        let redirect = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if attempt.url().scheme() != "https" && attempt.previous().iter().any(|u| u.scheme() == "https") {
                attempt.error("refusing a redirect from https to plain http")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ember-oci/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout)
            .redirect(redirect);
        // The system bundle is loaded explicitly as well as through the native-roots loader:
        // where HTTPS goes through an intercepting proxy, its CA is only in that file.
        let system = Path::new(SYSTEM_CA_BUNDLE);
        let bundles = config.ca_bundle.iter().map(PathBuf::as_path).chain(system.is_file().then_some(system));
        for bundle in bundles {
            let pem = std::fs::read(bundle)
                .map_err(|e| ClientError::Setup(format!("reading CA bundle {}: {e}", bundle.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::Setup(format!("parsing CA bundle {}: {e}", bundle.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Setup(e.to_string()))?;
        let scheme = if plain_http { "http" } else { "https" };
        Ok(RegistryClient {
            http,
            base: format!("{scheme}://{}/v2/{}", reference.api_host(), reference.repository),
            repository: reference.repository.clone(),
            plain_http,
            credentials: credentials.cloned(),
            authorization: None,
            timeout: config.timeout,
            max_manifest_bytes: config.max_manifest_bytes,
        })
    }

    /// Fetches the manifest `reference` (a tag or a digest); a digest is verified.
    /// Returns the document and its digest (computed from the body).
    pub async fn manifest(&mut self, reference: &str) -> Result<(ManifestDoc, String), ClientError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self.get(&url, MANIFEST_ACCEPT, true).await?;
        let response = check_status(response, &url, reference, &self.repository).await?;
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let what = format!("manifest {reference}");
        let body = read_limited(response, self.max_manifest_bytes, &what, &url).await?;
        let digest = sha256_digest(&body);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(ClientError::DigestMismatch { what, expected: reference.to_string(), actual: digest });
        }
        let doc = ManifestDoc::parse(content_type.as_deref(), &body)?;
        Ok((doc, digest))
    }

    /// Fetches a small blob (the image config) into memory, verified.
    pub async fn blob_bytes(&mut self, desc: &Descriptor) -> Result<Vec<u8>, ClientError> {
        validate_digest(&desc.digest).map_err(|_| ClientError::InvalidDigest(desc.digest.clone()))?;
        let what = format!("blob {}", desc.digest);
        if desc.size > self.max_manifest_bytes {
            return Err(ClientError::TooLarge { what, max: self.max_manifest_bytes });
        }
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let response = self.get(&url, &[], true).await?;
        let response = check_status(response, &url, &desc.digest, &self.repository).await?;
        let body = read_limited(response, desc.size, &what, &url).await?;
        verify(&what, desc, body.len() as u64, &sha256_digest(&body))?;
        Ok(body)
    }

    /// Streams a blob into `file`, never more than its descriptor's size, and verifies it.
    pub async fn download_blob(&mut self, desc: &Descriptor, file: &Path) -> Result<(), ClientError> {
        validate_digest(&desc.digest).map_err(|_| ClientError::InvalidDigest(desc.digest.clone()))?;
        let url = format!("{}/blobs/{}", self.base, desc.digest);
        let what = format!("blob {}", desc.digest);
        let io = |context: &str| {
            let context = format!("{context} {}", file.display());
            move |source| ClientError::Io { context, source }
        };
        let response = self.get(&url, &[], false).await?;
        let mut response = check_status(response, &url, &desc.digest, &self.repository).await?;
        let mut out = tokio::fs::File::create(file).await.map_err(io("create"))?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        while let Some(chunk) =
            response.chunk().await.map_err(|source| ClientError::Http { url: url.clone(), source })?
        {
            received += chunk.len() as u64;
            if received > desc.size {
                return Err(ClientError::SizeMismatch { what, expected: desc.size, actual: received });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(io("write"))?;
        }
        out.flush().await.map_err(io("write"))?;
        out.sync_all().await.map_err(io("sync"))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        verify(&what, desc, received, &actual)
    }

    /// A GET with the current authorization; on a 401 the challenge is answered once and the
    /// request retried.
    async fn get(&mut self, url: &str, accept: &[&str], bounded: bool) -> Result<Response, ClientError> {
        let response = self.send(url, accept, bounded).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge)
            .transpose()?
            .ok_or_else(|| ClientError::Unauthorized(format!("{url} answered 401 without a challenge")))?;
        self.authorization = Some(self.answer(challenge).await?);
        let response = self.send(url, accept, bounded).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let detail = if self.credentials.is_some() {
                "the registry refused the credentials"
            } else {
                "the registry requires credentials"
            };
            return Err(ClientError::Unauthorized(format!("{detail} ({url})")));
        }
        Ok(response)
    }

    async fn send(&self, url: &str, accept: &[&str], bounded: bool) -> Result<Response, ClientError> {
        let mut request = self.http.get(url);
        if !accept.is_empty() {
            request = request.header(ACCEPT, accept.join(", "));
        }
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if bounded {
            request = request.timeout(self.timeout);
        }
        request.send().await.map_err(|source| ClientError::Http { url: url.to_string(), source })
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let creds = self.credentials.as_ref()?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", creds.username, creds.password));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// The Authorization header that answers `challenge`.
    async fn answer(&self, challenge: Challenge) -> Result<HeaderValue, ClientError> {
        match challenge {
            Challenge::Basic => self
                .basic_header()
                .ok_or_else(|| ClientError::Unauthorized("the registry requires credentials".to_string())),
            Challenge::Bearer { realm, service, scope } => {
                let mut realm_url = reqwest::Url::parse(&realm)
                    .map_err(|e| ClientError::BadChallenge(format!("realm '{realm}': {e}")))?;
                if realm_url.scheme() != "https" && !(realm_url.scheme() == "http" && self.plain_http) {
                    return Err(ClientError::BadChallenge(format!("token realm '{realm}' is not https")));
                }
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                {
                    let mut query = realm_url.query_pairs_mut();
                    if let Some(service) = &service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", &scope);
                }
                let url = realm_url.to_string();
                tracing::debug!(realm = %realm, scope = %scope, "requesting registry token");
                let mut request = self.http.get(realm_url).timeout(self.timeout);
                if let Some(basic) = self.basic_header() {
                    request = request.header(AUTHORIZATION, basic);
                }
                let response = request.send().await.map_err(|source| ClientError::Http { url: url.clone(), source })?;
                match response.status() {
                    s if s.is_success() => {}
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        return Err(ClientError::Unauthorized(format!(
                            "the token service refused {} for scope {scope}",
                            if self.credentials.is_some() { "the credentials" } else { "anonymous access" }
                        )))
                    }
                    status => {
                        return Err(ClientError::Status { status, url, message: "token request failed".to_string() })
                    }
                }
                let body = read_limited(response, MAX_TOKEN_RESPONSE, "token response", &url).await?;
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let parsed: TokenResponse = serde_json::from_slice(&body)
                    .map_err(|e| ClientError::BadChallenge(format!("token response: {e}")))?;
                let token = parsed
                    .token
                    .or(parsed.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| ClientError::BadChallenge("token response has no token".into()))?;
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadChallenge("token is not a valid header".into()))?;
                value.set_sensitive(true);
                Ok(value)
            }
        }
    }
}

/// Maps error statuses (and the registry's error codes) to errors.
async fn check_status(response: Response, url: &str, what: &str, repository: &str) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = read_limited(response, 64 * 1024, "error body", url).await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<RegistryError>,
    }
    #[derive(serde::Deserialize)]
    struct RegistryError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let first = serde_json::from_slice::<Errors>(&body).ok().and_then(|e| e.errors.into_iter().next());
    let code = first.as_ref().map(|e| e.code.as_str()).unwrap_or("");
    let message = first
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    Err(match (status, code) {
        (_, "MANIFEST_UNKNOWN") => ClientError::ManifestUnknown(what.to_string()),
        (_, "NAME_UNKNOWN") => ClientError::NameUnknown(repository.to_string()),
        (_, "BLOB_UNKNOWN") => ClientError::BlobUnknown(what.to_string()),
        (StatusCode::NOT_FOUND, _) if url.contains("/manifests/") => ClientError::ManifestUnknown(what.to_string()),
        (StatusCode::NOT_FOUND, _) if url.contains("/blobs/") => ClientError::BlobUnknown(what.to_string()),
        (StatusCode::UNAUTHORIZED, _) => ClientError::Unauthorized(message),
        (StatusCode::FORBIDDEN, _) | (_, "DENIED") => ClientError::Denied(message),
        _ => ClientError::Status { status, url: url.to_string(), message },
    })
}

/// Reads a body into memory, failing as soon as it passes `max` bytes.
async fn read_limited(mut response: Response, max: u64, what: &str, url: &str) -> Result<Vec<u8>, ClientError> {
    if response.content_length().is_some_and(|l| l > max) {
        return Err(ClientError::TooLarge { what: what.to_string(), max });
    }
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|source| ClientError::Http { url: url.to_string(), source })?
    {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(ClientError::TooLarge { what: what.to_string(), max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Checks that content of `size` bytes hashing to `actual` is what `desc` describes.
pub(crate) fn verify(what: &str, desc: &Descriptor, size: u64, actual: &str) -> Result<(), ClientError> {
    if size != desc.size {
        return Err(ClientError::SizeMismatch { what: what.to_string(), expected: desc.size, actual: size });
    }
    if actual != desc.digest {
        return Err(ClientError::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
