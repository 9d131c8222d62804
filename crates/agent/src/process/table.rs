//! The table of processes the agent started: each entry fans its events out to every attached
//! stream (`Start`, then any `Connect`), keeps stdin or the PTY for input, and stays for a
//! while after the process ends so that late clients still learn how it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ember_envd_proto::envelope::{encode_end, encode_message};
use ember_envd_proto::process::{EndEvent, ProcessConfig, ProcessEvent, ProcessSelector, StartEvent, StartResponse};
use ember_envd_proto::{Code, ConnectError};
use tokio::sync::mpsc;

use super::spawn::Input;

/// How long a finished process stays in the table.
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);
/// Frames buffered per attached stream before the output pump waits for it.
const STREAM_BUFFER: usize = 256;

#[derive(Default)]
pub struct ProcessTable {
    entries: Mutex<HashMap<u32, Arc<Entry>>>,
}

/// One process.
pub struct Entry {
    pub pid: u32,
    pub tag: Option<String>,
    pub config: ProcessConfig,
    pub input: tokio::sync::Mutex<Input>,
    subs: Mutex<Subscribers>,
}

#[derive(Default)]
struct Subscribers {
    senders: Vec<mpsc::Sender<Bytes>>,
    end: Option<EndEvent>,
}

pub fn frame(event: ProcessEvent) -> Bytes {
    encode_message(&StartResponse { event })
}

impl ProcessTable {
    pub fn insert(&self, entry: Arc<Entry>) {
        self.lock().insert(entry.pid, entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds a process by pid or tag (a running one first when tags repeat).
    pub fn find(&self, sel: &ProcessSelector) -> Result<Arc<Entry>, ConnectError> {
        let entries = self.lock();
        let found = match (sel.pid, &sel.tag) {
            (Some(pid), _) => entries.get(&pid).cloned(),
            (None, Some(tag)) => {
                let mut matching: Vec<&Arc<Entry>> = entries.values().filter(|e| e.tag.as_ref() == Some(tag)).collect();
                matching.sort_by_key(|e| e.is_finished());
                matching.first().map(|e| Arc::clone(e))
            }
            (None, None) => {
                return Err(ConnectError::new(Code::InvalidArgument, "process selector needs a pid or a tag"))
            }
        };
        found.ok_or_else(|| {
            let what = sel
                .pid
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| format!("tag '{}'", sel.tag.clone().unwrap_or_default()));
            ConnectError::new(Code::NotFound, format!("process with {what} not found"))
        })
    }

    /// Like [`find`](Self::find), but only a process that is still running.
    pub fn find_running(&self, sel: &ProcessSelector) -> Result<Arc<Entry>, ConnectError> {
        let entry = self.find(sel)?;
        if entry.is_finished() {
            return Err(ConnectError::new(Code::NotFound, format!("process {} has already finished", entry.pid)));
        }
        Ok(entry)
    }

    /// Running processes.
    pub fn running(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<Arc<Entry>> = self.lock().values().filter(|e| !e.is_finished()).cloned().collect();
        v.sort_by_key(|e| e.pid);
        v
    }

    /// Forgets a finished process (after [`KEEP_FINISHED`]).
    pub fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }
}

impl Entry {
    pub fn new(pid: u32, tag: Option<String>, config: ProcessConfig, input: Input) -> Self {
        Self { pid, tag, config, input: tokio::sync::Mutex::new(input), subs: Mutex::default() }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_finished(&self) -> bool {
        self.subs().end.is_some()
    }

    /// Attaches a stream: its first frame is the start event; if the process has ended, the
    /// end event and end-of-stream frame follow at once.
    pub fn subscribe(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let _ = tx.try_send(frame(ProcessEvent::Start(StartEvent { pid: self.pid })));
        let mut subs = self.subs();
        match &subs.end {
            Some(end) => {
                let _ = tx.try_send(frame(ProcessEvent::End(end.clone())));
                let _ = tx.try_send(encode_end(None));
            }
            None => subs.senders.push(tx),
        }
        rx
    }

    /// Sends an output frame to every attached stream, waiting for slow ones; streams whose
    /// client went away are dropped, and the process keeps running.
    pub async fn broadcast(&self, frame: Bytes) {
        let senders = self.subs().senders.clone();
        let mut closed = false;
        for tx in &senders {
            closed |= tx.send(frame.clone()).await.is_err();
        }
        if closed {
            self.subs().senders.retain(|tx| !tx.is_closed());
        }
    }

    /// Records the end, tells every attached stream, and closes them.
    pub async fn finish(&self, end: EndEvent) {
        let senders = {
            let mut subs = self.subs();
            subs.end = Some(end.clone());
            std::mem::take(&mut subs.senders)
        };
        let end_frame = frame(ProcessEvent::End(end));
        for tx in senders {
            let _ = tx.send(end_frame.clone()).await;
            let _ = tx.send(encode_end(None)).await;
        }
    }
}
