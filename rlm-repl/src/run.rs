//! The RLM loop: ask the root model, run its code, feed back the output, until a final answer
//! or a budget ends the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::{
    BatchExecutor, Completion, CompletionRequest, LlmBackend, LlmError, Message, Metered,
};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::parse::{FinalMarker, ParsedReply, parse_reply};
use crate::prompt::{final_ask, first_message, system_prompt};
use crate::repl::subcall::millis;
use crate::state::{Emitter, RunState};
use crate::{
    BlockRecord, Context, Event, Repl, Rlm, RlmError, RunResult, StopReason, SubCallRecord, Turn,
};

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
    answer: Option<String>,
    notes: Vec<String>,
    not_run: usize,
}

pub(crate) async fn run(rlm: &Rlm, query: String, context: Context) -> Result<RunResult, RlmError> {
    let started = Instant::now();
    let config = &rlm.config;
    let emitter = Emitter::new(rlm.observers.clone());
    let run = Arc::new(RunState::new(
        rlm.cancel.child_token(),
        config.max_sub_calls,
        config.max_total_tokens,
        emitter.clone(),
    ));
    // If the caller drops this future, running code and sub-calls stop too.
    let _stop_on_drop = run.cancel.clone().drop_guard();
    let root = Metered::new(Arc::clone(&rlm.root), run.usage.clone());
    let sub: Arc<dyn BatchExecutor> =
        Arc::new(Metered::new(Arc::clone(&rlm.sub), run.usage.clone()));
    let sub_model = config
        .sub_model
        .clone()
        .unwrap_or_else(|| config.root_model.clone());
    let _watchdog = config.max_time.map(|limit| {
        let run = Arc::clone(&run);
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            run.stop(StopReason::MaxTime);
        }))
    });

    // Loading a large context is a pass over it: keep it off the async threads.
    let mut builder = Repl::builder(context)
        .limits(config.sandbox.clone())
        .max_output_chars(config.max_output_chars)
        .sub_backend(sub, sub_model.clone())
        .max_concurrent(config.max_concurrent)
        .run_state(Arc::clone(&run));
    if let Ok(handle) = Handle::try_current() {
        builder = builder.runtime_handle(handle);
    }
    let mut repl = tokio::task::spawn_blocking(move || builder.build())
        .await
        .map_err(internal)?;
    let info = repl.context_info().clone();
    emitter.emit_with(|| Event::RunStart {
        query: query.clone(),
        root_model: config.root_model.clone(),
        sub_model: sub_model.clone(),
        context: info.clone(),
    });

    let mut messages = vec![
        Message::system(system_prompt(config)),
        Message::user(first_message(&query, &info)),
    ];
    let mut trajectory: Vec<Turn> = Vec::new();
    let mut answer: Option<String> = None;

    for turn in 1..=config.max_iterations {
        if run.stopped().is_some() {
            break;
        }
        run.turn.store(turn, std::sync::atomic::Ordering::SeqCst);
        emitter.emit_with(|| Event::TurnStart { turn });
        let Some((reply, root_latency)) = ask_root(rlm, &root, &messages, turn, &run).await? else {
            break;
        };
        let parsed = parse_reply(&reply.text);
        let work = run_blocks(repl, parsed.clone(), turn, Arc::clone(&run))
            .await
            .map_err(internal)?;
        repl = work.repl;
        let record = Turn {
            turn,
            reply: reply.text.clone(),
            usage: reply.usage,
            root_latency,
            blocks: work.blocks,
            sub_calls: work.sub_calls,
        };
        emitter.emit_with(|| Event::TurnEnd {
            turn: record.clone(),
        });
        let feedback = (work.answer.is_none()).then(|| {
            feedback(
                &reply.text,
                &parsed,
                &record.blocks,
                &work.notes,
                work.not_run,
                config.max_iterations - turn,
            )
        });
        trajectory.push(record);
        if work.answer.is_some() {
            answer = work.answer;
            break;
        }
        messages.push(Message::assistant(reply.text));
        messages.push(Message::user(feedback.unwrap_or_default()));
    }

    let mut stopped = match (&answer, run.stopped()) {
        // Whatever the script made of calls cut short by a cancel or the clock is not a
        // final answer, even if it called FINAL with it.
        (_, Some(reason @ (StopReason::Cancelled | StopReason::MaxTime))) => reason,
        (Some(_), _) => StopReason::Final,
        (None, Some(reason)) => reason,
        (None, None) => StopReason::MaxIterations,
    };
    if answer.is_none() && matches!(stopped, StopReason::MaxIterations | StopReason::MaxSubCalls) {
        let reason = if stopped == StopReason::MaxIterations {
            "You have used all your turns."
        } else {
            "The sub-call budget of this run is spent."
        };
        // The last feedback is the last message; the ask is appended to it.
        match messages.last_mut() {
            Some(last) if last.role == rlm_core::Role::User && !trajectory.is_empty() => {
                last.content.push_str("\n\n");
                last.content.push_str(&final_ask(reason));
            }
            _ => messages.push(Message::user(final_ask(reason))),
        }
        let turn = trajectory.len() + 1;
        run.turn.store(turn, std::sync::atomic::Ordering::SeqCst);
        emitter.emit_with(|| Event::TurnStart { turn });
        if let Ok(Some((reply, root_latency))) = ask_root(rlm, &root, &messages, turn, &run).await {
            let parsed = parse_reply(&reply.text);
            let mut blocks = Vec::new();
            let mut sub_calls = Vec::new();
            let given = match &parsed.final_marker {
                Some(FinalMarker::Value(value)) => Some(value.clone()),
                Some(FinalMarker::Var(name)) => repl.final_var(name).ok(),
                // Out of habit, the model may give its answer as code (FINAL(x) in a ```repl
                // block): run the blocks that do, rather than take the code as the answer.
                None if parsed.blocks.iter().any(|code| code.contains("FINAL")) => {
                    let finishing = ParsedReply {
                        blocks: parsed
                            .blocks
                            .iter()
                            .filter(|code| code.contains("FINAL"))
                            .cloned()
                            .collect(),
                        ..ParsedReply::default()
                    };
                    let work = run_blocks(repl, finishing, turn, Arc::clone(&run))
                        .await
                        .map_err(internal)?;
                    blocks = work.blocks;
                    sub_calls = work.sub_calls;
                    work.answer
                }
                None => None,
            };
            answer = Some(given.unwrap_or_else(|| reply.text.trim().to_owned()));
            let record = Turn {
                turn,
                reply: reply.text,
                usage: reply.usage,
                root_latency,
                blocks,
                sub_calls,
            };
            emitter.emit_with(|| Event::TurnEnd {
                turn: record.clone(),
            });
            trajectory.push(record);
        }
        if run.cancel.is_cancelled() {
            // Cancelled (or out of time) while asking: that is why the run stopped.
            stopped = run.stopped().unwrap_or(stopped);
        }
    }

    let result = RunResult {
        answer: answer.unwrap_or_default(),
        iterations: trajectory.len(),
        stopped,
        elapsed: started.elapsed(),
        usage: run.usage.snapshot(),
        sub_calls: run.sub_calls(),
        refused_sub_calls: run.refused_sub_calls(),
        trajectory,
    };
    emitter.emit_with(|| Event::Final {
        answer: result.answer.clone(),
        stopped: result.stopped,
        iterations: result.iterations,
        elapsed_ms: millis(result.elapsed),
        usage: result.usage.clone(),
    });
    Ok(result)
}

