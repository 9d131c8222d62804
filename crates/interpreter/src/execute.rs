//! One execution: Jupyter messages translated into `/execute` events (pure), and the driver
//! that sends an `execute_request`, follows its iopub and shell messages to the end, sends
//! keepalives, and interrupts the kernel when the client goes away.
//!
//! Output and back-pressure: events go to the HTTP body through [`Output`], which holds at most
//! `OUTPUT_BUDGET` bytes not yet taken by the client. The kernel's iopub is always drained at
//! the kernel's pace (a cell never blocks on a slow client and the server's memory stays
//! bounded); when the budget is full, `stdout`/`stderr` chunks are dropped and counted, and
//! once the client catches up a line `[ember-interpreter: N bytes of output dropped: the client
//! read too slowly]` takes their place in the same stream. Results, errors and the execution
//! count are never dropped: the driver waits for room for them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ember_envd_proto::interpreter::{Event, ExecutionError, OutputChunk, ResultEvent};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::kernel::{Kernel, KernelError};
use crate::wire::{self, Message};

/// Bytes of events the client has not taken yet, at most.
pub const OUTPUT_BUDGET: usize = 8 << 20;
/// Stream text is cut into events of at most this many bytes.
pub const MAX_CHUNK: usize = 256 << 10;
/// A keepalive after this much silence.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// After an interrupt, how long the kernel has to finish the cell before it is given up.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// After the reply, how long to wait for the kernel's `idle` (some kernels send it late).
const IDLE_GRACE: Duration = Duration::from_secs(10);
/// How long a kernel with late output (Deno) has to publish the fence that follows a cell.
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// The fence: a silent cell whose marker goes through the queue of Deno's cell output.
const FENCE_CODE: &str = "Deno.jupyter.broadcast('ember_fence', {})";
const FENCE_MSG: &str = "ember_fence";
/// Deadline of a silent execution (env vars, set-up).
pub const SILENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What translating one message gives.
#[derive(Debug, Default)]
pub struct Translation {
    pub events: Vec<Event>,
    pub idle: bool,
}

/// Translates an iopub message that belongs to the execution. `error_sent` is set when an error
/// event is produced (only the first error is reported).
pub fn translate_iopub(msg: &Message, error_sent: &mut bool) -> Translation {
    let mut t = Translation::default();
    let c = &msg.content;
    match msg.header.msg_type.as_str() {
        "execute_input" => {
            if let Some(n) = c.get("execution_count").and_then(Value::as_u64) {
                t.events.push(Event::NumberOfExecutions { execution_count: n });
            }
        }
        "stream" => {
            let text = msg.str_field("text").unwrap_or_default();
            let timestamp = msg.header.date.clone().unwrap_or_else(wire::now_iso);
            let stderr = msg.str_field("name") == Some("stderr");
            for piece in split_text(text, MAX_CHUNK) {
                let chunk = OutputChunk { text: piece.to_owned(), timestamp: timestamp.clone() };
                t.events.push(if stderr { Event::Stderr(chunk) } else { Event::Stdout(chunk) });
            }
        }
        kind @ ("execute_result" | "display_data") => {
            if let Some(Value::Object(data)) = c.get("data") {
                t.events.push(Event::Result(Box::new(ResultEvent::from_mime_bundle(
                    data.clone(),
                    kind == "execute_result",
                ))));
            }
        }
        "error" if !*error_sent => {
            *error_sent = true;
            t.events.push(Event::Error(error_from(c)));
        }
        "status" => t.idle = msg.str_field("execution_state") == Some("idle"),
        _ => {}
    }
    t
}

/// The error event of an `execute_reply` with status `error`, if none was sent yet.
pub fn translate_reply(msg: &Message, error_sent: &mut bool) -> Option<Event> {
    if msg.str_field("status") != Some("error") || *error_sent {
        return None;
    }
    *error_sent = true;
    Some(Event::Error(error_from(&msg.content)))
}

fn error_from(c: &serde_json::Map<String, Value>) -> ExecutionError {
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let traceback = match c.get("traceback") {
        Some(Value::Array(lines)) => lines.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    };
    ExecutionError { name: s("ename"), value: s("evalue"), traceback }
}

