//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends
//! before the client's bytes to name the client it accepted.

use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included, as the specification bounds it.
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header, which this listener requires")]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    BadV1(String),
    #[error("malformed PROXY protocol v2 header: {0}")]
    BadV2(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads a version 1 or 2 header, whichever comes, consuming exactly its bytes so the
/// next layer (TLS, MQTT) starts at the client's first byte. `Ok(None)` when the header
/// names no client: the proxy's own health checks (v2 LOCAL, v1 UNKNOWN).
pub async fn read_proxy_header(
    socket: &mut TcpStream,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // Both versions are longer than the v2 signature, so reading that much never
    // waits for bytes a valid header would not send.
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).await?;
    if head == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        socket.read_exact(&mut fixed).await?;
        let [_, _, high, low] = fixed;
        let length = usize::from(u16::from_be_bytes([high, low]));
        let mut header = Vec::with_capacity(16 + length);
        header.extend_from_slice(&head);
        header.extend_from_slice(&fixed);
        header.resize(16 + length, 0);
        if let Some(rest) = header.get_mut(16..) {
            socket.read_exact(rest).await?;
        }
        let parsed = ppp::v2::Header::try_from(header.as_slice())
            .map_err(|e| ProxyHeaderError::BadV2(e.to_string()))?;
        if parsed.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        Ok(match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
        })
    } else if head.starts_with(b"PROXY ") {
        let mut header = head.to_vec();
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX {
                return Err(ProxyHeaderError::BadV1(format!(
                    "no CRLF within {V1_MAX} bytes"
                )));
            }
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).await?;
            header.extend_from_slice(&byte);
        }
        let text =
            std::str::from_utf8(&header).map_err(|e| ProxyHeaderError::BadV1(e.to_string()))?;
        let parsed =
            ppp::v1::Header::try_from(text).map_err(|e| ProxyHeaderError::BadV1(e.to_string()))?;
        Ok(match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        })
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Sends `bytes` then `after` over a real socket; returns what the reader made of the
    /// header and the first byte left for the next layer.
    async fn read(bytes: Vec<u8>) -> (Result<Option<SocketAddr>, String>, Option<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(&bytes).await.unwrap();
            client.write_all(&[0x10]).await.unwrap();
            client
        });
        let (mut socket, _) = listener.accept().await.unwrap();
        let result = read_proxy_header(&mut socket)
            .await
            .map_err(|e| e.to_string());
        let mut next = [0u8; 1];
        let next = match result {
            Ok(_) => socket.read_exact(&mut next).await.ok().map(|_| next[0]),
            Err(_) => None,
        };
        drop(writer.await);
        (result, next)
    }

    #[tokio::test]
    async fn version_1_names_the_client_and_leaves_the_rest() {
        let (result, next) = read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 1883\r\n".to_vec()).await;
        assert_eq!(result, Ok(Some("203.0.113.7:51000".parse().unwrap())));
        assert_eq!(next, Some(0x10));
        let (result, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 1883\r\n".to_vec()).await;
        assert_eq!(result, Ok(Some("[2001:db8::7]:51000".parse().unwrap())));
        let (result, next) = read(b"PROXY UNKNOWN\r\n".to_vec()).await;
        assert_eq!((result, next), (Ok(None), Some(0x10)));
    }

    #[tokio::test]
    async fn version_2_names_the_client_and_leaves_the_rest() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "198.51.100.9:40000".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:1883".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let (result, next) = read(header).await;
        assert_eq!(result, Ok(Some("198.51.100.9:40000".parse().unwrap())));
        assert_eq!(next, Some(0x10));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bytes in [
            b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00".to_vec(),
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n".to_vec(),
            [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
        ] {
            let (result, _) = read(bytes.clone()).await;
            assert!(result.is_err(), "{bytes:?} gave {result:?}");
        }
    }
}
