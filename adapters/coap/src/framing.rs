//! The message framing of CoAP over reliable transports (RFC 8323): no type and no message
//! id; over TCP a length in the first byte's upper nibble (with 1, 2 or 4 bytes more
//! beyond 12), over WebSocket none, since the WebSocket message is the CoAP message.
//!
//! Sans-io and resumable: `decode` takes one message off the front of the input once it
//! is whole (`Ok(None)` until then) and refuses one larger than the limit as soon as its
//! header tells. The options and payload are left to coap-lite (`adapter_kit::coap`).
//!
//! The kit's WebSocket layer hands over each WebSocket message as a record (its length in
//! 4 bytes, then its bytes) and sends each record written as one message, so both framings
//! read from and write to a byte stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// How messages are delimited on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 8323 3.2: Len / TKL, Extended Length, Code, Token, Options and Payload.
    Tcp,
    /// RFC 8323 4.2: the same with Len 0 and no Extended Length, one per WebSocket message
    /// (as the kit's WebSocket layer records it).
    WebSocket,
}

/// One message as the framing carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub code: u8,
    pub token: Bytes,
    /// The options and payload, encoded as in a datagram.
    pub body: Bytes,
}

/// Why the input cannot be read as messages; the connection is aborted (RFC 8323 5.6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("token length {0} (RFC 8323 3.2: 9 to 15 are reserved)")]
    TokenLength(u8),
    #[error("a message of {len} bytes, above our Max-Message-Size of {max} (RFC 8323 5.3.1)")]
    TooLarge { len: u64, max: usize },
    #[error("a WebSocket message with Len {0} (RFC 8323 4.2: it is always 0)")]
    WebSocketLength(u8),
    #[error("a WebSocket message shorter than its code and token")]
    Truncated,
}

/// The largest token (RFC 8323 3.2, as RFC 7252).
const MAX_TOKEN: u8 = 8;
/// The kit's WebSocket record header: the message length, big-endian.
const RECORD_HEADER: usize = 4;

/// Takes the first whole message off `input`; `Ok(None)` when more bytes are needed.
/// `max_message_size` bounds the whole message, header included (RFC 8323 5.3.1).
pub fn decode(
    framing: Framing,
    input: &mut BytesMut,
    max_message_size: usize,
) -> Result<Option<Frame>, FrameError> {
    match framing {
        Framing::Tcp => decode_tcp(input, max_message_size),
        Framing::WebSocket => decode_websocket(input, max_message_size),
    }
}

fn decode_tcp(input: &mut BytesMut, max_message_size: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    let token_length = first & 0x0F;
    if token_length > MAX_TOKEN {
        return Err(FrameError::TokenLength(token_length));
    }
    let (extended, offset) = match first >> 4 {
        nibble @ 0..=12 => (0, u64::from(nibble)),
        13 => (1, 13),
        14 => (2, 269),
        _ => (4, 65_805),
    };
    // Len / TKL, Extended Length, then the code.
    let header = 1 + extended + 1;
    let Some(extended_bytes) = input.get(1..1 + extended) else {
        return Ok(None);
    };
    let length = offset
        + extended_bytes
            .iter()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    let total = header as u64 + u64::from(token_length) + length;
    if total > max_message_size as u64 {
        return Err(FrameError::TooLarge {
            len: total,
            max: max_message_size,
        });
    }
    // Bounded by max_message_size, so it fits in usize.
    let total = total as usize;
    // No room is reserved for the announced length: a header alone must not cost memory.
    if input.len() < total {
        return Ok(None);
    }
    let mut message = input.split_to(total).freeze();
    message.advance(1 + extended);
    let code = message.get_u8();
    let token = message.split_to(usize::from(token_length));
    Ok(Some(Frame {
        code,
        token,
        body: message,
    }))
}

fn decode_websocket(
    input: &mut BytesMut,
    max_message_size: usize,
) -> Result<Option<Frame>, FrameError> {
    let Some(header) = input.get(..RECORD_HEADER) else {
        return Ok(None);
    };
    let mut length = [0u8; RECORD_HEADER];
    length.copy_from_slice(header);
    let length = u32::from_be_bytes(length) as usize;
    if length > max_message_size {
        return Err(FrameError::TooLarge {
            len: length as u64,
            max: max_message_size,
        });
    }
    if input.len() < RECORD_HEADER + length {
        return Ok(None);
    }
    let mut message = input.split_to(RECORD_HEADER + length).freeze();
    message.advance(RECORD_HEADER);
    let [first, code, ..] = *message.as_ref() else {
        return Err(FrameError::Truncated);
    };
    if first >> 4 != 0 {
        return Err(FrameError::WebSocketLength(first >> 4));
    }
    let token_length = first & 0x0F;
    if token_length > MAX_TOKEN {
        return Err(FrameError::TokenLength(token_length));
    }
    message.advance(2);
    if message.len() < usize::from(token_length) {
        return Err(FrameError::Truncated);
    }
    let token = message.split_to(usize::from(token_length));
    Ok(Some(Frame {
        code,
        token,
        body: message,
    }))
}

