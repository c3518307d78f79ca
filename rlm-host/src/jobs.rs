//! Job files (`JOBS.jsonl`): one job per line, validated whole before any job starts, then
//! read again job by job, so a file of any size is never held in memory.
//!
//! A line is a JSON object: `{"id", "query"}` plus optional `"context"` (a string, an array
//! or an object), `"context_path"` (a file or directory read like `rlm run --context`),
//! `"expected"` (any JSON value, for scoring), `"output_schema"` (a JSON Schema object),
//! `"model"` and `"sub_model"` (override the batch's models for this job), and `"meta"`
//! (anything, ignored: a place for the caller's own labels). Any other key is refused, so a
//! misspelt `"contxt"` is an error rather than a job silently run without its context. Blank
//! lines are skipped.
//!
//! ```
//! use rlm_host::jobs::Job;
//!
//! let job = Job::parse(r#"{"id": "q1", "query": "Who?", "context": ["a", "b"]}"#).unwrap();
//! assert_eq!(job.id, "q1");
//! assert!(Job::parse(r#"{"id": "q1"}"#).is_err(), "a query is required");
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::HostError;

/// The longest job id, in bytes (ids name trace files and Redis entries).
pub const MAX_ID_BYTES: usize = 256;

/// The keys a job line may have.
pub const JOB_KEYS: [&str; 9] = [
    "id",
    "query",
    "context",
    "context_path",
    "expected",
    "output_schema",
    "model",
    "sub_model",
    "meta",
];

/// One job: a query over a context, with what it is scored against.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Unique within the file (a number in the file is taken as its decimal text).
    pub id: String,
    /// The question.
    pub query: String,
    /// The context given inline: a string, an array or an object.
    pub context: Option<Value>,
    /// A file or directory to read the context from.
    pub context_path: Option<PathBuf>,
    /// The expected answer, for scoring.
    pub expected: Option<Value>,
    /// A JSON Schema (an object) the answer must meet.
    pub output_schema: Option<Value>,
    /// The root model of this job (default: the batch's).
    pub model: Option<String>,
    /// The sub model of this job (default: the batch's).
    pub sub_model: Option<String>,
}

impl Job {
    /// A job with `id` and `query` and nothing else.
    pub fn new(id: impl Into<String>, query: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            query: query.into(),
            context: None,
            context_path: None,
            expected: None,
            output_schema: None,
            model: None,
            sub_model: None,
        }
    }

    /// Parses and checks one job line.
    ///
    /// # Errors
    /// A message saying what is wrong with the line (not JSON, not an object, a missing or
    /// empty `id` or `query`, a key of the wrong type, an unknown key).
    pub fn parse(line: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        Self::from_value(value)
    }

    /// Checks a job given as a JSON value (a line of `JOBS.jsonl`, an entry of a queue, a
    /// Python dict).
    ///
    /// # Errors
    /// As [`parse`](Self::parse).
    pub fn from_value(value: Value) -> Result<Self, String> {
        let Value::Object(mut map) = value else {
            return Err("a job must be a JSON object with \"id\" and \"query\"".to_owned());
        };
        if let Some(unknown) = map.keys().find(|k| !JOB_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "unknown key {unknown:?} (a job has {})",
                JOB_KEYS.join(", ")
            ));
        }
        let id = match map.remove("id") {
            Some(Value::String(id)) => id,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err("\"id\" must be a string or a number".to_owned()),
            None => return Err("\"id\" is missing".to_owned()),
        };
        check_id(&id)?;
        let query = match map.remove("query") {
            Some(Value::String(q)) if !q.trim().is_empty() => q,
            Some(Value::String(_)) => return Err("\"query\" is empty".to_owned()),
            Some(_) => return Err("\"query\" must be a string".to_owned()),
            None => return Err("\"query\" is missing".to_owned()),
        };
        let context = match map.remove("context") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Array(_) | Value::Object(_))) => Some(v),
            Some(_) => {
                return Err("\"context\" must be a string, an array or an object".to_owned());
            }
        };
        let context_path = match map.remove("context_path") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) if !p.trim().is_empty() => Some(PathBuf::from(p)),
            Some(_) => return Err("\"context_path\" must be a non-empty string".to_owned()),
        };
        if context.is_some() && context_path.is_some() {
            return Err("give \"context\" or \"context_path\", not both".to_owned());
        }
        let output_schema = match map.remove("output_schema") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v),
            Some(_) => return Err("\"output_schema\" must be a JSON Schema object".to_owned()),
        };
        let model = model_name(map.remove("model"), "model")?;
        let sub_model = model_name(map.remove("sub_model"), "sub_model")?;
        let expected = map.remove("expected").filter(|v| !v.is_null());
        Ok(Self {
            id,
            query,
            context,
            context_path,
            expected,
            output_schema,
            model,
            sub_model,
        })
    }

    /// The job as a JSON object (the keys of a job line), e.g. to put it on a queue.
    pub fn to_value(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), self.id.clone().into());
        map.insert("query".into(), self.query.clone().into());
        if let Some(context) = &self.context {
            map.insert("context".into(), context.clone());
        }
        if let Some(path) = &self.context_path {
            map.insert(
                "context_path".into(),
                path.to_string_lossy().into_owned().into(),
            );
        }
        if let Some(expected) = &self.expected {
            map.insert("expected".into(), expected.clone());
        }
        if let Some(schema) = &self.output_schema {
            map.insert("output_schema".into(), schema.clone());
        }
        if let Some(model) = &self.model {
            map.insert("model".into(), model.clone().into());
        }
        if let Some(sub) = &self.sub_model {
            map.insert("sub_model".into(), sub.clone().into());
        }
        Value::Object(map)
    }
}

