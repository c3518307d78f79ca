//! Traces: JSON Lines, one [`Event`] a line, as `rlm run --trace` writes them and `rlm view`
//! reads them. [`TraceWriter`] is the observer that writes them (any front end attaches
//! it); [`TraceLine`] is one line, for writing and for reading back.
//!
//! A line is the event as it serializes (tagged by `"event"`), with `t_ms` (milliseconds
//! since the run started), `depth` and `run` (where in the recursion tree the event
//! happened: `0` / `"0"` for the top-level run) first:
//! `{"t_ms":12,"depth":0,"run":"0","event":"turn_start","turn":1}`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{Event, Observer, RunPlace};

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceLine {
    /// Milliseconds since the run started.
    #[serde(default)]
    pub t_ms: u64,
    /// Depth in the recursion tree: 0 for the top-level run.
    #[serde(default)]
    pub depth: usize,
    /// The run's id path (`"0"`, `"0.3"`); traces written before recursion have none, and
    /// read back as `"0"`.
    #[serde(default = "top_level", deserialize_with = "run_id")]
    pub run: String,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

fn top_level() -> String {
    "0".to_owned()
}

/// A run id as a string, or as the number an early trace may hold.
fn run_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(match Id::deserialize(deserializer)? {
        Id::Text(text) => text,
        Id::Number(n) => n.to_string(),
    })
}

impl TraceLine {
    /// Reads one line of a trace.
    ///
    /// # Errors
    ///
    /// When the line is not a JSON object holding an event this version knows.
    pub fn parse(line: &str) -> serde_json::Result<Self> {
        serde_json::from_str(line)
    }
}

/// Writes every event of a run (children's included) to a JSON Lines file as it happens.
///
/// Every line is written with one `write` call straight to the file (no buffer), so a run
/// that is killed keeps every line written so far; a write that fails (a full disk) is cut
/// back to the last whole line, later events are not written, and [`error`](Self::error)
/// says so. Events hold no credentials; nothing else is written.
#[derive(Debug)]
pub struct TraceWriter {
    path: PathBuf,
    /// What `t_ms` counts from.
    start: Mutex<Instant>,
    state: Mutex<State>,
    /// The front end's own settings (base URL, rate limits, retries, cache), added to the
    /// top-level `run_start`'s `settings`.
    settings: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// The first write error; later events are not written.
    error: Option<std::io::Error>,
    lines: u64,
    /// Bytes of the whole lines written: a failed write is cut back to this, so the file
    /// never ends in a torn line.
    bytes: u64,
}

impl TraceWriter {
    /// Creates (or truncates) `path`; `t_ms` counts from `start`.
    ///
    /// # Errors
    ///
    /// When the file cannot be created.
    pub fn create(path: &Path, start: Instant) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            path: path.to_owned(),
            start: Mutex::new(start),
            state: Mutex::new(State {
                file,
                error: None,
                lines: 0,
                bytes: 0,
            }),
            settings: serde_json::Map::new(),
        })
    }

    /// Adds the front end's settings to the top-level run's `run_start` line (under
    /// `settings`, beside the engine's). Nothing secret may be in them.
    pub fn with_settings(mut self, settings: serde_json::Map<String, serde_json::Value>) -> Self {
        self.settings = settings;
        self
    }

    /// Counts `t_ms` from now on: for a writer made (so its file could be checked) before
    /// the run it traces begins.
    pub fn restart_clock(&self) {
        *crate::sync::lock(&self.start) = Instant::now();
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        crate::sync::lock(&self.state).lines
    }

    /// The first write error, if writing failed (the file then ends with the last whole
    /// line written before it).
    pub fn error(&self) -> Option<String> {
        crate::sync::lock(&self.state)
            .error
            .as_ref()
            .map(ToString::to_string)
    }

    /// `event` as JSON, with the front end's settings merged into a top-level `run_start`.
    fn event_json(&self, place: &RunPlace, event: &Event) -> serde_json::Result<String> {
        if place.depth == 0 && !self.settings.is_empty() && matches!(event, Event::RunStart { .. })
        {
            let mut value = serde_json::to_value(event)?;
            if let Some(settings) = value
                .get_mut("settings")
                .and_then(serde_json::Value::as_object_mut)
            {
                for (key, setting) in &self.settings {
                    settings.insert(key.clone(), setting.clone());
                }
            }
            return serde_json::to_string(&value);
        }
        serde_json::to_string(event)
    }

    /// One line for `event` of the run at `place`.
    fn line(&self, place: &RunPlace, event: &Event) -> String {
        let t_ms = crate::sync::lock(&self.start).elapsed().as_millis();
        let depth = place.depth;
        let run = serde_json::Value::String(place.run.clone());
        match self.event_json(place, event) {
            // An internally tagged enum always serializes as an object: `{"event":...}`.
            Ok(json) if json.starts_with('{') && json.len() > 2 => {
                format!(
                    "{{\"t_ms\":{t_ms},\"depth\":{depth},\"run\":{run},{}\n",
                    &json[1..]
                )
            }
            Ok(json) => format!("{{\"t_ms\":{t_ms},\"value\":{json}}}\n"),
            Err(e) => format!(
                "{{\"t_ms\":{t_ms},\"event\":\"trace_error\",\"error\":{}}}\n",
                serde_json::Value::String(e.to_string())
            ),
        }
    }
}

