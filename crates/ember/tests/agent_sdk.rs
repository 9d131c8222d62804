//! The official E2B Python SDK (pinned in `tests/sdk/requirements.txt`, installed into
//! `target/sdk-venv` by `scripts/test.sh`) drives the agent: the same pytest suite runs against
//! `ember-agent` as an ordinary process on the host, and against the agent inside a real guest
//! (pytest runs inside the sandbox's network namespace).

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::Ember;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    let p = std::env::var_os("EMBER_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/sdk-venv/bin/python"));
    assert!(p.exists(), "{} missing: run scripts/test.sh, which installs the pinned SDK", p.display());
    p
}

fn check(out: Output, what: &str) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{what}: pytest failed:\n{text}");
    assert!(text.contains(" passed"), "{what}: pytest ran no test:\n{text}");
    assert!(!text.contains(" failed"), "{what}: {text}");
}

#[test]
fn sdk_suite_against_the_agent_on_the_host() {
    if common::skip_without_root("the suite's agent switches users and chowns") {
        return;
    }
    let out = Command::new(python())
        .args(["-m", "pytest", "tests/sdk", "-q", "-p", "no:cacheprovider"])
        .current_dir(workspace())
        .env("AGENT_BIN", common::agent_bin())
        .output()
        .unwrap();
    check(out, "host");
}

#[test]
fn sdk_suite_against_the_agent_in_a_guest() {
    let Some(ember) = Ember::new() else { return };
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    let token_arg = token_file.to_str().unwrap();
    let mut run = ember.spawn(&[
        "run",
        "--timings",
        "--memory-mb",
        "1024",
        "--access-token-file",
        token_arg,
        "--",
        "sleep",
        "3600",
    ]);
    let ready = run.wait_for("ready in", Duration::from_secs(180));
    let id = ready.split_whitespace().nth(2).expect("sandbox id in the ready line").to_string();
    // The agent was initialised by `ember run` (it refuses everything until it is): the suite
    // takes over its token.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&token_file).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "ember run wrote no access token");
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = std::fs::read_to_string(&token_file).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("ember-{id}")])
        .arg(python())
        .args(["-m", "pytest", "tests/sdk", "-q", "-p", "no:cacheprovider"])
        .current_dir(workspace())
        .env("AGENT_URL", "http://169.254.0.21:49983")
        .env("AGENT_TOKEN", token.trim())
        .output()
        .unwrap();
    kill(Pid::from_raw(run.child.id() as i32), Signal::SIGINT).unwrap();
    let (status, _) = run.finish(Duration::from_secs(30));
    check(out, "guest");
    assert_eq!(status.code(), Some(130));
    ember.assert_clean(&[id].into_iter().collect());
}
