//! The sandboxed Rhai environment: one persistent scope holding `context`, the REPL functions
//! and the helpers.
//!
//! It knows nothing of the loop that drives it: sub-calls go to the
//! [`BatchExecutor`](rlm_core::BatchExecutor) it is given and are charged to the run's budget,
//! and `rlm_query` starts child runs through the [`ChildRunner`] the loop hands it.

mod children;
mod errors;
mod handover;
mod helpers;
mod host;
mod json_calls;
mod lint;
mod mapping;
mod memory;
pub(crate) mod output;
pub(crate) use lint::warm_up as warm_up_lint;
mod sorting;
pub(crate) mod subcall;
mod thread;
mod values;
mod watchdog;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rhai::packages::{Package, StandardPackage};
use rhai::{
    AST, Array, Dynamic, Engine, EvalAltResult, FuncRegistration, INT, ImmutableString, Module,
    NativeCallContext, Position, Scope,
};
use rlm_core::{BatchExecutor, CancellationToken, Text};
use tokio::runtime::Handle;

pub(crate) use self::children::{ChildAnswer, ChildRunner};
use self::errors::{STOP_CANCELLED, STOP_FINAL, STOP_MEMORY, STOP_TIMEOUT};
use self::handover::{Handover, across};
use self::host::HostTools;
pub(crate) use self::memory::estimate_bytes;
use self::output::OutputBuffer;
use self::subcall::{BlockClock, SubCaller};
#[cfg(test)]
pub(crate) use self::thread::handed_off;
pub(crate) use self::thread::spawn_evaluation;
use self::values::{script_error, to_text};
use crate::budget::Budget;
use crate::emitter::Emitter;
use crate::state::RunState;
use crate::sync::lock;
use crate::words::count_of;
use crate::{Context, ContextInfo, SandboxLimits, SubCallRecord};

/// Default characters of a block's output shown to the model.
const DEFAULT_MAX_OUTPUT_CHARS: usize = 20_000;

/// What running one code block produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOutcome {
    /// What the root model is shown: warnings about the code, the printed output (head and
    /// tail kept when it is longer than the limit, with the true length stated), the value of
    /// the last expression when it is not `()`, the error if any, and notes. Empty when the
    /// block printed nothing and succeeded.
    pub output: String,
    /// The error (parse or runtime, with line, column, the offending line and hints), if the
    /// block failed. Also part of [`output`](Self::output).
    pub error: Option<String>,
    /// The answer, when the block called `FINAL(...)` or `FINAL_VAR(...)`.
    pub final_answer: Option<String>,
    /// Warnings about code that runs but may silently do the wrong thing (also at the top
    /// of [`output`](Self::output)). An answer from a block with warnings is held once for
    /// the root model to confirm.
    pub warnings: Vec<String>,
    /// Wall time of the block, sub-calls included.
    pub elapsed: Duration,
}

/// State shared between the [`Repl`] and the functions registered on its engine.
struct Shared {
    output: Mutex<OutputBuffer>,
    max_output_chars: usize,
    clock: Arc<BlockClock>,
    final_answer: Mutex<Option<String>>,
    printed_unit: AtomicBool,
    run: Arc<RunState>,
    sub: Option<SubCaller>,
    /// The host functions (`tools`), when the REPL has any.
    tools: Option<HostTools>,
    block_timeout: Duration,
    /// The memory budget ([`SandboxLimits::max_memory`]; 0: none).
    max_memory: usize,
    /// Why the running block must stop ([`HALT_CANCELLED`], [`HALT_TIMEOUT`],
    /// [`HALT_MEMORY`]; 0: it need not), set by its watchdog and read at every operation.
    halt: AtomicU8,
    /// The block's integer divisions that dropped a fraction: the first (its line and
    /// operands) and how many.
    lossy_divisions: Mutex<Option<LossyDivision>>,
}

/// An integer division that dropped a fraction (`193 / 5` is 38, not 38.6).
#[derive(Debug, Clone, Copy)]
struct LossyDivision {
    line: Option<usize>,
    dividend: INT,
    divisor: INT,
    count: usize,
}

impl LossyDivision {
    /// The warning the model sees: an average over integers comes out truncated, silently.
    fn warning(&self) -> String {
        let Self {
            dividend: a,
            divisor: b,
            ..
        } = *self;
        let at = self
            .line
            .map_or_else(String::new, |line| format!(" (line {line})"));
        let more = match self.count {
            1 => String::new(),
            n => format!(" ({n} divisions in this block dropped a fraction.)"),
        };
        format!(
            "warning{at}: `/` divided two integers: {a} / {b} gave {}, the fraction dropped \
             ({} as a float). For an average, a ratio or a share divide floats: float(total) \
             / n.{more}",
            a / b,
            a as f64 / b as f64
        )
    }
}

/// The run was cancelled (or ran out of time): see [`Shared::halt`].
const HALT_CANCELLED: u8 = 1;
/// The block ran out of script time.
const HALT_TIMEOUT: u8 = 2;
/// The process's memory grew past the budget while the block ran.
const HALT_MEMORY: u8 = 3;

/// Longest single sleep of `sleep` before it looks again whether the block must stop.
const SLEEP_SLICE: Duration = Duration::from_millis(10);

impl Shared {
    fn print(&self, text: &str) {
        lock(&self.output).push_line(text);
    }

    /// One look at the running block by its [`watchdog`]: raises [`halt`](Self::halt) when
    /// the run is cancelled, the block's script time ran out or memory grew past the budget.
    /// A native helper counts as one Rhai operation however long it runs, so checking only
    /// every few hundred operations would let a loop of slow calls (a regex over a 100 MB
    /// context) run on for minutes. Returns the script time the block has left, or `None`
    /// once it must stop.
    fn look(&self) -> Option<Duration> {
        if self.halt.load(Ordering::SeqCst) != 0 {
            return None;
        }
        if self.run.cancel.is_cancelled() {
            self.halt.store(HALT_CANCELLED, Ordering::SeqCst);
            return None;
        }
        let used = self.clock.script_time();
        if used > self.block_timeout {
            self.halt.store(HALT_TIMEOUT, Ordering::SeqCst);
            return None;
        }
        if self.memory_grew_too_much() {
            self.halt.store(HALT_MEMORY, Ordering::SeqCst);
            return None;
        }
        Some(self.block_timeout - used)
    }

    /// Whether the process's resident memory grew by more than the budget since the block
    /// started (never, where it cannot be read).
    fn memory_grew_too_much(&self) -> bool {
        let over = || {
            self.clock
                .memory_growth()
                .is_some_and(|growth| growth > self.max_memory)
        };
        // Prompts the script let go of but the cache still holds are not its memory: they
        // are discounted before the block is stopped (see `handover`), off the meter of the
        // thread that looks (the block's own, too).
        let release = || rlm_alloc::unmetered(|| self.clock.release_handed()).0;
        self.max_memory > 0 && over() && (release() == 0 || over())
    }

