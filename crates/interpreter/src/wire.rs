//! Jupyter's messaging wire format: multipart messages `[identities…, "<IDS|MSG>", signature,
//! header, parent_header, metadata, content, buffers…]`, signed with HMAC-SHA256 over the four
//! JSON frames (hex), as in the Jupyter client documentation ("The Wire Protocol").

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

/// The frame that separates routing identities from the message.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";
/// Jupyter messaging protocol version sent in headers.
pub const PROTOCOL_VERSION: &str = "5.3";

/// Why a received message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// no `<IDS|MSG>` delimiter, or fewer than five frames after it
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// bad HMAC signature
    #[error("bad signature")]
    BadSignature,
    /// a JSON frame does not parse
    #[error("bad JSON in the {frame} frame: {source}")]
    Json { frame: &'static str, source: serde_json::Error },
}

/// The session's signing key.
#[derive(Clone)]
pub struct Key {
    mac: Hmac<Sha256>,
}

impl Key {
    /// A key from its bytes (the connection file holds them as a string).
    pub fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length: this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        Key { mac }
    }

    fn sign(&self, frames: &[&[u8]; 4]) -> String {
        let mut mac = self.mac.clone();
        for f in frames {
            mac.update(f);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify(&self, frames: &[&[u8]; 4], signature: &[u8]) -> bool {
        let Ok(sig) = hex::decode(signature) else { return false };
        let mut mac = self.mac.clone();
        for f in frames {
            mac.update(f);
        }
        // Constant-time comparison.
        mac.verify_slice(&sig).is_ok()
    }
}

/// A message header (fields Ember reads; unknown ones are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub msg_id: String,
    pub session: String,
    #[serde(default)]
    pub username: String,
    /// ISO 8601; kernels always send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    pub msg_type: String,
    #[serde(default)]
    pub version: String,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: Header,
    /// The `msg_id` of the parent header, if any (`{}` has none).
    pub parent_msg_id: Option<String>,
    pub content: Map<String, Value>,
}

impl Message {
    /// A string field of the content.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.content.get(name).and_then(Value::as_str)
    }
}

#[derive(Deserialize)]
struct ParentHeader {
    #[serde(default)]
    msg_id: Option<String>,
}

/// A new request from this client: a fresh random id in `session`.
pub fn request(session: &str, msg_type: &str, content: Value) -> (Header, Value) {
    let header = Header {
        msg_id: random_hex(16),
        session: session.to_owned(),
        username: "ember".to_owned(),
        date: Some(now_iso()),
        msg_type: msg_type.to_owned(),
        version: PROTOCOL_VERSION.to_owned(),
    };
    (header, content)
}

/// Encodes a request (no routing identities: DEALER sockets add none) with its signature.
pub fn encode(key: &Key, header: &Header, content: &Value) -> Vec<Bytes> {
    // Serialising a struct of strings and a `Value` cannot fail.
    let header = serde_json::to_vec(header).unwrap_or_default();
    let parent = b"{}".to_vec();
    let metadata = b"{}".to_vec();
    let content = serde_json::to_vec(content).unwrap_or_default();
    let signature = key.sign(&[&header, &parent, &metadata, &content]);
    vec![
        Bytes::from_static(DELIMITER),
        Bytes::from(signature),
        Bytes::from(header),
        Bytes::from(parent),
        Bytes::from(metadata),
        Bytes::from(content),
    ]
}

/// Decodes and verifies a received multipart message.
pub fn decode(key: &Key, frames: &[Bytes]) -> Result<Message, WireError> {
    let delim =
        frames.iter().position(|f| f.as_ref() == DELIMITER).ok_or(WireError::Malformed("no <IDS|MSG> delimiter"))?;
    let rest = &frames[delim + 1..];
    let [signature, header, parent, metadata, content, ..] = rest else {
        return Err(WireError::Malformed("fewer than five frames after the delimiter"));
    };
    if !key.verify(&[header, parent, metadata, content], signature) {
        return Err(WireError::BadSignature);
    }
    let header: Header =
        serde_json::from_slice(header).map_err(|source| WireError::Json { frame: "header", source })?;
    let parent: ParentHeader =
        serde_json::from_slice(parent).map_err(|source| WireError::Json { frame: "parent_header", source })?;
    let content: Map<String, Value> =
        serde_json::from_slice(content).map_err(|source| WireError::Json { frame: "content", source })?;
    Ok(Message { header, parent_msg_id: parent.msg_id, content })
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::Rng::fill(&mut rand::thread_rng(), bytes.as_mut_slice());
    hex::encode(bytes)
}

