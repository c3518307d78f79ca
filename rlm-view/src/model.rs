//! From trace lines to the view model the page renders: runs and their turns, sub-calls as
//! columns in display order, batches, concurrency over time, the summary and cost.

use std::collections::{BTreeMap, HashMap};

use rlm_core::{CostReport, ModelUsage, Prices};
use serde::Serialize;
use serde_json::{Map, Value};

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

fn str_of(event: &Map<String, Value>, key: &str) -> Option<String> {
    event.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn u64_of(event: &Map<String, Value>, key: &str) -> Option<u64> {
    event.get(key).and_then(Value::as_u64)
}

fn usage_of(event: &Map<String, Value>) -> (u64, u64, u64) {
    let usage = event.get("usage").and_then(Value::as_object);
    let get = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    (
        get("prompt_tokens"),
        get("completion_tokens"),
        get("cached_tokens"),
    )
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

/// Whether a reply has a text FINAL / FINAL_VAR marker: at the start of a line (after
/// Markdown decoration), outside fenced code, the way the engine looks for one.
fn has_final_marker(reply: &str) -> bool {
    let mut fence: Option<String> = None;
    for line in reply.lines() {
        let trimmed = line.trim();
        let run: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        let is_fence = run.len() >= 3 && run.chars().all(|c| run.starts_with(c));
        match &fence {
            Some(open) => {
                let closes = is_fence
                    && run.len() >= open.len()
                    && run.starts_with(&open[..1])
                    && trimmed.len() == run.len();
                if closes {
                    fence = None;
                }
            }
            None if is_fence => fence = Some(run),
            None => {
                let text =
                    line.trim_start_matches(|c: char| c.is_whitespace() || "*>-#_".contains(c));
                if text.starts_with("FINAL(") || text.starts_with("FINAL_VAR(") {
                    return true;
                }
            }
        }
    }
    false
}

/// The id of the run an event belongs to: its `run` field, or `"0"` (traces before
/// recursion have one run).
fn run_id(event: &Map<String, Value>) -> String {
    match event.get("run") {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".to_owned(),
    }
}

struct Builder<'p> {
    prices: &'p Prices,
    runs: Vec<RunView>,
    run_index: HashMap<String, u32>,
    finals: HashMap<u32, Map<String, Value>>,
    models: Vec<String>,
    model_index: HashMap<String, u32>,
    calls: Vec<Call>,
    call_index: HashMap<(u32, u64), usize>,
    batches: HashMap<(u32, i64), BatchInfo>,
    wall_ms: u64,
}

impl<'p> Builder<'p> {
    fn run(&mut self, id: &str, event: &Map<String, Value>) -> u32 {
        if let Some(&index) = self.run_index.get(id) {
            return index;
        }
        let index = self.runs.len() as u32;
        let parent = id.rsplit_once('.').map(|(parent, _)| parent.to_owned());
        self.runs.push(RunView {
            id: id.to_owned(),
            depth: u64_of(event, "depth").unwrap_or(id.matches('.').count() as u64),
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

    fn call(&mut self, run: u32, event: &Map<String, Value>) -> &mut Call {
        let id = u64_of(event, "id").unwrap_or(0);
        let next = self.calls.len();
        let index = *self.call_index.entry((run, id)).or_insert(next);
        if index == next {
            let model = str_of(event, "model").unwrap_or_default();
            let model = self.model(&model);
            self.calls.push(Call {
                id,
                run,
                turn: u64_of(event, "turn").unwrap_or(0),
                batch: event.get("batch").and_then(Value::as_i64),
                index: event.get("index").and_then(Value::as_i64),
                model,
                status: status::UNFINISHED,
                ..Call::default()
            });
        }
        &mut self.calls[index]
    }

    fn event(&mut self, event: &Map<String, Value>) {
        let t_ms = u64_of(event, "t_ms").unwrap_or(self.wall_ms);
        self.wall_ms = self.wall_ms.max(t_ms);
        let id = run_id(event);
        let run = self.run(&id, event);
        let kind = event.get("event").and_then(Value::as_str).unwrap_or("");
        match kind {
            "run_start" => {
                let view = &mut self.runs[run as usize];
                view.query = str_of(event, "query").unwrap_or_default();
                view.root_model = str_of(event, "root_model").unwrap_or_default();
                view.sub_model = str_of(event, "sub_model").unwrap_or_default();
                if let Some(parent) = str_of(event, "parent") {
                    view.parent = Some(parent);
                }
            }
            "turn_start" => {
                let turn = u64_of(event, "turn").unwrap_or(0);
                Self::turn(&mut self.runs[run as usize], turn, t_ms);
            }
            "root_reply" => {
                let turn = u64_of(event, "turn").unwrap_or(0);
                let (prompt, completion, _) = usage_of(event);
                let view = Self::turn(&mut self.runs[run as usize], turn, t_ms);
                view.reply = str_of(event, "text");
                view.prompt_tokens = prompt;
                view.completion_tokens = completion;
                view.elapsed_ms = u64_of(event, "elapsed_ms").unwrap_or(0);
            }
            "code_block" => {
                let turn = u64_of(event, "turn").unwrap_or(0);
                let view = Self::turn(&mut self.runs[run as usize], turn, t_ms);
                view.blocks.push(BlockView {
                    code: str_of(event, "code").unwrap_or_default(),
                    output: str_of(event, "output").unwrap_or_default(),
                    error: str_of(event, "error"),
                    elapsed_ms: u64_of(event, "elapsed_ms").unwrap_or(0),
                });
            }
            "sub_call_start" => {
                let call = self.call(run, event);
                call.start = Some(t_ms);
                call.prompt = str_of(event, "prompt").unwrap_or_default();
            }
            "sub_call_end" => {
                let (prompt, completion, cached) = usage_of(event);
                let failed = event.get("error").is_some_and(|e| !e.is_null());
                let was_cached = event.get("cached").and_then(Value::as_bool) == Some(true);
                let call = self.call(run, event);
                call.end = Some(t_ms);
                call.latency = u64_of(event, "latency_ms");
                call.prompt_tokens = prompt;
                call.completion_tokens = completion;
                call.cached_tokens = cached;
                call.tokens = prompt.saturating_add(completion);
                call.status = match (failed, was_cached) {
                    (true, _) => status::FAILED,
                    (false, true) => status::CACHED,
                    (false, false) => status::OK,
                };
                call.response = match (str_of(event, "error"), str_of(event, "response")) {
                    (Some(error), _) => format!("Error: {error}"),
                    (None, Some(response)) => response,
                    (None, None) => String::new(),
                };
            }
            "batch_start" | "batch_end" => {
                let Some(batch) = event.get("batch").and_then(Value::as_i64) else {
                    return;
                };
                let info = self.batches.entry((run, batch)).or_default();
                info.turn = u64_of(event, "turn").unwrap_or(info.turn);
                info.total = u64_of(event, "total").unwrap_or(info.total);
                if kind == "batch_start" {
                    info.start = Some(t_ms);
                    info.max_concurrent = u64_of(event, "max_concurrent").unwrap_or(0);
                } else {
                    info.end = Some(t_ms);
                    info.failed = u64_of(event, "failed").unwrap_or(0);
                }
            }
            "run_error" => {
                self.runs[run as usize].error = str_of(event, "error");
            }
            "final" => {
                let view = &mut self.runs[run as usize];
                view.answer = str_of(event, "answer");
                view.stopped = str_of(event, "stopped");
                view.elapsed_ms = u64_of(event, "elapsed_ms");
                view.warnings = event
                    .get("warnings")
                    .and_then(Value::as_array)
                    .map(|w| {
                        w.iter()
                            .filter_map(|w| w.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                self.finals.insert(run, event.clone());
            }
            _ => {}
        }
    }

    fn finish(mut self, title: String, mut notices: Vec<String>) -> View {
        // Turns: held and refused answers.
        for run in &mut self.runs {
            let last_turn = run.turns.iter().map(|t| t.turn).max().unwrap_or(0);
            let held: Vec<u64> = run
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
                turn.held = held.contains(&turn.turn);
                turn.final_refused = !turn.held
                    && turn.turn < last_turn
                    && turn.reply.as_deref().is_some_and(has_final_marker);
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
        let top_final = self.finals.get(&(top as u32));
        let final_usage: Option<BTreeMap<String, ModelUsage>> = top_final
            .and_then(|f| f.get("usage"))
            .and_then(|u| serde_json::from_value(u.clone()).ok());
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
        let final_cost: Option<CostReport> = top_final
            .and_then(|f| f.get("cost_usd"))
            .and_then(|c| serde_json::from_value(c.clone()).ok());
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
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(event)) => {
                events += 1;
                builder.event(&event);
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
    fn final_markers_are_found_at_line_starts_only() {
        assert!(has_final_marker("done\n**FINAL(42)**"));
        assert!(has_final_marker("> FINAL_VAR(x)"));
        assert!(!has_final_marker("call `FINAL(x)` when done"));
        assert!(!has_final_marker("```repl\nFINAL(x)\n```"));
        assert!(!has_final_marker("~~~~\n```\nFINAL(x)\n~~~~~\n"));
        assert!(has_final_marker("```repl\nprint(1);\n```\nFINAL(1)"));
    }

    #[test]
    fn previews_cut_on_characters() {
        assert_eq!(preview("héllo", 2), "hé…");
        assert_eq!(preview("hi", 5), "hi");
        assert_eq!(preview("hi", 0), "");
    }
}
