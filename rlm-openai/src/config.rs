//! Settings of an [`OpenAiBackend`](crate::OpenAiBackend) and the errors they can have.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The OpenAI API, used when neither the builder nor `OPENAI_BASE_URL` name another server.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Retries after the first attempt, unless set otherwise.
///
/// Four retries (five attempts) with the default backoff span about 7.5 s of waiting before
/// a request is given up; a provider's `Retry-After` replaces the backoff when it is given.
/// The official SDK retries twice; a batch of thousands of sub-calls meets transient 5xx and
/// dropped connections often enough that two more tries pay for themselves.
pub const DEFAULT_MAX_RETRIES: u32 = 4;

/// The longest `Retry-After` that is waited out, unless set otherwise.
///
/// A provider asking for a longer wait (a daily quota, a misconfigured proxy, a hostile
/// server) gets no retry: the error is returned at once with the hint in
/// [`LlmError::retry_after`](rlm_core::LlmError::retry_after), so the caller decides.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// The largest reply body read, in bytes, unless set otherwise: 32 MiB.
///
/// A chat completion is rarely more than a few hundred kilobytes; the cap keeps a broken
/// or hostile server from making the client buffer gigabytes. A successful reply beyond it
/// is [`LlmError::InvalidResponse`](rlm_core::LlmError::InvalidResponse); an error reply is
/// classified by its status as usual, its message taken from at most that many bytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Connection pool size (idle connections kept per host), unless set otherwise.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// Tokens a reply is assumed to use when a request sets no `max_tokens`, for pacing a
/// tokens-per-minute limit, unless set otherwise.
pub const PACING_COMPLETION_TOKENS: u32 = 256;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(16);

/// A configuration the backend cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The base URL does not parse, or is not an `http` or `https` URL.
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidBaseUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A header value (API key, organization, project) holds characters HTTP forbids, such
    /// as a line break. The value itself is never part of the error.
    #[error("the {name} contains characters that cannot be sent in an HTTP header")]
    InvalidHeader {
        /// Which setting: `"API key"`, `"organization"` or `"project"`.
        name: &'static str,
    },
    /// A numeric setting is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidSetting {
        /// The setting, e.g. `"request timeout"`.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The HTTP client could not be built (for example, no TLS root certificates).
    #[error("cannot build the HTTP client: {message}")]
    Client {
        /// The client library's explanation.
        message: String,
    },
}

/// Requests and tokens per minute one model may use; `0` means no limit.
///
/// The backend paces each model's calls smoothly: at most about one second's share
/// (`limit / 60`, at least 1) goes out at once, and the sustained rate is
/// `limit - burst + 1` per minute, so no 60-second window ever holds more than `limit`,
/// even right after a burst. (A single request estimated at more tokens than the whole
/// limit is still sent, alone in its minute.)
///
/// ```
/// use rlm_openai::RateLimit;
///
/// let limit = RateLimit::new(500, 200_000);
/// assert_eq!(limit.requests_per_minute, 500);
/// assert!(RateLimit::default().is_unlimited());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct RateLimit {
    /// Requests per minute (`0`: no limit).
    pub requests_per_minute: u32,
    /// Prompt plus completion tokens per minute (`0`: no limit). A request's tokens are
    /// estimated before it is sent, from its messages and its `max_tokens`.
    pub tokens_per_minute: u32,
}

impl RateLimit {
    /// A limit of `requests_per_minute` requests and `tokens_per_minute` tokens (`0`: none).
    pub fn new(requests_per_minute: u32, tokens_per_minute: u32) -> Self {
        Self {
            requests_per_minute,
            tokens_per_minute,
        }
    }

    /// No limit at all.
    pub fn is_unlimited(&self) -> bool {
        self.requests_per_minute == 0 && self.tokens_per_minute == 0
    }
}

/// An API key that never shows itself in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiKey(String);

impl ApiKey {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

/// Where and how an [`OpenAiBackend`](crate::OpenAiBackend) talks to its server.
///
/// Start from [`OpenAiConfig::from_env`] (the usual `OPENAI_*` variables) or
/// [`OpenAiConfig::new`] (defaults only) and adjust with the `with_*` methods. Nothing is
/// checked until [`OpenAiBackend::new`](crate::OpenAiBackend::new), which reports a bad
/// setting as a [`ConfigError`].
///
/// The API key is optional (local servers such as vLLM, llama.cpp or Ollama need none) and
/// never appears in `Debug` output.
///
/// ```
/// use std::time::Duration;
/// use rlm_openai::{OpenAiConfig, RateLimit};
///
/// let config = OpenAiConfig::new()
///     .with_base_url("http://localhost:11434/v1/")
///     .with_api_key("sk-secret")
///     .with_default_model("llama3.2")
///     .with_request_timeout(Duration::from_secs(120))
///     .with_rate_limit(RateLimit::new(600, 0))
///     .with_model_rate_limit("big-model", RateLimit::new(60, 100_000));
/// assert!(!format!("{config:?}").contains("sk-secret"));
/// assert_eq!(config.rate_limit_for("big-model").requests_per_minute, 60);
/// assert_eq!(config.rate_limit_for("llama3.2").requests_per_minute, 600);
/// ```
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    pub(crate) base_url: String,
    pub(crate) api_key: Option<ApiKey>,
    pub(crate) organization: Option<String>,
    pub(crate) project: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) default_model: String,
    pub(crate) max_retries: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) concurrency: usize,
    pub(crate) rate_limit: RateLimit,
    pub(crate) model_rate_limits: BTreeMap<String, RateLimit>,
    pub(crate) completion_token_estimate: u32,
    pub(crate) shared_pacer: Option<std::sync::Arc<dyn crate::SharedPacer>>,
    pub(crate) wait_observer: Option<crate::WaitObserver>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self::new()
    }
}

