//! `dtls_cid_coap`, a CoAP over DTLS 1.2 client on Mbed TLS 3.6 that negotiates RFC 9146
//! connection ids (`interop-tests/c/dtls_cid_coap.c`, built by
//! `scripts/install-test-tools.sh` into `target/test-tools/bin/`). No CoAP client in the
//! registries the tests install from speaks RFC 9146: libcoap in Debian bookworm is built
//! on OpenSSL and GnuTLS without it, and tinydtls under aiocoap has none. Mbed TLS does;
//! the program adds only the few lines of CoAP the tests need. It talks from one UDP
//! socket for its whole life, so a move the gateway sees is made by a [`crate::nat::Nat`]
//! between them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::broker::workspace_root;
use crate::process::{Line, Proc};
use crate::TIMEOUT;

/// Where `scripts/install-test-tools.sh` puts the client.
pub fn cid_client_bin() -> PathBuf {
    workspace_root().join("target/test-tools/bin/dtls_cid_coap")
}

/// Whether the client offers the connection id extension, and with which id of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cid {
    /// Offered, asking the gateway to put this id (empty: none) in the records it sends.
    Offer(Vec<u8>),
    /// Not offered: a plain DTLS 1.2 client.
    Off,
}

#[derive(Clone, Debug)]
pub struct CidOptions {
    pub cid: Cid,
    /// RFC 7252's ACK_TIMEOUT, the first retransmission's (before its random factor).
    pub ack_timeout: Duration,
    /// RFC 7252's MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// Mbed TLS's debug level (0 to 5), its lines on the client's stderr.
    pub debug: u8,
}

impl Default for CidOptions {
    /// Offering an empty id of its own, as a client that keeps its socket does; a request
    /// given up after 1 + 2 + 4 s and their random part (at most 10.5 s).
    fn default() -> CidOptions {
        CidOptions {
            cid: Cid::Offer(Vec::new()),
            ack_timeout: Duration::from_secs(1),
            max_retransmit: 2,
            debug: 0,
        }
    }
}

/// What came back for a request. `code` is the response code ("2.04"), or `timeout`,
/// `reset`, or `closed` (the session ended; `payload` says why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoapReply {
    pub code: String,
    pub payload: Vec<u8>,
}

/// The client exited before the handshake completed.
#[derive(Debug)]
pub struct HandshakeFailed {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

pub struct CidClient {
    proc: Proc,
    peer: Option<String>,
    own: Option<String>,
    /// How long the client may take over one request before it answers by itself.
    request_wait: Duration,
}

/// Handshake retransmissions of the client end after 1 + 2 + 4 s; a HelloVerifyRequest
/// first, and a loaded machine, are given room beyond that.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(20);

impl CidClient {
    /// A client with the default options, its handshake with `gateway` done; panics when
    /// the handshake fails.
    pub fn connect(gateway: SocketAddr, identity: &str, secret: &str) -> CidClient {
        CidClient::connect_with(gateway, identity, secret, &CidOptions::default())
    }

    pub fn connect_with(
        gateway: SocketAddr,
        identity: &str,
        secret: &str,
        options: &CidOptions,
    ) -> CidClient {
        match CidClient::try_connect(gateway, identity, secret, options) {
            Ok(client) => client,
            Err(failed) => panic!(
                "dtls_cid_coap: the handshake with {gateway} as {identity} failed ({:?}):\n{}",
                failed.status, failed.stderr
            ),
        }
    }

    /// A client after its handshake, or how it failed (Mbed TLS's error is on stderr).
    pub fn try_connect(
        gateway: SocketAddr,
        identity: &str,
        secret: &str,
        options: &CidOptions,
    ) -> Result<CidClient, HandshakeFailed> {
        let bin = cid_client_bin();
        assert!(
            bin.is_file(),
            "{} is missing: build it with scripts/install-test-tools.sh",
            bin.display()
        );
        let mut cmd = Command::new(&bin);
        cmd.arg(gateway.ip().to_string())
            .arg(gateway.port().to_string())
            .args([identity, secret]);
        match &options.cid {
            Cid::Offer(own) if own.is_empty() => {}
            Cid::Offer(own) => {
                cmd.args(["--own-cid", &crate::to_hex(own)]);
            }
            Cid::Off => {
                cmd.arg("--no-cid");
            }
        }
        let ack_ms = options.ack_timeout.as_millis().max(1);
        cmd.args(["--ack-timeout", &ack_ms.to_string()])
            .args(["--max-retransmit", &options.max_retransmit.to_string()])
            .args(["--debug", &options.debug.to_string()]);
        let mut proc = Proc::spawn("dtls_cid_coap", cmd);
        let first = match proc.next_line(HANDSHAKE_WAIT) {
            Line::Line(line) => line,
            Line::Eof => {
                let status = proc.wait(TIMEOUT);
                return Err(HandshakeFailed {
                    status,
                    stderr: proc.stderr(),
                });
            }
            Line::Timeout => panic!(
                "dtls_cid_coap: no handshake with {gateway} after {HANDSHAKE_WAIT:?}; stderr:\n{}",
                proc.stderr()
            ),
        };
        let (peer, own) = parse_negotiated(&first)
            .unwrap_or_else(|| panic!("dtls_cid_coap: unexpected first line {first:?}"));
        // RFC 7252 4.8.2's MAX_TRANSMIT_WAIT for these parameters, and a margin.
        let request_wait =
            options.ack_timeout * ((2u32 << options.max_retransmit.min(10)) - 1) * 3 / 2 + TIMEOUT;
        Ok(CidClient {
            proc,
            peer,
            own,
            request_wait,
        })
    }

