//! Cost in dollars: prices per model, the cost of a run's usage, and a cost budget.
//!
//! - [`Price`]: USD per million input, cached-input and output tokens of one model.
//! - [`Prices`]: a table of prices by model name; [`Prices::builtin`] holds well-known models
//!   (as listed on [`BUILTIN_PRICES_DATE`]), and a user's table (`--prices FILE`) overrides it
//!   with [`Prices::merged`].
//! - [`CostReport`]: the cost of a run, per model and in total, with the models that have no
//!   price (they cost nothing and are listed as unpriced).
//! - [`CostBudget`]: `--max-cost`. Each call reserves its estimated cost before it is sent and
//!   settles it with the reported usage when it ends; a reservation that does not fit is
//!   refused, so concurrent calls never overspend by more than estimates can be wrong.
//!
//! ```
//! use rlm_core::Usage;
//! use rlm_core::cost::{CostBudget, Price, Prices};
//! use rlm_core::usage::ModelUsage;
//!
//! let prices = Prices::builtin().merged(Prices::from_iter([("my-model", Price::new(1.0, 0.5, 2.0))]));
//! let usage = [("my-model".to_owned(), ModelUsage { calls: 1, prompt_tokens: 1_000_000, ..Default::default() })];
//! let report = prices.report(usage.iter().map(|(m, u)| (m.as_str(), u)));
//! assert_eq!(report.total, 1.0);
//!
//! let budget = CostBudget::new(0.01);
//! let reservation = budget.reserve(0.004).expect("fits");
//! budget.settle(reservation, 0.003);
//! assert!(budget.reserve(0.008).is_none()); // 0.003 spent: 0.008 more does not fit
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::usage::ModelUsage;
use crate::{CompletionRequest, Usage};

/// When the built-in price table was last checked against the providers' price pages.
pub const BUILTIN_PRICES_DATE: &str = "2025-09";

/// Completion tokens assumed for a call whose request sets no `max_tokens`, when its cost is
/// estimated for a [`CostBudget`] reservation.
pub const RESERVED_COMPLETION_TOKENS: u64 = 1_000;

/// The price of one model, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million prompt tokens.
    pub input: f64,
    /// USD per million prompt tokens served from the provider's prompt cache (default: the
    /// input price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// USD per million completion tokens.
    pub output: f64,
}

impl Price {
    /// `input`, `cached_input` and `output` USD per million tokens.
    pub fn new(input: f64, cached_input: f64, output: f64) -> Self {
        Self {
            input,
            cached_input: Some(cached_input),
            output,
        }
    }

    /// The cost in USD of `prompt` tokens (of which `cached` came from the prompt cache) and
    /// `completion` tokens.
    pub fn cost(&self, prompt: u64, cached: u64, completion: u64) -> f64 {
        let cached = cached.min(prompt);
        let fresh = (prompt - cached) as f64 * self.input;
        let cached = cached as f64 * self.cached_input.unwrap_or(self.input);
        (fresh + cached + completion as f64 * self.output) / 1e6
    }

    /// The cost in USD of one call's usage.
    pub fn usage_cost(&self, usage: &Usage) -> f64 {
        self.cost(
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens,
        )
    }

