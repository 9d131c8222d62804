//! The host's client of the guest agent: plain HTTP/1.1 over a TCP connection opened inside the
//! sandbox's network namespace, speaking envd's Connect protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use ember_envd_proto::envelope::{encode_message, EndStream};
use ember_envd_proto::process::{ProcessEvent, StartRequest, StartResponse, START_PATH};
use ember_envd_proto::stream::{FrameReader, StreamError};
use ember_envd_proto::{ConnectError, EnvelopeError, CONNECT_JSON, INITIALISED_HEADER};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connect to the agent: {0}")]
    Connect(#[from] ember_net::NetError),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the agent answered HTTP {0}")]
    Status(StatusCode),
    #[error("bad frame from the agent: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("bad message from the agent: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the agent refused: {0}")]
    Rpc(ConnectError),
    #[error("the stream ended without an end-of-stream frame")]
    Truncated,
    /// The guest did not answer in time.
    #[error("the agent did not answer {0} in time")]
    Timeout(String),
    #[error("{0}")]
    Other(String),
}

/// A client of one sandbox's agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    netns: PathBuf,
    addr: SocketAddr,
    /// The access token the agent holds, sent on calls that name none.
    token: Option<String>,
}

/// How long one plain call into the guest (connect, answer and body) may take in all: a guest
/// that stalls never holds a caller longer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the connection to the guest may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl AgentClient {
    pub fn new(netns: PathBuf, addr: SocketAddr) -> Self {
        Self { netns, addr, token: None }
    }

    /// The same client, sending `token` as the access token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// The access token this client sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A client for another port of the same guest.
    pub fn with_port(&self, port: u16) -> Self {
        Self { netns: self.netns.clone(), addr: SocketAddr::new(self.addr.ip(), port), token: self.token.clone() }
    }

    /// `POST path` with a JSON body (and the access token, if given); fails unless 2xx, and
    /// after [`CALL_TIMEOUT`].
    pub async fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
        token: Option<&str>,
    ) -> Result<(), AgentError> {
        let mut req = Request::post(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            req = req.header("x-access-token", token);
        }
        let body = serde_json::to_vec(body)?;
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| AgentError::Other(e.to_string()))?;
        deadline(path, async {
            let resp = self.send(req, CONNECT_TIMEOUT).await?;
            if !resp.status().is_success() {
                return Err(AgentError::Status(resp.status()));
            }
            Ok(())
        })
        .await
    }

    /// `GET path` returning JSON (at most 1 MiB), with the access token if given; fails after
    /// [`CALL_TIMEOUT`].
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<T, AgentError> {
        let mut req = Request::get(path).header(header::HOST, self.addr.to_string());
        if let Some(token) = token {
            req = req.header("x-access-token", token);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| AgentError::Other(e.to_string()))?;
        deadline(path, async {
            let resp = self.send(req, CONNECT_TIMEOUT).await?;
            if !resp.status().is_success() {
                return Err(AgentError::Status(resp.status()));
            }
            let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
                .collect()
                .await
                .map_err(|e| AgentError::Other(format!("read answer: {e}")))?
                .to_bytes();
            Ok(serde_json::from_slice(&body)?)
        })
        .await
    }

    /// Whether the agent holds an access token (its `/health` says so); a restarted agent
    /// that lost its state answers false and must be initialised again.
    pub async fn initialised(&self, timeout: Duration) -> Result<bool, AgentError> {
        let resp = self.get_health(timeout).await?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(AgentError::Status(resp.status()));
        }
        Ok(resp.headers().get(INITIALISED_HEADER).is_none_or(|v| v.as_bytes() != b"false"))
    }

    /// Sends one request on a fresh connection into the sandbox.
    pub async fn send<B>(
        &self,
        req: Request<B>,
        connect_timeout: Duration,
    ) -> Result<hyper::Response<Incoming>, AgentError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (ns, addr) = (self.netns.clone(), self.addr);
        let stream = tokio::task::spawn_blocking(move || ember_net::connect_in(&ns, addr, connect_timeout))
            .await
            .map_err(|e| AgentError::Other(format!("connect task: {e}")))??;
        stream.set_nonblocking(true).map_err(|e| AgentError::Other(format!("socket: {e}")))?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(|e| AgentError::Other(format!("socket: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // With upgrades, so a proxied WebSocket can take the connection over after a 101.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "agent connection closed");
            }
        });
        Ok(sender.send_request(req).await?)
    }

    /// `GET /health`; true when the agent answers 204.
    pub async fn health(&self, timeout: Duration) -> Result<bool, AgentError> {
        Ok(self.get_health(timeout).await?.status() == StatusCode::NO_CONTENT)
    }

    /// Whether `GET path` answers 200 within `timeout`, connect included (a template's service
    /// saying it is ready).
    pub async fn answers_ok(&self, path: &str, timeout: Duration) -> Result<bool, AgentError> {
        let req = Request::get(path)
            .header(header::HOST, self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| AgentError::Other(e.to_string()))?;
        let resp = tokio::time::timeout(timeout, self.send(req, timeout))
            .await
            .map_err(|_| AgentError::Timeout(path.into()))??;
        Ok(resp.status() == StatusCode::OK)
    }

    /// `GET /health` within `timeout`, connect included.
    async fn get_health(&self, timeout: Duration) -> Result<hyper::Response<Incoming>, AgentError> {
        let req = Request::get("/health")
            .header(header::HOST, self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| AgentError::Other(e.to_string()))?;
        tokio::time::timeout(timeout, self.send(req, timeout))
            .await
            .map_err(|_| AgentError::Timeout("/health".into()))?
    }

    /// Writes the host file `file` to `path` in the guest, owned by `user` (envd's `POST /files`
    /// with a raw body), read in 1 MiB chunks as it is sent (never whole in memory).
    pub async fn upload_file(
        &self,
        path: &str,
        user: &str,
        file: &std::path::Path,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        use tokio::io::AsyncReadExt;
        let open_err = |e: std::io::Error| AgentError::Other(format!("open {}: {e}", file.display()));
        let f = tokio::fs::File::open(file).await.map_err(open_err)?;
        let size = f.metadata().await.map_err(open_err)?.len();
        let chunks = futures_util::stream::try_unfold(f, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.truncate(n);
            Ok(Some((hyper::body::Frame::data(Bytes::from(buf)), f)))
        });
        self.post_file(path, user, http_body_util::StreamBody::new(chunks), size, timeout).await
    }

    /// `POST /files` of a body of `size` bytes to `path` as `user`.
    async fn post_file<B>(
        &self,
        path: &str,
        user: &str,
        body: B,
        size: u64,
        timeout: Duration,
    ) -> Result<(), AgentError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let query = format!("/files?path={}&username={}", query_escape(path), query_escape(user));
        let mut builder = Request::post(query.as_str())
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size);
        if let Some(token) = &self.token {
            builder = builder.header("x-access-token", token.as_str());
        }
        let req = builder.body(body).map_err(|e| AgentError::Other(e.to_string()))?;
        tokio::time::timeout(timeout, async {
            let resp = self.send(req, CONNECT_TIMEOUT).await?;
            let status = resp.status();
            // Read the answer so that the guest's side completes.
            let _ = http_body_util::Limited::new(resp.into_body(), 64 << 10).collect().await;
            if !status.is_success() {
                return Err(AgentError::Status(status));
            }
            Ok(())
        })
        .await
        .map_err(|_| AgentError::Timeout("/files".into()))?
    }

    /// Starts a process as `user` (the agent's default user if `None`) and streams its events.
    /// The answer's headers must come within [`CALL_TIMEOUT`]; the stream is the caller's to bound.
    pub async fn start(&self, request: &StartRequest, user: Option<&str>) -> Result<ProcessStream, AgentError> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(START_PATH)
            .header(header::HOST, self.addr.to_string())
            .header(header::CONTENT_TYPE, CONNECT_JSON)
            .header("connect-protocol-version", "1");
        if let Some(user) = user {
            builder = builder.header(header::AUTHORIZATION, format!("Basic {}", STANDARD.encode(format!("{user}:"))));
        }
        if let Some(token) = &self.token {
            builder = builder.header("x-access-token", token.as_str());
        }
        let req = builder.body(Full::new(encode_message(request))).map_err(|e| AgentError::Other(e.to_string()))?;
        let resp = deadline(START_PATH, self.send(req, CONNECT_TIMEOUT)).await?;
        if resp.status() != StatusCode::OK {
            return Err(AgentError::Status(resp.status()));
        }
        Ok(ProcessStream { frames: FrameReader::new(resp.into_body()), done: false })
    }
}

