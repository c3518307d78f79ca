//! Synthetic traces, shaped like `rlm run --trace` writes them, for tests and measurements.
//!
//! A run of two turns: the first splits the context and sends its sub-calls in
//! `llm_batch`es of `batch_size`, at most `max_concurrent` in flight (each call takes 50 to
//! 500 ms, deterministic from `seed`); the second gives the answer. With `children`, the
//! first turn starts that many child runs at depth 1 (ids `"0.1"`, `"0.2"`, ..., with `depth`,
//! `run` and `parent` fields on their events), which share the sub-calls.
//!
//! ```
//! use rlm_view::synth::{SynthOptions, trace};
//!
//! let text = trace(&SynthOptions { sub_calls: 10, batch_size: 4, ..Default::default() });
//! assert_eq!(text.matches("\"event\":\"sub_call_end\"").count(), 10);
//! assert_eq!(text.matches("\"event\":\"batch_start\"").count(), 3);
//! ```

use std::collections::BTreeMap;

use rlm_core::cost::Prices;
use rlm_core::usage::ModelUsage;
use serde_json::{Value, json};

/// The root model of synthetic traces.
pub const ROOT_MODEL: &str = "gpt-4o";
/// The sub model of synthetic traces.
pub const SUB_MODEL: &str = "gpt-4o-mini";
/// The query of synthetic traces.
pub const QUERY: &str = "Which documents mention the lighthouse, and why?";
/// The answer of synthetic traces that finish.
pub const ANSWER: &str = "Documents 3 and 17: the lighthouse is the meeting point.";

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Sub-calls in the whole trace.
    pub sub_calls: usize,
    /// Items per `llm_batch` (at least 1).
    pub batch_size: usize,
    /// Calls in flight at once per batch (at least 1).
    pub max_concurrent: usize,
    /// Child runs at depth 1 (0: no recursion). They and the root run share the sub-calls.
    pub children: usize,
    /// Write `depth` and `run` on every event (always, when there are children).
    pub run_ids: bool,
    /// Every n-th sub-call fails (0: none).
    pub fail_every: usize,
    /// Write the `final` event (false: the run was killed before it ended).
    pub finished: bool,
    /// Cut the last line in half, as a killed writer leaves it.
    pub cut: bool,
    /// Put `cost_usd` in the final event (priced by the built-in table).
    pub with_cost: bool,
    /// Seed of the latencies and token counts.
    pub seed: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            sub_calls: 100,
            batch_size: 1000,
            max_concurrent: 16,
            children: 0,
            run_ids: false,
            fail_every: 0,
            finished: true,
            cut: false,
            with_cost: true,
            seed: 7,
        }
    }
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Events of one run, with times.
struct Writer<'o> {
    options: &'o SynthOptions,
    events: Vec<(u64, u64, Value)>,
    seq: u64,
    rng: Rng,
    usage: BTreeMap<String, ModelUsage>,
    next_call: u64,
    failures: u64,
}

