//! The contract every adapter shares: a sans-io channel driven by a generic transport
//! driver that owns the socket, the timers, back-pressure and the byte counters, and the
//! layers a byte stream may travel in (PROXY protocol header, TLS, WebSocket), or the QUIC
//! stream it may be, and the CoAP message layer (with block-wise transfers) every
//! CoAP-speaking adapter shares.

pub mod coap;
pub mod coap_block;
mod datagram;
pub mod dtls;
mod launch;
mod layered;
pub mod layers;
pub mod proxy;
pub mod quic;
mod seeds;
mod stream;
pub mod tls;
pub mod ws;

pub use datagram::{
    serve_datagram_listener, Admission, Beacon, DatagramChannel, DatagramMetrics, DatagramSettings,
    Demux, UdpListenerSettings,
};
pub use launch::{
    starts_with_certificate, Launch, NamedListener, Reload, StartError, StartedListener,
    WatchedCertificate,
};
pub use layered::{LayeredTransport, PlainStream, SocketStream};
pub use mqtt_core::protocol::Flow;
pub use seeds::Seeds;
pub use stream::{
    drive_stream, serve_stream_listener, Acceptor, ConnWakeup, DriveStream, ListenerLimits,
    StreamChannel, StreamMetrics, Transport,
};