/// Appends `frame` to `out`. The token must be at most 8 bytes (the caller's packets are
/// built with coap-lite, which keeps to that).
pub fn encode(framing: Framing, frame: &Frame, out: &mut BytesMut) {
    let token_length = frame.token.len().min(usize::from(MAX_TOKEN));
    let token = frame.token.get(..token_length).unwrap_or_default();
    match framing {
        Framing::Tcp => {
            let length = frame.body.len();
            // The extended length, big-endian, in its last `size` bytes.
            let (nibble, extended, size) = match length {
                0..=12 => (length as u8, 0, 0),
                13..=268 => (13, length - 13, 1),
                269..=65_804 => (14, length - 269, 2),
                _ => (15, length - 65_805, 4),
            };
            let extended = (extended as u32).to_be_bytes();
            out.reserve(2 + size + token_length + length);
            out.put_u8((nibble << 4) | token_length as u8);
            out.extend_from_slice(extended.get(4 - size..).unwrap_or_default());
        }
        Framing::WebSocket => {
            let length = 2 + token_length + frame.body.len();
            out.reserve(RECORD_HEADER + length);
            out.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
            out.put_u8(token_length as u8);
        }
    }
    out.put_u8(frame.code);
    out.extend_from_slice(token);
    out.extend_from_slice(&frame.body);
}

/// The size of `frame` on the wire, header included, as Max-Message-Size counts it.
pub fn encoded_len(framing: Framing, frame: &Frame) -> usize {
    let length = frame.body.len();
    let header = match framing {
        Framing::Tcp => match length {
            0..=12 => 1,
            13..=268 => 2,
            269..=65_804 => 3,
            _ => 5,
        },
        Framing::WebSocket => 1,
    };
    header + 1 + frame.token.len() + length
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn frame(code: u8, token: &[u8], body: &[u8]) -> Frame {
        Frame {
            code,
            token: Bytes::copy_from_slice(token),
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn tcp_lengths_use_the_extended_forms_at_their_boundaries() {
        // RFC 8323 3.2: Len 0-12 inline, 13 + 1 byte, 14 + 2 bytes, 15 + 4 bytes.
        for (length, first_nibble, extended) in [
            (0usize, 0u8, 0usize),
            (12, 12, 0),
            (13, 13, 1),
            (268, 13, 1),
            (269, 14, 2),
            (65_804, 14, 2),
            (65_805, 15, 4),
        ] {
            let mut out = BytesMut::new();
            let sent = frame(0x02, b"tk", &vec![0xAB; length]);
            encode(Framing::Tcp, &sent, &mut out);
            assert_eq!(out[0] >> 4, first_nibble, "{length}");
            assert_eq!(out[0] & 0x0F, 2);
            assert_eq!(out.len(), 1 + extended + 1 + 2 + length);
            assert_eq!(out.len(), encoded_len(Framing::Tcp, &sent));
            let got = decode(Framing::Tcp, &mut out, 1 << 20).unwrap().unwrap();
            assert_eq!(got, sent);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_csm_as_rfc_8323_shows_it() {
        // A CSM (7.01) without a token, with Max-Message-Size (option 2) 1152.
        let mut input = BytesMut::from(&[0x30, 0xE1, 0x22, 0x04, 0x80][..]);
        let got = decode(Framing::Tcp, &mut input, 1152).unwrap().unwrap();
        assert_eq!(got, frame(0xE1, b"", &[0x22, 0x04, 0x80]));
    }

    #[test]
    fn partial_input_waits_and_oversized_or_bad_headers_are_refused() {
        let mut out = BytesMut::new();
        encode(Framing::Tcp, &frame(0x45, b"abc", &[1; 300]), &mut out);
        for cut in 0..out.len() {
            let mut part = BytesMut::from(&out[..cut]);
            assert_eq!(decode(Framing::Tcp, &mut part, 4096), Ok(None), "{cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
        // The limit is checked from the header, before the body arrives.
        let mut header_only = BytesMut::from(&out[..4]);
        assert!(matches!(
            decode(Framing::Tcp, &mut header_only, 100),
            Err(FrameError::TooLarge { .. })
        ));
        let mut huge = BytesMut::from(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            decode(Framing::Tcp, &mut huge, usize::MAX),
            Err(FrameError::TooLarge { .. }) | Ok(None)
        ));
        let mut bad_token = BytesMut::from(&[0x09, 0x01][..]);
        assert_eq!(
            decode(Framing::Tcp, &mut bad_token, 1024),
            Err(FrameError::TokenLength(9))
        );
    }

    #[test]
    fn websocket_messages_have_no_length_of_their_own() {
        let sent = frame(0x02, b"t", b"\xb2ps");
        let mut out = BytesMut::new();
        encode(Framing::WebSocket, &sent, &mut out);
        assert_eq!(&out[..], b"\0\0\0\x06\x01\x02t\xb2ps");
        let got = decode(Framing::WebSocket, &mut out, 1024).unwrap().unwrap();
        assert_eq!(got, sent);
        let mut with_length = BytesMut::from(&b"\0\0\0\x02\x10\x01"[..]);
        assert_eq!(
            decode(Framing::WebSocket, &mut with_length, 1024),
            Err(FrameError::WebSocketLength(1))
        );
        let mut short = BytesMut::from(&b"\0\0\0\x03\x04\x01t"[..]);
        assert_eq!(
            decode(Framing::WebSocket, &mut short, 1024),
            Err(FrameError::Truncated)
        );
    }
}
