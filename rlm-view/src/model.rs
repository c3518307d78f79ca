//! From trace lines to the view model the page renders: runs and their turns, sub-calls as
//! columns in display order, batches, concurrency over time, the summary and cost.

use std::collections::{BTreeMap, HashMap};

use rlm_core::Usage;
use rlm_core::cost::{CostReport, Prices};
use rlm_core::usage::ModelUsage;
use rlm_repl::trace::TraceLine;
use rlm_repl::{Event, TurnVerdict};
use serde::Serialize;

/// Characters of prompts and responses kept per sub-call over the whole page; each call gets
/// an equal share, at most [`MAX_PREVIEW_CHARS`], none when the share is below
/// [`MIN_PREVIEW_CHARS`].
const PREVIEW_BUDGET_CHARS: usize = 4_000_000;
const MAX_PREVIEW_CHARS: usize = 240;
const MIN_PREVIEW_CHARS: usize = 12;
/// Points of the in-flight curve.
const CONCURRENCY_BUCKETS: usize = 600;

/// The sub-call status codes of [`Calls::status`].
pub(crate) mod status {
    pub(crate) const OK: u8 = 0;
    pub(crate) const FAILED: u8 = 1;
    pub(crate) const UNFINISHED: u8 = 2;
    pub(crate) const CACHED: u8 = 3;
}

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub(crate) struct View {
    pub(crate) title: String,
    pub(crate) notices: Vec<String>,
    pub(crate) summary: Summary,
    pub(crate) runs: Vec<RunView>,
    pub(crate) models: Vec<String>,
    pub(crate) calls: Calls,
    pub(crate) batches: Vec<BatchView>,
    /// Most sub-calls in flight in each of `concurrency.len()` equal slices of the wall time.
    pub(crate) concurrency: Vec<u32>,
    pub(crate) wall_ms: u64,
    /// Characters of each prompt and response kept (0: none).
    pub(crate) preview_chars: usize,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) query: String,
    pub(crate) answer: Option<String>,
    pub(crate) stopped: Option<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) root_model: String,
    pub(crate) sub_model: String,
    pub(crate) turns: usize,
    pub(crate) sub_calls: usize,
    pub(crate) failed: usize,
    pub(crate) unfinished: usize,
    pub(crate) cached: usize,
    pub(crate) elapsed_ms: u64,
    pub(crate) usage: BTreeMap<String, ModelUsage>,
    /// Where `usage` comes from: `"final"` (the final event) or `"events"` (added up).
    pub(crate) usage_source: &'static str,
    pub(crate) cost: CostReport,
    /// Where `cost` comes from: `"trace"` (the final event) or `"prices"` (computed here).
    pub(crate) cost_source: &'static str,
    pub(crate) peak_in_flight: u32,
    pub(crate) peak_at_ms: u64,
    pub(crate) runs: usize,
    pub(crate) max_depth: u64,
    pub(crate) error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct RunView {
    pub(crate) id: String,
    pub(crate) parent: Option<String>,
    pub(crate) depth: u64,
    pub(crate) query: String,
    pub(crate) root_model: String,
    pub(crate) sub_model: String,
    pub(crate) answer: Option<String>,
    pub(crate) stopped: Option<String>,
    pub(crate) elapsed_ms: Option<u64>,
    pub(crate) error: Option<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) turns: Vec<TurnView>,
    pub(crate) sub_calls: usize,
    pub(crate) failed: usize,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct TurnView {
    pub(crate) turn: u64,
    pub(crate) t_ms: u64,
    pub(crate) reply: Option<String>,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) elapsed_ms: u64,
    pub(crate) blocks: Vec<BlockView>,
    /// The answer given in this turn was held for confirmation.
    pub(crate) held: bool,
    /// The reply has a FINAL marker, yet the run went on: it was not accepted.
    pub(crate) final_refused: bool,
    /// What the engine made of the turn's answer.
    #[serde(skip)]
    pub(crate) verdict: TurnVerdict,
}

/// The usage and cost a `final` event gave.
type FinalFigures = (Option<BTreeMap<String, ModelUsage>>, Option<CostReport>);

/// Which figures a `final` line holds (older traces lack some).
#[derive(serde::Deserialize)]
struct FinalHas {
    usage: Option<serde::de::IgnoredAny>,
    cost_usd: Option<serde::de::IgnoredAny>,
}

