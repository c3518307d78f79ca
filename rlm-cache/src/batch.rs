//! The batch path: deduplicate, serve hits, follow other callers' flights, and send the
//! distinct misses through the inner backend's own `complete_batch`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, CancellationToken, Completion,
    CompletionRequest, LlmError,
};

use crate::flight::{Flight, Lead, Outcome};
use crate::key::RequestKey;
use crate::{Core, Lookup};

/// One distinct request of a batch and the positions it occupies.
struct Group {
    key: RequestKey,
    indices: Vec<usize>,
}

/// How waiting on another caller's flight ended.
enum Followed {
    Done(Outcome),
    Abandoned,
    Cancelled,
}

/// Runs a batch; see the crate documentation for the semantics.
pub(crate) async fn complete_batch<B: BatchExecutor + ?Sized>(
    core: &Core,
    inner: &B,
    requests: Vec<CompletionRequest>,
    options: &BatchOptions,
) -> Vec<BatchResult> {
    let total = requests.len();
    if options.cancel.is_cancelled() {
        return (0..total).map(|_| Err(LlmError::Cancelled)).collect();
    }
    let (groups, group_of) = group(core, requests);
    let events = Arc::new(Events::new(total, options.observer.clone()));
    let mut results: Vec<Option<BatchResult>> = (0..total).map(|_| None).collect();
    // Groups still to look up: all of them at first, later those whose flight was abandoned.
    let mut pending: Vec<usize> = (0..groups.len()).collect();
    let mut waiting = FuturesUnordered::new();
    let mut round: Option<BoxFuture<'_, (Arc<Round>, Vec<BatchResult>)>> = None;

    loop {
        // A new round of upstream calls starts only when the previous one has ended, so the
        // batch never has more than `max_concurrent` requests upstream.
        if round.is_none() && !pending.is_empty() {
            let mut slots = Vec::new();
            for index in std::mem::take(&mut pending) {
                if options.cancel.is_cancelled() {
                    break;
                }
                let group = &groups[index];
                match core.lookup(&group.key).await {
                    Lookup::Hit(value) => {
                        core.counters.hits(group.indices.len());
                        for &i in &group.indices {
                            let result = Ok(Completion::clone(&value));
                            events.start(i, group.key.request());
                            events.finish(i, &result);
                            put(&mut results, i, result);
                        }
                    }
                    Lookup::Follow(flight) => {
                        for &i in &group.indices {
                            events.start(i, group.key.request());
                        }
                        waiting.push(follow(index, flight, options.cancel.clone()));
                    }
                    Lookup::Lead(lead) => slots.push(Slot {
                        lead,
                        indices: group.indices.clone(),
                    }),
                }
            }
            // Leads not started (the batch was cancelled meanwhile) abandon their flights
            // as they drop, so other callers waiting for them retry.
            if !slots.is_empty() && !options.cancel.is_cancelled() {
                round = Some(Box::pin(run_round(
                    core,
                    inner,
                    Round {
                        slots,
                        events: Arc::clone(&events),
                    },
                    options,
                )));
            }
            continue;
        }
        if round.is_none() && waiting.is_empty() {
            break;
        }
        tokio::select! {
            (done, outcomes) = async {
                match round.as_mut() {
                    Some(round) => round.await,
                    None => std::future::pending().await,
                }
            }, if round.is_some() => {
                round = None;
                settle_round(core, &done, outcomes, &mut results).await;
            }
            Some((index, followed)) = waiting.next(), if !waiting.is_empty() => {
                let group = &groups[index];
                match followed {
                    Followed::Done(outcome) => {
                        core.counters.coalesced(group.indices.len());
                        for &i in &group.indices {
                            let result = outcome.clone().map(Arc::unwrap_or_clone);
                            events.finish(i, &result);
                            put(&mut results, i, result);
                        }
                    }
                    Followed::Abandoned => pending.push(index),
                    Followed::Cancelled => {}
                }
            }
            // Unreachable (a branch is always enabled here), but never a panic.
            else => {}
        }
    }

    results
        .into_iter()
        .enumerate()
        .map(|(i, result)| {
            let result = result.unwrap_or(Err(LlmError::Cancelled));
            if let Some(group) = group_of.get(i).and_then(|&g| groups.get(g)) {
                events.settle(i, group.key.request(), &result);
            }
            result
        })
        .collect()
}

/// Keys every request and groups identical ones, in order of first appearance.
fn group(core: &Core, requests: Vec<CompletionRequest>) -> (Vec<Group>, Vec<usize>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of = Vec::with_capacity(requests.len());
    let mut seen: HashMap<RequestKey, usize> = HashMap::with_capacity(requests.len());
    for (i, request) in requests.into_iter().enumerate() {
        match seen.entry(core.key(request)) {
            Entry::Occupied(entry) => {
                let g = *entry.get();
                groups[g].indices.push(i);
                group_of.push(g);
            }
            Entry::Vacant(entry) => {
                let g = groups.len();
                groups.push(Group {
                    key: entry.key().clone(),
                    indices: vec![i],
                });
                entry.insert(g);
                group_of.push(g);
            }
        }
    }
    (groups, group_of)
}

fn put(results: &mut [Option<BatchResult>], index: usize, result: BatchResult) {
    if let Some(slot) = results.get_mut(index) {
        *slot = Some(result);
    }
}

