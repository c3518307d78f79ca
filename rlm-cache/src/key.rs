//! The cache key: a whole request, compared exactly.
//!
//! A key owns the request it was built from (moved in, never copied) and carries a 64-bit
//! fingerprint computed once, when the key is built. The fingerprint is only a hash: it
//! decides which bucket a key lands in and rejects most unequal keys cheaply, but two keys
//! are equal only when every field of their requests is equal (floats by their bits).

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use rlm_core::{Completion, CompletionRequest, FinishReason};
use serde_json::{Map, Number, Value};

/// Seeds the fingerprints of one cache (random per cache, so prompts cannot be crafted to
/// collide).
pub(crate) type FingerprintState = foldhash::quality::RandomState;

/// Approximate bookkeeping bytes of one entry beyond its text: the key and value
/// allocations, the `Arc`s and moka's own per-entry structures.
const ENTRY_OVERHEAD: usize = 256;
/// Approximate bytes of one `String`, `Vec` or JSON value header.
const HEADER: usize = 24;

/// A request as a cache key. Cloning shares the request.
#[derive(Clone)]
pub(crate) struct RequestKey(Arc<KeyInner>);

struct KeyInner {
    fingerprint: u64,
    /// Approximate bytes of the request, for the byte-bounded cache.
    weight: usize,
    request: CompletionRequest,
}

/// A borrowed request with its fingerprint: looks up a [`RequestKey`] without building one,
/// so a cache hit allocates nothing for its key.
pub(crate) struct Probe<'a> {
    fingerprint: u64,
    request: &'a CompletionRequest,
}

impl<'a> Probe<'a> {
    /// A probe for `request`, whose [`fingerprint`] is given.
    pub(crate) fn new(request: &'a CompletionRequest, fingerprint: u64) -> Self {
        Self {
            fingerprint,
            request,
        }
    }
}

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The same as `RequestKey`'s, as moka's `Equivalent` requires.
        state.write_u64(self.fingerprint);
    }
}

impl moka::Equivalent<RequestKey> for Probe<'_> {
    fn equivalent(&self, key: &RequestKey) -> bool {
        self.fingerprint == key.0.fingerprint && same_request(self.request, &key.0.request)
    }
}

impl RequestKey {
    /// Takes `request` and fingerprints it (one pass over its text).
    pub(crate) fn new(request: CompletionRequest, state: &FingerprintState) -> Self {
        let fingerprint = fingerprint(&request, state);
        Self::with_fingerprint(request, fingerprint)
    }

    /// Takes `request`, whose [`fingerprint`] is given.
    pub(crate) fn with_fingerprint(request: CompletionRequest, fingerprint: u64) -> Self {
        let weight = request_weight(&request);
        Self(Arc::new(KeyInner {
            fingerprint,
            weight,
            request,
        }))
    }

    /// The request this key stands for.
    pub(crate) fn request(&self) -> &CompletionRequest {
        &self.0.request
    }

    /// The weight of an entry with this key and `value`, in approximate bytes.
    pub(crate) fn entry_weight(&self, value: &Completion) -> u32 {
        let bytes = self
            .0
            .weight
            .saturating_add(completion_weight(value))
            .saturating_add(ENTRY_OVERHEAD);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

impl Hash for RequestKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.fingerprint);
    }
}

impl PartialEq for RequestKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.fingerprint == other.0.fingerprint
                && same_request(&self.0.request, &other.0.request))
    }
}

impl Eq for RequestKey {}

impl fmt::Debug for RequestKey {
    // Prompts can be huge (and private): show their shape, not their text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestKey")
            .field("fingerprint", &format_args!("{:016x}", self.0.fingerprint))
            .field("model", &self.0.request.model)
            .field("messages", &self.0.request.messages.len())
            .field("prompt_chars", &self.0.request.prompt_chars())
            .finish()
    }
}

/// Whether two requests are the same request: every field equal, floats compared by their
/// bits (so `0.0` and `-0.0` differ, and a NaN equals only the same NaN), JSON numbers of
/// different kinds (`1` and `1.0`) differ.
pub(crate) fn same_request(a: &CompletionRequest, b: &CompletionRequest) -> bool {
    // Destructured without `..`: a field added to `CompletionRequest` fails to compile here
    // instead of being silently ignored (which would make different requests collide).
    let CompletionRequest {
        model,
        messages,
        temperature,
        top_p,
        max_tokens,
        stop,
        seed,
        response_format,
        extra,
    } = a;
    // Cheap fields first; the (large) messages last but one.
    *max_tokens == b.max_tokens
        && *seed == b.seed
        && temperature.map(f32::to_bits) == b.temperature.map(f32::to_bits)
        && top_p.map(f32::to_bits) == b.top_p.map(f32::to_bits)
        && *model == b.model
        && *stop == b.stop
        && messages.len() == b.messages.len()
        && *messages == b.messages
        && *response_format == b.response_format
        && same_object(extra, &b.extra)
}

