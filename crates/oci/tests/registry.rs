//! Pulls images from a real registry (Debian's docker-registry) run on 127.0.0.1 with its
//! storage in a temporary directory: images built here with umoci (two layers, a whiteout, a
//! setuid file, a file owned by uid 1234, a symlink, a hard link) and pushed with skopeo.
//!
//! Needs root (ownership) and the tools that `tests/setup.sh` installs; without them each test
//! prints `skipped: ...` and passes.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ember_oci::{pull_and_unpack, ClientError, Credentials, OciError, PullConfig};

const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "htpasswd"];

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (ownership needs it)".to_string());
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    (!missing.is_empty()).then(|| format!("missing {} (run crates/oci/tests/setup.sh)", missing.join(", ")))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn run(cmd: &mut Command) {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A docker-registry process on 127.0.0.1, killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.join("storage");
        fs::create_dir_all(&storage).unwrap();
        let auth = htpasswd.map_or(String::new(), |file| {
            format!("auth:\n  htpasswd:\n    realm: ember-test\n    path: {}\n", file.display())
        });
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{auth}",
                storage.display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(dir.join("registry.err")).unwrap())
            .spawn()
            .unwrap();
        let registry = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {}: {}",
                registry.addr,
                fs::read_to_string(dir.join("registry.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the two-layer test image in an OCI layout at `dir/oci`, tag `t`; returns the
/// manifest digest.
fn build_image(dir: &Path) -> String {
    let layout = dir.join("oci");
    let image = format!("{}:t", layout.display());
    let bundle = dir.join("bundle");
    run(Command::new("umoci").arg("init").arg("--layout").arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    let r = bundle.join("rootfs");
    for d in ["etc", "bin", "home/u", "gone/deeper"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("etc/hello"), "hello\n").unwrap();
    fs::write(r.join("etc/doomed"), "doomed\n").unwrap();
    fs::write(r.join("gone/deeper/f"), "x\n").unwrap();
    fs::write(r.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(r.join("bin/tool"), std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    fs::write(r.join("home/u/owned"), "mine\n").unwrap();
    std::os::unix::fs::chown(r.join("home/u/owned"), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::chown(r.join("home/u"), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::symlink("../etc/hello", r.join("bin/link")).unwrap();
    fs::hard_link(r.join("etc/hello"), r.join("etc/hello-hard")).unwrap();
    run(Command::new("umoci").args(["repack", "--refresh-bundle", "--image", &image]).arg(&bundle));
    // The second layer deletes a file and a directory tree (whiteouts) and adds a file.
    fs::remove_file(r.join("etc/doomed")).unwrap();
    fs::remove_dir_all(r.join("gone")).unwrap();
    fs::write(r.join("etc/new"), "new\n").unwrap();
    run(Command::new("umoci").args(["repack", "--refresh-bundle", "--image", &image]).arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "FOO=bar",
        "--config.workingdir",
        "/app",
        "--config.user",
        "1234:1234",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hi",
        "--config.entrypoint",
        "/bin/sh",
    ]));
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_string()
}

fn push(dir: &Path, registry: &Registry, repo_tag: &str, creds: Option<&str>) {
    let policy = dir.join("policy.json");
    fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy").arg(&policy).args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if let Some(creds) = creds {
        cmd.args(["--dest-creds", creds]);
    }
    cmd.arg(format!("oci:{}:t", dir.join("oci").display()));
    cmd.arg(format!("docker://{}/{repo_tag}", registry.addr));
    run(&mut cmd);
}

/// Every entry under `root`: type, mode, owner and content or link target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let owner = format!("{:o} {}:{}", meta.mode() & 0o7777, meta.uid(), meta.gid());
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &path, out);
                format!("dir {owner}")
            } else {
                format!("file {owner} {:?}", fs::read_to_string(&path).unwrap())
            };
            out.insert(rel, desc);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn expected_tree() -> BTreeMap<String, String> {
    [
        ("bin", "dir 755 0:0"),
        ("bin/link", "link -> ../etc/hello"),
        ("bin/tool", "file 4755 0:0 \"#!/bin/sh\\necho tool\\n\""),
        ("etc", "dir 755 0:0"),
        ("etc/hello", "file 644 0:0 \"hello\\n\""),
        ("etc/hello-hard", "file 644 0:0 \"hello\\n\""),
        ("etc/new", "file 644 0:0 \"new\\n\""),
        ("home", "dir 755 0:0"),
        ("home/u", "dir 755 1234:1234"),
        ("home/u/owned", "file 644 1234:1234 \"mine\\n\""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn check_tree(dest: &Path) {
    assert_eq!(tree(dest), expected_tree());
    let hello = fs::metadata(dest.join("etc/hello")).unwrap();
    assert_eq!(fs::metadata(dest.join("etc/hello-hard")).unwrap().ino(), hello.ino(), "hard link kept");
    assert_eq!(fs::read_to_string(dest.join("bin/link")).unwrap(), "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_local_registry() {
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let digest = build_image(work.path());
    let registry = Registry::start(&work.path().join("registry"), None);
    push(work.path(), &registry, "test/img:v1", None);
    let built = started.elapsed();

    let cache = work.path().join("cache");
    let config = PullConfig { blob_cache: Some(cache.clone()), ..PullConfig::default() };
    let dest = work.path().join("rootfs");
    let pull_started = Instant::now();
    let pulled = pull_and_unpack(&format!("{}/test/img:v1", registry.addr), None, &dest, &config).await.unwrap();
    let pull_time = pull_started.elapsed();
    assert_eq!(pulled.digest, digest);
    assert_eq!(pulled.config.env.last().map(String::as_str), Some("FOO=bar"));
    assert_eq!(pulled.config.working_dir.as_deref(), Some("/app"));
    assert_eq!(pulled.config.user.as_deref(), Some("1234:1234"));
    assert_eq!(pulled.config.cmd, vec!["-c", "echo hi"]);
    assert_eq!(pulled.config.entrypoint, vec!["/bin/sh"]);
    check_tree(&dest);
    assert_eq!(fs::read_dir(cache.join("sha256")).unwrap().count(), 2, "both layers cached");

    // By digest, from the cache, into a fresh directory: the same tree.
    let dest2 = work.path().join("rootfs2");
    let again = pull_and_unpack(&format!("{}/test/img@{digest}", registry.addr), None, &dest2, &config).await.unwrap();
    assert_eq!(again.config, pulled.config);
    check_tree(&dest2);

    let err = pull_and_unpack(&format!("{}/test/img:nope", registry.addr), None, &dest, &config).await.unwrap_err();
    assert!(matches!(err, OciError::Client(ClientError::ManifestUnknown(_))), "{err}");
    assert_eq!(err.to_string(), "manifest unknown: nope");
    let err = pull_and_unpack(&format!("{}/test/other:v1", registry.addr), None, &dest, &config).await.unwrap_err();
    // docker-registry answers MANIFEST_UNKNOWN for a repository it does not have; others say NAME_UNKNOWN.
    match &err {
        OciError::Client(ClientError::ManifestUnknown(_)) => assert_eq!(err.to_string(), "manifest unknown: v1"),
        OciError::Client(ClientError::NameUnknown(_)) => assert_eq!(err.to_string(), "repository unknown: test/other"),
        _ => panic!("unexpected error for an unknown repository: {err}"),
    }
    let tight = PullConfig { max_unpacked_bytes: 10, blob_cache: None, ..PullConfig::default() };
    let err = pull_and_unpack(&format!("{}/test/img:v1", registry.addr), None, &work.path().join("r3"), &tight)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Unpack(ember_oci::UnpackError::TooLarge { max: 10 })), "{err}");
    println!(
        "registry test: image built and pushed in {:.2?}, first pull {:.2?}, total {:.2?}",
        built,
        pull_time,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_registry_with_basic_auth() {
    if let Some(reason) = skip_reason() {
        println!("skipped: {reason}");
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    build_image(work.path());
    let htpasswd = work.path().join("htpasswd");
    let output = Command::new("htpasswd").args(["-Bbn", "ember", "s3cret"]).output().unwrap();
    assert!(output.status.success());
    fs::write(&htpasswd, &output.stdout).unwrap();
    let registry = Registry::start(&work.path().join("registry"), Some(&htpasswd));
    push(work.path(), &registry, "private/img:v1", Some("ember:s3cret"));
    let reference = format!("{}/private/img:v1", registry.addr);
    let config = PullConfig::default();

    let err = pull_and_unpack(&reference, None, &work.path().join("anon"), &config).await.unwrap_err();
    assert!(matches!(err, OciError::Client(ClientError::Unauthorized(_))), "{err}");
    assert!(err.to_string().contains("requires credentials"), "{err}");
    let wrong = Credentials { username: "ember".into(), password: "wrong".into() };
    let err = pull_and_unpack(&reference, Some(&wrong), &work.path().join("wrong"), &config).await.unwrap_err();
    assert!(matches!(err, OciError::Client(ClientError::Unauthorized(_))), "{err}");
    assert!(err.to_string().contains("refused the credentials"), "{err}");
    assert!(!work.path().join("wrong").exists(), "nothing is unpacked before the image is fetched");

    let good = Credentials { username: "ember".into(), password: "s3cret".into() };
    let dest = work.path().join("rootfs");
    let pulled = pull_and_unpack(&reference, Some(&good), &dest, &config).await.unwrap();
    assert_eq!(pulled.config.entrypoint, vec!["/bin/sh"]);
    check_tree(&dest);
    println!("basic auth registry test: {:.2?}", started.elapsed());
}
