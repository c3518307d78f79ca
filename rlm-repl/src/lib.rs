//! The sandboxed Rhai REPL and the Recursive Language Model loop.
