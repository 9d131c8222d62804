//! `/init`'s `caBundle` in a guest agent: checked, installed in the trust store once however many
//! times `/init` gives it, removed by an empty one, and announced to processes as
//! `NODE_EXTRA_CA_CERTS` whatever `envVars` later `/init`s give. The agent runs as a guest
//! (`guest: true`) on a scratch account database and scratch trust-store paths; the `/init`s
//! carry no time, entropy or hostname, so nothing of the machine running the test changes.
//! Also the files `/init`'s env vars name the sandbox by (`/run/e2b` in a guest, a scratch
//! directory here).

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use ember_agent::ca::{CaPaths, BEGIN_MARK};
use ember_agent::server::{router, AgentConfig};
use ember_agent::state::Agent;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

const TOKEN: &str = "secret-token";
const SYSTEM: &str = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";

struct Guest {
    root: PathBuf,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Guest {
    async fn start(root: &Path) -> Self {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), format!("user:x:{uid}:{gid}::/tmp:/bin/sh\n")).unwrap();
        std::fs::write(root.join("etc/group"), format!("user:x:{gid}:\n")).unwrap();
        let config = AgentConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            default_user: "user".into(),
            users_root: root.to_path_buf(),
            guest: true,
            state_file: Some(root.join("state/agent.json")),
            ca_paths: CaPaths { extra: root.join("local/ember-extra.crt"), system: root.join("certs/ca.crt") },
            guest_ip: None,
            run_info_dir: Some(root.join("run/e2b")),
        };
        let agent = Arc::new(Agent::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router(agent)).await;
        });
        Self { root: root.to_path_buf(), addr, task }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    async fn call(&self, path: &str, token: Option<&str>, ctype: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method("POST").uri(path).header("host", "agent").header("content-type", ctype);
        if let Some(t) = token {
            req = req.header("x-access-token", t);
        }
        let res = sender.send_request(req.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
        let status = res.status();
        (status, res.into_body().collect().await.unwrap().to_bytes().to_vec())
    }

    async fn init(&self, body: serde_json::Value) -> (StatusCode, String) {
        let (status, body) = self.call("/init", Some(TOKEN), "application/json", body.to_string().into_bytes()).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// What a process started with no env vars of its own sees in `NODE_EXTRA_CA_CERTS`.
    async fn node_env(&self) -> String {
        let msg =
            serde_json::json!({"process": {"cmd": "/bin/sh", "args": ["-c", "printf %s \"$NODE_EXTRA_CA_CERTS\""]}});
        let msg = msg.to_string();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(msg.as_bytes());
        let (status, mut body) =
            self.call("/process.Process/Start", Some(TOKEN), "application/connect+json", frame).await;
        assert_eq!(status, StatusCode::OK);
        let mut stdout = Vec::new();
        while body.len() >= 5 {
            let len = usize::try_from(u32::from_be_bytes(body[1..5].try_into().unwrap())).unwrap();
            let event: serde_json::Value = serde_json::from_slice(&body[5..5 + len]).unwrap();
            if let Some(data) = event.pointer("/event/data/stdout").and_then(|d| d.as_str()) {
                stdout.extend(base64::engine::general_purpose::STANDARD.decode(data).unwrap());
            }
            body.drain(..5 + len);
        }
        String::from_utf8(stdout).unwrap()
    }
}

/// A PEM block over a DER SEQUENCE (the agent checks no more), in 64-column lines.
fn cert(seed: u8) -> String {
    let der: Vec<u8> = [0x30, 0x81, 0x40].into_iter().chain((0..64).map(|i| i ^ seed)).collect();
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[tokio::test]
async fn ca_bundle_is_installed_once_and_node_is_told() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/ca.crt"), SYSTEM).unwrap();
    let guest = Guest::start(dir.path()).await;
    let (extra, system) = (guest.path("local/ember-extra.crt"), guest.path("certs/ca.crt"));
    let token = serde_json::json!({"accessToken": TOKEN});
    assert_eq!(
        guest.call("/init", None, "application/json", token.to_string().into_bytes()).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(guest.node_env().await, "");

    // A pooled sandbox's /init, then the create's: one block.
    for _ in 0..2 {
        let (status, _) = guest.init(serde_json::json!({"caBundle": cert(1), "envVars": {"A": "1"}})).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert_eq!(read(&extra), cert(1));
    assert_eq!(read(&system), format!("{SYSTEM}{BEGIN_MARK}\n{}# ember: extra CA certificates end\n", cert(1)));
    assert_eq!(guest.node_env().await, extra.display().to_string());

    // Later envVars do not drop it; a caller's own value wins.
    assert_eq!(guest.init(serde_json::json!({"envVars": {"B": "2"}})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(guest.node_env().await, extra.display().to_string());
    let mine = serde_json::json!({"envVars": {"NODE_EXTRA_CA_CERTS": "/mine.pem"}});
    assert_eq!(guest.init(mine).await.0, StatusCode::NO_CONTENT);
    assert_eq!(guest.node_env().await, "/mine.pem");
    assert_eq!(guest.init(serde_json::json!({"envVars": {}})).await.0, StatusCode::NO_CONTENT);

    // Anything but PEM certificates is refused and changes nothing.
    for bad in ["not a certificate".to_string(), format!("{}{BEGIN_MARK}\n", cert(2))] {
        let (status, body) = guest.init(serde_json::json!({"caBundle": bad})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("caBundle line"), "{body}");
    }
    assert_eq!(read(&extra), cert(1));

    // The setting survives a restart of the server.
    drop(guest);
    let guest = Guest::start(dir.path()).await;
    assert_eq!(guest.node_env().await, extra.display().to_string());

    // An empty bundle removes them.
    assert_eq!(guest.init(serde_json::json!({"caBundle": ""})).await.0, StatusCode::NO_CONTENT);
    assert!(!extra.exists());
    assert_eq!(read(&system), SYSTEM);
    assert_eq!(guest.node_env().await, "");
}

#[tokio::test]
async fn init_writes_the_files_naming_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let guest = Guest::start(dir.path()).await;
    let token = serde_json::json!({"accessToken": TOKEN, "envVars": {"E2B_SANDBOX": "true"}});
    assert_eq!(
        guest.call("/init", None, "application/json", token.to_string().into_bytes()).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(!guest.path("run/e2b/.E2B_SANDBOX_ID").exists());
    let env = serde_json::json!({"envVars": {"E2B_SANDBOX_ID": "sbx-a", "E2B_TEMPLATE_ID": "base"}});
    assert_eq!(guest.init(env).await.0, StatusCode::NO_CONTENT);
    assert_eq!(read(&guest.path("run/e2b/.E2B_SANDBOX_ID")), "sbx-a");
    assert_eq!(read(&guest.path("run/e2b/.E2B_TEMPLATE_ID")), "base");
    // A snapshot restored as another sandbox is initialised again; an /init without env vars
    // leaves the files as they are.
    let env = serde_json::json!({"envVars": {"E2B_SANDBOX_ID": "sbx-b", "E2B_TEMPLATE_ID": "base"}});
    assert_eq!(guest.init(env).await.0, StatusCode::NO_CONTENT);
    assert_eq!(guest.init(serde_json::json!({})).await.0, StatusCode::NO_CONTENT);
    assert_eq!(read(&guest.path("run/e2b/.E2B_SANDBOX_ID")), "sbx-b");
}
