//! `ember sandbox exec` (a command, its output streamed, its exit code kept) and
//! `ember sandbox shell` (an interactive PTY: the local terminal in raw mode, keys, Ctrl-C
//! included, sent as the PTY's input, window size changes as PTY resizes).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use ember_envd_proto::process::{
    DataEvent, EndEvent, ProcessConfig, ProcessEvent, ProcessInput, ProcessSelector, Pty, PtySize, SendInputRequest,
    StartRequest, UpdateRequest,
};
use hyper::Method;
use serde_json::Value;

use crate::api_client::{path_segment, Client, ServerArgs};
use crate::envd_client::{Envd, ProcessStream};

#[derive(Args)]
pub struct ExecArgs {
    id: String,
    /// The user to run as (default: the sandbox's, `user`).
    #[arg(long)]
    user: Option<String>,
    /// The working directory.
    #[arg(long)]
    cwd: Option<String>,
    /// An environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The command and its arguments (run as they are, not by a shell).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Args)]
pub struct ShellArgs {
    id: String,
    /// The user to log in as (default: the sandbox's, `user`).
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// The sandbox's envd, with the access token its detail carries; a paused sandbox is named.
async fn envd_of(client: &Client, id: &str) -> anyhow::Result<Envd> {
    let sandbox: Value = client.json(Method::GET, &format!("/sandboxes/{}", path_segment(id)), None::<&()>).await?;
    if sandbox["state"] == "paused" {
        bail!("sandbox {id} is paused: resume it first (ember sandbox resume {id})");
    }
    let token = sandbox["envdAccessToken"].as_str().map(str::to_string);
    Ok(Envd::new(client, id, token))
}

/// An exit code for ember from the process's end.
fn exit_code(end: &EndEvent) -> ExitCode {
    match u8::try_from(end.exit_code) {
        Ok(code) if end.exited || code != 0 => ExitCode::from(code),
        _ => ExitCode::from(if end.exit_code < 0 { 128 + 9 } else { 1 }),
    }
}

fn envs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').with_context(|| format!("--env {p}: expected KEY=VALUE"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

pub async fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let envd = envd_of(&client, &args.id).await?;
    let (cmd, rest) = args.command.split_first().context("no command")?;
    let request = StartRequest {
        process: ProcessConfig { cmd: cmd.clone(), args: rest.to_vec(), envs: envs(&args.env)?, cwd: args.cwd },
        stdin: Some(false),
        ..Default::default()
    };
    let mut stream = envd.start(&request, args.user.as_deref()).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(event) = stream.next().await? {
        match event {
            ProcessEvent::Data(DataEvent::Stdout(b) | DataEvent::Pty(b)) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            ProcessEvent::Data(DataEvent::Stderr(b)) => {
                err.write_all(&b)?;
                err.flush()?;
            }
            ProcessEvent::End(end) => {
                if let Some(e) = end.error.as_deref().filter(|e| !e.is_empty()) {
                    eprintln!("ember: {e}");
                }
                return Ok(exit_code(&end));
            }
            ProcessEvent::Start(_) | ProcessEvent::Keepalive(_) => {}
        }
    }
    bail!("the command's stream ended without its exit code")
}

/// The local terminal's size, if standard input is one.
fn terminal_size() -> Option<PtySize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdin().as_fd()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then(|| PtySize { cols: size.ws_col.into(), rows: size.ws_row.into() })
}

/// Puts the terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(std::io::stdin()).context("read the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).context("put the terminal in raw mode")?;
        Ok(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.0);
    }
}

pub async fn shell(args: ShellArgs) -> anyhow::Result<ExitCode> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("ember sandbox shell needs a terminal (use `ember sandbox exec` for commands without one)");
    }
    let client = args.server.client()?;
    let envd = envd_of(&client, &args.id).await?;
    let size = terminal_size().unwrap_or(PtySize { cols: 80, rows: 24 });
    let term = std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into());
    let request = StartRequest {
        process: ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-i".into(), "-l".into()],
            envs: [("TERM".to_string(), term)].into(),
            cwd: None,
        },
        pty: Some(Pty { size }),
        ..Default::default()
    };
    let mut stream = envd.start(&request, args.user.as_deref()).await?;
    let pid = match stream.next().await? {
        Some(ProcessEvent::Start(start)) => start.pid,
        other => bail!("the shell did not start: {other:?}"),
    };
    let _raw = RawMode::enter()?;
    let code = drive(&envd, &mut stream, pid).await;
    drop(_raw);
    code
}

/// Copies the PTY's output to the terminal, the terminal's input and size changes to the PTY,
/// until the shell ends.
async fn drive(envd: &Envd, stream: &mut ProcessStream, pid: u32) -> anyhow::Result<ExitCode> {
    let selector = ProcessSelector { pid: Some(pid), tag: None };
    // A thread of its own reads the terminal (a blocking read nothing can cancel); it goes
    // with the process.
    let (keys, mut typed) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdin, &mut buf) {
            if n == 0 || keys.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut out = std::io::stdout();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            event = stream.next() => match event? {
                Some(ProcessEvent::Data(DataEvent::Pty(b) | DataEvent::Stdout(b) | DataEvent::Stderr(b))) => {
                    out.write_all(&b)?;
                    out.flush()?;
                }
                Some(ProcessEvent::End(end)) => return Ok(exit_code(&end)),
                Some(_) => {}
                None => bail!("the shell's stream ended without its exit code"),
            },
            bytes = typed.recv(), if stdin_open => {
                let Some(bytes) = bytes else {
                    stdin_open = false;
                    continue;
                };
                let input = ProcessInput { pty: Some(bytes), stdin: None };
                envd.call("SendInput", &SendInputRequest { process: selector.clone(), input }).await?;
            }
            _ = winch.recv() => {
                if let Some(size) = terminal_size() {
                    let update = UpdateRequest { process: selector.clone(), pty: Some(Pty { size }) };
                    envd.call("Update", &update).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_process() {
        let end = |code, exited| EndEvent { exit_code: code, exited, ..Default::default() };
        assert_eq!(exit_code(&end(0, true)), ExitCode::SUCCESS);
        assert_eq!(exit_code(&end(3, true)), ExitCode::from(3));
        assert_eq!(exit_code(&end(-1, false)), ExitCode::from(137));
        assert_eq!(exit_code(&end(0, false)), ExitCode::from(1));
    }

    #[test]
    fn env_pairs_need_an_equals_sign() {
        assert_eq!(envs(&["A=1".into(), "B=x=y".into()]).unwrap()["B"], "x=y");
        assert!(envs(&["A".into()]).is_err());
    }
}
