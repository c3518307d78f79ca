//! Backpressure for a client that stops reading: a bound on what is queued for it.
//!
//! Every request read is a reply owed until that reply is written, and every message being
//! written (replies, progress notifications) counts until it is. While the count is at the
//! bound, no further request is read: a client that sends but never reads fills its own
//! pipe and waits, instead of making the server hold every reply in memory.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rmcp::RoleServer;
use rmcp::model::{ClientNotification, JsonRpcMessage, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::Notify;

/// Replies owed and messages being written, at most, before reading waits.
pub const MAX_QUEUED: usize = 64;

/// What is queued for the client.
#[derive(Debug, Default)]
struct Ledger {
    /// Requests read whose reply is not written yet.
    owed: HashSet<RequestId>,
    /// Messages being written, other than replies counted in `owed`.
    writing: usize,
}

#[derive(Debug, Default)]
struct Shared {
    ledger: Mutex<Ledger>,
    /// Told whenever something queued is gone.
    freed: Notify,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queued(&self) -> usize {
        let ledger = self.ledger();
        ledger.owed.len() + ledger.writing
    }
}

/// A transport that stops reading requests while `limit` replies are owed or messages are
/// being written (see the module docs).
#[derive(Debug)]
pub struct Backpressure<T> {
    inner: T,
    shared: Arc<Shared>,
    limit: usize,
}

impl<T> Backpressure<T> {
    /// `inner` with the default bound, [`MAX_QUEUED`].
    pub fn new(inner: T) -> Self {
        Self::with_limit(inner, MAX_QUEUED)
    }

    /// `inner` with a bound of `limit` (at least 1).
    pub fn with_limit(inner: T, limit: usize) -> Self {
        Self {
            inner,
            shared: Arc::default(),
            limit: limit.max(1),
        }
    }

    /// Replies owed plus messages being written, now.
    pub fn queued(&self) -> usize {
        self.shared.queued()
    }
}

/// A message being written; dropped when the write ends (or is abandoned).
struct Writing {
    shared: Arc<Shared>,
    reply_to: Option<RequestId>,
    /// Counted in `writing` (not a reply already counted as owed).
    counted: bool,
}

impl Drop for Writing {
    fn drop(&mut self) {
        {
            let mut ledger = self.shared.ledger();
            if self.counted {
                ledger.writing = ledger.writing.saturating_sub(1);
            }
            if let Some(id) = &self.reply_to {
                ledger.owed.remove(id);
            }
        }
        self.shared.freed.notify_waiters();
    }
}

impl<T: Transport<RoleServer>> Transport<RoleServer> for Backpressure<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let reply_to = match &item {
            JsonRpcMessage::Response(response) => Some(response.id.clone()),
            JsonRpcMessage::Error(error) => error.id.clone(),
            _ => None,
        };
        // A reply to a request read is counted once, as owed, until it is written.
        let counted = {
            let mut ledger = self.shared.ledger();
            let owed = reply_to.as_ref().is_some_and(|id| ledger.owed.contains(id));
            if !owed {
                ledger.writing += 1;
            }
            !owed
        };
        let writing = Writing {
            shared: Arc::clone(&self.shared),
            reply_to,
            counted,
        };
        let send = self.inner.send(item);
        async move {
            let result = send.await;
            drop(writing);
            result
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.shared.queued() < self.limit {
                break;
            }
            freed.await;
        }
        let message = self.inner.receive().await?;
        match &message {
            JsonRpcMessage::Request(request) => {
                self.shared.ledger().owed.insert(request.id.clone());
            }
            // A cancelled request gets no reply.
            JsonRpcMessage::Notification(notification) => {
                if let ClientNotification::CancelledNotification(cancelled) =
                    &notification.notification
                    && let Some(id) = &cancelled.params.request_id
                {
                    self.shared.ledger().owed.remove(id);
                    self.shared.freed.notify_waiters();
                }
            }
            _ => {}
        }
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}
