//! Raw configuration shapes, exactly as written in YAML.
//!
//! Nothing here is validated beyond its shape: unknown keys are reported
//! (see [`node`]), values keep their positions, and `compile` turns these
//! into runtime types that cannot be invalid.

pub mod diag;
pub mod node;
pub mod schema;
mod telemetry;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

pub use diag::{Diagnostic, Pos, Severity};
pub use node::Spanned;
pub use telemetry::RawTelemetry;

use crate::compile::{ConnectionLimits, RetryPolicy, ServerSettings, Timeouts};
use schema::duration_text;

/// The name of the shared settings file inside a pipelines directory.
pub const SETTINGS_FILE: &str = "settings.yaml";

/// `settings.yaml`: providers and server settings shared by all pipelines.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// The HTTP server.
    #[serde(default)]
    pub server: RawServer,
    /// Model providers, by the name pipelines give in `model.provider`.
    #[serde(default)]
    pub providers: BTreeMap<Spanned<String>, Spanned<RawProvider>>,
    /// Where the ledger lives: `sqlite:PATH` (a relative PATH is relative
    /// to this file), `postgres://...`, or `memory` (nothing kept).
    #[schemars(extend("default" = crate::compile::DEFAULT_STORAGE))]
    pub storage: Option<Spanned<String>>,
    /// Like `storage` (a relative SQLite path is relative to this file
    /// too), but read from this environment variable (for URLs that carry
    /// a password).
    pub storage_env: Option<Spanned<String>>,
    /// Prices per million tokens, by model name.
    #[serde(default)]
    pub prices: BTreeMap<Spanned<String>, Spanned<RawPrice>>,
    /// Budgets shared by every pipeline.
    #[serde(default)]
    pub budgets: RawGlobalBudgets,
    /// Where budget alerts are posted (without it they are only logged).
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// `sha256:<64 hex digits>`: the digest of the secret.
    #[schemars(regex(pattern = r"^sha256:[0-9A-Fa-f]{64}$"))]
    pub hash: Spanned<String>,
    /// The pipelines this key may call; `["*"]` for every one.
    #[schemars(length(min = 1))]
    pub pipelines: Vec<Spanned<String>>,
    /// The team it belongs to (declared under `teams`).
    pub team: Option<Spanned<String>>,
    /// Who holds it, for people reading the configuration and the logs.
    pub owner: Option<String>,
    /// For people reading the configuration.
    pub description: Option<String>,
    /// The key's own budget, beside its team's.
    pub budget: Option<Spanned<RawKeyBudget>>,
    /// The key's own rate limits, beside its team's.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// Whether it may read `/metrics`.
    #[schemars(extend("default" = false))]
    pub metrics: Option<Spanned<bool>>,
    /// Whether it may open the console (`/console`) and read the usage,
    /// requests and budgets of every pipeline and key (`/v1/usage`,
    /// `/v1/requests`, `/v1/budgets`, `/v1/overview`), `/metrics` and
    /// `/v1/config`.
    #[schemars(extend("default" = false))]
    pub admin: Option<Spanned<bool>>,
}

/// A team: budgets that all its keys share.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    /// For people reading the configuration.
    pub description: Option<String>,
    /// Shared by all the team's keys together.
    pub budget: Option<Spanned<RawKeyBudget>>,
    /// Shared by all the team's keys together.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

/// Requests and tokens per minute, shared by every instance on one ledger.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests admitted per minute.
    #[schemars(with = "Option<u64>", range(min = 1, max = crate::budget::RATE_MAX))]
    pub requests_per_minute: Option<Spanned<f64>>,
    /// Prompt and completion tokens; a request takes its worst case
    /// (prompt + max_tokens) and gives back what it did not use.
    #[schemars(with = "Option<u64>", range(min = 1, max = crate::budget::RATE_MAX))]
    pub tokens_per_minute: Option<Spanned<f64>>,
}

/// A key's or a team's budget: per UTC day, per UTC calendar month, or both.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKeyBudget {
    /// Dollars per UTC day.
    #[schemars(range(min = 0))]
    pub daily_usd: Option<Spanned<f64>>,
    /// Dollars per UTC calendar month.
    #[schemars(range(min = 0))]
    pub monthly_usd: Option<Spanned<f64>>,
    /// Fractions of each budget at which an alert fires, e.g. `[0.8, 1.0]`.
    #[serde(default)]
    #[schemars(inner(range(min = 0, max = 1)))]
    pub alert_at: Vec<Spanned<f64>>,
}

/// Dollars per million tokens.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Prompt tokens.
    #[schemars(range(min = 0))]
    pub input: Spanned<f64>,
    /// Completion tokens.
    #[schemars(range(min = 0))]
    pub output: Spanned<f64>,
    /// Prompt tokens read from the provider's prompt cache (default: the
    /// input price).
    #[schemars(range(min = 0))]
    pub cached_input: Option<Spanned<f64>>,
    /// Input tokens written to the provider's prompt cache (default: the
    /// input price; Anthropic charges 1.25× input for 5-minute writes).
    #[schemars(range(min = 0))]
    pub cache_write: Option<Spanned<f64>>,
    /// Input tokens written to the cache for an hour (`ttl: "1h"`;
    /// default: twice the input price, as Anthropic charges, or
    /// `cache_write` when that is dearer).
    #[schemars(range(min = 0))]
    pub cache_write_1h: Option<Spanned<f64>>,
}

