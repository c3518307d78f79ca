//! The access log: one line per request, written when its response ends (a stream: after
//! its last event; a client that went away: when the server notices), refused and
//! cancelled requests included.
//!
//! Text (`--log-format text`):
//!
//! ```text
//! 2026-12-07T04:35:10.123Z POST /v1/chat/completions 200 1834ms run=chatcmpl-rlm-3 outcome=final tokens=1429+96 cost_usd=0.000812
//! ```
//!
//! JSON (`--log-format json`), one object a line: `ts`, `method`, `path`, `status`,
//! `duration_ms`, `run_id`, `outcome`, `prompt_tokens`, `completion_tokens`, `cost_usd`
//! (absent values are `null`), `unpriced` (models the run used that have no price: the
//! cost leaves them out; `unpriced=a,b` in text).
//!
//! `outcome` is how the run ended (`final`, `max_iterations`, ..., `cancelled`) or the
//! error code a client was given; `client_gone` for a client that left before its
//! response ended (status 499, as nginx logs it). The path is logged without its query
//! string; client-supplied text is escaped, so a line never holds a raw line break. No
//! header is logged: never the server key or the upstream key.

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use rlm_repl::RunResult;
use serde_json::json;

use crate::metrics::Metrics;

/// The form of access-log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Words on one line.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Where access-log lines go, and in what form.
#[derive(Clone)]
pub struct AccessLog {
    format: LogFormat,
    sink: Arc<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// `line` with its line break.
fn whole_line(line: &str) -> String {
    let mut whole = String::with_capacity(line.len() + 1);
    whole.push_str(line);
    whole.push('\n');
    whole
}

impl AccessLog {
    /// Lines on stderr, each written whole: in one `write`, so lines of processes sharing a
    /// pipe or a file do not interleave (stderr is unbuffered: `writeln!` wrote the line and
    /// its line break in two).
    pub fn stderr(format: LogFormat) -> Self {
        Self::to(format, |line| {
            use std::io::Write as _;
            let _ = std::io::stderr()
                .lock()
                .write_all(whole_line(line).as_bytes());
        })
    }

    /// Lines given to `sink` (without a line break).
    pub fn to(format: LogFormat, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self {
            format,
            sink: Arc::new(sink),
        }
    }
}

/// What the server observes of every request: its metrics and, if any, its access log.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// The metrics `GET /metrics` shows.
    pub metrics: Metrics,
    /// The access log (`None`: none).
    pub log: Option<AccessLog>,
}

/// The error code of an error response, for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

/// What a handler tells the access log about the run it served (kept in the request's
/// extensions by [`observe`]).
#[derive(Clone, Default)]
pub(crate) struct RunNote(Arc<Mutex<Facts>>);

#[derive(Default, Clone)]
struct Facts {
    run_id: Option<String>,
    outcome: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cost_usd: Option<f64>,
    /// Models the run used that have no price (its cost leaves them out).
    unpriced: Vec<String>,
}

impl RunNote {
    fn lock(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run's id, known once it starts.
    pub(crate) fn started(&self, run_id: &str) {
        self.lock().run_id = Some(run_id.to_owned());
    }

    /// How the run ended: its usage and cost, or the error code its client was given.
    pub(crate) fn finished<E>(&self, result: &Result<RunResult, E>, error_code: Option<&str>) {
        let mut facts = self.lock();
        // A failed run's outcome is the error code its response carries (or
        // [`RunNote::refused`]).
        if let Ok(result) = result {
            let (prompt, completion) = crate::total_tokens(result);
            facts.prompt_tokens = Some(prompt);
            facts.completion_tokens = Some(completion);
            facts.cost_usd = Some(result.cost.total);
            facts.unpriced.clone_from(&result.cost.unpriced);
            facts.outcome = Some(result.stopped.as_str().to_owned());
        }
        if let Some(code) = error_code {
            facts.outcome = Some(code.to_owned());
        }
    }

    /// The error code a request was refused with (no run).
    pub(crate) fn refused(&self, code: &str) {
        let mut facts = self.lock();
        if facts.outcome.is_none() {
            facts.outcome = Some(code.to_owned());
        }
    }
}

/// The middleware: gives the request a [`RunNote`], and when its response has ended (or
/// the client has left) writes the line and counts the request.
pub(crate) async fn observe(
    State(telemetry): State<Arc<Telemetry>>,
    mut request: Request,
    next: Next,
) -> Response {
    let note = RunNote::default();
    request.extensions_mut().insert(note.clone());
    // Dropped with this future if the client leaves before the answer: it logs 499.
    let mut done = Done {
        telemetry,
        note,
        started: Instant::now(),
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        status: None,
        written: false,
    };
    let response = next.run(request).await;
    done.status = Some(response.status().as_u16());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        done.note.refused(code);
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(Logged {
            inner: body,
            done: Some(done),
        }),
    )
}

