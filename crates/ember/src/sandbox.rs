//! `ember sandbox`: a running daemon's sandboxes from the command line (list, info, kill, pause,
//! resume, logs; `exec` and `shell` in [`crate::shell`]), tables for people and `--json` for
//! scripts.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use hyper::Method;
use serde_json::Value;

use crate::api_client::{path_segment, Client, ServerArgs};

/// The most sandboxes `list` reads (pages of 100).
const MAX_LISTED: usize = 10_000;

#[derive(Subcommand)]
pub enum SandboxCmd {
    /// The team's sandboxes, running and paused.
    #[command(alias = "ls")]
    List {
        /// Only sandboxes in this state.
        #[arg(long, value_parser = ["running", "paused"])]
        state: Option<String>,
        /// Only sandboxes with this metadata (repeatable).
        #[arg(long = "metadata", value_name = "KEY=VALUE")]
        metadata: Vec<String>,
        /// JSON (the API's objects) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One sandbox: template, state, times, size, metadata.
    Info {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// End sandboxes.
    Kill {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pause a sandbox, keeping its memory and files.
    Pause {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resume a paused sandbox (or extend a running one's time-out).
    Resume {
        id: String,
        /// Seconds the sandbox may run from now.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// A sandbox's log: process starts and exits, pauses, resumes.
    Logs {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run a command in a sandbox; its output streams here and its exit code is ember's.
    Exec(crate::shell::ExecArgs),
    /// An interactive shell in a sandbox (a PTY: resizes and Ctrl-C go through).
    Shell(crate::shell::ShellArgs),
}

pub async fn run(cmd: SandboxCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCmd::List { state, metadata, json, server } => list(&server.client()?, state, &metadata, json).await,
        SandboxCmd::Info { id, json, server } => info(&server.client()?, &id, json).await,
        SandboxCmd::Kill { ids, server } => kill(&server.client()?, &ids).await,
        SandboxCmd::Pause { id, server } => {
            server
                .client()?
                .call(Method::POST, &format!("/sandboxes/{}/pause", path_segment(&id)), None::<&()>)
                .await?;
            println!("Sandbox {id} paused");
            Ok(ExitCode::SUCCESS)
        }
        SandboxCmd::Resume { id, timeout, server } => {
            let body = serde_json::json!({ "timeout": timeout });
            let path = format!("/sandboxes/{}/connect", path_segment(&id));
            let sandbox: Value = server.client()?.json(Method::POST, &path, Some(&body)).await?;
            println!("Sandbox {id} running until {}", text(&sandbox["endAt"]));
            Ok(ExitCode::SUCCESS)
        }
        SandboxCmd::Logs { id, json, server } => logs(&server.client()?, &id, json).await,
        SandboxCmd::Exec(args) => crate::shell::exec(args).await,
        SandboxCmd::Shell(args) => crate::shell::shell(args).await,
    }
}

/// A JSON value as table text: strings bare, nothing as `-`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time to the second, as people read it.
fn when(v: &Value) -> String {
    text(v).split('.').next().unwrap_or_default().trim_end_matches('Z').replace('T', " ")
}

/// Percent-encodes a query value.
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `metadata` filter the API takes: `k=v&k2=v2`, itself form-encoded.
fn metadata_filter(pairs: &[String]) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').with_context(|| format!("--metadata {pair}: expected KEY=VALUE"))?;
        parts.push(format!("{}={}", query_value(k), query_value(v)));
    }
    Ok(parts.join("&"))
}

async fn list(client: &Client, state: Option<String>, metadata: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let mut query = vec!["limit=100".to_string()];
    if let Some(state) = state {
        query.push(format!("state={state}"));
    }
    if !metadata.is_empty() {
        query.push(format!("metadata={}", query_value(&metadata_filter(metadata)?)));
    }
    let mut all: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut q = query.clone();
        if let Some(token) = &next {
            q.push(format!("nextToken={}", query_value(token)));
        }
        let response = client.call(Method::GET, &format!("/v2/sandboxes?{}", q.join("&")), None::<&()>).await?;
        let page: Vec<Value> = serde_json::from_slice(&response.body).context("the sandbox list")?;
        let done = page.is_empty();
        all.extend(page);
        next = response.headers.get("x-next-token").and_then(|v| v.to_str().ok()).map(str::to_string);
        if next.is_none() || done || all.len() >= MAX_LISTED {
            break;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("No sandboxes");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            vec![
                text(&s["sandboxID"]),
                text(&s["alias"]).replace('-', &text(&s["templateID"])),
                text(&s["state"]),
                when(&s["startedAt"]),
                when(&s["endAt"]),
                format!("{}/{} MiB", text(&s["cpuCount"]), text(&s["memoryMB"])),
                metadata_text(&s["metadata"]),
            ]
        })
        .collect();
    crate::table::print(&["ID", "TEMPLATE", "STATE", "STARTED", "ENDS", "CPUS/MEMORY", "METADATA"], &rows);
    Ok(ExitCode::SUCCESS)
}

fn metadata_text(v: &Value) -> String {
    let Some(map) = v.as_object() else { return String::new() };
    map.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(",")
}

async fn info(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let mut s: Value = client.json(Method::GET, &format!("/sandboxes/{}", path_segment(id)), None::<&()>).await?;
    if let Some(obj) = s.as_object_mut() {
        // The access token is the sandbox's key: not for a terminal or a script's log.
        obj.remove("envdAccessToken");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let fields = [
        ("sandbox", text(&s["sandboxID"])),
        ("template", format!("{} ({})", text(&s["alias"]), text(&s["templateID"]))),
        ("state", text(&s["state"])),
        ("started", when(&s["startedAt"])),
        ("ends", when(&s["endAt"])),
        ("vCPUs", text(&s["cpuCount"])),
        ("memory", format!("{} MiB", text(&s["memoryMB"]))),
        ("free disk", format!("{} MiB", text(&s["diskSizeMB"]))),
        ("metadata", metadata_text(&s["metadata"])),
    ];
    for (name, value) in fields {
        println!("{name:<10} {value}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn kill(client: &Client, ids: &[String]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for id in ids {
        match client.call(Method::DELETE, &format!("/sandboxes/{}", path_segment(id)), None::<&()>).await {
            Ok(_) => println!("Sandbox {id} killed"),
            Err(e) => {
                eprintln!("ember: error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn logs(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let body: Value =
        client.json(Method::GET, &format!("/v2/sandboxes/{}/logs", path_segment(id)), None::<&()>).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let entries = body["logs"].as_array().or(body.as_array()).cloned().unwrap_or_default();
    for e in entries {
        let fields = metadata_text(&e["fields"]).replace(',', " ");
        println!("{}  {:<5}  {} {fields}", when(&e["timestamp"]), text(&e["level"]), text(&e["message"]));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_are_encoded_twice() {
        let filter = metadata_filter(&["user=a b".into(), "k&=v".into()]).unwrap();
        assert_eq!(filter, "user=a%20b&k%26=v");
        assert_eq!(query_value(&filter), "user%3Da%2520b%26k%2526%3Dv");
        assert!(metadata_filter(&["novalue".into()]).is_err());
    }

    #[test]
    fn times_and_values_read_as_text() {
        assert_eq!(when(&Value::from("2026-11-23T09:41:02.123Z")), "2026-11-23 09:41:02");
        assert_eq!(text(&Value::Null), "-");
        assert_eq!(text(&Value::from(2)), "2");
        assert_eq!(metadata_text(&serde_json::json!({"a": "1", "b": "2"})), "a=1,b=2");
    }
}
