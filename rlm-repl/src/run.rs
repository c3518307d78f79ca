//! The RLM loop: ask the root model, run its code, feed back the output, until a final answer
//! or a budget ends the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::{
    BatchExecutor, CancellationToken, Completion, CompletionRequest, LlmBackend, LlmError, Message,
    Metered, Usage,
};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::budget::{Budget, Charge, Reserved};
use crate::emitter::Emitter;
use crate::ledger::Ledger;
use crate::parse::{FinalMarker, ParsedReply, parse_reply};
use crate::prompt::{RECURSION_PROMPT, final_ask, first_message, system_prompt};
use crate::repl::subcall::millis;
use crate::repl::{ChildAnswer, ChildRunner};
use crate::state::RunState;
use crate::sync::lock;
use crate::{
    BlockRecord, Context, Event, Observer, Repl, RlmConfig, RlmError, RunResult, StopReason,
    SubCallRecord, Turn,
};

/// The pause before the one retry of an unreadable root reply.
const INVALID_REPLY_PAUSE: Duration = Duration::from_millis(500);

/// Aborts the wrapped task when dropped (the run's time watchdog).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn internal(error: tokio::task::JoinError) -> RlmError {
    RlmError::Internal(format!("the REPL thread failed: {error}"))
}

/// What the blocks of one reply did.
struct TurnWork {
    repl: Repl,
    blocks: Vec<BlockRecord>,
    sub_calls: Vec<SubCallRecord>,
    /// A `FINAL` called in code, and whether its block raised lint warnings.
    code_final: Option<(String, bool)>,
    /// Any block raised lint warnings.
    warned: bool,
    /// The block that failed (from 0); the blocks after it did not run.
    failed: Option<usize>,
    /// Blocks not run because the run had to stop.
    not_run: usize,
    /// The value of a text `FINAL_VAR(name)`, or why there is none.
    text_var: Option<Result<String, String>>,
}

/// What the loop makes of a reply's end markers.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// The run ends with this answer.
    Accept(String),
    /// Not yet: the model is told why and must confirm (the next FINAL stands).
    Hold(String),
    /// Not accepted; the model is told why.
    Refuse(String),
    /// The reply gave no answer.
    None,
}

/// Applies the answer-acceptance rules (design.md, "Answer acceptance") to one reply.
/// `held` says whether an answer of this run was already held once.
fn verdict(parsed: &ParsedReply, work: &TurnWork, cut: bool, held: bool) -> Verdict {
    let (answer, warned) = if let Some((answer, warned)) = &work.code_final {
        (answer.clone(), *warned)
    } else {
        match (&parsed.final_marker, &work.text_var) {
            (None, _) => return Verdict::None,
            (Some(FinalMarker::Value(_)), _) if cut => {
                return Verdict::Refuse(
                    "Your FINAL(...) was not accepted: the reply was cut at the token limit, so \
                     the answer may be cut too. Give it again, shorter, or store it in a \
                     variable and give FINAL_VAR(name)."
                        .to_owned(),
                );
            }
            (Some(FinalMarker::Value(_)), _) if parsed.has_code() => {
                return Verdict::Refuse(
                    "Your FINAL(...) was not accepted: you wrote it before you saw the output \
                     above. If it still holds, repeat it (FINAL(...) on its own line, or \
                     FINAL_VAR(name))."
                        .to_owned(),
                );
            }
            (Some(FinalMarker::Value(value)), _) => (value.clone(), false),
            (Some(FinalMarker::Var(name)), _) if cut => {
                return Verdict::Refuse(format!(
                    "Your FINAL_VAR({name}) was not accepted: the reply was cut at the token \
                     limit. Give it again."
                ));
            }
            (Some(FinalMarker::Var(name)), _) if work.failed.is_some() || work.not_run > 0 => {
                return Verdict::Refuse(format!(
                    "Your FINAL_VAR({name}) was not accepted: not every block ran without \
                     error. Fix the code, then give FINAL_VAR({name}) again."
                ));
            }
            (Some(FinalMarker::Var(_)), Some(Ok(value))) => (value.clone(), work.warned),
            (Some(FinalMarker::Var(_)), Some(Err(why))) => return Verdict::Refuse(why.clone()),
            (Some(FinalMarker::Var(_)), None) => return Verdict::None,
        }
    };
    if cut {
        return Verdict::Refuse(
            "Your FINAL was not accepted: the reply was cut at the token limit, and nothing in \
             a cut reply ends the run. Give it again, shorter."
                .to_owned(),
        );
    }
    if !held {
        if warned {
            return Verdict::Hold(
                "the block that gave it raised a warning (see above), which often means a \
                 silently wrong value"
                    .to_owned(),
            );
        }
        if answer.trim_start().starts_with("Error:") {
            return Verdict::Hold(
                "it is an \"Error: ...\" string from a failed or cancelled call, not an answer"
                    .to_owned(),
            );
        }
    }
    Verdict::Accept(answer)
}