    /// Checks that every price is a finite number, at least 0.
    fn check(&self, model: &str) -> Result<(), String> {
        let fields = [
            ("input", Some(self.input)),
            ("cached_input", self.cached_input),
            ("output", Some(self.output)),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                if !value.is_finite() || value < 0.0 {
                    return Err(format!(
                        "the {name} price of {model:?} must be a number of USD per million \
                         tokens, at least 0 (got {value})"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Prices by model name.
///
/// Lookup ([`Prices::get`]) tries the exact name, then the name without a provider prefix
/// (`openai/gpt-4o` → `gpt-4o`), then without a date or `-latest` suffix
/// (`gpt-4o-2024-08-06` → `gpt-4o`).
///
/// Cloning is cheap (the table is shared until one of the copies changes): every run of a
/// batch or a server carries the same table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    models: Arc<BTreeMap<String, Price>>,
}

impl Serialize for Prices {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.models.as_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Prices {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(deserializer).map(|models| Self {
            models: Arc::new(models),
        })
    }
}

impl<S: Into<String>> FromIterator<(S, Price)> for Prices {
    fn from_iter<I: IntoIterator<Item = (S, Price)>>(iter: I) -> Self {
        Self {
            models: Arc::new(iter.into_iter().map(|(m, p)| (m.into(), p)).collect()),
        }
    }
}

impl Prices {
    /// The built-in table of well-known models, as listed by the providers on
    /// [`BUILTIN_PRICES_DATE`]. Prices change: pass your own for anything that matters.
    pub fn builtin() -> Self {
        // (model, input, cached input, output), USD per million tokens.
        const TABLE: &[(&str, f64, f64, f64)] = &[
            ("gpt-5", 1.25, 0.125, 10.0),
            ("gpt-5-mini", 0.25, 0.025, 2.0),
            ("gpt-5-nano", 0.05, 0.005, 0.4),
            ("gpt-4.1", 2.0, 0.5, 8.0),
            ("gpt-4.1-mini", 0.4, 0.1, 1.6),
            ("gpt-4.1-nano", 0.1, 0.025, 0.4),
            ("gpt-4o", 2.5, 1.25, 10.0),
            ("gpt-4o-mini", 0.15, 0.075, 0.6),
            ("o3", 2.0, 0.5, 8.0),
            ("o3-mini", 1.1, 0.55, 4.4),
            ("o4-mini", 1.1, 0.275, 4.4),
            ("claude-opus-4-1", 15.0, 1.5, 75.0),
            ("claude-sonnet-4", 3.0, 0.3, 15.0),
            ("claude-sonnet-4-5", 3.0, 0.3, 15.0),
            ("claude-haiku-4-5", 1.0, 0.1, 5.0),
            ("gemini-2.5-pro", 1.25, 0.31, 10.0),
            ("gemini-2.5-flash", 0.3, 0.075, 2.5),
            ("deepseek-chat", 0.28, 0.028, 0.42),
            ("deepseek-reasoner", 0.28, 0.028, 0.42),
        ];
        // Built once: every run's builder starts from it (a batch builds thousands).
        static BUILTIN: std::sync::OnceLock<Prices> = std::sync::OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                TABLE
                    .iter()
                    .map(|&(model, input, cached, output)| {
                        (model, Price::new(input, cached, output))
                    })
                    .collect()
            })
            .clone()
    }

    /// Reads a table from JSON: `{"MODEL": {"input": 2.5, "cached_input": 1.25, "output": 10}}`
    /// (USD per million tokens; `cached_input` optional).
    ///
    /// # Errors
    /// A message naming what is wrong: not JSON of that shape, an unknown field, or a price
    /// that is negative or not a number.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let prices: Prices = serde_json::from_str(text).map_err(|e| e.to_string())?;
        prices.checked()
    }

    /// Checks every price (finite, at least 0), for tables read by other means (e.g. TOML).
    ///
    /// # Errors
    /// A message naming the first model with a bad price.
    pub fn checked(self) -> Result<Self, String> {
        for (model, price) in self.models.iter() {
            price.check(model)?;
        }
        Ok(self)
    }

    /// This table with `overrides` on top (an override replaces a model's whole price).
    pub fn merged(mut self, overrides: Prices) -> Self {
        let overrides = Arc::unwrap_or_clone(overrides.models);
        Arc::make_mut(&mut self.models).extend(overrides);
        self
    }

    /// Sets the price of `model`.
    pub fn insert(&mut self, model: impl Into<String>, price: Price) {
        Arc::make_mut(&mut self.models).insert(model.into(), price);
    }

    /// The models of the table and their prices.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.models.iter().map(|(m, p)| (m.as_str(), p))
    }

    /// The price of `model`, if the table has one (see the lookup rules above).
    pub fn get(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.models.get(model) {
            return Some(price);
        }
        let bare = model.rsplit_once('/').map_or(model, |(_, bare)| bare);
        if let Some(price) = self.models.get(bare) {
            return Some(price);
        }
        let base = strip_version(bare)?;
        self.models.get(base)
    }

    /// The cost in USD of one call of `model`, or `None` when the model has no price.
    pub fn call_cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.get(model).map(|price| price.usage_cost(usage))
    }

