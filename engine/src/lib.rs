//! Sluice: YAML pipelines compiled into streaming SSE endpoints that keep
//! every model call inside its timeouts and token ceiling.
//!
//! The modules, in the order a request meets them:
//! - [`config`]: raw serde shapes of `settings.yaml` and pipeline files, a
//!   positioned YAML tree, and diagnostics (`file:line:col: error: ...`).
//! - [`compile`]: raw shapes -> [`compile::Catalog`] of runtime types that
//!   cannot be invalid; collects every diagnostic before anything serves.
//! - [`serve`]: the HTTP surface (hyper, HTTP/1.1 and h2c), request
//!   validation, SSE encoding, graceful shutdown. The only module that knows HTTP.
//! - [`run`]: one request: provider call, deadlines, token ceiling, events.
//! - [`provider`]: the provider seam (a stream of typed chunks), the
//!   OpenAI-compatible client, the upstream SSE parser and the replay provider.
//! - [`tools`]: SQL tools the model may call: schema-checked arguments
//!   bound into fixed queries on read-only SQLite databases.
//! - [`tokens`]: tokenizer counts for ceilings and estimated usage.
//! - [`scenario`]: fault scenarios against the testkit's mock provider
//!   (`sluice test`) and the recording proxy (`sluice record`).
//! - [`mock_cmd`]: `sluice mock`, the testkit's mock provider as a
//!   standalone server with set timing, lengths and faults.
//! - [`init`]: `sluice init`, a new pipelines directory that serves at once.
//! - [`bench`]: `sluice bench`, a load generator and latency report for
//!   Chat Completions and Messages streaming endpoints.
//! - [`telemetry`]: OpenTelemetry traces of each request, exported over
//!   OTLP/HTTP in the background.
//! - [`cli`]: the `sluice` command line.

pub mod alerts;
pub mod auth;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod compile;
pub mod config;
pub mod init;
pub mod ledger;
pub mod metrics;
pub mod mock_cmd;
pub mod provider;
pub mod run;
pub mod scenario;
pub mod serve;
pub mod telemetry;
pub mod tokens;
pub mod tools;
