//! `GET /files` and `POST /files`: downloads and uploads streamed straight between the socket
//! and the file (a 1 GiB file never sits in memory), opened with the user's credentials.
//! Uploads take multipart bodies (several files, full-path filenames) or a raw body (optionally
//! gzip), and `X-Metadata-*` headers stored as `user.e2b.*` extended attributes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ember_envd_proto::{Code, ConnectError};
use futures_util::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::auth::{check_file_access, http_error, HttpError};
use crate::fs::entry::XATTR_PREFIX;
use crate::fs::{resolve, run_as};
use crate::state::Agent;
use crate::users::User;
use ember_envd_proto::signature::FileOp;

const METADATA_HEADER: &str = "x-metadata-";
/// Most metadata entries per upload, and the largest value.
const MAX_METADATA: usize = 64;
const MAX_METADATA_VALUE: usize = 4096;

/// Query parameters of `/files`.
#[derive(Debug, Default, Deserialize)]
pub struct FileQuery {
    pub path: Option<String>,
    pub username: Option<String>,
    pub signature: Option<String>,
    pub signature_expiration: Option<String>,
}

/// One written file, as the SDKs read it: with the metadata stored on it (envd 0.6.2 and
/// later), left out when there is none.
#[derive(Debug, Serialize)]
struct WriteInfo {
    path: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
}

/// A `ConnectError` from the file layer as an HTTP answer with envd's statuses.
fn to_http(e: ConnectError) -> Response {
    let status = match e.code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::AlreadyExists => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    http_error(status, e.message)
}

/// Checks access and resolves the user; shared by both directions.
fn prepare(
    agent: &Agent,
    headers: &HeaderMap,
    query: Result<Query<FileQuery>, QueryRejection>,
    op: FileOp,
) -> Result<(FileQuery, User), HttpError> {
    let Query(query) = query.map_err(|e| HttpError(StatusCode::BAD_REQUEST, format!("invalid query: {e}")))?;
    check_file_access(agent, headers, &query, op)?;
    let name = query.username.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| agent.identity().default_user);
    let user = agent.users.lookup(&name).map_err(|e| HttpError(StatusCode::UNAUTHORIZED, e.to_string()))?;
    Ok((query, user))
}