    /// The estimated cost in USD of sending `request` (its prompt at about four bytes a token,
    /// plus its `max_tokens` or [`RESERVED_COMPLETION_TOKENS`] completion tokens); 0 for a
    /// model without a price.
    pub fn estimate(&self, request: &CompletionRequest) -> f64 {
        let Some(price) = self.get(&request.model) else {
            return 0.0;
        };
        let completion = request
            .max_tokens
            .map_or(RESERVED_COMPLETION_TOKENS, u64::from);
        price.cost(request.estimated_prompt_tokens(), 0, completion)
    }

    /// The cost of the usage of a run, per model.
    pub fn report<'a>(
        &self,
        usage: impl IntoIterator<Item = (&'a str, &'a ModelUsage)>,
    ) -> CostReport {
        let mut report = CostReport::default();
        for (model, usage) in usage {
            match self.get(model) {
                Some(price) => {
                    let cost = price.cost(
                        usage.prompt_tokens,
                        usage.cached_tokens,
                        usage.completion_tokens,
                    );
                    *report.by_model.entry(model.to_owned()).or_default() += cost;
                }
                None if (usage.calls > 0 || usage.total_tokens() > 0)
                    && !report.unpriced.iter().any(|m| m == model) =>
                {
                    report.unpriced.push(model.to_owned());
                }
                None => {}
            }
        }
        for cost in report.by_model.values_mut() {
            *cost = round_usd(*cost);
        }
        report.total = round_usd(report.by_model.values().sum());
        report.unpriced.sort();
        report
    }
}

/// `gpt-4o-2024-08-06` → `gpt-4o`, `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`,
/// `gpt-4o-latest` → `gpt-4o`; `None` when there is no such suffix.
fn strip_version(model: &str) -> Option<&str> {
    if let Some(base) = model.strip_suffix("-latest") {
        return Some(base);
    }
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    // -YYYY-MM-DD
    if model.len() > 11 {
        let (base, date) = model.split_at(model.len() - 11);
        let parts: Vec<&str> = date.split('-').collect();
        if parts.len() == 4
            && parts[0].is_empty()
            && digits(parts[1], 4)
            && digits(parts[2], 2)
            && digits(parts[3], 2)
        {
            return Some(base);
        }
    }
    // -YYYYMMDD or -MMDD
    let (base, tail) = model.rsplit_once('-')?;
    (digits(tail, 8) || digits(tail, 4)).then_some(base)
}

/// Rounds to a millionth of a dollar (floating-point sums print as `0.30000000000000004`).
fn round_usd(usd: f64) -> f64 {
    // `+ 0.0` turns -0.0 (an empty sum of floats is -0.0) into 0.0, which prints as `0.0`.
    (usd * 1e6).round() / 1e6 + 0.0
}

/// What a run cost: `{"total": float, "by_model": {MODEL: float}, "unpriced": [MODEL]}`, in
/// USD. Models without a price are in `unpriced` (not in `by_model`) and count 0 in `total`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// USD over every priced model.
    pub total: f64,
    /// USD per priced model.
    pub by_model: BTreeMap<String, f64>,
    /// Models that were used but have no price, sorted.
    pub unpriced: Vec<String>,
}

/// Nanodollars in a dollar: the budget counts in whole nanodollars.
const NANOS: f64 = 1e9;

fn to_nanos(usd: f64) -> u64 {
    if usd > 0.0 {
        // `as` saturates at u64::MAX for huge and infinite values; NaN fails the test above.
        (usd * NANOS).ceil() as u64
    } else {
        0
    }
}

/// What [`CostBudget::reserve`] took, to hand back to [`CostBudget::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use = "a reservation is settled (or released) when the call ends"]
pub struct Reservation {
    nanos: u64,
}

impl Reservation {
    /// An empty reservation (for a call that needs none).
    pub fn none() -> Self {
        Self::default()
    }

    /// The amount reserved, in USD.
    pub fn usd(&self) -> f64 {
        self.nanos as f64 / NANOS
    }
}

/// A budget in USD, safe to share between concurrent calls.
///
/// It counts what is committed: the cost of finished calls (spent) plus the estimates of calls
/// in flight (reserved). [`reserve`](Self::reserve) refuses an estimate that would take the
/// committed total over the limit; [`settle`](Self::settle) replaces a call's estimate by its
/// real cost. A call may cost more than its estimate, so the spent total can pass the limit by
/// the difference; [`exhausted`](Self::exhausted) then says so.
#[derive(Debug)]
pub struct CostBudget {
    max: u64,
    committed: AtomicU64,
    spent: AtomicU64,
}

