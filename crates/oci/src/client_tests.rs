//! The client against a fake registry on 127.0.0.1: challenges, credentials, error mapping,
//! digest and size checks, and whole pulls of hand-made images.

use super::*;
use crate::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::{OciError, PullConfig};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;

/// What the fake registry answers: status, headers, body.
type Reply = (u16, Vec<(&'static str, String)>, Vec<u8>);
type Handler = Arc<dyn Fn(&str, &reqwest::header::HeaderMap) -> Reply + Send + Sync>;

/// Serves `handler` on a free port of 127.0.0.1; returns `127.0.0.1:PORT`.
async fn serve(handler: Handler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, headers, body) = handler(&req.uri().to_string(), req.headers());
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    for (k, v) in headers {
                        response.headers_mut().insert(k, v.parse().unwrap());
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn reference(addr: &str, rest: &str) -> Reference {
    Reference::parse(&format!("{addr}/{rest}")).unwrap()
}

fn creds(user: &str, pass: &str) -> Credentials {
    Credentials { username: user.into(), password: pass.into() }
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// An image: blobs by digest and manifests by tag or digest, served behind an optional
/// bearer token service that wants `alice:secret`.
#[derive(Default)]
struct Image {
    blobs: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, (String, Vec<u8>)>,
}

impl Image {
    fn blob(&mut self, data: Vec<u8>) -> Descriptor {
        let digest = sha256_digest(&data);
        let desc =
            Descriptor { media_type: String::new(), digest: digest.clone(), size: data.len() as u64, platform: None };
        self.blobs.insert(digest, data);
        desc
    }

    fn manifest(&mut self, tag: &str, media_type: &str, body: String) -> String {
        let digest = sha256_digest(body.as_bytes());
        self.manifests.insert(tag.to_string(), (media_type.to_string(), body.clone().into_bytes()));
        self.manifests.insert(digest.clone(), (media_type.to_string(), body.into_bytes()));
        digest
    }

    /// A one-layer image tagged `tag` whose layer has `files`.
    fn simple(&mut self, tag: &str, files: &[(&str, &str)]) {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            tar.append(&h, data.as_bytes()).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let diff_id = sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = self.blob(gz.finish().unwrap());
        let config = self.blob(
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin","X=1"],"WorkingDir":"/w","User":"7","Cmd":["sh"],"Entrypoint":["/init"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
            )
            .into_bytes(),
        );
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
            config.digest, config.size, layer.digest, layer.size
        );
        self.manifest(tag, OCI_MANIFEST, body);
    }

    fn into_handler(self, auth: bool, requests: Arc<Mutex<Vec<String>>>) -> Handler {
        let image = Arc::new(self);
        Arc::new(move |uri: &str, headers: &reqwest::header::HeaderMap| -> Reply {
            requests.lock().unwrap().push(uri.to_string());
            if uri.starts_with("/token") {
                if header(headers, "authorization") == basic("alice", "secret") {
                    return (200, vec![], br#"{"token":"tok123"}"#.to_vec());
                }
                return (401, vec![], b"{}".to_vec());
            }
            if auth && header(headers, "authorization") != "Bearer tok123" {
                let host = header(headers, "host");
                let challenge =
                    format!(r#"Bearer realm="http://{host}/token",service="fake",scope="repository:test/img:pull""#);
                return (401, vec![("www-authenticate", challenge)], b"{}".to_vec());
            }
            let not_found = |code: &str| {
                (404, vec![], format!(r#"{{"errors":[{{"code":"{code}","message":"nope"}}]}}"#).into_bytes())
            };
            if let Some(reference) = uri.strip_prefix("/v2/test/img/manifests/") {
                return match image.manifests.get(reference) {
                    Some((media_type, body)) => (200, vec![("content-type", media_type.clone())], body.clone()),
                    None => not_found("MANIFEST_UNKNOWN"),
                };
            }
            if let Some(digest) = uri.strip_prefix("/v2/test/img/blobs/") {
                return match image.blobs.get(digest) {
                    Some(body) => (200, vec![], body.clone()),
                    None => not_found("BLOB_UNKNOWN"),
                };
            }
            not_found("NAME_UNKNOWN")
        })
    }
}

async fn fake(image: Image, auth: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let requests = Arc::new(Mutex::new(Vec::new()));
    (serve(image.into_handler(auth, requests.clone())).await, requests)
}

#[test]
fn challenges() {
    assert_eq!(
        parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
        )
        .unwrap(),
        Challenge::Bearer {
            realm: "https://auth.example/token".into(),
            service: Some("registry.example".into()),
            scope: Some("repository:a/b:pull".into()),
        }
    );
    assert_eq!(
        parse_challenge(r#"bearer realm=https://a/t, scope="x\"y,z""#).unwrap(),
        Challenge::Bearer { realm: "https://a/t".into(), service: None, scope: Some("x\"y,z".into()) }
    );
    assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#).unwrap(), Challenge::Basic);
    assert!(matches!(parse_challenge(r#"Bearer service="x""#), Err(ClientError::BadChallenge(_))));
    assert!(matches!(parse_challenge("Negotiate abc"), Err(ClientError::BadChallenge(_))));
}

#[test]
fn plain_http_only_for_loopback_and_listed_registries() {
    assert!(is_plain_http("127.0.0.1:5000", &[]));
    assert!(is_plain_http("localhost", &[]));
    assert!(is_plain_http("[::1]:5000", &[]));
    assert!(!is_plain_http("registry.example:5000", &[]));
    assert!(!is_plain_http("127.0.0.1.example.com", &[]));
    assert!(is_plain_http("registry.example:5000", &["registry.example:5000".into()]));
    assert!(is_plain_http("registry.example:5000", &["registry.example".into()]));
    assert!(!is_plain_http("other.example", &["registry.example".into()]));
}

#[tokio::test]
async fn bearer_token_flow_with_credentials() {
    let mut image = Image::default();
    image.simple("v1", &[("f", "x")]);
    let (addr, requests) = fake(image, true).await;
    let config = PullConfig::default();

    let alice = creds("alice", "secret");
    let mut client = RegistryClient::new(&reference(&addr, "test/img:v1"), Some(&alice), &config).unwrap();
    let (doc, _) = client.manifest("v1").await.unwrap();
    assert!(matches!(doc, ManifestDoc::Image(_)));
    // The token is reused: the second request is not challenged again.
    client.manifest("v1").await.unwrap();
    let log = requests.lock().unwrap().clone();
    assert_eq!(log.iter().filter(|r| r.starts_with("/token")).count(), 1, "{log:?}");
    let token_request = log.iter().find(|r| r.starts_with("/token")).unwrap();
    assert!(token_request.contains("service=fake"), "{token_request}");
    assert!(token_request.contains("scope=repository%3Atest%2Fimg%3Apull"), "{token_request}");

    let mut anonymous = RegistryClient::new(&reference(&addr, "test/img:v1"), None, &config).unwrap();
    let err = anonymous.manifest("v1").await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err}");
    assert!(err.to_string().starts_with("unauthorized"), "{err}");

    let mallory = creds("alice", "wrong");
    let mut wrong = RegistryClient::new(&reference(&addr, "test/img:v1"), Some(&mallory), &config).unwrap();
    let err = wrong.manifest("v1").await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err}");
}

#[tokio::test]
async fn basic_challenge() {
    let handler: Handler = Arc::new(|_uri: &str, headers: &reqwest::header::HeaderMap| -> Reply {
        if header(headers, "authorization") == basic("bob", "pw") {
            (404, vec![], br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec())
        } else {
            (401, vec![("www-authenticate", r#"Basic realm="r""#.to_string())], vec![])
        }
    });
    let addr = serve(handler).await;
    let config = PullConfig::default();
    let bob = creds("bob", "pw");
    let mut client = RegistryClient::new(&reference(&addr, "test/img:v1"), Some(&bob), &config).unwrap();
    // Past the challenge, the registry's own answer (no such manifest) comes through.
    let err = client.manifest("v1").await.unwrap_err();
    assert!(matches!(err, ClientError::ManifestUnknown(_)), "{err}");
    assert_eq!(err.to_string(), "manifest unknown: v1");
    let mut anonymous = RegistryClient::new(&reference(&addr, "test/img:v1"), None, &config).unwrap();
    assert!(matches!(anonymous.manifest("v1").await.unwrap_err(), ClientError::Unauthorized(_)));
}

#[tokio::test]
async fn token_realm_must_not_downgrade_to_http() {
    // An HTTPS registry may not send the credentials to a plain-HTTP token service.
    let client = RegistryClient {
        http: reqwest::Client::new(),
        base: "https://registry.example/v2/a".into(),
        repository: "a".into(),
        plain_http: false,
        credentials: None,
        authorization: None,
        timeout: Duration::from_secs(5),
        max_manifest_bytes: 1024,
    };
    let err = client
        .answer(Challenge::Bearer { realm: "http://127.0.0.1:1/token".into(), service: None, scope: None })
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::BadChallenge(_)), "{err}");
}

#[tokio::test]
async fn digest_size_and_limit_checks() {
    let mut image = Image::default();
    image.simple("v1", &[("f", "x")]);
    let good = image.blob(b"good content".to_vec());
    // A blob whose content does not match its digest.
    let forged = Descriptor { digest: sha256_digest(b"expected"), size: 8, ..good.clone() };
    image.blobs.insert(forged.digest.clone(), b"tampered".to_vec());
    let (addr, _) = fake(image, false).await;
    let config = PullConfig { max_manifest_bytes: 100, ..PullConfig::default() };
    let mut client = RegistryClient::new(&reference(&addr, "test/img:v1"), None, &config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");

    client.download_blob(&good, &file).await.unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"good content");
    let err = client.download_blob(&forged, &file).await.unwrap_err();
    assert!(matches!(err, ClientError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().starts_with("digest mismatch"), "{err}");
    let err = client.blob_bytes(&forged).await.unwrap_err();
    assert!(matches!(err, ClientError::DigestMismatch { .. }), "{err}");
    // A registry sending more than the descriptor says is cut off.
    let short = Descriptor { size: 4, ..good.clone() };
    let err = client.download_blob(&short, &file).await.unwrap_err();
    assert!(matches!(err, ClientError::SizeMismatch { expected: 4, .. }), "{err}");
    let long = Descriptor { size: 40, ..good.clone() };
    let err = client.download_blob(&long, &file).await.unwrap_err();
    assert!(matches!(err, ClientError::SizeMismatch { expected: 40, actual: 12, .. }), "{err}");
    // Manifests bigger than the limit are refused.
    let err = client.manifest("v1").await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { max: 100, .. }), "{err}");
    let unknown = Descriptor { digest: sha256_digest(b"nothing"), ..good.clone() };
    let err = client.download_blob(&unknown, &file).await.unwrap_err();
    assert!(matches!(err, ClientError::BlobUnknown(_)), "{err}");
    let bad = Descriptor { digest: "sha256:../../etc/passwd".into(), ..good };
    assert!(matches!(client.download_blob(&bad, &file).await.unwrap_err(), ClientError::InvalidDigest(_)));
}

#[tokio::test]
async fn manifest_by_digest_is_verified() {
    let mut image = Image::default();
    let digest = image.manifest("v1", OCI_MANIFEST, "{}".into());
    // Serve another body under a digest it does not hash to.
    let wrong = sha256_digest(b"something else");
    image.manifests.insert(wrong.clone(), (OCI_MANIFEST.into(), image.manifests[&digest].1.clone()));
    let (addr, _) = fake(image, false).await;
    let config = PullConfig::default();
    let mut client = RegistryClient::new(&reference(&addr, "test/img:v1"), None, &config).unwrap();
    let err = client.manifest(&wrong).await.unwrap_err();
    assert!(matches!(err, ClientError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn pull_through_token_auth_and_an_index() {
    let mut image = Image::default();
    image.simple("amd", &[("etc/hostname", "fake\n"), ("app/main.py", "print(1)\n")]);
    let (media, body) = image.manifests["amd"].clone();
    let amd = sha256_digest(&body);
    assert_eq!(media, OCI_MANIFEST);
    let other = "sha256:".to_string() + &"1".repeat(64);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
        {{"mediaType":"{OCI_MANIFEST}","digest":"{other}","size":10,"platform":{{"os":"linux","architecture":"arm64"}}}},
        {{"mediaType":"{OCI_MANIFEST}","digest":"{amd}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        body.len()
    );
    image.manifest("multi", OCI_INDEX, index);
    let arm_only = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{DOCKER_MANIFEST}","digest":"{other}","size":10,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
    );
    image.manifest("arm", OCI_INDEX, arm_only);
    let (addr, _) = fake(image, true).await;
    let alice = creds("alice", "secret");
    let cache = tempfile::tempdir().unwrap();
    let config = PullConfig { blob_cache: Some(cache.path().to_path_buf()), ..PullConfig::default() };

    let dest = tempfile::tempdir().unwrap();
    let pulled =
        crate::pull_and_unpack(&format!("{addr}/test/img:multi"), Some(&alice), dest.path(), &config).await.unwrap();
    assert_eq!(pulled.digest, amd);
    assert_eq!(pulled.reference, format!("{addr}/test/img:multi"));
    assert_eq!(pulled.config.env, vec!["PATH=/bin", "X=1"]);
    assert_eq!(pulled.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(pulled.config.user.as_deref(), Some("7"));
    assert_eq!(pulled.config.cmd, vec!["sh"]);
    assert_eq!(pulled.config.entrypoint, vec!["/init"]);
    assert_eq!(std::fs::read_to_string(dest.path().join("app/main.py")).unwrap(), "print(1)\n");
    let cached: Vec<_> = std::fs::read_dir(cache.path().join("sha256")).unwrap().collect();
    assert_eq!(cached.len(), 1, "the layer is cached, no temporary files are left");

    // A corrupted cache entry is detected and downloaded again.
    let entry = cached[0].as_ref().unwrap().path();
    std::fs::write(&entry, b"corrupt").unwrap();
    let dest2 = tempfile::tempdir().unwrap();
    crate::pull_and_unpack(&format!("{addr}/test/img@{amd}"), Some(&alice), dest2.path(), &config).await.unwrap();
    assert_eq!(std::fs::read_to_string(dest2.path().join("etc/hostname")).unwrap(), "fake\n");

    let err =
        crate::pull_and_unpack(&format!("{addr}/test/img:arm"), Some(&alice), dest.path(), &config).await.unwrap_err();
    assert!(matches!(err, OciError::NoMatchingPlatform { .. }), "{err}");
    assert!(err.to_string().contains("has no linux/amd64 variant (it has: linux/arm64)"), "{err}");

    let err =
        crate::pull_and_unpack(&format!("{addr}/test/img:nope"), Some(&alice), dest.path(), &config).await.unwrap_err();
    assert!(matches!(err, OciError::Client(ClientError::ManifestUnknown(_))), "{err}");

    let small = PullConfig { max_download_bytes: 10, ..config.clone() };
    let err =
        crate::pull_and_unpack(&format!("{addr}/test/img:amd"), Some(&alice), dest.path(), &small).await.unwrap_err();
    assert!(matches!(err, OciError::DownloadTooLarge { max: 10, .. }), "{err}");
    let few = PullConfig { max_layers: 0, ..config.clone() };
    let err =
        crate::pull_and_unpack(&format!("{addr}/test/img:amd"), Some(&alice), dest.path(), &few).await.unwrap_err();
    assert!(matches!(err, OciError::TooManyLayers { count: 1, max: 0 }), "{err}");
}

#[test]
fn ca_bundles() {
    let r = Reference::parse("registry.example/a:b").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let config = PullConfig { ca_bundle: Some(junk), ..PullConfig::default() };
    assert!(matches!(RegistryClient::new(&r, None, &config), Err(ClientError::Setup(_))));
    let missing = PullConfig { ca_bundle: Some(dir.path().join("missing.pem")), ..PullConfig::default() };
    assert!(matches!(RegistryClient::new(&r, None, &missing), Err(ClientError::Setup(_))));
    if Path::new(SYSTEM_CA_BUNDLE).is_file() {
        let system = PullConfig { ca_bundle: Some(SYSTEM_CA_BUNDLE.into()), ..PullConfig::default() };
        let client = RegistryClient::new(&r, None, &system).unwrap();
        assert_eq!(client.base, "https://registry.example/v2/a");
    }
}
