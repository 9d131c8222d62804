//! Messages of envd's `process.Process` service in proto-JSON form (lowerCamel field names,
//! `bytes` as base64, oneofs as single-key objects).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path prefix of the process service's RPCs.
pub const SERVICE: &str = "/process.Process/";
/// Path of the `Start` RPC.
pub const START_PATH: &str = "/process.Process/Start";

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessConfig {
    pub cmd: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub envs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Terminal size of a PTY.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    #[serde(default)]
    pub cols: u32,
    #[serde(default)]
    pub rows: u32,
}

/// PTY request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pty {
    #[serde(default)]
    pub size: PtySize,
}

/// `Start` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    pub process: ProcessConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// Each message of a `Start` or `Connect` response stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartResponse {
    pub event: ProcessEvent,
}

/// One process event (a proto oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProcessEvent {
    Start(StartEvent),
    Data(DataEvent),
    End(EndEvent),
    Keepalive(KeepAlive),
}

/// First event of every stream: the pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEvent {
    pub pid: u32,
}

/// A chunk of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataEvent {
    Stdout(#[serde(with = "crate::b64")] Vec<u8>),
    Stderr(#[serde(with = "crate::b64")] Vec<u8>),
    Pty(#[serde(with = "crate::b64")] Vec<u8>),
}

/// Last event of a stream: how the process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    #[serde(default, alias = "exit_code")]
    pub exit_code: i32,
    #[serde(default)]
    pub exited: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sent after a stretch of silence so that proxies keep the stream open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAlive {}

/// Picks a process by pid or by tag (a proto oneof).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// A running process, as `List` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    pub processes: Vec<ProcessInfo>,
}

/// `Connect`, `CloseStdin` and other requests that only name a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectRequest {
    #[serde(default)]
    pub process: ProcessSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    #[serde(default)]
    pub process: ProcessSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<Pty>,
}

/// Input for a process (a proto oneof): to its stdin or to its PTY.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInput {
    #[serde(default, with = "crate::b64::option", skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Vec<u8>>,
    #[serde(default, with = "crate::b64::option", skip_serializing_if = "Option::is_none")]
    pub pty: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendInputRequest {
    #[serde(default)]
    pub process: ProcessSelector,
    #[serde(default)]
    pub input: ProcessInput,
}

/// One message of the `StreamInput` client stream (a proto oneof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamInputRequest {
    Start(SelectRequest),
    Data(StreamInputData),
    Keepalive(KeepAlive),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInputData {
    #[serde(default)]
    pub input: ProcessInput,
}

/// Signals a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Unspecified,
    Sigterm,
    Sigkill,
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => match s.as_str() {
                "SIGNAL_UNSPECIFIED" => Ok(Signal::Unspecified),
                "SIGNAL_SIGTERM" => Ok(Signal::Sigterm),
                "SIGNAL_SIGKILL" => Ok(Signal::Sigkill),
                other => Err(serde::de::Error::custom(format!("unknown signal {other}"))),
            },
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(0) => Ok(Signal::Unspecified),
                Some(15) => Ok(Signal::Sigterm),
                Some(9) => Ok(Signal::Sigkill),
                _ => Err(serde::de::Error::custom(format!("unknown signal {n}"))),
            },
            other => Err(serde::de::Error::custom(format!("invalid signal {other}"))),
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Signal::Unspecified => "SIGNAL_UNSPECIFIED",
            Signal::Sigterm => "SIGNAL_SIGTERM",
            Signal::Sigkill => "SIGNAL_SIGKILL",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSignalRequest {
    #[serde(default)]
    pub process: ProcessSelector,
    pub signal: Signal,
}

/// The empty response of unary calls that return nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_use_proto_json_shapes() {
        let start = StartResponse { event: ProcessEvent::Start(StartEvent { pid: 7 }) };
        assert_eq!(serde_json::to_string(&start).unwrap(), r#"{"event":{"start":{"pid":7}}}"#);
        let data = StartResponse { event: ProcessEvent::Data(DataEvent::Stdout(b"hi\n".to_vec())) };
        assert_eq!(serde_json::to_string(&data).unwrap(), r#"{"event":{"data":{"stdout":"aGkK"}}}"#);
        let end: StartResponse =
            serde_json::from_str(r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#).unwrap();
        assert_eq!(
            end.event,
            ProcessEvent::End(EndEvent { exit_code: 0, exited: true, status: "exit status 0".into(), error: None })
        );
    }

    #[test]
    fn start_request_accepts_sdk_shape() {
        let req: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"/tmp"},"stdin":false}"#,
        )
        .unwrap();
        assert_eq!(req.process.args, ["-l", "-c", "echo hi"]);
        assert_eq!(req.stdin, Some(false));
        assert!(serde_json::from_str::<StartRequest>(r#"{"process":{"cmd":"x","args":"notalist"}}"#).is_err());
    }

    #[test]
    fn oneofs_and_enums_accept_names_and_numbers() {
        let sig: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":5},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!((sig.process.pid, sig.signal), (Some(5), Signal::Sigkill));
        let sig: SendSignalRequest = serde_json::from_str(r#"{"process":{"tag":"t"},"signal":15}"#).unwrap();
        assert_eq!((sig.process.tag.as_deref(), sig.signal), (Some("t"), Signal::Sigterm));
        assert!(serde_json::from_str::<SendSignalRequest>(r#"{"signal":"SIGNAL_NOPE"}"#).is_err());
        let input: StreamInputRequest = serde_json::from_str(r#"{"data":{"input":{"stdin":"aGk="}}}"#).unwrap();
        let expected = ProcessInput { stdin: Some(b"hi".to_vec()), pty: None };
        assert_eq!(input, StreamInputRequest::Data(StreamInputData { input: expected }));
        let start: StreamInputRequest = serde_json::from_str(r#"{"start":{"process":{"pid":3}}}"#).unwrap();
        assert!(matches!(start, StreamInputRequest::Start(s) if s.process.pid == Some(3)));
    }
}
