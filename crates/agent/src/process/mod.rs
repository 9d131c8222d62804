//! envd's `process.Process` service: Start, Connect, List, SendInput, StreamInput, CloseStdin,
//! SendSignal and Update. One function per RPC; [`handle`] routes by method name.

pub mod spawn;
pub mod table;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ember_envd_proto::process::{
    Empty, KeepAlive, ListResponse, ProcessEvent, ProcessInfo, SelectRequest, SendInputRequest, SendSignalRequest,
    Signal, StartRequest, StartResponse, StreamInputRequest, UpdateRequest,
};
use ember_envd_proto::{Code, ConnectError};

use crate::auth::rpc_user;
use crate::connect::{self, error_for, read_body, unary, ClientStream, StreamOptions, MAX_REQUEST};
use crate::state::Agent;

/// Routes `POST /process.Process/{method}`.
pub async fn handle(
    State(agent): State<Arc<Agent>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = match method.as_str() {
        "Start" => return start(&agent, &headers, body).await,
        "Connect" => return connect_stream(&agent, &headers, body).await,
        "StreamInput" => stream_input(&agent, &headers, body).await,
        "List" => list(&agent, &headers, body).await,
        "SendInput" => send_input(&agent, &headers, body).await,
        "CloseStdin" => close_stdin(&agent, &headers, body).await,
        "SendSignal" => send_signal(&agent, &headers, body).await,
        "Update" => update(&agent, &headers, body).await,
        other => Err(ConnectError::new(Code::Unimplemented, format!("process.Process/{other} is not implemented"))),
    };
    result.unwrap_or_else(|e| error_for(&headers, e))
}

async fn unary_request<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ConnectError> {
    let bytes = read_body(body, MAX_REQUEST).await?;
    connect::decode_unary(headers, &bytes)
}

fn keepalive() -> StartResponse {
    StartResponse { event: ProcessEvent::Keepalive(KeepAlive {}) }
}

async fn start(agent: &Arc<Agent>, headers: &HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, MAX_REQUEST).await?;
        let request: StartRequest = connect::decode_single_frame(headers, &bytes)?;
        let user = rpc_user(agent, headers)?;
        let identity = agent.identity();
        let lifetime = connect::deadline(headers);
        let entry = spawn::start(
            &agent.processes,
            spawn::Launch {
                request,
                user,
                sandbox_envs: identity.process_env(),
                default_workdir: identity.default_workdir,
                lifetime,
            },
        )?;
        // The program only: its arguments may carry secrets. The sandbox's log shows this line.
        tracing::info!(pid = entry.pid, cmd = %entry.config.cmd, "process started");
        Ok::<_, ConnectError>(entry.subscribe())
    }
    .await;
    match result {
        // The process's lifetime is the deadline, so the stream itself needs none.
        Ok(rx) => {
            connect::stream(rx, StreamOptions { deadline: None, ..StreamOptions::from_headers(headers, &keepalive()) })
        }
        Err(e) => error_for(headers, e),
    }
}

async fn connect_stream(agent: &Arc<Agent>, headers: &HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = read_body(body, MAX_REQUEST).await?;
        let request: SelectRequest = connect::decode_single_frame(headers, &bytes)?;
        Ok::<_, ConnectError>(agent.processes.find(&request.process)?.subscribe())
    }
    .await;
    match result {
        Ok(rx) => connect::stream(rx, StreamOptions::from_headers(headers, &keepalive())),
        Err(e) => error_for(headers, e),
    }
}

async fn list(agent: &Agent, headers: &HeaderMap, body: Body) -> Result<Response, ConnectError> {
    let _: Empty = unary_request(headers, body).await?;
    let processes = agent
        .processes
        .running()
        .iter()
        .map(|e| ProcessInfo { config: e.config.clone(), pid: e.pid, tag: e.tag.clone() })
        .collect();
    Ok(unary(&ListResponse { processes }))
}

async fn send_input(agent: &Agent, headers: &HeaderMap, body: Body) -> Result<Response, ConnectError> {
    let request: SendInputRequest = unary_request(headers, body).await?;
    let entry = agent.processes.find_running(&request.process)?;
    write_input(&entry, &request.input).await?;
    Ok(unary(&Empty {}))
}

async fn write_input(
    entry: &table::Entry,
    input: &ember_envd_proto::process::ProcessInput,
) -> Result<(), ConnectError> {
    let mut target = entry.input.lock().await;
    if let Some(data) = &input.stdin {
        target.write(data, false).await?;
    }
    if let Some(data) = &input.pty {
        target.write(data, true).await?;
    }
    Ok(())
}

async fn stream_input(agent: &Agent, headers: &HeaderMap, body: Body) -> Result<Response, ConnectError> {
    let mut stream = ClientStream::new(headers, body)?;
    let mut entry = None;
    while let Some(msg) = stream.next::<StreamInputRequest>().await? {
        match msg {
            StreamInputRequest::Start(start) => entry = Some(agent.processes.find_running(&start.process)?),
            StreamInputRequest::Data(data) => {
                let target = entry.as_ref().ok_or_else(|| connect::invalid("data before start in StreamInput"))?;
                write_input(target, &data.input).await?;
            }
            StreamInputRequest::Keepalive(_) => {}
        }
    }
    let mut frames = ember_envd_proto::envelope::encode_message(&Empty {}).to_vec();
    frames.extend_from_slice(&ember_envd_proto::envelope::encode_end(None));
    Ok(connect::stream_body(Body::from(frames)))
}

async fn close_stdin(agent: &Agent, headers: &HeaderMap, body: Body) -> Result<Response, ConnectError> {
    let request: SelectRequest = unary_request(headers, body).await?;
    let entry = agent.processes.find_running(&request.process)?;
    let mut input = entry.input.lock().await;
    match &mut *input {
        spawn::Input::Stdin(stdin) => {
            stdin.take();
        }
        spawn::Input::Pty(_) => {
            return Err(ConnectError::new(Code::FailedPrecondition, "process has a PTY, not stdin"))
        }
        spawn::Input::None => {
            return Err(ConnectError::new(Code::FailedPrecondition, "process was started without stdin"))
        }
    }
    Ok(unary(&Empty {}))
}

async fn send_signal(agent: &Agent, headers: &HeaderMap, body: Body) -> Result<Response, ConnectError> {
    let request: SendSignalRequest = unary_request(headers, body).await?;
    let entry = agent.processes.find_running(&request.process)?;
    let signal = match request.signal {
        Signal::Sigkill => libc::SIGKILL,
        Signal::Sigterm => libc::SIGTERM,
        Signal::Unspecified => return Err(connect::invalid("signal is unspecified")),
    };
    if !spawn::signal_group(entry.pid, signal) {
        return Err(ConnectError::new(Code::NotFound, format!("process {} is gone", entry.pid)));
    }
    // A kill answers once the process is reaped, so that a `List` right after no longer shows it.
    if signal == libc::SIGKILL {
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        while !entry.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    Ok(unary(&Empty {}))
}

/// Longest a `SendSignal(SIGKILL)` waits for the process to be reaped before answering.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn update(agent: &Agent, headers: &HeaderMap, body: Body) -> Result<Response, ConnectError> {
    let request: UpdateRequest = unary_request(headers, body).await?;
    let entry = agent.processes.find_running(&request.process)?;
    if let Some(pty) = request.pty {
        match &*entry.input.lock().await {
            spawn::Input::Pty(master) => master.resize(pty.size)?,
            _ => return Err(ConnectError::new(Code::FailedPrecondition, "process has no PTY")),
        }
    }
    Ok(unary(&Empty {}))
}
