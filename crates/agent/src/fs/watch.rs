//! Directory watches (inotify through `notify`): the `WatchDir` stream, and polled watchers
//! (`CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`) for the synchronous SDK.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use ember_envd_proto::envelope::encode_message;
use ember_envd_proto::filesystem::{EventType, FilesystemEvent, WatchDirResponse, WatchRequest};
use ember_envd_proto::process::Empty;
use ember_envd_proto::{Code, ConnectError};
use notify::event::{EventKind, ModifyKind, RenameMode};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::entry::{entry_info, Names};
use super::{resolve, run_as};
use crate::auth::rpc_user;
use crate::connect::{self, error_for, read_body, StreamOptions, MAX_REQUEST};
use crate::state::Agent;
use crate::users::User;

/// Events a polled watcher keeps before dropping the oldest.
const MAX_PENDING: usize = 10_000;
/// Polled watchers alive at once.
const MAX_WATCHERS: usize = 256;
/// Frames buffered for a `WatchDir` stream before events are dropped.
const STREAM_BUFFER: usize = 4096;

#[derive(Default)]
pub struct Watchers {
    map: Mutex<HashMap<String, PolledWatcher>>,
}

struct PolledWatcher {
    _watcher: RecommendedWatcher,
    events: Arc<Mutex<VecDeque<FilesystemEvent>>>,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PolledWatcher>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the events gathered since the last call.
    pub fn drain(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let map = self.lock();
        let w = map.get(id).ok_or_else(|| not_found(id))?;
        let mut events = w.events.lock().unwrap_or_else(|e| e.into_inner());
        Ok(events.drain(..).collect())
    }

    pub fn remove(&self, id: &str) -> Result<(), ConnectError> {
        self.lock().remove(id).map(|_| ()).ok_or_else(|| not_found(id))
    }
}

fn not_found(id: &str) -> ConnectError {
    ConnectError::new(Code::NotFound, format!("watcher '{id}' not found"))
}

/// Checks, as the user, that `path` is a directory they can read.
async fn check_dir(user: &User, req: &WatchRequest) -> Result<PathBuf, ConnectError> {
    let path = resolve(&req.path, &user.home)?;
    let checked = path.clone();
    run_as(user.clone(), move || {
        let meta = std::fs::metadata(&checked).map_err(|e| super::io_error(&checked, e))?;
        if !meta.is_dir() {
            return Err(ConnectError::new(
                Code::InvalidArgument,
                format!("path '{}' is not a directory", checked.display()),
            ));
        }
        std::fs::read_dir(&checked).map_err(|e| super::io_error(&checked, e))?;
        Ok(())
    })
    .await?;
    Ok(path)
}

/// Starts a watcher on `root`, calling `sink` with each event.
fn start_watcher(
    root: PathBuf,
    req: &WatchRequest,
    names: Names,
    sink: impl Fn(FilesystemEvent) + Send + 'static,
) -> Result<RecommendedWatcher, ConnectError> {
    let include_entry = req.include_entry;
    let base = root.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let Some(kind) = map_kind(&event.kind) else {
            return;
        };
        for path in &event.paths {
            let name = path.strip_prefix(&base).unwrap_or(path).to_string_lossy().into_owned();
            let entry = (include_entry && kind != EventType::Remove && kind != EventType::Rename)
                .then(|| entry_info(path, &names).ok())
                .flatten();
            sink(FilesystemEvent { name, kind, entry });
        }
    })
    .map_err(|e| ConnectError::new(Code::Internal, format!("create watcher: {e}")))?;
    let mode = if req.recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
    watcher
        .watch(&root, mode)
        .map_err(|e| ConnectError::new(Code::Internal, format!("watch '{}': {e}", root.display())))?;
    Ok(watcher)
}

/// fsnotify's view of inotify events, as envd reports them.
fn map_kind(kind: &EventKind) -> Option<EventType> {
    match kind {
        EventKind::Create(_) => Some(EventType::Create),
        EventKind::Remove(_) => Some(EventType::Remove),
        EventKind::Modify(ModifyKind::Metadata(_)) => Some(EventType::Chmod),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(EventType::Rename),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(EventType::Create),
        EventKind::Modify(ModifyKind::Name(_)) => None,
        EventKind::Modify(_) => Some(EventType::Write),
        _ => None,
    }
}

pub async fn create_watcher(agent: &Agent, user: User, req: WatchRequest) -> Result<String, ConnectError> {
    if agent.watchers.lock().len() >= MAX_WATCHERS {
        return Err(ConnectError::new(Code::ResourceExhausted, format!("at most {MAX_WATCHERS} watchers")));
    }
    let root = check_dir(&user, &req).await?;
    let events: Arc<Mutex<VecDeque<FilesystemEvent>>> = Arc::default();
    let sink_events = Arc::clone(&events);
    let watcher = start_watcher(root, &req, agent.users.names(), move |ev| {
        let mut q = sink_events.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_PENDING {
            q.pop_front();
        }
        q.push_back(ev);
    })?;
    let id = random_id();
    agent.watchers.lock().insert(id.clone(), PolledWatcher { _watcher: watcher, events });
    Ok(id)
}

fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..16).map(|_| format!("{:x}", rng.gen::<u8>() & 0xf)).collect()
}

/// The `WatchDir` server stream: a start frame, then events until the client goes away.
pub async fn watch_dir(agent: &Arc<Agent>, headers: &HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, MAX_REQUEST).await?;
        let req: WatchRequest = connect::decode_single_frame(headers, &bytes)?;
        let user = rpc_user(agent, headers)?;
        let root = check_dir(&user, &req).await?;
        let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
        let _ = tx.try_send(encode_message(&WatchDirResponse::Start(Empty {})));
        let sink_tx = tx.clone();
        let watcher = start_watcher(root, &req, agent.users.names(), move |ev| {
            let _ = sink_tx.try_send(encode_message(&WatchDirResponse::Filesystem(ev)));
        })?;
        // The watcher lives until the client disconnects (the receiver is dropped).
        tokio::spawn(async move {
            tx.closed().await;
            drop(watcher);
        });
        Ok::<_, ConnectError>(rx)
    }
    .await;
    match result {
        Ok(rx) => connect::stream(rx, StreamOptions::from_headers(headers, &WatchDirResponse::Keepalive(Empty {}))),
        Err(e) => error_for(headers, e),
    }
}
