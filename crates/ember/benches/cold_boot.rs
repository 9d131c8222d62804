//! Cold boot: the median of 5 `ember run` invocations, from starting `ember run` to the agent's
//! first answer (the "ready" line), with the accelerator named. Needs root and built guest
//! images; run with `cargo bench -p ember --bench cold_boot`.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 5;

fn main() {
    let data = tempfile::Builder::new().prefix("ember-bench-").tempdir().expect("temp dir");
    std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let ember = env!("CARGO_BIN_EXE_ember");
    let agent = std::env::var_os("EMBER_AGENT_BIN")
        .unwrap_or_else(|| std::path::Path::new(ember).with_file_name("ember-agent").into_os_string());
    let mut wall = Vec::new();
    let mut internal = Vec::new();
    let mut accel = String::new();
    for i in 0..RUNS {
        let started = Instant::now();
        let mut child = Command::new(ember)
            .args(["run", "--timings", "--", "true"])
            .env("EMBER_DATA_DIR", data.path())
            .env("EMBER_AGENT_BIN", &agent)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ember");
        let mut ready = None;
        for line in BufReader::new(child.stderr.take().expect("stderr")).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ember: accelerator: ") {
                accel = rest.to_string();
            }
            if line.contains(" ready in ") && ready.is_none() {
                ready = Some(started.elapsed());
                let ms: u64 = line
                    .split(" ready in ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                internal.push(Duration::from_millis(ms));
            }
        }
        let status = child.wait().expect("wait for ember");
        let ready = ready.unwrap_or_else(|| panic!("run {i}: ember never reported ready ({status})"));
        assert!(status.success(), "run {i}: ember failed ({status})");
        eprintln!("run {}: ready after {:.0} ms", i + 1, ready.as_secs_f64() * 1000.0);
        wall.push(ready);
    }
    println!("cold boot, {RUNS} runs, accelerator {accel}");
    println!(
        "  ember run start -> agent ready: median {:.0} ms (min {:.0}, max {:.0})",
        ms(median(&mut wall)),
        ms(wall[0]),
        ms(wall[RUNS - 1])
    );
    println!("  QEMU start -> agent ready:      median {:.0} ms", ms(median(&mut internal)));
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
