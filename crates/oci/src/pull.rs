//! The whole pull: resolve the reference to a manifest for the platform, fetch the config,
//! download and verify every layer (or find it in the blob cache), then apply them in order.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::client::{verify, RegistryClient};
use crate::manifest::{layer_compression, ConfigFile, Descriptor, Manifest, ManifestDoc};
use crate::reference::{validate_digest, Reference};
use crate::unpack::Unpacker;
use crate::{ClientError, Credentials, ImageConfig, OciError, PullConfig, PulledImage};

/// Pulls `reference` (e.g. `python:3.12-slim`) with optional credentials and unpacks it into
/// `dest` (created if missing; existing content is overlaid like a lower layer).
pub async fn pull_and_unpack(
    reference: &str,
    creds: Option<&Credentials>,
    dest: &Path,
    config: &PullConfig,
) -> Result<PulledImage, OciError> {
    let parsed = Reference::parse(reference)?;
    let name = parsed.to_string();
    match tokio::time::timeout(config.pull_timeout, pull(parsed, creds, dest, config)).await {
        Ok(result) => result,
        Err(_) => Err(OciError::TimedOut(name)),
    }
}

async fn pull(
    reference: Reference,
    creds: Option<&Credentials>,
    dest: &Path,
    config: &PullConfig,
) -> Result<PulledImage, OciError> {
    let name = reference.to_string();
    tracing::info!(image = %name, dest = %dest.display(), "pulling image");
    let mut client = RegistryClient::new(&reference, creds, config)?;
    let (manifest, digest) = resolve(&mut client, &reference, config).await?;

    if manifest.layers.len() > config.max_layers {
        return Err(OciError::TooManyLayers { count: manifest.layers.len(), max: config.max_layers });
    }
    let total = manifest.layers.iter().fold(manifest.config.size, |sum, l| sum.saturating_add(l.size));
    if total > config.max_download_bytes {
        return Err(OciError::DownloadTooLarge { size: total, max: config.max_download_bytes });
    }
    for layer in &manifest.layers {
        if layer_compression(&layer.media_type).is_none() {
            return Err(OciError::UnsupportedLayer(layer.media_type.clone()));
        }
    }

    let config_blob = client.blob_bytes(&manifest.config).await?;
    let config_file: ConfigFile =
        serde_json::from_slice(&config_blob).map_err(|e| OciError::InvalidImage(format!("image config: {e}")))?;
    if let Some(arch) = config_file.architecture.as_deref() {
        if arch != config.architecture || config_file.os.as_deref().is_some_and(|o| o != config.os) {
            return Err(OciError::NoMatchingPlatform {
                reference: name,
                os: config.os.clone(),
                architecture: config.architecture.clone(),
                available: format!("{}/{arch}", config_file.os.as_deref().unwrap_or("?")),
            });
        }
    }
    let diff_ids = config_file.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    if !diff_ids.is_empty() && diff_ids.len() != manifest.layers.len() {
        return Err(OciError::InvalidImage(format!(
            "config has {} diff IDs for {} layers",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }

    let store = BlobStore::new(config.blob_cache.as_deref())?;
    let mut layer_files = Vec::with_capacity(manifest.layers.len());
    for (i, layer) in manifest.layers.iter().enumerate() {
        tracing::info!(image = %name, layer = i + 1, of = manifest.layers.len(), digest = %layer.digest, size = layer.size, "fetching layer");
        layer_files.push(store.fetch(&mut client, layer).await?);
    }

    std::fs::create_dir_all(dest)
        .map_err(|source| OciError::Io { context: format!("create {}", dest.display()), source })?;
    let dest = dest.to_path_buf();
    let (max_unpacked, max_entries) = (config.max_unpacked_bytes, config.max_entries);
    let mut unpacker = Unpacker::new(&dest, max_unpacked, max_entries);
    // If this future is dropped (the pull timed out), the blocking task stops too.
    let _cancel_on_drop = CancelOnDrop(unpacker.cancel_flag());
    let unpacked = tokio::task::spawn_blocking(move || -> Result<u64, OciError> {
        for (i, file) in layer_files.iter().enumerate() {
            unpacker.apply_layer_file(file, diff_ids.get(i).map(String::as_str))?;
        }
        Ok(unpacker.unpacked_bytes())
    })
    .await
    .map_err(|e| OciError::InvalidImage(format!("unpacking task failed: {e}")))??;
    drop(store);
    tracing::info!(image = %name, digest = %digest, unpacked_bytes = unpacked, "image unpacked");

    let run = config_file.config.unwrap_or_default();
    Ok(PulledImage {
        reference: name,
        digest,
        config: ImageConfig {
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            cmd: run.cmd.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
        },
    })
}

/// Fetches the reference's manifest, following an index to the platform's manifest.
async fn resolve(
    client: &mut RegistryClient,
    reference: &Reference,
    config: &PullConfig,
) -> Result<(Manifest, String), OciError> {
    let (doc, digest) = client.manifest(reference.manifest_reference()).await?;
    match doc {
        ManifestDoc::Image(manifest) => Ok((manifest, digest)),
        ManifestDoc::Index(index) => {
            let Some(entry) = index.select(&config.os, &config.architecture) else {
                let available: Vec<String> = index
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                return Err(OciError::NoMatchingPlatform {
                    reference: reference.to_string(),
                    os: config.os.clone(),
                    architecture: config.architecture.clone(),
                    available: if available.is_empty() { "none".to_string() } else { available.join(", ") },
                });
            };
            validate_digest(&entry.digest).map_err(|_| ClientError::InvalidDigest(entry.digest.clone()))?;
            if entry.size > config.max_manifest_bytes {
                return Err(ClientError::TooLarge {
                    what: format!("manifest {}", entry.digest),
                    max: config.max_manifest_bytes,
                }
                .into());
            }
            let (doc, digest) = client.manifest(&entry.digest).await?;
            match doc {
                ManifestDoc::Image(manifest) => Ok((manifest, digest)),
                ManifestDoc::Index(_) => {
                    Err(OciError::InvalidImage(format!("index entry {} is itself an index", entry.digest)))
                }
            }
        }
    }
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Where layer blobs go: the configured cache (kept) or a temporary directory (removed).
struct BlobStore {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl BlobStore {
    fn new(cache: Option<&Path>) -> Result<BlobStore, OciError> {
        let io = |context: String| move |source| OciError::Io { context, source };
        match cache {
            Some(cache) => {
                let dir = cache.join("sha256");
                std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
                Ok(BlobStore { dir, _temp: None })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("ember-oci-")
                    .tempdir()
                    .map_err(io("create a download directory".to_string()))?;
                Ok(BlobStore { dir: temp.path().to_path_buf(), _temp: Some(temp) })
            }
        }
    }

    /// The path of a verified copy of `desc`, downloading it if not already there.
    async fn fetch(&self, client: &mut RegistryClient, desc: &Descriptor) -> Result<PathBuf, OciError> {
        validate_digest(&desc.digest).map_err(|_| ClientError::InvalidDigest(desc.digest.clone()))?;
        let hex = desc.digest.trim_start_matches("sha256:");
        let path = self.dir.join(hex);
        if path.is_file() {
            let (check, d) = (path.clone(), desc.clone());
            let cached = tokio::task::spawn_blocking(move || verify_file(&check, &d))
                .await
                .map_err(|e| OciError::InvalidImage(format!("verifying task failed: {e}")))?;
            match cached {
                Ok(()) => {
                    tracing::debug!(digest = %desc.digest, "layer found in blob cache");
                    return Ok(path);
                }
                Err(e) => {
                    tracing::warn!(digest = %desc.digest, error = %e, "discarding bad cached blob");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let temp = tempfile::Builder::new().prefix(".download-").tempfile_in(&self.dir).map_err(|source| {
            OciError::Io { context: format!("create a temporary file in {}", self.dir.display()), source }
        })?;
        client.download_blob(desc, temp.path()).await?;
        temp.persist(&path)
            .map_err(|e| OciError::Io { context: format!("store blob {}", path.display()), source: e.error })?;
        Ok(path)
    }
}

/// Re-hashes a stored blob.
fn verify_file(path: &Path, desc: &Descriptor) -> Result<(), ClientError> {
    let io = |source| ClientError::Io { context: format!("read {}", path.display()), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    verify(&format!("cached blob {}", desc.digest), desc, size, &actual)
}
