//! The Connect envelope decoder (`envd-proto`), fed by the agent with request bodies and by the
//! host with the guest's response bodies.

#![allow(clippy::unwrap_used)] // test harness: a failed step is a failed test

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ember_envd_proto::envelope::{encode, FLAG_COMPRESSED};
use ember_envd_proto::stream::{FrameReader, StreamError};
use ember_envd_proto::{Decoder, EnvelopeError, Frame, MAX_FRAME_LEN};
use ember_fuzz::{chunk, config, cuts};
use futures_util::FutureExt;
use proptest::prelude::*;

/// Everything a reader gets out of `chunks`: the frames, then the first error or the verdict of
/// `finish`. Frames are taken after every chunk, as the agent and the host do.
fn drive(chunks: &[&[u8]]) -> (Vec<Frame>, Result<(), EnvelopeError>) {
    let mut d = Decoder::new();
    let mut frames = Vec::new();
    for c in chunks {
        d.push(c);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Err(e)),
            }
        }
    }
    let end = d.finish();
    (frames, end)
}

/// A body that yields the given chunks, then ends; it never blocks.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// What [`FrameReader`] (the agent's and the host's stream reader) makes of `chunks` as an HTTP
/// body, in the shape of [`drive`]'s answer.
fn read_body(chunks: &[&[u8]]) -> (Vec<Frame>, Result<(), EnvelopeError>) {
    let mut reader = FrameReader::new(Chunks(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect()));
    let mut frames = Vec::new();
    loop {
        match reader.next_frame().now_or_never() {
            Some(Ok(Some(f))) => frames.push(f),
            Some(Ok(None)) => return (frames, Ok(())),
            Some(Err(StreamError::Envelope(e))) => return (frames, Err(e)),
            // Neither happens with this body; make the property fail if one does.
            Some(Err(StreamError::Body(_))) | None => return (frames, Err(EnvelopeError::Truncated(usize::MAX))),
        }
    }
}

/// A header announcing `len` bytes.
fn header(flags: u8, len: u32) -> [u8; 5] {
    let l = len.to_be_bytes();
    [flags, l[0], l[1], l[2], l[3]]
}

/// Frames as a peer might send them (the compressed bit is never negotiated).
fn frames() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    prop::collection::vec(
        (any::<u8>().prop_map(|f| f & !FLAG_COMPRESSED), prop::collection::vec(any::<u8>(), 0..64)),
        0..6,
    )
}

/// Arbitrary bytes, often starting with small plausible headers so that frames are decoded.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec((any::<u8>(), 0u32..40, prop::collection::vec(any::<u8>(), 0..48)), 0..6).prop_map(
            |parts| {
                parts.into_iter().flat_map(|(f, len, body)| header(f, len).into_iter().chain(body)).collect::<Vec<u8>>()
            }
        ),
    ]
}

proptest! {
    #![proptest_config(config(1))]

    /// Arbitrary bytes in arbitrary chunkings never panic, and the chunking does not change what
    /// is decoded.
    #[test]
    fn chunking_does_not_matter(data in wire(), cuts in cuts()) {
        let whole = drive(&[&data]);
        let chunked = drive(&chunk(&data, &cuts));
        prop_assert_eq!(&chunked, &whole);
        // One byte at a time too.
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        prop_assert_eq!(drive(&bytes), whole);
    }

    /// The HTTP body reader decodes exactly what the decoder does, whatever the chunking.
    #[test]
    fn frame_reader_agrees_with_the_decoder(data in wire(), cuts in cuts()) {
        prop_assert_eq!(read_body(&chunk(&data, &cuts)), drive(&[&data]));
    }

    /// Encoded frames decode to themselves, whatever the chunking.
    #[test]
    fn encode_then_decode_round_trips(sent in frames(), cuts in cuts()) {
        let wire: Vec<u8> = sent.iter().flat_map(|(f, p)| encode(*f, p).to_vec()).collect();
        let (got, end) = drive(&chunk(&wire, &cuts));
        prop_assert_eq!(end, Ok(()));
        let got: Vec<(u8, Vec<u8>)> = got.into_iter().map(|f| (f.flags, f.payload.to_vec())).collect();
        prop_assert_eq!(got, sent);
    }

    /// A frame announcing more than the limit is refused as soon as its header is in, after any
    /// frames before it, without waiting for (or buffering) its payload.
    #[test]
    fn oversized_frames_are_refused_at_the_header(
        before in frames(),
        flags in any::<u8>(),
        len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX,
    ) {
        let mut d = Decoder::new();
        for (f, p) in &before {
            d.push(&encode(*f, p));
        }
        for _ in &before {
            prop_assert!(d.next_frame()?.is_some());
        }
        d.push(&header(flags, len));
        prop_assert_eq!(d.next_frame(), Err(EnvelopeError::TooLarge(len as usize)));
        // The error sticks: more bytes do not turn it into a frame.
        d.push(&[0; 64]);
        prop_assert_eq!(d.next_frame(), Err(EnvelopeError::TooLarge(len as usize)));
    }

    /// A stream cut inside a frame is reported as truncated, with the bytes left over.
    #[test]
    fn truncation_is_reported(sent in frames(), extra in (any::<u8>(), prop::collection::vec(any::<u8>(), 1..64)), cut in any::<usize>()) {
        let mut wire: Vec<u8> = sent.iter().flat_map(|(f, p)| encode(*f, p).to_vec()).collect();
        let complete = wire.len();
        let last = encode(extra.0 & !FLAG_COMPRESSED, &extra.1);
        let keep = 1 + cut % (last.len() - 1);
        wire.extend_from_slice(&last[..keep]);
        let (got, end) = drive(&[&wire]);
        prop_assert_eq!(got.len(), sent.len());
        prop_assert_eq!(end, Err(EnvelopeError::Truncated(wire.len() - complete)));
    }

    /// Compressed frames (never negotiated) are refused once their header is in.
    #[test]
    fn compressed_frames_are_refused(flags in any::<u8>(), len in 0..=MAX_FRAME_LEN as u32) {
        let mut d = Decoder::new();
        d.push(&header(flags | FLAG_COMPRESSED, len));
        prop_assert_eq!(d.next_frame(), Err(EnvelopeError::Compressed));
    }
}

/// The largest frame allowed decodes; one byte more is refused.
#[test]
fn the_limit_is_inclusive() {
    let payload = vec![b'x'; MAX_FRAME_LEN];
    let (got, end) = drive(&[&encode(0, &payload)]);
    assert_eq!((got.len(), end), (1, Ok(())));
    assert_eq!(got[0].payload.len(), MAX_FRAME_LEN);
    let mut d = Decoder::new();
    d.push(&header(0, MAX_FRAME_LEN as u32 + 1));
    assert_eq!(d.next_frame(), Err(EnvelopeError::TooLarge(MAX_FRAME_LEN + 1)));
}
