//! `llm_query` and `llm_batch`: sub-calls made from the REPL's blocking thread, run on the
//! async executor, accounted against the run's budgets and reported to observers.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rhai::Dynamic;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, Completion, CompletionRequest,
    LlmError, ReplyBudget, Role, Text,
};
use tokio::runtime::Handle;
use tracing::Instrument;

use super::children::ChildRunner;
use super::handover::ScriptText;
use super::output::prefix;
use crate::budget::{Charge, Reserved};
use crate::state::RunState;
use crate::sync::lock;
use crate::{Event, SubCallRecord};

/// Characters of a prompt carried by a [`Event::SubCallStart`].
const PROMPT_PREVIEW_CHARS: usize = 500;
/// Characters of a reply carried by a [`Event::SubCallEnd`]: longer ones keep their head and
/// tail, with their true length stated.
const RESPONSE_EVENT_CHARS: usize = 64 << 10;
/// Bytes of an over-long answer kept after the explanation.
const KEPT_PREFIX_BYTES: usize = 4 << 10;

/// Measures a block's script time: wall time minus time spent waiting for sub-calls.
#[derive(Debug)]
pub(crate) struct BlockClock {
    epoch: Instant,
    start_ns: AtomicU64,
    waited_ns: AtomicU64,
    /// When the wait in progress began (0: none), so that a watchdog reading the clock from
    /// another thread does not count it as script time.
    wait_start_ns: AtomicU64,
    /// Whether the process's resident memory is followed (a memory budget is set).
    measure: bool,
    /// Resident bytes the block's growth is measured from: at its start, raised by what
    /// sub-call waits brought in (their answers are accounted for by the batch; 0: unknown).
    resident_base: AtomicUsize,
    /// Resident bytes when the wait in progress began.
    resident_at_wait: AtomicUsize,
    /// Bytes the scope held when the block began, plus the sub-call answers kept since (with
    /// the counting allocator: plus the block's growth, as of the sub-call function running;
    /// see [`settle_held`](Self::settle_held)).
    held: AtomicUsize,
    /// Bytes the scope held when the block began.
    scope_held: AtomicUsize,
    /// What the thread running the block's script allocated, when the counting allocator is
    /// the global one (see `rlm_alloc`): the block's own growth, where the process's resident
    /// memory would also count every other block running in the process. Its lock also
    /// orders [`discount`](Self::discount)s with a block's start.
    meter: Mutex<Option<rlm_alloc::Meter>>,
    /// Which block runs (one more at each [`begin`](Self::begin)): memory handed over in one
    /// block and freed elsewhere later is discounted from that block only.
    block: AtomicU64,
    /// The prompts the running block shared with its requests that it may still be
    /// discounted (see [`release_handed`](Self::release_handed)).
    handed: Mutex<Vec<Weak<ScriptText>>>,
}

/// Where a [`rlm_alloc::Meter`]'s readings start, so that they are never 0 ("unknown") and
/// differences between them stay positive.
const METER_ORIGIN: usize = 1 << 62;

/// How much `now` is above `base`, when both were read in the same measure: the block's
/// meter reads from [`METER_ORIGIN`] (about 2^62) up or down by at most the memory there is,
/// the process's resident memory far below it. The measure changes when a block's script
/// starts on its thread ([`BlockClock::follow_this_thread`]): a watchdog looking then may
/// read a base in one measure and a reading in the other, which is no growth at all.
fn growth(base: usize, now: usize) -> Option<usize> {
    let metered = |reading: usize| reading >= METER_ORIGIN / 2;
    (metered(base) == metered(now)).then(|| now.saturating_sub(base))
}

/// A reading of the memory a block's growth is measured in: what the thread of `meter`
/// allocated (from [`METER_ORIGIN`]), or else the process's resident memory (0: unknown).
fn reading(meter: Option<rlm_alloc::Meter>) -> usize {
    match meter {
        Some(meter) => METER_ORIGIN.wrapping_add_signed(meter.bytes()),
        None => super::memory::resident_bytes().unwrap_or(0),
    }
}

impl BlockClock {
    pub(crate) fn new(measure_memory: bool) -> Self {
        Self {
            epoch: Instant::now(),
            start_ns: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            wait_start_ns: AtomicU64::new(0),
            measure: measure_memory,
            resident_base: AtomicUsize::new(0),
            resident_at_wait: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            scope_held: AtomicUsize::new(0),
            meter: Mutex::new(None),
            block: AtomicU64::new(0),
            handed: Mutex::new(Vec::new()),
        }
    }