/// The sub model's fatal failure as the run's error, reported to observers.
fn sub_model_failure(run: &RunState, model: &str) -> Option<RlmError> {
    let source = run.fatal()?;
    run.emitter.emit_with(|| Event::RunError {
        turn: run.turn(),
        error: format!("the sub model ({model}) cannot be used: {source}"),
    });
    Some(RlmError::SubModel {
        model: model.to_owned(),
        source,
    })
}

/// The start of a reply, quoted for a message.
fn quote_start(text: &str) -> String {
    const QUOTED_CHARS: usize = 160;
    let text = text.trim();
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// `1 sub-call was`, `2 sub-calls were`.
fn count_verb(n: u64, what: &str, one: &str, many: &str) -> String {
    format!("{} {}", count(n, what), if n == 1 { one } else { many })
}

/// `1 sub-call`, `2 sub-calls`.
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// What every run of one recursion tree shares besides the ledger: the backends (not yet
/// metered), the settings and the runtime that runs sub-calls.
pub(crate) struct Tree {
    pub(crate) root: Arc<dyn LlmBackend>,
    pub(crate) sub: Arc<dyn BatchExecutor>,
    pub(crate) config: RlmConfig,
    pub(crate) handle: Option<Handle>,
}

impl Tree {
    /// The tree of runs over `root` and `sub`, whose sub-calls run on the current runtime
    /// (if any).
    pub(crate) fn new(
        root: Arc<dyn LlmBackend>,
        sub: Arc<dyn BatchExecutor>,
        config: RlmConfig,
    ) -> Self {
        Self {
            root,
            sub,
            config,
            handle: Handle::try_current().ok(),
        }
    }
}

/// Where a run's context comes from.
pub(crate) enum Source {
    /// The user's context.
    Context(Context),
    /// A value of the parent's scope, shared with it (strings are not copied).
    Value(rhai::Dynamic),
}

/// The top-level run of a tree of runs over one ledger: `query` over `context`, reported to
/// `observers`, stopped by `cancel`.
pub(crate) async fn run(
    tree: Tree,
    observers: Vec<Arc<dyn Observer>>,
    cancel: CancellationToken,
    query: String,
    context: Context,
) -> Result<RunResult, RlmError> {
    let config = &tree.config;
    let budget = Budget::new(cancel, config.max_sub_calls, config.max_total_tokens)
        .with_cost(Arc::new(config.prices.clone()), config.max_cost);
    let run = Arc::new(RunState::new(budget, Emitter::new(observers)));
    // If the caller drops this future, running code, sub-calls and children stop too.
    let _stop_on_drop = run.cancel.clone().drop_guard();
    let _watchdog = config.max_time.map(|limit| {
        let run = Arc::clone(&run);
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            run.budget.stop(StopReason::MaxTime);
        }))
    });
    run_tree(Arc::new(tree), run, query, Source::Context(context)).await
}

/// One run of the tree: the top-level run (depth 0) or a child. A child's root turns are
/// calls below the top-level root: each is reserved from the sub-call budget first.
pub(crate) async fn run_tree(
    tree: Arc<Tree>,
    state: Arc<RunState>,
    query: String,
    source: Source,
) -> Result<RunResult, RlmError> {
    let (mut run, mut repl) = Run::start(tree, state, &query, source).await?;
    for turn in 1..=run.max_iterations {
        let (after, next) = run.turn(repl, turn).await?;
        repl = after;
        if next == Next::Stop {
            break;
        }
    }
    let stopped = run.final_ask(repl).await?;
    run.finish(stopped)
}

/// One run in progress: what it was given and what it has done so far. A run
/// [`start`](Self::start)s, takes its [`turn`](Self::turn)s, makes the
/// [`final_ask`](Self::final_ask) when it ended without an answer, and
/// [`finish`](Self::finish)es with its result.
struct Run {
    tree: Arc<Tree>,
    state: Arc<RunState>,
    started: Instant,
    /// A child run (depth 1 or more).
    child: bool,
    /// Asks the root model (metered at this run's depth).
    asker: RootAsker,
    sub_model: String,
    max_iterations: usize,
    /// The conversation with the root model.
    messages: Vec<Message>,
    trajectory: Vec<Turn>,
    answer: Option<String>,
    warnings: Vec<String>,
    /// Whether an answer of this run was already held once for confirmation.
    held: bool,
    /// Empty root replies in a row.
    empty_streak: usize,
}

/// Whether the run takes another turn.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Turn,
    Stop,
}