pub async fn download(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    query: Result<Query<FileQuery>, QueryRejection>,
) -> Response {
    let (query, user) = match prepare(&agent, &headers, query, FileOp::Read) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(raw) = query.path.as_deref() else {
        return http_error(StatusCode::BAD_REQUEST, "missing path");
    };
    let path = match resolve(raw, &user.home) {
        Ok(p) => p,
        Err(e) => return to_http(e),
    };
    let opened = path.clone();
    let file = run_as(user, move || {
        let meta = std::fs::metadata(&opened).map_err(|e| crate::fs::io_error(&opened, e))?;
        if meta.is_dir() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("path '{}' is a directory", opened.display()),
            ));
        }
        std::fs::File::open(&opened).map(|f| (f, meta.len())).map_err(|e| crate::fs::io_error(&opened, e))
    })
    .await;
    let (file, len) = match file {
        Ok(v) => v,
        Err(e) => return to_http(e),
    };
    let mut file = tokio::fs::File::from_std(file);
    let (status, start, count) = match range(&headers, len) {
        Some(Ok((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(Err(())) => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))])
                .into_response()
        }
        None => (StatusCode::OK, 0, len),
    };
    // A range is always sent as it is on disk.
    let mut gzip = match accepts_gzip(&headers) {
        Ok(gzip) => gzip && status == StatusCode::OK,
        Err(()) if status == StatusCode::OK => {
            return http_error(StatusCode::NOT_ACCEPTABLE, "no acceptable encoding: gzip and identity are supported")
        }
        Err(()) => false,
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return http_error(StatusCode::INTERNAL_SERVER_ERROR, "seek failed");
    }
    // The first bytes decide whether gzip is worth its CPU: data compressed already (archives,
    // images, random bytes; about 8 times slower to send gzipped under TCG) goes as it is, which
    // a client that accepts gzip accepts too.
    let mut sample = Vec::new();
    if gzip {
        if (&mut file).take(GZIP_SAMPLE.min(count)).read_to_end(&mut sample).await.is_err() {
            return http_error(StatusCode::INTERNAL_SERVER_ERROR, "read failed");
        }
        gzip = compresses(&sample).await;
    }
    let rest = count - sample.len() as u64;
    let reader = std::io::Cursor::new(sample).chain(file.take(rest));
    let body = if gzip {
        let encoder = async_compression::tokio::bufread::GzipEncoder::with_quality(
            tokio::io::BufReader::with_capacity(64 * 1024, reader),
            async_compression::Level::Fastest,
        );
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(encoder, 64 * 1024))
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024))
    };
    let name = path.file_name().map(|n| n.to_string_lossy().replace('"', "")).unwrap_or_default();
    let mut resp = (
        status,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, format!("inline; filename=\"{name}\"")),
            (header::ACCEPT_RANGES, "bytes".to_string()),
            (header::VARY, "Accept-Encoding".to_string()),
        ],
        body,
    )
        .into_response();
    let headers = resp.headers_mut();
    if gzip {
        headers.insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
    } else if let Ok(v) = count.to_string().parse() {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = format!("bytes {start}-{}/{len}", start + count - 1).parse() {
            headers.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// How much of a file is tried before gzipping a download.
const GZIP_SAMPLE: u64 = 64 * 1024;

/// Whether `sample` shrinks by a tenth or more when gzipped.
async fn compresses(sample: &[u8]) -> bool {
    let mut encoder =
        async_compression::tokio::bufread::GzipEncoder::with_quality(sample, async_compression::Level::Fastest);
    let mut out = Vec::new();
    encoder.read_to_end(&mut out).await.is_ok() && out.len() < sample.len() / 10 * 9
}

/// Whether to gzip a download, from `Accept-Encoding` as envd reads it: gzip whenever the client
/// accepts it (by name or `*`, with a q-value above 0), else the file as it is. `Err` when the
/// client accepts neither (`identity;q=0` or `*;q=0` without gzip): 406.
#[allow(clippy::result_unit_err)] // Err: 406, with nothing more to say.
pub fn accepts_gzip(headers: &HeaderMap) -> Result<bool, ()> {
    let Some(value) = headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()) else {
        return Ok(false);
    };
    let (mut gzip, mut identity, mut any) = (None, None, None);
    for item in value.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q=").map(|q| q.trim().parse::<f32>().unwrap_or(0.0)))
            .unwrap_or(1.0);
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q),
            "identity" => identity = Some(q),
            "*" => any = Some(q),
            _ => {}
        }
    }
    if gzip.or(any).is_some_and(|q| q > 0.0) {
        return Ok(true);
    }
    match identity.or(any) {
        Some(q) if q <= 0.0 => Err(()),
        _ => Ok(false),
    }
}

/// A single `Range: bytes=a-b` (or `a-`, `-n`) request, clamped to the file.
#[allow(clippy::result_unit_err)] // Err: 416, with nothing more to say.
pub fn range(headers: &HeaderMap, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = headers.get(header::RANGE)?.to_str().ok()?.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let parsed = match (a.trim(), b.trim()) {
        ("", n) => n.parse::<u64>().ok().filter(|n| *n > 0).map(|n| (len.saturating_sub(n), len.saturating_sub(1))),
        (s, "") => s.parse::<u64>().ok().map(|s| (s, len.saturating_sub(1))),
        (s, e) => s.parse::<u64>().ok().zip(e.parse::<u64>().ok()).map(|(s, e)| (s, e.min(len.saturating_sub(1)))),
    };
    Some(match parsed {
        Some((s, e)) if s <= e && s < len => Ok((s, e)),
        _ => Err(()),
    })
}

