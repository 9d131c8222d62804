//! Image references: `python:3.12-slim`, `ghcr.io/org/img:tag`,
//! `registry:5000/ns/img@sha256:...`, normalised the way Docker does it.

use std::fmt;

/// The registry a reference without a registry part points at (Docker Hub).
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's registry API is served from.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Errors parsing an image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// The reference is empty.
    #[error("empty image reference")]
    Empty,
    /// The repository path is not valid (lowercase letters, digits, separators).
    #[error("invalid repository name '{0}' in image reference")]
    InvalidRepository(String),
    /// The tag is not valid.
    #[error("invalid tag '{0}' in image reference")]
    InvalidTag(String),
    /// The digest is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid or unsupported digest '{0}' (only sha256 is supported)")]
    InvalidDigest(String),
    /// The registry host is not valid.
    #[error("invalid registry '{0}' in image reference")]
    InvalidRegistry(String),
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`docker.io` for Docker Hub), with the port if any.
    pub registry: String,
    /// The repository path, `library/python` for Docker Hub's official images.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:<hex>`), if pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]`.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest)?;
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'; a ':' before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                validate_tag(tag)?;
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                validate_registry(first)?;
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository)?;
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host (and port) the registry API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The registry host without its port.
    pub fn host_name(&self) -> &str {
        host_without_port(&self.registry)
    }

    /// What goes after `/manifests/`: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `host:port` → `host`, `[::1]:5000` → `::1`.
pub(crate) fn host_without_port(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Checks `sha256:<64 lowercase hex>`; digests are used as file names, so this is strict.
pub(crate) fn validate_digest(digest: &str) -> Result<(), ReferenceError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(ReferenceError::InvalidDigest(digest.to_string())),
    }
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag(tag.to_string()))
    }
}

fn validate_registry(registry: &str) -> Result<(), ReferenceError> {
    // host[:port]: a name or a bracketed IPv6 address, then digits.
    let (host, port) = match registry.strip_prefix('[') {
        Some(rest) => rest.split_once(']').unwrap_or(("", "")),
        None => match registry.find(':') {
            Some(i) => (&registry[..i], &registry[i..]),
            None => (registry, ""),
        },
    };
    let host_ok =
        !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    let port_ok = match port.strip_prefix(':') {
        Some(digits) => !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    };
    let ok = host_ok && port_ok;
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidRegistry(registry.to_string()))
    }
}

/// Each path component: `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn validate_repository(repository: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::InvalidRepository(repository.to_string());
    if repository.is_empty() || repository.len() > 255 {
        return Err(bad());
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(bad());
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            // A separator: '.', '_', '__' or one or more '-', followed by an alphanumeric.
            let sep_len = match b {
                b'.' => 1,
                b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
                b'_' => 1,
                b'-' => bytes[i..].iter().take_while(|&&c| c == b'-').count(),
                _ => return Err(bad()),
            };
            i += sep_len;
            if !bytes.get(i).is_some_and(|&c| alnum(c)) {
                return Err(bad());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_official_image() {
        let r = parse("python:3.12-slim");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/python");
        assert_eq!(r.tag.as_deref(), Some("3.12-slim"));
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_reference(), "3.12-slim");
        assert_eq!(r.to_string(), "docker.io/library/python:3.12-slim");
    }

    #[test]
    fn default_tag_is_latest() {
        let r = parse("ubuntu");
        assert_eq!(r.repository, "library/ubuntu");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = parse("docker.io/library/ubuntu");
        assert_eq!(r.repository, "library/ubuntu");
        assert_eq!(r.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn docker_hub_user_image() {
        let r = parse("someuser/tool:v1");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "someuser/tool");
        let r = parse("index.docker.io/someuser/tool");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
    }

    #[test]
    fn registry_with_port_and_digest() {
        let r = parse(&format!("registry:5000/ns/img@{D}"));
        assert_eq!(r.registry, "registry:5000");
        assert_eq!(r.api_host(), "registry:5000");
        assert_eq!(r.host_name(), "registry");
        assert_eq!(r.repository, "ns/img");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_reference(), D);
    }

    #[test]
    fn tag_and_digest_pull_by_digest() {
        let r = parse(&format!("127.0.0.1:5000/test/img:v2@{D}"));
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.host_name(), "127.0.0.1");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.manifest_reference(), D);
    }

    #[test]
    fn localhost_and_dotted_hosts_are_registries() {
        assert_eq!(parse("localhost/img").registry, "localhost");
        assert_eq!(parse("localhost/img").repository, "img");
        assert_eq!(parse("ghcr.io/org/a/b:1").repository, "org/a/b");
        // Without a dot, colon or "localhost" the first component is a Docker Hub namespace.
        assert_eq!(parse("myhost/img").registry, "docker.io");
        assert_eq!(parse("myhost/img").repository, "myhost/img");
    }

    #[test]
    fn ipv6_registry() {
        let r = parse("[::1]:5000/img:t");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.host_name(), "::1");
        assert_eq!(r.tag.as_deref(), Some("t"));
    }

    #[test]
    fn rejects_invalid() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(Reference::parse("Python:3"), Err(ReferenceError::InvalidRepository(_))));
        assert!(matches!(Reference::parse("img:bad/tag:x"), Err(ReferenceError::InvalidRegistry(_))));
        assert!(matches!(Reference::parse("reg.io:/img"), Err(ReferenceError::InvalidRegistry(_))));
        assert!(matches!(Reference::parse("img:-x"), Err(ReferenceError::InvalidTag(_))));
        assert!(matches!(Reference::parse("img@sha256:abc"), Err(ReferenceError::InvalidDigest(_))));
        assert!(matches!(Reference::parse("img@md5:0123"), Err(ReferenceError::InvalidDigest(_))));
        assert!(matches!(Reference::parse("reg.io/../etc:x"), Err(ReferenceError::InvalidRepository(_))));
        assert!(matches!(Reference::parse("a//b"), Err(ReferenceError::InvalidRepository(_))));
        assert!(matches!(Reference::parse("ns/img-"), Err(ReferenceError::InvalidRepository(_))));
    }

    #[test]
    fn repository_separators() {
        assert!(validate_repository("a__b/c.d/e---f/g_h").is_ok());
        assert!(validate_repository("a___b").is_err());
        assert!(validate_repository("a..b").is_err());
    }
}