/// Cuts `text` into pieces of at most `max` bytes at character boundaries (one empty piece for
/// an empty text).
pub fn split_text(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

/// One NDJSON line of an event.
pub fn line(event: &Event) -> Bytes {
    // Events are plain data: serialisation cannot fail.
    let mut v = serde_json::to_vec(event).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A line and its share of the budget, released once the body has handed it to the socket.
pub struct Line {
    pub bytes: Bytes,
    pub _permit: Option<OwnedSemaphorePermit>,
}

/// The execution's side of the HTTP body.
pub struct Output {
    tx: mpsc::UnboundedSender<Line>,
    budget: Arc<Semaphore>,
    dropped: [u64; 2],
}

impl Output {
    /// An output and the receiving end for the body. The body must call `Semaphore::close` on
    /// the returned budget when it is dropped (client gone), so that no wait outlives it.
    pub fn new() -> (Output, mpsc::UnboundedReceiver<Line>, Arc<Semaphore>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET));
        (Output { tx, budget: budget.clone(), dropped: [0; 2] }, rx, budget)
    }

    /// Whether the client is still there.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed() && !self.budget.is_closed()
    }

    /// Sends an event, waiting for room unless it is output (dropped when there is none) or a
    /// keepalive (skipped). Returns false once the client is gone.
    pub async fn send(&mut self, event: Event) -> bool {
        let stream = match &event {
            Event::Stdout(_) => Some(0),
            Event::Stderr(_) => Some(1),
            _ => None,
        };
        let bytes = line(&event);
        let want = permits(bytes.len());
        let permit = match (stream, &event) {
            (Some(i), _) => {
                // Dropping goes on until half the budget is free again (no flapping).
                let resume = self.budget.available_permits() >= OUTPUT_BUDGET / 2;
                if self.dropped[i] > 0 && !(resume && self.flush_dropped(i)) {
                    self.dropped[i] += bytes.len() as u64;
                    return self.is_open();
                }
                match self.budget.clone().try_acquire_many_owned(want) {
                    Ok(p) => p,
                    Err(tokio::sync::TryAcquireError::Closed) => return false,
                    Err(tokio::sync::TryAcquireError::NoPermits) => {
                        self.dropped[i] += bytes.len() as u64;
                        return true;
                    }
                }
            }
            (None, Event::Keepalive) => match self.budget.clone().try_acquire_many_owned(want) {
                Ok(p) => p,
                Err(tokio::sync::TryAcquireError::Closed) => return false,
                Err(tokio::sync::TryAcquireError::NoPermits) => return true,
            },
            (None, _) => {
                for i in 0..2 {
                    if self.dropped[i] > 0 && !self.flush_dropped_wait(i).await {
                        return false;
                    }
                }
                match self.budget.clone().acquire_many_owned(want).await {
                    Ok(p) => p,
                    Err(_) => return false,
                }
            }
        };
        self.tx.send(Line { bytes, _permit: Some(permit) }).is_ok()
    }

    fn marker(&self, i: usize) -> Bytes {
        let text =
            format!("[ember-interpreter: {} bytes of output dropped: the client read too slowly]\n", self.dropped[i]);
        let chunk = OutputChunk { text, timestamp: wire::now_iso() };
        line(&if i == 0 { Event::Stdout(chunk) } else { Event::Stderr(chunk) })
    }

    /// Sends the marker of dropped output if there is room now.
    fn flush_dropped(&mut self, i: usize) -> bool {
        let bytes = self.marker(i);
        match self.budget.clone().try_acquire_many_owned(permits(bytes.len())) {
            Ok(p) => {
                self.dropped[i] = 0;
                self.tx.send(Line { bytes, _permit: Some(p) }).is_ok()
            }
            Err(_) => false,
        }
    }

    async fn flush_dropped_wait(&mut self, i: usize) -> bool {
        let bytes = self.marker(i);
        let Ok(p) = self.budget.clone().acquire_many_owned(permits(bytes.len())).await else { return false };
        self.dropped[i] = 0;
        self.tx.send(Line { bytes, _permit: Some(p) }).is_ok()
    }
}

fn permits(len: usize) -> u32 {
    u32::try_from(len.min(OUTPUT_BUDGET)).unwrap_or(u32::MAX)
}

/// How an execution ended, for the context.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel is fine.
    Done,
    /// The kernel died or stopped answering: the context needs a fresh one.
    KernelLost,
}

