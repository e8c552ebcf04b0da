//! The contract every adapter shares: a sans-io channel driven by a generic transport
//! driver that owns the socket, the timers, back-pressure and the byte counters, and the
//! layers a byte stream may travel in (PROXY protocol header, TLS, WebSocket).

mod layered;
pub mod proxy;
mod stream;
pub mod tls;
pub mod ws;

pub use layered::{LayeredTransport, PlainStream, SocketStream};
pub use mqtt_core::protocol::Flow;
pub use stream::{
    drive_stream, serve_stream_listener, ListenerLimits, NotifyWakeup, StreamChannel, Transport,
};
