//! The code-interpreter protocol (port 49999, plain HTTP + NDJSON), as the official SDKs
//! `e2b-code-interpreter` 2.11.5 (Python) and `@e2b/code-interpreter` 2.8.0 (JS) speak it:
//! `POST /execute` and its stream of events, and the `/contexts` bodies.
//!
//! SDK facts that shape these types (where they differ from `e2b-protocol.md`, the SDK wins):
//! - Python always sends every key of the execute body, `null` when unset; JS omits them.
//! - Only `/execute` carries `X-Access-Token`; the `/contexts` calls of both SDKs send none.
//! - Python reads `stdout`/`stderr` `timestamp` as given (typed as an int, used as is); JS
//!   ignores it and stamps its own time. E2B's server sends the Jupyter header date (a string).
//! - Results: Python builds `Result(**data)`, so it reads unknown MIME types from a nested
//!   `extra` and ignores unknown keys; JS builds its `extra` from the result's unknown top-level
//!   keys and skips a nested `extra`. Unknown MIME types are therefore sent both ways (E2B's
//!   server sends the nested form only, which leaves JS's `extra` empty).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Port the code-interpreter server listens on in the guest.
pub const INTERPRETER_PORT: u16 = 49999;

/// Body of `POST /execute`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecuteRequest {
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Set for this execution only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// Body of `POST /contexts` (both keys optional; an empty body reads as `{}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateContextRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// A context as `POST /contexts` answers it and `GET /contexts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

/// One line of the `/execute` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Sent when the kernel echoes the cell (`execute_input`).
    NumberOfExecutions {
        execution_count: u64,
    },
    Stdout(OutputChunk),
    Stderr(OutputChunk),
    Result(Box<ResultEvent>),
    Error(ExecutionError),
    /// After 5 s without another event; the SDKs skip it.
    Keepalive,
    /// The last line; the SDKs read to EOF and skip it.
    EndOfExecution,
}

/// A chunk of a stream, with the Jupyter message's header date (ISO 8601).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub text: String,
    pub timestamp: String,
}

/// The error of a cell: the first `error` message or an error `execute_reply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub name: String,
    pub value: String,
    /// The traceback's lines joined with newlines.
    pub traceback: String,
}

/// A cell's value (`execute_result`, main) or a display (`display_data`). Absent formats are
/// omitted from the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    /// Base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    /// From MIME type `e2b/data` (a pandas DataFrame).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// From MIME type `e2b/chart` (a matplotlib figure, as `e2b-charts` describes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<Value>,
    /// Every other MIME type, by its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<BTreeMap<String, Value>>,
    pub is_main_result: bool,
    /// The same MIME types as `extra`, as top-level keys (for the JS SDK).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_top_level: BTreeMap<String, Value>,
}

impl ResultEvent {
    /// Maps a Jupyter MIME bundle (`data` of `execute_result`/`display_data`) to a result, as
    /// E2B's server does: known types to their fields, a quoted `text/plain` unquoted, the rest
    /// in `extra`. A known type whose value has the wrong JSON type is kept in `extra`.
    pub fn from_mime_bundle(bundle: serde_json::Map<String, Value>, is_main_result: bool) -> Self {
        let mut r = ResultEvent { is_main_result, ..Default::default() };
        let mut extra = BTreeMap::new();
        for (mime, value) in bundle {
            let slot: Option<&mut Option<String>> = match mime.as_str() {
                "text/plain" => Some(&mut r.text),
                "text/html" => Some(&mut r.html),
                "text/markdown" => Some(&mut r.markdown),
                "image/svg+xml" => Some(&mut r.svg),
                "image/png" => Some(&mut r.png),
                "image/jpeg" => Some(&mut r.jpeg),
                "application/pdf" => Some(&mut r.pdf),
                "text/latex" => Some(&mut r.latex),
                "application/javascript" => Some(&mut r.javascript),
                _ => None,
            };
            match (slot, value) {
                (Some(slot), Value::String(s)) => *slot = Some(s),
                (Some(_), other) => {
                    extra.insert(mime, other);
                }
                (None, value) => match mime.as_str() {
                    "application/json" => r.json = Some(value),
                    "e2b/data" => r.data = Some(value),
                    "e2b/chart" => r.chart = Some(value),
                    _ => {
                        extra.insert(mime, value);
                    }
                },
            }
        }
        r.text = r.text.map(unquote);
        r.extra_top_level = extra.clone();
        r.extra = (!extra.is_empty()).then_some(extra);
        r
    }
}