impl Run {
    /// Meters the backends at the run's depth, loads the context into a new REPL, writes the
    /// system prompt and the first message, and reports the start.
    async fn start(
        tree: Arc<Tree>,
        state: Arc<RunState>,
        query: &str,
        source: Source,
    ) -> Result<(Self, Repl), RlmError> {
        let started = Instant::now();
        let config = &tree.config;
        let place = state.emitter.place().clone();
        let child = place.depth > 0;
        let ledger = &state.ledger;
        let metered_root = Metered::new(
            Metered::new(Arc::clone(&tree.root), ledger.usage_at(place.depth)),
            ledger.usage.clone(),
        );
        let root: Arc<dyn LlmBackend> = Arc::new(metered_root);
        let sub: Arc<dyn BatchExecutor> = Arc::new(Metered::new(
            Metered::new(Arc::clone(&tree.sub), ledger.usage_at(place.depth)),
            ledger.usage.clone(),
        ));
        let root_model = if child {
            config.child_model().to_owned()
        } else {
            config.root_model.clone()
        };
        let sub_model = config.sub_model().to_owned();
        let max_iterations = if child {
            config.child_max_iterations
        } else {
            config.max_iterations
        };

        let recursion = RecursionNote {
            allowed: place.depth + 1 < config.max_depth,
            depth: place.depth,
        };
        // Loading a large context is a pass over it: keep it off the async threads.
        let mut builder = match source {
            Source::Context(context) => Repl::builder(context),
            Source::Value(value) => Repl::builder_for_value(value),
        }
        .limits(config.sandbox.clone())
        .max_output_chars(config.max_output_chars)
        .sub_backend(sub, sub_model.clone())
        .max_concurrent(config.max_concurrent)
        .sub_max_prompt_tokens(config.sub_max_prompt_tokens)
        .run_state(Arc::clone(&state));
        // Below the deepest level, `rlm_query` starts children in this tree.
        if recursion.allowed {
            builder = builder.child_runner(Arc::new(ChildRuns {
                tree: Arc::clone(&tree),
                parent: Arc::clone(&state),
            }));
        }
        if let Some(handle) = tree.handle.clone().or_else(|| Handle::try_current().ok()) {
            builder = builder.runtime_handle(handle);
        }
        let repl = tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(internal)?;
        let info = repl.context_info().clone();

        let mut system = system_prompt(config);
        if config.system_prompt.is_none() {
            if recursion.allowed {
                system.push_str(RECURSION_PROMPT);
            } else if child {
                system.push_str(&recursion.text());
            }
        }
        let first = first_message(query, &info);
        state.emitter.emit_with(|| Event::RunStart {
            query: query.to_owned(),
            root_model: root_model.clone(),
            sub_model: sub_model.clone(),
            context: info.clone(),
            parent: child.then(|| parent_of(&place.run).to_owned()),
            settings: Box::new(crate::events::RunSettings::new(config, max_iterations)),
            started_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            system_prompt: system.clone(),
            first_message: first.clone(),
        });
        let asker = RootAsker {
            root,
            model: root_model,
            run: Arc::clone(&state),
            reserve: child,
        };
        let run = Self {
            tree,
            state,
            started,
            child,
            asker,
            sub_model,
            max_iterations,
            messages: vec![Message::system(system), Message::user(first)],
            trajectory: Vec::new(),
            answer: None,
            warnings: Vec::new(),
            held: false,
            empty_streak: 0,
        };
        Ok((run, repl))
    }

    /// Turn `turn`: asks the root model, runs the reply's code, judges its answer (if any)
    /// and, unless the run ends here, feeds back what happened.
    async fn turn(&mut self, repl: Repl, turn: usize) -> Result<(Repl, Next), RlmError> {
        let state = Arc::clone(&self.state);
        if state.budget.stopped().is_some() {
            if self.child && turn == 1 && state.budget.exhausted().is_some() {
                // Its first root turn is a call the budget refused.
                state.budget.note_refused(1);
            }
            return Ok((repl, Next::Stop));
        }
        state.turn.store(turn, std::sync::atomic::Ordering::SeqCst);
        state.emitter.emit_with(|| Event::TurnStart { turn });
        let Some((reply, root_latency)) = self.asker.ask(&self.messages, turn, true).await? else {
            return Ok((repl, Next::Stop));
        };
        let cut = reply.is_cut();
        let parsed = parse_reply(&reply.text);
        let work = run_blocks(repl, parsed.clone(), cut, turn, Arc::clone(&state))
            .await
            .map_err(internal)?;
        if let Some(error) = sub_model_failure(&state, &self.sub_model) {
            return Err(error);
        }
        let verdict = verdict(&parsed, &work, cut, self.held);
        let repl = work.repl;
        let empty = reply.missing_text();
        self.empty_streak = if empty.is_some() {
            self.empty_streak + 1
        } else {
            0
        };
        if let (2, Some(why)) = (self.empty_streak, empty) {
            self.warnings.push(format!(
                "the root model gave empty replies on turns {} and {turn}: {why}",
                turn - 1
            ));
        }
        let record = Turn {
            turn,
            reply: reply.text.clone(),
            usage: reply.usage,
            root_latency,
            blocks: work.blocks,
            sub_calls: work.sub_calls,
        };
        state.emitter.emit_with(|| Event::turn_end(&record));
        let mut notes = Vec::new();
        match verdict {
            Verdict::Accept(value) => {
                if work.code_final.is_none() && parsed.final_unbalanced {
                    self.warnings.push(
                        "the answer's FINAL( was never closed: the answer is the text after it, \
                         up to the reply's last `)`"
                            .to_owned(),
                    );
                }
                self.trajectory.push(record);
                self.answer = Some(value);
                return Ok((repl, Next::Stop));
            }
            Verdict::Hold(why) => {
                self.held = true;
                self.warnings.push(format!(
                    "turn {turn}: the answer was held for confirmation: {why}"
                ));
                notes.push(format!(
                    "Your final answer was not accepted yet: {why}. Check it. If it is right, \
                     give FINAL again (it will be accepted); if not, fix it first."
                ));
            }
            Verdict::Refuse(why) => notes.push(why),
            Verdict::None => {}
        }
        let feedback = feedback(
            &reply,
            &parsed,
            &record.blocks,
            work.failed,
            &notes,
            work.not_run,
            self.max_iterations - turn,
        );
        self.trajectory.push(record);
        self.messages.push(Message::assistant(reply.text));
        self.messages.push(Message::user(feedback));
        Ok((repl, Next::Turn))
    }

