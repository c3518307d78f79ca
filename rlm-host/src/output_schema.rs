//! `--output-schema FILE`: a JSON Schema read from a file, checked and compiled before a run
//! starts (see [`rlm_repl::schema`]).

use std::path::Path;

use rlm_repl::schema::{MAX_SCHEMA_BYTES, OutputSchema};

use crate::HostError;

/// The most bytes read from a schema file: four times the compact limit, room for
/// indentation; the compact schema must still fit [`MAX_SCHEMA_BYTES`].
pub const MAX_SCHEMA_FILE_BYTES: usize = 4 * MAX_SCHEMA_BYTES;

/// Reads and compiles the output schema in `path`.
///
/// # Errors
/// [`HostError::Input`]: the file cannot be read. [`HostError::Usage`]: it is larger than
/// [`MAX_SCHEMA_FILE_BYTES`], not JSON, or not a valid JSON Schema; the message names the
/// flag, the file and the problem.
pub fn load(path: &Path) -> Result<OutputSchema, HostError> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| HostError::Input(format!("cannot read --output-schema {shown}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_SCHEMA_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| HostError::Input(format!("cannot read --output-schema {shown}: {e}")))?;
    if bytes.len() > MAX_SCHEMA_FILE_BYTES {
        return Err(HostError::Usage(format!(
            "--output-schema {shown}: the file holds more than {MAX_SCHEMA_FILE_BYTES} bytes, \
             the most a schema file may hold"
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| HostError::Usage(format!("--output-schema {shown}: not UTF-8 text")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    parse(text).map_err(|message| HostError::Usage(format!("--output-schema {shown}: {message}")))
}

/// Compiles a schema given as JSON text; the error says what is wrong with it.
pub fn parse(text: &str) -> Result<OutputSchema, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not JSON (line {} column {}: {e})", e.line(), e.column()))?;
    OutputSchema::new(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rlm-host-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_default();
        path
    }

    #[test]
    fn each_bad_file_names_its_problem() {
        let good = write("good.json", r#"{"type": "object", "required": ["a"]}"#);
        assert!(load(&good).is_ok());
        let not_json = write("bad.json", "{type: object}");
        let error = load(&not_json).err().map(|e| (e.kind(), e.to_string()));
        assert!(
            matches!(&error, Some(("usage", m)) if m.contains("bad.json: not JSON (line 1 column 2")),
            "{error:?}"
        );
        let invalid = write("invalid.json", r#"{"type": "strnig"}"#);
        let error = load(&invalid).err().map(|e| (e.kind(), e.to_string()));
        assert!(
            matches!(&error, Some(("usage", m)) if m.contains("invalid output schema: not a valid JSON Schema")),
            "{error:?}"
        );
        let big = write("big.json", &" ".repeat(MAX_SCHEMA_FILE_BYTES + 1));
        let error = load(&big).err().map(|e| (e.kind(), e.to_string()));
        assert!(matches!(&error, Some(("usage", _))), "{error:?}");
        let missing = load(Path::new("/nonexistent/schema.json"))
            .err()
            .map(|e| e.kind());
        assert_eq!(missing, Some("input"));
    }
}