impl Writer<'_> {
    fn push(&mut self, t: u64, run: &str, mut event: Value) {
        if self.options.run_ids || self.options.children > 0 {
            if let Value::Object(map) = &mut event {
                map.insert("depth".into(), json!(run.matches('.').count()));
                map.insert("run".into(), json!(run));
            }
        }
        self.seq += 1;
        self.events.push((t, self.seq, event));
    }

    fn add_usage(&mut self, model: &str, prompt: u64, completion: u64, ok: bool) {
        let entry = self.usage.entry(model.to_owned()).or_default();
        if ok {
            entry.calls += 1;
            entry.prompt_tokens += prompt;
            entry.completion_tokens += completion;
        } else {
            entry.failed += 1;
        }
    }

    /// One run: two turns, `calls` sub-calls in batches; returns when it ended.
    fn run(
        &mut self,
        id: &str,
        parent: Option<&str>,
        start: u64,
        calls: usize,
        children: usize,
    ) -> u64 {
        let root_model = if parent.is_some() {
            SUB_MODEL
        } else {
            ROOT_MODEL
        };
        let mut start_event = json!({
            "event": "run_start",
            "query": if parent.is_some() { format!("Summarise part {id} of the context") } else { QUERY.to_owned() },
            "root_model": root_model,
            "sub_model": SUB_MODEL,
            "context": {"kind": "string", "chars": 12_000_000},
        });
        if let (Some(parent), Value::Object(map)) = (parent, &mut start_event) {
            map.insert("parent".into(), json!(parent));
        }
        self.push(start, id, start_event);
        let mut t = start + 2;
        self.push(t, id, json!({"event": "turn_start", "turn": 1}));
        let code0 = "print(context.len());\nprint(context[0..200]);";
        let code1 = "let chunks = chunk(context, 100000);\nlet prompts = chunks.map(|c| \"Does this mention the lighthouse? Say why.\\n\\n\" + c);\nlet answers = llm_batch(prompts);\nlet found = answers.filter(|a| !a.starts_with(\"NO\"));\nprint(`${found.len()} of ${answers.len()} chunks`);";
        let reply = format!(
            "Let me look at the context first.\n```repl\n{code0}\n```\nThen ask about each chunk.\n```repl\n{code1}\n```"
        );
        let (p, c) = (self.rng.range(2_000, 6_000), self.rng.range(80, 300));
        t += self.rng.range(600, 2_000);
        self.add_usage(root_model, p, c, true);
        self.push(
            t,
            id,
            json!({
                "event": "root_reply", "turn": 1, "text": reply,
                "usage": {"prompt_tokens": p, "completion_tokens": c}, "elapsed_ms": t - start,
            }),
        );
        t += 3;
        self.push(
            t,
            id,
            json!({
                "event": "code_block", "turn": 1, "block": 0, "code": code0,
                "output": "12000000\nDocument 1: The harbour town of ...", "elapsed_ms": 1,
            }),
        );
        // Child runs, started together.
        let mut end = t;
        let share = calls / (children + 1);
        let own = calls - share * children;
        for child in 1..=children {
            let child_id = format!("{id}.{child}");
            end = end.max(self.run(&child_id, Some(id), t + child as u64, share, 0));
        }
        // This run's own batches, one after another.
        let mut batch_no = 0u64;
        let mut batch_start = end;
        let mut left = own;
        let size = self.options.batch_size.max(1);
        let slots = self.options.max_concurrent.max(1);
        while left > 0 {
            let n = left.min(size);
            left -= n;
            batch_no += 1;
            self.push(batch_start, id, json!({
                "event": "batch_start", "turn": 1, "batch": batch_no, "total": n, "max_concurrent": slots,
            }));
            let mut free = vec![batch_start; slots.min(n)];
            let mut batch_end = batch_start;
            let mut failed = 0u64;
            for index in 0..n {
                let slot = (0..free.len()).min_by_key(|&s| free[s]).unwrap_or(0);
                let call_start = free[slot] + 1;
                let latency = self.rng.range(50, 500);
                let call_end = call_start + latency;
                free[slot] = call_end;
                batch_end = batch_end.max(call_end);
                self.next_call += 1;
                let call_id = self.next_call;
                let fails =
                    self.options.fail_every > 0 && call_id % self.options.fail_every as u64 == 0;
                let prompt = format!(
                    "Does this mention the lighthouse? Say why.\n\nDocument {call_id}: The harbour town of Vell ..."
                );
                self.push(call_start, id, json!({
                    "event": "sub_call_start", "turn": 1, "id": call_id, "batch": batch_no, "index": index,
                    "model": SUB_MODEL, "prompt": prompt, "prompt_chars": 100_000,
                }));
                let (p, c) = (self.rng.range(24_000, 26_000), self.rng.range(3, 40));
                let mut end_event = json!({
                    "event": "sub_call_end", "turn": 1, "id": call_id, "batch": batch_no, "index": index,
                    "model": SUB_MODEL, "latency_ms": latency,
                });
                if let Value::Object(map) = &mut end_event {
                    if fails {
                        failed += 1;
                        self.failures += 1;
                        map.insert(
                            "error".into(),
                            json!("server error (HTTP 500): upstream overloaded"),
                        );
                        map.insert(
                            "usage".into(),
                            json!({"prompt_tokens": 0, "completion_tokens": 0}),
                        );
                    } else {
                        map.insert(
                            "response".into(),
                            json!(if call_id % 7 == 0 {
                                "YES: the lighthouse is where they meet."
                            } else {
                                "NO"
                            }),
                        );
                        map.insert(
                            "usage".into(),
                            json!({"prompt_tokens": p, "completion_tokens": c}),
                        );
                    }
                }
                self.add_usage(SUB_MODEL, p, c, !fails);
                self.push(call_end, id, end_event);
            }
            self.push(batch_end + 1, id, json!({
                "event": "batch_end", "turn": 1, "batch": batch_no, "total": n, "failed": failed,
                "elapsed_ms": batch_end + 1 - batch_start,
            }));
            batch_start = batch_end + 2;
            end = batch_end + 2;
        }
        t = end + 1;
        self.push(t, id, json!({
            "event": "code_block", "turn": 1, "block": 1, "code": code1,
            "output": format!("{} of {} chunks", own / 7, own), "elapsed_ms": t.saturating_sub(start),
        }));
        t += 1;
        self.push(t, id, json!({"event": "turn_start", "turn": 2}));
        let (p, c) = (self.rng.range(6_000, 9_000), self.rng.range(20, 80));
        t += self.rng.range(500, 1_500);
        let answer = if parent.is_some() {
            format!("Part {id}: no lighthouse.")
        } else {
            ANSWER.to_owned()
        };
        self.add_usage(root_model, p, c, true);
        self.push(
            t,
            id,
            json!({
                "event": "root_reply", "turn": 2, "text": format!("FINAL({answer})"),
                "usage": {"prompt_tokens": p, "completion_tokens": c}, "elapsed_ms": 900,
            }),
        );
        if self.options.finished || parent.is_some() {
            let mut warnings = Vec::new();
            if self.failures > 0 && parent.is_none() {
                warnings.push(format!("the answer was given after {} of {} sub-calls failed; it may rest on their \"Error: ...\" strings", self.failures, self.next_call));
            }
            let mut event = json!({
                "event": "final", "answer": answer, "stopped": "final", "iterations": 2,
                "elapsed_ms": t - start, "usage": self.usage, "warnings": warnings,
            });
            if self.options.with_cost && parent.is_none() {
                let cost =
                    Prices::builtin().report(self.usage.iter().map(|(m, u)| (m.as_str(), u)));
                if let Value::Object(map) = &mut event {
                    map.insert("cost_usd".into(), json!(cost));
                }
            }
            self.push(t + 1, id, event);
        }
        t + 1
    }
}

/// A synthetic trace (JSON Lines, `t_ms` first on each line, in time order).
pub fn trace(options: &SynthOptions) -> String {
    let mut writer = Writer {
        options,
        events: Vec::new(),
        seq: 0,
        rng: Rng(options.seed),
        usage: BTreeMap::new(),
        next_call: 0,
        failures: 0,
    };
    writer.run("0", None, 0, options.sub_calls, options.children);
    let mut events = writer.events;
    events.sort_by_key(|(t, seq, _)| (*t, *seq));
    let mut out = String::with_capacity(events.len() * 300);
    for (t, _, event) in events {
        let body = event.to_string();
        // `{"t_ms":T,` then the event's own fields.
        out.push_str(&format!("{{\"t_ms\":{t},{}\n", &body[1..]));
    }
    if options.cut {
        // Drop the newline and the second half of the last line.
        out.pop();
        let start = out.rfind('\n').map_or(0, |i| i + 1);
        let keep = start + (out.len() - start) / 2;
        let keep = (keep..=out.len())
            .find(|&i| out.is_char_boundary(i))
            .unwrap_or(out.len());
        out.truncate(keep);
    }
    out
}
