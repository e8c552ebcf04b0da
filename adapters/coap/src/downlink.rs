//! Requests from the gateway to a CoAP client in connection mode (EMQX's
//! `POST /gateways/coap/clients/{clientid}/request`): the admin API hands a request to the
//! client's [`Client`], its channel sends it as a confirmable message over the client's
//! own peer (the kit's message layer retransmits it, RFC 7252 4.2), and the response, by
//! the client's address alone (the datagram driver gives a peer only what comes from its
//! address), is handed back.
//!
//! [`Clients`] holds the clients in connection mode over a datagram transport (UDP, DTLS),
//! by client id: a channel enters its client when its connection opens and takes it out
//! when the connection ends, unless a newer connection of the same client id replaced it.
//! At most [`MAX_OUTSTANDING`] requests per client are waiting or in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use adapter_kit::coap::{RequestType, ResponseType};
use mqtt_core::session::Wakeup;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Requests to one client waiting to be sent or for their response.
pub const MAX_OUTSTANDING: usize = 4;

/// The longest token a request may carry (RFC 7252 3).
pub const MAX_TOKEN_LEN: usize = 8;

/// A request for a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub method: RequestType,
    /// Uri-Path segments.
    pub path: Vec<String>,
    /// Uri-Query options.
    pub queries: Vec<String>,
    pub content_format: Option<u16>,
    pub payload: Vec<u8>,
    /// The token the operator chose; empty: one of ours.
    pub token: Vec<u8>,
}

/// The client's response.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub message_id: u16,
    pub token: Vec<u8>,
    pub code: ResponseType,
    pub content_format: Option<u16>,
    pub payload: Vec<u8>,
}

/// Why no response came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the client rejected the request (Reset)")]
    Reset,
    #[error("the client did not answer")]
    Timeout,
    #[error("the client's connection ended")]
    Gone,
    #[error("the request does not fit the listener's message size")]
    TooLarge,
    #[error("a request with that token is already in flight")]
    TokenInUse,
}

/// Why a request is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{MAX_OUTSTANDING} requests already wait for this client")]
    Busy,
}

pub type Reply = oneshot::Sender<Result<Answer, Failure>>;

pub(crate) struct Waiting {
    pub request: Outgoing,
    pub reply: Reply,
}

#[derive(Default)]
struct Inner {
    pending: VecDeque<Waiting>,
    /// Pending plus in flight.
    outstanding: usize,
    /// The connection ended: nothing more is taken.
    closed: bool,
}

/// One client in connection mode as the operator reaches it.
pub struct Client {
    wakeup: Arc<dyn Wakeup>,
    inner: Mutex<Inner>,
}

impl Client {
    pub(crate) fn new(wakeup: Arc<dyn Wakeup>) -> Client {
        Client {
            wakeup,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Hands `request` to the client's channel; the receiver gets the response, or why
    /// there is none. The caller bounds how long it waits: the channel gives up after
    /// the message layer's retransmissions, or when the connection ends.
    pub fn request(
        &self,
        request: Outgoing,
    ) -> Result<oneshot::Receiver<Result<Answer, Failure>>, RequestError> {
        let (reply, answer) = oneshot::channel();
        {
            let mut inner = self.inner.lock();
            if inner.closed {
                let _ = reply.send(Err(Failure::Gone));
                return Ok(answer);
            }
            if inner.outstanding >= MAX_OUTSTANDING {
                return Err(RequestError::Busy);
            }
            inner.outstanding += 1;
            inner.pending.push_back(Waiting { request, reply });
        }
        self.wakeup.wake();
        Ok(answer)
    }

    pub(crate) fn take_pending(&self) -> Vec<Waiting> {
        self.inner.lock().pending.drain(..).collect()
    }

    /// A request taken by the channel has its answer, or has failed.
    pub(crate) fn finished(&self) {
        let mut inner = self.inner.lock();
        inner.outstanding = inner.outstanding.saturating_sub(1);
    }

    /// The connection ended: what waits fails, and nothing more is taken.
    pub(crate) fn close(&self) {
        let pending: Vec<Waiting> = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            inner.outstanding = 0;
            inner.pending.drain(..).collect()
        };
        for waiting in pending {
            let _ = waiting.reply.send(Err(Failure::Gone));
        }
    }
}

/// The clients in connection mode, by client id.
#[derive(Default)]
pub struct Clients {
    map: Mutex<HashMap<Arc<str>, Arc<Client>>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("connected", &self.map.lock().len())
            .finish()
    }
}

impl Clients {
    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        self.map.lock().get(client_id).cloned()
    }

    pub(crate) fn insert(&self, client_id: Arc<str>, client: Arc<Client>) {
        self.map.lock().insert(client_id, client);
    }

    /// Takes `client` out, but not a newer connection's that took its client id since.
    pub(crate) fn remove(&self, client_id: &str, client: &Arc<Client>) {
        let mut map = self.map.lock();
        if map
            .get(client_id)
            .is_some_and(|held| Arc::ptr_eq(held, client))
        {
            map.remove(client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Wakeup for Nothing {
        fn wake(&self) {}
    }

    fn get() -> Outgoing {
        Outgoing {
            method: RequestType::Get,
            path: vec!["sensor".into()],
            queries: Vec::new(),
            content_format: None,
            payload: Vec::new(),
            token: Vec::new(),
        }
    }

    #[test]
    fn outstanding_requests_are_bounded_and_fail_when_the_connection_ends() {
        let client = Client::new(Arc::new(Nothing));
        let mut answers: Vec<_> = (0..MAX_OUTSTANDING)
            .map(|_| client.request(get()).unwrap())
            .collect();
        assert_eq!(client.request(get()).unwrap_err(), RequestError::Busy);
        let taken = client.take_pending();
        assert_eq!(taken.len(), MAX_OUTSTANDING);
        // Taken but unanswered, they still count.
        assert_eq!(client.request(get()).unwrap_err(), RequestError::Busy);
        client.finished();
        let mut last = client.request(get()).unwrap();
        client.close();
        assert_eq!(last.try_recv().unwrap(), Err(Failure::Gone));
        drop(taken);
        assert!(answers.iter_mut().all(|a| a.try_recv().is_err()));
        let mut after = client.request(get()).unwrap();
        assert_eq!(after.try_recv().unwrap(), Err(Failure::Gone));
    }
}
