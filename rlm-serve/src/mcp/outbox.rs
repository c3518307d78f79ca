//! Backpressure for a client that stops reading: a bound on what is queued for it.
//!
//! Two counts stop the reading of further requests while they are at their bound:
//! - messages being written (replies, progress notifications): the writer is behind, so a
//!   client that sends but never reads fills its own pipe and waits, instead of making the
//!   server hold every reply in memory;
//! - requests read whose reply is not written yet (cancelled ones excepted): however fast
//!   their handlers answer, replies cannot pile up faster than this allows.
//!
//! The second bound is much larger than the first, so long-running calls in progress do not
//! keep a client's further requests (a cancellation, a `ping`) from being read.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rmcp::RoleServer;
use rmcp::model::{ClientNotification, JsonRpcMessage, RequestId};
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use tokio::sync::Notify;

/// Messages being written, at most, before reading waits.
pub const MAX_WRITING: usize = 64;
/// Requests awaiting their written reply, at most, before reading waits.
pub const MAX_OWED: usize = 1024;

/// What is queued for the client.
#[derive(Debug, Default)]
struct Ledger {
    /// Requests read whose reply is not written yet.
    owed: HashSet<RequestId>,
    /// Messages being written.
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
}

/// A transport that stops reading requests while its writer is behind or too many replies
/// are owed (see the module docs).
#[derive(Debug)]
pub struct Backpressure<T> {
    inner: T,
    shared: Arc<Shared>,
    max_writing: usize,
    max_owed: usize,
}

impl<T> Backpressure<T> {
    /// `inner` with the default bounds, [`MAX_WRITING`] and [`MAX_OWED`].
    pub fn new(inner: T) -> Self {
        Self::with_limits(inner, MAX_WRITING, MAX_OWED)
    }

    /// `inner` with bounds of `max_writing` messages being written and `max_owed` replies
    /// owed (each at least 1).
    pub fn with_limits(inner: T, max_writing: usize, max_owed: usize) -> Self {
        Self {
            inner,
            shared: Arc::default(),
            max_writing: max_writing.max(1),
            max_owed: max_owed.max(1),
        }
    }

    /// Messages being written and replies owed, now.
    pub fn queued(&self) -> (usize, usize) {
        let ledger = self.shared.ledger();
        (ledger.writing, ledger.owed.len())
    }

    fn full(&self) -> bool {
        let ledger = self.shared.ledger();
        ledger.writing >= self.max_writing || ledger.owed.len() >= self.max_owed
    }
}

/// A message being written; dropped when the write ends (or is abandoned).
struct Writing {
    shared: Arc<Shared>,
    reply_to: Option<RequestId>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        {
            let mut ledger = self.shared.ledger();
            ledger.writing = ledger.writing.saturating_sub(1);
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
        self.shared.ledger().writing += 1;
        let writing = Writing {
            shared: Arc::clone(&self.shared),
            reply_to,
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
            if !self.full() {
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
