//! Block-wise transfers (RFC 7959) in the kit: option values, reassembly in and out of
//! order, Block1 uploads as a server sees them and a representation served in Block2
//! blocks, with proptest over body sizes and block sizes.

#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use adapter_kit::coap::{
    CoapOption, MessageClass, MessageType, Packet, Request, RequestType, ResponseType,
};
use adapter_kit::coap_block::{
    block_size, szx_of, uint_option, Assembly, AssemblyError, BlockError, BlockOption,
    BlockwiseParams, Progress, Representation, Upload, Uploads,
};
use bytes::Bytes;
use proptest::prelude::*;

fn blk(num: u32, more: bool, szx: u8) -> BlockOption {
    BlockOption { num, more, szx }
}

fn params(max_szx: u8, max_body_size: usize) -> BlockwiseParams {
    BlockwiseParams {
        max_szx,
        max_body_size,
        lifetime: Duration::from_secs(10),
        max_transfers: 2,
    }
}

fn post(path: &str, token: &[u8], block: Option<BlockOption>, payload: &[u8]) -> Request {
    let mut packet = Packet::new();
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(RequestType::Post);
    packet.set_token(token.to_vec());
    packet.add_option(CoapOption::UriPath, path.as_bytes().to_vec());
    if let Some(block) = block {
        packet.add_option(CoapOption::Block1, block.encode());
    }
    packet.payload = payload.to_vec();
    Request {
        packet,
        method: RequestType::Post,
    }
}

fn answer_code(upload: &Upload) -> Option<MessageClass> {
    match upload {
        Upload::Answer { response, .. } => Some(response.header.code),
        _ => None,
    }
}

#[test]
fn option_values_follow_rfc_7959_2_2() {
    assert_eq!(blk(0, false, 0).encode(), Vec::<u8>::new());
    assert_eq!(blk(1, true, 6).encode(), vec![0x1E]);
    assert_eq!(BlockOption::decode(&[]).unwrap(), blk(0, false, 0));
    assert_eq!(BlockOption::decode(&[0x1E]).unwrap(), blk(1, true, 6));
    assert_eq!(BlockOption::decode(&[0x07]), Err(BlockError::ReservedSzx));
    assert_eq!(
        BlockOption::decode(&[0, 0, 0, 1]),
        Err(BlockError::Length(4))
    );
    assert_eq!(block_size(6), 1024);
    assert_eq!(szx_of(64), Some(2));
    assert_eq!(szx_of(100), None);
    assert_eq!(uint_option(0), Vec::<u8>::new());
    assert_eq!(uint_option(4096), vec![0x10, 0x00]);
}

#[test]
fn reassembly_takes_blocks_in_order_only() {
    let mut assembly = Assembly::new(100);
    assert_eq!(
        assembly.append(blk(0, true, 0), &[1; 16]),
        Ok(Progress::More)
    );
    // The same block again changes nothing.
    assert_eq!(
        assembly.append(blk(0, true, 0), &[1; 16]),
        Ok(Progress::Repeated)
    );
    assert_eq!(
        assembly.append(blk(2, true, 0), &[3; 16]),
        Err(AssemblyError::OutOfOrder {
            offset: 32,
            expected: 16
        })
    );
    assert_eq!(
        assembly.append(blk(1, false, 0), &[2; 5]),
        Ok(Progress::Complete)
    );
    assert_eq!(assembly.len(), 21);
    let mut small = Assembly::new(20);
    small.append(blk(0, true, 0), &[0; 16]).unwrap();
    assert!(matches!(
        small.append(blk(1, true, 0), &[0; 16]),
        Err(AssemblyError::TooLarge { .. })
    ));
}

