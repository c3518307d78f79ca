//! Result files (`RESULTS.jsonl`): one line per finished job, written whole and at once as
//! the job finishes, so a process killed at any moment leaves only whole lines; scoring; and
//! the summary of a results file.
//!
//! A line: `{"id", "answer", "stopped", "iterations", "elapsed_ms", "usage", "cost_usd",
//! "sub_calls", "failed_sub_calls", "warnings", "error": null | {"message", "kind"},
//! "correct"?, "trace"?}`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::HostError;

/// A model's calls and tokens in a result line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineUsage {
    /// Calls that returned.
    pub calls: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// What a job cost, in USD.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineCost {
    /// The job's total.
    pub total: f64,
    /// Per model.
    pub by_model: BTreeMap<String, f64>,
    /// Models without a price (their calls counted as free).
    #[serde(default)]
    pub unpriced: Vec<String>,
}

/// Why a job has no result: `kind` is one of `input` (its context could not be read),
/// `usage` (settings the run refused), `server` (the model server failed), `auth`,
/// `budget` (`--total-max-cost` spent, or `--max-time` passed while its code would not
/// stop), `attempts` (a queued job whose workers died `--max-attempts` times), `internal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// What went wrong, in one line.
    pub message: String,
    /// The failure kind.
    pub kind: String,
}

impl JobFailure {
    /// A failure of `kind` saying `message`.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: kind.to_owned(),
        }
    }
}

/// One line of `RESULTS.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job's id.
    pub id: String,
    /// The answer (a string; `null` when the job failed).
    pub answer: Value,
    /// Why the run stopped (`final`, `max_iterations`, ...; `null` when the job failed).
    pub stopped: Option<String>,
    /// Root turns.
    pub iterations: u64,
    /// Wall time of the job, context loading included.
    pub elapsed_ms: u64,
    /// Calls and tokens per model.
    pub usage: BTreeMap<String, LineUsage>,
    /// Cost by the batch's prices.
    pub cost_usd: LineCost,
    /// Calls below the root.
    pub sub_calls: u64,
    /// Of those, the failed ones.
    pub failed_sub_calls: u64,
    /// Why the answer may not be trusted as it is.
    pub warnings: Vec<String>,
    /// Why the job has no result, or `null`.
    pub error: Option<JobFailure>,
    /// Whether the answer matches `expected` (only when scored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// The job's trace file (with `--trace-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

impl JobResult {
    /// The line of a job that failed with `failure` after `elapsed_ms`.
    pub fn failed(id: &str, failure: JobFailure, elapsed_ms: u64) -> Self {
        Self {
            id: id.to_owned(),
            answer: Value::Null,
            stopped: None,
            iterations: 0,
            elapsed_ms,
            usage: BTreeMap::new(),
            cost_usd: LineCost::default(),
            sub_calls: 0,
            failed_sub_calls: 0,
            warnings: Vec::new(),
            error: Some(failure),
            correct: None,
            trace: None,
        }
    }

    /// The answer as text (a JSON answer as compact JSON; none: empty).
    pub fn answer_text(&self) -> String {
        match &self.answer {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }

    /// The line as written: compact JSON and a newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|e| {
            // Every field serializes; a failure would be a bug, and still a whole line.
            format!(
                "{{\"id\":{},\"error\":{{\"message\":\"cannot write the result: {e}\",\"kind\":\"internal\"}}}}",
                Value::from(self.id.clone())
            )
        });
        line.push('\n');
        line
    }
}

/// How answers are compared with `expected` (`--score`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Score {
    /// The answer, trimmed, equals the expected text (a non-string `expected` compares as
    /// its JSON text). The default for jobs with `expected`.
    #[default]
    Exact,
    /// The answer contains the expected text, ignoring case.
    Contains,
    /// The answer parsed as JSON equals the expected value (numbers by value: `3` is `3.0`).
    Json,
    /// No scoring: no `correct` key.
    None,
}

