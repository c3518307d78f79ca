//! `rlm mcp`: a Model Context Protocol server over stdio, on the official Rust SDK (`rmcp`).
//!
//! One tool, `rlm_answer`: `{"query": str, "paths": [str]}` or `{"query": str, "text": str}`.
//! Paths must lie under one of the allowed roots, after resolving `..` and symlinks (a
//! relative path is taken under each root in turn); anything else is refused with a tool
//! error. One path is a context as `rlm run --context` makes it (a directory is an array of
//! documents); several paths are an array of documents. The roots and the loader are the
//! host layer's ([`rlm_host::context::AllowedRoots`]). While the run works the client gets
//! a progress notification per root turn, code block and tenth of a batch (when it sent a
//! progress token); cancelling the request stops the run.
//!
//! With `output_schema` (a JSON Schema object) the answer must conform to it: the result's
//! `structuredContent` is the answer's JSON value (an answer that is not an object is
//! `{"result": value}`), and its first text block the answer as JSON;
//! a run that ends without a conforming answer is a tool error (`schema_not_met`).

use std::path::PathBuf;
use std::sync::Arc;

use rlm_host::context::{AllowedRoots, LoadOptions, Loaded};
use rlm_repl::{Context, Event, Observer, RunResult};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{RunOptions, Runner, ServeError, describe_error, trajectory};

mod outbox;
pub use outbox::{Backpressure, MAX_OWED, MAX_WRITING};

/// The tool's name.
pub const TOOL: &str = "rlm_answer";
/// Progress lines waiting for a client, at most; more are dropped while it lags.
const PROGRESS_QUEUE: usize = 256;
/// The longest wait for progress notifications to go out before the result.
const PROGRESS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The MCP server: a [`Runner`], the allowed roots and how their files are read.
#[derive(Clone)]
pub struct McpServer {
    runner: Runner,
    roots: Arc<AllowedRoots>,
    load: LoadOptions,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("runner", &self.runner)
            .field("roots", &self.roots)
            .field("load", &self.load)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerArgs {
    query: String,
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    output_schema: Option<Value>,
}

impl McpServer {
    /// A server that answers over files under `roots` (each an existing directory), read
    /// as `load` says.
    ///
    /// # Errors
    /// [`ServeError::Config`] when there is no root, or one is not a readable directory.
    pub fn new(runner: Runner, roots: &[PathBuf], load: LoadOptions) -> Result<Self, ServeError> {
        let roots = AllowedRoots::new(roots).map_err(|e| ServeError::Config(e.to_string()))?;
        Ok(Self {
            runner,
            roots: Arc::new(roots),
            load,
        })
    }

    /// Serves MCP on stdin and stdout until the client goes away. A client that stops
    /// reading is not read from either once [`MAX_WRITING`] messages wait to be written to
    /// it or [`MAX_OWED`] replies are owed ([`Backpressure`]).
    ///
    /// # Errors
    /// The transport failed to start.
    pub async fn serve_stdio(self) -> Result<(), ServeError> {
        let (stdin, stdout) = rmcp::transport::stdio();
        let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(stdin, stdout);
        let service = self
            .serve(Backpressure::new(transport))
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
        let _ = service.waiting().await;
        Ok(())
    }

    /// `path` resolved under an allowed root, with every file a directory holds checked too
    /// (the host layer's [`AllowedRoots::resolve`]).
    ///
    /// # Errors
    /// [`ServeError::Path`] when it does not exist or leads outside the roots (through `..`
    /// or a symlink).
    pub fn resolve(&self, path: &str) -> Result<PathBuf, ServeError> {
        self.roots
            .resolve(path)
            .map_err(|e| ServeError::Path(e.to_string()))
    }