/// Where a sub-call event puts its call.
struct CallPlace<'a> {
    id: u64,
    turn: usize,
    batch: Option<u64>,
    index: Option<usize>,
    model: &'a str,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct BlockView {
    pub(crate) code: String,
    pub(crate) output: String,
    pub(crate) error: Option<String>,
    pub(crate) elapsed_ms: u64,
}

/// Sub-calls as columns, one entry per call, in display order (grouped by batch).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Calls {
    pub(crate) id: Vec<u64>,
    pub(crate) run: Vec<u32>,
    pub(crate) turn: Vec<u64>,
    /// Batch number, -1 for `llm_query`.
    pub(crate) batch: Vec<i64>,
    /// Index in the batch, -1 for `llm_query`.
    pub(crate) index: Vec<i64>,
    pub(crate) start: Vec<u64>,
    pub(crate) end: Vec<u64>,
    /// When its batch began (the wait for a slot is `start - queued`).
    pub(crate) queued: Vec<u64>,
    pub(crate) status: Vec<u8>,
    pub(crate) model: Vec<u32>,
    pub(crate) tokens: Vec<u64>,
    pub(crate) prompt: Vec<String>,
    pub(crate) response: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BatchView {
    pub(crate) run: u32,
    pub(crate) turn: u64,
    pub(crate) batch: i64,
    pub(crate) total: u64,
    pub(crate) max_concurrent: u64,
    pub(crate) failed: u64,
    pub(crate) first_row: usize,
    pub(crate) rows: usize,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// One sub-call as it is gathered.
#[derive(Debug, Default)]
struct Call {
    id: u64,
    run: u32,
    turn: u64,
    batch: Option<i64>,
    index: Option<i64>,
    start: Option<u64>,
    end: Option<u64>,
    latency: Option<u64>,
    status: u8,
    model: u32,
    tokens: u64,
    prompt: String,
    response: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
}

#[derive(Debug, Default)]
struct BatchInfo {
    turn: u64,
    total: u64,
    max_concurrent: u64,
    failed: u64,
    start: Option<u64>,
    end: Option<u64>,
}

/// Parsing notes and counts, for the caller.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    pub(crate) view: Option<View>,
    pub(crate) events: usize,
}

/// The first `n` characters of `text`, with `…` when cut.
fn preview(text: &str, n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    match text.char_indices().nth(n) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

struct Builder<'p> {
    prices: &'p Prices,
    runs: Vec<RunView>,
    run_index: HashMap<String, u32>,
    /// Each run's final usage and cost, as its `final` event gave them (`None` where an
    /// older trace's final event lacks them).
    finals: HashMap<u32, FinalFigures>,
    models: Vec<String>,
    model_index: HashMap<String, u32>,
    calls: Vec<Call>,
    call_index: HashMap<(u32, u64), usize>,
    batches: HashMap<(u32, i64), BatchInfo>,
    wall_ms: u64,
}

impl<'p> Builder<'p> {
    fn run(&mut self, id: &str, depth: usize) -> u32 {
        if let Some(&index) = self.run_index.get(id) {
            return index;
        }
        let index = self.runs.len() as u32;
        let parent = id.rsplit_once('.').map(|(parent, _)| parent.to_owned());
        self.runs.push(RunView {
            id: id.to_owned(),
            depth: (depth as u64).max(id.matches('.').count() as u64),
            parent,
            ..RunView::default()
        });
        self.run_index.insert(id.to_owned(), index);
        index
    }

    fn model(&mut self, name: &str) -> u32 {
        if let Some(&index) = self.model_index.get(name) {
            return index;
        }
        let index = self.models.len() as u32;
        self.models.push(name.to_owned());
        self.model_index.insert(name.to_owned(), index);
        index
    }

    fn turn(run: &mut RunView, turn: u64, t_ms: u64) -> &mut TurnView {
        let position = run.turns.iter().rposition(|t| t.turn == turn);
        match position {
            Some(position) => &mut run.turns[position],
            None => {
                run.turns.push(TurnView {
                    turn,
                    t_ms,
                    ..TurnView::default()
                });
                let last = run.turns.len() - 1;
                &mut run.turns[last]
            }
        }
    }

