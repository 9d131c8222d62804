//! What a build does inside its sandbox, through the agent: run a command with its output in the
//! build log, start one in the background, and place uploaded files (COPY).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ember_envd_proto::process::{DataEvent, ProcessConfig, ProcessEvent, StartRequest};
use ember_runtime::{AgentClient, AgentError};

use crate::log::{BuildLog, Lines};
use crate::spec::Defaults;

/// Why a command in the build sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("exited with code {0}")]
    Exit(i32),
    #[error("did not finish within {0:?}")]
    Timeout(Duration),
    #[error("the sandbox's agent: {0}")]
    Agent(#[from] AgentError),
    #[error("the uploaded files: {0}")]
    Archive(String),
}

/// How a command's output is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Every line in the build log.
    Logged,
    /// Only the last lines, in the log when the command fails.
    Quiet,
}

/// A command for bash: `cmd` as `user` in `cwd` with `env`.
pub struct Command<'a> {
    pub cmd: &'a str,
    pub user: &'a str,
    pub cwd: Option<&'a str>,
    pub env: &'a BTreeMap<String, String>,
}

impl<'a> Command<'a> {
    /// `cmd` as the build's current user, in its workdir, with its env vars.
    pub fn with(defaults: &'a Defaults, cmd: &'a str, user: Option<&'a str>) -> Self {
        Command { cmd, user: user.unwrap_or(&defaults.user), cwd: defaults.workdir.as_deref(), env: &defaults.env }
    }

    fn request(&self) -> StartRequest {
        StartRequest {
            process: ProcessConfig {
                cmd: "/bin/bash".into(),
                args: vec!["-c".into(), self.cmd.into()],
                envs: self.env.clone(),
                cwd: self.cwd.map(str::to_string),
            },
            pty: None,
            tag: None,
            stdin: Some(false),
        }
    }
}

