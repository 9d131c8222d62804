//! Connect protocol plumbing for the RPC handlers: decoding unary and streaming requests,
//! unary answers and errors, server-stream responses with keepalives and a deadline, and
//! client-stream request bodies read frame by frame.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_envd_proto::envelope::{encode_end, encode_message};
use ember_envd_proto::stream::{FrameReader, StreamError};
use ember_envd_proto::{Code, ConnectError, Decoder, CONNECT_JSON};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

/// Largest unary or single-message request body (4 MiB).
pub const MAX_REQUEST: usize = 4 << 20;
/// Default seconds of silence before a keepalive frame, as envd.
const DEFAULT_KEEPALIVE_SECS: u64 = 90;

pub fn invalid(msg: impl Into<String>) -> ConnectError {
    ConnectError::new(Code::InvalidArgument, msg)
}

/// Whether the request uses the streaming content type.
pub fn is_stream(headers: &HeaderMap) -> bool {
    content_type(headers).starts_with(CONNECT_JSON)
}

fn content_type(headers: &HeaderMap) -> &str {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Decodes a unary request body (`application/json`).
pub fn decode_unary<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ConnectError> {
    let ctype = content_type(headers);
    if !ctype.starts_with("application/json") {
        return Err(invalid(format!("content-type must be application/json, got '{ctype}'")));
    }
    let body = if body.is_empty() { b"{}".as_slice() } else { body };
    serde_json::from_slice(body).map_err(|e| invalid(format!("invalid request message: {e}")))
}

/// Decodes a server-stream request body that must hold exactly one enveloped message.
pub fn decode_single_frame<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ConnectError> {
    if !is_stream(headers) {
        return Err(invalid(format!("content-type must be {CONNECT_JSON}, got '{}'", content_type(headers))));
    }
    let mut decoder = Decoder::new();
    decoder.push(body);
    let frame = decoder.next_frame().map_err(|e| invalid(e.to_string()))?.ok_or_else(|| invalid("empty request"))?;
    if frame.is_end_stream() || decoder.next_frame().map_err(|e| invalid(e.to_string()))?.is_some() {
        return Err(invalid("expected exactly one request message"));
    }
    decoder.finish().map_err(|e| invalid(e.to_string()))?;
    serde_json::from_slice(&frame.payload).map_err(|e| invalid(format!("invalid request message: {e}")))
}

/// A successful unary answer.
pub fn unary<T: Serialize>(msg: &T) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(msg).unwrap_or_default())
        .into_response()
}

/// A failed unary call: the code's HTTP status and `{code, message}`.
pub fn unary_error(err: ConnectError) -> Response {
    let status = StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&err).unwrap_or_default()).into_response()
}

/// An error in the form the request expects: end-of-stream frame for streams, status for unary.
pub fn error_for(headers: &HeaderMap, err: ConnectError) -> Response {
    if is_stream(headers) {
        stream_body(Body::from(encode_end(Some(err))))
    } else {
        unary_error(err)
    }
}

/// A server-stream (or client-stream) answer: always 200, frames in the body.
pub fn stream_body(body: Body) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, CONNECT_JSON)], body).into_response()
}

/// How a server stream is kept alive and bounded.
pub struct StreamOptions {
    /// Frame to send after this much silence.
    pub keepalive: Option<(Duration, Bytes)>,
    /// When the stream must end (`connect-timeout-ms`).
    pub deadline: Option<Duration>,
}

impl StreamOptions {
    /// Reads `Keepalive-Ping-Interval` and `connect-timeout-ms` from the request.
    pub fn from_headers<K: Serialize>(headers: &HeaderMap, keepalive_msg: &K) -> Self {
        let secs = headers
            .get("keepalive-ping-interval")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_KEEPALIVE_SECS);
        Self {
            keepalive: Some((Duration::from_secs(secs), encode_message(keepalive_msg))),
            deadline: deadline(headers),
        }
    }
}

/// The `connect-timeout-ms` header, if set and positive.
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// A server-stream response fed by `rx` (frames already enveloped, the end frame last).
/// Keepalives fill silences; at the deadline the stream ends with `deadline_exceeded`.
pub fn stream(rx: mpsc::Receiver<Bytes>, opts: StreamOptions) -> Response {
    let started = tokio::time::Instant::now();
    let state = (rx, false);
    let frames = futures_util::stream::unfold(state, move |(mut rx, done)| {
        let keepalive = opts.keepalive.clone();
        let deadline = opts.deadline.map(|d| started + d);
        async move {
            if done {
                return None;
            }
            loop {
                let wait = keepalive.as_ref().map(|k| k.0).unwrap_or(Duration::from_secs(3600));
                let until = match deadline {
                    Some(d) => d.min(tokio::time::Instant::now() + wait),
                    None => tokio::time::Instant::now() + wait,
                };
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(frame)) => {
                        let end = frame.first() == Some(&ember_envd_proto::FLAG_END_STREAM);
                        return Some((Ok::<_, Infallible>(frame), (rx, end)));
                    }
                    Ok(None) => return None,
                    Err(_) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                        let err = ConnectError::new(
                            Code::DeadlineExceeded,
                            "the stream's deadline (connect-timeout-ms) passed",
                        );
                        return Some((Ok(encode_end(Some(err))), (rx, true)));
                    }
                    Err(_) => {
                        if let Some((_, frame)) = &keepalive {
                            return Some((Ok(frame.clone()), (rx, false)));
                        }
                    }
                }
            }
        }
    });
    stream_body(Body::from_stream(frames))
}

/// A client-stream request body, read one message at a time with a bounded buffer.
pub struct ClientStream {
    frames: FrameReader<Body>,
}

impl ClientStream {
    pub fn new(headers: &HeaderMap, body: Body) -> Result<Self, ConnectError> {
        if !is_stream(headers) {
            return Err(invalid(format!("content-type must be {CONNECT_JSON}")));
        }
        Ok(Self { frames: FrameReader::new(body) })
    }

    /// The next message; `None` at the end of the stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectError> {
        let frame = match self.frames.next_frame().await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(StreamError::Body(e)) => return Err(ConnectError::new(Code::Canceled, format!("request body: {e}"))),
            Err(StreamError::Envelope(e)) => return Err(invalid(e.to_string())),
        };
        if frame.is_end_stream() {
            return Ok(None);
        }
        serde_json::from_slice(&frame.payload).map(Some).map_err(|e| invalid(format!("invalid message: {e}")))
    }
}

/// Reads a whole request body of at most `max` bytes.
pub async fn read_body(body: Body, max: usize) -> Result<Bytes, ConnectError> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ConnectError::new(Code::Canceled, format!("request body: {e}")))?;
        if out.len() + chunk.len() > max {
            return Err(ConnectError::new(Code::ResourceExhausted, format!("request body larger than {max} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}
