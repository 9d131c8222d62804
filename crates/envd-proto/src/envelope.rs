//! Connect streaming envelopes: one flag byte, a 4-byte big-endian length, then the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::ConnectError;

/// Flag of the final frame of a stream; its payload is an [`EndStream`] JSON object.
pub const FLAG_END_STREAM: u8 = 0x02;
/// Flag bit for a compressed payload, which Ember never negotiates.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Largest payload accepted from a peer (16 MiB); a larger length is rejected before buffering.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Errors in a peer's envelope stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The frame announces a payload larger than the limit.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The frame is compressed, which was not negotiated.
    #[error("compressed frames are not supported")]
    Compressed,
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub flags: u8,
    pub payload: Bytes,
}

impl Frame {
    pub fn is_end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// The payload of an end-of-stream frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndStream {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectError>,
}

/// Encodes one frame. Payloads are Ember's own messages, far below [`MAX_FRAME_LEN`]; one that
/// is not could not be represented and is a bug.
pub fn encode(flags: u8, payload: &[u8]) -> Bytes {
    debug_assert!(payload.len() <= MAX_FRAME_LEN, "frame of {} bytes", payload.len());
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

/// Encodes a message as a data frame.
pub fn encode_message<T: Serialize>(msg: &T) -> Bytes {
    // Serializing these plain structs to a Vec cannot fail.
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    encode(0, &json)
}

/// Encodes the end-of-stream frame, carrying `error` if the stream failed.
pub fn encode_end(error: Option<ConnectError>) -> Bytes {
    encode_message_with_flags(FLAG_END_STREAM, &EndStream { error })
}

fn encode_message_with_flags<T: Serialize>(flags: u8, msg: &T) -> Bytes {
    let json = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    encode(flags, &json)
}

/// Incremental decoder: feed it bytes as they arrive, take whole frames out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the peer.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Takes the next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, EnvelopeError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flags = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(EnvelopeError::TooLarge(len));
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(EnvelopeError::Compressed);
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let payload = self.buf.split_to(len).freeze();
        Ok(Some(Frame { flags, payload }))
    }

    /// Checks that the peer's stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(EnvelopeError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;

    #[test]
    fn round_trip_split_anywhere() {
        let mut wire = encode(0, b"{\"a\":1}").to_vec();
        wire.extend_from_slice(&encode_end(Some(ConnectError::new(Code::NotFound, "gone"))));
        for split in 0..wire.len() {
            let mut d = Decoder::new();
            d.push(&wire[..split]);
            let mut frames = Vec::new();
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            d.push(&wire[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
            d.finish().unwrap();
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(&frames[0].payload[..], b"{\"a\":1}");
            assert!(frames[1].is_end_stream());
            let end: EndStream = serde_json::from_slice(&frames[1].payload).unwrap();
            assert_eq!(end.error.unwrap().code, Code::NotFound);
        }
    }

    #[test]
    fn oversized_and_compressed_frames_are_rejected() {
        let mut d = Decoder::new();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_frame(), Err(EnvelopeError::TooLarge(0xffff_ffff)));
        let mut d = Decoder::new();
        d.push(&encode(FLAG_COMPRESSED, b"x"));
        assert_eq!(d.next_frame(), Err(EnvelopeError::Compressed));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut d = Decoder::new();
        d.push(&encode(0, b"hello")[..7]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(EnvelopeError::Truncated(7)));
    }
}