/// The 64-bit hash of every field of `request` (floats by bits, JSON objects in any order).
pub(crate) fn fingerprint(request: &CompletionRequest, state: &FingerprintState) -> u64 {
    let CompletionRequest {
        model,
        messages,
        temperature,
        top_p,
        max_tokens,
        stop,
        seed,
        response_format,
        extra,
    } = request;
    let mut hasher = state.build_hasher();
    model.hash(&mut hasher);
    messages.hash(&mut hasher);
    temperature.map(f32::to_bits).hash(&mut hasher);
    top_p.map(f32::to_bits).hash(&mut hasher);
    max_tokens.hash(&mut hasher);
    stop.hash(&mut hasher);
    seed.hash(&mut hasher);
    // The format as its JSON (objects in any order).
    match response_format.as_ref().map(serde_json::to_value) {
        Some(Ok(Value::Object(format))) => hash_object(&format, state, &mut hasher),
        Some(_) => 1u8.hash(&mut hasher),
        None => 0u8.hash(&mut hasher),
    }
    hash_object(extra, state, &mut hasher);
    hasher.finish()
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => same_number(a, b),
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(a), Value::Object(b)) => same_object(a, b),
        _ => false,
    }
}

/// JSON objects are equal when they have the same keys with equal values, in any order.
fn same_object(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(key, value)| b.get(key).is_some_and(|other| same_value(value, other)))
}

fn same_number(a: &Number, b: &Number) -> bool {
    if a.is_f64() || b.is_f64() {
        // Floats by their bits (`serde_json` compares them with `==`, which makes 0.0 and
        // -0.0 equal); a float never equals an integer.
        a.is_f64() && b.is_f64() && a.as_f64().map(f64::to_bits) == b.as_f64().map(f64::to_bits)
    } else {
        a == b
    }
}

fn hash_value<H: Hasher>(value: &Value, state: &FingerprintState, hasher: &mut H) {
    match value {
        Value::Null => hasher.write_u8(0),
        Value::Bool(b) => {
            hasher.write_u8(1);
            b.hash(hasher);
        }
        Value::Number(n) => {
            hasher.write_u8(2);
            if let Some(u) = n.as_u64() {
                hasher.write_u8(0);
                hasher.write_u64(u);
            } else if let Some(i) = n.as_i64() {
                hasher.write_u8(1);
                hasher.write_i64(i);
            } else if let Some(f) = n.as_f64() {
                hasher.write_u8(2);
                hasher.write_u64(f.to_bits());
            }
        }
        Value::String(s) => {
            hasher.write_u8(3);
            s.hash(hasher);
        }
        Value::Array(items) => {
            hasher.write_u8(4);
            hasher.write_usize(items.len());
            for item in items {
                hash_value(item, state, hasher);
            }
        }
        Value::Object(map) => {
            hasher.write_u8(5);
            hash_object(map, state, hasher);
        }
    }
}

/// Hashes an object independently of its key order (equality ignores the order too, and
/// `serde_json`'s `preserve_order` feature keeps insertion order).
fn hash_object<H: Hasher>(map: &Map<String, Value>, state: &FingerprintState, hasher: &mut H) {
    hasher.write_usize(map.len());
    let mut sum = 0u64;
    for (key, value) in map {
        let mut entry = state.build_hasher();
        key.hash(&mut entry);
        hash_value(value, state, &mut entry);
        sum = sum.wrapping_add(entry.finish());
    }
    hasher.write_u64(sum);
}

fn request_weight(request: &CompletionRequest) -> usize {
    let messages: usize = request
        .messages
        .iter()
        // What the key keeps alive: a shared prompt's whole buffer, not only its length.
        .map(|m| m.content.held_bytes() + HEADER + 8)
        .sum();
    let stop: usize = request.stop.iter().map(|s| s.len() + HEADER).sum();
    request.model.len() + messages + stop + object_weight(&request.extra)
}

fn value_weight(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => HEADER,
        Value::String(s) => HEADER + s.len(),
        Value::Array(items) => HEADER + items.iter().map(value_weight).sum::<usize>(),
        Value::Object(map) => object_weight(map),
    }
}

fn object_weight(map: &Map<String, Value>) -> usize {
    map.iter()
        .map(|(key, value)| HEADER + key.len() + value_weight(value))
        .sum()
}

