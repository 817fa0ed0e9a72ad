//! Raw configuration shapes, exactly as written in YAML.
//!
//! Nothing here is validated beyond its shape: unknown keys are reported
//! (see [`node`]), values keep their positions, and `compile` turns these
//! into runtime types that cannot be invalid.

pub mod diag;
pub mod node;
mod telemetry;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use diag::{Diagnostic, Pos, Severity};
pub use node::Spanned;
pub use telemetry::RawTelemetry;

/// The name of the shared settings file inside a pipelines directory.
pub const SETTINGS_FILE: &str = "settings.yaml";

/// `settings.yaml`: providers and server settings shared by all pipelines.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub providers: BTreeMap<Spanned<String>, Spanned<RawProvider>>,
    /// Where the ledger lives: `sqlite:PATH` (default `sqlite:data/sluice.db`,
    /// relative to the working directory) or `postgres://...`.
    pub storage: Option<Spanned<String>>,
    /// Like `storage`, but read from this environment variable (for URLs
    /// that carry a password).
    pub storage_env: Option<Spanned<String>>,
    /// Prices per million tokens, by model name.
    #[serde(default)]
    pub prices: BTreeMap<Spanned<String>, Spanned<RawPrice>>,
    /// Budgets shared by every pipeline.
    #[serde(default)]
    pub budgets: RawGlobalBudgets,
    pub alerts: Option<RawAlerts>,
    /// SQLite databases that tools query, by name.
    #[serde(default)]
    pub databases: BTreeMap<Spanned<String>, crate::tools::RawDatabase>,
    /// API keys, by name. With any declared, every request needs one.
    #[serde(default)]
    pub keys: BTreeMap<Spanned<String>, Spanned<RawKey>>,
    /// Teams that keys belong to, by name.
    #[serde(default)]
    pub teams: BTreeMap<Spanned<String>, Spanned<RawTeam>>,
    /// Traces over OTLP (see `telemetry.rs`).
    pub telemetry: Option<Spanned<RawTelemetry>>,
}

/// An API key: `sluice keys new NAME` prints the secret once and this
/// entry, which holds only the secret's digest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// `sha256:<64 hex digits>`: the digest of the secret.
    pub hash: Spanned<String>,
    /// The pipelines this key may call; `["*"]` for every one.
    pub pipelines: Vec<Spanned<String>>,
    /// The team it belongs to (declared under `teams`).
    pub team: Option<Spanned<String>>,
    /// Who holds it, for people reading the configuration and the logs.
    pub owner: Option<String>,
    pub description: Option<String>,
    pub budget: Option<Spanned<RawKeyBudget>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// Whether it may read `/metrics` (default false).
    pub metrics: Option<Spanned<bool>>,
}

/// A team: budgets that all its keys share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    pub description: Option<String>,
    pub budget: Option<Spanned<RawKeyBudget>>,
    /// Shared by all the team's keys together.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

/// Requests and tokens per minute, shared by every instance on one ledger.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests_per_minute: Option<Spanned<f64>>,
    /// Prompt and completion tokens; a request takes its worst case
    /// (prompt + max_tokens) and gives back what it did not use.
    pub tokens_per_minute: Option<Spanned<f64>>,
}

/// A key's or a team's budget: per UTC day, per UTC calendar month, or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyBudget {
    pub daily_usd: Option<Spanned<f64>>,
    pub monthly_usd: Option<Spanned<f64>>,
    /// Fractions of each budget at which an alert fires, e.g. `[0.8, 1.0]`.
    #[serde(default)]
    pub alert_at: Vec<Spanned<f64>>,
}

/// Dollars per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: Spanned<f64>,
    pub output: Spanned<f64>,
    pub cached_input: Option<Spanned<f64>>,
    /// Input tokens written to the provider's prompt cache (default: the
    /// input price; Anthropic charges 1.25× input for 5-minute writes).
    pub cache_write: Option<Spanned<f64>>,
    /// Input tokens written to the cache for an hour (`ttl: "1h"`;
    /// default: twice the input price, as Anthropic charges, or
    /// `cache_write` when that is dearer).
    pub cache_write_1h: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobalBudgets {
    pub global: Option<Spanned<RawBudget>>,
}

