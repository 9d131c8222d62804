//! envd's `filesystem.Filesystem` service: Stat, ListDir, MakeDir, Move, Remove and the
//! watchers. Every operation runs with the requesting user's filesystem credentials.

pub mod entry;
pub mod watch;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ember_envd_proto::filesystem::{
    EntryInfo, EntryResponse, ListDirRequest, ListDirResponse, MoveRequest, PathRequest, WatchRequest, WatcherEvents,
    WatcherRequest,
};
use ember_envd_proto::process::Empty;
use ember_envd_proto::{Code, ConnectError};

use crate::auth::rpc_user;
use crate::connect::{self, error_for, read_body, unary, MAX_REQUEST};
use crate::creds::as_user;
use crate::state::Agent;
use crate::users::User;

/// Most entries one `ListDir` returns.
const MAX_LIST: usize = 100_000;

/// Resolves a client path: `~` and relative paths against the user's home, then cleaned
/// lexically (`.` and `..` removed) as Go's `filepath.Clean` does.
pub fn resolve(path: &str, home: &Path) -> Result<PathBuf, ConnectError> {
    if path.contains('\0') {
        return Err(connect::invalid("path contains a NUL byte"));
    }
    if path.len() > 4096 {
        return Err(connect::invalid("path is longer than 4096 bytes"));
    }
    let raw = if path.is_empty() || path == "~" {
        home.to_path_buf()
    } else if let Some(rest) = path.strip_prefix("~/") {
        home.join(rest)
    } else {
        home.join(path)
    };
    let mut clean = PathBuf::from("/");
    for c in raw.components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    Ok(clean)
}

/// Maps an I/O error on `path` to the Connect code the SDKs turn into their exceptions.
pub fn io_error(path: &Path, e: std::io::Error) -> ConnectError {
    let p = path.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => ConnectError::new(Code::NotFound, format!("path '{p}' does not exist")),
        std::io::ErrorKind::PermissionDenied => {
            ConnectError::new(Code::PermissionDenied, format!("permission denied: {p}"))
        }
        std::io::ErrorKind::AlreadyExists => {
            ConnectError::new(Code::AlreadyExists, format!("path '{p}' already exists"))
        }
        _ => match e.raw_os_error() {
            Some(libc::ENOTDIR) => {
                ConnectError::new(Code::InvalidArgument, format!("a parent of '{p}' is not a directory"))
            }
            Some(libc::EISDIR) => ConnectError::new(Code::InvalidArgument, format!("path '{p}' is a directory")),
            Some(libc::ENOSPC) => {
                ConnectError::new(Code::ResourceExhausted, format!("not enough disk space for '{p}'"))
            }
            _ => ConnectError::new(Code::Internal, format!("{p}: {e}")),
        },
    }
}

/// Runs a blocking file operation as `user` on the blocking pool.
pub async fn run_as<T: Send + 'static>(
    user: User,
    f: impl FnOnce() -> Result<T, ConnectError> + Send + 'static,
) -> Result<T, ConnectError> {
    tokio::task::spawn_blocking(move || as_user(&user, f))
        .await
        .map_err(|e| ConnectError::new(Code::Internal, format!("file task: {e}")))?
        .map_err(|e| ConnectError::new(Code::PermissionDenied, e.to_string()))?
}

/// Routes `POST /filesystem.Filesystem/{method}`.
pub async fn handle(
    State(agent): State<Arc<Agent>>,
    UrlPath(method): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method == "WatchDir" {
        return watch::watch_dir(&agent, &headers, body).await;
    }
    let result = async {
        let bytes = read_body(body, MAX_REQUEST).await?;
        let user = rpc_user(&agent, &headers)?;
        let names = agent.users.names();
        let home = user.home.clone();
        match method.as_str() {
            "Stat" => {
                let req: PathRequest = connect::decode_unary(&headers, &bytes)?;
                let path = resolve(&req.path, &home)?;
                let entry =
                    run_as(user, move || entry::entry_info(&path, &names).map_err(|e| io_error(&path, e))).await?;
                Ok(unary(&EntryResponse { entry }))
            }
            "MakeDir" => {
                let req: PathRequest = connect::decode_unary(&headers, &bytes)?;
                let path = resolve(&req.path, &home)?;
                let entry = run_as(user, move || make_dir(&path, &names)).await?;
                Ok(unary(&EntryResponse { entry }))
            }
            "Move" => {
                let req: MoveRequest = connect::decode_unary(&headers, &bytes)?;
                let (from, to) = (resolve(&req.source, &home)?, resolve(&req.destination, &home)?);
                let entry = run_as(user, move || move_entry(&from, &to, &names)).await?;
                Ok(unary(&EntryResponse { entry }))
            }
            "Remove" => {
                let req: PathRequest = connect::decode_unary(&headers, &bytes)?;
                let path = resolve(&req.path, &home)?;
                run_as(user, move || remove(&path)).await?;
                Ok(unary(&Empty {}))
            }
            "ListDir" => {
                let req: ListDirRequest = connect::decode_unary(&headers, &bytes)?;
                let path = resolve(&req.path, &home)?;
                let depth = req.depth.max(1);
                let entries = run_as(user, move || list_dir(&path, depth, &names)).await?;
                Ok(unary(&ListDirResponse { entries }))
            }
            "CreateWatcher" => {
                let req: WatchRequest = connect::decode_unary(&headers, &bytes)?;
                let id = watch::create_watcher(&agent, user, req).await?;
                Ok(unary(&ember_envd_proto::filesystem::CreateWatcherResponse { watcher_id: id }))
            }
            "GetWatcherEvents" => {
                let req: WatcherRequest = connect::decode_unary(&headers, &bytes)?;
                let events = agent.watchers.drain(&req.watcher_id)?;
                Ok(unary(&WatcherEvents { events }))
            }
            "RemoveWatcher" => {
                let req: WatcherRequest = connect::decode_unary(&headers, &bytes)?;
                agent.watchers.remove(&req.watcher_id)?;
                Ok(unary(&Empty {}))
            }
            other => {
                Err(ConnectError::new(Code::Unimplemented, format!("filesystem.Filesystem/{other} is not implemented")))
            }
        }
    }
    .await;
    result.unwrap_or_else(|e| error_for(&headers, e))
}