/// Runs `code` and streams its events (not `end_of_execution`). `gone` resolves when the client
/// disconnects; the cell is then interrupted and followed to its end without output.
pub async fn run_cell(kernel: &Kernel, code: &str, out: &mut Output, gone: &mut oneshot::Receiver<()>) -> Outcome {
    let mut shell = kernel.shell_rx().await;
    let mut iopub = kernel.iopub_rx().await;
    // Leftovers of earlier (interrupted or silent) executions.
    while shell.try_recv().is_ok() {}
    while let Ok(m) = iopub.try_recv() {
        tracing::trace!(msg_type = m.header.msg_type, "stale iopub message dropped");
    }
    let content = json!({"code": code, "silent": false, "store_history": true, "user_expressions": {},
        "allow_stdin": false, "stop_on_error": true});
    let id = match kernel.send_shell("execute_request", content).await {
        Ok(id) => id,
        Err(e) => return lost(kernel, out, &e.to_string()).await,
    };
    let mut error_sent = false;
    let (mut replied, mut idle, mut result_seen) = (false, false, false);
    // Client gone: the cell is interrupted and must end within INTERRUPT_GRACE.
    let mut interrupt_deadline: Option<Instant> = None;
    // Reply in but no `idle` yet: given up after IDLE_GRACE without any iopub message.
    let mut idle_deadline: Option<Instant> = None;
    let keepalive = tokio::time::sleep(KEEPALIVE);
    tokio::pin!(keepalive);
    while !(replied && idle) {
        let mut events = Vec::new();
        let deadline = match (interrupt_deadline, idle_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            biased;
            _ = &mut *gone, if interrupt_deadline.is_none() => {
                tracing::info!("client gone: interrupting the kernel");
                kernel.interrupt().await;
                interrupt_deadline = Some(Instant::now() + INTERRUPT_GRACE);
            }
            status = kernel.exited() => {
                tracing::warn!(%status, "kernel died during an execution");
                let why = format!("the kernel died ({status}); the next execution starts a new one");
                return lost(kernel, out, &why).await;
            }
            Some(mut m) = iopub.recv() => {
                tracing::trace!(msg_type = m.header.msg_type, mine = m.parent_msg_id.as_deref() == Some(id.as_str()), replied, "iopub");
                if replied {
                    idle_deadline = Some(Instant::now() + IDLE_GRACE);
                }
                if m.parent_msg_id.as_deref() == Some(id.as_str()) {
                    if m.header.msg_type == "stream" {
                        // Sent piece by piece: a big chunk is not copied whole.
                        stream_out(&mut m, out).await;
                        keepalive.as_mut().reset(Instant::now() + KEEPALIVE);
                    } else {
                        let t = translate_iopub(&m, &mut error_sent);
                        idle |= t.idle;
                        result_seen |= m.header.msg_type == "execute_result";
                        events = t.events;
                    }
                }
            }
            Some(m) = shell.recv() => {
                tracing::trace!(msg_type = m.header.msg_type, mine = m.parent_msg_id.as_deref() == Some(id.as_str()), idle, "shell");
                if m.parent_msg_id.as_deref() == Some(id.as_str()) && m.header.msg_type == "execute_reply" {
                    replied = true;
                    events.extend(translate_reply(&m, &mut error_sent));
                    idle_deadline = Some(Instant::now() + IDLE_GRACE);
                }
            }
            _ = sleep_until_opt(deadline) => {
                if replied {
                    break; // No idle after the reply: the cell is over anyway.
                }
                tracing::warn!("the kernel did not stop after an interrupt: killing it");
                kernel.kill();
                return Outcome::KernelLost;
            }
            _ = &mut keepalive => events.push(Event::Keepalive),
        }
        if !events.is_empty() {
            keepalive.as_mut().reset(Instant::now() + KEEPALIVE);
        }
        for e in events {
            if interrupt_deadline.is_none() && !out.send(e).await {
                kernel.interrupt().await;
                interrupt_deadline = Some(Instant::now() + INTERRUPT_GRACE);
            }
        }
    }
    if kernel.late_results && !result_seen && interrupt_deadline.is_none() {
        fence(kernel, &mut iopub, &id, out, &mut error_sent).await;
    }
    Outcome::Done
}