    /// The sub-call `id` of `run`, made on its first event.
    fn call(&mut self, run: u32, place: CallPlace<'_>) -> &mut Call {
        let next = self.calls.len();
        let index = *self.call_index.entry((run, place.id)).or_insert(next);
        if index == next {
            let model = self.model(place.model);
            self.calls.push(Call {
                id: place.id,
                run,
                turn: place.turn as u64,
                batch: place.batch.map(|b| b as i64),
                index: place.index.map(|i| i as i64),
                model,
                status: status::UNFINISHED,
                ..Call::default()
            });
        }
        &mut self.calls[index]
    }

    /// Adds one trace line; `raw` is its text (read again only for a `final` event).
    fn event(&mut self, line: TraceLine, raw: &str) {
        let t_ms = line.t_ms;
        self.wall_ms = self.wall_ms.max(t_ms);
        let run = self.run(&line.run, line.depth);
        match line.event {
            Event::RunStart {
                query,
                root_model,
                sub_model,
                parent,
                ..
            } => {
                let view = &mut self.runs[run as usize];
                view.query = query;
                view.root_model = root_model;
                view.sub_model = sub_model;
                if parent.is_some() {
                    view.parent = parent;
                }
            }
            Event::TurnStart { turn } => {
                Self::turn(&mut self.runs[run as usize], turn as u64, t_ms);
            }
            Event::RootReply {
                turn,
                text,
                usage,
                elapsed_ms,
            } => {
                let view = Self::turn(&mut self.runs[run as usize], turn as u64, t_ms);
                view.reply = Some(text);
                view.prompt_tokens = usage.prompt_tokens;
                view.completion_tokens = usage.completion_tokens;
                view.elapsed_ms = elapsed_ms;
            }
            Event::CodeBlock {
                turn,
                code,
                output,
                error,
                elapsed_ms,
                ..
            } => {
                let view = Self::turn(&mut self.runs[run as usize], turn as u64, t_ms);
                view.blocks.push(BlockView {
                    code,
                    output,
                    error,
                    elapsed_ms,
                });
            }
            Event::SubCallStart {
                turn,
                id,
                batch,
                index,
                model,
                prompt,
                ..
            } => {
                let place = CallPlace {
                    id,
                    turn,
                    batch,
                    index,
                    model: &model,
                };
                let call = self.call(run, place);
                call.start = Some(t_ms);
                call.prompt = prompt;
            }
            Event::SubCallEnd {
                turn,
                id,
                batch,
                index,
                model,
                response,
                error,
                usage,
                latency_ms,
                ..
            } => {
                let place = CallPlace {
                    id,
                    turn,
                    batch,
                    index,
                    model: &model,
                };
                let call = self.call(run, place);
                let Usage {
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                } = usage;
                call.end = Some(t_ms);
                call.latency = Some(latency_ms);
                call.prompt_tokens = prompt_tokens;
                call.completion_tokens = completion_tokens;
                call.cached_tokens = cached_tokens;
                call.tokens = prompt_tokens.saturating_add(completion_tokens);
                call.status = if error.is_some() {
                    status::FAILED
                } else {
                    status::OK
                };
                call.response = match (error, response) {
                    (Some(error), _) => format!("Error: {error}"),
                    (None, Some(response)) => response,
                    (None, None) => String::new(),
                };
            }
            Event::BatchStart {
                turn,
                batch,
                total,
                max_concurrent,
            } => {
                let info = self.batches.entry((run, batch as i64)).or_default();
                info.turn = turn as u64;
                info.total = total as u64;
                info.start = Some(t_ms);
                info.max_concurrent = max_concurrent as u64;
            }
            Event::BatchEnd {
                turn,
                batch,
                total,
                failed,
                ..
            } => {
                let info = self.batches.entry((run, batch as i64)).or_default();
                info.turn = turn as u64;
                info.total = total as u64;
                info.end = Some(t_ms);
                info.failed = failed as u64;
            }
            Event::TurnEnd { turn, verdict, .. } => {
                let view = Self::turn(&mut self.runs[run as usize], turn as u64, t_ms);
                view.verdict = verdict;
            }
            Event::RunError { error, .. } => {
                self.runs[run as usize].error = Some(error);
            }
            Event::Final {
                answer,
                stopped,
                elapsed_ms,
                usage,
                warnings,
                cost_usd,
                ..
            } => {
                let view = &mut self.runs[run as usize];
                view.answer = Some(answer);
                view.stopped = serde_json::to_value(stopped)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned));
                view.elapsed_ms = Some(elapsed_ms);
                view.warnings = warnings;
                let has = serde_json::from_str::<FinalHas>(raw).ok();
                let has_usage = has.as_ref().is_some_and(|h| h.usage.is_some());
                let has_cost = has.as_ref().is_some_and(|h| h.cost_usd.is_some());
                self.finals.insert(
                    run,
                    (has_usage.then_some(usage), has_cost.then_some(cost_usd)),
                );
            }
            _ => {}
        }
    }

    fn finish(mut self, title: String, mut notices: Vec<String>) -> View {
        // Turns: held and refused answers, as the engine judged them.
        for run in &mut self.runs {
            let last_turn = run.turns.iter().map(|t| t.turn).max().unwrap_or(0);
            // Traces written before verdicts were recorded: held answers are named in the
            // warnings, and a turn whose reply had a text marker yet was not the last was
            // not accepted.
            let held_by_warning: Vec<u64> = run
                .warnings
                .iter()
                .filter_map(|w| {
                    let rest = w.strip_prefix("turn ")?;
                    let (n, why) = rest.split_once(':')?;
                    why.contains("held")
                        .then(|| n.trim().parse().ok())
                        .flatten()
                })
                .collect();
            for turn in &mut run.turns {
                (turn.held, turn.final_refused) = match turn.verdict {
                    TurnVerdict::Held => (true, false),
                    TurnVerdict::Refused => (false, true),
                    TurnVerdict::Unrecorded => {
                        let held = held_by_warning.contains(&turn.turn);
                        let refused = !held
                            && turn.turn < last_turn
                            && turn.reply.as_deref().is_some_and(rlm_repl::has_text_final);
                        (held, refused)
                    }
                    _ => (false, false),
                };
            }
        }
        // Calls in display order: grouped by batch (a llm_query alone), groups by time.
        let wall = self.wall_ms;
        for call in &mut self.calls {
            match (call.start, call.end) {
                (None, Some(end)) => {
                    call.start = Some(end.saturating_sub(call.latency.unwrap_or(0)))
                }
                (Some(_), None) => call.end = Some(wall),
                _ => {}
            }
        }
        let group_of = |c: &Call| match c.batch {
            Some(batch) => (c.run, batch, 0u64),
            None => (c.run, -1, c.id),
        };
        let mut group_start: HashMap<(u32, i64, u64), u64> = HashMap::new();
        for call in &self.calls {
            let start = call.start.unwrap_or(0);
            let entry = group_start.entry(group_of(call)).or_insert(start);
            *entry = (*entry).min(start);
        }
        for ((run, batch), info) in &self.batches {
            if let (Some(start), Some(entry)) =
                (info.start, group_start.get_mut(&(*run, *batch, 0)))
            {
                *entry = (*entry).min(start);
            }
        }
        let mut order: Vec<usize> = (0..self.calls.len()).collect();
        order.sort_by_key(|&i| {
            let c = &self.calls[i];
            let group = group_of(c);
            (group_start[&group], group, c.index.unwrap_or(0), c.id)
        });

        let preview_chars = if self.calls.is_empty() {
            MAX_PREVIEW_CHARS
        } else {
            (PREVIEW_BUDGET_CHARS / (2 * self.calls.len())).min(MAX_PREVIEW_CHARS)
        };
        let preview_chars = if preview_chars < MIN_PREVIEW_CHARS {
            0
        } else {
            preview_chars
        };
        if preview_chars < MAX_PREVIEW_CHARS && !self.calls.is_empty() {
            notices.push(if preview_chars == 0 {
                format!(
                    "{} sub-calls: prompts and responses are left out of this page to keep it \
                     small (they are in the trace file).",
                    self.calls.len()
                )
            } else {
                format!(
                    "{} sub-calls: prompts and responses are cut to {preview_chars} characters \
                     each to keep this page small (the trace file has them).",
                    self.calls.len()
                )
            });
        }

        let mut calls = Calls::default();
        let mut batches: Vec<BatchView> = Vec::new();
        let mut failed = 0;
        let mut unfinished = 0;
        let mut cached = 0;
        for (row, &i) in order.iter().enumerate() {
            let c = &self.calls[i];
            let start = c.start.unwrap_or(0);
            let end = c.end.unwrap_or(start).max(start);
            let batch = c.batch.unwrap_or(-1);
            let info = c.batch.and_then(|b| self.batches.get(&(c.run, b)));
            let queued = info.and_then(|i| i.start).unwrap_or(start).min(start);
            match batches.last_mut() {
                Some(last) if last.run == c.run && last.batch == batch && batch >= 0 => {
                    last.rows += 1;
                    last.start = last.start.min(start);
                    last.end = last.end.max(end);
                }
                _ => batches.push(BatchView {
                    run: c.run,
                    turn: c.turn,
                    batch,
                    total: info.map_or(1, |i| i.total),
                    max_concurrent: info.map_or(1, |i| i.max_concurrent),
                    failed: info.map_or(0, |i| i.failed),
                    first_row: row,
                    rows: 1,
                    start: queued,
                    end: info.and_then(|i| i.end).unwrap_or(end).max(end),
                }),
            }
            failed += usize::from(c.status == status::FAILED);
            unfinished += usize::from(c.status == status::UNFINISHED);
            cached += usize::from(c.status == status::CACHED);
            let run = &mut self.runs[c.run as usize];
            run.sub_calls += 1;
            run.failed += usize::from(c.status == status::FAILED);
            calls.id.push(c.id);
            calls.run.push(c.run);
            calls.turn.push(c.turn);
            calls.batch.push(batch);
            calls.index.push(c.index.unwrap_or(-1));
            calls.start.push(start);
            calls.end.push(end);
            calls.queued.push(queued);
            calls.status.push(c.status);
            calls.model.push(c.model);
            calls.tokens.push(c.tokens);
            calls.prompt.push(preview(&c.prompt, preview_chars));
            calls.response.push(preview(&c.response, preview_chars));
        }
        let (concurrency, peak, peak_at) = in_flight(&calls.start, &calls.end, wall);

        // The summary: the top run (no parent), its final event, usage and cost.
        let top = self
            .runs
            .iter()
            .position(|r| r.parent.is_none())
            .unwrap_or(0);
        let mut summary = Summary {
            runs: self.runs.len(),
            max_depth: self.runs.iter().map(|r| r.depth).max().unwrap_or(0),
            sub_calls: self.calls.len(),
            failed,
            unfinished,
            cached,
            peak_in_flight: peak,
            peak_at_ms: peak_at,
            ..Summary::default()
        };
        if let Some(run) = self.runs.get(top) {
            summary.query = run.query.clone();
            summary.root_model = run.root_model.clone();
            summary.sub_model = run.sub_model.clone();
            summary.answer = run.answer.clone();
            summary.stopped = run.stopped.clone();
            summary.warnings = run.warnings.clone();
            summary.turns = run.turns.len();
            summary.elapsed_ms = run.elapsed_ms.unwrap_or(wall);
            summary.error = run.error.clone();
            if run.stopped.is_none() {
                notices.push(match &run.error {
                    Some(error) => format!("The run failed without an answer: {error}"),
                    None => "The run did not finish: the trace has no final event (the run was \
                             killed, crashed, or is still running). What it did until then is \
                             shown."
                        .to_owned(),
                });
            }
        }
        let top_final = self.finals.remove(&(top as u32));
        let (final_usage, final_cost) = top_final.unwrap_or((None, None));
        summary.usage = match final_usage {
            Some(usage) => {
                summary.usage_source = "final";
                usage
            }
            None => {
                summary.usage_source = "events";
                self.usage_from_events()
            }
        };
        summary.cost = match final_cost {
            Some(cost) => {
                summary.cost_source = "trace";
                cost
            }
            None => {
                summary.cost_source = "prices";
                self.prices
                    .report(summary.usage.iter().map(|(m, u)| (m.as_str(), u)))
            }
        };

        View {
            title,
            notices,
            summary,
            runs: self.runs,
            models: self.models,
            calls,
            batches,
            concurrency,
            wall_ms: wall,
            preview_chars,
        }
    }

    /// Calls and tokens per model, added up from root replies and sub-calls (when the trace
    /// has no final event).
    fn usage_from_events(&self) -> BTreeMap<String, ModelUsage> {
        let mut usage: BTreeMap<String, ModelUsage> = BTreeMap::new();
        for run in &self.runs {
            for turn in run.turns.iter().filter(|t| t.reply.is_some()) {
                let entry = usage.entry(run.root_model.clone()).or_default();
                entry.calls += 1;
                entry.prompt_tokens += turn.prompt_tokens;
                entry.completion_tokens += turn.completion_tokens;
            }
        }
        for call in &self.calls {
            let model = self.models[call.model as usize].clone();
            let entry = usage.entry(model).or_default();
            match call.status {
                status::FAILED => entry.failed += 1,
                status::UNFINISHED => {}
                _ => {
                    entry.calls += 1;
                    entry.prompt_tokens += call.prompt_tokens;
                    entry.completion_tokens += call.completion_tokens;
                    entry.cached_tokens += call.cached_tokens;
                }
            }
        }
        usage
    }
}

