//! Delivering a run's events to its observers.

use std::sync::{Arc, Mutex};

use crate::sync::lock;
use crate::{Event, Observer, RunPlace};

/// Delivers the events of one run to every observer, one event at a time, with the run's
/// place in the tree.
#[derive(Clone, Default)]
pub(crate) struct Emitter {
    observers: Arc<[Arc<dyn Observer>]>,
    order: Arc<Mutex<()>>,
    place: RunPlace,
}

impl Emitter {
    pub(crate) fn new(observers: Vec<Arc<dyn Observer>>) -> Self {
        Self {
            observers: observers.into(),
            order: Arc::default(),
            place: RunPlace::default(),
        }
    }

    /// The same observers, for the run at `place` (events of the whole tree stay in one
    /// order).
    pub(crate) fn at(&self, place: RunPlace) -> Self {
        Self {
            observers: Arc::clone(&self.observers),
            order: Arc::clone(&self.order),
            place,
        }
    }

    /// The place of the run whose events this emits.
    pub(crate) fn place(&self) -> &RunPlace {
        &self.place
    }

    /// Whether anyone listens: event payloads are only built when this is true.
    pub(crate) fn active(&self) -> bool {
        !self.observers.is_empty()
    }

    /// Builds the event (only when someone listens) and delivers it.
    pub(crate) fn emit_with(&self, event: impl FnOnce() -> Event) {
        if self.active() {
            self.emit(&event());
        }
    }

    pub(crate) fn emit(&self, event: &Event) {
        if self.observers.is_empty() {
            return;
        }
        // Serialize deliveries so that observers never see two events interleaved, even when
        // a custom batch executor reports items from several threads.
        let _order = lock(&self.order);
        for observer in self.observers.iter() {
            observer.on_run_event(&self.place, event);
        }
    }
}
