//! Feeds arbitrary bytes to MQTT decoders of every kind, split into reads of a size the
//! input chooses, and checks that every packet that decodes survives encode/decode with
//! `encoded_len` equal to the encoded size.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_core::codec::{encode, encoded_len, Decoder, Packet, ProtocolVersion};

const MAX_PACKET_SIZE: u32 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size, so resuming a half-read packet is fuzzed too.
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let read_size = usize::from(first % 32) + 1;
    for read in [data.len().max(1), read_size] {
        run(Decoder::new(MAX_PACKET_SIZE), data, read);
        for version in [
            ProtocolVersion::V5,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V3_1,
        ] {
            run(Decoder::with_version(version, MAX_PACKET_SIZE), data, read);
        }
    }
});

fn run(mut decoder: Decoder, data: &[u8], read: usize) {
    let mut buf = BytesMut::new();
    for piece in data.chunks(read) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(packet)) => {
                    let version = decoder
                        .version()
                        .expect("a decoded packet fixes the version");
                    check_round_trip(&packet, version);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn check_round_trip(packet: &Packet, version: ProtocolVersion) {
    // A CONNECT keeps the version it names, whatever the connection's.
    let version = match packet {
        Packet::Connect(connect) => connect.protocol,
        _ => version,
    };
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut out) {
        panic!("decoded {packet:?} does not encode for {version:?}: {e}");
    }
    assert_eq!(
        encoded_len(packet, version),
        Ok(out.len()),
        "encoded_len of {packet:?}"
    );
    let mut again = Decoder::with_version(version, u32::MAX);
    match again.decode(&mut out) {
        Ok(Some(decoded)) => assert_eq!(&decoded, packet),
        other => panic!("re-encoded {packet:?} decodes as {other:?}"),
    }
    assert!(out.is_empty(), "bytes left after re-decoding {packet:?}");
}
