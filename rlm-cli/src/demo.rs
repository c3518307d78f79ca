//! `rlm demo`: the same job done with sequential `llm_query` and with `llm_batch`, offline.
//!
//! The root model is scripted (it always writes the same two turns of code) and the sub model
//! is simulated in-process: it reads the page it is given and answers after a latency drawn
//! from `--latency-ms`. Both runs go through the real RLM loop and Rhai REPL; the times printed
//! are measured, not computed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::mock::MockBackend;
use rlm_core::{CompletionRequest, LlmError, Role};
use rlm_repl::{Context, Event, Observer, Rlm, RunResult, StopReason};
use serde::Serialize;

use crate::cli::DemoArgs;
use crate::error::{CliError, exit};
use crate::human::{count, human_duration};
use crate::output::write_stdout;
use crate::trace::TraceWriter;

const ROOT_MODEL: &str = "scripted-root";
const SUB_MODEL: &str = "simulated-sub";
const QUERY: &str = "How many crates are there in all the warehouses together?";

/// Turn 1 of both runs: look at the context.
const LOOK: &str = r#"Let me look at the context first.

```repl
print("documents: " + context.len());
print("the first one starts: " + context[0].sub_string(0, 60));
```"#;

/// Turn 2, sequential: one `llm_query` per document, one after another.
const SEQUENTIAL: &str = r#"One sub-call per document, one at a time.

```repl
let total = 0;
for doc in context {
    let reply = llm_query("How many crates does this inventory page list? Reply with the number only.\n\n" + doc);
    total += parse_int(reply);
}
FINAL("Total crates: " + total);
```"#;

/// Turn 2, batched: every document's sub-call in one `llm_batch`.
const BATCHED: &str = r#"One sub-call per document, all in one batch.

```repl
let prompts = context.map(|doc| "How many crates does this inventory page list? Reply with the number only.\n\n" + doc);
let replies = llm_batch(prompts);
let total = 0;
for reply in replies {
    total += parse_int(reply);
}
FINAL("Total crates: " + total);
```"#;

