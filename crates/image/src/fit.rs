//! Sizing a template's ext4 image: the tree it holds plus a fixed amount of free space for the
//! guest ([`FREE_MIB`]), so the disk a sandbox can fill (and the host space its overlay can take)
//! is bounded by that, not by a size fixed for every template.

use std::path::Path;
use std::process::Command;

use crate::{io_err, ImageError};

/// Free space a sandbox's disk offers its unprivileged user (MiB), beyond what the template uses.
pub const FREE_MIB: u64 = 1024;
/// The largest image Ember makes (MiB): a tree needing more is refused.
pub const MAX_IMAGE_MIB: u64 = 10 * 1024;
/// One inode per this many bytes of the filesystem (ext4's default is 16 KiB; package trees and
/// `node_modules` are many small files).
pub const BYTES_PER_INODE: u64 = 8192;
const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

/// Bytes of 4 KiB blocks that `root`'s files, directories and symbolic links take.
pub fn tree_bytes(root: &Path) -> Result<u64, ImageError> {
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        total += BLOCK;
        let read = std::fs::read_dir(&dir).map_err(io_err(format!("read {}", dir.display())))?;
        for entry in read {
            let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
            let meta = entry.metadata().map_err(io_err(format!("stat {}", entry.path().display())))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len().div_ceil(BLOCK) * BLOCK;
            } else if meta.file_type().is_symlink() && meta.len() >= 60 {
                total += BLOCK;
            }
        }
    }
    Ok(total)
}

/// A first guess of the image size (MiB) for `tree_bytes` of tree plus [`FREE_MIB`] free:
/// the data with some slack for metadata, the journal, inode tables and ext4's 5% reserve.
pub fn first_guess_mib(tree_bytes: u64) -> u64 {
    let wanted = tree_bytes + tree_bytes / 16 + (FREE_MIB + 128) * MIB;
    // Inode tables (256 bytes per BYTES_PER_INODE) and the reserve come out of the total.
    let usable_share = 1.0 - 0.05 - 256.0 / BYTES_PER_INODE as f64;
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = (wanted as f64 / usable_share) as u64;
    total.div_ceil(MIB)
}

/// Free space of the ext4 image at `image` that an unprivileged user may write (MiB).
pub fn user_free_mib(image: &Path) -> Result<u64, ImageError> {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .map_err(io_err("run dumpe2fs (apt-get install e2fsprogs)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_user_free(&text).map(|b| b / MIB).ok_or_else(|| ImageError::Io {
        context: format!("read the free space of {}", image.display()),
        source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    })
}

/// Free bytes minus the reserved ones, from `dumpe2fs -h`'s text.
fn parse_user_free(text: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim_start_matches(':').trim().parse().ok())
    };
    let (free, reserved, size) = (field("Free blocks")?, field("Reserved block count")?, field("Block size")?);
    Some(free.saturating_sub(reserved) * size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_excludes_the_reserve() {
        let text = "Block count:              524288\nReserved block count:     26214\nFree blocks:              300000\nBlock size:               4096\n";
        assert_eq!(parse_user_free(text), Some((300000 - 26214) * 4096));
        assert_eq!(parse_user_free("Block size: 4096\n"), None);
    }

    #[test]
    fn a_guess_covers_the_tree_and_the_free_space() {
        let tree = 700 * MIB;
        let guess = first_guess_mib(tree);
        assert!(guess > 700 + FREE_MIB + 128 && guess < 2400, "{guess}");
    }

    #[test]
    fn a_tree_counts_whole_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 5000]).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), b"x").unwrap();
        // Two directories (root and d), 2 blocks for a, 1 for b.
        assert_eq!(tree_bytes(dir.path()).unwrap(), 5 * BLOCK);
    }
}
