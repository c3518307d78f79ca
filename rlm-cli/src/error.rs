//! The command's errors and exit statuses.

use rlm_host::{LlmError, RlmError};

/// Exit statuses of `rlm` (also listed in `--help` and the README).
pub(crate) mod exit {
    /// The run ended with the root model's final answer.
    pub(crate) const OK: u8 = 0;
    /// An internal error (a bug): please report it.
    pub(crate) const INTERNAL: u8 = 1;
    /// Bad flags or settings.
    pub(crate) const USAGE: u8 = 2;
    /// A budget ran out (`--max-iterations`, `--max-sub-calls`, `--max-total-tokens`,
    /// `--max-time`, `--max-cost`): the best answer available is still printed.
    pub(crate) const BUDGET: u8 = 3;
    /// The query or context could not be read, or the trace file could not be written.
    pub(crate) const INPUT: u8 = 4;
    /// The model server failed: unreachable, timed out, server errors after retries,
    /// rejected the request (unknown model, context too long), or answered nonsense.
    pub(crate) const MODEL: u8 = 5;
    /// The server refused the credentials (HTTP 401/403), the account is out of quota, or
    /// no API key is set for the OpenAI API.
    pub(crate) const AUTH: u8 = 6;
    /// Interrupted (Ctrl-C).
    pub(crate) const INTERRUPTED: u8 = 130;
}

/// The text of the exit-status table, for `--help`.
pub(crate) const EXIT_CODES_HELP: &str = "\
Exit status:
  0    the root model gave its final answer
  1    internal error (a bug in rlm; please report it)
  2    bad flags or settings
  3    a budget ran out (--max-iterations, --max-sub-calls, --max-total-tokens,
       --max-time, --max-cost); the best answer available is still printed
  4    the query or context could not be read (or is over --max-context-bytes),
       or the trace file not written (the answer is still printed)
  5    the model server failed: unreachable, timed out, server errors after
       retries, unknown model, request rejected, or an unreadable reply
  6    authentication failed (HTTP 401/403), quota exhausted, no API key, or
       a key that is not valid UTF-8
  130  interrupted (Ctrl-C)";

/// The figures a failed run got to (`elapsed_ms`, `usage`, ...), for `--json`'s error
/// object; set once by the run that failed.
static PARTIAL: std::sync::OnceLock<serde_json::Map<String, serde_json::Value>> =
    std::sync::OnceLock::new();

/// Keeps what a failing run counted so far, for [`json_failure`].
pub(crate) fn set_partial(figures: serde_json::Map<String, serde_json::Value>) {
    let _ = PARTIAL.set(figures);
}

