//! The command's errors and exit statuses.

use rlm_core::LlmError;
use rlm_repl::RlmError;

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
            LlmError::Connection { .. } => CliError::Model(format!(
                "{what} (is the server at {base_url} running? set it with --base-url or OPENAI_BASE_URL)"
            )),
            LlmError::Timeout { .. } => CliError::Model(format!(
                "{what} (no complete answer within --timeout; raise it for slow models)"
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
        let e = CliError::from_llm(&down, 2, url, "m");
        assert_eq!(e.exit_code(), exit::MODEL);
        assert!(e.to_string().contains(url), "{e}");
        assert!(e.to_string().contains("turn 2"), "{e}");
        let unknown = LlmError::from_http_status(404, "no such model", None, None, None);
        assert!(
            CliError::from_llm(&unknown, 1, url, "gpt-x")
                .to_string()
                .contains("\"gpt-x\"")
        );
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
}