/// Runs one call into the guest under [`CALL_TIMEOUT`].
/// Percent-encodes a query value (everything but RFC 3986's unreserved characters and `/`).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn deadline<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| AgentError::Timeout(what.to_string()))?
}

/// The events of a started process, in order: start, output, end.
pub struct ProcessStream {
    frames: FrameReader<Incoming>,
    done: bool,
}

impl ProcessStream {
    /// The events of a `Start` (or `Connect`) answer's body, however it was reached.
    pub fn from_body(body: Incoming) -> Self {
        ProcessStream { frames: FrameReader::new(body), done: false }
    }

    /// The next event; `None` after the end-of-stream frame.
    pub async fn next(&mut self) -> Result<Option<ProcessEvent>, AgentError> {
        if self.done {
            return Ok(None);
        }
        let frame = match self.frames.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(AgentError::Truncated),
            Err(StreamError::Envelope(e)) => return Err(e.into()),
            Err(StreamError::Body(e)) => return Err(AgentError::Other(format!("stream: {e}"))),
        };
        if frame.is_end_stream() {
            self.done = true;
            let end: EndStream = serde_json::from_slice(&frame.payload)?;
            return match end.error {
                Some(err) => Err(AgentError::Rpc(err)),
                None => Ok(None),
            };
        }
        let msg: StartResponse = serde_json::from_slice(&frame.payload)?;
        Ok(Some(msg.event))
    }
}
