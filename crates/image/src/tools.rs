//! Checks that the programs a build step needs are installed, and names the missing ones.

use std::path::{Path, PathBuf};

/// A program and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// Finds `program` on `PATH` or in the sbin directories (which root's PATH may lack).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Fails with every missing tool named, or succeeds when all are present.
pub fn require(tools: &[Tool]) -> Result<(), crate::ImageError> {
    let missing: Vec<Tool> = tools.iter().copied().filter(|t| find(t.program).is_none()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(crate::ImageError::MissingTools(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_missing_tools_and_their_packages() {
        assert!(require(&[tool("sh", "dash")]).is_ok());
        let err = require(&[tool("sh", "dash"), tool("no-such-tool-ember", "ember-pkg")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no-such-tool-ember (package ember-pkg)"), "{msg}");
        assert!(msg.contains("apt-get install ember-pkg"), "{msg}");
        assert!(!msg.contains("dash"), "{msg}");
    }
}