async fn follow(group: usize, flight: Arc<Flight>, cancel: CancellationToken) -> (usize, Followed) {
    tokio::select! {
        // An outcome that is already there is kept even if the batch was just cancelled.
        biased;
        outcome = flight.wait() => match outcome {
            Some(outcome) => (group, Followed::Done(outcome)),
            None => (group, Followed::Abandoned),
        },
        () = cancel.cancelled() => (group, Followed::Cancelled),
    }
}

/// A distinct request this batch sends upstream, and the positions waiting for it.
struct Slot {
    lead: Lead,
    indices: Vec<usize>,
}

/// The requests of one inner `complete_batch` call. As the inner observer, it forwards
/// events to the caller's positions and hands each result to other callers' followers the
/// moment it arrives.
struct Round {
    slots: Vec<Slot>,
    events: Arc<Events>,
}

impl BatchObserver for Round {
    fn started(&self, index: usize, request: &CompletionRequest) {
        if let Some(slot) = self.slots.get(index) {
            for &i in &slot.indices {
                self.events.start(i, request);
            }
        }
    }

    fn finished(&self, index: usize, result: &BatchResult, _elapsed: Duration) {
        if let Some(slot) = self.slots.get(index) {
            slot.lead.publish(result);
            for &i in &slot.indices {
                self.events.finish(i, result);
            }
        }
    }
}

async fn run_round<B: BatchExecutor + ?Sized>(
    core: &Core,
    inner: &B,
    round: Round,
    options: &BatchOptions,
) -> (Arc<Round>, Vec<BatchResult>) {
    let requests: Vec<CompletionRequest> = round
        .slots
        .iter()
        .map(|slot| slot.lead.key().request().clone())
        .collect();
    core.counters.upstream_calls(requests.len());
    let round = Arc::new(round);
    let inner_options = BatchOptions::new(options.max_concurrent)
        .with_cancel(options.cancel.clone())
        .with_observer(Arc::clone(&round) as Arc<dyn BatchObserver>);
    let outcomes = inner.complete_batch(requests, &inner_options).await;
    (round, outcomes)
}

/// Stores the round's successes, retires its flights and fills its positions.
async fn settle_round(
    core: &Core,
    round: &Round,
    outcomes: Vec<BatchResult>,
    results: &mut [Option<BatchResult>],
) {
    let mut outcomes = outcomes.into_iter();
    for slot in &round.slots {
        let result = outcomes.next().unwrap_or_else(|| {
            Err(LlmError::other(
                "the inner backend returned fewer results than requests",
            ))
        });
        let duplicates = slot.indices.len().saturating_sub(1);
        match &result {
            Ok(completion) => {
                core.counters.misses(1);
                core.counters.coalesced(duplicates);
                let value = slot.lead.value().unwrap_or_else(|| {
                    let value = Arc::new(completion.clone());
                    slot.lead.succeed(Arc::clone(&value));
                    value
                });
                core.store(slot.lead.key(), value).await;
            }
            Err(LlmError::Cancelled) => {}
            Err(error) => {
                core.counters.misses(1);
                core.counters.coalesced(duplicates);
                slot.lead.fail(error.clone());
            }
        }
        // Retires the flight; abandons it first if it never got a result.
        slot.lead.close();
        if let Some((&first, rest)) = slot.indices.split_first() {
            for &i in rest {
                put(results, i, result.clone());
            }
            put(results, first, result);
        }
    }
}

enum Progress {
    Idle,
    Started(Instant),
    Finished,
}

/// Reports the caller's observer events per original position, each exactly once.
struct Events {
    observer: Option<Arc<dyn BatchObserver>>,
    progress: Mutex<Vec<Progress>>,
}

impl Events {
    fn new(total: usize, observer: Option<Arc<dyn BatchObserver>>) -> Self {
        let progress = if observer.is_some() {
            (0..total).map(|_| Progress::Idle).collect()
        } else {
            Vec::new()
        };
        Self {
            observer,
            progress: Mutex::new(progress),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Progress>> {
        // Updates are single assignments: a poisoned lock still holds consistent state.
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports `started` for `index` unless it already started.
    fn start(&self, index: usize, request: &CompletionRequest) {
        let Some(observer) = &self.observer else {
            return;
        };
        {
            let mut progress = self.lock();
            match progress.get_mut(index) {
                Some(state @ Progress::Idle) => *state = Progress::Started(Instant::now()),
                _ => return,
            }
        }
        observer.started(index, request);
    }

    /// Reports `finished` for `index` if it started and has not finished.
    fn finish(&self, index: usize, result: &BatchResult) {
        let Some(observer) = &self.observer else {
            return;
        };
        let at = {
            let mut progress = self.lock();
            match progress.get_mut(index) {
                Some(state) => match *state {
                    Progress::Started(at) => {
                        *state = Progress::Finished;
                        at
                    }
                    _ => return,
                },
                None => return,
            }
        };
        observer.finished(index, result, at.elapsed());
    }

    /// Closes the books on `index` at the end of the batch: a started item is finished; an
    /// item that got a real result without any event (an inner backend that ignores its
    /// observer) gets both; an item cancelled before it started gets none.
    fn settle(&self, index: usize, request: &CompletionRequest, result: &BatchResult) {
        if self.observer.is_none() {
            return;
        }
        let idle = matches!(self.lock().get(index), Some(Progress::Idle));
        if idle && !matches!(result, Err(LlmError::Cancelled)) {
            self.start(index, request);
        }
        self.finish(index, result);
    }
}