/// Budgets beyond one pipeline's.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGlobalBudgets {
    /// The budget every pipeline shares.
    pub global: Option<Spanned<RawBudget>>,
}

/// A daily budget, in dollars, by UTC calendar day.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Dollars per UTC day.
    #[schemars(range(min = 0))]
    pub daily_usd: Spanned<f64>,
    /// Fractions of the budget at which an alert fires, e.g. `[0.5, 0.8, 1.0]`.
    #[serde(default)]
    #[schemars(inner(range(min = 0, max = 1)))]
    pub alert_at: Vec<Spanned<f64>>,
    /// What a request gets once the day's budget is spent: `reject` (a
    /// 429 until midnight UTC) or `downgrade` (the cheaper model).
    #[schemars(extend("enum" = ["reject", "downgrade", null], "default" = "reject"))]
    pub on_exhausted: Option<Spanned<String>>,
    /// The cheaper model used when `on_exhausted: downgrade`.
    pub downgrade_to: Option<RawModel>,
}

/// Where budget alerts go: a webhook that accepts Slack's `{"text": ...}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// The webhook URL (http:// or https://).
    pub webhook_url: Option<Spanned<String>>,
    /// The webhook URL from an environment variable (it is often a secret).
    pub webhook_url_env: Option<Spanned<String>>,
}

/// The HTTP server: where it listens, what it accepts, how long it waits.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `host:port` to listen on.
    #[schemars(extend("default" = ServerSettings::default().listen))]
    pub listen: Option<Spanned<String>>,
    /// Largest accepted request body, in bytes; larger ones get 413.
    #[schemars(range(min = 1), extend("default" = ServerSettings::default().max_body_bytes))]
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Interval of keep-alive comments while the upstream is silent.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(ServerSettings::default().keepalive)))]
    pub keepalive: Option<Spanned<String>>,
    /// How long open streams may run on after a shutdown signal.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(ServerSettings::default().shutdown_grace)))]
    pub shutdown_grace: Option<Spanned<String>>,
    /// Longest wait for a request head, from its first byte (or from the
    /// connection's accept) to its last.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(ConnectionLimits::default().header_timeout)))]
    pub header_timeout: Option<Spanned<String>>,
    /// Longest wait for a whole request body, from the head (else 408).
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(ConnectionLimits::default().body_timeout)))]
    pub body_timeout: Option<Spanned<String>>,
    /// How long a keep-alive connection may stay open with no request.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(ConnectionLimits::default().idle_timeout)))]
    pub idle_timeout: Option<Spanned<String>>,
    /// How long a response may wait for a client that reads nothing
    /// before its connection is closed.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(ConnectionLimits::default().write_timeout)))]
    pub write_timeout: Option<Spanned<String>>,
    /// Most client connections served at once (default: from the
    /// descriptor limit, at most 10,000).
    #[schemars(range(min = 1))]
    pub max_connections: Option<Spanned<u64>>,
    /// Connections accepted beyond `max_connections` to answer health
    /// checks and refuse the rest with 503.
    #[schemars(range(min = 1), extend("default" = ConnectionLimits::default().reserved_connections))]
    pub reserved_connections: Option<Spanned<u64>>,
    /// Serve with no API keys on an address other than loopback (Sluice
    /// refuses to otherwise, since anyone reaching it could spend every
    /// budget).
    #[schemars(extend("default" = false))]
    pub allow_unauthenticated: Option<Spanned<bool>>,
    /// Which web pages (origins) may call Sluice from a browser (default:
    /// none).
    pub cors: Option<Spanned<RawCors>>,
}

/// `server.cors`: cross-origin requests from browsers.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
// Read as empty when absent, so that `compile` says what is missing; the
// schema asks for it at once.
#[schemars(extend("required" = ["allowed_origins"]))]
pub struct RawCors {
    /// `scheme://host[:port]`, `scheme://*.domain[:port]`, or `"*"` alone.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub allowed_origins: Vec<Spanned<String>>,
    /// Default `[GET, POST]`.
    pub allowed_methods: Option<Vec<Spanned<String>>>,
    /// Request headers pages may send (default: authorization,
    /// content-type, x-api-key, x-request-id); `"*"` for any.
    pub allowed_headers: Option<Vec<Spanned<String>>>,
    /// Response headers pages may read (default: x-request-id).
    pub exposed_headers: Option<Vec<Spanned<String>>>,
    /// Whether pages may send cookies or TLS client certificates (default false).
    pub allow_credentials: Option<Spanned<bool>>,
    /// How long a browser may cache a preflight answer (default 10m).
    #[schemars(with = "Option<schema::Duration>")]
    pub max_age: Option<Spanned<String>>,
}