    /// Why the turns ended; and, when they ended without an answer, one last root call for
    /// the best answer now (the top-level root after a turn, sub-call or cost budget stop; a
    /// child only after its own turns ran out). Returns why the run stopped.
    async fn final_ask(&mut self, repl: Repl) -> Result<StopReason, RlmError> {
        let state = Arc::clone(&self.state);
        let mut stopped = match (&self.answer, state.budget.stopped()) {
            // Whatever the script made of calls cut short by a cancel or the clock is not a
            // final answer, even if it called FINAL with it.
            (_, Some(reason @ (StopReason::Cancelled | StopReason::MaxTime))) => reason,
            (Some(_), _) => StopReason::Final,
            (None, Some(reason)) => reason,
            (None, None) => StopReason::MaxIterations,
        };
        // A spent budget leaves a child no call to make.
        let ask = match stopped {
            StopReason::MaxIterations => true,
            StopReason::MaxSubCalls | StopReason::MaxCost => !self.child,
            _ => false,
        };
        if self.answer.is_some() || !ask {
            return Ok(stopped);
        }
        let reason = match stopped {
            StopReason::MaxIterations => "You have used all your turns.",
            StopReason::MaxCost => "The cost budget of this run is spent.",
            _ => "The sub-call budget of this run is spent.",
        };
        // The last feedback is the last message; the ask is appended to it.
        match self.messages.last_mut() {
            Some(last) if last.role == rlm_core::Role::User && !self.trajectory.is_empty() => {
                last.content = format!("{}\n\n{}", last.content, final_ask(reason)).into();
            }
            _ => self.messages.push(Message::user(final_ask(reason))),
        }
        let turn = self.trajectory.len() + 1;
        state.turn.store(turn, std::sync::atomic::Ordering::SeqCst);
        state.emitter.emit_with(|| Event::TurnStart { turn });
        // Not cost-budgeted: the final ask is made even when the cost budget is spent.
        let asked = self.asker.ask(&self.messages, turn, false).await;
        if let Err(error) = &asked {
            self.warnings.push(format!(
                "no answer: {} and the final ask failed: {error}",
                stopped_why(stopped)
            ));
        }
        if let Ok(Some((reply, root_latency))) = asked {
            let (_, given) = final_reply(repl, &reply, turn, &state, &mut self.warnings).await?;
            if let Some(error) = sub_model_failure(&state, &self.sub_model) {
                return Err(error);
            }
            if given.answer.is_none() {
                self.warnings.push(format!(
                    "no answer: {} and the reply to the final ask had no FINAL(...) or \
                     FINAL_VAR(...); it began: {}",
                    stopped_why(stopped),
                    quote_start(&reply.text)
                ));
            }
            self.answer = given.answer;
            let record = Turn {
                turn,
                reply: reply.text,
                usage: reply.usage,
                root_latency,
                blocks: given.blocks,
                sub_calls: given.sub_calls,
            };
            state.emitter.emit_with(|| Event::turn_end(&record));
            self.trajectory.push(record);
        }
        if state.cancel.is_cancelled() {
            // Cancelled (or out of time) while asking: that is why the run stopped.
            stopped = state.budget.stopped().unwrap_or(stopped);
        }
        Ok(stopped)
    }

