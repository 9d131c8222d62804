//! The agent fails closed: without an access token it refuses every call but `GET /health` and
//! `/init`; the token and settings `/init` sets survive a restart through the state file; and a
//! state file that cannot be trusted leaves the agent refusing. Each test drives
//! `server::router` over a real socket on 127.0.0.1.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ember_agent::server::{router, AgentConfig};
use ember_agent::state::Agent;
use ember_envd_proto::signature::{sign, FileOp};
use ember_envd_proto::INITIALISED_HEADER;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;

const TOKEN: &str = "secret-token";
const UNAUTHORIZED: &str = "unauthorized access, please provide a valid access token or method signing if supported";

/// A scratch account database whose `user` is the test's own uid (so file calls work unprivileged).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("home/user")).unwrap();
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        std::fs::write(
            root.join("etc/passwd"),
            format!("user:x:{uid}:{gid}::{}:/bin/sh\n", root.join("home/user").display()),
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), format!("user:x:{gid}:\n")).unwrap();
        std::fs::write(root.join("home/user/hello.txt"), "hello").unwrap();
        Self { dir }
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("state/agent.json")
    }

    fn config(&self, state_file: Option<PathBuf>) -> AgentConfig {
        AgentConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            default_user: "user".into(),
            users_root: self.dir.path().to_path_buf(),
            guest: false,
            state_file,
            ca_paths: ember_agent::ca::CaPaths {
                extra: self.dir.path().join("ca/extra.crt"),
                system: self.dir.path().join("ca/bundle.crt"),
            },
            guest_ip: None,
            run_info_dir: None,
        }
    }

    fn hello(&self) -> String {
        self.dir.path().join("home/user/hello.txt").display().to_string()
    }

    /// Starts a server (a fresh process, as far as the agent knows) on the state file.
    async fn start(&self) -> Server {
        self.start_with(Some(self.state_file())).await
    }

    async fn start_with(&self, state_file: Option<PathBuf>) -> Server {
        let agent = Arc::new(Agent::new(self.config(state_file)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router(agent)).await;
        });
        Server { addr, task }
    }
}

struct Server {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Server {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, ctype: &str, body: &[u8]) -> Answer {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", "agent");
        if !ctype.is_empty() {
            req = req.header("content-type", ctype);
        }
        if let Some(t) = token {
            req = req.header("x-access-token", t);
        }
        let res = sender.send_request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call("GET", path, token, "", b"").await
    }

    async fn init(&self, token: Option<&str>, body: &str) -> StatusCode {
        self.call("POST", "/init", token, "application/json", body.as_bytes()).await.status
    }

    /// `process.Process/List`, a unary RPC.
    async fn list(&self, token: Option<&str>) -> Answer {
        self.call("POST", "/process.Process/List", token, "application/json", b"{}").await
    }

