//! envd's process service in a sandbox, reached through `ember serve`'s proxy (the
//! `E2b-Sandbox-Id` and `E2b-Sandbox-Port` headers, the sandbox's access token): `Start` as a
//! stream of events, and the unary calls that feed and resize a running process.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use ember_envd_proto::envelope::encode_message;
use ember_envd_proto::process::{StartRequest, SERVICE, START_PATH};
pub use ember_runtime::ProcessStream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::api_client::{Client, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a unary call, or the answer to a `Start`, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const ENVD_PORT: u16 = 49983;

/// One sandbox's envd, through the daemon.
pub struct Envd {
    url: String,
    endpoint: Endpoint,
    sandbox: String,
    token: Option<String>,
}

impl Envd {
    /// `sandbox`'s envd, with the access token its create returned (`envdAccessToken`).
    pub fn new(client: &Client, sandbox: &str, token: Option<String>) -> Self {
        Envd { url: client.url().to_string(), endpoint: client.endpoint().clone(), sandbox: sandbox.into(), token }
    }

    async fn send(
        &self,
        path: &str,
        content_type: &str,
        user: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.endpoint.authority))
            .await
            .map_err(|_| anyhow!("cannot reach the Ember daemon at {}: connection timed out", self.url))?
            .with_context(|| format!("cannot reach the Ember daemon at {}", self.url))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.endpoint.prefix))
            .header(hyper::header::HOST, &self.endpoint.authority)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header("connect-protocol-version", "1")
            .header("e2b-sandbox-id", &self.sandbox)
            .header("e2b-sandbox-port", ENVD_PORT.to_string());
        if let Some(token) = &self.token {
            request = request.header("x-access-token", token);
        }
        if let Some(user) = user {
            request =
                request.header(hyper::header::AUTHORIZATION, format!("Basic {}", STANDARD.encode(format!("{user}:"))));
        }
        let request = request.body(Full::new(body))?;
        let response = tokio::time::timeout(CALL_TIMEOUT, sender.send_request(request)).await.map_err(|_| {
            anyhow!("{path}: no answer from sandbox {} in {} s", self.sandbox, CALL_TIMEOUT.as_secs())
        })??;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body =
                Limited::new(response.into_body(), 64 << 10).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            bail!("{path} in sandbox {}: {status} {}", self.sandbox, error_message(&body));
        }
        Ok(response)
    }

    /// Starts a process (as `user`, else the sandbox's default user) and streams its events.
    pub async fn start(&self, request: &StartRequest, user: Option<&str>) -> anyhow::Result<ProcessStream> {
        let response = self.send(START_PATH, "application/connect+json", user, encode_message(request)).await?;
        Ok(ProcessStream::from_body(response.into_body()))
    }

    /// A unary call of the process service (`SendInput`, `Update`, `SendSignal`).
    pub async fn call(&self, method: &str, message: &impl Serialize) -> anyhow::Result<()> {
        let body = Bytes::from(serde_json::to_vec(message)?);
        let response = self.send(&format!("{SERVICE}{method}"), "application/json", None, body).await?;
        let _ = Limited::new(response.into_body(), 64 << 10).collect().await;
        Ok(())
    }
}

/// The message of a Connect error body (`{code, message}`), or the body as text.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ConnectError {
        message: String,
    }
    serde_json::from_slice::<ConnectError>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_show_their_message() {
        assert_eq!(error_message(br#"{"code":"not_found","message":"process 7 not found"}"#), "process 7 not found");
        assert_eq!(error_message(b" plain text \n"), "plain text");
    }
}