    /// The run's result, with every warning about its answer, reported to observers.
    fn finish(mut self, stopped: StopReason) -> Result<RunResult, RlmError> {
        let state = &self.state;
        let ledger = &state.ledger;
        if let Some(error) = sub_model_failure(state, &self.sub_model) {
            return Err(error);
        }
        // Every top-level run without an answer says why (a child's parent gets an `Error:`).
        if !self.child
            && self.answer.is_none()
            && !self.warnings.iter().any(|w| w.starts_with("no answer:"))
        {
            self.warnings
                .push(format!("no answer: {}", stopped_why(stopped)));
        }

        let failed_sub_calls = ledger
            .failed_sub_calls
            .load(std::sync::atomic::Ordering::SeqCst);
        if !self.child {
            self.warnings.extend(lock(&ledger.child_warnings).drain(..));
            self.warnings.extend(sub_call_warnings(
                ledger,
                state.budget.sub_calls(),
                failed_sub_calls,
                self.answer.is_some(),
            ));
            let refused = state.budget.refused_sub_calls();
            if self.answer.is_some() && refused > 0 {
                self.warnings.push(format!(
                    "the answer was given after a budget refused {}; the script got \
                     \"Error: budget exhausted ...\" for them",
                    count(refused, "sub-call")
                ));
            }
        }
        if self
            .answer
            .as_deref()
            .is_some_and(|a| a.trim_start().starts_with("Error:"))
        {
            self.warnings
                .push("the answer is an \"Error: ...\" string, not an answer".to_owned());
        }
        let usage_by_depth = ledger.usage_by_depth();
        let usage = if self.child {
            usage_by_depth
                .get(state.emitter.place().depth)
                .cloned()
                .unwrap_or_default()
        } else {
            ledger.usage.snapshot()
        };
        let cost = self
            .tree
            .config
            .prices
            .report(usage.iter().map(|(model, usage)| (model.as_str(), usage)));
        let result = RunResult {
            answer: self.answer.unwrap_or_default(),
            iterations: self.trajectory.len(),
            stopped,
            elapsed: self.started.elapsed(),
            usage,
            cost,
            sub_calls: state.budget.sub_calls(),
            failed_sub_calls,
            refused_sub_calls: state.budget.refused_sub_calls(),
            cancelled_sub_calls: ledger
                .cancelled_sub_calls
                .load(std::sync::atomic::Ordering::SeqCst),
            warnings: self.warnings,
            max_depth_reached: ledger
                .max_depth_reached
                .load(std::sync::atomic::Ordering::SeqCst),
            child_runs: ledger.child_runs.load(std::sync::atomic::Ordering::SeqCst),
            usage_by_depth,
            trajectory: self.trajectory,
        };
        state.emitter.emit_with(|| Event::Final {
            answer: result.answer.clone(),
            stopped: result.stopped,
            iterations: result.iterations,
            elapsed_ms: millis(result.elapsed),
            usage: result.usage.clone(),
            warnings: result.warnings.clone(),
            cost_usd: result.cost.clone(),
        });
        Ok(result)
    }
}

/// Starts the children of one run, in its tree: what `rlm_query` calls.
struct ChildRuns {
    tree: Arc<Tree>,
    parent: Arc<RunState>,
}

impl ChildRunner for ChildRuns {
    fn run_child(&self, query: String, context: rhai::Dynamic) -> ChildAnswer {
        let child = Arc::new(self.parent.child());
        child_answer(Arc::clone(&self.tree), child, query, context)
    }
}

/// Runs a child RLM and gives its answer for the parent's script: the final answer, or an
/// `Error: ...` string saying why there is none. Its warnings reach the top-level result.
fn child_answer(
    tree: Arc<Tree>,
    child: Arc<RunState>,
    query: String,
    context: rhai::Dynamic,
) -> ChildAnswer {
    Box::pin(async move {
        let id = child.emitter.place().run.clone();
        let ledger = Arc::clone(&child.ledger);
        let refusal = Arc::clone(&child);
        match run_tree(tree, child, query, Source::Value(context)).await {
            Ok(result) => {
                lock(&ledger.child_warnings).extend(
                    result
                        .warnings
                        .iter()
                        .map(|warning| format!("child run {id}: {warning}")),
                );
                match result.stopped {
                    StopReason::Final | StopReason::MaxIterations if !result.answer.is_empty() => {
                        result.answer
                    }
                    StopReason::MaxIterations => format!(
                        "Error: the child run {id} used its {} without an answer",
                        crate::words::count_of(result.iterations, "turn")
                    ),
                    StopReason::MaxSubCalls | StopReason::MaxTokens | StopReason::MaxCost
                        if result.iterations == 0 =>
                    {
                        format!(
                            "Error: budget exhausted: the child run {id} could not start ({})",
                            result.stopped
                        )
                    }
                    StopReason::MaxSubCalls | StopReason::MaxTokens => format!(
                        "Error: budget exhausted: the child run {id} stopped before it \
                         answered ({})",
                        result.stopped
                    ),
                    _ => refusal.refusal(),
                }
            }
            Err(error) => format!("Error: the child run {id} failed: {error}"),
        }
    })
}

/// The id of the parent of the run `id` (`"0.3"` for `"0.3.1"`).
fn parent_of(id: &str) -> &str {
    id.rsplit_once('.').map_or(id, |(parent, _)| parent)
}

/// What a run at the deepest level is told about `rlm_query`.
struct RecursionNote {
    allowed: bool,
    depth: usize,
}

impl RecursionNote {
    fn text(&self) -> String {
        format!(
            "\n\nYou are a child run at depth {}, the deepest level: here rlm_query(...) and \
             rlm_batch(...) are plain llm_query / llm_batch calls (no code runs below you).",
            self.depth
        )
    }
}