/// Deno publishes a cell's output (streams, its result) from the REPL thread through a queue,
/// with the parent of whichever request is current when the queue is drained: under load that
/// output comes after the cell's `idle`, and would be lost or given to the next cell. A silent
/// cell that sends a marker through the same queue fences it: what comes before the marker, with
/// the cell's parent or the fence's, is the cell's. (A cell with a result needs no fence: the
/// result is the last thing the cell queues.)
async fn fence(
    kernel: &Kernel,
    iopub: &mut mpsc::Receiver<Message>,
    id: &str,
    out: &mut Output,
    error_sent: &mut bool,
) {
    let content = json!({"code": FENCE_CODE, "silent": true, "store_history": false, "user_expressions": {},
        "allow_stdin": false, "stop_on_error": false});
    let fence_id = match kernel.send_shell("execute_request", content).await {
        Ok(fence_id) => fence_id,
        Err(e) => return tracing::warn!(error = %e, "could not send the fence"),
    };
    let until = Instant::now() + FENCE_TIMEOUT;
    while let Ok(Some(mut m)) = tokio::time::timeout_at(until, iopub.recv()).await {
        let parent = m.parent_msg_id.as_deref();
        if parent != Some(id) && parent != Some(fence_id.as_str()) {
            continue;
        }
        let sent = match m.header.msg_type.as_str() {
            FENCE_MSG => return,
            "status" | "execute_input" => true,
            "stream" => {
                stream_out(&mut m, out).await;
                true
            }
            _ => {
                let mut sent = true;
                for e in translate_iopub(&m, error_sent).events {
                    sent &= out.send(e).await;
                }
                sent
            }
        };
        if !sent {
            return;
        }
    }
    tracing::warn!("the kernel sent no fence within {FENCE_TIMEOUT:?}: late output may be lost");
}