/// One root call. `None` when the run was cancelled (or ran out of time) meanwhile.
async fn ask_root(
    rlm: &Rlm,
    root: &Metered<Arc<dyn LlmBackend>>,
    messages: &[Message],
    turn: usize,
    run: &RunState,
) -> Result<Option<(Completion, Duration)>, RlmError> {
    let model = &rlm.config.root_model;
    let request = CompletionRequest {
        model: model.clone(),
        messages: messages.to_vec(),
        ..CompletionRequest::default()
    };
    let span = tracing::info_span!(
        "rlm_turn",
        turn,
        model = %model,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = tokio::select! {
        biased;
        () = run.cancel.cancelled() => return Ok(None),
        result = root.complete(request).instrument(span.clone()) => result,
    };
    let latency = started.elapsed();
    match result {
        Ok(reply) => {
            span.record("prompt_tokens", reply.usage.prompt_tokens);
            span.record("completion_tokens", reply.usage.completion_tokens);
            run.add_tokens(reply.usage.total());
            run.emitter.emit_with(|| Event::RootReply {
                turn,
                text: reply.text.clone(),
                usage: reply.usage,
                elapsed_ms: millis(latency),
            });
            Ok(Some((reply, latency)))
        }
        Err(LlmError::Cancelled) if run.cancel.is_cancelled() => Ok(None),
        Err(source) => {
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

/// Runs the reply's blocks in order on a blocking thread; stops after a `FINAL` or once the
/// run must stop.
async fn run_blocks(
    mut repl: Repl,
    parsed: ParsedReply,
    turn: usize,
    run: Arc<RunState>,
) -> Result<TurnWork, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let mut blocks = Vec::new();
        let mut answer = None;
        let mut notes = Vec::new();
        let mut not_run = 0;
        for (index, code) in parsed.blocks.iter().enumerate() {
            // Cancellation stops everything; a spent budget stops after the block that spent
            // it (the first block of a turn still runs: it may hold the final answer).
            let stop = run.stopped();
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
            blocks.push(BlockRecord {
                code: code.clone(),
                output: outcome.output,
                error: outcome.error,
                elapsed: outcome.elapsed,
            });
            if outcome.final_answer.is_some() {
                answer = outcome.final_answer;
                break;
            }
        }
        let cancelled = matches!(
            run.stopped(),
            Some(StopReason::Cancelled | StopReason::MaxTime)
        );
        if answer.is_none() && !cancelled {
            match &parsed.final_marker {
                Some(FinalMarker::Value(value)) => answer = Some(value.clone()),
                Some(FinalMarker::Var(name)) => match repl.final_var(name) {
                    Ok(value) => answer = Some(value),
                    Err(message) => notes.push(message),
                },
                None => {}
            }
        }
        let sub_calls = repl.take_sub_calls();
        TurnWork {
            repl,
            blocks,
            sub_calls,
            answer,
            notes,
            not_run,
        }
    })
    .await
}

/// The next user message: each block's output, or a nudge for a malformed reply.
fn feedback(
    reply: &str,
    parsed: &ParsedReply,
    blocks: &[BlockRecord],
    notes: &[String],
    not_run: usize,
    turns_left: usize,
) -> String {
    let mut out = String::new();
    if blocks.is_empty() && parsed.final_marker.is_none() {
        out.push_str(&if reply.trim().is_empty() {
            "Your reply was empty. Write ```repl code to explore `context`, or answer with \
             FINAL(answer) on its own line."
                .to_owned()
        } else if parsed.unterminated {
            "Your ```repl block was not closed with ``` on its own line, so it did not run. \
             Send the code again in a complete block."
                .to_owned()
        } else if !parsed.skipped.is_empty() {
            format!(
                "Your ```{} block did not run: only ```repl blocks run, and their language is \
                 Rhai (see the cheat-sheet), not Python.",
                parsed.skipped[0]
            )
        } else {
            "Your reply had no ```repl code block and no FINAL(...). Write code in ```repl \
             blocks to explore `context`, or answer with FINAL(answer) on its own line."
                .to_owned()
        });
    } else {
        let many = blocks.len() > 1;
        for (i, block) in blocks.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let title = if many {
                format!("Block {} output:", i + 1)
            } else {
                "Output:".to_owned()
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
        if not_run > 0 {
            out.push_str(&format!(
                "\n{not_run} more block(s) did not run: the run's budget is spent.\n"
            ));
        }
        if parsed.unterminated {
            out.push_str("\nYour last ```repl block was not closed with ```, so it did not run.\n");
        }
        let skipped: Vec<&str> = parsed
            .skipped
            .iter()
            .filter(|lang| !lang.is_empty())
            .map(String::as_str)
            .collect();
        if let Some(lang) = skipped.first() {
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
            if turns_left == 1 {
                "1 turn".to_owned()
            } else {
                format!("{turns_left} turns")
            }
        ));
    }
    out.trim_end().to_owned()
}
