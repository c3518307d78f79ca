//! `tools=`: Python functions (sync or async) as host functions of the REPL.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rlm_host::RlmBuilder;

use crate::callback::Callable;
use crate::convert::{to_json, to_py};

/// One Python tool: its name, its description (the function's docstring, first paragraph)
/// and the function.
pub(crate) struct PyTool {
    name: String,
    description: String,
    func: Callable,
}

/// The tools of `tools=` (`{"name": fn}`), in the dict's order.
///
/// # Errors
/// `TypeError` for a key that is not a str or a value that is not callable.
pub(crate) fn from_dict(tools: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<PyTool>> {
    let Some(tools) = tools else {
        return Ok(Vec::new());
    };
    let inspect = tools.py().import("inspect")?;
    let mut out = Vec::with_capacity(tools.len());
    for (name, func) in tools.iter() {
        let name: String = name
            .extract()
            .map_err(|_| PyTypeError::new_err("tools= keys must be str (the REPL's names)"))?;
        if !func.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "tools[{name:?}] must be callable, not {}",
                crate::convert::type_name(&func)
            )));
        }
        let doc = inspect.call_method1("getdoc", (&func,))?;
        let description = if doc.is_none() {
            String::new()
        } else {
            let doc: String = doc.extract()?;
            doc.split("\n\n")
                .next()
                .unwrap_or("")
                .trim()
                .replace('\n', " ")
        };
        out.push(PyTool {
            func: Callable::new(func.unbind(), format!("tool {name:?}")),
            name,
            description,
        });
    }
    Ok(out)
}

impl PyTool {
    /// Registers the tool on `builder`: the REPL's value goes to the function as one
    /// positional argument (none for `name()`), its return value comes back as JSON.
    pub(crate) fn register(&self, builder: RlmBuilder) -> RlmBuilder {
        let func = self.func.clone();
        builder.tool(&self.name, &self.description, move |argument| {
            let func = func.clone();
            async move {
                func.call(
                    move |py| {
                        if argument.is_null() {
                            Ok(PyTuple::empty(py))
                        } else {
                            PyTuple::new(py, [to_py(py, &argument)?])
                        }
                    },
                    to_json,
                )
                .await
            }
        })
    }
}
