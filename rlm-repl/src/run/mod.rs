//! The RLM loop: ask the root model, run its code, feed back the output, until a final answer
//! or a budget ends the run.
//!
//! [`run_tree`] is one run, top to bottom: [`Run::start`], then [`Run::turn`] until an
//! answer or a stop, [`Run::final_ask`] when the turns ended without an answer, and
//! [`Run::finish`]. Its parts: [`ask`] asks the root model, [`blocks`] runs the reply's code,
//! [`verdict`] judges its answer, [`feedback`] writes the next message and the warnings.

mod ask;
mod blocks;
mod estimated;
mod feedback;
mod sub_model;
mod verdict;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use rlm_core::usage::Metered;
use rlm_core::{BatchExecutor, CancellationToken, LlmBackend, Message};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use self::ask::RootAsker;
use self::blocks::{final_reply, report_reasoning, run_blocks};
use self::estimated::EstimatedUsage;
use self::feedback::{count, feedback, quote_start, stopped_why, sub_call_warnings};
use self::sub_model::SubModel;
use self::verdict::{Verdict, verdict};
use crate::budget::Budget;
use crate::emitter::Emitter;
use crate::parse::parse_reply;
use crate::prompt::{RECURSION_PROMPT, final_ask, first_message, session_message, system_prompt};
use crate::repl::subcall::millis;
use crate::repl::{ChildAnswer, ChildRunner, Kept};
use crate::schema::OutputSchema;
use crate::state::RunState;
use crate::sync::lock;
use crate::{
    Context, Event, Observer, Repl, RlmConfig, RlmError, RunResult, StopReason, Turn, TurnVerdict,
};

/// Aborts the wrapped task when dropped (the run's time watchdog).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Releases a run's share of the tree's memory budget when dropped.
struct ReleaseScope(Arc<RunState>);

impl Drop for ReleaseScope {
    fn drop(&mut self) {
        self.0.release_scope();
    }
}

/// What every run of one recursion tree shares besides its books and budget: the backends (not yet
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
    /// What an earlier run of a session kept (`context` and the variables), with the note
    /// that tells the root model so (the variables and the earlier questions).
    Kept(Kept, String),
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

/// A top-level run of a session: like [`run`], over `source` (the context, on the first
/// question, or what the earlier run kept), and gives back what the REPL holds at the end
/// (`None` if it was lost: the REPL thread failed).
pub(crate) async fn run_keeping(
    tree: Tree,
    observers: Vec<Arc<dyn Observer>>,
    cancel: CancellationToken,
    query: String,
    source: Source,
) -> (Result<RunResult, RlmError>, Option<Kept>) {
    let config = &tree.config;
    let budget = Budget::new(cancel, config.max_sub_calls, config.max_total_tokens)
        .with_cost(Arc::new(config.prices.clone()), config.max_cost);
    let run = Arc::new(RunState::new(budget, Emitter::new(observers)));
    let _stop_on_drop = run.cancel.clone().drop_guard();
    let _watchdog = config.max_time.map(|limit| {
        let run = Arc::clone(&run);
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            run.budget.stop(StopReason::MaxTime);
        }))
    });
    let (result, repl) = run_tree_keeping(Arc::new(tree), run, query, source).await;
    let kept = match repl {
        Some(LazyRepl::Built(repl)) => Some(repl.into_kept()),
        // The next question goes on from this REPL: build it now (no block needed it).
        Some(LazyRepl::Pending(builder)) => {
            let stack = builder.stack_size();
            crate::repl::spawn_evaluation(stack, move || builder.build().into_kept())
                .await
                .ok()
        }
        None => None,
    };
    (result, kept)
}

/// One run of the tree: the top-level run (depth 0) or a child. A child's root turns are
/// calls below the top-level root: each is reserved from the sub-call budget first.
pub(crate) async fn run_tree(
    tree: Arc<Tree>,
    state: Arc<RunState>,
    query: String,
    source: Source,
) -> Result<RunResult, RlmError> {
    let (result, repl) = run_tree_keeping(tree, state, query, source).await;
    if let Some(LazyRepl::Built(repl)) = repl {
        repl.discard();
    }
    result
}

