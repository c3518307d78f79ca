//! What the pacing and retry tests share: a shared pacer that only listens, recording when
//! each request (each attempt) is let through, the last gate before it is sent. On tokio's
//! paused clock the recorded times are exactly the backend's decisions, whatever the load.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rlm_openai::{OpenAiBackend, OpenAiConfig, RateLimit, SharedPacer};
use tokio::time::Instant;

/// A shared pacer that admits everything and records when each request was let through
/// (model, time on the tokio clock, estimated tokens).
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<(String, Instant, u64)>>);

#[async_trait::async_trait]
impl SharedPacer for Recorder {
    async fn admit(&self, model: &str, _limit: RateLimit, tokens: u64) -> Option<Duration> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((
            model.to_owned(),
            Instant::now(),
            tokens,
        ));
        Some(Duration::ZERO)
    }

    async fn pause(&self, _model: &str, _wait: Duration) {}
}

impl Recorder {
    /// When the requests of `model` were let through, each with `weight`.
    pub fn arrivals(&self, model: &str, weight: u64) -> Vec<(Instant, u64)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(m, _, _)| m == model)
            .map(|(_, at, _)| (*at, weight))
            .collect()
    }
}

/// The backend of `config`, recording each request as it is let through; timeouts far
/// beyond the test's virtual time, so only the limiter's timers move the clock.
pub fn backend(config: OpenAiConfig) -> (OpenAiBackend, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let config = config
        .with_shared_pacer(recorder.clone())
        .with_request_timeout(Duration::from_secs(24 * 3600))
        .with_connect_timeout(Duration::from_secs(24 * 3600));
    let backend =
        OpenAiBackend::new(config).unwrap_or_else(|e| panic!("cannot build the backend: {e}"));
    (backend, recorder)
}

impl Recorder {
    /// When each attempt of any model was let through, in order.
    pub fn times(&self) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(_, at, _)| *at)
            .collect()
    }
}
