//! Runs the byte-level conformance vectors in `tests/vectors/*.txt` (format described at
//! the top of each file).

// Test code: a panic is how a test fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use bytes::BytesMut;
use mqtt_core::codec::{encode, DecodeError, Decoder, Packet, ProtocolVersion};

const MAX_PACKET_SIZE: u32 = 256;

struct Vector {
    file: String,
    line: usize,
    expect: String,
    decoder: String,
    bytes: Vec<u8>,
    name: String,
}

fn parse_hex(hex: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = hex.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
            if pair.len() != 2 {
                return Err("odd number of hex digits".to_owned());
            }
            u8::from_str_radix(pair, 16).map_err(|e| e.to_string())
        })
        .collect()
}

fn load() -> Vec<Vector> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/vectors exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut vectors = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.splitn(4, '|').map(str::trim).collect();
            assert_eq!(fields.len(), 4, "{file}:{}: expected 4 fields", i + 1);
            let bytes = parse_hex(fields[2]).unwrap_or_else(|e| panic!("{file}:{}: {e}", i + 1));
            vectors.push(Vector {
                file: file.clone(),
                line: i + 1,
                expect: fields[0].to_owned(),
                decoder: fields[1].to_owned(),
                bytes,
                name: fields[3].to_owned(),
            });
        }
    }
    vectors
}

fn decoder(kind: &str) -> Decoder {
    match kind {
        "new" => Decoder::new(MAX_PACKET_SIZE),
        "3.1" => Decoder::with_version(ProtocolVersion::V3_1, MAX_PACKET_SIZE),
        "3.1.1" => Decoder::with_version(ProtocolVersion::V3_1_1, MAX_PACKET_SIZE),
        "5" => Decoder::with_version(ProtocolVersion::V5, MAX_PACKET_SIZE),
        other => panic!("unknown decoder kind {other:?}"),
    }
}

fn error_kind(err: &DecodeError) -> &'static str {
    match err {
        DecodeError::Malformed(_) => "malformed",
        DecodeError::Protocol(_) => "protocol",
        DecodeError::UnsupportedProtocolVersion { .. } => "unsupported-version",
        DecodeError::PacketTooLarge { .. } => "too-large",
        DecodeError::TopicNameInvalid(_) => "topic-name-invalid",
        DecodeError::TopicAliasInvalid(_) => "topic-alias-invalid",
    }
}

enum Outcome {
    Packets(Vec<Packet>),
    Incomplete,
    Error(DecodeError),
}

fn run(v: &Vector) -> (Outcome, Option<ProtocolVersion>) {
    let mut dec = decoder(&v.decoder);
    let mut buf = BytesMut::from(&v.bytes[..]);
    let mut packets = Vec::new();
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) if buf.is_empty() && !dec.has_partial_packet() && !packets.is_empty() => {
                return (Outcome::Packets(packets), dec.version())
            }
            Ok(None) => return (Outcome::Incomplete, dec.version()),
            Err(e) => return (Outcome::Error(e), dec.version()),
        }
    }
}

/// The clause a vector's name opens with: `[MQTT-x.y.z-n]` or a bare `[§n]`.
fn clause(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('[')?;
    let end = rest.find(']')?;
    Some(&rest[..end])
}

#[test]
fn conformance_vectors() {
    let vectors = load();
    assert!(vectors.len() >= 40, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for v in &vectors {
        let at = format!("{}:{} {}", v.file, v.line, v.name);
        let (outcome, version) = run(v);
        match (v.expect.as_str(), outcome) {
            ("ok", Outcome::Packets(packets)) => {
                let version = version.expect("a decoded stream has a version");
                for p in packets {
                    let mut out = BytesMut::new();
                    if let Err(e) = encode(&p, version, &mut out) {
                        failures.push(format!("{at}: re-encoding {} failed: {e}", p.name()));
                        continue;
                    }
                    let mut again = Decoder::with_version(version, u32::MAX);
                    match again.decode(&mut out) {
                        Ok(Some(q)) if q == p && out.is_empty() => {}
                        other => failures.push(format!("{at}: round trip gave {other:?}")),
                    }
                }
            }
            ("incomplete", Outcome::Incomplete) => {}
            (expect, Outcome::Error(e)) if expect == error_kind(&e) => {
                if let Some(tag) = clause(&v.name) {
                    if !e.to_string().contains(tag) {
                        failures.push(format!("{at}: error does not name {tag}: {e}"));
                    }
                }
            }
            (expect, Outcome::Error(e)) => failures.push(format!(
                "{at}: expected {expect}, got {}: {e}",
                error_kind(&e)
            )),
            (expect, Outcome::Packets(p)) => {
                failures.push(format!("{at}: expected {expect}, decoded {p:?}"))
            }
            (expect, Outcome::Incomplete) => {
                failures.push(format!("{at}: expected {expect}, decoder wants more bytes"))
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}