/// `--json`'s object for a failure: `{"error": {"message", "kind"}, "exit_code": N}` and the
/// partial figures the run got to, on one line.
pub(crate) fn json_failure(message: &str, kind: &str, exit_code: u8) -> String {
    let mut object = serde_json::Map::new();
    object.insert(
        "error".to_owned(),
        serde_json::json!({"message": message, "kind": kind}),
    );
    object.insert("exit_code".to_owned(), exit_code.into());
    if let Some(partial) = PARTIAL.get() {
        for (key, value) in partial {
            object.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    let mut text = serde_json::Value::Object(object).to_string();
    text.push('\n');
    text
}

/// Why `rlm` could not do its job. Each variant is one exit status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Bad flags or settings.
    #[error("{0}")]
    Usage(String),
    /// The query, the context or the trace file.
    #[error("{0}")]
    Input(String),
    /// The model server failed.
    #[error("{0}")]
    Model(String),
    /// Credentials or quota.
    #[error("{0}")]
    Auth(String),
    /// A bug.
    #[error("{0}")]
    Internal(String),
    /// A budget ran out with no answer to print (e.g. `--max-time` while code would not stop).
    #[error("{0}")]
    Budget(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

impl From<rlm_host::HostError> for CliError {
    fn from(error: rlm_host::HostError) -> Self {
        use rlm_host::HostError;
        match error {
            HostError::Usage(message) => CliError::Usage(message),
            HostError::Input(message) => CliError::Input(message),
            HostError::Auth(message) => CliError::Auth(message),
            HostError::Internal(message) => CliError::Internal(message),
            HostError::Unavailable(message) => CliError::Model(message),
            other => CliError::Internal(other.to_string()),
        }
    }
}

impl CliError {
    /// The exit status that reports this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Input(_) => exit::INPUT,
            CliError::Model(_) => exit::MODEL,
            CliError::Auth(_) => exit::AUTH,
            CliError::Internal(_) => exit::INTERNAL,
            CliError::Budget(_) => exit::BUDGET,
            CliError::Interrupted => exit::INTERRUPTED,
        }
    }

    /// The `kind` of `--json`'s error object (pinned: `usage`, `input`, `server`, `auth`,
    /// `internal`, `interrupted`; and `budget` for a `--max-time` stop whose code did not
    /// stop in time, exit 3, the one error a budget makes).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            CliError::Budget(_) => "budget",
            CliError::Usage(_) => "usage",
            CliError::Input(_) => "input",
            CliError::Model(_) => "server",
            CliError::Auth(_) => "auth",
            CliError::Internal(_) => "internal",
            CliError::Interrupted => "interrupted",
        }
    }

    /// A failed root-model call, with a hint at the usual cause.
    pub(crate) fn from_llm(error: &LlmError, turn: usize, base_url: &str, model: &str) -> Self {
        let what = format!("the root model ({model}) failed on turn {turn}: {error}");
        match error {
            LlmError::Auth { .. } => CliError::Auth(format!(
                "{what} (check the API key in OPENAI_API_KEY or --api-key-env)"
            )),
            LlmError::QuotaExhausted { .. } => {
                CliError::Auth(format!("{what} (the account is out of quota or credit)"))
            }
            // The server answered earlier turns: it is there, and it dropped this one.
            LlmError::Connection { .. } if turn > 1 => CliError::Model(format!(
                "{what} (the server at {base_url} answered earlier turns, then dropped the \
                 connection: it may have restarted, crashed or hit a proxy's limit)"
            )),
            LlmError::Connection { .. } => CliError::Model(format!(
                "{what} (is the server at {base_url} running? set it with --base-url or OPENAI_BASE_URL)"
            )),
            LlmError::Timeout { .. } => CliError::Model(format!(
                "{what} (no complete answer within --timeout; raise it for slow models)"
            )),
            // Not an API's error: the URL is wrong, and the message says so.
            LlmError::BadRequest {
                status: 404,
                code: Some(code),
                ..
            } if code == rlm_openai::NOT_AN_API_ENDPOINT => CliError::Model(format!(
                "{what} (set the base URL with --base-url or OPENAI_BASE_URL)"
            )),
            LlmError::BadRequest { status: 404, .. } => {
                CliError::Model(format!("{what} (is {model:?} a model this server serves?)"))
            }
            LlmError::Cancelled => CliError::Interrupted,
            _ => CliError::Model(what),
        }
    }

    /// A sub-call failure that every sub-call shares (the run stopped at once).
    pub(crate) fn from_sub_model(error: &LlmError, base_url: &str, model: &str) -> Self {
        let what = format!("the sub model ({model}) cannot be used, so the run stopped: {error}");
        match error {
            LlmError::Auth { .. } => CliError::Auth(format!(
                "{what} (check the API key in OPENAI_API_KEY or --api-key-env)"
            )),
            LlmError::QuotaExhausted { .. } => {
                CliError::Auth(format!("{what} (the account is out of quota or credit)"))
            }
            LlmError::BadRequest {
                code: Some(code), ..
            } if code == rlm_openai::NOT_AN_API_ENDPOINT => CliError::Model(format!(
                "{what} (set the base URL with --base-url or OPENAI_BASE_URL)"
            )),
            _ => CliError::Model(format!(
                "{what} (is {model:?} a model the server at {base_url} serves? set it with \
                 --sub-model)"
            )),
        }
    }

    /// An error of the RLM loop.
    pub(crate) fn from_rlm(error: RlmError, base_url: &str, model: &str) -> Self {
        match error {
            RlmError::Config(message) => CliError::Usage(message),
            RlmError::Schema(message) => {
                CliError::Usage(format!("--output-schema: invalid output schema: {message}"))
            }
            RlmError::Root { turn, source } => Self::from_llm(&source, turn, base_url, model),
            RlmError::SubModel { model, source } => Self::from_sub_model(&source, base_url, &model),
            RlmError::Internal(message) => {
                CliError::Internal(format!("internal error (a bug in rlm): {message}"))
            }
            other => CliError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_failures_map_to_their_exit_status() {
        let url = "http://127.0.0.1:9/v1";
        let auth = LlmError::from_http_status(401, "bad key", None, None, None);
        assert_eq!(
            CliError::from_llm(&auth, 1, url, "m").exit_code(),
            exit::AUTH
        );
        let quota = LlmError::from_http_status(429, "pay", Some("insufficient_quota"), None, None);
        assert_eq!(
            CliError::from_llm(&quota, 1, url, "m").exit_code(),
            exit::AUTH
        );
        let down = LlmError::Connection {
            message: "refused".into(),
        };
        let e = CliError::from_llm(&down, 1, url, "m");
        assert_eq!(e.exit_code(), exit::MODEL);
        assert!(e.to_string().contains("running?"), "{e}");
        // After earlier answers, the server is not asked about: it was running.
        let e = CliError::from_llm(&down, 2, url, "m");
        assert_eq!(e.exit_code(), exit::MODEL);
        assert!(e.to_string().contains(url), "{e}");
        assert!(e.to_string().contains("turn 2"), "{e}");
        assert!(!e.to_string().contains("running?"), "{e}");
        assert!(e.to_string().contains("answered earlier turns"), "{e}");
        let unknown = LlmError::from_http_status(404, "no such model", None, None, None);
        assert!(
            CliError::from_llm(&unknown, 1, url, "gpt-x")
                .to_string()
                .contains("\"gpt-x\"")
        );
        let not_api = LlmError::from_http_status(
            404,
            "\"404 page not found\"",
            None,
            Some(rlm_openai::NOT_AN_API_ENDPOINT),
            None,
        );
        let e = CliError::from_llm(&not_api, 1, url, "gpt-x").to_string();
        assert!(!e.contains("a model this server serves"), "{e}");
        assert_eq!(
            CliError::from_llm(&LlmError::Cancelled, 1, url, "m").exit_code(),
            exit::INTERRUPTED
        );
        assert_eq!(
            CliError::from_rlm(RlmError::Config("x".into()), url, "m").exit_code(),
            exit::USAGE
        );
        let sub = RlmError::SubModel {
            model: "gpt-typo".into(),
            source: unknown,
        };
        let e = CliError::from_rlm(sub, url, "m");
        assert_eq!(e.exit_code(), exit::MODEL);
        assert!(e.to_string().contains("sub model (gpt-typo)"), "{e}");
        let sub = RlmError::SubModel {
            model: "s".into(),
            source: auth,
        };
        assert_eq!(CliError::from_rlm(sub, url, "m").exit_code(), exit::AUTH);
    }

    #[test]
    fn json_failures_carry_message_kind_and_status() {
        for (error, kind, code) in [
            (CliError::Usage("u".into()), "usage", 2),
            (CliError::Input("i".into()), "input", 4),
            (CliError::Model("s".into()), "server", 5),
            (CliError::Auth("a".into()), "auth", 6),
            (CliError::Internal("b".into()), "internal", 1),
            (CliError::Interrupted, "interrupted", 130),
        ] {
            assert_eq!(error.kind(), kind);
            assert_eq!(error.exit_code(), code);
            let text = json_failure(&error.to_string(), error.kind(), error.exit_code());
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            assert_eq!(value["error"]["kind"], kind);
            assert_eq!(value["error"]["message"], error.to_string());
            assert_eq!(value["exit_code"], code);
        }
    }
}