    /// The memory the block's growth is measured in: what its thread allocated (see
    /// [`follow_this_thread`](Self::follow_this_thread)), or else the process's resident
    /// memory; 0 when not measured or unknown.
    fn resident(&self) -> usize {
        if !self.measure {
            return 0;
        }
        reading(*lock(&self.meter))
    }

    /// The block's script runs on this thread: its growth is from now on what this thread
    /// allocates, when the counting allocator is the global one.
    pub(crate) fn follow_this_thread(&self) {
        if !self.measure {
            return;
        }
        let meter = rlm_alloc::Meter::current();
        if meter.is_some() {
            let mut followed = lock(&self.meter);
            *followed = meter;
            self.resident_base.store(reading(meter), Ordering::SeqCst);
        }
    }

    /// The running block, when its growth is what its thread allocates (the counting
    /// allocator measures it): memory crossing to and from other threads is then accounted
    /// by hand (see [`super::handover`]).
    pub(crate) fn metered_block(&self) -> Option<u64> {
        let meter = lock(&self.meter);
        meter.is_some().then(|| self.block.load(Ordering::SeqCst))
    }

    /// `text` was shared with the requests of `block`: watched while that block runs.
    pub(crate) fn hand_over(&self, block: u64, text: Weak<ScriptText>) {
        let mut handed = lock(&self.handed);
        if self.block.load(Ordering::SeqCst) != block {
            return;
        }
        if handed.len() == handed.capacity() && handed.len() >= 64 {
            // Before the list grows, those freed or released leave it: it stays within twice
            // the prompts the requests still hold.
            handed.retain(|text| text.upgrade().is_some_and(|text| text.watched()));
        }
        handed.push(text);
    }

    /// Discounts from the running block's growth the prompts it shared that only the
    /// requests' side (the cache, a request in flight) still holds; returns the bytes.
    pub(crate) fn release_handed(&self) -> usize {
        let mut released = 0;
        lock(&self.handed).retain(|text| match text.upgrade() {
            Some(text) => {
                released += text.release(self);
                text.watched()
            }
            None => false,
        });
        released
    }

    /// Takes `bytes` off the growth of `block`, if it still runs: memory its thread was
    /// charged with that another thread freed (a prompt the script no longer holds, freed
    /// last by the cache or a request).
    pub(crate) fn discount(&self, block: u64, bytes: usize) {
        let meter = lock(&self.meter);
        if meter.is_some()
            && self.block.load(Ordering::SeqCst) == block
            && self.resident_base.load(Ordering::SeqCst) != 0
        {
            self.resident_base.fetch_add(bytes, Ordering::SeqCst);
        }
    }

    /// How much the process's resident memory grew during the block's script time (sub-call
    /// waits excepted); `None` while waiting or when it cannot be known.
    pub(crate) fn memory_growth(&self) -> Option<usize> {
        let base = self.resident_base.load(Ordering::SeqCst);
        if base == 0 || self.wait_start_ns.load(Ordering::SeqCst) != 0 {
            return None;
        }
        growth(base, self.resident())
    }

    /// A sub-call function starts: with the counting allocator, what the block holds is the
    /// scope it began with and its growth since, the answers it kept included and those it
    /// dropped not (without it, every answer received stays counted until the block ends).
    /// Prompts the script let go of are discounted first when the block holds more than half
    /// of `budget` (a look through the prompts it sent, so not at every call).
    pub(crate) fn settle_held(&self, budget: usize) {
        let scope = self.scope_held.load(Ordering::SeqCst);
        let holds = || {
            self.memory_growth()
                .map(|growth| scope.saturating_add(growth))
        };
        let Some(mut held) = holds() else { return };
        if budget > 0 && held > budget / 2 && self.release_handed() > 0 {
            held = holds().unwrap_or(held);
        }
        self.held.store(held, Ordering::SeqCst);
    }

    /// Bytes `budget` leaves beside what the block holds now (the scope and the answers kept).
    fn room(&self, budget: usize) -> usize {
        budget.saturating_sub(self.held.load(Ordering::SeqCst))
    }

