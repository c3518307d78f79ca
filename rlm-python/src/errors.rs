//! The exception classes, one per `rlm --json` error kind, and how the engine's errors map
//! to them.

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use rlm_host::{HostError, LlmError};

create_exception!(
    rlm_rs,
    RlmError,
    PyException,
    "Base class of rlm_rs's errors (an internal error, a bug, is an RlmError itself)."
);
create_exception!(
    rlm_rs,
    UsageError,
    RlmError,
    "Settings that cannot work: an unknown or bad keyword value, an empty model name, a bad \
     base URL (`rlm --json` kind `usage`)."
);
create_exception!(
    rlm_rs,
    InputError,
    RlmError,
    "The context (or a prices or cache file) cannot be read or is over the byte bound \
     (`rlm --json` kind `input`)."
);
create_exception!(
    rlm_rs,
    ServerError,
    RlmError,
    "The model server failed: unreachable, timed out, errors after retries, unknown model, \
     an unreadable reply, or a Python backend that raised (`rlm --json` kind `server`)."
);
create_exception!(
    rlm_rs,
    AuthError,
    RlmError,
    "The server refused the credentials, the account is out of quota, or no API key is set \
     for the OpenAI API (`rlm --json` kind `auth`)."
);
create_exception!(
    rlm_rs,
    BudgetError,
    RlmError,
    "The run's time (`max_time`) ran out and its code did not stop in time: no answer \
     (`rlm --json` kind `budget`). Other budgets end a run with a Result whose `stopped` \
     says which."
);

/// Why a call could not give a result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Settings, input, auth or internal, from the host layer.
    Host(HostError),
    /// The loop's error.
    Rlm(rlm_host::RlmError),
    /// A budget with no answer.
    Budget(String),
}

impl From<HostError> for Failure {
    fn from(error: HostError) -> Self {
        Failure::Host(error)
    }
}

impl From<rlm_host::RlmError> for Failure {
    fn from(error: rlm_host::RlmError) -> Self {
        Failure::Rlm(error)
    }
}

impl Failure {
    /// The exception that reports it (`model` names the root model in messages).
    pub(crate) fn into_pyerr(self, model: &str) -> PyErr {
        match self {
            Failure::Host(error) => match error {
                HostError::Usage(m) => UsageError::new_err(m),
                HostError::Input(m) => InputError::new_err(m),
                HostError::Auth(m) => AuthError::new_err(m),
                other => RlmError::new_err(other.to_string()),
            },
            Failure::Rlm(error) => match error {
                rlm_host::RlmError::Config(m) | rlm_host::RlmError::Schema(m) => {
                    UsageError::new_err(m)
                }
                rlm_host::RlmError::Session(m) => InputError::new_err(m),
                rlm_host::RlmError::Root { turn, source } => llm(
                    &source,
                    format!("the root model ({model}) failed on turn {turn}: {source}"),
                ),
                rlm_host::RlmError::SubModel { model, source } => llm(
                    &source,
                    format!("the sub model ({model}) cannot be used, so the run stopped: {source}"),
                ),
                other => RlmError::new_err(format!("internal error (a bug in rlm): {other}")),
            },
            Failure::Budget(m) => BudgetError::new_err(m),
        }
    }
}

/// A model call's failure as the exception of its kind.
fn llm(source: &LlmError, message: String) -> PyErr {
    match source {
        LlmError::Auth { .. } => AuthError::new_err(format!(
            "{message} (check the API key: api_key=, or the variable api_key_env names)"
        )),
        LlmError::QuotaExhausted { .. } => {
            AuthError::new_err(format!("{message} (the account is out of quota or credit)"))
        }
        LlmError::Cancelled => pyo3::exceptions::PyKeyboardInterrupt::new_err(message),
        _ => ServerError::new_err(message),
    }
}