fn check_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("\"id\" is empty".to_owned());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!(
            "\"id\" is {} bytes long (at most {MAX_ID_BYTES})",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("\"id\" holds a control character".to_owned());
    }
    Ok(())
}

fn model_name(value: Option<Value>, key: &str) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(Some(m.trim().to_owned())),
        Some(_) => Err(format!("\"{key}\" must be a non-empty string")),
    }
}

/// A job line that cannot be used: where it is and why.
fn bad_line(path: &Path, line: u64, why: &str) -> HostError {
    HostError::Usage(format!("{}: line {line}: {why}", path.display()))
}

/// Reads the lines of a job file one at a time, each at most `max_line_bytes` (0: no limit).
pub struct JobLines<R> {
    reader: R,
    path: PathBuf,
    line: u64,
    max_line_bytes: usize,
    buffer: Vec<u8>,
}

impl JobLines<BufReader<File>> {
    /// Opens `path`.
    ///
    /// # Errors
    /// [`HostError::Input`] when it cannot be opened.
    pub fn open(path: &Path, max_line_bytes: usize) -> Result<Self, HostError> {
        let file = File::open(path).map_err(|e| {
            HostError::Input(format!("cannot read the job file {}: {e}", path.display()))
        })?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(HostError::Input(format!(
                "the job file {} is a directory",
                path.display()
            )));
        }
        Ok(Self::new(
            BufReader::with_capacity(1 << 16, file),
            path,
            max_line_bytes,
        ))
    }
}

impl<R: BufRead> JobLines<R> {
    /// Reads jobs from `reader`; `path` names it in errors.
    pub fn new(reader: R, path: &Path, max_line_bytes: usize) -> Self {
        Self {
            reader,
            path: path.to_owned(),
            line: 0,
            max_line_bytes,
            buffer: Vec::new(),
        }
    }

    /// The next job and its line number; `None` at the end.
    ///
    /// # Errors
    /// [`HostError::Usage`] for a bad line (naming it), [`HostError::Input`] for a read error.
    pub fn next_job(&mut self) -> Result<Option<(u64, Job)>, HostError> {
        loop {
            self.buffer.clear();
            self.line += 1;
            let limit = match self.max_line_bytes {
                0 => u64::MAX,
                max => u64::try_from(max).map_or(u64::MAX, |m| m.saturating_add(2)),
            };
            let read = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buffer)
                .map_err(|e| {
                    HostError::Input(format!(
                        "cannot read the job file {}: {e}",
                        self.path.display()
                    ))
                })?;
            if read == 0 {
                return Ok(None);
            }
            if self.buffer.last() == Some(&b'\n') {
                self.buffer.pop();
                if self.buffer.last() == Some(&b'\r') {
                    self.buffer.pop();
                }
            }
            if self.max_line_bytes != 0 && self.buffer.len() > self.max_line_bytes {
                return Err(bad_line(
                    &self.path,
                    self.line,
                    &format!(
                        "longer than --max-context-bytes ({} bytes); put a large context in a \
                         file and name it with \"context_path\", or raise the limit",
                        self.max_line_bytes
                    ),
                ));
            }
            let Ok(text) = std::str::from_utf8(&self.buffer) else {
                return Err(bad_line(&self.path, self.line, "not valid UTF-8"));
            };
            if text.trim().is_empty() {
                continue;
            }
            return match Job::parse(text) {
                Ok(job) => Ok(Some((self.line, job))),
                Err(why) => Err(bad_line(&self.path, self.line, &why)),
            };
        }
    }
}

impl<R: BufRead> Iterator for JobLines<R> {
    type Item = Result<Job, HostError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_job().transpose().map(|r| r.map(|(_, job)| job))
    }
}

/// What a check of a whole job file found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Jobs in the file.
    pub jobs: u64,
    /// Jobs with an `expected` answer.
    pub with_expected: u64,
    /// Every model a job names (beside the batch's own), each once.
    pub models: Vec<String>,
}