    /// Counts `bytes` more held, if that stays within `budget` (0: none); returns whether it did.
    fn hold(&self, bytes: usize, budget: usize) -> bool {
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                let now = held.saturating_add(bytes);
                (budget == 0 || now <= budget).then_some(now)
            })
            .is_ok()
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A block starts; the scope holds `held` bytes.
    pub(crate) fn begin(&self, held: usize) {
        self.start_ns.store(self.now_ns(), Ordering::SeqCst);
        self.waited_ns.store(0, Ordering::SeqCst);
        self.wait_start_ns.store(0, Ordering::SeqCst);
        self.held.store(held, Ordering::SeqCst);
        self.scope_held.store(held, Ordering::SeqCst);
        // With the counting allocator, the base is set when the script starts on its thread
        // (`follow_this_thread`); until then the growth is unknown (0), and the process's
        // resident memory (a read of /proc) is not needed.
        let base = if self.measure && !rlm_alloc::installed() {
            reading(None)
        } else {
            0
        };
        // Locks in this order only (a prompt freed while the list is held discounts).
        let mut handed = lock(&self.handed);
        let mut meter = lock(&self.meter);
        *meter = None;
        self.block.fetch_add(1, Ordering::SeqCst);
        self.resident_base.store(base, Ordering::SeqCst);
        drop(meter);
        let earlier = std::mem::take(&mut *handed);
        drop(handed);
        // The list was built apart from the meter (in the sub-call functions).
        rlm_alloc::unmetered(|| drop(earlier));
    }

    /// A wait for sub-calls begins; it does not count as script time.
    pub(super) fn begin_wait(&self) {
        self.resident_at_wait
            .store(self.resident(), Ordering::SeqCst);
        self.wait_start_ns
            .store(self.now_ns().max(1), Ordering::SeqCst);
    }

    /// The wait ends.
    pub(super) fn end_wait(&self) {
        let start = self.wait_start_ns.load(Ordering::SeqCst);
        if start > 0 {
            // Counted as waited before it stops being "in progress": a reader may subtract
            // it twice for a moment (too little script time), never not at all.
            let waited = self.now_ns().saturating_sub(start);
            self.waited_ns.fetch_add(waited, Ordering::SeqCst);
            // What the wait brought in (answers) is not the script's growth: the answers kept
            // are counted in `held`.
            let before = self.resident_at_wait.load(Ordering::SeqCst);
            let brought = growth(before, self.resident()).unwrap_or(0);
            self.resident_base.fetch_add(brought, Ordering::SeqCst);
            self.wait_start_ns.store(0, Ordering::SeqCst);
        }
    }

    /// Script time of the current block.
    pub(crate) fn script_time(&self) -> Duration {
        // The wait in progress first, then the waits done (see `end_wait`).
        let wait_start = self.wait_start_ns.load(Ordering::SeqCst);
        let waited = self.waited_ns.load(Ordering::SeqCst);
        let now = self.now_ns();
        let waiting = if wait_start > 0 {
            now.saturating_sub(wait_start)
        } else {
            0
        };
        let elapsed = now.saturating_sub(self.start_ns.load(Ordering::SeqCst));
        Duration::from_nanos(elapsed.saturating_sub(waited).saturating_sub(waiting))
    }
}

/// Makes the sub-calls of one REPL (one run).
pub(crate) struct SubCaller {
    backend: Arc<dyn BatchExecutor>,
    model: String,
    handle: Option<Handle>,
    max_concurrent: usize,
    run: Arc<RunState>,
    clock: Arc<BlockClock>,
    next_id: Arc<AtomicU64>,
    next_batch: AtomicU64,
    records: Arc<Mutex<Vec<SubCallRecord>>>,
    /// Starts child runs, where `rlm_query` may (else it is a plain `llm_query`).
    children: Option<Arc<dyn ChildRunner>>,
    /// The largest prompt a sub-call may send, in estimated tokens (`None`: no limit).
    max_prompt_tokens: Option<u64>,
    /// Bytes the scope and the answers kept during a block may hold together (the memory
    /// budget; 0: no limit).
    max_batch_bytes: usize,
    /// Bytes one answer may hold (the string limit; 0: no limit).
    max_answer_bytes: usize,
    /// How `llm_*_json` asks for JSON.
    structured: crate::schema::StructuredOutput,
}

impl SubCaller {
    pub(crate) fn new(
        backend: Arc<dyn BatchExecutor>,
        model: String,
        handle: Option<Handle>,
        max_concurrent: usize,
        run: Arc<RunState>,
        clock: Arc<BlockClock>,
    ) -> Self {
        Self {
            backend,
            model,
            handle,
            max_concurrent: max_concurrent.max(1),
            run,
            clock,
            next_id: Arc::new(AtomicU64::new(0)),
            next_batch: AtomicU64::new(0),
            records: Arc::default(),
            children: None,
            max_prompt_tokens: None,
            max_batch_bytes: 0,
            max_answer_bytes: 0,
            structured: crate::schema::StructuredOutput::Auto,
        }
    }

    /// How `llm_query_json` / `llm_batch_json` ask for JSON.
    pub(crate) fn with_structured_output(mut self, mode: crate::schema::StructuredOutput) -> Self {
        self.structured = mode;
        self
    }

    /// How `llm_query_json` / `llm_batch_json` ask for JSON.
    pub(crate) fn structured_output(&self) -> crate::schema::StructuredOutput {
        self.structured
    }

