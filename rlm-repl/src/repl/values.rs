//! What every part of the sandbox says about script values: errors the script sees, values
//! as text, and how two values compare.

use std::cmp::Ordering;

use rhai::{Dynamic, EvalAltResult};

/// The result of a native function called from a script.
pub(crate) type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// A runtime error the script sees.
pub(crate) fn script_error(message: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        rhai::Position::NONE,
    ))
}

/// A value as text: strings as they are, arrays and maps as JSON, the rest as Rhai prints
/// them.
pub(crate) fn to_text(value: &Dynamic) -> String {
    if let Ok(s) = value.as_immutable_string_ref() {
        return s.as_str().to_owned();
    }
    if value.is_array() || value.is_map() {
        if let Ok(json) = rhai::serde::from_dynamic::<serde_json::Value>(value) {
            return json.to_string();
        }
    }
    if value.is_unit() {
        return "()".to_owned();
    }
    value.to_string()
}

/// Orders two values of comparable types (numbers, strings, characters, booleans, and
/// arrays of them, item by item as Python orders tuples).
pub(crate) fn compare(a: &Dynamic, b: &Dynamic) -> Option<Ordering> {
    if let (Ok(x), Ok(y)) = (a.as_int(), b.as_int()) {
        return Some(x.cmp(&y));
    }
    let as_f64 = |v: &Dynamic| {
        v.as_float()
            .ok()
            .or_else(|| v.as_int().ok().map(|n| n as f64))
    };
    if let (Some(x), Some(y)) = (as_f64(a), as_f64(b)) {
        return x.partial_cmp(&y);
    }
    if let (Ok(x), Ok(y)) = (a.as_immutable_string_ref(), b.as_immutable_string_ref()) {
        return Some(x.as_str().cmp(y.as_str()));
    }
    if let (Ok(x), Ok(y)) = (a.as_char(), b.as_char()) {
        return Some(x.cmp(&y));
    }
    if let (Ok(x), Ok(y)) = (a.as_bool(), b.as_bool()) {
        return Some(x.cmp(&y));
    }
    if let (Ok(x), Ok(y)) = (a.as_array_ref(), b.as_array_ref()) {
        for (x, y) in x.iter().zip(y.iter()) {
            match compare(x, y)? {
                Ordering::Equal => {}
                order => return Some(order),
            }
        }
        return Some(x.len().cmp(&y.len()));
    }
    None
}