/// A daily budget, in dollars, by UTC calendar day.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub daily_usd: Spanned<f64>,
    /// Fractions of the budget at which an alert fires, e.g. `[0.5, 0.8, 1.0]`.
    #[serde(default)]
    pub alert_at: Vec<Spanned<f64>>,
    /// `reject` (default) or `downgrade`.
    pub on_exhausted: Option<Spanned<String>>,
    /// The cheaper model used when `on_exhausted: downgrade`.
    pub downgrade_to: Option<RawModel>,
}

/// Where budget alerts go: a webhook that accepts Slack's `{"text": ...}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub webhook_url: Option<Spanned<String>>,
    /// The webhook URL from an environment variable (it is often a secret).
    pub webhook_url_env: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `host:port` to listen on.
    pub listen: Option<Spanned<String>>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Interval of keep-alive comments while the upstream is silent.
    pub keepalive: Option<Spanned<String>>,
    /// How long open streams may run on after a shutdown signal.
    pub shutdown_grace: Option<Spanned<String>>,
    /// Longest wait for a request head, from its first byte (or from the
    /// connection's accept) to its last.
    pub header_timeout: Option<Spanned<String>>,
    /// Longest wait for a whole request body, from the head.
    pub body_timeout: Option<Spanned<String>>,
    /// How long a keep-alive connection may stay open with no request.
    pub idle_timeout: Option<Spanned<String>>,
    /// Most client connections served at once (default: from the
    /// descriptor limit, at most 10,000).
    pub max_connections: Option<Spanned<u64>>,
    /// Connections accepted beyond `max_connections` to answer health
    /// checks and refuse the rest with 503.
    pub reserved_connections: Option<Spanned<u64>>,
    /// Serve with no API keys on an address other than loopback (default
    /// false: Sluice refuses to, since anyone reaching it could spend
    /// every budget).
    pub allow_unauthenticated: Option<Spanned<bool>>,
}

/// A provider. `kind` selects the wire format; which other keys apply
/// depends on it (checked by `compile`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: Spanned<String>,
    /// `openai`: base URL up to and including the version, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<Spanned<String>>,
    /// `openai`: the environment variable holding the API key.
    pub api_key_env: Option<Spanned<String>>,
    /// `replay`: directory of recorded stream bodies, relative to this file.
    pub fixtures: Option<Spanned<String>>,
    /// `replay`: delay before each recorded event.
    pub pace: Option<Spanned<String>>,
}

/// One pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub model: RawModel,
    pub system: Option<String>,
    pub limits: RawLimits,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub budget: Option<Spanned<RawBudget>>,
    /// Requests and tokens per minute, whoever calls.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// Retries of a failed call, before the first byte reaches the client.
    pub retries: Option<Spanned<RawRetries>>,
    /// Models tried in order when the pipeline's own model keeps failing.
    #[serde(default)]
    pub fallbacks: Vec<RawModel>,
    /// Tools the model may call: fixed queries on declared databases.
    #[serde(default)]
    pub tools: Vec<crate::tools::RawTool>,
    /// What clients of the OpenAI- and Anthropic-compatible routes may set.
    pub clients: Option<Spanned<RawClients>>,
}

/// A pipeline's rules for what its clients may set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    /// The request parameters clients may set (default: every standard one).
    pub params: Option<Vec<Spanned<String>>>,
    /// Bounds on numeric parameters, e.g. `temperature: {min: 0, max: 1}`.
    #[serde(default)]
    pub bounds: BTreeMap<Spanned<String>, Spanned<RawBound>>,
    /// Whether clients may bring tools of their own (default true).
    pub tools: Option<Spanned<bool>>,
    /// What a client's system messages do: `append` (default: after the
    /// pipeline's own), `replace` (instead of it) or `forbid` (a 400).
    pub system: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBound {
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Tries of each model, the first included (1 = no retry).
    pub attempts: Spanned<i64>,
    /// Wait before the first retry; doubles each time, with jitter.
    pub backoff: Option<Spanned<String>>,
    /// Longest wait between two tries.
    pub max_backoff: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: Spanned<String>,
    pub name: Spanned<String>,
    pub temperature: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Completion-token ceiling of one model call. Read as any number so
    /// that `-5`, `64.5` or `1e30` are reported as out of range, not as a
    /// type error.
    pub max_tokens: Spanned<f64>,
    /// Model calls that may ask for tools in one request (default 4).
    pub max_tool_rounds: Option<Spanned<f64>>,
    /// Prompt and completion tokens of all rounds of one request together.
    pub max_total_tokens: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Spanned<String>>,
    pub first_token: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub total: Option<Spanned<String>>,
}