    /// Why the running block must stop now, if it must: what its watchdog found, or (its
    /// backstop) the run's cancellation and the block's clock. With `check_memory` and the
    /// counting allocator (a cheap reading), the block's own thread checks its memory too:
    /// a block growing fast is stopped within a few operations of its budget, however late
    /// the watchdog's thread gets a core on a loaded machine.
    fn halted(&self, check_clock: bool, check_memory: bool) -> Option<&'static str> {
        match self.halt.load(Ordering::Relaxed) {
            HALT_CANCELLED => return Some(STOP_CANCELLED),
            HALT_TIMEOUT => return Some(STOP_TIMEOUT),
            HALT_MEMORY => return Some(STOP_MEMORY),
            _ => {}
        }
        if check_memory && rlm_alloc::installed() && self.memory_grew_too_much() {
            self.halt.store(HALT_MEMORY, Ordering::SeqCst);
            return Some(STOP_MEMORY);
        }
        if !check_clock {
            return None;
        }
        if self.run.cancel.is_cancelled() {
            return Some(STOP_CANCELLED);
        }
        if self.clock.script_time() > self.block_timeout {
            return Some(STOP_TIMEOUT);
        }
        None
    }

    /// `a / b` on two integers, as Rhai computes it; a quotient that dropped a fraction is
    /// noted for the block's warning.
    fn divide(&self, at: Position, a: INT, b: INT) -> Result<INT, Box<EvalAltResult>> {
        let Some(quotient) = a.checked_div(b) else {
            let what = if b == 0 {
                "Division by zero"
            } else {
                "Division overflow"
            };
            return Err(Box::new(EvalAltResult::ErrorArithmetic(
                format!("{what}: {a} / {b}"),
                Position::NONE,
            )));
        };
        if a % b != 0 {
            let mut noted = lock(&self.lossy_divisions);
            match &mut *noted {
                Some(first) => first.count += 1,
                None => {
                    *noted = Some(LossyDivision {
                        line: at.line(),
                        dividend: a,
                        divisor: b,
                        count: 1,
                    });
                }
            }
        }
        Ok(quotient)
    }

    /// `sleep(seconds)`: sleeps in short slices, and stops with the block (its time limit,
    /// the run's cancellation). Negative, NaN and zero durations do not sleep; huge ones
    /// sleep until the block's time runs out.
    fn sleep(&self, seconds: f64) -> Result<(), Box<EvalAltResult>> {
        let wanted = if seconds.is_finite() && seconds > 0.0 {
            Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
        } else {
            Duration::ZERO
        };
        let until = Instant::now().checked_add(wanted);
        loop {
            if let Some(token) = self.halted(true, true) {
                return Err(stop(token));
            }
            let left = until.map_or(SLEEP_SLICE, |t| t.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(SLEEP_SLICE));
        }
    }
}

/// A sandboxed Rhai REPL over a [`Context`]: the environment the root model's code runs in.
///
/// Variables and functions defined by one [`execute`](Self::execute) call are there for the
/// next. `context` is loaded once as a read-only variable and shared, never copied per block
/// or per sub-call. Scripts have no file, environment, network or module access; runaway
/// code is stopped by [`SandboxLimits`] with an error, and the scope survives it.
///
/// `execute` blocks: call it from a thread of its own or from code without a runtime, not
/// from an async task. [`Rlm`](crate::Rlm) gives each evaluation a thread of its own (not one
/// of tokio's bounded blocking pool, where blocks waiting on their children's blocks could
/// take every thread and wait forever).
///
/// ```
/// use rlm_repl::{Context, Repl};
///
/// let mut repl = Repl::new(Context::from("alpha\nbeta\ngamma"));
/// let first = repl.execute("let words = lines(context);\nprint(words.len());");
/// assert_eq!(first.output, "3\n");
/// let second = repl.execute("FINAL(upper(words[1]))");
/// assert_eq!(second.final_answer.as_deref(), Some("BETA"));
/// ```
pub struct Repl {
    engine: Engine,
    scope: Scope<'static>,
    functions: AST,
    shared: Arc<Shared>,
    limits: SandboxLimits,
    info: ContextInfo,
    /// Bytes the variables held after the last block (an estimate; the context excepted).
    held: usize,
    /// Functions defined so far divide (their blocks held a `/`).
    functions_divide: bool,
    /// What the model must be told before its first block: variables of an earlier run
    /// removed for the memory budget.
    notice: Option<String>,
}

