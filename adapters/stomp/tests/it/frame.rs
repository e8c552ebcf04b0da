//! Round trips of the STOMP frame codec under proptest, in every version, with streams
//! split at random places.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use adapter_stomp::frame::{encode, Command, Decoder, Frame, FrameLimits, Version};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

const LIMITS: FrameLimits = FrameLimits {
    max_headers: 64,
    max_headers_length: 4096,
    max_body_length: 4096,
};

fn command() -> impl Strategy<Value = Command> {
    proptest::sample::select(Command::ALL.to_vec())
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        Just(Version::V1_0),
        Just(Version::V1_1),
        Just(Version::V1_2)
    ]
}

/// Header text any version can carry: 1.0 and the connection frames have no escapes.
fn plain_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._/+#$-]{0,24}"
}

/// Header text with what 1.2 escapes: line breaks, colons and backslashes.
fn escaped_text() -> impl Strategy<Value = String> {
    "[a-z\\\\:\n\r é]{0,24}"
}

fn frame(escaping: bool) -> impl Strategy<Value = Frame> {
    let text = if escaping {
        escaped_text().boxed()
    } else {
        plain_text().boxed()
    };
    (
        command(),
        proptest::collection::vec(("[a-z][a-z-]{0,11}", text), 0..8),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(command, mut headers, body)| {
            // content-length first, so it is the one that counts.
            headers.retain(|(name, _)| name != "content-length");
            headers.insert(0, ("content-length".to_owned(), body.len().to_string()));
            Frame {
                command,
                headers,
                body: Bytes::from(body),
            }
        })
}

fn decode_stream(bytes: &[u8], version: Version, cuts: &[usize]) -> Vec<Frame> {
    let mut decoder = Decoder::new(LIMITS);
    decoder.set_version(version);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut from = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.push(bytes.len());
    for to in points {
        if to < from {
            continue;
        }
        buf.extend_from_slice(&bytes[from..to]);
        from = to;
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    frames
}

proptest! {
    #[test]
    fn frames_round_trip_in_1_2_with_escapes(
        frames in proptest::collection::vec(frame(true), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        heartbeats in proptest::collection::vec(prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..])], 0..3),
    ) {
        // Connection frames are never escaped: they carry only plain text here.
        let frames: Vec<Frame> = frames
            .into_iter()
            .filter(|f| !matches!(f.command, Command::Connect | Command::Stomp | Command::Connected))
            .collect();
        let mut wire = BytesMut::new();
        for frame in &frames {
            for beat in &heartbeats {
                wire.extend_from_slice(beat);
            }
            encode(frame, Version::V1_2, &mut wire);
        }
        prop_assert_eq!(decode_stream(&wire, Version::V1_2, &cuts), frames);
    }

    #[test]
    fn plain_frames_round_trip_in_every_version(
        frames in proptest::collection::vec(frame(false), 1..4),
        version in version(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        for frame in &frames {
            encode(frame, version, &mut wire);
        }
        prop_assert_eq!(decode_stream(&wire, version, &cuts), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_respect_limits(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        version in version(),
    ) {
        let limits = FrameLimits { max_headers: 3, max_headers_length: 40, max_body_length: 50 };
        let mut decoder = Decoder::new(limits);
        decoder.set_version(version);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            prop_assert!(frame.headers.len() <= 3);
            prop_assert!(frame.body.len() <= 50);
        }
    }
}
