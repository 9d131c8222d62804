//! The daemon's HTTP surface in process, through `Router::oneshot`: API keys, request
//! validation, error shapes, team isolation and the proxy's answers for sandboxes that do not
//! exist. No QEMU and no root: the runtime is `Runtime::unchecked` and the daemon may run no
//! sandbox at all (`max_sandboxes` 0), so a create that passes validation stops at the limit
//! (429) and nothing is ever started. Every answer is checked for internal detail (database
//! text, host paths) that must not reach clients.

// The helpers below are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::Router;
use ember_daemon::error::ApiError;
use ember_daemon::manager::{LifecycleError, Manager};
use ember_daemon::ServeConfig;
use ember_runtime::{Runtime, RuntimeConfig, RuntimeError};
use ember_store::{SnapshotRecord, Store, StoreError};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The key in `EMBER_API_KEY` (team `default`).
const ENV_KEY: &str = "e2b_53ae1fa40ba5d1d8e9b0fe4d0a4e1f5a3c2b6d7e";
const MAX_TIMEOUT: i64 = 3600;
const MIB: usize = 1 << 20;

struct Daemon {
    app: Router,
    manager: Arc<Manager>,
    data: tempfile::TempDir,
    /// A stored key of team `other`.
    other: String,
}

struct Answer {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// An error answer: `status`, JSON `{code, message}` with `code` the status, nothing else.
    fn assert_error(&self, status: StatusCode, what: &str) -> String {
        assert_eq!(self.status, status, "{what}: {}", self.text);
        assert_eq!(self.content_type, "application/json", "{what}");
        let v = self.json();
        let obj = v.as_object().unwrap_or_else(|| panic!("{what}: not an object: {v}"));
        assert_eq!(obj.len(), 2, "{what}: {v}");
        assert_eq!(v["code"], json!(status.as_u16()), "{what}: {v}");
        let message = v["message"].as_str().unwrap_or_else(|| panic!("{what}: no message: {v}"));
        assert!(!message.is_empty(), "{what}");
        message.to_string()
    }
}

impl Daemon {
    fn new() -> Self {
        let data = tempfile::Builder::new().prefix("ember-router-").tempdir().unwrap();
        let config = ServeConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir: data.path().to_path_buf(),
            default_timeout_secs: 300,
            max_timeout_secs: MAX_TIMEOUT as u64,
            max_sandboxes: 0,
            max_vcpus: 4,
            max_memory_mib: 4096,
            vcpus: None,
            memory_mib: None,
            env_api_key: Some(ENV_KEY.into()),
            destroy_on_exit: false,
            snapshots: false,
            pool_size: 0,
            interpreter_pool_size: 0,
            max_paused_per_team: 16,
            max_snapshots_per_team: 10,
            max_snapshot_bytes: 1 << 30,
            domain: "sandboxes.test".into(),
            build_ready_timeout_secs: None,
            metrics_listen: None,
            team_quota: Default::default(),
        };
        let runtime_config = RuntimeConfig::new(
            data.path().to_path_buf(),
            ember_image::Cache::new(data.path().join("cache")),
            ember_image::GuestBinaries::beside(data.path().join("no-agent")),
        );
        let runtime = Runtime::unchecked(runtime_config).unwrap();
        let store = Store::open_in_memory().unwrap();
        let other = store.create_key("other", "test").unwrap().key;
        let manager = Manager::new(config, store, runtime);
        let app = ember_daemon::router(Arc::clone(&manager));
        Self { app, manager, data, other }
    }

    async fn call(&self, req: Request<Body>) -> Answer {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let content_type =
            resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        // Nothing internal in any answer.
        let lower = text.to_lowercase();
        for leak in ["database", "sqlite", "/tmp", "/var", "/root", "ember-router-", "panicked"] {
            assert!(!lower.contains(leak), "an answer leaks {leak:?}: {text}");
        }
        assert!(!text.contains(&self.data.path().display().to_string()), "an answer leaks the data directory: {text}");
        Answer { status, content_type, text }
    }

    /// `method path` with `key` as `X-API-Key` (none when `None`) and a JSON body.
    async fn send(&self, method: Method, path: &str, key: Option<&str>, body: impl Into<Body>) -> Answer {
        let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        self.call(req.body(body.into()).unwrap()).await
    }

    async fn get(&self, path: &str, key: &str) -> Answer {
        self.send(Method::GET, path, Some(key), Body::empty()).await
    }

    async fn create(&self, body: &str) -> Answer {
        self.send(Method::POST, "/sandboxes", Some(ENV_KEY), body.to_string()).await
    }
}