fn non_empty(value: impl Into<String>) -> Option<String> {
    let value = value.into();
    (!value.trim().is_empty()).then_some(value)
}

impl OpenAiConfig {
    /// Defaults only: the OpenAI API, no key, no rate limits, [`DEFAULT_MAX_RETRIES`]
    /// retries, 10 s to connect and 600 s per attempt. The environment is not read.
    pub fn new() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            organization: None,
            project: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            default_model: String::new(),
            max_retries: DEFAULT_MAX_RETRIES,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            concurrency: DEFAULT_CONCURRENCY,
            rate_limit: RateLimit::default(),
            model_rate_limits: BTreeMap::new(),
            completion_token_estimate: PACING_COMPLETION_TOKENS,
            shared_pacer: None,
            wait_observer: None,
        }
    }

    /// The defaults of [`new`](Self::new), then the environment: `OPENAI_BASE_URL`,
    /// `OPENAI_API_KEY`, `OPENAI_ORG_ID` and `OPENAI_PROJECT_ID`. Unset or empty variables
    /// keep the default.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables looked up by `var`.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).and_then(non_empty);
        let mut config = Self::new();
        if let Some(url) = var("OPENAI_BASE_URL") {
            config.base_url = url;
        }
        config.api_key = var("OPENAI_API_KEY").map(ApiKey);
        config.organization = var("OPENAI_ORG_ID");
        config.project = var("OPENAI_PROJECT_ID");
        config
    }

    /// The server's base URL, up to and including the API version (e.g.
    /// `http://localhost:8000/v1`); requests go to `{base_url}/chat/completions`. A trailing
    /// slash is fine.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }

    /// The API key, sent as `Authorization: Bearer KEY`. An empty key sends no header.
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = non_empty(api_key).map(ApiKey);
        self
    }

    /// The `OpenAI-Organization` header (empty: none).
    pub fn with_organization(mut self, organization: impl Into<String>) -> Self {
        self.organization = non_empty(organization);
        self
    }

    /// The `OpenAI-Project` header (empty: none).
    pub fn with_project(mut self, project: impl Into<String>) -> Self {
        self.project = non_empty(project);
        self
    }

    /// How long to wait for a connection to be set up (TCP and TLS). Default 10 s.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one attempt may take, from sending until the whole answer has arrived.
    /// Each retry gets the full time again. Default 600 s.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The model used for requests whose `model` is empty. Without one, such requests are
    /// sent with an empty model, which servers that serve a single model accept.
    pub fn with_default_model(mut self, model: impl Into<String>) -> Self {
        self.default_model = model.into();
        self
    }

    /// Retries after the first attempt of a request that failed in a way worth retrying
    /// (429, 5xx, 408, 409, timeouts, connection failures). `0` disables retries. Default
    /// [`DEFAULT_MAX_RETRIES`].
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// The exponential backoff between retries when the server gives no `Retry-After`:
    /// `initial` before the first retry, doubling each time up to `max`, each wait varied
    /// by ±25% so that concurrent callers spread out. Default 0.5 s up to 16 s.
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// The longest `Retry-After` / `retry-after-ms` that is waited out; a longer one ends
    /// the request with its error at once. Default [`DEFAULT_MAX_RETRY_AFTER`].
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The largest reply body read, in bytes (see [`DEFAULT_MAX_RESPONSE_BYTES`]). Must
    /// not be zero.
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// How many requests are expected in flight at once (across every clone and batch):
    /// the connection pool keeps up to this many idle connections per host so that
    /// connections are reused rather than reopened. It does not limit concurrency; a
    /// batch's [`BatchOptions::max_concurrent`](rlm_core::BatchOptions) does. Set it to the
    /// most requests ever in flight at once (a batch's concurrency, times the batches that
    /// run side by side, e.g. in child runs): with fewer, connections beyond it are closed
    /// when they fall idle and reopened (a TLS handshake each) by the next requests. The
    /// pool never holds more connections than were in use at once. Default
    /// [`DEFAULT_CONCURRENCY`].
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Shares the rate limits with other processes through `pacer` (for example a
    /// [`RedisPacer`](crate::SharedPacer), feature `redis`): after this process's own
    /// limiter lets a request through, the shared books must too, and a server's pause is
    /// passed on to every process. Default: none (each process paces alone).
    pub fn with_shared_pacer(mut self, pacer: std::sync::Arc<dyn crate::SharedPacer>) -> Self {
        self.shared_pacer = Some(pacer);
        self
    }

    /// Reports each retry wait and each rate-limit hold as it begins (see
    /// [`Wait`](crate::Wait)). Default: none.
    pub fn with_wait_observer(mut self, observer: crate::WaitObserver) -> Self {
        self.wait_observer = Some(observer);
        self
    }

    /// The rate limit every model gets unless [`with_model_rate_limit`](Self::with_model_rate_limit)
    /// names it. Default: none.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = limit;
        self
    }

    /// A rate limit for one model, replacing the default for it.
    pub fn with_model_rate_limit(mut self, model: impl Into<String>, limit: RateLimit) -> Self {
        self.model_rate_limits.insert(model.into(), limit);
        self
    }

    /// Tokens a reply is assumed to use when a request sets no `max_tokens` (or
    /// `max_completion_tokens` in its extra fields), when pacing a tokens-per-minute limit.
    /// Default [`PACING_COMPLETION_TOKENS`].
    pub fn with_completion_token_estimate(mut self, tokens: u32) -> Self {
        self.completion_token_estimate = tokens;
        self
    }

    /// The base URL as configured.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether an API key is set (the key itself is never handed out).
    pub fn has_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The model used for requests that name none (empty if unset).
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The rate limit that applies to `model`.
    pub fn rate_limit_for(&self, model: &str) -> RateLimit {
        self.model_rate_limits
            .get(model)
            .copied()
            .unwrap_or(self.rate_limit)
    }

    /// Checks the numeric settings.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &'static str, value: Duration| {
            if value.is_zero() {
                Err(ConfigError::InvalidSetting {
                    name,
                    reason: "must be greater than zero".to_owned(),
                })
            } else {
                Ok(())
            }
        };
        positive("connect timeout", self.connect_timeout)?;
        positive("request timeout", self.request_timeout)?;
        if self.max_response_bytes == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "maximum response size",
                reason: "must be greater than zero".to_owned(),
            });
        }
        if self.initial_backoff > self.max_backoff {
            return Err(ConfigError::InvalidSetting {
                name: "retry backoff",
                reason: format!(
                    "the initial wait ({:?}) is longer than the longest ({:?})",
                    self.initial_backoff, self.max_backoff
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let config = OpenAiConfig::new().with_api_key("sk-very-secret");
        let debug = format!("{config:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("[redacted]"));
        assert!(config.has_api_key());
    }

    #[test]
    fn empty_values_mean_unset() {
        let config = OpenAiConfig::new()
            .with_api_key("")
            .with_organization("  ")
            .with_project("");
        assert!(!config.has_api_key());
        assert!(config.organization.is_none());
        assert!(config.project.is_none());
    }

    #[test]
    fn reads_the_usual_variables() {
        let env = |name: &str| match name {
            "OPENAI_BASE_URL" => Some("http://localhost:8000/v1".to_owned()),
            "OPENAI_API_KEY" => Some("sk-env".to_owned()),
            "OPENAI_ORG_ID" => Some("org-1".to_owned()),
            "OPENAI_PROJECT_ID" => Some(String::new()),
            _ => None,
        };
        let config = OpenAiConfig::from_vars(env);
        assert_eq!(config.base_url(), "http://localhost:8000/v1");
        assert_eq!(config.api_key.as_ref().map(ApiKey::expose), Some("sk-env"));
        assert_eq!(config.organization.as_deref(), Some("org-1"));
        assert_eq!(config.project, None, "empty means unset");
        let bare = OpenAiConfig::from_vars(|_| None);
        assert_eq!(bare.base_url(), DEFAULT_BASE_URL);
        assert!(!bare.has_api_key());
    }

    #[test]
    fn per_model_limits_override_the_default() {
        let config = OpenAiConfig::new()
            .with_rate_limit(RateLimit::new(100, 1000))
            .with_model_rate_limit("a", RateLimit::new(5, 0));
        assert_eq!(config.rate_limit_for("a"), RateLimit::new(5, 0));
        assert_eq!(config.rate_limit_for("b"), RateLimit::new(100, 1000));
    }

    #[test]
    fn validation_rejects_zero_timeouts_and_inverted_backoff() {
        assert!(OpenAiConfig::new().validate().is_ok());
        let e = OpenAiConfig::new()
            .with_request_timeout(Duration::ZERO)
            .validate();
        assert!(matches!(
            e,
            Err(ConfigError::InvalidSetting {
                name: "request timeout",
                ..
            })
        ));
        let e = OpenAiConfig::new()
            .with_retry_backoff(Duration::from_secs(2), Duration::from_secs(1))
            .validate();
        assert!(matches!(e, Err(ConfigError::InvalidSetting { .. })));
        let e = OpenAiConfig::new().with_max_response_bytes(0).validate();
        assert!(matches!(
            e,
            Err(ConfigError::InvalidSetting {
                name: "maximum response size",
                ..
            })
        ));
    }
}