#[test]
fn uploads_of_two_resources_interleave_and_the_least_recent_is_forgotten_beyond_the_limit() {
    let now = Instant::now();
    let mut uploads = Uploads::new(params(0, 1000));
    let continue_ = MessageClass::Response(ResponseType::Continue);
    for path in ["a", "b"] {
        let upload = uploads.receive(post(path, b"1", Some(blk(0, true, 0)), &[7; 16]), now);
        assert_eq!(answer_code(&upload), Some(continue_));
    }
    // A third upload makes room by forgetting the least recent, "a".
    let upload = uploads.receive(
        post("c", b"2", Some(blk(0, true, 0)), &[9; 16]),
        now + Duration::from_secs(1),
    );
    assert_eq!(answer_code(&upload), Some(continue_));
    assert_eq!(uploads.len(), 2);
    let upload = uploads.receive(post("a", b"3", Some(blk(1, false, 0)), &[8]), now);
    assert_eq!(
        answer_code(&upload),
        Some(MessageClass::Response(
            ResponseType::RequestEntityIncomplete
        ))
    );
    // "b" completes under another token, its options and token those of the last block.
    let Upload::Complete { request, echo } =
        uploads.receive(post("b", b"4", Some(blk(1, false, 0)), &[8]), now)
    else {
        panic!("the upload completes");
    };
    assert_eq!(echo, blk(1, false, 0));
    assert_eq!(request.packet.payload, [&[7u8; 16][..], &[8]].concat());
    assert_eq!(request.packet.get_token(), b"4");
    assert!(request
        .packet
        .get_first_option(CoapOption::Block1)
        .is_none());
    // An upload idle for its lifetime is forgotten.
    assert_eq!(uploads.next_expiry(), Some(now + Duration::from_secs(11)));
    uploads.forget_expired(now + Duration::from_secs(11));
    assert!(uploads.is_empty());
    // A request without Block1 is whole.
    assert!(matches!(
        uploads.receive(post("d", b"5", None, b"x"), now),
        Upload::Whole(_)
    ));
}

proptest! {
    #[test]
    fn option_values_round_trip(num in 0u32..(1 << 20), more: bool, szx in 0u8..=6) {
        let block = blk(num, more, szx);
        let encoded = block.encode();
        prop_assert!(encoded.len() <= 3);
        prop_assert_eq!(BlockOption::decode(&encoded), Ok(block));
    }

    /// Any body split at any block size is reassembled to itself; a block out of place is
    /// refused.
    #[test]
    fn blocks_in_order_reassemble_and_out_of_order_do_not(
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        szx in 0u8..=6,
        skip in any::<prop::sample::Index>(),
    ) {
        let size = block_size(szx);
        let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[]] } else { body.chunks(size).collect() };
        let last = chunks.len() - 1;
        let mut assembly = Assembly::new(body.len());
        for (num, chunk) in chunks.iter().enumerate() {
            let progress = assembly.append(blk(num as u32, num < last, szx), chunk).unwrap();
            prop_assert_eq!(progress == Progress::Complete, num == last);
        }
        prop_assert_eq!(assembly.into_body(), body.clone());
        if chunks.len() > 2 {
            // Leave out one block that is neither the first nor the last.
            let left_out = 1 + skip.index(chunks.len() - 2);
            let mut gappy = Assembly::new(body.len());
            let mut refused = false;
            for (num, chunk) in chunks.iter().enumerate().filter(|(n, _)| *n != left_out) {
                if gappy.append(blk(num as u32, num < last, szx), chunk).is_err() {
                    refused = true;
                    break;
                }
            }
            prop_assert!(refused);
        }
    }

    /// The blocks of a representation are the representation, whatever block size the
    /// client asks for: it goes on at the size of the answers (RFC 7959 2.4).
    #[test]
    fn a_representation_read_block_by_block_is_whole(
        body in proptest::collection::vec(any::<u8>(), 1..5000),
        ours in 0u8..=6,
        asked in 0u8..=6,
    ) {
        let representation = Representation::new(Bytes::from(body.clone()), vec![1, 2]);
        let mut read = Vec::new();
        let mut next = blk(0, false, asked);
        loop {
            let mut packet = Packet::new();
            let sent = representation.fill(&mut packet, next, ours).unwrap();
            prop_assert_eq!(sent.szx, asked.min(ours));
            prop_assert_eq!(sent.offset(), read.len() as u64);
            prop_assert_eq!(
                packet.get_first_option(CoapOption::Size2).cloned(),
                Some(uint_option(body.len() as u32))
            );
            read.extend_from_slice(&packet.payload);
            if !sent.more {
                break;
            }
            next = blk(sent.num + 1, false, sent.szx);
        }
        prop_assert_eq!(read, body);
    }
}