/// Every REST endpoint, with a sandbox or snapshot id that does not exist.
const ENDPOINTS: &[(&str, &str)] = &[
    ("POST", "/sandboxes"),
    ("GET", "/sandboxes"),
    ("POST", "/v2/sandboxes"),
    ("GET", "/v2/sandboxes"),
    ("GET", "/sandboxes/nope"),
    ("DELETE", "/sandboxes/nope"),
    ("POST", "/sandboxes/nope/timeout"),
    ("POST", "/sandboxes/nope/refreshes"),
    ("POST", "/sandboxes/nope/connect"),
    ("POST", "/v2/sandboxes/nope/connect"),
    ("POST", "/sandboxes/nope/resume"),
    ("POST", "/sandboxes/nope/pause"),
    ("GET", "/sandboxes/nope/metrics"),
    ("GET", "/sandboxes/nope/logs"),
    ("GET", "/v2/sandboxes/nope/logs"),
    ("GET", "/sandboxes/metrics"),
    ("POST", "/sandboxes/nope/fork"),
    ("POST", "/sandboxes/nope/snapshots"),
    ("GET", "/snapshots"),
    ("DELETE", "/templates/nope"),
    ("GET", "/templates/nope"),
    ("GET", "/templates"),
    ("GET", "/v2/templates"),
    ("POST", "/v3/templates"),
    ("GET", "/templates/nope/files/0000000000000000000000000000000000000000000000000000000000000000"),
    ("POST", "/v2/templates/nope/builds/nope"),
    ("GET", "/templates/nope/builds/nope/status"),
    ("GET", "/templates/aliases/nope"),
    ("GET", "/teams/nope/metrics"),
    ("GET", "/teams/nope/metrics/max"),
];

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).unwrap()
}

