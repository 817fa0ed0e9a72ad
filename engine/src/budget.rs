//! Prices and budgets: compiled from settings and pipelines into integer
//! micro-dollars, and the reservation a request must make.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{
    Diagnostic, RawBudget, RawKeyBudget, RawModel, RawPrice, RawRateLimit, Spanned,
};
use crate::ledger::money::usd_to_micros;
use crate::ledger::rate::{REQUESTS, RateCharge, TOKENS};
use crate::ledger::{Micros, Price, Scope};
use crate::provider::Provider;
use crate::tokens;

/// A budget of one scope for a UTC day (`global`, `pipeline:NAME`,
/// `key:NAME`, `team:NAME`) or a UTC calendar month (the same scopes of
/// keys and teams, ending in [`crate::ledger::MONTHLY`]).
#[derive(Clone)]
pub struct Budget {
    pub scope: String,
    pub limit_micros: Micros,
    /// Alert thresholds in parts per million of the budget, ascending.
    pub alert_at_ppm: Vec<i64>,
    pub on_exhausted: OnExhausted,
}

impl Budget {
    pub fn ledger_scope(&self) -> Scope {
        Scope {
            key: self.scope.clone(),
            limit_micros: self.limit_micros,
        }
    }

    /// "daily" or "monthly", for messages.
    pub fn period_name(&self) -> &'static str {
        if self.scope.ends_with(crate::ledger::MONTHLY) {
            "monthly"
        } else {
            "daily"
        }
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("scope", &self.scope)
            .field("limit_micros", &self.limit_micros)
            .field("alert_at_ppm", &self.alert_at_ppm)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub enum OnExhausted {
    Reject,
    /// Use this cheaper model when the budget cannot afford the pipeline's.
    Downgrade(Arc<Downgrade>),
}

pub struct Downgrade {
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
    pub price: Price,
}

/// Worst-case cost of a call whose prompt Sluice counted as
/// `prompt_counted` tokens: the prompt (with a margin for the provider's
/// own counting) plus every completion token Sluice lets through before it
/// cuts the stream ([`tokens::completion_guard`]), so that settling never
/// needs more than was reserved. A call of `n` choices may generate
/// `n × max_tokens` (its guard is that of the product), and bills the
/// prompt once. Every prompt token is priced at the dearest it may be
/// billed: a cache write, an hour-long one when the request holds a
/// one-hour breakpoint (`one_hour`).
pub fn reservation(
    price: &Price,
    prompt_counted: u64,
    max_tokens: u32,
    n: u32,
    one_hour: bool,
) -> Micros {
    let prompt_bound = tokens::prompt_bound(prompt_counted);
    price.worst_input(one_hour).cost(
        prompt_bound,
        tokens::completion_guard(u64::from(max_tokens).saturating_mul(u64::from(n.max(1)))),
    )
}

pub fn compile_prices(
    file: &Path,
    raw: &BTreeMap<Spanned<String>, Spanned<RawPrice>>,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Price> {
    let mut out = BTreeMap::new();
    for (model, p) in raw {
        let mut get = |v: &Spanned<f64>, what: &str| match usd_to_micros(v.value) {
            Some(m) => Some(m),
            None => {
                diags.push(Diagnostic::error(
                    file,
                    v.pos,
                    format!("{what} price {} of model \"{}\" must be a non-negative number of dollars per million tokens", v.value, model.value),
                ));
                None
            }
        };
        let input = get(&p.input, "input");
        let output = get(&p.output, "output");
        let cached = p.cached_input.as_ref().map(|c| get(c, "cached_input"));
        let write = p.cache_write.as_ref().map(|c| get(c, "cache_write"));
        let write_1h = p.cache_write_1h.as_ref().map(|c| get(c, "cache_write_1h"));
        if let (Some(input_per_m), Some(output_per_m)) = (input, output) {
            let cache_write_per_m = write.flatten().unwrap_or(input_per_m);
            out.insert(
                model.value.clone(),
                Price {
                    input_per_m,
                    output_per_m,
                    cached_input_per_m: cached.flatten().unwrap_or(input_per_m),
                    cache_write_per_m,
                    // Anthropic bills an hour-long write at twice the input
                    // price: the default, unless cache_write is dearer.
                    cache_write_1h_per_m: write_1h
                        .flatten()
                        .unwrap_or(input_per_m.saturating_mul(2).max(cache_write_per_m)),
                },
            );
        }
    }
    out
}

/// Compiles one budget. `downgrade` resolves the `downgrade_to` model (its
/// provider and price), reporting its own problems.
pub fn compile_budget(
    file: &Path,
    raw: &Spanned<RawBudget>,
    scope: String,
    diags: &mut Vec<Diagnostic>,
    downgrade: &mut dyn FnMut(&RawModel, &mut Vec<Diagnostic>) -> Option<Downgrade>,
) -> Option<Budget> {
    let mut ok = true;
    let daily_micros = match usd_to_micros(raw.daily_usd.value) {
        Some(m) => m,
        None => {
            diags.push(Diagnostic::error(
                file,
                raw.daily_usd.pos,
                format!(
                    "daily_usd must be a non-negative number of dollars, found {}",
                    raw.daily_usd.value
                ),
            ));
            ok = false;
            0
        }
    };
    let alert_at_ppm = alert_thresholds(file, &raw.alert_at, diags);
    ok &= alert_at_ppm.is_some();
    let alert_at_ppm = alert_at_ppm.unwrap_or_default();
    let on_exhausted = match raw.on_exhausted.as_ref().map(|s| s.value.as_str()) {
        None | Some("reject") => {
            if let Some(d) = &raw.downgrade_to {
                diags.push(Diagnostic::error(
                    file,
                    d.provider.pos,
                    "downgrade_to only applies with on_exhausted: downgrade",
                ));
                ok = false;
            }
            OnExhausted::Reject
        }
        Some("downgrade") => match &raw.downgrade_to {
            Some(target) => match downgrade(target, diags) {
                Some(d) => OnExhausted::Downgrade(Arc::new(d)),
                None => {
                    ok = false;
                    OnExhausted::Reject
                }
            },
            None => {
                diags.push(Diagnostic::error(
                    file,
                    raw.on_exhausted.as_ref().map_or(raw.pos, |s| s.pos),
                    "on_exhausted: downgrade needs downgrade_to: {provider, name} naming the cheaper model",
                ));
                ok = false;
                OnExhausted::Reject
            }
        },
        Some(other) => {
            diags.push(Diagnostic::error(
                file,
                raw.on_exhausted.as_ref().map_or(raw.pos, |s| s.pos),
                format!(
                    "unknown on_exhausted \"{other}\", expected one of \"reject\", \"downgrade\""
                ),
            ));
            ok = false;
            OnExhausted::Reject
        }
    };
    ok.then_some(Budget {
        scope,
        limit_micros: daily_micros,
        alert_at_ppm,
        on_exhausted,
    })
}

/// `alert_at` fractions as parts per million, ascending; None (reported)
/// when one is out of range.
fn alert_thresholds(
    file: &Path,
    raw: &[Spanned<f64>],
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<i64>> {
    let mut ok = true;
    let mut ppm = Vec::new();
    for a in raw {
        if a.value > 0.0 && a.value <= 1.0 {
            ppm.push((a.value * 1_000_000.0).round() as i64);
        } else {
            diags.push(Diagnostic::error(
                file,
                a.pos,
                format!("alert_at {} is out of range, expected a fraction of the budget above 0 and at most 1", a.value),
            ));
            ok = false;
        }
    }
    ppm.sort_unstable();
    ppm.dedup();
    ok.then_some(ppm)
}

/// Compiles a key's or a team's budget (`scope`: `key:NAME` or
/// `team:NAME`) into a daily and a monthly one, as declared. None
/// (reported) when anything is wrong.
pub fn compile_key_budget(
    file: &Path,
    raw: &Spanned<RawKeyBudget>,
    scope: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<Budget>> {
    let alert_at_ppm = alert_thresholds(file, &raw.alert_at, diags);
    if raw.daily_usd.is_none() && raw.monthly_usd.is_none() {
        diags.push(Diagnostic::error(
            file,
            raw.pos,
            "a budget needs daily_usd, monthly_usd or both",
        ));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = alert_at_ppm.is_some();
    for (amount, what, suffix) in [
        (&raw.daily_usd, "daily_usd", ""),
        (&raw.monthly_usd, "monthly_usd", crate::ledger::MONTHLY),
    ] {
        let Some(amount) = amount else { continue };
        match usd_to_micros(amount.value) {
            Some(limit_micros) => out.push(Budget {
                scope: format!("{scope}{suffix}"),
                limit_micros,
                alert_at_ppm: alert_at_ppm.clone().unwrap_or_default(),
                on_exhausted: OnExhausted::Reject,
            }),
            None => {
                diags.push(Diagnostic::error(
                    file,
                    amount.pos,
                    format!(
                        "{what} must be a non-negative number of dollars, found {}",
                        amount.value
                    ),
                ));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Requests and tokens per minute of one scope (`pipeline:NAME`,
/// `key:NAME`, `team:NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub scope: String,
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
}

impl RateLimit {
    /// What a request that may use up to `tokens` takes from each bucket.
    pub fn charges(&self, tokens: i64) -> impl Iterator<Item = RateCharge> + '_ {
        let requests = self.requests_per_minute.map(|per_minute| RateCharge {
            bucket: format!("{}{REQUESTS}", self.scope),
            per_minute,
            amount: 1,
        });
        let tokens = self.tokens_per_minute.map(|per_minute| RateCharge {
            bucket: format!("{}{TOKENS}", self.scope),
            per_minute,
            amount: tokens,
        });
        requests.into_iter().chain(tokens)
    }
}

/// The most a limit may be: its bucket, in minute-milliseconds, must fit
/// an i64 with room to spare.
pub(crate) const RATE_MAX: f64 = 1e12;

pub fn compile_rate_limit(
    file: &Path,
    raw: &Spanned<RawRateLimit>,
    scope: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<RateLimit> {
    let mut ok = true;
    let mut get = |v: &Option<Spanned<f64>>, what: &str| {
        let v = v.as_ref()?;
        if v.value >= 1.0 && v.value <= RATE_MAX && v.value.fract() == 0.0 {
            Some(v.value as i64)
        } else {
            diags.push(Diagnostic::error(
                file,
                v.pos,
                format!(
                    "{what} must be a whole number between 1 and 1000000000000, found {}",
                    v.value
                ),
            ));
            ok = false;
            None
        }
    };
    let requests_per_minute = get(&raw.requests_per_minute, "requests_per_minute");
    let tokens_per_minute = get(&raw.tokens_per_minute, "tokens_per_minute");
    if raw.requests_per_minute.is_none() && raw.tokens_per_minute.is_none() {
        diags.push(Diagnostic::error(
            file,
            raw.pos,
            "a rate_limit needs requests_per_minute, tokens_per_minute or both",
        ));
        return None;
    }
    ok.then(|| RateLimit {
        scope: scope.to_string(),
        requests_per_minute,
        tokens_per_minute,
    })
}