/// `'abc'` or `"abc"` → `abc` (E2B strips the quotes of a string's repr).
fn unquote(text: String) -> String {
    let quoted = text.len() >= 2
        && ((text.starts_with('\'') && text.ends_with('\'')) || (text.starts_with('"') && text.ends_with('"')));
    if quoted {
        text[1..text.len() - 1].to_owned()
    } else {
        text
    }
}

/// Body of the 401 and 502 answers (envd's error shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_sends_nulls_js_omits_keys() {
        let py: ExecuteRequest =
            serde_json::from_str(r#"{"code":"1","context_id":null,"language":null,"env_vars":null}"#).unwrap();
        let js: ExecuteRequest = serde_json::from_str(r#"{"code":"1"}"#).unwrap();
        assert_eq!(py, js);
        assert_eq!(py.code, "1");
    }

    #[test]
    fn events_are_tagged_by_type() {
        let lines = [
            (
                Event::NumberOfExecutions { execution_count: 3 },
                json!({"type":"number_of_executions","execution_count":3}),
            ),
            (
                Event::Stdout(OutputChunk { text: "a\n".into(), timestamp: "t".into() }),
                json!({"type":"stdout","text":"a\n","timestamp":"t"}),
            ),
            (
                Event::Error(ExecutionError { name: "E".into(), value: "v".into(), traceback: "tb".into() }),
                json!({"type":"error","name":"E","value":"v","traceback":"tb"}),
            ),
            (Event::Keepalive, json!({"type":"keepalive"})),
            (Event::EndOfExecution, json!({"type":"end_of_execution"})),
        ];
        for (event, want) in lines {
            assert_eq!(serde_json::to_value(&event).unwrap(), want);
        }
    }

    #[test]
    fn result_fields_from_mime_types_nulls_omitted() {
        let bundle = json!({
            "text/plain": "'abc'",
            "text/html": "<b>x</b>",
            "image/png": "iVBOR",
            "application/json": {"a": 1},
            "e2b/data": {"col": [1, 2]},
            "e2b/chart": {"type": "line"},
            "application/vnd.custom": "zz",
            "text/markdown": 5,
        });
        let Value::Object(map) = bundle else { unreachable!() };
        let r = ResultEvent::from_mime_bundle(map, true);
        let v = serde_json::to_value(Event::Result(Box::new(r))).unwrap();
        assert_eq!(
            v,
            json!({
                "type": "result",
                "text": "abc",
                "html": "<b>x</b>",
                "png": "iVBOR",
                "json": {"a": 1},
                "data": {"col": [1, 2]},
                "chart": {"type": "line"},
                "extra": {"application/vnd.custom": "zz", "text/markdown": 5},
                "application/vnd.custom": "zz",
                "text/markdown": 5,
                "is_main_result": true,
            })
        );
    }

    #[test]
    fn unquote_only_matching_quotes() {
        assert_eq!(unquote("'a'".into()), "a");
        assert_eq!(unquote("\"a\"".into()), "a");
        assert_eq!(unquote("''".into()), "");
        assert_eq!(unquote("'".into()), "'");
        assert_eq!(unquote("'a\"".into()), "'a\"");
        assert_eq!(unquote("42".into()), "42");
    }

    #[test]
    fn display_data_without_text() {
        let Value::Object(map) = json!({"image/svg+xml": "<svg/>"}) else { unreachable!() };
        let v = serde_json::to_value(Event::Result(Box::new(ResultEvent::from_mime_bundle(map, false)))).unwrap();
        assert_eq!(v, json!({"type":"result","svg":"<svg/>","is_main_result":false}));
    }
}