/// The current UTC time as ISO 8601 with microseconds (`2026-01-02T03:04:05.123456Z`).
pub fn now_iso() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    iso_from_unix(now.as_secs(), now.subsec_micros())
}

fn iso_from_unix(secs: u64, micros: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reply(key: &Key, ids: &[&str], parent: &str, msg_type: &str, content: Value) -> Vec<Bytes> {
        let header = json!({"msg_id":"k1","session":"ks","username":"u","date":"2026-01-01T00:00:00.000001Z",
            "msg_type":msg_type,"version":"5.3"})
        .to_string();
        let parent = json!({"msg_id": parent, "msg_type": "execute_request"}).to_string();
        let content = content.to_string();
        let sig = key.sign(&[header.as_bytes(), b"{}", b"{}", content.as_bytes()]);
        // Signed over the real parent, so recompute with it.
        let sig2 = key.sign(&[header.as_bytes(), parent.as_bytes(), b"{}", content.as_bytes()]);
        assert_ne!(sig, sig2);
        let mut frames: Vec<Bytes> = ids.iter().map(|i| Bytes::from(i.to_string())).collect();
        frames.extend([
            Bytes::from_static(DELIMITER),
            Bytes::from(sig2),
            Bytes::from(header),
            Bytes::from(parent),
            Bytes::from_static(b"{}"),
            Bytes::from(content),
        ]);
        frames
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let key = Key::new(b"secret");
        let (header, content) = request("sess", "execute_request", json!({"code": "1+1"}));
        let frames = encode(&key, &header, &content);
        assert_eq!(frames[0].as_ref(), DELIMITER);
        let msg = decode(&key, &frames).unwrap();
        assert_eq!(msg.header, header);
        assert_eq!(msg.parent_msg_id, None);
        assert_eq!(msg.str_field("code"), Some("1+1"));
    }

    #[test]
    fn signature_is_hmac_sha256_hex_of_the_four_frames() {
        // Reference value: python3 -c "import hmac,hashlib;
        //   print(hmac.new(b'key', b'{\"a\":1}{}{}{}', hashlib.sha256).hexdigest())"
        let key = Key::new(b"key");
        let sig = key.sign(&[b"{\"a\":1}", b"{}", b"{}", b"{}"]);
        assert_eq!(sig, "f1128388193e4dd1aa760827bd756a1b40b627676b5efe22c0e8297919bfa218");
        assert!(key.verify(&[b"{\"a\":1}", b"{}", b"{}", b"{}"], sig.as_bytes()));
    }

    #[test]
    fn identities_are_skipped_and_parent_read() {
        let key = Key::new(b"k");
        let frames = reply(&key, &["id1", "id2"], "p1", "stream", json!({"name":"stdout","text":"hi"}));
        let msg = decode(&key, &frames).unwrap();
        assert_eq!(msg.parent_msg_id.as_deref(), Some("p1"));
        assert_eq!(msg.header.msg_type, "stream");
        assert_eq!(msg.header.date.as_deref(), Some("2026-01-01T00:00:00.000001Z"));
    }

    #[test]
    fn bad_messages_are_refused() {
        let key = Key::new(b"k");
        let good = reply(&key, &[], "p", "status", json!({"execution_state":"idle"}));
        // Wrong key.
        assert!(matches!(decode(&Key::new(b"other"), &good), Err(WireError::BadSignature)));
        // Tampered content.
        let mut bad = good.clone();
        bad[5] = Bytes::from_static(b"{\"execution_state\":\"busy\"}");
        assert!(matches!(decode(&key, &bad), Err(WireError::BadSignature)));
        // Not hex.
        let mut bad = good.clone();
        bad[1] = Bytes::from_static(b"zz");
        assert!(matches!(decode(&key, &bad), Err(WireError::BadSignature)));
        // Truncated, no delimiter.
        assert!(matches!(decode(&key, &good[..4]), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&key, &good[1..]), Err(WireError::Malformed(_))));
        assert!(decode(&key, &[]).is_err());
        // Signed but not JSON.
        let sig = key.sign(&[b"nope", b"{}", b"{}", b"{}"]);
        let frames: Vec<Bytes> = vec![
            Bytes::from_static(DELIMITER),
            Bytes::from(sig),
            Bytes::from_static(b"nope"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
        ];
        assert!(matches!(decode(&key, &frames), Err(WireError::Json { frame: "header", .. })));
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_from_unix(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso_from_unix(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(iso_from_unix(1_798_761_599, 999_999), "2026-12-31T23:59:59.999999Z");
    }
}
