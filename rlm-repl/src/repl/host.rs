//! Host functions in the sandbox: each tool's name is a script function that hands its
//! argument to the [`ToolCaller`] (the loop) and blocks the script's thread until the result.

use std::sync::Arc;

use rhai::{Dynamic, ImmutableString};
use tokio::runtime::Handle;

use super::subcall::BlockClock;
use crate::tool::ToolCaller;

/// The tools of one REPL.
pub(crate) struct HostTools {
    pub(crate) caller: Arc<dyn ToolCaller>,
    pub(crate) names: Vec<String>,
    pub(crate) handle: Option<Handle>,
    pub(crate) clock: Arc<BlockClock>,
}

impl HostTools {
    /// Calls `name` with `argument` (`()` for none): its result as a script value, or an
    /// `Error: ...` string.
    pub(crate) fn call(&self, name: &str, argument: &Dynamic) -> Dynamic {
        let argument = if argument.is_unit() {
            serde_json::Value::Null
        } else {
            match rhai::serde::from_dynamic::<serde_json::Value>(&argument.flatten_clone()) {
                Ok(value) => value,
                Err(e) => {
                    return error(format!(
                        "{name}: the argument cannot be passed as JSON: {e}"
                    ));
                }
            }
        };
        let future = self.caller.call(name, argument);
        // The wait is not script time (like a sub-call's).
        self.clock.begin_wait();
        let outcome = match &self.handle {
            Some(handle) if tokio::task::try_id().is_none() => {
                let (sender, receiver) = std::sync::mpsc::sync_channel(1);
                handle.spawn(async move {
                    let _ = sender.send(future.await);
                });
                receiver
                    .recv()
                    .unwrap_or_else(|_| Err("the call's task ended without a result".to_owned()))
            }
            _ => rlm_core::blocking::block_on(future),
        };
        self.clock.end_wait();
        match outcome {
            Ok(value) => rhai::serde::to_dynamic(value)
                .unwrap_or_else(|e| error(format!("{name}: its result cannot be read: {e}"))),
            Err(message) => error(message),
        }
    }
}

fn error(message: String) -> Dynamic {
    let text = if message.starts_with("Error:") {
        message
    } else {
        format!("Error: {message}")
    };
    Dynamic::from(ImmutableString::from(text))
}
