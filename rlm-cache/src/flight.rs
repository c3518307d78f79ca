//! Single-flight: at most one upstream call per distinct request at a time.
//!
//! The first caller of a request that is not cached becomes its *leader*: it registers a
//! [`Flight`] in the table and sends the request upstream. Callers of the same request that
//! arrive while the flight is registered *follow* it: they wait for its outcome instead of
//! sending their own.
//!
//! Membership is decided synchronously, under one short lock, so a batch knows which of its
//! requests it leads before it hands them to the inner backend's `complete_batch`.
//! (moka's `try_get_with` coalesces too, but decides inside an `await`, one key at a time,
//! which cannot tell a batch up front which keys it must send.)
//!
//! Outcomes:
//! - success: published to the followers, then stored in the cache, then the flight is
//!   retired (so a newcomer finds either the flight or the cached value, never neither);
//! - error: published to the followers that are already waiting and retired at once, so a
//!   later identical request goes upstream again (errors are never cached);
//! - cancellation or a dropped leader: the flight is *abandoned*; its followers retry, and
//!   one of them becomes the new leader. A caller's cancellation never reaches callers who
//!   did not cancel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rlm_core::{BatchResult, Completion, LlmError};
use tokio::sync::watch;

use crate::key::RequestKey;

/// What a flight delivers: the shared completion, or the error every follower gets.
pub(crate) type Outcome = Result<Arc<Completion>, LlmError>;

#[derive(Clone)]
enum State {
    Running,
    Done(Outcome),
    Abandoned,
}

/// One upstream call that several callers wait for.
pub(crate) struct Flight {
    key: RequestKey,
    state: watch::Sender<State>,
}

impl Flight {
    /// Waits for the outcome; `None` when the flight was abandoned (retry then).
    pub(crate) async fn wait(&self) -> Option<Outcome> {
        let mut receiver = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let state = receiver
            .wait_for(|state| !matches!(state, State::Running))
            .await
            .ok()?;
        match &*state {
            State::Done(outcome) => Some(outcome.clone()),
            State::Running | State::Abandoned => None,
        }
    }

    /// Moves a running flight to `state`; a finished flight keeps its outcome.
    fn settle(&self, state: State) {
        self.state.send_if_modified(|current| {
            if matches!(current, State::Running) {
                *current = state;
                true
            } else {
                false
            }
        });
    }
}

/// The flights in progress, by request.
#[derive(Default)]
pub(crate) struct Flights {
    table: Mutex<HashMap<RequestKey, Arc<Flight>>>,
}