impl Observer for TraceWriter {
    fn on_event(&self, event: &Event) {
        self.on_run_event(&RunPlace::default(), event);
    }

    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        let line = self.line(place, event);
        let mut state = crate::sync::lock(&self.state);
        if state.error.is_some() {
            return;
        }
        match state.file.write_all(line.as_bytes()) {
            Ok(()) => {
                state.lines += 1;
                state.bytes += line.len() as u64;
            }
            Err(e) => {
                // Part of the line may be on disk (a full disk takes what fits).
                let whole = state.bytes;
                let _ = state.file.set_len(whole);
                state.error = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_object_per_line_that_reads_back_as_written() {
        let path =
            std::env::temp_dir().join(format!("rlm-repl-trace-{}.jsonl", std::process::id()));
        let writer = TraceWriter::create(&path, Instant::now()).unwrap_or_else(|e| panic!("{e}"));
        writer.on_event(&Event::TurnStart { turn: 1 });
        let child = RunPlace {
            depth: 1,
            run: "0.2".to_owned(),
        };
        writer.on_run_event(&child, &Event::TurnStart { turn: 2 });
        assert!(writer.error().is_none());
        assert_eq!(writer.lines(), 2);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        assert!(text.starts_with("{\"t_ms\":"));
        let lines: Vec<TraceLine> = text
            .lines()
            .map(|l| TraceLine::parse(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[1].depth, lines[1].run.as_str()), (1, "0.2"));
        assert_eq!(lines[1].event, Event::TurnStart { turn: 2 });
        let raw: serde_json::Value =
            serde_json::from_str(text.lines().nth(1).unwrap_or("")).unwrap_or_default();
        assert_eq!(raw["event"], "turn_start");
        assert_eq!(raw["turn"], 2);
    }

    #[test]
    fn early_traces_read_back() {
        // No depth or run (before recursion), a numeric run id, no verdict.
        let line = TraceLine::parse(r#"{"t_ms":3,"event":"turn_start","turn":1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((line.depth, line.run.as_str()), (0, "0"));
        let line = TraceLine::parse(r#"{"t_ms":3,"run":2,"event":"turn_start","turn":1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(line.run, "2");
        let end = TraceLine::parse(
            r#"{"event":"turn_end","turn":1,"usage":{"prompt_tokens":1,"completion_tokens":1},"root_latency_ms":1,"blocks":0,"failed_blocks":0,"sub_calls":0,"failed_sub_calls":0,"cancelled_sub_calls":0}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            end.event,
            Event::TurnEnd {
                verdict: crate::TurnVerdict::Unrecorded,
                ..
            }
        ));
        assert!(TraceLine::parse(r#"{"event":"no_such_event"}"#).is_err());
    }
}