impl Score {
    /// The flag's word: `exact`, `contains`, `json`, `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Score::Exact => "exact",
            Score::Contains => "contains",
            Score::Json => "json",
            Score::None => "none",
        }
    }

    /// The score a word names ([`as_str`](Self::as_str)'s words).
    pub fn from_name(name: &str) -> Option<Self> {
        [Score::Exact, Score::Contains, Score::Json, Score::None]
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// `correct` for `answer` against `expected` (`None` without `expected`, or `Score::None`).
    /// A failed job with `expected` is not correct.
    pub fn judge(self, answer: Option<&Value>, expected: Option<&Value>) -> Option<bool> {
        let expected = expected?;
        if self == Score::None {
            return None;
        }
        let Some(answer) = answer.filter(|a| !a.is_null()) else {
            return Some(false);
        };
        let text = match answer {
            Value::String(text) => text.trim().to_owned(),
            other => other.to_string(),
        };
        let wanted = match expected {
            Value::String(text) => text.trim().to_owned(),
            other => other.to_string(),
        };
        Some(match self {
            Score::Exact => text == wanted,
            Score::Contains => text.to_lowercase().contains(&wanted.to_lowercase()),
            Score::Json => {
                let parsed = match answer {
                    Value::String(text) => serde_json::from_str(strip_fence(text)).ok(),
                    other => Some(other.clone()),
                };
                parsed.is_some_and(|value| json_equal(&value, expected))
            }
            Score::None => return None,
        })
    }
}

/// The inside of a Markdown code fence, if `text` is one.
fn strip_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let rest = rest.split_once('\n').map_or("", |(_, body)| body);
    rest.trim_end().strip_suffix("```").unwrap_or(rest).trim()
}

/// JSON equality with numbers compared by value.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// What a results file held when it was opened.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Ids with a line (failed ones too, unless they were removed for a retry).
    pub ids: HashSet<String>,
    /// Lines kept.
    pub lines: u64,
    /// Failed lines removed for `--retry-failed`.
    pub removed_failed: u64,
    /// Bytes of a torn last line cut off (a process killed while writing it).
    pub repaired_bytes: u64,
}

/// A results file open for appending: every line one write of a whole buffer to a file
/// opened with `O_APPEND`.
#[derive(Debug)]
pub struct ResultsFile {
    file: File,
    path: PathBuf,
}

impl ResultsFile {
    /// Opens (or creates) `path`, reading the ids it already holds. A torn last line (no
    /// newline: the process was killed as it wrote) is cut off; with `retry_failed`, the
    /// lines of failed jobs are removed (the file is rewritten beside itself and renamed
    /// over it), so those jobs run again and each id keeps one line.
    ///
    /// # Errors
    /// [`HostError::Input`] when the file cannot be created, read or written, or holds a
    /// whole line that is not a result (naming the line).
    pub fn open(path: &Path, retry_failed: bool) -> Result<(Self, Finished), HostError> {
        let io = |what: &str, e: std::io::Error| {
            HostError::Input(format!("cannot {what} the output {}: {e}", path.display()))
        };
        if path.is_dir() {
            return Err(HostError::Input(format!(
                "the output {} is a directory",
                path.display()
            )));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| io("create", e))?;
        let mut finished = Finished::default();
        let mut failed = 0u64;
        let mut good_end = 0u64;
        {
            let mut reader = BufReader::new(&mut file);
            let mut buffer = Vec::new();
            let mut line = 0u64;
            loop {
                buffer.clear();
                let read = reader
                    .read_until(b'\n', &mut buffer)
                    .map_err(|e| io("read", e))?;
                if read == 0 {
                    break;
                }
                line += 1;
                if buffer.last() != Some(&b'\n') {
                    finished.repaired_bytes = read as u64;
                    break;
                }
                let result = parse_line(&buffer).ok_or_else(|| {
                    HostError::Input(format!(
                        "the output {} has a line that is not a result (line {line}); \
                         give another --output, or repair the file",
                        path.display()
                    ))
                })?;
                good_end += read as u64;
                if result.error.is_some() {
                    failed += 1;
                }
                if finished.ids.insert(result.id) {
                    finished.lines += 1;
                }
            }
        }
        if finished.repaired_bytes > 0 {
            file.set_len(good_end).map_err(|e| io("repair", e))?;
        }
        // Appends go to the end whatever the position; reads above moved it.
        file.seek(SeekFrom::End(0)).map_err(|e| io("read", e))?;
        let mut results = Self {
            file,
            path: path.to_owned(),
        };
        if retry_failed && failed > 0 {
            results.remove_failed(&mut finished)?;
        }
        Ok((results, finished))
    }

