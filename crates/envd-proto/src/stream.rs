//! Reading Connect envelopes from a streamed HTTP body, one frame at a time, with the decoder's
//! bounds: the one reader both the agent (client-stream requests) and the host's agent client
//! (server-stream answers) use.

use bytes::Buf;
use http_body_util::BodyExt;

use crate::envelope::{Decoder, EnvelopeError, Frame};

/// Errors reading frames from a body.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The body itself failed (the peer went away, a transport error).
    #[error("body: {0}")]
    Body(String),
}

/// Frames read from an HTTP body.
pub struct FrameReader<B> {
    body: B,
    decoder: Decoder,
}

impl<B> FrameReader<B>
where
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> Self {
        Self { body, decoder: Decoder::new() }
    }

    /// The next frame (an end-of-stream frame included, as it comes); `None` when the body ends
    /// cleanly between frames. A body that ends inside a frame is an error.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, StreamError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let n = chunk.len();
                            self.decoder.push(chunk);
                            data.advance(n);
                        }
                    }
                }
                Some(Err(e)) => return Err(StreamError::Body(e.to_string())),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::encode_message;
    use bytes::Bytes;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body that yields the given chunks, then ends.
    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        // A body that never pends needs no runtime: poll until ready.
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn frames_split_across_chunks_are_read_whole() {
        let mut wire = encode_message(&serde_json::json!({"a": 1})).to_vec();
        wire.extend_from_slice(&encode_message(&serde_json::json!({"b": 2})));
        let chunks: VecDeque<Bytes> = wire.chunks(3).map(Bytes::copy_from_slice).collect();
        let mut reader = FrameReader::new(Chunks(chunks));
        let first = run(reader.next_frame()).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&first.payload).unwrap()["a"], 1);
        let second = run(reader.next_frame()).unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&second.payload).unwrap()["b"], 2);
        assert!(run(reader.next_frame()).unwrap().is_none());
    }

    #[test]
    fn a_body_cut_inside_a_frame_is_an_error() {
        let wire = encode_message(&serde_json::json!({"a": 1}));
        let cut = Bytes::copy_from_slice(&wire[..wire.len() - 1]);
        let mut reader = FrameReader::new(Chunks([cut].into()));
        assert!(matches!(run(reader.next_frame()), Err(StreamError::Envelope(_))));
    }
}
