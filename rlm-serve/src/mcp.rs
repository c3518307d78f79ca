//! `rlm mcp`: a Model Context Protocol server over stdio, on the official Rust SDK (`rmcp`).
//!
//! One tool, `rlm_answer`: `{"query": str, "paths": [str]}` or `{"query": str, "text": str}`.
//! Paths must lie under one of the allowed roots, after resolving `..` and symlinks (a
//! relative path is taken under each root in turn); anything else is refused with a tool
//! error. One path is a context as `rlm run --context` makes it (a directory is an array of
//! documents); several paths are an array of documents. While the run works the client gets
//! a progress notification per root turn, code block and tenth of a batch (when it sent a
//! progress token); cancelling the request stops the run.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// The tool's name.
pub const TOOL: &str = "rlm_answer";
/// The longest wait for progress notifications to go out before the result.
const PROGRESS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Loads one allowed path as `rlm run --context` would: the context and any warnings, or a
/// message saying why not.
pub type LoadPath = Arc<dyn Fn(&Path) -> Result<(Context, Vec<String>), String> + Send + Sync>;

/// The MCP server: a [`Runner`], the allowed roots and a path loader.
#[derive(Clone)]
pub struct McpServer {
    runner: Runner,
    roots: Arc<Vec<PathBuf>>,
    load: LoadPath,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("runner", &self.runner)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
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
}

impl McpServer {
    /// A server that answers over files under `roots` (each an existing directory).
    ///
    /// # Errors
    /// [`ServeError::Config`] when there is no root, or one is not a readable directory.
    pub fn new(runner: Runner, roots: &[PathBuf], load: LoadPath) -> Result<Self, ServeError> {
        if roots.is_empty() {
            return Err(ServeError::Config(
                "at least one --root DIR is required".to_owned(),
            ));
        }
        let mut canonical = Vec::with_capacity(roots.len());
        for root in roots {
            let path = fs::canonicalize(root)
                .map_err(|e| ServeError::Config(format!("--root {}: {e}", root.display())))?;
            if !path.is_dir() {
                return Err(ServeError::Config(format!(
                    "--root {} is not a directory",
                    root.display()
                )));
            }
            canonical.push(path);
        }
        Ok(Self {
            runner,
            roots: Arc::new(canonical),
            load,
        })
    }

    /// Serves MCP on stdin and stdout until the client goes away.
    ///
    /// # Errors
    /// The transport failed to start.
    pub async fn serve_stdio(self) -> Result<(), ServeError> {
        let service = self
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
        let _ = service.waiting().await;
        Ok(())
    }

    /// `path` resolved under an allowed root, with every file a directory holds checked too.
    ///
    /// # Errors
    /// [`ServeError::Path`] when it does not exist or leads outside the roots (through `..`
    /// or a symlink).
    pub fn resolve(&self, path: &str) -> Result<PathBuf, ServeError> {
        let given = Path::new(path);
        let candidates: Vec<PathBuf> = if given.is_absolute() {
            vec![given.to_path_buf()]
        } else {
            self.roots.iter().map(|root| root.join(given)).collect()
        };
        let Some(resolved) = candidates.iter().find_map(|c| fs::canonicalize(c).ok()) else {
            return Err(ServeError::Path(format!(
                "{path}: no such file or directory under the allowed roots"
            )));
        };
        let Some(root) = self.root_of(&resolved) else {
            return Err(ServeError::Path(format!(
                "{path} is outside the allowed roots ({}); it is refused",
                self.roots_list()
            )));
        };
        if resolved.is_dir() {
            self.check_tree(&resolved, root, path)?;
        }
        Ok(resolved)
    }

    fn root_of(&self, path: &Path) -> Option<&Path> {
        self.roots
            .iter()
            .find(|root| path.starts_with(root))
            .map(PathBuf::as_path)
    }

    fn roots_list(&self) -> String {
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every file the directory loader would read must stay under a root: a symlink to a
    /// file outside is refused (symlinked directories are not followed by the loader).
    fn check_tree(&self, dir: &Path, root: &Path, asked: &str) -> Result<(), ServeError> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                self.check_tree(&path, root, asked)?;
            } else if kind.is_symlink() {
                let Ok(target) = fs::canonicalize(&path) else {
                    continue;
                };
                if target.is_file() && self.root_of(&target).is_none() {
                    return Err(ServeError::Path(format!(
                        "{asked}: {} links outside the allowed roots ({}); it is refused",
                        path.strip_prefix(root).unwrap_or(&path).display(),
                        self.roots_list()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The context of a call: one path as `rlm run --context` reads it, several as an array
    /// of documents, or the text.
    fn context(&self, args: &mut AnswerArgs) -> Result<(Context, Vec<String>), ServeError> {
        match (args.paths.take(), args.text.take()) {
            (Some(_), Some(_)) => Err(ServeError::Path(
                "give either `paths` or `text`, not both".to_owned(),
            )),
            (None, text) => Ok((Context::Text(text.unwrap_or_default()), Vec::new())),
            (Some(paths), None) if paths.is_empty() => {
                Err(ServeError::Path("`paths` is empty".to_owned()))
            }
            (Some(paths), None) => {
                let resolved = paths
                    .iter()
                    .map(|p| self.resolve(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut warnings = Vec::new();
                if let [only] = resolved.as_slice() {
                    let (context, more) = (self.load)(only).map_err(ServeError::Path)?;
                    return Ok((context, more));
                }
                let mut documents = Vec::new();
                for (asked, path) in paths.iter().zip(&resolved) {
                    let (context, more) = (self.load)(path).map_err(ServeError::Path)?;
                    warnings.extend(more);
                    match context {
                        Context::Documents(docs) => documents.extend(docs),
                        Context::Text(text) => documents.push(format!("==> {asked} <==\n{text}")),
                        Context::Json(value) => {
                            documents.push(format!("==> {asked} <==\n{value}"));
                        }
                        other => {
                            let info = other.info();
                            documents.push(format!("==> {asked} <==\n({})", info.kind));
                        }
                    }
                }
                Ok((Context::Documents(documents), warnings))
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
        let (run_context, warnings) = self.context(&mut args)?;

        // Progress: events become notifications, sent in order by one task, all of them
        // before the result (a client ignores progress that comes after it).
        let mut forwarder = None;
        let observer: Option<Arc<dyn Observer>> = context.meta.get_progress_token().map(|token| {
            let (tx, mut rx) = mpsc::unbounded_channel::<String>();
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
                    let _ = tx.send(text.trim_end().to_owned());
                }
            }) as Arc<dyn Observer>
        });

        let options = RunOptions {
            instructions: None,
            observer,
            cancel: context.ct.clone(),
        };
        let result = self.runner.run(args.query, run_context, options).await;
        if let Some(forwarder) = forwarder {
            // The run and its observer are gone, so the channel closes; a stuck client
            // cannot hold the result for long.
            let _ = tokio::time::timeout(PROGRESS_DRAIN, forwarder).await;
        }
        Ok(match result {
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
                self.roots_list()
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
