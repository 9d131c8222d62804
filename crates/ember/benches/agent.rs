//! The agent inside a guest: round trip of starting `true` to its end event (median and p99 of
//! 100), and `/files` upload and download throughput for a 256 MiB file, with the accelerator
//! named. Needs root and built guest images; run with `cargo bench -p ember --bench agent`.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_envd_proto::process::{ProcessConfig, ProcessEvent, StartRequest};
use ember_runtime::{Runtime, SandboxSpec};
use http_body_util::{BodyExt, StreamBody};

const STARTS: usize = 100;
const FILE_MIB: usize = 256;
const CHUNK: usize = 1 << 20;

#[tokio::main]
async fn main() {
    let data = tempfile::Builder::new().prefix("ember-bench-").tempdir().expect("temp dir");
    std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let ember = std::path::Path::new(env!("CARGO_BIN_EXE_ember"));
    let agent_bin =
        std::env::var_os("EMBER_AGENT_BIN").map(Into::into).unwrap_or_else(|| ember.with_file_name("ember-agent"));
    let config =
        ember::settings::runtime_config(data.path().to_path_buf(), ember_image::GuestBinaries::beside(agent_bin));
    let runtime = Runtime::new(config).expect("runtime (run as root)");
    let spec = SandboxSpec { memory_mib: 1024, from_snapshot: true, ..SandboxSpec::default() };
    let sandbox = runtime.create(&spec).await.expect("create sandbox");
    let agent = sandbox.agent().clone();
    println!("agent in a guest: accelerator {}, {} vCPUs, {} MiB", runtime.accel(), spec.vcpus, spec.memory_mib);

    let request =
        StartRequest { process: ProcessConfig { cmd: "/bin/true".into(), ..Default::default() }, ..Default::default() };
    let mut times = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let started = Instant::now();
        let mut events = agent.start(&request, None).await.expect("start");
        let mut ended = false;
        while let Some(ev) = events.next().await.expect("event") {
            ended |= matches!(ev, ProcessEvent::End(_));
        }
        assert!(ended, "no end event");
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "  start `true` -> end event, {STARTS} runs: median {:.1} ms, p99 {:.1} ms",
        ms(times[STARTS / 2]),
        ms(times[STARTS * 99 / 100])
    );

    let upload = Instant::now();
    let chunks = futures_util::stream::iter((0..FILE_MIB).map(|i| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![(i % 251) as u8; CHUNK])))
    }));
    let req = http::Request::post("/files?path=/home/user/bench.bin")
        .header(http::header::HOST, "sandbox")
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(StreamBody::new(chunks))
        .expect("request");
    let resp = agent.send(req, Duration::from_secs(10)).await.expect("upload");
    assert!(resp.status().is_success(), "upload: {}", resp.status());
    resp.into_body().collect().await.expect("upload answer");
    let up = upload.elapsed();

    let download = Instant::now();
    let req = http::Request::get("/files?path=/home/user/bench.bin")
        .header(http::header::HOST, "sandbox")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = agent.send(req, Duration::from_secs(10)).await.expect("download");
    assert!(resp.status().is_success(), "download: {}", resp.status());
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body").into_data() {
            got += data.len();
        }
    }
    let down = download.elapsed();
    assert_eq!(got, FILE_MIB * CHUNK, "downloaded size");
    println!(
        "  /files {FILE_MIB} MiB: upload {:.0} MiB/s ({:.1} s), download {:.0} MiB/s ({:.1} s)",
        FILE_MIB as f64 / up.as_secs_f64(),
        up.as_secs_f64(),
        FILE_MIB as f64 / down.as_secs_f64(),
        down.as_secs_f64()
    );
    sandbox.destroy().await.expect("destroy");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