/// Why a budget stop left no answer, for the warning.
fn stopped_why(stopped: StopReason) -> &'static str {
    match stopped {
        StopReason::MaxIterations => "the turn budget (--max-iterations) ran out",
        StopReason::MaxSubCalls => "the sub-call budget (--max-sub-calls) ran out",
        StopReason::MaxCost => "the cost budget (--max-cost) ran out",
        StopReason::MaxTokens => "the token budget (--max-total-tokens) ran out",
        StopReason::MaxTime => "the run's time (--max-time) ran out before a final answer",
        StopReason::Cancelled => "the run was cancelled before a final answer",
        StopReason::Final => "the run stopped",
    }
}

/// The answer in the reply to the final ask, if it gave one: a text marker, or code that
/// calls FINAL (run for that alone). Also the blocks run and their sub-calls.
async fn final_reply(
    repl: Repl,
    reply: &Completion,
    turn: usize,
    run: &Arc<RunState>,
    warnings: &mut Vec<String>,
) -> Result<(Repl, FinalWork), RlmError> {
    let parsed = parse_reply(&reply.text);
    let cut = reply.is_cut();
    let finishing = ParsedReply {
        // Out of habit, the model may give its answer as code (FINAL(x) in a ```repl
        // block): run the blocks that do, rather than take the code as the answer.
        blocks: match parsed.final_marker {
            None if !cut => parsed
                .blocks
                .iter()
                .filter(|code| code.contains("FINAL"))
                .cloned()
                .collect(),
            _ => Vec::new(),
        },
        // A cut reply whose FINAL( never closed may hold half an answer.
        final_marker: parsed
            .final_marker
            .clone()
            .filter(|_| !(cut && parsed.final_unbalanced)),
        ..ParsedReply::default()
    };
    let work = run_blocks(repl, finishing.clone(), false, turn, Arc::clone(run))
        .await
        .map_err(internal)?;
    let given = match (&finishing.final_marker, work.code_final) {
        (Some(FinalMarker::Value(value)), _) => Some(value.clone()),
        (Some(FinalMarker::Var(_)), _) => work.text_var.and_then(Result::ok),
        (None, code_final) => code_final.map(|(answer, _)| answer),
    };
    if given.is_some() && cut {
        warnings
            .push("the reply that gave the answer was cut at the token limit after it".to_owned());
    }
    Ok((
        work.repl,
        FinalWork {
            answer: given,
            blocks: work.blocks,
            sub_calls: work.sub_calls,
        },
    ))
}

/// What the reply to the final ask gave.
struct FinalWork {
    answer: Option<String>,
    blocks: Vec<BlockRecord>,
    sub_calls: Vec<SubCallRecord>,
}

/// Warnings about the sub-calls of a tree: cut and empty replies, failures an answer was
/// built on.
fn sub_call_warnings(ledger: &Ledger, sub_calls: u64, failed: u64, answered: bool) -> Vec<String> {
    let mut warnings = Vec::new();
    let cut = ledger
        .cut_sub_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    if cut > 0 {
        warnings.push(format!(
            "{} cut at the token limit (the script got \"Error: ...\" with the partial text)",
            count_verb(cut, "sub-call", "was", "were")
        ));
    }
    let empty = ledger
        .empty_sub_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    if empty > 0 {
        warnings.push(format!(
            "{} no answer text (only reasoning or tool calls, or empty content)",
            count_verb(empty, "sub-call", "had", "had")
        ));
    }
    if answered && failed > 0 {
        warnings.push(format!(
            "the answer was given after {failed} of {} failed; it may rest on their \
             \"Error: ...\" strings",
            count(sub_calls, "sub-call")
        ));
    }
    warnings
}

/// Asks a run's root model.
struct RootAsker {
    root: Arc<dyn LlmBackend>,
    model: String,
    run: Arc<RunState>,
    /// A child's root turns are reserved from the sub-call budget.
    reserve: bool,
}

impl RootAsker {
    /// One root call. `None` when the run was cancelled (or ran out of time, or, for a
    /// child, out of budget) meanwhile, or, when `budgeted`, when the cost budget cannot
    /// cover it.
    async fn ask(
        &self,
        messages: &[Message],
        turn: usize,
        budgeted: bool,
    ) -> Result<Option<(Completion, Duration)>, RlmError> {
        if self.reserve && self.run.cancel.is_cancelled() {
            return Ok(None);
        }
        let request = CompletionRequest {
            model: self.model.clone(),
            messages: messages.to_vec(),
            ..CompletionRequest::default()
        };
        let charge = Charge {
            sub_call: self.reserve,
            reserve_cost: budgeted,
        };
        let Some(budget) = self.run.budget.reserve_one(&request, charge) else {
            return Ok(None);
        };
        ask_root(&self.root, request, turn, &self.run, budget).await
    }
}