pub async fn upload(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    query: Result<Query<FileQuery>, QueryRejection>,
    body: Body,
) -> Response {
    let mut response = upload_files(&agent, &headers, query, body).await;
    if !response.status().is_success() {
        // The body may be unread: the connection cannot carry another request, and a client
        // that reused it would see it closed under its next call. Say so.
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

async fn upload_files(
    agent: &Agent,
    headers: &HeaderMap,
    query: Result<Query<FileQuery>, QueryRejection>,
    body: Body,
) -> Response {
    let (query, user) = match prepare(agent, headers, query, FileOp::Write) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let result = async {
        let metadata = metadata_headers(headers)?;
        let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mut written = Vec::new();
        if ctype.starts_with("multipart/form-data") {
            let boundary =
                multer::parse_boundary(ctype).map_err(|e| invalid(format!("invalid multipart body: {e}")))?;
            let mut parts = multer::Multipart::new(body.into_data_stream(), boundary);
            while let Some(field) =
                parts.next_field().await.map_err(|e| invalid(format!("invalid multipart body: {e}")))?
            {
                if field.name() != Some("file") {
                    continue;
                }
                let target = match (&query.path, written.is_empty()) {
                    (Some(p), true) => p.clone(),
                    _ => {
                        field.file_name().map(str::to_string).ok_or_else(|| invalid("file part without a filename"))?
                    }
                };
                let path = resolve(&target, &user.home)?;
                let data = field.map_err(|e| std::io::Error::other(e.to_string()));
                written.push(write_file(&user, &path, data, &metadata).await?);
            }
        } else {
            let target = query.path.clone().ok_or_else(|| invalid("missing path"))?;
            let path = resolve(&target, &user.home)?;
            let gzip = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) == Some("gzip");
            let stream = body.into_data_stream().map_err(|e| std::io::Error::other(e.to_string()));
            let info = if gzip {
                let reader =
                    async_compression::tokio::bufread::GzipDecoder::new(tokio_util::io::StreamReader::new(stream));
                write_file(&user, &path, tokio_util::io::ReaderStream::new(reader), &metadata).await?
            } else {
                write_file(&user, &path, stream, &metadata).await?
            };
            written.push(info);
        }
        if written.is_empty() {
            return Err(invalid("no file in the request"));
        }
        Ok::<_, ConnectError>(written)
    }
    .await;
    match result {
        Ok(written) => axum::Json(written).into_response(),
        Err(e) => to_http(e),
    }
}

fn invalid(msg: impl Into<String>) -> ConnectError {
    ConnectError::new(Code::InvalidArgument, msg)
}

/// `X-Metadata-<key>: <value>` headers, keys lowercased, validated as the SDK does.
fn metadata_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, ConnectError> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(METADATA_HEADER) else {
            continue;
        };
        let value = value.to_str().map_err(|_| invalid(format!("metadata '{key}' is not printable ASCII")))?;
        if key.is_empty() || value.len() > MAX_METADATA_VALUE || out.len() >= MAX_METADATA {
            return Err(invalid(format!("metadata '{key}' is empty, too long, or one too many")));
        }
        out.insert(key.to_ascii_lowercase(), value.to_string());
    }
    Ok(out)
}

/// Creates (as the user) the parents and the file, then streams `data` into it.
async fn write_file<S>(
    user: &User,
    path: &Path,
    data: S,
    metadata: &BTreeMap<String, String>,
) -> Result<WriteInfo, ConnectError>
where
    S: Stream<Item = std::io::Result<Bytes>>,
{
    let target = path.to_path_buf();
    let file = run_as(user.clone(), move || open_for_write(&target)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut data = std::pin::pin!(data);
    let disk_err = |e: std::io::Error| crate::fs::io_error(path, e);
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("upload body: {e}")))?;
        file.write_all(&chunk).await.map_err(disk_err)?;
    }
    file.flush().await.map_err(disk_err)?;
    let file = file.into_std().await;
    replace_metadata(&file, metadata).map_err(|e| ConnectError::new(Code::Internal, format!("metadata: {e}")))?;
    touch_attributes(&file).map_err(disk_err)?;
    Ok(WriteInfo {
        path: path.to_string_lossy().into_owned(),
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        kind: "file",
        metadata: metadata.clone(),
    })
}