fn make_dir(path: &Path, names: &entry::Names) -> Result<EntryInfo, ConnectError> {
    if path.exists() {
        return Err(ConnectError::new(Code::AlreadyExists, format!("path '{}' already exists", path.display())));
    }
    std::fs::create_dir_all(path).map_err(|e| io_error(path, e))?;
    entry::entry_info(path, names).map_err(|e| io_error(path, e))
}

fn move_entry(from: &Path, to: &Path, names: &entry::Names) -> Result<EntryInfo, ConnectError> {
    std::fs::symlink_metadata(from).map_err(|e| io_error(from, e))?;
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    std::fs::rename(from, to).map_err(|e| io_error(to, e))?;
    entry::entry_info(to, names).map_err(|e| io_error(to, e))
}

/// Removes a file, a link or a directory tree; a path that does not exist is already removed
/// (as envd answers).
fn remove(path: &Path) -> Result<(), ConnectError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, e)),
    };
    if meta.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) }
        .map_err(|e| io_error(path, e))
}

fn list_dir(path: &Path, depth: u32, names: &entry::Names) -> Result<Vec<EntryInfo>, ConnectError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_dir() {
        return Err(ConnectError::new(Code::InvalidArgument, format!("path '{}' is not a directory", path.display())));
    }
    let mut out = Vec::new();
    walk(path, depth, names, &mut out, true)?;
    Ok(out)
}

fn walk(dir: &Path, depth: u32, names: &entry::Names, out: &mut Vec<EntryInfo>, top: bool) -> Result<(), ConnectError> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if top => return Err(io_error(dir, e)),
        Err(_) => return Ok(()),
    };
    let mut children: Vec<PathBuf> = read.flatten().map(|e| e.path()).collect();
    children.sort();
    for child in children {
        if out.len() >= MAX_LIST {
            return Err(ConnectError::new(Code::ResourceExhausted, format!("more than {MAX_LIST} entries")));
        }
        let Ok(info) = entry::entry_info(&child, names) else {
            continue;
        };
        let recurse = depth > 1 && !info.is_symlink && info.kind == ember_envd_proto::filesystem::FileType::Directory;
        out.push(info);
        if recurse {
            walk(&child, depth - 1, names, out, false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_home_and_are_cleaned() {
        let home = Path::new("/home/user");
        assert_eq!(resolve("a.txt", home).unwrap(), Path::new("/home/user/a.txt"));
        assert_eq!(resolve("~/x/../y", home).unwrap(), Path::new("/home/user/y"));
        assert_eq!(resolve("", home).unwrap(), Path::new("/home/user"));
        assert_eq!(resolve("/tmp/./a//b", home).unwrap(), Path::new("/tmp/a/b"));
        assert_eq!(resolve("/../../etc", home).unwrap(), Path::new("/etc"));
        assert_eq!(resolve("a\0b", home).unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn removing_a_missing_path_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        remove(&file).unwrap();
        assert!(!file.exists());
        remove(&file).unwrap();
        remove(&dir.path().join("no/such/path")).unwrap();
    }

    #[test]
    fn io_errors_map_to_sdk_codes() {
        let p = Path::new("/x");
        assert_eq!(io_error(p, std::io::ErrorKind::NotFound.into()).code, Code::NotFound);
        assert_eq!(io_error(p, std::io::ErrorKind::PermissionDenied.into()).code, Code::PermissionDenied);
        assert_eq!(io_error(p, std::io::Error::from_raw_os_error(libc::ENOSPC)).code, Code::ResourceExhausted);
    }
}