fn completion_weight(completion: &Completion) -> usize {
    let reason = match &completion.finish_reason {
        Some(FinishReason::Other(other)) => other.len(),
        _ => 0,
    };
    completion.text.len() + completion.model.len() + reason + 2 * HEADER
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlm_core::Message;
    use serde_json::json;

    /// One seed for every key of a test, as in one cache.
    static STATE: std::sync::LazyLock<FingerprintState> =
        std::sync::LazyLock::new(FingerprintState::default);

    fn key(request: CompletionRequest) -> RequestKey {
        RequestKey::new(request, &STATE)
    }

    #[test]
    fn equal_fingerprints_are_not_enough() {
        // Forge a collision: same fingerprint, different prompts.
        let a = RequestKey(Arc::new(KeyInner {
            fingerprint: 7,
            weight: 0,
            request: CompletionRequest::prompt("m", "a"),
        }));
        let b = RequestKey(Arc::new(KeyInner {
            fingerprint: 7,
            weight: 0,
            request: CompletionRequest::prompt("m", "b"),
        }));
        assert_ne!(a, b);
        let c = RequestKey(Arc::new(KeyInner {
            fingerprint: 7,
            weight: 0,
            request: CompletionRequest::prompt("m", "a"),
        }));
        assert_eq!(a, c);
    }

    #[test]
    fn same_state_same_fingerprint() {
        let state = FingerprintState::default();
        let request = CompletionRequest::prompt("m", "hello")
            .with_temperature(0.5)
            .with_extra(
                "response_format",
                json!({"type": "json_object", "n": [1, 2.5]}),
            );
        let a = RequestKey::new(request.clone(), &state);
        let b = RequestKey::new(request, &state);
        assert_eq!(a.0.fingerprint, b.0.fingerprint);
        assert_eq!(a, b);
    }

    #[test]
    fn floats_compare_by_bits() {
        let zero = key(CompletionRequest::prompt("m", "p").with_temperature(0.0));
        let negative_zero = key(CompletionRequest::prompt("m", "p").with_temperature(-0.0));
        assert_ne!(zero, negative_zero);
        let nan = CompletionRequest::prompt("m", "p").with_top_p(f32::NAN);
        assert!(same_request(&nan, &nan.clone()));
        assert!(!same_request(
            &CompletionRequest::prompt("m", "p").with_temperature(0.7),
            &CompletionRequest::prompt("m", "p").with_temperature(0.700_000_05),
        ));
    }

    #[test]
    fn json_numbers_and_objects_compare_exactly() {
        let with = |v: Value| CompletionRequest::prompt("m", "p").with_extra("x", v);
        assert!(!same_request(&with(json!(1)), &with(json!(1.0))));
        assert!(!same_request(&with(json!(0.0)), &with(json!(-0.0))));
        assert!(!same_request(&with(json!(-1)), &with(json!(1))));
        assert!(!same_request(&with(json!([1, 2])), &with(json!([2, 1]))));
        assert!(!same_request(
            &with(json!({"a": 1})),
            &with(json!({"a": 1, "b": null}))
        ));
        assert!(!same_request(&with(json!("1")), &with(json!(1))));
        assert!(same_request(
            &with(json!({"a": [1, {"b": 2.5}], "c": true})),
            &with(json!({"c": true, "a": [1, {"b": 2.5}]})),
        ));
        // Key order never changes the fingerprint either.
        let state = FingerprintState::default();
        let mut forward = Map::new();
        forward.insert("a".into(), json!(1));
        forward.insert("b".into(), json!(2));
        let mut backward = Map::new();
        backward.insert("b".into(), json!(2));
        backward.insert("a".into(), json!(1));
        let mut h1 = state.build_hasher();
        let mut h2 = state.build_hasher();
        hash_object(&forward, &state, &mut h1);
        hash_object(&backward, &state, &mut h2);
        assert_eq!(h1.finish(), h2.finish());
    }

    #[test]
    fn message_boundaries_and_roles_matter() {
        let one = CompletionRequest::new("m").with_user("ab");
        let two = CompletionRequest::new("m").with_user("a").with_user("b");
        let system = CompletionRequest::new("m").with_message(Message::system("ab"));
        assert!(!same_request(&one, &two));
        assert!(!same_request(&one, &system));
        assert_ne!(key(one.clone()), key(two));
        assert_eq!(key(one.clone()), key(one));
    }

    #[test]
    fn weight_counts_the_text() {
        let small = key(CompletionRequest::prompt("m", "x"));
        let large = key(CompletionRequest::prompt("m", "x".repeat(25_000)));
        let reply = Completion::new("m", "ok");
        assert!(small.entry_weight(&reply) < 1_000);
        assert!(large.entry_weight(&reply) > 25_000);
        let huge_reply = Completion::new("m", "y".repeat(10_000));
        assert!(small.entry_weight(&huge_reply) > 10_000);
        // A prompt built by appending may hold twice its length: the key keeps it all alive.
        // Weighed by its length, a cache bounded at 256 MiB held about 500 MiB of them.
        let mut appended = String::with_capacity(50_000);
        appended.push_str(&"x".repeat(25_000));
        let roomy = key(CompletionRequest::prompt("m", appended));
        assert!(roomy.entry_weight(&reply) > 50_000);
    }
}