    /// Rewrites the file without the lines of failed jobs.
    fn remove_failed(&mut self, finished: &mut Finished) -> Result<(), HostError> {
        let io = |what: &str, e: std::io::Error| {
            HostError::Input(format!(
                "cannot {what} the output {}: {e}",
                self.path.display()
            ))
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = self
            .path
            .with_file_name(format!(".{name}.retry-{}", std::process::id()));
        {
            let source = File::open(&self.path).map_err(|e| io("read", e))?;
            let mut out = std::io::BufWriter::new(File::create(&temp).map_err(|e| io("write", e))?);
            let mut reader = BufReader::new(source);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                if reader
                    .read_until(b'\n', &mut buffer)
                    .map_err(|e| io("read", e))?
                    == 0
                {
                    break;
                }
                match parse_line(&buffer) {
                    Some(result) if result.error.is_some() => {
                        finished.ids.remove(&result.id);
                        finished.lines -= 1;
                        finished.removed_failed += 1;
                    }
                    _ => out.write_all(&buffer).map_err(|e| io("write", e))?,
                }
            }
            let file = out.into_inner().map_err(|e| io("write", e.into_error()))?;
            file.sync_all().map_err(|e| io("write", e))?;
        }
        std::fs::rename(&temp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            io("replace", e)
        })?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| io("reopen", e))?;
        Ok(())
    }

    /// Appends `result` as one whole line, in one write.
    ///
    /// # Errors
    /// [`HostError::Input`] when the write fails (the disk is full, the file went away).
    pub fn append(&mut self, result: &JobResult) -> Result<(), HostError> {
        let line = result.to_line();
        self.file.write_all(line.as_bytes()).map_err(|e| {
            HostError::Input(format!(
                "cannot write the output {}: {e}",
                self.path.display()
            ))
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn parse_line(bytes: &[u8]) -> Option<JobResult> {
    serde_json::from_slice(bytes).ok()
}

/// The figures of a results file: what the summary on stderr and `--json` show, each the sum
/// (or the percentile) of the lines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Lines (jobs finished, one line each).
    pub results: u64,
    /// Jobs that gave their final answer.
    pub answered: u64,
    /// Jobs a budget stopped before a final answer (`stopped` other than `final`).
    pub unfinished: u64,
    /// Jobs with an `error`.
    pub failed: u64,
    /// Jobs with a `correct` key.
    pub scored: u64,
    /// Of those, correct.
    pub correct: u64,
    /// `correct / scored` (`null` when nothing was scored).
    pub accuracy: Option<f64>,
    /// Calls and tokens per model, over all lines.
    pub usage: BTreeMap<String, LineUsage>,
    /// USD over all lines, and per model.
    pub cost_usd: LineCost,
    /// Median and 95th percentile of `elapsed_ms`.
    pub wall_ms: Percentiles,
    /// Mean root turns per job (`null` without lines).
    pub mean_turns: Option<f64>,
    /// Calls below the root, over all lines.
    pub sub_calls: u64,
    /// Of those, failed.
    pub failed_sub_calls: u64,
}

/// Percentiles of job wall times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median (nearest rank).
    pub p50: u64,
    /// 95th percentile (nearest rank).
    pub p95: u64,
}

/// Sums result lines into a [`Summary`].
#[derive(Debug, Default)]
pub struct Summarizer {
    summary: Summary,
    walls: Vec<u64>,
    turns: u64,
}

impl Summarizer {
    /// Adds one line.
    pub fn add(&mut self, result: &JobResult) {
        let s = &mut self.summary;
        s.results += 1;
        match (&result.error, result.stopped.as_deref()) {
            (Some(_), _) => s.failed += 1,
            (None, Some("final")) => s.answered += 1,
            (None, _) => s.unfinished += 1,
        }
        if let Some(correct) = result.correct {
            s.scored += 1;
            s.correct += u64::from(correct);
        }
        for (model, usage) in &result.usage {
            let total = s.usage.entry(model.clone()).or_default();
            total.calls += usage.calls;
            total.prompt_tokens += usage.prompt_tokens;
            total.completion_tokens += usage.completion_tokens;
        }
        s.cost_usd.total += result.cost_usd.total;
        for (model, usd) in &result.cost_usd.by_model {
            *s.cost_usd.by_model.entry(model.clone()).or_default() += usd;
        }
        for model in &result.cost_usd.unpriced {
            if !s.cost_usd.unpriced.contains(model) {
                s.cost_usd.unpriced.push(model.clone());
            }
        }
        s.sub_calls += result.sub_calls;
        s.failed_sub_calls += result.failed_sub_calls;
        self.walls.push(result.elapsed_ms);
        self.turns += result.iterations;
    }

    /// The summary of the lines added.
    pub fn finish(mut self) -> Summary {
        let mut s = self.summary;
        s.accuracy = (s.scored > 0).then(|| s.correct as f64 / s.scored as f64);
        s.mean_turns = (s.results > 0).then(|| self.turns as f64 / s.results as f64);
        self.walls.sort_unstable();
        s.wall_ms = Percentiles {
            p50: nearest_rank(&self.walls, 50),
            p95: nearest_rank(&self.walls, 95),
        };
        s
    }
}

/// The nearest-rank percentile of sorted `values` (0 when empty).
fn nearest_rank(values: &[u64], percent: usize) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = (percent * values.len()).div_ceil(100).max(1);
    values[rank.min(values.len()) - 1]
}