/// A provider. `kind` selects the wire format; which other keys apply
/// depends on it (checked by `compile`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// The wire format: `openai` (any OpenAI-compatible chat-completions
    /// server), `anthropic` (the Messages API) or `replay` (recorded
    /// streams: no key, no network).
    #[schemars(extend("enum" = crate::compile::PROVIDER_KINDS))]
    pub kind: Spanned<String>,
    /// `openai` and `anthropic`: base URL up to and including the version,
    /// e.g. `https://api.openai.com/v1` (`anthropic` defaults to
    /// `https://api.anthropic.com/v1`).
    pub base_url: Option<Spanned<String>>,
    /// `openai` and `anthropic`: the environment variable holding the API
    /// key (the key itself is never written in YAML).
    pub api_key_env: Option<Spanned<String>>,
    /// `replay`: directory of recorded stream bodies, relative to this file.
    pub fixtures: Option<Spanned<String>>,
    /// `replay`: delay before each recorded event.
    #[schemars(with = "Option<schema::Duration>", extend("default" = "0s"))]
    pub pace: Option<Spanned<String>>,
}

/// One pipeline file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// The route: `POST /v1/pipelines/{name}`, and the `model` clients of
    /// the OpenAI and Anthropic APIs name.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$"))]
    pub name: Spanned<String>,
    /// For people reading the configuration and `GET /v1/pipelines`.
    pub description: Option<String>,
    /// The model that answers.
    pub model: RawModel,
    /// The system prompt, sent first.
    pub system: Option<String>,
    /// Token ceilings.
    pub limits: RawLimits,
    /// Deadlines of one request.
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
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    /// The request parameters clients may set (default: every standard one).
    #[schemars(with = "Option<Vec<schema::ClientParam>>")]
    pub params: Option<Vec<Spanned<String>>>,
    /// Bounds on numeric parameters, e.g. `temperature: {min: 0, max: 1}`.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"enum": crate::compile::clients::numeric_params()}))]
    pub bounds: BTreeMap<Spanned<String>, Spanned<RawBound>>,
    /// Whether clients may bring tools of their own.
    #[schemars(extend("default" = true))]
    pub tools: Option<Spanned<bool>>,
    /// What a client's system messages do: `append` (after the
    /// pipeline's own), `replace` (instead of it) or `forbid` (a 400).
    #[schemars(extend("enum" = ["append", "replace", "forbid", null], "default" = "append"))]
    pub system: Option<Spanned<String>>,
}

/// The range clients may set a numeric parameter in.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBound {
    /// The smallest value clients may send.
    pub min: Option<Spanned<f64>>,
    /// The largest value clients may send.
    pub max: Option<Spanned<f64>>,
}

/// Retries, only before the first byte reaches the client: connection
/// errors, 408, 429, 5xx and first-token timeouts (`Retry-After` honoured).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Tries of each model, the first included (1 = no retry).
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Spanned<i64>,
    /// Wait before the first retry; doubles each time, with jitter.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(RetryPolicy::NONE.backoff)))]
    pub backoff: Option<Spanned<String>>,
    /// Longest wait between two tries.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(RetryPolicy::NONE.max_backoff)))]
    pub max_backoff: Option<Spanned<String>>,
}

/// A model of a declared provider.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// A provider declared in settings.yaml.
    pub provider: Spanned<String>,
    /// The model's name as the provider knows it; for `replay`, the
    /// recording to play (a file, or a directory of one per round).
    pub name: Spanned<String>,
    /// Sampling temperature, 0 to 2 (the pipeline's model only).
    #[schemars(range(min = 0, max = 2))]
    pub temperature: Option<Spanned<f64>>,
}

/// Token ceilings of a request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Completion-token ceiling of one model call: the `max_tokens` sent
    /// upstream is the smaller of the client's and this.
    // Read as any number so that `-5`, `64.5` or `1e30` are reported as
    // out of range, not as a type error.
    #[schemars(with = "u32", range(min = 1))]
    pub max_tokens: Spanned<f64>,
    /// Model calls that may ask for tools in one request.
    #[schemars(with = "Option<u32>", range(min = 1, max = 32))]
    #[schemars(extend("default" = crate::compile::DEFAULT_MAX_TOOL_ROUNDS))]
    pub max_tool_rounds: Option<Spanned<f64>>,
    /// Prompt and completion tokens of all rounds of one request together
    /// (required with tools and a budget).
    #[schemars(with = "Option<u32>", range(min = 1, max = 1_000_000_000))]
    pub max_total_tokens: Option<Spanned<f64>>,
}

/// Each one at most `total` (a default longer than `total` shrinks to it).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP and TLS to the provider.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(Timeouts::DEFAULT.connect)))]
    pub connect: Option<Spanned<String>>,
    /// From the call's start to the first token.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(Timeouts::DEFAULT.first_token)))]
    pub first_token: Option<Spanned<String>>,
    /// The longest gap between two upstream chunks.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(Timeouts::DEFAULT.idle)))]
    pub idle: Option<Spanned<String>>,
    /// The whole request, tool rounds included.
    #[schemars(with = "Option<schema::Duration>")]
    #[schemars(extend("default" = duration_text(Timeouts::DEFAULT.total)))]
    pub total: Option<Spanned<String>>,
}
