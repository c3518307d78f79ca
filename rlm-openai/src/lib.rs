//! OpenAI-compatible chat completions backend for rlm, with rate limiting and retries.