    /// `filesystem.Filesystem/Stat`, a unary RPC.
    async fn stat(&self, path: &str, token: Option<&str>) -> Answer {
        let body = format!(r#"{{"path":"{path}"}}"#);
        self.call("POST", "/filesystem.Filesystem/Stat", token, "application/json", body.as_bytes()).await
    }

    /// `process.Process/Start` of `cmd`, a server stream: errors come in the end-of-stream frame.
    async fn start_process(&self, token: Option<&str>, cmd: &str) -> Answer {
        let msg = format!(r#"{{"process":{{"cmd":"{cmd}"}}}}"#);
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(msg.as_bytes());
        self.call("POST", "/process.Process/Start", token, "application/connect+json", &frame).await
    }

    async fn initialised(&self) -> String {
        let a = self.get("/health", None).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        a.headers.get(INITIALISED_HEADER).unwrap().to_str().unwrap().to_string()
    }

    /// Every guarded endpoint refuses a call with `token` (or none).
    async fn refuses_everything(&self, token: Option<&str>, file: &str) {
        let plain = format!(r#"{{"code":401,"message":"{UNAUTHORIZED}"}}"#);
        for path in ["/envs", "/metrics", "/no-such-endpoint"] {
            let a = self.get(path, token).await;
            assert_eq!((a.status, a.body.as_str()), (StatusCode::UNAUTHORIZED, plain.as_str()), "GET {path}");
        }
        // `/files` answers with its own messages once the agent holds a token.
        assert_eq!(self.get(&format!("/files?path={file}"), token).await.status, StatusCode::UNAUTHORIZED);
        for guess in ["", token.unwrap_or_default()] {
            assert_eq!(self.get(&signed_url(file, guess), token).await.status, StatusCode::UNAUTHORIZED);
        }
        let upload = self.call("POST", &format!("/files?path={file}"), token, "application/octet-stream", b"x").await;
        assert_eq!(upload.status, StatusCode::UNAUTHORIZED);
        for a in [self.list(token).await, self.stat(file, token).await] {
            assert_eq!(a.status, StatusCode::UNAUTHORIZED);
            assert!(a.body.contains("\"unauthenticated\""), "{}", a.body);
        }
        let stream = self.start_process(token, "/bin/true").await;
        assert_eq!(stream.status, StatusCode::OK);
        assert!(stream.body.contains("\"unauthenticated\""), "{}", stream.body);
    }

    /// Every guarded endpoint serves a call with the token.
    async fn serves(&self, token: &str, file: &str) {
        assert_eq!(self.get("/envs", Some(token)).await.status, StatusCode::OK);
        assert_eq!(self.get("/metrics", Some(token)).await.status, StatusCode::OK);
        let download = self.get(&format!("/files?path={file}"), Some(token)).await;
        assert_eq!((download.status, download.body.as_str()), (StatusCode::OK, "hello"));
        assert_eq!(self.get(&signed_url(file, token), None).await.body, "hello");
        assert_eq!(self.list(Some(token)).await.status, StatusCode::OK);
        let stat = self.stat(file, Some(token)).await;
        assert_eq!(stat.status, StatusCode::OK, "{}", stat.body);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A download URL of `file` signed with `token`.
fn signed_url(file: &str, token: &str) -> String {
    let signature = sign(file, FileOp::Read, "", token, None).replace('+', "%2B").replace('/', "%2F");
    format!("/files?path={file}&signature={signature}")
}

fn init_body() -> String {
    format!(r#"{{"accessToken":"{TOKEN}","envVars":{{"SANDBOX":"yes"}},"defaultUser":"user","defaultWorkdir":"/tmp"}}"#)
}

#[tokio::test]
async fn before_init_only_health_and_init_answer() {
    let scratch = Scratch::new();
    let server = scratch.start().await;
    assert_eq!(server.initialised().await, "false");
    server.refuses_everything(None, &scratch.hello()).await;
    server.refuses_everything(Some("a-guess"), &scratch.hello()).await;
    assert_eq!(server.init(None, &init_body()).await, StatusCode::NO_CONTENT);
    assert_eq!(server.initialised().await, "true");
}

#[tokio::test]
async fn after_init_calls_need_the_token() {
    let scratch = Scratch::new();
    let server = scratch.start().await;
    assert_eq!(server.init(None, &init_body()).await, StatusCode::NO_CONTENT);
    server.serves(TOKEN, &scratch.hello()).await;
    server.refuses_everything(Some("wrong"), &scratch.hello()).await;
    let envs = server.get("/envs", Some(TOKEN)).await;
    assert_eq!(envs.body, r#"{"SANDBOX":"yes"}"#);
    // A later /init needs the token; an empty token does not clear it.
    assert_eq!(server.init(None, r#"{"accessToken":"mine"}"#).await, StatusCode::UNAUTHORIZED);
    assert_eq!(server.init(Some("wrong"), "{}").await, StatusCode::UNAUTHORIZED);
    assert_eq!(server.init(Some(TOKEN), r#"{"accessToken":""}"#).await, StatusCode::NO_CONTENT);
    assert_eq!(server.initialised().await, "true");
    server.refuses_everything(None, &scratch.hello()).await;
    assert_eq!(server.init(Some(TOKEN), r#"{"accessToken":"has space"}"#).await, StatusCode::BAD_REQUEST);
    assert_eq!(server.init(Some(TOKEN), r#"{"accessToken":"next"}"#).await, StatusCode::NO_CONTENT);
    server.serves("next", &scratch.hello()).await;
    server.refuses_everything(Some(TOKEN), &scratch.hello()).await;
}

#[tokio::test]
async fn a_restarted_server_keeps_the_token_and_settings() {
    let scratch = Scratch::new();
    let first = scratch.start().await;
    assert_eq!(first.init(None, &init_body()).await, StatusCode::NO_CONTENT);
    drop(first);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&scratch.state_file()), 0o600);
    assert_eq!(mode(scratch.state_file().parent().unwrap()), 0o700);

    let restarted = scratch.start().await;
    assert_eq!(restarted.initialised().await, "true");
    restarted.refuses_everything(None, &scratch.hello()).await;
    restarted.refuses_everything(Some("wrong"), &scratch.hello()).await;
    restarted.serves(TOKEN, &scratch.hello()).await;
    assert_eq!(restarted.get("/envs", Some(TOKEN)).await.body, r#"{"SANDBOX":"yes"}"#);
    assert_eq!(restarted.init(None, r#"{"accessToken":"mine"}"#).await, StatusCode::UNAUTHORIZED);
    assert_eq!(restarted.init(Some(TOKEN), r#"{"envVars":{"B":"2"}}"#).await, StatusCode::NO_CONTENT);
    drop(restarted);

    let again = scratch.start().await;
    assert_eq!(again.get("/envs", Some(TOKEN)).await.body, r#"{"B":"2"}"#);
    // The default workdir survived too: a process started without one runs there.
    let body = again.start_process(Some(TOKEN), "/bin/pwd").await.body;
    // stdout "/tmp\n" as base64.
    assert!(body.contains("L3RtcAo="), "{body}");
}

#[tokio::test]
async fn without_a_state_file_a_restart_fails_closed() {
    let scratch = Scratch::new();
    let first = scratch.start_with(None).await;
    assert_eq!(first.init(None, &init_body()).await, StatusCode::NO_CONTENT);
    drop(first);
    let restarted = scratch.start_with(None).await;
    assert_eq!(restarted.initialised().await, "false");
    restarted.refuses_everything(Some(TOKEN), &scratch.hello()).await;
}

#[tokio::test]
async fn an_untrusted_state_file_fails_closed() {
    let scratch = Scratch::new();
    let path = scratch.state_file();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    for (contents, mode) in [(&b"{\"version\":1,\"accessTo"[..], 0o600), (&b"\xff\xfe"[..], 0o600)] {
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let server = scratch.start().await;
        assert_eq!(server.initialised().await, "false");
        server.refuses_everything(None, &scratch.hello()).await;
        server.refuses_everything(Some(TOKEN), &scratch.hello()).await;
    }
    // A valid file other users could have written is not trusted either.
    let first = scratch.start().await;
    assert_eq!(first.init(None, &init_body()).await, StatusCode::NO_CONTENT);
    drop(first);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let server = scratch.start().await;
    assert_eq!(server.initialised().await, "false");
    server.refuses_everything(Some(TOKEN), &scratch.hello()).await;
    // The host can initialise it again, which replaces the file.
    assert_eq!(server.init(None, &init_body()).await, StatusCode::NO_CONTENT);
    server.serves(TOKEN, &scratch.hello()).await;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn an_init_without_a_token_leaves_the_agent_locked() {
    let scratch = Scratch::new();
    let server = scratch.start().await;
    for body in [r#"{"envVars":{"A":"1"}}"#, r#"{"accessToken":""}"#, ""] {
        assert_eq!(server.init(None, body).await, StatusCode::NO_CONTENT);
        assert_eq!(server.initialised().await, "false");
        server.refuses_everything(None, &scratch.hello()).await;
    }
    drop(server);
    let restarted = scratch.start().await;
    assert_eq!(restarted.initialised().await, "false");
    assert_eq!(restarted.init(None, &format!(r#"{{"accessToken":"{TOKEN}"}}"#)).await, StatusCode::NO_CONTENT);
    // The env vars of the first /init were kept.
    assert_eq!(restarted.get("/envs", Some(TOKEN)).await.body, r#"{"A":"1"}"#);
}

/// An upload refused before its body is read says `Connection: close`, so a client does not
/// send its next call on a connection the server is closing (a keep-alive race the guest SDK
/// suite hit once as "connection closed before message completed").
#[tokio::test]
async fn a_refused_upload_closes_its_connection() {
    let scratch = Scratch::new();
    let server = scratch.start().await;
    assert_eq!(server.init(None, &format!(r#"{{"accessToken":"{TOKEN}"}}"#)).await, StatusCode::NO_CONTENT);
    let bad = format!("{}/child", scratch.hello());
    let body = vec![b'x'; 1 << 20];
    let refused =
        server.call("POST", &format!("/files?path={bad}"), Some(TOKEN), "application/octet-stream", &body).await;
    assert!(!refused.status.is_success(), "{}", refused.body);
    assert_eq!(refused.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    let ok_path = format!("{}/home/user/new.txt", scratch.dir.path().display());
    let ok =
        server.call("POST", &format!("/files?path={ok_path}"), Some(TOKEN), "application/octet-stream", b"x").await;
    assert!(ok.status.is_success(), "{}", ok.body);
    assert!(ok.headers.get("connection").is_none());
}