/// The line of one request, written once: when its body ends, or when it is dropped.
struct Done {
    telemetry: Arc<Telemetry>,
    note: RunNote,
    started: Instant,
    method: String,
    path: String,
    /// `None` until the handler answered.
    status: Option<u16>,
    written: bool,
}

impl Done {
    fn write(&mut self, finished: bool) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let mut facts = self.note.lock().clone();
        let status = match self.status {
            Some(status) if finished => status,
            // The client left before its response ended.
            _ => {
                facts.outcome = Some("client_gone".to_owned());
                499
            }
        };
        self.telemetry.metrics.request(status, elapsed);
        if let Some(log) = &self.telemetry.log {
            let line = format_line(
                log.format,
                SystemTime::now(),
                &self.method,
                &self.path,
                status,
                elapsed,
                &facts,
            );
            (log.sink)(&line);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.write(false);
    }
}

/// A response body that writes its request's line when it ends.
struct Logged {
    inner: Body,
    done: Option<Done>,
}

impl HttpBody for Logged {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled
            && let Some(mut done) = self.done.take()
        {
            done.write(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // A body hyper never polled to its end because it knew the length: the response
        // was sent whole.
        if let Some(mut done) = self.done.take() {
            done.write(self.inner.is_end_stream());
        }
    }
}

fn format_line(
    format: LogFormat,
    now: SystemTime,
    method: &str,
    path: &str,
    status: u16,
    elapsed: Duration,
    facts: &Facts,
) -> String {
    let ts = rfc3339(now);
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match format {
        LogFormat::Json => json!({
            "ts": ts,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "run_id": facts.run_id,
            "outcome": facts.outcome,
            "prompt_tokens": facts.prompt_tokens,
            "completion_tokens": facts.completion_tokens,
            "cost_usd": facts.cost_usd,
            "unpriced": facts.unpriced,
        })
        .to_string(),
        LogFormat::Text => {
            let mut line = format!(
                "{ts} {} {} {status} {duration_ms}ms",
                escape(method),
                escape(path)
            );
            let dash = || "-".to_owned();
            let _ = write!(
                line,
                " run={} outcome={}",
                facts.run_id.as_deref().map_or_else(dash, escape),
                facts.outcome.as_deref().map_or_else(dash, escape),
            );
            if let (Some(p), Some(c)) = (facts.prompt_tokens, facts.completion_tokens) {
                let _ = write!(line, " tokens={p}+{c}");
            }
            if let Some(cost) = facts.cost_usd {
                let _ = write!(line, " cost_usd={cost:.6}");
            }
            if !facts.unpriced.is_empty() {
                let names: Vec<String> = facts.unpriced.iter().map(|m| escape(m)).collect();
                let _ = write!(line, " unpriced={}", names.join(","));
            }
            line
        }
    }
}

/// Printable ASCII but space and backslash kept; anything else as `\xNN` (bytes of UTF-8),
/// so a line holds no line break, no control character and no space inside a field.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'\\' => out.push_str("\\\\"),
            0x21..=0x7e => out.push(char::from(byte)),
            _ => {
                let _ = write!(out, "\\x{byte:02x}");
            }
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
fn rfc3339(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_and_exact() {
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000 + 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_796_618_096_000), "2026-12-07T04:34:56.000Z");
    }

    #[test]
    fn a_line_holds_no_line_break_and_json_lines_parse() {
        let facts = Facts {
            run_id: Some("chatcmpl-rlm-1".into()),
            outcome: Some("final".into()),
            prompt_tokens: Some(10),
            completion_tokens: Some(2),
            cost_usd: Some(0.5),
            unpriced: vec!["local model".into()],
        };
        let path = "/v1/x\r\nFAKE 200 line \"q\" é";
        let text = format_line(
            LogFormat::Text,
            UNIX_EPOCH,
            "POST",
            path,
            404,
            Duration::from_millis(12),
            &facts,
        );
        assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z POST /v1/x\\x0d\\x0aFAKE\\x20200\\x20line\\x20\"q\"\\x20\\xc3\\xa9 404 12ms run=chatcmpl-rlm-1 outcome=final tokens=10+2 cost_usd=0.500000 unpriced=local\\x20model"
        );
        let json = format_line(
            LogFormat::Json,
            UNIX_EPOCH,
            "POST",
            path,
            404,
            Duration::from_millis(12),
            &Facts::default(),
        );
        assert!(!json.contains('\n'), "{json}");
        let value: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(value["path"], path);
        assert_eq!(value["status"], 404);
        assert!(value["run_id"].is_null());
    }
}
