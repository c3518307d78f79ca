//! Keyword arguments to [`Settings`]: the names are `rlm run`'s flags with underscores.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rlm_host::Settings;

use crate::errors::UsageError;

/// What the keywords choose beyond [`Settings`].
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// Replaces the built-in system prompt (the text itself).
    pub(crate) system_prompt: Option<String>,
    /// A JSON Lines trace of every run.
    pub(crate) trace: Option<PathBuf>,
    /// The most bytes read from a context given as a path (0: no limit).
    pub(crate) max_context_bytes: Option<usize>,
}

/// Every keyword [`apply`] takes, for the message about an unknown one.
pub(crate) const KEYWORDS: &[&str] = &[
    "child_model",
    "api_key_env",
    "timeout",
    "sub_timeout",
    "max_retries",
    "rpm",
    "tpm",
    "sub_rpm",
    "sub_tpm",
    "max_iterations",
    "max_concurrent",
    "max_sub_calls",
    "max_total_tokens",
    "max_depth",
    "child_max_iterations",
    "sub_max_prompt_tokens",
    "max_time",
    "max_cost",
    "prices",
    "max_memory",
    "block_timeout",
    "max_string_bytes",
    "max_context_bytes",
    "no_cache",
    "cache_dir",
    "cache_max_bytes",
    "cache_ttl",
    "redis",
    "redis_prefix",
    "system_prompt",
    "trace",
];

/// Applies the keywords `limits` to `settings` and `extras`. `None` keeps a default.
///
/// # Errors
/// `TypeError` for an unknown keyword; [`UsageError`] for a value the flag would refuse.
pub(crate) fn apply(
    settings: &mut Settings,
    extras: &mut Extras,
    limits: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let Some(limits) = limits else {
        return Ok(());
    };
    for (key, value) in limits.iter() {
        let key: String = key.extract()?;
        if value.is_none() {
            if !KEYWORDS.contains(&key.as_str()) {
                return Err(unknown(&key));
            }
            continue;
        }
        let v = Value { key: &key, value };
        match key.as_str() {
            "child_model" => settings.child_model = Some(v.text()?),
            "api_key_env" => settings.api_key_env = v.text()?,
            "timeout" => settings.timeout = v.seconds()?,
            "sub_timeout" => settings.sub_timeout = v.seconds()?,
            "max_retries" => settings.max_retries = v.int(0)?,
            "rpm" => settings.rpm = v.int(0)?,
            "tpm" => settings.tpm = v.int(0)?,
            "sub_rpm" => settings.sub_rpm = Some(v.int(0)?),
            "sub_tpm" => settings.sub_tpm = Some(v.int(0)?),
            "max_iterations" => settings.max_iterations = v.int(1)?,
            "max_concurrent" => {
                settings.max_concurrent = v.int(1)?;
                if settings.max_concurrent > 4096 {
                    return Err(v.refused("a whole number from 1 to 4096"));
                }
            }
            "max_sub_calls" => settings.max_sub_calls = Some(v.int(0)?),
            "max_total_tokens" => settings.max_total_tokens = Some(v.int(0)?),
            "max_depth" => settings.max_depth = v.int(1)?,
            "child_max_iterations" => settings.child_max_iterations = v.int(1)?,
            "sub_max_prompt_tokens" => settings.sub_max_prompt_tokens = Some(v.int(1)?),
            "max_time" => settings.max_time = Some(v.seconds()?),
            "max_cost" => {
                let usd: f64 = v.number()?;
                if !usd.is_finite() || usd < 0.0 {
                    return Err(v.refused("a number of US dollars, at least 0"));
                }
                settings.max_cost = Some(usd);
            }
            "prices" => settings.prices = Some(v.path()?),
            "max_memory" => settings.max_memory = v.int(0)?,
            "block_timeout" => settings.block_timeout = v.seconds()?,
            "max_string_bytes" => settings.max_string_bytes = v.int(0)?,
            "max_context_bytes" => extras.max_context_bytes = Some(v.int(0)?),
            "no_cache" => settings.no_cache = v.flag()?,
            "cache_dir" => settings.cache_dir = Some(v.path()?.into_os_string()),
            "cache_max_bytes" => settings.cache_max_bytes = v.int(0)?,
            "cache_ttl" => settings.cache_ttl = Some(v.seconds()?),
            "redis" => settings.redis = Some(v.text()?),
            "redis_prefix" => settings.redis_prefix = v.text()?,
            "system_prompt" => extras.system_prompt = Some(v.text()?),
            "trace" => extras.trace = Some(v.path()?),
            _ => return Err(unknown(&key)),
        }
    }
    Ok(())
}

fn unknown(key: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "unexpected keyword argument {key:?}; the limits are rlm run's flags with underscores: {}",
        KEYWORDS.join(", ")
    ))
}

/// One keyword's value.
struct Value<'a, 'py> {
    key: &'a str,
    value: Bound<'py, PyAny>,
}

impl Value<'_, '_> {
    fn refused(&self, wanted: &str) -> PyErr {
        UsageError::new_err(format!(
            "{}={}: must be {wanted}",
            self.key,
            self.value
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "?".to_owned())
        ))
    }

    fn text(&self) -> PyResult<String> {
        self.value
            .extract::<String>()
            .map_err(|_| self.refused("a string"))
    }

    fn path(&self) -> PyResult<PathBuf> {
        self.value
            .extract::<PathBuf>()
            .map_err(|_| self.refused("a path (str or pathlib.Path)"))
    }

    fn flag(&self) -> PyResult<bool> {
        self.value
            .extract::<bool>()
            .map_err(|_| self.refused("True or False"))
    }

    fn number(&self) -> PyResult<f64> {
        if self.value.is_instance_of::<pyo3::types::PyBool>() {
            return Err(self.refused("a number"));
        }
        self.value
            .extract::<f64>()
            .map_err(|_| self.refused("a number"))
    }

    fn seconds(&self) -> PyResult<Duration> {
        let secs = self.number()?;
        if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
            return Err(self.refused("a number of seconds above 0"));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn int<T>(&self, min: u64) -> PyResult<T>
    where
        T: TryFrom<u64>,
    {
        let wanted = || format!("a whole number, at least {min}");
        if self.value.is_instance_of::<pyo3::types::PyBool>() {
            return Err(self.refused(&wanted()));
        }
        let n: u64 = self
            .value
            .extract::<u64>()
            .map_err(|_| self.refused(&wanted()))?;
        if n < min {
            return Err(self.refused(&wanted()));
        }
        T::try_from(n).map_err(|_| self.refused("a smaller whole number"))
    }
}