/// One root call, settled with `budget`. `None` when the run was cancelled (or ran out of
/// time) meanwhile.
async fn ask_root(
    root: &Arc<dyn LlmBackend>,
    request: CompletionRequest,
    turn: usize,
    run: &RunState,
    mut budget: Reserved,
) -> Result<Option<(Completion, Duration)>, RlmError> {
    let span = tracing::info_span!(
        "rlm_turn",
        turn,
        model = %request.model,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
    );
    let started = Instant::now();
    budget.sent();
    let mut result = tokio::select! {
        biased;
        () = run.cancel.cancelled() => return Ok(None),
        result = root.complete(request.clone()).instrument(span.clone()) => result,
    };
    // A 200 reply holding an error object or a body that is not JSON: proxies send
    // transient upstream failures this way. One more try, after a pause.
    if let Err(LlmError::InvalidResponse { .. }) = &result {
        tracing::warn!(turn, "the root reply was unreadable; trying once more");
        result = tokio::select! {
            biased;
            () = run.cancel.cancelled() => return Ok(None),
            result = async {
                tokio::time::sleep(INVALID_REPLY_PAUSE).await;
                root.complete(request).await
            }.instrument(span.clone()) => result,
        };
    }
    let latency = started.elapsed();
    match result {
        Ok(reply) => {
            span.record("prompt_tokens", reply.usage.prompt_tokens);
            span.record("completion_tokens", reply.usage.completion_tokens);
            budget.settle(&reply.usage);
            run.emitter.emit_with(|| Event::RootReply {
                turn,
                text: reply.text.clone(),
                usage: reply.usage,
                elapsed_ms: millis(latency),
            });
            Ok(Some((reply, latency)))
        }
        Err(source) => {
            budget.settle(&Usage::default());
            if run.cancel.is_cancelled() {
                return Ok(None);
            }
            run.emitter.emit_with(|| Event::RunError {
                turn,
                error: source.to_string(),
            });
            Err(RlmError::Root { turn, source })
        }
    }
}

/// Runs the reply's blocks in order on a blocking thread; stops after a `FINAL`, after a
/// block that fails, or once the run must stop. Then reads a text `FINAL_VAR`, unless the
/// reply was `cut`.
async fn run_blocks(
    mut repl: Repl,
    parsed: ParsedReply,
    cut: bool,
    turn: usize,
    run: Arc<RunState>,
) -> Result<TurnWork, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let mut blocks = Vec::new();
        let mut code_final = None;
        let mut warned = false;
        let mut failed = None;
        let mut not_run = 0;
        for (index, code) in parsed.blocks.iter().enumerate() {
            // Cancellation stops everything; a spent budget stops after the block that spent
            // it (the first block of a turn still runs: it may hold the final answer).
            let stop = run.budget.stopped();
            let cancelled = matches!(stop, Some(StopReason::Cancelled | StopReason::MaxTime));
            if cancelled || (index > 0 && stop.is_some()) {
                not_run = parsed.blocks.len() - index;
                break;
            }
            let outcome = repl.execute(code);
            run.emitter.emit_with(|| Event::CodeBlock {
                turn,
                block: index,
                code: code.clone(),
                output: outcome.output.clone(),
                error: outcome.error.clone(),
                elapsed_ms: millis(outcome.elapsed),
            });
            warned |= !outcome.warnings.is_empty();
            let error = outcome.error.is_some();
            blocks.push(BlockRecord {
                code: code.clone(),
                output: outcome.output,
                error: outcome.error,
                elapsed: outcome.elapsed,
            });
            if let Some(answer) = outcome.final_answer {
                code_final = Some((answer, !outcome.warnings.is_empty()));
                break;
            }
            if error {
                failed = Some(index);
                break;
            }
        }
        let cancelled = matches!(
            run.budget.stopped(),
            Some(StopReason::Cancelled | StopReason::MaxTime)
        );
        let text_var = match &parsed.final_marker {
            Some(FinalMarker::Var(name)) if code_final.is_none() && !cancelled && !cut => {
                Some(repl.final_expression(name))
            }
            _ => None,
        };
        let sub_calls = repl.take_sub_calls();
        TurnWork {
            repl,
            blocks,
            sub_calls,
            code_final,
            warned,
            failed,
            not_run,
            text_var,
        }
    })
    .await
}

/// Why a root reply that ran no code and gave no answer did nothing, and what to do.
fn nudge(reply: &Completion, parsed: &ParsedReply) -> String {
    if let Some(why) = reply.missing_text() {
        return format!(
            "Your reply was empty: {why}. Write ```repl code to explore `context`, or answer \
             with FINAL(answer) on its own line."
        );
    }
    if parsed.unterminated {
        return "Your code block was not closed with a fence on its own line, so it did not \
                run. Send the code again in a complete block."
            .to_owned();
    }
    if let Some(lang) = parsed.skipped_code() {
        return format!(
            "Your ```{lang} block did not run: only ```repl blocks run, and their language is \
             Rhai (see the cheat-sheet), not Python."
        );
    }
    if !parsed.skipped.is_empty() {
        return format!(
            "Your ```{} block did not run: it is not code. Put code in ```repl blocks, or \
             answer with FINAL(answer) on its own line.",
            parsed.skipped[0]
        );
    }
    "Your reply had no ```repl code block and no FINAL(...) at the start of a line outside \
     code. Write code in ```repl blocks to explore `context`, or answer with FINAL(answer) on \
     its own line."
        .to_owned()
}