impl fmt::Debug for Repl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repl")
            .field("context", &self.info)
            .field("variables", &self.scope.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Repl`].
pub struct ReplBuilder {
    context: Source,
    limits: SandboxLimits,
    max_output_chars: usize,
    sub: Option<(Arc<dyn BatchExecutor>, String)>,
    max_concurrent: usize,
    cancel: Option<CancellationToken>,
    run: Option<Arc<RunState>>,
    handle: Option<Handle>,
    children: Option<Arc<dyn ChildRunner>>,
    max_prompt_tokens: Option<u64>,
    tools: Option<(Arc<dyn crate::tool::ToolCaller>, Vec<String>)>,
    structured: crate::schema::StructuredOutput,
}

/// Where a REPL's context comes from.
enum Source {
    /// The user's context, loaded once.
    Context(Context),
    /// A value of a parent run's scope (`rlm_query`'s context): shared, not copied, where
    /// Rhai shares it (strings).
    Value(Dynamic),
    /// The scope of an earlier REPL of a session, `context` included.
    Kept(Kept),
}

/// What a session keeps of a REPL between runs: its scope (`context` first, then the
/// variables) and the functions its blocks defined. The engine, the sub-call backend and the
/// run's budget are not kept: every run builds its own around this.
pub(crate) struct Kept {
    pub(crate) scope: Scope<'static>,
    pub(crate) functions: AST,
    pub(crate) functions_divide: bool,
    pub(crate) info: ContextInfo,
}

impl fmt::Debug for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kept")
            .field("variables", &self.scope.len().saturating_sub(1))
            .field("functions", &self.functions.iter_functions().count())
            .finish_non_exhaustive()
    }
}

impl Kept {
    /// A scope holding `context` (read-only) and the given variables, in order.
    pub(crate) fn new(
        context: Dynamic,
        info: ContextInfo,
        variables: impl IntoIterator<Item = (String, bool, Dynamic)>,
    ) -> Self {
        let mut scope = Scope::new();
        scope.push_constant_dynamic("context", context);
        for (name, constant, value) in variables {
            if constant {
                scope.push_constant_dynamic(name, value);
            } else {
                scope.push_dynamic(name, value);
            }
        }
        Self {
            scope,
            functions: AST::empty(),
            functions_divide: false,
            info,
        }
    }

    /// The variables (the context excepted), in the order they were defined: name, whether
    /// it is a constant, value.
    pub(crate) fn variables(&self) -> Vec<(&str, bool, &Dynamic)> {
        // `iter_raw` goes from the latest entry back; the context is the first entry.
        let mut all: Vec<_> = self.scope.iter_raw().collect();
        all.pop();
        all.reverse();
        all
    }

    /// The names and parameters of the functions defined (`f(a, b)`).
    pub(crate) fn functions(&self) -> Vec<String> {
        // Closures' bodies are anonymous functions: their variables are listed already.
        self.functions
            .iter_functions()
            .filter(|f| !f.name.starts_with("anon$"))
            .map(|f| format!("{}({})", f.name, f.params.join(", ")))
            .collect()
    }
}

impl fmt::Debug for ReplBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplBuilder")
            .field("limits", &self.limits)
            .field("max_output_chars", &self.max_output_chars)
            .field("sub_model", &self.sub.as_ref().map(|(_, model)| model))
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

impl ReplBuilder {
    /// What the root model is told about the context, when knowing it takes no pass over a
    /// large context (a shared context knows it; a small text is counted here): a run can then
    /// write its first message before the REPL is built. `None` otherwise.
    pub(crate) fn known_context_info(&self) -> Option<ContextInfo> {
        /// The longest text counted here (on an async thread): a few microseconds.
        const SMALL_TEXT: usize = 64 << 10;
        match &self.context {
            Source::Context(context @ Context::Shared(_)) => Some(context.info()),
            Source::Context(context @ Context::Text(text)) if text.len() <= SMALL_TEXT => {
                Some(context.info())
            }
            _ => None,
        }
    }

    /// The native stack the REPL's blocks (and its building) run on.
    pub(crate) fn stack_size(&self) -> usize {
        stack_size(&self.limits)
    }

    /// The sandbox limits (default: [`SandboxLimits::default`]).
    pub fn limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Characters of a block's printed output shown (default 20,000; head and tail kept).
    pub fn max_output_chars(mut self, chars: usize) -> Self {
        self.max_output_chars = chars;
        self
    }

    /// The backend and model of `llm_query` / `llm_batch`. Without one, they return an
    /// `Error: ...` string.
    pub fn sub_backend(
        mut self,
        backend: Arc<dyn BatchExecutor>,
        model: impl Into<String>,
    ) -> Self {
        self.sub = Some((backend, model.into()));
        self
    }

    /// Default concurrency of `llm_batch` (default 16).
    pub fn max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.max_concurrent = max_concurrent;
        self
    }

    /// How `llm_query_json` / `llm_batch_json` ask the sub-model for JSON (default
    /// [`StructuredOutput::Auto`](crate::StructuredOutput::Auto)).
    pub fn structured_output(mut self, mode: crate::schema::StructuredOutput) -> Self {
        self.structured = mode;
        self
    }

    /// Cancelling this token stops running code and in-flight sub-calls.
    pub fn cancel_token(mut self, cancel: CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// The tokio runtime that runs sub-calls (default: the current one when `build` is
    /// called, else a process-wide runtime).
    pub fn runtime_handle(mut self, handle: Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    pub(crate) fn run_state(mut self, run: Arc<RunState>) -> Self {
        self.run = Some(run);
        self
    }

    /// What `rlm_query` starts child runs with (without one, it is a plain `llm_query`).
    pub(crate) fn child_runner(mut self, children: Arc<dyn ChildRunner>) -> Self {
        self.children = Some(children);
        self
    }

    /// The host functions `names`, called through `caller` (see [`crate::tool`]).
    pub(crate) fn tools(
        mut self,
        caller: Arc<dyn crate::tool::ToolCaller>,
        names: Vec<String>,
    ) -> Self {
        self.tools = (!names.is_empty()).then_some((caller, names));
        self
    }

    /// The largest prompt a sub-call may send, in estimated tokens: a larger one fails fast
    /// with an `Error: ...` string (default: no limit).
    pub(crate) fn sub_max_prompt_tokens(mut self, max: Option<u64>) -> Self {
        self.max_prompt_tokens = max;
        self
    }

    /// Loads the context and builds the REPL. Loading a large context takes one pass over it.
    pub fn build(self) -> Repl {
        let mut kept = None;
        let (info, context) = match self.context {
            Source::Context(context) => (context.info(), context.into_value()),
            Source::Value(value) => (crate::context::value_info(&value), value),
            Source::Kept(earlier) => {
                let context = earlier.scope.get("context").cloned().unwrap_or_default();
                let info = earlier.info.clone();
                kept = Some(earlier);
                (info, context)
            }
        };
        let mut limits = fit_limits(self.limits, &context);
        let run = self.run.unwrap_or_else(|| {
            Arc::new(RunState::new(
                Budget::new(self.cancel.unwrap_or_default(), None, None),
                Emitter::default(),
            ))
        });
        if limits.max_memory_fits_context && limits.max_memory > 0 {
            let given = limits.max_memory;
            limits.max_memory = run.ledger.fitted_memory(|| {
                memory::fit_to_context(
                    given,
                    memory::estimate_bytes(&context, usize::MAX),
                    memory::physical_bytes(),
                )
            });
        }
        let handle = self.handle.or_else(|| Handle::try_current().ok());
        let clock = Arc::new(BlockClock::new(limits.max_memory > 0));
        let tools = self.tools.map(|(caller, names)| HostTools {
            caller,
            names,
            handle: handle.clone(),
            clock: Arc::clone(&clock),
        });
        let children = self.children;
        let max_prompt_tokens = self.max_prompt_tokens;
        let sub = self.sub.map(|(backend, model)| {
            SubCaller::new(
                backend,
                model,
                handle,
                self.max_concurrent,
                Arc::clone(&run),
                Arc::clone(&clock),
            )
            .with_children(children, max_prompt_tokens)
            .with_answer_limits(limits.max_memory, limits.max_string_size)
            .with_structured_output(self.structured)
        });
        let shared = Arc::new(Shared {
            output: Mutex::new(OutputBuffer::new(self.max_output_chars)),
            max_output_chars: self.max_output_chars,
            clock,
            final_answer: Mutex::new(None),
            printed_unit: AtomicBool::new(false),
            run,
            sub,
            tools,
            block_timeout: limits.block_timeout,
            max_memory: limits.max_memory,
            halt: AtomicU8::new(0),
            lossy_divisions: Mutex::new(None),
        });
        let lengths = helpers::ContextLengths::of(&context);
        let engine = build_engine(&shared, &limits, lengths);
        let Some(kept) = kept else {
            let mut scope = Scope::new();
            scope.push_constant_dynamic("context", context);
            return Repl {
                engine,
                scope,
                functions: AST::empty(),
                shared,
                limits,
                info,
                held: 0,
                functions_divide: false,
                notice: None,
            };
        };
        // The variables an earlier run left count against this run's memory budget from the
        // start; what no longer fits (a smaller budget) is removed and the model is told.
        let Kept {
            mut scope,
            functions,
            functions_divide,
            ..
        } = kept;
        let budget = shared.run.scope_budget(limits.max_memory);
        let (held, notice) = memory::fit_scope(
            &mut scope,
            &SandboxLimits {
                max_memory: budget,
                ..limits.clone()
            },
        );
        shared.run.hold_scope(held);
        Repl {
            engine,
            scope,
            functions,
            shared,
            limits,
            info,
            held,
            functions_divide,
            notice,
        }
    }
}

impl Repl {
    /// A REPL over `context` with default limits and no sub-model.
    pub fn new(context: Context) -> Self {
        Self::builder(context).build()
    }

    /// Starts building a REPL over `context`.
    pub fn builder(context: Context) -> ReplBuilder {
        Self::builder_from(Source::Context(context))
    }

    /// Starts building a child run's REPL over a value of its parent's scope.
    pub(crate) fn builder_for_value(value: Dynamic) -> ReplBuilder {
        Self::builder_from(Source::Value(value))
    }

    /// Starts building a REPL that goes on with what an earlier one kept.
    pub(crate) fn builder_for_kept(kept: Kept) -> ReplBuilder {
        Self::builder_from(Source::Kept(kept))
    }

    /// What a session keeps of this REPL for its next run.
    pub(crate) fn into_kept(self) -> Kept {
        Kept {
            scope: self.scope,
            functions: self.functions,
            functions_divide: self.functions_divide,
            info: self.info,
        }
    }

    /// Lets go of the REPL. One that holds much (a large context, gigabytes of prompts) is
    /// freed on a thread of its own: freeing a gigabyte in 100 KB strings takes a noticeable
    /// part of a second, which the caller (and the answer it is about to print) need not wait
    /// for. A small one is dropped here.
    pub(crate) fn discard(self) {
        /// Bytes (the variables' estimate plus the context's characters) from which the
        /// freeing is moved off the caller's thread.
        const LARGE: usize = 64 << 20;
        if self.held.saturating_add(self.info.total_chars) < LARGE {
            return;
        }
        // If no thread can be started, the closure (and the REPL in it) is dropped here.
        let _ = std::thread::Builder::new()
            .name("rlm-repl-free".to_owned())
            .spawn(move || drop(self));
    }

    /// What the model must be told before its first block, once.
    pub(crate) fn take_notice(&mut self) -> Option<String> {
        self.notice.take()
    }

    fn builder_from(context: Source) -> ReplBuilder {
        ReplBuilder {
            context,
            limits: SandboxLimits::default(),
            max_output_chars: DEFAULT_MAX_OUTPUT_CHARS,
            sub: None,
            max_concurrent: rlm_core::DEFAULT_MAX_CONCURRENT,
            cancel: None,
            run: None,
            handle: None,
            children: None,
            max_prompt_tokens: None,
            tools: None,
            structured: crate::schema::StructuredOutput::Auto,
        }
    }

    /// What the root model is told about the context.
    pub fn context_info(&self) -> &ContextInfo {
        &self.info
    }

    /// The limits in force (string, array and map limits are raised to fit the context).
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// The native stack a block of this REPL runs on (see [`stack_size`]).
    pub(crate) fn stack_size(&self) -> usize {
        stack_size(&self.limits)
    }

    /// Runs one code block in the persistent scope. Never panics; errors, limits and
    /// cancellation are reported in the outcome.
    pub fn execute(&mut self, code: &str) -> BlockOutcome {
        let started = Instant::now();
        self.begin_block();
        let mut warnings = lint::lint(code);
        // Everything that touches the script's values runs on the big stack: Rhai and serde
        // recurse once per level of nested data when they copy, print, convert or drop it.
        let stack = stack_size(&self.limits);
        // Without a watchdog the engine still checks now and then (see `build_engine`).
        let watched = watchdog::watch(&self.shared);
        let ran = on_big_stack(stack, || {
            self.shared.clock.follow_this_thread();
            catch_unwind(AssertUnwindSafe(|| self.run(code))).unwrap_or_else(|panic| Ran {
                error: Some(internal_error(panic.as_ref())),
                ..Ran::default()
            })
        });
        drop(watched);
        let ran = ran.unwrap_or_else(|| Ran {
            error: Some(internal_error(&"the REPL thread failed")),
            ..Ran::default()
        });
        // An error can be as long as a thrown value: it is cut like printed output.
        let error = ran
            .error
            .map(|e| output::truncate_middle(&e, self.shared.max_output_chars));
        let final_answer = lock(&self.shared.final_answer).take();
        if let Some(division) = lock(&self.shared.lossy_divisions).take() {
            // A division of two literals was already named by the lint.
            let literal = format!(
                "{} / {} divides integers",
                division.dividend, division.divisor
            );
            if !warnings.iter().any(|w| w.contains(&literal)) {
                warnings.push(division.warning());
            }
        }
        let output = self.render(&warnings, ran.value, error.as_deref(), &ran.notes);
        BlockOutcome {
            output,
            error,
            final_answer,
            warnings,
            elapsed: started.elapsed(),
        }
    }

    /// Compiles and runs `code`, then tidies the scope.
    fn run(&mut self, code: &str) -> Ran {
        let mut ran = Ran::default();
        match self.engine.compile(code) {
            Err(parse_error) => ran.error = Some(errors::format_parse_error(&parse_error, code)),
            Ok(ast) => {
                // Operators use Rhai's built-ins directly (fast) unless the code may divide:
                // then they look for registered functions first, so that `/` on two integers
                // can note a dropped fraction (see `build_engine`).
                let divides = lint::has_division(code);
                self.functions_divide |= divides && ast.iter_functions().next().is_some();
                self.engine
                    .set_fast_operators(!(divides || self.functions_divide));
                let program = self.functions.merge(&ast);
                let engine = &self.engine;
                let scope = &mut self.scope;
                // The helpers check against this run's limits while the block runs.
                let in_block = helpers::in_block(&self.limits);
                let result = catch_unwind(AssertUnwindSafe(|| {
                    engine.eval_ast_with_scope::<Dynamic>(scope, &program)
                }));
                drop(in_block);
                // Functions defined by the block stay defined, even if it failed later.
                self.functions = self.functions.merge(&ast.clone_functions_only());
                match result {
                    Ok(Ok(value)) => {
                        ran.value = Some(value)
                            .filter(|v| !v.is_unit())
                            .map(|v| to_text(&v.flatten()));
                    }
                    Ok(Err(e)) => {
                        if lock(&self.shared.final_answer).is_none() {
                            ran.error = Some(errors::format_eval_error(&e, code, &self.limits));
                        }
                    }
                    Err(panic) => ran.error = Some(internal_error(panic.as_ref())),
                }
            }
        }
        ran.notes = tidy_scope(&mut self.scope);
        if self.shared.halt.load(Ordering::SeqCst) == HALT_MEMORY {
            let big = memory::largest(&self.scope, 5, self.limits.max_memory);
            if let (Some(error), false) = (&mut ran.error, big.is_empty()) {
                error.push_str(&format!(
                    "\nThe largest variables now: {big}. Free one with `x = ();`."
                ));
            }
        }
        // The memory budget is the tree's: what the other runs hold is not this run's.
        let budget = self.shared.run.scope_budget(self.limits.max_memory);
        let limits = SandboxLimits {
            max_memory: budget,
            ..self.limits.clone()
        };
        let (held, message) = memory::fit_scope(&mut self.scope, &limits);
        self.held = held;
        self.shared.run.hold_scope(held);
        if let Some(message) = message {
            // What did not fit is an error of the block, even if the block itself succeeded.
            match &mut ran.error {
                Some(error) => {
                    error.push('\n');
                    error.push_str(&message);
                }
                None => ran.error = Some(message),
            }
        }
        ran
    }

    fn begin_block(&mut self) {
        *lock(&self.shared.output) = OutputBuffer::new(self.shared.max_output_chars);
        *lock(&self.shared.final_answer) = None;
        self.shared.printed_unit.store(false, Ordering::SeqCst);
        self.shared.halt.store(0, Ordering::SeqCst);
        *lock(&self.shared.lossy_divisions) = None;
        self.shared.clock.begin(self.held);
    }

    fn render(
        &self,
        warnings: &[String],
        value: Option<String>,
        error: Option<&str>,
        notes: &[String],
    ) -> String {
        let mut buffer = lock(&self.shared.output);
        if let Some(text) = value {
            buffer.push_line(&format!("=> {text}"));
        }
        let mut out = String::new();
        for warning in warnings {
            out.push_str(warning);
            out.push('\n');
        }
        out.push_str(&buffer.render());
        if let Some(error) = error {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(error);
            out.push('\n');
        }
        for note in notes {
            out.push_str(note);
            out.push('\n');
        }
        if self.shared.printed_unit.load(Ordering::SeqCst) {
            out.push_str(
                "note: a value printed above was () (nothing). Missing map keys are errors, \
                 but in-place methods such as sort(), reverse(), push() and clear() return (), \
                 as do blocks ending in `;` and if without else.\n",
            );
        }
        out
    }

    /// The value of variable `name` as answer text (strings as they are, arrays and maps as
    /// JSON), or a message saying why there is none.
    pub fn final_var(&self, name: &str) -> Result<String, String> {
        final_value(name, self.scope.get(name), self.limits.max_string_size)
    }

    /// The value of `expression` as answer text: a variable's name (as
    /// [`final_var`](Self::final_var)) or any other expression (`cities[0]`, `m.total`),
    /// evaluated in the scope like `FINAL_VAR(expression)` in code.
    pub(crate) fn final_expression(&mut self, expression: &str) -> Result<String, String> {
        if is_identifier(expression) {
            return self.final_var(expression);
        }
        let outcome = self.execute(&format!("FINAL_VAR({expression})"));
        match (outcome.final_answer, outcome.error) {
            (Some(answer), _) => Ok(answer),
            (None, Some(error)) => Err(format!("FINAL_VAR({expression}) failed: {error}")),
            (None, None) => Err(format!("FINAL_VAR({expression}) gave no value")),
        }
    }

    /// The variables defined so far, one per line, with their types and sizes (what
    /// `SHOW_VARS()` returns).
    pub fn show_vars(&self) -> String {
        show_vars(&self.scope)
    }

    /// Records of the sub-calls finished since the last call, in the order they finished.
    pub(crate) fn take_sub_calls(&self) -> Vec<SubCallRecord> {
        self.shared
            .sub
            .as_ref()
            .map(SubCaller::take_records)
            .unwrap_or_default()
    }

    /// The `context` variable (for tests: it must stay the very value loaded).
    #[cfg(test)]
    pub(crate) fn context_value(&self) -> Option<&Dynamic> {
        self.scope.get("context")
    }
}

/// What a block left to show.
#[derive(Default)]
struct Ran {
    /// The value of its last expression, as text (`None` for `()`).
    value: Option<String>,
    /// Its error, formatted for the model.
    error: Option<String>,
    /// Notes about variables the sandbox removed.
    notes: Vec<String>,
}

fn internal_error(panic: &(dyn std::any::Any + Send)) -> String {
    let what = thread::panic_text(panic);
    format!(
        "Error: internal error in the REPL ({what}); the block was stopped. Variables set \
         before this point are kept."
    )
}

/// Deepest nesting of arrays and maps that a variable keeps from one block to the next.
///
/// Rhai copies, sizes, prints and drops nested data recursively, one native stack frame per
/// level. Within a block, the time limit bounds how deep a script can nest data (each level
/// costs a pass over all the levels below it) and the block's stack is sized for that; this
/// stops a script from nesting deeper block after block until the process's stack overflows.
const MAX_KEPT_DEPTH: usize = 256;

/// After a block: forgets variables that a later `let` shadowed (unreachable, yet holding
/// their values for the rest of the run, and listed twice by `SHOW_VARS()`), and removes the
/// ones nested deeper than [`MAX_KEPT_DEPTH`]. The context (the first entry) always stays.
/// Returns a note for each variable removed.
fn tidy_scope(scope: &mut Scope<'static>) -> Vec<String> {
    let count = scope.len();
    let mut gone = vec![false; count];
    let mut notes = Vec::new();
    {
        let mut seen = std::collections::HashSet::new();
        // From the latest entry back: only the last of each name is reachable.
        for (back, (name, _, value)) in scope.iter_raw().enumerate() {
            let index = count - 1 - back;
            if index == 0 {
                continue;
            }
            if !seen.insert(name) {
                gone[index] = true;
            } else if nested_deeper_than(value, MAX_KEPT_DEPTH) {
                gone[index] = true;
                notes.push(format!(
                    "note: `{name}` was nested more than {MAX_KEPT_DEPTH} levels deep (arrays or \
                     maps inside each other) and was removed (sandbox limit). Keep data flat: \
                     push items onto one array instead of wrapping it again."
                ));
            }
        }
    }
    if gone.contains(&true) {
        // Rebuilt only when needed: Rhai revisits every item of a value it adds to a scope.
        let entries = std::mem::take(scope).into_iter().zip(gone);
        scope.extend(
            entries
                .filter(|(_, gone)| !gone)
                .map(|((name, value, _), _)| (name, value.is_read_only(), value)),
        );
    }
    notes.reverse();
    notes
}

/// Whether `value` holds arrays or maps nested more than `levels` deep (recurses at most
/// `levels` times).
fn nested_deeper_than(value: &Dynamic, levels: usize) -> bool {
    // Most items are not containers: a tag check skips them.
    let deeper =
        |item: &Dynamic| (item.is_array() || item.is_map()) && nested_deeper_than(item, levels - 1);
    if let Ok(items) = value.as_array_ref() {
        levels == 0 || items.iter().any(deeper)
    } else if let Ok(map) = value.as_map_ref() {
        levels == 0 || map.values().any(deeper)
    } else {
        false
    }
}

/// Native stack for a block: Rhai recurses natively for every script call level and
/// expression level (tens of KiB per level in debug builds), and once per level of nested
/// data; code that stays within [`SandboxLimits`] must never overflow the thread's stack. A
/// block can nest data tens of thousands of levels deep before its time runs out (see
/// [`MAX_KEPT_DEPTH`]), hence the room for nested data. Reserved, not committed: unused stack
/// costs address space only.
fn stack_size(limits: &SandboxLimits) -> usize {
    const BASE: usize = 8 << 20;
    const PER_LEVEL: usize = 128 << 10;
    const NESTED_DATA: usize = 256 << 20;
    let levels = limits.max_call_depth.saturating_add(limits.max_expr_depth);
    BASE.saturating_add(NESTED_DATA)
        .saturating_add(levels.saturating_mul(PER_LEVEL))
        .min(1 << 30)
}

/// Runs `f` on a fresh thread with `stack` bytes of stack (in the caller's tracing span), or
/// on this thread if no thread can be started. `None` if the thread died without a result.
/// An evaluation thread whose own stack is that large runs `f` itself.
fn on_big_stack<T: Send>(stack: usize, f: impl FnOnce() -> T + Send) -> Option<T> {
    if thread::evaluation_stack() >= stack {
        return Some(f());
    }
    let span = tracing::Span::current();
    let mut job = Some(f);
    let spawned = std::thread::scope(|scope| {
        let slot = &mut job;
        std::thread::Builder::new()
            .name("rlm-repl".into())
            .stack_size(stack)
            .spawn_scoped(scope, move || {
                let _entered = span.enter();
                slot.take().map(|f| f())
            })
            .ok()
            .map(|handle| handle.join().ok().flatten())
    });
    match spawned {
        Some(result) => result,
        // No thread could be started: run here.
        None => job.map(|f| f()),
    }
}

/// Array items, map entries and string bytes inside `value` (how Rhai sizes data).
fn data_sizes(value: &Dynamic) -> (usize, usize, usize) {
    if let Ok(s) = value.as_immutable_string_ref() {
        return (0, 0, s.len());
    }
    if let Ok(items) = value.as_array_ref() {
        return items.iter().fold((items.len(), 0, 0), |acc, item| {
            let (a, m, s) = data_sizes(item);
            (acc.0 + a, acc.1 + m, acc.2 + s)
        });
    }
    if let Ok(map) = value.as_map_ref() {
        return map.values().fold((0, map.len(), 0), |acc, item| {
            let (a, m, s) = data_sizes(item);
            (acc.0 + a, acc.1 + m, acc.2 + s)
        });
    }
    (0, 0, 0)
}

/// Raises the size limits so that the context itself (and a script's copy of it) fits:
/// Rhai checks the total size of a value whenever a method is called on it.
fn fit_limits(mut limits: SandboxLimits, context: &Dynamic) -> SandboxLimits {
    let (arrays, maps, strings) = data_sizes(context);
    // 0 means no limit, and stays so.
    let room = |limit: usize, used: usize| match limit {
        0 => 0,
        limit => limit.max(used.saturating_mul(2)),
    };
    limits.max_string_size = room(limits.max_string_size, strings);
    limits.max_array_size = room(limits.max_array_size, arrays);
    limits.max_map_size = room(limits.max_map_size, maps);
    limits
}

/// Refuses every `import`.
struct NoModules;

impl rhai::ModuleResolver for NoModules {
    fn resolve(
        &self,
        _: &Engine,
        _: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Arc<Module>, Box<EvalAltResult>> {
        Err(Box::new(EvalAltResult::ErrorModuleNotFound(
            format!("{path} (import is disabled: this sandbox has no files or modules)"),
            pos,
        )))
    }
}

fn final_value(name: &str, value: Option<&Dynamic>, max_bytes: usize) -> Result<String, String> {
    match value {
        None => Err(format!(
            "FINAL_VAR: there is no variable named `{name}`. Pass the name of a variable \
             defined at the top level (e.g. `let answer = ...;` then FINAL_VAR(\"answer\")), \
             or give the value itself with FINAL(value)."
        )),
        Some(value) => answer_text(&value.flatten_clone(), max_bytes)
            .map_err(|e| format!("FINAL_VAR: variable `{name}` {e}")),
    }
}

/// The answer text of a value; `()` is refused, and so is a value larger than `max_bytes` (the
/// string limit; 0: none), measured before any text is built.
fn answer_text(value: &Dynamic, max_bytes: usize) -> Result<String, String> {
    if max_bytes > 0 {
        let bytes = memory::estimate_bytes(value, max_bytes);
        if bytes > max_bytes {
            return Err(format!(
                "is about {} or more, over the string limit ({max_bytes} bytes): an answer \
                 must fit in one string; summarize it",
                memory::human(bytes)
            ));
        }
    }
    if value.is_unit() {
        return Err(
            "holds () (nothing): compute the answer first; remember that in-place \
                    methods like sort() return ()"
                .to_owned(),
        );
    }
    Ok(to_text(value))
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn show_vars(scope: &Scope<'_>) -> String {
    let mut out = String::new();
    for (name, constant, value) in scope.iter_raw() {
        let value = value.flatten_clone();
        let kind = value.type_name();
        let detail = if let Ok(s) = value.as_immutable_string_ref() {
            format!("string, {}", count_of(s.chars().count(), "char"))
        } else if let Ok(items) = value.as_array_ref() {
            format!("array, {}", count_of(items.len(), "item"))
        } else if let Ok(map) = value.as_map_ref() {
            format!("map, {}", count_of(map.len(), "key"))
        } else {
            let text = value.to_string();
            if text.chars().count() <= 60 {
                format!("{kind} = {text}")
            } else {
                kind.to_owned()
            }
        };
        let constant = if constant { " (read-only)" } else { "" };
        out.push_str(&format!("{name}: {detail}{constant}\n"));
    }
    out
}

fn stop(token: &str) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorTerminated(
        Dynamic::from(token.to_owned()),
        Position::NONE,
    ))
}

/// The prompt `value` as request text: a string as it is, shared with the script (not
/// copied; with `handover`, accounted for when the request's side frees it last), other
/// values as text; `()` refused.
fn prompt_text(
    function: &str,
    value: &Dynamic,
    handover: Option<&Handover>,
) -> Result<Text, Box<EvalAltResult>> {
    let value = value.flatten_clone();
    if value.is_unit() {
        return Err(script_error(format!(
            "{function}: the prompt is () (nothing); build the prompt string first"
        )));
    }
    if let Ok(text) = value.as_immutable_string_ref() {
        let text = ImmutableString::clone(&text);
        return Ok(match handover {
            Some(handover) => handover.share(text),
            None => Text::from_owner(text),
        });
    }
    Ok(Text::from(to_text(&value)))
}

/// Bytes of bookkeeping one batch item costs besides its prompt and answer (request, events,
/// records).
const BATCH_ITEM_BYTES: usize = 1 << 10;

fn batch_prompts(
    function: &str,
    prompts: &Dynamic,
    max_memory: usize,
    handover: Option<&Handover>,
) -> Result<Vec<Text>, Box<EvalAltResult>> {
    let prompts = prompts.flatten_clone();
    let Ok(items) = prompts.as_array_ref() else {
        return Err(script_error(format!(
            "{function} takes an array of prompts (got a {}); for one prompt use llm_query",
            prompts.type_name()
        )));
    };
    // What the batch would hold is measured before anything is built for it.
    if max_memory > 0 {
        let mut bytes = items.len().saturating_mul(BATCH_ITEM_BYTES);
        for item in items.iter() {
            if bytes > max_memory {
                break;
            }
            bytes = bytes.saturating_add(memory::estimate_bytes(item, max_memory));
        }
        if bytes > max_memory {
            return Err(script_error(format!(
                "{function}: {} prompts (about {} with their bookkeeping) are more than one \
                 batch may hold (the memory budget, {} bytes, --max-memory); nothing was \
                 sent. Send them in smaller batches (e.g. chunk(prompts, 1000)) or make \
                 fewer, larger prompts.",
                items.len(),
                memory::human(bytes),
                max_memory
            )));
        }
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| prompt_text(&format!("{function} (prompt {i})"), item, handover))
        .collect()
}

fn concurrency(n: INT) -> usize {
    usize::try_from(n.max(1)).unwrap_or(1)
}

/// Rhai's standard library, built once for the process: its functions are pure, and building
/// it (hundreds of functions, each hashed and boxed) was most of what a new REPL cost.
fn standard_package() -> Arc<Module> {
    static PACKAGE: OnceLock<Arc<Module>> = OnceLock::new();
    Arc::clone(PACKAGE.get_or_init(|| StandardPackage::new().as_shared_module()))
}

/// The helpers (see [`helpers`]), registered once for the process: each call checks against
/// the limits of the block running on its thread (see [`helpers::in_block`]), and their
/// compiled regexes are shared by every run.
fn helpers_module() -> Arc<Module> {
    static MODULE: OnceLock<Arc<Module>> = OnceLock::new();
    Arc::clone(MODULE.get_or_init(|| {
        let mut module = Module::new();
        let limits = SandboxLimits::default();
        helpers::register(&mut module, &Arc::default(), &limits);
        helpers::register_checked_builtins(&mut module, &limits);
        module.build_index();
        Arc::new(module)
    }))
}

fn build_engine(
    shared: &Arc<Shared>,
    limits: &SandboxLimits,
    lengths: helpers::ContextLengths,
) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(standard_package());
    engine.set_module_resolver(NoModules);
    engine.disable_symbol("eval");
    engine.set_max_operations(limits.max_operations);
    // Rhai's own size limits re-measure a whole value after every call that may change it
    // (O(n) per `push`, quadratic loops): the REPL checks sizes itself, in O(1) per use (see
    // `memory`), so Rhai's stay off.
    engine.set_max_string_size(0);
    engine.set_max_array_size(0);
    engine.set_max_map_size(0);
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    engine.set_fail_on_invalid_map_property(true);

    let s = Arc::clone(shared);
    engine.on_print(move |text| s.print(text));
    let s = Arc::clone(shared);
    engine.on_debug(move |text, _, _| s.print(text));
    let s = Arc::clone(shared);
    engine.on_progress(move |ops| {
        // The clock is the watchdog's backstop, in case its thread could not start.
        s.halted(ops % 256 == 0, ops % 32 == 0).map(Dynamic::from)
    });
    // Every read of a variable checks its own size (O(1)): a loop that grows a value past a
    // limit (`m[k] = v`, `xs.push(x)`, `s += t`) stops at its next use of it.
    let size_limits = limits.clone();
    // And every so many uses, everything inside the variables (`m.x[k] = v` grows `m.x`).
    let nested = memory::NestedCheck::default();
    // `on_var` is marked volatile (not deprecated) by Rhai; its shape has been stable since 1.0.
    #[allow(deprecated)]
    engine.on_var(move |name, index, context| {
        let scope = context.scope();
        // `index`, when Rhai knows it, is the variable's offset from the scope's end: found
        // without comparing names (a scope search per use would cost as much as the use).
        let known = index
            .checked_sub(1)
            .and_then(|back| scope.iter_raw().nth(back))
            .filter(|(found, ..)| *found == name)
            .map(|(_, _, value)| value);
        if let Some(value) = known.or_else(|| scope.get(name)) {
            memory::check_own_size(value, &size_limits)?;
        }
        nested.on_use(scope, &size_limits)?;
        Ok(None)
    });
    // Rhai's own `sleep` blocks for as long as asked, past every limit (and panics on
    // `sleep(1.0e300)`).
    let s = Arc::clone(shared);
    engine.register_fn("sleep", move |seconds: f64| s.sleep(seconds));
    let s = Arc::clone(shared);
    engine.register_fn("sleep", move |seconds: INT| s.sleep(seconds as f64));

    // `()` made visible: print(()) and `${()}` show "()" (and a note), not an empty line.
    let s = Arc::clone(shared);
    engine.register_fn("print", move |_: ()| {
        s.printed_unit.store(true, Ordering::SeqCst);
        "()".to_owned()
    });
    engine.register_fn("to_string", |_: ()| "()".to_owned());

    // `/` on two integers works as Rhai's, and notes a quotient that dropped a fraction: the
    // block gets a warning (an answer from it is held once for confirmation).
    let s = Arc::clone(shared);
    engine.register_fn(
        "/",
        move |context: NativeCallContext<'_>, a: INT, b: INT| {
            s.divide(context.call_position(), a, b)
        },
    );
    let s = Arc::clone(shared);
    FuncRegistration::new("/=")
        .with_purity(false)
        .register_into_engine(
            &mut engine,
            move |context: NativeCallContext<'_>, a: &mut INT, b: INT| {
                *a = s.divide(context.call_position(), *a, b)?;
                Ok::<_, Box<EvalAltResult>>(())
            },
        );

    // The helpers, above the standard package (they replace some of its functions).
    engine.register_global_module(helpers_module());
    // Shadows the standard package's `len` for strings (the engine's own functions come
    // first): the same answer, without recounting the context on every call.
    engine.register_fn("len", move |text: &str| lengths.len(text));

    // Sub-calls. Each runs `across` the threads that make them (see `handover`); the
    // arguments are borrowed, so the script's values are dropped after it, on the meter.
    let s = Arc::clone(shared);
    engine.register_fn("llm_query", move |prompt: Dynamic| {
        across(&s.clock, s.max_memory, || {
            if prompt.is_array() {
                return Err(script_error(
                    "llm_query takes one prompt string, not an array: for an array of \
                     prompts use llm_batch(prompts), which runs them concurrently and returns \
                     the answers in the same order",
                ));
            }
            let handover = Handover::of(&s.clock);
            let prompt = prompt_text("llm_query", &prompt, handover.as_ref())?;
            Ok::<_, Box<EvalAltResult>>(match &s.sub {
                Some(sub) => sub.query(prompt),
                None => "Error: no sub-model is configured for llm_query".to_owned(),
            })
        })
    });
    for name in ["llm_batch", "llm_query_batched"] {
        let s = Arc::clone(shared);
        engine.register_fn(name, move |prompts: Dynamic| {
            across(&s.clock, s.max_memory, || batch(&s, name, &prompts, None))
        });
        let s = Arc::clone(shared);
        engine.register_fn(name, move |prompts: Dynamic, max_concurrent: INT| {
            across(&s.clock, s.max_memory, || {
                batch(&s, name, &prompts, Some(concurrency(max_concurrent)))
            })
        });
    }

    // Sub-calls for JSON of a schema.
    let s = Arc::clone(shared);
    engine.register_fn("llm_query_json", move |prompt: Dynamic, schema: Dynamic| {
        across(&s.clock, s.max_memory, || {
            if prompt.is_array() {
                return Err(script_error(
                    "llm_query_json takes one prompt string, not an array: for an array of \
                     prompts use llm_batch_json(prompts, schema)",
                ));
            }
            let handover = Handover::of(&s.clock);
            let prompt = prompt_text("llm_query_json", &prompt, handover.as_ref())?;
            let schema = script_schema("llm_query_json", &schema)?;
            Ok::<_, Box<EvalAltResult>>(match &s.sub {
                Some(sub) => sub
                    .batch_json(vec![prompt], &schema, 1)
                    .pop()
                    .unwrap_or_default(),
                None => Dynamic::from("Error: no sub-model is configured for llm_query_json"),
            })
        })
    });
    let s = Arc::clone(shared);
    engine.register_fn(
        "llm_batch_json",
        move |prompts: Dynamic, schema: Dynamic| {
            across(&s.clock, s.max_memory, || {
                batch_json(&s, &prompts, &schema, None)
            })
        },
    );
    let s = Arc::clone(shared);
    engine.register_fn(
        "llm_batch_json",
        move |prompts: Dynamic, schema: Dynamic, n: INT| {
            across(&s.clock, s.max_memory, || {
                batch_json(&s, &prompts, &schema, Some(concurrency(n)))
            })
        },
    );

    // Host functions: each name takes one value, or none.
    if let Some(tools) = &shared.tools {
        for name in &tools.names {
            let (s, called) = (Arc::clone(shared), name.clone());
            engine.register_fn(name.as_str(), move || {
                across(&s.clock, s.max_memory, || {
                    s.tools
                        .as_ref()
                        .map_or(Dynamic::UNIT, |t| t.call(&called, &Dynamic::UNIT))
                })
            });
            let (s, called) = (Arc::clone(shared), name.clone());
            engine.register_fn(name.as_str(), move |argument: Dynamic| {
                across(&s.clock, s.max_memory, || {
                    s.tools
                        .as_ref()
                        .map_or(Dynamic::UNIT, |t| t.call(&called, &argument))
                })
            });
        }
    }

    // Child runs.
    let s = Arc::clone(shared);
    engine.register_fn("rlm_query", move |prompt: Dynamic| {
        across(&s.clock, s.max_memory, || {
            let prompt = String::from(prompt_text("rlm_query", &prompt, None)?);
            let context = Dynamic::from(ImmutableString::from(prompt.as_str()));
            Ok::<_, Box<EvalAltResult>>(children(&s, vec![(prompt, context)], None).remove(0))
        })
    });
    let s = Arc::clone(shared);
    engine.register_fn("rlm_query", move |query: Dynamic, context: Dynamic| {
        across(&s.clock, s.max_memory, || {
            let task = child_task("rlm_query", &query, context.clone())?;
            Ok::<_, Box<EvalAltResult>>(children(&s, vec![task], None).remove(0))
        })
    });
    let s = Arc::clone(shared);
    engine.register_fn("rlm_batch", move |prompts: Dynamic| {
        across(&s.clock, s.max_memory, || {
            let tasks = prompt_tasks(&s, &prompts)?;
            Ok::<_, Box<EvalAltResult>>(answers(children(&s, tasks, None)))
        })
    });
    let s = Arc::clone(shared);
    engine.register_fn("rlm_batch", move |prompts: Dynamic, n: INT| {
        across(&s.clock, s.max_memory, || {
            let tasks = prompt_tasks(&s, &prompts)?;
            Ok::<_, Box<EvalAltResult>>(answers(children(&s, tasks, Some(concurrency(n)))))
        })
    });
    let s = Arc::clone(shared);
    engine.register_fn("rlm_batch", move |queries: Dynamic, contexts: Dynamic| {
        across(&s.clock, s.max_memory, || {
            let tasks = query_tasks(&s, &queries, &contexts)?;
            Ok::<_, Box<EvalAltResult>>(answers(children(&s, tasks, None)))
        })
    });
    let s = Arc::clone(shared);
    engine.register_fn(
        "rlm_batch",
        move |queries: Dynamic, contexts: Dynamic, n: INT| {
            across(&s.clock, s.max_memory, || {
                let tasks = query_tasks(&s, &queries, &contexts)?;
                Ok::<_, Box<EvalAltResult>>(answers(children(&s, tasks, Some(concurrency(n)))))
            })
        },
    );

    // Finishing.
    let max_answer = limits.max_string_size;
    let s = Arc::clone(shared);
    engine.register_fn(
        "FINAL",
        move |value: Dynamic| -> Result<(), Box<EvalAltResult>> {
            let answer = answer_text(&value.flatten_clone(), max_answer)
                .map_err(|e| script_error(format!("FINAL: the value {e}")))?;
            *lock(&s.final_answer) = Some(answer);
            Err(stop(STOP_FINAL))
        },
    );
    let s = Arc::clone(shared);
    let registered = engine.register_custom_syntax(
        ["FINAL_VAR", "(", "$expr$", ")"],
        false,
        move |context, inputs| {
            let expr = &inputs[0];
            // A name (quoted, or a bare variable) gives that variable's value; any other
            // expression (`cities[0]`, `m.total`) gives its own value, never a name to look up.
            let answer = if let Some(name) = expr.get_string_value() {
                let name = name.to_owned();
                final_value(&name, context.scope().get(&name), max_answer).map_err(script_error)?
            } else {
                let value = context.eval_expression_tree(expr)?.flatten();
                answer_text(&value, max_answer)
                    .map_err(|e| script_error(format!("FINAL_VAR: the value {e}")))?
            };
            *lock(&s.final_answer) = Some(answer);
            Err(stop(STOP_FINAL))
        },
    );
    debug_assert!(registered.is_ok());
    let registered = engine.register_custom_syntax(["SHOW_VARS", "()"], false, |context, _| {
        Ok(Dynamic::from(show_vars(context.scope())))
    });
    debug_assert!(registered.is_ok());
    engine
}

/// Runs child RLMs (or, without a child runner, as at the deepest level, plain sub-calls);
/// one answer per task, in order.
fn children(
    shared: &Shared,
    tasks: Vec<(String, Dynamic)>,
    max_concurrent: Option<usize>,
) -> Vec<String> {
    let Some(sub) = &shared.sub else {
        return tasks
            .iter()
            .map(|_| "Error: no sub-model is configured for rlm_query".to_owned())
            .collect();
    };
    let limit = max_concurrent.map_or(sub.max_concurrent(), |n| n.min(sub.max_concurrent()));
    if sub.can_recurse() {
        return sub.children(tasks, limit);
    }
    // The deepest level: the query and its context as one prompt.
    let prompts: Vec<Text> = tasks
        .into_iter()
        .map(|(query, context)| match context.as_immutable_string_ref() {
            Ok(text) if text.as_str() == query => Text::from(query),
            _ => Text::from(format!("{query}\n\n{}", to_text(&context))),
        })
        .collect();
    match prompts.len() {
        1 => prompts
            .into_iter()
            .map(|prompt| sub.query(prompt))
            .collect(),
        _ => sub.batch(prompts, limit),
    }
}

fn answers(answers: Vec<String>) -> Array {
    answers
        .into_iter()
        .map(|answer| Dynamic::from(ImmutableString::from(answer)))
        .collect()
}

/// `rlm_query(query, context)`: the query's text and the context value (shared).
fn child_task(
    function: &str,
    query: &Dynamic,
    context: Dynamic,
) -> Result<(String, Dynamic), Box<EvalAltResult>> {
    let query = String::from(prompt_text(function, query, None)?);
    let context = context.flatten();
    if context.is_unit() {
        return Err(script_error(format!(
            "{function}: the context is () (nothing); pass a string, array or map"
        )));
    }
    Ok((query, context))
}

/// `rlm_batch(prompts)`: each prompt is both a child's task and its context.
fn prompt_tasks(
    shared: &Shared,
    prompts: &Dynamic,
) -> Result<Vec<(String, Dynamic)>, Box<EvalAltResult>> {
    Ok(
        batch_prompts("rlm_batch", prompts, shared.max_memory, None)?
            .into_iter()
            .map(|prompt| {
                let context = Dynamic::from(ImmutableString::from(prompt.as_str()));
                (String::from(prompt), context)
            })
            .collect(),
    )
}

/// `rlm_batch(queries, contexts)`: pairs, in order.
fn query_tasks(
    shared: &Shared,
    queries: &Dynamic,
    contexts: &Dynamic,
) -> Result<Vec<(String, Dynamic)>, Box<EvalAltResult>> {
    let queries = batch_prompts("rlm_batch", queries, shared.max_memory, None)?;
    let contexts = contexts.flatten_clone();
    let Ok(contexts) = contexts.into_array() else {
        return Err(script_error(
            "rlm_batch(queries, contexts): contexts must be an array, one context per query"
                .to_owned(),
        ));
    };
    if contexts.len() != queries.len() {
        return Err(script_error(format!(
            "rlm_batch(queries, contexts): {} queries but {} contexts; pass one context per \
             query",
            queries.len(),
            contexts.len()
        )));
    }
    queries
        .into_iter()
        .map(String::from)
        .zip(contexts)
        .enumerate()
        .map(|(i, (query, context))| {
            let context = context.flatten();
            if context.is_unit() {
                return Err(script_error(format!(
                    "rlm_batch: context {i} is () (nothing); pass a string, array or map"
                )));
            }
            Ok((query, context))
        })
        .collect()
}

fn batch(
    shared: &Shared,
    function: &str,
    prompts: &Dynamic,
    max_concurrent: Option<usize>,
) -> Result<Array, Box<EvalAltResult>> {
    let handover = Handover::of(&shared.clock);
    let prompts = batch_prompts(function, prompts, shared.max_memory, handover.as_ref())?;
    let Some(sub) = &shared.sub else {
        return Ok(prompts
            .iter()
            .map(|_| Dynamic::from("Error: no sub-model is configured for llm_batch"))
            .collect());
    };
    // The configured concurrency is the default and the ceiling.
    let limit = max_concurrent.map_or(sub.max_concurrent(), |n| n.min(sub.max_concurrent()));
    Ok(sub
        .batch(prompts, limit)
        .into_iter()
        .map(|answer| Dynamic::from(ImmutableString::from(answer)))
        .collect())
}

/// The JSON Schema a script passed: a map holding one (or a string of its JSON), compiled.
fn script_schema(
    function: &str,
    schema: &Dynamic,
) -> Result<crate::schema::OutputSchema, Box<EvalAltResult>> {
    let schema = schema.flatten_clone();
    let value: serde_json::Value = if let Ok(text) = schema.as_immutable_string_ref() {
        serde_json::from_str(text.as_str()).map_err(|e| {
            script_error(format!(
                "{function}: the schema string is not JSON ({e}); pass a map such as \
                 #{{type: \"object\", properties: #{{name: #{{type: \"string\"}}}}, required: [\"name\"]}}"
            ))
        })?
    } else if schema.is_map() {
        rhai::serde::from_dynamic(&schema).map_err(|e| {
            script_error(format!(
                "{function}: the schema cannot be read as JSON: {e}"
            ))
        })?
    } else {
        return Err(script_error(format!(
            "{function}: the schema is a {}; pass a map holding a JSON Schema, such as \
             #{{type: \"object\", properties: #{{name: #{{type: \"string\"}}}}, required: [\"name\"]}}",
            schema.type_name()
        )));
    };
    crate::schema::OutputSchema::new(value).map_err(|e| script_error(format!("{function}: {e}")))
}

fn batch_json(
    shared: &Shared,
    prompts: &Dynamic,
    schema: &Dynamic,
    max_concurrent: Option<usize>,
) -> Result<Array, Box<EvalAltResult>> {
    let handover = Handover::of(&shared.clock);
    let prompts = batch_prompts(
        "llm_batch_json",
        prompts,
        shared.max_memory,
        handover.as_ref(),
    )?;
    let schema = script_schema("llm_batch_json", schema)?;
    let Some(sub) = &shared.sub else {
        return Ok(prompts
            .iter()
            .map(|_| Dynamic::from("Error: no sub-model is configured for llm_batch_json"))
            .collect());
    };
    let limit = max_concurrent.map_or(sub.max_concurrent(), |n| n.min(sub.max_concurrent()));
    Ok(sub.batch_json(prompts, &schema, limit))
}

#[cfg(test)]
mod tests;