    /// The context of a call: what `paths` name, read by the host layer's loader under the
    /// allowed roots, or the text. Files are read on the blocking pool, never on a runtime
    /// thread, and cancelling the call stops waiting for them.
    async fn context(
        &self,
        args: &mut AnswerArgs,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Loaded, ServeError> {
        match (args.paths.take(), args.text.take()) {
            (Some(_), Some(_)) => Err(ServeError::Path(
                "give either `paths` or `text`, not both".to_owned(),
            )),
            (None, text) => Ok(Loaded {
                context: Context::Text(text.unwrap_or_default()),
                warnings: Vec::new(),
            }),
            (Some(paths), None) => {
                let roots = Arc::clone(&self.roots);
                let load = self.load;
                let reading = tokio::task::spawn_blocking(move || roots.load(&paths, &load));
                tokio::select! {
                    read = reading => match read {
                        Ok(loaded) => loaded.map_err(|e| ServeError::Path(e.to_string())),
                        Err(e) => Err(ServeError::Path(format!("reading the paths failed: {e}"))),
                    },
                    () = cancel.cancelled() => {
                        Err(ServeError::Path("cancelled while reading the paths".to_owned()))
                    }
                }
            }
        }
    }

    fn tool() -> Tool {
        let schema = json!({
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "description": "The question to answer."
                },
                "paths": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Files or directories under the server's allowed roots \
                        (relative paths are taken under each root). One path is read like \
                        `rlm run --context` (a directory is an array of documents, one per \
                        file); several are an array of documents."
                },
                "text": {
                    "type": "string",
                    "description": "The context as text, instead of paths."
                },
                "output_schema": {
                    "type": "object",
                    "description": "A JSON Schema the answer must conform to: the result's \
                        structuredContent is then the answer as JSON."
                }
            },
            "required": ["query"],
            "additionalProperties": false
        });
        let Value::Object(schema) = schema else {
            unreachable!("a JSON object literal")
        };
        Tool::new(
            TOOL,
            "Answer a question over files or text of any size with a Recursive Language \
             Model: a root model explores the context with code in a sandbox and asks \
             sub-models about pieces of it. Returns the answer and a short summary of the run.",
            schema,
        )
    }

    async fn answer(
        &self,
        arguments: Option<rmcp::model::JsonObject>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ServeError> {
        let value = Value::Object(arguments.unwrap_or_default());
        let mut args: AnswerArgs = serde_json::from_value(value)
            .map_err(|e| ServeError::Path(format!("invalid arguments for {TOOL}: {e}")))?;
        if args.query.trim().is_empty() {
            return Err(ServeError::Path("`query` is empty".to_owned()));
        }
        let output_schema = match args.output_schema.take() {
            Some(schema) if !schema.is_object() => {
                return Err(ServeError::Path(
                    "`output_schema` must be a JSON Schema object".to_owned(),
                ));
            }
            Some(schema) => Some(crate::schema::from_value(&schema).map_err(ServeError::Path)?),
            None => None,
        };
        let typed = output_schema.is_some() || self.runner.config().output_schema.is_some();
        let Loaded {
            context: run_context,
            warnings,
        } = self.context(&mut args, &context.ct).await?;

        // Progress: events become notifications, sent in order by one task, all of them
        // before the result (a client ignores progress that comes after it).
        let mut forwarder = None;
        let observer: Option<Arc<dyn Observer>> = context.meta.get_progress_token().map(|token| {
            let (tx, mut rx) = mpsc::channel::<String>(PROGRESS_QUEUE);
            let peer = context.peer.clone();
            forwarder = Some(tokio::spawn(async move {
                let mut step = 0.0;
                while let Some(message) = rx.recv().await {
                    step += 1.0;
                    let param =
                        ProgressNotificationParam::new(token.clone(), step).with_message(message);
                    if peer.notify_progress(param).await.is_err() {
                        break;
                    }
                }
            }));
            Arc::new(move |event: &Event| {
                if let Some(text) = trajectory::describe(event) {
                    // A client that lags behind misses progress lines rather than
                    // having them pile up.
                    let _ = tx.try_send(text.trim_end().to_owned());
                }
            }) as Arc<dyn Observer>
        });

        let options = RunOptions {
            instructions: None,
            observer,
            cancel: context.ct.clone(),
            output_schema,
        };
        let result = self.runner.run(args.query, run_context, options).await;
        if let Some(forwarder) = forwarder {
            // The run and its observer are gone, so the channel closes; a stuck client
            // cannot hold the result for long.
            let _ = tokio::time::timeout(PROGRESS_DRAIN, forwarder).await;
        }
        Ok(match result {
            Ok(result) if typed => {
                let mut summary = summary(&result);
                for warning in warnings {
                    summary.push_str(&format!("\ncontext warning: {warning}"));
                }
                match (&result.json, crate::schema::schema_not_met(&result, true)) {
                    (Some(value), _) => {
                        // MCP's structuredContent is an object: any other value goes under
                        // "result" (as FastMCP does); the text block is the JSON itself.
                        let structured = if value.is_object() {
                            value.clone()
                        } else {
                            json!({"result": value})
                        };
                        let mut answer = CallToolResult::structured(structured);
                        answer.content = vec![ContentBlock::text(value.to_string())];
                        answer.content.push(ContentBlock::text(summary));
                        answer
                    }
                    (None, why) => CallToolResult::error(vec![
                        ContentBlock::text(format!("schema_not_met: {}", why.unwrap_or_default())),
                        ContentBlock::text(summary),
                    ]),
                }
            }
            Ok(result) => {
                let mut summary = summary(&result);
                for warning in warnings {
                    summary.push_str(&format!("\ncontext warning: {warning}"));
                }
                let answer = if result.answer.is_empty() {
                    "(no answer)".to_owned()
                } else {
                    result.answer.clone()
                };
                CallToolResult::success(vec![
                    ContentBlock::text(answer),
                    ContentBlock::text(summary),
                ])
            }
            Err(error) => {
                let (_, message) = describe_error(&error, &self.runner.config().root_model);
                CallToolResult::error(vec![ContentBlock::text(message)])
            }
        })
    }
}

/// One paragraph about how the run went.
fn summary(result: &RunResult) -> String {
    let (prompt, completion) = crate::total_tokens(result);
    let mut text = format!(
        "rlm: stopped: {} after {} turn(s) in {} ms; {} sub-calls ({} failed); {} prompt + {} \
         completion tokens",
        result.stopped.as_str(),
        result.iterations,
        result.elapsed.as_millis(),
        result.sub_calls,
        result.failed_sub_calls,
        prompt,
        completion
    );
    for warning in &result.warnings {
        text.push_str(&format!("\nwarning: {warning}"));
    }
    text
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("rlm", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Call {TOOL} to answer questions over large files or texts. Allowed roots: {}",
                self.roots.list()
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(vec![Self::tool()]))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        (name == TOOL).then(Self::tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != TOOL {
            return Err(ErrorData::invalid_params(
                format!("no tool {:?}; this server has {TOOL}", request.name),
                None,
            ));
        }
        let result = match self.answer(request.arguments, context).await {
            Ok(result) => result,
            Err(error) => CallToolResult::error(vec![ContentBlock::text(error.to_string())]),
        };
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_names_query_paths_and_text() {
        let tool = McpServer::tool();
        assert_eq!(tool.name, TOOL);
        let properties = &tool.input_schema["properties"];
        for key in ["query", "paths", "text"] {
            assert!(properties.get(key).is_some(), "{key}");
        }
    }
}