/// How a caller takes part in a request.
pub(crate) enum Join {
    /// Nobody is sending it: the caller sends it and must settle the [`Lead`].
    Lead(Lead),
    /// Somebody is sending it: wait on the flight.
    Follow(Arc<Flight>),
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<RequestKey, Arc<Flight>>> {
        // Every critical section is a map lookup, insert or remove: a panic cannot leave
        // the map half-updated, so a poisoned lock is still sound to use.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key`, or starts one.
    pub(crate) fn join(self: &Arc<Self>, key: &RequestKey) -> Join {
        let mut table = self.lock();
        if let Some(flight) = table.get(key) {
            return Join::Follow(Arc::clone(flight));
        }
        let (state, _) = watch::channel(State::Running);
        let flight = Arc::new(Flight {
            key: key.clone(),
            state,
        });
        table.insert(key.clone(), Arc::clone(&flight));
        Join::Lead(Lead {
            flights: Arc::clone(self),
            flight,
        })
    }

    /// Removes `flight` from the table (if it is still the registered one).
    fn retire(&self, flight: &Arc<Flight>) {
        let mut table = self.lock();
        if table
            .get(&flight.key)
            .is_some_and(|registered| Arc::ptr_eq(registered, flight))
        {
            table.remove(&flight.key);
        }
    }

    /// The number of flights in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The duty of sending a request upstream and telling its followers.
///
/// Dropping a lead that has not published a result abandons its flight: the followers retry.
pub(crate) struct Lead {
    flights: Arc<Flights>,
    flight: Arc<Flight>,
}

impl Lead {
    /// The request to send.
    pub(crate) fn key(&self) -> &RequestKey {
        &self.flight.key
    }

    /// Hands a successful result to the followers. The flight stays registered (so newcomers
    /// get the value too) until [`close`](Self::close), which the caller does after storing
    /// the value in the cache.
    pub(crate) fn succeed(&self, value: Arc<Completion>) {
        self.flight.settle(State::Done(Ok(value)));
    }

    /// Hands an error to the waiting followers and retires the flight, so that later
    /// requests go upstream again.
    pub(crate) fn fail(&self, error: LlmError) {
        self.flight.settle(State::Done(Err(error)));
        self.flights.retire(&self.flight);
    }

    /// Publishes `result` as it arrives: success is shared, an error is shared and retired,
    /// cancellation abandons the flight.
    pub(crate) fn publish(&self, result: &BatchResult) {
        match result {
            Ok(completion) => {
                if self.value().is_none() {
                    self.succeed(Arc::new(completion.clone()));
                }
            }
            Err(LlmError::Cancelled) => self.close(),
            Err(error) => self.fail(error.clone()),
        }
    }

    /// The value already handed to the followers, if any.
    pub(crate) fn value(&self) -> Option<Arc<Completion>> {
        match &*self.flight.state.borrow() {
            State::Done(Ok(value)) => Some(Arc::clone(value)),
            _ => None,
        }
    }

    /// Ends the lead: abandons the flight if nothing was published, and retires it.
    pub(crate) fn close(&self) {
        self.flight.settle(State::Abandoned);
        self.flights.retire(&self.flight);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::FingerprintState;
    use rlm_core::CompletionRequest;

    fn key(prompt: &str) -> RequestKey {
        RequestKey::new(
            CompletionRequest::prompt("m", prompt),
            &FingerprintState::default(),
        )
    }

    fn lead(join: Join) -> Option<Lead> {
        match join {
            Join::Lead(lead) => Some(lead),
            Join::Follow(_) => None,
        }
    }

    fn follow(join: Join) -> Option<Arc<Flight>> {
        match join {
            Join::Follow(flight) => Some(flight),
            Join::Lead(_) => None,
        }
    }

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights = Arc::new(Flights::default());
        let k = key("a");
        let leader = lead(flights.join(&k));
        assert!(leader.is_some());
        let follower = follow(flights.join(&k));
        assert!(follower.is_some());
        if let Some(leader) = &leader {
            leader.succeed(Arc::new(Completion::new("m", "A")));
        }
        let got = match &follower {
            Some(flight) => flight.wait().await,
            None => None,
        };
        assert_eq!(
            got.and_then(Result::ok).map(|c| c.text.clone()),
            Some("A".into())
        );
        // Still registered until closed: newcomers follow and get the value at once.
        assert_eq!(flights.len(), 1);
        drop(leader);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn errors_retire_at_once_and_drops_abandon() {
        let flights = Arc::new(Flights::default());
        let k = key("a");
        let leader = lead(flights.join(&k));
        let follower = follow(flights.join(&k));
        if let Some(leader) = &leader {
            leader.fail(LlmError::other("boom"));
        }
        assert_eq!(
            flights.len(),
            0,
            "an error is never served to later callers"
        );
        let got = match &follower {
            Some(flight) => flight.wait().await,
            None => None,
        };
        assert_eq!(got.map(|o| o.is_err()), Some(true));
        drop(leader);

        let leader = lead(flights.join(&k));
        let follower = follow(flights.join(&k));
        drop(leader);
        let got = match &follower {
            Some(flight) => Some(flight.wait().await),
            None => None,
        };
        assert_eq!(got.map(|o| o.is_none()), Some(true), "abandoned");
        assert!(lead(flights.join(&k)).is_some(), "the next caller leads");
    }
}
