//! The one error type of the host layer.

/// Why the host layer could not load an input or set up a backend stack.
///
/// Each variant is one of the failure kinds front ends report (`rlm --json`'s `kind`, the
/// Python package's exception classes): [`HostError::kind`] names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// Settings that cannot work: an empty model name, a bad base URL, a Redis URL that
    /// does not parse, a directory given where a file is needed.
    #[error("{0}")]
    Usage(String),
    /// An input that cannot be read or is refused: the context, a prompt file, the prices
    /// file, the cache directory, a path outside the allowed roots, anything over the byte
    /// bound.
    #[error("{0}")]
    Input(String),
    /// No API key where one is needed, or a key that cannot be sent.
    #[error("{0}")]
    Auth(String),
    /// A bug, or a resource the process could not get (an HTTP client).
    #[error("{0}")]
    Internal(String),
    /// A service the command cannot do without is unreachable (the Redis server of a job
    /// queue).
    #[error("{0}")]
    Unavailable(String),
}

impl HostError {
    /// The failure kind: `usage`, `input`, `auth`, `internal` or `server` (unavailable).
    pub fn kind(&self) -> &'static str {
        match self {
            HostError::Usage(_) => "usage",
            HostError::Input(_) => "input",
            HostError::Auth(_) => "auth",
            HostError::Internal(_) => "internal",
            HostError::Unavailable(_) => "server",
        }
    }
}