    /// The connection ids negotiated: (the gateway's, which the client writes in its
    /// records; the client's own, which the gateway writes in its). None for both when the
    /// extension was not negotiated; `Some("")` for an empty id in a negotiated one; else
    /// the id in hex.
    pub fn negotiated(&self) -> (Option<String>, Option<String>) {
        (self.peer.clone(), self.own.clone())
    }

    /// POSTs `payload` (text, one line) to `path` (`ps/topic?qos=1`, percent-encoded where
    /// needed) as a confirmable request: the response code, or `timeout`, `reset`, `closed`.
    pub fn post(&mut self, path: &str, payload: &str) -> String {
        assert!(!payload.contains(['\n', '\r']), "one line of payload");
        self.command(&format!("post {} {payload}", checked(path)))
            .code
    }

    /// A confirmable GET of `path`.
    pub fn get(&mut self, path: &str) -> CoapReply {
        self.command(&format!("get {}", checked(path)))
    }

    /// A confirmable GET of `path` with Observe 0: the first response; notifications then
    /// come from `notification`.
    pub fn observe(&mut self, path: &str) -> CoapReply {
        self.command(&format!("observe {}", checked(path)))
    }

    /// The next notification of the latest observation (acknowledged by the client when it
    /// arrived), waiting up to `wait`; None if none came.
    pub fn notification(&mut self, wait: Duration) -> Option<CoapReply> {
        let reply = self.command_waiting(
            &format!("recv {}", wait.as_millis()),
            wait + TIMEOUT,
            "notification",
        );
        (reply.code != "timeout").then_some(reply)
    }

    /// An empty confirmable message: true when the gateway answered it with a reset.
    pub fn ping(&mut self) -> bool {
        self.command_waiting("ping", self.request_wait, "pong").code == "pong"
    }

    /// Sends close_notify and waits for the client to exit cleanly.
    pub fn quit(mut self) {
        self.proc.send_line("quit");
        let status = self.proc.wait(TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "dtls_cid_coap did not quit cleanly ({status:?}); stderr:\n{}",
            self.proc.stderr()
        );
    }

    /// What the client wrote on stderr (Mbed TLS's debug lines, with `debug` above 0).
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    fn command(&mut self, line: &str) -> CoapReply {
        self.command_waiting(line, self.request_wait, "response")
    }

    /// Sends one command and reads its one answer line: `{answered} CODE [PAYLOAD]`, or
    /// one of `timeout`, `reset`, `pong`, `closed WHY`.
    fn command_waiting(&mut self, line: &str, wait: Duration, answered: &str) -> CoapReply {
        self.proc.send_line(line);
        let answer = match self.proc.next_line(wait) {
            Line::Line(answer) => answer,
            Line::Eof => panic!(
                "dtls_cid_coap exited without answering {line:?}; stderr:\n{}",
                self.proc.stderr()
            ),
            Line::Timeout => panic!(
                "dtls_cid_coap did not answer {line:?} in {wait:?}; stderr:\n{}",
                self.proc.stderr()
            ),
        };
        let (word, rest) = answer.split_once(' ').unwrap_or((answer.as_str(), ""));
        match word {
            "timeout" | "reset" | "pong" => CoapReply {
                code: word.to_string(),
                payload: Vec::new(),
            },
            "closed" => CoapReply {
                code: word.to_string(),
                payload: rest.as_bytes().to_vec(),
            },
            _ if word == answered => {
                let (code, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                CoapReply {
                    code: code.to_string(),
                    payload: unescape(payload),
                }
            }
            _ => panic!(
                "dtls_cid_coap answered {line:?} with {answer:?}; stderr:\n{}",
                self.proc.stderr()
            ),
        }
    }
}

/// A path the command line carries as one word.
fn checked(path: &str) -> &str {
    assert!(
        !path.is_empty() && !path.contains([' ', '\n', '\r']),
        "a path of one word: {path:?}"
    );
    path
}

/// `cid peer=P own=O` into (peer, own): None for `none`, `Some("")` for `empty`.
fn parse_negotiated(line: &str) -> Option<(Option<String>, Option<String>)> {
    let mut words = line.split(' ');
    if words.next() != Some("cid") {
        return None;
    }
    let id = |word: Option<&str>, key: &str| -> Option<Option<String>> {
        match word?.strip_prefix(key)? {
            "none" => Some(None),
            "empty" => Some(Some(String::new())),
            hex if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(Some(hex.to_string()))
            }
            _ => None,
        }
    };
    let peer = id(words.next(), "peer=")?;
    let own = id(words.next(), "own=")?;
    words.next().is_none().then_some((peer, own))
}

/// The client's printing of a payload back into bytes: `\xHH` is the byte HH.
fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            if let Some(byte) = text
                .get(i + 2..i + 4)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_negotiation_line_is_read_exactly() {
        assert_eq!(
            parse_negotiated("cid peer=none own=none"),
            Some((None, None))
        );
        assert_eq!(
            parse_negotiated("cid peer=0a1b2c3d own=empty"),
            Some((Some("0a1b2c3d".into()), Some(String::new())))
        );
        for bad in [
            "cid peer=none",
            "cid own=none peer=none",
            "cid peer= own=none",
            "cid peer=xyz own=none",
            "cid peer=none own=none more",
            "response 2.04",
        ] {
            assert_eq!(parse_negotiated(bad), None, "{bad}");
        }
    }

    #[test]
    fn escaped_payloads_come_back_as_their_bytes() {
        assert_eq!(unescape("plain text"), b"plain text");
        assert_eq!(unescape("a\\x5cb\\x00\\xff"), b"a\\b\x00\xff");
        assert_eq!(unescape("\\xzz\\x4"), b"\\xzz\\x4");
    }
}