/// Checks every line of the job file `path` before any job runs: each a valid job, every id
/// unique. Only the ids are kept (at most [`MAX_ID_BYTES`] each), never the jobs.
/// `check` sees every job as it is read (e.g. to refuse a model without a price).
///
/// # Errors
/// [`HostError::Usage`] naming the first bad line (a duplicate id names both lines);
/// [`HostError::Input`] when the file cannot be read.
pub fn scan(
    path: &Path,
    max_line_bytes: usize,
    mut check: impl FnMut(&Job) -> Result<(), String>,
) -> Result<Scan, HostError> {
    let mut lines = JobLines::open(path, max_line_bytes)?;
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut models: HashSet<String> = HashSet::new();
    let mut scan = Scan::default();
    while let Some((line, job)) = lines.next_job()? {
        if let Some(first) = seen.get(&job.id) {
            return Err(bad_line(
                path,
                line,
                &format!("duplicate id {:?} (first on line {first})", job.id),
            ));
        }
        check(&job).map_err(|why| bad_line(path, line, &why))?;
        scan.jobs += 1;
        scan.with_expected += u64::from(job.expected.is_some());
        for model in [&job.model, &job.sub_model].into_iter().flatten() {
            if models.len() < 1000 && models.insert(model.clone()) {
                scan.models.push(model.clone());
            }
        }
        seen.insert(job.id, line);
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Result<Job, String>> {
        JobLines::new(text.as_bytes(), Path::new("jobs.jsonl"), 1000)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn job_lines_are_checked_key_by_key() {
        let job = Job::parse(
            r#"{"id": 7, "query": "q", "context_path": "a.txt", "expected": 3, "model": " m ", "meta": {"k": 1}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job.id, "7");
        assert_eq!(job.context_path, Some(PathBuf::from("a.txt")));
        assert_eq!(job.expected, Some(Value::from(3)));
        assert_eq!(job.model.as_deref(), Some("m"));
        for (line, why) in [
            ("[1]", "JSON object"),
            ("{", "not a JSON object"),
            (r#"{"query": "q"}"#, "\"id\" is missing"),
            (r#"{"id": "", "query": "q"}"#, "\"id\" is empty"),
            (r#"{"id": true, "query": "q"}"#, "string or a number"),
            (r#"{"id": "a"}"#, "\"query\" is missing"),
            (r#"{"id": "a", "query": " "}"#, "\"query\" is empty"),
            (
                r#"{"id": "a", "query": "q", "contxt": "x"}"#,
                "unknown key \"contxt\"",
            ),
            (
                r#"{"id": "a", "query": "q", "context": 5}"#,
                "\"context\" must be",
            ),
            (
                r#"{"id": "a", "query": "q", "context": "x", "context_path": "p"}"#,
                "not both",
            ),
            (
                r#"{"id": "a", "query": "q", "output_schema": "int"}"#,
                "JSON Schema object",
            ),
            (
                r#"{"id": "a", "query": "q", "model": ""}"#,
                "\"model\" must be",
            ),
        ] {
            let error = Job::parse(line).err().unwrap_or_default();
            assert!(error.contains(why), "{line}: {error}");
        }
        let long = format!(
            r#"{{"id": "{}", "query": "q"}}"#,
            "x".repeat(MAX_ID_BYTES + 1)
        );
        assert!(Job::parse(&long).is_err());
        // A job goes to a queue and back unchanged.
        assert_eq!(Job::from_value(job.to_value()), Ok(job));
    }

    #[test]
    fn lines_are_numbered_blank_lines_skipped_and_long_lines_refused() {
        let read = lines("\n{\"id\": \"a\", \"query\": \"q\"}\r\n\n{\"id\": \"b\"}\n");
        assert_eq!(read.len(), 2);
        assert!(read[0].is_ok());
        let error = read[1].clone().err().unwrap_or_default();
        assert!(error.contains("jobs.jsonl: line 4:"), "{error}");
        let long = format!("{{\"id\": \"a\", \"query\": \"{}\"}}\n", "q".repeat(2000));
        let error = lines(&long)[0].clone().err().unwrap_or_default();
        assert!(error.contains("line 1: longer than"), "{error}");
        let error = JobLines::new(&b"\xff\n"[..], Path::new("j"), 0)
            .next()
            .and_then(Result::err)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("UTF-8"), "{error}");
    }

    #[test]
    fn a_scan_names_the_line_of_a_duplicate_id() {
        let path = std::env::temp_dir().join(format!("rlm-jobs-dup-{}.jsonl", std::process::id()));
        std::fs::write(
            &path,
            "{\"id\": \"a\", \"query\": \"q\"}\n{\"id\": \"b\", \"query\": \"q\", \"model\": \"x\"}\n{\"id\": \"a\", \"query\": \"q\"}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let error = scan(&path, 0, |_| Ok(())).err().map(|e| e.to_string());
        let refused = scan(&path, 0, |job| {
            if job.model.is_some() {
                Err("no price".to_owned())
            } else {
                Ok(())
            }
        })
        .err()
        .map(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        let error = error.unwrap_or_default();
        assert!(
            error.contains("line 3: duplicate id \"a\" (first on line 1)"),
            "{error}"
        );
        assert!(refused.unwrap_or_default().contains("line 2: no price"));
    }
}
