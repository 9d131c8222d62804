//! Runs one long build step (a child process) with its output sent to a log file and a
//! progress display: a spinner with the elapsed time and the log's last line on a terminal,
//! a start line, a line every 30 s and an end line otherwise (CI logs).

use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{io_err, ImageError};

/// How much of a failed step's log goes into the error.
const TAIL_BYTES: u64 = 3000;

/// Runs `cmd` to completion as step `label`, appending its output to `log`. The step runs with
/// umask 0022, whatever `ember`'s own (0077): what it builds goes into guest images, whose files
/// must keep their usual modes.
pub fn run(label: &str, cmd: &mut Command, log: &Path) -> Result<(), ImageError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("open {}", log.display())))?;
    let err_file = file.try_clone().map_err(io_err("clone log handle"))?;
    let started = Instant::now();
    // SAFETY: runs in the child between fork and exec and only calls umask(2), which is
    // async-signal-safe and neither allocates nor locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err_file))
        .spawn()
        .map_err(io_err(format!("{label}: start {:?}", cmd.get_program())))?;

    let bar = progress(label);
    let mut last_report = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err(format!("{label}: wait")))? {
            break status;
        }
        let line = last_line(log);
        match &bar {
            Some(bar) => bar.set_message(format!("{} {}", fmt_secs(started), line)),
            None if last_report.elapsed() >= Duration::from_secs(30) => {
                eprintln!("    {label}: {} {line}", fmt_secs(started));
                last_report = Instant::now();
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if status.success() {
        eprintln!("==> {label}: done in {}", fmt_secs(started));
        Ok(())
    } else {
        Err(ImageError::StepFailed { step: label.to_string(), log: log.to_path_buf(), tail: tail(log, TAIL_BYTES) })
    }
}

fn progress(label: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        eprintln!("==> {label} ...");
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

fn fmt_secs(since: Instant) -> String {
    let s = since.elapsed().as_secs();
    format!("[{}:{:02}]", s / 60, s % 60)
}

/// The last `max` bytes of a file, as text.
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn last_line(path: &Path) -> String {
    let text = tail(path, 512);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_step_reports_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        run("ok step", Command::new("sh").args(["-c", "echo fine"]), &log).unwrap();
        let err = run("bad step", Command::new("sh").args(["-c", "echo broken-thing >&2; exit 3"]), &log).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bad step failed"), "{msg}");
        assert!(msg.contains("broken-thing"), "{msg}");
        assert!(std::fs::read_to_string(&log).unwrap().contains("fine"));
    }

    #[test]
    fn steps_run_with_the_usual_umask() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        run("umask", Command::new("sh").args(["-c", "umask"]), &log).unwrap();
        assert!(std::fs::read_to_string(&log).unwrap().contains("0022"));
    }
}
