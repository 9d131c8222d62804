//! Where a build starts, made ready: a built-in template (its image built if needed), another
//! template's saved build, or an OCI image pulled from a registry, unpacked, made bootable and
//! cached by its manifest digest. Each gives the identity the layer keys start from.

use std::path::PathBuf;
use std::sync::Arc;

use ember_image::template::Template;
use ember_runtime::Runtime;

use crate::build::{BuildError, Start, BASE_STEP};
use crate::log::BuildLog;
use crate::spec::Defaults;

/// Cache kind of the blobs pulled from registries.
const BLOB_KIND: &str = "oci-blobs";

/// A source, ready to start a build sandbox from.
pub enum Ready {
    /// A built-in template, restored from its snapshot.
    Builtin { template: String },
    /// A saved sandbox (another template's build).
    Saved { dir: PathBuf, defaults: Defaults, agent_token: Option<String> },
    /// An image made from an OCI image, booted; its config's user, workdir and env.
    Image { template: Box<Template>, defaults: Defaults },
}

fn base_error(what: &str, e: impl std::fmt::Display) -> BuildError {
    BuildError { step: BASE_STEP.into(), message: format!("{what}: {e}") }
}

/// Makes `start` ready; returns it with the identity of what it is.
pub async fn prepare(runtime: &Runtime, start: &Start, log: &Arc<BuildLog>) -> Result<(String, Ready), BuildError> {
    let config = runtime.config();
    match start {
        Start::Builtin { template, vcpus, memory_mib } => {
            let (cache, name, bins) = (config.cache.clone(), template.clone(), config.binaries.clone());
            let tpl = tokio::task::spawn_blocking(move || ember_image::template::ensure(&cache, &name, &bins))
                .await
                .map_err(|e| base_error("the template task", e))?
                .map_err(|e| base_error("the template", e))?;
            Ok((
                format!("builtin {template} {} {vcpus}x{memory_mib}", tpl.key),
                Ready::Builtin { template: template.clone() },
            ))
        }
        Start::Saved { dir, identity, defaults, agent_token } => Ok((
            format!("saved {identity}"),
            Ready::Saved { dir: dir.clone(), defaults: defaults.clone(), agent_token: agent_token.clone() },
        )),
        Start::Image { reference, credentials, vcpus, memory_mib } => {
            log.info(Some(BASE_STEP), &format!("pulling {reference}"));
            let started = std::time::Instant::now();
            let cache = config.cache.clone();
            let (tree, pulled) = pull(&cache, reference, credentials.as_ref()).await?;
            log.info(
                Some(BASE_STEP),
                &format!("pulled {} ({}) in {:.1} s", pulled.reference, pulled.digest, started.elapsed().as_secs_f64()),
            );
            let key = pulled.digest.trim_start_matches("sha256:").to_string();
            let bins = config.binaries.clone();
            let (template, passwd) = tokio::task::spawn_blocking(move || {
                // `template` takes the tree's lock itself (for its image).
                let template = ember_image::oci::template(&cache, &tree, &key, &bins)?;
                // Checked by `template`: `/etc` is a directory of the tree, not a symlink.
                let passwd = std::fs::read_to_string(tree.join("etc/passwd")).unwrap_or_default();
                Ok::<_, ember_image::ImageError>((template, passwd))
            })
            .await
            .map_err(|e| base_error("the image task", e))?
            .map_err(|e| base_error("making the image bootable", e))?;
            let defaults = image_defaults(&pulled.config, &passwd);
            Ok((
                format!("image {} {} {vcpus}x{memory_mib}", pulled.digest, template.key),
                Ready::Image { template: Box::new(template), defaults },
            ))
        }
    }
}

/// Pulls `reference` into a fresh tree; keeps the tree of an earlier pull of the same digest
/// instead if there is one. Blobs are cached.
async fn pull(
    cache: &ember_image::Cache,
    reference: &str,
    credentials: Option<&ember_oci::Credentials>,
) -> Result<(PathBuf, ember_oci::PulledImage), BuildError> {
    let scratch_key = format!("pull-{}", hex::encode(rand::random::<[u8; 8]>()));
    let scratch = cache.scratch(ember_image::oci::TREE_KIND, &scratch_key).map_err(|e| base_error("the cache", e))?;
    let blobs = cache.entry(BLOB_KIND, "all");
    let mut config = ember_oci::PullConfig { blob_cache: Some(blobs.clone()), ..Default::default() };
    config.max_unpacked_bytes = (ember_image::fit::MAX_IMAGE_MIB - ember_image::fit::FREE_MIB) << 20;
    let root = scratch.join("root");
    let pulled = ember_oci::pull_and_unpack(reference, credentials, &root, &config).await;
    let pulled = match pulled {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(base_error(&format!("pulling {reference}"), e));
        }
    };
    let key = pulled.digest.trim_start_matches("sha256:").to_string();
    let entry = cache.entry(ember_image::oci::TREE_KIND, &key);
    if entry.join("etc").is_dir() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Ok((entry, pulled));
    }
    let published =
        std::fs::rename(&root, scratch.join("tree")).map_err(|e| base_error("the cache", e)).and_then(|()| {
            let _ = std::fs::remove_dir_all(&entry);
            std::fs::rename(scratch.join("tree"), &entry).map_err(|e| base_error("the cache", e))
        });
    let _ = std::fs::remove_dir_all(&scratch);
    published.map(|()| (entry, pulled))
}

/// A template's defaults from an image config: its user (`root` if none; `NAME:GROUP` and
/// numeric users are kept to the name part), workdir and env vars.
pub fn image_defaults(config: &ember_oci::ImageConfig, passwd: &str) -> Defaults {
    let user = config.user.as_deref().map(|u| u.split(':').next().unwrap_or_default().to_string());
    let user = match user.as_deref() {
        None | Some("") => "root".to_string(),
        Some(u) if u.bytes().all(|b| b.is_ascii_digit()) => passwd
            .lines()
            .find(|l| l.split(':').nth(2) == Some(u))
            .and_then(|l| l.split(':').next())
            .unwrap_or("root")
            .to_string(),
        Some(u) => u.to_string(),
    };
    let env = config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| crate::spec::is_env_name(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let workdir = config.working_dir.clone().filter(|w| w.starts_with('/'));
    Defaults { user, workdir, env }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_gives_the_defaults() {
        let config = ember_oci::ImageConfig {
            env: vec!["PATH=/usr/local/bin:/usr/bin".into(), "LANG=C.UTF-8".into(), "bad name=x".into()],
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
            cmd: vec![],
            entrypoint: vec![],
        };
        let d = image_defaults(&config, "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n");
        assert_eq!(d.user, "app");
        assert_eq!(d.workdir.as_deref(), Some("/app"));
        assert_eq!(d.env.get("PATH").map(String::as_str), Some("/usr/local/bin:/usr/bin"));
        assert_eq!(d.env.len(), 2);
        let bare =
            ember_oci::ImageConfig { env: vec![], working_dir: None, user: None, cmd: vec![], entrypoint: vec![] };
        assert_eq!(image_defaults(&bare, ""), Defaults { user: "root".into(), workdir: None, env: Default::default() });
    }
}
