//! The JSON documents of the OCI image spec and Docker's v2 schema 2 that a pull reads:
//! indexes / manifest lists, image manifests and the image config.

use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What a manifest request accepts, most preferred first.
pub const MANIFEST_ACCEPT: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
}

/// The compression a layer media type says, `None` for media types this crate cannot unpack.
pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
            Some(LayerCompression::None)
        }
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Some(LayerCompression::Gzip)
        }
        _ => None,
    }
}

/// A content descriptor: a blob or manifest by digest and size.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform of one entry of an index.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An OCI image index or a Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest or a Docker v2 schema 2 manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The image config blob (only the parts used here).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// The `config` object of the image config: how a container of the image is run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
}

/// The uncompressed digests of the layers.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// A manifest document as fetched: either an index or an image manifest.
#[derive(Debug, Clone)]
pub enum ManifestDoc {
    Index(Index),
    Image(Manifest),
}

/// Errors reading manifest documents.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The JSON is malformed or misses required fields.
    #[error("invalid {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The manifest's media type is not one this crate reads (e.g. Docker schema 1).
    #[error("unsupported manifest media type '{0}'")]
    UnsupportedMediaType(String),
}

impl ManifestDoc {
    /// Parses a manifest body; the media type comes from the Content-Type header or the
    /// document's `mediaType`, else from its shape.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<ManifestDoc, ManifestError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: Option<String>,
            #[serde(default)]
            schema_version: Option<u32>,
            #[serde(default)]
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe =
            serde_json::from_slice(body).map_err(|source| ManifestError::Json { what: "manifest", source })?;
        let header_type = content_type
            .map(|c| c.split(';').next().unwrap_or(c).trim())
            .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
        let media_type = probe.media_type.as_deref().or(header_type);
        let is_index = match media_type {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(ManifestError::UnsupportedMediaType(other.to_string())),
            None if probe.schema_version == Some(1) => {
                return Err(ManifestError::UnsupportedMediaType("docker schema 1".to_string()))
            }
            None => probe.manifests.is_some(),
        };
        if is_index {
            serde_json::from_slice(body)
                .map(ManifestDoc::Index)
                .map_err(|source| ManifestError::Json { what: "image index", source })
        } else {
            serde_json::from_slice(body)
                .map(ManifestDoc::Image)
                .map_err(|source| ManifestError::Json { what: "image manifest", source })
        }
    }
}

impl Index {
    /// The entry for `os`/`architecture` (attestations and other platforms skipped).
    pub fn select(&self, os: &str, architecture: &str) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == architecture)
                && matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | "")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn index_selects_linux_amd64() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":20,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":10,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
        );
        let ManifestDoc::Index(index) = ManifestDoc::parse(None, body.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(index.select("linux", "amd64").unwrap().digest, D2);
        assert!(index.select("linux", "riscv64").is_none());
    }

    #[test]
    fn docker_manifest_by_content_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"x","digest":"{D1}","size":5}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{D2}","size":7}}]}}"#
        );
        let doc = ManifestDoc::parse(Some(DOCKER_MANIFEST), body.as_bytes()).unwrap();
        let ManifestDoc::Image(m) = doc else { panic!("not a manifest") };
        assert_eq!(m.config.digest, D1);
        assert_eq!(m.layers.len(), 1);
        assert_eq!(layer_compression(&m.layers[0].media_type), Some(LayerCompression::Gzip));
    }

    #[test]
    fn rejects_schema1_and_unknown_types() {
        let err = ManifestDoc::parse(None, br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedMediaType(_)));
        let err = ManifestDoc::parse(Some("application/x-weird"), b"{}").unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedMediaType(_)));
        assert!(ManifestDoc::parse(None, b"not json").is_err());
        assert_eq!(layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"), None);
    }

    #[test]
    fn config_file_fields() {
        let body = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin","A=b"],
            "WorkingDir":"/app","User":"1000:1000","Cmd":["python3"],"Entrypoint":null},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let c: ConfigFile = serde_json::from_slice(body).unwrap();
        let cc = c.config.unwrap();
        assert_eq!(cc.env.unwrap(), vec!["PATH=/usr/bin", "A=b"]);
        assert_eq!(cc.working_dir.as_deref(), Some("/app"));
        assert_eq!(cc.user.as_deref(), Some("1000:1000"));
        assert_eq!(cc.cmd.unwrap(), vec!["python3"]);
        assert!(cc.entrypoint.is_none());
        assert_eq!(c.rootfs.unwrap().diff_ids, vec!["sha256:aa"]);
    }
}