/// Runs the demo and returns the exit status.
pub(crate) async fn demo(args: DemoArgs) -> Result<u8, CliError> {
    // A path that cannot be written fails before anything runs.
    let trace = match &args.trace {
        Some(path) => Some(Arc::new(crate::trace::create(path, Instant::now())?)),
        None => None,
    };
    let (documents, expected) = generate(args.docs as usize, 0x5eed);
    let chars: usize = documents.iter().map(|d| d.chars().count()).sum();
    let (min, max) = args.latency_ms;
    let latency = if min == max {
        format!("{min} ms")
    } else {
        format!("{min}-{max} ms")
    };
    // A stdout that cannot be written (`> /dev/full`) ends the demo with an error.
    let say = |text: &str| {
        if !args.quiet && !args.json {
            write_stdout(text)
        } else {
            Ok(())
        }
    };

    say(&format!(
        "rlm demo: one job done twice, offline (no server, no key)\n\n\
         \x20 context     {}, {} (generated inventory pages)\n\
         \x20 query       {QUERY:?}\n\
         \x20 root model  scripted: turn 1 looks at the context, turn 2 does the job\n\
         \x20 sub model   simulated: reads the page it is sent, answers after {latency}\n\n",
        count(documents.len() as u64, "document"),
        count(chars as u64, "char"),
    ))?;

    let show = !args.quiet && !args.json;
    say("  running: for doc in context { llm_query(...) } ...\n")?;
    let transcript = show.then(|| Arc::new(Transcript { from_turn: 1 }));
    let sequential = measure(SEQUENTIAL, &documents, &args, observers(transcript, None)).await?;
    say(&format!(
        "\n  running: llm_batch(prompts), {} at once ...\n",
        args.max_concurrent
    ))?;
    if show {
        say("    turn 1: the same as above\n")?;
    }
    // Turn 1 is the same in both runs: shown once.
    let transcript = show.then(|| Arc::new(Transcript { from_turn: 2 }));
    // The trace is the llm_batch run's: its times count from that run's start.
    if let Some(trace) = &trace {
        trace.restart_clock();
    }
    let batched = measure(
        BATCHED,
        &documents,
        &args,
        observers(transcript, trace.clone()),
    )
    .await?;
    say("\n")?;
    // A trace that could not be written whole is an input/output error (exit 4), after
    // the report.
    let trace_error = trace.as_deref().and_then(crate::trace::warning);

    let expected_answer = format!("Total crates: {expected}");
    let correct = |m: &Measured| m.answer.trim() == expected_answer;
    let speedup = sequential.elapsed.as_secs_f64() / batched.elapsed.as_secs_f64().max(1e-9);

    if args.json {
        let report = JsonReport {
            documents: documents.len(),
            chars,
            latency_ms: [min, max],
            max_concurrent: args.max_concurrent,
            expected: &expected_answer,
            sequential: JsonRun::from(&sequential, correct(&sequential)),
            batched: JsonRun::from(&batched, correct(&batched)),
            speedup: (speedup * 100.0).round() / 100.0,
        };
        let text = serde_json::to_string(&report)
            .map_err(|e| CliError::Internal(format!("cannot serialize the report: {e}")))?;
        write_stdout(&format!("{text}\n"))?;
    } else {
        let mut table = String::new();
        let _ = writeln!(
            table,
            "  {:<38} {:>9} {:>8} {:>10}   answer",
            "approach", "sub-calls", "at once", "time"
        );
        for (label, m) in [
            ("for doc in context { llm_query(..) }", &sequential),
            ("llm_batch(context.map(..))", &batched),
        ] {
            let _ = writeln!(
                table,
                "  {label:<38} {:>9} {:>8} {:>10}   {}",
                m.sub_calls,
                m.peak_in_flight,
                human_duration(m.elapsed),
                m.answer.trim()
            );
        }
        say(&table)?;
        say(&format!(
            "\n  llm_batch was {speedup:.1}x faster on this run. {}\n\
             \x20 Times are measured, not computed: the root model is instant, so they are the\n\
             \x20 sub-calls' waiting plus the REPL's own work. \"at once\" is the most sub-calls\n\
             \x20 that were in flight together.\n",
            if correct(&sequential) && correct(&batched) {
                format!("Both answers are right ({expected_answer}).")
            } else {
                format!("Expected {expected_answer}.")
            }
        ))?;
    }

    if let (Some(path), false) = (&args.trace, args.quiet) {
        eprintln!(
            "rlm: the llm_batch run's trace is in {} (rlm view {} makes a page of it)",
            path.display(),
            path.display()
        );
    }
    if let Some(error) = trace_error {
        return Err(CliError::Input(error));
    }
    for (name, m) in [("sequential", &sequential), ("batched", &batched)] {
        if !correct(m) {
            return Err(CliError::Internal(format!(
                "the {name} run answered {:?}, expected {expected_answer:?}",
                m.answer
            )));
        }
    }
    Ok(exit::OK)
}

/// What one run measured.
struct Measured {
    answer: String,
    elapsed: Duration,
    sub_calls: usize,
    peak_in_flight: usize,
}

#[derive(Serialize)]
struct JsonRun<'a> {
    answer: &'a str,
    correct: bool,
    elapsed_ms: u64,
    sub_calls: usize,
    peak_in_flight: usize,
}