    /// Lets `rlm_query` start child runs through `children`, and bounds each sub-call's
    /// prompt to `max_prompt_tokens`.
    pub(crate) fn with_children(
        mut self,
        children: Option<Arc<dyn ChildRunner>>,
        max_prompt_tokens: Option<u64>,
    ) -> Self {
        self.children = children;
        self.max_prompt_tokens = max_prompt_tokens;
        self
    }

    /// Whether `rlm_query` starts a child run here (else it is a plain `llm_query`: no child
    /// runner, as at the deepest level of the tree).
    pub(crate) fn can_recurse(&self) -> bool {
        self.children.is_some()
    }

    /// Child runs, at most `max_concurrent` at once; their answers in order (an
    /// `Error: ...` string for a child that gave none).
    pub(crate) fn children(
        &self,
        tasks: Vec<(String, Dynamic)>,
        max_concurrent: usize,
    ) -> Vec<String> {
        let total = tasks.len();
        let Some(runner) = &self.children else {
            return vec!["Error: child runs are not available here".to_owned(); total];
        };
        if self.run.cancel.is_cancelled() {
            return vec![self.run.refusal(); total];
        }
        let runner = Arc::clone(runner);
        // Each child is started (and gets its id) when the stream reaches it, in order.
        let children = futures_util::stream::iter(
            tasks
                .into_iter()
                .map(move |(query, context)| runner.run_child(query, context)),
        )
        .buffered(max_concurrent.max(1))
        .collect::<Vec<String>>();
        let mut answers = self.wait(children).unwrap_or_default();
        answers.resize_with(total, || {
            "Error: the child run ended without an answer".to_owned()
        });
        answers
    }

    /// The `Error: ...` for a prompt over `--sub-max-prompt-tokens`, if it is one.
    fn oversized(&self, prompt: &str) -> Option<String> {
        let max = self.max_prompt_tokens?;
        let estimate = rlm_core::estimate_tokens(prompt);
        (estimate > max).then(|| {
            format!(
                "Error: this prompt is about {estimate} tokens ({} characters), over the \
                 sub-call limit of {max} tokens; split it (chunk(text, size)) and send the \
                 pieces with llm_batch",
                prompt.chars().count()
            )
        })
    }

    /// Bounds the answers kept: `max_batch_bytes` for one batch's answers together,
    /// `max_answer_bytes` for each (0: no limit). An answer past a bound becomes an
    /// `Error: ...` string that says so; the others are kept.
    pub(crate) fn with_answer_limits(
        mut self,
        max_batch_bytes: usize,
        max_answer_bytes: usize,
    ) -> Self {
        self.max_batch_bytes = max_batch_bytes;
        self.max_answer_bytes = max_answer_bytes;
        self
    }

    /// The answer as the script gets it: an answer longer than the string limit becomes an
    /// `Error: ...` string with its start.
    fn fit_answer(&self, text: String) -> String {
        if self.max_answer_bytes == 0 || text.len() <= self.max_answer_bytes {
            return text;
        }
        let keep = KEPT_PREFIX_BYTES.min(self.max_answer_bytes / 2);
        let mut cut = keep.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!(
            "Error: the answer was {} bytes, over the string limit ({} bytes); it was paid for \
             but cannot be kept whole. Ask for a shorter answer. Its first {cut} bytes:\n{}",
            text.len(),
            self.max_answer_bytes,
            &text[..cut]
        )
    }

    /// The bound on the answers one call (a query or a whole batch) may bring in: what the
    /// memory budget leaves beside the variables and the answers kept so far (`None`: no
    /// memory budget). A backend that honours [`ReplyBudget`] charges each reply's bytes to it
    /// as they arrive and fails the replies that do not fit, before they are parsed: a batch
    /// of huge answers never has to be held whole to find that most cannot be kept.
    fn reply_budget(&self) -> Option<ReplyBudget> {
        (self.max_batch_bytes > 0)
            .then(|| ReplyBudget::new(self.clock.room(self.max_batch_bytes) as u64))
    }

    /// The default concurrency of `llm_batch`.
    pub(crate) fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// The records of the sub-calls finished since the last call, in the order they finished.
    pub(crate) fn take_records(&self) -> Vec<SubCallRecord> {
        std::mem::take(&mut *lock(&self.records))
    }