/// The next user message: each block's output, which blocks did not run and why, and notes
/// on the reply (cut, not accepted, held); or a nudge for a reply that did nothing.
fn feedback(
    reply: &Completion,
    parsed: &ParsedReply,
    blocks: &[BlockRecord],
    failed: Option<usize>,
    notes: &[String],
    not_run: usize,
    turns_left: usize,
) -> String {
    let mut out = String::new();
    if reply.is_cut() {
        out.push_str(
            "Your reply was cut at the token limit (finish_reason: length): nothing in it ends \
             the run, and an unfinished block did not run. Write shorter replies; give a long \
             answer with FINAL_VAR(name) after storing it in a variable.\n\n",
        );
    }
    if blocks.is_empty() && parsed.final_marker.is_none() {
        if !reply.is_cut() {
            out.push_str(&nudge(reply, parsed));
        }
    } else {
        let many = parsed.blocks.len() > 1;
        for (i, block) in blocks.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let title = match (many, failed == Some(i)) {
                (true, true) => format!("Block {} failed:", i + 1),
                (true, false) => format!("Block {} output:", i + 1),
                (false, _) => "Output:".to_owned(),
            };
            out.push_str(&title);
            out.push('\n');
            if block.output.trim().is_empty() {
                out.push_str("(no output: print(...) what you want to see)\n");
            } else {
                out.push_str(&block.output);
                if !block.output.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        let skipped = parsed.blocks.len().saturating_sub(blocks.len());
        if let Some(index) = failed.filter(|_| skipped > 0) {
            out.push_str(&format!(
                "\nBlock {} failed, so {} after it did not run: fix the error and send them \
                 again.\n",
                index + 1,
                if skipped == 1 {
                    "the block".to_owned()
                } else {
                    format!("the {skipped} blocks")
                }
            ));
        } else if not_run > 0 {
            out.push_str(&format!(
                "\n{} did not run: the run's budget is spent.\n",
                count(not_run as u64, "more block")
            ));
        }
        if parsed.unterminated && !reply.is_cut() {
            out.push_str(
                "\nYour last code block was not closed with a fence, so it did not run.\n",
            );
        }
        if let Some(lang) = parsed.skipped_code() {
            out.push_str(&format!(
                "\nYour ```{lang} block did not run: only ```repl blocks (Rhai) run.\n"
            ));
        }
    }
    for note in notes {
        out.push('\n');
        out.push_str(note);
        out.push('\n');
    }
    if (1..=2).contains(&turns_left) {
        out.push_str(&format!(
            "\n({} left: finish soon with FINAL(answer).)",
            count(turns_left as u64, "turn")
        ));
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(code_final: Option<(&str, bool)>, failed: Option<usize>) -> TurnWork {
        TurnWork {
            repl: Repl::builder(Context::from("")).build(),
            blocks: Vec::new(),
            sub_calls: Vec::new(),
            code_final: code_final.map(|(a, w)| (a.to_owned(), w)),
            warned: code_final.is_some_and(|(_, w)| w),
            failed,
            not_run: 0,
            text_var: None,
        }
    }

    #[test]
    fn a_text_final_with_code_waits_for_the_output() {
        let parsed = parse_reply("```repl\nprint(1);\n```\nOutput: 1\nFINAL(999)");
        assert!(matches!(
            verdict(&parsed, &work(None, None), false, false),
            Verdict::Refuse(why) if why.contains("before you saw the output")
        ));
        let alone = parse_reply("FINAL(999)");
        assert_eq!(
            verdict(&alone, &work(None, None), false, false),
            Verdict::Accept("999".into())
        );
        assert!(matches!(
            verdict(&alone, &work(None, None), true, false),
            Verdict::Refuse(why) if why.contains("cut")
        ));
    }

    #[test]
    fn warned_and_error_answers_are_held_once() {
        let parsed = parse_reply("```repl\nFINAL(x)\n```");
        let warned = work(Some(("42", true)), None);
        assert!(matches!(
            verdict(&parsed, &warned, false, false),
            Verdict::Hold(_)
        ));
        assert_eq!(
            verdict(&parsed, &warned, false, true),
            Verdict::Accept("42".into())
        );
        let error = work(Some(("Error: timed out", false)), None);
        assert!(matches!(
            verdict(&parsed, &error, false, false),
            Verdict::Hold(why) if why.contains("Error")
        ));
    }

    #[test]
    fn a_text_final_var_needs_every_block_to_run() {
        let parsed = parse_reply("```repl\nlet a = 1;\n```\n```repl\nbad(\n```\nFINAL_VAR(a)");
        let mut failed = work(None, Some(1));
        failed.text_var = Some(Ok("1".into()));
        assert!(matches!(
            verdict(&parsed, &failed, false, false),
            Verdict::Refuse(why) if why.contains("not every block")
        ));
        let mut ok = work(None, None);
        ok.text_var = Some(Ok("1".into()));
        assert_eq!(
            verdict(&parsed, &ok, false, false),
            Verdict::Accept("1".into())
        );
    }
}