#[tokio::test]
async fn rest_calls_need_a_valid_key() {
    let d = Daemon::new();
    let revoked = d.manager.store().create_key("default", "gone").unwrap();
    assert!(d.manager.store().revoke_key(&revoked.id).unwrap());
    let too_long = format!("{ENV_KEY}{}", "0".repeat(256));
    let keys: [Option<&str>; 7] = [
        None,
        Some(""),
        Some("e2b_wrong"),
        Some(&ENV_KEY[..ENV_KEY.len() - 1]),
        Some(&too_long),
        Some(&revoked.key),
        Some(&ENV_KEY.to_uppercase()),
    ];
    for (m, path) in ENDPOINTS {
        for key in keys {
            let a = d.send(method(m), path, key, r#"{"templateID":"base"}"#).await;
            let message = a.assert_error(StatusCode::UNAUTHORIZED, &format!("{m} {path} with {key:?}"));
            assert_eq!(message, "invalid API key");
        }
    }
    // A key that is not text.
    let mut req = Request::get("/sandboxes").body(Body::empty()).unwrap();
    req.headers_mut().insert("x-api-key", HeaderValue::from_bytes(b"e2b_\xff\xfe").unwrap());
    d.call(req).await.assert_error(StatusCode::UNAUTHORIZED, "non-UTF-8 key");
    // The health check needs none; valid keys of both kinds work.
    assert_eq!(d.send(Method::GET, "/health", None, Body::empty()).await.status, StatusCode::NO_CONTENT);
    assert_eq!(d.get("/sandboxes", ENV_KEY).await.status, StatusCode::OK);
    assert_eq!(d.get("/sandboxes", &d.other).await.status, StatusCode::OK);
}

#[tokio::test]
async fn create_refuses_invalid_requests_with_400() {
    let d = Daemon::new();
    let many: serde_json::Map<String, Value> = (0..101).map(|i| (format!("k{i}"), json!("v"))).collect();
    let long_value = "v".repeat(8193);
    let long_key = "k".repeat(257);
    let cases: Vec<(&str, String)> = vec![
        ("empty body", String::new()),
        ("invalid JSON", "{\"templateID\":".into()),
        ("not an object", "[]".into()),
        ("missing templateID", "{}".into()),
        ("templateID not a string", r#"{"templateID":7}"#.into()),
        ("unknown template", r#"{"templateID":"no-such-template"}"#.into()),
        ("timeout 0", r#"{"templateID":"base","timeout":0}"#.into()),
        ("negative timeout", r#"{"templateID":"base","timeout":-5}"#.into()),
        ("timeout over the maximum", format!(r#"{{"templateID":"base","timeout":{}}}"#, MAX_TIMEOUT + 1)),
        ("timeout not a number", r#"{"templateID":"base","timeout":"60"}"#.into()),
        ("101 metadata entries", json!({"templateID": "base", "metadata": many}).to_string()),
        ("101 env vars", json!({"templateID": "base", "envVars": many}).to_string()),
        ("metadata value too long", json!({"templateID": "base", "metadata": {"k": long_value}}).to_string()),
        ("metadata key too long", json!({"templateID": "base", "metadata": {long_key: "v"}}).to_string()),
        ("empty metadata key", json!({"templateID": "base", "metadata": {"": "v"}}).to_string()),
        ("env var name with =", json!({"templateID": "base", "envVars": {"A=B": "1"}}).to_string()),
        ("env var with NUL", json!({"templateID": "base", "envVars": {"A": "x\u{0}y"}}).to_string()),
        ("metadata not strings", r#"{"templateID":"base","metadata":{"k":1}}"#.into()),
    ];
    for path in ["/sandboxes", "/v2/sandboxes"] {
        for (what, body) in &cases {
            let a = d.send(Method::POST, path, Some(ENV_KEY), body.clone()).await;
            a.assert_error(StatusCode::BAD_REQUEST, &format!("{path}: {what}"));
        }
    }
    let unknown = d.create(r#"{"templateID":"no-such-template"}"#).await;
    assert!(unknown.assert_error(StatusCode::BAD_REQUEST, "unknown").contains("no-such-template"));
    let timeout = d.create(r#"{"templateID":"base","timeout":0}"#).await;
    assert!(timeout.assert_error(StatusCode::BAD_REQUEST, "timeout").contains("between 1 and 3600"));
}

#[tokio::test]
async fn valid_creates_stop_at_the_sandbox_limit() {
    let d = Daemon::new();
    let full = json!({
        "templateID": "code-interpreter-v1",
        "timeout": MAX_TIMEOUT,
        "metadata": (0..100).map(|i| (format!("k{i}"), json!("v".repeat(8192)))).collect::<serde_json::Map<_, _>>(),
        "envVars": {"PATH_EXTRA": "/opt/bin", "EMPTY": ""},
        "secure": true,
        "allow_internet_access": false,
        "autoPause": false,
        "someFieldFromANewerSdk": 1,
    });
    for body in
        [r#"{"templateID":"base"}"#.to_string(), r#"{"templateID":"base","timeout":1}"#.into(), full.to_string()]
    {
        assert!(body.len() < MIB);
        let a = d.create(&body).await;
        a.assert_error(StatusCode::TOO_MANY_REQUESTS, &body[..body.len().min(60)]);
    }
    assert!(d.manager.all().is_empty());
    assert!(d.manager.store().sandboxes().unwrap().is_empty());
}

#[tokio::test]
async fn a_template_bigger_than_the_maxima_is_refused_at_create() {
    // A template built before the operator lowered --max-cpus: its saved state has 8 vCPUs.
    let d = Daemon::new();
    let store = d.manager.store();
    let template = ember_store::TemplateRecord {
        id: "tbig".into(),
        team: "default".into(),
        name: "big".into(),
        created_ms: 1,
        vcpus: 8,
        memory_mib: 512,
        min_free_mib: 1024,
    };
    store.upsert_template(&template).unwrap();
    store
        .insert_build(&ember_store::BuildRecord {
            id: "bbig".into(),
            template_id: "tbig".into(),
            tags: vec!["latest".into()],
            status: ember_store::BuildStatus::Ready,
            reason: None,
            reason_step: None,
            created_ms: 1,
            finished_ms: Some(2),
            defaults: Some(r#"{"user":"user","env":{}}"#.into()),
            agent_token: None,
            free_mib: Some(1024),
        })
        .unwrap();
    let dir = d.data.path().join(ember_runtime::private::TEMPLATES).join("bbig");
    std::fs::create_dir_all(&dir).unwrap();
    let shape = ember_runtime::snapshot::Shape {
        vcpus: 8,
        memory_mib: 512,
        kernel: "vmlinux".into(),
        cmdline: String::new(),
        ram: None,
    };
    shape.store(&dir).unwrap();
    let message = d.create(r#"{"templateID":"big"}"#).await.assert_error(StatusCode::BAD_REQUEST, "too big");
    assert!(message.contains("8 vCPUs") && message.contains("--max-cpus"), "{message}");
    assert!(d.manager.all().is_empty());
}

#[tokio::test]
async fn team_quotas_answer_before_the_host_limit_and_name_themselves() {
    let d = Daemon::new();
    let quota = ember_store::Quota { max_sandboxes: Some(0), ..Default::default() };
    d.manager.store().set_quota("default", &quota).unwrap();
    let a = d.create(r#"{"templateID":"base"}"#).await;
    let message = a.assert_error(StatusCode::TOO_MANY_REQUESTS, "team quota");
    assert!(message.contains("team quota: at most 0 concurrent sandboxes (team 'default'"), "{message}");
    let quota = ember_store::Quota { max_minutes_month: Some(0), ..Default::default() };
    d.manager.store().set_quota("default", &quota).unwrap();
    let message = d.create(r#"{"templateID":"base"}"#).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "minutes");
    assert!(message.contains("0 sandbox-minutes per month"), "{message}");
    // Another team has no quota of its own: only the host's limit.
    let other = d.send(Method::POST, "/sandboxes", Some(&d.other), r#"{"templateID":"base"}"#.to_string()).await;
    let message = other.assert_error(StatusCode::TOO_MANY_REQUESTS, "host limit");
    assert!(!message.contains("team quota"), "{message}");
}

#[tokio::test]
async fn team_metrics_are_the_callers_own_and_bounded() {
    let d = Daemon::new();
    let a = d.get("/teams/default/metrics?start=1000&end=2000", ENV_KEY).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let points = a.json();
    let points = points.as_array().unwrap();
    assert_eq!(points.len(), 100);
    assert_eq!(
        points[0],
        json!({"timestamp": "1970-01-01T00:16:40.000000000Z", "timestampUnix": 1000, "concurrentSandboxes": 0, "sandboxStartRate": 0.0})
    );
    let a = d.get("/teams/default/metrics/max?metric=concurrent_sandboxes&start=1000&end=2000", ENV_KEY).await;
    assert_eq!(a.json()["value"], json!(0.0), "{}", a.text);
    d.get("/teams/default/metrics", &d.other).await.assert_error(StatusCode::NOT_FOUND, "another team");
    d.get("/teams/default/metrics/max?metric=nonsense", ENV_KEY).await.assert_error(StatusCode::BAD_REQUEST, "metric");
    d.get("/teams/default/metrics?start=5&end=4", ENV_KEY).await.assert_error(StatusCode::BAD_REQUEST, "window");
    d.get("/teams/default/metrics?start=0&end=99999999", ENV_KEY).await.assert_error(StatusCode::BAD_REQUEST, "span");
    d.get("/teams/default/metrics?start=x", ENV_KEY).await.assert_error(StatusCode::BAD_REQUEST, "not a number");
}

#[tokio::test]
async fn bodies_over_one_mib_are_413() {
    let d = Daemon::new();
    let big = format!(r#"{{"templateID":"base","metadata":{{"k":"{}"}}}}"#, "v".repeat(MIB));
    for path in ["/sandboxes", "/v2/sandboxes", "/sandboxes/nope/timeout", "/sandboxes/nope/connect"] {
        let a = d.send(Method::POST, path, Some(ENV_KEY), big.clone()).await;
        a.assert_error(StatusCode::PAYLOAD_TOO_LARGE, path);
    }
    // Just under the limit is read (and refused for what it says).
    let under = format!(r#"{{"templateID":"base","metadata":{{"k":"{}"}}}}"#, "v".repeat(MIB - 100));
    d.create(&under).await.assert_error(StatusCode::BAD_REQUEST, "value too long");
}

#[tokio::test]
async fn unknown_sandboxes_are_404() {
    let d = Daemon::new();
    for (m, path) in ENDPOINTS.iter().filter(|(_, p)| p.contains("/nope")) {
        let expected = match path {
            p if p.contains("templates") => "template \"nope\"",
            p if p.contains("teams") => "team \"nope\"",
            _ => "sandbox \"nope\"",
        };
        for body in ["", "{}", r#"{"timeout":60}"#] {
            let a = d.send(method(m), path, Some(ENV_KEY), body.to_string()).await;
            let message = a.assert_error(StatusCode::NOT_FOUND, &format!("{m} {path} {body}"));
            assert!(message.contains(expected), "{m} {path}: {message}");
        }
    }
}

#[tokio::test]
async fn teams_see_only_their_own() {
    let d = Daemon::new();
    for key in [ENV_KEY, d.other.as_str()] {
        for path in ["/sandboxes", "/v2/sandboxes", "/sandboxes?state=running,paused", "/v2/sandboxes?limit=1"] {
            let a = d.get(path, key).await;
            assert_eq!((a.status, a.json()), (StatusCode::OK, json!([])), "{path}");
            assert_eq!(a.content_type, "application/json");
        }
        for path in ["/sandboxes?state=bogus", "/v2/sandboxes?state=running,bogus", "/v2/sandboxes?limit=0"] {
            d.get(path, key).await.assert_error(StatusCode::BAD_REQUEST, path);
        }
        assert_eq!(d.get("/snapshots", key).await.json(), json!([]));
    }

    // A snapshot of team `default` (as a finished snapshot leaves it, without a guest).
    let snapshot = SnapshotRecord {
        id: "0123456789abcdef0123".into(),
        team: "default".into(),
        name: "saved:latest".into(),
        sandbox_id: "sbx".into(),
        created_ms: 1,
        agent_token: Some("token".into()),
    };
    d.manager.store().insert_snapshot(&snapshot).unwrap();
    let dir = d.manager.snapshot_dir(&snapshot.id);
    std::fs::create_dir_all(&dir).unwrap();
    let listed = json!([{"snapshotID": "saved:latest", "names": ["default/saved:latest"]}]);
    assert_eq!(d.get("/snapshots", ENV_KEY).await.json(), listed);
    assert_eq!(d.get("/snapshots?name=saved", ENV_KEY).await.json(), listed);
    assert_eq!(d.get("/snapshots?name=other", ENV_KEY).await.json(), json!([]));
    assert_eq!(d.get("/snapshots", &d.other).await.json(), json!([]));
    // Another team can neither start from it (by id or name) nor delete it.
    for template in [snapshot.id.as_str(), "saved"] {
        let body = json!({ "templateID": template }).to_string();
        let a = d.send(Method::POST, "/sandboxes", Some(&d.other), body.clone()).await;
        a.assert_error(StatusCode::BAD_REQUEST, "another team's snapshot");
        // Its owner gets past validation (and stops at the limit).
        d.create(&body).await.assert_error(StatusCode::TOO_MANY_REQUESTS, "own snapshot");
    }
    let path = format!("/templates/{}", snapshot.id);
    d.send(Method::DELETE, &path, Some(&d.other), Body::empty()).await.assert_error(StatusCode::NOT_FOUND, &path);
    assert!(dir.exists());
    // Its E2B name (the snapshotID the SDK holds) deletes it as its id does.
    d.send(Method::DELETE, "/templates/other:latest", Some(ENV_KEY), Body::empty())
        .await
        .assert_error(StatusCode::NOT_FOUND, "another name");
    let deleted = d.send(Method::DELETE, "/templates/saved:latest", Some(ENV_KEY), Body::empty()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(!dir.exists());
    d.send(Method::DELETE, &path, Some(ENV_KEY), Body::empty()).await.assert_error(StatusCode::NOT_FOUND, "again");
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let d = Daemon::new();
    for key in [None, Some(ENV_KEY)] {
        for path in ["/nope", "/sandboxes/a/b/c", "/v3/sandboxes", "/files", "/files?path=%2Fetc&signature=v1_x"] {
            let a = d.send(Method::GET, path, key, Body::empty()).await;
            a.assert_error(StatusCode::NOT_FOUND, &format!("{path} with {key:?}"));
        }
    }
}

#[tokio::test]
async fn unreadable_query_strings_are_400_json() {
    let d = Daemon::new();
    for path in [
        "/v2/sandboxes?limit=many",
        "/v2/sandboxes?order=sideways",
        "/v2/sandboxes?startedAfter=yesterday",
        "/v2/sandboxes?nextToken=..%2Fx",
        "/v2/sandboxes/nope/logs?level=loud",
        "/sandboxes/nope/metrics?start=soon",
    ] {
        let a = d.send(Method::GET, path, Some(ENV_KEY), Body::empty()).await;
        a.assert_error(StatusCode::BAD_REQUEST, path);
    }
}

#[tokio::test]
async fn wrong_methods_are_405_json() {
    let d = Daemon::new();
    for (method, path) in [(Method::PUT, "/sandboxes"), (Method::PATCH, "/templates/x"), (Method::PATCH, "/snapshots")]
    {
        let a = d.send(method.clone(), path, Some(ENV_KEY), Body::empty()).await;
        a.assert_error(StatusCode::METHOD_NOT_ALLOWED, &format!("{method} {path}"));
    }
}

#[tokio::test]
async fn the_proxy_answers_502_for_unknown_sandboxes() {
    let d = Daemon::new();
    let not_found = |id: &str| json!({"sandboxId": id, "message": "The sandbox was not found", "code": 502});
    for key in [None, Some(ENV_KEY)] {
        for (port, path) in
            [(None, "/health"), (Some("49983"), "/init"), (Some("49999"), "/execute"), (Some("8080"), "/")]
        {
            let mut req = Request::post(path).header("e2b-sandbox-id", "nope");
            if let Some(port) = port {
                req = req.header("e2b-sandbox-port", port);
            }
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            let a = d.call(req.body(Body::from("{}")).unwrap()).await;
            assert_eq!((a.status, a.json()), (StatusCode::BAD_GATEWAY, not_found("nope")), "{path}");
            assert_eq!(a.content_type, "application/json");
        }
    }
    // The sandbox is looked up first: a bad port for a sandbox that does not exist is still 502.
    // (A bad port for a running one is 400; that needs a guest.)
    for port in ["0", "65536", "http", "", "+80"] {
        let req = Request::get("/").header("e2b-sandbox-id", "nope").header("e2b-sandbox-port", port);
        let a = d.call(req.body(Body::empty()).unwrap()).await;
        assert_eq!((a.status, a.json()), (StatusCode::BAD_GATEWAY, not_found("nope")), "port {port:?}");
    }
    let mut req = Request::get("/").body(Body::empty()).unwrap();
    req.headers_mut().insert("e2b-sandbox-id", HeaderValue::from_bytes(b"\xff").unwrap());
    let a = d.call(req).await;
    assert_eq!((a.status, a.json()), (StatusCode::BAD_GATEWAY, not_found("")));
}

#[test]
fn internal_errors_become_500_without_detail() {
    let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "/var/lib/ember/snapshots/x: denied");
    let internal = [
        LifecycleError::Store(StoreError::Io { context: "open /var/lib/ember/ember.db".into(), source: io() }),
        LifecycleError::Store(StoreError::Corrupt("sandbox abc".into(), "database disk image is malformed".into())),
        LifecycleError::Store(StoreError::TooNew(9, 2)),
        LifecycleError::Io("publish /var/lib/ember/snapshots/x".into(), io()),
        LifecycleError::Task("task panicked at crates/daemon/src/manager/mod.rs:1".into()),
        LifecycleError::from(RuntimeError::Io { context: "create /var/lib/ember/sandboxes/x".into(), source: io() }),
        LifecycleError::from(RuntimeError::BootTimeout { secs: 60, serial: "secret console text".into() }),
    ];
    for e in internal {
        let shown = format!("{e:?}");
        let api = ApiError::from(e);
        assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR, "{shown}");
        let message = api.to_string();
        for leak in ["/var", "database", "crates/", "panicked", "secret", "denied", "schema"] {
            assert!(!message.contains(leak), "{shown} became {message:?}");
        }
    }
    // Client errors keep their message.
    let api = ApiError::from(LifecycleError::Invalid("timeout must be between 1 and 10 seconds, got 0".into()));
    assert_eq!((api.status(), api.to_string().contains("got 0")), (StatusCode::BAD_REQUEST, true));
    assert_eq!(ApiError::from(LifecycleError::NotFound("x".into())).status(), StatusCode::NOT_FOUND);
    assert_eq!(ApiError::from(LifecycleError::Ended("x".into())).status(), StatusCode::NOT_FOUND);
    assert_eq!(ApiError::from(LifecycleError::Quota("q".into())).status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ApiError::from(LifecycleError::Conflict("c".into())).status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_500_answer_is_json_with_a_summary() {
    use axum::response::IntoResponse;
    let e = LifecycleError::Store(StoreError::Corrupt("row".into(), "database disk image is malformed".into()));
    let resp = ApiError::from(e).into_response();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body, json!({"code": 500, "message": "the sandbox operation failed; see the daemon's log"}));
}

#[tokio::test]
async fn template_sizes_stay_within_the_operators_maxima() {
    let d = Daemon::new();
    for body in
        [r#"{"name":"big","cpuCount":5}"#, r#"{"name":"big","memoryMB":4097}"#, r#"{"name":"big","cpuCount":0}"#]
    {
        let r = d.send(Method::POST, "/v3/templates", Some(ENV_KEY), body.to_string()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
        assert!(r.text.contains("cpuCount must be 1-4 and memoryMB 128-4096"), "{}", r.text);
    }
    let ok = d
        .send(
            Method::POST,
            "/v3/templates",
            Some(ENV_KEY),
            r#"{"name":"big","cpuCount":4,"memoryMB":4096}"#.to_string(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
}

#[tokio::test]
async fn template_builds_are_requested_uploaded_and_checked_per_team() {
    let d = Daemon::new();
    let made = d.send(Method::POST, "/v3/templates", Some(ENV_KEY), r#"{"name":"web:v1"}"#.to_string()).await;
    assert_eq!(made.status, StatusCode::ACCEPTED, "{}", made.text);
    let made = made.json();
    let (tid, bid) = (made["templateID"].as_str().unwrap(), made["buildID"].as_str().unwrap());
    assert_eq!(made["names"], json!(["web"]));
    assert_eq!(made["tags"], json!(["v1"]));
    // Another team sees nothing of it.
    for path in
        [format!("/templates/{tid}"), format!("/templates/{tid}/builds/{bid}/status"), "/templates/aliases/web".into()]
    {
        d.get(&path, &d.other).await.assert_error(StatusCode::NOT_FOUND, &path);
    }
    assert_eq!(d.get("/templates", &d.other).await.json(), json!([]));
    // An upload URL, then the upload, then the files are present.
    let hash = "ab".repeat(32);
    let link = d.get(&format!("/templates/{tid}/files/{hash}"), ENV_KEY).await;
    assert_eq!(link.status, StatusCode::CREATED, "{}", link.text);
    let url = link.json()["url"].as_str().unwrap().to_string();
    let path = url.split_once("/templates/uploads/").map(|(_, t)| format!("/templates/uploads/{t}")).unwrap();
    let put = d.send(Method::PUT, &path, None, Body::from(vec![7u8; 1000])).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let again = d.get(&format!("/templates/{tid}/files/{hash}"), ENV_KEY).await.json();
    assert_eq!(again, json!({"present": true}));
    // Another team's link for the same hash is its own: the upload is not shared.
    let other = d.send(Method::POST, "/v3/templates", Some(&d.other), r#"{"name":"web"}"#.to_string()).await.json();
    let theirs = d.get(&format!("/templates/{}/files/{hash}", other["templateID"].as_str().unwrap()), &d.other).await;
    assert_eq!(theirs.json()["present"], json!(false));
    // Bad build bodies: 400 with what is wrong, and the build stays waiting.
    let start = format!("/v2/templates/{tid}/builds/{bid}");
    for (body, words) in [
        (r#"{"steps":[{"type":"RUN"}]}"#, "RUN needs a command"),
        (
            r#"{"steps":[{"type":"COPY","args":["a","/b"],"filesHash":"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"}]}"#,
            "were not uploaded",
        ),
        (r#"{"fromTemplate":"web","fromImage":"x"}"#, "not both"),
        (r#"{"fromImageRegistry":{"type":"gcp"},"fromImage":"a/b"}"#, "only"),
        (r#"{"steps": 3}"#, "invalid JSON"),
    ] {
        let a = d.send(Method::POST, &start, Some(ENV_KEY), body.to_string()).await;
        let message = a.assert_error(StatusCode::BAD_REQUEST, body);
        assert!(message.contains(words), "{body}: {message}");
    }
    let status = d.get(&format!("/templates/{tid}/builds/{bid}/status"), ENV_KEY).await.json();
    assert_eq!(status["status"], json!("waiting"));
    // Upload URLs are single-purpose and unknown ones are 404.
    d.send(Method::PUT, "/templates/uploads/nope", None, Body::from("x"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "upload");
    assert_eq!(
        d.send(Method::DELETE, &format!("/templates/{tid}"), Some(ENV_KEY), Body::empty()).await.status,
        StatusCode::NO_CONTENT
    );
    d.get(&format!("/templates/{tid}"), ENV_KEY).await.assert_error(StatusCode::NOT_FOUND, "deleted");
}