    /// Runs `future` to completion from this (blocking) thread; the time counts as waiting.
    fn wait<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.clock.begin_wait();
        let output = match &self.handle {
            // Run it as a task of the caller's runtime and block this thread (a blocking
            // thread, never a runtime worker) until it is done. Works in current-thread
            // runtimes too: their `block_on` drives the task while it waits for us.
            Some(handle) if tokio::task::try_id().is_none() => {
                let (sender, receiver) = std::sync::mpsc::sync_channel(1);
                handle.spawn(async move {
                    let _ = sender.send(future.await);
                });
                receiver.recv().ok()
            }
            // No runtime, or (misuse) called from inside an async task: use the process-wide
            // runtime, which cannot deadlock on this thread.
            _ => Some(rlm_core::blocking::block_on(future)),
        };
        self.clock.end_wait();
        output
    }

    /// One sub-call; the reply text, or a string starting `Error:`.
    pub(crate) fn query(&self, prompt: Text) -> String {
        if let Some(error) = self.oversized(&prompt) {
            return error;
        }
        self.send_one(CompletionRequest::prompt(self.model.clone(), prompt))
            .text
    }

    /// The sub-calls' model.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// The run's state (budget, books, events).
    pub(crate) fn run(&self) -> &Arc<RunState> {
        &self.run
    }

    /// One sub-call of `request` (its model set to the sub model's).
    pub(crate) fn send_one(&self, request: CompletionRequest) -> Sent {
        // After a cancel the script runs on for a few operations: what it asks for then is
        // never sent, so it is neither counted nor reported.
        if self.run.cancel.is_cancelled() {
            return Sent::failed(self.run.refusal());
        }
        let Some(mut budget) = self.run.budget.reserve_one(&request, Charge::SUB_CALL) else {
            return Sent::failed(self.run.refusal());
        };
        let prompt = request.last_user_message().unwrap_or_default();
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let turn = self.run.turn();
        let emitter = &self.run.emitter;
        let prompt_chars = prompt.chars().count();
        emitter.emit_with(|| Event::SubCallStart {
            turn,
            id,
            batch: None,
            index: None,
            model: self.model.clone(),
            prompt: prefix(prompt, PROMPT_PREVIEW_CHARS).to_owned(),
            prompt_chars,
        });
        let span = tracing::info_span!(
            "rlm_sub_call",
            id,
            model = %self.model,
            prompt_chars,
            prompt_tokens = tracing::field::Empty,
            completion_tokens = tracing::field::Empty,
        );
        let backend = Arc::clone(&self.backend);
        let cancel = self.run.cancel.clone();
        let replies = self.reply_budget();
        let started = Instant::now();
        budget.sent();
        let result = self
            .wait(
                within(replies.clone(), async move {
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => Err(LlmError::Cancelled),
                        result = backend.complete(request) => result,
                    }
                })
                .instrument(span.clone()),
            )
            .unwrap_or_else(|| {
                Err(LlmError::other(
                    "the sub-call's task ended without a result",
                ))
            });
        let latency = started.elapsed();
        let usage = result.as_ref().map(|c| c.usage).unwrap_or_default();
        span.record("prompt_tokens", usage.prompt_tokens);
        span.record("completion_tokens", usage.completion_tokens);
        budget.settle(&usage);
        let error = judge(&self.run, &result);
        let record = SubCallRecord {
            id,
            batch: None,
            index: None,
            model: self.model.clone(),
            prompt_chars,
            ok: error.is_none(),
            error,
            usage,
            latency,
        };
        emitter.emit_with(|| end_event(turn, &record, &result));
        lock(&self.records).push(record);
        self.sent(result, 0)
    }

    /// What the script gets for a sub-call: the reply's text, or an `Error: ...` string that
    /// says why there is none (cut and empty replies keep their partial text after it; an
    /// answer that would take what the block holds past `max_held_bytes` is not kept; 0: no
    /// bound, one answer always fits within the string limit).
    fn script_text(&self, result: BatchResult, max_held_bytes: usize) -> String {
        match result {
            Ok(completion) => {
                let text = self.fit_answer(answer_text(completion));
                if self.clock.hold(text.len(), max_held_bytes) {
                    text
                } else {
                    format!(
                        "Error: this answer ({} bytes) was received and paid for, but with it \
                         the variables and answers would pass the memory budget ({} bytes, \
                         --max-memory), so it was not kept; the other answers were. Ask for \
                         shorter answers, send fewer prompts per batch, or free variables you \
                         no longer need (`x = ();`).",
                        text.len(),
                        max_held_bytes
                    )
                }
            }
            Err(LlmError::Cancelled) => self.run.refusal(),
            // The backend refused the reply as it arrived: it did not fit the reply budget.
            Err(error @ LlmError::OverReplyBudget { .. }) => {
                format!(
                    "Error: the memory budget ({} bytes, --max-memory) was reached, so this \
                     answer was not kept; the answers that fitted were (the backend said: \
                     {error}). Ask for shorter answers, send fewer prompts per batch, or free \
                     variables you no longer need (`x = ();`).",
                    self.max_batch_bytes
                )
            }
            Err(error) => format!("Error: {error}"),
        }
    }

    /// What the script gets for `result` (see [`script_text`](Self::script_text)), and how it
    /// went.
    fn sent(&self, result: BatchResult, max_held_bytes: usize) -> Sent {
        let ok = result.as_ref().is_ok_and(is_answer);
        let format_refused = result
            .as_ref()
            .err()
            .filter(|e| e.refuses_response_format())
            .cloned();
        let text = self.script_text(result, max_held_bytes);
        Sent {
            ok: ok && !text.starts_with("Error: "),
            text,
            format_refused,
        }
    }

    /// Many sub-calls at once, at most `max_concurrent` in flight; one string per prompt, in
    /// order, failures as `Error: ...`.
    pub(crate) fn batch(&self, prompts: Vec<Text>, max_concurrent: usize) -> Vec<String> {
        let requests = prompts
            .into_iter()
            .map(|prompt| CompletionRequest::prompt(self.model.clone(), prompt))
            .collect();
        self.send_requests(requests, max_concurrent)
            .into_iter()
            .map(|sent| sent.text)
            .collect()
    }

    /// Many requests at once (see [`batch`](Self::batch)); prompts over the size limit fail
    /// here, the others are sent.
    pub(crate) fn send_requests(
        &self,
        requests: Vec<CompletionRequest>,
        max_concurrent: usize,
    ) -> Vec<Sent> {
        let oversized: Vec<Option<String>> = requests
            .iter()
            .map(|r| self.oversized(r.last_user_message().unwrap_or_default()))
            .collect();
        if oversized.iter().all(Option::is_none) {
            return self.send_batch(requests, max_concurrent);
        }
        let sendable: Vec<CompletionRequest> = requests
            .into_iter()
            .zip(&oversized)
            .filter(|(_, error)| error.is_none())
            .map(|(request, _)| request)
            .collect();
        let mut sent = self.send_batch(sendable, max_concurrent).into_iter();
        oversized
            .into_iter()
            .map(|error| match error {
                Some(error) => Sent::failed(error),
                None => sent.next().unwrap_or_else(|| Sent::failed(String::new())),
            })
            .collect()
    }

    fn send_batch(&self, mut requests: Vec<CompletionRequest>, max_concurrent: usize) -> Vec<Sent> {
        let total = requests.len();
        if total == 0 {
            return Vec::new();
        }
        if self.run.cancel.is_cancelled() {
            return (0..total)
                .map(|_| Sent::failed(self.run.refusal()))
                .collect();
        }
        // Each item is reserved before the batch is sent; the items past a budget are refused.
        let reserved = self.run.budget.reserve(&requests, Charge::SUB_CALL);
        let granted = reserved.len();
        let mut answers: Vec<Sent> = (0..total).map(|_| Sent::failed(String::new())).collect();
        if granted < total {
            let refusal = self.run.refusal();
            for answer in &mut answers[granted..] {
                answer.text.clone_from(&refusal);
            }
        }
        if granted == 0 {
            return answers;
        }
        requests.truncate(granted);
        let max_concurrent = max_concurrent.max(1);
        let batch = self.next_batch.fetch_add(1, Ordering::SeqCst) + 1;
        let turn = self.run.turn();
        let emitter = &self.run.emitter;
        emitter.emit_with(|| Event::BatchStart {
            turn,
            batch,
            total: granted,
            max_concurrent,
        });
        let cancel = self.run.cancel.child_token();
        let tracker = Arc::new(BatchTracker {
            turn,
            batch,
            total: granted,
            model: self.model.clone(),
            run: Arc::clone(&self.run),
            cancel: cancel.clone(),
            next_id: Arc::clone(&self.next_id),
            ids: (0..granted).map(|_| AtomicU64::new(0)).collect(),
            prompts: requests.iter().map(last_user_text).collect(),
            prompt_chars: (0..granted).map(|_| OnceLock::new()).collect(),
            progress: Mutex::new((0, 0)),
            records: Arc::clone(&self.records),
            reserved: Mutex::new(reserved.into_iter().map(Some).collect()),
        });
        let options = BatchOptions::new(max_concurrent)
            .with_cancel(cancel)
            .with_observer(tracker.clone());
        let span = tracing::info_span!("rlm_batch", batch, total = granted, max_concurrent);
        let backend = Arc::clone(&self.backend);
        let replies = self.reply_budget();
        let started = Instant::now();
        let results = self
            .wait(
                within(replies.clone(), async move {
                    backend.complete_batch(requests, &options).await
                })
                .instrument(span),
            )
            .unwrap_or_default();
        let mut failed = 0;
        let mut results = results.into_iter();
        for answer in answers.iter_mut().take(granted) {
            let result = results.next().unwrap_or_else(|| {
                Err(LlmError::other(
                    "the batch ended without a result for this prompt",
                ))
            });
            failed += usize::from(!is_cancelled(&result) && !result.as_ref().is_ok_and(is_answer));
            *answer = self.sent(result, self.max_batch_bytes);
        }
        tracker.close();
        emitter.emit_with(|| Event::BatchEnd {
            turn,
            batch,
            total: granted,
            failed,
            elapsed_ms: millis(started.elapsed()),
        });
        answers
    }
}

