//! What tests of the core and of the adapters need to stand in for other clients: a
//! session opened in one call, and a message routed as if the broker had it from anyone.
//! Only built with the `testing` feature, which only test targets and the fuzz crate enable, so no
//! adapter can reach the router around the session layer.

use std::sync::Arc;
use std::time::Instant;

use crate::broker::{Broker, Dispatched};
use crate::client::{ClientSession, ConnectRefused, OpenSession, Presented};
use crate::message::Message;
use crate::session::{ConnControl, Wakeup};

/// A session of `client_id` in `namespace`, anonymous, on its own connection woken by `wakeup`.
pub fn open_session(
    broker: &Arc<Broker>,
    namespace: &'static str,
    client_id: &str,
    clean_start: bool,
    expiry_interval: u32,
    wakeup: Arc<dyn Wakeup>,
    now: Instant,
) -> Result<ClientSession, ConnectRefused> {
    let who = broker.authenticate(Presented {
        protocol: namespace,
        listener: Arc::from("test"),
        client_id: Arc::from(client_id),
        username: None,
        password: None,
        peer: None,
        mountpoint: Arc::from(""),
        mountpoint_values: Vec::new(),
    })?;
    broker.open_session(
        who,
        OpenSession {
            clean_start,
            expiry_interval,
            will: None,
            control: ConnControl::new(broker.next_connection_id(), wakeup),
        },
        now,
    )
}

/// Routes `message` as it stands, with no client's checks: for a test playing the rest of
/// the world.
pub fn route(broker: &Broker, message: Message) -> Dispatched {
    broker.publish(Arc::new(message))
}
