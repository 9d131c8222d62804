//! `ember run` against real guests (QEMU; TCG on hosts without VMX/SVM): output, exit codes,
//! user and sizes, bad input, and that nothing is left after success, failure or interruption.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

mod common;

use std::time::Duration;

use common::Ember;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn python_prints_42() {
    let Some(ember) = Ember::new() else { return };
    let out = ember.run(&["run", "--", "python3", "-c", "print(6*7)"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "42\n");
    assert!(out.stderr.contains("accelerator: "), "the accelerator is named: {}", out.stderr);
    assert_eq!(out.ids.len(), 1, "one sandbox was made");
    ember.assert_clean(&out.ids);
}

#[test]
fn uname_reports_the_guest_kernel() {
    let Some(ember) = Ember::new() else { return };
    let out = ember.run(&["run", "--", "uname", "-r"]);
    assert!(out.status.success(), "{}", out.stderr);
    let host = nix::sys::utsname::uname().unwrap().release().to_string_lossy().into_owned();
    let guest = out.stdout.trim();
    assert!(guest.starts_with("6.1."), "guest kernel is the 6.1 we build: {guest}");
    assert_ne!(guest, host, "guest kernel differs from the host's");
    ember.assert_clean(&out.ids);
}

#[test]
fn exit_code_and_both_streams_pass_through() {
    let Some(ember) = Ember::new() else { return };
    let out = ember.run(&["run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", out.stderr);
    let out2 = ember.run(&["run", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 3"]);
    assert_eq!(out2.status.code(), Some(3));
    assert_eq!(out2.stdout, "to-out\n");
    assert!(out2.stderr.contains("to-err\n"), "{}", out2.stderr);
    let missing = ember.run(&["run", "--", "/no/such/program"]);
    assert_eq!(missing.status.code(), Some(127), "{}", missing.stderr);
    assert!(missing.stderr.contains("/no/such/program"), "{}", missing.stderr);
    ember.assert_clean(&out.ids.iter().chain(&out2.ids).chain(&missing.ids).cloned().collect());
}

#[test]
fn runs_as_user_in_home_with_requested_sizes() {
    let Some(ember) = Ember::new() else { return };
    let out = ember.run(&[
        "run",
        "--cpus",
        "3",
        "--memory-mb",
        "300",
        "--",
        "sh",
        "-c",
        "id -un; id -u; pwd; nproc; grep MemTotal /proc/meminfo; sudo -n id -un",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..4], ["user", "1000", "/home/user", "3"], "{}", out.stdout);
    let kib: u64 = lines[4].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((200 * 1024..=300 * 1024).contains(&kib), "MemTotal {kib} KiB for a 300 MiB guest");
    assert_eq!(lines[5], "root", "user has passwordless sudo");
    ember.assert_clean(&out.ids);
}

#[test]
fn output_is_streamed_while_the_command_runs() {
    let Some(ember) = Ember::new() else { return };
    let mut run = ember.spawn(&["run", "--", "sh", "-c", "echo first; sleep 4; echo second"]);
    run.wait_for("first", Duration::from_secs(120));
    let first_at = std::time::Instant::now();
    assert!(run.child.try_wait().unwrap().is_none(), "first line arrived while the command still ran");
    let second = run.wait_for("second", Duration::from_secs(60));
    assert_eq!(second, "second");
    assert!(first_at.elapsed() >= Duration::from_secs(2), "the second line came seconds after the first");
    let (status, _) = run.finish(Duration::from_secs(30));
    assert!(status.success());
    ember.assert_clean(&Default::default());
}

#[test]
fn bad_input_is_refused_clearly_before_anything_is_made() {
    let Some(ember) = Ember::new() else { return };
    let cases: [(&[&str], &str); 5] = [
        (&["run", "--template", "nope", "--", "true"], "unknown template 'nope'"),
        (&["run", "--cpus", "0", "--", "true"], "vCPUs must be between 1 and 8, got 0"),
        (&["run", "--cpus", "9", "--", "true"], "vCPUs must be between 1 and 8, got 9"),
        (&["run", "--memory-mb", "127", "--", "true"], "memory must be between 128 and 8192 MiB, got 127"),
        (&["run", "--memory-mb", "8193", "--", "true"], "memory must be between 128 and 8192 MiB, got 8193"),
    ];
    for (args, message) in cases {
        let out = ember.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
        assert!(out.ids.is_empty(), "{args:?} made a sandbox");
    }
    let no_cmd = ember.run(&["run"]);
    assert_ne!(no_cmd.status.code(), Some(0));
    let out = ember
        .run_with(ember.command().env("EMBER_QEMU", "/nonexistent/qemu-system-x86_64").args(["run", "--", "true"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("QEMU not found at /nonexistent/qemu-system-x86_64"), "{}", out.stderr);
    assert!(out.stderr.contains("apt-get install qemu-system-x86"), "{}", out.stderr);
    assert!(out.ids.is_empty());
    ember.assert_clean(&Default::default());
}

#[test]
fn a_guest_that_never_answers_times_out_with_its_serial_log() {
    let Some(ember) = Ember::new() else { return };
    // The guest configures an address the host does not route to, so the agent is unreachable.
    let out = ember.run_with(ember.command().env("EMBER_KERNEL_ARGS", "ember.ip=169.254.9.9/30").args([
        "run",
        "--boot-timeout",
        "8",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("did not answer within 8 s"), "{}", out.stderr);
    assert!(out.stderr.contains("ember-init: starting"), "serial log tail is included: {}", out.stderr);
    assert_eq!(out.ids.len(), 1);
    ember.assert_clean(&out.ids);
}

#[test]
fn ctrl_c_during_a_run_destroys_the_sandbox() {
    let Some(ember) = Ember::new() else { return };
    let mut run = ember.spawn(&["run", "--timings", "--", "sleep", "300"]);
    run.wait_for("ready in", Duration::from_secs(120));
    let ids = ember.sandbox_ids().into_iter().collect();
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(run.child.id() as i32), Signal::SIGINT).unwrap();
    let (status, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
    assert!(lines.iter().any(|l| l.stderr && l.text.contains("interrupted")));
    ember.assert_clean(&ids);
}

#[test]
fn qemu_crashing_mid_run_is_reported_and_cleaned_up() {
    let Some(ember) = Ember::new() else { return };
    let mut run = ember.spawn(&["run", "--timings", "--", "sleep", "300"]);
    run.wait_for("ready in", Duration::from_secs(120));
    let ids = ember.sandbox_ids().into_iter().collect();
    let qemu = common::processes_mentioning(&ember.data_dir().to_string_lossy());
    assert_eq!(qemu.len(), 1, "one QEMU: {qemu:?}");
    assert!(qemu[0].1.contains("qemu-system-x86_64"));
    kill(Pid::from_raw(qemu[0].0 as i32), Signal::SIGKILL).unwrap();
    let (status, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    assert!(
        lines.iter().any(|l| l.text.contains("VM exited while the command ran")),
        "{:?}",
        lines.iter().map(|l| &l.text).collect::<Vec<_>>()
    );
    ember.assert_clean(&ids);
}