/// Sends a `stream` message's text in pieces of at most MAX_CHUNK bytes.
async fn stream_out(m: &mut Message, out: &mut Output) {
    let stderr = m.str_field("name") == Some("stderr");
    let Some(Value::String(text)) = m.content.remove("text") else { return };
    let timestamp = m.header.date.clone().unwrap_or_else(wire::now_iso);
    for piece in split_text(&text, MAX_CHUNK) {
        let chunk = OutputChunk { text: piece.to_owned(), timestamp: timestamp.clone() };
        if !out.send(if stderr { Event::Stderr(chunk) } else { Event::Stdout(chunk) }).await {
            return;
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn lost(kernel: &Kernel, out: &mut Output, why: &str) -> Outcome {
    kernel.kill();
    let error = ExecutionError { name: "KernelDied".into(), value: why.to_owned(), traceback: String::new() };
    out.send(Event::Error(error)).await;
    Outcome::KernelLost
}

/// Runs `code` silently (no output, no history) and waits for its reply. Returns the error of
/// the reply, if any.
pub async fn run_silent(kernel: &Kernel, code: &str) -> Result<Option<ExecutionError>, KernelError> {
    run_unseen(kernel, code, true).await
}

/// Runs `code` with its output (which the next cell drops as stale) but outside the history, so
/// the execution count does not move: the kernel's whole execution path runs, result included.
pub async fn run_unrecorded(kernel: &Kernel, code: &str) -> Result<Option<ExecutionError>, KernelError> {
    run_unseen(kernel, code, false).await
}

async fn run_unseen(kernel: &Kernel, code: &str, silent: bool) -> Result<Option<ExecutionError>, KernelError> {
    let mut shell = kernel.shell_rx().await;
    while shell.try_recv().is_ok() {}
    let content = json!({"code": code, "silent": silent, "store_history": false, "user_expressions": {},
        "allow_stdin": false, "stop_on_error": false});
    let id = kernel.send_shell("execute_request", content).await?;
    let wait = async {
        loop {
            tokio::select! {
                m = shell.recv() => match m {
                    Some(m) if m.parent_msg_id.as_deref() == Some(id.as_str()) && m.header.msg_type == "execute_reply" => {
                        let mut sent = false;
                        return Ok(match translate_reply(&m, &mut sent) {
                            Some(Event::Error(e)) => Some(e),
                            _ => None,
                        });
                    }
                    Some(_) => {}
                    None => return Err(KernelError::Gone),
                },
                _ = kernel.exited() => return Err(KernelError::Gone),
            }
        }
    };
    match tokio::time::timeout(SILENT_TIMEOUT, wait).await {
        Ok(r) => r,
        Err(_) => Err(KernelError::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    fn msg(msg_type: &str, content: Value) -> Message {
        let Value::Object(content) = content else { panic!() };
        Message {
            header: Header {
                msg_id: "m".into(),
                session: "s".into(),
                username: "u".into(),
                date: Some("2026-01-01T00:00:00.000001Z".into()),
                msg_type: msg_type.into(),
                version: "5.3".into(),
            },
            parent_msg_id: Some("p".into()),
            content,
        }
    }

    fn events(m: &Message, error_sent: &mut bool) -> Vec<Value> {
        translate_iopub(m, error_sent).events.iter().map(|e| serde_json::to_value(e).unwrap()).collect()
    }

    #[test]
    fn iopub_to_events() {
        let mut sent = false;
        assert_eq!(
            events(&msg("execute_input", json!({"code":"1","execution_count":7})), &mut sent),
            vec![json!({"type":"number_of_executions","execution_count":7})]
        );
        assert_eq!(
            events(&msg("stream", json!({"name":"stderr","text":"oops\n"})), &mut sent),
            vec![json!({"type":"stderr","text":"oops\n","timestamp":"2026-01-01T00:00:00.000001Z"})]
        );
        assert_eq!(
            events(
                &msg("execute_result", json!({"data":{"text/plain":"2"},"metadata":{},"execution_count":7})),
                &mut sent
            ),
            vec![json!({"type":"result","text":"2","is_main_result":true})]
        );
        assert_eq!(
            events(&msg("display_data", json!({"data":{"image/png":"AAAA","text/plain":"<Figure>"}})), &mut sent),
            vec![json!({"type":"result","text":"<Figure>","png":"AAAA","is_main_result":false})]
        );
        assert!(translate_iopub(&msg("status", json!({"execution_state":"idle"})), &mut sent).idle);
        assert!(!translate_iopub(&msg("status", json!({"execution_state":"busy"})), &mut sent).idle);
        assert!(events(&msg("clear_output", json!({})), &mut sent).is_empty());
    }

    #[test]
    fn only_the_first_error() {
        let mut sent = false;
        let err = msg("error", json!({"ename":"ZeroDivisionError","evalue":"division by zero","traceback":["a","b"]}));
        assert_eq!(
            events(&err, &mut sent),
            vec![json!({"type":"error","name":"ZeroDivisionError","value":"division by zero","traceback":"a\nb"})]
        );
        assert!(events(&err, &mut sent).is_empty());
        let reply = msg("execute_reply", json!({"status":"error","ename":"E","evalue":"v","traceback":[]}));
        assert_eq!(translate_reply(&reply, &mut sent), None);
        let mut fresh = false;
        assert!(matches!(translate_reply(&reply, &mut fresh), Some(Event::Error(_))));
        let ok = msg("execute_reply", json!({"status":"ok"}));
        assert_eq!(translate_reply(&ok, &mut false), None);
    }

    #[test]
    fn big_output_is_cut_at_char_boundaries() {
        assert_eq!(split_text("", 4), vec![""]);
        assert_eq!(split_text("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(split_text("ééé", 3), vec!["é", "é", "é"]);
        let mut sent = false;
        let big = "x".repeat(MAX_CHUNK * 2 + 1);
        assert_eq!(translate_iopub(&msg("stream", json!({"name":"stdout","text":big})), &mut sent).events.len(), 3);
    }

    #[tokio::test]
    async fn slow_client_output_is_dropped_with_a_marker_results_are_not() {
        let (mut out, mut rx, budget) = Output::new();
        let chunk = |t: &str| Event::Stdout(OutputChunk { text: t.into(), timestamp: "t".into() });
        // Fill the budget without reading.
        let big = "y".repeat(MAX_CHUNK);
        let mut sent = 0;
        while budget.available_permits() > MAX_CHUNK * 2 {
            assert!(out.send(chunk(&big)).await);
            sent += 1;
        }
        assert!(out.send(chunk(&big)).await);
        assert!(out.send(chunk(&big)).await);
        assert!(out.send(chunk(&big)).await);
        assert!(out.dropped[0] > 0);
        // Read everything: room again, the next chunk is preceded by the marker.
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push(l.bytes);
        }
        assert!(got.len() >= sent);
        assert!(out.send(chunk("after\n")).await);
        let marker = rx.try_recv().unwrap().bytes;
        assert!(std::str::from_utf8(&marker).unwrap().contains("bytes of output dropped"));
        assert!(std::str::from_utf8(&rx.try_recv().unwrap().bytes).unwrap().contains("after"));
        // A result waits for room rather than being dropped; a closed body ends the wait.
        let hold = budget.clone().try_acquire_many_owned(permits(budget.available_permits())).unwrap();
        let result =
            Event::Result(Box::new(ResultEvent { text: Some("1".into()), is_main_result: true, ..Default::default() }));
        let waiting = tokio::spawn(async move { out.send(result).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(hold);
        assert!(waiting.await.unwrap());
        assert!(std::str::from_utf8(&rx.try_recv().unwrap().bytes).unwrap().contains("\"result\""));
    }

    #[tokio::test]
    async fn closed_body_stops_waits() {
        let (mut out, rx, budget) = Output::new();
        let _hold = budget.clone().try_acquire_many_owned(permits(OUTPUT_BUDGET)).unwrap();
        budget.close();
        drop(rx);
        assert!(!out.send(Event::EndOfExecution).await);
        assert!(!out.is_open());
    }
}
