//! The kernels' account, read from `/etc/passwd` and `/etc/group` directly (the binary is
//! statically linked: no NSS).

use std::path::{Path, PathBuf};

/// Why the account cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// the account database is unreadable
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// no such user
    #[error("no user {0:?} in /etc/passwd")]
    Unknown(String),
    /// uid 0: kernels never run as root
    #[error("user {0:?} is root (uid 0): kernels never run as root")]
    Root(String),
}

/// A user the kernels run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// Supplementary groups (from `/etc/group`), the primary one included.
    pub groups: Vec<u32>,
}

impl Account {
    /// Looks `name` up under `root` (`/` in the guest).
    pub fn lookup(root: &Path, name: &str) -> Result<Account, UserError> {
        let read = |file: &str| {
            let path = root.join(file);
            std::fs::read_to_string(&path).map_err(|source| UserError::Read { path, source })
        };
        let passwd = read("etc/passwd")?;
        let mut account = passwd
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(':').collect();
                match f.as_slice() {
                    [n, _, uid, gid, _, home, ..] if *n == name => Some(Account {
                        name: name.to_owned(),
                        uid: uid.parse().ok()?,
                        gid: gid.parse().ok()?,
                        home: PathBuf::from(home),
                        groups: Vec::new(),
                    }),
                    _ => None,
                }
            })
            .next()
            .ok_or_else(|| UserError::Unknown(name.to_owned()))?;
        if account.uid == 0 {
            return Err(UserError::Root(name.to_owned()));
        }
        account.groups.push(account.gid);
        // A missing /etc/group leaves the primary group only.
        for line in read("etc/group").unwrap_or_default().lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let [_, _, gid, members] = f.as_slice() {
                if members.split(',').any(|m| m == name) {
                    if let Ok(gid) = gid.parse::<u32>() {
                        if gid != 0 && !account.groups.contains(&gid) {
                            account.groups.push(gid);
                        }
                    }
                }
            }
        }
        Ok(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_user_and_groups() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nbad line\nuser:x:1000:1000::/home/user:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(t.path().join("etc/group"), "root:x:0:user\nuser:x:1000:\nsudo:x:27:a,user\nx:y\n").unwrap();
        let a = Account::lookup(t.path(), "user").unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_path()), (1000, 1000, Path::new("/home/user")));
        assert_eq!(a.groups, vec![1000, 27]);
        assert!(matches!(Account::lookup(t.path(), "root"), Err(UserError::Root(_))));
        assert!(matches!(Account::lookup(t.path(), "nobody"), Err(UserError::Unknown(_))));
    }
}
