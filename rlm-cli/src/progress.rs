//! Progress on a terminal: a line per root turn, a spinner for what is happening now, and a
//! bar for each `llm_batch`. Used only when stderr is a terminal and `--quiet` is off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rlm_repl::{Event, Observer, RunPlace};

use crate::run::{human_duration, thousands};

/// Draws a run's progress on stderr.
pub(crate) struct Progress {
    multi: MultiProgress,
    status: ProgressBar,
    batches: Mutex<HashMap<u64, ProgressBar>>,
    root_model: String,
}

impl Progress {
    /// Progress for a run of `root_model`, drawn on stderr.
    pub(crate) fn new(root_model: &str) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let status = multi.add(ProgressBar::new_spinner());
        status.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        status.enable_steady_tick(Duration::from_millis(120));
        Self {
            multi,
            status,
            batches: Mutex::new(HashMap::new()),
            root_model: root_model.to_owned(),
        }
    }

    /// Prints a line above the bars.
    pub(crate) fn println(&self, line: impl AsRef<str>) {
        let _ = self.multi.println(line);
    }

    /// Removes everything it drew.
    pub(crate) fn finish(&self) {
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        for (_, bar) in batches.drain() {
            bar.finish_and_clear();
        }
        self.status.finish_and_clear();
        let _ = self.multi.clear();
    }

    fn batch_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "  {prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
    }
}

impl Observer for Progress {
    /// Only the top-level run is drawn: children's turns and batches would fight over the
    /// bars (the trace has them all).
    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        if place.depth == 0 {
            self.on_event(event);
        }
    }

    fn on_event(&self, event: &Event) {
        match event {
            Event::RunStart {
                root_model,
                sub_model,
                context,
                ..
            } => {
                let items = context
                    .items
                    .map(|n| format!(", {} items", thousands(n as u64)))
                    .unwrap_or_default();
                let sub = if sub_model == root_model {
                    String::new()
                } else {
                    format!(", sub-calls to {sub_model}")
                };
                self.println(format!(
                    "rlm: root model {root_model}{sub}; context: {}, {} chars{items}",
                    context.kind,
                    thousands(context.total_chars as u64)
                ));
            }
            Event::TurnStart { turn } => {
                self.status
                    .set_message(format!("turn {turn}: waiting for {}", self.root_model));
            }
            Event::RootReply { turn, .. } => {
                self.status
                    .set_message(format!("turn {turn}: running code"));
            }
            Event::SubCallStart {
                turn,
                id,
                batch: None,
                ..
            } => {
                self.status
                    .set_message(format!("turn {turn}: running code, llm_query #{id}"));
            }
            Event::CodeBlock {
                turn,
                block,
                error: Some(error),
                ..
            } => {
                let first = error.lines().next().unwrap_or_default();
                let first: String = first.chars().take(120).collect();
                self.println(format!(
                    "  turn {turn}, block {}: error: {first}",
                    block + 1
                ));
            }
            Event::BatchStart {
                turn,
                batch,
                total,
                max_concurrent,
            } => {
                let bar = self.multi.add(
                    ProgressBar::new(*total as u64)
                        .with_style(Self::batch_style())
                        .with_prefix(format!("llm_batch #{batch} ({max_concurrent} at once)")),
                );
                self.status
                    .set_message(format!("turn {turn}: llm_batch #{batch}"));
                self.batches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*batch, bar);
            }
            Event::BatchProgress {
                batch,
                done,
                failed,
                ..
            } => {
                let batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(bar) = batches.get(batch) {
                    bar.set_position(*done as u64);
                    if *failed > 0 {
                        bar.set_message(format!("{failed} failed"));
                    }
                }
            }
            Event::BatchEnd {
                turn,
                batch,
                total,
                failed,
                elapsed_ms,
            } => {
                if let Some(bar) = self
                    .batches
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(batch)
                {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                let failed = if *failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                };
                self.println(format!(
                    "  turn {turn}: llm_batch #{batch}: {} prompts{failed} in {}",
                    thousands(*total as u64),
                    human_duration(Duration::from_millis(*elapsed_ms))
                ));
            }
            Event::TurnEnd { turn } => {
                let errors = turn.blocks.iter().filter(|b| b.error.is_some()).count();
                let errors = if errors > 0 {
                    format!(" ({errors} failed)")
                } else {
                    String::new()
                };
                let sub_calls = if turn.sub_calls.is_empty() {
                    String::new()
                } else {
                    format!(", {} sub-calls", thousands(turn.sub_calls.len() as u64))
                };
                self.println(format!(
                    "turn {}: root replied in {} ({} tokens), {} code block{}{errors}{sub_calls}",
                    turn.turn,
                    human_duration(turn.root_latency),
                    thousands(turn.usage.total()),
                    turn.blocks.len(),
                    if turn.blocks.len() == 1 { "" } else { "s" },
                ));
            }
            Event::Final { .. } => self.finish(),
            _ => {}
        }
    }
}
