//! The guest agent (envd) as the access check and the source of the sandbox's env vars:
//! `GET /envs` with the caller's `X-Access-Token`. The interpreter holds no token itself, so
//! it fails closed: envd refuses → 401, envd unreachable or strange → 502.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Largest `/envs` answer read.
const MAX_ENVS_BYTES: usize = 1 << 20;

/// Why envd did not give the env vars.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// envd refused the caller's token (or its absence)
    #[error("{0}")]
    Unauthorized(String),
    /// envd could not be reached in time, or answered something else
    #[error("envd: {0}")]
    Unavailable(String),
}

/// Where envd is: an IP literal and port (no name resolution in the static binary).
#[derive(Debug, Clone)]
pub struct Envd {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

/// `{"code","message"}` as envd answers errors.
#[derive(serde::Deserialize)]
struct EnvdErrorBody {
    message: String,
}

impl Envd {
    /// Parses `http://IP:PORT` (an optional trailing `/`).
    pub fn parse(url: &str, timeout: Duration) -> Result<Envd, String> {
        let rest = url.strip_prefix("http://").ok_or("the envd URL must start with http://")?;
        let addr =
            rest.trim_end_matches('/').parse::<SocketAddr>().map_err(|_| "the envd URL must be http://IP:PORT")?;
        Ok(Envd { addr, timeout })
    }

    /// The sandbox's env vars, if envd accepts `token`.
    pub async fn envs(&self, token: Option<&HeaderValue>) -> Result<BTreeMap<String, String>, EnvdError> {
        match tokio::time::timeout(self.timeout, self.get_envs(token)).await {
            Ok(r) => r,
            Err(_) => Err(EnvdError::Unavailable(format!("no answer from {} within {:?}", self.addr, self.timeout))),
        }
    }

    async fn get_envs(&self, token: Option<&HeaderValue>) -> Result<BTreeMap<String, String>, EnvdError> {
        let unavailable = |e: &dyn std::fmt::Display| EnvdError::Unavailable(format!("{}: {e}", self.addr));
        let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| unavailable(&e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unavailable(&e))?;
        tokio::spawn(conn);
        let mut req = Request::get("/envs").header(http::header::HOST, self.addr.to_string());
        if let Some(t) = token {
            req = req.header("X-Access-Token", t);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| unavailable(&e))?;
        let res = sender.send_request(req).await.map_err(|e| unavailable(&e))?;
        let status = res.status();
        let body =
            Limited::new(res.into_body(), MAX_ENVS_BYTES).collect().await.map_err(|e| unavailable(&e))?.to_bytes();
        match status {
            StatusCode::OK => serde_json::from_slice(&body).map_err(|e| unavailable(&format!("bad /envs body: {e}"))),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let message = serde_json::from_slice::<EnvdErrorBody>(&body)
                    .map(|b| b.message)
                    .unwrap_or_else(|_| "invalid access token".into());
                Err(EnvdError::Unauthorized(message))
            }
            other => Err(unavailable(&format!("GET /envs answered {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Envd::parse("http://127.0.0.1:49983", Duration::from_secs(1)).unwrap();
        assert_eq!(e.addr, "127.0.0.1:49983".parse().unwrap());
        assert!(Envd::parse("http://[::1]:5/", Duration::from_secs(1)).is_ok());
        assert!(Envd::parse("http://localhost:49983", Duration::from_secs(1)).is_err());
        assert!(Envd::parse("https://127.0.0.1:1", Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn unreachable_is_unavailable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = Envd { addr, timeout: Duration::from_secs(2) };
        assert!(matches!(e.envs(None).await, Err(EnvdError::Unavailable(_))));
    }
}