/// Runs `command` to its end within `timeout`; its output goes to `log` under `step`.
pub async fn run(
    agent: &AgentClient,
    log: &BuildLog,
    step: &str,
    command: &Command<'_>,
    output: Output,
    timeout: Duration,
) -> Result<(), GuestError> {
    let mut tail = std::collections::VecDeque::new();
    let result = tokio::time::timeout(timeout, async {
        let mut stream = agent.start(&command.request(), Some(command.user)).await?;
        let mut lines = Lines::default();
        let mut keep = |line: String| match output {
            Output::Logged => log.info(Some(step), &line),
            Output::Quiet => {
                if tail.len() == 20 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        };
        while let Some(event) = stream.next().await? {
            match event {
                ProcessEvent::Data(DataEvent::Stdout(b) | DataEvent::Stderr(b) | DataEvent::Pty(b)) => {
                    lines.feed(&b).into_iter().for_each(&mut keep);
                }
                ProcessEvent::End(end) => {
                    lines.finish().into_iter().for_each(&mut keep);
                    return match end.exit_code {
                        0 => Ok(()),
                        code => Err(GuestError::Exit(code)),
                    };
                }
                ProcessEvent::Start(_) | ProcessEvent::Keepalive(_) => {}
            }
        }
        Err(GuestError::Agent(AgentError::Truncated))
    })
    .await
    .unwrap_or(Err(GuestError::Timeout(timeout)));
    if result.is_err() {
        for line in tail {
            log.info(Some(step), &line);
        }
    }
    result
}

/// Starts `command` and leaves it running; its output goes to `log` until it ends or the
/// returned task is aborted.
pub async fn spawn(
    agent: &AgentClient,
    log: Arc<BuildLog>,
    step: &'static str,
    command: &Command<'_>,
) -> Result<tokio::task::JoinHandle<()>, GuestError> {
    let mut stream = agent.start(&command.request(), Some(command.user)).await?;
    Ok(tokio::spawn(async move {
        let mut lines = Lines::default();
        loop {
            match stream.next().await {
                Ok(Some(ProcessEvent::Data(DataEvent::Stdout(b) | DataEvent::Stderr(b) | DataEvent::Pty(b)))) => {
                    lines.feed(&b).iter().for_each(|l| log.info(Some(step), l));
                }
                Ok(Some(ProcessEvent::End(end))) => {
                    log.info(Some(step), &format!("the start command exited with code {}", end.exit_code));
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }))
}

/// Places `src` (a path or glob in the uploaded archive) at `dest` (relative to the workdir),
/// as Docker's COPY does: a directory's contents into `dest`, files into `dest` if it is a
/// directory or ends in `/`, else as `dest`. Owned by `owner` (the current user if none), with
/// `mode` if given. Runs as root; the archive is removed afterwards.
const PLACE: &str = r#"set -euo pipefail
tmp=$(mktemp -d /tmp/ember-copy.XXXXXX)
trap 'rm -rf "$tmp" "$ARCHIVE"' EXIT
tar -xf "$ARCHIVE" -C "$tmp" --no-same-owner
cd "$tmp"
shopt -s nullglob dotglob
IFS=
srcs=( $SRC )
if [ ${#srcs[@]} -eq 0 ]; then echo "COPY: nothing matches '$SRC' in the uploaded files" >&2; exit 1; fi
case "$DEST" in /*) ;; *) DEST="$WORKDIR/$DEST" ;; esac
copied=()
# A destination directory made here belongs to the owner too.
if [ ! -e "$DEST" ] && { [ ${#srcs[@]} -gt 1 ] || [[ "$DEST" == */ ]] || [ -d "${srcs[0]}" ]; }; then
    mkdir -p "$DEST"; copied+=("${DEST%/}")
fi
for s in "${srcs[@]}"; do
    if [ -d "$s" ] && [ ! -L "$s" ]; then
        mkdir -p "$DEST"
        for c in "$s"/*; do cp -a "$c" "$DEST"/; copied+=("$DEST/$(basename "$c")"); done
    elif [ -d "$DEST" ]; then
        cp -a "$s" "$DEST"/; copied+=("$DEST/$(basename "$s")")
    else
        mkdir -p "$(dirname "$DEST")"; cp -a "$s" "$DEST"; copied+=("$DEST")
    fi
done
if [ ${#copied[@]} -gt 0 ]; then
    chown -R -h "$OWNER" "${copied[@]}"
    if [ -n "$MODE" ]; then chmod -R "$MODE" "${copied[@]}"; fi
fi
"#;

/// The largest COPY archive uploaded into a build sandbox.
pub const MAX_ARCHIVE_BYTES: u64 = 512 << 20;

/// One COPY: `archive` (on the host) into the guest, then placed.
pub struct Copy<'a> {
    pub archive: &'a Path,
    pub src: &'a str,
    pub dest: &'a str,
    pub owner: Option<&'a str>,
    pub mode: Option<u32>,
}

pub async fn copy(
    agent: &AgentClient,
    log: &BuildLog,
    step: &str,
    defaults: &Defaults,
    copy: &Copy<'_>,
    timeout: Duration,
) -> Result<(), GuestError> {
    let size = std::fs::metadata(copy.archive).map_err(|e| GuestError::Archive(e.to_string()))?.len();
    if size > MAX_ARCHIVE_BYTES {
        return Err(GuestError::Archive(format!("{size} bytes; at most {MAX_ARCHIVE_BYTES}")));
    }
    let inside = format!("/tmp/ember-copy-{}.tar", hex::encode(rand::random::<[u8; 8]>()));
    agent.upload_file(&inside, "root", copy.archive, timeout).await?;
    // `user` alone means the user's login group too.
    let owner = match copy.owner.unwrap_or(&defaults.user) {
        o if o.contains(':') => o.to_string(),
        o => format!("{o}:"),
    };
    let env: BTreeMap<String, String> = [
        ("ARCHIVE", inside),
        ("SRC", copy.src.to_string()),
        ("DEST", copy.dest.to_string()),
        ("WORKDIR", defaults.workdir.clone().unwrap_or_else(|| "/".into())),
        ("OWNER", owner),
        ("MODE", copy.mode.map(|m| format!("{m:o}")).unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let command = Command { cmd: PLACE, user: "root", cwd: Some("/"), env: &env };
    run(agent, log, step, &command, Output::Logged, timeout).await
}
