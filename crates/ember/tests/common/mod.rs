//! Helpers for tests that run the real `ember` binary against real guests: each test gets its
//! own data directory, and [`Ember::assert_clean`] checks that nothing of any sandbox it saw is
//! left (directory, network namespace, QEMU process).
#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Ember {
    data: tempfile::TempDir,
}

/// A finished run.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub ids: BTreeSet<String>,
}

/// One line of output, with when it arrived.
pub struct Line {
    pub stderr: bool,
    pub text: String,
    pub at: Instant,
}

/// A run in progress whose output is read line by line.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<Line>,
    pub seen: Vec<Line>,
}

/// True, after printing that the test is skipped, when not running as root: guests need
/// network namespaces and taps, host-file tests chown and switch users. Everything else runs
/// unprivileged.
pub fn skip_without_root(what: &str) -> bool {
    let skip = !nix::unistd::geteuid().is_root();
    if skip {
        eprintln!("skipped: needs root ({what})");
    }
    skip
}

impl Ember {
    /// A data directory for one guest test; `None`, after printing that the test is skipped,
    /// when not root.
    pub fn new() -> Option<Self> {
        if skip_without_root("QEMU guests in network namespaces") {
            return None;
        }
        let data = tempfile::Builder::new().prefix("ember-test-").tempdir().unwrap();
        // The unprivileged QEMU user must be able to reach the sandboxes' disks.
        std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Some(Self { data })
    }

    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
        cmd.env("EMBER_DATA_DIR", self.data.path()).stdin(Stdio::null());
        cmd.env("EMBER_AGENT_BIN", agent_bin());
        cmd
    }

    /// Runs `ember ARGS` to completion, noting the sandbox ids that appear meanwhile.
    pub fn run(&self, args: &[&str]) -> Outcome {
        self.run_with(self.command().args(args))
    }

    pub fn run_with(&self, cmd: &mut Command) -> Outcome {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let out = read_all(child.stdout.take().unwrap());
        let err = read_all(child.stderr.take().unwrap());
        let mut ids = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            ids.extend(self.sandbox_ids());
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "ember did not finish");
            std::thread::sleep(Duration::from_millis(20));
        };
        Outcome { status, stdout: out.join().unwrap(), stderr: err.join().unwrap(), ids }
    }

    /// Starts `ember ARGS` and reads its output line by line as it comes.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self.command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        for (stream, is_err) in [
            (Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, false),
            (Box::new(child.stderr.take().unwrap()), true),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(Line { stderr: is_err, text: line, at: Instant::now() });
                }
            });
        }
        Running { child, lines: rx, seen: Vec::new() }
    }

    /// Ids of the sandboxes (of `ember run`) whose directories exist now.
    pub fn sandbox_ids(&self) -> Vec<String> {
        std::fs::read_dir(self.data.path().join("run/sandboxes"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// Asserts that nothing of the given sandboxes, nor any QEMU of this data dir, is left.
    pub fn assert_clean(&self, ids: &BTreeSet<String>) {
        assert!(self.sandbox_ids().is_empty(), "sandbox directories left: {:?}", self.sandbox_ids());
        for id in ids {
            assert!(!Path::new("/run/netns").join(format!("ember-{id}")).exists(), "network namespace of {id} left");
        }
        let procs = processes_mentioning(&self.data.path().to_string_lossy());
        assert!(procs.is_empty(), "processes left: {procs:?}");
    }
}

impl Running {
    /// Waits until a line containing `needle` arrives; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.text.contains(needle).then(|| line.text.clone());
                    self.seen.push(line);
                    if let Some(text) = found {
                        return text;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; saw: {:?}",
                    self.seen.iter().map(|l| &l.text).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Waits for the process to exit and collects the rest of its output.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<Line>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("ember did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.seen.push(line);
        }
        (status, self.seen)
    }
}

fn read_all<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// The agent binary under test: `EMBER_AGENT_BIN` (the test command sets it to the static
/// release build), else `ember-agent` beside the `ember` under test.
pub fn agent_bin() -> PathBuf {
    let path = std::env::var_os("EMBER_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_ember")).with_file_name("ember-agent"));
    assert!(path.is_file(), "agent binary {} missing: run scripts/build.sh or set EMBER_AGENT_BIN", path.display());
    path
}

/// Pids and command lines of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmd.contains(needle).then_some((pid, cmd))
        })
        .collect()
}
