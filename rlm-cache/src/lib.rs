//! Prompt deduplication and caching decorator for any rlm backend.