/// Reads the results file `path` line by line into a [`Summary`] (a torn last line is not
/// counted).
///
/// # Errors
/// [`HostError::Input`] when it cannot be read.
pub fn summarize(path: &Path) -> Result<Summary, HostError> {
    let file = File::open(path)
        .map_err(|e| HostError::Input(format!("cannot read the output {}: {e}", path.display())))?;
    let mut reader = BufReader::new(file);
    let mut summarizer = Summarizer::default();
    let mut seen = HashSet::new();
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = reader.read_until(b'\n', &mut buffer).map_err(|e| {
            HostError::Input(format!("cannot read the output {}: {e}", path.display()))
        })?;
        if read == 0 || buffer.last() != Some(&b'\n') {
            break;
        }
        if let Some(result) = parse_line(&buffer) {
            if seen.insert(result.id.clone()) {
                summarizer.add(&result);
            }
        }
    }
    Ok(summarizer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(id: &str, answer: &str, ms: u64) -> JobResult {
        JobResult {
            answer: answer.into(),
            stopped: Some("final".into()),
            iterations: 2,
            error: None,
            ..JobResult::failed(id, JobFailure::new("internal", "x"), ms)
        }
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rlm-results-{name}-{}.jsonl", std::process::id()))
    }

    #[test]
    fn scores_compare_as_documented() {
        let e = |v: Value| Some(v);
        let a = |s: &str| Value::from(s);
        assert_eq!(
            Score::Exact.judge(Some(&a(" Paris ")), e("Paris".into()).as_ref()),
            Some(true)
        );
        assert_eq!(
            Score::Exact.judge(Some(&a("paris")), e("Paris".into()).as_ref()),
            Some(false)
        );
        assert_eq!(
            Score::Exact.judge(Some(&a("42")), e(42.into()).as_ref()),
            Some(true)
        );
        assert_eq!(
            Score::Contains.judge(Some(&a("It is PARIS.")), e("paris".into()).as_ref()),
            Some(true)
        );
        assert_eq!(
            Score::Json.judge(
                Some(&a("```json\n{\"n\": 3.0, \"xs\": [1]}\n```")),
                e(serde_json::json!({"xs": [1], "n": 3})).as_ref()
            ),
            Some(true)
        );
        assert_eq!(
            Score::Json.judge(Some(&a("three")), e(3.into()).as_ref()),
            Some(false)
        );
        assert_eq!(
            Score::Exact.judge(None, e("x".into()).as_ref()),
            Some(false)
        );
        assert_eq!(Score::Exact.judge(Some(&a("x")), None), None);
        assert_eq!(
            Score::None.judge(Some(&a("x")), e("x".into()).as_ref()),
            None
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_and_failed_lines_go_for_a_retry() {
        let path = temp("torn");
        let mut failed = JobResult::failed("b", JobFailure::new("server", "down"), 5);
        failed.correct = Some(false);
        let text = format!(
            "{}{}{}",
            answered("a", "1", 10).to_line(),
            failed.to_line(),
            &answered("c", "3", 10).to_line()[..20]
        );
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let (mut file, finished) =
            ResultsFile::open(&path, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(finished.lines, 2);
        assert_eq!(finished.repaired_bytes, 20);
        assert!(finished.ids.contains("a") && finished.ids.contains("b"));
        file.append(&answered("c", "3", 30))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        let summary = summarize(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (summary.results, summary.answered, summary.failed),
            (3, 2, 1)
        );
        assert_eq!(summary.wall_ms, Percentiles { p50: 10, p95: 30 });
        assert_eq!((summary.scored, summary.accuracy), (1, Some(0.0)));

        let (_, finished) = ResultsFile::open(&path, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((finished.lines, finished.removed_failed), (2, 1));
        assert!(!finished.ids.contains("b"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 2);
        assert!(!text.contains("\"b\""));

        // A whole line that is not a result is not guessed at.
        std::fs::write(&path, "{\"id\": 1}\n").unwrap_or_else(|e| panic!("{e}"));
        let error = ResultsFile::open(&path, false).err().map(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        assert!(error.unwrap_or_default().contains("line 1"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 50), 50);
        assert_eq!(nearest_rank(&values, 95), 95);
        assert_eq!(nearest_rank(&[7], 95), 7);
        assert_eq!(nearest_rank(&[], 50), 0);
    }
}