impl<'a> JsonRun<'a> {
    fn from(m: &'a Measured, correct: bool) -> Self {
        Self {
            answer: m.answer.trim(),
            correct,
            elapsed_ms: u64::try_from(m.elapsed.as_millis()).unwrap_or(u64::MAX),
            sub_calls: m.sub_calls,
            peak_in_flight: m.peak_in_flight,
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    documents: usize,
    chars: usize,
    latency_ms: [u64; 2],
    max_concurrent: u32,
    expected: &'a str,
    sequential: JsonRun<'a>,
    batched: JsonRun<'a>,
    speedup: f64,
}

/// The observers of one run: its transcript on stdout, its trace.
fn observers(
    transcript: Option<Arc<Transcript>>,
    trace: Option<Arc<TraceWriter>>,
) -> Vec<Arc<dyn Observer>> {
    let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
    if let Some(transcript) = transcript {
        observers.push(transcript);
    }
    if let Some(trace) = trace {
        observers.push(trace);
    }
    observers
}

/// Code lines shown per block; the rest is counted.
const SHOWN_CODE_LINES: usize = 8;
/// Output lines shown per block; the rest is counted.
const SHOWN_OUTPUT_LINES: usize = 4;

/// Prints each code block the model wrote and what the REPL printed for it, a few lines each,
/// from turn `from_turn` on.
struct Transcript {
    from_turn: usize,
}

impl Observer for Transcript {
    fn on_event(&self, event: &Event) {
        if let Event::CodeBlock {
            turn,
            code,
            output,
            error,
            ..
        } = event
            && *turn >= self.from_turn
        {
            let _ = write_stdout(&transcript_block(*turn, code, output, error.as_deref()));
        }
    }
}

/// One block of the transcript: the code, then what the REPL printed (or its error).
fn transcript_block(turn: usize, code: &str, output: &str, error: Option<&str>) -> String {
    let mut text = format!("    turn {turn}: the model's code\n");
    text.push_str(&shown_lines(code, SHOWN_CODE_LINES));
    let printed = output.trim_end();
    match error {
        Some(error) => {
            text.push_str("    the REPL's error\n");
            text.push_str(&shown_lines(error, SHOWN_OUTPUT_LINES));
        }
        None if printed.is_empty() && code.contains("FINAL") => {
            text.push_str("    the REPL printed nothing (the code gave its answer with FINAL)\n");
        }
        None if printed.is_empty() => text.push_str("    the REPL printed nothing\n"),
        None => {
            text.push_str("    the REPL printed\n");
            text.push_str(&shown_lines(printed, SHOWN_OUTPUT_LINES));
        }
    }
    text
}

/// The first `max` lines of `text`, each indented behind a bar (long lines cut), and how
/// many more there are.
fn shown_lines(text: &str, max: usize) -> String {
    const MAX_CHARS: usize = 100;
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let mut shown = String::new();
    for line in lines.iter().take(max) {
        let cut: String = line.chars().take(MAX_CHARS).collect();
        let more = if line.chars().count() > MAX_CHARS {
            " ..."
        } else {
            ""
        };
        let _ = writeln!(shown, "      | {cut}{more}");
    }
    if lines.len() > max {
        let _ = writeln!(
            shown,
            "      | ... {}",
            count((lines.len() - max) as u64, "more line")
        );
    }
    shown
}

/// One run of the RLM loop with the scripted root's second turn `job`.
async fn measure(
    job: &'static str,
    documents: &[String],
    args: &DemoArgs,
    observers: Vec<Arc<dyn Observer>>,
) -> Result<Measured, CliError> {
    let script = [LOOK, job];
    let root = MockBackend::from_fn(move |request: &CompletionRequest| {
        let turn = request
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        script
            .get(turn)
            .map(|reply| (*reply).to_owned())
            .ok_or_else(|| LlmError::invalid_response("the scripted root model has no more turns"))
    });
    let sub = simulated_sub(args.latency_ms);
    let mut builder = Rlm::builder(Arc::new(root))
        .root_model(ROOT_MODEL)
        .sub_model(SUB_MODEL)
        .sub_backend(Arc::new(sub.clone()))
        .max_concurrent(args.max_concurrent as usize)
        .max_iterations(4);
    for observer in observers {
        builder = builder.observer(observer);
    }
    let rlm = builder
        .build()
        .map_err(|e| CliError::Internal(e.to_string()))?;
    let start = Instant::now();
    let result = rlm
        .run(QUERY, Context::Documents(documents.to_vec()))
        .await
        .map_err(|e| CliError::Internal(format!("the demo run failed: {e}")))?;
    let elapsed = start.elapsed();
    if result.stopped != StopReason::Final {
        return Err(CliError::Internal(format!(
            "the demo run stopped ({}) without its answer{}",
            result.stopped,
            first_error(&result)
        )));
    }
    Ok(Measured {
        answer: result.answer,
        elapsed,
        sub_calls: sub.calls(),
        peak_in_flight: sub.peak_in_flight(),
    })
}

/// The first code error of a run, for a useful message.
fn first_error(result: &RunResult) -> String {
    result
        .trajectory
        .iter()
        .flat_map(|turn| &turn.blocks)
        .find_map(|block| block.error.as_ref())
        .map(|e| format!(": {e}"))
        .unwrap_or_default()
}

/// The simulated sub model: adds up the `holds N crates` lines of the page it is sent,
/// after a latency between `min` and `max` ms that depends on the prompt (deterministic).
fn simulated_sub((min, max): (u64, u64)) -> MockBackend {
    MockBackend::from_fn(|request| {
        Ok(crates_in(request.last_user_message().unwrap_or_default()).to_string())
    })
    .with_latency_fn(move |request| {
        let prompt = request.last_user_message().unwrap_or_default();
        Duration::from_millis(min + fnv(prompt) % (max.saturating_sub(min) + 1))
    })
}

/// The sum of `N` over the `... holds N crates ...` lines of `text`.
fn crates_in(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(" holds ")?;
            let (number, rest) = rest.split_once(' ')?;
            rest.starts_with("crates")
                .then(|| number.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// FNV-1a, for a latency that depends on the prompt only.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const WORDS: &[&str] = &[
    "the", "ledger", "amber", "signal", "harbor", "copper", "window", "forest", "engine", "paper",
    "silver", "market", "garden", "winter", "orbit", "canvas", "meadow", "lantern", "marble",
    "compass", "velvet", "anchor", "prairie", "cobalt", "summit", "shipment",
];

/// `count` inventory pages (filler with one or two `holds N crates` lines each) and the
/// total number of crates over all of them. Deterministic for a seed.
fn generate(count: usize, seed: u64) -> (Vec<String>, u64) {
    let mut state = seed.max(1);
    let mut next = move |bound: u64| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    };
    let mut total = 0;
    let documents = (0..count)
        .map(|page| {
            let lines = 30 + next(20) as usize;
            let facts = 1 + next(2) as usize;
            let fact_lines: Vec<usize> = (0..facts).map(|_| next(lines as u64) as usize).collect();
            let mut text = format!("Inventory page {}\n", page + 1);
            for line in 0..lines {
                if let Some(k) = fact_lines.iter().position(|&l| l == line) {
                    let crates = 10 + next(490);
                    total += crates;
                    let _ = writeln!(
                        text,
                        "Warehouse {}-{} holds {crates} crates of {}.",
                        page + 1,
                        k + 1,
                        WORDS[next(WORDS.len() as u64) as usize]
                    );
                } else {
                    let words = 8 + next(8);
                    let line: Vec<&str> = (0..words)
                        .map(|_| WORDS[next(WORDS.len() as u64) as usize])
                        .collect();
                    let _ = writeln!(text, "{}.", line.join(" "));
                }
            }
            text
        })
        .collect();
    (documents, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlm_core::LlmBackend;

    #[test]
    fn pages_hold_the_expected_total() {
        let (documents, total) = generate(30, 7);
        assert_eq!(documents.len(), 30);
        let counted: u64 = documents.iter().map(|d| crates_in(d)).sum();
        assert_eq!(counted, total);
        assert!(total > 0);
        assert_eq!(generate(30, 7), (documents, total));
    }

    #[test]
    fn the_simulated_sub_model_reads_the_page() {
        assert_eq!(
            crates_in("a\nWarehouse 1-1 holds 42 crates of tin.\nb holds x\n"),
            42
        );
        assert_eq!(crates_in("nothing here"), 0);
    }

    #[test]
    fn the_transcript_shows_a_few_lines_of_code_and_output() {
        let code: String = (1..=12).map(|i| format!("let x{i} = {i};\n")).collect();
        let block = transcript_block(2, &code, "a\nb\nc\nd\ne\nf\n", None);
        assert!(
            block.starts_with("    turn 2: the model's code\n"),
            "{block}"
        );
        assert!(block.contains("      | let x8 = 8;\n"), "{block}");
        assert!(!block.contains("x9"), "{block}");
        assert!(block.contains("      | ... 4 more lines\n"), "{block}");
        assert!(
            block.contains("    the REPL printed\n      | a\n"),
            "{block}"
        );
        assert!(block.contains("      | ... 2 more lines\n"), "{block}");
        let failed = transcript_block(1, "x +", "", Some("syntax error (line 1)"));
        assert!(
            failed.contains("the REPL's error\n      | syntax error"),
            "{failed}"
        );
        let quiet = transcript_block(1, "let a = 1;", "", None);
        assert!(quiet.ends_with("the REPL printed nothing\n"), "{quiet}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_simulated_sub_model_answers_with_usage() {
        let sub = simulated_sub((100, 300));
        let reply = sub
            .complete(CompletionRequest::prompt(
                SUB_MODEL,
                "Warehouse 3-1 holds 7 crates of x.",
            ))
            .await;
        assert_eq!(reply.map(|c| c.text), Ok("7".to_owned()));
        assert_eq!(sub.calls(), 1);
        assert_eq!(sub.in_flight(), 0);
    }
}