impl CostBudget {
    /// A budget of `max_usd` dollars (negative or NaN: 0).
    pub fn new(max_usd: f64) -> Self {
        Self {
            max: to_nanos(max_usd),
            committed: AtomicU64::new(0),
            spent: AtomicU64::new(0),
        }
    }

    /// The limit in USD.
    pub fn max_usd(&self) -> f64 {
        self.max as f64 / NANOS
    }

    /// USD spent by settled calls.
    pub fn spent_usd(&self) -> f64 {
        self.spent.load(Ordering::SeqCst) as f64 / NANOS
    }

    /// Reserves `estimate_usd` for a call about to be sent; `None` when it does not fit in
    /// what is left (nothing is reserved then). A zero estimate (an unpriced model) fits while
    /// the budget is not [`exhausted`](Self::exhausted).
    pub fn reserve(&self, estimate_usd: f64) -> Option<Reservation> {
        if self.exhausted() {
            return None;
        }
        let nanos = to_nanos(estimate_usd);
        self.committed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |committed| {
                committed
                    .checked_add(nanos)
                    .filter(|&total| total <= self.max)
            })
            .ok()
            .map(|_| Reservation { nanos })
    }

    /// A call ended: its reservation is replaced by its real cost, `actual_usd` (0 for a call
    /// that failed before the provider billed it). Returns whether the budget is now
    /// [`exhausted`](Self::exhausted).
    pub fn settle(&self, reservation: Reservation, actual_usd: f64) -> bool {
        let actual = to_nanos(actual_usd);
        let _ = self
            .committed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |committed| {
                Some(
                    committed
                        .saturating_sub(reservation.nanos)
                        .saturating_add(actual),
                )
            });
        self.spent.fetch_add(actual, Ordering::SeqCst);
        self.exhausted()
    }

    /// Hands back a reservation whose call was never sent.
    pub fn release(&self, reservation: Reservation) {
        self.settle(reservation, 0.0);
    }

    /// Whether the money is all spent: no call can be reserved any more.
    pub fn exhausted(&self) -> bool {
        self.spent.load(Ordering::SeqCst) >= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, cached: u64, completion: u64) -> ModelUsage {
        ModelUsage {
            calls: 1,
            prompt_tokens: prompt,
            completion_tokens: completion,
            failed: 0,
            cached_tokens: cached,
        }
    }

    #[test]
    fn costs_count_fresh_cached_and_output_tokens() {
        let price = Price::new(2.5, 1.25, 10.0);
        // 1M prompt tokens, 400k of them cached, 100k out.
        let cost = price.cost(1_000_000, 400_000, 100_000);
        assert!((cost - (1.5 + 0.5 + 1.0)).abs() < 1e-12, "{cost}");
        // No cached price: cached tokens cost the input price.
        let plain = Price {
            input: 1.0,
            cached_input: None,
            output: 0.0,
        };
        assert_eq!(plain.cost(1_000_000, 1_000_000, 0), 1.0);
        // More cached than prompt tokens (a confused server): capped.
        assert_eq!(price.cost(10, 20, 0), 10.0 * 1.25 / 1e6);
    }

    #[test]
    fn lookup_strips_providers_and_dates() {
        let prices = Prices::builtin();
        let gpt4o = prices.get("gpt-4o").copied();
        assert!(gpt4o.is_some());
        assert_eq!(prices.get("openai/gpt-4o").copied(), gpt4o);
        assert_eq!(prices.get("gpt-4o-2024-08-06").copied(), gpt4o);
        assert_eq!(prices.get("gpt-4o-latest").copied(), gpt4o);
        assert_ne!(prices.get("gpt-4o-mini-2024-07-18").copied(), gpt4o);
        assert!(prices.get("gpt-4o-mini-2024-07-18").is_some());
        assert!(prices.get("claude-sonnet-4-5-20250929").is_some());
        assert!(prices.get("gpt-4o-audio-preview").is_none());
        assert!(prices.get("llama3").is_none());
    }

    #[test]
    fn a_report_prices_known_models_and_lists_the_others() {
        let prices = Prices::from_iter([("a", Price::new(1.0, 0.5, 2.0))]);
        let runs = [
            ("a".to_owned(), usage(1_000_000, 0, 500_000)),
            ("local".to_owned(), usage(10, 0, 10)),
            ("never-used".to_owned(), ModelUsage::default()),
        ];
        let report = prices.report(runs.iter().map(|(m, u)| (m.as_str(), u)));
        assert_eq!(report.total, 2.0);
        assert_eq!(report.by_model.get("a"), Some(&2.0));
        assert_eq!(report.unpriced, vec!["local".to_owned()]);
        // Nothing priced: the total is 0.0, never -0.0.
        let none = Prices::default().report([("x", &usage(1, 0, 1))]);
        assert_eq!(
            serde_json::to_string(&none).unwrap_or_default(),
            r#"{"total":0.0,"by_model":{},"unpriced":["x"]}"#
        );
        assert_eq!(
            serde_json::to_value(&report).unwrap_or_default(),
            serde_json::json!({"total": 2.0, "by_model": {"a": 2.0}, "unpriced": ["local"]})
        );
        // Sums are rounded to a millionth of a dollar.
        let tiny = Prices::from_iter([("a", Price::new(0.1, 0.1, 0.2))]);
        let u = usage(1, 0, 1);
        let report = tiny.report([("a", &u), ("a", &u), ("a", &u)]);
        assert_eq!(report.total, 0.000001);
    }

    #[test]
    fn user_tables_override_and_bad_prices_are_refused() {
        let mine = Prices::from_json(r#"{"gpt-4o": {"input": 1, "output": 2}, "x": {"input": 0, "cached_input": 0, "output": 0}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let prices = Prices::builtin().merged(mine);
        assert_eq!(prices.get("gpt-4o").map(|p| p.input), Some(1.0));
        assert!(prices.get("x").is_some());
        assert!(prices.get("gpt-4o-mini").is_some());
        for bad in [
            r#"{"m": {"input": -1, "output": 0}}"#,
            r#"{"m": {"input": 1}}"#,
            r#"{"m": {"input": 1, "output": 1, "cache": 2}}"#,
            r#"{"m": 3}"#,
            "[1]",
        ] {
            assert!(Prices::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn estimates_use_the_prompt_and_max_tokens() {
        let prices = Prices::from_iter([("m", Price::new(1.0, 1.0, 1.0))]);
        let request = CompletionRequest::prompt("m", "x".repeat(4000)).with_max_tokens(100);
        // 1000 prompt tokens + 4 framing + 100 completion.
        assert!((prices.estimate(&request) - 1104.0 / 1e6).abs() < 1e-12);
        let open = CompletionRequest::prompt("m", "");
        assert!((prices.estimate(&open) - 1004.0 / 1e6).abs() < 1e-12);
        assert_eq!(
            prices.estimate(&CompletionRequest::prompt("free", "hi")),
            0.0
        );
    }

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_settles_real_costs() {
        let budget = CostBudget::new(1.0);
        let a = budget.reserve(0.6).unwrap_or_else(|| panic!("fits"));
        assert!(budget.reserve(0.5).is_none(), "0.6 + 0.5 > 1");
        let b = budget.reserve(0.4).unwrap_or_else(|| panic!("fits"));
        // `a` cost less than estimated: the difference is free again.
        assert!(!budget.settle(a, 0.1));
        let c = budget
            .reserve(0.5)
            .unwrap_or_else(|| panic!("fits after settling"));
        budget.release(c);
        // `b` cost more than estimated and spends the budget.
        assert!(budget.settle(b, 0.95));
        assert!(budget.exhausted());
        assert!(budget.reserve(0.0).is_none(), "nothing once spent");
        assert!((budget.spent_usd() - 1.05).abs() < 1e-9);
    }

    #[test]
    fn concurrent_reservations_never_overcommit() {
        let budget = CostBudget::new(1.0);
        let granted = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if budget.reserve(0.01).is_some() {
                            granted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn odd_limits_and_estimates_are_safe() {
        assert_eq!(CostBudget::new(f64::NAN).max_usd(), 0.0);
        assert!(CostBudget::new(-1.0).reserve(0.0).is_none());
        let budget = CostBudget::new(1.0);
        assert!(
            budget.reserve(f64::NAN).is_some(),
            "a NaN estimate counts 0"
        );
        assert!(budget.reserve(f64::INFINITY).is_none());
        assert!(budget.reserve(1e300).is_none());
    }
}
