//! Runnable examples of the rlm crates (see the `examples` directory).
