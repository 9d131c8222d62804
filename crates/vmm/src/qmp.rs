//! A small QMP client: line-delimited JSON over the VM's Unix socket; asynchronous events are
//! skipped while waiting for a command's reply.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

fn command_line(command: &str, arguments: Option<Value>) -> Result<Vec<u8>, QmpError> {
    let mut msg = json!({ "execute": command });
    if let Some(args) = arguments {
        msg["arguments"] = args;
    }
    let mut line = serde_json::to_vec(&msg).map_err(|e| QmpError::Malformed(e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Longest QMP line accepted from QEMU (1 MiB).
pub const MAX_LINE: usize = 1 << 20;

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU closed the QMP connection")]
    Closed,
    #[error("malformed QMP message: {0}")]
    Malformed(String),
    #[error("command {command} failed: {desc}")]
    Command { command: String, desc: String },
    #[error("no QMP reply within {0:?}")]
    Timeout(Duration),
}

/// A connected QMP session in command mode.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, waiting up to `timeout` for QEMU to create the socket, and negotiates.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(QmpError::Connect { path: path.display().to_string(), source: e })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Self { reader: BufReader::new(r), writer: w };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Malformed(format!("expected greeting, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let line = command_line(command, arguments)?;
        self.writer.write_all(&line).await?;
        self.reply(command).await
    }

    /// Hands QEMU an open file descriptor under `name` (`getfd`, the descriptor riding on the
    /// command as SCM_RIGHTS), for commands such as `migrate` with `fd:NAME`.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let line = command_line("getfd", Some(json!({ "fdname": name })))?;
        let stream = self.writer.as_ref();
        let fds = [fd.as_raw_fd()];
        let sent = loop {
            stream.writable().await?;
            let attempt = stream.try_io(tokio::io::Interest::WRITABLE, || {
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&line)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match attempt {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // The descriptor went with the first byte; the rest of the line, if any, follows plainly.
        self.writer.write_all(&line[sent..]).await?;
        self.reply("getfd").await.map(|_| ())
    }

    async fn reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                tracing::debug!(%reply, "QMP event");
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("unknown error").to_string();
                return Err(QmpError::Command { command: command.into(), desc });
            }
            return Err(QmpError::Malformed(reply.to_string()));
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        read_message(&mut self.reader).await
    }
}

/// Reads one QMP message: a line of JSON of at most [`MAX_LINE`] bytes.
pub async fn read_message<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Value, QmpError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(QmpError::Closed);
        }
        let (used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                (i + 1, true)
            }
            None => {
                line.extend_from_slice(buf);
                (buf.len(), false)
            }
        };
        reader.consume(used);
        if line.len() > MAX_LINE {
            return Err(QmpError::Malformed(format!("line longer than {MAX_LINE} bytes")));
        }
        if done {
            return serde_json::from_slice(&line).map_err(|e| QmpError::Malformed(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn negotiates_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n").await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"{\"return\": {}}\n").await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"{\"event\": \"RESUME\"}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n")
                .await
                .unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n").await.unwrap();
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(2)).await.unwrap();
        assert_eq!(qmp.execute("query-status", None).await.unwrap()["status"], "running");
        let err = qmp.execute("stop", None).await.unwrap_err();
        assert!(matches!(err, QmpError::Command { ref desc, .. } if desc == "nope"));
        server.await.unwrap();
    }
}