/// What one sub-call gave the script.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    /// The reply's text, or an `Error: ...` string.
    pub(crate) text: String,
    /// Whether the call gave a whole answer (neither failed, cut, empty nor refused).
    pub(crate) ok: bool,
    /// The server refused the request for its `response_format`.
    pub(crate) format_refused: Option<LlmError>,
}

impl Sent {
    fn failed(text: String) -> Self {
        Self {
            text,
            ok: false,
            format_refused: None,
        }
    }
}

/// Runs `future` under the reply budget `replies`, if there is one.
async fn within<F: Future>(replies: Option<ReplyBudget>, future: F) -> F::Output {
    match replies {
        Some(replies) => replies.scope(future).await,
        None => future.await,
    }
}

/// Why a finished sub-call did not succeed (for records, traces and progress), or `None`
/// when it succeeded. Counts it as cancelled (Ctrl-C, the time budget) or failed, notes cut
/// and empty replies, and stops the run on a failure that every other sub-call would share.
fn judge(run: &RunState, result: &BatchResult) -> Option<String> {
    if is_cancelled(result) {
        run.ledger
            .cancelled_sub_calls
            .fetch_add(1, Ordering::SeqCst);
        return Some(LlmError::Cancelled.to_string());
    }
    let failure = judged(run, result);
    // A request refused for its `response_format` is sent again without it (or counted by
    // the caller when it is not).
    let format_refused = matches!(result, Err(e) if e.refuses_response_format());
    if failure.is_some() && !format_refused {
        run.ledger.failed_sub_calls.fetch_add(1, Ordering::SeqCst);
    }
    failure
}

