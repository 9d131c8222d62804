//! The HTTP surface in process (`Router::oneshot`), without kernels: readiness, the access check
//! through envd (a stand-in on a real socket), and the refusals of bad requests, with the status
//! codes and bodies the SDKs read.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use ember_interpreter::context::Registry;
use ember_interpreter::envd::Envd;
use ember_interpreter::kernel::KernelSettings;
use ember_interpreter::server::{router, App};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const TOKEN: &str = "tok";

/// envd's `/envs`: 200 `{}` with the token, 401 without.
async fn fake_envd() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let (status, body) = if req.contains(&format!("x-access-token: {TOKEN}")) {
                    ("200 OK", r#"{"A":"1"}"#.to_string())
                } else {
                    ("401 Unauthorized", r#"{"code":401,"message":"invalid access token"}"#.to_string())
                };
                let res = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(res.as_bytes()).await;
            });
        }
    });
    addr
}

fn app(envd: std::net::SocketAddr, kernels: &std::path::Path) -> Arc<App> {
    let settings = KernelSettings {
        account: None,
        runtime_dir: kernels.into(),
        start_timeout: Duration::from_secs(1),
        path: String::new(),
    };
    // Only a python kernelspec (never started here).
    std::fs::create_dir_all(kernels.join("python3")).unwrap();
    std::fs::write(kernels.join("python3/kernel.json"), r#"{"argv":["/nonexistent","{connection_file}"]}"#).unwrap();
    let registry = Registry::new(settings, kernels, "/".into(), 4);
    Arc::new(App {
        registry,
        envd: Envd { addr: envd, timeout: Duration::from_secs(2) },
        ready: AtomicBool::new(false),
    })
}

async fn call(app: &Arc<App>, method: &str, uri: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("X-Access-Token", t);
    }
    let res = router(app.clone()).oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn health_waits_for_readiness() {
    let t = tempfile::tempdir().unwrap();
    let app = app(fake_envd().await, t.path());
    assert_eq!(call(&app, "GET", "/health", None, "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    app.ready.store(true, Ordering::Release);
    assert_eq!(call(&app, "GET", "/health", None, "").await, (StatusCode::OK, "\"OK\"".into()));
}

#[tokio::test]
async fn execute_refusals() {
    let t = tempfile::tempdir().unwrap();
    let app = app(fake_envd().await, t.path());
    let tok = Some(TOKEN);
    let (s, b) = call(&app, "POST", "/execute", None, r#"{"code":"1"}"#).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(b, r#"{"code":401,"message":"invalid access token"}"#);
    let (s, b) = call(&app, "POST", "/execute", tok, "{nope").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b.starts_with("invalid request body"), "{b}");
    let (s, b) = call(&app, "POST", "/execute", tok, r#"{"code":"1","language":"python","context_id":"x"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b.contains("mutually exclusive"));
    let (s, b) = call(&app, "POST", "/execute", tok, r#"{"code":"1","context_id":"abc"}"#).await;
    assert_eq!((s, b.as_str()), (StatusCode::NOT_FOUND, "Context abc not found"));
    let (s, b) = call(&app, "POST", "/execute", tok, r#"{"code":"1","language":"deno"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b, r#"language "deno" is not available; available languages: python"#);
    let (s, b) = call(&app, "POST", "/execute", tok, r#"{"code":"1","env_vars":{"A B":"x"}}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b.contains("invalid environment variable name"), "{b}");
}

#[tokio::test]
async fn envd_unreachable_is_502() {
    let t = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let app = app(dead, t.path());
    let (s, b) = call(&app, "POST", "/execute", Some(TOKEN), r#"{"code":"1"}"#).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(b.contains("\"code\":502"), "{b}");
}

#[tokio::test]
async fn contexts_without_kernels() {
    let t = tempfile::tempdir().unwrap();
    let app = app(fake_envd().await, t.path());
    // The SDKs send no token on /contexts: allowed; a wrong one is refused.
    assert_eq!(call(&app, "GET", "/contexts", None, "").await, (StatusCode::OK, "[]".into()));
    assert_eq!(call(&app, "GET", "/contexts", Some("bad"), "").await.0, StatusCode::UNAUTHORIZED);
    let (s, b) = call(&app, "POST", "/contexts", None, r#"{"language":"r"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b.contains("\"r\""));
    let (s, _) = call(&app, "POST", "/contexts", None, r#"{"cwd":"relative"}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A kernel that cannot start: 503 with the reason, and no context left behind.
    let (s, b) = call(&app, "POST", "/contexts", None, "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(b.contains("did not start"), "{b}");
    assert_eq!(call(&app, "GET", "/contexts", None, "").await.1, "[]");
    assert_eq!(
        call(&app, "DELETE", "/contexts/x", None, "").await,
        (StatusCode::NOT_FOUND, "Context x not found".into())
    );
    assert_eq!(call(&app, "POST", "/contexts/x/restart", None, "").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cors_preflights_need_no_token_and_answers_carry_cors_headers() {
    let t = tempfile::tempdir().unwrap();
    let app = app(fake_envd().await, t.path());
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/execute")
        .header("Origin", "http://example.test")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type, x-access-token")
        .body(Body::empty())
        .unwrap();
    let res = router(app.clone()).oneshot(preflight).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-access-token");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("DELETE"));
    assert!(h.contains_key("access-control-max-age"));
    // A refusal carries them too, so a browser can read it.
    let refused = Request::builder().method("POST").uri("/execute").body(Body::from(r#"{"code":"1"}"#)).unwrap();
    let res = router(app).oneshot(refused).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(res.headers().contains_key("access-control-expose-headers"));
}
