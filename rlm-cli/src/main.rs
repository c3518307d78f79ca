//! The `rlm` command.

fn main() {}