/// The most calls in flight per slice of the wall time, the peak, and when it was reached.
fn in_flight(starts: &[u64], ends: &[u64], wall: u64) -> (Vec<u32>, u32, u64) {
    let mut edges: Vec<(u64, i32)> = starts
        .iter()
        .map(|&t| (t, 1))
        .chain(ends.iter().map(|&t| (t, -1)))
        .collect();
    // Ends before starts at the same instant: back-to-back calls do not overlap.
    edges.sort_unstable();
    let buckets = CONCURRENCY_BUCKETS;
    let span = wall.max(1) as f64;
    let mut curve = vec![0u32; buckets];
    let mut level: i64 = 0;
    let (mut peak, mut peak_at) = (0u32, 0u64);
    let mut bucket = 0usize;
    for (t, delta) in edges {
        let b = (((t as f64) / span) * buckets as f64) as usize;
        let b = b.min(buckets - 1);
        while bucket < b {
            bucket += 1;
            curve[bucket] = curve[bucket].max(level.max(0) as u32);
        }
        level += i64::from(delta);
        let now = level.max(0) as u32;
        curve[bucket] = curve[bucket].max(now);
        if now > peak {
            peak = now;
            peak_at = t;
        }
    }
    (curve, peak, peak_at)
}

/// Builds the view from trace text. Bad lines are skipped and noted; a partial last line
/// (a cut trace) is noted as such.
pub(crate) fn gather(text: &str, title: String, prices: &Prices) -> Gathered {
    let mut builder = Builder {
        prices,
        runs: Vec::new(),
        run_index: HashMap::new(),
        finals: HashMap::new(),
        models: Vec::new(),
        model_index: HashMap::new(),
        calls: Vec::new(),
        call_index: HashMap::new(),
        batches: HashMap::new(),
        wall_ms: 0,
    };
    let mut notices = Vec::new();
    let mut events = 0;
    let mut bad = 0usize;
    let mut first_bad = 0usize;
    let lines: Vec<&str> = text.split('\n').collect();
    let cut = !text.is_empty() && !text.ends_with('\n');
    for (number, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match TraceLine::parse(line) {
            Ok(event) => {
                events += 1;
                builder.event(event, line);
            }
            _ if cut && number + 1 == lines.len() => notices.push(format!(
                "The trace was cut short: its last line (line {}) is incomplete and was \
                 skipped. The run was probably killed while it wrote.",
                number + 1
            )),
            _ => {
                if bad == 0 {
                    first_bad = number + 1;
                }
                bad += 1;
            }
        }
    }
    if bad > 0 {
        notices.push(format!(
            "{bad} line(s) were not trace events and were skipped (the first is line \
             {first_bad})."
        ));
    }
    if events == 0 {
        return Gathered { view: None, events };
    }
    Gathered {
        view: Some(builder.finish(title, notices)),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_overlaps_not_back_to_back_calls() {
        let (curve, peak, at) = in_flight(&[0, 10, 10, 50], &[10, 40, 30, 60], 60);
        assert_eq!(peak, 2);
        assert_eq!(at, 10);
        assert_eq!(curve.len(), CONCURRENCY_BUCKETS);
        assert_eq!(*curve.iter().max().unwrap_or(&0), 2);
        assert_eq!(in_flight(&[], &[], 0).1, 0);
    }

    #[test]
    fn previews_cut_on_characters() {
        assert_eq!(preview("héllo", 2), "hé…");
        assert_eq!(preview("hi", 5), "hi");
        assert_eq!(preview("hi", 0), "");
    }
}