/// Whether a sub-call was cut short by cancellation rather than failing.
fn is_cancelled(result: &BatchResult) -> bool {
    matches!(result, Err(LlmError::Cancelled))
}

fn judged(run: &RunState, result: &BatchResult) -> Option<String> {
    match result {
        Ok(completion) if completion.is_cut() => {
            run.ledger.cut_sub_calls.fetch_add(1, Ordering::SeqCst);
            Some("the reply was cut at the token limit (finish_reason: length)".to_owned())
        }
        Ok(completion) => completion.missing_text().map(|why| {
            run.ledger.empty_sub_calls.fetch_add(1, Ordering::SeqCst);
            format!("no answer text: {why}")
        }),
        Err(error) => {
            if error.affects_every_request() {
                run.fail(error);
            }
            Some(error.to_string())
        }
    }
}

/// Whether a completion carries a whole answer (neither cut nor empty).
fn is_answer(completion: &Completion) -> bool {
    !completion.is_cut() && completion.missing_text().is_none()
}

/// The text of a completion for the script: a cut or empty reply is an `Error: ...` string
/// (a cut one keeps its partial text after the explanation).
fn answer_text(completion: Completion) -> String {
    if completion.is_cut() {
        return format!(
            "Error: the sub-model's reply was cut at its token limit (finish_reason: length); \
             ask for a shorter answer or send a smaller piece. Partial text: {}",
            completion.text
        );
    }
    match completion.missing_text() {
        Some(why) => format!(
            "Error: the sub-model gave no answer text ({why}); ask again, for a short \
             fixed-format answer"
        ),
        None => completion.text,
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn end_event(turn: usize, record: &SubCallRecord, result: &BatchResult) -> Event {
    Event::SubCallEnd {
        turn,
        id: record.id,
        batch: record.batch,
        index: record.index,
        model: record.model.clone(),
        response: result
            .as_ref()
            .ok()
            .map(|c| super::output::truncate_middle(&c.text, RESPONSE_EVENT_CHARS)),
        error: record.error.clone(),
        cancelled: is_cancelled(result),
        usage: record.usage,
        latency_ms: millis(record.latency),
    }
}

/// Follows one batch item by item: ids, events, records and the token budget.
struct BatchTracker {
    turn: usize,
    batch: u64,
    total: usize,
    model: String,
    run: Arc<RunState>,
    cancel: rlm_core::CancellationToken,
    next_id: Arc<AtomicU64>,
    ids: Vec<AtomicU64>,
    /// Each item's prompt (shared, not copied).
    prompts: Vec<Text>,
    /// Each item's prompt's characters, counted when it is needed: counted for every prompt
    /// before the batch, a gigabyte of prompts held the first request back by a tenth of a
    /// second.
    prompt_chars: Vec<OnceLock<usize>>,
    /// Items finished and failed so far.
    progress: Mutex<(usize, usize)>,
    records: Arc<Mutex<Vec<SubCallRecord>>>,
    /// Each item's budget, taken when it is settled.
    reserved: Mutex<Vec<Option<Reserved>>>,
}

/// The text of `request`'s last user message (empty without one), shared.
fn last_user_text(request: &CompletionRequest) -> Text {
    request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default()
}

impl BatchTracker {
    /// The characters of item `index`'s prompt.
    fn prompt_chars(&self, index: usize) -> usize {
        match (self.prompt_chars.get(index), self.prompts.get(index)) {
            (Some(chars), Some(prompt)) => *chars.get_or_init(|| prompt.chars().count()),
            _ => 0,
        }
    }

    /// The batch is over. The budget of an item that never finished goes back: its cost
    /// estimate always, its sub-call only if it never started because the batch was
    /// cancelled (an item that started, or that the executor had when nothing cancelled the
    /// batch, counts as made).
    fn close(&self) {
        let cancelled = self.cancel.is_cancelled();
        let unsettled = std::mem::take(&mut *lock(&self.reserved));
        for mut budget in unsettled.into_iter().flatten() {
            if !cancelled {
                budget.sent();
            }
        }
    }
}

impl BatchObserver for BatchTracker {
    fn started(&self, index: usize, request: &CompletionRequest) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(slot) = self.ids.get(index) {
            slot.store(id, Ordering::SeqCst);
        }
        if let Some(Some(budget)) = lock(&self.reserved).get_mut(index) {
            budget.sent();
        }
        self.run.emitter.emit_with(|| {
            let prompt = request.last_user_message().unwrap_or_default();
            Event::SubCallStart {
                turn: self.turn,
                id,
                batch: Some(self.batch),
                index: Some(index),
                model: self.model.clone(),
                prompt: prefix(prompt, PROMPT_PREVIEW_CHARS).to_owned(),
                prompt_chars: self.prompt_chars(index),
            }
        });
    }

    fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
        let usage = result.as_ref().map(|c| c.usage).unwrap_or_default();
        let budget = lock(&self.reserved).get_mut(index).and_then(Option::take);
        if budget.is_some_and(|budget| budget.settle(&usage)) {
            // The token or cost budget is spent: send nothing more.
            self.cancel.cancel();
        }
        let error = judge(&self.run, result);
        let record = SubCallRecord {
            id: self
                .ids
                .get(index)
                .map_or(0, |id| id.load(Ordering::SeqCst)),
            batch: Some(self.batch),
            index: Some(index),
            model: self.model.clone(),
            prompt_chars: self.prompt_chars(index),
            ok: error.is_none(),
            error,
            usage,
            latency: elapsed,
        };
        // Counted and reported under one lock: an executor may report items from several
        // threads, and the progress observers see must still count up.
        let mut progress = lock(&self.progress);
        progress.0 += 1;
        progress.1 += usize::from(!record.ok && !is_cancelled(result));
        let (done, failed) = *progress;
        let emitter = &self.run.emitter;
        if emitter.active() {
            emitter.emit(&end_event(self.turn, &record, result));
            emitter.emit(&Event::BatchProgress {
                turn: self.turn,
                batch: self.batch,
                done,
                failed,
                total: self.total,
            });
        }
        drop(progress);
        lock(&self.records).push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base in resident memory and a reading of the meter (or the other way round) are no
    /// growth: before, the meter's origin (about 2^62 bytes) minus a resident base read as
    /// growth past any budget, and a block that had just started was stopped for memory.
    #[test]
    fn growth_is_measured_within_one_measure_only() {
        let resident = 300 << 20;
        assert_eq!(growth(resident, resident + (64 << 20)), Some(64 << 20));
        let metered = METER_ORIGIN.wrapping_add_signed(-(5 << 20));
        assert_eq!(growth(metered, METER_ORIGIN + (2 << 20)), Some(7 << 20));
        assert_eq!(growth(resident, METER_ORIGIN), None);
        assert_eq!(growth(METER_ORIGIN, resident), None);
        assert_eq!(growth(METER_ORIGIN + 10, METER_ORIGIN), Some(0));
    }
}
