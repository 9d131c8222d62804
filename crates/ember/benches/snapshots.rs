//! Snapshot figures through the REST API of a real `ember serve`, with the accelerator named:
//! create-to-ready latency (p50, p99) over 50 creates one at a time and 50 as 8 at once, the
//! ratio to a cold boot measured in the same run, pause and resume times for 256 MiB and 1 GiB
//! guests, and proportional memory (PSS) per idle sandbox with 20 running. Needs root and built
//! guest images; run with `cargo bench -p ember --bench snapshots`.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

const KEY: &str = "e2b_0123456789abcdef0123456789abcdef01234567";
const CREATES: usize = 50;
const IDLE: usize = 20;

struct Daemon {
    child: Child,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Daemon {
    fn start(port: u16, extra: &[&str]) -> Self {
        let data = tempfile::Builder::new().prefix("ember-bench-").tempdir().expect("temp dir");
        std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let ember = env!("CARGO_BIN_EXE_ember");
        let agent = std::env::var_os("EMBER_AGENT_BIN")
            .unwrap_or_else(|| std::path::Path::new(ember).with_file_name("ember-agent").into_os_string());
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(ember)
            .args(["serve", "--listen", &addr.to_string(), "--destroy-on-exit", "--max-sandboxes", "64"])
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            .env("EMBER_API_KEY", KEY)
            .env("EMBER_AGENT_BIN", agent)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ember serve");
        let d = Daemon { child, addr, _data: data };
        let deadline = Instant::now() + Duration::from_secs(900);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "ember serve did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.expect("connect");
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "ember")
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = tx.send_request(req).await.expect("send");
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// Creates a sandbox; returns its id and how long until create returned (it is usable then).
    async fn create(&self) -> (String, Duration) {
        let started = Instant::now();
        let (status, body) = self.call("POST", "/v2/sandboxes", r#"{"templateID":"base"}"#).await;
        let took = started.elapsed();
        assert_eq!(status, 201, "create: {body}");
        (body["sandboxID"].as_str().expect("id").to_string(), took)
    }

    async fn kill(&self, id: &str) {
        assert_eq!(self.call("DELETE", &format!("/sandboxes/{id}"), "").await.0, 204);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the daemon we started; it destroys its sandboxes on SIGTERM.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn pct(v: &mut [Duration], p: usize) -> f64 {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1000.0
}

/// Sum of PSS (KiB) of the QEMU processes whose command line mentions `needle`.
fn pss_kib(needle: &str) -> (u64, usize) {
    let mut total = 0;
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid.to_str().filter(|p| p.chars().all(|c| c.is_ascii_digit())) else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains("qemu-system") || !cmd.contains(needle) {
            continue;
        }
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        if let Some(kib) = rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            total += kib;
            n += 1;
        }
    }
    (total, n)
}

async fn serial(d: &Daemon, n: usize, gap: Duration) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..n {
        let (id, t) = d.create().await;
        times.push(t);
        d.kill(&id).await;
        tokio::time::sleep(gap).await;
    }
    times
}

async fn eight_at_once(d: &std::sync::Arc<Daemon>, n: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..n.div_ceil(8) {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let d = std::sync::Arc::clone(d);
                tokio::spawn(async move { d.create().await })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            let (id, took) = t.await.expect("task");
            times.push(took);
            ids.push(id);
        }
        for id in ids {
            d.kill(&id).await;
        }
    }
    times
}

fn report(what: &str, times: &mut [Duration]) -> f64 {
    let (p50, p99) = (pct(times, 50), pct(times, 99));
    println!("  {what} ({}): p50 {p50:.0} ms, p99 {p99:.0} ms", times.len());
    p50
}

#[tokio::main]
async fn main() {
    let accel = ember_vmm::accel::choose(ember::settings::accel());
    println!("snapshots through the REST API (create returns when the sandbox is usable), accelerator {accel}");

    let cold = Daemon::start(3101, &["--cold-boot", "--pool", "0"]);
    let cold_p50 = report("cold boot, one at a time", &mut serial(&cold, 5, Duration::ZERO).await);
    drop(cold);

    let d = std::sync::Arc::new(Daemon::start(3102, &["--pool", "0"]));
    let (id, first) = d.create().await;
    d.kill(&id).await;
    println!("  first create (builds the template snapshot if missing): {:.0} ms", first.as_secs_f64() * 1000.0);
    let restore_p50 = report("restore, no pool, one at a time", &mut serial(&d, CREATES, Duration::ZERO).await);
    report("restore, no pool, 8 at once", &mut eight_at_once(&d, CREATES).await);
    let mut ids = Vec::new();
    for _ in 0..IDLE {
        ids.push(d.create().await.0);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (pss, n) = pss_kib(&d._data.path().to_string_lossy());
    println!(
        "  idle: {n} sandboxes running, PSS {:.1} MB each ({:.0} MB total)",
        pss as f64 / 1024.0 / n.max(1) as f64,
        pss as f64 / 1024.0
    );
    for id in &ids {
        d.kill(id).await;
    }
    drop(d);

    let d = std::sync::Arc::new(Daemon::start(3104, &["--pool", "2"]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warm_p50 =
        report("pool of 2, warm (500 ms between creates)", &mut serial(&d, CREATES, Duration::from_millis(500)).await);
    report("pool of 2, exhausted (8 at once)", &mut eight_at_once(&d, CREATES).await);
    drop(d);
    println!(
        "  cold boot / create: {:.1}x without a pool, {:.1}x with a warm pool",
        cold_p50 / restore_p50,
        cold_p50 / warm_p50
    );

    for mem in [256, 1024] {
        let d = Daemon::start(3103, &["--memory-mb", &mem.to_string(), "--pool", "0"]);
        let (id, _) = d.create().await;
        let t = Instant::now();
        assert_eq!(d.call("POST", &format!("/sandboxes/{id}/pause"), "{}").await.0, 204);
        let pause = t.elapsed();
        let t = Instant::now();
        assert_eq!(d.call("POST", &format!("/v2/sandboxes/{id}/connect"), r#"{"timeout":300}"#).await.0, 201);
        let resume = t.elapsed();
        d.kill(&id).await;
        println!(
            "  {mem} MiB guest: pause {:.0} ms, resume {:.0} ms",
            pause.as_secs_f64() * 1000.0,
            resume.as_secs_f64() * 1000.0
        );
    }
}