/// [`run_tree`], giving back the REPL as the run left it (`None` if it was lost: the run
/// failed before it had one, or the REPL thread failed).
async fn run_tree_keeping(
    tree: Arc<Tree>,
    state: Arc<RunState>,
    query: String,
    source: Source,
) -> (Result<RunResult, RlmError>, Option<LazyRepl>) {
    // However the run ends, its variables stop counting against the tree's memory budget.
    let _scope = ReleaseScope(Arc::clone(&state));
    let mut run = match Run::start(tree, state, &query, source).await {
        Ok(run) => run,
        Err(error) => return (Err(error), None),
    };
    let stopped = run.drive().await;
    let repl = run.repl.take();
    (stopped.and_then(|stopped| run.finish(stopped)), repl)
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
    /// The schema the answer must conform to (the top-level run's only).
    schema: Option<OutputSchema>,
    /// The accepted answer as JSON (with a schema).
    json: Option<serde_json::Value>,
    /// Answers refused for not conforming to the schema.
    refusals: usize,
    /// The schema's retries ran out: the run ends without an answer.
    invalid_output: bool,
    /// The run's REPL, while no block runs (a block takes it to the REPL's thread).
    repl: Option<LazyRepl>,
}

/// A run's REPL, or what builds it when a block first needs it: then its building and that
/// block's run are one hand-off to an evaluation thread, and a run whose replies hold no code
/// (a text answer) builds none.
pub(crate) enum LazyRepl {
    Pending(Box<crate::repl::ReplBuilder>),
    Built(Box<Repl>),
}

impl LazyRepl {
    /// The native stack its blocks (and its building) run on.
    pub(crate) fn stack_size(&self) -> usize {
        match self {
            Self::Pending(builder) => builder.stack_size(),
            Self::Built(repl) => repl.stack_size(),
        }
    }

    /// The REPL, built here if it was not yet (a pass over the context: call it on an
    /// evaluation thread).
    pub(crate) fn force(self) -> Repl {
        match self {
            Self::Pending(builder) => builder.build(),
            Self::Built(repl) => *repl,
        }
    }

