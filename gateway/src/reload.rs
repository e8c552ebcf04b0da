//! Reloading asked for by an operator through the admin API, served by the same task that
//! reloads on SIGHUP and on a file change, so that the three ways read the same sources
//! the same way, one reload at a time.

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

/// One source read again, or why it was not (what was in force stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReloadOutcome {
    /// The configuration key naming the source: `auth.password_file`,
    /// `listeners.ssl.default`, `log.level`.
    pub key: String,
    /// What it is: `password file`, `ACL file`, `TLS certificate`, `log level`.
    pub what: String,
    /// Why it was not reloaded; absent when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

type Reply = oneshot::Sender<Vec<ReloadOutcome>>;

/// Asks the reloading task for a reload and waits for what it did.
#[derive(Debug, Clone)]
pub struct Reloader {
    requests: mpsc::Sender<Reply>,
}

/// The reloading task's end: the requests to serve.
#[derive(Debug)]
pub struct ReloadRequests {
    requests: mpsc::Receiver<Reply>,
}

/// Requests waiting beyond the one being served; more are refused as busy rather than
/// queued, since one reload reads every source anyway.
const WAITING_REQUESTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    #[error("reloads are already waiting to be done")]
    Busy,
    #[error("the gateway is shutting down")]
    Stopped,
}

pub fn channel() -> (Reloader, ReloadRequests) {
    let (requests, receiver) = mpsc::channel(WAITING_REQUESTS);
    (Reloader { requests }, ReloadRequests { requests: receiver })
}

impl Reloader {
    pub async fn reload(&self) -> Result<Vec<ReloadOutcome>, ReloadError> {
        let (reply, outcome) = oneshot::channel();
        self.requests.try_send(reply).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ReloadError::Busy,
            mpsc::error::TrySendError::Closed(_) => ReloadError::Stopped,
        })?;
        outcome.await.map_err(|_| ReloadError::Stopped)
    }
}

impl ReloadRequests {
    /// The next request; `None` once every `Reloader` is gone.
    pub async fn next(&mut self) -> Option<ReloadReply> {
        self.requests.recv().await.map(ReloadReply)
    }
}

/// Where the outcome of one request goes.
#[derive(Debug)]
pub struct ReloadReply(Reply);

impl ReloadReply {
    pub fn send(self, outcomes: Vec<ReloadOutcome>) {
        // The asker may have gone (its HTTP connection closed): the reload happened anyway.
        let _ = self.0.send(outcomes);
    }
}