/// Sets the file's mode to what it is, which a watcher sees as a CHMOD event. envd writes as
/// root and then gives the file to its user, so its watchers see CREATE, WRITE, then CHMOD; the
/// file written here is the user's from the start, and this gives the same sequence without
/// changing owner or mode.
fn touch_attributes(file: &std::fs::File) -> std::io::Result<()> {
    file.set_permissions(file.metadata()?.permissions())
}

fn open_for_write(path: &PathBuf) -> Result<std::fs::File, ConnectError> {
    if path.is_dir() {
        return Err(invalid(format!("path '{}' is a directory", path.display())));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| crate::fs::io_error(parent, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| crate::fs::io_error(path, e))
}

fn replace_metadata(file: &std::fs::File, metadata: &BTreeMap<String, String>) -> std::io::Result<()> {
    use xattr::FileExt;
    let old: Vec<_> = file.list_xattr()?.filter(|n| n.to_str().is_some_and(|s| s.starts_with(XATTR_PREFIX))).collect();
    for name in old {
        file.remove_xattr(name)?;
    }
    for (key, value) in metadata {
        file.set_xattr(format!("{XATTR_PREFIX}{key}"), value.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, v.parse().unwrap());
        h
    }

    #[test]
    fn ranges_are_parsed_and_clamped() {
        assert_eq!(range(&HeaderMap::new(), 10), None);
        assert_eq!(range(&with_range("bytes=2-4"), 10), Some(Ok((2, 4))));
        assert_eq!(range(&with_range("bytes=5-"), 10), Some(Ok((5, 9))));
        assert_eq!(range(&with_range("bytes=-3"), 10), Some(Ok((7, 9))));
        assert_eq!(range(&with_range("bytes=8-100"), 10), Some(Ok((8, 9))));
        assert_eq!(range(&with_range("bytes=10-"), 10), Some(Err(())));
        assert_eq!(range(&with_range("bytes=4-2"), 10), Some(Err(())));
    }

    fn with_encoding(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
        h
    }

    #[test]
    fn downloads_are_gzipped_when_the_client_accepts_gzip() {
        assert_eq!(accepts_gzip(&HeaderMap::new()), Ok(false));
        assert_eq!(accepts_gzip(&with_encoding("gzip")), Ok(true));
        assert_eq!(accepts_gzip(&with_encoding("gzip, deflate")), Ok(true));
        assert_eq!(accepts_gzip(&with_encoding("br;q=1.0, GZIP;q=0.5")), Ok(true));
        assert_eq!(accepts_gzip(&with_encoding("*")), Ok(true));
        assert_eq!(accepts_gzip(&with_encoding("identity")), Ok(false));
        assert_eq!(accepts_gzip(&with_encoding("gzip;q=0, br")), Ok(false));
        assert_eq!(accepts_gzip(&with_encoding("br, identity;q=0")), Err(()));
        assert_eq!(accepts_gzip(&with_encoding("*;q=0")), Err(()));
    }

    #[tokio::test]
    async fn only_data_that_compresses_is_gzipped() {
        use rand::RngCore;
        assert!(compresses("compress me ".repeat(5000).as_bytes()).await);
        let mut random = vec![0u8; 64 * 1024];
        rand::thread_rng().fill_bytes(&mut random);
        assert!(!compresses(&random).await);
        assert!(!compresses(b"").await);
    }

    #[test]
    fn metadata_headers_are_lowercased_and_bounded() {
        let mut h = HeaderMap::new();
        h.insert("x-metadata-Owner", "Alice".parse().unwrap());
        h.insert("content-type", "x".parse().unwrap());
        let m = metadata_headers(&h).unwrap();
        assert_eq!(m.get("owner").map(String::as_str), Some("Alice"));
        assert_eq!(m.len(), 1);
        h.insert("x-metadata-big", "v".repeat(5000).parse().unwrap());
        assert!(metadata_headers(&h).is_err());
    }
}