    /// The sub-calls made since the last look (none before the REPL is built).
    pub(crate) fn take_sub_calls(&self) -> Vec<crate::SubCallRecord> {
        match self {
            Self::Pending(_) => Vec::new(),
            Self::Built(repl) => repl.take_sub_calls(),
        }
    }
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
    ) -> Result<Self, RlmError> {
        let started = Instant::now();
        let config = &tree.config;
        let place = state.emitter.place().clone();
        let child = place.depth > 0;
        let ledger = &state.ledger;
        let metered_root = Metered::new(
            Metered::new(
                EstimatedUsage::new(Arc::clone(&tree.root), Arc::clone(ledger)),
                ledger.usage_at(place.depth),
            ),
            ledger.usage.clone(),
        );
        let root: Arc<dyn LlmBackend> = Arc::new(metered_root);
        let sub: Arc<dyn BatchExecutor> = Arc::new(Metered::new(
            Metered::new(
                SubModel::new(
                    EstimatedUsage::new(Arc::clone(&tree.sub), Arc::clone(ledger)),
                    Arc::clone(&state),
                ),
                ledger.usage_at(place.depth),
            ),
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
        let mut session_note = None;
        let mut builder = match source {
            Source::Context(context) => Repl::builder(context),
            Source::Value(value) => Repl::builder_for_value(value),
            Source::Kept(kept, note) => {
                session_note = Some(note);
                Repl::builder_for_kept(kept)
            }
        }
        .limits(config.sandbox.clone())
        .max_output_chars(config.max_output_chars)
        .sub_backend(sub, sub_model.clone())
        .max_concurrent(config.max_concurrent)
        .sub_max_prompt_tokens(config.sub_max_prompt_tokens)
        .structured_output(config.structured_output)
        .run_state(Arc::clone(&state))
        .tools(
            Arc::new(RunTools {
                tools: config.tools.clone(),
                state: Arc::clone(&state),
            }),
            config.tools.iter().map(|t| t.name().to_owned()).collect(),
        );
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
        // Built when a block first needs it, where the context's size is known without a
        // pass over it (a run whose replies hold no code builds none). Else now: on an
        // evaluation thread (the pool the run's blocks use), not tokio's blocking pool.
        let known = builder
            .known_context_info()
            .filter(|_| session_note.is_none());
        let (mut repl, info) = match known {
            Some(info) => (LazyRepl::Pending(Box::new(builder)), info),
            None => {
                let stack = builder.stack_size();
                let repl = crate::repl::spawn_evaluation(stack, move || builder.build()).await?;
                let info = repl.context_info().clone();
                (LazyRepl::Built(Box::new(repl)), info)
            }
        };
        // While the first root call is out, not after its reply.
        crate::repl::warm_up_lint();

        let mut system = system_prompt(config);
        if config.system_prompt.is_none() {
            if recursion.allowed {
                system.push_str(RECURSION_PROMPT);
            } else if child {
                system.push_str(&recursion.text());
            }
        }
        let schema = config.output_schema.clone().filter(|_| !child);
        let mut first = first_message(query, &info);
        first.push_str(&crate::tool::listing(&config.tools));
        if let Some(schema) = &schema {
            first.push_str(&output_schema_note(schema));
        }
        if let (Some(note), LazyRepl::Built(repl)) = (session_note, &mut repl) {
            first = session_message(&note, &repl.show_vars(), repl.take_notice(), &first);
        }
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
            schema,
            json: None,
            refusals: 0,
            invalid_output: false,
            repl: Some(repl),
        };
        Ok(run)
    }

    /// Takes the run's turns until an answer or a stop, then makes the final ask when there
    /// is no answer. Returns why the run stopped.
    async fn drive(&mut self) -> Result<StopReason, RlmError> {
        for turn in 1..=self.max_iterations {
            if self.turn(turn).await? == Next::Stop {
                break;
            }
        }
        self.final_ask().await
    }

    /// The REPL, for a block to run in.
    fn take_repl(&mut self) -> Result<LazyRepl, RlmError> {
        self.repl
            .take()
            .ok_or_else(|| RlmError::Internal("the run's REPL was lost".to_owned()))
    }

    /// Turn `turn`: asks the root model, runs the reply's code, judges its answer (if any)
    /// and, unless the run ends here, feeds back what happened.
    async fn turn(&mut self, turn: usize) -> Result<Next, RlmError> {
        let state = Arc::clone(&self.state);
        if state.budget.stopped().is_some() {
            if self.child && turn == 1 && state.budget.exhausted().is_some() {
                // Its first root turn is a call the budget refused.
                state.budget.note_refused(1);
            }
            return Ok(Next::Stop);
        }
        state.turn.store(turn, std::sync::atomic::Ordering::SeqCst);
        state.emitter.emit_with(|| Event::TurnStart { turn });
        let Some((reply, root_latency)) = self.asker.ask(&self.messages, turn, true).await? else {
            return Ok(Next::Stop);
        };
        let cut = reply.is_cut();
        let parsed = parse_reply(&reply.text);
        report_reasoning(&state, turn, &parsed);
        let repl = self.take_repl()?;
        let mut work = run_blocks(repl, parsed.clone(), cut, turn, Arc::clone(&state)).await?;
        self.repl = work.repl.take();
        if let Some(error) = sub_model_failure(&state, &self.sub_model) {
            return Err(error);
        }
        let verdict = self.check_output(verdict(&parsed, &work, cut, self.held));
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
        state
            .emitter
            .emit_with(|| Event::turn_end(&record, verdict.reported()));
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
                return Ok(Next::Stop);
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
            Verdict::Invalid(errors) => {
                self.refusals += 1;
                let retries = self.tree.config.output_schema_retries;
                let last = self.refusals > retries;
                state.emitter.emit_with(|| Event::OutputRefused {
                    turn,
                    errors: errors.clone(),
                    refusals: self.refusals,
                    last,
                });
                if last {
                    self.warnings.push(format!(
                        "no answer: {} given did not conform to the output schema \
                         (--output-schema-retries {retries}); the last one's errors: {}",
                        count(self.refusals as u64, "final answer"),
                        errors.replace('\n', "; ")
                    ));
                    self.invalid_output = true;
                    self.trajectory.push(record);
                    return Ok(Next::Stop);
                }
                let left = retries + 1 - self.refusals;
                notes.push(format!(
                    "Your final answer was not accepted: it does not conform to the output \
                     schema. Its first errors:\n{errors}\nFix the value and give FINAL again \
                     ({} left before the run ends without an answer).",
                    count(left as u64, "attempt")
                ));
            }
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
        Ok(Next::Turn)
    }

    /// Why the turns ended; and, when they ended without an answer, one last root call for
    /// the best answer now (the top-level root after a turn, sub-call or cost budget stop; a
    /// child only after its own turns ran out). Returns why the run stopped.
    async fn final_ask(&mut self) -> Result<StopReason, RlmError> {
        let state = Arc::clone(&self.state);
        if self.invalid_output {
            return Ok(StopReason::InvalidOutput);
        }
        let mut stopped = match (&self.answer, state.budget.stopped()) {
            // Whatever the script made of calls cut short by a cancel or the clock is not a
            // final answer, even if it called FINAL with it.
            (_, Some(reason @ (StopReason::Cancelled | StopReason::MaxTime))) => reason,
            // A budget ran out in the turn that gave the answer (mid-batch, say): the answer
            // stands, and the run says the budget stopped it.
            (Some(_), Some(reason)) if !self.child => reason,
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
        let ask = match &self.schema {
            Some(_) => format!(
                "{} The answer must conform to the output schema given at the start: JSON, \
                 FINAL({{...}}) on one line, or FINAL_VAR(name) of a variable that holds it.",
                final_ask(reason)
            ),
            None => final_ask(reason),
        };
        // The last feedback is the last message; the ask is appended to it.
        match self.messages.last_mut() {
            Some(last) if last.role == rlm_core::Role::User && !self.trajectory.is_empty() => {
                last.content = format!("{}\n\n{ask}", last.content).into();
            }
            _ => self.messages.push(Message::user(ask)),
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
            let repl = self.take_repl()?;
            let (repl, given) = final_reply(repl, &reply, turn, &state, &mut self.warnings).await?;
            self.repl = repl;
            if let Some(error) = sub_model_failure(&state, &self.sub_model) {
                return Err(error);
            }
            if given.answer.is_none() && given.conflicting {
                self.warnings.push(format!(
                    "no answer: {} and the reply to the final ask gave different final \
                     answers; it began: {}",
                    stopped_why(stopped),
                    quote_start(&reply.text)
                ));
            } else if let (None, Some(why)) = (&given.answer, &given.unread) {
                self.warnings.push(format!(
                    "no answer: {} and the reply to the final ask named a value that could \
                     not be read ({why}); it began: {}",
                    stopped_why(stopped),
                    quote_start(&reply.text)
                ));
            } else if given.answer.is_none() {
                self.warnings.push(format!(
                    "no answer: {} and the reply to the final ask had no FINAL(...) or \
                     FINAL_VAR(...); it began: {}",
                    stopped_why(stopped),
                    quote_start(&reply.text)
                ));
            }
            self.answer = given.answer;
            let mut invalid = false;
            if let (Some(schema), Some(answer)) = (&self.schema, &self.answer) {
                match schema.accept(answer) {
                    Ok(value) => {
                        self.answer = Some(value.to_string());
                        self.json = Some(value);
                    }
                    Err(errors) => {
                        self.refusals += 1;
                        state.emitter.emit_with(|| Event::OutputRefused {
                            turn,
                            errors: errors.clone(),
                            refusals: self.refusals,
                            last: true,
                        });
                        self.warnings.push(format!(
                            "no answer: {} and the answer to the final ask did not conform to \
                             the output schema: {}",
                            stopped_why(stopped),
                            errors.replace('\n', "; ")
                        ));
                        self.answer = None;
                        invalid = true;
                        stopped = StopReason::InvalidOutput;
                    }
                }
            }
            let record = Turn {
                turn,
                reply: reply.text,
                usage: reply.usage,
                root_latency,
                blocks: given.blocks,
                sub_calls: given.sub_calls,
            };
            // The answer to the final ask, if any, ends the run: nothing is held or refused.
            let verdict = match self.answer {
                Some(_) => TurnVerdict::Accepted,
                None if invalid => TurnVerdict::InvalidOutput,
                None => TurnVerdict::NoAnswer,
            };
            state
                .emitter
                .emit_with(|| Event::turn_end(&record, verdict));
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
            let estimated = ledger
                .estimated_usage
                .load(std::sync::atomic::Ordering::SeqCst);
            if estimated > 0 {
                self.warnings.push(format!(
                    "the server sent no token usage for {}: their tokens are estimated from \
                     their characters (about 4 bytes a token) for the token and cost budgets",
                    count(estimated, "call")
                ));
            }
            self.warnings.extend(sub_call_warnings(
                ledger,
                state.budget.sub_calls(),
                failed_sub_calls,
                self.answer.is_some(),
            ));
            let refused = state.budget.refused_sub_calls();
            let budget_stop = matches!(
                stopped,
                StopReason::MaxSubCalls | StopReason::MaxTokens | StopReason::MaxCost
            );
            if self.answer.is_some() && budget_stop && refused == 0 {
                self.warnings.push(format!(
                    "{}: the answer was given with what the run had by then",
                    stopped_why(stopped)
                ));
            }
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
        let mut cost = self
            .tree
            .config
            .prices
            .report(usage.iter().map(|(model, usage)| (model.as_str(), usage)));
        let cut_short_cost = if self.child {
            BTreeMap::new()
        } else {
            state.budget.unmetered_cost()
        };
        if !self.child {
            // Calls cut short in flight are charged at their estimate: the server may have
            // billed them, and the usage above cannot hold them.
            let charged: f64 = cut_short_cost.values().sum();
            for (model, usd) in &cut_short_cost {
                *cost.by_model.entry(model.clone()).or_default() += usd;
            }
            if charged > 0.0 {
                cost.total += charged;
                self.warnings.push(format!(
                    "calls cut short in flight are charged at their estimated cost \
                     (${charged:.4}): the server may have billed them, but sent no usage"
                ));
            }
        }
        let result = RunResult {
            answer: self.answer.unwrap_or_default(),
            json: self.json,
            iterations: self.trajectory.len(),
            stopped,
            elapsed: self.started.elapsed(),
            usage,
            cost,
            sub_calls: state.budget.sub_calls(),
            failed_sub_calls,
            refused_sub_calls: state.budget.refused_sub_calls(),
            cut_short_cost,
            cancelled_sub_calls: ledger
                .cancelled_sub_calls
                .load(std::sync::atomic::Ordering::SeqCst),
            warnings: self.warnings,
            max_depth_reached: ledger
                .max_depth_reached
                .load(std::sync::atomic::Ordering::SeqCst),
            child_runs: ledger.child_runs.load(std::sync::atomic::Ordering::SeqCst),
            tool_calls: ledger.tool_calls.load(std::sync::atomic::Ordering::SeqCst),
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

impl Run {
    /// With an output schema, an accepted answer is converted to JSON and validated: it
    /// stands as compact JSON, or becomes [`Verdict::Invalid`] with its first errors.
    fn check_output(&mut self, verdict: Verdict) -> Verdict {
        let (Some(schema), Verdict::Accept(answer)) = (&self.schema, &verdict) else {
            return verdict;
        };
        match schema.accept(answer) {
            Ok(value) => {
                let text = value.to_string();
                self.json = Some(value);
                Verdict::Accept(text)
            }
            Err(errors) => Verdict::Invalid(errors),
        }
    }
}

/// What the first message adds with an output schema: the schema, compactly, and how to give
/// an answer of it.
fn output_schema_note(schema: &OutputSchema) -> String {
    format!(
        "\n\nThe final answer must be JSON conforming to this schema (`?` marks an optional \
         key):\n{}\nBuild it as a map or array in code and give FINAL(value) or \
         FINAL_VAR(\"name\"); a string holding JSON works too. An answer that does not \
         conform is refused with its errors.",
        schema.describe()
    )
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

/// Calls the host functions of one run: counts each call in the tree's ledger, reports it
/// as an [`Event::ToolCall`], and stops waiting when the run is cancelled.
struct RunTools {
    tools: Vec<crate::Tool>,
    state: Arc<RunState>,
}

impl crate::tool::ToolCaller for RunTools {
    fn call(&self, name: &str, argument: serde_json::Value) -> crate::ToolFuture {
        let Some(tool) = self.tools.iter().find(|t| t.name() == name).cloned() else {
            let message = format!("no host function {name:?}");
            return Box::pin(async move { Err(message) });
        };
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            if state.cancel.is_cancelled() {
                return Err("the run was cancelled".to_owned());
            }
            state
                .ledger
                .tool_calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let shown = crate::repl::output::prefix(&argument.to_string(), 500).to_owned();
            let started = Instant::now();
            let outcome = tokio::select! {
                biased;
                () = state.cancel.cancelled() => Err("the run was cancelled".to_owned()),
                outcome = tool.call(argument) => outcome,
            };
            let turn = state.turn();
            state.emitter.emit_with(|| Event::ToolCall {
                turn,
                name: tool.name().to_owned(),
                argument: shown,
                error: outcome.as_ref().err().cloned(),
                elapsed_ms: millis(started.elapsed()),
            });
            outcome
        })
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rlm_core::mock::MockBackend;

    use crate::{Context, Rlm};

    /// Hand-offs to evaluation threads a run of `replies` over `context` makes, and its answer.
    async fn hand_offs(replies: &[&str], context: Context) -> (usize, String) {
        let root = Arc::new(MockBackend::scripted(replies.iter().copied()));
        let rlm = Rlm::builder(root as Arc<dyn rlm_core::LlmBackend>)
            .root_model("root")
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let before = crate::repl::handed_off();
        let result = rlm
            .run("q", context)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (crate::repl::handed_off() - before, result.answer)
    }

    /// A small or shared context's REPL is built by the first block that needs it, in the
    /// same hand-off: a run answering in text builds none, and each turn with code hands off
    /// once (before, the build was one more, and a turn without code one too). A large text
    /// is still read into its REPL on an evaluation thread before the first call.
    #[tokio::test]
    async fn a_run_hands_its_repl_to_an_evaluation_thread_only_for_code() {
        let small = || Context::Text("alpha beta gamma".into());
        assert_eq!(hand_offs(&["FINAL(ok)"], small()).await, (0, "ok".into()));
        let counted = [
            "```repl\nlet n = split(context, \" \").len();\n```",
            "```repl\nFINAL(n)\n```",
        ];
        assert_eq!(hand_offs(&counted, small()).await, (2, "3".into()));
        let shared = Context::Shared(crate::SharedContext::new(small()));
        assert_eq!(hand_offs(&counted, shared).await, (2, "3".into()));
        // A variable to read is read there (here one that does not exist, then a text answer).
        let var = ["FINAL_VAR(n)", "FINAL(none)"];
        assert_eq!(hand_offs(&var, small()).await, (1, "none".into()));

        let large = Context::Text("word ".repeat(100_000));
        assert_eq!(hand_offs(&["FINAL(ok)"], large).await, (1, "ok".into()));
    }
}
