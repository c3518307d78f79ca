//! Progress on stderr (`--progress`): on a terminal, a line per root turn, a spinner for
//! what is happening now, and a bar for each `llm_batch`; as plain lines (for CI logs and
//! `2>log`), one timestamped line per turn, batch start and end, retry wait and rate-limit
//! wait.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use rlm_host::{Event, Observer, RunPlace, StopReason, Wait};

use crate::cli::ProgressMode;
use crate::human::{count, human_duration};

/// How progress is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// Bars and a spinner on a terminal.
    Bars,
    /// One timestamped line per event of interest.
    Lines,
}

/// How `--progress` is drawn, if at all: `auto` draws bars on a terminal and nothing
/// otherwise; `--quiet` draws nothing.
pub(crate) fn style(mode: ProgressMode, quiet: bool) -> Option<Style> {
    match mode {
        _ if quiet => None,
        ProgressMode::Auto => std::io::stderr().is_terminal().then_some(Style::Bars),
        ProgressMode::Bar => Some(Style::Bars),
        ProgressMode::Lines => Some(Style::Lines),
        ProgressMode::None => None,
    }
}

/// Draws a run's progress on stderr.
pub(crate) struct Progress {
    multi: MultiProgress,
    status: ProgressBar,
    batches: Mutex<HashMap<u64, ProgressBar>>,
    root_model: String,
    style: Style,
}

impl Progress {
    /// Progress for a run of `root_model`, drawn on stderr in `style`.
    pub(crate) fn new(root_model: &str, style: Style) -> Self {
        let target = match style {
            Style::Bars => ProgressDrawTarget::stderr(),
            Style::Lines => ProgressDrawTarget::hidden(),
        };
        let multi = MultiProgress::with_draw_target(target);
        let status = multi.add(ProgressBar::new_spinner());
        status.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        if style == Style::Bars {
            status.enable_steady_tick(Duration::from_millis(120));
        }
        Self {
            multi,
            status,
            batches: Mutex::new(HashMap::new()),
            root_model: root_model.to_owned(),
            style,
        }
    }

    /// Prints a line above the bars, or (as lines) a line with a timestamp.
    pub(crate) fn println(&self, line: impl AsRef<str>) {
        match self.style {
            Style::Bars => {
                let _ = self.multi.println(line);
            }
            Style::Lines => eprintln!("{} {}", timestamp(SystemTime::now()), line.as_ref()),
        }
    }

    /// A line that only the line style prints (the bars show it by themselves).
    fn line(&self, line: impl AsRef<str>) {
        if self.style == Style::Lines {
            self.println(line);
        }
    }

    /// Reports a wait of the HTTP backend: a retry or a rate-limit hold.
    pub(crate) fn on_wait(&self, wait: &Wait) {
        match wait {
            Wait::Retry {
                model,
                attempt,
                wait,
                error,
                server_asked,
            } => {
                let first = error.lines().next().unwrap_or_default();
                let first: String = first.chars().take(160).collect();
                self.println(format!(
                    "  {model}: attempt {attempt} failed ({first}); retrying in {}{}",
                    human_duration(*wait),
                    if *server_asked {
                        " as the server asked"
                    } else {
                        ""
                    }
                ));
            }
            Wait::RateLimit { model, waited } => self.println(format!(
                "  {model}: waiting for the rate limit (--rpm / --tpm, or a pause the server \
                 asked for); {} so far",
                human_duration(*waited)
            )),
            _ => {}
        }
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
            "  {prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed}, eta {batch_eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "batch_eta",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&batch_eta(state.elapsed(), state.pos(), state.len()));
            },
        )
        .progress_chars("=> ")
    }
}

