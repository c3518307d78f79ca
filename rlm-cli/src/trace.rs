//! `--trace FILE`: one JSON object per event, one line each, written as it happens.
//!
//! Each line is the rlm-repl [`Event`] as it serializes (tagged by `"event"`), with `t_ms`,
//! the milliseconds since the run started, `depth` and `run` (where in the recursion tree
//! the event happened: `0` / `"0"` for the top-level run) first:
//! `{"t_ms":12,"depth":0,"run":"0","event":"turn_start","turn":1}`. Every line is written with one `write` call
//! straight to the file (no buffer), so a run that is killed keeps every line written so far.
//! Events hold no credentials; nothing else is written.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rlm_repl::{Event, Observer, RunPlace};

use crate::error::CliError;

/// Writes events to a JSON Lines file.
#[derive(Debug)]
pub(crate) struct TraceWriter {
    path: PathBuf,
    start: Instant,
    state: Mutex<State>,
    /// The command's own settings (base URL, rate limits, retries, timeouts, cache), added
    /// to the top-level `run_start`'s `settings`.
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
    /// Creates (or truncates) `path`.
    pub(crate) fn create(path: &Path, start: Instant) -> Result<Self, CliError> {
        let file = File::create(path).map_err(|e| {
            CliError::Input(format!(
                "cannot write the trace file {}: {e}",
                path.display()
            ))
        })?;
        Ok(Self {
            path: path.to_owned(),
            start,
            state: Mutex::new(State {
                file,
                error: None,
                lines: 0,
                bytes: 0,
            }),
            settings: serde_json::Map::new(),
        })
    }

    /// Adds the command's settings to the top-level run's `run_start` line (under
    /// `settings`, beside the engine's). Nothing secret may be in them.
    pub(crate) fn with_settings(
        mut self,
        settings: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        self.settings = settings;
        self
    }

    /// `event` as JSON, with the command's settings merged into a top-level `run_start`.
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
        let t_ms = self.start.elapsed().as_millis();
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

    /// The first write error, if any, as a warning for stderr.
    pub(crate) fn warning(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.error.as_ref().map(|e| {
            format!(
                "the trace file {} is incomplete: writing failed after {} (the file ends with \
                 the last whole line): {e}",
                self.path.display(),
                crate::human::count(state.lines, "line")
            )
        })
    }
}

impl Observer for TraceWriter {
    fn on_event(&self, event: &Event) {
        self.on_run_event(&RunPlace::default(), event);
    }

    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        let line = self.line(place, event);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
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
    fn writes_one_object_per_line_with_a_timestamp() {
        let path = std::env::temp_dir().join(format!("rlm-cli-trace-{}.jsonl", std::process::id()));
        let writer = TraceWriter::create(&path, Instant::now()).unwrap_or_else(|e| panic!("{e}"));
        writer.on_event(&Event::TurnStart { turn: 1 });
        writer.on_event(&Event::TurnStart { turn: 2 });
        assert!(writer.warning().is_none());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["event"], "turn_start");
        assert_eq!(lines[1]["turn"], 2);
        assert_eq!(lines[1]["depth"], 0);
        assert_eq!(lines[1]["run"], "0");
        assert!(lines[0]["t_ms"].is_u64());
        assert!(text.starts_with("{\"t_ms\":"));
    }
}
