//! Linux users as the agent sees them: `/etc/passwd` and `/etc/group` lookups, and the user
//! named by a request's `Authorization: Basic` header.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Largest account database file read (1 MiB); a guest's own files are hostile input too.
const MAX_DB_LEN: u64 = 1 << 20;

/// Errors resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such account in `/etc/passwd`.
    #[error("user '{0}' does not exist")]
    Unknown(String),
    /// The Authorization header is not `Basic base64(name:)`.
    #[error("invalid Authorization header: {0}")]
    BadHeader(&'static str),
    /// The account database could not be read.
    #[error("read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A resolved account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    /// Every group id the user belongs to, the primary one first.
    pub groups: Vec<u32>,
}

/// Where the account files live (the root of the guest, or a scratch root in tests).
#[derive(Debug, Clone)]
pub struct UserDb {
    root: PathBuf,
}

impl UserDb {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn read(&self, rel: &str) -> Result<String, UserError> {
        use std::io::Read;
        let path = self.root.join(rel);
        let io = |source| UserError::Io { path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(io)?;
        let mut text = String::new();
        file.take(MAX_DB_LEN).read_to_string(&mut text).map_err(io)?;
        Ok(text)
    }

    /// Looks a user up by name.
    pub fn lookup(&self, name: &str) -> Result<User, UserError> {
        let passwd = self.read("etc/passwd")?;
        let mut user = parse_passwd(&passwd, name).ok_or_else(|| UserError::Unknown(name.into()))?;
        if let Ok(group) = self.read("etc/group") {
            user.groups.extend(supplementary_groups(&group, name, user.gid));
        }
        Ok(user)
    }
}

impl UserDb {
    /// uid and gid to name maps, for describing files.
    pub fn names(&self) -> crate::fs::entry::Names {
        let ids = |text: String| {
            text.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((f.get(2)?.parse().ok()?, f[0].to_string()))
                })
                .collect()
        };
        crate::fs::entry::Names {
            users: self.read("etc/passwd").map(ids).unwrap_or_default(),
            groups: self.read("etc/group").map(ids).unwrap_or_default(),
        }
    }
}

fn parse_passwd(text: &str, name: &str) -> Option<User> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        let uid = f[2].parse().ok()?;
        let gid = f[3].parse().ok()?;
        Some(User {
            name: name.to_string(),
            uid,
            gid,
            home: Path::new(f[5]).to_path_buf(),
            shell: f[6].to_string(),
            groups: vec![gid],
        })
    })
}

fn supplementary_groups<'a>(text: &'a str, name: &'a str, primary: u32) -> impl Iterator<Item = u32> + 'a {
    text.lines().filter_map(move |line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || !f[3].split(',').any(|m| m == name) {
            return None;
        }
        f[2].parse().ok().filter(|gid| *gid != primary)
    })
}

/// The user named by an `Authorization: Basic base64("name:")` header value.
pub fn user_from_basic_auth(value: &str) -> Result<String, UserError> {
    let encoded = value.strip_prefix("Basic ").ok_or(UserError::BadHeader("not Basic"))?;
    let raw = STANDARD.decode(encoded.trim()).map_err(|_| UserError::BadHeader("bad base64"))?;
    let text = String::from_utf8(raw).map_err(|_| UserError::BadHeader("not UTF-8"))?;
    let name = text.split(':').next().unwrap_or_default();
    if name.is_empty() || name.len() > 64 {
        return Err(UserError::BadHeader("empty or overlong user name"));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\nbroken:x:notanumber\n";
    const GROUP: &str = "root:x:0:\nsudo:x:27:user\nuser:x:1000:\nusers:x:100:other,user\n";

    #[test]
    fn looks_up_users_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let db = UserDb::new(dir.path());
        let user = db.lookup("user").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.home, Path::new("/home/user"));
        assert_eq!(user.groups, [1000, 27, 100]);
        assert!(matches!(db.lookup("nobody"), Err(UserError::Unknown(_))));
        assert!(matches!(db.lookup("broken"), Err(UserError::Unknown(_))));
    }

    #[test]
    fn parses_basic_auth() {
        assert_eq!(user_from_basic_auth("Basic cm9vdDo=").unwrap(), "root");
        assert!(user_from_basic_auth("Bearer x").is_err());
        assert!(user_from_basic_auth("Basic !!!").is_err());
        assert!(user_from_basic_auth("Basic Og==").is_err());
    }
}
