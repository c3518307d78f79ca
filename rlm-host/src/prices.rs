//! Prices: a user's prices file (`--prices FILE`) over the built-in table.
//!
//! ```
//! let prices = rlm_host::prices::load(None)?;
//! assert!(prices.get("gpt-4o-mini").is_some(), "the built-in table");
//! # Ok::<(), rlm_host::HostError>(())
//! ```

use std::path::Path;

use rlm_core::cost::Prices;

use crate::HostError;

/// The built-in prices with the file's on top (`None`: the built-in table alone). The file is
/// TOML when its name ends in `.toml`, else JSON (and TOML when it is not JSON):
/// `{MODEL: {input, cached_input, output}}` in USD per million tokens.
///
/// # Errors
/// [`HostError::Input`]: the file cannot be read or is not such a table.
pub fn load(path: Option<&Path>) -> Result<Prices, HostError> {
    let Some(path) = path else {
        return Ok(Prices::builtin());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        HostError::Input(format!(
            "cannot read the prices file {}: {e}",
            path.display()
        ))
    })?;
    let toml_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let parsed = if toml_name {
        from_toml(&text)
    } else {
        Prices::from_json(&text).or_else(|json_error| {
            // Not JSON: TOML, if it reads as TOML; else the JSON error.
            from_toml(&text).map_err(|_| json_error)
        })
    };
    let prices = parsed.map_err(|e| {
        HostError::Input(format!(
            "the prices file {} is not {{MODEL: {{input, cached_input, output}}}} in USD per \
             million tokens: {e}",
            path.display()
        ))
    })?;
    Ok(Prices::builtin().merged(prices))
}

fn from_toml(text: &str) -> Result<Prices, String> {
    toml::from_str::<Prices>(text)
        .map_err(|e| e.message().to_owned())?
        .checked()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("rlm-prices-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn json_and_toml_files_override_the_table() {
        let json = file("p.json", r#"{"local": {"input": 0.5, "output": 1}}"#);
        let toml = file(
            "p.toml",
            "[\"gpt-4o\"]\ninput = 1.0\ncached_input = 0.1\noutput = 2.0\n",
        );
        let prices = load(Some(&json)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prices.get("local").map(|p| p.output), Some(1.0));
        assert!(
            prices.get("gpt-4o-mini").is_some(),
            "the built-in table stays"
        );
        let prices = load(Some(&toml)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prices.get("gpt-4o").map(|p| p.input), Some(1.0));
        let _ = std::fs::remove_file(json);
        let _ = std::fs::remove_file(toml);
    }

    #[test]
    fn bad_files_are_input_errors() {
        let missing = std::env::temp_dir().join("rlm-prices-does-not-exist.json");
        assert!(matches!(load(Some(&missing)), Err(HostError::Input(_))));
        for (name, text) in [
            ("neg.json", r#"{"m": {"input": -1, "output": 1}}"#),
            ("typo.toml", "[m]\ninput = 1\noutptu = 2\n"),
            ("junk.json", "not prices"),
        ] {
            let path = file(name, text);
            let error = load(Some(&path))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("is not {MODEL"), "{name}: {error}");
            let _ = std::fs::remove_file(path);
        }
    }
}
