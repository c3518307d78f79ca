//! The provider trait.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{Completion, CompletionRequest, LlmError};

/// A language model that completes chat requests.
///
/// Implement this to bring a provider. The trait is object-safe, so engines hold backends as
/// `Arc<dyn LlmBackend>`, and it is forwarded through `Arc`, `Box` and `&`, so decorators
/// (caching, metering, rate limiting) can wrap any backend and still be one.
///
/// Implementations must be safe to call concurrently: the batch executor runs many
/// `complete` calls on the same backend at once.
///
/// ```
/// use async_trait::async_trait;
/// use rlm_core::{Completion, CompletionRequest, LlmBackend, LlmError};
///
/// struct Shout;
///
/// #[async_trait]
/// impl LlmBackend for Shout {
///     async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
///         let prompt = request.last_user_message().unwrap_or_default();
///         Ok(Completion::new(&request.model, prompt.to_uppercase()))
///     }
/// }
/// ```
#[async_trait]
pub trait LlmBackend: Send + Sync {
    /// Sends one request and waits for its completion.
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError>;

    /// Which service answers: for a provider, its endpoint without credentials (such as
    /// `https://api.openai.com/v1/chat/completions`); `None` (the default) for a backend
    /// that has none, such as a mock.
    ///
    /// Persistent and shared caches key their entries by it beside the request, so two
    /// servers behind one cache never answer for each other. Decorators forward their
    /// inner backend's.
    fn endpoint(&self) -> Option<&str> {
        None
    }
}

#[async_trait]
impl<T: LlmBackend + ?Sized> LlmBackend for Arc<T> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        (**self).complete(request).await
    }

    fn endpoint(&self) -> Option<&str> {
        (**self).endpoint()
    }
}

#[async_trait]
impl<T: LlmBackend + ?Sized> LlmBackend for Box<T> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        (**self).complete(request).await
    }

    fn endpoint(&self) -> Option<&str> {
        (**self).endpoint()
    }
}

#[async_trait]
impl<T: LlmBackend + ?Sized> LlmBackend for &T {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        (**self).complete(request).await
    }

    fn endpoint(&self) -> Option<&str> {
        (**self).endpoint()
    }
}
