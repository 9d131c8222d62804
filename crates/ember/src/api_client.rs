//! A small client of `ember serve`'s E2B API over plain HTTP/1.1: one connection per request,
//! JSON in and out, the server's `{code, message}` errors turned into readable ones.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The default address of `ember serve`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:3000";
/// The largest response read.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// How long one request may take (uploads of big archives included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an HTTP URL points: `host:port` and the path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub authority: String,
    pub prefix: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => bail!("{url}: only http:// URLs are supported (not {scheme}://)"),
            None => url,
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') {
            bail!("{url}: expected http://HOST[:PORT]");
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint { authority, prefix: path.trim_end_matches('/').to_string() })
    }
}

/// Where `ember serve` is and the key to use.
#[derive(Args)]
pub struct ServerArgs {
    /// The URL of `ember serve` (default: $EMBER_URL, else $E2B_API_URL, else
    /// http://127.0.0.1:3000).
    #[arg(long)]
    url: Option<String>,
    /// The API key (default: $EMBER_API_KEY, else $E2B_API_KEY).
    #[arg(long = "api-key")]
    api_key: Option<String>,
}

impl ServerArgs {
    pub fn client(self) -> anyhow::Result<Client> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url =
            self.url.or_else(|| env("EMBER_URL")).or_else(|| env("E2B_API_URL")).unwrap_or_else(|| DEFAULT_URL.into());
        let Some(key) = self.api_key.or_else(|| env("EMBER_API_KEY")).or_else(|| env("E2B_API_KEY")) else {
            bail!("no API key: pass --api-key or set EMBER_API_KEY (make one with `ember apikey create`)");
        };
        Client::new(&url, key)
    }
}

/// A client of one daemon, with one API key.
pub struct Client {
    url: String,
    endpoint: Endpoint,
    api_key: String,
}

/// A response's status and body.
pub struct Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Client {
    pub fn new(url: &str, api_key: String) -> anyhow::Result<Client> {
        Ok(Client { url: url.trim_end_matches('/').to_string(), endpoint: Endpoint::parse(url)?, api_key })
    }

    /// The daemon's URL, as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the daemon listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A request with the API key; errors for a status of 400 or more.
    pub async fn call(&self, method: Method, path: &str, json: Option<&impl Serialize>) -> anyhow::Result<Response> {
        let body = match json {
            Some(j) => Bytes::from(serde_json::to_vec(j)?),
            None => Bytes::new(),
        };
        let response = self.send(&self.endpoint, method.clone(), path, body, json.is_some(), true).await?;
        check(&method, path, response)
    }

    /// A request whose answer is JSON.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        json: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let response = self.call(method.clone(), path, json).await?;
        serde_json::from_slice(&response.body)
            .with_context(|| format!("{method} {path}: unexpected answer: {}", String::from_utf8_lossy(&response.body)))
    }

    /// `PUT`s `body` to an upload URL the daemon handed out (no API key: the URL is the
    /// authority).
    pub async fn upload(&self, url: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let endpoint = Endpoint::parse(url)?;
        let path = url.split_once("://").map_or(url, |(_, r)| r);
        let path = &path[path.find('/').unwrap_or(path.len())..];
        let target = Endpoint { prefix: String::new(), ..endpoint };
        let response = self.send(&target, Method::PUT, path, Bytes::from(body), false, false).await?;
        check(&Method::PUT, "the upload URL", response).map(|_| ())
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        body: Bytes,
        is_json: bool,
        with_key: bool,
    ) -> anyhow::Result<Response> {
        let unreachable = |e: &dyn std::fmt::Display| {
            anyhow!(
                "cannot reach the Ember daemon at {} ({e}); is `ember serve` running? (set --url or EMBER_URL)",
                self.url
            )
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&endpoint.authority))
            .await
            .map_err(|_| unreachable(&"connection timed out"))?
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", endpoint.prefix))
            .header(hyper::header::HOST, &endpoint.authority)
            .header(hyper::header::USER_AGENT, concat!("ember-cli/", env!("CARGO_PKG_VERSION")));
        if with_key {
            request = request.header("X-API-Key", &self.api_key);
        }
        if is_json {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body)).with_context(|| format!("{method} {path}: bad request"))?;
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| anyhow!("reading the answer: {e}"))?
                .to_bytes();
            anyhow::Ok(Response { status, headers, body })
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer in {} s", REQUEST_TIMEOUT.as_secs()))
            .and_then(|r| r)
            .with_context(|| format!("{method} {}{path}", self.url));
        driver.abort();
        result
    }
}

/// The response, or an error with the server's message for a status of 400 or more.
fn check(method: &Method, path: &str, response: Response) -> anyhow::Result<Response> {
    if response.status.as_u16() < 400 {
        return Ok(response);
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        message: String,
    }
    let message = serde_json::from_slice::<ApiError>(&response.body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&response.body).trim().to_string());
    if response.status == StatusCode::UNAUTHORIZED {
        bail!("the daemon refused the API key ({message}); pass a valid one with --api-key or EMBER_API_KEY");
    }
    Err(HttpError { status: response.status, message: format!("{method} {path}: {} {message}", response.status) }
        .into())
}

/// An error status from the daemon.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

/// `text` made safe for one path segment.
pub fn path_segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:3000/").unwrap();
        assert_eq!(e, Endpoint { authority: "127.0.0.1:3000".into(), prefix: String::new() });
        let e = Endpoint::parse("localhost/api").unwrap();
        assert_eq!(e, Endpoint { authority: "localhost:80".into(), prefix: "/api".into() });
        assert!(Endpoint::parse("https://x").is_err());
        assert!(Endpoint::parse("http:///x").is_err());
    }

    #[test]
    fn segments() {
        assert_eq!(path_segment("cli-suite:v1"), "cli-suite:v1");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
