//! Feeds arbitrary bytes, as a client's WebSocket frames after the upgrade, through the
//! WebSocket layer into an MQTT decoder, in reads of a size the input chooses: the framing
//! path must end in bytes or an error, never a panic, and never yield more payload than
//! came in.

#![no_main]

use std::io::{self, Read, Write};

use adapter_kit::ws::WsStream;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_core::codec::Decoder;

const MAX_FRAME_SIZE: u32 = 64 * 1024;
const MAX_PACKET_SIZE: u32 = 1 << 20;

/// The client's bytes in pieces of `piece` bytes; what the server answers is dropped.
struct Wire<'a> {
    incoming: &'a [u8],
    piece: usize,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.piece).min(self.incoming.len());
        let (now, later) = self.incoming.split_at(n);
        buf[..n].copy_from_slice(now);
        self.incoming = later;
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let mut stream = WsStream::after_upgrade(
        Wire {
            incoming: data,
            piece,
        },
        MAX_FRAME_SIZE,
    );
    let mut decoder = Decoder::new(MAX_PACKET_SIZE);
    let mut buf = BytesMut::new();
    let mut total = 0;
    let mut chunk = [0u8; 512];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                assert!(total <= data.len(), "more payload out than bytes in");
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
        }
    }
});