/// The time a batch still needs, from the items done so far at the average pace since the
/// batch began (indicatif's own estimate starts from its tick rate and can say "4m" for a
/// 9 s batch). `?` until an item is done.
fn batch_eta(elapsed: Duration, done: u64, total: Option<u64>) -> String {
    let Some(total) = total else {
        return "?".to_owned();
    };
    if done == 0 {
        return "?".to_owned();
    }
    let left = total.saturating_sub(done);
    let per_item = elapsed.as_secs_f64() / done as f64;
    let secs = (per_item * left as f64).round();
    match secs as u64 {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The time now as the line style prints it.
pub(crate) fn timestamp_now() -> String {
    timestamp(SystemTime::now())
}

/// `HH:MM:SS.mmmZ` (UTC) for the line style.
fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    let mut text = String::with_capacity(13);
    let _ = write!(
        text,
        "{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60,
        since.subsec_millis()
    );
    text
}

impl Observer for Progress {
    /// The top-level run is drawn in full; of a child run only its start and end (its turns
    /// and batches would fight over the bars; the trace has them all).
    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        if place.depth == 0 {
            self.on_event(event);
            return;
        }
        match event {
            Event::RunStart { root_model, .. } => self.println(format!(
                "rlm: child run {} (depth {}) started, root model {root_model}",
                place.run, place.depth
            )),
            Event::Final {
                stopped,
                iterations,
                elapsed_ms,
                ..
            } => self.println(format!(
                "rlm: child run {} {} after {} in {}",
                place.run,
                if *stopped == StopReason::Final {
                    "answered".to_owned()
                } else {
                    format!("stopped ({stopped})")
                },
                count(*iterations as u64, "turn"),
                human_duration(Duration::from_millis(*elapsed_ms))
            )),
            _ => {}
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
                    .map(|n| format!(", {}", count(n as u64, "item")))
                    .unwrap_or_default();
                let sub = if sub_model == root_model {
                    String::new()
                } else {
                    format!(", sub-calls to {sub_model}")
                };
                self.println(format!(
                    "rlm: root model {root_model}{sub}; context: {}, {}{items}",
                    context.kind,
                    count(context.total_chars as u64, "char")
                ));
            }
            Event::TurnStart { turn } => {
                self.line(format!("turn {turn}: asking {}", self.root_model));
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
                self.line(format!(
                    "  turn {turn}: llm_batch #{batch}: {}, {max_concurrent} at once",
                    count(*total as u64, "prompt")
                ));
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
                    "  turn {turn}: llm_batch #{batch}: {}{failed} in {}",
                    count(*total as u64, "prompt"),
                    human_duration(Duration::from_millis(*elapsed_ms))
                ));
            }
            Event::TurnEnd {
                turn,
                usage,
                root_latency_ms,
                blocks,
                failed_blocks,
                sub_calls,
                failed_sub_calls,
                cancelled_sub_calls,
                ..
            } => {
                let errors = if *failed_blocks > 0 {
                    format!(" ({failed_blocks} failed)")
                } else {
                    String::new()
                };
                let mut calls = String::new();
                if *sub_calls > 0 {
                    calls = format!(", {}", count(*sub_calls as u64, "sub-call"));
                    let mut not_ok = Vec::new();
                    if *failed_sub_calls > 0 {
                        not_ok.push(format!("{failed_sub_calls} failed"));
                    }
                    if *cancelled_sub_calls > 0 {
                        not_ok.push(format!("{cancelled_sub_calls} cancelled"));
                    }
                    if !not_ok.is_empty() {
                        calls.push_str(&format!(" ({})", not_ok.join(", ")));
                    }
                }
                self.println(format!(
                    "turn {turn}: root replied in {} ({}), {}{errors}{calls}",
                    human_duration(Duration::from_millis(*root_latency_ms)),
                    count(usage.total(), "token"),
                    count(*blocks as u64, "code block"),
                ));
            }
            Event::Final { .. } => self.finish(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_eta_is_sane_from_the_start() {
        // Nothing done yet: no guess.
        assert_eq!(batch_eta(Duration::from_millis(300), 0, Some(100)), "?");
        // 10 of 100 done in 0.9 s: about 8 s to go, not minutes.
        assert_eq!(batch_eta(Duration::from_millis(900), 10, Some(100)), "8s");
        assert_eq!(batch_eta(Duration::from_secs(60), 50, Some(100)), "1m00s");
        assert_eq!(batch_eta(Duration::from_secs(9), 100, Some(100)), "0s");
        assert_eq!(batch_eta(Duration::from_secs(1), 1, None), "?");
    }

    #[test]
    fn timestamps_are_utc_clock_times() {
        let at = UNIX_EPOCH + Duration::from_millis(86_400_000 * 3 + 3_723_045);
        assert_eq!(timestamp(at), "01:02:03.045Z");
    }
}
